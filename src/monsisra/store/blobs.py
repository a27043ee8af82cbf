"""Content-addressed file store: bytes named by their sha256, written atomically and fsynced."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

_CHUNK = 1 << 16
# An upload still being written is touched at every chunk; one untouched this long was left
# by a crash (or a killed process) and will never be committed.
STALE_TMP_SECONDS = 3600
_NAME = re.compile(r"[0-9a-f]{64}")


class TooLarge(Exception):
    pass


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        # Prefix directories (``ab/cd``) this store has seen, made and made durable: a blob under
        # one of them needs no look at the directory (nothing removes them).
        self._dirs: set[str] = set()

    def path(self, sha256: str) -> Path:
        if _NAME.fullmatch(sha256) is None:  # a generator over the 64 characters cost ~5 µs a call
            raise ValueError("bad blob name")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def _begin(self) -> tuple[int, str]:
        # The directories exist after the first blob: they are made only when missing, instead
        # of a mkdir (and its exception) on each of the two for every blob (inbound SMTP writes
        # one per attachment).
        try:
            return tempfile.mkstemp(dir=self.tmp, prefix="up-")
        except FileNotFoundError:
            self.tmp.mkdir(parents=True, exist_ok=True)
            return tempfile.mkstemp(dir=self.tmp, prefix="up-")

    def _commit(self, fd: int, tmp_name: str, digest: str) -> None:
        final = self.path(digest)
        # A new prefix directory is made before the file's fsync, not after: that fsync's journal
        # commit then carries the new entries too, and their own directory fsyncs below find them
        # already durable (the first blobs under each of the 65,536 prefixes paid up to four
        # journal commits one after the other, three now at most and usually two).
        prefix = digest[:4]
        new_dirs: tuple[Path, ...] = ()
        if prefix not in self._dirs and not os.path.isdir(final.parent):
            new_dirs = self._make_dirs(final.parent)
        os.fsync(fd)
        os.close(fd)
        if final.exists():
            os.unlink(tmp_name)
        else:
            os.replace(tmp_name, final)
            _fsync_dir(final.parent)
        for directory in new_dirs:
            _fsync_dir(directory)
        # Known from now on: made and fsynced above, or found made (by another writer, which
        # fsyncs it before its own blob is durable; this blob's directory fsync covers it too).
        self._dirs.add(prefix)

    def _make_dirs(self, directory: Path) -> tuple[Path, Path]:
        """Create ``directory`` (two levels under the root); returns the directories whose entries
        the caller must fsync (the blob's own directory fsync does not cover the entry naming that
        directory). Both, even a level another thread has just made: its fsync may not be done."""
        for level in (directory.parent, directory):
            with contextlib.suppress(FileExistsError):
                level.mkdir()
        return directory.parent, directory.parent.parent

    def put_bytes(self, data: bytes, digest: str | None = None) -> tuple[str, int]:
        """Store ``data`` (whose sha256 the caller may already know); returns (sha256, size).
        Durable when this returns."""
        digest = digest or hashlib.sha256(data).hexdigest()
        if self.exists(digest):
            return digest, len(data)
        fd, tmp_name = self._begin()
        try:
            os.write(fd, data)
            self._commit(fd, tmp_name, digest)
        except BaseException:
            _discard(fd, tmp_name)
            raise
        return digest, len(data)

    async def put_stream(self, chunks: AsyncIterator[bytes], limit: int) -> tuple[str, int, bytes]:
        """Store a stream; raises :class:`TooLarge` past ``limit`` bytes (nothing is kept).

        Returns (sha256, size, first bytes) — the head serves content sniffing.
        """
        fd, tmp_name = self._begin()
        hasher = hashlib.sha256()
        size = 0
        head = b""
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise TooLarge(size)
                if len(head) < 8192:
                    head += chunk[: 8192 - len(head)]
                hasher.update(chunk)
                os.write(fd, chunk)
            self._commit(fd, tmp_name, hasher.hexdigest())
        except BaseException:
            _discard(fd, tmp_name)
            raise
        return hasher.hexdigest(), size, head

    def sweep_tmp(self, older_than: float = STALE_TMP_SECONDS) -> int:
        """Delete partial uploads not written to for ``older_than`` seconds; returns how many."""
        if not self.tmp.is_dir():
            return 0
        limit = time.time() - older_than
        removed = 0
        for entry in os.scandir(self.tmp):
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < limit:
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def open(self, sha256: str):
        return self.path(sha256).open("rb")

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def iter_file(self, sha256: str) -> Iterator[bytes]:
        with self.open(sha256) as f:
            while chunk := f.read(_CHUNK):
                yield chunk


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _discard(fd: int, tmp_name: str) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
    try:
        os.unlink(tmp_name)
    except FileNotFoundError:
        pass
