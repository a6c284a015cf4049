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
