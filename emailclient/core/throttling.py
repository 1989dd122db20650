"""Throttles: request counts per user, per tenant, per scope and per client
address, in Redis, answered with 429 and `Retry-After`.

One mechanism for every limit of the service: django-ratelimit's counters
(a fixed window per key, its rate syntax `600/m`, `10/5m`, its windows and
its cache keys, on the Redis cache), the same as the compose send limits.
The counters a request passes are counted in ONE round trip to Redis
(`rate_limits_hit`, a script that stops at the first limit reached) where
`get_usage` takes three a counter: an API request counts two or three.
DRF's throttle hook (`ApiThrottle`, in REST_FRAMEWORK's
DEFAULT_THROTTLE_CLASSES) runs them on every API view, after authentication
and permissions; a limit reached raises `RateLimited`, which the exception
handler answers with 429 and the seconds to the end of the window.

Every tenant request counts, in this order, against:

1. the user's budget in the tenant (`api_rate_limit_user`);
2. its view's scope, if it has one (`throttle_scope = "search"`:
   `api_rate_limit_search` per user; with `throttle_scope_param = "q"` only
   requests carrying that query parameter are in the scope, with a tuple of
   names those carrying any of them);
3. the tenant's budget, shared by its users (`api_rate_limit_tenant`).

A request refused at one step counts against none of the later ones: a user
over their own limit does not use up their tenant's. Each rate is the
tenant's own if an operator set one, else the setting's
(`emailclient.core.limits.tenant_limit`). Requests outside a tenant (the
schema and docs pages, `/health`, plain Django views) are not counted here;
the token endpoints have their own limits per address and per username
(`emailclient.core.auth_views`). A signed download URL (`?token=`, no
bearer token) is counted by its view once the token names its user and
tenant, against the same limits (`tenant_user_throttle_check`).
"""

import logging
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django_ratelimit.core import _get_window, _make_cache_key, _split_rate
from django_ratelimit.exceptions import Ratelimited
from redis.exceptions import RedisError
from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.permissions import SAFE_METHODS
from rest_framework.throttling import BaseThrottle

from .cache import redis_client
from .limits import tenant_limit

# The schema and docs pages (drf-spectacular's views, which cannot be
# imported here: their module reads this class's setting) are not tenant
# API, even when a request names a tenant.
NOT_TENANT_API_MODULE = "drf_spectacular."
# Scopes a view may name, with the tenant limit each reads.
SCOPE_LIMITS = {"search": "api_rate_limit_search"}


logger = logging.getLogger(__name__)

# With Redis away (Django's RedisCache raises redis's ConnectionError, which
# django-ratelimit does not catch: every tenant request was a 500):
# * reads (GET, HEAD, OPTIONS) of a signed-in member go on, uncounted, and
#   the outage is logged (a warning a minute, with how many went
#   uncounted): a read changes nothing, the database's statement timeouts
#   still bound what one costs, and refusing them would take every mailbox
#   offline for a cache outage;
# * writes and the token endpoints answer 503 with Retry-After: sends and
#   sync triggers are what the limits hold back (and need Redis's queue
#   anyway), and logins uncounted would be unlimited password guessing.
REDIS_DOWN_RETRY_AFTER = 5
REDIS_DOWN_LOG_INTERVAL = 60.0
_uncounted = {"since_log": 0, "logged_at": float("-inf")}


class LimiterUnavailable(APIException):
    """The counters cannot be reached: 503, try again in a few seconds."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "limiter_unavailable"
    default_detail = "The service cannot count requests right now; try again shortly."
    wait = REDIS_DOWN_RETRY_AFTER


def _count_uncounted(group: str, exc: Exception) -> None:
    _uncounted["since_log"] += 1
    now = time.monotonic()
    if now - _uncounted["logged_at"] >= REDIS_DOWN_LOG_INTERVAL:
        logger.warning(
            "rate limit counters unavailable (%s: %s): %d read(s) served uncounted, last in %s",
            type(exc).__name__,
            exc,
            _uncounted["since_log"],
            group,
        )
        _uncounted["since_log"], _uncounted["logged_at"] = 0, now


class RateLimited(Ratelimited):
    """A limit reached; `retry_after` seconds until its window ends."""

    def __init__(self, retry_after: int):
        super().__init__()
        self.retry_after = retry_after


# One request against several counters, in order, as django-ratelimit's
# `get_usage(increment=True)` counts each (SET NX with the window's expiry,
# then INCR), stopping at the first one over its limit: the later ones are
# not counted. Returns {index, count} of that one (1-based), or {0, 0}.
_COUNT_SCRIPT = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, 0, 'EX', ARGV[2 * i - 1], 'NX')
  local count = redis.call('INCR', key)
  if count > tonumber(ARGV[2 * i]) then
    return {i, count}
  end
end
return {0, 0}
"""
# django-ratelimit's: a window's key lives this much past its end.
_EXPIRY_FUDGE = 5
_count_script: Any = None


