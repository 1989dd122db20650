"""Structured logs (emailclient.core.logs) and request ids (emailclient.core.requestid)."""

import io
import json
import logging
import re
import time
import uuid

import pytest
import redis
from django.conf import settings

from accounts.tests.factories import EmailAccountFactory
from emailclient.core import logs
from emailclient.core.requestid import request_id_from
from emailclient.core.tests import celery_worker
from emailclient.core.tests.celery_worker import CeleryWorker


class Captured:
    """Every record at DEBUG, as the production handler writes it (context
    filter, JSON formatter); `redacted` also passes the redaction filter."""

    def __init__(self, *, redacted: bool) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(logs.JsonFormatter())
        self.handler.addFilter(logs.ContextFilter())
        if redacted:
            self.handler.addFilter(logs.RedactFilter())

    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.text().splitlines() if line]


@pytest.fixture
def captured():
    """A production-like capture at DEBUG, with the production logger levels."""
    root = logging.getLogger()
    capture = Captured(redacted=False)
    levels = {}
    config = logs.logging_config(log_format="json", level="DEBUG")
    for name, logger_config in config["loggers"].items():
        levels[name] = logging.getLogger(name).level
        logging.getLogger(name).setLevel(logger_config["level"])
    previous = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(capture.handler)
    yield capture
    root.removeHandler(capture.handler)
    root.setLevel(previous)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


# --- Formatter and redaction ------------------------------------------------------------


def test_a_json_line_carries_the_fields_and_the_context():
    capture = Captured(redacted=True)
    logger = logging.getLogger("test.json")
    logger.addHandler(capture.handler)
    tokens = logs.context_set(request_id="r-1", tenant="t-1", user="u-1")
    try:
        logger.warning("hello %s", "world", extra={"status": 201, "route": "api/x"})
    finally:
        logs.context_reset(tokens)
        logger.removeHandler(capture.handler)
    [line] = capture.lines()
    assert line["message"] == "hello world" and line["level"] == "WARNING" and line["logger"] == "test.json"
    assert line["request_id"] == "r-1" and line["tenant"] == "t-1" and line["user"] == "u-1"
    assert line["status"] == 201 and line["route"] == "api/x"
    assert line["time"].endswith("+00:00")
    assert "task_name" not in line  # unset fields are left out
    assert logs.context_get("request_id") is None


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("headers {'Authorization': 'Bearer abc.def.ghi123456'}", "abc.def.ghi123456"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
        ("GET /api/attachments/1?token=s3cr3t-value&x=1", "s3cr3t-value"),
        ("login with password=hunter2-horse", "hunter2-horse"),
        ('{"username": "a", "password": "hunter2-horse"}', "hunter2-horse"),
        ("'smtp_password': 'p4ss-w0rd'", "p4ss-w0rd"),
        ("refresh eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl here", "eyJzdWIiOiIxIn0"),
        ("Cookie: sessionid=abcdef123456; csrftoken=zzz", "abcdef123456"),
        ("b'LOGIN user1 mail-pass-123'", "mail-pass-123"),
        ("AUTH PLAIN AHVzZXIAcGFzcw==", "AHVzZXIAcGFzcw=="),
        # Quoted values with spaces, whole.
        ('connect(password="correct horse battery")', "horse battery"),
        ("{'password': 'correct horse battery', 'user': 'a'}", "horse battery"),
        ('{"smtp_password": "with \\" quote and spaces"}', "quote and spaces"),
        # Bytes, as a value and as a whole line.
        ("{'password': b'bytes-pass-1 x'}", "bytes-pass-1"),
        ("sent b'password=bytes-pass-2'", "bytes-pass-2"),
        # Keys by another name.
        ("secret_key='dj-secret-key-value'", "dj-secret-key-value"),
        ("CREDENTIAL_ENCRYPTION_KEYS=aTZSGkJ2R0GCPtz7xWjaQRJ", "aTZSGkJ2R0GCPtz7xWjaQRJ"),
        ("{'encryption_key': 'enc-key-value-9'}", "enc-key-value-9"),
        ("signing-key: sig-key-value-3", "sig-key-value-3"),
        # A WSGI environ's header names.
        ("{'HTTP_AUTHORIZATION': 'Token tok-value-123456'}", "tok-value-123456"),
        ("{'HTTP_COOKIE': 'theme=cookie-value-77'}", "cookie-value-77"),
        # A URL's user information.
        ("connecting to imap://user1:url-pass-1@mail.example.com:993/INBOX", "url-pass-1"),
        ("broker redis://:url-pass-2@127.0.0.1:6379/0", "url-pass-2"),
        ("imap://someone@example.com:url-p@ss-3@mail.example.com", "url-p@ss-3"),
    ],
)
def test_the_redaction_filter_removes_known_secret_shapes(text, secret):
    capture = Captured(redacted=True)
    logger = logging.getLogger("test.redact")
    logger.addHandler(capture.handler)
    try:
        logger.error("seen: %s", text)
        try:
            raise ValueError(text)
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(capture.handler)
    assert secret not in capture.text()
    assert logs.REDACTED in capture.text()


