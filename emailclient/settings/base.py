"""Settings shared by every environment.

Everything that differs between machines comes from environment variables
(optionally a `.env` file at the project root). Each variable is documented in
the README's Configuration section; keep the two in step.
"""

import ipaddress
from datetime import timedelta
from pathlib import Path

import environ

from emailclient.core.logs import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env("DJANGO_SECRET_KEY")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "corsheaders",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc as our own static files
    "django_celery_beat",
    "emailclient.core",
    "accounts",
    "mailboxes",
    "messages.apps.MailConfig",
    "compose",
]

MIDDLEWARE = [
    # Outermost: every answer (a preflight's too) carries X-Request-ID, is
    # counted in the metrics and logged once (emailclient.core.requestid).
    "emailclient.core.requestid.RequestIdMiddleware",
    # First: a preflight is answered before anything else can answer it.
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, so that the tenant transaction wraps the view and nothing else.
    "emailclient.core.middleware.TenantMiddleware",
]

ROOT_URLCONF = "emailclient.urls"
WSGI_APPLICATION = "emailclient.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # Project-wide template overrides (e.g. ReDoc's page without web fonts).
        "DIRS": [BASE_DIR / "emailclient" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Databases -------------------------------------------------------------
# Three aliases on one database, one PostgreSQL role each (see README, "Database
# roles"):
#   default: the service's runtime role. DML only, no BYPASSRLS, owns nothing;
#            row-level security applies to every query it makes.
#   owner:   owns the tables; used only by `migrate --database owner`.
#   admin:   BYPASSRLS; used only by the Django admin's reads and by operator
#            commands (backups, key rotation). The API never touches it.
DATABASES = {
    "default": env.db("DATABASE_URL"),
    "admin": env.db("DATABASE_ADMIN_URL"),
}
# Only the process that migrates needs the owner's credentials.
if env("DATABASE_OWNER_URL", default=None):
    DATABASES["owner"] = env.db("DATABASE_OWNER_URL")
for _alias in DATABASES.values():
    _alias.setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
    _alias.setdefault("CONN_HEALTH_CHECKS", True)
    # No JIT: it compiled every query the planner costs above 100,000 (a
    # search over a big tenant) for 80-90 ms, for queries that take a few.
    # A DATABASE_URL that sets `?options=` itself replaces this.
    _alias.setdefault("OPTIONS", {}).setdefault("options", "-c jit=off")
# Statement timeouts (issue 14). Every statement of the runtime role (web,
# workers, commands on the default alias) is cancelled after this many
# milliseconds, so a runaway query cannot hold a connection and a core. 60 s:
# twice gunicorn's request timeout, and far above the sync's largest
# statements (a batch's COPY and INSERT: under 2 s in bench/). 0: no limit.
# The API answers a cancelled statement with a 503 (exceptions.py), never a 500.
DATABASE_STATEMENT_TIMEOUT_MS = env.int("DATABASE_STATEMENT_TIMEOUT_MS", default=60_000)
if DATABASE_STATEMENT_TIMEOUT_MS:
    DATABASES["default"]["OPTIONS"]["options"] += f" -c statement_timeout={DATABASE_STATEMENT_TIMEOUT_MS}"
# A search's statements, set per request: the read benchmark's broad searches
# take 120-150 ms at p95 over 1,000,000 messages a tenant; a search that must
# walk far more rows than that (only negated terms, or terms no index serves,
# matching little) is stopped here and answered 400 "narrow the search".
SEARCH_STATEMENT_TIMEOUT_MS = env.int("SEARCH_STATEMENT_TIMEOUT_MS", default=3_000)
DATABASE_ROUTERS = ["emailclient.core.routers.SameDatabaseRouter"]
# The superuser URL is used only to create the database and roles (`setupdb`).
DATABASE_SUPERUSER_URL = env("DATABASE_SUPERUSER_URL", default="postgres://postgres@127.0.0.1:5432/postgres")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache, Celery -----------------------------------------------------------
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "emailclient.core.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env("CACHE_KEY_PREFIX", default="emailclient"),
        # A Redis that stops answering costs a request seconds, not the
        # kernel's minutes of TCP retries; the throttles then fail open for
        # reads and answer 503 to writes (emailclient.core.throttling).
        "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 5},
    },
    # Sanitised HTML fragments (messages.sanitize.sanitize_html_for_reading).
    # By default the same Redis as the broker, the sync slots and the rate
    # limits (another db number there shares its memory, so it is no
    # isolation): the fragments are bounded by MAIL_HTML_CACHE_MIN_CHARS,
    # MAIL_HTML_CACHE_SECONDS and compression. An operator with many readers
    # points HTML_CACHE_URL at a Redis of its own with `maxmemory` and
    # `allkeys-lru` (README, Configuration). Unreachable: sanitised uncached.
    "html": {
        "BACKEND": "emailclient.core.cache.RedisCache",
        "LOCATION": env("HTML_CACHE_URL", default=REDIS_URL),
        "KEY_PREFIX": env("CACHE_KEY_PREFIX", default="emailclient"),
        "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 5},
    },
}

CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default=REDIS_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=3600)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=3300)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # keep LOGGING (JSON in production)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"

# --- Auth --------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "emailclient.core.authentication.JWTAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["emailclient.core.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "emailclient.core.pagination.KeysetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "emailclient.core.exceptions.exception_handler",
    "UNAUTHENTICATED_USER": None,
    # Per user, per scope and per tenant on every tenant API view
    # (emailclient.core.throttling; the API_RATE_LIMIT_* settings below).
    "DEFAULT_THROTTLE_CLASSES": ["emailclient.core.throttling.ApiThrottle"],
}

SIMPLE_JWT = {
    "ALGORITHM": "HS256",
    "SIGNING_KEY": env("JWT_SIGNING_KEY"),
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("JWT_ACCESS_TOKEN_MINUTES", default=15)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("JWT_REFRESH_TOKEN_DAYS", default=7)),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "UPDATE_LAST_LOGIN": True,
    "AUTH_HEADER_TYPES": ("Bearer",),
    "TOKEN_REFRESH_SERIALIZER": "emailclient.core.authentication.TokenRefreshSerializer",
    "TOKEN_VERIFY_SERIALIZER": "emailclient.core.authentication.TokenVerifySerializer",
    # Tokens carry a hash of the user's password hash: a password change
    # revokes every access and refresh token issued before it.
    "CHECK_REVOKE_TOKEN": True,
}

# django-ratelimit, on the Redis cache above.
# Token obtain per client address: the seeds' 5 a minute.
AUTH_RATE_LIMIT = env("AUTH_RATE_LIMIT", default="5/m")
# Token obtain per username and client network (IPv4 /24, IPv6 /64): a
# person mistyping needs fewer than 5 tries a minute, and an attacker's
# network locks out only itself (not the user everywhere, as a limit per
# username alone did).
AUTH_USERNAME_RATE_LIMIT = env("AUTH_USERNAME_RATE_LIMIT", default="5/m")
# Token obtain per username across every network the user has not logged in
# from in 30 days: guesses spread over many networks meet it (2,400 a day at
# most); an attacker with enough networks to use it up locks the user out
# of new networks only, for up to the hour (emailclient.core.auth_views).
AUTH_USERNAME_TOTAL_RATE_LIMIT = env("AUTH_USERNAME_TOTAL_RATE_LIMIT", default="100/h")
# Refresh (and verify) per client address, a budget of its own: a client
# refreshes once per access token (15 minutes), so 60 a minute is 60 clients
# behind one address refreshing in the same minute.
AUTH_REFRESH_RATE_LIMIT = env("AUTH_REFRESH_RATE_LIMIT", default="60/m")
# Proxies in front that append the client's address to X-Forwarded-For
# (emailclient.core.clientaddr). 0: none is trusted, the client is
# REMOTE_ADDR and X-Forwarded-For is ignored (anyone can send one).
TRUSTED_PROXY_HOPS = env.int("TRUSTED_PROXY_HOPS", default=0)
RATELIMIT_USE_CACHE = "default"
# django-ratelimit's key="ip" reads the same client address as the throttles.
RATELIMIT_IP_META_KEY = "emailclient.core.clientaddr.ratelimit_ip"

