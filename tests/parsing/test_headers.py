"""The import path's address reader: its fast path for the everyday forms must give exactly what the
stdlib parser gives, and hand everything else to it."""

from __future__ import annotations

import hashlib
from email.utils import getaddresses, parseaddr
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailroom.parsing.headers import (
    MAX_REFERENCES,
    Address,
    _fast_pairs,
    msgid_list,
    parse_addresses,
    parse_one_address,
    summarize_headers,
    trim_references,
)
from mailroom.parsing.rawheaders import parse_header_block

CORPORA = Path(__file__).resolve().parent.parent / "corpora"


@pytest.mark.parametrize(("value", "pairs"), [
    ("John Doe <j@x.com>", [("John Doe", "j@x.com")]),
    ('"Doe, John" <j@x.com>', [("Doe, John", "j@x.com")]),
    ("John   Q.  Doe <j@x.com>", [("John Q. Doe", "j@x.com")]),
    ("j@x.com", [("", "j@x.com")]),
    ('a@b.c, "X \\" Y" <d@e.f>, Ivan <i@r.ru>,', [("", "a@b.c"), ('X " Y', "d@e.f"), ("Ivan", "i@r.ru")]),
    ("Иван Петров <i@r.ru>,\r\n <q@y.ru>", [("Иван Петров", "i@r.ru"), ("", "q@y.ru")]),
    ("=?utf-8?b?0JjQstCw0L0=?= <i@r.ru>", [("=?utf-8?b?0JjQstCw0L0=?=", "i@r.ru")]),
])
def test_fast_path_reads_the_everyday_forms(value: str, pairs: list[tuple[str, str]]) -> None:
    assert _fast_pairs(value) == pairs == getaddresses([value])


@pytest.mark.parametrize("value", [
    "a@b,,c@d",  # empty item
    "j@x (John Doe)",  # comment
    "Team: a@b, c@d;",  # group
    '"quoted local"@x.com',  # quoted local part
    "<@route:j@x>",  # source route
    "John <j@[127.0.0.1]>",  # domain literal
    '"broken <j@x>',  # unbalanced quote
    "undisclosed-recipients:;",
])
def test_fast_path_hands_the_rest_to_the_stdlib(value: str) -> None:
    assert _fast_pairs(value) is None


_PIECES = st.sampled_from([
    "a", "Ivan", "Иван", "O'Brien", " ", "  ", ".", ",", "<", ">", '"', "\\", "@", "(", ")", ":", ";", "[", "]",
    "\r\n ", "\t", "=?utf-8?b?0JjQstCw0L0=?=", "x.y", "+tag", "-", "_", "mail.ru", "a@b", "<a@b>", "\"N, M\"",
])


@settings(max_examples=3000, deadline=None)
@given(st.lists(_PIECES, max_size=14).map("".join))
def test_fast_path_equals_the_stdlib_parser(value: str) -> None:
    fast = _fast_pairs(value)
    if fast is not None:
        assert fast == getaddresses([value])


_WORD = st.sampled_from(["Ivan", "Иван", "O'Brien", "J.", "x.y", "=?utf-8?q?=D0=98?=", "+", "Doe,", "a@b", "\\\"", "(c)"])
_SPACE = st.sampled_from(["", " ", "  ", "\t", "\r\n "])
_ADDR = st.builds("{}@{}".format, st.sampled_from(["a", "j.doe", "x+y", "O'B", "a..b", "-"]),
                  st.sampled_from(["b", "mail.ru", "x.com.", "[1.2.3.4]"]))
_NAME = st.lists(st.tuples(_WORD, _SPACE).map("".join), max_size=4).map("".join)
_ITEM = st.one_of(
    _ADDR,
    st.builds("{}<{}>".format, _NAME, _ADDR),
    st.builds('"{}"{}<{}>'.format, _NAME, _SPACE, _ADDR),
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.tuples(_SPACE, _ITEM, _SPACE).map("".join), min_size=1, max_size=4).map(",".join))
def test_fast_path_equals_the_stdlib_parser_on_address_lists(value: str) -> None:
    fast = _fast_pairs(value)
    if fast is not None:
        assert fast == getaddresses([value])


def test_fast_path_agrees_on_every_address_header_in_the_corpora() -> None:
    checked = 0
    for path in sorted(CORPORA.rglob("*.eml")):
        block, _ = parse_header_block(path.read_bytes())
        for name in ("from", "to", "cc", "reply-to"):
            for value in block.get_all(name) or []:
                fast = _fast_pairs(value)
                if fast is not None:
                    assert fast == getaddresses([value]), (path, value)
                    checked += 1
    assert checked > 500


def test_parse_addresses_normalises_and_dedupes() -> None:
    assert parse_addresses(['"Ivan" <I@R.RU>, i@r.ru', "=?utf-8?b?0JjQstCw0L0=?= <p@r.ru>"]) == (
        Address("i@r.ru", "Ivan"), Address("p@r.ru", "Иван"))


