from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from emailclient.core.admin_base import OperatorModelAdmin
from emailclient.core.clientaddr import client_address
from emailclient.core.exceptions import ApplicationError
from emailclient.core.tenancy import tenant_scope
from emailclient.core.validators import validate_hostname

from .models import EmailAccount
from .services import (
    SECRET_FIELDS,
    WRITABLE_FIELDS,
    account_create,
    account_delete,
    account_ports_check,
    account_quota_check,
    account_settings_verify,
    account_update,
)
from .validators import CREDENTIAL_FIELDS, validate_no_control_characters


def _service_data(cleaned: dict) -> dict:
    """The form's values as the services take them: an empty password keeps the stored one."""
    data = {f: cleaned[f] for f in (*WRITABLE_FIELDS, *SECRET_FIELDS) if f in cleaned}
    return {k: v for k, v in data.items() if not (k in SECRET_FIELDS and not v)}


def _same_host(stored: str, normalised: str) -> bool:
    try:
        return validate_hostname(stored) == normalised
    except ValidationError:
        return False


class EmailAccountForm(forms.ModelForm):
    """Passwords are write-only: the form never shows what is stored."""

    password = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput,
        help_text="Leave empty to keep the current one.",
    )
    smtp_password = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput,
        help_text="Leave empty to keep the current one.",
    )
    # The API's bounds (the database's CHECK allows up to 36500 too, but a
    # refusal there would be a 500 rather than a form error).
    pop3_delete_after_days = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=36500,
        label="Delete on the server after (days)",
        help_text="POP3 accounts only, with the above off: delete a message on the server only this many "
        "days after it was first downloaded. Empty: as soon as it is stored here.",
    )

    class Meta:
        model = EmailAccount
        fields = ["tenant", "user", *WRITABLE_FIELDS]
        labels = {"pop3_leave_on_server": "Leave mail on the server"}
        help_texts = {
            "pop3_leave_on_server": "POP3 accounts only (an IMAP account's mail stays on its server). "
            "Off: each message is deleted on the server once it is stored here.",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The API's check, on the form's fields: the services store what they get.
        for name in CREDENTIAL_FIELDS:
            if name in self.fields:
                self.fields[name].validators.append(validate_no_control_characters)

    # The API's host names (HostnameField): stored lower-case, ASCII (IDNA),
    # without a trailing dot, so a server is one name however it was typed.
    def clean_hostname(self) -> str:
        return self._host_name("hostname")

    def clean_smtp_hostname(self) -> str:
        return self._host_name("smtp_hostname")

    def _host_name(self, field: str) -> str:
        value = self.cleaned_data.get(field, "")
        if not value:
            return value
        normalised = validate_hostname(value)
        # A name stored as typed (before the admin normalised it) that means
        # the same server is kept: not a new server to send the password to.
        stored = getattr(self.instance, field, "") if not self.instance._state.adding else ""
        if stored and stored != normalised and _same_host(stored, normalised):
            return stored
        return normalised

    def clean(self):
        cleaned = super().clean()
        if self.instance._state.adding and not cleaned.get("password") and "password" not in self.errors:
            self.add_error("password", "A password is required for a new account.")
        try:  # the service checks these too; here they are form errors, not a 500
            account_ports_check(data=cleaned)
            if self.instance._state.adding and cleaned.get("tenant") and cleaned.get("user"):
                account_quota_check(tenant=cleaned["tenant"], user=cleaned["user"])
            if not self.errors:
                # The servers are tried here, so a refusal is shown on its
                # field; save_model then does not try them a second time.
                if self.instance._state.adding:
                    account_settings_verify(
                        data=_service_data(cleaned), tenant=cleaned.get("tenant"), user=cleaned.get("user")
                    )
                else:
                    account_settings_verify(data=_service_data(cleaned), account=self.instance)
        except ApplicationError as exc:
            raise forms.ValidationError(exc.fields or exc.message) from exc
        return cleaned


class EmailAccountAdmin(OperatorModelAdmin):
    """The operators' accounts. Registered by the sync side
    (`mailboxes/admin.py`), which adds the sync state, the message count and
    "sync now": this app may not import it (apps point one way)."""

    form = EmailAccountForm
    list_display = [
        "email_address",
        "account_name",
        "tenant",
        "user",
        "protocol",
        "hostname",
        "is_enabled",
        "is_sync_enabled",
        "last_sync_at",
        "is_deleted",
    ]
    list_filter = ["tenant", "protocol", "is_enabled", "is_sync_enabled", "is_deleted"]
    actions = ["disable_accounts", "enable_accounts"]
    list_select_related = ["tenant", "user"]
    search_fields = ["email_address", "account_name", "hostname"]
    readonly_fields = ["last_sync_at", "is_syncing", "last_sync_error", "is_deleted", "deleted_at"]
    # Every field of the form must be in one of these, or the admin leaves it out.
    fieldsets = [
        (None, {"fields": ["tenant", "user", "account_name", "email_address", "is_enabled"]}),
        ("Incoming mail", {"fields": ["protocol", "hostname", "port", "encryption", "username", "password"]}),
        (
            "Sending (SMTP)",
            {
                "fields": [
                    "smtp_hostname",
                    "smtp_port",
                    "smtp_encryption",
                    "smtp_username",
                    "smtp_password",
                    "save_sent_copy",
                ]
            },
        ),
        (
            "POP3",
            {
                "fields": ["pop3_leave_on_server", "pop3_delete_after_days"],
                "description": "Used by POP3 accounts only; an IMAP account ignores them.",
            },
        ),
        (
            "Sync",
            {"fields": ["is_sync_enabled", "sync_interval", "last_sync_at", "is_syncing", "last_sync_error"]},
        ),
        ("Deletion", {"fields": ["is_deleted", "deleted_at"]}),
    ]

    def get_readonly_fields(self, request, obj=None):
        # Moving an account to another tenant or user is not an edit.
        return [*self.readonly_fields, "tenant", "user"] if obj else self.readonly_fields

    @staticmethod
    def _as_runtime(obj: EmailAccount) -> EmailAccount:
        """The row re-read through the runtime alias, so that the service
        writes it there, under RLS, and not back through the admin alias."""
        with tenant_scope(obj.tenant_id):
            return EmailAccount.objects.select_related("tenant").get(pk=obj.pk)

    def save_model(self, request, obj, form, change):
        data = _service_data(form.cleaned_data)
        ip_address = client_address(request)
        if change:
            account_update(
                account=self._as_runtime(obj),
                actor=request.user,
                data=data,
                ip_address=ip_address,
                verify=False,
            )
        else:
            account = account_create(
                tenant=obj.tenant,
                user=obj.user,
                data=data,
                actor=request.user,
                ip_address=ip_address,
                verify=False,
            )
            obj.pk = account.pk

    def delete_model(self, request, obj):
        account_delete(account=self._as_runtime(obj), actor=request.user, ip_address=client_address(request))

    def delete_queryset(self, request, queryset):
        for account in queryset.select_related("tenant"):
            self.delete_model(request, account)

    def _set_enabled(self, request, queryset, enabled: bool) -> None:
        """Each selected account through `account_update` (audited as
        `account.update`, the operator as its actor), as the API's PATCH of
        `is_enabled` goes; one already so, or deleted, is left as it is."""
        changed = 0
        for account_id, tenant_id in queryset.values_list("id", "tenant_id").order_by("id"):
            with tenant_scope(tenant_id):
                account = (
                    EmailAccount.objects.select_related("tenant")
                    .select_for_update(of=("self",))
                    .filter(id=account_id, is_deleted=False)
                    .first()
                )
                if account is None or account.is_enabled == enabled:
                    continue
                account_update(
                    account=account,
                    actor=request.user,
                    data={"is_enabled": enabled},
                    ip_address=client_address(request),
                    verify=False,
                )
            changed += 1
        verb = "Enabled" if enabled else "Disabled"
        self.message_user(request, f"{verb} {changed} account(s).", messages.SUCCESS)

    @admin.action(description="Disable the selected accounts (no sync, no sending)", permissions=["change"])
    def disable_accounts(self, request, queryset):
        self._set_enabled(request, queryset, enabled=False)

    @admin.action(description="Enable the selected accounts", permissions=["change"])
    def enable_accounts(self, request, queryset):
        self._set_enabled(request, queryset, enabled=True)
