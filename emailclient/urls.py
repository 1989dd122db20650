from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from emailclient.core import auth_views
from emailclient.core.views import health

api_patterns = [
    path("", include("messages.urls")),
    path("", include("accounts.urls")),
    path("", include("mailboxes.urls")),
]

urlpatterns = [
    path("health", health, name="health"),
    path("admin/", admin.site.urls),
    path("api/auth/token/", auth_views.TokenObtainPairView.as_view(), name="token-obtain"),
    path("api/auth/token/refresh/", auth_views.TokenRefreshView.as_view(), name="token-refresh"),
    path("api/auth/token/verify/", auth_views.TokenVerifyView.as_view(), name="token-verify"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("api/", include(api_patterns)),
    # The seed's path form: the tenant in the path instead of X-Tenant-ID.
    path("api/v1/<str:tenant>/email_client/", include((api_patterns, "seed"), namespace="seed")),
]

if settings.DEBUG:
    urlpatterns.append(path("api-auth/", include("rest_framework.urls")))
