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
    """Whether ``node`` is ``of`` or one of its ancestors.

    Walks up from ``of`` and down through ``node``'s subtree in step, so it costs twice the smaller of
    the two: a fresh message (no children) is answered at once, however deep the chain it joins.
    """
    if node is of:
        return True
    if not node.children:
        return False
    up: Node | None = of.parent
    down: list[Node] = list(node.children)
    while up is not None and down:
        if up is node:
            return True
        up = up.parent
        n = down.pop()
        if n is of:
            return True
        down.extend(n.children)
    return False  # the walk up reached a root, or the subtree ended, without meeting the other


def _walk(roots: list[Node]) -> list[Node]:
    """Every node under ``roots`` (roots included), parents before their children. Iterative: a reply
    chain is as deep as its sender makes it."""
    out: list[Node] = []
    stack = list(reversed(roots))
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(reversed(n.children))
    return out


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
    """Sort ``nodes`` and every children list under them by date; children first (a dummy sorts by
    its first child)."""
    for n in reversed(_walk(nodes)):
        if len(n.children) > 1:
            n.children.sort(key=_sort_key)
    nodes.sort(key=_sort_key)


def _prune(nodes: list[Node], is_root: bool) -> list[Node]:
    """RFC 5256 2.2 (4): drop dummies without children, promote the children of the others (at the
    root level only of a dummy with one child). Children are pruned before their parent; parents are
    set once at the end."""
    promoted: dict[int, list[Node]] = {}  # id(dummy) -> what stands in its place below the root level
    for n in reversed(_walk(nodes)):
        kids = n.children
        if any(c.message is None for c in kids):
            if len(kids) == 1:
                n.children = promoted[id(kids[0])]
            else:
                new: list[Node] = []
                for c in kids:
                    if c.message is None:
                        new.extend(promoted.pop(id(c)))
                    else:
                        new.append(c)
                n.children = new
        if n.message is None:
            promoted[id(n)] = n.children
    out: list[Node] = []
    for n in nodes:
        if n.message is None:
            if not n.children:
                continue
            if not is_root or len(n.children) == 1:
                out.extend(n.children)  # promote
                continue
        out.append(n)
    for n in out:
        n.parent = None
    for n in _walk(out):
        for c in n.children:
            c.parent = n
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
        containers: list[Node] = []
        for ref in refs:
            container = table.get(ref)
            if container is None:
                container = table[ref] = Node()
            containers.append(container)
        for parent, child in itertools.pairwise(containers):
            if child.parent is None and not _is_ancestor(child, parent):
                _link(parent, child)
        # The message's own references say who its parent is.
        last = containers[-1] if containers else None
        if last is not None and node.parent is last:
            continue  # already there (children are sorted later): no O(siblings) unlink
        _unlink(node)
        if last is not None and not _is_ancestor(node, last):
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
    index_of: dict[int, int] = {}  # id(root) -> its place in ``merged``
    for r in roots:
        s = subject_of(r)
        target = by_subject.get(s) if s else None
        if target is None or target is r:
            index_of[id(r)] = len(merged)
            merged.append(r)
            continue
        if target.message is None and r.message is None:
            for c in r.children:
                c.parent = target
            target.children.extend(r.children)
            r.children = []
        elif target.message is None:
            _link(target, r)
        elif r.message is None:
            # The dummy takes the table's container; it replaces it in the root set.
            _link(r, target)
            by_subject[s] = r
            index_of[id(r)] = len(merged)
            merged.append(r)
        elif not reply(target) and reply(r):
            _link(target, r)
        else:
            dummy = Node()
            idx = index_of.pop(id(target), -1)
            _link(dummy, target)
            _link(dummy, r)
            by_subject[s] = dummy
            if idx >= 0:
                merged[idx] = dummy
                index_of[id(dummy)] = idx
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

    # Iterative (a reply chain is as deep as its sender makes it): a stack of nodes still to write
    # and literal text, popped in order.
    out: list[str] = []
    stack: list[Node | str] = []
    for r in reversed(roots):
        stack += [")", r, "("]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        head = "" if item.message is None else str(item.message.key)
        kids = item.children
        if not kids:
            out.append(head)
        elif len(kids) == 1 and item.message is not None:
            out.append(f"{head} ")
            stack.append(kids[0])
        else:
            if head:
                out.append(f"{head} ")
            for c in reversed(kids):
                stack += [")", c, "("]
    return "".join(out)
