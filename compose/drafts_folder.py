"""A draft's copy in the server's Drafts folder, so other mail clients see it.

`draft_copy_sync()` converges the account's Drafts folder with one draft:

* an editable draft (`draft`, `failed`, `uncertain`, `cancelled`) has one
  copy there, of its current version: when `server_version` is behind, the
  new version is APPENDed (flags `\\Draft \\Seen`) and every other copy
  removed (`UID STORE +FLAGS \\Deleted`, `UID EXPUNGE`);
* a draft being sent (`scheduled`, `queued`, `sending`) keeps what it has;
* a `sent` or deleted draft has none; a deleted one's row goes once its
  copy has.

Every copy carries a Message-ID derived from the draft's id
(`<draft-{id.hex}@{domain}>`), never the Message-ID of the message sent
(fixed when queued, `Draft.message_id`): so a search of the folder finds
every copy of this draft, including one a crash left behind after its
APPEND and before its UID was recorded, and no copy is ever mistaken for
the sent message in Sent. The new copy's UID comes from APPENDUID (UIDPLUS)
or, without it, from that search.

The draft row can change while we talk to the server (an edit, a send): a
round that finds the row moved on is followed by another, so a copy
appended just as the draft was sent is removed again.

Nothing is done with the account of a deactivated tenant, or of an owner
removed from the tenant or deactivated (`account_for_sync`, as the sync and
the outbox check): the draft's `server_error` says why, and the next edit
after the tenant or the member is back saves the copy.

IMAP writes happen under the account's sync lock (`account_sync_lock`), as
the write-back's do: `SyncAlreadyRunning` propagates and the task retries.
Server errors are recorded in `server_error` (the API item works without a
copy) and raised as `MailServerError` for the task's backoff.
"""

import contextlib
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from django.utils import timezone
from imapclient.exceptions import IMAPClientError

from accounts.models import EmailAccount
from accounts.selectors import AccountNotSyncable, account_for_sync
from accounts.services import account_credentials
from emailclient.core.tenancy import tenant_scope
from mailboxes.imap import ImapSession, MailServerError
from mailboxes.sync import server_config
from messages.blobs import BlobNotFound, default_store
from messages.locks import account_sync_lock
from messages.models import Folder, FolderType

from .addresses import AddressError
from .mime import OutgoingAttachment, message_build, message_needs_smtputf8
from .models import EDITABLE, Draft, DraftAttachment, Status
from .outgoing import draft_message

logger = logging.getLogger(__name__)

SPECIAL_USE = {FolderType.SENT: "\\Sent", FolderType.DRAFTS: "\\Drafts"}
_APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]", re.IGNORECASE)
# A Message-ID a SEARCH can carry as it is: printable ASCII without quotes
# or backslashes.
_SEARCHABLE_ID = re.compile(r"^<[\x21\x23-\x3b\x3d\x3f-\x5b\x5d-\x7e]{1,250}>$")
_ROUNDS = 3

# Outcomes of `draft_copy_sync()`.
MISSING = "missing"
SAVED = "saved"  # the current version is on the server
KEPT = "kept"  # a send is under way: left as it is
REMOVED = "removed"  # no copy on the server (sent)
DELETED = "deleted"  # no copy, and the row is gone
NO_FOLDER = "no_folder"
REFUSED = "refused"  # the account may not be used (tenant deactivated, owner removed)


# --- IMAP helpers (shared with the outbox's Sent copy) ------------------------------


@contextlib.contextmanager
def imap_session(account: EmailAccount) -> Iterator[ImapSession]:
    """A logged-in session to the account's IMAP server."""
    credentials = account_credentials(account=account)
    with ImapSession(server_config(account), credentials.username, credentials.password) as session:
        yield session


def special_folder_name(session: ImapSession, flag: str) -> str | None:
    """The server's folder flagged `flag` (SPECIAL-USE, e.g. `\\Sent`)."""
    for folder in session.list_folders():
        if flag.lower() in (f.lower() for f in folder.flags):
            return folder.name
    return None


