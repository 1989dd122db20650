"""Well-known ports, by protocol and encryption (RFC 8314, RFC 6409)."""

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
