"""Building blocks for tenant-scoped DRF views."""

from rest_framework import permissions

from .exceptions import TenantRequired
from .models import Tenant, TenantMembership


class HasTenant(permissions.BasePermission):
    """The request was resolved to a tenant the user belongs to (middleware)."""

    def has_permission(self, request, view) -> bool:
        if getattr(request._request, "tenant", None) is None:
            raise TenantRequired(
                "Name the tenant with the X-Tenant-ID header (slug or id).",
                fields={"X-Tenant-ID": ["This header is required."]},
            )
        return True


class TenantAPIMixin:
    """For views under a tenant: `self.tenant`, `self.membership`."""

    permission_classes = [permissions.IsAuthenticated, HasTenant]

    @property
    def tenant(self) -> Tenant:
        return self.request._request.tenant

    @property
    def membership(self) -> TenantMembership:
        return self.request._request.membership

    def client_ip(self) -> str | None:
        return self.request.META.get("REMOTE_ADDR") or None
