"""backup and restore round-trip every tenant, with RLS intact afterwards."""

import os
import subprocess
import sys

import psycopg
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from accounts.tests.factories import EmailAccountFactory
from emailclient.core.backup import BackupError, backup_database, restore_database, restored_database_check
from emailclient.core.dbsetup import setup_database

# Beside the suite's own database, so that suites run side by side do not share it.
RESTORED = f"{settings.DATABASES['default']['NAME']}_restore"


def _connect(db: dict) -> psycopg.Connection:
    return psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"])


def test_backup_then_restore_into_a_new_database(committed_db, tenant_a, tenant_b, tmp_path):
    EmailAccountFactory(tenant=tenant_a, email_address="a@a.example")
    EmailAccountFactory(tenant=tenant_b, email_address="b@b.example")
    dump = tmp_path / "backup.dump"

    backup_database(output=dump, databases=settings.DATABASES)

    target = {alias: {**db, "NAME": RESTORED} for alias, db in settings.DATABASES.items()}
    setup_database(superuser_url=settings.DATABASE_SUPERUSER_URL, databases=target, recreate=True, log=str)
    restore_database(source=dump, databases=target)

    with _connect(target["admin"]) as conn:
        rows = conn.execute("SELECT email_address FROM email_accounts ORDER BY 1").fetchall()
        assert rows == [("a@a.example",), ("b@b.example",)]
        forced = conn.execute(
            "SELECT relforcerowsecurity FROM pg_class WHERE relname = 'email_accounts'"
        ).fetchone()
        assert forced == (True,)
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'email_accounts'").fetchone()
        assert owner == (target["owner"]["USER"],)
    with _connect(target["default"]) as conn:
        # The runtime role can use the restored tables, and RLS still holds.
        assert conn.execute("SELECT count(*) FROM email_accounts").fetchone() == (0,)
        conn.execute("SELECT set_config('app.current_tenant_id', %s, false)", [str(tenant_a.id)])
        assert conn.execute("SELECT email_address FROM email_accounts").fetchall() == [("a@a.example",)]

    # The configured database has tables: restore refuses to mix into it.
    with pytest.raises(CommandError, match="not empty"):
        call_command("restore", str(dump))


def test_a_restored_database_that_lost_a_policy_is_refused_and_not_served(committed_db, tenant_a, tmp_path):
    """RLS and the policies come in pg_dump's post-data section: a restore
    that stops there leaves the rows readable by every tenant. The restore's
    own check, and a web process starting on such a database, refuse it."""
    EmailAccountFactory(tenant=tenant_a, email_address="a@a.example")
    dump = tmp_path / "backup.dump"
    backup_database(output=dump, databases=settings.DATABASES)
    target = {alias: {**db, "NAME": RESTORED} for alias, db in settings.DATABASES.items()}
    setup_database(superuser_url=settings.DATABASE_SUPERUSER_URL, databases=target, recreate=True, log=str)
    restore_database(source=dump, databases=target)  # complete: passes its check
    with _connect(target["default"]) as conn:
        assert conn.execute("SELECT has_table_privilege('email_audit_log', 'UPDATE')").fetchone() == (False,)

    with _connect(target["owner"]) as conn:
        conn.execute("DROP POLICY tenant_isolation ON email_accounts")
        conn.execute("ALTER TABLE email_messages NO FORCE ROW LEVEL SECURITY")
    with pytest.raises(BackupError) as info:
        restored_database_check(databases=target)
    assert str(info.value) == (
        f"database {RESTORED} was restored but does not isolate tenants; do not serve it: "
        "email_accounts: no tenant_isolation policy with the tenant predicate; "
        "email_messages: row-level security is not forced"
    )

    # A gunicorn worker loads the WSGI application: it exits before serving.
    started = subprocess.run(
        [sys.executable, "-c", "import emailclient.wsgi"],
        env={**os.environ, "TEST_DATABASE_NAME": RESTORED, "SERVER_SOFTWARE": "gunicorn/23.0.0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    refusal = "refusing to start: The database does not isolate tenants: email_accounts: no tenant_isolation"
    assert started.returncode == 3, started.stderr
    assert refusal in started.stderr
    # A Celery worker stops at its worker_init, before it takes a task.
    worker = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "emailclient",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "WARNING",
        ],
        env={**os.environ, "TEST_DATABASE_NAME": RESTORED},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert worker.returncode == 3, worker.stderr
    assert refusal in worker.stderr
