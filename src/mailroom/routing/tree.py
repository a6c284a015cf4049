"""RFC 5256 threading of a set of messages into reply trees (REFERENCES and ORDEREDSUBJECT).

Used to show the reply tree inside a conversation, and checked against Dovecot's imaptest scenarios.
Pure: :class:`TreeMessage` values in, :class:`Node` trees out.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mailroom.routing.subjects import base_subject, is_reply

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class TreeMessage:
    key: int  # caller's identifier (IMAP sequence number, message pk)
    message_id: str  # "" when the message has none
    references: tuple[str, ...] = ()
    in_reply_to: tuple[str, ...] = ()
    subject: str = ""
    date: datetime | None = None


@dataclass(eq=False)
class Node:
    message: TreeMessage | None = None  # None: a dummy (a parent we don't have)
    children: list[Node] = field(default_factory=list)
    parent: Node | None = field(default=None, repr=False)

    @property
    def key(self) -> int | None:
        return self.message.key if self.message else None


def _is_ancestor(node: Node, of: Node) -> bool:
    """Whether ``node`` is ``of`` or one of its ancestors."""
    cur: Node | None = of
    while cur is not None:
        if cur is node:
            return True
        cur = cur.parent
    return False


def _unlink(child: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
        child.parent = None


def _link(parent: Node, child: Node) -> None:
    child.parent = parent
    parent.children.append(child)


def _sort_key(node: Node) -> tuple[datetime, int]:
    msg = node.message if node.message else (node.children[0].message if node.children else None)
    if msg is None:
        return (_EPOCH, 0)
    return (
        msg.date if msg.date and msg.date.tzinfo else (msg.date.replace(tzinfo=UTC) if msg.date else _EPOCH),
        msg.key,
    )


def _sort(nodes: list[Node]) -> None:
    for n in nodes:
        _sort(n.children)
    nodes.sort(key=_sort_key)


def _prune(nodes: list[Node], is_root: bool) -> list[Node]:
    out: list[Node] = []
    for n in nodes:
        n.children = _prune(n.children, False)
        for c in n.children:
            c.parent = n
        if n.message is None:
            if not n.children:
                continue
            if not is_root or len(n.children) == 1:
                out.extend(n.children)  # promote
                continue
        out.append(n)
    return out


def thread_references(messages: list[TreeMessage]) -> list[Node]:
    """RFC 5256 THREAD=REFERENCES: the root set, sorted, each node's children sorted by date."""
    table: dict[str, Node] = {}
    nodes: list[Node] = []
    for msg in messages:
        node: Node | None = table.get(msg.message_id) if msg.message_id else None
        if node is not None and node.message is None:
            node.message = msg
        else:
            node = Node(message=msg)  # a duplicate or missing Message-ID gets a container of its own
            if msg.message_id and msg.message_id not in table:
                table[msg.message_id] = node
        nodes.append(node)
        refs = msg.references or msg.in_reply_to[:1]
        containers = [table.setdefault(r, Node()) for r in refs]
        for parent, child in itertools.pairwise(containers):
            if child.parent is None and not _is_ancestor(child, parent):
                _link(parent, child)
        # The message's own references say who its parent is.
        _unlink(node)
        if containers:
            last = containers[-1]
            if not _is_ancestor(node, last):
                _link(last, node)

    seen: set[int] = set()
    roots: list[Node] = []
    for n in [*table.values(), *nodes]:
        if n.parent is None and id(n) not in seen:
            seen.add(id(n))
            roots.append(n)
    roots = _prune(roots, True)
    for r in roots:
        r.parent = None
    _sort(roots)

    # Group the root set by base subject.
    def subject_of(n: Node) -> str:
        msg = n.message or (n.children[0].message if n.children else None)
        return base_subject(msg.subject).casefold() if msg else ""

    def reply(n: Node) -> bool:
        return n.message is not None and is_reply(n.message.subject)

    by_subject: dict[str, Node] = {}
    for r in roots:
        s = subject_of(r)
        if not s:
            continue
        old = by_subject.get(s)
        if (
            old is None
            or (r.message is None and old.message is not None)
            or (old.message is not None and reply(old) and not reply(r) and r.message is not None)
        ):
            by_subject[s] = r
    merged: list[Node] = []
    for r in roots:
        s = subject_of(r)
        target = by_subject.get(s) if s else None
        if target is None or target is r:
            merged.append(r)
            continue
        if target.message is None and r.message is None:
            for c in list(r.children):
                _unlink(c)
                _link(target, c)
        elif target.message is None:
            _link(target, r)
        elif r.message is None:
            # The dummy takes the table's container; it replaces it in the root set.
            _link(r, target)
            by_subject[s] = r
            merged.append(r)
        elif not reply(target) and reply(r):
            _link(target, r)
        else:
            dummy = Node()
            idx = merged.index(target) if target in merged else -1
            _link(dummy, target)
            _link(dummy, r)
            by_subject[s] = dummy
            if idx >= 0:
                merged[idx] = dummy
    roots = [r for r in merged if r.parent is None]
    _sort(roots)
    return roots


def thread_orderedsubject(messages: list[TreeMessage]) -> list[Node]:
    """RFC 5256 THREAD=ORDEREDSUBJECT: group by base subject; the first message (by date) is the
    parent of the others; threads ordered by their first message."""
    groups: dict[str, list[TreeMessage]] = {}
    for msg in messages:
        groups.setdefault(base_subject(msg.subject).casefold(), []).append(msg)
    roots: list[Node] = []
    for msgs in groups.values():
        nodes = [Node(message=m) for m in msgs]
        nodes.sort(key=_sort_key)
        head = nodes[0]
        for n in nodes[1:]:
            _link(head, n)
        roots.append(head)
    roots.sort(key=_sort_key)
    return roots


def format_threads(roots: list[Node]) -> str:
    """The IMAP THREAD response body: ``(3 2)(1)``, ``(1 (2 4)(3))``, ``((1)(2))``."""

    def inner(n: Node) -> str:
        head = "" if n.message is None else str(n.message.key)
        if not n.children:
            return head
        if len(n.children) == 1 and n.message is not None:
            return f"{head} {inner(n.children[0])}"
        kids = "".join(f"({inner(c)})" for c in n.children)
        return f"{head} {kids}" if head else kids

    return "".join(f"({inner(r)})" for r in roots)
