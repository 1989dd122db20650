import logging
import os
import sys

from django.apps import AppConfig
from django.db.models.signals import post_migrate

logger = logging.getLogger(__name__)


class CoreConfig(AppConfig):
    name = "emailclient.core"
    label = "core"
    verbose_name = "Tenants and audit"

    def ready(self) -> None:
        from . import lookups, schema  # noqa: F401  (register `__any` and the OpenAPI auth extension)
        from .checks import rate_settings_check

        # Every process (gunicorn, Celery, manage.py) refuses to start with a
        # rate setting django-ratelimit would fail on at every request.
        rate_settings_check()

        post_migrate.connect(_append_only_after_migrate, sender=self)
        from celery.signals import worker_init

        # A worker that cannot reach the database now checks before its first
        # task instead (emailclient.core.tasking.IsolatedTask).
        worker_init.connect(_refuse_to_start_unsecured, weak=False)
        # A gunicorn worker (the web role) imports the WSGI application, and
        # so runs this, before it takes a request: it refuses to boot, and
        # gunicorn stops, when the database does not isolate tenants.
        if os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/"):
            _refuse_to_start_unsecured()


def _append_only_after_migrate(*, using: str, **kwargs) -> None:
    """`migrate` (as the owner) creates tables with the owner's default
    privileges, which include UPDATE and DELETE for the runtime role: take
    them back on the append-only tables."""
    from django.conf import settings
    from django.db import connections

    from .dbsetup import append_only_revoke

    runtime_role = settings.DATABASES["default"]["USER"]
    if connections[using].settings_dict["USER"] == runtime_role:
        return  # the runtime role cannot migrate, nor revoke
    with connections[using].cursor() as cursor:
        append_only_revoke(cursor, runtime_role=runtime_role)


def _refuse_to_start_unsecured(**kwargs) -> None:
    """At start-up of a worker or a web process: stop (SystemExit: Celery
    logs other exceptions of a signal handler and carries on) unless every
    tenant table has its row-level security (`rls.database_security_check`)."""
    import psycopg

    from .rls import DatabaseNotSecured, database_secured_once

    try:
        database_secured_once()
    except psycopg.OperationalError as exc:
        # Not reachable now: the check runs before the first tenant request
        # (TenantMiddleware) and /health reports the database meanwhile.
        logger.warning("database security not checked at start-up (no connection): %s", exc)
    except DatabaseNotSecured as exc:
        logger.critical("refusing to start: %s", exc)
        print(f"refusing to start: {exc}", file=sys.stderr)  # before logging is set up
        raise SystemExit(3) from exc
