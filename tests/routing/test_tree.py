"""RFC 5256 reply trees: the same trees as before on small inputs, and no recursion on deep or wide ones
(a thread of ~1,000 replies made its view a permanent 500: RecursionError in the tree pruning)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from mailroom.parsing.headers import MAX_REFERENCES, trim_references
from mailroom.routing.tree import Node, TreeMessage, format_threads, thread_orderedsubject, thread_references

T0 = datetime(2025, 1, 1, tzinfo=UTC)
N = 10_000  # ten times the interpreter's default recursion limit


def _m(key: int, mid: str, refs: tuple[str, ...] = (), subject: str = "s", minutes: int = 0) -> TreeMessage:
    return TreeMessage(key, mid, refs, (), subject, T0 + timedelta(minutes=minutes))


def _structure(roots: list[Node]) -> list[tuple[int | None, int | None]]:
    """(key, parent key) of every node, depth first, checking each node's parent link on the way."""
    out: list[tuple[int | None, int | None]] = []
    stack: list[tuple[Node, Node | None]] = [(r, None) for r in reversed(roots)]
    while stack:
        node, parent = stack.pop()
        assert node.parent is parent
        out.append((node.key, parent.key if parent is not None else None))
        stack.extend((c, node) for c in reversed(node.children))
    return out


# The answers of the recursive implementation these functions replaced.
SMALL = {
    "branches": (
        [_m(1, "a"), _m(2, "b", ("a",), minutes=2), _m(3, "c", ("a",), minutes=1),
         _m(4, "d", ("a", "c"), minutes=3), _m(5, "e", ("a", "b"), minutes=4)],
        "(1 (3 4)(2 5))",
        "(1 (3)(2)(4)(5))",
    ),
    "missing_root": (
        [_m(1, "b", ("x",), minutes=1), _m(2, "c", ("x",)), _m(3, "d", ("x", "c"), minutes=2)],
        "((2 3)(1))",
        "(2 (1)(3))",
    ),
    "missing_middle": ([_m(1, "a"), _m(2, "c", ("a", "b"), minutes=1)], "(1 2)", "(1 2)"),
    "loop": ([_m(1, "a", ("b",)), _m(2, "b", ("a",), minutes=1)], "(2 1)", "(1 2)"),
    "subjects": (
        [_m(1, "a", subject="Hello"), _m(2, "b", subject="Re: Hello", minutes=1),
         _m(3, "c", subject="Other", minutes=2), _m(4, "d", subject="hello", minutes=3)],
        "((1 2)(4))(3)",
        "(1 (2)(4))(3)",
    ),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_trees_are_unchanged(name: str) -> None:
    msgs, references, orderedsubject = SMALL[name]
    assert format_threads(thread_references(msgs)) == references
    assert format_threads(thread_orderedsubject(msgs)) == orderedsubject


def test_small_tree_parent_links() -> None:
    roots = thread_references(SMALL["branches"][0])
    assert _structure(roots) == [(1, None), (3, 1), (4, 3), (2, 1), (5, 2)]
    roots = thread_references(SMALL["missing_root"][0])
    assert _structure(roots) == [(None, None), (2, None), (3, 2), (1, None)]


def _chain(order: list[int], *, with_references: bool) -> list[TreeMessage]:
    msgs = []
    for i in order:
        if with_references:  # as a client writes them: the whole chain, trimmed to first + last
            chain = ["m0@x", *(f"m{j}@x" for j in range(max(1, i - MAX_REFERENCES), i))] if i else []
            refs = trim_references(chain)
            msgs.append(TreeMessage(i, f"m{i}@x", refs, (), "Re: s", T0 + timedelta(seconds=i)))
        else:
            irt = (f"m{i - 1}@x",) if i else ()
            msgs.append(TreeMessage(i, f"m{i}@x", (), irt, "Re: s", T0 + timedelta(seconds=i)))
    return msgs


@pytest.mark.parametrize("with_references", [False, True], ids=["in-reply-to", "references"])
@pytest.mark.parametrize("order", ["date", "reversed", "shuffled"])
def test_a_10000_deep_reply_chain(order: str, with_references: bool) -> None:
    keys = list(range(N))
    if order == "reversed":
        keys.reverse()
    elif order == "shuffled":
        random.Random(5256).shuffle(keys)
    roots = thread_references(_chain(keys, with_references=with_references))
    assert _structure(roots) == [(i, i - 1 if i else None) for i in range(N)]
    assert format_threads(roots) == "(" + " ".join(str(i) for i in range(N)) + ")"


def test_a_10000_wide_sibling_set() -> None:
    keys = list(range(1, N + 1))
    random.Random(7).shuffle(keys)
    replies = [_m(k, f"r{k}", ("root",), minutes=k) for k in keys]
    # The parent we have: one root, its replies sorted by date.
    roots = thread_references([_m(0, "root"), *replies])
    assert _structure(roots) == [(0, None), *((k, 0) for k in range(1, N + 1))]
    assert format_threads(roots) == "(0 " + "".join(f"({k})" for k in range(1, N + 1)) + ")"
    # The parent we don't have: a dummy root keeps the siblings together.
    roots = thread_references(replies)
    assert _structure(roots) == [(None, None), *((k, None) for k in range(1, N + 1))]
    assert format_threads(roots) == "(" + "".join(f"({k})" for k in range(1, N + 1)) + ")"
    # ORDEREDSUBJECT: the first message is the parent of the others.
    roots = thread_orderedsubject(replies)
    assert format_threads(roots) == "(1 " + "".join(f"({k})" for k in range(2, N + 1)) + ")"


def test_10000_roots_merged_by_subject_in_pairs() -> None:
    msgs = [_m(k, f"m{k}", subject=f"topic {k // 2}", minutes=k) for k in range(N)]
    roots = thread_references(msgs)
    assert format_threads(roots) == "".join(f"(({k})({k + 1}))" for k in range(0, N, 2))


def test_10000_missing_parents_named_by_one_message() -> None:
    roots = thread_references([_m(1, "x", tuple(f"d{j}" for j in range(N)))])
    assert _structure(roots) == [(1, None)]
    assert format_threads(roots) == "(1)"


def test_format_threads_of_a_10000_deep_tree_of_nodes() -> None:
    root = node = Node(message=_m(0, "m0"))
    for i in range(1, N):
        child = Node(message=_m(i, f"m{i}"), parent=node)
        node.children.append(child)
        node = child
    node.children = [Node(message=_m(N, "a"), parent=node), Node(message=_m(N + 1, "b"), parent=node)]
    expected = "(" + " ".join(str(i) for i in range(N)) + f" ({N})({N + 1}))"
    assert format_threads([root]) == expected
