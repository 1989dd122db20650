"""The message a draft makes, the same for its send (`services.draft_send`,
which freezes it) and for its copy in the Drafts folder
(`drafts_folder`)."""

from collections.abc import Sequence

from django.utils import timezone

from .addresses import AddressError, mailbox_parse
from .mime import OutgoingAttachment, OutgoingMessage
from .models import Draft


def draft_sender(draft: Draft) -> dict[str, str]:
    """The From mailbox, checked as any address is (`mailbox_parse`): the
    account's address with its domain as IDNA (an internationalised domain
    needs no SMTPUTF8, only a non-ASCII local part does), and the account's
    name as the display name, white space (a tab, a line break) folded to
    single spaces; a name that still does not pass is left out. Raises
    `AddressError` for an address that does not pass."""
    account = draft.account
    name = " ".join(account.account_name.split())
    try:
        return mailbox_parse({"name": name, "address": account.email_address})
    except AddressError:
        return mailbox_parse({"name": "", "address": account.email_address})


def draft_message(
    draft: Draft, *, message_id: str, files: Sequence[OutgoingAttachment], draft_copy: bool = False
) -> OutgoingMessage:
    """The draft as a message, dated now. `draft_copy`: the Drafts folder's."""
    return OutgoingMessage(
        sender=draft_sender(draft),
        to=list(draft.to),
        cc=list(draft.cc),
        bcc=list(draft.bcc),
        reply_to=list(draft.reply_to),
        subject=draft.subject,
        text_body=draft.text_body,
        html_body=draft.html_body,
        message_id=message_id,
        date=timezone.now(),
        in_reply_to=draft.in_reply_to_header,
        references=draft.references_header,
        attachments=tuple(files),
        draft=draft_copy,
    )
