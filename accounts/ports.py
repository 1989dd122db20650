"""Well-known ports, by protocol and encryption (RFC 8314, RFC 6409), and
the ports a mail server may be reached on at all."""

from django.conf import settings

DEFAULT_PORTS = {
    ("imap", "tls"): 993,
    ("imap", "starttls"): 143,
    ("imap", "none"): 143,
    ("pop3", "tls"): 995,
    ("pop3", "starttls"): 110,
    ("pop3", "none"): 110,
    ("smtp", "tls"): 465,
    ("smtp", "starttls"): 587,
    ("smtp", "none"): 25,
}


def default_port(protocol: str, encryption: str) -> int:
    return DEFAULT_PORTS[(protocol, encryption)]


def port_allowed(port: int) -> bool:
    """Whether a mail server may be reached on `port` (MAIL_ALLOWED_PORTS; None: any)."""
    allowed = settings.MAIL_ALLOWED_PORTS
    return allowed is None or port in allowed
