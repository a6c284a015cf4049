from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "mailroom.core"
    label = "core"
