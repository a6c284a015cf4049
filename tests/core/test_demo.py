from __future__ import annotations

from mailroom.core.demo import DEMO_EMAIL, sample_correspondence
from mailroom.parsing.mime import parse_message


def test_sample_correspondence_is_realistic_and_decodes() -> None:
    samples = list(sample_correspondence())
    assert len(samples) == 48
    assert {f for f, _ in samples} == {"INBOX", "Sent"}
    charsets = {b"koi8-r", b"windows-1251", b"utf-8"}
    assert all(any(c in raw for raw in (r for _, r in samples)) for c in charsets)
    parsed = [parse_message(raw) for _, raw in samples]
    assert all(p.errors == () for p in parsed)
    assert all(("Здравствуйте" in p.text or "Добрый день" in p.text or "Hello" in p.text or "Hi," in p.text) for p in parsed)
    sent = [p for (f, _), p in zip(samples, parsed, strict=True) if f == "Sent"]
    assert all(p.from_[0].address == DEMO_EMAIL for p in sent)
