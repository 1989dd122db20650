"""What a server said reaches the user without the addresses we resolved."""

import pytest

from accounts.models import EmailAccount
from accounts.verification import _clean


@pytest.mark.parametrize(
    ("said", "shown"),
    [
        ("peer:10.1.2.3 refused", "peer:[address] refused"),
        ("connect to fd00::1.", "connect to [address]."),
        ("at 2001:db8::5: no route", "at [address]: no route"),
        ("connect to fd00::1", "connect to [address]"),
        ("mail.example.com (192.0.2.7) said 535", "mail.example.com ([address]) said 535"),
        ("imap.example.net:993 timed out at 12:30:01", "imap.example.net:993 timed out at 12:30:01"),
        ("203.0.113.9 refused", "203.0.113.9 refused"),  # the host the user gave
    ],
)
def test_resolved_addresses_are_hidden_and_the_given_host_kept(said, shown):
    account = EmailAccount(hostname="203.0.113.9", smtp_hostname="smtp.example.com")

    assert _clean(said, account=account, secrets=["hunter2"]) == shown


def test_passwords_are_masked():
    account = EmailAccount(hostname="imap.example.com")

    assert (
        _clean("LOGIN demo hunter2 failed", account=account, secrets=["hunter2", ""])
        == "LOGIN demo *** failed"
    )
