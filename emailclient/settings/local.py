"""Development settings: `make run`. Secrets come from `.env`, which
`scripts/run.sh` writes with fresh random keys on first run."""

from emailclient.core.logs import logging_config

from .base import *  # noqa: F403
from .base import INSTALLED_APPS, LOG_LEVEL, REST_FRAMEWORK, STORAGES, env

DEBUG = env.bool("DEBUG", default=True)

# Browsable API and session login (for the admin user) in development only.
REST_FRAMEWORK = {
    **REST_FRAMEWORK,
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "emailclient.core.authentication.JWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
}

# The demo tenant `demo` with user `demo` is created by `manage.py seeddemo`.
DEMO_PASSWORD = env("DEMO_PASSWORD", default="demo")

# Static files straight from the apps' folders, no collectstatic: WhiteNoise
# finds them through the staticfiles finders and serves them under their
# plain names, as in production but without the manifest (which needs
# collectstatic). `runserver_nostatic` makes runserver leave static files to
# WhiteNoise too, so development serves them the way production does.
INSTALLED_APPS = ["whitenoise.runserver_nostatic", *INSTALLED_APPS]
STATIC_ROOT = None
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True

# The development and test mail servers run on loopback.
MAIL_ALLOW_PRIVATE_HOSTS = True
MAIL_ALLOW_PLAINTEXT = True
MAIL_ALLOWED_PORTS = None  # and listen on free high ports
ACCOUNT_VERIFY_ON_SAVE = True  # as in production: a wrong password is seen at once

# Logs: text lines unless LOG_FORMAT=json (base.py's default, said again here).
LOG_FORMAT = env("LOG_FORMAT", default="text")
LOGGING = logging_config(log_format=LOG_FORMAT, level=LOG_LEVEL)
