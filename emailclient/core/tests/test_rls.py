"""Row-level security: the second wall, checked without the first.

These tests query with raw SQL and no tenant filter, as a buggy selector
would, through the runtime role the service uses.
"""

import psycopg
import pytest
from django.conf import settings
from django.db import DatabaseError, ProgrammingError, connection, connections, transaction

from accounts.tests.factories import EmailAccountFactory
from emailclient.core.models import AuditLog, TenantMembership
from emailclient.core.rls import TENANT_PREDICATE, database_security_check, database_security_problems
from emailclient.core.services import audit_log_record
from emailclient.core.tenancy import active_tenant_scope, current_tenant_id, tenant_scope


def _tables_with_tenant_column(cursor) -> list[str]:
    cursor.execute(
        """
        SELECT c.relname
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
        WHERE c.relkind IN ('r', 'p')
        ORDER BY 1
        """
    )
    return [name for (name,) in cursor.fetchall()]


@pytest.mark.django_db
def test_every_tenant_table_has_rls_enabled_and_forced():
    with connection.cursor() as cursor:
        tables = _tables_with_tenant_column(cursor)
        assert {
            "email_accounts",
            "email_folders",
            "email_messages",
            "email_attachments",
            "email_audit_log",
            "tenant_memberships",
        } <= set(tables)
        cursor.execute(
            """
            SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
                   (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid)
            FROM pg_class c WHERE c.relname = ANY(%s)
            """,
            [tables],
        )
        for name, enabled, forced, policies in cursor.fetchall():
            assert enabled, f"{name}: RLS not enabled"
            assert forced, f"{name}: RLS not forced"
            assert policies >= 1, f"{name}: no policy"


