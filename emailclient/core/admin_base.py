"""Operator admin across tenants.

Reads go through the `admin` database alias, whose role has BYPASSRLS, so an
operator sees every tenant. Writes do not: they call the same services the API
calls, which run on the runtime alias inside the row's tenant scope.
"""

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.utils.functional import cached_property

OPERATOR_DB = "admin"


class EstimatedCountPaginator(Paginator):
    """Pages of a list that only grows (the audit log). Unfiltered,
    its count is PostgreSQL's estimate of the table's rows (pg_class.reltuples,
    kept by autovacuum) once that is past `estimate_from`: an exact count
    reads every row on every view of the first page. A filtered list, or a
    smaller table, is counted exactly. The estimate is off by the rows
    written since the last analyse: the last page may be short or empty, and
    the oldest rows are reached by sorting oldest first."""

    estimate_from = 100_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if isinstance(queryset, QuerySet) and not queryset.query.where:
            with connections[queryset.db].cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                    [queryset.model._meta.db_table],
                )
                [estimate] = cursor.fetchone()
            if estimate >= self.estimate_from:
                return estimate
        return super().count


class OperatorModelAdmin(admin.ModelAdmin):
    def get_queryset(self, request):
        return super().get_queryset(request).using(OPERATOR_DB)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        return super().formfield_for_foreignkey(db_field, request, using=OPERATOR_DB, **kwargs)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        return super().formfield_for_manytomany(db_field, request, using=OPERATOR_DB, **kwargs)


class ReadOnlyOperatorAdmin(OperatorModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
