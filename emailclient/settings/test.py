"""Test settings: the real PostgreSQL and Redis on this machine.

The suite connects as the runtime role (`emailclient_app`), exactly as the
service does; `conftest.py` creates the database and migrates it as the owner.
"""

import os

# Fixed, test-only secrets; setdefault so that CI can still override them.
os.environ.setdefault("DJANGO_SECRET_KEY", "test-secret-key-not-for-production-0123456789")
os.environ.setdefault(
    "JWT_SIGNING_KEY", "test-jwt-signing-key-not-for-production-9876543210-padded-to-64-bytes"
)
os.environ.setdefault("CREDENTIAL_ENCRYPTION_KEYS", "aTZSGkJ2R0GCPtz7xWjaQRJ_aVZF5gcFnKhrDBShSDo=")
# The suite drops and recreates its database: never let a developer's
# DATABASE_URL point it at a real one. Only the host and name can be moved.
_PG = os.environ.get("TEST_DATABASE_HOST", "127.0.0.1:5432")
_DB = os.environ.get("TEST_DATABASE_NAME", "emailclient_test")
os.environ["DATABASE_URL"] = f"postgres://emailclient_app@{_PG}/{_DB}"
os.environ["DATABASE_OWNER_URL"] = f"postgres://emailclient_owner@{_PG}/{_DB}"
os.environ["DATABASE_ADMIN_URL"] = f"postgres://emailclient_admin@{_PG}/{_DB}"
os.environ["REDIS_URL"] = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ["HTML_CACHE_URL"] = os.environ["REDIS_URL"]

from .base import *  # noqa: E402, F403
from .base import BASE_DIR  # noqa: E402

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CACHES["default"]["KEY_PREFIX"] = "emailclient-test"  # noqa: F405
CACHES["html"]["KEY_PREFIX"] = "emailclient-test"  # noqa: F405
BLOB_STORAGE_DIR = BASE_DIR / "var" / "test-blobs"
CELERY_TASK_ALWAYS_EAGER = False
LOGGING = {"version": 1, "disable_existing_loggers": False}
STATIC_ROOT = None
# Tests need no collectstatic manifest.
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405

# The development and test mail servers run on loopback.
MAIL_ALLOW_PRIVATE_HOSTS = True
MAIL_ALLOW_PLAINTEXT = True
MAIL_ALLOWED_PORTS = None  # and listen on free high ports
# Most tests create accounts on hosts that do not exist; the tests of the
# check (mailboxes/tests/test_account_verify.py) turn it on.
ACCOUNT_VERIFY_ON_SAVE = False

# The suite makes many requests as one user and tenant within a minute: the
# API throttles' defaults are raised so that only the tests of the throttles
# (which set small rates themselves) meet them. The real defaults are in
# base.py; emailclient/core/tests/test_throttling.py checks they parse.
API_RATE_LIMIT_USER = "100000/m"
API_RATE_LIMIT_TENANT = "100000/m"
API_RATE_LIMIT_SEARCH = "100000/m"
SYNC_TRIGGER_RATE_LIMIT = "100000/m"
