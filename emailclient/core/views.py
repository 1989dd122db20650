import logging

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from .exceptions import error_response

logger = logging.getLogger(__name__)


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_redis() -> None:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


CHECKS = {"database": _check_database, "redis": _check_redis}


@require_GET
def favicon(request):
    """The service has no icon: an empty answer, rather than a 404 that
    every browser's console reports on the first page it opens."""
    return HttpResponse(status=204)


@require_GET
def health(request):
    """Liveness and readiness: 200 when PostgreSQL and Redis answer, else 503
    naming the failing check. No authentication; reveals no detail of errors."""
    checks = {}
    for name, check in CHECKS.items():
        try:
            check()
            checks[name] = "ok"
        except Exception:
            logger.warning("health check %s failed", name, exc_info=True)
            checks[name] = "failing"
    healthy = all(result == "ok" for result in checks.values())
    body = {"status": "healthy" if healthy else "unhealthy", "service": "email_service", "checks": checks}
    return JsonResponse(body, status=200 if healthy else 503)


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
