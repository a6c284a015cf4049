"""The hand-built bytes parse back exactly with the stdlib."""

from __future__ import annotations

import base64
import email
from datetime import UTC, datetime
from email import policy

import pytest

from mailroom.outbound import compose
from mailroom.outbound.compose import Addr, Attachment, Draft
from mailroom.parsing.headers import summarize_headers

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _parse(raw: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    for part in msg.walk():
        assert not part.defects, part.defects
    return msg


def _draft(**kw: object) -> Draft:
    base: dict[str, object] = {
        "from_": Addr("manager@company.test", "Acme Sales"), "to": (Addr("client@client.test", "Client"),),
        "subject": "Quote", "message_id": "mr.0.abc@company.test", "date": NOW, "text": "Hello\nWorld\n",
    }
    base.update(kw)
    return Draft(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    ["plain ascii\n", "no final newline", "Привет, мир!\nЁлки\n", "x" * 2000 + "\n", "trailing space \n.\n..dot\n",
     "tab\tand = sign =3D\r\nCRLF\rCR\n", "From the start\n"],
)
def test_text_round_trip(text: str) -> None:
    raw = compose.build_message(_draft(text=text))
    msg = _parse(raw)
    body = msg.get_body(("plain",))
    assert body is not None
    got = str(body.get_content()).replace("\r\n", "\n")
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    assert got == (expected if expected.endswith("\n") else expected + "\n")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert b"\n" not in raw.replace(b"\r\n", b"")


def test_html_attachments_and_unicode_headers_round_trip() -> None:
    pdf = bytes(range(256)) * 40
    raw = compose.build_message(_draft(
        from_=Addr("manager@company.test", "Менеджер, Acme"),
        to=(Addr("a@client.test", 'Ann "The" Client'), Addr("b@client.test", "Бобров Б."),
            *(Addr(f"x{i}@client.test", f"Person {i}") for i in range(8))),
        cc=(Addr("c@client.test"),),
        subject="Счёт №42 — =?not-encoded?= " + "long " * 40,
        text="Текст\n", html="<p>Текст <b>жирный</b></p>",
        attachments=(Attachment("счёт 42.pdf", "application/pdf", pdf), Attachment("a.txt", "text/plain", b"x")),
        in_reply_to="parent@client.test", references=("root@client.test", "parent@client.test"),
        thread_index=compose.thread_index(when=NOW), thread_topic="Счёт",
        auto_submitted="auto-replied", reply_to=(Addr("reply+abc@relay.test", "Acme"),),
    ))
    msg = _parse(raw)
    assert msg["Subject"] == "Счёт №42 — =?not-encoded?= " + "long " * 40
    assert msg["From"].addresses[0].display_name == "Менеджер, Acme"
    names = [a.display_name for a in msg["To"].addresses]
    assert names[:2] == ['Ann "The" Client', "Бобров Б."] and len(names) == 10
    assert msg["Cc"].addresses[0].addr_spec == "c@client.test"
    assert msg["In-Reply-To"] == "<parent@client.test>"
    assert msg["References"].split() == ["<root@client.test>", "<parent@client.test>"]
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Reply-To"].addresses[0].addr_spec == "reply+abc@relay.test"
    assert str(msg.get_body(("plain",)).get_content()).strip() == "Текст"  # type: ignore[union-attr]
    assert "жирный" in str(msg.get_body(("html",)).get_content())  # type: ignore[union-attr]
    atts = list(msg.iter_attachments())
    assert [a.get_filename() for a in atts] == ["счёт 42.pdf", "a.txt"]
    assert atts[0].get_content() == pdf
    summary = summarize_headers(raw)
    assert summary.message_id == "mr.0.abc@company.test"
    assert summary.in_reply_to == ("parent@client.test",)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_forward_as_message_rfc822() -> None:
    inner = b"From: a@b.test\r\nSubject: inner\r\nMessage-ID: <i@b.test>\r\n\r\nbody\r\n"
    raw = compose.build_message(_draft(attachments=(Attachment("fwd.eml", "message/rfc822", inner),)))
    msg = _parse(raw)
    att = next(iter(msg.iter_attachments()))
    assert att.get_content_type() == "message/rfc822"
    assert att.get_content()["Subject"] == "inner"


def test_ids_with_non_ascii_text_are_left_out_of_a_reply() -> None:
    raw = compose.build_message(_draft(
        in_reply_to="заказ-17@магазин.рф", references=("root@client.test", "заказ-17@магазин.рф"),
    ))
    assert raw.isascii()
    msg = _parse(raw)
    assert msg["In-Reply-To"] is None
    assert msg["References"] == "<root@client.test>"


def test_references_trimmed_first_and_last() -> None:
    refs = [f"r{i}@x" for i in range(50)]
    trimmed = compose.trim_references(refs)
    assert len(trimmed) == compose.MAX_REFERENCES
    assert trimmed[0] == "r0@x" and trimmed[-1] == "r49@x" and trimmed[1] == "r31@x"


def test_thread_index_child_extends_parent() -> None:
    parent = compose.thread_index(when=NOW, seed=b"x" * 16)
    assert len(base64.b64decode(parent)) == 22
    child = compose.thread_index(when=datetime(2025, 3, 2, tzinfo=UTC), parent=parent)
    raw = base64.b64decode(child)
    assert len(raw) == 27 and raw[:22] == base64.b64decode(parent)


@pytest.mark.parametrize("bad", ["a\r\nBcc: x@y", "a\nb", "a\0b", "a\rb"])
def test_header_injection_detected(bad: str) -> None:
    with pytest.raises(compose.HeaderInjection) as exc:
        compose.check_header_text(bad, "subject")
    assert exc.value.field == "subject"


def test_subject_helpers() -> None:
    assert compose.reply_subject("Re: RE: Fwd: Hello") == "Re: Hello"
    assert compose.forward_subject("AW: Hello") == "Fwd: Hello"
    assert compose.strip_subject_prefixes("Re[2]: x") == "x"


def test_sent_copy_only_adds_bcc_and_keeps_content_hash() -> None:
    raw = compose.build_message(_draft())
    copy = compose.sent_copy_bytes(raw, ["secret@client.test"])
    assert copy.endswith(raw) and copy.startswith(b"Bcc: secret@client.test\r\n")
    assert summarize_headers(copy).content_hash == summarize_headers(raw).content_hash
