from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailroom.parsing.headers import summarize_headers
from mailroom.parsing.mime import MAX_DEPTH, extract_part, parse_message

from .helpers import CORPORA, corpus_files, message, norm, report

ALL_FOLDERS = (
    "imap-tools",
    "james-mime4j",
    "stalwart-mail-parser",
    "thunderbird-charsets",
    "rspamd-cyrillic",
    "flanker",
    "nodemailer-mailparser",
    "postal-mime",
    "php-bounce-handler",
    "sisimai-set-of-emails",
)


@pytest.mark.parametrize("folder", ALL_FOLDERS)
def test_every_corpus_file_parses_within_limits(folder: str) -> None:
    files = [
        f for f in corpus_files(folder) if not f.name.endswith("_decoded.txt") and "_decoded_" not in f.name
    ]
    assert files
    for f in files:
        raw = f.read_bytes()
        t0 = time.perf_counter()
        p = parse_message(raw)
        elapsed = time.perf_counter() - t0
        assert elapsed < 5.0, f
        assert "time_budget_exceeded" not in p.errors, f
        assert p.message_id, f
        assert p.size == len(raw)
        assert p.date is None or p.date.tzinfo is not None, f


def test_thunderbird_charsets_expected() -> None:
    base = CORPORA / "thunderbird-charsets"
    for e in json.loads((base / "expected.json").read_text()):
        p = parse_message((base / e["file"]).read_bytes())
        if "subject" in e:
            assert p.subject == e["subject"]
            assert p.text == e["body_text"]
        else:
            assert e["text_plain_contains"] in p.text
            assert e["text_html_contains"] in p.html


def test_rspamd_cyrillic_reference() -> None:
    base = CORPORA / "rspamd-cyrillic"
    for m in json.loads((base / "decoded-reference.json").read_text())["messages"]:
        p = parse_message((base / m["file"]).read_bytes())
        if m.get("subject"):
            assert p.subject == m["subject"], m["file"]
        if m.get("from"):
            name, _, addr = m["from"].rpartition(" <")
            assert p.from_[0].address == addr.rstrip(">").lower(), m["file"]
            if name:
                assert p.from_[0].name == name.strip('"'), m["file"]
        expected_names = sorted(x["filename"] for x in m["parts"] if x.get("filename"))
        assert sorted(a.filename for a in p.attachments if a.filename) == expected_names, m["file"]
        heads = [
            x["text_head"] for x in m["parts"] if x["content_type"] == "text/plain" and not x.get("filename")
        ]
        if heads and heads[0].strip():
            assert norm(heads[0])[:60] in norm(p.text), m["file"]


def test_rspamd_windows1251_file_names() -> None:
    p = parse_message((CORPORA / "rspamd-cyrillic" / "spam.eml").read_bytes())
    assert [a.filename for a in p.attachments] == ["Список-Аудиоэнциклопедии.txt"]
    p = parse_message((CORPORA / "rspamd-cyrillic" / "next2last-doublebad.eml").read_bytes())
    assert "файл.scr.xz" in [a.filename for a in p.attachments]


def _imap_tools_rates() -> dict[str, tuple[int, int]]:
    base = CORPORA / "imap-tools"
    rates: dict[str, list[int]] = {}

    def add(key: str, ok: bool) -> None:
        r = rates.setdefault(key, [0, 0])
        r[0] += int(ok)
        r[1] += 1

    for e in json.loads((base / "expected.json").read_text()):
        p = parse_message((base / e["file"]).read_bytes())
        if not any("\udc80" <= c <= "\udcff" for c in e["subject"]):
            add("subject", norm(p.subject) == norm(e["subject"]))
        add("from", (p.from_[0].address if p.from_ else "") == e["from_"].lower())
        add("to", [a.address for a in p.to] == [x.lower() for x in e["to"]])
        add("cc", [a.address for a in p.cc] == [x.lower() for x in e["cc"]])
        if not e["date"].startswith("1900"):
            add("date", p.date == datetime.fromisoformat(e["date"]))
        if e["text"]:
            add("text", norm(p.text) == norm(e["text"]))
        add(
            "attachments",
            [(a.filename, a.content_type) for a in p.attachments]
            == [(a["filename"], a["content_type"]) for a in e["attachments"]],
        )
    return {k: (v[0], v[1]) for k, v in rates.items()}


