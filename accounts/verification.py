"""Trying an account's mail servers before it is saved.

An account is only worth storing if its server answers and takes its login:
otherwise a user could register accounts pointed at a tarpit, or with a wrong
password that every sync then sends again. Talking IMAP and SMTP is the job
of the layers above this one (mailboxes, compose), which this app may not
import: they register a verifier here, from their AppConfig.ready(), and the
account services call `account_verify()` before they save.

A verifier is called with the unsaved account (its secrets already encrypted
on it, as `account_credentials()` reads them), which of its servers to try
and the seconds it may take (what is left of ACCOUNT_VERIFY_DEADLINE); it
returns the errors by field (`password`, `hostname`, `smtp_port`...), empty
when the server took the login. Every message is cleaned here of the account's
passwords and of any IP address but the host the user gave, so neither an
internal address the host resolved to nor a secret reaches the client.

The request waits for these logins on a web thread: at most
ACCOUNT_VERIFY_DEADLINE for all of them, and at most
ACCOUNT_VERIFY_MAX_CONCURRENT_PER_USER (per account owner) and
..._PER_TENANT verifications at once across the web processes
(`emailclient.core.semaphores`); one more is a 429.
"""

import ipaddress
import logging
import re
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from redis.exceptions import RedisError

from emailclient.core.exceptions import ApplicationError
from emailclient.core.semaphores import semaphore_key, semaphores_acquire, semaphores_release

from .models import EmailAccount

logger = logging.getLogger(__name__)

Verifier = Callable[..., dict[str, list[str]]]

_VERIFIERS: list[Verifier] = []

# IPv4 addresses first, then what may be an IPv6 one (checked below): in one
# pass, "peer:10.1.2.3" matched as one IPv6 candidate and was left as it was.
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
_IPV6 = re.compile(r"[0-9A-Fa-f:]*:[0-9A-Fa-f:.]+")


class AccountVerificationFailed(ApplicationError):
    code = "account_verification_failed"


class VerificationsBusy(ApplicationError):
    status_code = 429
    code = "verifications_busy"
    retry_after = 5


# A slot outlives a verification by this much if its process dies mid-way.
_SLOT_SPARE_SECONDS = 30.0


def verification_deadline_message(host: str) -> str:
    """A verifier's error when ACCOUNT_VERIFY_DEADLINE, not the server's own
    connection deadline, ran out first."""
    return f"{host}: not logged in within {settings.ACCOUNT_VERIFY_DEADLINE:g} s (ACCOUNT_VERIFY_DEADLINE)"


def account_verifier_register(verifier: Verifier) -> None:
    """Add `verifier(*, account, incoming, outgoing, seconds) -> {field: [messages]}`;
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
    (`outgoing`, when it has one) through the registered verifiers, within
    ACCOUNT_VERIFY_DEADLINE in all; raise `AccountVerificationFailed` (400)
    with the errors by field when one refuses, `VerificationsBusy` (429) when
    the owner or the tenant has as many verifications running as allowed.
    Does nothing when ACCOUNT_VERIFY_ON_SAVE is off. `secrets` (the clear
    passwords) are masked in every message."""
    if not settings.ACCOUNT_VERIFY_ON_SAVE or not (incoming or outgoing):
        return
    budget = settings.ACCOUNT_VERIFY_DEADLINE
    keys = [
        semaphore_key(f"accounts:verify:user:{account.user_id}"),
        semaphore_key(f"accounts:verify:tenant:{account.tenant_id}"),
    ]
    caps = [
        ("the account's owner", "ACCOUNT_VERIFY_MAX_CONCURRENT_PER_USER"),
        ("the tenant", "ACCOUNT_VERIFY_MAX_CONCURRENT_PER_TENANT"),
    ]
    holder = uuid.uuid4().hex
    try:
        full = semaphores_acquire(
            keys=keys,
            limits=[getattr(settings, name) for _, name in caps],
            holder=holder,
            lease=budget + _SLOT_SPARE_SECONDS,
        )
    except RedisError:  # Redis away: the deadline still bounds this one
        logger.warning("account verification not counted: Redis is unreachable", exc_info=True)
        full, keys = 0, []
    if full:
        whose, name = caps[full - 1]
        raise VerificationsBusy(
            f"{getattr(settings, name)} accounts of {whose} are being checked with their mail servers "
            f"already ({name}); try again in a few seconds."
        )
    try:
        errors = _verify_within(account, incoming=incoming, outgoing=outgoing, budget=budget)
    finally:
        if keys:
            try:
                semaphores_release(keys=keys, holder=holder)
            except RedisError:  # the lease ends on its own
                logger.warning("account verification slots not released", exc_info=True)
    errors = {
        field: [_clean(message, account=account, secrets=secrets) for message in messages]
        for field, messages in errors.items()
    }
    if errors:
        raise AccountVerificationFailed(
            "The mail server did not accept these settings; nothing was saved.", fields=errors
        )


def _verify_within(
    account: EmailAccount, *, incoming: bool, outgoing: bool, budget: float
) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    ends = time.monotonic() + budget
    for verifier in _VERIFIERS:
        seconds = ends - time.monotonic()
        if seconds <= 0.5:  # too little left to connect, secure and log in
            fields = (["hostname"] if incoming else []) + (
                ["smtp_hostname"] if outgoing and account.smtp_hostname else []
            )
            message = f"Not tried: the servers took the whole {budget:g} s of ACCOUNT_VERIFY_DEADLINE."
            for field in fields:
                if field not in errors:
                    errors[field] = [message]
            break
        for field, messages in verifier(
            account=account, incoming=incoming, outgoing=outgoing, seconds=seconds
        ).items():
            errors.setdefault(field, []).extend(messages)
    return errors
