"""Start-up checks of the settings the environment gives.

A rate from the environment (`API_RATE_LIMIT_USER=10/0m`) is not checked
where it is used: django-ratelimit raises ImproperlyConfigured on every
request it would count, so a bad value turns every request of every tenant
into a 500. It is checked once, when Django starts (`CoreConfig.ready`),
and the process refuses to start with the names and values that are wrong.
`ready()` and not a system check alone: gunicorn and Celery never run the
system checks, only `manage.py` does.
"""

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError

from .limits import TENANT_LIMIT_SETTINGS, validate_rate

# Every rate setting: the tenant limits' defaults that are rates, and the
# token endpoints' limits (emailclient.core.auth_views).
RATE_SETTINGS = (
    *(setting for field, setting in TENANT_LIMIT_SETTINGS.items() if "rate_limit" in field),
    "AUTH_RATE_LIMIT",
    "AUTH_USERNAME_RATE_LIMIT",
    "AUTH_USERNAME_TOTAL_RATE_LIMIT",
    "AUTH_REFRESH_RATE_LIMIT",
)


def rate_settings_errors() -> list[str]:
    """One line per rate setting that is missing, empty or not a rate."""
    errors = []
    for name in RATE_SETTINGS:
        value = getattr(settings, name, None)
        if not isinstance(value, str) or not value:
            errors.append(f"{name} is not set (a rate such as 600/m)")
            continue
        try:
            validate_rate(value)
        except ValidationError:
            errors.append(
                f"{name}={value!r} is not a rate: a count of at least 1, '/', an optional"
                " multiplier of at least 1 and s, m, h or d (600/m; 10/5m is ten per five minutes)"
            )
    return errors


def rate_settings_check() -> None:
    """Raise ImproperlyConfigured, naming every bad rate setting, if any."""
    errors = rate_settings_errors()
    if errors:
        raise ImproperlyConfigured("invalid rate settings: " + "; ".join(errors))
