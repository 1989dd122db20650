from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path

from emailclient.core import admin_monitoring, auth_views, views
from emailclient.core.routes import api_path
from emailclient.core.schema import RedocView, SchemaView, SwaggerView

# Every API route answers with and without its trailing slash (see
# emailclient/core/routes.py); the apps' URLconfs use `ApiRouter` and
# `api_path` for that.
api_patterns = [
    path("", include("messages.urls")),
    path("", include("accounts.urls")),
    path("", include("mailboxes.urls")),
    path("", include("compose.urls")),
]

urlpatterns = [
    path("health", views.health, name="health"),
    path("health/ready", views.health_ready, name="health-ready"),
    path("health/live", views.health_live, name="health-live"),
    path("metrics", views.metrics_view, name="metrics"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("admin/monitoring/", admin_monitoring.monitoring, name="admin-monitoring"),
    path("admin/", admin.site.urls),
    api_path("api/auth/token", auth_views.TokenObtainPairView.as_view(), name="token-obtain"),
    api_path("api/auth/token/refresh", auth_views.TokenRefreshView.as_view(), name="token-refresh"),
    api_path("api/auth/token/verify", auth_views.TokenVerifyView.as_view(), name="token-verify"),
    api_path("api/schema", SchemaView.as_view(), name="schema"),
    api_path("api/docs", SwaggerView.as_view(url_name="schema"), name="docs"),
    api_path("api/redoc", RedocView.as_view(url_name="schema"), name="redoc"),
    path("api/", include(api_patterns)),
    # The tenant in the path instead of X-Tenant-ID (README, "Tenancy and security").
    path("api/v1/<str:tenant>/email_client/", include((api_patterns, "seed"), namespace="seed")),
]

if settings.DEBUG:
    urlpatterns.append(path("api-auth/", include("rest_framework.urls")))

# Last: whatever else is under /api/ is the API's JSON 404, never Django's
# HTML page (nor an APPEND_SLASH redirect).
urlpatterns.append(re_path(r"^api(?:/|$)", views.api_not_found, name="api-not-found"))

handler400 = views.bad_request
handler403 = views.permission_denied
handler404 = views.page_not_found
handler500 = views.server_error
