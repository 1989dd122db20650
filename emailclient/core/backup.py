"""Database backup and restore with the project's roles.

Backup: `pg_dump --format=custom` as the admin role, which has BYPASSRLS and so
dumps every tenant's rows (pg_dump refuses to dump a table whose rows RLS
would filter).

Restore, into an empty database made by `setupdb`, in pg_restore's three
sections: the schema (pre-data) as the owner, so the owner owns the tables
again; the rows (data) as the admin role, because FORCE ROW LEVEL SECURITY
would filter even the owner's COPY; indexes, constraints and policies
(post-data) as the owner. Grants come from the owner's default privileges;
the append-only tables then lose UPDATE and DELETE for the runtime role again.

Row-level security and its policies are in the post-data section: a restore
that stops there would leave every tenant's rows readable to all. So the
restore ends by checking, as the runtime role, what the service checks at
start-up (`rls.database_security_problems`), and fails naming each problem.
"""

import os
import subprocess
from pathlib import Path

import psycopg

from .dbsetup import append_only_revoke
from .rls import database_security_problems


class BackupError(Exception):
    pass


def _libpq_args(db: dict) -> tuple[list[str], dict]:
    args = ["--host", db.get("HOST") or "127.0.0.1", "--port", str(db.get("PORT") or 5432)]
    args += ["--username", db["USER"], "--no-password"]
    env = {**os.environ}
    if db.get("PASSWORD"):
        env["PGPASSWORD"] = db["PASSWORD"]
    return args, env


def _run(command: list[str], env: dict) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise BackupError(f"{command[0]} failed: {result.stderr.strip()}")


def backup_database(*, output: Path, databases: dict) -> None:
    db = databases["admin"]
    args, env = _libpq_args(db)
    _run(
        [
            "pg_dump",
            "--format=custom",
            "--no-owner",
            "--no-privileges",
            "--file",
            str(output),
            *args,
            "--dbname",
            db["NAME"],
        ],
        env,
    )


def _connect(db: dict, **kwargs) -> psycopg.Connection:
    conninfo = psycopg.conninfo.make_conninfo(
        host=db.get("HOST") or "127.0.0.1",
        port=db.get("PORT") or 5432,
        user=db["USER"],
        password=db.get("PASSWORD") or None,
        dbname=db["NAME"],
    )
    return psycopg.connect(conninfo, **kwargs)


def _table_count(db: dict) -> int:
    with _connect(db) as conn:
        # count(*) always returns a row.
        return conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]  # type: ignore[index]


def restore_database(*, source: Path, databases: dict) -> None:
    if not source.is_file():
        raise BackupError(f"{source} is not a file.")
    if _table_count(databases["owner"]):
        raise BackupError(
            f"database {databases['owner']['NAME']} is not empty: restore only into a new database "
            "(drop it, then `manage.py setupdb`)."
        )
    for section, alias in (("pre-data", "owner"), ("data", "admin"), ("post-data", "owner")):
        db = databases[alias]
        args, env = _libpq_args(db)
        _run(
            [
                "pg_restore",
                "--exit-on-error",
                "--no-owner",
                "--no-privileges",
                f"--section={section}",
                *args,
                "--dbname",
                db["NAME"],
                str(source),
            ],
            env,
        )
    with _connect(databases["owner"], autocommit=True) as conn, conn.cursor() as cursor:
        append_only_revoke(cursor, runtime_role=databases["default"]["USER"])
    restored_database_check(databases=databases)


def restored_database_check(*, databases: dict) -> None:
    """BackupError unless the database isolates tenants for the runtime role."""
    with _connect(databases["default"]) as conn, conn.cursor() as cursor:
        problems = database_security_problems(cursor)
    if problems:
        raise BackupError(
            f"database {databases['default']['NAME']} was restored but does not isolate tenants; "
            "do not serve it: " + "; ".join(problems)
        )
