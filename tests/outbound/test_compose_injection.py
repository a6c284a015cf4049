"""The message builder refuses CR, LF and NUL in every header it writes, whatever the source, and no
bare CR or LF ever reaches the bytes we send (items 3 and 12 of the trust issue)."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailroom.outbound import compose
from mailroom.outbound.compose import Addr, Attachment, Draft, HeaderInjection, build_message

DRAFT = Draft(from_=Addr("sales@company.test", "Sales"), to=(Addr("a@client.test"),), subject="Hi",
              message_id="abc@company.test", date=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), text="body")
BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


@pytest.mark.parametrize("change", [
    {"from_": Addr("sales@company.test", "S\r\nReply-To: x@evil.test")},
    {"from_": Addr("sales@company.test\r\nBcc: x@evil.test")},
    {"from_": Addr("sales@company.test> <x@evil.test")},
    {"to": (Addr("a@client.test", "A\nBcc: x@evil.test"),)},
    {"reply_to": (Addr("r@client.test\0"),)},
    {"subject": "Hi\r\nBcc: x@evil.test"},
    {"message_id": "abc@company.test\r\nReply-To: x@evil.test"},
    {"message_id": "abc@компания.рф"},
    {"in_reply_to": "p@x\nBcc: y"},
    {"references": ("r1@x", "r2@x\r\nBcc: y")},
    {"thread_topic": "t\r\nX: y"},
    {"thread_index": "AQ\r\nX: y"},
    {"auto_submitted": "auto-replied\nX: y"},
    {"extra_headers": (("X-Ok", "v\r\nBcc: y"),)},
    {"extra_headers": (("X-Bad\r\nBcc", "v"),)},
    {"extra_headers": (("X Bad", "v"),)},
    {"attachments": (Attachment("f.txt\r\nX: y", "text/plain", b"x"),)},
    {"attachments": (Attachment("f.txt", "text/plain\r\nX: y", b"x"),)},
])
def test_every_header_source_is_checked(change: dict[str, Any]) -> None:
    with pytest.raises(HeaderInjection):
        build_message(replace(DRAFT, **change))


def test_cyrillic_attachment_name_folds_with_crlf() -> None:
    name = "Коммерческое предложение по договору поставки оборудования № 2026-17.pdf"
    raw = build_message(replace(DRAFT, attachments=(Attachment(name, "application/pdf", b"%PDF-1"),)))
    assert BARE.search(raw) is None
    import email
    from email import policy

    msg = email.message_from_bytes(raw, policy=policy.default)
    (att,) = list(msg.iter_attachments())
    assert att.get_filename() == name


_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\0"), max_size=120)


@settings(max_examples=150, deadline=None)
@given(name=_text, subject=_text, fname=_text.filter(bool), display=_text)
def test_no_bare_cr_or_lf_in_anything_we_build(name: str, subject: str, fname: str, display: str) -> None:
    draft = replace(DRAFT, subject=subject, from_=Addr("sales@company.test", display),
                    to=(Addr("a@client.test", name),), thread_topic=compose.strip_subject_prefixes(subject),
                    attachments=(Attachment(fname, "application/octet-stream", b"\x00\x01" * 50),))
    raw = build_message(draft)
    assert BARE.search(raw) is None
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert all(line[:1] in (b" ", b"\t") or b":" in line for line in head.split(b"\r\n"))
