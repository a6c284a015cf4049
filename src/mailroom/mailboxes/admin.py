from __future__ import annotations

from django.contrib import admin

from mailroom.mailboxes.models import Folder, Mailbox


class FolderInline(admin.TabularInline):
    model = Folder
    extra = 0
    fields = ("name", "role", "selected", "uidvalidity", "server_count", "stored_count", "backfill_done", "last_sync_at")
    readonly_fields = ("name", "uidvalidity", "server_count", "stored_count", "backfill_done", "last_sync_at")


@admin.register(Mailbox)
class MailboxAdmin(admin.ModelAdmin):
    """Secrets are never shown: change a password through the API or `mailroom mailbox`."""

    list_display = ("id", "email", "team", "provider", "health", "last_sync_at", "last_error")
    list_filter = ("health", "provider", "team")
    search_fields = ("email", "name")
    exclude = ("secret_enc",)
    readonly_fields = (
        "health", "last_error", "last_error_at", "last_sync_at", "consecutive_failures", "next_attempt_at",
        "lease_owner", "lease_expires_at", "created_at", "updated_at",
    )
    inlines = [FolderInline]