SPECTACULAR_SETTINGS = {
    "TITLE": "Email service API",
    "DESCRIPTION": "Multi-tenant email accounts, sync, messages and sending.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {"EncryptionEnum": "accounts.models.Encryption"},
    # The docs' JavaScript and CSS come from drf-spectacular-sidecar's static
    # files, not a CDN: no page of the service loads anything from another host.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # No validator badge: it would send the schema's URL to validator.swagger.io.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    # Each API path once, without its (optional) trailing slash.
    "PREPROCESSING_HOOKS": ["emailclient.core.schema.drop_trailing_slash"],
}

# --- CORS: browser front-ends on other origins ----------------------------------
# Origins allowed to call the API from a browser, e.g. https://crm.example.com
# (scheme, host and port; no path). Empty: no other origin may.
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
CORS_URLS_REGEX = r"^/api/"
# Bearer tokens, not cookies: a cross-origin request never carries credentials.
CORS_ALLOW_CREDENTIALS = False
CORS_ALLOW_HEADERS = ("accept", "authorization", "content-type", "x-tenant-id", "idempotency-key")
CORS_EXPOSE_HEADERS = ("content-disposition", "retry-after")
CORS_PREFLIGHT_MAX_AGE = 600

# --- Credentials at rest -------------------------------------------------------
# Comma-separated Fernet keys; the first encrypts, all decrypt. Rotate by putting
# a new key first, then `manage.py rotate_credentials`, then drop the old key.
CREDENTIAL_ENCRYPTION_KEYS = env.list("CREDENTIAL_ENCRYPTION_KEYS")

