"""Writes on tenants, memberships and the audit log."""

import contextlib
import uuid
from collections.abc import Iterable
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser, User
from django.db import IntegrityError, transaction

from .exceptions import ApplicationError, Conflict
from .models import AuditLog, Tenant, TenantMembership
from .tenancy import in_tenant_scope, tenant_scope


def audit_log_record(
    *,
    tenant: Tenant,
    actor: AbstractBaseUser | AnonymousUser | None,
    action: str,
    object_type: str,
    object_id: uuid.UUID | None,
    changes: dict[str, Any] | None = None,
    ip_address: str | None = None,
) -> AuditLog:
    """Append one audit entry (`audit_log_record_many()` with one)."""
    [entry] = audit_log_record_many(
        tenant_id=tenant.id,
        actor_id=getattr(actor, "pk", None),
        action=action,
        object_type=object_type,
        entries=[(object_id, changes or {})],
        ip_address=ip_address,
    )
    return entry


def audit_log_record_many(
    *,
    tenant_id: uuid.UUID,
    actor_id: int | None,
    action: str,
    object_type: str,
    entries: Iterable[tuple[uuid.UUID | None, dict[str, Any]]],
    ip_address: str | None = None,
) -> list[AuditLog]:
    """Append one audit entry per `(object_id, changes)`, in one statement:
    the single way every part of the service writes the audit log. `changes`
    must hold no secret; callers pass field names (and non-secret values)
    only. In the tenant's scope already (a request's, a service's): no
    nested scope of its own, the entries go in with the caller's writes."""
    scope = contextlib.nullcontext() if in_tenant_scope(tenant_id) else tenant_scope(tenant_id)
    with scope:
        return AuditLog.objects.bulk_create(
            AuditLog(
                tenant_id=tenant_id,
                actor_id=actor_id,
                action=action,
                object_type=object_type,
                object_id=object_id,
                changes=changes,
                ip_address=ip_address,
            )
            for object_id, changes in entries
        )


def tenant_create(*, slug: str, name: str = "") -> Tenant:
    try:
        with transaction.atomic():
            return Tenant.objects.create(slug=slug, name=name or slug)
    except IntegrityError as exc:
        raise Conflict(f"A tenant with slug {slug!r} already exists.") from exc


def tenant_member_add(
    *, tenant: Tenant, user: User, role: str = TenantMembership.Role.MEMBER
) -> TenantMembership:
    """Add the user to the tenant, or change the role of an existing member."""
    if role not in TenantMembership.Role.values:
        raise ApplicationError(f"Unknown role {role!r}.", fields={"role": ["Unknown role."]})
    with tenant_scope(tenant.id):
        membership, _ = TenantMembership.objects.update_or_create(
            tenant=tenant, user=user, defaults={"role": role}
        )
    return membership


def tenant_member_remove(*, tenant: Tenant, user: User) -> None:
    with tenant_scope(tenant.id):
        TenantMembership.objects.filter(tenant=tenant, user=user).delete()
