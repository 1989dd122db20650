import logging
import threading
import time
from typing import Any

from celery.utils.imports import symbol_by_name
from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from .cache import redis_client
from .exceptions import error_response

logger = logging.getLogger(__name__)


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_redis() -> None:
    # The cache's shared client (REDIS_URL, its 2 s connect timeout): a
    # connection from its pool, not a new one per check.
    redis_client().ping()


CHECKS = {"database": _check_database, "redis": _check_redis}

# --- Celery workers and periodic syncs (reported by /health, not part of its status) ---
# A worker down does not make the web unhealthy (the load balancer and the
# container's health check would restart a web that is fine); /health says
# so for the operator, and its status stays the web's own.


class _Cached:
    """A value computed at most once every `seconds` in this process, by one
    thread while the others get the last one: a flood of /health requests
    makes one broadcast to the workers per interval, not one each."""

    def __init__(self, compute, seconds: float) -> None:
        self._compute, self._seconds = compute, seconds
        self._lock = threading.Lock()
        self._value: Any = None
        self._at = float("-inf")

    def get(self) -> Any:
        if time.monotonic() - self._at < self._seconds:
            return self._value
        # While one thread refreshes, the others answer with the last value
        # (they wait only when there is none yet).
        if not self._lock.acquire(blocking=self._at == float("-inf")):
            return self._value
        try:
            if time.monotonic() - self._at >= self._seconds:
                self._value = self._compute()
                self._at = time.monotonic()
            return self._value
        finally:
            self._lock.release()

    def clear(self) -> None:
        self._at = float("-inf")


def _celery_workers() -> dict:
    from celery import current_app  # the project's app (emailclient/__init__.py makes it current)

    try:
        replies = current_app.control.ping(timeout=settings.HEALTH_CELERY_PING_TIMEOUT) or []
    except Exception:
        logger.warning("health: the Celery broker did not answer the ping", exc_info=True)
        return {"status": "unreachable", "workers": 0}
    workers = sum(len(reply) for reply in replies)
    return {"status": "ok" if workers else "no_workers", "workers": workers}


celery_workers = _Cached(_celery_workers, seconds=5.0)

# The age of the oldest overdue periodic sync: an enabled account sync whose
# next run (its last run, or its start, plus its interval) is past by more
# than the grace. Beat down (or its scheduler stuck) shows here as an age
# that keeps growing.
_OVERDUE_SQL = """
SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(due)), 0)
FROM (
    SELECT COALESCE(pt.last_run_at, pt.start_time, pt.date_changed)
           + i.every * CASE i.period WHEN 'microseconds' THEN interval '1 microsecond'
                                     WHEN 'seconds' THEN interval '1 second'
                                     WHEN 'minutes' THEN interval '1 minute'
                                     WHEN 'hours' THEN interval '1 hour'
                                     ELSE interval '1 day' END AS due
    FROM django_celery_beat_periodictask pt
    JOIN django_celery_beat_intervalschedule i ON i.id = pt.interval_id
    WHERE pt.enabled AND pt.task = %s
) runs
WHERE due < now() - make_interval(secs => %s)
"""


def overdue_grace() -> float:
    """Seconds past its time before a periodic sync counts as overdue. Beat
    writes a run's `last_run_at` back to the database only on its scheduler's
    next sync of the schedule (`sync_every`: 180 s for django-celery-beat's
    DatabaseScheduler): until then a sync that ran on time looks due. So the
    scheduler's period (CELERY_BEAT_SCHEDULER's class), plus
    HEALTH_SYNC_OVERDUE_GRACE for beat's loop and a busy database."""
    scheduler = symbol_by_name(settings.CELERY_BEAT_SCHEDULER)
    return float(scheduler.sync_every) + settings.HEALTH_SYNC_OVERDUE_GRACE


def _periodic_sync() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute(_OVERDUE_SQL, ["mailboxes.tasks.sync_account", overdue_grace()])
            overdue, age = cursor.fetchone()
    except Exception:
        logger.warning("health: the periodic syncs could not be read", exc_info=True)
        return {"status": "unknown"}
    return {"overdue": overdue, "oldest_overdue_seconds": round(float(age))}


