import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.cache import cache
from django.db import OperationalError, connections, transaction
from django.db.models import Q
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.html import format_html

from .admin_base import OPERATOR_DB, EstimatedCountPaginator, OperatorModelAdmin, ReadOnlyOperatorAdmin
from .audit import AUDIT_ACTIONS, AUDIT_OBJECT_TYPES
from .exceptions import is_statement_timeout
from .limits import TENANT_LIMIT_SETTINGS
from .models import AuditLog, Tenant, TenantMembership
from .services import tenant_member_add, tenant_member_remove

logger = logging.getLogger(__name__)

# The usage query's statement_timeout: a page of tenants holding millions of
# messages each may take longer, and the page is shown without their counts
# rather than not at all.
USAGE_TIMEOUT_MS = 3_000
# How long a tenant's counted usage is reused: the list is for a glance, and
# counting a big tenant's messages is an index scan of all its rows.
USAGE_CACHE_SECONDS = 60
NOT_COUNTED = "Not counted: it took longer than {:g} s. Try again in a minute."


@dataclass(frozen=True)
class TenantUsage:
    accounts: int = 0
    messages: int = 0
    stored_bytes: int = 0


# What each tenant uses, counted as its quotas count it (mailboxes/sync/quota.py):
# accounts not deleted; messages stored and held in quarantine, with their
# raw sizes (a quarantined one whose source was not kept counts no bytes).
# Table names, not models: the mail store is a higher layer than core (the
# metrics' blob bytes are read the same way). Through the admin alias, whose
# role sees every tenant; for the tenants of one page only, each one an
# index scan of its own rows.
_USAGE_SQL = """
SELECT t.id, a.n, m.n + q.n, m.bytes + q.bytes
FROM tenants t
CROSS JOIN LATERAL (SELECT count(*) AS n FROM email_accounts
                    WHERE tenant_id = t.id AND NOT is_deleted) a
CROSS JOIN LATERAL (SELECT count(*) AS n, COALESCE(sum(size_bytes), 0) AS bytes
                    FROM email_messages WHERE tenant_id = t.id) m
CROSS JOIN LATERAL (SELECT count(*) AS n,
                           COALESCE(sum(size_bytes) FILTER (WHERE raw_blob_key <> ''), 0) AS bytes
                    FROM email_quarantine WHERE tenant_id = t.id) q
WHERE t.id = ANY(%s::uuid[])
"""


def _usage_key(tenant_id: uuid.UUID) -> str:
    return f"admin:tenant-usage:{tenant_id}"


def _usage_count(ids: list[str]) -> dict[uuid.UUID, TenantUsage]:
    """The tenants' usage in one query under USAGE_TIMEOUT_MS; none of
    them if PostgreSQL cancels it (logged)."""
    try:
        with transaction.atomic(using=OPERATOR_DB), connections[OPERATOR_DB].cursor() as cursor:
            cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(USAGE_TIMEOUT_MS)])
            cursor.execute(_USAGE_SQL, [ids])
            rows = cursor.fetchall()
    except OperationalError as exc:
        if not is_statement_timeout(exc):
            raise
        logger.warning("tenant usage of %d tenant(s) not counted in %d ms", len(ids), USAGE_TIMEOUT_MS)
        return {}
    return {row[0]: TenantUsage(int(row[1]), int(row[2]), int(row[3])) for row in rows}


def tenant_usage(tenant_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, TenantUsage]:
    """Accounts, messages and stored bytes of each tenant: those counted in
    the last USAGE_CACHE_SECONDS from Redis, the others in one query. A
    tenant missing from the answer was not counted in time."""
    keys = {_usage_key(tenant_id): tenant_id for tenant_id in tenant_ids}
    usage = {keys[key]: found for key, found in cache.get_many(list(keys)).items()}
    missing = [str(tenant_id) for tenant_id in keys.values() if tenant_id not in usage]
    if not missing:
        return usage
    counted = _usage_count(missing)
    cache.set_many({_usage_key(tenant_id): n for tenant_id, n in counted.items()}, USAGE_CACHE_SECONDS)
    return usage | counted


class _UsageChangeList(ChangeList):
    def get_results(self, request):
        super().get_results(request)
        self.result_list = list(self.result_list)
        usage = tenant_usage(tenant.id for tenant in self.result_list)
        for tenant in self.result_list:
            tenant.usage = usage.get(tenant.id)


def _usage_of(tenant: Tenant) -> TenantUsage | None:
    if not hasattr(tenant, "usage"):
        tenant.usage = tenant_usage([tenant.id]).get(tenant.id)  # type: ignore[attr-defined]
    return tenant.usage  # type: ignore[attr-defined]


