"""Leases, the registry of live engines, the fair share and the fence, on the real database (and
a real Dovecot where an import is fenced)."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from mailroom.conversations.models import Message, Source
from mailroom.ingest.imap.worker import MailboxRunner, _store, folders_refresh, open_session, sync_folder
from mailroom.ingest.leases import (
    LeaseLost,
    fair_share,
    lease_claim,
    lease_fence,
    lease_release,
    lease_renew,
    live_nodes,
    node_heartbeat,
    node_remove,
)
from mailroom.ingest.models import EngineNode
from mailroom.ingest.rawstore import IncomingRaw
from mailroom.mailboxes.models import Folder, Mailbox
from tests.factories import MailboxFactory
from tests.ingest.helpers import mailbox_for, make_mail

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("mailboxes", "nodes", "share"), [(6, 1, 6), (6, 2, 3), (7, 2, 4), (6, 3, 2), (6, 4, 2), (6, 7, 1), (0, 3, 0), (5, 0, 5)]
)
def test_fair_share_is_the_ceiling_of_mailboxes_over_live_nodes(mailboxes: int, nodes: int, share: int) -> None:
    assert fair_share(mailboxes, nodes) == share


def test_a_node_without_a_heartbeat_for_the_lease_time_is_dead(settings: Any) -> None:
    settings.MAILROOM_LEASE_SECONDS = 10
    node_heartbeat(owner="a")
    node_heartbeat(owner="b")
    node_heartbeat(owner="a")  # a second heartbeat updates, it does not add a row
    assert live_nodes() == 2
    EngineNode.objects.filter(owner="b").update(heartbeat_at=timezone.now() - timedelta(seconds=11))
    assert live_nodes() == 1
    assert list(EngineNode.objects.values_list("owner", flat=True)) == ["a"]  # the dead row is gone
    node_heartbeat(owner="b")  # paused, not dead: it registers again
    assert live_nodes() == 2
    node_remove(owner="a")
    assert list(EngineNode.objects.values_list("owner", flat=True)) == ["b"]


def test_a_lease_is_claimed_when_free_or_expired_never_from_a_live_holder(settings: Any) -> None:
    settings.MAILROOM_LEASE_SECONDS = 30
    mb = MailboxFactory()
    assert lease_claim(mailbox_id=mb.pk, owner="a") is True
    assert lease_claim(mailbox_id=mb.pk, owner="b") is False
    assert lease_claim(mailbox_id=mb.pk, owner="a") is True  # ours already: renewed
    Mailbox.objects.filter(pk=mb.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert lease_claim(mailbox_id=mb.pk, owner="b") is True
    assert lease_renew(owner="a") == set()
    assert lease_renew(owner="b") == {mb.pk}
    lease_release(owner="a", mailbox_id=mb.pk)  # not a's: nothing happens
    assert Mailbox.objects.get(pk=mb.pk).lease_owner == "b"
    lease_release(owner="b", mailbox_id=mb.pk)
    assert Mailbox.objects.values_list("lease_owner", "lease_expires_at").get(pk=mb.pk) == ("", None)


def test_the_fence_renews_our_lease_and_refuses_anyone_else(settings: Any) -> None:
    settings.MAILROOM_LEASE_SECONDS = 30
    mb = MailboxFactory()
    assert lease_claim(mailbox_id=mb.pk, owner="a")
    Mailbox.objects.filter(pk=mb.pk).update(lease_expires_at=timezone.now() + timedelta(seconds=1))
    lease_fence(mailbox_id=mb.pk, owner="a")
    assert Mailbox.objects.get(pk=mb.pk).lease_expires_at > timezone.now() + timedelta(seconds=20)
    with pytest.raises(LeaseLost):
        lease_fence(mailbox_id=mb.pk, owner="b")


def _taken_over(mb: Mailbox, *, old: str, new: str) -> None:
    """``old`` held the lease, was paused past it, and ``new`` took the mailbox over."""
    assert lease_claim(mailbox_id=mb.pk, owner=old)
    Mailbox.objects.filter(pk=mb.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert lease_claim(mailbox_id=mb.pk, owner=new)


def test_a_batch_commit_after_a_takeover_is_refused_and_leaves_nothing(team: Any, settings: Any) -> None:
    settings.MAILROOM_LEASE_SECONDS = 30
    mb = MailboxFactory(team=team)
    folder = Folder.objects.create(mailbox=mb, name="INBOX", raw_name="INBOX", role="inbox", selected=True,
                                   uidvalidity=7, synced_high_uid=0)
    items = [IncomingRaw(raw=make_mail(i), uid=i + 1) for i in range(5)]
    _taken_over(mb, old="old", new="new")
    with pytest.raises(LeaseLost):
        _store(mb, folder, items, {"synced_high_uid": 5}, "old")
    assert (Message.objects.count(), Source.objects.count()) == (0, 0)
    folder.refresh_from_db()
    assert (folder.synced_high_uid, folder.stored_count) == (0, 0)
    # The new owner's commit of the same batch goes through, once.
    assert _store(mb, folder, items, {"synced_high_uid": 5}, "new") == (5, 5)
    assert _store(mb, folder, items, {"synced_high_uid": 5}, "new") == (0, 0)
    folder.refresh_from_db()
    assert (folder.synced_high_uid, folder.stored_count) == (5, 5)
    assert (Message.objects.count(), Source.objects.count()) == (5, 5)


def test_a_folder_sync_after_a_takeover_commits_no_batch_and_no_cursor(mail_user: Any, settings: Any) -> None:
    settings.MAILROOM_LEASE_SECONDS = 30
    user = mail_user()
    user.dovecot.deliver_many(user.email, [make_mail(i) for i in range(30)])
    mb = mailbox_for(user, sync_roles=["inbox"])
    session = open_session(mb)
    try:
        inbox = next(f for f in folders_refresh(session, mb) if f.role == "inbox")
        before = Folder.objects.values().get(pk=inbox.pk)
        _taken_over(mb, old="old", new="new")
        with pytest.raises(LeaseLost):
            sync_folder(session, mb, inbox, owner="old")
        assert Folder.objects.values().get(pk=inbox.pk) == before
        assert Source.objects.count() == 0
        result = sync_folder(session, mb, inbox, owner="new")
    finally:
        session.close()
    assert result.stored == 30
    assert Source.objects.filter(folder=inbox).count() == 30


@pytest.mark.django_db(transaction=True)
def test_a_runner_whose_lease_was_taken_over_stops_and_stores_nothing(mail_user: Any, settings: Any) -> None:
    settings.MAILROOM_LEASE_SECONDS = 30
    user = mail_user()
    user.dovecot.deliver_many(user.email, [make_mail(i) for i in range(10)])
    mb = mailbox_for(user, sync_roles=["inbox"])
    _taken_over(mb, old="old", new="new")
    runner = MailboxRunner(mb.pk, threading.Event(), idle_seconds=1.0, owner="old")
    runner.start()
    runner.join(30)
    assert not runner.is_alive()
    assert runner.lease_lost is True
    assert Source.objects.count() == 0
    mb.refresh_from_db()
    assert mb.lease_owner == "new"
    assert mb.last_error == ""  # the new owner's health is not ours to write
