"""Text the database cannot store (a NUL: PostgreSQL; a lone surrogate: UTF-8, so both databases) or a
control character in a one-line value (a name, an address, a domain) is a 4xx JSON answer naming the
field, never a 500, and nothing is stored. Every input schema of every operation refuses it (checked
over the API's operations, so a new field or endpoint cannot miss it), and so do the services the
CLI calls."""

from __future__ import annotations

import json
import typing
from typing import Any

import pytest
from django.test import Client
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from mailroom.accounts.services import team_get_or_create, token_create, user_create
from mailroom.api.inputs import InputSchema
from mailroom.core.errors import InvalidInput
from mailroom.crm import services as crm
from mailroom.crm.models import Company, Contact, Deal, IgnoreEntry
from mailroom.mailboxes.models import Mailbox
from mailroom.mailboxes.services import mailbox_create, mailbox_update
from tests.factories import CompanyFactory, ContactFactory, DealFactory, MailboxFactory

pytestmark = pytest.mark.django_db

NUL = "a\x00b"
SURROGATE = "a\ud800b"
LOW_SURROGATE = "a\udcffb"  # what a non-UTF-8 byte in argv becomes (surrogateescape)
CONTROL = "a\x01b"
NEWLINE = "a\r\nb"
BAD_ANYWHERE = [NUL, SURROGATE, LOW_SURROGATE, "a\x07b"]
BAD_IN_A_LINE = [*BAD_ANYWHERE, CONTROL, NEWLINE, "a\tb", "a\x7fb"]

MAILBOX = {"email": "manager@company.test", "imap_host": "127.0.0.1", "imap_security": "plain",
           "smtp_security": "plain", "password": "secret"}

# (method, url, base body, field, where the bad value goes: "" = the field, "[]" = an item of a list)
CREATES: list[tuple[str, str, dict[str, Any], str, str]] = [
    ("post", "/api/v1/contacts", {}, "name", ""),
    ("post", "/api/v1/contacts", {}, "phone", ""),
    ("post", "/api/v1/contacts", {}, "emails", "[]"),
    ("post", "/api/v1/companies", {"name": "Acme"}, "name", ""),
    ("post", "/api/v1/companies", {"name": "Acme"}, "domains", "[]"),
    ("post", "/api/v1/deals", {"title": "Deal"}, "title", ""),
    ("post", "/api/v1/deals", {"title": "Deal"}, "stage", ""),
    ("post", "/api/v1/deals", {"title": "Deal"}, "status", ""),
    ("post", "/api/v1/ignore-list", {"kind": "domain", "value": "spam.test"}, "value", ""),
    ("post", "/api/v1/ignore-list", {"kind": "domain", "value": "spam.test"}, "kind", ""),
    ("post", "/api/v1/mailboxes", MAILBOX, "email", ""),
    ("post", "/api/v1/mailboxes", MAILBOX, "name", ""),
    ("post", "/api/v1/mailboxes", MAILBOX, "imap_host", ""),
    ("post", "/api/v1/mailboxes", MAILBOX, "imap_username", ""),
    ("post", "/api/v1/mailboxes", MAILBOX, "message_id_domain", ""),
    ("post", "/api/v1/mailboxes", MAILBOX, "password", ""),
]


def _body(base: dict[str, Any], field: str, where: str, value: str) -> str:
    return json.dumps({**base, field: [value] if where == "[]" else value})


def _stored() -> tuple[int, ...]:
    return (Contact.objects.count(), Company.objects.count(), Deal.objects.count(), IgnoreEntry.objects.count(),
            Mailbox.objects.count())


def _assert_refused(resp: Any, field: str) -> None:
    assert resp.status_code == 400, resp.content
    assert resp["Content-Type"].startswith("application/json")
    body = resp.json()
    assert body["field"] == field or body["field"] == f"{field}[0]", body
    assert body["detail"].startswith(f"{body['field']}: "), body


@pytest.mark.parametrize(("method", "url", "base", "field", "where"), CREATES,
                         ids=[f"{c[1].rsplit('/', 1)[1]}-{c[3]}" for c in CREATES])
