"""Reads on email accounts.

A tenant admin sees every account of the tenant; a member sees their own.
Soft-deleted accounts are gone for everyone.
"""

import uuid

from django.db.models import QuerySet

from emailclient.core.exceptions import NotFound
from emailclient.core.models import Tenant, TenantMembership

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
