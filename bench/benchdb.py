"""The benchmarks' own databases: Django set up on one, made, dropped.

Each benchmark names its database (`emailclient_bench`, ...) and runs the
test settings with `TEST_DATABASE_NAME` forced to it, so a benchmark can
never touch the test or the development database; `django_settings()`
refuses to go on if any alias names another.
"""

import os


def django_settings(name: str, settings_module: str):
    """Django set up on the database `name` (with whatever else the caller
    put in the environment); its settings."""
    os.environ["TEST_DATABASE_NAME"] = name  # forced: never the test or dev database
    os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    import django

    django.setup()
    from django.conf import settings

    names = {settings.DATABASES[alias]["NAME"] for alias in ("default", "owner", "admin")}
    if names != {name}:
        raise SystemExit(f"refusing to run: the database aliases name {names}, not {name}")
    return settings


def database_create(settings) -> None:
    """The database made afresh (roles included) and migrated."""
    from django.core.management import call_command
    from django.db import connections

    from emailclient.core.dbsetup import setup_database

    setup_database(
        superuser_url=settings.DATABASE_SUPERUSER_URL,
        databases=settings.DATABASES,
        recreate=True,
        log=lambda line: None,
    )
    call_command("migrate", database="owner", verbosity=0, interactive=False)
    for alias in ("owner", "admin"):
        connections[alias].close()


def database_drop(settings) -> None:
    import psycopg
    from django.db import connections

    name = settings.DATABASES["default"]["NAME"]
    connections.close_all()
    with psycopg.connect(settings.DATABASE_SUPERUSER_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
