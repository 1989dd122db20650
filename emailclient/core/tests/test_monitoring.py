"""The seeds' monitoring objects (migration core.0006) and the admin page that shows them."""

import pytest
from django.conf import settings
from django.db import connection, connections, transaction
from django.db.utils import ProgrammingError
from django.test import Client

from emailclient.core.tests.factories import UserFactory

pytestmark = pytest.mark.django_db(databases=["default", "admin"])

OBJECTS = (
    "SELECT * FROM pg_connection_stats",
    "SELECT * FROM pg_long_queries",
    "SELECT * FROM pg_table_bloat_status()",
)


@pytest.mark.parametrize("sql", OBJECTS)
def test_the_admin_role_reads_each_monitoring_object(sql):
    with connections["admin"].cursor() as cursor:
        cursor.execute(sql)
        cursor.fetchall()


@pytest.mark.parametrize("sql", OBJECTS)
def test_the_runtime_role_may_not_read_them(sql):
    with (
        pytest.raises(ProgrammingError, match="permission denied"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql)


def test_connection_stats_count_this_connection():
    with connections["admin"].cursor() as cursor:
        cursor.execute(
            "SELECT connection_count, longest_connection_seconds FROM pg_connection_stats "
            "WHERE database = current_database() AND username = current_user"
        )
        count, longest = cursor.fetchone()
    assert count >= 1 and longest is not None and longest >= 0


def test_long_queries_show_another_session_of_the_same_role_running():
    """A statement still running in another session of the admin role (a
    role sees its own sessions' text without pg_read_all_stats)."""
    import threading

    import psycopg

    settings_dict = connections["admin"].settings_dict
    conninfo = psycopg.conninfo.make_conninfo(
        host=settings_dict["HOST"],
        port=settings_dict["PORT"],
        dbname=settings_dict["NAME"],
        user=settings_dict["USER"],
        password=settings_dict["PASSWORD"] or None,
    )
    sleeper = threading.Thread(
        target=lambda: psycopg.connect(conninfo, autocommit=True).execute("SELECT pg_sleep(2) /* sleeper */")
    )
    sleeper.start()
    try:
        rows = []
        for _ in range(30):
            with connections["admin"].cursor() as cursor:
                # The test's transaction keeps its first snapshot of the activity.
                cursor.execute("SELECT pg_stat_clear_snapshot()")
                cursor.execute("SELECT runtime_seconds, query FROM pg_long_queries")
                rows = [row for row in cursor.fetchall() if "sleeper" in row[1]]
            if rows:
                break
            threading.Event().wait(0.05)
        assert rows and rows[0][0] is not None
    finally:
        sleeper.join()


def test_bloat_status_lists_the_service_tables():
    with connections["admin"].cursor() as cursor:
        cursor.execute("SELECT table_name, dead_percent, needs_vacuum FROM pg_table_bloat_status()")
        tables = {name for name, _, _ in cursor.fetchall()}
    assert {"email_messages", "email_accounts", "tenants"} <= tables


def _statements_run(conninfo: str, dbname: str) -> int:
    """Run the migration's pg_stat_statements block as another role, in a
    transaction rolled back; the extension's rows it left in pg_extension."""
    import importlib

    import psycopg

    migration = importlib.import_module("emailclient.core.migrations.0006_monitoring_views")
    with psycopg.connect(conninfo, dbname=dbname) as conn:
        try:
            conn.execute(migration.STATEMENTS)
            (count,) = conn.execute(
                "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'"
            ).fetchone()
        finally:
            conn.rollback()
    return count


def test_pg_stat_statements_is_created_where_the_role_may_and_never_fails_the_migration():
    """The migration tries to create it. The owner role may not (it is not a
    trusted extension): the block says so and goes on; a superuser's run
    creates it."""
    with connections["admin"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_stat_statements'")
        if cursor.fetchone()[0] == 0:
            pytest.skip("this server has no pg_stat_statements to create")
    dbname = connections["default"].settings_dict["NAME"]
    assert _statements_run(_conninfo("owner"), dbname) == 0
    assert _statements_run(settings.DATABASE_SUPERUSER_URL, dbname) == 1


# --- The admin page ----------------------------------------------------------------------


@pytest.fixture
def staff_client():
    client = Client()
    client.force_login(UserFactory(username="operator", is_staff=True, is_superuser=True))
    return client


def _conninfo(alias):
    import psycopg

    settings_dict = connections[alias].settings_dict
    return psycopg.conninfo.make_conninfo(
        host=settings_dict["HOST"],
        port=settings_dict["PORT"],
        dbname=settings_dict["NAME"],
        user=settings_dict["USER"],
        password=settings_dict["PASSWORD"] or None,
    )


def test_a_staff_user_who_is_not_superuser_is_refused():
    client = Client()
    client.force_login(UserFactory(username="staff-only", is_staff=True))
    assert client.get("/admin/monitoring/").status_code == 403


def test_rows_of_another_role_are_masked():
    """The masking itself (the server hides another role's text too unless
    the admin role is in pg_read_all_stats, as an operator may grant)."""
    from emailclient.core.admin_monitoring import _masked_rows

    columns = ["pid", "username", "query"]
    rows = [(1, "runtime", "UPDATE t SET token = 'eyJ.secret'"), (2, "admin", "SELECT 'mine'")]
    assert _masked_rows(columns, rows, "admin") == [(1, "runtime", "UPDATE"), (2, "admin", "SELECT 'mine'")]
    assert _masked_rows(["query"], [("SELECT 'x'",)], "admin") == [("SELECT",)]


def test_query_masked():
    from emailclient.core.admin_monitoring import HIDDEN, query_masked

    assert query_masked("  /* c */ update email_drafts SET subject = 'x'") == "UPDATE"
    assert query_masked("-- note\nSELECT 1") == "SELECT"
    assert query_masked("") == HIDDEN
    assert query_masked(None) == HIDDEN


def test_the_admin_page_shows_each_object(staff_client):
    response = staff_client.get("/admin/monitoring/")
    assert response.status_code == 200
    page = response.content.decode()
    for title in ("Connections", "Longest-running queries", "Table bloat", "Slowest statements"):
        assert title in page
    assert "connection_count" in page and "email_messages" in page
    # Where the server does not preload pg_stat_statements, the page says why.
    assert "pg_stat_statements is not available" in page or "mean_ms" in page


def test_the_admin_index_links_to_it(staff_client):
    assert 'href="/admin/monitoring/"' in staff_client.get("/admin/").content.decode()


def test_the_admin_index_shows_a_staff_user_who_is_not_superuser_no_link():
    client = Client()
    client.force_login(UserFactory(username="staff-only", is_staff=True))
    page = client.get("/admin/")
    assert page.status_code == 200
    assert "/admin/monitoring/" not in page.content.decode()


def test_the_page_is_for_staff_only():
    anonymous = Client().get("/admin/monitoring/")
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    member = Client()
    member.force_login(UserFactory(username="not-staff", is_staff=False))
    assert member.get("/admin/monitoring/").status_code == 302
