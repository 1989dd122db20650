"""Production settings. Secrets have no defaults: a missing one stops start-up
with django-environ's ImproperlyConfigured naming the variable."""

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from emailclient.core.logs import logging_config

from .base import *  # noqa: F403
from .base import BASE_DIR, CREDENTIAL_ENCRYPTION_KEYS, LOG_LEVEL, SECRET_KEY, SIMPLE_JWT, env

DEBUG = False
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS")

if len(SECRET_KEY) < 32:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be at least 32 characters.")
if len(SIMPLE_JWT["SIGNING_KEY"]) < 32:
    raise ImproperlyConfigured("JWT_SIGNING_KEY must be at least 32 characters.")
if SIMPLE_JWT["SIGNING_KEY"] == SECRET_KEY:
    raise ImproperlyConfigured("JWT_SIGNING_KEY must differ from DJANGO_SECRET_KEY.")
if not CREDENTIAL_ENCRYPTION_KEYS:
    raise ImproperlyConfigured("CREDENTIAL_ENCRYPTION_KEYS must name at least one key.")

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
SECURE_REDIRECT_EXEMPT = [r"^health$", r"^health/(ready|live)$", r"^metrics$"]
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 30)
SECURE_CONTENT_TYPE_NOSNIFF = True
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# `collectstatic` writes the admin's, the browsable API's and the docs' static
# files here (the image does it at build time, into /app/var/static); WhiteNoise
# serves them with hashed names from the manifest.
STATIC_ROOT = Path(env("STATIC_ROOT", default=str(BASE_DIR / "var" / "static")))
# One JSON object a line unless LOG_FORMAT says text (emailclient.core.logs).
LOG_FORMAT = env("LOG_FORMAT", default="json")
LOGGING = logging_config(log_format=LOG_FORMAT, level=LOG_LEVEL)
