from django.apps import AppConfig


class MailboxesConfig(AppConfig):
    name = "mailroom.mailboxes"
    label = "mailboxes"
