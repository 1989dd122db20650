"""The SMTP client (compose/smtp.py) against a real SMTP server (aiosmtpd,
compose/tests/smtpserver.py): security, login, and every fault classified,
with the phases reported and the deliveries counted at the server."""

import contextlib
import socket
import threading
import time

import pytest

from accounts.services import Credentials, account_credentials
from compose.smtp import (
    AuthenticationFailed,
    DeliveryUncertain,
    InsecureServer,
    PermanentFailure,
    SmtpSession,
    TemporaryFailure,
    message_deliver,
    smtp_check,
    smtp_config,
)
from compose.tests.conftest import SMTP_PASSWORD, SMTP_USER
from compose.tests.smtpserver import Trickler, ca_make
from mailboxes.imap.connection import ServerConfig

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: Hello\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"\r\n"
    b"Hi Bob.\r\n"
)
CREDENTIALS = Credentials(SMTP_USER, SMTP_PASSWORD)
ENCRYPTION = {"plain": "none", "starttls": "starttls", "tls": "tls"}


@pytest.fixture
def config(smtp_server, devmail):
    def make(mode="starttls", **overrides):
        values = {
            "host": "127.0.0.1",
            "port": smtp_server.port(mode),
            "encryption": ENCRYPTION[mode],
            "allow_private": True,
            "allow_plaintext": True,
            "ca_file": str(devmail.ca_file),
            "connect_timeout": 5.0,
            "read_timeout": 5.0,
        }
        return ServerConfig(**{**values, **overrides})

    return make


def deliver(config, *, recipients=("bob@example.net",), data=MESSAGE, credentials=CREDENTIALS, **kw):
    phases = []
    kw.setdefault("envelope_from", "alice@example.com")
    try:
        result = message_deliver(
            config=config,
            credentials=credentials,
            recipients=list(recipients),
            data=data,
            on_phase=phases.append,
            **kw,
        )
    except Exception as exc:
        exc.phases = phases
        raise
    result.phases = phases
    return result


# --- Security and login ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["plain", "starttls", "tls"])
def test_delivers_in_each_mode(smtp_server, config, mode):
    result = deliver(config(mode))

    assert result.phases == ["connect", "envelope", "data"]
    assert result.reply.code == 250
    assert list(result.accepted) == ["bob@example.net"]
    assert result.refused == {}
    [delivery] = smtp_server.deliveries
    assert delivery.mail_from == "alice@example.com"
    assert delivery.rcpt_tos == ["bob@example.net"]
    assert delivery.data == MESSAGE
    assert delivery.login == SMTP_USER
    assert delivery.tls is (mode != "plain")
    assert "SMTPUTF8" not in delivery.mail_command
    assert "BODY=8BITMIME" not in delivery.mail_command
    assert f"SIZE={len(MESSAGE) + 3}" in delivery.mail_command


def test_without_credentials_no_login(smtp_server, config):
    deliver(config(), credentials=None)

    assert smtp_server.logins == []
    assert smtp_server.deliveries[0].login is None


@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_certificate_of_another_ca_refused(smtp_server, config, tmp_path, mode):
    with pytest.raises(InsecureServer, match="not trusted") as caught:
        deliver(config(mode, ca_file=str(ca_make(tmp_path))))

    assert caught.value.phases == ["connect"]
    assert smtp_server.logins == []
    assert smtp_server.deliveries == []


def test_starttls_required_never_downgraded(smtp_server, config):
    smtp_server.hide("STARTTLS")

    with pytest.raises(InsecureServer, match="does not offer STARTTLS"):
        deliver(config("starttls"))

    assert smtp_server.logins == []  # the password never went out in clear
    assert smtp_server.deliveries == []


def test_plaintext_refused_unless_allowed(smtp_server, config):
    with pytest.raises(InsecureServer, match="MAIL_ALLOW_PLAINTEXT"):
        deliver(config("plain", allow_plaintext=False))

    assert smtp_server.deliveries == []


def test_wrong_password_is_permanent_after_one_attempt(smtp_server, config):
    with pytest.raises(AuthenticationFailed, match="535") as caught:
        deliver(config(), credentials=Credentials(SMTP_USER, "wrong"))

    assert isinstance(caught.value, PermanentFailure)
    assert caught.value.reply.code == 535
    assert caught.value.phases == ["connect"]
    assert smtp_server.logins == [(SMTP_USER, False)]
    assert smtp_server.deliveries == []