@pytest.mark.parametrize("formatter", [logs.JsonFormatter, logs.TextFormatter])
@pytest.mark.parametrize("redacted", [True, False])
def test_a_malformed_call_logs_its_template_never_its_arguments(formatter, redacted, capsys):
    """The standard handler reports a call whose arguments do not fit its
    template by printing the arguments to stderr: a secret passed there."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter())
    handler.addFilter(logs.ContextFilter())
    if redacted:
        handler.addFilter(logs.RedactFilter())
    logger = logging.getLogger("test.malformed")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("signed in %s", "alice", "Arg-Secret-1")  # one argument too many
        logger.error("signed in %s with %s", "Arg-Secret-2")  # one too few
        logger.error("account %(id)s", {"name": "Arg-Secret-3"})  # a missing key
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    written, errors = stream.getvalue(), capsys.readouterr().err
    for secret in ("Arg-Secret-1", "Arg-Secret-2", "Arg-Secret-3"):
        assert secret not in written and secret not in errors
    assert "Logging error" not in errors
    lines = written.splitlines()
    assert len(lines) == 3
    for line, template in zip(lines, ("signed in %s", "signed in %s with %s", "account %(id)s"), strict=True):
        assert template in line and "malformed log call" in line


@pytest.mark.parametrize(
    "line",
    [
        "GET /api/messages/5 200 in 3 ms",
        "connecting to imaps://mail.example.com:993/INBOX",
        "sync of 'INBOX': 12 new, uidvalidity=1, monkey=3",
    ],
)
def test_the_redaction_keeps_ordinary_lines(line):
    assert logs.redact(line) == line


def test_log_format_must_be_json_or_text():
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logs.logging_config(log_format="xml", level="INFO")


# --- Request ids -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("abc-123_DEF.4:5", True),
        ("0f" * 64, True),  # 128 characters
        ("0f" * 64 + "0", False),  # 129
        ("has space", False),
        ("new\nline", False),
        ("<script>", False),
        ("", False),
    ],
)
def test_a_request_id_is_kept_only_when_safe(given, kept):
    result = request_id_from(given)
    assert (result == given) is kept
    if not kept:
        assert len(result) == 32 and int(result, 16) >= 0


@pytest.mark.django_db
def test_the_response_returns_the_request_id_given_or_made(api_client):
    given = api_client.get("/health/live", HTTP_X_REQUEST_ID="edge-42")
    assert given["X-Request-ID"] == "edge-42"
    bad = api_client.get("/health/live", HTTP_X_REQUEST_ID="x" * 500)
    assert len(bad["X-Request-ID"]) == 32
    made = api_client.get("/health/live")
    assert len(made["X-Request-ID"]) == 32 and made["X-Request-ID"] != bad["X-Request-ID"]


@pytest.mark.django_db
def test_the_access_line_names_route_status_tenant_and_user(client_a, tenant_a, user_a, captured):
    missing = uuid.uuid4()
    response = client_a.get(f"/api/messages/{missing}?q=secret-search", HTTP_X_REQUEST_ID="req-7")
    assert response.status_code == 404
    [line] = [entry for entry in captured.lines() if entry["logger"] == "emailclient.request"]
    assert line["request_id"] == "req-7"
    assert line["method"] == "GET" and line["status"] == 404
    assert line["path"] == f"/api/messages/{missing}"  # never the query string
    assert "<" in line["route"] and str(missing) not in line["route"]  # the pattern
    assert line["tenant"] == str(tenant_a.id) and line["user"] == str(user_a.pk)
    assert line["duration_ms"] >= 0
    assert "secret-search" not in captured.text()


@pytest.mark.django_db
def test_a_text_line_cannot_be_forged_through_the_path(api_client, captured):
    """The path is decoded: %0A is a newline in it, and in the access line's
    message. The text format escapes it; a traceback's lines are indented."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.TextFormatter())
    handler.addFilter(logs.ContextFilter())
    handler.addFilter(logs.RedactFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    forged = "2030-01-01 00:00:00,000 INFO emailclient.request GET /forged 200"
    try:
        response = api_client.get(f"/nowhere%0A{forged}%0D%1B[2J", HTTP_X_REQUEST_ID="req-forge")
        try:
            raise ValueError(f"bad\n{forged}")
        except ValueError:
            logging.getLogger("test.forge").exception("failed on\n%s", forged)
    finally:
        root.removeHandler(handler)
    assert response.status_code == 404
    lines = stream.getvalue().splitlines()
    starts = [line for line in lines if not line.startswith(" ")]
    assert starts and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", line) for line in starts)
    assert not any(line.startswith("2030-") for line in lines)
    assert "\x1b" not in stream.getvalue()
    [access] = [line for line in lines if " INFO emailclient.request GET /nowhere" in line]
    assert f"GET /nowhere\\n{forged}\\r\\x1b[2J 404 [request req-forge]" in access
    assert any(line.startswith("    ValueError: bad") for line in lines)


@pytest.mark.django_db
def test_the_access_lines_path_is_redacted(api_client, captured):
    """%3F is a '?' in the decoded path: a token there is no query string."""
    capture = Captured(redacted=True)
    root = logging.getLogger()
    root.addHandler(capture.handler)
    try:
        api_client.get("/api/files/x%3Ftoken%3Dpath-secret-1")
        api_client.get("/api/files/y;password=path-secret-2")
    finally:
        root.removeHandler(capture.handler)
    access = [line for line in capture.lines() if line["logger"] == "emailclient.request"]
    assert [line["path"] for line in access] == [
        f"/api/files/x?token={logs.REDACTED}",
        f"/api/files/y;password={logs.REDACTED}",
    ]
    assert "path-secret" not in capture.text()


@pytest.mark.django_db
def test_a_line_logged_inside_the_view_names_tenant_and_user(
    client_a, tenant_a, user_a, captured, monkeypatch
):
    from accounts import views as account_views

    real_list = account_views.account_list

    def logging_list(**kwargs):
        logging.getLogger("test.in_view").info("listing accounts")
        return real_list(**kwargs)

    monkeypatch.setattr(account_views, "account_list", logging_list)
    assert client_a.get("/api/accounts/", HTTP_X_REQUEST_ID="req-in-view").status_code == 200
    [line] = [entry for entry in captured.lines() if entry["logger"] == "test.in_view"]
    assert line["request_id"] == "req-in-view"
    assert line["tenant"] == str(tenant_a.id) and line["user"] == str(user_a.pk)
    assert logs.context_get("tenant") is None and logs.context_get("user") is None  # after the request


@pytest.mark.django_db(databases=["default", "admin"])
def test_a_line_logged_inside_an_admin_view_names_the_session_user(captured, monkeypatch):
    from django.test import Client

    from emailclient.core import admin_monitoring
    from emailclient.core.tests.factories import UserFactory

    real_tables = admin_monitoring.monitoring_tables

    def logging_tables():
        logging.getLogger("test.in_view").info("reading the monitoring tables")
        return real_tables()

    monkeypatch.setattr(admin_monitoring, "monitoring_tables", logging_tables)
    operator = UserFactory(username="operator", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(operator)
    assert client.get("/admin/monitoring/").status_code == 200
    [line] = [entry for entry in captured.lines() if entry["logger"] == "test.in_view"]
    assert line["user"] == str(operator.pk) and "tenant" not in line


JSON_WORKER = celery_worker.SCRIPT.replace(
    "from emailclient.celery import app\n",
    "import logging.config\n"
    "from emailclient.core.logs import logging_config\n"
    "logging.config.dictConfig(logging_config(log_format='json', level='INFO'))\n"
    "from emailclient.celery import app\n",
)


def test_the_request_id_reaches_the_task_a_request_queues(
    committed_db, client_a, tenant_a, user_a, tmp_path, monkeypatch
):
    tenant = tenant_a
    account = EmailAccountFactory(tenant=tenant_a, user=user_a, hostname="127.0.0.1", port=1)

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("celery")
    response = client_a.post(f"/api/sync/imap/{account.id}", HTTP_X_REQUEST_ID="trace-me-1")
    assert response.status_code in (200, 202), response.content
    [message] = [json.loads(raw) for raw in broker.lrange("celery", 0, -1)]
    assert message["headers"]["request_id"] == "trace-me-1"

    monkeypatch.setattr(celery_worker, "SCRIPT", JSON_WORKER)
    worker = CeleryWorker(tmp_path, "logs", {"SYNC_MAX_RETRIES": 0})
    try:
        worker.wait_ready()
        deadline = time.monotonic() + 30
        lines = []
        while time.monotonic() < deadline and not lines:
            lines = [
                entry
                for entry in (_json(line) for line in worker.log.read_text(errors="replace").splitlines())
                if entry and entry.get("task_name") == "mailboxes.tasks.sync_account"
            ]
            time.sleep(0.2)
    finally:
        worker.kill()
    assert lines, worker.output()
    assert {entry["request_id"] for entry in lines} == {"trace-me-1"}
    assert {entry["account"] for entry in lines} == {str(account.id)}
    assert {entry["tenant"] for entry in lines} == {str(tenant.id)}
    assert all(entry["task_id"] for entry in lines)


def _json(line: str):
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
