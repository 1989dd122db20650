"""Live servers, a real browser and committed data for the browser tests.

The servers are real processes on the suite's test database: `manage.py
runserver` with the development settings (what `make run` serves) and, for one
test, gunicorn with the production settings over static files that
`collectstatic` wrote into a temporary folder. The browser is Debian's
Chromium, driven by Playwright's sync API (Playwright cannot download its own
browsers here).

Playwright's sync API keeps an asyncio loop running on the main thread while it
is started, and Django refuses ORM calls there (SynchronousOnlyOperation). So
the data is written and committed in fixtures that run before the browser
starts, the browser lives for one test only and is gone before `committed_db`
empties the tables. (pytest-playwright's session-wide `playwright` fixture
would keep that loop running through every later database test: it is not
used.)
"""

import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher

from accounts.services import account_create, account_update
from compose.tests.factories import DraftFactory
from emailclient.core.services import tenant_create, tenant_member_add
from messages.tests.factories import FolderFactory, MessageFactory

CHROMIUM = os.environ.get("BROWSER_TESTS_CHROMIUM", "/usr/bin/chromium")
# The development server is opened as `make run` prints it, on 127.0.0.1; the
# production one under a name, as a deployment is (the browser maps the name
# to loopback, and Swagger UI, for one, treats a loopback URL differently).
# A request for any other host (a CDN, a validator) shows up in the request
# log and is aborted before it leaves the machine.
DEV_HOST = "127.0.0.1"
HOST = "emailclient.test"
SCREENSHOTS = Path(os.environ.get("BROWSER_TESTS_SCREENSHOTS", settings.BASE_DIR / "var" / "screenshots"))
PASSWORD = "browser-test-password"
# Requests a page makes for another host that its own Content-Security-Policy
# refuses, so that nothing leaves the browser: the known ones, each named.
# Any other request for another host fails the test, refused or not.
REFUSED_BY_THE_PAGE = {
    # ReDoc 2 always renders this logo, with no option against it;
    # emailclient/templates/drf_spectacular/redoc.html's policy refuses it.
    "https://cdn.redoc.ly/redoc/logo-mini.svg",
}
START_TIMEOUT = 60.0


# --- live servers --------------------------------------------------------------


