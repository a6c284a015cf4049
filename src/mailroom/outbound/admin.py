from __future__ import annotations

from django.contrib import admin

from mailroom.outbound.models import (
    MailboxRelaySettings,
    OutboxMessage,
    PersonalAddress,
    RelayHold,
    RelayToken,
    Signature,
    Template,
)


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    list_display = ("id", "mailbox", "subject", "state", "attempts", "created_at")
    list_filter = ("state", "mailbox")
    search_fields = ("subject", "message_id", "idempotency_key")
    exclude = ("raw",)
    raw_id_fields = ("reply_to_message", "thread", "created_by")


@admin.register(RelayToken)
class RelayTokenAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "team", "mailbox", "owner", "thread", "created_at", "revoked_at")
    list_filter = ("kind", "team")
    readonly_fields = ("token_id", "token")
    raw_id_fields = ("thread", "source_message", "owner")


@admin.register(RelayHold)
class RelayHoldAdmin(admin.ModelAdmin):
    list_display = ("id", "team", "mail_from", "rcpt_to", "reason", "created_at", "reviewed_at")
    exclude = ("raw",)


admin.site.register(PersonalAddress)
admin.site.register(MailboxRelaySettings)
admin.site.register(Signature)
admin.site.register(Template)