def test_non_ascii_credentials_go_as_utf8(smtp_server, config):
    smtp_server.users["jürgen"] = "pässwörd"

    deliver(config(), credentials=Credentials("jürgen", "pässwörd"))

    assert smtp_server.logins == [("jürgen", True)]
    assert smtp_server.deliveries[0].login == "jürgen"


def test_login_without_plain_uses_login(smtp_server, config):
    smtp_server.hide("AUTH=PLAIN")

    deliver(config())

    assert smtp_server.logins == [(SMTP_USER, True)]
    assert smtp_server.deliveries[0].login == SMTP_USER


def test_server_without_auth_refused_when_we_have_credentials(smtp_server, config):
    smtp_server.hide("AUTH")

    with pytest.raises(AuthenticationFailed, match="offers no AUTH"):
        deliver(config())

    assert smtp_server.deliveries == []


def test_server_requiring_login_refuses_anonymous(smtp_server, config):
    smtp_server.require_auth = True

    with pytest.raises(PermanentFailure, match="530"):
        deliver(config(), credentials=None)

    assert smtp_server.deliveries == []


def test_private_address_refused_without_the_setting(smtp_server, config):
    with pytest.raises(
        PermanentFailure, match="resolves to an address this service may not connect to"
    ) as caught:
        deliver(config(allow_private=False))

    assert not isinstance(caught.value, TemporaryFailure)
    assert smtp_server.logins == []
    assert smtp_server.deliveries == []


@pytest.mark.django_db
def test_smtp_config_follows_the_account_and_settings(smtp_server, smtp_account, settings):
    settings.SMTP_TIMEOUT = 7.0
    config = smtp_config(smtp_account)
    assert (config.host, config.port, config.encryption) == (
        "127.0.0.1",
        smtp_server.port("starttls"),
        "starttls",
    )
    assert config.read_timeout == 7.0

    deliver(config, credentials=account_credentials(account=smtp_account, smtp=True))
    assert smtp_server.deliveries[0].login == SMTP_USER

    settings.MAIL_ALLOW_PRIVATE_HOSTS = False
    with pytest.raises(PermanentFailure, match="resolves to an address this service may not connect to"):
        deliver(smtp_config(smtp_account), credentials=None)
    assert len(smtp_server.deliveries) == 1


def test_smtp_check(smtp_server, config):
    smtp_check(config(), CREDENTIALS)
    with pytest.raises(AuthenticationFailed):
        smtp_check(config(), Credentials(SMTP_USER, "wrong"))

    assert smtp_server.logins == [(SMTP_USER, True), (SMTP_USER, False)]
    assert smtp_server.deliveries == []


# --- Faults ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "code", "error", "phases"),
    [
        ("MAIL", 451, TemporaryFailure, ["connect", "envelope"]),
        ("MAIL", 553, PermanentFailure, ["connect", "envelope"]),
        ("RCPT", 450, TemporaryFailure, ["connect", "envelope"]),
        ("RCPT", 550, PermanentFailure, ["connect", "envelope"]),
        ("DATA", 452, TemporaryFailure, ["connect", "envelope"]),
        ("DATA", 554, PermanentFailure, ["connect", "envelope"]),
        ("DATA_END", 451, TemporaryFailure, ["connect", "envelope", "data"]),
        ("DATA_END", 554, PermanentFailure, ["connect", "envelope", "data"]),
    ],
)
def test_negative_replies_classified(smtp_server, config, stage, code, error, phases):
    smtp_server.fault(stage, code, "Injected")

    with pytest.raises(error, match=str(code)) as caught:
        deliver(config())

    assert type(caught.value) is error
    assert caught.value.reply.code == code
    assert caught.value.phases == phases
    assert smtp_server.deliveries == []


def test_4xx_then_accepted_delivers_once(smtp_server, config):
    smtp_server.fault("DATA_END", 451)

    with pytest.raises(TemporaryFailure):
        deliver(config())
    deliver(config())

    assert len(smtp_server.deliveries) == 1


def test_connection_dropped_at_data_command_is_temporary(smtp_server, config):
    smtp_server.drop("DATA")

    with pytest.raises(TemporaryFailure) as caught:
        deliver(config())

    assert caught.value.phases == ["connect", "envelope"]
    assert smtp_server.deliveries == []


def test_connection_dropped_after_the_body_is_uncertain(smtp_server, config):
    smtp_server.drop("DATA_END")

    with pytest.raises(DeliveryUncertain, match="may have been delivered") as caught:
        deliver(config())

    assert caught.value.phases == ["connect", "envelope", "data"]
    assert len(smtp_server.deliveries) == 1  # the server has it


