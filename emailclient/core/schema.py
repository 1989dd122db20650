"""OpenAPI (drf-spectacular) pieces shared by the API's views."""

from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.renderers import JSONRenderer


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


def drop_trailing_slash(endpoints: list[tuple], **kwargs) -> list[tuple]:
    """Preprocessing hook (SPECTACULAR_SETTINGS["PREPROCESSING_HOOKS"]): every
    path in the form `reverse()` gives, without its
    trailing slash. Every API route matches both forms (routes.py); DRF's
    regex-to-path step would keep the router's `/?` as `/`."""
    return [
        (path.rstrip("/") or "/", path_regex, method, callback)
        for path, path_regex, method, callback in endpoints
    ]


class JSONErrorsMixin:
    """A view that renders YAML or HTML when it works, and the API's JSON
    error shape when it does not (a 405 for a POST to /api/docs)."""

    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return response


class SchemaView(JSONErrorsMixin, SpectacularAPIView):
    pass


class SwaggerView(JSONErrorsMixin, SpectacularSwaggerView):
    pass


class RedocView(JSONErrorsMixin, SpectacularRedocView):
    pass
