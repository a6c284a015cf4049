"""Append-only segment files for raw message bytes (the embedded default's raw store; ADR 0004).

SQLite writes every byte of a blob twice (into its write-ahead log, then into the database file
at checkpoint) and spends CPU on its overflow-page chains while holding our interpreter. Here the
bytes of a batch are appended to a segment file with ONE ``fdatasync`` and written once; the
database keeps only a reference ``<segment>:<offset>:<length>``. The caller appends *before* it
commits the rows that point at the bytes, so a crash leaves at worst unreferenced bytes (the
batch is redone and appended again), never a reference to bytes that are not on disk.

Each process appends to segment files of its own (named with a random id), so several processes
(sync, workers, the LMTP endpoint) never interleave; threads of a process share one under a lock.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

SEGMENT_BYTES = 512 * 1024 * 1024  # a new segment once the current one is this large
_OPEN_READERS = 64


class BlobError(Exception):
    """A reference that does not resolve to its bytes (a segment missing or cut short)."""


class _Writer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.lock = threading.Lock()
        self.pid = -1
        self.fd = -1
        self.name = ""
        self.size = 0

    def _open_segment(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.name = f"{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(6)}.seg"
        self.fd = os.open(self.directory / self.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        self.size = 0
        self.pid = os.getpid()
        # The new file's directory entry must be durable too, not only its contents.
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def append(self, chunks: Sequence[bytes]) -> list[str]:
        with self.lock:
            # First use, a forked child (never share the parent's file), or the segment is full.
            if self.pid != os.getpid() or self.size >= SEGMENT_BYTES:
                self._open_segment()
            refs: list[str] = []
            for data in chunks:
                view = memoryview(data)
                offset = self.size
                while view:
                    written = os.write(self.fd, view)
                    view = view[written:]
                self.size += len(data)
                refs.append(f"{self.name}:{offset}:{len(data)}")
            os.fdatasync(self.fd)
            return refs


class BlobStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._writer = _Writer(self.directory)
        self._readers: OrderedDict[str, int] = OrderedDict()
        self._readers_lock = threading.Lock()

    def append(self, chunks: Sequence[bytes]) -> list[str]:
        """Write ``chunks`` durably (one fdatasync); return one reference per chunk, in order."""
        if not chunks:
            return []
        return self._writer.append(chunks)

    def _reader(self, segment: str) -> int:
        with self._readers_lock:
            fd = self._readers.pop(segment, None)
            if fd is None:
                if "/" in segment or segment.startswith("."):
                    raise BlobError(f"bad segment name {segment!r}")
                try:
                    fd = os.open(self.directory / segment, os.O_RDONLY)
                except FileNotFoundError:
                    raise BlobError(f"segment {segment} is missing from {self.directory}") from None
                while len(self._readers) >= _OPEN_READERS:
                    os.close(self._readers.popitem(last=False)[1])
            self._readers[segment] = fd
            return fd

    def read(self, ref: str) -> bytes:
        try:
            segment, offset_s, length_s = ref.rsplit(":", 2)
            offset, length = int(offset_s), int(length_s)
        except ValueError:
            raise BlobError(f"bad blob reference {ref!r}") from None
        data = os.pread(self._reader(segment), length, offset)
        if len(data) != length:
            raise BlobError(f"segment {segment} is cut short: {len(data)} of {length} bytes at {offset}")
        return data


_stores: dict[str, BlobStore] = {}
_stores_lock = threading.Lock()


def store_at(directory: str | Path) -> BlobStore:
    """The process's store of ``directory`` (one writer and one set of open readers per folder);
    needs no Django, so the parse worker processes read the bytes they parse themselves."""
    key = str(directory)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = BlobStore(Path(key))
        return store


def blob_store() -> BlobStore:
    """The store of this configuration (``MAILROOM_BLOB_DIR``)."""
    from django.conf import settings

    return store_at(settings.MAILROOM_BLOB_DIR)
