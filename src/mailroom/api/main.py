"""The REST API under /api/v1 (django-ninja). Routers are thin: validate, call a service or a
selector, serialise. Errors are JSON ``{"detail": "...", "field": ...}`` with a 4xx status."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI, Swagger
from ninja.errors import AuthenticationError, ValidationError
from ninja.security import HttpBearer, SessionAuth

from mailroom.accounts.services import token_authenticate
from mailroom.core.crypto import KeyMissingError
from mailroom.core.errors import MailroomError


class BearerAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Any:
        user = token_authenticate(token)
        if user is not None:
            request.user = user
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


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    problems = []
    for err in exc.errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "payload", "query", "path"))
        problems.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return api.create_response(
        request, {"detail": "invalid request: " + "; ".join(problems), "errors": exc.errors}, status=422
    )


@api.exception_handler(AuthenticationError)
def _auth_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return api.create_response(
        request,
        {"detail": "authentication required: send 'Authorization: Bearer <token>' (create one with 'mailroom token create USER')"},
        status=401,
    )


@api.exception_handler(KeyMissingError)
def _key_missing(request: HttpRequest, exc: KeyMissingError) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc)}, status=503)


def _register_routers() -> None:
    from mailroom.api import mailboxes, messages

    api.add_router("/mailboxes", mailboxes.router)
    api.add_router("/messages", messages.router)
    for name in ("crm", "threads", "outbox", "relay"):
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