def rate_limits_hit(*, limits: list[tuple[str, str, str]], fail_open: bool = False) -> None:
    """Count one request against each `(group, key, rate)` in order, in one
    round trip to Redis; raise `RateLimited` at the first one over its rate
    (the later ones not counted). The counters are django-ratelimit's own
    (its windows, its cache keys): `get_usage` reads the same. With the
    counters unreachable: raise `LimiterUnavailable`, or with `fail_open`
    log and let it pass."""
    global _count_script
    if not limits or not getattr(settings, "RATELIMIT_ENABLE", True):
        return
    keys: list[str] = []
    args: list[int] = []
    windows: list[int] = []
    for group, key, rate in limits:
        limit, period = _split_rate(rate)
        window = _get_window(key, period)
        keys.append(cache.make_and_validate_key(_make_cache_key(group, window, rate, key, None)))
        args += [period + _EXPIRY_FUDGE, limit]
        windows.append(window)
    try:
        client = redis_client()
        if _count_script is None or _count_script.registered_client is not client:
            _count_script = client.register_script(_COUNT_SCRIPT)
        over, _count = _count_script(keys=keys, args=args)
    except (RedisError, OSError) as exc:
        group = limits[0][0]
        if not fail_open:
            logger.warning("rate limit counters unavailable (%s): %s refused", type(exc).__name__, group)
            raise LimiterUnavailable() from exc
        _count_uncounted(group, exc)
        return
    if over:
        raise RateLimited(retry_after=max(1, windows[over - 1] - int(time.time())))


def rate_limits_check(*, limits: list[tuple[str, str, str]]) -> None:
    """Raise `RateLimited` if any of these counters has used up its rate
    (its count at the limit: one more would be over), counting nothing; one
    round trip. Before an action that is counted only once it is done
    (`rate_limits_hit` after it: two running at once may both pass here)."""
    if not limits or not getattr(settings, "RATELIMIT_ENABLE", True):
        return
    counters = []
    for group, key, rate in limits:
        limit, period = _split_rate(rate)
        window = _get_window(key, period)
        counters.append((_make_cache_key(group, window, rate, key, None), limit, window))
    try:
        counts = cache.get_many([name for name, _limit, _window in counters])
    except (RedisError, OSError) as exc:
        logger.warning("rate limit counters unavailable (%s): %s refused", type(exc).__name__, limits[0][0])
        raise LimiterUnavailable() from exc
    for name, limit, window in counters:
        if counts.get(name, 0) >= limit:
            raise RateLimited(retry_after=max(1, window - int(time.time())))


def rate_limit_hit(*, group: str, key: str, rate: str, fail_open: bool = False) -> None:
    """`rate_limits_hit` of one counter."""
    rate_limits_hit(limits=[(group, key, rate)], fail_open=fail_open)


def _tenant_of(request: Any) -> Any:
    return getattr(getattr(request, "_request", request), "tenant", None)


def api_throttle_check(*, request: Any, view: Any) -> None:
    """The tenant request's user, scope and tenant limits (see above)."""
    if any(cls.__module__.startswith(NOT_TENANT_API_MODULE) for cls in type(view).__mro__):
        return
    tenant = _tenant_of(request)
    user = getattr(request, "user", None)
    if tenant is None or user is None or not user.is_authenticated:
        return
    scope = getattr(view, "throttle_scope", None)
    param = getattr(view, "throttle_scope_param", None)  # a name, or a tuple of names: any of them
    params = (param,) if isinstance(param, str) else param
    in_scope = scope is not None and (params is None or any(p in request.query_params for p in params))
    tenant_user_throttle_check(
        request=request, tenant=tenant, user_id=user.pk, scope=scope if in_scope else None
    )


def tenant_user_throttle_check(*, request: Any, tenant: Any, user_id: Any, scope: str | None = None) -> None:
    """Count one request of user `user_id` in `tenant` (and in `scope`)
    against their limits. For requests whose user and tenant are known only
    inside the view (a signed download URL, which carries no bearer token:
    `messages.views.AttachmentDownloadView`). Counted once per request: a
    request already counted as this user in this tenant is not again."""
    django_request = getattr(request, "_request", request)
    user_key = f"{tenant.id}:{user_id}"
    counted: set[str] = getattr(django_request, "_throttled_as", set())
    if user_key in counted:
        return
    django_request._throttled_as = counted | {user_key}
    fail_open = request.method in SAFE_METHODS  # with Redis away: see LimiterUnavailable
    limits = [("api.user", user_key, tenant_limit(tenant, "api_rate_limit_user"))]
    if scope is not None:
        limits.append((f"api.{scope}", user_key, tenant_limit(tenant, SCOPE_LIMITS[scope])))
    limits.append(("api.tenant", str(tenant.id), tenant_limit(tenant, "api_rate_limit_tenant")))
    rate_limits_hit(limits=limits, fail_open=fail_open)


class ApiThrottle(BaseThrottle):
    """DRF's hook for `api_throttle_check`: on every API view by default."""

    def allow_request(self, request, view) -> bool:
        api_throttle_check(request=request, view=view)
        return True


class KeyedThrottle(BaseThrottle):
    """A view's own limits: `view.rate_limits` is a list of
    `(group, key_function(request) -> str | None, rate_function() -> str)`;
    a key of None skips that limit. POST requests only (the token endpoints)."""

    def allow_request(self, request, view) -> bool:
        if request.method != "POST":
            return True
        limits: list[tuple[str, Callable[[Any], str | None], Callable[[], str]]] = view.rate_limits
        try:  # a key function may read the cache too
            counted = [
                (group, key, rate_function())
                for group, key_function, rate_function in limits
                if (key := key_function(request)) is not None
            ]
        except (RedisError, OSError) as exc:
            logger.warning("rate limit keys unavailable (%s): %s refused", type(exc).__name__, limits[0][0])
            raise LimiterUnavailable() from exc
        rate_limits_hit(limits=counted)
        return True
