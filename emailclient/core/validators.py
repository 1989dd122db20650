import ipaddress
import re

from django.core.exceptions import ValidationError

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def validate_hostname(value: str) -> str:
    """A DNS host name (RFC 1123, IDNA allowed) or an IP address literal.
    Returns the normalised (lower-case, ASCII, no trailing dot) form."""
    host = value.strip().rstrip(".")
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise ValidationError("Enter a valid host name.", code="invalid_hostname") from exc
    labels = ascii_host.split(".")
    if not ascii_host or len(ascii_host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValidationError("Enter a valid host name.", code="invalid_hostname")
    if labels[-1].isdigit():
        raise ValidationError("Enter a valid host name.", code="invalid_hostname")
    return ascii_host
