"""Errors that cross layers. The API turns them into JSON 4xx answers that say what to fix."""

from __future__ import annotations


class MailroomError(Exception):
    status_code = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(MailroomError):
    status_code = 400


class NotFound(MailroomError):
    status_code = 404


class PermissionDenied(MailroomError):
    status_code = 403


class Conflict(MailroomError):
    status_code = 409
