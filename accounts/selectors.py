"""Reads on email accounts.

A tenant admin sees every account of the tenant; a member sees their own.
Soft-deleted accounts are gone for everyone.
"""

import uuid

from django.db.models import QuerySet

from emailclient.core.exceptions import ApplicationError, NotFound
from emailclient.core.models import Tenant, TenantMembership
from emailclient.core.tenancy import tenant_scope

from .models import EmailAccount


def account_list(*, tenant: Tenant, membership: TenantMembership) -> QuerySet[EmailAccount]:
    accounts = EmailAccount.objects.for_tenant(tenant).filter(is_deleted=False)
    if not membership.is_admin:
        accounts = accounts.filter(user_id=membership.user_id)
    return accounts


def deleted_account_ids(*, tenant: Tenant) -> QuerySet[EmailAccount, uuid.UUID]:
    """The ids of the tenant's soft-deleted accounts, whose mail nobody sees."""
    return EmailAccount.objects.for_tenant(tenant).filter(is_deleted=True).values_list("id", flat=True)


def access_account(
    *, tenant: Tenant, membership: TenantMembership, id: uuid.UUID, lock: bool = False
) -> EmailAccount:
    accounts = account_list(tenant=tenant, membership=membership)
    if lock:
        accounts = accounts.select_for_update(of=("self",))
    account = accounts.filter(id=id).first()
    if account is None:
        raise NotFound("Account not found.")
    return account


class AccountNotSyncable(ApplicationError):
    """The account may not be synced now: its tenant is deactivated, or its
    owner is no longer an active member of the tenant."""

    status_code = 409
    code = "account_not_syncable"


def account_for_sync(*, tenant_id: uuid.UUID, account_id: uuid.UUID) -> EmailAccount:
    """The account a sync or write-back is about to log in to, with its
    tenant. Raises `EmailAccount.DoesNotExist` when there is none (or it is
    soft-deleted), `AccountNotSyncable` when its stored credentials may not be
    used: the tenant was deactivated, or the owner was removed from the
    tenant or deactivated. Nothing is changed: reactivating the tenant or
    adding the member back lets the next sync run."""
    with tenant_scope(tenant_id):
        account = EmailAccount.objects.select_related("tenant").get(
            tenant_id=tenant_id, id=account_id, is_deleted=False
        )
        if not account.tenant.is_active:
            raise AccountNotSyncable("The tenant is deactivated: its accounts are not used.")
        member = TenantMembership.objects.filter(
            tenant_id=tenant_id, user_id=account.user_id, user__is_active=True
        ).exists()
    if not member:
        raise AccountNotSyncable(
            "The account's owner is no longer an active member of the tenant: it is not used."
        )
    return account
