from typing import Any

from django.apps import AppConfig


def _wants(team_ids: set[int]) -> bool:
    from mailroom.webhooks.services import RECORDING_HOOK

    return RECORDING_HOOK.wants(team_ids)


def _handle(events: list[Any]) -> None:
    from mailroom.webhooks.services import RECORDING_HOOK

    RECORDING_HOOK.handle(events)


class WebhooksConfig(AppConfig):
    """Writes the delivery outbox with every event (an ``events`` recording hook: the events app
    never imports this one)."""

    name = "mailroom.webhooks"
    label = "webhooks"

    def ready(self) -> None:
        from mailroom.events.services import RecordingHook, register_recording_hook

        register_recording_hook(RecordingHook(wants=_wants, handle=_handle))