def test_slow_final_reply_times_out_uncertain(smtp_server, config):
    smtp_server.hang(3)

    with pytest.raises(DeliveryUncertain, match="timed out") as caught:
        deliver(config(read_timeout=0.5))

    assert caught.value.phases == ["connect", "envelope", "data"]
    assert len(smtp_server.deliveries) == 1


def test_connection_refused_is_temporary():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    config = ServerConfig(
        host="127.0.0.1", port=port, encryption="none", allow_private=True, allow_plaintext=True
    )

    with pytest.raises(TemporaryFailure, match="cannot connect") as caught:
        deliver(config, credentials=None)

    assert caught.value.phases == ["connect"]


def test_server_that_never_greets_times_out_temporary():
    with socket.socket() as listener:  # accepts (the kernel does) and never speaks
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        config = ServerConfig(
            host="127.0.0.1",
            port=listener.getsockname()[1],
            encryption="none",
            allow_private=True,
            allow_plaintext=True,
            read_timeout=0.3,
        )
        with pytest.raises(TemporaryFailure, match="timed out"):
            deliver(config, credentials=None)


def test_a_dns_server_that_never_answers_is_given_up_after_the_connect_timeout(monkeypatch):
    # getaddrinfo takes no timeout; a DNS server that does not answer is
    # simulated by a resolver that sleeps.
    def dns(host, *args, **kwargs):
        time.sleep(3)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", dns)
    config = ServerConfig(
        host="slow-dns.example.com",
        port=587,
        encryption="none",
        allow_private=True,
        allow_plaintext=True,
        connect_timeout=0.3,
    )
    started = time.monotonic()

    with pytest.raises(TemporaryFailure, match=r"no answer within 0\.3 s") as caught:
        deliver(config, credentials=None)

    assert time.monotonic() - started < 2
    assert caught.value.phases == ["connect"]  # nothing was sent: safe to retry


# --- Total deadlines (issue 14): a server that trickles a byte just under each
# read timeout is given up at the deadline, not after the task's time limit.


def trickled_config(port, **overrides):
    values = {
        "host": "127.0.0.1",
        "port": port,
        "encryption": "none",
        "allow_private": True,
        "allow_plaintext": True,
        "read_timeout": 0.6,  # the trickler sends a byte every 0.3 s: no read times out
        "connect_deadline": 1.5,
    }
    return ServerConfig(**{**values, **overrides})


@pytest.mark.parametrize("stage", ["greeting", "EHLO"])
def test_connection_deadline_stops_a_trickled_greeting_or_ehlo_temporary(stage):
    with Trickler(stage) as trickler:
        started = time.monotonic()

        with pytest.raises(TemporaryFailure, match=r"not connected and logged in within 1\.5 s") as caught:
            deliver(trickled_config(trickler.port), credentials=None)

        elapsed = time.monotonic() - started
    assert 1.4 < elapsed < 2.5
    assert trickler.trickled >= 3  # it was trickling, not silent
    assert caught.value.phases == ["connect"]  # nothing of the message went: retried later


def test_message_deadline_stops_a_trickled_final_reply_uncertain(settings):
    settings.SMTP_MESSAGE_DEADLINE = 1.5
    settings.SMTP_MESSAGE_MIN_RATE = 1_000_000_000  # the size adds nothing here
    with Trickler("DATA_END") as trickler:
        started = time.monotonic()

        with pytest.raises(DeliveryUncertain, match=r"not done within its deadline of 1\.5 s") as caught:
            deliver(trickled_config(trickler.port, connect_deadline=None), credentials=None)

        elapsed = time.monotonic() - started
    assert 1.4 < elapsed < 2.5
    assert trickler.bodies == 1  # the server has the message: never sent again
    assert caught.value.phases == ["connect", "envelope", "data"]


def test_message_deadline_stops_a_slowly_read_body_uncertain(settings):
    # A server that takes the body at ~50 KiB/s: no 64 KiB write waits the
    # 5 s write timeout, the 16 MB would take five minutes; the deadline ends it.
    settings.SMTP_MESSAGE_DEADLINE = 1.5
    settings.SMTP_MESSAGE_MIN_RATE = 1_000_000_000
    data = MESSAGE + (b"z" * 998 + b"\r\n") * 16_000
    with Trickler("BODY") as trickler:
        config = trickled_config(trickler.port, connect_deadline=None, read_timeout=5.0)
        started = time.monotonic()

        with pytest.raises(DeliveryUncertain, match=r"not done within its deadline of 1\.5 s") as caught:
            deliver(config, credentials=None, data=data)

        elapsed = time.monotonic() - started
    assert 1.4 < elapsed < 3
    assert caught.value.phases == ["connect", "envelope", "data"]


