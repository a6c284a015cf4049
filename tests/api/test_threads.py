"""/api/v1/threads: view, list, merge, split, accept/reject, deal; anonymous/other-team/permitted."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client

from mailroom.conversations.models import Message, MessagePlacement, Participant, Thread, ThreadAlias
from mailroom.core.tokens import make_message_id
from mailroom.crm.models import ContactEmail
from tests.conversations.mail import ingest, raw_email, sent
from tests.factories import ContactEmailFactory, ContactFactory, DealFactory, MailboxFactory

pytestmark = pytest.mark.django_db
T0 = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)


def _post(client: Client, url: str, body: Any = None, method: str = "post") -> Any:
    if method == "get":
        return client.get(url)
    return getattr(client, method)(url, data=json.dumps(body or {}), content_type="application/json")


@pytest.fixture
def world(team: Any) -> dict[str, Any]:
    box = MailboxFactory(team=team, email="manager0@company.test")
    anna = ContactFactory(team=team)
    ContactEmailFactory(contact=anna, address="anna@client.test", canonical="anna@client.test")
    a1, a2 = ingest(
        team,
        box,
        raw_email(mid="a1@client.test", frm="anna@client.test", subject="Alpha", date=T0),
        sent(
            raw_email(
                mid="a2@company.test",
                frm="manager0@company.test",
                to="anna@client.test",
                subject="Re: Alpha",
                date=T0 + timedelta(hours=1),
                irt="a1@client.test",
                refs=["a1@client.test"],
            )
        ),
    )
    b1 = ingest(
        team,
        box,
        raw_email(mid="b1@client.test", frm="anna@client.test", subject="Beta", date=T0 + timedelta(hours=2)),
    )[0]
    spoof = ingest(
        team,
        box,
        raw_email(
            mid="s1@evil.test",
            frm="boss@client.test",
            subject="Re: Alpha",
            date=T0 + timedelta(hours=3),
            irt="a1@client.test",
        ),
    )[0]
    a1.refresh_from_db()
    b1.refresh_from_db()
    spoof.refresh_from_db()
    return {
        "box": box,
        "anna": anna,
        "a1": a1,
        "a2": a2,
        "b1": b1,
        "spoof": spoof,
        "alpha": a1.thread,
        "beta": b1.thread,
        "unverified": spoof.thread,
        "deal": DealFactory(team=team),
    }


def _endpoints(w: dict[str, Any]) -> list[tuple[str, str, Any]]:
    a, b, u = w["alpha"].pk, w["beta"].pk, w["unverified"].pk
    return [
        ("get", f"/api/v1/threads/{a}", None),
        ("post", f"/api/v1/threads/{a}/merge", {"thread_id": b}),
        ("post", f"/api/v1/threads/{a}/split", {"message_id": w["a2"].pk}),
        ("post", f"/api/v1/threads/{u}/accept", None),
        ("post", f"/api/v1/threads/{u}/reject", None),
        ("put", f"/api/v1/threads/{a}/deal", {"deal_id": w["deal"].pk}),
    ]


def _state() -> tuple[Any, ...]:
    return (
        list(Thread.objects.order_by("id").values_list("id", "message_count", "deal_id", "verification")),
        list(Message.objects.order_by("id").values_list("id", "thread_id")),
        ThreadAlias.objects.count(),
        MessagePlacement.objects.count(),
        list(Participant.objects.order_by("id").values_list("id", "contact_id")),
    )


def test_anonymous_401_and_no_side_effect(world: dict[str, Any]) -> None:
    before = _state()
    for method, url, body in [*_endpoints(world), ("get", "/api/v1/threads", None)]:
        assert _post(Client(), url, body, method).status_code == 401, url
    assert _state() == before


def test_other_team_404_and_no_side_effect(world: dict[str, Any], other_team_client: Client) -> None:
    before = _state()
    for method, url, body in _endpoints(world):
        r = _post(other_team_client, url, body, method)
        assert r.status_code == 404, url
    assert other_team_client.get("/api/v1/threads").json() == {
        "items": [], "next_cursor": None, "count": 0, "count_kind": "exact"
    }
    assert _state() == before


def test_foreign_references_in_own_request_are_404(
    world: dict[str, Any], other_team_client: Client, db: Any
) -> None:
    # A user of another team may not merge our thread into his, nor put his thread on our deal.
    from mailroom.accounts.models import Team
    from tests.factories import ThreadFactory

    other_team = Team.objects.exclude(pk=world["alpha"].team_id).get()
    theirs = ThreadFactory(team=other_team, message_count=1)
    before = _state()
    r = _post(other_team_client, f"/api/v1/threads/{theirs.pk}/merge", {"thread_id": world["alpha"].pk})
    assert r.status_code == 404
    r = _post(other_team_client, f"/api/v1/threads/{theirs.pk}/deal", {"deal_id": world["deal"].pk}, "put")
    assert r.status_code == 404
    assert _state() == before


def test_thread_view_lists_messages_with_tree_and_reasons(api_client: Client, world: dict[str, Any]) -> None:
    body = api_client.get(f"/api/v1/threads/{world['alpha'].pk}").json()
    assert (body["subject"], body["message_count"], body["verification"]) == ("Alpha", 2, "")
    assert [(m["id"], m["direction"], m["parent"]) for m in body["messages"]] == [
        (world["a1"].pk, "incoming", None),
        (world["a2"].pk, "outgoing", world["a1"].pk),
    ]
    assert body["messages"][0]["mailboxes"] == [world["box"].pk]
    assert body["messages"][1]["routing"]["thread"]["rules"][0]["rule"] == "in_reply_to_known"
    assert body["participants"] == ["anna@client.test", "manager0@company.test"]


def test_thread_list_pagination_and_unverified_filter(api_client: Client, world: dict[str, Any]) -> None:
    p1 = api_client.get("/api/v1/threads?limit=2").json()
    p2 = api_client.get(f"/api/v1/threads?limit=2&cursor={p1['next_cursor']}").json()
    assert [t["id"] for t in p1["items"] + p2["items"]] == [
        world["unverified"].pk,
        world["beta"].pk,
        world["alpha"].pk,
    ]
    unv = api_client.get("/api/v1/threads?verification=unverified").json()["items"]
    assert [(t["id"], t["claimed_thread"]) for t in unv] == [(world["unverified"].pk, world["alpha"].pk)]


def test_merge_then_replies_to_either_branch_follow(
    api_client: Client, world: dict[str, Any], team: Any
) -> None:
    alpha, beta = world["alpha"], world["beta"]
    r = _post(api_client, f"/api/v1/threads/{alpha.pk}/merge", {"thread_id": beta.pk})
    assert r.status_code == 200
    assert (r.json()["message_count"], [m["id"] for m in r.json()["messages"]]) == (
        3,
        [world["a1"].pk, world["a2"].pk, world["b1"].pk],
    )
    assert not Thread.objects.filter(pk=beta.pk).exists()
    assert ThreadAlias.objects.get(absorbed_id=beta.pk).survivor_id == alpha.pk
    # A reply to the absorbed branch (header) and one quoting our Message-ID for the absorbed thread.
    ours = make_message_id(thread_id=beta.pk, domain="company.test")
    r1, r2 = ingest(
        team,
        world["box"],
        raw_email(
            mid="r1@client.test",
            frm="anna@client.test",
            subject="Re: Beta",
            date=T0 + timedelta(days=1),
            irt="b1@client.test",
            authenticated=True,
        ),
        raw_email(
            mid="r2@client.test",
            frm="anna@client.test",
            subject="Re: Beta",
            date=T0 + timedelta(days=1, hours=1),
            irt=ours,
        ),
    )
    assert [Message.objects.get(pk=m.pk).thread_id for m in (r1, r2)] == [alpha.pk, alpha.pk]
    # Relinking keeps the user's merge.
    from mailroom.conversations.cli import relink

    relink()
    assert Message.objects.get(pk=world["b1"].pk).thread_id == alpha.pk


def test_split_message_out_sticks(api_client: Client, world: dict[str, Any]) -> None:
    r = _post(api_client, f"/api/v1/threads/{world['alpha'].pk}/split", {"message_id": world["a2"].pk})
    assert r.status_code == 201
    new_id = r.json()["id"]
    assert [m["id"] for m in r.json()["messages"]] == [world["a2"].pk]
    assert Thread.objects.get(pk=world["alpha"].pk).message_count == 1
    from mailroom.conversations.cli import relink

    relink()
    assert Message.objects.get(pk=world["a2"].pk).thread_id == new_id
    # The last message cannot be split off; a message of another thread is refused.
    r = _post(api_client, f"/api/v1/threads/{new_id}/split", {"message_id": world["a2"].pk})
    assert r.status_code == 409
    r = _post(api_client, f"/api/v1/threads/{new_id}/split", {"message_id": world["b1"].pk})
    assert (r.status_code, r.json()["field"]) == (400, "message_id")


def test_accept_unverified_merges_into_claimed_thread_and_links_sender(
    api_client: Client, world: dict[str, Any]
) -> None:
    spoof = world["spoof"]
    assert Participant.objects.get(message=spoof, role="from").contact_id is None
    r = _post(api_client, f"/api/v1/threads/{world['unverified'].pk}/accept")
    assert r.status_code == 200
    assert r.json()["id"] == world["alpha"].pk
    assert Message.objects.get(pk=spoof.pk).thread_id == world["alpha"].pk
    # boss@client.test had no contact; the "senders" policy creates it now that it is accepted.
    boss = ContactEmail.objects.get(address="boss@client.test").contact_id
    assert Participant.objects.get(message=spoof, role="from").contact_id == boss
    assert _post(api_client, f"/api/v1/threads/{world['alpha'].pk}/accept").status_code == 409


def test_reject_unverified(api_client: Client, world: dict[str, Any]) -> None:
    r = _post(api_client, f"/api/v1/threads/{world['unverified'].pk}/reject")
    assert (r.status_code, r.json()["verification"]) == (200, "rejected")
    assert Message.objects.get(pk=world["spoof"].pk).thread_id == world["unverified"].pk
    assert _post(api_client, f"/api/v1/threads/{world['unverified'].pk}/reject").status_code == 409


def test_set_deal_sticks(api_client: Client, world: dict[str, Any]) -> None:
    r = _post(api_client, f"/api/v1/threads/{world['alpha'].pk}/deal", {"deal_id": world["deal"].pk}, "put")
    assert (r.status_code, r.json()["deal"], r.json()["deal_source"]) == (200, world["deal"].pk, "user")
    r = _post(api_client, f"/api/v1/threads/{world['alpha'].pk}/deal", {"deal_id": None}, "put")
    assert (r.json()["deal"], r.json()["deal_source"]) == (None, "user")


def test_thread_view_of_a_2000_deep_reply_chain(api_client: Client, team: Any) -> None:
    """Each message replies to the one before (a recursive tree pruning made this a permanent 500)."""
    from mailroom.parsing.headers import trim_references
    from tests.factories import MessageFactory, ThreadFactory

    depth = 2000
    thread = ThreadFactory(team=team, message_count=depth)
    chain = [f"deep{i}@client.test" for i in range(depth)]
    Message.objects.bulk_create(
        MessageFactory.build(
            team=team,
            thread=thread,
            message_id=mid,
            date=T0 + timedelta(minutes=i),
            in_reply_to=chain[i - 1 : i],
            references=list(trim_references(chain[:i])),
            state=Message.State.LINKED,
        )
        for i, mid in enumerate(chain)
    )
    pks = list(Message.objects.filter(thread=thread).order_by("date").values_list("pk", flat=True))
    assert len(pks) == depth
    resp = api_client.get(f"/api/v1/threads/{thread.pk}")
    assert resp.status_code == 200, resp.content[:500]
    body = resp.json()
    assert body["message_count"] == depth
    assert [(m["id"], m["message_id"], m["parent"]) for m in body["messages"]] == [
        (pk, chain[i], pks[i - 1] if i else None) for i, pk in enumerate(pks)
    ]


def test_thread_view_of_a_message_with_1000_references(api_client: Client, team: Any) -> None:
    """The reported case: ~1,000 References ids, a chain of that many missing parents, made the thread
    view a permanent 500. Stored before the cap, they are read trimmed; received now, stored trimmed."""
    from tests.factories import MessageFactory

    box = MailboxFactory(team=team, email="manager0@company.test")
    refs = [f"old{i}@client.test" for i in range(1000)]
    root = ingest(team, box, raw_email(mid="old0@client.test", frm="anna@client.test", subject="Long", date=T0))[0]
    legacy = MessageFactory(  # as stored before the cap
        team=team, thread_id=root.thread_id, message_id="legacy@client.test", date=T0 + timedelta(hours=1),
        in_reply_to=["old999@client.test"], references=refs, state=Message.State.LINKED,
    )
    resp = api_client.get(f"/api/v1/threads/{root.thread_id}")
    assert resp.status_code == 200, resp.content[:500]
    assert [(m["id"], m["parent"]) for m in resp.json()["messages"]] == [(root.pk, None), (legacy.pk, root.pk)]

    reply = ingest(  # our own answer (a Sent copy), so that it joins the thread by its references
        team,
        box,
        sent(
            raw_email(
                mid="new@company.test", frm="manager0@company.test", to="anna@client.test", subject="Re: Long",
                date=T0 + timedelta(hours=2), irt="legacy@client.test", refs=[*refs, "legacy@client.test"],
            )
        ),
    )[0]
    reply.refresh_from_db()
    assert reply.thread_id == root.thread_id
    assert reply.references == ["old0@client.test", *refs[-18:], "legacy@client.test"]
    resp = api_client.get(f"/api/v1/threads/{root.thread_id}")
    assert resp.status_code == 200, resp.content[:500]
    assert [(m["id"], m["parent"]) for m in resp.json()["messages"]] == [
        (root.pk, None),
        (legacy.pk, root.pk),
        (reply.pk, legacy.pk),
    ]