# Measured floors (imap_tools is a baseline, not a standard: it counts message/delivery-status as
# no attachment and shows the text of attached messages as the body; we do neither).
IMAP_TOOLS_FLOORS = {
    "subject": 0.98,
    "from": 0.98,
    "to": 0.96,
    "cc": 1.0,
    "date": 0.97,
    "text": 0.85,
    "attachments": 0.90,
}


def test_imap_tools_expected_fields() -> None:
    rates = _imap_tools_rates()
    for key, floor in IMAP_TOOLS_FLOORS.items():
        ok, total = rates[key]
        assert report(f"imap-tools {key}", ok, total) >= floor, key


def test_imap_tools_attachment_payloads_reextract() -> None:
    base = CORPORA / "imap-tools"
    ok = total = 0
    for e in json.loads((base / "expected.json").read_text()):
        raw = (base / e["file"]).read_bytes()
        p = parse_message(raw)
        for a, exp in zip(p.attachments, e["attachments"], strict=False):
            if a.content_type.startswith("message/") or "base64" not in exp["payload"]:
                continue
            total += 1
            data = extract_part(raw, a.part_path)
            ok += int(data == base64.b64decode(exp["payload"]["base64"]) and a.size == len(data))
    assert total > 20
    assert report("imap-tools attachment bytes", ok, total) == 1.0


def _mime4j_cases() -> list[tuple[str, str, bytes]]:
    out = []
    for d in ("testmsgs", "mimetools-testmsgs"):
        for f in sorted((CORPORA / "james-mime4j" / d).glob("*_decoded_*")):
            stem = f.name.split("_decoded_")[0]
            out.append((f"{d}/{stem}.msg", f.name, f.read_bytes()))
    return out


def test_james_mime4j_decoded_leaves_found() -> None:
    """Every decoded leaf mime4j lists is the decoded payload of one of our parts (rate)."""
    ok = total = 0
    cache: dict[str, list[bytes]] = {}
    for msg, _leaf, expected in _mime4j_cases():
        if msg not in cache:
            raw = (CORPORA / "james-mime4j" / msg).read_bytes()
            from mailroom.parsing.mime import _parse_tree, _State

            tree = _parse_tree(raw, _State(deadline=time.monotonic() + 10))
            leaves: list[bytes] = []
            stack = [tree]
            while stack:
                n = stack.pop()
                if n.children:
                    stack.extend(n.children)
                elif n.message is not None:
                    stack.append(n.message)
                    leaves.append(n.decoded())
                else:
                    leaves.append(n.decoded())
            cache[msg] = [x.replace(b"\r\n", b"\n").strip() for x in leaves]
        total += 1
        ok += int(expected.replace(b"\r\n", b"\n").strip() in cache[msg])
    assert report("james-mime4j decoded leaves", ok, total) >= 0.90


def test_james_mime4j_russian_headers() -> None:
    p = parse_message((CORPORA / "james-mime4j" / "testmsgs" / "russian-headers.msg").read_bytes())
    assert [(a.filename, a.part_path) for a in p.attachments] == [("Список.doc", "1")]
    assert p.subject == "A simple subject"


