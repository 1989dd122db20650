"""Addresses and header texts from API input, checked strictly.

What the compose API accepts as one mailbox (`mailbox_parse`):

- `"Name <addr>"`, `"<addr>"` or a bare `"addr"`. A display name with a comma,
  semicolon, colon, angle bracket, backslash or double quote must be quoted
  (`"Doe, John" <j@x.org>`, `"A \\"quoted\\" name" <a@x.org>`): unquoted, RFC
  5322 reads `Doe, John <j@x.org>` as two addresses, and guessing which the
  user meant is how mail goes to the wrong person.
- `{"name": ..., "address": ...}` (`name` optional; no other keys).

Refused, each with a message meant for the user (`AddressError`, a 400 field
error in the API): CR, LF, NUL and every other control character anywhere
(header injection), more than one address in one entry, group syntax, no
"@", quoted or otherwise invalid local parts, address literals
(`user@[192.0.2.1]`), invalid domains, a local part over 64 octets, an
address over 254 octets, a display name over `MAX_NAME_LENGTH` characters.

Domains are lower-cased and internationalised ones converted to IDNA
(`bücher.example` -> `xn--bcher-kva.example`) with the standard library's
`idna` codec, which implements IDNA 2003 (nameprep maps `ß` to `ss`, where
IDNA 2008 keeps it; the `idna` package is not a dependency). Single-label
domains (`demo@localhost`) are accepted: the development server delivers to
one. A non-ASCII local part (RFC 6531) is accepted and can be sent only
through a server that offers SMTPUTF8: `needs_smtputf8` says so.
"""

from __future__ import annotations

import base64
import re
import unicodedata
from collections.abc import Mapping, Sequence

__all__ = [
    "MAX_ADDRESS_LENGTH",
    "MAX_HEADER_TEXT_LENGTH",
    "MAX_LOCAL_PART_LENGTH",
    "MAX_NAME_LENGTH",
    "AddressError",
    "domain_to_ascii",
    "encoded_words",
    "format_mailbox",
    "header_text_check",
    "mailbox_list_parse",
    "mailbox_parse",
    "mailbox_words",
    "needs_smtputf8",
]

MAX_LOCAL_PART_LENGTH = 64  # octets, RFC 5321 §4.5.3.1.1
MAX_ADDRESS_LENGTH = 254  # octets: a path of 256 less its angle brackets (RFC 5321 §4.5.3.1.3, errata 1690)
MAX_DOMAIN_LENGTH = 253
MAX_NAME_LENGTH = 200  # characters of a display name
MAX_HEADER_TEXT_LENGTH = 10_000  # characters of a subject or file name (the parser keeps as many)

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators:
# anything a header writer or reader may take for a line break. TAB is
# allowed in header texts (it is folding white space), never in an address.
# Lone surrogates (valid in JSON, not in UTF-8) are refused alike.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_CONTROL_OR_TAB = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# atext of RFC 5322 §3.2.3, plus any non-ASCII character (RFC 6532 §3.2).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
# Characters an unquoted display name may not hold: RFC 5322 specials that
# would change how the entry splits (",", ";", ":" groups, "<>", quotes).
_NAME_SPECIALS = re.compile(r'[,;:<>"\\]')
_LABEL_SEPARATORS = re.compile("[.\u3002\uff0e\uff61]")


