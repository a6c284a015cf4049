from __future__ import annotations

from typing import Any

from mailroom.core import tokens


def test_message_id_roundtrip_with_thread() -> None:
    mid = tokens.make_message_id(thread_id=4242, domain="company.test")
    assert mid.endswith("@company.test")
    assert tokens.parse_own_message_id(mid) == tokens.OwnMessageId(thread_id=4242)
    assert tokens.parse_own_message_id(f"<{mid.upper()}>") == tokens.OwnMessageId(thread_id=4242)


def test_message_id_without_thread() -> None:
    mid = tokens.make_message_id(thread_id=None, domain="company.test")
    assert tokens.parse_own_message_id(mid) == tokens.OwnMessageId(thread_id=None)


def test_forged_message_id_is_not_ours() -> None:
    mid = tokens.make_message_id(thread_id=7, domain="company.test")
    local, domain = mid.split("@")
    forged = local[:-1] + ("a" if local[-1] != "a" else "b") + "@" + domain
    assert tokens.parse_own_message_id(forged) is None
    # Someone else's token pasted onto another thread id is rejected too.
    other = tokens.thread_token(8)
    assert tokens.parse_own_message_id(mid.replace(tokens.thread_token(7), other)) is None
    assert tokens.parse_own_message_id("CAF=abc@mail.gmail.com") is None


def test_other_key_does_not_verify(settings: Any) -> None:
    mid = tokens.make_message_id(thread_id=7, domain="company.test")
    settings.MAILROOM_TOKEN_KEY = "another-installation"
    assert tokens.parse_own_message_id(mid) is None


def test_relay_token_case_folding_and_bits() -> None:
    token, token_id = tokens.make_relay_token()
    assert len(tokens.unb32(token_id) or b"") * 8 == 128
    assert tokens.parse_relay_token(token.upper()) == token_id
    flipped = token[:10] + ("a" if token[10] != "a" else "b") + token[11:]
    assert tokens.parse_relay_token(flipped) is None
    assert tokens.parse_relay_token("not-a-token") is None
