from __future__ import annotations

from django.contrib import admin

from mailroom.conversations.models import (
    Message,
    MessageContact,
    MessagePlacement,
    Participant,
    Source,
    Thread,
    ThreadAlias,
)


@admin.register(Thread)
class ThreadAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "subject",
        "team",
        "message_count",
        "last_message_at",
        "deal",
        "deal_source",
        "verification",
    )
    list_filter = ("team", "verification", "deal_source")
    search_fields = ("subject", "normalized_subject")
    raw_id_fields = ("deal", "claimed_thread")
    readonly_fields = ("participants", "deal_candidates", "created_at")


class ParticipantInline(admin.TabularInline):
    model = Participant
    extra = 0
    raw_id_fields = ("contact",)
    fields = ("role", "address", "name", "contact")


class SourceInline(admin.TabularInline):
    model = Source
    extra = 0
    can_delete = False
    fields = ("kind", "mailbox", "folder", "uidvalidity", "uid", "key", "internal_date")
    readonly_fields = fields


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "subject", "from_address", "date", "direction", "state", "thread", "team")
    list_filter = ("team", "state", "direction", "is_auto_reply", "is_bulk")
    search_fields = ("message_id", "subject", "from_address")
    raw_id_fields = ("thread",)
    readonly_fields = ("message_id", "message_id_hash", "content_hash", "routing", "auth", "routing_headers")
    inlines = [ParticipantInline, SourceInline]


@admin.register(ThreadAlias)
class ThreadAliasAdmin(admin.ModelAdmin):
    list_display = ("absorbed_id", "survivor", "team", "created_by", "created_at")
    raw_id_fields = ("survivor",)


@admin.register(MessagePlacement)
class MessagePlacementAdmin(admin.ModelAdmin):
    list_display = ("message", "thread", "reason", "created_by", "created_at")
    list_filter = ("reason",)
    raw_id_fields = ("message", "thread")


@admin.register(MessageContact)
class MessageContactAdmin(admin.ModelAdmin):
    list_display = ("contact", "company", "message", "date")
    raw_id_fields = ("contact", "company", "message")
