"""JWT authentication shared by the tenant middleware and DRF views."""

from django.contrib.auth import get_user_model
from rest_framework import exceptions
from rest_framework_simplejwt import authentication, serializers

# The middleware authenticates once and leaves the result here for the view.
REQUEST_ATTR = "_jwt_auth"


class JWTAuthentication(authentication.JWTAuthentication):
    """simplejwt's authentication, reusing the tenant middleware's result."""

    def authenticate(self, request):
        cached = getattr(request._request, REQUEST_ATTR, None)
        if cached is not None:
            return cached
        return super().authenticate(request)


class TokenRefreshSerializer(serializers.TokenRefreshSerializer):
    """simplejwt's refresh, but a token whose user was deleted is a 401, not a 500."""

    def validate(self, attrs):
        try:
            return super().validate(attrs)
        except get_user_model().DoesNotExist as exc:
            raise exceptions.AuthenticationFailed(
                self.error_messages["no_active_account"], "no_active_account"
            ) from exc
