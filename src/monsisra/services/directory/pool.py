"""Helper processes of the import and the index build (one per core, 4 at most), each holding the communes,
and the pipeline that parses the next batch while the previous one is written.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from monsisra.services.helper_processes import watch_parent

HELPERS = min(os.cpu_count() or 1, 4)  # processes; each holds the communes (~150 MB)


HELPERS_ABOVE = 10_000  # rows (file lines at ~200 bytes, index entries): below, no helper is started


class HelperPool:
    """Helper processes for the CPU-bound parts of an import (parsing lines, building index
    entries), so that Python works on the other cores while this process talks to the database.
    Results come back in submission order. ``inline`` runs everything here instead."""

    def __init__(self, inline: bool = False) -> None:
        self.inline = inline
        self._pool: ProcessPoolExecutor | None = None
        self._pending: collections.deque[asyncio.Future] = collections.deque()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = asyncio.get_running_loop()
        if self.inline:
            future = loop.create_future()
            try:
                future.set_result(fn(*args))
            except Exception as exc:  # handed over to whoever awaits the result
                future.set_exception(exc)
        else:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(HELPERS, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=watch_parent)
            future = loop.run_in_executor(self._pool, fn, *args)
        self._pending.append(future)

    async def results(self, keep: int | None = None) -> AsyncIterator[Any]:
        """Finished results in order, leaving ``keep`` (default: one per helper) at work."""
        keep = 0 if self.inline else HELPERS if keep is None else keep
        while len(self._pending) > keep:
            yield await self._pending.popleft()

    def __enter__(self) -> HelperPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class Pipeline:
    """One database write in flight while the caller prepares the next: the database works while
    Python parses. Never more than one, so writes commit in order (a batch may rely on the
    organisations an earlier one created)."""

    def __init__(self) -> None:
        self._task: asyncio.Task | None = None

    async def submit(self, write: Any) -> None:
        try:
            await self.wait()
        except BaseException:
            write.close()  # the earlier write failed: this one never starts
            raise
        self._task = asyncio.create_task(write)

    async def wait(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await task

    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            await self.wait()
        elif self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