def test_stalwart_subjects() -> None:
    ok = total = 0
    for j in sorted((CORPORA / "stalwart-mail-parser").rglob("*.json")):
        eml = j.with_suffix(".eml")
        if not eml.exists():
            continue
        data = json.loads(j.read_text())
        subj = next(
            (h["value"].get("Text") for h in data["parts"][0]["headers"] if h["name"] == "subject"), None
        )
        if not isinstance(subj, str) or "\ufffd" in subj:  # raw 8-bit subject stalwart could not decode
            continue
        total += 1
        ok += int(norm(parse_message(eml.read_bytes()).subject) == norm(subj))
    assert report("stalwart subjects", ok, total) == 1.0


# --- own hard cases ---------------------------------------------------------------------------------

OUTLOOK_RU = message(
    """From: =?windows-1251?B?yOLg7SDP5fLw7uI=?= <ivan@example.ru>
To: "Manager" <manager@example.com>
Subject: =?windows-1251?B?UkU6IMTu4+7i7vAg?=
 =?windows-1251?B?MTU=?=
Date: Tue, 4 Jun 2024 12:30:00 +0300
Message-ID: <AM0PR01MB1234@eurprd01.prod.outlook.com>
In-Reply-To: <deal-15@crm.example.com>
References: <deal-15@crm.example.com>
Thread-Topic: =?windows-1251?B?xO7j7uLu8CDtIDE1?=
Thread-Index: AQHawB1kqZbZ
MIME-Version: 1.0
Content-Type: multipart/related; boundary="rel"; type="multipart/alternative"
""",
    b"""--rel\r
Content-Type: multipart/alternative; boundary="alt"\r
\r
--alt\r
Content-Type: text/plain; charset="windows-1251"\r
Content-Transfer-Encoding: quoted-printable\r
\r
=C4=EE=E1=F0=FB=E9 =E4=E5=ED=FC! =C4=EE=E3=EE=E2=EE=F0 =EF=EE=E4=EF=E8=F1=E0=ED.\r
\r
=D1 =F3=E2=E0=E6=E5=ED=E8=E5=EC,\r
=C8=E2=E0=ED\r
\r
-----Original Message-----\r
From: Manager <manager@example.com>\r
Sent: Monday, June 3, 2024 10:00 AM\r
To: Ivan <ivan@example.ru>\r
Subject: Dogovor 15\r
\r
Please sign the contract.\r
--alt\r
Content-Type: text/html; charset="windows-1251"\r
Content-Transfer-Encoding: quoted-printable\r
\r
<html><body><p>=C4=EE=E1=F0=FB=E9 =E4=E5=ED=FC!</p><img src=3D"cid:image001.png@01DAB6F2.5C2D8E10" width=3D"100"><div id=3D"divRplyFwdMsg"><b>From:</b> Manager</div><p>Please sign</p></body></html>\r
--alt--\r
--rel\r
Content-Type: image/png; name="image001.png"\r
Content-Transfer-Encoding: base64\r
Content-ID: <image001.png@01DAB6F2.5C2D8E10>\r
\r
iVBORw0KGgo=\r
--rel--\r
""",
)


def test_outlook_russian_reply() -> None:
    p = parse_message(OUTLOOK_RU)
    assert p.subject == "RE: Договор 15"
    assert p.from_[0].name == "Иван Петров"
    assert p.from_[0].address == "ivan@example.ru"
    assert p.in_reply_to == ("deal-15@crm.example.com",)
    assert p.routing.thread_topic == "=?windows-1251?B?xO7j7uLu8CDtIDE1?="
    assert p.routing.thread_index == "AQHawB1kqZbZ"
    assert p.text.startswith("Добрый день! Договор подписан.")
    assert p.reply_text == "Добрый день! Договор подписан.\n"
    assert p.text_charset == "windows-1251"
    assert p.date == datetime(2024, 6, 4, 9, 30, tzinfo=UTC)


