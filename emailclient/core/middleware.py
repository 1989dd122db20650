"""Tenant resolution and the per-request tenant transaction.

A request names its tenant by the `X-Tenant-ID` header (slug or UUID) or by
the seed's path form `/api/v1/{tenant}/email_client/...`. When it does and
its user is authenticated, the middleware:

1. looks the tenant up (active tenants only);
2. opens a transaction and sets `app.current_tenant_id` in it
   (`tenant_scope`), so every query of the view is filtered by RLS;
3. checks the user's membership inside that scope; a missing tenant and a
   tenant the user does not belong to get the same 404;
4. runs the view, rolling back when it answers with an error.

Requests without a tenant reference or without valid credentials pass
through untouched; the view then answers 401, or 400 if it needs a tenant.
"""

import re
import uuid

from django.db import transaction
from rest_framework import exceptions
from rest_framework.settings import api_settings
from rest_framework_simplejwt.authentication import JWTAuthentication

from .authentication import REQUEST_ATTR
from .exceptions import error_response
from .models import Tenant, TenantMembership
from .tenancy import tenant_scope

HEADER = "HTTP_X_TENANT_ID"
PATH_TENANT = re.compile(r"^/api/v1/(?P<tenant>[^/]{1,100})/email_client/")
MAX_REF_LENGTH = 100


def tenant_reference(request) -> str | None:
    match = PATH_TENANT.match(request.path_info)
    if match:
        return match.group("tenant")
    value = request.META.get(HEADER, "").strip()
    return value or None


def find_tenant(ref: str) -> Tenant | None:
    if len(ref) > MAX_REF_LENGTH:
        return None
    try:
        lookup = {"id": uuid.UUID(ref)}
    except ValueError:
        lookup = {"slug": ref}
    return Tenant.objects.filter(is_active=True, **lookup).first()


def _session_auth_enabled() -> bool:
    return any(cls.__name__ == "SessionAuthentication" for cls in api_settings.DEFAULT_AUTHENTICATION_CLASSES)


def authenticated_user(request):
    """The user behind the request's bearer token (or, where the API allows
    sessions, its session), or None. Bad credentials are left for the view."""
    try:
        result = JWTAuthentication().authenticate(request)
    except exceptions.APIException:
        return None
    if result is not None:
        setattr(request, REQUEST_ATTR, result)
        return result[0]
    if _session_auth_enabled() and request.user.is_authenticated:
        return request.user
    return None


class TenantMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.tenant = None
        request.membership = None
        ref = tenant_reference(request)
        if ref is None:
            return self.get_response(request)
        user = authenticated_user(request)
        if user is None:
            return self.get_response(request)
        tenant = find_tenant(ref)
        if tenant is None:
            return error_response(404, "not_found", "Tenant not found.")
        with tenant_scope(tenant.id):
            membership = TenantMembership.objects.filter(tenant=tenant, user=user).first()
            if membership is None:
                return error_response(404, "not_found", "Tenant not found.")
            request.tenant = tenant
            request.membership = membership
            response = self.get_response(request)
            if response.status_code >= 400:
                # An error answer leaves nothing half-written behind.
                transaction.set_rollback(True)
            return response
