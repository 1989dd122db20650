from django.conf import settings
from django.contrib import admin

from .admin_base import OperatorModelAdmin, ReadOnlyOperatorAdmin
from .limits import TENANT_LIMIT_SETTINGS
from .models import AuditLog, Tenant, TenantMembership
from .services import tenant_member_add, tenant_member_remove


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "is_active", "created_at"]
    fieldsets = [
        (None, {"fields": ["name", "slug", "is_active"]}),
        (
            "Quotas",
            {"fields": ["max_accounts", "max_accounts_per_user", "max_stored_bytes", "max_messages"]},
        ),
        (
            "Fair sharing and throttles",
            {
                "fields": [
                    "max_concurrent_syncs",
                    "api_rate_limit_user",
                    "api_rate_limit_tenant",
                    "api_rate_limit_search",
                    "sync_trigger_rate_limit",
                    "compose_rate_limit_user",
                    "compose_rate_limit_tenant",
                ]
            },
        ),
    ]
    list_filter = ["is_active"]
    search_fields = ["slug", "name"]
    prepopulated_fields = {"slug": ["name"]}

    def get_form(self, request, obj=None, change=False, **kwargs):
        """Each limit's help says what an empty field means now: the
        setting's value, and the variable that sets it."""
        form = super().get_form(request, obj, change=change, **kwargs)
        for field, setting in TENANT_LIMIT_SETTINGS.items():
            if field in form.base_fields:
                value = getattr(settings, setting)
                default = "unlimited" if value is None else value
                form.base_fields[field].help_text = f"Empty: the service's default, {default} ({setting})."
        return form


@admin.register(TenantMembership)
class TenantMembershipAdmin(OperatorModelAdmin):
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role", "tenant"]
    list_select_related = ["user", "tenant"]
    search_fields = ["user__username", "tenant__slug"]
    fields = ["tenant", "user", "role"]

    def save_model(self, request, obj, form, change):
        saved = tenant_member_add(tenant=obj.tenant, user=obj.user, role=obj.role)
        obj.pk = saved.pk

    def delete_model(self, request, obj):
        tenant_member_remove(tenant=obj.tenant, user=obj.user)

    def delete_queryset(self, request, queryset):
        for membership in queryset.select_related("tenant", "user"):
            self.delete_model(request, membership)


@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyOperatorAdmin):
    list_display = ["created_at", "tenant", "actor", "action", "object_type", "object_id"]
    list_filter = ["action", "object_type", "tenant"]
    list_select_related = ["tenant", "actor"]
    search_fields = ["object_id", "action"]
    date_hierarchy = "created_at"
