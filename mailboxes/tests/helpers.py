"""Comparing the database with the server, exactly."""

from imapclient import IMAPClient

from emailclient.core.tenancy import tenant_scope
from mailboxes.sync import flag_fields
from messages.models import Folder, Message, QuarantinedMessage
from messages.parsing import message_ids

HEADER = b"BODY[HEADER.FIELDS (MESSAGE-ID)]"


def server_state(client: IMAPClient) -> dict[str, dict[int, tuple]]:
    """{folder: {uid: (sorted flags, Message-ID)}} as the server has it."""
    state = {}
    for flags, _, name in client.list_folders():
        if b"\\Noselect" in flags:
            continue
        info = client.select_folder(name, readonly=True)
        uids = client.search(["ALL"]) if info[b"EXISTS"] else []
        fetched = client.fetch(uids, ["FLAGS", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]) if uids else {}
        folder = {}
        for uid, data in fetched.items():
            ids = message_ids(data[HEADER].decode("utf-8", "replace").partition(":")[2])
            flags = tuple(flag_fields(tuple(f.decode() for f in data[b"FLAGS"]))["flags"])
            folder[uid] = (flags, ids[0] if ids else "")
        state[name] = folder
    return state


def database_state(account) -> dict[str, dict[int, tuple | None]]:
    """The same from our tables (None for a quarantined message). Only rows
    of each folder's current UIDVALIDITY count, and there must be no other."""
    with tenant_scope(account.tenant_id):
        folders = {f.id: f for f in Folder.objects.filter(account=account, is_selectable=True)}
        state = {f.name: {} for f in folders.values()}
        rows = Message.objects.filter(account=account).values_list(
            "folder_id", "uidvalidity", "imap_uid", "flags", "message_id", "message_id_synthetic"
        )
        for folder_id, validity, uid, flags, message_id, synthetic in rows:
            if synthetic:
                message_id = ""  # made up by us: the server's header has none
            folder = folders[folder_id]
            assert validity == folder.uidvalidity, f"{folder.name}: a row of an old UIDVALIDITY is left"
            assert uid not in state[folder.name], f"duplicate uid {uid} in {folder.name}"
            state[folder.name][uid] = (tuple(flags), message_id)
        for folder_id, validity, uid in QuarantinedMessage.objects.filter(account=account).values_list(
            "folder_id", "uidvalidity", "imap_uid"
        ):
            folder = folders[folder_id]
            assert validity == folder.uidvalidity, f"{folder.name}: a quarantined row of an old UIDVALIDITY"
            assert uid not in state[folder.name], f"duplicate uid {uid} in {folder.name}"
            state[folder.name][uid] = None
    return state


def assert_in_step(client: IMAPClient, account) -> None:
    """Folders, UID sets, flags and Message-IDs equal to the server's."""
    server = server_state(client)
    ours = database_state(account)
    assert set(ours) == set(server), "folder sets differ"
    for name, uids in server.items():
        assert set(ours[name]) == set(uids), f"{name}: UID sets differ"
        for uid, (flags, message_id) in uids.items():
            if ours[name][uid] is not None:
                assert ours[name][uid][0] == flags, f"{name} uid {uid}: flags differ"
                assert ours[name][uid][1] == message_id, f"{name} uid {uid}: a different message"
