from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    name = "mailroom.conversations"
    label = "conversations"
