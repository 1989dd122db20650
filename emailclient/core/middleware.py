"""Tenant resolution and the per-request tenant transaction.

A request names its tenant by the `X-Tenant-ID` header (slug or UUID) or by
the path form `/api/v1/{tenant}/email_client/...`. When it does and
its user is authenticated, the middleware:

1. looks the tenant up (active tenants only);
2. opens a transaction and sets `app.current_tenant_id` in it
   (`tenant_scope`), so every query of the view is filtered by RLS;
3. checks the user's membership inside that scope; a missing tenant and a
   tenant the user does not belong to get the same 404;
4. runs the view, rolling back when it answers with an error.

Requests without a tenant reference or without valid credentials pass
through untouched; the view then answers 401, or 400 if it needs a tenant.

A request with a valid bearer token takes a shorter road to the same place:
the tenant is found by the statement that sets the scope
(`active_tenant_scope`), and the membership is read with its user and
tenant in one query, where the general road reads the user, the tenant and
the membership one by one. Whatever the short road does not settle (no
token, a session, an unknown or inactive user, no such tenant, no
membership) goes the general road, which gives the answer.
"""

import logging
import re
import uuid

import psycopg
from django.db import transaction
from rest_framework import exceptions
from rest_framework.settings import api_settings
from rest_framework_simplejwt.settings import api_settings as jwt_settings

from .authentication import REQUEST_ATTR, JWTAuthentication
from .exceptions import error_response
from .models import Tenant, TenantMembership
from .rls import DatabaseNotSecured, database_secured_once
from .tenancy import active_tenant_scope, tenant_scope

logger = logging.getLogger(__name__)

HEADER = "HTTP_X_TENANT_ID"
PATH_TENANT = re.compile(r"^/api/v1/(?P<tenant>[^/]+)/email_client/")
MAX_REF_LENGTH = 100
# A slug (Django's validate_slug) or a UUID: anything else names no tenant,
# and never reaches a query (a NUL in `/api/v1/%00/...` made PostgreSQL fail).
REFERENCE = re.compile(rf"[-a-zA-Z0-9_]{{1,{MAX_REF_LENGTH}}}")


def tenant_reference(request) -> str | None:
    match = PATH_TENANT.match(request.path_info)
    if match:
        return match.group("tenant")
    value = request.META.get(HEADER, "").strip()
    return value or None


def is_reference(ref: str) -> bool:
    return REFERENCE.fullmatch(ref) is not None


def find_tenant(ref: str) -> Tenant | None:
    if not is_reference(ref):
        return None
    try:
        lookup: dict[str, uuid.UUID | str] = {"id": uuid.UUID(ref)}
    except ValueError:
        lookup = {"slug": ref}
    return Tenant.objects.filter(is_active=True, **lookup).first()


def _session_auth_enabled() -> bool:
    # The stubs type the setting as written (dotted paths); api_settings gives the imported classes.
    classes = api_settings.DEFAULT_AUTHENTICATION_CLASSES
    return any(cls.__name__ == "SessionAuthentication" for cls in classes)  # type: ignore[attr-defined]


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


def _token_membership(request, authentication: JWTAuthentication, token, tenant_id):
    """The membership in `tenant_id` of the user of a valid bearer `token`,
    with its user and tenant, if that user may use the token; else None.
    Runs inside the tenant's scope."""
    if tenant_id is None:
        return None
    try:
        membership = (
            TenantMembership.objects.select_related("user", "tenant")
            .filter(
                tenant_id=tenant_id,
                **{f"user__{jwt_settings.USER_ID_FIELD}": token[jwt_settings.USER_ID_CLAIM]},
            )
            .first()
        )
        if membership is None:
            return None
        authentication.checked_user(token, membership.user)
    except (KeyError, ValueError, TypeError, exceptions.APIException):
        return None  # no usable user id, or a user who may not use the token
    setattr(request, REQUEST_ATTR, (membership.user, token))
    return membership


class TenantMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.tenant = None
        request.membership = None
        ref = tenant_reference(request)
        if ref is None:
            return self.get_response(request)
        try:
            database_secured_once()  # a no-op once it has passed
        except DatabaseNotSecured as exc:
            logger.critical("refusing a tenant request: %s", exc)
            return error_response(503, "database_not_secured", "The service is unavailable.")
        except psycopg.OperationalError:
            logger.warning("tenant request refused: the database cannot be reached", exc_info=True)
            return error_response(
                503, "database_unavailable", "The service is unavailable; try again shortly."
            )
        authentication = JWTAuthentication()
        token = authentication.validated_token(request) if is_reference(ref) else None
        if token is not None:
            with active_tenant_scope(ref) as tenant_id:
                membership = _token_membership(request, authentication, token, tenant_id)
                if membership is not None:
                    return self._in_scope(request, membership)
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
            membership.tenant = tenant  # read already
            return self._in_scope(request, membership)

    def _in_scope(self, request, membership: TenantMembership):
        """The view, run in the membership's tenant scope."""
        request.tenant = membership.tenant
        request.membership = membership
        response = self.get_response(request)
        if response.status_code >= 400:
            # An error answer leaves nothing half-written behind.
            transaction.set_rollback(True)
        return response