def test_outlook_cid_image_without_content_disposition_is_inline() -> None:
    p = parse_message(OUTLOOK_RU)
    assert len(p.attachments) == 1
    a = p.attachments[0]
    assert (a.filename, a.content_type, a.content_id, a.inline, a.disposition, a.part_path) == (
        "image001.png",
        "image/png",
        "image001.png@01DAB6F2.5C2D8E10",
        True,
        "",
        "2",
    )
    assert a.size == 8
    assert extract_part(OUTLOOK_RU, a.part_path) == base64.b64decode("iVBORw0KGgo=")
    assert '<img src="cid:image001.png@01DAB6F2.5C2D8E10"' in p.html_safe
    p2 = parse_message(OUTLOOK_RU, cid_url=lambda cid: f"/api/v1/messages/42/attachments/{cid}")
    assert '<img src="/api/v1/messages/42/attachments/image001.png@01DAB6F2.5C2D8E10"' in p2.html_safe


def test_multi_chunk_cyrillic_subject_and_windows1251_filenames() -> None:
    raw = message(
        """From: a@example.com
Subject: =?UTF-8?B?0J/RgNC40LLQtdGCLCDQvNC40YAh?= =?koi8-r?Q?=F3=DE=C5=D4?=
 =?windows-1251?B?IO3gIO7v6+Dy8w==?=
Content-Type: multipart/mixed; boundary=b
""",
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhi\r\n"
        b"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment;\r\n filename*=windows-1251''%D1%F7%B8%F2%20%B915.pdf\r\n\r\nPDF\r\n"
        b'--b\r\nContent-Type: application/octet-stream; name="=?windows-1251?B?xO7j7uLu8C5kb2M=?="\r\n\r\nDOC\r\n'
        b'--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="'
        + "Акт сверки.xls".encode("cp1251")
        + b'"\r\n\r\nXLS\r\n'
        b"--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment;\r\n filename*0*=UTF-8''%D0%9E%D1%87%D0%B5%D0%BD%D1%8C%20%D0%B4%D0%BB%D0%B8%D0%BD;\r\n filename*1*=%D0%BD%D0%BE%D0%B5.txt\r\n\r\nTXT\r\n"
        b"--b--\r\n",
    )
    p = parse_message(raw)
    assert p.subject == "Привет, мир!Счет на оплату"
    assert [a.filename for a in p.attachments] == [
        "Счёт №15.pdf",
        "Договор.doc",
        "Акт сверки.xls",
        "Очень длинное.txt",
    ]
    assert [a.part_path for a in p.attachments] == ["2", "3", "4", "5"]
    assert all(not a.inline for a in p.attachments)


def test_subject_chunks_exact() -> None:
    raw = message(
        "From: a@example.com\nSubject: =?UTF-8?B?0J/RgNC40LLQtdGCLCDQvNC40YAh?= =?koi8-r?Q?_=F3=DE=C5=D4?=\n =?windows-1251?B?IO3gIO7v6+Dy8w==?=",
        "x",
    )
    assert parse_message(raw).subject == "Привет, мир! Счет на оплату"


def test_addresses_dates_and_ids() -> None:
    raw = message(
        """From: "Doe, John" <John.Doe@Example.COM>
Sender: assistant@example.com
Reply-To: =?utf-8?Q?=D0=90=D0=BD=D0=BD=D0=B0?= <anna@example.com>
To: a@example.org, "B" <b@example.org>
Cc: <c@example.org>
Bcc: d@example.org
Delivered-To: crm+relay-abc@example.org
Date: Tue, 4 Jun 2024 12:30:00 -0000
Message-ID: <one@example.com>
In-Reply-To: <two@example.com> (comment)
References: <zero@example.com>
 <two@example.com>
X-GM-THRID: 1800000000000000001
List-Id: Sales <sales.example.com>
Auto-Submitted: no""",
        "body",
    )
    p = parse_message(raw)
    assert p.from_[0].address == "john.doe@example.com" and p.from_[0].name == "Doe, John"
    assert [a.address for a in p.sender] == ["assistant@example.com"]
    assert p.reply_to[0].name == "Анна"
    assert [a.address for a in p.to] == ["a@example.org", "b@example.org"]
    assert [a.address for a in p.cc] == ["c@example.org"]
    assert [a.address for a in p.bcc] == ["d@example.org"]
    assert [a.address for a in p.delivered_to] == ["crm+relay-abc@example.org"]
    assert p.date == datetime(2024, 6, 4, 12, 30, tzinfo=UTC)
    assert p.message_id == "one@example.com"
    assert p.in_reply_to == ("two@example.com",)
    assert p.references == ("zero@example.com", "two@example.com")
    assert p.routing.gm_thread_id == "1800000000000000001"
    assert p.routing.list_id == "Sales <sales.example.com>"
    assert p.is_bulk and p.bulk_reason == "header:list-id"
    assert not p.is_auto_reply


