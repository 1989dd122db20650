"""Operator admin for drafts and the outbox: read through the `admin` alias
(every tenant), never a body (only subjects), and two writes through the
API's own services: cancelling a send that has not started (`draft_cancel`)
and resending an `uncertain` one (`draft_send`, which builds it again with
the same Message-ID and a fresh retry budget); both audited with the
operator as the actor."""

from django.contrib import admin, messages

from emailclient.core.admin_base import ReadOnlyOperatorAdmin
from emailclient.core.clientaddr import client_address
from emailclient.core.exceptions import ApplicationError, NotFound
from emailclient.core.tenancy import tenant_scope

from .models import Draft, SendQueueItem, Status
from .services import draft_cancel, draft_send


def _locked_draft(draft_id) -> Draft:
    """The draft again on the runtime alias, locked, as the API takes it
    (in the caller's tenant scope); one the user deleted is gone, as the
    API says (its removal may still be on its way)."""
    draft = (
        Draft.objects.select_related("tenant", "account")
        .select_for_update(of=("self",))
        .filter(id=draft_id, is_deleted=False)
        .first()
    )
    if draft is None:  # deleted, or removed since the list was read
        raise NotFound("Draft not found.")
    return draft


def may_send(request) -> bool:
    """Cancelling and resending change a draft: the operator needs the
    draft's change permission, which these read-only admins otherwise never
    use (Django offers an action without `permissions=` to anyone who can
    see the list)."""
    return request.user.has_perm("compose.change_draft")


def resend_uncertain(model_admin: admin.ModelAdmin, request, pairs) -> None:
    """Queue again each `uncertain` draft of `pairs` (draft id, tenant id)
    through `draft_send`; any other status is refused and left as it is."""
    resent, refused = 0, 0
    for draft_id, tenant_id in sorted(pairs):
        try:
            with tenant_scope(tenant_id):
                draft = _locked_draft(draft_id)
                if draft.status != Status.UNCERTAIN:
                    raise ApplicationError(f"The item is {draft.status}, not uncertain.")
                draft_send(draft=draft, actor=request.user, ip_address=client_address(request))
            resent += 1
        except ApplicationError:
            refused += 1
    if resent:
        model_admin.message_user(request, f"Queued {resent} send(s) again.", messages.SUCCESS)
    if refused:
        model_admin.message_user(
            request,
            f"{refused} not resent (only an uncertain send is, and its account must be able to send).",
            messages.WARNING,
        )


# What an operator sees of a draft: state and addressing, no bodies.
DRAFT_FIELDS = (
    "id",
    "tenant",
    "user",
    "account",
    "status",
    "subject",
    "message_id",
    "send_at",
    "in_reply_to",
    "forward_of",
    "version",
    "server_version",
    "server_error",
    "is_deleted",
    "created_at",
    "updated_at",
)


@admin.register(Draft)
class DraftAdmin(ReadOnlyOperatorAdmin):
    list_display = ["created_at", "tenant", "user", "account", "status", "subject", "send_at", "is_deleted"]
    list_filter = ["status", "is_deleted", "tenant"]
    list_select_related = ["tenant", "user", "account"]
    search_fields = ["message_id", "=id"]
    date_hierarchy = "created_at"
    fields = DRAFT_FIELDS
    readonly_fields = DRAFT_FIELDS
    actions = ["cancel_sends", "resend"]

    def get_queryset(self, request):
        return super().get_queryset(request).defer("text_body", "html_body")

    def has_cancel_permission(self, request) -> bool:
        return may_send(request)

    def has_resend_permission(self, request) -> bool:
        return may_send(request)

    @admin.action(description="Cancel the selected scheduled or queued sends", permissions=["cancel"])
    def cancel_sends(self, request, queryset):
        cancelled, refused = 0, 0
        for draft_id, tenant_id in queryset.values_list("id", "tenant_id").order_by("id"):
            try:
                with tenant_scope(tenant_id):
                    draft = _locked_draft(draft_id)
                    draft_cancel(draft=draft, actor=request.user, ip_address=client_address(request))
                cancelled += 1
            except ApplicationError:
                refused += 1
        if cancelled:
            self.message_user(request, f"Cancelled {cancelled} send(s).", messages.SUCCESS)
        if refused:
            self.message_user(
                request,
                f"{refused} could not be cancelled (not scheduled or queued, or gone).",
                messages.WARNING,
            )

    @admin.action(description="Resend the selected uncertain sends", permissions=["resend"])
    def resend(self, request, queryset):
        resend_uncertain(self, request, queryset.values_list("id", "tenant_id"))


@admin.register(SendQueueItem)
class SendQueueItemAdmin(ReadOnlyOperatorAdmin):
    list_display = [
        "created_at",
        "draft_status",
        "tenant",
        "account",
        "message_id",
        "attempts",
        "phase",
        "last_reply_code",
        "next_attempt_at",
        "sent_at",
        "sent_copy",
    ]
    list_filter = ["draft__status", "sent_copy", "tenant"]
    list_select_related = ["tenant", "account", "draft"]
    search_fields = ["message_id", "envelope_from"]
    date_hierarchy = "created_at"
    ordering = ["-created_at", "-id"]  # the newest first, as the drafts
    actions = ["resend"]

    def get_queryset(self, request):
        return super().get_queryset(request).defer("draft__text_body", "draft__html_body")

    @admin.display(description="status", ordering="draft__status")
    def draft_status(self, item: SendQueueItem) -> str:
        return item.draft.status

    def has_resend_permission(self, request) -> bool:
        return may_send(request)

    @admin.action(description="Resend the selected uncertain sends", permissions=["resend"])
    def resend(self, request, queryset):
        resend_uncertain(self, request, queryset.values_list("draft_id", "tenant_id"))
