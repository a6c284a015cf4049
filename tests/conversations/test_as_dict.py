"""Parse results are stored as JSON through ``_as_dict``: it must give what ``dataclasses.asdict`` gives."""

from __future__ import annotations

import dataclasses
import json

from mailroom.conversations.services import _as_dict
from mailroom.parsing.mime import parse_message
from tests.parsing.helpers import corpus_files


def test_as_dict_gives_what_asdict_gives_for_every_corpus_message() -> None:
    files = [f for f in corpus_files("imap-tools") if f.suffix == ".eml"]
    assert len(files) >= 40
    for f in files:
        parsed = parse_message(f.read_bytes())
        for part in (parsed.bounce, parsed.auth, parsed.routing, parsed.attachments, parsed.nested[:2]):
            expected = json.loads(json.dumps(dataclasses.asdict(part) if dataclasses.is_dataclass(part) else
                                             [dataclasses.asdict(p) for p in part], default=str))
            assert json.loads(json.dumps(_as_dict(part), default=str)) == expected, f.name
