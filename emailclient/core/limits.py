"""Per-tenant limits: a setting gives each limit's default, and an operator
may override it for one tenant in the admin (the tenant's field; empty means
the default).

Every quota, throttle and concurrency cap reads its value here, so a limit
has one name, one default and one override:

    tenant_limit(tenant, "api_rate_limit_user")  # "600/m", or the tenant's own
"""

import logging
import re

from django.conf import settings
from django.core.exceptions import ValidationError

logger = logging.getLogger(__name__)

# Tenant field -> the setting holding its default.
TENANT_LIMIT_SETTINGS = {
    # Quotas (None in the setting: unlimited).
    "max_accounts": "TENANT_MAX_ACCOUNTS",
    "max_accounts_per_user": "TENANT_MAX_ACCOUNTS_PER_USER",
    "max_stored_bytes": "TENANT_MAX_STORED_BYTES",
    "max_messages": "TENANT_MAX_MESSAGES",
    # Fair sharing of the workers.
    "max_concurrent_syncs": "SYNC_MAX_CONCURRENT_PER_TENANT",
    "max_concurrent_sends": "SEND_MAX_CONCURRENT_PER_TENANT",
    # Throttles, django-ratelimit's syntax ("600/m").
    "api_rate_limit_user": "API_RATE_LIMIT_USER",
    "api_rate_limit_tenant": "API_RATE_LIMIT_TENANT",
    "api_rate_limit_search": "API_RATE_LIMIT_SEARCH",
    "sync_trigger_rate_limit": "SYNC_TRIGGER_RATE_LIMIT",
    "compose_rate_limit_user": "COMPOSE_RATE_LIMIT_USER",
    "compose_rate_limit_tenant": "COMPOSE_RATE_LIMIT_TENANT",
}

# A count of at least 1, `/`, an optional multiplier of at least 1, a unit.
# `10/0m` (a window of zero seconds) makes django-ratelimit raise
# ImproperlyConfigured on every request it counts: refused here.
_RATE = re.compile(r"^[1-9][0-9]*/([1-9][0-9]*)?[smhd]$")


def validate_rate(value: str) -> None:
    """A rate in django-ratelimit's syntax: a count, `/`, an optional number
    and a unit (`600/m`, `10/5m`, `1000/h`)."""
    if value and not _RATE.match(value):
        raise ValidationError(
            "Enter a rate such as 600/m (a count per s, m, h or d; 10/5m is ten per five minutes).",
            code="invalid_rate",
        )


def tenant_limit(tenant, name: str):
    """The value of limit `name` for `tenant`: the tenant's own if set, else
    the setting's. `tenant` may be None (no tenant context): the setting's.
    A tenant's rate that is not one (saved before `10/0m` was refused, or
    past the admin's validation) gives the setting's, with an error logged:
    django-ratelimit would fail on it at every request of that tenant."""
    setting = TENANT_LIMIT_SETTINGS[name]
    own = getattr(tenant, name, None) if tenant is not None else None
    if own is None or own == "":
        return getattr(settings, setting)
    if "rate_limit" in name and not (isinstance(own, str) and _RATE.match(own)):
        logger.error("tenant %s: %s=%r is not a rate; using %s", tenant.id, name, own, setting)
        return getattr(settings, setting)
    return own
