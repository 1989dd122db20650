"""The client's address, the one function every throttle and the audit log
read it with.

Without a trusted proxy (`TRUSTED_PROXY_HOPS=0`, the default) it is the
peer of the connection, `REMOTE_ADDR`; `X-Forwarded-For` is ignored, since
anyone may send one. Behind `TRUSTED_PROXY_HOPS=n` proxies, each of which
appends the address it saw to `X-Forwarded-For` (nginx's
`$proxy_add_x_forwarded_for`, HAProxy's `option forwardfor`, AWS ALB), the
last n entries were written by those proxies and the n-th from the right is
what the outermost one saw: the client. What a client wrote to the left of
them is never read. A header shorter than n (a request that came in past
some of the proxies, or none: a health check) gives its leftmost entry, or
`REMOTE_ADDR` when there is none, all of them written by trusted proxies.

The answer is a normalised IP address (`::ffff:192.0.2.1` is `192.0.2.1`,
a port or brackets a proxy added are dropped) or None when there is no
usable one; a malformed header is never an error.
"""

import ipaddress

from django.conf import settings

FORWARDED_FOR = "HTTP_X_FORWARDED_FOR"
# Longer headers are cut here before they are split: the trusted entries
# are at the end, and nothing a client sends makes the split costly.
MAX_HEADER_CHARS = 8192
# Throttles count IPv6 clients by their /64: one host usually holds a
# whole /64 and could otherwise take a fresh address for every request.
IPV6_THROTTLE_PREFIX = 64
# The client's network, for limits per (username, network): an IPv4 /24
# (one office, one NAT pool, one cloud subnet an attacker rents addresses
# in) and the IPv6 /64 above.
IPV4_NETWORK_PREFIX = 24


def _parse(value: str) -> str | None:
    """An IP address from one entry (`192.0.2.1`, `192.0.2.1:443`,
    `[2001:db8::1]:443`, `2001:db8::1`), normalised; None if it is none."""
    value = value.strip()
    candidates = [value]
    if value.startswith("["):  # [v6] or [v6]:port
        inside, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        candidates = [inside]
    elif value.count(":") == 1:  # v4:port
        candidates.append(value.split(":", 1)[0])
    for candidate in candidates:
        try:
            address = ipaddress.ip_address(candidate.split("%", 1)[0])  # no zone id
        except ValueError:
            continue
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return str(address)
    return None


def client_address(request) -> str | None:
    """The client's IP address (see the module's text), or None."""
    meta = getattr(request, "META", {})
    remote = meta.get("REMOTE_ADDR")
    remote = remote if isinstance(remote, str) else ""
    hops = max(0, settings.TRUSTED_PROXY_HOPS)
    if hops > 0:
        header = meta.get(FORWARDED_FOR)
        if isinstance(header, str) and header:
            entries = [e for e in header[-MAX_HEADER_CHARS:].split(",") if e.strip()]
            if len(header) > MAX_HEADER_CHARS and entries:
                entries = entries[1:]  # the cut one
            if entries:
                return _parse(entries[-min(hops, len(entries))])
    return _parse(remote)


def client_throttle_key(request) -> str:
    """What the throttles per address count by: the client's address, its
    /64 for IPv6; `unknown` for requests without a usable address."""
    address = client_address(request)
    if address is None:
        return "unknown"
    if ":" in address:
        return str(ipaddress.ip_network(f"{address}/{IPV6_THROTTLE_PREFIX}", strict=False).network_address)
    return address


def client_network_key(request) -> str:
    """The client's network: its IPv4 /24 or IPv6 /64 (`198.51.100.0/24`);
    `unknown` for requests without a usable address."""
    address = client_address(request)
    if address is None:
        return "unknown"
    prefix = IPV6_THROTTLE_PREFIX if ":" in address else IPV4_NETWORK_PREFIX
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def ratelimit_ip(request) -> str:
    """For django-ratelimit's `key="ip"` (RATELIMIT_IP_META_KEY): the same
    address (django-ratelimit masks IPv6 itself); `0.0.0.0` for none, where
    django-ratelimit would fail on an empty one."""
    return client_address(request) or "0.0.0.0"  # noqa: S104 (a key, not a bind address)
