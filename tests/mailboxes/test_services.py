"""Mailbox connection test against real Dovecot + Postfix, and OAuth2 refresh against a loopback
token endpoint."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

from mailroom.mailboxes.connect import ImapError, imap_settings, smtp_settings
from mailroom.mailboxes.models import Mailbox
from mailroom.mailboxes.services import mailbox_test
from tests.factories import MailboxFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _mailbox(user: Any, postfix: Any, **kw: Any) -> Mailbox:
    return MailboxFactory(
        email=user.email, imap_host=user.host, imap_port=user.dovecot.imap_port, imap_username=user.email,
        smtp_host=postfix.host, smtp_port=postfix.submission_port, smtp_username=user.email, password=user.password,
        **kw,
    )


def test_mailbox_test_reports_imap_and_smtp(mail_user: Any, postfix: Any) -> None:
    user = mail_user()
    res = mailbox_test(mailbox=_mailbox(user, postfix))
    assert (res.ok, res.imap_ok, res.smtp_ok, res.errors) == (True, True, True, [])
    assert {"name": "INBOX", "role": "inbox"} in res.folders
    assert {"IDLE", "CONDSTORE", "SPECIAL-USE"} <= set(res.imap_capabilities)
    assert "auth" in res.smtp_features


def test_mailbox_test_says_what_is_wrong_with_smtp(mail_user: Any, postfix: Any) -> None:
    user = mail_user()
    mb = _mailbox(user, postfix)
    mb.set_secret({"password": user.password, "smtp_password": "wrong"})
    mb.save()
    res = mailbox_test(mailbox=mb)
    assert (res.ok, res.imap_ok, res.smtp_ok) == (False, True, False)
    assert len(res.errors) == 1
    assert res.errors[0].startswith(f"SMTP: SMTP login to {postfix.host}:{postfix.submission_port} as '{user.email}' was refused: 535")

    mb.smtp_port = 1
    mb.save()
    res = mailbox_test(mailbox=mb)
    assert res.errors == [f"SMTP: SMTP server {postfix.host}:1 refused the connection: check the port (1)."]


class _TokenEndpoint(BaseHTTPRequestHandler):
    calls: list[dict[str, list[str]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        form = parse_qs(body)
        type(self).calls.append(form)
        if form.get("refresh_token") != ["refresh-1"]:
            payload, code = {"error": "invalid_grant"}, 400
        else:
            payload, code = {"access_token": "access-2", "expires_in": 3600, "refresh_token": "refresh-2"}, 200
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def token_url() -> Any:
    _TokenEndpoint.calls = []
    server = HTTPServer(("127.0.0.1", 0), _TokenEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/token"
    server.shutdown()


def test_oauth2_expired_token_is_refreshed_and_rotated_refresh_token_stored(token_url: str, settings: Any) -> None:
    settings.MAILROOM_ALLOW_LOOPBACK_HTTP = True
    mb = MailboxFactory(auth_method="oauth2")
    mb.set_secret({"access_token": "access-1", "expires_at": time.time() - 10, "refresh_token": "refresh-1",
                   "token_url": token_url, "client_id": "cid", "client_secret": "csecret"})
    mb.save()
    cs = imap_settings(mb)
    assert (cs.auth, cs.access_token) == ("oauth2", "access-2")
    stored = Mailbox.objects.get(pk=mb.pk).get_secret()
    assert (stored["access_token"], stored["refresh_token"]) == ("access-2", "refresh-2")
    assert stored["expires_at"] > time.time() + 3000
    assert _TokenEndpoint.calls == [{"grant_type": ["refresh_token"], "refresh_token": ["refresh-1"],
                                     "client_id": ["cid"], "client_secret": ["csecret"]}]
    # Still valid: no second refresh.
    assert smtp_settings(Mailbox.objects.get(pk=mb.pk)).access_token == "access-2"
    assert len(_TokenEndpoint.calls) == 1


def test_oauth2_refresh_failure_is_a_clear_error(token_url: str, settings: Any) -> None:
    settings.MAILROOM_ALLOW_LOOPBACK_HTTP = True
    mb = MailboxFactory(auth_method="oauth2")
    mb.set_secret({"access_token": "", "refresh_token": "revoked", "token_url": token_url})
    mb.save()
    with pytest.raises(ImapError) as err:
        imap_settings(mb)
    assert err.value.kind == "oauth"
    assert err.value.message == "OAuth2 token refresh failed: HTTP 400 (invalid_grant); reconnect the mailbox."


def test_oauth2_without_refresh_token_asks_to_reconnect() -> None:
    mb = MailboxFactory(auth_method="oauth2")
    mb.set_secret({"access_token": "old", "expires_at": 0})
    mb.save()
    with pytest.raises(ImapError, match="reconnect it"):
        imap_settings(mb)


def test_an_unsaved_oauth2_mailbox_is_refreshed_in_memory(token_url: str, settings: Any) -> None:
    """A connection test before saving (``mailbox_build``): the refreshed token stays on the object,
    no row is written."""
    from mailroom.accounts.models import Team
    from mailroom.mailboxes.services import mailbox_build

    settings.MAILROOM_ALLOW_LOOPBACK_HTTP = True
    mb = mailbox_build(team=Team(name="Not yet"), email="m@company.test", imap_host="127.0.0.1", auth_method="oauth2",
                       refresh_token="refresh-1", token_url=token_url, client_id="cid")
    assert mb.pk is None
    cs = smtp_settings(mb)
    assert (cs.auth, cs.access_token) == ("oauth2", "access-2")
    assert mb.get_secret()["refresh_token"] == "refresh-2"
    assert imap_settings(mb).access_token == "access-2"  # kept: no second refresh
    assert len(_TokenEndpoint.calls) == 1
    assert (Mailbox.objects.count(), Team.objects.filter(name="Not yet").exists()) == (0, False)
