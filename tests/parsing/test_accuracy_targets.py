"""The accuracy targets of issue 3, measured with bench/parse_accuracy.py (one source for the figures).

bounce detection >= 97%, hard/soft per recipient >= 97% (sisimai expected.json), auto-reply precision
100% and recall >= 95%, bounces never auto-replies, reply text >= 90%, charset correctness 100% on the
Cyrillic/charset references (thunderbird-charsets, rspamd-cyrillic, james-mime4j, imap-tools).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "parse_accuracy.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mr_parse_accuracy", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _check(rate: Any, floor: float) -> None:
    line = rate.line()
    print(line)
    assert rate.rate >= floor, f"{line} < {floor:.0%}; misses: {rate.misses[:20]}"


def test_sisimai_targets(bench: ModuleType) -> None:
    detect, hard, _arf, vac = bench.sisimai()
    _check(detect, 0.97)
    _check(hard, 0.97)
    _check(vac, 0.95)


def test_auto_reply_targets(bench: ModuleType) -> None:
    _check(bench.auto_reply_precision(), 1.0)
    bounce_not_auto, _seen = bench.php_autoresponders()
    _check(bounce_not_auto, 1.0)


def test_reply_text_target(bench: ModuleType) -> None:
    _check(bench.reply_text(), 0.90)


def test_charset_target(bench: ModuleType) -> None:
    _check(bench.charsets(), 1.0)
