from __future__ import annotations

from django.db import models


class ImportFailure(models.Model):
    """A UID the server would not give us (or that broke the import) after several attempts.

    The folder cursor moves past it so the mailbox is never blocked; ``mailroom quarantine replay``
    tries it again."""

    folder = models.ForeignKey("mailboxes.Folder", on_delete=models.CASCADE, related_name="import_failures")
    uidvalidity = models.BigIntegerField()
    uid = models.BigIntegerField()
    attempts = models.PositiveSmallIntegerField(default=0)
    reason = models.TextField()
    quarantined = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["folder", "uidvalidity", "uid"], name="uniq_import_failure")
        ]

    def __str__(self) -> str:
        return f"folder {self.folder_id} uid {self.uidvalidity}/{self.uid}"


class EngineNode(models.Model):
    """A running sync engine (``mailroom serve``, ``sync``, ``worker``): the registry the engines
    divide the mailboxes by. Each engine heartbeats on every reconcile and deletes its row on a clean
    stop; a row whose heartbeat is older than the lease time (``MAILROOM_LEASE_SECONDS``) is a
    dead engine (killed, paused, its machine gone): it no longer counts, and its leases expire
    with it."""

    owner = models.CharField(max_length=100, unique=True)  # ingest.leases.new_owner_id()
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField(db_index=True)

    # Declared, not implicit: mypy's Django plugin then types it whichever checkout it imports.
    objects: models.Manager[EngineNode] = models.Manager()

    def __str__(self) -> str:
        return self.owner
