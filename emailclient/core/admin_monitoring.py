"""The admin's database monitoring page (`/admin/monitoring/`, superusers
only): the seeds' monitoring objects (migration core.0006) and, where the
server has it, pg_stat_statements' slowest statements. Read-only, through the
admin alias (the role the views are granted to).

Statement text carries parameter values (subjects, addresses, tokens): the
full text is shown only for the admin role's own sessions and statements;
another role's (the runtime role's: the users' requests) shows its first
keyword only (`SELECT`, `UPDATE`, ...) or `<hidden>`."""

import re
from dataclasses import dataclass, field
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, connections, transaction
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from .admin_base import OPERATOR_DB


@dataclass
class Table:
    title: str
    description: str
    columns: list[str] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    error: str = ""


QUERIES = (
    (
        "Connections",
        "pg_connection_stats: client connections by database and role. Times and states of other roles' "
        "sessions show only if the admin role is a member of pg_read_all_stats.",
        "SELECT * FROM pg_connection_stats",
    ),
    (
        "Longest-running queries",
        "pg_long_queries: the ten oldest statements that are not idle (text cut at 1,000 characters; "
        "another role's statement shows its first keyword only).",
        "SELECT * FROM pg_long_queries",
    ),
    (
        "Table bloat",
        "pg_table_bloat_status(): dead rows per table; vacuum when more than 20 % are dead.",
        "SELECT * FROM pg_table_bloat_status() LIMIT 30",
    ),
)
STATEMENTS_SQL = """
SELECT r.rolname AS username, calls, round(mean_exec_time::numeric, 2) AS mean_ms,
       round(total_exec_time::numeric, 0) AS total_ms, rows, left(query, 500) AS query
FROM pg_stat_statements s LEFT JOIN pg_roles r ON r.oid = s.userid
ORDER BY mean_exec_time DESC
LIMIT 15
"""


HIDDEN = "<hidden>"
_KEYWORD = re.compile(r"\s*(?:/\*.*?\*/\s*|--[^\n]*\n\s*)*([A-Za-z]+)", re.DOTALL)


def query_masked(query: Any) -> str:
    """Another role's statement: its first keyword, never its text."""
    match = _KEYWORD.match(query) if isinstance(query, str) else None
    return match.group(1).upper() if match else HIDDEN


def _masked_rows(columns: list[str], rows: list[tuple[Any, ...]], own: str) -> list[tuple[Any, ...]]:
    if "query" not in columns:
        return rows
    query_at = columns.index("query")
    user_at = columns.index("username") if "username" in columns else None
    masked = []
    for row in rows:
        if user_at is None or row[user_at] != own:
            row = (*row[:query_at], query_masked(row[query_at]), *row[query_at + 1 :])
        masked.append(row)
    return masked


def _read(title: str, description: str, sql: str) -> Table:
    table = Table(title, description)
    try:
        with transaction.atomic(using=OPERATOR_DB), connections[OPERATOR_DB].cursor() as cursor:
            cursor.execute("SELECT current_user")
            (own,) = cursor.fetchone()
            cursor.execute(sql)
            table.columns = [column.name for column in cursor.description or ()]
            table.rows = _masked_rows(table.columns, cursor.fetchall(), own)
    except DatabaseError as exc:
        table.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return table


def monitoring_tables() -> list[Table]:
    tables = [_read(*query) for query in QUERIES]
    statements = _read(
        "Slowest statements",
        "pg_stat_statements, by mean execution time (another role's statement shows its first keyword only).",
        STATEMENTS_SQL,
    )
    if statements.error:
        statements.error = (
            "pg_stat_statements is not available: "
            + statements.error
            + " (it needs the extension created by a superuser and "
            "shared_preload_libraries = 'pg_stat_statements' in the server's configuration)."
        )
    tables.append(statements)
    return tables


def monitoring_view(request: HttpRequest) -> HttpResponse:
    if not request.user.is_superuser:
        # Other sessions' activity is the whole service's, not a tenant's.
        raise PermissionDenied
    context = {
        **admin.site.each_context(request),
        "title": "Database monitoring",
        "tables": monitoring_tables(),
    }
    return TemplateResponse(request, "admin/core/monitoring.html", context)


# Behind the admin's login and staff check (admin_view) and the superuser
# check above, never cached.
monitoring = admin.site.admin_view(monitoring_view)
