"""Token endpoints: simplejwt's views with their own limits (429 with
Retry-After), counted in Redis like every other throttle
(`emailclient.core.throttling`):

* obtain, in this order (a request refused at one counts against none of
  the later ones):
  1. per client address (`AUTH_RATE_LIMIT`, 5/m);
  2. per username and client network, an IPv4 /24 or IPv6 /64
     (`AUTH_USERNAME_RATE_LIMIT`, 5/m): guesses from one network at one
     account are slowed as from one address, even when it holds many;
  3. per username across every network the user has not logged in from
     in the last `KNOWN_NETWORK_DAYS` (`AUTH_USERNAME_TOTAL_RATE_LIMIT`,
     100/h): guesses spread over many networks still meet a limit.
* refresh and verify: per client address, each on a budget of its own
  (`AUTH_REFRESH_RATE_LIMIT`), so clients renewing their tokens never use
  up the logins' budget, nor the other way round.

The trade-off. A limit per username alone (5/m from anywhere, before) let
one attacker lock any user out for as long as he kept sending five wrong
passwords a minute. Now one network's guesses lock out only that network
(at 5/m per account: 7,200 guesses a day at one account, each a password
hash on the server); the looser cap across networks is what an attacker
holding many networks can use up, and then he locks the user out of new
networks only, for up to an hour: a network the user logged in from
before (a successful login remembers it, keyed by a hash, for
`KNOWN_NETWORK_DAYS`) is not counted against that cap, so the user's
usual networks keep working. A lower cap slows distributed guessing more
and makes that lock-out cheaper; 100/h is 2,400 guesses a day at one
account from any number of networks.

The client address is `emailclient.core.clientaddr.client_address`: behind
the trusted proxies (`TRUSTED_PROXY_HOPS`) it is the client's, not the
proxy's.
"""

import hashlib
import logging
from collections.abc import Mapping

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from redis.exceptions import RedisError
from rest_framework_simplejwt import views

from .clientaddr import client_network_key, client_throttle_key
from .throttling import KeyedThrottle

logger = logging.getLogger(__name__)

# Longer usernames are counted by their first characters (none is that long).
MAX_USERNAME_KEY_CHARS = 256
# How long a network the user logged in from stays exempt from the cap
# across networks: a month covers a user's home and office between logins.
KNOWN_NETWORK_DAYS = 30


def _address(request) -> str:
    return client_throttle_key(request)


def _username(request) -> str | None:
    """The username a login names, as counted: as text (DRF's CharField
    takes `12345` as "12345", so the number must count as that name too),
    stripped and case-folded. None when the body has none or one no
    serializer takes (a list, an object, true: the view answers 400)."""
    data = request.data
    value = data.get(get_user_model().USERNAME_FIELD) if isinstance(data, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    value = str(value).strip()
    return value.casefold()[:MAX_USERNAME_KEY_CHARS] if value else None


def _known_network_key(username: str, network: str) -> str:
    digest = hashlib.sha256(f"{username}\0{network}".encode()).hexdigest()
    return f"auth.known-network:{digest}"


def _username_network(request) -> str | None:
    username = _username(request)
    return None if username is None else f"{username}\0{client_network_key(request)}"


def _username_new_network(request) -> str | None:
    """The username, unless its user logged in from this network before."""
    username = _username(request)
    if username is None or cache.get(_known_network_key(username, client_network_key(request))):
        return None
    return username


def _auth_rate() -> str:
    return settings.AUTH_RATE_LIMIT


def _username_rate() -> str:
    return settings.AUTH_USERNAME_RATE_LIMIT


def _username_total_rate() -> str:
    return settings.AUTH_USERNAME_TOTAL_RATE_LIMIT


def _refresh_rate() -> str:
    return settings.AUTH_REFRESH_RATE_LIMIT


class TokenObtainPairView(views.TokenObtainPairView):
    throttle_classes = [KeyedThrottle]
    rate_limits = [
        ("auth.obtain.address", _address, _auth_rate),
        ("auth.obtain.username-network", _username_network, _username_rate),
        ("auth.obtain.username", _username_new_network, _username_total_rate),
    ]

    def post(self, request, *args, **kwargs):
        response = super().post(request, *args, **kwargs)
        username = _username(request)
        if response.status_code == 200 and username is not None:
            key = _known_network_key(username, client_network_key(request))
            try:
                cache.set(key, 1, timeout=KNOWN_NETWORK_DAYS * 86400)
            except RedisError:  # Redis gone since the throttles: the login stands
                logger.warning("could not remember a login's network: Redis unavailable")
        return response


class TokenRefreshView(views.TokenRefreshView):
    throttle_classes = [KeyedThrottle]
    rate_limits = [("auth.refresh.address", _address, _refresh_rate)]


class TokenVerifyView(views.TokenVerifyView):
    throttle_classes = [KeyedThrottle]
    rate_limits = [("auth.verify.address", _address, _refresh_rate)]
