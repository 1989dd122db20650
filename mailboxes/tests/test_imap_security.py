"""Connection policy: address checks, TLS verification, no downgrade, and
hostile server replies."""

import logging
import socket
import threading
import time

import pytest

from mailboxes import imap
from mailboxes.imap import (
    AddressNotAllowed,
    AuthenticationFailed,
    DeadlineExceeded,
    ImapSession,
    InsecureServer,
    MailServerError,
    ProtocolViolation,
    ServerConfig,
    address_allowed,
)
from mailboxes.tests.conftest import PASSWORD
from mailboxes.tests.tarpit import Tarpit


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
        # 6to4 (2002::/16) carries an IPv4 address a relay delivers to.
        ("2002:7f00:1::1", False),  # 127.0.0.1
        ("2002:c0a8:101::1", False),  # 192.168.1.1
        ("2002:a9fe:a9fe::1", False),  # 169.254.169.254
        ("2002:5db8:d822::1", True),  # 93.184.216.34
        # Site-local (fec0::/10): deprecated, inside a site only.
        ("fec0::1", False),
        ("fec0::c0a8:101", False),  # with 192.168.1.1 in its low bits
        ("fec0::5db8:d822", False),
        # NAT64, well-known prefix 64:ff9b::/96 (RFC 6052): judged by the IPv4
        # address in its low 32 bits, not by the prefix (inside ::/8, reserved).
        ("64:ff9b::a00:1", False),  # 10.0.0.1
        ("64:ff9b::7f00:1", False),  # 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # 169.254.169.254
        ("64:ff9b::6440:1", False),  # 100.64.0.1
        ("64:ff9b::808:808", True),  # 8.8.8.8
        ("64:ff9b::5db8:d822", True),  # 93.184.216.34
        ("64:ff9b:0:0:1::5db8:d822", False),  # outside the /96: not NAT64, reserved
        # Local-use NAT64 (64:ff9b:1::/48, RFC 8215): where its IPv4 sits depends
        # on a prefix length only the local network knows: refused.
        ("64:ff9b:1::a00:1", False),
        ("64:ff9b:1::808:808", False),
        ("64:ff9b:1:808:800::", False),  # 8.8.8.8 at a /64's offset
        # IPv4-compatible (::/96, deprecated): reserved.
        ("::808:808", False),
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


def test_the_refusal_does_not_say_the_internal_address(caplog):
    caplog.set_level(logging.WARNING, logger="mailboxes.imap.connection")
    with pytest.raises(AddressNotAllowed) as refused:
        imap.resolve("localhost", 143, allow_private=False)
    # The message reaches the account's last_sync_error: the user may not
    # learn what a name resolves to inside the network; the operator's log has it.
    assert "127.0.0.1" not in str(refused.value) and "::1" not in str(refused.value)
    assert "localhost" in str(refused.value)
    assert any("127.0.0.1" in r.getMessage() or "::1" in r.getMessage() for r in caplog.records)


def test_only_mail_ports_unless_configured():
    mail_ports = frozenset({143, 993})
    assert imap.resolve("127.0.0.1", 993, allow_private=True, allowed_ports=mail_ports) == "127.0.0.1"
    with pytest.raises(AddressNotAllowed, match="port 6379"):
        imap.resolve("127.0.0.1", 6379, allow_private=True, allowed_ports=mail_ports)
    assert imap.resolve("127.0.0.1", 6379, allow_private=True, allowed_ports=None) == "127.0.0.1"


def test_a_lookup_is_given_up_after_the_connect_timeout(monkeypatch):
    # getaddrinfo takes no timeout; a DNS server that does not answer
    # (simulated: the resolver sleeps) is given up after the timeout.
    resolver = socket.getaddrinfo

    def dns(host, *args, **kwargs):
        if host == "slow-dns.example.com":
            time.sleep(2)
        if host.endswith(".example.com"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return resolver(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", dns)
    started = time.monotonic()
    with pytest.raises(
        MailServerError, match=r"cannot resolve slow-dns\.example\.com: no answer within 0\.3 s"
    ):
        imap.resolve("slow-dns.example.com", 993, allow_private=False, timeout=0.3)
    assert time.monotonic() - started < 1
    # An answer within it is used, and a failure is said as before.
    assert imap.resolve("127.0.0.1", 993, allow_private=True, timeout=0.3) == "127.0.0.1"
    with pytest.raises(MailServerError, match=r"cannot resolve nowhere\.example\.com: .*not known"):
        imap.resolve("nowhere.example.com", 993, allow_private=False, timeout=0.3)


def test_a_session_refuses_a_port_that_is_not_allowed(devmail, mail_user):
    config = _config(devmail, allowed_ports=frozenset({143, 993}))
    with pytest.raises(AddressNotAllowed, match=f"port {devmail.imap_port}"):
        ImapSession(config, mail_user, PASSWORD)


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
    monkeypatch.setattr("mailboxes.imap.session.resolve", lambda host, port, **kwargs: "127.0.0.1")
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


# --- Deadlines: a server that trickles -------------------------------------------------


def _tarpit_config(port: int, **kw) -> ServerConfig:
    base = {
        "host": "127.0.0.1",
        "port": port,
        "encryption": "none",
        "allow_plaintext": True,
        "allow_private": True,
        "read_timeout": 5,  # far longer than the tarpit's pause between bytes
    }
    return ServerConfig(**{**base, **kw})


def test_a_trickled_greeting_stops_at_the_connection_deadline():
    tarpit = Tarpit(mode="greeting", interval=0.05, give_up_after=10)
    started = time.monotonic()
    try:
        with pytest.raises(DeadlineExceeded, match="MAIL_CONNECTION_DEADLINE"):
            ImapSession(_tarpit_config(tarpit.port, connect_deadline=1.0), "u", "p")
    finally:
        tarpit.close()
    assert time.monotonic() - started < 2.5


def test_a_trickled_answer_stops_at_the_session_deadline():
    tarpit = Tarpit(mode="after_login", interval=0.05, give_up_after=10)
    try:
        with ImapSession(_tarpit_config(tarpit.port, session_deadline=1.5), "u", "p") as session:
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded, match="SYNC_DEADLINE"):
                session.list_folders()
            assert time.monotonic() - started < 2.5
    finally:
        tarpit.close()


def test_a_session_deadline_leaves_a_healthy_server_alone(devmail, mail_user):
    with ImapSession(
        _config(devmail, session_deadline=30, connect_deadline=10), mail_user, PASSWORD
    ) as session:
        session.select("INBOX")
        assert session.list_folders()


def test_a_silent_greeting_waits_the_connect_timeout_not_the_read_timeout():
    server = HostileServer(b"")  # accepts, never greets
    config = ServerConfig(
        host="127.0.0.1",
        port=server.port,
        encryption="none",
        allow_plaintext=True,
        allow_private=True,
        connect_timeout=1,
        read_timeout=30,
    )
    started = time.monotonic()
    with pytest.raises(imap.MailServerError):
        ImapSession(config, "u", "p")
    assert time.monotonic() - started < 3