def message_id_uids(session: ImapSession, message_id: str) -> set[int]:
    """The UIDs of the selected folder's messages with this Message-ID (in
    angle brackets: the search is a substring match, and <1@x> must not
    find <11@x>)."""
    if not _SEARCHABLE_ID.match(message_id):
        return set()
    found = session.client.search(["HEADER", "Message-ID", message_id])
    return {uid for uid in found if isinstance(uid, int)}


def uids_delete(session: ImapSession, uids: set[int]) -> None:
    """Remove these messages of the selected folder for good."""
    if not uids:
        return
    ordered = sorted(uids)
    session.client.add_flags(ordered, ["\\Deleted"], silent=True)
    if session.client.has_capability("UIDPLUS"):
        session.client.uid_expunge(ordered)
    else:
        session.client.expunge()  # also removes other \\Deleted messages, as any client's would


def draft_message_id(draft: Draft) -> str:
    """The Message-ID of the draft's copies in Drafts (not of the message sent)."""
    domain = draft.account.email_address.rpartition("@")[2] or "localhost"
    return f"<draft-{draft.id.hex}@{domain}>"


# --- The copy ---------------------------------------------------------------------


def _draft_bytes(draft: Draft, message_id: str) -> bytes:
    with tenant_scope(draft.tenant_id):
        attachments = list(DraftAttachment.objects.filter(draft=draft))
    store = default_store()
    files = []
    for attachment in attachments:
        try:
            data = store.get(draft.tenant_id, attachment.blob_key)
        except BlobNotFound:
            continue  # the API says so when the draft is sent; the copy goes without
        files.append(
            OutgoingAttachment(filename=attachment.filename, content_type=attachment.content_type, data=data)
        )
    message = draft_message(draft, message_id=message_id, files=files, draft_copy=True)
    return message_build(message, smtputf8=message_needs_smtputf8(message))


@dataclass(frozen=True)
class _Wanted:
    """What one round aims at, read from the row."""

    version: int
    keep: bool | None  # True: one copy of `version`; False: none; None: leave as is

    @staticmethod
    def of(draft: Draft) -> "_Wanted":
        if draft.is_deleted or draft.status == Status.SENT:
            return _Wanted(draft.version, False)
        if draft.status in EDITABLE:
            return _Wanted(draft.version, True)
        return _Wanted(draft.version, None)


def _load(tenant_id: uuid.UUID, draft_id: uuid.UUID) -> Draft | None:
    with tenant_scope(tenant_id):
        return Draft.objects.select_related("account", "server_folder").filter(id=draft_id).first()


def draft_copy_sync(*, tenant_id: uuid.UUID, draft_id: uuid.UUID) -> str:
    """Bring the draft's copy in the account's Drafts folder in step with
    the draft (see the module's docstring); returns what it did."""
    draft = _load(tenant_id, draft_id)
    if draft is None:
        return MISSING
    account = draft.account
    wanted = _Wanted.of(draft)
    if wanted.keep is None:
        return KEPT
    if account.protocol != "imap" or account.is_deleted:
        return _no_server(draft, wanted, "The account has no Drafts folder on its server (POP3).")
    try:
        # A deactivated tenant's or a removed member's credentials are not used.
        account = account_for_sync(tenant_id=tenant_id, account_id=account.id)
    except EmailAccount.DoesNotExist:  # deleted since the draft was read
        return _no_server(draft, wanted, "The account has no Drafts folder on its server (deleted).")
    except AccountNotSyncable as exc:
        _server_fields(draft, server_error=f"The Drafts copy could not be saved: {exc}")
        return REFUSED
    with tenant_scope(tenant_id):
        folder = Folder.objects.filter(account=account, type=FolderType.DRAFTS).order_by("name").first()
    if folder is None and (wanted.keep or draft.server_folder is None):
        return _no_server(
            draft, wanted, "The account has no Drafts folder (it may not have been synced yet)."
        )
    with account_sync_lock(account.id):
        try:
            with imap_session(account) as session:
                for _ in range(_ROUNDS):
                    outcome = _round(session, draft, wanted, folder)
                    fresh = _load(tenant_id, draft_id)
                    if fresh is None:
                        return MISSING
                    if _Wanted.of(fresh) in (wanted, _Wanted(fresh.version, None)):
                        break
                    draft, wanted = fresh, _Wanted.of(fresh)
        except (MailServerError, IMAPClientError, OSError, AddressError) as exc:
            error = str(exc)[:1000] or type(exc).__name__
            _server_fields(draft, server_error=f"The Drafts copy could not be saved: {error}")
            if isinstance(exc, AddressError):
                return NO_FOLDER  # the message cannot be built: retrying will not help
            if isinstance(exc, MailServerError):
                raise
            raise MailServerError(error) from exc
    if outcome == REMOVED and draft.is_deleted:
        with tenant_scope(tenant_id):
            Draft.objects.filter(id=draft.id, is_deleted=True).delete()
        return DELETED
    return outcome


