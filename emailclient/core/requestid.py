"""A request id on every request, its log lines and the tasks it queues.

`RequestIdMiddleware` (first in MIDDLEWARE) takes the id from `X-Request-ID`
when it is a sane one (1-128 characters of letters, digits and `-_.:@+=/`),
else makes one (32 hex digits); it is returned in the response's
`X-Request-ID`, set in the log context for the request's lines, and ends the
request with one access line: method, path (never the query string: it holds
signed URLs' tokens and searches), route, status and duration. The tenant
and user are on every line made once the request is authenticated (the
tenant middleware's, or DRF's or the session's inside the view), the access
line's included. It also counts the request in the metrics (`metrics.py`).

A task queued while a request runs carries the id in its message headers
(`before_task_publish`); the worker puts it, with the task's name, id,
tenant and account, in the log context before the task runs (`task_prerun`)
and clears it after (`task_postrun`).
"""

import logging
import re
import time
import uuid
from typing import Any

from celery import signals

from .logs import context_get, context_reader_reset, context_reader_set, context_reset, context_set

logger = logging.getLogger("emailclient.request")

HEADER = "X-Request-ID"
META_HEADER = "HTTP_X_REQUEST_ID"
MAX_LENGTH = 128
VALID = re.compile(rf"[A-Za-z0-9\-_.:@+=/]{{1,{MAX_LENGTH}}}")
TASK_HEADER = "request_id"


def request_id_from(value: str | None) -> str:
    """The client's id when it is safe to log and echo, else a new one."""
    if value is not None and VALID.fullmatch(value):
        return value
    return uuid.uuid4().hex


def route_of(request: Any) -> str:
    """The URL pattern that answered (`api/messages/<uuid:pk>`), never the
    raw path with its ids; "unmatched" for a path that named no view."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "unmatched"
    return match.route or match.view_name or "unmatched"


def _user_of(request: Any) -> str | None:
    membership = getattr(request, "membership", None)
    if membership is not None:
        return str(membership.user_id)
    from .authentication import REQUEST_ATTR

    authenticated = getattr(request, REQUEST_ATTR, None)
    if authenticated:
        return str(authenticated[0].pk)
    user = getattr(request, "_cached_user", None)  # a session's, if the view read it
    if user is not None and user.is_authenticated:
        return str(user.pk)
    return None


def _context_of(request: Any) -> dict[str, str | None]:
    """The request's tenant and user as far as they are known now: asked
    by the log context for each record (`logs.context_reader_set`)."""
    tenant = getattr(request, "tenant", None)
    return {"tenant": None if tenant is None else str(tenant.id), "user": _user_of(request)}


class RequestIdMiddleware:
    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        from . import metrics

        request_id = request_id_from(request.META.get(META_HEADER))
        request.request_id = request_id
        tokens = context_set(request_id=request_id, tenant=None, user=None)
        reader = context_reader_set(lambda: _context_of(request))
        started = time.perf_counter()
        try:
            response = self.get_response(request)
            status = response.status_code
            response[HEADER] = request_id
            return response
        except BaseException:
            status = 500
            raise
        finally:
            duration = time.perf_counter() - started
            route = route_of(request)
            if route != "metrics":
                metrics.request_observed(method=request.method, route=route, status=status, seconds=duration)
            logger.info(
                "%s %s %s",
                request.method,
                request.path,
                status,
                extra={
                    "method": request.method,
                    "path": request.path,
                    "route": route,
                    "status": status,
                    "duration_ms": round(duration * 1000, 1),
                },
            )
            context_reader_reset(reader)
            context_reset(tokens)


# --- Celery ---------------------------------------------------------------------


@signals.before_task_publish.connect(weak=False)
def _publish_with_request_id(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    request_id = context_get("request_id")
    if request_id is not None and headers is not None:
        headers.setdefault(TASK_HEADER, request_id)


_task_tokens: dict[str, dict[str, Any]] = {}


@signals.task_prerun.connect(weak=False)
def _task_context_set(
    task_id: str | None = None, task: Any = None, kwargs: dict[str, Any] | None = None, **extra: Any
) -> None:
    kwargs = kwargs or {}
    request_id = getattr(task.request, TASK_HEADER, None) if task is not None else None
    tokens = context_set(
        request_id=request_id_from(request_id) if request_id else None,
        task_name=getattr(task, "name", None),
        task_id=task_id,
        tenant=kwargs.get("tenant_id"),
        account=kwargs.get("account_id"),
        user=None,
    )
    if task_id:
        _task_tokens[task_id] = tokens


@signals.task_postrun.connect(weak=False)
def _task_context_reset(task_id: str | None = None, **extra: Any) -> None:
    tokens = _task_tokens.pop(task_id or "", None)
    if tokens is not None:
        context_reset(tokens)
