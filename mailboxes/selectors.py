"""Reads on folders: a user sees the folders of the accounts they see."""

import uuid

from django.db.models import QuerySet

from accounts.selectors import account_list
from emailclient.core.exceptions import NotFound
from emailclient.core.models import Tenant, TenantMembership

from .models import Folder


def folder_list(
    *, tenant: Tenant, membership: TenantMembership, account_id: uuid.UUID | None = None
) -> QuerySet[Folder]:
    folders = Folder.objects.for_tenant(tenant).filter(
        account__in=account_list(tenant=tenant, membership=membership)
    )
    if account_id is not None:
        folders = folders.filter(account_id=account_id)
    return folders


def access_folder(*, tenant: Tenant, membership: TenantMembership, id: uuid.UUID) -> Folder:
    folder = folder_list(tenant=tenant, membership=membership).filter(id=id).first()
    if folder is None:
        raise NotFound("Folder not found.")
    return folder
