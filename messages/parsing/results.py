"""What the parser returns: `ParsedMessage` and its `ParsedAttachment`s."""

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypedDict


class Address(TypedDict):
    """One address of an address header; `name` may be ""."""

    name: str
    address: str


@dataclass
class ParsedAttachment:
    filename: str
    mime_type: str
    content_id: str
    is_inline: bool
    data: bytes
    sha256: str = ""

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.data).hexdigest()


@dataclass
class ParsedMessage:
    message_id: str = ""
    # True when the message has no Message-ID and `message_id` is made up.
    message_id_synthetic: bool = False
    in_reply_to: str = ""
    references: list[str] = field(default_factory=list)
    subject: str = ""
    from_name: str = ""
    from_address: str = ""
    to: list[Address] = field(default_factory=list)
    cc: list[Address] = field(default_factory=list)
    bcc: list[Address] = field(default_factory=list)
    reply_to: list[Address] = field(default_factory=list)
    sent_at: datetime | None = None
    text_body: str = ""
    html_body: str = ""
    snippet: str = ""
    attachments: list[ParsedAttachment] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
