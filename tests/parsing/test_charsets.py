from __future__ import annotations

import base64
import random

import pytest

from mailroom.parsing.charsets import decode_bytes, decode_bytes_ex, decode_header_value, normalize_charset

RU = "Здравствуйте, высылаю договор и счёт на оплату. Спасибо!"


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("cp1251", "windows-1251"),
        ("Win-1251", "windows-1251"),
        ('"windows-1251"', "windows-1251"),
        ("CP-1251", "windows-1251"),
        ("koi8r", "koi8-r"),
        ("KOI8-U", "koi8-u"),
        ("x-mac-cyrillic", "mac-cyrillic"),
        ("ks_c_5601-1987", "cp949"),
        ("utf8", "utf-8"),
        (None, "utf-8"),
    ],
)
def test_normalize_charset(label: str | None, expected: str) -> None:
    assert normalize_charset(label) == expected


@pytest.mark.parametrize("codec", ["windows-1251", "koi8-r", "mac-cyrillic", "cp866"])
def test_declared_cyrillic_charsets_decode(codec: str) -> None:
    assert decode_bytes(RU.encode(codec), codec) == RU


@pytest.mark.parametrize("lie", ["us-ascii", "iso-8859-1", "windows-1252", None, "bad-charset"])
def test_cp1251_bytes_with_a_wrong_or_missing_declaration(lie: str | None) -> None:
    text, used, trusted = decode_bytes_ex(RU.encode("cp1251"), lie)
    assert text == RU
    assert used == "windows-1251"
    assert trusted is False


def test_koi8r_bytes_without_declaration_are_detected() -> None:
    assert decode_bytes(RU.encode("koi8-r"), None) == RU


def test_latin1_declaration_is_kept_for_western_text() -> None:
    fr = "Le café est très bon, à bientôt."
    assert decode_bytes(fr.encode("latin-1"), "iso-8859-1") == fr


def test_utf8_declared_but_cp1251_bytes() -> None:
    assert decode_bytes(RU.encode("cp1251"), "utf-8") == RU


def test_unknown_label_with_ascii_text() -> None:
    assert decode_bytes(b"Matterhorn1 search", "bad-charset") == "Matterhorn1 search"


def test_multi_chunk_mixed_charset_subject() -> None:
    a = base64.b64encode("Договор ".encode("koi8-r")).decode()
    b = "=D1=F7=B8=F2"  # "Счёт" in windows-1251, Q-encoded
    c = base64.b64encode(" на оплату".encode()).decode()
    value = f"=?koi8-r?B?{a}?=\r\n =?windows-1251?Q?{b}?=\r\n =?UTF-8?B?{c}?="
    assert decode_header_value(value) == "Договор Счёт на оплату"


def test_utf8_character_split_across_encoded_words() -> None:
    data = "Привет".encode()
    value = (
        f"=?UTF-8?B?{base64.b64encode(data[:3]).decode()}?= =?UTF-8?B?{base64.b64encode(data[3:]).decode()}?="
    )
    assert decode_header_value(value) == "Привет"


def test_raw_8bit_cp1251_header_is_detected() -> None:
    raw = "Счёт на оплату №15".encode("cp1251").decode("ascii", "surrogateescape")
    assert decode_header_value(raw) == "Счёт на оплату №15"


def test_control_characters_in_decoded_subject_become_spaces() -> None:
    value = "=?koi8-r?B?" + base64.b64encode("Алфавит\n".encode("koi8-r")).decode() + "?="
    assert decode_header_value(value) == "Алфавит"


def test_text_between_encoded_words_is_kept() -> None:
    assert decode_header_value("Re: =?UTF-8?Q?=D0=90?= and =?UTF-8?Q?=D0=91?=") == "Re: А and Б"


def test_garbage_never_raises() -> None:
    rng = random.Random(7)
    labels = [
        "utf-8",
        "us-ascii",
        "koi8-r",
        "windows-1251",
        "x-unknown",
        "utf-16",
        "iso-2022-jp",
        "",
        "gb2312",
    ]
    for _ in range(300):
        data = rng.randbytes(rng.randint(0, 200))
        assert isinstance(decode_bytes(data, rng.choice(labels)), str)
        assert isinstance(
            decode_header_value(f"=?{rng.choice(labels)}?B?{base64.b64encode(data).decode()}?="), str
        )
    assert isinstance(decode_header_value("=?utf-8?Q?broken=ZZ?= =?nonsense?X?x?="), str)


def test_raw_8bit_subject_uses_the_messages_other_charset() -> None:
    from mailroom.parsing.mime import parse_message

    raw = (
        b'From: "=?Windows-1252?B?Rm9ybWHn428=?=" <info@example.com>\r\nTo: a@example.org\r\n'
        b"Subject: Forma\xe7\xe3o final Ver\xe3o\r\n\r\nhi\r\n"
    )
    assert parse_message(raw).subject == "Formação final Verão"
    # Without a hint Cyrillic raw subjects are still recognised.
    assert (
        decode_header_value("Привет мир".encode("cp1251").decode("utf-8", "surrogateescape"), "windows-1252")
        == "Привет мир"
    )
