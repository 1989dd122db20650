"""An account's folders: their types, and their rows in step with the
server's folder list (renames kept, deletions followed)."""

from collections import Counter

from django.db import transaction

from accounts.models import EmailAccount
from emailclient.core.tenancy import tenant_scope
from mailboxes.imap import FolderInfo, ImapSession, MailServerError
from messages.models import Folder, FolderType, Message

_SPECIAL_USE = {
    "\\sent": FolderType.SENT,
    "\\drafts": FolderType.DRAFTS,
    "\\trash": FolderType.TRASH,
    "\\junk": FolderType.SPAM,
    "\\archive": FolderType.ARCHIVE,
    "\\all": FolderType.ARCHIVE,
}
_COMMON_NAMES = {
    FolderType.SENT: {
        "sent",
        "sent items",
        "sent messages",
        "sent mail",
        "sent-mail",
        "gesendet",
        "gesendete elemente",
        "envoyés",
        "elementos enviados",
        "posta inviata",
    },
    FolderType.DRAFTS: {"drafts", "draft", "entwürfe", "brouillons", "borradores", "bozze"},
    FolderType.TRASH: {
        "trash",
        "deleted items",
        "deleted messages",
        "bin",
        "papierkorb",
        "gelöschte elemente",
        "corbeille",
        "papelera",
        "cestino",
    },
    FolderType.SPAM: {"junk", "spam", "junk e-mail", "junk email", "bulk mail", "junk mail", "spamverdacht"},
    FolderType.ARCHIVE: {"archive", "archives", "all mail", "archiv"},
}


def folder_type(info: FolderInfo) -> str:
    if info.name.upper() == "INBOX":
        return FolderType.INBOX
    for flag in info.flags:
        kind = _SPECIAL_USE.get(flag.lower())
        if kind:
            return kind
    leaf = info.name.rsplit(info.delimiter, 1)[-1] if info.delimiter else info.name
    leaf = leaf.strip().lower()
    for kind, names in _COMMON_NAMES.items():
        if leaf in names:
            return kind
    return FolderType.CUSTOM


def folder_list_sync(*, session: ImapSession, account: EmailAccount) -> list[Folder]:
    """Bring the account's folder rows in step with the server's LIST:
    renamed, deleted, new; types and hierarchy. Returns them in LIST order."""
    infos = {info.name: info for info in session.list_folders()}
    if not any(name.upper() == "INBOX" for name in infos):
        # A partial LIST must not delete folders and their mail.
        raise MailServerError("the server's folder list has no INBOX; folders left as they are")
    with tenant_scope(account.tenant_id):
        stored = {f.name: f for f in Folder.objects.filter(account=account)}
    missing = {name: f for name, f in stored.items() if name not in infos}
    renames = _detect_renames(session, account, infos, stored, missing)
    for old in renames.values():
        missing.pop(old.name, None)
    with tenant_scope(account.tenant_id), transaction.atomic():
        for name, folder in renames.items():
            folder.name = name
            folder.save(update_fields=["name", "updated_at"])
            stored[name] = folder
        if missing:
            Folder.objects.filter(id__in=[f.id for f in missing.values()]).delete()
        result = []
        for name, info in infos.items():
            folder = stored.get(name) or Folder(tenant_id=account.tenant_id, account=account, name=name)
            folder.delimiter = info.delimiter
            folder.attributes = sorted(info.flags)
            folder.type = folder_type(info)
            folder.is_selectable = info.selectable
            folder.save()
            stored[name] = folder
            result.append(folder)
        for folder in result:
            parent_name = (
                folder.name.rsplit(folder.delimiter, 1)[0] if folder.delimiter in folder.name else None
            )
            parent = stored.get(parent_name) if folder.delimiter and parent_name else None
            if (parent.id if parent else None) != folder.parent_id:
                folder.parent = parent
                folder.save(update_fields=["parent", "updated_at"])
    return result


def _detect_renames(
    session: ImapSession,
    account: EmailAccount,
    infos: dict[str, FolderInfo],
    stored: dict[str, Folder],
    missing: dict[str, Folder],
) -> dict[str, Folder]:
    """New names that are vanished folders renamed: the UIDVALIDITY
    matches exactly one vanished and one new folder (RFC 3501 makes it
    unique per name only; some servers reuse values), and the messages
    at the stored UIDs carry the stored Message-IDs (real ones: a
    synthetic id is not on the server to compare)."""
    validities = Counter(f.uidvalidity for f in missing.values() if f.uidvalidity is not None)
    if not validities:
        return {}
    new_states = {
        name: session.folder_status(name)
        for name, info in infos.items()
        if name not in stored and info.selectable
    }
    new_validities = Counter(state.uidvalidity for state in new_states.values())
    renames = {}
    for name, state in new_states.items():
        if validities[state.uidvalidity] != 1 or new_validities[state.uidvalidity] != 1:
            continue
        old = next(f for f in missing.values() if f.uidvalidity == state.uidvalidity)
        if _same_messages(session, account, old, name):
            renames[name] = old
    return renames


def _same_messages(session: ImapSession, account: EmailAccount, old: Folder, new_name: str) -> bool:
    with tenant_scope(account.tenant_id):
        rows = (
            Message.objects.filter(folder=old, uidvalidity=old.uidvalidity, message_id_synthetic=False)
            .exclude(message_id="")
            .order_by("imap_uid")
            .values_list("imap_uid", "message_id")[:5]
        )
        # A row with a UIDVALIDITY has a UID (only unsynced moves have neither).
        sample = {uid: message_id for uid, message_id in rows if uid is not None}
    if not sample:
        return True  # nothing stored that could end up under the wrong name
    session.select(new_name)
    return session.message_ids(sample) == sample
