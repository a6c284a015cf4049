from django.apps import AppConfig
from django.conf import settings


class ConversationsConfig(AppConfig):
    name = "mailroom.conversations"
    label = "conversations"

    def ready(self) -> None:
        if settings.MAILROOM_TASKS == "celery":
            from mailroom.conversations import pipeline
            from mailroom.conversations.tasks import send_wake

            pipeline.on_wake(send_wake)
