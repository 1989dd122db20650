"""The client's address behind trusted proxies: one function for the
throttles and the audit log; spoofed and garbage X-Forwarded-For headers."""

import pytest
from django.test import RequestFactory

from emailclient.core.clientaddr import client_address, client_network_key, client_throttle_key
from emailclient.core.models import AuditLog
from emailclient.core.tenancy import tenant_scope

PROXY = "10.0.0.5"


def request(remote=PROXY, xff=None):
    extra = {"REMOTE_ADDR": remote}
    if xff is not None:
        extra["HTTP_X_FORWARDED_FOR"] = xff
    return RequestFactory().get("/", **extra)


def test_no_trusted_proxy_reads_remote_addr_and_ignores_the_header(settings):
    settings.TRUSTED_PROXY_HOPS = 0
    assert client_address(request("192.0.2.7")) == "192.0.2.7"
    assert client_address(request("192.0.2.7", xff="198.51.100.1")) == "192.0.2.7"  # spoofed


@pytest.mark.parametrize(
    ("xff", "expected"),
    [
        ("198.51.100.1", "198.51.100.1"),  # the proxy's own entry
        ("6.6.6.6, 198.51.100.1", "198.51.100.1"),  # what the client wrote is left of it
        ("6.6.6.6,7.7.7.7,198.51.100.1", "198.51.100.1"),
        (" 198.51.100.1 ", "198.51.100.1"),
        ("198.51.100.1:52011", "198.51.100.1"),  # a proxy that adds the port
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("2001:DB8:0::1", "2001:db8::1"),
        ("::ffff:198.51.100.1", "198.51.100.1"),
        ("fe80::1%eth0", "fe80::1"),
    ],
)
def test_one_trusted_proxy_reads_its_entry(settings, xff, expected):
    settings.TRUSTED_PROXY_HOPS = 1
    assert client_address(request(xff=xff)) == expected


def test_two_trusted_proxies_read_the_outer_ones_entry(settings):
    settings.TRUSTED_PROXY_HOPS = 2
    # client-written, then the CDN's entry (the client), then the inner proxy's (the CDN).
    assert client_address(request(xff="6.6.6.6, 198.51.100.1, 203.0.113.9")) == "198.51.100.1"
    # In past the CDN: the inner proxy's only entry is the client.
    assert client_address(request(xff="198.51.100.1")) == "198.51.100.1"


@pytest.mark.parametrize(
    "xff",
    ["", ",", " , ,", "garbage", "unknown", "1.2.3.4, garbage", "1.2.3.999", "\x00\xff", "[::1", "a" * 20000],
)
def test_garbage_headers_are_never_an_error(settings, xff):
    settings.TRUSTED_PROXY_HOPS = 1
    address = client_address(request(xff=xff))
    # An empty header is none (the peer); a garbage entry of the proxy's is no address.
    assert address in {PROXY, None}
    assert client_throttle_key(request(xff=xff)) in {PROXY, "unknown"}


def test_a_long_header_keeps_its_trusted_end(settings):
    settings.TRUSTED_PROXY_HOPS = 1
    assert client_address(request(xff="6.6.6.6, " * 5000 + "198.51.100.1")) == "198.51.100.1"


def test_no_header_behind_a_proxy_is_the_peer(settings):
    settings.TRUSTED_PROXY_HOPS = 1
    assert client_address(request("192.0.2.7")) == "192.0.2.7"


def test_no_usable_remote_addr_is_none(settings):
    settings.TRUSTED_PROXY_HOPS = 0
    assert client_address(request("")) is None  # gunicorn on a unix socket
    assert client_address(request("garbage")) is None
    assert client_throttle_key(request("")) == "unknown"


def test_ipv6_clients_are_throttled_by_their_64(settings):
    settings.TRUSTED_PROXY_HOPS = 0
    assert client_throttle_key(request("2001:db8:1:2:aaaa::1")) == "2001:db8:1:2::"
    assert client_throttle_key(request("2001:db8:1:2:bbbb::9")) == "2001:db8:1:2::"
    assert client_address(request("2001:db8:1:2:aaaa::1")) == "2001:db8:1:2:aaaa::1"


# --- through the API -------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("hops", "expected"), [(0, "127.0.0.1"), (1, "198.51.100.1")])
def test_the_audit_log_records_the_client_behind_the_proxy(client_a, tenant_a, settings, hops, expected):
    settings.TRUSTED_PROXY_HOPS = hops
    response = client_a.post(
        "/api/accounts/",
        {
            "account_name": "Work",
            "email_address": "alice@example.com",
            "protocol": "imap",
            "hostname": "imap.example.com",
            "password": "pw",
        },
        format="json",
        REMOTE_ADDR="127.0.0.1",
        HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.1",
    )
    assert response.status_code == 201
    with tenant_scope(tenant_a.id):
        entry = AuditLog.objects.get(action="account.create")
    assert entry.ip_address == expected


@pytest.mark.django_db
@pytest.mark.parametrize("xff", ["garbage", "", ",,,", "1.2.3.4, [::1"])
def test_an_api_write_with_a_garbage_header_is_not_a_500(client_a, tenant_a, settings, xff):
    settings.TRUSTED_PROXY_HOPS = 1
    response = client_a.post(
        "/api/accounts/",
        {
            "account_name": "Work",
            "email_address": "alice@example.com",
            "protocol": "imap",
            "hostname": "imap.example.com",
            "password": "pw",
        },
        format="json",
        HTTP_X_FORWARDED_FOR=xff,
    )
    assert response.status_code == 201


def test_django_ratelimits_ip_key_reads_the_same_address(settings):
    """RATELIMIT_IP_META_KEY: any `key="ip"` limit counts the client too."""
    from django_ratelimit.core import _SIMPLE_KEYS

    settings.TRUSTED_PROXY_HOPS = 1
    assert _SIMPLE_KEYS["ip"](request(xff="6.6.6.6, 198.51.100.1")) == "198.51.100.1"
    assert _SIMPLE_KEYS["ip"](request(xff="garbage")) == "0.0.0.0"


def test_the_client_network_is_the_24_or_the_64(settings):
    settings.TRUSTED_PROXY_HOPS = 0
    assert client_network_key(request("198.51.100.77")) == "198.51.100.0/24"
    assert client_network_key(request("::ffff:198.51.100.77")) == "198.51.100.0/24"
    assert client_network_key(request("2001:db8:1:2:aaaa::1")) == "2001:db8:1:2::/64"
    assert client_network_key(request("")) == "unknown"