def test_message_deadline_before_the_body_is_temporary(settings):
    # The message's deadline gone by MAIL FROM: nothing was handed over.
    settings.SMTP_MESSAGE_DEADLINE = 0.0
    settings.SMTP_MESSAGE_MIN_RATE = 1_000_000_000
    with (
        Trickler("DATA_END") as trickler,
        pytest.raises(TemporaryFailure, match="not done within its deadline") as caught,
    ):
        deliver(trickled_config(trickler.port), credentials=None)

    assert trickler.bodies == 0
    assert caught.value.phases == ["connect", "envelope"]


def test_healthy_server_within_the_deadlines(smtp_server, config, settings):
    # Each message is slower than the connection deadline, and the session
    # longer than it and than one message's deadline: each deadline is its own.
    settings.SMTP_MESSAGE_DEADLINE = 1.0
    smtp_server.hang(0.6, times=None)
    started = time.monotonic()

    with SmtpSession(config(connect_deadline=1.0), CREDENTIALS) as session:
        for n in range(3):
            session.deliver(
                envelope_from="alice@example.com", recipients=["bob@example.net"], data=message(n)
            )

    assert time.monotonic() - started > 1.8
    assert session.connections == 1
    assert len(smtp_server.deliveries) == 3


def test_a_large_message_gets_time_for_its_size(smtp_server, config, settings):
    # 2 MB at SMTP_MESSAGE_MIN_RATE 2 MB/s: one second more than the 0.3 s base.
    settings.SMTP_MESSAGE_DEADLINE = 0.3
    settings.SMTP_MESSAGE_MIN_RATE = 2_000_000
    smtp_server.hang(0.6)
    data = MESSAGE + (b"y" * 998 + b"\r\n") * 2000

    result = deliver(config(), data=data)

    assert result.reply.code == 250
    assert len(smtp_server.deliveries) == 1


def test_endless_reply_line_aborts(smtp_server):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def serve():
            conn, _ = listener.accept()
            with conn, contextlib.suppress(OSError):  # the client hangs up on us
                conn.sendall(b"220-" + b"x" * 20000 + b"\r\n220 hi\r\n")
                conn.recv(100)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        config = ServerConfig(
            host="127.0.0.1",
            port=listener.getsockname()[1],
            encryption="none",
            allow_private=True,
            allow_plaintext=True,
        )
        with pytest.raises(TemporaryFailure, match="longer than 8192"):
            deliver(config, credentials=None)
        thread.join(5)


# --- Recipients and the message ----------------------------------------------------------


def test_one_recipient_refused_among_three(smtp_server, config):
    smtp_server.refuse("carol@example.net", 550, "5.1.1 No such user")

    result = deliver(config(), recipients=["bob@example.net", "carol@example.net", "dave@example.net"])

    assert list(result.accepted) == ["bob@example.net", "dave@example.net"]
    assert result.refused["carol@example.net"].code == 550
    assert "No such user" in result.refused["carol@example.net"].text
    [delivery] = smtp_server.deliveries
    assert delivery.rcpt_tos == ["bob@example.net", "dave@example.net"]


def test_all_refused_with_a_4xx_among_them_is_temporary(smtp_server, config):
    smtp_server.refuse("bob@example.net", 550)
    smtp_server.refuse("carol@example.net", 450, "Mailbox busy")

    with pytest.raises(TemporaryFailure, match="450") as caught:
        deliver(config(), recipients=["bob@example.net", "carol@example.net"])

    assert {a: r.code for a, r in caught.value.refused.items()} == {
        "bob@example.net": 550,
        "carol@example.net": 450,
    }
    assert smtp_server.deliveries == []


def test_smtputf8_needed_and_not_offered(smtp_server, config):
    smtp_server.hide("SMTPUTF8")

    with pytest.raises(PermanentFailure, match="does not offer SMTPUTF8") as caught:
        deliver(config(), recipients=["jürgen@example.net"])

    assert caught.value.phases == ["connect"]
    assert smtp_server.deliveries == []


