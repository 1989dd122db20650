"""One error type and one JSON error shape for the whole API.

    {"error": {"code": "validation_error", "message": "...", "fields": {...}}}

`ApplicationError` and its subclasses are raised by services and selectors;
the DRF exception handler below turns them, DRF's own exceptions, Django's
`ValidationError`, `Http404` and `PermissionDenied` into that shape.
"""

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import OperationalError
from django.http import Http404, JsonResponse
from django_ratelimit.exceptions import Ratelimited
from psycopg.errors import QueryCanceled
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error

logger = logging.getLogger(__name__)


class ApplicationError(Exception):
    status_code: int = status.HTTP_400_BAD_REQUEST
    code = "error"
    retry_after: int | None = None  # seconds, sent as Retry-After (a 429, a 503)

    def __init__(self, message: str, *, fields: dict[str, Any] | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        if code:
            self.code = code


class NotFound(ApplicationError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class TenantRequired(drf_exceptions.APIException):
    """No tenant named (HasTenant). A DRF exception, not an ApplicationError:
    it is raised by a permission check, which the browsable API's renderer
    repeats to draw its forms, catching DRF's exceptions only (anything else
    turned the page into a 500)."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "tenant_required"
    default_detail = (
        "Name the tenant with the X-Tenant-ID header (slug or id), or use the path "
        "/api/v1/{tenant}/email_client/..."
    )
    fields = {"X-Tenant-ID": ["This header is required."]}


class Conflict(ApplicationError):
    status_code = status.HTTP_409_CONFLICT
    code = "conflict"


def error_body(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    return {"error": body}


def error_response(status_code: int, code: str, message: str) -> JsonResponse:
    """For code outside DRF (middleware, plain Django views)."""
    return JsonResponse(error_body(code, message), status=status_code)


def _detail_text(detail) -> str:
    if isinstance(detail, dict) and "detail" in detail:
        return str(detail["detail"])
    if isinstance(detail, list | tuple) and detail:
        return str(detail[0])
    return str(detail)


def is_statement_timeout(exc: BaseException) -> bool:
    """A statement PostgreSQL cancelled: its statement_timeout (or an operator)."""
    return isinstance(exc, OperationalError) and isinstance(exc.__cause__, QueryCanceled)


def exception_handler(exc, context):
    if is_statement_timeout(exc):
        # The tenant middleware rolls the request's transaction back (>= 400).
        logger.warning("statement timeout in %s", context.get("view").__class__.__name__)
        return Response(
            error_body("statement_timeout", "The database took too long to answer; try again later."),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
    if isinstance(exc, ApplicationError):
        return Response(
            error_body(exc.code, exc.message, exc.fields),
            status=exc.status_code,
            headers={"Retry-After": str(exc.retry_after)} if exc.retry_after else None,
        )
    if isinstance(exc, DjangoValidationError):
        exc = drf_exceptions.ValidationError(as_serializer_error(exc))
    if isinstance(exc, Ratelimited):
        # `retry_after`: seconds to the end of the window, when the limiter knows it.
        retry_after = getattr(exc, "retry_after", None)
        return Response(
            error_body("rate_limited", "Too many requests; try again later."),
            status=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": str(max(1, int(retry_after)))} if retry_after is not None else None,
        )
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = drf_exceptions.PermissionDenied()

    if isinstance(exc, drf_exceptions.ValidationError):
        detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        return Response(
            error_body("validation_error", "Invalid input.", detail),
            status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, drf_exceptions.APIException):
        headers = {}
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))
        code = exc.get_codes()
        code = code if isinstance(code, str) else exc.default_code
        return Response(
            error_body(code, _detail_text(exc.detail), getattr(exc, "fields", None)),
            status=exc.status_code,
            headers=headers,
        )
    return None
