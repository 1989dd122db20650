"""The admin's database monitoring page (`/admin/monitoring/`, staff only):
the seeds' monitoring objects (migration core.0006) and, where the server
has it, pg_stat_statements' slowest statements. Read-only, through the admin
alias (the role the views are granted to)."""

from dataclasses import dataclass, field
from typing import Any

from django.contrib import admin
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
        "pg_long_queries: the ten oldest statements that are not idle (text cut at 1,000 characters).",
        "SELECT * FROM pg_long_queries",
    ),
    (
        "Table bloat",
        "pg_table_bloat_status(): dead rows per table; vacuum when more than 20 % are dead.",
        "SELECT * FROM pg_table_bloat_status() LIMIT 30",
    ),
)
STATEMENTS_SQL = """
SELECT calls, round(mean_exec_time::numeric, 2) AS mean_ms, round(total_exec_time::numeric, 0) AS total_ms,
       rows, left(query, 500) AS query
FROM pg_stat_statements
ORDER BY mean_exec_time DESC
LIMIT 15
"""


def _read(title: str, description: str, sql: str) -> Table:
    table = Table(title, description)
    try:
        with transaction.atomic(using=OPERATOR_DB), connections[OPERATOR_DB].cursor() as cursor:
            cursor.execute(sql)
            table.columns = [column.name for column in cursor.description or ()]
            table.rows = cursor.fetchall()
    except DatabaseError as exc:
        table.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return table


def monitoring_tables() -> list[Table]:
    tables = [_read(*query) for query in QUERIES]
    statements = _read(
        "Slowest statements",
        "pg_stat_statements, by mean execution time.",
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
    context = {
        **admin.site.each_context(request),
        "title": "Database monitoring",
        "tables": monitoring_tables(),
    }
    return TemplateResponse(request, "admin/core/monitoring.html", context)


# Behind the admin's login and staff check (admin_view), never cached.
monitoring = admin.site.admin_view(monitoring_view)
