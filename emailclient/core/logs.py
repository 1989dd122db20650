"""Structured logs: the request's and the task's context on every record, one
JSON object a line (production), and a last-resort redaction of secrets.

Standard library only, so that the settings can name these classes without
importing Django. `LOGGING` (settings/base.py) puts `ContextFilter` and
`RedactFilter` on the handler, not on a logger: a logger's filters see only
the records made on that logger, a handler's see every record it writes.

The context lives in contextvars (`emailclient.core.requestid` sets them for
a request, and for a task from its message headers), so threads of a gthread
worker and the tasks of a Celery process never see each other's.
"""

import contextvars
import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

# Names of the fields every record carries (None when not known), in the
# order the JSON lines print them after time, level, logger and message.
CONTEXT_FIELDS = ("request_id", "tenant", "user", "task_name", "task_id", "account")
_context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"log_{name}", default=None) for name in CONTEXT_FIELDS
}

# What a request's or a task's log line may add through `extra=`.
EXTRA_FIELDS = ("method", "path", "route", "status", "duration_ms")

# A request's tenant and user are known only once it is authenticated: by the
# tenant middleware before the view, by DRF or the session inside it. The
# request sets a reader of them, asked when a record is made while they are
# unset, so that every line after the authentication names them.
_reader: contextvars.ContextVar[Callable[[], dict[str, str | None]] | None] = contextvars.ContextVar(
    "log_reader", default=None
)


def context_set(**values: Any) -> dict[str, contextvars.Token[str | None]]:
    """Set context fields (None clears one); returns the tokens for `context_reset`."""
    tokens = {}
    for name, value in values.items():
        tokens[name] = _context[name].set(None if value is None else str(value))
    return tokens


def context_reset(tokens: dict[str, contextvars.Token[str | None]]) -> None:
    for name, token in tokens.items():
        try:
            _context[name].reset(token)
        except ValueError:  # set in another context (a signal on another thread): clear it
            _context[name].set(None)


def context_get(name: str) -> str | None:
    return _context[name].get()


def context_reader_set(
    reader: Callable[[], dict[str, str | None]],
) -> contextvars.Token[Callable[[], dict[str, str | None]] | None]:
    """Set the reader of fields known later (a request's tenant and user)."""
    return _reader.set(reader)


def context_reader_reset(token: contextvars.Token[Callable[[], dict[str, str | None]] | None]) -> None:
    try:
        _reader.reset(token)
    except ValueError:  # set in another context: clear it
        _reader.set(None)


class ContextFilter(logging.Filter):
    """Adds the current request's or task's fields to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        read: dict[str, str | None] | None = None
        for name, var in _context.items():
            if getattr(record, name, None) is None:
                value = var.get()
                reader = _reader.get()
                if value is None and reader is not None:
                    read = reader() if read is None else read
                    value = read.get(name)
                setattr(record, name, value)
        return True


# --- Redaction ------------------------------------------------------------------
# A safety net, not the policy: the code never logs a secret on purpose (the
# test in core/tests/test_logs.py runs real flows and greps for them). These
# catch what a library or a careless message might still put in a line.
REDACTED = "[redacted]"
# A key whose value is a secret: one of these words anywhere in its name
# (`smtp_password`, `refresh_token`, `HTTP_COOKIE`), or any `*_key` /
# `*-keys` (`secret_key`, `CREDENTIAL_ENCRYPTION_KEYS`).
_SENSITIVE_NAMES = (
    r"(?:[\w-]*(?:password|passwd|pwd|passphrase|secret|token|refresh"
    r"|api[_-]?key|sessionid|csrftoken|cookie|signature)[\w-]*|[\w-]+[_-]keys?)"
)
# A value: quoted whole (spaces, escaped quotes and a bytes prefix included;
# an unclosed quote to the end of the line), else up to a separator.
_VALUE = r"""(?:b?(['"])(?:\\.|(?!\2)[^\n])*\2?|[^\s&;,'"})]+)"""
# No `\b` before a header's name: `HTTP_AUTHORIZATION` has none after its `_`.
_NAME_START = r"(?<![A-Za-z0-9])"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Bearer xxx / Basic xxx, in a header dump or a repr.
    (
        re.compile(
            rf"(?i){_NAME_START}(authorization|proxy-authorization)(['\"]?\s*[:=]\s*['\"]?)(\w+\s+)?[^\s'\",}}]+"
        ),
        r"\1\2\3" + REDACTED,
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + REDACTED),
    # Cookie headers carry session ids whole.
    (re.compile(rf"(?i){_NAME_START}((?:set-)?cookie['\"]?\s*[:=]\s*['\"]?)[^\n'\"]+"), r"\1" + REDACTED),
    # JSON Web Tokens, wherever they are: three base64url parts, the first a header.
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), REDACTED),
    # A URL's user information: scheme://user:password@host.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/:]*:)[^\s/]*@"), r"\1" + REDACTED + "@"),
    # key=value and "key": "value" (query strings, form bodies, reprs, JSON).
    (
        re.compile(rf"(?i)(?<![\w-])(['\"]?{_SENSITIVE_NAMES}['\"]?\s*[=:]\s*){_VALUE}"),
        r"\1\2" + REDACTED + r"\2",
    ),
    # IMAP LOGIN user password / AUTHENTICATE PLAIN <base64>.
    (re.compile(r"(?i)\b(LOGIN\s+\S+\s+)\S+"), r"\1" + REDACTED),
    (re.compile(r"(?i)\b(AUTH(?:ENTICATE)?\s+(?:PLAIN|LOGIN|XOAUTH2)\s+)\S+"), r"\1" + REDACTED),
)


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


