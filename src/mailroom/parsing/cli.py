"""``mailroom parse FILE.eml`` / ``mailroom parse --dir DIR``: print ParsedMessage as JSON.

Pure: needs neither Django settings nor the database.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _dump(obj: dict[str, Any], *, pretty: bool) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2 if pretty else None, sort_keys=False)


def handle_parse(args: argparse.Namespace) -> int:
    from mailroom.parsing.mime import parse_message
    from mailroom.parsing.serialize import parsed_to_dict

    trusted = tuple(args.trusted_authserv_id or ())
    out = sys.stdout
    if args.dir:
        root = Path(args.dir)
        if not root.is_dir():
            print(f"mailroom parse: not a directory: {root}", file=sys.stderr)
            return 2
        files = sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            try:
                raw = path.read_bytes()
            except OSError as exc:
                out.write(_dump({"file": str(path), "errors": [f"read_error: {exc}"]}, pretty=False) + "\n")
                continue
            d = parsed_to_dict(parse_message(raw, trusted_authserv_ids=trusted))
            out.write(_dump({"file": str(path), **d}, pretty=False) + "\n")
        return 0
    if not args.file:
        print("mailroom parse: give FILE.eml or --dir DIR", file=sys.stderr)
        return 2
    path = Path(args.file)
    try:
        raw = sys.stdin.buffer.read() if args.file == "-" else path.read_bytes()
    except OSError as exc:
        print(f"mailroom parse: {exc}", file=sys.stderr)
        return 2
    d = parsed_to_dict(parse_message(raw, trusted_authserv_ids=trusted))
    out.write(_dump(d, pretty=not args.compact) + "\n")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``parse`` subcommand to the ``mailroom`` argparse sub-parsers."""
    p = subparsers.add_parser("parse", help="parse .eml files and print the result as JSON")
    p.add_argument("file", nargs="?", help="an RFC 5322 message file ('-' for stdin)")
    p.add_argument("--dir", help="parse every file under DIR, one JSON object per line")
    p.add_argument("--compact", action="store_true", help="single-line JSON for FILE")
    p.add_argument(
        "--trusted-authserv-id",
        action="append",
        metavar="ID",
        help="believe Authentication-Results headers from this authserv-id (repeatable)",
    )
    p.set_defaults(handler=handle_parse)
