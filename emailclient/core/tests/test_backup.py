"""backup and restore round-trip every tenant, with RLS intact afterwards."""

import psycopg
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from accounts.tests.factories import EmailAccountFactory
from emailclient.core.backup import restore_database
from emailclient.core.dbsetup import setup_database

RESTORED = "emailclient_restore_test"


def _connect(db: dict) -> psycopg.Connection:
    return psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"])


def test_backup_then_restore_into_a_new_database(committed_db, tenant_a, tenant_b, tmp_path):
    EmailAccountFactory(tenant=tenant_a, email_address="a@a.example")
    EmailAccountFactory(tenant=tenant_b, email_address="b@b.example")
    dump = tmp_path / "backup.dump"

    call_command("backup", str(dump))

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
