"""Shared helpers for the parsing tests (corpora live in tests/corpora/)."""

from __future__ import annotations

from pathlib import Path

CORPORA = Path(__file__).resolve().parent.parent / "corpora"


def norm(s: str) -> str:
    return " ".join(s.replace("\u202f", " ").replace("\u00a0", " ").split())


def corpus_files(*folders: str) -> list[Path]:
    out: list[Path] = []
    for folder in folders:
        for p in sorted((CORPORA / folder).rglob("*")):
            if p.is_file() and p.suffix in (".eml", ".msg", ".txt") and p.name not in ("README.md",):
                out.append(p)
    return out


def report(name: str, ok: int, total: int) -> float:
    rate = ok / total if total else 1.0
    print(f"{name}: {ok}/{total} = {rate * 100:.1f}%")
    return rate


def message(headers: str, body: str | bytes) -> bytes:
    head = headers.strip("\n").replace("\n", "\r\n") + "\r\n\r\n"
    return head.encode() + (body.encode("utf-8") if isinstance(body, str) else body)