@dataclass
class LiveServer:
    origin: str
    process: subprocess.Popen
    log: Path
    extra: dict = field(default_factory=dict)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_env(settings_module: str, host: str, **extra: str) -> dict:
    """The live server's environment: the suite's database and Redis (set by
    emailclient/settings/test.py) and its test-only secrets. Given explicitly,
    so that a developer's `.env` (read with overwrite=False) cannot point the
    server elsewhere."""
    env = dict(os.environ)
    for name in (
        "DATABASE_URL",
        "DATABASE_ADMIN_URL",
        "DATABASE_OWNER_URL",
        "REDIS_URL",
        "DJANGO_SECRET_KEY",
        "JWT_SIGNING_KEY",
        "CREDENTIAL_ENCRYPTION_KEYS",
    ):
        env[name] = os.environ[name]
    env.update(
        DJANGO_SETTINGS_MODULE=settings_module,
        ALLOWED_HOSTS=host,
        CACHE_KEY_PREFIX=settings.CACHES["default"]["KEY_PREFIX"],
        BLOB_STORAGE_DIR=str(settings.BLOB_STORAGE_DIR),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def _start(
    command: list[str], env: dict, host: str, port: int, log: Path, tls_ca: Path | None = None
) -> LiveServer:
    scheme = "https" if tls_ca else "http"
    with log.open("wb") as out:
        # Its own session: stopping it stops runserver's or gunicorn's children too.
        process = subprocess.Popen(
            command,
            cwd=settings.BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LiveServer(origin=f"{scheme}://{host}:{port}", process=process, log=log)
    context = ssl.create_default_context(cafile=str(tls_ca)) if tls_ca else None
    health = f"{scheme}://127.0.0.1:{port}/health"
    request = urllib.request.Request(health, headers={"Host": f"{host}:{port}"})  # noqa: S310
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{command[:3]} exited with {process.returncode}:\n{server.output()}")
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:  # noqa: S310
                if response.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            _stop(server)
            raise RuntimeError(f"{command[:3]} did not answer in {START_TIMEOUT:.0f} s:\n{server.output()}")
        time.sleep(0.2)


def _stop(server: LiveServer) -> None:
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()


@pytest.fixture(scope="session")
def dev_server(django_db_setup, tmp_path_factory):
    """`manage.py runserver` with the development settings, as `make run`
    starts it (no reloader: one process to stop)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("dev-server") / "server.log"
    server = _start(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        _server_env("emailclient.settings.local", DEV_HOST, DEBUG="true"),
        DEV_HOST,
        port,
        log,
    )
    yield server
    _stop(server)


def _self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for HOST and 127.0.0.1, its own CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(tz=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(HOST), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="session")
def production_server(django_db_setup, tmp_path_factory):
    """gunicorn with the production settings, as deploy/entrypoint.sh runs it,
    over the output of `collectstatic` in a temporary STATIC_ROOT. Production
    insists on HTTPS (redirect, secure cookies, HSTS); gunicorn speaks TLS
    itself here with a throwaway certificate, where a deployment has its TLS
    proxy, so the browser sees what it sees behind one."""
    folder = tmp_path_factory.mktemp("production-server")
    static_root = folder / "static"
    env = _server_env("emailclient.settings.production", HOST, STATIC_ROOT=str(static_root))
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=settings.BASE_DIR,
        env=env,
        check=True,
    )
    cert, key = _self_signed_certificate(folder)
    port = _free_port()
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    server = _start(
        [
            gunicorn,
            "--config",
            "deploy/gunicorn.conf.py",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--no-control-socket",
            "--certfile",
            str(cert),
            "--keyfile",
            str(key),
            "emailclient.wsgi:application",
        ],
        env,
        HOST,
        port,
        folder / "server.log",
        tls_ca=cert,
    )
    server.extra["static_root"] = static_root
    yield server
    _stop(server)


# --- committed data ------------------------------------------------------------


@dataclass
class Site:
    tenant: object
    other_tenant: object
    member: object
    operator: object
    account: object
    other_account: object
    message: object
    other_message: object


def _user(username: str, **fields):
    """A user whose password the live server can check: it knows Django's
    default hashers, which the suite's fast MD5 is not one of. Few iterations
    here; the server upgrades the hash when the user logs in."""
    hasher = PBKDF2PasswordHasher()
    password = hasher.encode(PASSWORD, hasher.salt(), iterations=1000)
    return get_user_model().objects.create(username=username, password=password, **fields)


def _account(*, tenant, user, address: str):
    data = {
        "account_name": address.split("@")[0].title(),
        "email_address": address,
        "protocol": "imap",
        "hostname": "imap.example.com",
        "encryption": "tls",
        "password": "mail-password",
    }
    return account_create(tenant=tenant, user=user, data=data, ip_address="192.0.2.10")


@pytest.fixture
def site(committed_db) -> Site:
    """Two tenants with a member, an account, a message and audit rows each,
    made through the services and committed for the live server to read; and
    an operator (a Django superuser, as `seeddemo` makes `admin`)."""
    tenant = tenant_create(slug="acme", name="Acme Mail")
    other_tenant = tenant_create(slug="globex", name="Globex")
    member = _user("rita")
    other_member = _user("gus")
    operator = _user("operator", is_staff=True, is_superuser=True)
    tenant_member_add(tenant=tenant, user=member, role="member")
    tenant_member_add(tenant=other_tenant, user=other_member, role="member")
    account = _account(tenant=tenant, user=member, address="rita@acme.example")
    account_update(account=account, actor=operator, data={"account_name": "Rita at Acme"})
    other_account = _account(tenant=other_tenant, user=other_member, address="gus@globex.example")
    message = MessageFactory(
        folder=FolderFactory(account=account, name="INBOX", type="inbox"),
        subject="Quarterly figures for Acme",
    )
    other_message = MessageFactory(
        folder=FolderFactory(account=other_account, name="INBOX", type="inbox"),
        subject="Globex board minutes",
    )
    DraftFactory(account=account, subject="Proposal for Acme")
    DraftFactory(account=other_account, subject="Globex merger memo")
    return Site(tenant, other_tenant, member, operator, account, other_account, message, other_message)


# --- the browser ---------------------------------------------------------------


@pytest.fixture
def browser(site):
    """Chromium for one test. Depends on `site` so that the data is committed
    before Playwright's loop starts (see the module's docstring)."""
    from playwright.sync_api import expect, sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"No Chromium at {CHROMIUM}: scripts/ensure-services.sh installs Debian's `chromium`.")
    # Generous on a loaded 2-core machine; a passing page takes well under it.
    expect.set_options(timeout=15_000)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            # Only HOST resolves (to loopback) and DEV_HOST is itself; any
            # other name fails at once.
            args=[f"--host-resolver-rules=MAP {HOST} 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE {DEV_HOST}"],
        )
        yield chromium
        chromium.close()


class Visit:
    """One browser tab on one live server that records every request and
    every error: a request to another origin (aborted before it leaves, if the
    page's policy did not refuse it already), a response >= 400, a failed
    request, a console error, an uncaught exception. `check()` fails on any of
    them but the named REFUSED_BY_THE_PAGE; `shot()` saves a screenshot."""

    def __init__(self, browser, server: LiveServer, name: str, tls: bool = False):
        self.server = server
        self.origin = server.origin
        self.name = name
        self.context = browser.new_context(ignore_https_errors=tls, viewport={"width": 1280, "height": 900})
        self.context.set_default_timeout(15_000)
        self.context.route(lambda url: not self.same_origin(url), lambda route: route.abort())
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.foreign: dict[str, str | None] = {}  # URL: how it failed
        self.problems: list[str] = []
        self.page.on("request", self._on_request)
        self.page.on("response", self._on_response)
        self.page.on("requestfailed", self._on_failed)
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))

    def same_origin(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about"):  # made in the page, nothing fetched
            return True
        return f"{parts.scheme}://{parts.netloc}" == self.origin

    def _on_request(self, request) -> None:
        self.requests.append(request.url)
        if not self.same_origin(request.url):
            self.foreign[request.url] = None

    def _on_response(self, response) -> None:
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.request.method} {response.url}")

    def _on_failed(self, request) -> None:
        if self.same_origin(request.url):
            # Leaving a page aborts what it was still loading (an icon the
            # test clicked past): the browser's doing, not the server's. A
            # server that fails answers with a status (`_on_response`) or
            # drops the connection (another net:: error), both still problems.
            if request.failure != "net::ERR_ABORTED":
                self.problems.append(f"failed: {request.url} ({request.failure})")
        else:
            self.foreign[request.url] = request.failure

    def _on_console(self, message) -> None:
        if message.type == "error":
            self.problems.append(f"console error: {message.text} at {message.location}")

    def goto(self, path: str):
        """Open `path` and wait for its load event: by then its scripts and
        stylesheets came (from this origin) or failed (from another)."""
        response = self.page.goto(self.origin + path)
        status = response and response.status
        assert status == 200, f"{path}: HTTP {status}; the server's log ends:\n{self.server.output()[-3000:]}"
        foreign = self.foreign_requests()
        assert not foreign, "\n".join(foreign)
        return self.page

    def shot(self, label: str, full_page: bool = True) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{self.name}-{label}.png"
        self.page.screenshot(path=path, full_page=full_page)
        return path

    def refused_by_the_page(self, url: str) -> bool:
        return url in REFUSED_BY_THE_PAGE and self.foreign.get(url) in ("csp", "net::ERR_BLOCKED_BY_CSP")

    def foreign_requests(self) -> list[str]:
        return [
            f"request to another origin: {url} ({failure or 'aborted by the test'})"
            for url, failure in self.foreign.items()
            if not self.refused_by_the_page(url)
        ]

    def check(self) -> None:
        """Nothing left the origin and nothing failed, so far."""
        self.page.wait_for_load_state("networkidle")  # late requests too
        assert self.requests, "the page made no request at all"
        problems = self.foreign_requests() + [
            problem
            for problem in self.problems
            # The browser's report of a refusal names the refused URL.
            if not any(url in problem and self.refused_by_the_page(url) for url in self.foreign)
        ]
        assert not problems, "\n".join(problems)


@pytest.fixture
def visit(browser, request):
    """`visit(server)` opens a recording tab on `server`."""
    visits = []

    def open_visit(server: LiveServer, tls: bool = False) -> Visit:
        name = request.node.name.removeprefix("test_")
        visits.append(Visit(browser, server, name, tls=tls))
        return visits[-1]

    yield open_visit
    for each in visits:
        each.context.close()
