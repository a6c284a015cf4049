from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "mailroom.events"
    label = "events"