def _no_server(draft: Draft, wanted: _Wanted, error: str) -> str:
    if wanted.keep:
        _server_fields(draft, server_error=error)
        return NO_FOLDER
    if draft.is_deleted:
        with tenant_scope(draft.tenant_id):
            Draft.objects.filter(id=draft.id, is_deleted=True).delete()
        return DELETED
    return REMOVED


def _server_fields(draft: Draft, **fields: object) -> None:
    """Record the server side (never a full save: the API edits the row)."""
    with tenant_scope(draft.tenant_id):
        Draft.objects.filter(id=draft.id).update(**fields, updated_at=timezone.now())


def _round(session: ImapSession, draft: Draft, wanted: _Wanted, folder: Folder | None) -> str:
    message_id = draft_message_id(draft)
    client = session.client
    previous = draft.server_folder
    if previous is not None and (folder is None or previous.id != folder.id):
        # The copy lives in a folder that is no longer the Drafts folder.
        with contextlib.suppress(IMAPClientError):
            client.select_folder(previous.name)
            uids_delete(session, message_id_uids(session, message_id))
    if folder is None:
        _server_fields(draft, server_folder=None, server_uid=None, server_uidvalidity=None, server_error="")
        return REMOVED
    state = client.select_folder(folder.name)
    uidvalidity = state.get(b"UIDVALIDITY")
    found = message_id_uids(session, message_id)
    if not wanted.keep:
        uids_delete(session, found)
        _server_fields(draft, server_folder=None, server_uid=None, server_uidvalidity=None, server_error="")
        return REMOVED
    current = (
        draft.server_folder_id == folder.id
        and draft.server_uidvalidity == uidvalidity
        and draft.server_uid in found
        and draft.server_version == wanted.version
    )
    if current:
        keep_uid = draft.server_uid
    else:
        data = _draft_bytes(draft, message_id)
        response = client.append(folder.name, data, flags=[b"\\Draft", b"\\Seen"], msg_time=timezone.now())
        keep_uid = _appended_uid(response, uidvalidity)
        if keep_uid is None:
            client.select_folder(folder.name)
            new = message_id_uids(session, message_id) - found
            keep_uid = min(new) if len(new) == 1 else None
    uids_delete(session, found - {keep_uid} if keep_uid is not None else found)
    _server_fields(
        draft,
        server_folder=folder,
        server_uidvalidity=uidvalidity,
        server_uid=keep_uid,
        server_version=wanted.version,
        server_error="",
    )
    return SAVED


def _appended_uid(response: object, uidvalidity: object) -> int | None:
    text = response if isinstance(response, bytes) else str(response).encode()
    match = _APPENDUID.search(text)
    if match is None or int(match.group(1)) != uidvalidity:
        return None
    return int(match.group(2))
