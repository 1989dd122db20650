"""Create the database and its three roles, idempotently, as a superuser.

Used by `manage.py setupdb` (make run, deployments) and by the test suite's
database fixture. Role names and passwords come from the three database URLs,
so the settings stay the single source of truth.

    owner  NOSUPERUSER, owns the database and every table (runs migrations)
    app    NOSUPERUSER NOBYPASSRLS, SELECT/INSERT/UPDATE/DELETE only
    admin  NOSUPERUSER BYPASSRLS, SELECT/INSERT/UPDATE/DELETE (admin, backups)
"""

from dataclasses import dataclass

import psycopg
from psycopg import sql


@dataclass(frozen=True)
class Role:
    name: str
    password: str | None


# Functions the searches need as index conditions under row-level security,
# marked LEAKPROOF: each reveals nothing of its arguments but its result.
# ts_match_vq (`tsvector @@ tsquery`) raises no error that depends on the
# vector (only on the query, or on corrupt data). jsonb_contains (`@>`)
# raises only on corrupt data or past the stack depth, which needs a value
# nested thousands deep; the columns searched with it (`to_addresses`,
# `cc_addresses`) are flat arrays generated from parsed addresses.
LEAKPROOF_FUNCTIONS = (
    "pg_catalog.ts_match_vq(tsvector, tsquery)",  # words, substrings' trigrams: vector @@ query
    "pg_catalog.jsonb_contains(jsonb, jsonb)",  # whole addresses: to_addresses @> '["x"]'
)
# Marked LEAKPROOF by earlier versions of setupdb, and not: ILIKE (texticlike)
# raises "LIKE pattern must not end with escape character" only when a row's
# text matches the pattern's beginning, which lets a query read another
# tenant's text one character at a time if the planner runs it before the
# tenant policy. Substring searches use trigram vectors instead (mail.0019).
NOT_LEAKPROOF_FUNCTIONS = ("pg_catalog.texticlike(text, text)",)


# Tables the runtime role may read and append to, never change (the default
# privileges grant it UPDATE and DELETE on every table the owner creates; this
# takes them back after `setupdb`, `migrate` and `restore`).
APPEND_ONLY_TABLES = ("email_audit_log",)


def append_only_revoke(cursor, *, runtime_role: str) -> None:
    """REVOKE UPDATE, DELETE and TRUNCATE on `APPEND_ONLY_TABLES` (those that
    exist) from the runtime role. Run as the tables' owner or a superuser."""
    for table in APPEND_ONLY_TABLES:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
        if cursor.fetchone()[0]:
            # Plain text, so that a Django cursor takes it as well as psycopg's.
            cursor.execute(
                f"REVOKE UPDATE, DELETE, TRUNCATE ON {_quoted(table)} FROM {_quoted(runtime_role)}"
            )


# Monitoring views and function (core.0006) the admin role may read and run,
# and nobody else (the default privileges grant every role all of them).
MONITORING_VIEWS = ("pg_connection_stats", "pg_long_queries")
MONITORING_FUNCTIONS = ("pg_table_bloat_status()",)


def monitoring_grants(cursor, *, runtime_role: str, admin_role: str) -> None:
    """SELECT on `MONITORING_VIEWS` and EXECUTE on `MONITORING_FUNCTIONS`
    (those that exist) for the admin role only, not the runtime role or
    PUBLIC. Run as their owner, by core.0006 and after a restore (whose
    dump has no privileges)."""
    runtime, admin = _quoted(runtime_role), _quoted(admin_role)
    for view in MONITORING_VIEWS:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [view])
        if cursor.fetchone()[0]:
            cursor.execute(f"REVOKE ALL ON {_quoted(view)} FROM PUBLIC, {runtime}, {admin}")
            cursor.execute(f"GRANT SELECT ON {_quoted(view)} TO {admin}")
    for function in MONITORING_FUNCTIONS:
        cursor.execute("SELECT to_regprocedure(%s) IS NOT NULL", [function])
        if cursor.fetchone()[0]:
            cursor.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC, {runtime}")
            cursor.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {admin}")


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _role(settings_dict: dict) -> Role:
    return Role(settings_dict["USER"], settings_dict.get("PASSWORD") or None)


