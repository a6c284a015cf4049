"""The C allocator's settings for Mailroom's long-running processes.

glibc's malloc keeps freed memory for reuse: one arena per thread that allocated (up to eight per
core) and, for large blocks, a threshold for handing them to the kernel that rises to the largest
block freed so far. An import moves large messages (up to megabytes each, in batches of 16 MiB)
through several threads, so the peak of every arena stayed resident and grew with the mailbox size:
``mailroom serve`` held 761 MB after importing 20,000 messages (bench/import_bench.py). With two
arenas and a fixed threshold of 256 KiB (a large block is mapped on its own and returned the moment
it is freed) it stays flat.

The settings are applied to this process with ``mallopt`` and, through the environment glibc reads
at start-up, to every process it starts (the pipeline's, the parse workers). Values set in the
environment by the administrator win."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ARENA_MAX = 2
MMAP_THRESHOLD = 256 * 1024
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_malloc() -> bool:
    """Apply the settings (once, early, before threads start); whether glibc took them."""
    arenas = int(os.environ.setdefault("MALLOC_ARENA_MAX", str(ARENA_MAX)))
    threshold = int(os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD)))
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas)) and bool(mallopt(_M_MMAP_THRESHOLD, threshold))
