import logging

import redis
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET

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
