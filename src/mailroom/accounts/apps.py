from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "mailroom.accounts"
    label = "accounts"