# --- Mail storage and limits ----------------------------------------------------
BLOB_STORAGE_DIR = Path(env("BLOB_STORAGE_DIR", default=str(BASE_DIR / "var" / "blobs")))
# Signed attachment URLs (for <img> tags, which send no bearer token) are
# bearer credentials in a URL: five minutes is ample for a page to load its
# images and for a click on a file; a client that keeps a message open
# longer fetches its detail again for fresh URLs.
ATTACHMENT_URL_MAX_AGE_SECONDS = env.int("ATTACHMENT_URL_MAX_AGE_SECONDS", default=300)
# Soft-deleted accounts keep their mail (and credentials) this many days, so
# a deletion by mistake can be undone by an operator, then `purgeaccounts`
# (daily in CELERY_BEAT_SCHEDULE) removes them for good: 30 days, as
# Microsoft 365 keeps a soft-deleted mailbox.
ACCOUNT_PURGE_RETENTION_DAYS = env.int("ACCOUNT_PURGE_RETENTION_DAYS", default=30)
# Mail servers on loopback/private/link-local/metadata addresses are refused
# unless this is on (local and test settings turn it on).
MAIL_ALLOW_PRIVATE_HOSTS = env.bool("MAIL_ALLOW_PRIVATE_HOSTS", default=False)
# Accounts with `encryption: none` send their password in clear text.
MAIL_ALLOW_PLAINTEXT = env.bool("MAIL_ALLOW_PLAINTEXT", default=False)
MAIL_TLS_CA_FILE = env("MAIL_TLS_CA_FILE", default=None)  # extra CA bundle to trust
MAIL_CONNECT_TIMEOUT = env.float("MAIL_CONNECT_TIMEOUT", default=20.0)
MAIL_READ_TIMEOUT = env.float("MAIL_READ_TIMEOUT", default=120.0)
MAIL_MAX_MESSAGE_BYTES = env.int("MAIL_MAX_MESSAGE_BYTES", default=50 * 1024 * 1024)
MAIL_MAX_HEADER_BYTES = env.int("MAIL_MAX_HEADER_BYTES", default=256 * 1024)
MAIL_MAX_PARTS = env.int("MAIL_MAX_PARTS", default=1000)
MAIL_MAX_MIME_DEPTH = env.int("MAIL_MAX_MIME_DEPTH", default=30)
# The message detail serves at most this many characters of an HTML body,
# sanitised, then a truncation notice (`html_truncated: true`); the fragment
# is cached per message and options (messages.sanitize.sanitize_html_for_reading).
# 500,000: Gmail clips at about 102 KB, the largest newsletters stay under
# this, and sanitising it takes 0.3-1 s on the benchmark's 2 cores (9 MB took
# 5.5 s and 258 MB on every request).
MAIL_HTML_MAX_CHARS = env.int("MAIL_HTML_MAX_CHARS", default=500_000)
# Only a body of at least this many characters has its sanitised fragment
# cached: 50,000 take 20-40 ms to sanitise on the benchmark's 2 cores (about
# a detail request's own cost), and most mail is smaller, so caching it would
# fill Redis to save little. 0 caches every body.
MAIL_HTML_CACHE_MIN_CHARS = env.int("MAIL_HTML_CACHE_MIN_CHARS", default=50_000)
# How long a cached fragment lives: a message is read again within minutes,
# seldom a day later; one hour keeps Redis holding only what is being read.
MAIL_HTML_CACHE_SECONDS = env.int("MAIL_HTML_CACHE_SECONDS", default=3600)
# --- One message must not exhaust a worker (issue 14, section 1) ---
# The parser counts these while it splits a message and quarantines it at the
# first one over, before building the rest (messages.parsing.mime):
# header fields of all parts together: real mail has tens to a few hundred
# (a 1,000-part message with 5 fields a part is 5,000); each costs ~200 bytes.
MAIL_MAX_HEADER_FIELDS = env.int("MAIL_MAX_HEADER_FIELDS", default=10_000)
# Lines of mail the fast splitter declines (defects, lone CRs; enclosed
# message/rfc822 parts are split fast too): the FeedParser keeps each line as
# a str (~60 bytes besides its text, four bytes a character once one is
# 8-bit). 200,000 (15 MB of base64, 10 MB of 48-character lines): only broken
# mail reaches it, and 1,000,000 short 8-bit lines took ~400 MB.
MAIL_MAX_LINES = env.int("MAIL_MAX_LINES", default=200_000)
# Characters of a message's text body, and of its HTML body, stored and
# indexed (the raw message is kept whole in the blob store): 1,000,000 is
# twice MAIL_HTML_MAX_CHARS, which the API serves; a 45 MB text body cost
# ~100 MB more per message while parsed and stored.
MAIL_MAX_BODY_CHARS = env.int("MAIL_MAX_BODY_CHARS", default=1_000_000)
# A sync worker killed (out of memory, SIGKILL) while a message was in flight
# gets the task back (acks_late, reject_on_worker_lost); after this many
# deaths with the same message in flight it is quarantined unfetched. 3: one
# death can be an unrelated restart; three on the same UID are the message.
SYNC_MAX_WORKER_LOSSES = env.int("SYNC_MAX_WORKER_LOSSES", default=3)
# A prefork child whose RSS passes this (KiB) after a task is replaced; a
# sync stays under 300 MB (bench/sync_bench.py), so 500 MiB leaves room and
# returns memory a big batch fragmented. The container limit kills mid-task.
CELERY_WORKER_MAX_MEMORY_PER_CHILD = env.int("CELERY_WORKER_MAX_MEMORY_PER_CHILD", default=500 * 1024)
# The workers' CPU priority (nice, 0-19): where they share cores with the
# web processes, a sync or a draining outbox yields them to the requests
# (emailclient.core.tasking.worker_priority_lower). 0 leaves it alone.
CELERY_WORKER_NICE = env.int("CELERY_WORKER_NICE", default=10)
SYNC_BATCH_MESSAGES = env.int("SYNC_BATCH_MESSAGES", default=500)
SYNC_BATCH_BYTES = env.int("SYNC_BATCH_BYTES", default=16 * 1024 * 1024)
SYNC_MAX_RETRIES = env.int("SYNC_MAX_RETRIES", default=5)
# Attempts at writing one API change (flags, move, delete) to the mail server
# before it is undone in the database.
WRITEBACK_MAX_ATTEMPTS = env.int("WRITEBACK_MAX_ATTEMPTS", default=5)