def test_smtputf8_and_8bitmime_used_when_needed(smtp_server, config):
    data = "From: jürgen@example.com\r\nSubject: Grüße\r\n\r\nGrüße.\r\n".encode()

    deliver(
        config(), envelope_from="jürgen@example.com", recipients=["zoë@example.net"], data=data, smtputf8=True
    )

    [delivery] = smtp_server.deliveries
    assert delivery.smtputf8
    assert "BODY=8BITMIME" in delivery.mail_command
    assert delivery.mail_from == "jürgen@example.com"
    assert delivery.rcpt_tos == ["zoë@example.net"]
    assert delivery.data == data


def test_8bit_body_and_no_8bitmime(smtp_server, config):
    smtp_server.hide("8BITMIME")

    with pytest.raises(PermanentFailure, match="8BITMIME"):
        deliver(config(), data=MESSAGE + "Grüße\r\n".encode())

    assert smtp_server.deliveries == []


def test_body_dots_and_bare_line_ends(smtp_server, config):
    data = b"Subject: dots\r\n\r\n.leading dot\n..two\rlast line without end"

    deliver(config(), data=data)

    assert smtp_server.deliveries[0].data == (
        b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\nlast line without end\r\n"
    )


@pytest.mark.parametrize(
    "address", ["bob@example.net\r\nRCPT TO:<eve@example.net>", "bob@example.net> NOTIFY=NEVER", ""]
)
def test_unusable_recipient_refused_before_connecting(smtp_server, config, address):
    with pytest.raises(PermanentFailure, match="unusable envelope address") as caught:
        deliver(config(), recipients=[address])

    assert caught.value.phases == []
    assert smtp_server.deliveries == []


def test_phase_callback_error_stops_before_the_body(smtp_server, config):
    def on_phase(phase):
        if phase == "data":
            raise RuntimeError("database gone")

    with pytest.raises(RuntimeError, match="database gone"):
        message_deliver(
            config=config(),
            credentials=CREDENTIALS,
            envelope_from="alice@example.com",
            recipients=["bob@example.net"],
            data=MESSAGE,
            on_phase=on_phase,
        )

    assert smtp_server.deliveries == []


# --- Several messages over one connection (SmtpSession) --------------------------------------


def message(n: int) -> bytes:
    return MESSAGE.replace(b"<1@example.com>", f"<{n}@example.com>".encode())


def test_a_session_sends_several_messages_over_one_connection(smtp_server, config):
    phases = []
    with SmtpSession(config(), CREDENTIALS) as session:
        for n in range(3):
            session.deliver(
                envelope_from="alice@example.com",
                recipients=["bob@example.net"],
                data=message(n),
                on_phase=phases.append,
            )

    assert session.connections == 1
    assert [d.data.count(f"<{n}@example.com>".encode()) for n, d in enumerate(smtp_server.deliveries)] == [
        1,
        1,
        1,
    ]
    assert phases == ["connect", "envelope", "data", "envelope", "data", "envelope", "data"]
    assert [login for login, accepted in smtp_server.logins if accepted] == [SMTP_USER]  # logged in once


def test_a_refused_message_leaves_the_session_usable(smtp_server, config):
    smtp_server.refuse("nobody@example.net")
    with SmtpSession(config(), CREDENTIALS) as session:
        session.deliver(envelope_from="alice@example.com", recipients=["bob@example.net"], data=message(1))
        with pytest.raises(PermanentFailure):
            session.deliver(
                envelope_from="alice@example.com", recipients=["nobody@example.net"], data=message(2)
            )
        session.deliver(envelope_from="alice@example.com", recipients=["bob@example.net"], data=message(3))

    assert session.connections == 1
    assert len(smtp_server.deliveries) == 2


def test_a_kept_connection_the_server_closes_is_made_again(smtp_server, config):
    with SmtpSession(config(), CREDENTIALS) as session:
        session.deliver(envelope_from="alice@example.com", recipients=["bob@example.net"], data=message(1))
        smtp_server.fault("MAIL", 421, "Too many messages, closing")
        session.deliver(envelope_from="alice@example.com", recipients=["bob@example.net"], data=message(2))

    assert session.connections == 2
    assert len(smtp_server.deliveries) == 2


def test_after_an_uncertain_message_the_next_goes_on_a_new_connection(smtp_server, config):
    smtp_server.drop("DATA_END")
    with SmtpSession(config(), CREDENTIALS) as session:
        with pytest.raises(DeliveryUncertain):
            session.deliver(
                envelope_from="alice@example.com", recipients=["bob@example.net"], data=message(1)
            )
        session.deliver(envelope_from="alice@example.com", recipients=["bob@example.net"], data=message(2))

    assert session.connections == 2
    assert len(smtp_server.deliveries) == 2  # the first reached the server before it dropped