def test_create_with_unstorable_text_is_refused(
    admin_api_client: Client, method: str, url: str, base: dict[str, Any], field: str, where: str
) -> None:
    before = _stored()
    for value in BAD_IN_A_LINE:
        resp = getattr(admin_api_client, method)(url, data=_body(base, field, where, value),
                                                 content_type="application/json")
        _assert_refused(resp, field)
    assert _stored() == before
    resp = getattr(admin_api_client, method)(url, data=json.dumps(base), content_type="application/json")
    assert resp.status_code == 201, resp.content  # the same request without the bad value is taken


@pytest.mark.parametrize(("kind", "field", "where"), [
    ("contacts", "name", ""), ("contacts", "phone", ""), ("contacts", "emails", "[]"),
    ("companies", "name", ""), ("companies", "domains", "[]"),
    ("deals", "title", ""), ("deals", "stage", ""), ("mailboxes", "name", ""), ("mailboxes", "smtp_username", ""),
])
def test_update_with_unstorable_text_is_refused_and_row_unchanged(
    admin_api_client: Client, team: Any, kind: str, field: str, where: str
) -> None:
    obj = {"contacts": ContactFactory, "companies": CompanyFactory, "deals": DealFactory,
           "mailboxes": MailboxFactory}[kind](team=team)
    before = {f.attname: getattr(obj, f.attname) for f in type(obj)._meta.concrete_fields}
    for value in BAD_IN_A_LINE:
        resp = admin_api_client.patch(f"/api/v1/{kind}/{obj.pk}", data=_body({}, field, where, value),
                                      content_type="application/json")
        _assert_refused(resp, field)
    obj.refresh_from_db()
    assert {f.attname: getattr(obj, f.attname) for f in type(obj)._meta.concrete_fields} == before
    assert admin_api_client.get(f"/api/v1/{kind}").status_code == 200


def test_outbox_with_unstorable_text_is_refused(admin_api_client: Client, team: Any) -> None:
    from mailroom.outbound.models import OutboxMessage

    mailbox = MailboxFactory(team=team)
    good: dict[str, Any] = {"mailbox": mailbox.pk, "to": ["person@client.test"], "subject": "Hi", "text": "x"}
    cases = [(f, v) for f in ("text", "html") for v in BAD_ANYWHERE]
    cases += [(f, v) for f in ("to", "subject", "idempotency_key") for v in BAD_IN_A_LINE]
    for field, value in cases:
        body = {**good, field: [value] if field == "to" else value}
        resp = admin_api_client.post("/api/v1/outbox", data=json.dumps(body), content_type="application/json")
        _assert_refused(resp, field)
    assert not OutboxMessage.objects.exists()
    resp = admin_api_client.post("/api/v1/outbox", data=json.dumps({**good, "text": "line\r\n\tnext"}),
                                 content_type="application/json")
    assert resp.status_code == 201, resp.content


def test_multiline_fields_keep_tabs_and_line_breaks(admin_api_client: Client, team: Any) -> None:
    resp = admin_api_client.post("/api/v1/ignore-list", data=json.dumps(
        {"kind": "domain", "value": "spam.test", "note": "line one\r\n\tline two"}), content_type="application/json")
    assert resp.status_code == 201, resp.content
    assert IgnoreEntry.objects.get().note == "line one\r\n\tline two"
    resp = admin_api_client.post("/api/v1/contacts", data=json.dumps({"name": "Zoë Ünal 李"}),
                                 content_type="application/json")
    assert resp.status_code == 201, resp.content
    assert resp.json()["name"] == "Zoë Ünal 李"


@pytest.mark.parametrize(("url", "param"), [
    ("/api/v1/contacts", "q"), ("/api/v1/contacts", "address"), ("/api/v1/contacts", "domain"),
    ("/api/v1/companies", "q"), ("/api/v1/companies", "domain"), ("/api/v1/deals", "q"),
    ("/api/v1/deals", "status"), ("/api/v1/threads", "cursor"), ("/api/v1/threads", "verification"),
    ("/api/v1/outbox", "state"), ("/api/v1/messages", "state"), ("/api/v1/messages", "cursor"),
])
def test_text_query_parameter_is_never_a_500(api_client: Client, url: str, param: str) -> None:
    for value in ("%00", "a%00b", "%01", "%0A"):
        _assert_refused(api_client.get(f"{url}?{param}={value}"), param)
    # Not UTF-8 (an encoded surrogate): Django decodes it as U+FFFD, which is text.
    assert api_client.get(f"{url}?{param}=%ED%A0%80").status_code in (200, 400)


