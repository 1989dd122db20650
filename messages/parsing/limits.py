"""What input the parser refuses, and how far it reads: `Limits` (from the
settings' `MAIL_MAX_*`) and `MessageRejected`."""

from dataclasses import dataclass

from django.conf import settings


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 50 * 1024 * 1024
    max_header_bytes: int = 256 * 1024
    max_parts: int = 1000
    max_depth: int = 30
    # Header fields of all parts together; `max_header_bytes` is per part.
    max_header_fields: int = 10_000
    # Lines of a message the fast splitter declines (see mime.mime_tree).
    max_lines: int = 200_000
    # Characters kept of the text body, and of the HTML body.
    max_body_chars: int = 1_000_000
    # Addresses kept per address field, ids per References field.
    max_addresses: int = 1000
    max_references: int = 100


def parse_limits() -> Limits:
    """The limits the settings give (`MAIL_MAX_*`): the sync's and `reparse`'s."""
    return Limits(
        max_message_bytes=settings.MAIL_MAX_MESSAGE_BYTES,
        max_header_bytes=settings.MAIL_MAX_HEADER_BYTES,
        max_parts=settings.MAIL_MAX_PARTS,
        max_depth=settings.MAIL_MAX_MIME_DEPTH,
        max_header_fields=settings.MAIL_MAX_HEADER_FIELDS,
        max_lines=settings.MAIL_MAX_LINES,
        max_body_chars=settings.MAIL_MAX_BODY_CHARS,
    )


class MessageRejected(Exception):
    """The input cannot be stored as a message; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
