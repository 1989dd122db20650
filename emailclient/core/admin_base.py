"""Operator admin across tenants.

Reads go through the `admin` database alias, whose role has BYPASSRLS, so an
operator sees every tenant. Writes do not: they call the same services the API
calls, which run on the runtime alias inside the row's tenant scope.
"""

from django.contrib import admin

OPERATOR_DB = "admin"


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