# --- Per-tenant limits ----------------------------------------------------------
# Defaults of each tenant's limits; an operator overrides one for a tenant in
# the admin (emailclient.core.limits). Quotas: empty = unlimited.
TENANT_MAX_ACCOUNTS = env.int("TENANT_MAX_ACCOUNTS", default=None)
TENANT_MAX_ACCOUNTS_PER_USER = env.int("TENANT_MAX_ACCOUNTS_PER_USER", default=None)
TENANT_MAX_STORED_BYTES = env.int("TENANT_MAX_STORED_BYTES", default=None)
TENANT_MAX_MESSAGES = env.int("TENANT_MAX_MESSAGES", default=None)
SYNC_MAX_CONCURRENT_PER_TENANT = env.int("SYNC_MAX_CONCURRENT_PER_TENANT", default=2)
# Sending runs (compose.tasks.send: one account's due messages over one SMTP
# connection) of one tenant at once across the workers; one more waits off
# the workers (queued again a few seconds later). 2: a backlog's run and its
# helper, so one account sends at full speed while a tenant's hundred
# accounts pointed at a tarpit SMTP server hold two workers, not all.
SEND_MAX_CONCURRENT_PER_TENANT = env.int("SEND_MAX_CONCURRENT_PER_TENANT", default=2)
if SEND_MAX_CONCURRENT_PER_TENANT < 1:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        f"SEND_MAX_CONCURRENT_PER_TENANT={SEND_MAX_CONCURRENT_PER_TENANT}: 1 or more (a run without a slot "
        "comes back until it gets one)"
    )
# API throttles (emailclient.core.throttling), measured with one client paging
# a 3,000-message folder one request at a time (in-process, this 2-core VM):
# 1,150 pages a minute at page_size 50, 590 at 200, 970 message details a
# minute; through gunicorn a page took 9.5 ms (bench/results-read.json), i.e.
# 6,300 a minute. The seeds' 60 a minute per address stopped such a client
# within 3 to 6 seconds. Per user 600 a minute lets it page at its own speed
# with page_size=200 (120,000 messages a minute) and at half of it with 50,
# and holds one user to a tenth of what a worker serves. Per tenant 3,000: five
# users at their limit at once. Searches cost up to 10x a page (120 ms broad):
# 120 a minute, two a second, is more than search-as-you-type sends. Sync
# triggers per account: a running or queued sync is joined anyway, one every
# 10 s is more than a refresh button needs.
API_RATE_LIMIT_USER = env("API_RATE_LIMIT_USER", default="600/m")
API_RATE_LIMIT_TENANT = env("API_RATE_LIMIT_TENANT", default="3000/m")
API_RATE_LIMIT_SEARCH = env("API_RATE_LIMIT_SEARCH", default="120/m")
SYNC_TRIGGER_RATE_LIMIT = env("SYNC_TRIGGER_RATE_LIMIT", default="6/m")

# --- Fair sharing of the sync workers (issue 14, section 2) ----------------------
# Seconds from the first packet to logged in (connect, TLS, greeting, STARTTLS,
# login), whatever the per-read timeout: a real server needs a second or two;
# 60 leaves room for a slow one across the world, and a tarpit that trickles
# its greeting a byte at a time holds a worker one minute, not forever.
MAIL_CONNECTION_DEADLINE = env.float("MAIL_CONNECTION_DEADLINE", default=60.0)
# Creating an account, or changing where its password goes, first logs in to
# its IMAP server (and SMTP server, when it has one) within
# MAIL_CONNECTION_DEADLINE (SMTP_CONNECTION_DEADLINE): True, so that no
# account pointed at a tarpit or with a wrong password is stored to be retried
# by every sync. False only for tests on fake hosts.
ACCOUNT_VERIFY_ON_SAVE = env.bool("ACCOUNT_VERIFY_ON_SAVE", default=True)
# The request that saves the account waits for those logins, on a web thread:
# at most ACCOUNT_VERIFY_DEADLINE seconds for both servers together (the
# incoming login, then SMTP's in what is left; a real server needs a second or
# two), and at most so many at once per account owner and per tenant, counted
# in Redis across the web processes (429 beyond). So a user pointing accounts
# at a tarpit holds two web threads 20 s, never the whole pool for minutes.
ACCOUNT_VERIFY_DEADLINE = env.float("ACCOUNT_VERIFY_DEADLINE", default=20.0)
ACCOUNT_VERIFY_MAX_CONCURRENT_PER_USER = env.int("ACCOUNT_VERIFY_MAX_CONCURRENT_PER_USER", default=2)
ACCOUNT_VERIFY_MAX_CONCURRENT_PER_TENANT = env.int("ACCOUNT_VERIFY_MAX_CONCURRENT_PER_TENANT", default=4)
for _name, _least in (
    ("ACCOUNT_VERIFY_DEADLINE", 1),  # less leaves no time to connect, secure and log in
    ("ACCOUNT_VERIFY_MAX_CONCURRENT_PER_USER", 1),
    ("ACCOUNT_VERIFY_MAX_CONCURRENT_PER_TENANT", 1),
):
    if globals()[_name] < _least:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"{_name}={globals()[_name]}: must be {_least} or more")