def test_missing_message_id_and_date_fallback_match_header_summary() -> None:
    raw = message("From: a@example.com\nSubject: no id", "text")
    received = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    p = parse_message(raw, received_at=received)
    s = summarize_headers(raw)
    assert p.message_id_synthesised and s.message_id_synthesised
    assert p.message_id == s.message_id
    assert p.message_id.startswith("mr-synth-") and p.message_id.endswith("@mailroom.invalid")
    assert p.content_hash == s.content_hash
    assert (p.date, p.date_source) == (received, "received_at")
    assert parse_message(raw).date_source == "none"


def test_content_hash_equals_header_summary_on_corpus() -> None:
    for f in corpus_files("imap-tools")[:40]:
        raw = f.read_bytes()
        assert parse_message(raw).content_hash == summarize_headers(raw).content_hash, f


def test_nested_message_rfc822() -> None:
    inner = message("From: x@example.com\nSubject: Inner\nMessage-ID: <inner@example.com>", "inner body")
    raw = message(
        "From: a@example.com\nSubject: Fwd: Inner\nContent-Type: multipart/mixed; boundary=b",
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee below\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n"
        + inner
        + b"\r\n--b--\r\n",
    )
    p = parse_message(raw)
    assert len(p.nested) == 1
    assert p.nested[0].subject == "Inner" and p.nested[0].message_id == "inner@example.com"
    assert p.nested[0].text.strip() == "inner body"
    assert [(a.filename, a.content_type, a.part_path) for a in p.attachments] == [
        ("Inner.eml", "message/rfc822", "2")
    ]
    assert extract_part(raw, "2").startswith(b"From: x@example.com")
    assert p.text.strip() == "see below"


def test_calendar_invitation() -> None:
    p = parse_message((CORPORA / "postal-mime" / "calendar-event.eml").read_bytes())
    assert len(p.calendar) == 1
    ev = p.calendar[0]
    assert (ev.method, ev.summary, ev.organizer) == ("REQUEST", "Test event ⏰", "andris@postalsys.com")
    assert ev.start is not None and ev.start.isoformat() == "2024-04-11T11:00:00+03:00"


def test_winmail_dat_is_listed_and_read() -> None:
    p = parse_message(
        (CORPORA / "sisimai-set-of-emails" / "maildir" / "bsd" / "lhost-amazonworkmail-07.eml").read_bytes()
    )
    assert ("winmail.dat", "application/ms-tnef") in [(a.filename, a.content_type) for a in p.attachments]


def test_tnef_helpers_never_raise_on_garbage() -> None:
    from mailroom.parsing.mime import _tnef_bodies, _tnef_files

    assert _tnef_files(b"\x78\x9f\x3e\x22garbage") == []
    assert _tnef_bodies(b"not tnef") == ("", "")


# --- limits -------------------------------------------------------------------------------------------


