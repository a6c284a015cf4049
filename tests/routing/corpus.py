"""Reading Dovecot imaptest scenarios (``NAME.mbox`` + ``NAME.test.txt``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from mailroom.parsing.headers import summarize_headers
from mailroom.routing.tree import TreeMessage

CORPUS = Path(__file__).resolve().parent.parent / "corpora" / "dovecot-imaptest-threading"
_FROM_LINE = re.compile(r"^From \S+\s+(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})(?:\s+([+-]\d{4}))?")


@dataclass(frozen=True)
class MboxMessage:
    raw: bytes
    internal_date: datetime


def read_mbox(path: Path) -> list[MboxMessage]:
    out: list[MboxMessage] = []
    lines: list[str] = []
    date: datetime | None = None

    def flush() -> None:
        if date is not None:
            body = "\n".join(lines).rstrip("\n") + "\n"
            out.append(MboxMessage(raw=body.replace("\n", "\r\n").encode(), internal_date=date))

    for line in path.read_text("utf-8").split("\n"):
        m = _FROM_LINE.match(line)
        if m:
            flush()
            lines = []
            tz = UTC
            if m.group(2):
                sign = 1 if m.group(2)[0] == "+" else -1
                tz = timezone(sign * timedelta(hours=int(m.group(2)[1:3]), minutes=int(m.group(2)[3:])))
            date = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y").replace(tzinfo=tz)
            continue
        lines.append(line)
    flush()
    return out


def tree_message(key: int, msg: MboxMessage) -> TreeMessage:
    s = summarize_headers(msg.raw)
    return TreeMessage(
        key=key,
        message_id="" if s.message_id_synthesised else s.message_id,
        references=s.references,
        in_reply_to=s.in_reply_to,
        subject=s.subject,
        date=s.date or msg.internal_date,
    )


@dataclass(frozen=True)
class Expectation:
    command: str  # "references", "orderedsubject", "sort"
    mailbox: tuple[int, ...]  # indexes into the mbox of the messages present, in sequence order
    expected: str


def read_script(name: str) -> tuple[list[MboxMessage], list[Expectation]]:
    mbox = read_mbox(CORPUS / f"{name}.mbox")
    text = (CORPUS / f"{name}.test.txt").read_text("utf-8")
    head, _, body = text.partition("\n\n")
    present: list[int] = list(range(len(mbox))) if "messages: all" in head else []
    next_append = len(present)
    deleted: set[int] = set()
    out: list[Expectation] = []
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    i = 0
    while i < len(lines):
        line = lines[i]
        low = line.lower()
        if low == "ok append":
            present.append(next_append)
            next_append += 1
        elif low.startswith("ok store") and "\\deleted" in low:
            seqs = low.split()[2]
            deleted = {int(x) for x in seqs.split(",")}
        elif low == "ok expunge":
            present = [m for seq, m in enumerate(present, start=1) if seq not in deleted]
            deleted = set()
        elif low.startswith(("ok thread", "ok sort")):
            expected = lines[i + 1].split(None, 2)[2]
            cmd = "sort" if low.startswith("ok sort") else low.split()[2]
            out.append(
                Expectation(command=low if cmd == "sort" else cmd, mailbox=tuple(present), expected=expected)
            )
            i += 1
        i += 1
    return mbox, out
