"""Shared model bases and the tenant tables.

Every tenant-owned table carries `tenant_id` and has a row-level-security
policy (see `emailclient.core.rls`); the explicit `for_tenant()` filter is the
first wall, RLS the second.
"""

import uuid
from typing import Self, TypeVar

from django.conf import settings
from django.contrib.postgres.indexes import BrinIndex
from django.core.validators import MinValueValidator
from django.db import models

from .limits import validate_rate


class BaseModel(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


_DEFAULT = "Empty: the service's default (see the README's Configuration)."


def _rate_field(verbose_name: str) -> models.CharField:
    return models.CharField(
        verbose_name,
        max_length=32,
        blank=True,
        default="",
        validators=[validate_rate],
        help_text="Such as 600/m. " + _DEFAULT,
    )


class Tenant(BaseModel):
    """A company using the service. Not itself tenant-scoped: a tenant is
    looked up (by slug or id) before any tenant context exists."""

    slug = models.SlugField(max_length=63, unique=True)
    name = models.CharField(max_length=255)
    is_active = models.BooleanField(default=True)

    # Limits: empty means the setting's default (emailclient.core.limits).
    max_accounts = models.PositiveIntegerField("accounts", null=True, blank=True, help_text=_DEFAULT)
    max_accounts_per_user = models.PositiveIntegerField(
        "accounts per user", null=True, blank=True, help_text=_DEFAULT
    )
    max_stored_bytes = models.PositiveBigIntegerField(
        "stored bytes (raw mail)", null=True, blank=True, help_text=_DEFAULT
    )
    max_messages = models.PositiveBigIntegerField("messages", null=True, blank=True, help_text=_DEFAULT)
    max_concurrent_syncs = models.PositiveSmallIntegerField(
        "syncs at once", null=True, blank=True, help_text=_DEFAULT
    )
    # At least 1: a run without a slot comes back until it gets one.
    max_concurrent_sends = models.PositiveSmallIntegerField(
        "sending runs at once", null=True, blank=True, help_text=_DEFAULT, validators=[MinValueValidator(1)]
    )
    api_rate_limit_user = _rate_field("API requests per user")
    api_rate_limit_tenant = _rate_field("API requests per tenant")
    api_rate_limit_search = _rate_field("searches per user")
    sync_trigger_rate_limit = _rate_field("sync triggers per account")
    compose_rate_limit_user = _rate_field("sends per user")
    compose_rate_limit_tenant = _rate_field("sends per tenant")

    class Meta:
        db_table = "tenants"
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


_M = TypeVar("_M", bound=models.Model)


class TenantQuerySet(models.QuerySet[_M]):
    def for_tenant(self, tenant: Tenant | uuid.UUID) -> Self:
        tenant_id = tenant.id if isinstance(tenant, Tenant) else tenant
        return self.filter(tenant_id=tenant_id)


class TenantModel(BaseModel):
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, db_index=False)

    objects = TenantQuerySet.as_manager()

    class Meta:
        abstract = True


class TenantMembership(TenantModel):
    class Role(models.TextChoices):
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tenant_memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        db_table = "tenant_memberships"
        ordering = ["tenant_id", "user_id"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "user"], name="uniq_membership_tenant_user"),
            models.CheckConstraint(
                condition=models.Q(role__in=["admin", "member"]), name="membership_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}@{self.tenant_id} ({self.role})"

    @property
    def is_admin(self) -> bool:
        return self.role == self.Role.ADMIN


class AuditLog(TenantModel):
    """Append-only record of every change made through the service. Holds
    field names and non-secret values, never a password or token."""

    # Who did it stays recorded after the user is deleted: no constraint and no
    # SET NULL (the runtime role may not UPDATE this table, see dbsetup).
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64)
    object_id = models.UUIDField(null=True, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        db_table = "email_audit_log"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="idx_audit_tenant_created"),
            # The admin's page of the whole log, newest first (its order ends
            # with the primary key), read without sorting the log.
            models.Index(fields=["-created_at", "-id"], name="idx_audit_created_id"),
            models.Index(fields=["object_type", "object_id"], name="idx_audit_object"),
            BrinIndex(fields=["created_at"], name="brin_audit_created"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.object_type}:{self.object_id}"