@pytest.mark.django_db
def test_runtime_role_is_unprivileged_and_owns_nothing():
    runtime_role = settings.DATABASES["default"]["USER"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        assert cursor.fetchone()[0] == runtime_role
        cursor.execute(
            "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = %s",
            [runtime_role],
        )
        assert cursor.fetchone() == (False, False, False, False)
        cursor.execute(
            """
            SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
            WHERE r.rolname = %s
            """,
            [runtime_role],
        )
        assert cursor.fetchone()[0] == 0
        cursor.execute(
            "SELECT count(*) FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE r.rolname = %s",
            [runtime_role],
        )
        assert cursor.fetchone()[0] == 0
        # DML only: no TRUNCATE, REFERENCES or TRIGGER on any table.
        cursor.execute(
            """
            SELECT DISTINCT privilege_type FROM information_schema.role_table_grants
            WHERE grantee = %s
            """,
            [runtime_role],
        )
        assert {p for (p,) in cursor.fetchall()} == {"SELECT", "INSERT", "UPDATE", "DELETE"}


@pytest.mark.django_db
def test_rls_hides_other_tenants_rows_from_an_unfiltered_query(tenant_a, tenant_b):
    """With the policy dropped (`DROP POLICY tenant_isolation ON email_accounts`,
    done once by hand as the owner) this test fails: the unfiltered query under
    tenant A's context returns B's account too, and with no context both."""
    account_a = EmailAccountFactory(tenant=tenant_a)
    account_b = EmailAccountFactory(tenant=tenant_b)

    with tenant_scope(tenant_a.id), connection.cursor() as cursor:
        cursor.execute("SELECT id FROM email_accounts")
        assert {row[0] for row in cursor.fetchall()} == {account_a.id}

    with tenant_scope(tenant_b.id), connection.cursor() as cursor:
        cursor.execute("SELECT id FROM email_accounts")
        assert {row[0] for row in cursor.fetchall()} == {account_b.id}

    with connection.cursor() as cursor:
        assert current_tenant_id() is None
        cursor.execute("SELECT count(*) FROM email_accounts")
        assert cursor.fetchone()[0] == 0
        cursor.execute("SELECT count(*) FROM tenant_memberships")
        assert cursor.fetchone()[0] == 0


@pytest.mark.django_db
def test_empty_setting_yields_zero_rows_not_an_error(tenant_a):
    EmailAccountFactory(tenant=tenant_a)
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('app.current_tenant_id', '', true)")
        cursor.execute("SELECT count(*) FROM email_accounts")
        assert cursor.fetchone()[0] == 0


@pytest.mark.django_db
def test_rls_refuses_writing_a_row_into_another_tenant(tenant_a, tenant_b):
    account = EmailAccountFactory(tenant=tenant_a)
    with tenant_scope(tenant_b.id), connection.cursor() as cursor:
        cursor.execute("UPDATE email_accounts SET account_name = 'stolen' WHERE id = %s", [account.id])
        assert cursor.rowcount == 0
    # Inserting a membership for tenant A while scoped to B.
    with (
        pytest.raises(DatabaseError, match="row-level security"),
        tenant_scope(tenant_b.id),
        transaction.atomic(),
    ):
        TenantMembership.objects.create(tenant=tenant_a, user=account.user)


@pytest.mark.django_db
def test_nested_scopes_restore_the_outer_tenant(tenant_a, tenant_b):
    with tenant_scope(tenant_a.id):
        with tenant_scope(tenant_b.id):
            assert current_tenant_id() == tenant_b.id
        assert current_tenant_id() == tenant_a.id
    assert current_tenant_id() is None


@pytest.mark.django_db
def test_active_tenant_scope_finds_the_tenant_by_slug_or_id_and_scopes_to_it(tenant_a, tenant_b):
    account_a = EmailAccountFactory(tenant=tenant_a)
    EmailAccountFactory(tenant=tenant_b)
    for ref in ("tenant-a", str(tenant_a.id), str(tenant_a.id).upper()):
        with active_tenant_scope(ref) as found, connection.cursor() as cursor:
            assert found == tenant_a.id
            assert current_tenant_id() == tenant_a.id
            cursor.execute("SELECT id FROM email_accounts")
            assert [row[0] for row in cursor.fetchall()] == [account_a.id]
    assert current_tenant_id() is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    "ref", ["no-such-tenant", "00000000-0000-0000-0000-000000000000", "tenant-a' OR 1=1 --"]
)
def test_active_tenant_scope_without_a_tenant_sees_nothing(tenant_a, ref):
    EmailAccountFactory(tenant=tenant_a)
    with tenant_scope(tenant_a.id):
        with active_tenant_scope(ref) as found, connection.cursor() as cursor:
            assert found is None
            cursor.execute("SELECT count(*) FROM email_accounts")
            assert cursor.fetchone()[0] == 0
        assert current_tenant_id() == tenant_a.id  # the outer scope is back


@pytest.mark.django_db
def test_active_tenant_scope_ignores_a_deactivated_tenant(tenant_a):
    EmailAccountFactory(tenant=tenant_a)
    tenant_a.is_active = False
    tenant_a.save()
    for ref in ("tenant-a", str(tenant_a.id)):
        with active_tenant_scope(ref) as found, connection.cursor() as cursor:
            assert found is None
            cursor.execute("SELECT count(*) FROM email_accounts")
            assert cursor.fetchone()[0] == 0


def test_admin_alias_bypasses_rls(committed_db, tenant_a, tenant_b):
    """The operator's alias sees every tenant; the runtime alias none without a scope."""
    EmailAccountFactory(tenant=tenant_a)
    EmailAccountFactory(tenant=tenant_b)
    with connections["admin"].cursor() as cursor:
        cursor.execute("SELECT count(DISTINCT tenant_id) FROM email_accounts")
        assert cursor.fetchone()[0] == 2
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM email_accounts")
        assert cursor.fetchone()[0] == 0


