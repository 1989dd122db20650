"""Writes on email accounts. Every change is audited, without secrets."""

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser, User
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from emailclient.core.crypto import decrypt_secret, encrypt_secret, rotate_secret
from emailclient.core.exceptions import ApplicationError
from emailclient.core.limits import tenant_limit
from emailclient.core.models import Tenant
from emailclient.core.services import audit_log_record
from emailclient.core.tenancy import tenant_scope

from .models import EmailAccount
from .ports import default_port, port_allowed
from .schedule import account_sync_schedule
from .verification import account_verify

SECRET_FIELDS = {"password": "password_encrypted", "smtp_password": "smtp_password_encrypted"}
# Fields a client may set; anything else in `data` (tenant, user, ids...) is ignored.
WRITABLE_FIELDS = (
    "account_name",
    "email_address",
    "protocol",
    "hostname",
    "port",
    "encryption",
    "username",
    "smtp_hostname",
    "smtp_port",
    "smtp_encryption",
    "smtp_username",
    "save_sent_copy",
    "pop3_leave_on_server",
    "pop3_delete_after_days",
    "is_sync_enabled",
    "sync_interval",
    "is_enabled",
)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never print a password, even by accident
        return f"Credentials(username={self.username!r}, password='***')"


def _apply(account: EmailAccount, data: dict[str, Any]) -> dict[str, Any]:
    """Set the writable fields and secrets present in `data` on `account`.
    Returns the audit record of what changed: old and new values for plain
    fields, only the word "changed" for secrets."""
    changes: dict[str, Any] = {}
    for field in WRITABLE_FIELDS:
        if field in data and getattr(account, field) != data[field]:
            changes[field] = {"old": getattr(account, field), "new": data[field]}
            setattr(account, field, data[field])
    for secret, column in SECRET_FIELDS.items():
        if data.get(secret) is not None:
            setattr(account, column, encrypt_secret(data[secret]))
            changes[secret] = "changed"
    return changes


def _fill_defaults(account: EmailAccount) -> None:
    if not account.username:
        account.username = account.email_address
    if not account.port:
        account.port = default_port(account.protocol, account.encryption)
    if account.smtp_hostname:
        account.smtp_encryption = account.smtp_encryption or "starttls"
        account.smtp_port = account.smtp_port or default_port("smtp", account.smtp_encryption)
        account.smtp_username = account.smtp_username or account.username


class QuotaExceeded(ApplicationError):
    status_code = 403
    code = "quota_exceeded"


def account_quota_check(*, tenant: Tenant, user: AbstractBaseUser) -> None:
    """Raise `QuotaExceeded` when `tenant` (max_accounts) or `user` in it
    (max_accounts_per_user) has all the accounts it may have; soft-deleted
    ones do not count. A lock per tenant is held until the caller's
    transaction ends, so two creations at once cannot both take the last place."""
    most = tenant_limit(tenant, "max_accounts")
    most_per_user = tenant_limit(tenant, "max_accounts_per_user")
    if most is None and most_per_user is None:
        return
    with tenant_scope(tenant.id):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(hashtext('account_create:' || %s))", [str(tenant.id)]
            )
        accounts = EmailAccount.objects.for_tenant(tenant).filter(is_deleted=False)
        if most is not None and accounts.count() >= most:
            raise QuotaExceeded(
                f"This tenant has its {most} email accounts (max_accounts); "
                "delete one or ask the operator to raise the limit."
            )
        if most_per_user is not None and accounts.filter(user_id=user.pk).count() >= most_per_user:
            raise QuotaExceeded(
                f"This user has {most_per_user} email accounts, the most allowed (max_accounts_per_user); "
                "delete one or ask the operator to raise the limit."
            )


def account_ports_check(*, data: dict[str, Any]) -> None:
    """Refuse ports a mail server may not be reached on (MAIL_ALLOWED_PORTS),
    as a 400 on the field: the sync and the sending would refuse them later."""
    errors = {
        field: [f"Port {data[field]} is not a mail port this service connects to."]
        for field in ("port", "smtp_port")
        if data.get(field) and not port_allowed(data[field])
    }
    if errors:
        raise ApplicationError("The service does not connect to that port.", fields=errors)


def _save(account: EmailAccount) -> None:
    try:
        with transaction.atomic():
            account.save()
    except IntegrityError as exc:
        if "uniq_account_tenant_user_email" in str(exc):
            raise ApplicationError(
                "This user already has an account for this address.",
                fields={"email_address": ["An account with this address already exists."]},
            ) from exc
        raise


