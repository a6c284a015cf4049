from __future__ import annotations

from django.contrib import admin

from mailroom.events.models import Event


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ("id", "team", "kind", "created_at", "delivered_at")
    list_filter = ("kind", "team")
    readonly_fields = ("team", "kind", "payload", "created_at", "delivered_at")