@pytest.mark.django_db
def test_the_audit_log_is_append_only_for_the_runtime_role(tenant_a):
    """The default privileges give the runtime role UPDATE and DELETE on
    every table the owner creates; `migrate`, `setupdb` and `restore` take
    them back on the audit log, so a compromised web process cannot rewrite
    or erase what it did. (The admin role, for the operator, keeps them.)"""
    entry = audit_log_record(tenant=tenant_a, actor=None, action="test", object_type="x", object_id=None)
    for statement in (
        "UPDATE email_audit_log SET action = 'rewritten' WHERE id = %s",
        "DELETE FROM email_audit_log WHERE id = %s",
    ):
        with (
            pytest.raises(ProgrammingError, match="permission denied"),
            tenant_scope(tenant_a.id),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement, [entry.id])
    with tenant_scope(tenant_a.id):
        assert list(AuditLog.objects.values_list("action", flat=True)) == ["test"]


@pytest.mark.django_db
def test_the_migrated_database_passes_the_start_up_check():
    with connection.cursor() as cursor:
        assert database_security_problems(cursor) == []
    database_security_check()  # raises nothing


@pytest.mark.django_db(databases=["default", "owner"])
def test_the_check_names_every_table_that_lost_its_isolation():
    """What a restore stopped in its post-data section, or a table added
    without `tenant_rls()`, looks like; the owner's changes are rolled back."""
    with transaction.atomic(using="owner"), connections["owner"].cursor() as cursor:
        cursor.execute('ALTER TABLE "email_accounts" NO FORCE ROW LEVEL SECURITY')
        cursor.execute('ALTER TABLE "email_folders" DISABLE ROW LEVEL SECURITY')
        cursor.execute('DROP POLICY tenant_isolation ON "email_attachments"')
        cursor.execute('CREATE POLICY open_door ON "email_messages" USING (true)')
        cursor.execute('DROP POLICY tenant_isolation ON "email_thread_refs"')
        cursor.execute(f'CREATE POLICY tenant_isolation ON "email_thread_refs" USING ({TENANT_PREDICATE})')
        cursor.execute("CREATE TABLE rls_check_new (id int, tenant_id uuid)")
        problems = database_security_problems(cursor)
        transaction.set_rollback(True, using="owner")
    owner = settings.DATABASES["owner"]["USER"]
    assert problems == [
        "email_accounts: row-level security is not forced",
        "email_attachments: no tenant_isolation policy with the tenant predicate",
        "email_folders: row-level security is not enabled",
        "email_messages: policies besides tenant_isolation: open_door, tenant_isolation",
        # No WITH CHECK: the role could write rows into another tenant.
        "email_thread_refs: no tenant_isolation policy with the tenant predicate",
        "rls_check_new: row-level security is not enabled",
        "rls_check_new: row-level security is not forced",
        "rls_check_new: no tenant_isolation policy with the tenant predicate",
        f"email_audit_log: role {owner} may update or delete it (it must be append-only)",
    ]


@pytest.mark.django_db(databases=["default", "admin"])
def test_a_role_exempt_from_rls_is_refused():
    with connections["admin"].cursor() as cursor:
        problems = database_security_problems(cursor)
    admin = settings.DATABASES["admin"]["USER"]
    assert problems[0] == (
        f"role {admin} is a superuser or has BYPASSRLS: row-level security does not apply to it"
    )


@pytest.mark.django_db
def test_the_check_refuses_ilike_marked_leakproof():
    """Earlier versions of setupdb marked ILIKE LEAKPROOF; a database set up
    then keeps the mark until setupdb runs again (rolled back here)."""
    dbname = settings.DATABASES["default"]["NAME"]
    conninfo = psycopg.conninfo.make_conninfo(settings.DATABASE_SUPERUSER_URL, dbname=dbname)
    with psycopg.connect(conninfo) as conn, conn.cursor() as cursor:
        cursor.execute("ALTER FUNCTION pg_catalog.texticlike(text, text) LEAKPROOF")
        problems = database_security_problems(cursor)
        conn.rollback()
    assert (
        "pg_catalog.texticlike(text, text) is marked LEAKPROOF and is not (run `manage.py setupdb`)"
        in problems
    )
