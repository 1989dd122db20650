"""Row-level-security policies, for use in migrations.

`tenant_rls("email_accounts")` is a reversible `RunSQL` that enables and
forces RLS on the table and adds the one tenant-isolation policy. With the
setting unset or empty, `NULLIF(...)` is NULL, the comparison is NULL and the
policy yields zero rows: never an error, never another tenant's rows.
"""

from django.db import migrations

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
