from django.apps import AppConfig


class OutboundConfig(AppConfig):
    name = "mailroom.outbound"
    label = "outbound"