@pytest.mark.parametrize("value", ["Client 7 <client7@client.test>", "a@b", '"Doe, J" <j@x>', "a@b, c@d", "j@x (J)", ""])
def test_parse_one_address_is_parseaddr(value: str) -> None:
    assert parse_one_address(value) == parseaddr(value)


@pytest.mark.parametrize(
    "body",
    [b"", b"\r\n", b"Hello\r\nworld\r\n\r\n\r\n", b"bare\rCR\n\nLF only\n", b"no newline at the end", b"\n\n\n"],
)
def test_the_content_hash_is_the_stored_identity_formula(body: bytes) -> None:
    """Stored messages carry this hash as their identity: the formula must never drift."""
    from mailroom.parsing.headers import content_hash_of

    expected = hashlib.sha256(
        b"<a@b>\0Mon, 1 Jan 2024 10:00:00 +0000\0A <a@b>\0Hi\0" + body.replace(b"\r", b"").rstrip(b"\n")
    ).hexdigest()
    assert content_hash_of(" <a@b> ", "Mon, 1 Jan 2024 10:00:00 +0000", "A <a@b>", "Hi ", body) == expected
    # The CRLF copy (IMAP) and the LF copy (a Maildir, an .eml file) of a message are one message.
    lf_copy = body.replace(b"\r\n", b"\n")
    assert content_hash_of("<a@b>", "Mon, 1 Jan 2024 10:00:00 +0000", "A <a@b>", "Hi", lf_copy) == expected


@pytest.mark.parametrize(("raw_value", "ids"), [
    (b"<a@x> <b@y>\r\n <a@x>", ("a@x", "b@y")),
    # UTF-8 ids (RFC 6532; Russian mail software): text, not the raw header's surrogate escapes.
    ("<письмо.1@пример.рф> <ответ@почта.рф>".encode(), ("письмо.1@пример.рф", "ответ@почта.рф")),
    # Bytes that are no UTF-8 (a KOI8-R id), control characters: what a database column takes.
    (b"<\xf0\xc9\xd3\xd8\xcd\xcf@x> <a\x00b\x01@y>", ("\\xf0\\xc9\\xd3\\xd8\\xcd\\xcf@x", "ab@y")),
])
def test_message_ids_are_text_a_database_stores(raw_value: bytes, ids: tuple[str, ...]) -> None:
    block, _ = parse_header_block(b"References: " + raw_value + b"\r\n\r\n")
    assert msgid_list(block.get("references")) == ids


def test_an_id_named_by_two_headers_is_the_same_id_in_both() -> None:
    raw = "Message-ID: <заказ\x00-7@магазин.рф>\r\nIn-Reply-To: <заказ\x00-7@магазин.рф>\r\n\r\nx".encode()
    s = summarize_headers(raw)
    assert (s.message_id, s.in_reply_to) == ("заказ-7@магазин.рф", ("заказ-7@магазин.рф",))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_any_header_bytes_give_storable_ids(value: bytes) -> None:
    block, _ = parse_header_block(b"References: <" + value.replace(b"\n", b"") + b"@x>\r\n\r\n")
    for i in msgid_list(block.get("references")):
        i.encode("utf-8")
        assert "\x00" not in i


def _long_chain_message(count: int) -> bytes:
    ids = "\r\n ".join(f"<r{i}@client.test>" for i in range(count))  # folded, as clients write it
    return (
        "Message-ID: <long@client.test>\r\nFrom: a@client.test\r\nSubject: Re: x\r\n"
        f"In-Reply-To: {ids}\r\nReferences: {ids}\r\n\r\nbody\r\n"
    ).encode()


# RFC 5322 3.6.4: the first id (the thread's root) and the last MAX_REFERENCES - 1 (the nearest parents).
TRIMMED = ("r0@client.test", *(f"r{i}@client.test" for i in range(5000 - MAX_REFERENCES + 1, 5000)))


def test_a_5000_id_references_chain_is_stored_trimmed_to_first_and_last() -> None:
    assert MAX_REFERENCES == 20 and len(TRIMMED) == MAX_REFERENCES
    s = summarize_headers(_long_chain_message(5000))
    assert s.references == TRIMMED
    assert s.in_reply_to == TRIMMED
    assert s.message_id == "long@client.test"


def test_a_short_references_chain_is_kept_whole() -> None:
    s = summarize_headers(_long_chain_message(MAX_REFERENCES))
    assert s.references == tuple(f"r{i}@client.test" for i in range(MAX_REFERENCES))


def test_trim_references_dedupes_before_counting() -> None:
    refs = ["a@x", "", "b@x", "a@x", *(f"c{i}@x" for i in range(30)), "b@x"]
    assert trim_references(refs) == ("a@x", *(f"c{i}@x" for i in range(11, 30)))
    assert trim_references(["a@x", "b@x", "a@x"]) == ("a@x", "b@x")
