"""Start-up checks of a deployment served over https (``MAILROOM_HTTPS=true``): no default or short
secret key, an encryption key for mailbox secrets, no wildcard host. ``serve`` runs them."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, register

KNOWN_DEFAULTS = {"", "changeme", "secret", "django-insecure", "mailroom"}


@register(Tags.security, deploy=False)
def deployment(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    if not getattr(settings, "MAILROOM_HTTPS", False):
        return []
    errors: list[Error] = []
    key = str(settings.SECRET_KEY)
    if key.lower() in KNOWN_DEFAULTS or key.startswith("django-insecure") or len(key) < 50 or len(set(key)) < 5:
        errors.append(Error("the secret key is unset, a default or too short (50 characters at least)",
                            hint="set MAILROOM_SECRET_KEY, or remove it to use the generated key file", id="mailroom.E001"))
    from mailroom.core import crypto

    try:
        crypto.encrypt("check", aad=b"check")
    except Exception:
        errors.append(Error("no encryption key for mailbox secrets",
                            hint="set MAILROOM_ENCRYPTION_KEYS (mailroom keys generate)", id="mailroom.E002"))
    if "*" in settings.ALLOWED_HOSTS:
        errors.append(Error("MAILROOM_ALLOWED_HOSTS contains '*'",
                            hint="name the host names Mailroom is served under", id="mailroom.E003"))
    return errors
