"""Token endpoints: simplejwt's views, rate limited per client IP."""

from django.conf import settings
from django.utils.decorators import method_decorator
from django_ratelimit.decorators import ratelimit
from rest_framework_simplejwt import views


def _auth_rate(group, request) -> str:
    return settings.AUTH_RATE_LIMIT


rate_limited = method_decorator(ratelimit(key="ip", rate=_auth_rate, method="POST", block=True), name="post")


@rate_limited
class TokenObtainPairView(views.TokenObtainPairView):
    pass


@rate_limited
class TokenRefreshView(views.TokenRefreshView):
    pass


@rate_limited
class TokenVerifyView(views.TokenVerifyView):
    pass