def _not_counted() -> str:
    return format_html('<span title="{}">—</span>', NOT_COUNTED.format(USAGE_TIMEOUT_MS / 1000))


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "is_active", "accounts", "messages", "stored", "created_at"]
    readonly_fields = ["accounts", "messages", "stored"]
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
                    "max_concurrent_sends",
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

    def get_changelist(self, request, **kwargs):
        return _UsageChangeList

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:
            return fieldsets
        return [*fieldsets, ("Usage", {"fields": ["accounts", "messages", "stored"]})]

    @admin.display(description="accounts")
    def accounts(self, tenant: Tenant) -> int | str:
        usage = _usage_of(tenant)
        return _not_counted() if usage is None else usage.accounts

    @admin.display(description="messages")
    def messages(self, tenant: Tenant) -> int | str:
        usage = _usage_of(tenant)
        return _not_counted() if usage is None else usage.messages

    @admin.display(description="stored")
    def stored(self, tenant: Tenant) -> str:
        usage = _usage_of(tenant)
        return _not_counted() if usage is None else filesizeformat(usage.stored_bytes)

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


class ActorFilter(admin.RelatedFieldListFilter):
    """Who may have acted, not who did: the operators (staff users), and,
    once the list is narrowed to a tenant, its members. Read from the users
    and memberships, never from the audit log, whose actors only a scan of
    all its rows would list. Anyone else is found by their exact username
    (the search box)."""

    def field_choices(self, field, request, model_admin):
        actors = Q(is_staff=True)
        tenant_id = _uuid_or_none(request.GET.get("tenant__id__exact", ""))
        if tenant_id is not None:
            # Through the admin alias (memberships are under RLS), then the
            # users through the default one: one query of the two would
            # cross aliases, which Django refuses.
            members = TenantMembership.objects.using(OPERATOR_DB).filter(tenant_id=tenant_id)
            actors |= Q(pk__in=list(members.values_list("user_id", flat=True)))
        ordering = self.field_admin_ordering(field, request, model_admin)
        return field.get_choices(include_blank=False, limit_choices_to=actors, ordering=ordering)


def _uuid_or_none(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


class KnownValuesFilter(admin.SimpleListFilter):
    """By one of a fixed list of values, not by the log's distinct values
    (Django's own filter reads those by a scan of all its rows); any other
    value is refused (the admin's ?e=1) before a row is read."""

    values: tuple[str, ...] = ()

    def lookups(self, request, model_admin):
        return [(value, value) for value in self.values]

    def queryset(self, request, queryset):
        wanted = self.value()
        if not wanted:
            return queryset
        if wanted not in self.values:
            raise IncorrectLookupParameters(f"unknown {self.title} {wanted!r}")
        return queryset.filter(**{self.parameter_name: wanted})


class ActionFilter(KnownValuesFilter):
    title = "action"
    parameter_name = "action"
    values = AUDIT_ACTIONS


class ObjectTypeFilter(KnownValuesFilter):
    title = "object type"
    parameter_name = "object_type"
    values = AUDIT_OBJECT_TYPES


class CreatedWithinFilter(admin.SimpleListFilter):
    """The entries of the last day, week or month: a range up to now, which
    the log's BRIN index on created_at narrows to the pages written since
    (the log is appended to in time order). It replaces the date hierarchy,
    whose year, month and day links are the DISTINCT dates of every row."""

    title = "created"
    parameter_name = "created"
    RANGES = {
        "24h": ("Last 24 hours", timedelta(hours=24)),
        "7d": ("Last 7 days", timedelta(days=7)),
        "30d": ("Last 30 days", timedelta(days=30)),
    }

    def lookups(self, request, model_admin):
        return [(value, label) for value, (label, _) in self.RANGES.items()]

    def queryset(self, request, queryset):
        wanted = self.value()
        if not wanted:
            return queryset
        if wanted not in self.RANGES:
            raise IncorrectLookupParameters(f"unknown range {wanted!r}")
        _, within = self.RANGES[wanted]
        return queryset.filter(created_at__gte=timezone.now() - within)


@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyOperatorAdmin):
    """Read-only (no add, change or delete): filtered by tenant, action and
    object type (the known ones, `emailclient.core.audit`), actor (the
    tenant chosen first offers its members) and the last day, week or month;
    searched by object id, action or the actor's exact username. No filter
    lists what the log holds: that would read all its rows."""

    list_display = ["created_at", "tenant", "actor", "action", "object_type", "object_id", "ip_address"]
    list_filter = [
        "tenant",
        ActionFilter,
        ObjectTypeFilter,
        ("actor", ActorFilter),
        CreatedWithinFilter,
    ]
    list_select_related = ["tenant", "actor"]
    search_fields = ["object_id", "action", "=actor__username"]
    # A filtered page counts its own rows only: not the whole log's total
    # ("n results (N total)"), nor each filter choice's rows ("Show counts").
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    # The whole log's page: an estimated count, rows from idx_audit_created_id.
    paginator = EstimatedCountPaginator
