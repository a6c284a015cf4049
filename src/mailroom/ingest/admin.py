from __future__ import annotations

from django.contrib import admin

from mailroom.ingest.models import EngineNode, ImportFailure


@admin.register(ImportFailure)
class ImportFailureAdmin(admin.ModelAdmin):
    list_display = ("id", "folder", "uidvalidity", "uid", "attempts", "quarantined", "reason", "updated_at")
    list_filter = ("quarantined",)
    readonly_fields = ("folder", "uidvalidity", "uid", "attempts", "reason", "created_at", "updated_at")


@admin.register(EngineNode)
class EngineNodeAdmin(admin.ModelAdmin):
    list_display = ("owner", "hostname", "pid", "started_at", "heartbeat_at")
    readonly_fields = ("owner", "hostname", "pid", "started_at", "heartbeat_at")
