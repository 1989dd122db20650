"""Comparing the database with the server, exactly."""

from imapclient import IMAPClient

from emailclient.core.tenancy import tenant_scope
from mailboxes.models import Folder
from mailboxes.sync import flag_fields
from messages.models import Message, QuarantinedMessage


def server_state(client: IMAPClient) -> dict[str, dict[int, tuple[str, ...]]]:
    """{folder: {uid: sorted flags}} as the server has it."""
    state = {}
    for flags, _, name in client.list_folders():
        if b"\\Noselect" in flags:
            continue
        info = client.select_folder(name, readonly=True)
        uids = client.search(["ALL"]) if info[b"EXISTS"] else []
        fetched = client.fetch(uids, ["FLAGS"]) if uids else {}
        state[name] = {
            uid: tuple(flag_fields(tuple(f.decode() for f in data[b"FLAGS"]))["flags"])
            for uid, data in fetched.items()
        }
    return state


def database_state(account) -> dict[str, dict[int, tuple[str, ...]]]:
    """The same, from our tables: stored messages and quarantined ones."""
    with tenant_scope(account.tenant_id):
        state = {f.name: {} for f in Folder.objects.filter(account=account, is_selectable=True)}
        for name, uid, flags in Message.objects.filter(account=account).values_list(
            "folder__name", "imap_uid", "flags"
        ):
            assert uid not in state[name], f"duplicate uid {uid} in {name}"
            state[name][uid] = tuple(flags)
        for name, uid in QuarantinedMessage.objects.filter(account=account).values_list(
            "folder__name", "imap_uid"
        ):
            assert uid not in state[name], f"duplicate uid {uid} in {name}"
            state[name][uid] = None
    return state


def assert_in_step(client: IMAPClient, account) -> None:
    """UID sets equal per folder, and flags equal for stored messages."""
    server = server_state(client)
    ours = database_state(account)
    assert set(ours) == set(server), "folder sets differ"
    for name, uids in server.items():
        assert set(ours[name]) == set(uids), f"{name}: UID sets differ"
        for uid, flags in uids.items():
            if ours[name][uid] is not None:
                assert ours[name][uid] == flags, f"{name} uid {uid}: flags differ"