def account_create(
    *,
    tenant: Tenant,
    user: User,
    data: dict[str, Any],
    actor: AbstractBaseUser | AnonymousUser | None = None,
    ip_address: str | None = None,
    verify: bool = True,
) -> EmailAccount:
    """Create `user`'s account in `tenant`. `actor` (default: the user) is who
    is recorded in the audit log, e.g. an operator in the admin. The servers
    are tried first (ACCOUNT_VERIFY_ON_SAVE, `account_verify`): a login they
    refuse is a 400 and nothing is saved. `verify=False`: the caller has just
    done so with `account_settings_verify` (the admin's form)."""
    if not data.get("password"):
        raise ApplicationError("A password is required.", fields={"password": ["This field is required."]})
    account = EmailAccount(tenant=tenant, user=user)
    _apply(account, data)
    _fill_defaults(account)
    account_ports_check(data={"port": account.port, "smtp_port": account.smtp_port})
    if verify:
        # Over quota, no server is tried: a 403 before any login (checked
        # again below, under the quota's lock, against a create beside it).
        with tenant_scope(tenant.id):
            account_quota_check(tenant=tenant, user=user)
        _verify(account, incoming=True, outgoing=True)
    with tenant_scope(tenant.id):
        account_quota_check(tenant=tenant, user=user)
        _save(account)
        account_sync_schedule(account=account)
        audit_log_record(
            tenant=tenant,
            actor=actor or user,
            action="account.create",
            object_type="email_account",
            object_id=account.id,
            changes={"fields": sorted(f for f in (*WRITABLE_FIELDS, *SECRET_FIELDS) if f in data)},
            ip_address=ip_address,
        )
    return account


# Changing any of these decides where a stored password is sent: the password
# must come again, or a tenant admin (who may edit a member's account) could
# point the member's password at a server of their own.
INCOMING_ENDPOINT = ("protocol", "hostname", "port", "encryption", "username")
OUTGOING_ENDPOINT = ("smtp_hostname", "smtp_port", "smtp_encryption", "smtp_username")


def _require_secret_for_new_endpoint(account: EmailAccount, data: dict[str, Any]) -> None:
    def changed(fields: Iterable[str]) -> list[str]:
        return [f for f in fields if f in data and data[f] != getattr(account, f)]

    errors: dict[str, list[str]] = {}
    incoming = changed(INCOMING_ENDPOINT)
    if incoming and not data.get("password"):
        errors["password"] = [f"Required when {', '.join(incoming)} changes."]
    outgoing = changed(OUTGOING_ENDPOINT)
    # Without its own password, SMTP uses the incoming one: guard it too.
    if outgoing and account.password_encrypted and not data.get("smtp_password"):
        errors["smtp_password"] = [f"Required when {', '.join(outgoing)} changes."]
    if errors:
        raise ApplicationError("A password is needed to change where it is sent.", fields=errors)


def _with_default_port(account: EmailAccount, data: dict[str, Any]) -> dict[str, Any]:
    if ("protocol" in data or "encryption" in data) and "port" not in data:
        # A new protocol or encryption without a port means that pair's default port.
        protocol = data.get("protocol", account.protocol)
        encryption = data.get("encryption", account.encryption)
        data = {**data, "port": default_port(protocol, encryption)}
    return data


def _servers_to_verify(account: EmailAccount, data: dict[str, Any]) -> tuple[bool, bool]:
    """Which of `account`'s servers an update with `data` must be tried on:
    those where a password now goes that has not been there (the endpoints
    of `_require_secret_for_new_endpoint`, or a new password)."""

    def changed(fields: Iterable[str]) -> bool:
        return any(f in data and data[f] != getattr(account, f) for f in fields)

    new_password = bool(data.get("password"))
    incoming = changed(INCOMING_ENDPOINT) or new_password
    outgoing = (
        changed(OUTGOING_ENDPOINT)
        or bool(data.get("smtp_password"))
        # SMTP without its own password logs in with the incoming one.
        or (new_password and not account.smtp_password_encrypted)
    )
    return incoming, outgoing


def _verify(account: EmailAccount, *, incoming: bool, outgoing: bool) -> None:
    if not settings.ACCOUNT_VERIFY_ON_SAVE or not (incoming or outgoing):
        return
    secrets = [account_credentials(account=account).password]
    if account.smtp_password_encrypted:
        secrets.append(account_credentials(account=account, smtp=True).password)
    account_verify(account=account, incoming=incoming, outgoing=outgoing, secrets=secrets)


