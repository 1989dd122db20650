"""Trying an account's mail servers before it is saved.

An account is only worth storing if its server answers and takes its login:
otherwise a user could register accounts pointed at a tarpit, or with a wrong
password that every sync then sends again. Talking IMAP and SMTP is the job
of the layers above this one (mailboxes, compose), which this app may not
import: they register a verifier here, from their AppConfig.ready(), and the
account services call `account_verify()` before they save.

A verifier is called with the unsaved account (its secrets already encrypted
on it, as `account_credentials()` reads them) and which of its servers to try;
it returns the errors by field (`password`, `hostname`, `smtp_port`...), empty
when the server took the login. Every message is cleaned here of the account's
passwords and of any IP address but the host the user gave, so neither an
internal address the host resolved to nor a secret reaches the client.
"""

import ipaddress
import re
from collections.abc import Callable

from django.conf import settings

from emailclient.core.exceptions import ApplicationError

from .models import EmailAccount

Verifier = Callable[..., dict[str, list[str]]]

_VERIFIERS: list[Verifier] = []

# IPv4 addresses first, then what may be an IPv6 one (checked below): in one
# pass, "peer:10.1.2.3" matched as one IPv6 candidate and was left as it was.
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
_IPV6 = re.compile(r"[0-9A-Fa-f:]*:[0-9A-Fa-f:.]+")


class AccountVerificationFailed(ApplicationError):
    code = "account_verification_failed"


def account_verifier_register(verifier: Verifier) -> None:
    """Add `verifier(*, account, incoming, outgoing) -> {field: [messages]}`;
    registering the same function again does nothing (ready() may run twice)."""
    if verifier not in _VERIFIERS:
        _VERIFIERS.append(verifier)


def _clean(message: str, *, account: EmailAccount, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    given = {account.hostname, account.smtp_hostname}

    def hide(match: re.Match[str]) -> str:
        text = match.group(0)
        address = text.rstrip(".:")  # "connect to fd00::1." ends a sentence
        try:
            ipaddress.ip_address(address)
        except ValueError:
            return text
        return text if address in given else "[address]" + text[len(address) :]

    return _IPV6.sub(hide, _IPV4.sub(hide, message))


def account_verify(*, account: EmailAccount, incoming: bool, outgoing: bool, secrets: list[str]) -> None:
    """Log in to `account`'s incoming server (`incoming`) and its SMTP server
    (`outgoing`, when it has one) through the registered verifiers; raise
    `AccountVerificationFailed` (400) with the errors by field when one
    refuses. Does nothing when ACCOUNT_VERIFY_ON_SAVE is off. `secrets` (the
    clear passwords) are masked in every message."""
    if not settings.ACCOUNT_VERIFY_ON_SAVE or not (incoming or outgoing):
        return
    errors: dict[str, list[str]] = {}
    for verifier in _VERIFIERS:
        for field, messages in verifier(account=account, incoming=incoming, outgoing=outgoing).items():
            errors.setdefault(field, []).extend(
                _clean(message, account=account, secrets=secrets) for message in messages
            )
    if errors:
        raise AccountVerificationFailed(
            "The mail server did not accept these settings; nothing was saved.", fields=errors
        )
