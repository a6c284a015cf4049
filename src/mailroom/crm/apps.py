from django.apps import AppConfig


class CrmConfig(AppConfig):
    name = "mailroom.crm"
    label = "crm"
