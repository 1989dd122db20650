"""JWT authentication shared by the tenant middleware and DRF views."""

from django.contrib.auth import get_user_model
from rest_framework import exceptions
from rest_framework_simplejwt import authentication, serializers
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.tokens import Token, UntypedToken
from rest_framework_simplejwt.utils import get_md5_hash_password

# The middleware authenticates once and leaves the result here for the view.
REQUEST_ATTR = "_jwt_auth"


class JWTAuthentication(authentication.JWTAuthentication):
    """simplejwt's authentication, reusing the tenant middleware's result."""

    def authenticate(self, request):
        django_request = getattr(request, "_request", request)  # DRF's request wraps Django's
        cached = getattr(django_request, REQUEST_ATTR, None)
        if cached is not None:
            return cached
        return super().authenticate(request)

    def validated_token(self, request) -> Token | None:
        """The request's bearer token if it is valid (no database access);
        None when there is none, it is malformed (`Bearer`, `Bearer a b`) or
        it does not validate."""
        header = self.get_header(request)
        if header is None:
            return None
        try:
            raw_token = self.get_raw_token(header)
            return None if raw_token is None else self.get_validated_token(raw_token)
        except exceptions.APIException:
            return None

    def checked_user(self, validated_token: Token, user):
        """`get_user()`'s checks, for a user read along with something else
        (the tenant middleware reads it with the membership). A copy of
        simplejwt 5.5.1's (pinned in requirements.txt): check it again on an
        upgrade; the tests of inactive users and revoked tokens go through
        both roads."""
        if api_settings.CHECK_USER_IS_ACTIVE and not user.is_active:
            raise exceptions.AuthenticationFailed("User is inactive", code="user_inactive")
        if api_settings.CHECK_REVOKE_TOKEN and validated_token.get(
            api_settings.REVOKE_TOKEN_CLAIM
        ) != get_md5_hash_password(user.password):
            raise exceptions.AuthenticationFailed(
                "The user's password has been changed.", code="password_changed"
            )
        return user


def token_user_check(token: Token) -> None:
    """A token presented to refresh or verify: its user exists, may log in
    and has not changed their password since it was issued
    (CHECK_REVOKE_TOKEN). Raises AuthenticationFailed (401) otherwise."""
    user_id = token.get(api_settings.USER_ID_CLAIM)
    if user_id is None:
        return
    user = get_user_model().objects.filter(**{api_settings.USER_ID_FIELD: user_id}).first()
    if user is None:
        raise exceptions.AuthenticationFailed(
            "No active account found for the given token.", code="no_active_account"
        )
    JWTAuthentication().checked_user(token, user)


class TokenRefreshSerializer(serializers.TokenRefreshSerializer):
    """simplejwt's refresh, but a token whose user was deleted is a 401, not a
    500, and one issued before the user's password changed is refused
    (simplejwt 5.5.1 checks that only for access tokens)."""

    def validate(self, attrs):
        token_user_check(self.token_class(attrs["refresh"]))
        try:
            return super().validate(attrs)
        except get_user_model().DoesNotExist as exc:
            raise exceptions.AuthenticationFailed(
                self.error_messages["no_active_account"], "no_active_account"
            ) from exc


class TokenVerifySerializer(serializers.TokenVerifySerializer):
    """simplejwt's verify, which checks the signature and the blacklist only,
    plus the token's user: a revoked token (password changed, user
    deactivated or deleted) does not verify."""

    def validate(self, attrs):
        token_user_check(UntypedToken(attrs["token"]))
        return super().validate(attrs)
