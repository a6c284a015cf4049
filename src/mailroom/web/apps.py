from django.apps import AppConfig


class WebConfig(AppConfig):
    name = "mailroom.web"
    label = "web"
