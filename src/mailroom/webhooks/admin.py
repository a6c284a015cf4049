"""Webhook endpoints, deliveries and attempts in the admin. The secret is never shown (not even
encrypted): an endpoint is made through the API, which shows its secret once."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from mailroom.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ("id", "team", "url", "enabled", "failing_since", "last_success_at", "created_at")
    list_filter = ("enabled", "team")
    search_fields = ("url", "description")
    exclude = ("secret_enc", "previous_secret_enc")
    readonly_fields = ("url", "team", "previous_secret_expires_at", "version", "failing_since", "last_success_at",
                       "last_failure_at", "lease_owner", "lease_until", "created_by", "created_at", "updated_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # through the API: it makes the secret and shows it once


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ("id", "endpoint", "event", "state", "attempts", "next_attempt_at", "last_status", "delivered_at")
    list_filter = ("state",)
    raw_id_fields = ("event", "endpoint")
    readonly_fields = ("event", "endpoint", "attempts", "last_status", "last_error", "delivered_at", "failed_at",
                       "created_at")


@admin.register(WebhookAttempt)
class WebhookAttemptAdmin(admin.ModelAdmin):
    list_display = ("id", "delivery", "endpoint", "started_at", "status_code", "duration_ms", "success")
    list_filter = ("success",)
    raw_id_fields = ("delivery", "endpoint")
    readonly_fields = ("delivery", "endpoint", "started_at", "webhook_timestamp", "duration_ms", "status_code",
                       "response_excerpt", "error", "success")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
