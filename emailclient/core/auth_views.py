"""Token endpoints: simplejwt's views with their own limits (429 with
Retry-After), counted in Redis like every other throttle
(`emailclient.core.throttling`):

* obtain: per client address (`AUTH_RATE_LIMIT`) and per username
  (`AUTH_USERNAME_RATE_LIMIT`), so guesses spread over many addresses still
  meet a limit on the account they aim at;
* refresh and verify: per client address, each on a budget of its own
  (`AUTH_REFRESH_RATE_LIMIT`), so clients renewing their tokens never use
  up the logins' budget, nor the other way round.

The client address is `emailclient.core.clientaddr.client_address`: behind
the trusted proxies (`TRUSTED_PROXY_HOPS`) it is the client's, not the
proxy's.
"""

from collections.abc import Mapping

from django.conf import settings
from django.contrib.auth import get_user_model
from rest_framework_simplejwt import views

from .clientaddr import client_throttle_key
from .throttling import KeyedThrottle

# Longer usernames are counted by their first characters (none is that long).
MAX_USERNAME_KEY_CHARS = 256


def _address(request) -> str:
    return client_throttle_key(request)


def _username(request) -> str | None:
    """The username a login names, as counted: stripped and case-folded.
    None when the body has none (the view answers 400)."""
    data = request.data
    value = data.get(get_user_model().USERNAME_FIELD) if isinstance(data, Mapping) else None
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip().casefold()[:MAX_USERNAME_KEY_CHARS]


def _auth_rate() -> str:
    return settings.AUTH_RATE_LIMIT


def _username_rate() -> str:
    return settings.AUTH_USERNAME_RATE_LIMIT


def _refresh_rate() -> str:
    return settings.AUTH_REFRESH_RATE_LIMIT


class TokenObtainPairView(views.TokenObtainPairView):
    throttle_classes = [KeyedThrottle]
    rate_limits = [
        ("auth.obtain.address", _address, _auth_rate),
        ("auth.obtain.username", _username, _username_rate),
    ]


class TokenRefreshView(views.TokenRefreshView):
    throttle_classes = [KeyedThrottle]
    rate_limits = [("auth.refresh.address", _address, _refresh_rate)]


class TokenVerifyView(views.TokenVerifyView):
    throttle_classes = [KeyedThrottle]
    rate_limits = [("auth.verify.address", _address, _refresh_rate)]
