"""Provider presets: server names, ports and quirks of the big providers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Preset:
    imap_host: str
    imap_port: int
    imap_security: str
    smtp_host: str
    smtp_port: int
    smtp_security: str
    provider_saves_sent: bool  # the provider files submitted mail into Sent itself
    note: str = ""
    token_url: str = ""  # OAuth2 token endpoint


PRESETS: dict[str, Preset] = {
    "gmail": Preset("imap.gmail.com", 993, "ssl", "smtp.gmail.com", 465, "ssl", True,
                    "Use an app password (2-step verification on) or OAuth2.",
                    "https://oauth2.googleapis.com/token"),
    "microsoft": Preset("outlook.office365.com", 993, "ssl", "smtp.office365.com", 587, "starttls", True,
                        "Microsoft 365 needs OAuth2 (basic auth is disabled for IMAP).",
                        "https://login.microsoftonline.com/common/oauth2/v2.0/token"),
    "yandex": Preset("imap.yandex.ru", 993, "ssl", "smtp.yandex.ru", 465, "ssl", False,
                     "Enable IMAP and create an app password in Yandex ID settings.",
                     "https://oauth.yandex.ru/token"),
    "mailru": Preset("imap.mail.ru", 993, "ssl", "smtp.mail.ru", 465, "ssl", False,
                     "Create a password for external applications in Mail.ru settings.",
                     "https://oauth.mail.ru/token"),
}
