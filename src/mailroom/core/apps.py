from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "mailroom.core"
    label = "core"

    def ready(self) -> None:
        from mailroom.core import checks  # noqa: F401  (registers the deployment checks)
