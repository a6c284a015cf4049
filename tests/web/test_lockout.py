"""Login throttling (django-axes): 5 failures lock a user name + address pair out for 15 minutes, on
every password login (web, admin, an API login), with a localised page or JSON 429."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import authenticate
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client, RequestFactory

from mailroom.web.lockout import client_ip, client_username
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

RIGHT = "pass-word-1"  # UserFactory's password


@pytest.fixture(autouse=True)
def _fast_password_hashes(settings: Any) -> None:
    """Dozens of logins a test: a cheap hash (the throttling is what is tested, not the hash)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _login(client: Client, username: str, password: str, *, path: str = "/login/", **extra: Any) -> Any:
    return client.post(path, {"username": username, "password": password}, **extra)


def _fail_five_times(client: Client, username: str, **extra: Any) -> None:
    for attempt in range(5):
        resp = _login(client, username, f"wrong-{attempt}", **extra)
        assert resp.status_code == (200 if attempt < 4 else 429), attempt


def test_five_wrong_passwords_then_the_right_one_is_refused(team: Any) -> None:
    UserFactory(username="olga", team=team)
    client = Client(REMOTE_ADDR="203.0.113.7")
    _fail_five_times(client, "olga")
    resp = _login(client, "olga", RIGHT)
    assert resp.status_code == 429
    assert resp["Retry-After"] == "900"
    page = resp.content.decode()
    assert ("Too many failed login attempts for this user name from your address. Try again in 15 min."
            in page)
    assert '<input type="text" name="username" value="olga"' in page  # the form is there for later
    assert "_auth_user_id" not in client.session
    assert client.get("/").status_code == 302  # not logged in
    assert AccessAttempt.objects.get(username="olga", ip_address="203.0.113.7").failures_since_start == 6


def test_the_lockout_page_is_in_russian(team: Any) -> None:
    UserFactory(username="olga", team=team)
    client = Client(REMOTE_ADDR="203.0.113.7", HTTP_ACCEPT_LANGUAGE="ru")
    _fail_five_times(client, "olga", HTTP_ACCEPT_LANGUAGE="ru")
    page = _login(client, "olga", RIGHT, HTTP_ACCEPT_LANGUAGE="ru").content.decode()
    assert ("Слишком много неудачных попыток входа под этим именем с вашего адреса. "
            "Попробуйте снова через 15 мин.") in page
    assert "Имя пользователя" in page


def test_four_failures_then_success_resets_the_count(team: Any) -> None:
    UserFactory(username="olga", team=team)
    client = Client(REMOTE_ADDR="203.0.113.7")
    for attempt in range(4):
        assert _login(client, "olga", f"wrong-{attempt}").status_code == 200
    assert _login(client, "olga", RIGHT).status_code == 302
    client.post("/logout/")
    for attempt in range(4):  # a fresh count: four more failures do not lock
        assert _login(client, "olga", f"wrong-{attempt}").status_code == 200
    assert _login(client, "olga", RIGHT).status_code == 302


def test_another_address_or_user_name_is_not_locked(team: Any) -> None:
    UserFactory(username="olga", team=team)
    UserFactory(username="ivan", team=team)
    _fail_five_times(Client(REMOTE_ADDR="203.0.113.7"), "olga")
    # The same user from another address logs in.
    assert _login(Client(REMOTE_ADDR="198.51.100.2"), "olga", RIGHT).status_code == 302
    # Another user from the locked address logs in.
    assert _login(Client(REMOTE_ADDR="203.0.113.7"), "ivan", RIGHT).status_code == 302
    # The locked pair is still locked.
    assert _login(Client(REMOTE_ADDR="203.0.113.7"), "olga", RIGHT).status_code == 429


def test_the_right_password_works_after_the_cool_off(team: Any) -> None:
    UserFactory(username="olga", team=team)
    client = Client(REMOTE_ADDR="203.0.113.7")
    _fail_five_times(client, "olga")
    assert _login(client, "olga", RIGHT).status_code == 429
    # 15 minutes pass (the attempts are dated back; axes counts from the last failure).
    AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time - timedelta(minutes=15, seconds=1))
    resp = _login(client, "olga", RIGHT)
    assert resp.status_code == 302 and resp["Location"] == "/"
    assert client.get("/").status_code == 200
    assert not AccessAttempt.objects.filter(username="olga").exists()  # reset on success


def test_still_locked_just_before_the_cool_off_ends(team: Any) -> None:
    UserFactory(username="olga", team=team)
    client = Client(REMOTE_ADDR="203.0.113.7")
    _fail_five_times(client, "olga")
    AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time - timedelta(minutes=14))
    assert _login(client, "olga", RIGHT).status_code == 429