def _ensure_role(cur, role: Role, attributes: str) -> None:
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role.name])
    verb = "ALTER" if cur.fetchone() else "CREATE"
    statement = sql.SQL(f"{verb} ROLE {{}} LOGIN {attributes}").format(sql.Identifier(role.name))
    if role.password:
        statement += sql.SQL(" PASSWORD {}").format(sql.Literal(role.password))
    cur.execute(statement)


def setup_database(*, superuser_url: str, databases: dict, recreate: bool = False, log=print) -> None:
    """`databases` is settings.DATABASES; its default, owner and admin aliases
    must name the same database."""
    if "owner" not in databases:
        raise ValueError("DATABASE_OWNER_URL is required to set the database up.")
    name = databases["default"]["NAME"]
    if {databases[a]["NAME"] for a in ("default", "owner", "admin")} != {name}:
        raise ValueError("DATABASE_URL, DATABASE_OWNER_URL and DATABASE_ADMIN_URL must name one database.")
    owner, app, admin = (_role(databases[a]) for a in ("owner", "default", "admin"))
    if len({owner.name, app.name, admin.name}) != 3:
        raise ValueError("The owner, runtime and admin database roles must be three different roles.")

    with psycopg.connect(superuser_url, autocommit=True) as conn, conn.cursor() as cur:
        _ensure_role(cur, owner, "NOSUPERUSER NOCREATEROLE NOBYPASSRLS")
        _ensure_role(cur, app, "NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS")
        _ensure_role(cur, admin, "NOSUPERUSER NOCREATEDB NOCREATEROLE BYPASSRLS")
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        exists = cur.fetchone() is not None
        if exists and recreate:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            )
            cur.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
            exists = False
        if not exists:
            cur.execute(
                sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0").format(
                    sql.Identifier(name), sql.Identifier(owner.name)
                )
            )
            log(f"created database {name}")

    db_url = psycopg.conninfo.make_conninfo(superuser_url, dbname=name)
    ident = sql.Identifier
    with psycopg.connect(db_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(ident(owner.name)))
        cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        for role in (app, admin):
            cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(ident(name), ident(role.name)))
            cur.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident(role.name)))
            # Tables that exist now, and every table the owner creates later.
            cur.execute(
                sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}").format(
                    ident(role.name)
                )
            )
            # The admin role restores backups, and so sets sequences (setval).
            sequence_privileges = "USAGE, SELECT, UPDATE" if role is admin else "USAGE, SELECT"
            cur.execute(
                sql.SQL(f"GRANT {sequence_privileges} ON ALL SEQUENCES IN SCHEMA public TO {{}}").format(
                    ident(role.name)
                )
            )
            cur.execute(
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public "
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}"
                ).format(ident(owner.name), ident(role.name))
            )
            cur.execute(
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public "
                    f"GRANT {sequence_privileges} ON SEQUENCES TO {{}}"
                ).format(ident(owner.name), ident(role.name))
            )
        append_only_revoke(cur, runtime_role=app.name)
        # Under row-level security, PostgreSQL evaluates the policy before any
        # condition whose function is not LEAKPROOF, so such a condition cannot
        # be an index condition: full-text (@@) searches scanned the whole
        # table. These reveal nothing of their arguments but their result (no
        # data-dependent errors). Only a superuser may say so.
        for function in NOT_LEAKPROOF_FUNCTIONS:
            try:
                cur.execute(f"ALTER FUNCTION {function} NOT LEAKPROOF")
            except psycopg.errors.InsufficientPrivilege:
                log(f"warning: cannot take LEAKPROOF off {function} (needs a superuser)")
        for function in LEAKPROOF_FUNCTIONS:
            try:
                cur.execute(f"ALTER FUNCTION {function} LEAKPROOF")
            except psycopg.errors.InsufficientPrivilege:
                log(f"warning: cannot mark {function} LEAKPROOF (needs a superuser); searches will scan")
    log(f"database {name}: roles {owner.name} (owner), {app.name} (runtime), {admin.name} (admin) ready")
