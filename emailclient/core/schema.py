"""OpenAPI (drf-spectacular) pieces shared by the API's views."""

from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter


class TenantJWTScheme(SimpleJWTScheme):
    target_class = "emailclient.core.authentication.JWTAuthentication"
    name = "jwtAuth"


TENANT_HEADER = OpenApiParameter(
    "X-Tenant-ID",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    required=True,
    description="Tenant slug or id. Not needed on the /api/v1/{tenant}/email_client/ paths.",
)