def test_the_admin_login_is_throttled_too(team: Any) -> None:
    UserFactory(username="root", team=team, is_staff=True, is_superuser=True)
    client = Client(REMOTE_ADDR="203.0.113.9")
    for attempt in range(5):
        resp = _login(client, "root", f"wrong-{attempt}", path="/admin/login/?next=/admin/")
        assert resp.status_code == (200 if attempt < 4 else 429), attempt
    resp = _login(client, "root", RIGHT, path="/admin/login/?next=/admin/")
    assert resp.status_code == 429
    assert "Too many failed login attempts for this user name from your address." in resp.content.decode()
    assert client.get("/admin/").status_code == 302
    # The web login shares the count: the pair is locked there as well.
    assert _login(client, "root", RIGHT).status_code == 429


def test_a_login_under_the_api_answers_json_429(team: Any) -> None:
    """Any API endpoint that checks a password calls authenticate(request, ...): locked out, the
    middleware turns its answer into JSON 429 with a hint."""
    from axes.middleware import AxesMiddleware

    UserFactory(username="olga", team=team)

    def api_login(request: HttpRequest) -> HttpResponse:
        user = authenticate(request, username=request.POST["username"], password=request.POST["password"])
        return JsonResponse({"ok": user is not None}, status=200 if user else 401)

    middleware = AxesMiddleware(api_login)
    rf = RequestFactory(REMOTE_ADDR="203.0.113.7")
    for attempt in range(4):
        resp = middleware(rf.post("/api/v1/login", {"username": "olga", "password": f"wrong-{attempt}"}))
        assert resp.status_code == 401
    resp = middleware(rf.post("/api/v1/login", {"username": "olga", "password": "wrong-5"}))
    assert resp.status_code == 429
    resp = middleware(rf.post("/api/v1/login", {"username": "olga", "password": RIGHT}))
    assert resp.status_code == 429 and resp["Content-Type"] == "application/json"
    assert resp["Retry-After"] == "900"
    assert json.loads(resp.content) == {
        "detail": "too many failed logins for this user name from this address: try again in 15 minutes (a "
                  "successful login resets the count; an admin can clear it under Axes > Access attempts in /admin/)",
        "retry_after": 900,
    }


def test_an_over_long_or_odd_user_name_counts_without_a_database_error(team: Any) -> None:
    rf = RequestFactory(REMOTE_ADDR="203.0.113.7")
    assert authenticate(rf.post("/api/v1/login"), username="ы" * 400, password="x") is None
    assert AccessAttempt.objects.get().username == "ы" * 255  # the column holds 255: no DataError
    # NUL (which PostgreSQL text refuses) is dropped from the name attempts count under.
    assert client_username(rf.post("/api/v1/login"), {"username": "a\x00b"}) == "ab"
    assert client_username(rf.post("/login/", {"username": "olga"}), None) == "olga"


# --- the client's address -----------------------------------------------------------------------------


def _request(**meta: str) -> HttpRequest:
    return RequestFactory().get("/", **meta)


def test_x_forwarded_for_is_ignored_unless_behind_a_proxy(settings: Any) -> None:
    settings.MAILROOM_BEHIND_PROXY = False
    assert client_ip(_request(REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR="198.51.100.1")) == "203.0.113.7"


def test_behind_a_proxy_the_address_it_added_counts(settings: Any) -> None:
    settings.MAILROOM_BEHIND_PROXY = True
    # The client sent a made-up X-Forwarded-For; our proxy appended the real address.
    req = _request(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="1.2.3.4, 198.51.100.1")
    assert client_ip(req) == "198.51.100.1"
    assert client_ip(_request(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="garbage")) == "10.0.0.2"
    assert client_ip(_request(REMOTE_ADDR="10.0.0.2")) == "10.0.0.2"


def test_a_spoofed_forwarded_header_does_not_escape_the_lockout(team: Any, settings: Any) -> None:
    settings.MAILROOM_BEHIND_PROXY = True
    UserFactory(username="olga", team=team)
    for attempt in range(5):
        client = Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=f"192.0.2.{attempt}, 198.51.100.1")
        assert _login(client, "olga", f"wrong-{attempt}").status_code == (200 if attempt < 4 else 429)
    client = Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="192.0.2.99, 198.51.100.1")
    assert _login(client, "olga", RIGHT).status_code == 429
    # Another real client behind the same proxy is not locked.
    assert _login(Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.50"), "olga", RIGHT).status_code == 302


def test_ipv6_addresses_of_one_network_count_together(settings: Any) -> None:
    settings.MAILROOM_BEHIND_PROXY = False
    a = client_ip(_request(REMOTE_ADDR="2001:db8:1:2::1"))
    b = client_ip(_request(REMOTE_ADDR="2001:db8:1:2:ffff:1:2:3"))
    assert a == b == "2001:db8:1:2::"
    assert client_ip(_request(REMOTE_ADDR="2001:db8:1:3::1")) == "2001:db8:1:3::"
    assert client_ip(_request(REMOTE_ADDR="::ffff:203.0.113.7")) == "203.0.113.7"
