"""The allocator settings of Mailroom's processes (core/memory.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mailroom.core.memory import ARENA_MAX, MMAP_THRESHOLD, tune_malloc


def test_tune_malloc_applies_here_and_passes_on_to_children(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert tune_malloc() is True  # glibc: mallopt accepted both
    assert os.environ["MALLOC_ARENA_MAX"] == str(ARENA_MAX)
    assert os.environ["MALLOC_MMAP_THRESHOLD_"] == str(MMAP_THRESHOLD)
    # A process started from here (the pipeline's, a parse worker) inherits them.
    child = subprocess.run([sys.executable, "-c", "import os; print(os.environ['MALLOC_ARENA_MAX'])"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == str(ARENA_MAX)


def test_tune_malloc_keeps_the_administrators_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert tune_malloc() is True
    assert (os.environ["MALLOC_ARENA_MAX"], os.environ["MALLOC_MMAP_THRESHOLD_"]) == ("4", "1048576")
