"""The seeds' monitoring objects (their init-connection-pooling.sql):
`pg_connection_stats` and `pg_long_queries` (views) and
`pg_table_bloat_status()` (a function), for PostgreSQL 15 and up, readable by
the admin role (the operators': the Django admin's monitoring page,
emailclient.core.admin_monitoring) and not by the runtime role. And
`pg_stat_statements` where the server has it and the owner may create it.

The views read pg_stat_activity as the role that queries them: a role sees
the state, times and query text of other roles' sessions only if it is a
member of `pg_read_all_stats` (granted by a superuser, by hand: `GRANT
pg_read_all_stats TO <admin role>`; `setupdb` does not grant it);
without it the admin role sees every session counted, but the times and text
of its own sessions only.

Role names come from the settings (DATABASES' default and admin aliases), so
the grants are `RunPython`; the objects themselves are plain SQL.
"""

from django.conf import settings
from django.db import migrations

from emailclient.core.dbsetup import monitoring_grants

CREATE = [
    """
    CREATE VIEW pg_connection_stats AS
    SELECT datname AS database,
           usename AS username,
           count(*) AS connection_count,
           count(*) FILTER (WHERE state = 'active') AS active,
           count(*) FILTER (WHERE state = 'idle') AS idle,
           count(*) FILTER (WHERE state LIKE 'idle in transaction%') AS idle_in_transaction,
           round(EXTRACT(EPOCH FROM max(now() - backend_start)))::bigint AS longest_connection_seconds,
           current_setting('max_connections')::int AS max_connections
    FROM pg_stat_activity
    WHERE backend_type = 'client backend'
    GROUP BY datname, usename
    ORDER BY connection_count DESC, database, username
    """,
    """
    CREATE VIEW pg_long_queries AS
    SELECT pid,
           usename AS username,
           datname AS database,
           state,
           wait_event_type,
           round(EXTRACT(EPOCH FROM now() - query_start)::numeric, 3) AS runtime_seconds,
           round(EXTRACT(EPOCH FROM now() - xact_start)::numeric, 3) AS transaction_seconds,
           left(query, 1000) AS query
    FROM pg_stat_activity
    WHERE backend_type = 'client backend'
      AND state IS DISTINCT FROM 'idle'
      AND query_start IS NOT NULL
      AND pid <> pg_backend_pid()
    ORDER BY query_start
    LIMIT 10
    """,
    """
    CREATE FUNCTION pg_table_bloat_status()
    RETURNS TABLE (
        table_name text,
        live_tuples bigint,
        dead_tuples bigint,
        dead_percent numeric,
        total_bytes bigint,
        last_vacuum timestamptz,
        last_autovacuum timestamptz,
        last_analyze timestamptz,
        last_autoanalyze timestamptz,
        needs_vacuum boolean
    )
    LANGUAGE sql STABLE SECURITY INVOKER
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT s.relname::text,
               s.n_live_tup,
               s.n_dead_tup,
               CASE WHEN s.n_live_tup + s.n_dead_tup = 0 THEN 0
                    ELSE round(100.0 * s.n_dead_tup / (s.n_live_tup + s.n_dead_tup), 1) END,
               pg_total_relation_size(s.relid),
               s.last_vacuum,
               s.last_autovacuum,
               s.last_analyze,
               s.last_autoanalyze,
               -- the seeds' rule: act when more than 20 % of the rows are dead
               s.n_dead_tup > 1000 AND s.n_dead_tup > 0.2 * (s.n_live_tup + s.n_dead_tup)
        FROM pg_stat_user_tables s
        WHERE s.schemaname = 'public'
        ORDER BY s.n_dead_tup DESC, pg_total_relation_size(s.relid) DESC
    $$
    """,
]
DROP = [
    "DROP FUNCTION IF EXISTS pg_table_bloat_status()",
    "DROP VIEW IF EXISTS pg_long_queries",
    "DROP VIEW IF EXISTS pg_connection_stats",
]

# pg_stat_statements is not a trusted extension: only a superuser (or a role
# with CREATE on the database and the right to create untrusted extensions)
# may create it. Tried, never fatal; the admin page says why it is missing.
# It counts only when the server preloads it (shared_preload_libraries).
STATEMENTS = """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
        EXCEPTION
            WHEN insufficient_privilege OR feature_not_supported OR object_not_in_prerequisite_state THEN
            RAISE NOTICE 'pg_stat_statements not created: %', SQLERRM;
        END;
    END IF;
END
$$
"""


def grant(apps, schema_editor):
    # The same grants as a restore applies (the dump has none).
    with schema_editor.connection.cursor() as cursor:
        monitoring_grants(
            cursor,
            runtime_role=settings.DATABASES["default"]["USER"],
            admin_role=settings.DATABASES["admin"]["USER"],
        )


def statements(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(STATEMENTS)


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0005_tenant_limit_labels"),
    ]

    operations = [
        migrations.RunSQL(sql=CREATE, reverse_sql=DROP),
        migrations.RunPython(grant, migrations.RunPython.noop),
        # Left in place on the way back: other databases' tools may use it.
        migrations.RunPython(statements, migrations.RunPython.noop),
    ]
