"""/api/v1/mailboxes: connect, inspect, test and sync mailboxes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from django.http import HttpRequest
from ninja import Router, Schema
from pydantic import Field

from mailroom.accounts.access import (
    access_mailbox_for_user,
    access_team_for_user,
    default_team_for_user,
    mailboxes_for_user,
    require_team_admin,
)
from mailroom.api.inputs import InputSchema
from mailroom.conversations.selectors import NO_PROGRESS, FolderProgress, folder_progress
from mailroom.mailboxes.models import Mailbox
from mailroom.mailboxes.services import mailbox_create, mailbox_delete, mailbox_test, mailbox_update

router = Router(tags=["mailboxes"])

Security = Literal["ssl", "starttls", "plain"]
Provider = Literal["generic", "gmail", "microsoft", "yandex", "mailru"]
Role = Literal["inbox", "sent", "archive", "all", "drafts", "junk", "trash"]


class MailboxIn(InputSchema):
    email: str = Field(description="the mailbox address")
    name: str = ""
    team: int | None = Field(None, description="team id (default: your first team)")
    provider: Provider = "generic"
    imap_host: str | None = None
    imap_port: int | None = None
    imap_security: Security | None = None
    imap_username: str | None = None
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_security: Security | None = None
    smtp_username: str | None = None
    auth_method: Literal["password", "oauth2"] = "password"
    password: str | None = Field(None, description="password or app password; stored encrypted, never returned")
    smtp_password: str | None = None
    access_token: str | None = None
    refresh_token: str | None = None
    token_url: str | None = Field(None, description="OAuth2 token endpoint (https); default: the provider's")
    client_id: str | None = None
    client_secret: str | None = None
    sync_roles: list[Role] = Field(default_factory=lambda: list[Role](["inbox", "sent"]))
    sync_enabled: bool = True
    newest_first: bool = True
    tls_verify: bool = True
    provider_saves_sent: bool | None = None
    contact_policy: Literal["none", "senders", "all"] = "senders"
    message_id_domain: str = ""


class MailboxPatch(InputSchema):
    name: str | None = None
    imap_host: str | None = None
    imap_port: int | None = None
    imap_security: Security | None = None
    imap_username: str | None = None
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_security: Security | None = None
    smtp_username: str | None = None
    password: str | None = None
    smtp_password: str | None = None
    access_token: str | None = None
    refresh_token: str | None = None
    sync_roles: list[Role] | None = None
    sync_enabled: bool | None = None
    tls_verify: bool | None = None
    provider_saves_sent: bool | None = None
    contact_policy: Literal["none", "senders", "all"] | None = None
    message_id_domain: str | None = None


class FolderOut(Schema):
    id: int
    name: str
    role: str
    selected: bool
    uidvalidity: int | None
    server_count: int = Field(description="messages (UIDs) in the folder on the server at the last look")
    stored_count: int = Field(description="of those, stored here (current UIDVALIDITY)")
    linked_count: int = Field(
        description="of the stored, linked: parsed and threaded, on cards (the pipeline is done with them)"
    )
    quarantined_count: int = Field(
        description="of the stored, quarantined: failed to parse or link 3 times (see mailroom quarantine)"
    )
    backfill_done: bool
    last_sync_at: datetime | None


class MailboxOut(Schema):
    id: int
    team: int
    email: str
    name: str
    provider: str
    imap_host: str
    imap_port: int
    imap_security: str
    imap_username: str
    smtp_host: str
    smtp_port: int
    smtp_security: str
    smtp_username: str
    auth_method: str
    sync_roles: list[str]
    sync_enabled: bool
    health: str
    last_error: str
    last_error_at: datetime | None
    last_sync_at: datetime | None
    next_attempt_at: datetime | None
    folders: list[FolderOut]
    created_at: datetime


class TestOut(Schema):
    ok: bool
    imap_ok: bool
    smtp_ok: bool | None
    imap_capabilities: list[str]
    folders: list[dict[str, str]]
    smtp_features: list[str]
    errors: list[str]


def _out(mb: Mailbox, progress: dict[int, FolderProgress] | None = None) -> dict[str, Any]:
    """One mailbox as the API shows it. ``progress``: ``folder_progress`` of a list of mailboxes
    including this one (computed for this one alone when not given)."""
    if progress is None:
        progress = folder_progress(mailbox_ids=[mb.pk])
    data = {f: getattr(mb, f) for f in MailboxOut.model_fields if f not in ("team", "folders", "sync_roles")}
    data["team"] = mb.team_id
    data["sync_roles"] = mb.roles
    data["folders"] = [
        {
            "id": f.pk, "name": f.name, "role": f.role, "selected": f.selected, "uidvalidity": f.uidvalidity,
            "server_count": f.server_count, "stored_count": f.stored_count,
            "linked_count": progress.get(f.pk, NO_PROGRESS).linked,
            "quarantined_count": progress.get(f.pk, NO_PROGRESS).quarantined,
            "backfill_done": f.backfill_done, "last_sync_at": f.last_sync_at,
        }
        for f in sorted(mb.folders.all(), key=lambda f: (not f.selected, f.name))
    ]
    return data


@router.get("", response=list[MailboxOut])
def list_mailboxes(request: HttpRequest) -> list[dict[str, Any]]:
    mailboxes = list(mailboxes_for_user(request.user).prefetch_related("folders").order_by("id"))
    progress = folder_progress(mailbox_ids=[mb.pk for mb in mailboxes])
    return [_out(mb, progress) for mb in mailboxes]


@router.post("", response={201: MailboxOut})
def create_mailbox(request: HttpRequest, payload: MailboxIn) -> tuple[int, dict[str, Any]]:
    data = payload.dict(exclude_none=True)
    team_id = data.pop("team", None)
    team = access_team_for_user(request.user, team_id) if team_id else default_team_for_user(request.user)
    require_team_admin(request.user, team.pk)
    mb = mailbox_create(team=team, **data)
    _kick(mb.pk)
    return 201, _out(mb)


@router.get("/{mailbox_id}", response=MailboxOut)
def get_mailbox(request: HttpRequest, mailbox_id: int) -> dict[str, Any]:
    return _out(access_mailbox_for_user(request.user, mailbox_id))


@router.patch("/{mailbox_id}", response=MailboxOut)
def update_mailbox(request: HttpRequest, mailbox_id: int, payload: MailboxPatch) -> dict[str, Any]:
    mb = access_mailbox_for_user(request.user, mailbox_id)
    require_team_admin(request.user, mb.team_id)
    mb = mailbox_update(mailbox=mb, **payload.dict(exclude_unset=True))
    _kick(mb.pk)
    return _out(mb)


@router.delete("/{mailbox_id}", response={204: None})
def delete_mailbox(request: HttpRequest, mailbox_id: int) -> tuple[int, None]:
    mb = access_mailbox_for_user(request.user, mailbox_id)
    require_team_admin(request.user, mb.team_id)
    mailbox_delete(mailbox=mb)
    return 204, None


@router.post("/{mailbox_id}/test", response=TestOut)
def test_mailbox(request: HttpRequest, mailbox_id: int) -> dict[str, Any]:
    mb = access_mailbox_for_user(request.user, mailbox_id)
    require_team_admin(request.user, mb.team_id, "the connection test")
    res = mailbox_test(mailbox=mb)
    return res.__dict__


@router.post("/{mailbox_id}/sync", response={202: dict[str, str]})
def trigger_sync(request: HttpRequest, mailbox_id: int) -> tuple[int, dict[str, str]]:
    mb = access_mailbox_for_user(request.user, mailbox_id)
    Mailbox.objects.filter(pk=mb.pk).update(next_attempt_at=None, consecutive_failures=0)
    _kick(mb.pk)
    return 202, {"detail": "sync requested"}


def _kick(mailbox_id: int) -> None:
    from mailroom.ingest.engine import current_engine

    engine = current_engine()
    if engine is not None:
        engine.kick(mailbox_id)
