"""Checks of an account's fields that every way in uses: the API's
serializer (`accounts.serializers`) and the operator's admin form
(`accounts.admin`), both of which then call `account_create` and
`account_update`."""

import unicodedata

from django.core.exceptions import ValidationError

# The fields that go into the mail servers' login commands.
CREDENTIAL_FIELDS = ("username", "password", "smtp_username", "smtp_password")


def validate_no_control_characters(value: str) -> None:
    """Usernames and passwords go into the mail server's login command as
    they are (IMAP LOGIN sends the username unquoted): a line break there
    would end the command and start another. Control characters (C0, DEL,
    C1: Unicode category Cc) are refused."""
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise ValidationError(
            "Control characters (line breaks, tabs, NUL and the like) are not allowed.",
            code="control_characters",
        )
