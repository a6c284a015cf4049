from __future__ import annotations

from typing import Any

import pytest

from mailroom.core import crypto


def test_roundtrip_and_key_id() -> None:
    token = crypto.encrypt("пароль-secret")
    assert token.startswith("mr1:test1:")
    assert "secret" not in token
    assert crypto.decrypt(token) == "пароль-secret"


def test_rotation_old_key_still_decrypts(settings: Any) -> None:
    old = crypto.encrypt("v")
    settings.MAILROOM_ENCRYPTION_KEYS = "k2:" + "B" * 43 + ",test1:" + "A" * 43
    assert crypto.decrypt(old) == "v"
    assert crypto.needs_rotation(old) is True
    assert crypto.encrypt("v").startswith("mr1:k2:")


def test_tampered_ciphertext_is_rejected() -> None:
    token = crypto.encrypt("v")
    prefix, kid, body = token.split(":")
    mid = len(body) // 2  # a character that carries data (not base64 padding bits)
    flipped = body[:mid] + ("A" if body[mid] != "A" else "B") + body[mid + 1 :]
    with pytest.raises(crypto.DecryptError, match="failed authentication"):
        crypto.decrypt(f"{prefix}:{kid}:{flipped}")


def test_missing_key_refuses_with_clear_message(settings: Any, tmp_path: Any) -> None:
    settings.MAILROOM_ENCRYPTION_KEYS = ""
    settings.MAILROOM_KEY_FILE = tmp_path / "none.keys"
    with pytest.raises(crypto.KeyMissingError, match="MAILROOM_ENCRYPTION_KEYS"):
        crypto.encrypt("v")


def test_unknown_key_id(settings: Any) -> None:
    token = crypto.encrypt("v")
    settings.MAILROOM_ENCRYPTION_KEYS = "other:" + "C" * 43
    with pytest.raises(crypto.DecryptError, match="'test1', which is not configured"):
        crypto.decrypt(token)


def test_ensure_key_file_creates_once(settings: Any, tmp_path: Any) -> None:
    settings.MAILROOM_ENCRYPTION_KEYS = ""
    settings.MAILROOM_KEY_FILE = tmp_path / "enc.keys"
    assert crypto.ensure_key_file() is True
    assert crypto.ensure_key_file() is False
    assert (tmp_path / "enc.keys").stat().st_mode & 0o777 == 0o600
    assert crypto.decrypt(crypto.encrypt("x")) == "x"
