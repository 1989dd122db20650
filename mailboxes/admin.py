"""The operators' accounts list with the sync side's view of each account:
its live sync state (what `GET /api/sync/{id}/status` answers, from Redis),
last sync, last error and stored message count, a filter by that state and
a "sync now" action that queues a sync through `sync_request`, as the API's
trigger does. Registered here rather than in `accounts`, which may not
import the sync side (apps point one way); the form, the edits through the
accounts services and "disable"/"enable" are `accounts.admin`'s."""

import uuid
from collections.abc import Iterable

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.cache import cache
from django.db.models import Count, IntegerField, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils.text import Truncator

from accounts.admin import EmailAccountAdmin
from accounts.models import EmailAccount
from emailclient.core.exceptions import ApplicationError
from emailclient.core.tenancy import tenant_scope
from messages.models import Message

from .services import sync_request
from .sync_status import IDLE, STATES, _status_key

DISABLED = "disabled"


def sync_statuses(account_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, dict]:
    """The live sync status of each account, in one round trip to Redis."""
    keys = {_status_key(account_id): account_id for account_id in account_ids}
    found = cache.get_many(list(keys))
    return {account_id: found.get(key) or {"state": IDLE} for key, account_id in keys.items()}


def _state(account: EmailAccount, status: dict) -> str:
    return DISABLED if not account.is_enabled else status.get("state", IDLE)


class SyncStateFilter(admin.SimpleListFilter):
    """By the state the list shows: "disabled" in the database, the others
    from Redis (one MGET over the enabled accounts the other filters leave:
    hence after the tenant filter, which narrows it). Its choices are the
    known states, fixed; any other value is refused before anything is read."""

    title = "sync state"
    parameter_name = "sync_state"

    def lookups(self, request, model_admin):
        return [(state, state.replace("_", " ")) for state in (*STATES, DISABLED)]

    def queryset(self, request, queryset):
        wanted = self.value()
        if not wanted:
            return queryset
        if wanted not in (*STATES, DISABLED):
            raise IncorrectLookupParameters(f"unknown sync state {wanted!r}")
        if wanted == DISABLED:
            return queryset.filter(is_enabled=False)
        enabled = queryset.filter(is_enabled=True)
        statuses = sync_statuses(enabled.values_list("id", flat=True))
        matching = [i for i, status in statuses.items() if status.get("state", IDLE) == wanted]
        return enabled.filter(id__in=matching)


class _SyncChangeList(ChangeList):
    def get_results(self, request):
        super().get_results(request)
        self.result_list = list(self.result_list)
        statuses = sync_statuses(account.id for account in self.result_list)
        for account in self.result_list:
            account.sync_live = statuses[account.id]


class AccountAdmin(EmailAccountAdmin):
    list_display = [
        "email_address",
        "tenant",
        "user",
        "protocol",
        "sync_state",
        "last_sync_at",
        "last_error",
        "message_count",
        "is_enabled",
        "is_sync_enabled",
        "is_deleted",
    ]
    list_filter = ["tenant", SyncStateFilter, "is_enabled", "is_sync_enabled", "protocol", "is_deleted"]
    actions = ["sync_now", *EmailAccountAdmin.actions]

    def get_changelist(self, request, **kwargs):
        return _SyncChangeList

    def get_queryset(self, request):
        # Stored messages per account: a correlated count, run for the
        # page's rows only (an index-only scan of idx_messages_account_read).
        stored = (
            Message.objects.filter(account_id=OuterRef("pk"))
            .order_by()
            .values("account_id")
            .annotate(n=Count("id"))
            .values("n")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(message_count=Coalesce(Subquery(stored, output_field=IntegerField()), 0))
        )

    @admin.display(description="sync state")
    def sync_state(self, account: EmailAccount) -> str:
        status = getattr(account, "sync_live", None) or sync_statuses([account.id])[account.id]
        state = _state(account, status)
        detail = status.get("detail", "") if state == status.get("state") else ""
        return f"{state} ({detail})" if detail else state

    @admin.display(description="last error")
    def last_error(self, account: EmailAccount) -> str:
        status = getattr(account, "sync_live", None) or {}
        return Truncator(account.last_sync_error or status.get("error", "")).chars(120)

    @admin.display(description="messages")
    def message_count(self, account: EmailAccount) -> int:
        return account.message_count  # type: ignore[attr-defined]

    @admin.action(description="Sync the selected accounts now", permissions=["change"])
    def sync_now(self, request, queryset):
        """Each enabled account's sync queued (or joined) by `sync_request`,
        as `POST /api/sync/{id}` does; the task gets ids, never credentials."""
        queued, joined, skipped, failed = 0, 0, 0, 0
        for account_id, tenant_id in queryset.values_list("id", "tenant_id").order_by("id"):
            with tenant_scope(tenant_id):
                account = EmailAccount.objects.filter(
                    id=account_id, is_deleted=False, is_enabled=True
                ).first()
            if account is None:
                skipped += 1
                continue
            try:
                _, was_joined = sync_request(account=account)
            except ApplicationError:
                failed += 1
                continue
            joined += was_joined
            queued += not was_joined
        said = f"Queued {queued} sync(s); {joined} joined one already queued or running."
        self.message_user(request, said, messages.SUCCESS)
        if skipped:
            self.message_user(request, f"{skipped} skipped: disabled or deleted.", messages.WARNING)
        if failed:
            self.message_user(request, f"{failed} not queued: the task queue is unavailable.", messages.ERROR)


admin.site.register(EmailAccount, AccountAdmin)