class AddressError(ValueError):
    """An address, name or header text the API refuses; the message is for
    the user. `index` is the entry's position in a list, when it had one."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.index = index


def _has_control(value: str, *, allow_tab: bool) -> bool:
    pattern = _CONTROL if allow_tab else _CONTROL_OR_TAB
    return pattern.search(value) is not None


def header_text_check(value: object, *, max_length: int = MAX_HEADER_TEXT_LENGTH) -> str:
    """`value` unchanged if it can go into a header (a subject, a file name):
    a string with no CR, LF, NUL or other control character (TAB allowed) of
    at most `max_length` characters. Raises AddressError otherwise."""
    if not isinstance(value, str):
        raise AddressError("Must be a string.")
    if _has_control(value, allow_tab=True):
        raise AddressError("Must not contain line breaks or control characters.")
    if len(value) > max_length:
        raise AddressError(f"Must be at most {max_length} characters.")
    return value


def needs_smtputf8(address: str) -> bool:
    """True when `address` (as `mailbox_parse` returns it: its domain already
    IDNA) can only be sent with SMTPUTF8: a non-ASCII local part."""
    return not address.isascii()


def domain_to_ascii(domain: str) -> str:
    """The domain lower-cased, internationalised labels as IDNA (A-labels),
    checked: LDH labels of 1 to 63 octets, at most 253 in all, a last label
    that is not all digits. Raises AddressError."""
    if not domain:
        raise AddressError("The domain is missing.")
    if domain.startswith("[") or domain.endswith("]"):
        raise AddressError("Address literals (user@[IP]) are not accepted.")
    labels = _LABEL_SEPARATORS.split(domain)
    if any(not label for label in labels):
        raise AddressError(f"The domain {domain!r} is not valid: empty label.")
    ascii_labels: list[str] = []
    for label in labels:
        if label.isascii():
            ascii_label = label.lower()
        else:
            try:
                ascii_label = label.encode("idna").decode("ascii").lower()
            except UnicodeError:
                raise AddressError(
                    f"The domain {domain!r} is not a valid internationalised domain."
                ) from None
        if len(ascii_label) > 63 or not _LDH_LABEL.fullmatch(ascii_label):
            raise AddressError(f"The domain {domain!r} is not valid.")
        if ascii_label.startswith("xn--"):
            try:
                ascii_label.encode("ascii").decode("idna")
            except UnicodeError:
                raise AddressError(f"The domain {domain!r} has an invalid IDNA label.") from None
        ascii_labels.append(ascii_label)
    if ascii_labels[-1].isdigit():
        raise AddressError(f"The domain {domain!r} is not valid.")
    result = ".".join(ascii_labels)
    if len(result) > MAX_DOMAIN_LENGTH:
        raise AddressError("The domain is too long.")
    return result


def _addr_spec_check(addr: str) -> str:
    """The address `local@domain` with its domain as IDNA, checked."""
    if not addr:
        raise AddressError("The address is empty.")
    if _has_control(addr, allow_tab=False):
        raise AddressError("The address must not contain line breaks or control characters.")
    if "," in addr or ";" in addr:
        raise AddressError("Give one address per entry.")
    if any(ch.isspace() for ch in addr):
        raise AddressError("The address must not contain spaces.")
    if "@" not in addr:
        raise AddressError(f"{addr!r} is not an email address: the @ is missing.")
    local, _, domain = addr.rpartition("@")
    if not local:
        raise AddressError(f"{addr!r} has no local part before the @.")
    if local.startswith('"'):
        raise AddressError("Quoted local parts are not accepted.")
    if not _DOT_ATOM.fullmatch(local) or "@" in local:
        raise AddressError(f"{addr!r} is not a valid email address.")
    if any(unicodedata.category(ch) in ("Cf", "Cs", "Co", "Cn") for ch in local if not ch.isascii()):
        raise AddressError(f"{addr!r} contains invisible or unassigned characters.")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART_LENGTH:
        raise AddressError(f"The part before the @ may be at most {MAX_LOCAL_PART_LENGTH} characters.")
    result = f"{local}@{domain_to_ascii(domain)}"
    if len(result.encode("utf-8")) > MAX_ADDRESS_LENGTH:
        raise AddressError(f"An address may be at most {MAX_ADDRESS_LENGTH} characters.")
    return result


def _name_check(name: str) -> str:
    if _has_control(name, allow_tab=False):
        raise AddressError("The name must not contain line breaks or control characters.")
    name = " ".join(name.split())
    if len(name) > MAX_NAME_LENGTH:
        raise AddressError(f"A name may be at most {MAX_NAME_LENGTH} characters.")
    return name


def _quoted_string_end(value: str, start: int) -> tuple[str, int]:
    """The content of the quoted string opening at `value[start]` (a '"'),
    unescaped, and the index after its closing quote."""
    out: list[str] = []
    position = start + 1
    while position < len(value):
        ch = value[position]
        if ch == "\\":
            if position + 1 >= len(value):
                break
            out.append(value[position + 1])
            position += 2
            continue
        if ch == '"':
            return "".join(out), position + 1
        out.append(ch)
        position += 1
    raise AddressError("The name has an unclosed double quote.")


def _mailbox_string_parse(value: str) -> tuple[str, str]:
    """(name, addr) of one `Name <addr>`, `"Quoted" <addr>`, `<addr>` or `addr`."""
    text = value.strip()
    if not text:
        raise AddressError("The address is empty.")
    if text.startswith('"'):
        name, position = _quoted_string_end(text, 0)
        if text[position : position + 1] == "@":
            raise AddressError("Quoted local parts are not accepted.")
        rest = text[position:].lstrip()
        if not rest.startswith("<"):
            if rest.startswith(","):
                raise AddressError("Give one address per entry.")
            raise AddressError(
                'A quoted name must be followed by an address in angle brackets: "Name" <addr>.'
            )
    else:
        bracket = text.find("<")
        if bracket < 0:
            if ":" in text:
                raise AddressError("Group syntax (name: addresses;) is not accepted.")
            if ">" in text or '"' in text:
                raise AddressError(f"{text!r} is not a valid email address.")
            return "", text
        name = text[:bracket].strip()
        if ":" in name:
            raise AddressError("Group syntax (name: addresses;) is not accepted.")
        if _NAME_SPECIALS.search(name):
            if "," in name or ";" in name:
                raise AddressError(
                    'Give one address per entry; a name with a comma must be quoted: "Doe, John" <j@x.org>.'
                )
            raise AddressError('A name with special characters must be quoted: "Name" <addr>.')
        rest = text[bracket:]
    closing = rest.find(">")
    if closing < 0:
        raise AddressError("The address has no closing angle bracket.")
    addr = rest[1:closing]
    trailing = rest[closing + 1 :].strip()
    if trailing:
        if trailing.startswith((",", ";")):
            raise AddressError("Give one address per entry.")
        raise AddressError("Unexpected text after the address.")
    if "<" in addr:
        raise AddressError(f"{text!r} is not a valid email address.")
    return name, addr


def mailbox_parse(value: object) -> dict[str, str]:
    """One mailbox from API input as `{"name": str, "address": str}`: the
    name unquoted with its white space folded, the address with an IDNA
    domain. Raises AddressError with a message for the user."""
    if isinstance(value, str):
        if _has_control(value, allow_tab=False):
            raise AddressError("Must not contain line breaks or control characters.")
        if len(value) > 4 * (MAX_ADDRESS_LENGTH + MAX_NAME_LENGTH):
            raise AddressError("Too long for one address.")
        name, addr = _mailbox_string_parse(value)
    elif isinstance(value, Mapping):
        unknown = set(value) - {"name", "address"}
        if unknown:
            raise AddressError(f"Unknown keys: {', '.join(sorted(map(str, unknown)))}.")
        raw_name = value.get("name", "")
        raw_addr = value.get("address")
        if raw_name is None:
            raw_name = ""
        if not isinstance(raw_name, str) or not isinstance(raw_addr, str):
            raise AddressError('Give "address" (and optionally "name") as strings.')
        name, addr = raw_name, raw_addr.strip()
        if _has_control(addr, allow_tab=False):
            raise AddressError("The address must not contain line breaks or control characters.")
        if "<" in addr or ">" in addr:
            raise AddressError('Give the bare address in "address", the name in "name".')
    else:
        raise AddressError('An address is a string ("Name <addr>") or an object {"name", "address"}.')
    return {"name": _name_check(name), "address": _addr_spec_check(addr)}


def mailbox_list_parse(values: object) -> list[dict[str, str]]:
    """Every entry of a list through `mailbox_parse`; the first bad one raises
    AddressError naming its position (from 1) and carrying its `index`."""
    if values is None:
        return []
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Sequence):
        raise AddressError("Give a list of addresses.")
    result: list[dict[str, str]] = []
    for index, value in enumerate(values):
        try:
            result.append(mailbox_parse(value))
        except AddressError as exc:
            raise AddressError(f"Entry {index + 1}: {exc.message}", index=index) from None
    return result


# --- Writing -------------------------------------------------------------------

_PLAIN_WORD = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-\u0080-\U0010ffff]+")  # atext, "." (obs-phrase)
_ENCODED_WORD_OCTETS = 45  # base64 of 45 octets is 60 characters: a 72-character encoded word


def encoded_words(text: str) -> list[str]:
    """`text` as RFC 2047 encoded words (UTF-8, base64) of whole characters,
    each at most 72 characters; white space between them is ignored when
    they are decoded, so they may be folded apart."""
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    for ch in text:
        length = len(ch.encode("utf-8"))
        if size + length > _ENCODED_WORD_OCTETS and chunk:
            words.append(_encoded_word("".join(chunk)))
            chunk, size = [], 0
        chunk.append(ch)
        size += length
    if chunk:
        words.append(_encoded_word("".join(chunk)))
    return words


def _encoded_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "?="


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mailbox_words(mailbox: Mapping[str, str], *, smtputf8: bool = False) -> list[str]:
    """The words of a mailbox in an address header (folding may go between
    them): plain name words as they are; a name with other characters
    quoted; a name that is not ASCII (unless `smtputf8`) or holds "=?" as
    RFC 2047 encoded words (a reader would decode "=?" even inside quotes);
    then `<address>`, or the bare address when there is no name. Checked
    again with `mailbox_parse`; a non-ASCII local part needs `smtputf8`."""
    checked = mailbox_parse({"name": mailbox.get("name", "") or "", "address": mailbox["address"]})
    name, address = checked["name"], checked["address"]
    if not smtputf8 and not address.isascii():
        raise AddressError(f"{address!r} can only be sent to a server that offers SMTPUTF8.")
    if not name:
        return [address]
    if "=?" in name or (not smtputf8 and not name.isascii()):
        words = encoded_words(name)
    elif all(_PLAIN_WORD.fullmatch(word) for word in name.split(" ")):
        words = name.split(" ")
    else:
        words = [_quoted(name)]
    return [*words, f"<{address}>"]


def format_mailbox(mailbox: Mapping[str, str], *, smtputf8: bool = False) -> str:
    """`mailbox` ({"name", "address"}) as one header value, `mailbox_words`
    joined: `Name <addr>`, `"Doe, John" <addr>`, `=?utf-8?b?...?= <addr>`."""
    return " ".join(mailbox_words(mailbox, smtputf8=smtputf8))
