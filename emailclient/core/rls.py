"""Row-level-security policies, for use in migrations.

`tenant_rls("email_accounts")` is a reversible `RunSQL` that enables and
forces RLS on the table and adds the one tenant-isolation policy. With the
setting unset or empty, `NULLIF(...)` is NULL, the comparison is NULL and the
policy yields zero rows: never an error, never another tenant's rows.
"""

from django.db import migrations

from .dbsetup import APPEND_ONLY_TABLES, NOT_LEAKPROOF_FUNCTIONS

TENANT_PREDICATE = "tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::uuid"


def tenant_rls(table: str) -> migrations.RunSQL:
    return migrations.RunSQL(
        sql=[
            f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY',
            f'ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY',
            f'CREATE POLICY tenant_isolation ON "{table}" '
            f"USING ({TENANT_PREDICATE}) WITH CHECK ({TENANT_PREDICATE})",
        ],
        reverse_sql=[
            f'DROP POLICY IF EXISTS tenant_isolation ON "{table}"',
            f'ALTER TABLE "{table}" NO FORCE ROW LEVEL SECURITY',
            f'ALTER TABLE "{table}" DISABLE ROW LEVEL SECURITY',
        ],
    )


# The policy's predicate as PostgreSQL prints it back (pg_get_expr).
_PRINTED_PREDICATE = (
    "(tenant_id = (NULLIF(current_setting('app.current_tenant_id'::text, true), ''::text))::uuid)"
)

_TABLES_SQL = """
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
       COALESCE(array_agg(p.polname ORDER BY p.polname) FILTER (WHERE p.oid IS NOT NULL), '{}'),
       bool_or(p.polname = 'tenant_isolation' AND p.polcmd = '*' AND p.polpermissive
               AND p.polroles = '{0}'
               AND pg_get_expr(p.polqual, p.polrelid) = %(predicate)s
               AND pg_get_expr(p.polwithcheck, p.polrelid) = %(predicate)s)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
LEFT JOIN pg_policy p ON p.polrelid = c.oid
WHERE c.relkind IN ('r', 'p')
GROUP BY c.oid, c.relname, c.relrowsecurity, c.relforcerowsecurity
ORDER BY c.relname
"""


def database_security_problems(cursor) -> list[str]:
    """What keeps the database from isolating tenants, as the connected
    (runtime) role sees it; empty when all is well. Every table with a
    `tenant_id` must have row-level security enabled and forced and exactly
    one policy, `tenant_isolation`, with `TENANT_PREDICATE` for reading and
    writing; the role must be neither a superuser nor exempt from RLS; no
    function known to leak (`dbsetup.NOT_LEAKPROOF_FUNCTIONS`) may be marked
    LEAKPROOF; the append-only tables must refuse the role UPDATE, DELETE and
    TRUNCATE.

    `cursor` is any DB-API cursor (Django's or psycopg's). A restore whose
    post-data section failed, or a table added without `tenant_rls()`, is
    reported here, before a request can read another tenant's rows."""
    problems = []
    cursor.execute("SELECT rolsuper, rolbypassrls, current_user FROM pg_roles WHERE rolname = current_user")
    superuser, bypass, role = cursor.fetchone()
    if superuser or bypass:
        problems.append(
            f"role {role} is a superuser or has BYPASSRLS: row-level security does not apply to it"
        )
    cursor.execute(_TABLES_SQL, {"predicate": _PRINTED_PREDICATE})
    rows = cursor.fetchall()
    if not rows:
        problems.append("no table has a tenant_id column: the database is empty or not this service's")
    for table, enabled, forced, policies, isolating in rows:
        if not enabled:
            problems.append(f"{table}: row-level security is not enabled")
        if not forced:
            problems.append(f"{table}: row-level security is not forced")
        if not isolating:
            problems.append(f"{table}: no tenant_isolation policy with the tenant predicate")
        elif list(policies) != ["tenant_isolation"]:
            problems.append(f"{table}: policies besides tenant_isolation: {', '.join(policies)}")
    for function in NOT_LEAKPROOF_FUNCTIONS:
        cursor.execute("SELECT proleakproof FROM pg_proc WHERE oid = %s::regprocedure", [function])
        if cursor.fetchone()[0]:
            problems.append(f"{function} is marked LEAKPROOF and is not (run `manage.py setupdb`)")
    for table in APPEND_ONLY_TABLES:
        cursor.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND (has_table_privilege(%s, 'UPDATE') "
            "OR has_table_privilege(%s, 'DELETE') OR has_table_privilege(%s, 'TRUNCATE'))",
            [table, table, table, table],
        )
        if cursor.fetchone()[0]:
            problems.append(f"{table}: role {role} may update or delete it (it must be append-only)")
    return problems


class DatabaseNotSecured(Exception):
    """The database does not isolate tenants: the service must not serve."""


def database_security_check(*, using: str = "default") -> None:
    """Raise DatabaseNotSecured, naming every problem, unless
    `database_security_problems()` finds none on the `using` alias."""
    import psycopg
    from django.db import connections

    # A connection of its own, with the alias's parameters: Django warns about
    # queries while apps load (a gunicorn worker checks then).
    params = connections[using].get_connection_params()
    with psycopg.connect(**params) as conn, conn.cursor() as cursor:
        problems = database_security_problems(cursor)
    if problems:
        raise DatabaseNotSecured("The database does not isolate tenants: " + "; ".join(problems))


_secured = False  # this process has seen the database isolate tenants


def database_secured_once() -> None:
    """`database_security_check()` until it passes once in this process,
    then nothing. A process that could not reach the database when it
    started checks here, before its first tenant request, instead of
    refusing to start: a database that is down for a moment must not stop
    the web role, whose /health then says so."""
    global _secured
    if not _secured:
        database_security_check()
        _secured = True
