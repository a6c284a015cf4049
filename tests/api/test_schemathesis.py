"""Property-based run of every API operation (schemathesis over the ninja OpenAPI schema, through the
WSGI app, no network): positive and negative examples, a bounded number per operation, as a real team
member with a real API token. Any 5xx fails, and so does a JSON answer that does not match the schema.

Path parameters named like ``contact_id`` stand, when the generated id is even, for an object that
exists in the member's team (a contact, a company, a deal, a thread with a real message and its
attachment, a mailbox, an outbox row; no relay hold), so updates and actions on real rows are
exercised too, not only 404s. Generated text gets NUL, lone surrogates and control characters
appended (see ``_with_odd_text``). The mailbox connection test is left out (it would connect to
whatever server a generated PATCH set). Run on SQLite and on PostgreSQL (DATABASE_URL)."""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.generation.value import GeneratedValue
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.conversations.mail import ingest
from tests.factories import CompanyFactory, ContactFactory, DealFactory, MailboxFactory

pytestmark = pytest.mark.django_db

MAX_EXAMPLES = 10  # per operation and mode: the module stays around a minute on a 2-core machine


def _mail_with_attachment() -> bytes:
    msg = EmailMessage()
    msg["Message-ID"] = "<fuzz-1@client.test>"
    msg["From"] = "Client <person@client.test>"
    msg["To"] = "manager0@company.test"
    msg["Subject"] = "Offer"
    msg["Date"] = "Mon, 01 Dec 2025 10:00:00 +0000"
    msg.set_content("Please see the offer.")
    msg.add_attachment(b"%PDF-1.4 offer", maintype="application", subtype="pdf", filename="offer.pdf")
    return msg.as_bytes()


@pytest.fixture
def api_objects(user: Any, team: Any) -> dict[str, list[int]]:
    """Objects of the member's team (he is its admin): real mail through the pipeline, CRM rows, an
    outbox row."""
    from mailroom.accounts.models import Membership
    from mailroom.outbound.services import ComposeInput, outbox_create

    Membership.objects.filter(user=user, team=team).update(role=Membership.Role.ADMIN)
    mailbox = MailboxFactory(team=team)
    company = CompanyFactory(team=team)
    contact = ContactFactory(team=team, company=company)
    deal = DealFactory(team=team, contact=contact, company=company)
    [message] = ingest(team, mailbox, _mail_with_attachment())
    assert message.thread_id is not None and message.attachments.count() == 1
    outbox, _ = outbox_create(
        user=user, mailbox=mailbox, data=ComposeInput(to=("person@client.test",), subject="Hi", text="Hello")
    )
    return {
        "mailbox_id": [mailbox.pk], "company_id": [company.pk], "contact_id": [contact.pk],
        "deal_id": [deal.pk], "thread_id": [message.thread_id], "message_id": [message.pk],
        "attachment_id": list(message.attachments.values_list("pk", flat=True)), "outbox_id": [outbox.pk],
    }


@pytest.fixture
def _keep_test_connection() -> Any:
    """As Django's test client does: a request through the WSGI handler must not close the test's
    database connection (the test transaction, an in-memory SQLite database) when it finishes."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def api_schema(api_objects: dict[str, list[int]], _keep_test_connection: None) -> Any:
    from mailroom.config.wsgi import application

    loaded = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", application)
    loaded.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES, database="none",
    )

    @loaded.hook
    def map_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> dict[str, Any] | None:
        # An even generated id stands for the existing object: real rows half of the time.
        if not path_parameters:
            return path_parameters
        out = dict(path_parameters)
        for name, value in path_parameters.items():
            if name in api_objects and isinstance(value, int) and not isinstance(value, bool) and value % 2 == 0:
                ids = api_objects[name]
                out[name] = ids[(value // 2) % len(ids)]
        return out

    @loaded.hook
    def before_generate_body(context: Any, strategy: st.SearchStrategy[Any]) -> Any:
        return _with_odd_text(strategy, BODY_ODDITIES)

    @loaded.hook
    def before_generate_query(context: Any, strategy: st.SearchStrategy[Any]) -> Any:
        return _with_odd_text(strategy, QUERY_ODDITIES)

    return loaded


# Hypothesis' text never holds a surrogate, and a NUL in a given field is rare in a few examples: one
# text value (or every one) of most generated bodies and queries gets one of these appended.
BODY_ODDITIES = ["\x00", "\ud800", "\udcff", "\x01", "\r\n", "\x7f"]
QUERY_ODDITIES = ["\x00", "\x01", "\n"]  # a URL carries no lone surrogate


def _strings(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _strings(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _strings(v, (*path, i))]
    return []


def _append_at(value: Any, path: tuple[Any, ...], odd: str) -> Any:
    if not path:
        return value + odd
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _append_at(value[head], rest, odd)}
    return [_append_at(v, rest, odd) if i == head else v for i, v in enumerate(value)]


def _with_odd_text(strategy: st.SearchStrategy[Any], oddities: list[str]) -> st.SearchStrategy[Any]:
    def inject(generated: Any, odd: str | None, where: int) -> Any:
        def change(value: Any) -> Any:
            spots = _strings(value)
            if not odd or not spots:
                return value
            for spot in spots if where < 0 else [spots[where % len(spots)]]:  # every text value, or one
                value = _append_at(value, spot, odd)
            return value

        return generated.map_value(change) if isinstance(generated, GeneratedValue) else change(generated)

    return st.builds(inject, strategy, st.sampled_from([None, *oddities]), st.integers(-1, 50))


@pytest.fixture
def bearer(user: Any, api_objects: Any) -> dict[str, str]:
    from mailroom.accounts.services import token_create

    return {"Authorization": f"Bearer {token_create(user=user, name='schemathesis')}"}


schema = schemathesis.pytest.from_fixture("api_schema")


# The connection test logs in to the mailbox's server: a server the run itself may have set (network).
@schema.exclude(path="/api/v1/mailboxes/{mailbox_id}/test").parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_never_answers_5xx(case: Any, bearer: dict[str, str]) -> None:
    case.call_and_validate(headers=bearer, checks=[not_a_server_error, response_schema_conformance])