# --- every operation's inputs ------------------------------------------------------------------------------
def _schemas(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [s for arg in typing.get_args(annotation) for s in _schemas(arg)]


def _operation_models() -> list[tuple[str, type[BaseModel]]]:
    from mailroom.api.main import api

    out = []
    for prefix, router in api._routers:
        for path, path_view in router.path_operations.items():
            for op in path_view.operations:
                for model in op.models:
                    out.append((f"{'/'.join(op.methods)} {prefix}{path}", model))
    return out


def _refuses_everywhere(model: type[BaseModel], label: str, seen: set[type[BaseModel]]) -> None:
    for name, info in model.model_fields.items():
        nested = _schemas(info.annotation)
        if nested:
            for schema in nested:
                if schema in seen:
                    continue
                seen.add(schema)
                assert issubclass(schema, InputSchema), f"{label}: {schema.__name__} is not an InputSchema"
                _refuses_everywhere(schema, label, seen)
            continue
        for bad in (NUL, SURROGATE, [NUL], [SURROGATE]):
            try:
                model.model_validate({name: bad})
            except PydanticValidationError as exc:
                if any(err["loc"] and err["loc"][0] == name for err in exc.errors()):
                    continue
            raise AssertionError(f"{label}: {model.__name__}.{name} takes {bad!r}")


def test_every_operation_input_refuses_unstorable_text() -> None:
    models = _operation_models()
    assert len(models) > 40
    seen: set[type[BaseModel]] = set()
    for label, model in models:
        _refuses_everywhere(model, label, seen)
    assert {s.__name__ for s in seen} >= {"MailboxIn", "MailboxPatch", "OutboxIn", "AttachmentIn", "ContactIn",
                                          "DealPatch", "IgnoreIn", "MessageFilters"}


def test_an_input_schema_with_a_plain_str_field_is_caught() -> None:
    from ninja import Schema

    class Forgotten(Schema):
        name: str

    with pytest.raises(AssertionError, match=r"Forgotten\.name takes"):
        _refuses_everywhere(Forgotten, "POST /x", set())


# --- services (the CLI's way in) ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", [SURROGATE, LOW_SURROGATE, NUL, CONTROL], ids=ascii)
def test_services_refuse_unstorable_text(team: Any, user: Any, value: str) -> None:
    calls: list[tuple[str, Any]] = [
        ("name", lambda: crm.contact_create(team_id=team.pk, name=value)),
        ("emails", lambda: crm.contact_create(team_id=team.pk, emails=[f"x{value}@client.test"])),
        ("name", lambda: crm.company_create(team_id=team.pk, name=value)),
        ("domains", lambda: crm.company_create(team_id=team.pk, name="Acme", domains=[f"acme{value}.test"])),
        ("title", lambda: crm.deal_create(team_id=team.pk, title=value)),
        ("stage", lambda: crm.deal_create(team_id=team.pk, title="Deal", stage=value)),
        ("value", lambda: crm.ignore_entry_create(team_id=team.pk, kind="domain", value=f"spam{value}.test")),
        ("team", lambda: team_get_or_create(name=value)),
        ("username", lambda: user_create(username=value, password="pw-123456")),
        ("team", lambda: user_create(username="new", password="pw-123456", team_name=value)),
        ("name", lambda: token_create(user=user, name=value)),
        ("name", lambda: mailbox_create(team=team, email="m@company.test", name=value, imap_host="127.0.0.1",
                                        imap_security="plain", smtp_security="plain", password="pw")),
        ("password", lambda: mailbox_create(team=team, email="m@company.test", imap_host="127.0.0.1",
                                            imap_security="plain", smtp_security="plain", password=value)),
        ("imap_username", lambda: mailbox_update(mailbox=MailboxFactory(team=team), imap_username=value)),
    ]
    before = _stored()
    for field, call in calls:
        with pytest.raises(InvalidInput) as caught:
            call()
        assert caught.value.field == field
        assert caught.value.message.startswith(f"{field}: ") or field in caught.value.message
    assert _stored()[:4] == before[:4]
    assert not _team_names_with(value)


def _team_names_with(value: str) -> list[str]:
    from mailroom.accounts.models import Team

    return [t.name for t in Team.objects.all() if value in t.name]