# Seconds one sync (or write-back run) may talk to its server in all. 1,800:
# half the task's hard time limit, so it ends cleanly long before Celery kills
# it; 10,000 messages take ~25 s here (bench/), so only mailboxes of several
# hundred thousand messages need more than one run, and each run keeps what it
# stored (the next continues from there).
SYNC_DEADLINE = env.float("SYNC_DEADLINE", default=1800.0)
# Syncs running at once against one mail server host name, across tenants and
# workers: 8 stays below what providers allow one client address (Gmail:
# 15 connections per user, others 10-20 per address) and keeps a slow host from
# holding more than 8 workers. The cap per tenant is SYNC_MAX_CONCURRENT_PER_TENANT.
SYNC_MAX_CONCURRENT_PER_HOST = env.int("SYNC_MAX_CONCURRENT_PER_HOST", default=8)
# A sync that finds its tenant's or host's slots taken is queued again this
# many seconds later (with up to 50% jitter) instead of holding a worker: about
# the time a small sync takes, so a waiting sync starts soon after one ends.
SYNC_SLOT_WAIT_SECONDS = env.float("SYNC_SLOT_WAIT_SECONDS", default=10.0)
# A sending run without a free slot of its tenant comes back this much later
# (plus up to as much again).
SEND_SLOT_WAIT_SECONDS = env.float("SEND_SLOT_WAIT_SECONDS", default=5.0)
if SEND_SLOT_WAIT_SECONDS <= 0:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"SEND_SLOT_WAIT_SECONDS={SEND_SLOT_WAIT_SECONDS}: more than 0 seconds")
# Ports a mail server may be reached on (IMAP 143/993, POP3 110/995, SMTP
# 25/465/587): an account cannot point the service at a database or web port
# inside or outside the network. Local and test settings allow any (their
# Dovecot listens on high ports). `*`: any port.
_MAIL_PORTS = env("MAIL_ALLOWED_PORTS", default="25,110,143,465,587,993,995").strip()
MAIL_ALLOWED_PORTS: list[int] | None = (
    None if _MAIL_PORTS == "*" else [int(port) for port in _MAIL_PORTS.split(",") if port.strip()]
)

