"""Connection policy: address checks, TLS verification, no downgrade, and
hostile server replies."""

import socket
import threading

import pytest

from mailboxes import imap
from mailboxes.imap import (
    AddressNotAllowed,
    AuthenticationFailed,
    ImapSession,
    InsecureServer,
    ProtocolViolation,
    ServerConfig,
    address_allowed,
)
from mailboxes.tests.conftest import PASSWORD


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
    ],
)
def test_address_policy(address, allowed):
    assert address_allowed(address) is allowed


def test_loopback_is_refused_unless_allowed(devmail, mail_user):
    config = ServerConfig(host="127.0.0.1", port=devmail.imap_port, encryption="none", allow_private=False)
    with pytest.raises(AddressNotAllowed):
        ImapSession(config, mail_user, PASSWORD)


def test_plaintext_is_refused_unless_allowed(devmail, mail_user):
    config = ServerConfig(host="127.0.0.1", port=devmail.imap_port, encryption="none", allow_private=True)
    with pytest.raises(InsecureServer, match="unencrypted"):
        ImapSession(config, mail_user, PASSWORD)


def test_a_name_resolving_to_a_private_address_is_refused():
    with pytest.raises(AddressNotAllowed):
        imap.resolve("localhost", 143, allow_private=False)


def _config(devmail, **kw) -> ServerConfig:
    base = {
        "host": "127.0.0.1",
        "port": devmail.imap_port,
        "encryption": "starttls",
        "allow_private": True,
        "ca_file": str(devmail.ca_file),
    }
    return ServerConfig(**{**base, **kw})


def test_starttls_with_a_verified_certificate(devmail, mail_user):
    with ImapSession(_config(devmail), mail_user, PASSWORD) as session:
        assert session.client._starttls_done
        assert session.list_folders()


def test_implicit_tls_with_a_verified_certificate(devmail, mail_user):
    with ImapSession(
        _config(devmail, port=devmail.imaps_port, encryption="tls"), mail_user, PASSWORD
    ) as session:
        assert session.list_folders()


def test_an_untrusted_certificate_is_refused(devmail, mail_user):
    for config in (
        _config(devmail, ca_file=None),
        _config(devmail, port=devmail.imaps_port, encryption="tls", ca_file=None),
    ):
        with pytest.raises(InsecureServer, match="not trusted"):
            ImapSession(config, mail_user, PASSWORD)


def test_a_certificate_for_another_name_is_refused(devmail, mail_user, monkeypatch):
    # DNS is the one thing we cannot make real here: pin a foreign name to loopback.
    monkeypatch.setattr("mailboxes.imap.session.resolve", lambda host, port, allow_private: "127.0.0.1")
    with pytest.raises(InsecureServer):
        ImapSession(_config(devmail, host="mail.example.org"), mail_user, PASSWORD)


def test_no_downgrade_when_starttls_is_missing(tmp_path, mail_user):
    import devmail as devmail_module

    server = devmail_module.DevMail(
        tmp_path / "nostarttls",
        imap_port=devmail_module.free_port(),
        pop3_port=None,
        imaps_port=None,
        pop3s_port=None,
        starttls=False,
    )
    with server:
        server.add_user(mail_user, PASSWORD)
        config = ServerConfig(
            host="127.0.0.1", port=server.imap_port, encryption="starttls", allow_private=True
        )
        with pytest.raises(InsecureServer, match="does not offer STARTTLS"):
            ImapSession(config, mail_user, PASSWORD)


def test_wrong_password_is_an_authentication_failure(devmail, mail_user):
    with pytest.raises(AuthenticationFailed):
        ImapSession(_config(devmail), mail_user, "wrong")


class HostileServer:
    """A loopback server that greets, then answers every command with `reply`."""

    def __init__(self, greeting: bytes, reply: bytes = b""):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.greeting, self.reply = greeting, reply
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        try:
            conn.sendall(self.greeting)
            while conn.recv(4096):
                conn.sendall(self.reply)
        except OSError:
            pass
        finally:
            conn.close()