def test_nesting_bomb_is_kept_flagged_and_shown_as_text() -> None:
    depth = MAX_DEPTH + 50
    parts = [f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n" for i in range(depth)]
    body = (
        "".join(parts)
        + "Content-Type: text/plain\r\n\r\ndeep text\r\n"
        + "".join(f"--b{i}--\r\n" for i in reversed(range(depth)))
    )
    raw = ("From: a@example.com\r\nSubject: bomb\r\nMIME-Version: 1.0\r\n" + body).encode()
    p = parse_message(raw)
    assert "mime_nesting_too_deep" in p.errors
    assert "deep text" in p.text
    assert p.attachments == ()


def test_part_count_bomb() -> None:
    n = 10_050
    body = "".join(f"--b\r\nContent-Type: text/plain\r\n\r\n{i}\r\n" for i in range(n)) + "--b--\r\n"
    raw = (
        "From: a@example.com\r\nSubject: many\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + body
    ).encode()
    t0 = time.perf_counter()
    p = parse_message(raw)
    assert time.perf_counter() - t0 < 5
    assert "too_many_parts" in p.errors
    assert p.text.startswith("--b")


def test_huge_header_is_capped() -> None:
    raw = b"From: a@example.com\r\nX-Long: " + b"a" * (2 * 1024 * 1024) + b"\r\nSubject: s\r\n\r\nbody"
    p = parse_message(raw)
    assert "header_block_too_large" in p.errors or "header_value_truncated" in p.errors
    assert p.from_[0].address == "a@example.com"


def test_time_budget() -> None:
    body = "".join(f"--b\r\nContent-Type: text/plain\r\n\r\n{i}\r\n" for i in range(3000)) + "--b--\r\n"
    raw = ("From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + body).encode()
    p = parse_message(raw, time_budget=0.0)
    assert "time_budget_exceeded" in p.errors
    assert "--b" in p.text


def test_malformed_inputs_never_raise() -> None:
    samples = [
        b"",
        b"\r\n\r\n",
        b"no headers at all",
        b"Content-Type: multipart/mixed\r\n\r\nno boundary",
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!\r\n",
        b"Content-Type: text/plain; charset=\xff\xfe\r\nSubject: \xd0\xd1\r\n\r\n\xff\xfe\xfd",
        b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\nZm9v\r\n",
    ]
    for raw in samples:
        p = parse_message(raw)
        assert isinstance(p.text, str)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=80), st.sampled_from([b"\r\n", b"\n", b" "]))
def test_base64_size_without_decoding_equals_the_decoded_size(payload: bytes, width: int, sep: bytes) -> None:
    from mailroom.parsing.mime import _b64_size, _b64decode

    encoded = base64.b64encode(payload)
    wrapped = sep.join(encoded[i : i + width] for i in range(0, len(encoded), width)) + sep
    assert _b64_size(wrapped) == len(payload) == len(_b64decode(wrapped))


@pytest.mark.parametrize(
    "data",
    [b"QUJD=RA==", b"QUJ", b"QU!JDRA==", b"====", b"QUJDRA===", b"", b"QUJDRA= =\r\n", b"QUJDRA=\r\n", b"QUJD\r\n=\r\n"],
)
def test_base64_size_of_malformed_input_is_what_decoding_gives(data: bytes) -> None:
    from mailroom.parsing.mime import _b64_size, _b64decode

    assert _b64_size(data) == len(_b64decode(data))


def test_a_5000_id_references_chain_is_parsed_trimmed_to_first_and_last() -> None:
    from mailroom.parsing.headers import MAX_REFERENCES

    ids = "\r\n ".join(f"<r{i}@client.test>" for i in range(5000))
    raw = (
        "Message-ID: <long@client.test>\r\nFrom: a@client.test\r\nSubject: Re: x\r\n"
        f"In-Reply-To: {ids}\r\nReferences: {ids}\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
    ).encode()
    p = parse_message(raw)
    trimmed = ("r0@client.test", *(f"r{i}@client.test" for i in range(5000 - MAX_REFERENCES + 1, 5000)))
    assert len(trimmed) == MAX_REFERENCES == 20
    assert p.references == trimmed
    assert p.in_reply_to == trimmed
    assert p.message_id == "long@client.test"