periodic_sync = _Cached(_periodic_sync, seconds=5.0)


@require_GET
def favicon(request):
    """The service has no icon: an empty answer, rather than a 404 that
    every browser's console reports on the first page it opens."""
    return HttpResponse(status=204)


def _checks() -> dict[str, str]:
    checks = {}
    for name, check in CHECKS.items():
        try:
            check()
            checks[name] = "ok"
        except Exception:
            logger.warning("health check %s failed", name, exc_info=True)
            checks[name] = "failing"
    return checks


# /health and /health/ready answer from one run of the checks every 2 s a
# process: a flood of probes costs the database and Redis one query each
# per interval, and an outage shows at most 2 s late.
health_checks = _Cached(_checks, seconds=2.0)


@require_GET
def health(request):
    """200 when PostgreSQL and Redis answer (checked at most every 2 s),
    else 503 naming the failing check; besides, for the operator, the Celery workers that answered a ping
    and the oldest overdue periodic sync (both cached a few seconds, neither
    part of the status). No authentication; reveals no detail of errors."""
    checks = health_checks.get()
    healthy = all(result == "ok" for result in checks.values())
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "service": "email_service",
        "checks": checks,
        "celery": celery_workers.get(),
        "periodic_sync": periodic_sync.get() if checks["database"] == "ok" else {"status": "unknown"},
    }
    return JsonResponse(body, status=200 if healthy else 503)


@require_GET
def health_ready(request):
    """For the load balancer: may this process take requests? PostgreSQL and
    Redis answer (not Celery: sending and syncing wait in the queue)."""
    checks = health_checks.get()
    ready = all(result == "ok" for result in checks.values())
    return JsonResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks}, status=200 if ready else 503
    )


@require_GET
def health_live(request):
    """The process answers: no database, no Redis, no I/O."""
    return JsonResponse({"status": "alive"})


@require_GET
def metrics_view(request):
    """Prometheus' scrape (emailclient.core.metrics): a 404 unless
    METRICS_ENABLED, a 403 without the token or from outside the allowed
    networks. Not under /api/: no tenant, no throttle."""
    from django.http import Http404

    from . import metrics
    from .clientaddr import client_address

    if not settings.METRICS_ENABLED:
        raise Http404
    if not metrics.access_allowed(
        authorization=request.META.get("HTTP_AUTHORIZATION"), client=client_address(request)
    ):
        return HttpResponse("forbidden\n", status=403, content_type="text/plain")
    body, content_type = metrics.exposition()
    return HttpResponse(body, content_type=content_type)


# --- Errors outside DRF's views --------------------------------------------------
# DRF's views answer their own errors through `exceptions.exception_handler`.
# What Django answers itself (a path that names no view, an exception that
# escapes a view) gets the same JSON shape under /api/; elsewhere (the admin,
# the browsable API's login) Django's own pages, which are meant for people.


def is_api_request(request) -> bool:
    return request.path_info == "/api" or request.path_info.startswith("/api/")


@csrf_exempt  # so that a POST to an unknown path is a 404, not a CSRF 403 page
def api_not_found(request, *args, **kwargs):
    """The last route of the URLconf: any path under /api/ that names no
    endpoint. A route rather than only `handler404`, because under DEBUG
    Django answers an unmatched path with its HTML debug page and never
    calls the handler."""
    return error_response(404, "not_found", "Not found.")


def bad_request(request, exception):
    if is_api_request(request):
        return error_response(400, "bad_request", "Bad request.")
    return defaults.bad_request(request, exception)


def permission_denied(request, exception):
    if is_api_request(request):
        return error_response(403, "permission_denied", "You do not have permission to perform this action.")
    return defaults.permission_denied(request, exception)


def page_not_found(request, exception):
    if is_api_request(request):
        return error_response(404, "not_found", "Not found.")
    return defaults.page_not_found(request, exception)


def server_error(request):
    """No detail of the error reaches the client; it is logged by Django."""
    if is_api_request(request):
        return error_response(500, "server_error", "A server error occurred.")
    return defaults.server_error(request)
