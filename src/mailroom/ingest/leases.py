"""Who syncs which mailbox: leases, the registry of live engines, the fair share, and the fence.

* A **lease** (``Mailbox.lease_owner`` / ``lease_expires_at``) says which engine syncs a mailbox. It
  is claimed with one conditional ``UPDATE`` (free, expired, or ours already), so two engines racing
  for it cannot both win; it lasts ``MAILROOM_LEASE_SECONDS`` unless renewed.
* The **registry** (:class:`~mailroom.ingest.models.EngineNode`) lists the engines that heartbeated
  within the lease time: the live ones. With N of them and M sync-enabled mailboxes each engine's
  share is ceil(M / N).
* The **fence**: an engine paused past its lease (SIGSTOP, a long GC, a stalled disk) must not
  commit after another took the mailbox over. Every commit of the IMAP import calls
  :func:`lease_fence` inside its transaction: a conditional ``UPDATE`` of the lease on our owner id
  that renews it, or finds it gone and raises :class:`LeaseLost` (the transaction rolls back). The
  ``UPDATE`` holds the mailbox row until the commit, so a takeover waits for the commit or finds the
  lease renewed: there is no moment at which both hold it.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from mailroom.ingest.models import EngineNode
from mailroom.mailboxes.models import Mailbox


class LeaseLost(Exception):
    """This engine no longer holds the lease of the mailbox it was about to commit for."""

    def __init__(self, mailbox_id: int, owner: str) -> None:
        super().__init__(f"mailbox {mailbox_id}: the lease of {owner} is lost (another engine took it over)")
        self.mailbox_id = mailbox_id
        self.owner = owner


def new_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_seconds() -> int:
    return int(settings.MAILROOM_LEASE_SECONDS)


def _expiry(now: datetime) -> datetime:
    return now + timedelta(seconds=lease_seconds())


def idle_at_most_a_lease() -> None:
    """Inside a transaction that locks rows other engines need (a claim, an import commit): on
    PostgreSQL the server ends the session if it sits idle in it longer than the lease (its process
    paused: SIGSTOP, a long GC), so that its locks do not hold up the engine taking over; nothing
    of it is committed. SQLite: one writer, whose lock the busy timeout bounds already."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            # SET takes no bind parameters (psycopg 3 may bind on the server): a whole number, inlined.
            cur.execute(f"SET LOCAL idle_in_transaction_session_timeout = {int(lease_seconds()) * 1000}")


def lease_claim(*, mailbox_id: int, owner: str) -> bool:
    """Take the mailbox's lease if it is free, expired or ours already. A row locked by a holder's
    commit (its fence) is skipped, not waited for: that commit is the holder's last word under its
    lease, and a holder paused inside it must not stall the claimer's reconcile (PostgreSQL: SKIP
    LOCKED; SQLite has one writer at a time anyway)."""
    now = timezone.now()
    with transaction.atomic():
        idle_at_most_a_lease()
        free = (
            Mailbox.objects.select_for_update(skip_locked=True)
            .filter(pk=mailbox_id)
            .filter(Q(lease_owner="") | Q(lease_owner=owner) | Q(lease_expires_at__lt=now))
        )
        if not free.values_list("id", flat=True):
            return False
        return bool(Mailbox.objects.filter(pk=mailbox_id).update(lease_owner=owner, lease_expires_at=_expiry(now)))


def lease_release(*, owner: str, mailbox_id: int | None = None) -> None:
    """Give up ``owner``'s leases (or that of one mailbox): only ever our own."""
    held = Mailbox.objects.filter(lease_owner=owner)
    if mailbox_id is not None:
        held = held.filter(pk=mailbox_id)
    held.update(lease_owner="", lease_expires_at=None)


def lease_renew(*, owner: str) -> set[int]:
    """Renew every lease ``owner`` holds; returns the mailboxes it still holds (one it lost to a
    takeover while paused is not among them)."""
    held = Mailbox.objects.filter(lease_owner=owner)
    held.update(lease_expires_at=_expiry(timezone.now()))
    return set(held.values_list("id", flat=True))


def lease_held(*, mailbox_id: int, owner: str) -> bool:
    return Mailbox.objects.filter(pk=mailbox_id, lease_owner=owner).exists()


def lease_fence(*, mailbox_id: int, owner: str) -> None:
    """Inside the caller's transaction, just before its commit: renew our lease or raise LeaseLost
    (the caller's transaction then rolls back). Renewing, not only checking, so that the row stays
    locked by us until the commit."""
    if not Mailbox.objects.filter(pk=mailbox_id, lease_owner=owner).update(lease_expires_at=_expiry(timezone.now())):
        raise LeaseLost(mailbox_id, owner)


def node_heartbeat(*, owner: str) -> None:
    """Register this engine, or say it is still alive."""
    now = timezone.now()
    if not EngineNode.objects.filter(owner=owner).update(heartbeat_at=now):
        EngineNode.objects.create(
            owner=owner, hostname=socket.gethostname()[:255], pid=os.getpid(), started_at=now, heartbeat_at=now
        )


def node_remove(*, owner: str) -> None:
    EngineNode.objects.filter(owner=owner).delete()


def live_nodes() -> int:
    """Engines that heartbeated within the lease time. The rows of dead ones are removed here (one
    that was only paused registers again on its next heartbeat)."""
    cutoff = timezone.now() - timedelta(seconds=lease_seconds())
    with transaction.atomic():  # a row locked by its heartbeat is alive: skipped, not waited for
        idle_at_most_a_lease()
        dead = EngineNode.objects.select_for_update(skip_locked=True).filter(heartbeat_at__lt=cutoff)
        EngineNode.objects.filter(pk__in=list(dead.values_list("pk", flat=True))).delete()
    return EngineNode.objects.filter(heartbeat_at__gte=cutoff).count()


def fair_share(mailboxes: int, nodes: int) -> int:
    """How many mailboxes one of ``nodes`` live engines may hold: ceil(M / N)."""
    return math.ceil(mailboxes / max(1, nodes))