def test_an_endless_line_is_cut_off():
    server = HostileServer(b"* OK " + b"x" * 300_000)  # no line end, ever
    config = ServerConfig(
        host="127.0.0.1",
        port=server.port,
        encryption="none",
        allow_plaintext=True,
        allow_private=True,
        max_line=100_000,
        read_timeout=5,
    )
    with pytest.raises(ProtocolViolation, match="longer than"):
        ImapSession(config, "u", "p")


def test_an_absurd_literal_is_refused():
    server = HostileServer(b"* OK ready\r\n", b"* CAPABILITY {9999999999}\r\n")
    config = ServerConfig(
        host="127.0.0.1",
        port=server.port,
        encryption="none",
        allow_plaintext=True,
        allow_private=True,
        max_literal=1_000_000,
        read_timeout=5,
    )
    with pytest.raises(ProtocolViolation, match="literal"):
        ImapSession(config, "u", "p")


def test_a_silent_server_times_out():
    server = HostileServer(b"")  # accepts, never greets
    config = ServerConfig(
        host="127.0.0.1",
        port=server.port,
        encryption="none",
        allow_plaintext=True,
        allow_private=True,
        connect_timeout=1,
        read_timeout=1,
    )
    with pytest.raises(imap.MailServerError):
        ImapSession(config, "u", "p")


def test_sequence_sets_are_clipped_before_expanding():
    assert imap.parse_sequence_set("1:3,7,9:10") == {1, 2, 3, 7, 9, 10}
    assert imap.parse_sequence_set("10:1") == set(range(1, 11))
    # A hostile server's everything-vanished costs a range the size of ours.
    assert imap.parse_sequence_set("1:4294967295", low=100, high=102) == {100, 101, 102}
    with pytest.raises(ProtocolViolation):
        imap.parse_sequence_set("1:4294967295")
    with pytest.raises(ProtocolViolation):
        imap.parse_sequence_set("1:x")


@pytest.mark.parametrize(
    "response",
    [
        {},  # no UIDVALIDITY at all
        {b"UIDVALIDITY": b"abc", b"EXISTS": 1},
        {b"UIDVALIDITY": 0, b"EXISTS": 1},
        {b"UIDVALIDITY": 2**32, b"EXISTS": 1},
        {b"UIDVALIDITY": 5, b"EXISTS": -1},
        {b"UIDVALIDITY": 5, b"EXISTS": 1, b"UIDNEXT": 2**40},
        {b"UIDVALIDITY": 5, b"EXISTS": 1, b"HIGHESTMODSEQ": 2**63},
    ],
)
def test_hostile_folder_state_is_a_protocol_violation(response):
    session = object.__new__(ImapSession)
    session.condstore = True
    with pytest.raises(ProtocolViolation):
        session._state(response, exists_key=b"EXISTS")


@pytest.mark.parametrize("uid", [0, -1, 2**32, "7", None])
def test_hostile_uids_are_refused(uid):
    with pytest.raises(ProtocolViolation):
        imap.check_uid(uid)


def test_fetch_results_are_keyed_by_their_uid_item(devmail, mail_user):
    from mailboxes.tests.conftest import imap as connect

    client = connect(devmail, mail_user)
    for n in range(3):
        client.append("INBOX", f"From: a@b.c\r\nSubject: {n}\r\n\r\nbody {n}".encode())
    client.select_folder("INBOX")
    client.delete_messages(client.search(["ALL"])[:1])
    client.expunge()  # now sequence numbers 1, 2 hold UIDs 2, 3
    client.logout()
    with ImapSession(_config(devmail), mail_user, PASSWORD) as session:
        session.select("INBOX")
        fetched = session.fetch_meta([2, 3])
    assert sorted(fetched) == [2, 3]
    assert all(message.uid == uid for uid, message in fetched.items())