# --- Sending (compose) ------------------------------------------------------------
# Bodies and attachments of one message together, before MIME encoding.
COMPOSE_MAX_MESSAGE_BYTES = env.int("COMPOSE_MAX_MESSAGE_BYTES", default=25 * 1024 * 1024)
COMPOSE_MAX_RECIPIENTS = env.int("COMPOSE_MAX_RECIPIENTS", default=100)
# Attachments of one draft (uploads and a forward's copies): more is a 400.
COMPOSE_MAX_ATTACHMENTS = env.int("COMPOSE_MAX_ATTACHMENTS", default=100)
# Delivery attempts of one message on temporary failures (4xx, connection
# refused or reset before the body) before it is `failed`; backoff in between.
COMPOSE_SEND_MAX_ATTEMPTS = env.int("COMPOSE_SEND_MAX_ATTEMPTS", default=8)
# Sends (queue requests) per user and per tenant, django-ratelimit's syntax.
# The seeds' 50 a minute was per client, i.e. one user: it is the user's
# default. A tenant holds many users sending at once; its default is ten
# users' worth, so one member cannot use up the others' sends but a busy
# helpdesk is not held to one person's rate.
COMPOSE_RATE_LIMIT_USER = env("COMPOSE_RATE_LIMIT_USER", default="50/m")
COMPOSE_RATE_LIMIT_TENANT = env("COMPOSE_RATE_LIMIT_TENANT", default="500/m")
SMTP_CONNECT_TIMEOUT = env.float("SMTP_CONNECT_TIMEOUT", default=20.0)
SMTP_TIMEOUT = env.float("SMTP_TIMEOUT", default=60.0)  # per read; the seeds' SMTP_TIMEOUT
# Total deadlines besides the per-read timeout, so a server that trickles a
# byte just under each SMTP_TIMEOUT cannot hold a send worker until the
# task's time limit (compose.tasks.SEND_TIME_LIMIT, 900 s; soft 840 s).
# Connection: DNS, connect, TLS, greeting, EHLO, STARTTLS, AUTH. A real
# server needs a second or two; 60 as MAIL_CONNECTION_DEADLINE.
SMTP_CONNECTION_DEADLINE = env.float("SMTP_CONNECTION_DEADLINE", default=60.0)
# One message, MAIL FROM to the reply after its body: SMTP_MESSAGE_DEADLINE
# seconds for the commands and replies (100 RCPTs, the server's scan before
# its final reply: one SMTP_TIMEOUT and as much again) plus one second per
# SMTP_MESSAGE_MIN_RATE bytes sent. 65,536 B/s (~0.5 Mbit/s, a slow ADSL
# uplink): the largest message (COMPOSE_MAX_MESSAGE_BYTES, 25 MiB, ~35.9 MB
# once base64-encoded) gets 120 + 547 = 667 s, plus 60 to connect: 727 s,
# inside the soft time limit; a 50 KB message gets 121 s.
SMTP_MESSAGE_DEADLINE = env.float("SMTP_MESSAGE_DEADLINE", default=120.0)
SMTP_MESSAGE_MIN_RATE = env.int("SMTP_MESSAGE_MIN_RATE", default=65536)

CELERY_BEAT_SCHEDULE = {
    # Scheduled sends that are due and queued ones whose task was lost.
    "compose-dispatch-due": {"task": "compose.tasks.dispatch_due", "schedule": 60.0},
    # Accounts soft-deleted more than ACCOUNT_PURGE_RETENTION_DAYS ago, once a day.
    "accounts-purge-deleted": {"task": "mailboxes.tasks.purge_deleted_accounts", "schedule": 24 * 3600.0},
}

# --- Scheduled backups (emailclient/core/backup.py) ---------------------------
# Off unless BACKUP_DIR is set: then Celery beat writes an archive there on
# BACKUP_SCHEDULE (a crontab line, UTC: minute hour day-of-month month
# day-of-week) and, once it is complete, removes all but the newest
# BACKUP_KEEP. Encrypted with the key in BACKUP_ENCRYPTION_KEY_FILE (or the
# BACKUP_ENCRYPTION_KEY variable) when set.
BACKUP_DIR = Path(env("BACKUP_DIR")) if env("BACKUP_DIR", default="") else None
BACKUP_SCHEDULE = env("BACKUP_SCHEDULE", default="30 2 * * *")
BACKUP_KEEP = env.int("BACKUP_KEEP", default=7)
BACKUP_ENCRYPTION_KEY_FILE = (
    Path(env("BACKUP_ENCRYPTION_KEY_FILE")) if env("BACKUP_ENCRYPTION_KEY_FILE", default="") else None
)
# A backup of a big store takes longer than other tasks: 6 hours.
BACKUP_TASK_TIME_LIMIT = env.int("BACKUP_TASK_TIME_LIMIT", default=6 * 3600)
if BACKUP_KEEP < 1:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"BACKUP_KEEP={BACKUP_KEEP}: keep at least one archive (1 or more)")
if BACKUP_TASK_TIME_LIMIT <= 300:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        f"BACKUP_TASK_TIME_LIMIT={BACKUP_TASK_TIME_LIMIT}: more than 300 seconds "
        "(its soft limit is 300 s less)"
    )
