from django.apps import AppConfig


class IngestConfig(AppConfig):
    name = "mailroom.ingest"
    label = "ingest"
