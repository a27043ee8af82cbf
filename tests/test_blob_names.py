"""Blob names: only 64 lowercase hex characters name a file of the store (no path can be made of
anything else: traversal, a trailing newline, upper case)."""

from __future__ import annotations

import hashlib

import pytest

from monsisra.store.blobs import BlobStore


@pytest.mark.parametrize("name", ["a" * 63, "a" * 65, "A" * 64, "g" * 64, "a" * 64 + "\n", "a" * 63 + "\n",
                                  "../" + "a" * 61, "", "٣" * 64, "a" * 32 + "/" + "a" * 31])
def test_anything_but_a_sha256_hex_name_is_refused(tmp_path, name):
    with pytest.raises(ValueError):
        BlobStore(tmp_path).path(name)


def test_a_stored_blob_is_found_under_its_name(tmp_path):
    store = BlobStore(tmp_path)
    digest, size = store.put_bytes(b"lettre")
    assert digest == hashlib.sha256(b"lettre").hexdigest() and size == 6
    assert store.path(digest) == tmp_path / digest[:2] / digest[2:4] / digest
    assert store.read(digest) == b"lettre"