if len(BACKUP_SCHEDULE.split()) != 5:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        f"BACKUP_SCHEDULE={BACKUP_SCHEDULE!r}: five crontab fields, minute hour day-of-month month "
        "day-of-week (UTC), e.g. '30 2 * * *'"
    )
if BACKUP_DIR is not None:
    from celery.schedules import crontab

    _minute, _hour, _day, _month, _weekday = BACKUP_SCHEDULE.split()
    CELERY_BEAT_SCHEDULE["core-backup"] = {
        "task": "emailclient.core.tasks.backup_scheduled",
        "schedule": crontab(
            minute=_minute, hour=_hour, day_of_month=_day, month_of_year=_month, day_of_week=_weekday
        ),
    }

# --- i18n, static -------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT: Path | None = BASE_DIR / "var" / "static"
# WhiteNoise serves the admin's and the browsable API's static files from the
# app itself, compressed and cache-busted, so no extra web server is needed.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# --- Logging ------------------------------------------------------------------
# LOG_FORMAT: "json" (one object a line: time, level, logger, message, the
# request id, tenant, user, and for an access line method, path, route,
# status, duration_ms; for a task its name, id, tenant and account) or
# "text". Production defaults to json, development and tests to text. Every
# line passes a redaction filter for secrets (emailclient.core.logs).
LOG_LEVEL = env("LOG_LEVEL", default="INFO")
LOG_FORMAT = env("LOG_FORMAT", default="text")  # "text" or "json"
LOGGING = logging_config(log_format=LOG_FORMAT, level=LOG_LEVEL)

# --- Metrics and health (emailclient.core.metrics, emailclient.core.views) -----------
# /metrics answers 404 unless enabled; then a scrape needs the bearer token
# METRICS_TOKEN and/or an address in METRICS_ALLOWED_NETWORKS (CIDRs; each one
# configured must hold; with neither, every scrape is refused). Gunicorn's and
# the worker's processes share their counts through PROMETHEUS_MULTIPROC_DIR
# (an environment variable prometheus-client reads itself; an empty directory
# per role, set before the process starts). The worker serves its own
# metrics on METRICS_WORKER_PORT (0: not served).
METRICS_ENABLED = env.bool("METRICS_ENABLED", default=False)
METRICS_TOKEN = env("METRICS_TOKEN", default="")
# Comma-separated, spaces allowed ("10.0.0.0/8, 127.0.0.1"); an entry that is
# no address or network stops the start (checked here, not on every scrape).
METRICS_ALLOWED_NETWORKS = [
    entry.strip() for entry in env.list("METRICS_ALLOWED_NETWORKS", default=[]) if entry.strip()
]
for _network in METRICS_ALLOWED_NETWORKS:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            f"METRICS_ALLOWED_NETWORKS: {_network!r} is not an IP address or network "
            "(comma-separated CIDRs or addresses, e.g. '10.0.0.0/8, 127.0.0.1')"
        ) from None
METRICS_WORKER_PORT = env.int("METRICS_WORKER_PORT", default=0)
# The gauges read from the database and the broker at scrape time are kept
# this many seconds (one set of queries per interval, whatever the scrapers;
# the database's shared by every process through Redis).
METRICS_CACHE_SECONDS = env.float("METRICS_CACHE_SECONDS", default=15.0)
# Each of those database statements is cancelled after this many seconds
# (its gauges are then left out of the scrape, and logged).
METRICS_STATEMENT_TIMEOUT = env.float("METRICS_STATEMENT_TIMEOUT", default=5.0)
METRICS_CELERY_QUEUES = env.list("METRICS_CELERY_QUEUES", default=["celery"])
# /health pings the Celery workers (cached 5 s a process) and waits this long
# for their answers; a periodic sync counts as overdue HEALTH_SYNC_OVERDUE_GRACE
# seconds after its time plus beat's write-back period (the scheduler's
# sync_every, 180 s: until then a run is not in the database), so 240 s.
HEALTH_CELERY_PING_TIMEOUT = env.float("HEALTH_CELERY_PING_TIMEOUT", default=1.0)
HEALTH_SYNC_OVERDUE_GRACE = env.int("HEALTH_SYNC_OVERDUE_GRACE", default=60)
