"""Parse results pickle as their constructor arguments (they cross to and from the parse workers)."""

from __future__ import annotations

import copy
import pickle

from mailroom.parsing.mime import ParsedMessage, parse_message

from .helpers import corpus_files


def test_a_parse_result_comes_back_from_pickle_equal_and_whole() -> None:
    files = [f for f in corpus_files("imap-tools") if f.suffix == ".eml"][:40]
    parsed = [parse_message(f.read_bytes()) for f in files]
    assert any(p.attachments for p in parsed) and any(p.nested for p in parsed)
    back = pickle.loads(pickle.dumps(parsed))  # noqa: S301 - our own bytes, as between the parse workers
    assert back == parsed
    assert [type(p) for p in back] == [ParsedMessage] * len(parsed)
    assert copy.deepcopy(parsed) == parsed


def test_the_pickle_is_the_constructor_and_its_arguments() -> None:
    parsed = parse_message(b"From: A <a@example.com>\r\nSubject: Hi\r\n\r\nHello\r\n")
    cls, args = parsed.__reduce__()
    assert cls is ParsedMessage and cls(*args) == parsed
    assert args[0] == parsed.message_id and len(args) == len(ParsedMessage.__dataclass_fields__)
