"""The REST API under /api/v1 (django-ninja). Routers are thin: validate, call a service or a
selector, serialise. Errors are JSON ``{"detail": "...", "field": ...}`` with a 4xx status."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import HttpRequest, HttpResponse, UnreadablePostError
from ninja import NinjaAPI, Swagger
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer
from ninja.security import SessionAuth as NinjaSessionAuth
from ninja.utils import check_csrf

from mailroom.accounts.services import token_authenticate
from mailroom.api.inputs import STORABLE_TEXT
from mailroom.core.crypto import KeyMissingError
from mailroom.core.errors import MailroomError
from mailroom.core.text import text_problem
from mailroom.outbound.limits import MAX_TOTAL_ATTACHMENTS, mib


class BearerAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Any:
        user = token_authenticate(token)
        if user is not None:
            request.user = user
        return user


AUTH_HINT = "authentication required: send 'Authorization: Bearer <token>' (create one with 'mailroom token create USER')"
CSRF_HINT = (
    "CSRF check failed: a request signed in with the browser session that changes data must send the "
    "CSRF token (the X-CSRFToken header with the csrftoken cookie's value); scripts send "
    "'Authorization: Bearer <token>' instead"
)


class SessionAuth(NinjaSessionAuth):
    """The Django session of the web UI. Only a request the session signs in is CSRF-checked (it is the
    one a foreign page could forge with the browser's cookies); a request that carries an Authorization
    header is a token client's and is answered by the token alone (a wrong token is a 401, not a CSRF
    failure, even beside a session cookie), and a request without credentials is a plain 401.

    (ninja's ``SessionAuth`` checks CSRF before it looks at the session, so every unauthenticated
    unsafe request, a wrong Bearer token included, answered ``403 CSRF check Failed``.)"""

    def __call__(self, request: HttpRequest) -> Any:
        if "authorization" in request.headers:
            return None
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return None
        if self.csrf and not getattr(request, "_ninja_csrf_exempt", False) and check_csrf(request) is not None:
            raise HttpError(403, CSRF_HINT)
        return user


api = NinjaAPI(
    title="Mailroom API",
    version="1",
    urls_namespace="api-v1",
    auth=[BearerAuth(), SessionAuth()],
    docs_url="/docs",
    # Swagger UI from ninja's bundled static files (ninja is in INSTALLED_APPS), not a CDN; no
    # validator badge fetching from validator.swagger.io: the docs work offline.
    docs=Swagger(settings={"validatorUrl": None}),
    openapi_url="/openapi.json",
)


@api.exception_handler(MailroomError)
def _mailroom_error(request: HttpRequest, exc: MailroomError) -> HttpResponse:
    body: dict[str, Any] = {"detail": exc.message}
    if exc.field:
        body["field"] = exc.field
    return api.create_response(request, body, status=exc.status_code)


def _field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "payload", "attachments", 0, "filename")`` -> ``attachments[0].filename``."""
    out = ""
    for part in loc:
        if part in ("body", "payload", "query", "path"):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    text = [err for err in exc.errors if err.get("type") in (STORABLE_TEXT, "string_unicode")]
    if text and len(text) == len(exc.errors):
        # Text no database can store (api/inputs.py; pydantic's own check of a str with a length limit
        # finds a lone surrogate first): a 400 naming the field, as the services say it.
        err = text[0]
        field = _field_path(err.get("loc", ())) + str((err.get("ctx") or {}).get("path", ""))
        msg = err.get("msg") if err.get("type") == STORABLE_TEXT else text_problem("\ud800")
        return api.create_response(request, {"detail": f"{field}: {msg}", "field": field}, status=400)
    problems = []
    for err in exc.errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "payload", "query", "path"))
        problems.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return api.create_response(
        request, {"detail": "invalid request: " + "; ".join(problems), "errors": exc.errors}, status=422
    )


@api.exception_handler(AuthenticationError)
def _auth_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    response = api.create_response(request, {"detail": AUTH_HINT}, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


@api.exception_handler(KeyMissingError)
def _key_missing(request: HttpRequest, exc: KeyMissingError) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc)}, status=503)


@api.exception_handler(RequestDataTooBig)
def _body_too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    limit = int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
    detail = (f"request body too large: at most {limit} bytes ({mib(limit)}) are accepted; a message's "
              f"attachments may total {mib(MAX_TOTAL_ATTACHMENTS)} before base64")
    return api.create_response(request, {"detail": detail, "limit": limit}, status=413)


@api.exception_handler(TooManyFieldsSent)
@api.exception_handler(TooManyFilesSent)
def _too_many_parts(request: HttpRequest, exc: TooManyFieldsSent | TooManyFilesSent) -> HttpResponse:
    if isinstance(exc, TooManyFilesSent):
        limit, what = int(settings.DATA_UPLOAD_MAX_NUMBER_FILES), "files"
    else:
        limit, what = int(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS), "form fields"
    return api.create_response(
        request, {"detail": f"request too large: at most {limit} {what} are accepted", "limit": limit}, status=413
    )


@api.exception_handler(UnreadablePostError)
def _unreadable_body(request: HttpRequest, exc: UnreadablePostError) -> HttpResponse:
    return api.create_response(
        request, {"detail": "request body could not be read completely: send it again"}, status=400
    )


def _register_routers() -> None:
    from mailroom.api import mailboxes, messages

    api.add_router("/mailboxes", mailboxes.router)
    api.add_router("/messages", messages.router)
    for name in ("crm", "threads", "outbox", "relay", "webhooks"):
        try:
            module = __import__(f"mailroom.api.{name}", fromlist=["router"])
        except ModuleNotFoundError as exc:
            if exc.name != f"mailroom.api.{name}":
                raise
            continue
        routers = getattr(module, "ROUTERS", None) or [("/" + name, module.router)]
        for prefix, router in routers:
            api.add_router(prefix, router)


_register_routers()
