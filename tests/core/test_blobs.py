"""Segment files for raw bytes: written once, read back exactly, failures named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailroom.core import blobs
from mailroom.core.blobs import BlobError, BlobStore


def test_append_and_read_back(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    chunks = [b"first", b"", "второе".encode(), os.urandom(300_000)]
    refs = store.append(chunks)
    assert [store.read(r) for r in refs] == chunks
    assert refs[0].endswith(":0:5") and refs[1].endswith(":5:0")
    assert store.append([]) == []
    # A new store (another process, a restart) reads the same references.
    assert [BlobStore(tmp_path).read(r) for r in refs] == chunks


def test_a_full_segment_starts_a_new_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blobs, "SEGMENT_BYTES", 10)
    store = BlobStore(tmp_path)
    refs = store.append([b"0123456789"]) + store.append([b"abc"]) + store.append([b"def"])
    segments = {r.split(":")[0] for r in refs}
    assert len(segments) == 2
    assert sorted(p.stat().st_size for p in tmp_path.glob("*.seg")) == [6, 10]
    assert [store.read(r) for r in refs] == [b"0123456789", b"abc", b"def"]


def test_a_forked_child_writes_its_own_segment(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    parent_ref = store.append([b"parent"])[0]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: append, report the reference, exit without running pytest's teardown
        try:
            os.write(write_end, store.append([b"child"])[0].encode())
        finally:
            os._exit(0)
    os.close(write_end)
    child_ref = os.read(read_end, 1000).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert child_ref.split(":")[0] != parent_ref.split(":")[0]
    assert (store.read(parent_ref), store.read(child_ref)) == (b"parent", b"child")
    assert store.read(store.append([b"again"])[0]) == b"again"  # the parent goes on with its own


@pytest.mark.parametrize(("ref", "message"), [
    ("nope", "bad blob reference"),
    ("x.seg:0:zz", "bad blob reference"),
    ("../etc/passwd:0:4", "bad segment name"),
    ("missing.seg:0:4", "is missing from"),
])
def test_bad_references_are_named(tmp_path: Path, ref: str, message: str) -> None:
    with pytest.raises(BlobError, match=message):
        BlobStore(tmp_path).read(ref)


def test_a_cut_segment_is_reported(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    ref = store.append([b"0123456789"])[0]
    segment = tmp_path / ref.split(":")[0]
    os.truncate(segment, 4)
    with pytest.raises(BlobError, match="cut short: 4 of 10 bytes"):
        BlobStore(tmp_path).read(ref)