def account_settings_verify(
    *,
    data: dict[str, Any],
    account: EmailAccount | None = None,
    tenant: Tenant | None = None,
    user: User | None = None,
) -> None:
    """Try the servers as `account_create` (no `account`: a new one of
    `user` in `tenant`) or `account_update` of `account` with `data` would,
    changing nothing: for a form that shows the refusal on its fields before
    it saves (with `verify=False` then)."""
    if account is not None:
        data = _with_default_port(account, data)
        # Never the stored password to a server it has not been sent to; a
        # refusal the form shows, with or without trying the servers.
        _require_secret_for_new_endpoint(account, data)
    if not settings.ACCOUNT_VERIFY_ON_SAVE:
        return
    if account is None:
        if not data.get("password"):
            return  # the form says a password is required
        candidate = EmailAccount(tenant=tenant, user=user)
        incoming, outgoing = True, True
    else:
        candidate = copy.copy(account)
        incoming, outgoing = _servers_to_verify(account, data)
    _apply(candidate, data)
    _fill_defaults(candidate)
    _verify(candidate, incoming=incoming, outgoing=outgoing)


def account_update(
    *,
    account: EmailAccount,
    actor: AbstractBaseUser | AnonymousUser | None,
    data: dict[str, Any],
    ip_address: str | None = None,
    verify: bool = True,
) -> EmailAccount:
    """Change `account`. A change of where a password goes needs the password
    again, and the server it goes to is tried before saving (as on create)."""
    data = _with_default_port(account, data)
    # After the defaults: a port they move is a new endpoint like any other.
    _require_secret_for_new_endpoint(account, data)
    incoming, outgoing = _servers_to_verify(account, data)
    changes = _apply(account, data)
    _fill_defaults(account)
    if not changes:
        return account
    account_ports_check(data={f: getattr(account, f) for f in ("port", "smtp_port") if f in changes})
    if verify:
        _verify(account, incoming=incoming, outgoing=outgoing)
    with tenant_scope(account.tenant_id):
        _save(account)
        account_sync_schedule(account=account)
        audit_log_record(
            tenant=account.tenant,
            actor=actor,
            action="account.update",
            object_type="email_account",
            object_id=account.id,
            changes=changes,
            ip_address=ip_address,
        )
    return account


def account_delete(
    *, account: EmailAccount, actor: AbstractBaseUser | AnonymousUser | None, ip_address: str | None = None
) -> None:
    """Soft delete: the account disappears from the API and stops syncing;
    its row and mail stay for the audit trail until purged."""
    with tenant_scope(account.tenant_id):
        account.is_deleted = True
        account.deleted_at = timezone.now()
        account.is_enabled = False
        account.is_sync_enabled = False
        account.save(
            update_fields=["is_deleted", "deleted_at", "is_enabled", "is_sync_enabled", "updated_at"]
        )
        account_sync_schedule(account=account)
        audit_log_record(
            tenant=account.tenant,
            actor=actor,
            action="account.delete",
            object_type="email_account",
            object_id=account.id,
            ip_address=ip_address,
        )


def account_credentials(*, account: EmailAccount, smtp: bool = False) -> Credentials:
    """Decrypted credentials, for talking to the mail server only.
    SMTP falls back to the incoming server's password when it has none."""
    if smtp:
        token = account.smtp_password_encrypted or account.password_encrypted
        return Credentials(account.smtp_username or account.username, decrypt_secret(token))
    return Credentials(account.username, decrypt_secret(account.password_encrypted))


def account_credentials_rotate(*, batch_size: int = 500) -> int:
    """Re-encrypt every account's secrets under the primary key, across all
    tenants. An operator task: it runs on the BYPASSRLS `admin` alias, in one
    transaction, so a key that fails half-way changes nothing."""
    rotated = 0
    with transaction.atomic(using="admin"):
        accounts = (
            EmailAccount.objects.using("admin")
            .select_for_update()
            .only("id", "password_encrypted", "smtp_password_encrypted")
            .order_by("id")
        )
        batch: list[EmailAccount] = []
        for account in accounts.iterator(chunk_size=batch_size):
            account.password_encrypted = rotate_secret(account.password_encrypted)
            if account.smtp_password_encrypted:
                account.smtp_password_encrypted = rotate_secret(account.smtp_password_encrypted)
            batch.append(account)
            if len(batch) >= batch_size:
                EmailAccount.objects.using("admin").bulk_update(
                    batch, ["password_encrypted", "smtp_password_encrypted"]
                )
                rotated += len(batch)
                batch = []
        EmailAccount.objects.using("admin").bulk_update(
            batch, ["password_encrypted", "smtp_password_encrypted"]
        )
        rotated += len(batch)
    return rotated
