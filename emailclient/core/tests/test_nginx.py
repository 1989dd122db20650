"""deploy/nginx for real: Debian's nginx runs the stack's very configuration
(deploy/nginx_prefix.py renders the template as the nginx image does) on
loopback high ports in front of a real gunicorn (deploy/gunicorn.conf.py,
emailclient.wsgi, test settings on this suite's database and Redis), and the
seeds' limits answer 429 where they should and nowhere else.

Each test speaks from its own loopback source address (127.0.0.x), since
nginx counts per client address and the tests share one nginx.

Skipped only where nginx is not installed; .ci/run installs it.
"""

import concurrent.futures
import http.client
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from importlib import util
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(settings.BASE_DIR)
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)")
PROXY_LIMITED = '"source":"proxy"'


def _prefix_module():
    spec = util.spec_from_file_location("nginx_prefix", ROOT / "deploy" / "nginx_prefix.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited {process.returncode}: {log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"port {port} never opened: {log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def stack(django_db_setup, tmp_path_factory):
    """gunicorn and nginx in front of it; yields the ports and the CA file."""
    work = tmp_path_factory.mktemp("nginx")
    web_port, http_port, https_port = _free_port(), _free_port(), _free_port()
    # The test settings with production's proxy and HSTS settings
    # (emailclient/settings/production.py), so that Django sees HTTPS through
    # X-Forwarded-Proto and adds the headers it adds in production.
    (work / "nginx_test_settings.py").write_text(
        "from emailclient.settings.test import *  # noqa: F403\n"
        'SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")\n'
        "SECURE_HSTS_SECONDS = 60 * 60 * 24 * 30\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "nginx_test_settings",
        "PYTHONPATH": os.pathsep.join([str(work), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "TEST_DATABASE_NAME": settings.DATABASES["default"]["NAME"],
        "TEST_REDIS_URL": settings.CACHES["default"]["LOCATION"],
        "TRUSTED_PROXY_HOPS": "1",
        "WEB_CONCURRENCY": "2",
    }
    web_log = work / "gunicorn.log"
    web = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "--config", str(ROOT / "deploy" / "gunicorn.conf.py"),
            "--bind", f"127.0.0.1:{web_port}", "--no-control-socket", "emailclient.wsgi:application",
        ],
        cwd=ROOT, env=env, stdout=web_log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    nginx = None
    try:
        _wait_port(web_port, web, web_log)
        command = _prefix_module().build(
            work / "prefix", upstream=f"127.0.0.1:{web_port}", http_port=http_port, https_port=https_port
        )
        nginx_log = work / "nginx.log"
        check = subprocess.run([*command, "-t"], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr
        nginx = subprocess.Popen(command, stdout=nginx_log.open("wb"), stderr=subprocess.STDOUT)
        _wait_port(https_port, nginx, nginx_log)
        yield {
            "http": http_port,
            "https": https_port,
            "ca": str(work / "prefix" / "certs" / "fullchain.pem"),
            "web_log": web_log,
        }
    finally:
        if nginx is not None:
            _stop(nginx)
        _stop(web)


def _tls(stack, **options) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=stack["ca"])
    for name, value in options.items():
        setattr(context, name, value)
    return context


def _request(
    stack, method, path, *, source="127.0.0.1", body=None, headers=None, scheme="https", context=None
):
    """One request on a fresh connection from `source`: (status, headers, body)."""
    if scheme == "https":
        context = context or _tls(stack)
        conn = http.client.HTTPSConnection(
            "127.0.0.1", stack["https"], context=context, timeout=30, source_address=(source, 0)
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", stack["http"], timeout=30, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _connection(stack, source):
    return http.client.HTTPSConnection(
        "127.0.0.1", stack["https"], context=_tls(stack), timeout=30, source_address=(source, 0)
    )


def _burst(stack, method, path, count, *, source, threads=8, body=None):
    """`count` requests from `source` as fast as `threads` keep-alive
    connections go: the statuses in order of sending (per connection), the
    number refused by nginx, and the seconds it took."""

    def connection_run(n):
        conn = _connection(stack, source)
        out = []
        try:
            for _ in range(n):
                conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                out.append((response.status, response.status == 429 and PROXY_LIMITED in data.decode()))
        finally:
            conn.close()
        return out

    shares = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        results = [r for part in pool.map(connection_run, shares) for r in part]
    return [s for s, _ in results], sum(1 for _, p in results if p), time.monotonic() - started


def test_health_is_never_throttled(stack):
    statuses, refused, _ = _burst(stack, "GET", "/health", 400, source="127.0.0.2")

    assert refused == 0
    assert set(statuses) == {200}
    status, _, body = _request(stack, "GET", "/health", scheme="http", source="127.0.0.2")
    assert status == 200  # plain HTTP /health too, for probes without TLS
    assert json.loads(body)["status"] == "healthy"


def test_the_api_limit_answers_429_past_100_a_second_and_its_burst(stack):
    statuses, refused, seconds = _burst(stack, "GET", "/api/messages/", 800, source="127.0.0.3", threads=16)

    passed = len(statuses) - refused
    assert refused > 0, f"no 429 in {seconds:.2f} s"
    # 1 + a burst of 200 at once, then 100 a second (and a little slack for
    # the clock between nginx and here).
    assert 201 <= passed <= 201 + 100 * seconds + 10, (passed, seconds)
    assert set(statuses) - {429} == {401}  # what passed reached the service: no token
    status, headers, body = _request(stack, "GET", "/api/messages/", source="127.0.0.3")
    if status == 429:  # still refused: the proxy's JSON, when to come back, the security headers
        assert json.loads(body)["error"] == "rate_limited"
        assert headers["Retry-After"] == "1"
        assert "max-age=63072000" in headers["Strict-Transport-Security"]


def test_logins_are_limited_to_5_a_minute_with_a_burst_of_5(stack):
    body = json.dumps({"username": "nobody", "password": "wrong"})

    statuses, refused, seconds = _burst(
        stack, "POST", "/api/auth/token/", 12, source="127.0.0.4", threads=1, body=body
    )  # one at a time: the order is the arrival

    # 1 + the burst of 5 reach the service (and one more each 12 s it took).
    assert 6 <= 12 - refused <= 6 + int(seconds / 12), (refused, seconds)
    assert all(s in (400, 401, 429) for s in statuses[:6])  # the service's own answers
    # Another address is not affected.
    assert _request(stack, "POST", "/api/auth/token/", source="127.0.0.5", body=body)[0] != 429


def test_sends_are_limited_to_50_a_minute_with_a_burst_of_10(stack):
    path = "/api/compose/00000000-0000-0000-0000-000000000001/send"

    statuses, refused, seconds = _burst(stack, "POST", path, 30, source="127.0.0.6", threads=1)

    # 1 + the burst of 10 reach the service (and one more each 1.2 s it took).
    assert 11 <= 30 - refused <= 11 + int(seconds / 1.2), (refused, seconds)
    assert set(statuses[:11]) == {401}
    # The other forms of a send count in the same zone; a draft does not.
    assert _request(stack, "POST", "/api/compose/send", source="127.0.0.6")[0] == 429
    assert _request(stack, "POST", "/api/compose/draft", source="127.0.0.6")[0] == 401


def test_plain_http_redirects_to_https_on_its_published_port(stack):
    """Here nginx's ports are what clients use (compose may publish HTTPS on
    another port than 443: PUBLIC_HTTPS_PORT); the redirect keeps it."""
    status, headers, _ = _request(stack, "GET", "/api/messages/?page=2", scheme="http", source="127.0.0.7")

    assert status == 301
    assert headers["Location"] == f"https://127.0.0.1:{stack['https']}/api/messages/?page=2"


def test_the_redirect_names_no_port_when_https_is_published_on_443(tmp_path):
    http_port = _free_port()
    command = _prefix_module().build(
        tmp_path / "prefix",
        upstream="127.0.0.1:9",  # never reached: port 80 only redirects
        http_port=http_port,
        https_port=_free_port(),
        public_http_port=80,
        public_https_port=443,
    )
    log = tmp_path / "nginx.log"
    nginx = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        _wait_port(http_port, nginx, log)

        status, headers, _ = _request({"http": http_port}, "GET", "/api/messages/?page=2", scheme="http")
    finally:
        _stop(nginx)

    assert status == 301
    assert headers["Location"] == "https://127.0.0.1/api/messages/?page=2"


class _OneNameDns:
    """A DNS server on loopback that answers every A question with one
    address, which the test changes: Docker's DNS naming `web` before and
    after the container is recreated."""

    def __init__(self, address: str):
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                query, client = self.sock.recvfrom(512)
            except OSError:  # closed
                return
            end = query.index(b"\0", 12) + 5  # the question: name, type, class
            is_a = query[end - 4 : end - 2] == b"\0\1"
            header = query[:2] + b"\x81\x80" + b"\0\1" + (b"\0\1" if is_a else b"\0\0") + b"\0\0\0\0"
            answer = b"\xc0\x0c\0\1\0\1\0\0\0\1\0\4" + socket.inet_aton(self.address) if is_a else b""
            self.sock.sendto(header + query[12:end] + answer, client)

    def close(self) -> None:
        self.sock.close()


def _backend(address: str, port: int, name: bytes) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(name)))
            self.end_headers()
            self.wfile.write(name)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((address, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_web_container_recreated_at_a_new_address_is_reached_without_restarting_nginx(tmp_path):
    """compose names gunicorn `web`; recreating the container (a new image,
    a scale change) gives it a new address. nginx asks the DNS again once an
    answer is NGINX_RESOLVER_VALID old, so it follows; an upstream{} block
    looked the name up once, at start."""
    port, http_port = _free_port(), _free_port()
    old, new = _backend("127.0.0.1", port, b"old web"), _backend("127.0.0.2", port, b"new web")
    dns = _OneNameDns("127.0.0.1")
    command = _prefix_module().build(
        tmp_path / "prefix",
        upstream=f"web.stack.test:{port}",
        resolver=f"127.0.0.1:{dns.port}",
        resolver_valid="1s",
        http_port=http_port,
        https_port=_free_port(),
    )
    log = tmp_path / "nginx.log"
    nginx = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        _wait_port(http_port, nginx, log)
        before = _request({"http": http_port}, "GET", "/health", scheme="http")

        dns.address = "127.0.0.2"
        time.sleep(1.5)
        after = _request({"http": http_port}, "GET", "/health", scheme="http")
    finally:
        _stop(nginx)
        dns.close()
        old.shutdown()
        new.shutdown()

    assert (before[0], before[2]) == (200, b"old web")
    assert (after[0], after[2]) == (200, b"new web")


def test_the_service_builds_its_links_with_the_published_port(stack, committed_db):
    """The Host nginx passes on carries the port the client used, so the
    API's absolute links (and Django's CSRF origin check) name that address,
    not one on 443."""
    from rest_framework_simplejwt.tokens import RefreshToken

    from accounts.tests.factories import EmailAccountFactory
    from emailclient.core.tests.factories import MembershipFactory, TenantFactory, UserFactory

    tenant = TenantFactory(slug="nginx-port")
    user = UserFactory(username="nginx-port-user")
    MembershipFactory(tenant=tenant, user=user, role="member")
    EmailAccountFactory.create_batch(2, tenant=tenant, user=user)
    headers = {
        "Authorization": f"Bearer {RefreshToken.for_user(user).access_token}",
        "X-Tenant-ID": "nginx-port",
    }

    status, _, data = _request(
        stack, "GET", "/api/accounts/?page_size=1", headers=headers, source="127.0.0.12"
    )

    assert status == 200, data
    assert json.loads(data)["next"].startswith(f"https://127.0.0.1:{stack['https']}/api/accounts/?")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_1_2_and_1_3_only_security_headers_and_gzip(stack):
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = _tls(stack, minimum_version=version, maximum_version=version)
        assert _request(stack, "GET", "/health", context=context, source="127.0.0.8")[0] == 200
    # A client that would speak TLS 1.0/1.1 (OpenSSL's security level 0
    # allows them here): the server refuses.
    old = _tls(stack)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError, match=r"(?i)protocol|version"):
        _request(stack, "GET", "/health", context=old, source="127.0.0.8")

    status, headers, _ = _request(
        stack, "GET", "/api/schema", headers={"Accept-Encoding": "gzip"}, source="127.0.0.8"
    )

    assert status == 200, headers
    assert headers["Content-Encoding"] == "gzip", headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Strict-Transport-Security"].startswith("max-age=63072000")
    assert "Server" not in headers or headers["Server"] == "nginx"  # no version


def test_each_security_header_once_on_an_api_answer(stack):
    """Django sets HSTS, nosniff, X-Frame-Options and Referrer-Policy too;
    nginx hides the upstream's, so a client sees nginx's, once each."""
    conn = _connection(stack, "127.0.0.11")
    try:
        conn.request("GET", "/api/messages/")
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    headers = response.getheaders()
    names = [name.lower() for name, _ in headers]

    assert response.status == 401  # Django's answer, passed through
    for name in (
        "strict-transport-security",
        "x-content-type-options",
        "x-frame-options",
        "referrer-policy",
        "content-security-policy",
    ):
        assert names.count(name) == 1, (name, headers)
    assert response.getheader("Strict-Transport-Security") == "max-age=63072000; includeSubDomains"


def test_the_body_limit_is_the_upload_limit_plus_framing(stack):
    """25 MiB of attachment and its multipart framing pass; 27 MiB does not."""
    path = "/api/compose/00000000-0000-0000-0000-000000000002/attachments"
    boundary = "b0undary"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = part + b"\0" * settings.COMPOSE_MAX_MESSAGE_BYTES + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    assert _request(stack, "POST", path, body=body, headers=headers, source="127.0.0.9")[0] == 401
    too_big = b"\0" * (27 * 1024 * 1024)
    assert _request(stack, "POST", path, body=too_big, headers=headers, source="127.0.0.9")[0] == 413


def test_the_service_sees_the_address_nginx_saw_not_one_a_client_wrote(stack, committed_db):
    """nginx appends the peer to X-Forwarded-For; with TRUSTED_PROXY_HOPS=1
    the service reads that entry, never what the client wrote before it
    (the audit entry of an account created through nginx records it)."""
    from rest_framework_simplejwt.tokens import RefreshToken

    from emailclient.core.models import AuditLog
    from emailclient.core.tenancy import tenant_scope
    from emailclient.core.tests.factories import MembershipFactory, TenantFactory, UserFactory

    tenant = TenantFactory(slug="nginx-xff")
    user = UserFactory(username="nginx-xff-user")
    MembershipFactory(tenant=tenant, user=user, role="member")
    token = str(RefreshToken.for_user(user).access_token)
    account = {
        "account_name": "Work",
        "email_address": "xff@example.com",
        "protocol": "imap",
        "hostname": "imap.example.com",
        "password": "pw",
    }
    headers = {
        "Authorization": f"Bearer {token}",
        "X-Tenant-ID": "nginx-xff",
        "Content-Type": "application/json",
        "X-Forwarded-For": "203.0.113.66",
    }

    status, _, data = _request(
        stack, "POST", "/api/accounts/", body=json.dumps(account), headers=headers, source="127.0.0.10"
    )

    assert status == 201, data
    with tenant_scope(tenant.id):
        entry = AuditLog.objects.get(action="account.create")
    assert entry.ip_address == "127.0.0.10"
