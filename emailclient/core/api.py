"""Building blocks for tenant-scoped DRF views."""

from typing import TYPE_CHECKING

from rest_framework import permissions

from .clientaddr import client_address
from .exceptions import TenantRequired
from .models import Tenant, TenantMembership


class HasTenant(permissions.BasePermission):
    """The request was resolved to a tenant the user belongs to (middleware)."""

    def has_permission(self, request, view) -> bool:
        if getattr(request._request, "tenant", None) is None:
            raise TenantRequired()
        return True


if TYPE_CHECKING:  # for the checker, a mixin of API views (self.request and the rest)
    from rest_framework.views import APIView as _APIViewBase
else:
    _APIViewBase = object


class TenantAPIMixin(_APIViewBase):
    """For views under a tenant: `self.tenant`, `self.membership`."""

    permission_classes = [permissions.IsAuthenticated, HasTenant]

    @property
    def tenant(self) -> Tenant:
        return self.request._request.tenant  # type: ignore[attr-defined]  # set by TenantMiddleware

    @property
    def membership(self) -> TenantMembership:
        return self.request._request.membership  # type: ignore[attr-defined]  # set by TenantMiddleware

    def client_ip(self) -> str | None:
        """For the audit log: the client's address behind trusted proxies."""
        return client_address(self.request)
