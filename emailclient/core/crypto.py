"""Mail credentials at rest: Fernet (AES-128-CBC + HMAC-SHA256) under a
MultiFernet, so keys can be rotated without downtime.

Only ciphertext is stored. Plaintext leaves this module only towards a mail
server; it is never logged, serialized or put in task arguments.
"""

from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class CredentialError(Exception):
    """A stored credential cannot be decrypted with any configured key."""


@cache
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("CREDENTIAL_ENCRYPTION_KEYS is empty.")
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(
            "CREDENTIAL_ENCRYPTION_KEYS holds a key that is not a Fernet key "
            "(32 url-safe base64-encoded bytes)."
        ) from exc


def _current() -> MultiFernet:
    return _fernet(tuple(settings.CREDENTIAL_ENCRYPTION_KEYS))


def encrypt_secret(plaintext: str) -> str:
    return _current().encrypt(plaintext.encode()).decode("ascii")


def decrypt_secret(token: str) -> str:
    try:
        return _current().decrypt(token.encode("ascii")).decode()
    except InvalidToken as exc:
        raise CredentialError("credential cannot be decrypted with the configured keys") from exc


def rotate_secret(token: str) -> str:
    """Re-encrypt under the first (primary) key."""
    try:
        return _current().rotate(token.encode("ascii")).decode("ascii")
    except InvalidToken as exc:
        raise CredentialError("credential cannot be decrypted with the configured keys") from exc
