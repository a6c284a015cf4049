from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from mailroom.parsing.cli import register
from mailroom.parsing.mime import parse_message
from mailroom.parsing.serialize import parsed_to_dict

from .helpers import CORPORA


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.handler(args))


def test_parse_file_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    f = CORPORA / "thunderbird-charsets" / "sample05-windows1251.eml"
    assert _run(["parse", str(f)]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("message_id", "in_reply_to", "references", "subject", "from", "to", "cc", "date", "text", "reply_text", "html",
                "attachments", "is_auto_reply", "is_bulk", "bounce", "auth", "errors"):  # fmt: skip
        assert key in out, key
    assert out["subject"] == "Алфавит"
    assert set(out["bounce"]) >= {"is_bounce", "recipients", "original_message_id"}
    assert set(out["auth"]) >= {"dkim", "dmarc"}


def test_parse_dir_one_object_per_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for f in (CORPORA / "thunderbird-charsets").glob("*.eml"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    assert _run(["parse", "--dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert len(lines) == 3
    assert sorted(Path(json.loads(x)["file"]).name for x in lines) == sorted(
        f.name for f in tmp_path.iterdir()
    )


def test_parsed_to_dict_bounce_shape() -> None:
    raw = (CORPORA / "sisimai-set-of-emails" / "maildir" / "bsd" / "lhost-postfix-01.eml").read_bytes()
    d = parsed_to_dict(parse_message(raw))
    json.dumps(d)
    r = d["bounce"]["recipients"][0]
    assert set(r) >= {"address", "status", "action", "hard"}
    a = parsed_to_dict(parse_message((CORPORA / "rspamd-cyrillic" / "spam.eml").read_bytes()))["attachments"][
        0
    ]
    assert (a["filename"], a["content_type"], a["inline"]) == (
        "Список-Аудиоэнциклопедии.txt",
        "text/plain",
        False,
    )
    assert a["size"] > 0