MALFORMED_NOTE = " [malformed log call: its arguments are not shown]"


def message_of(record: logging.LogRecord) -> str:
    """The record's message. A call whose arguments do not fit its template
    (one too many or too few, a missing key) becomes the template with a
    note, its arguments dropped: the standard handler's report of that error
    prints them to stderr, and they may be anything the caller held."""
    try:
        return record.getMessage()
    except Exception:
        record.msg, record.args = f"{record.msg}{MALFORMED_NOTE}", None
        return record.msg


class RedactFilter(logging.Filter):
    """Replaces a record's message (and its exception text) by their redacted
    forms. The arguments are merged into the message first, so that a secret
    passed as `%s` argument is seen."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(message_of(record)), None
        for name in EXTRA_FIELDS:  # the path: a decoded %3F puts a query string in it
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, redact(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601, milliseconds), level,
    logger, message, the context fields that are set, the request fields of
    an access line, and the exception's traceback as `exc_info`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message_of(record),
        }
        for name in (*CONTEXT_FIELDS, *EXTRA_FIELDS):
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = record.stack_info
        return json.dumps(entry, default=str, ensure_ascii=False)


# What could end a line or drive a terminal: C0 and C1 controls (a tab
# aside), DEL and Unicode's line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(text: str) -> str:
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


class TextFormatter(logging.Formatter):
    """Development's one line: time, level, logger, the message and the
    request id when there is one. The message's control characters are
    escaped (a path's decoded %0A would start a forged line); a traceback
    follows on lines of its own, indented, so that every line at the margin
    is a record's."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = message_of(record)
        record.asctime = self.formatTime(record, self.datefmt)
        line = _escaped(self.formatMessage(record))
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            line = f"{line} [request {_escaped(str(request_id))}]"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for text in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if text:
                line += "".join(f"\n    {_escaped(part)}" for part in text.split("\n"))
        return line


def logging_config(*, log_format: str, level: str) -> dict[str, Any]:
    """The service's LOGGING: one console handler in `log_format` ("json" or
    "text") with the context and redaction filters."""
    if log_format not in ("json", "text"):
        raise ValueError(f"LOG_FORMAT must be 'json' or 'text', not {log_format!r}")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": "emailclient.core.logs.ContextFilter"},
            "redact": {"()": "emailclient.core.logs.RedactFilter"},
        },
        "formatters": {
            "text": {"()": "emailclient.core.logs.TextFormatter"},
            "json": {"()": "emailclient.core.logs.JsonFormatter"},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": log_format,
                "filters": ["context", "redact"],
            }
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # imaplib's debug log carries whole server responses (message bodies).
            "imapclient": {"level": "INFO"},
            "imapclient.imaplib": {"level": "WARNING"},
            # Every statement with its parameters (under DEBUG=True only).
            "django.db.backends": {"level": "INFO"},
        },
    }
