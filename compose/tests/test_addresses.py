"""Strict address parsing for the compose API (compose.addresses)."""

import pytest

from compose.addresses import (
    AddressError,
    domain_to_ascii,
    format_mailbox,
    header_text_check,
    mailbox_list_parse,
    mailbox_parse,
    needs_smtputf8,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("j@x.org", {"name": "", "address": "j@x.org"}),
        ("  j@x.org  ", {"name": "", "address": "j@x.org"}),
        ("<j@x.org>", {"name": "", "address": "j@x.org"}),
        ("John Doe <j@x.org>", {"name": "John Doe", "address": "j@x.org"}),
        ('"Doe, John" <j@x.org>', {"name": "Doe, John", "address": "j@x.org"}),
        ('"A \\"quoted\\" name" <a@x.org>', {"name": 'A "quoted" name', "address": "a@x.org"}),
        ('"back\\\\slash" <a@x.org>', {"name": "back\\slash", "address": "a@x.org"}),
        ('"<not@an.address>" <a@x.org>', {"name": "<not@an.address>", "address": "a@x.org"}),
        ("Jöhn Müller <j@x.org>", {"name": "Jöhn Müller", "address": "j@x.org"}),
        ("J. R.  R.   Tolkien <j@x.org>", {"name": "J. R. R. Tolkien", "address": "j@x.org"}),
        ("user@bücher.example", {"name": "", "address": "user@xn--bcher-kva.example"}),
        ("User@Example.COM", {"name": "", "address": "User@example.com"}),
        ("user@xn--bcher-kva.example", {"name": "", "address": "user@xn--bcher-kva.example"}),
        ("demo@localhost", {"name": "", "address": "demo@localhost"}),
        ("o'brien+tag@x.org", {"name": "", "address": "o'brien+tag@x.org"}),
        ("用户@例子.广告", {"name": "", "address": "用户@xn--fsqu00a.xn--4rr70v"}),
        ({"name": "Doe, John", "address": "j@x.org"}, {"name": "Doe, John", "address": "j@x.org"}),
        ({"address": "j@bücher.example"}, {"name": "", "address": "j@xn--bcher-kva.example"}),
        ({"name": None, "address": " j@x.org "}, {"name": "", "address": "j@x.org"}),
    ],
)
def test_mailbox_parse_accepts(value, expected):
    assert mailbox_parse(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "The address is empty."),
        ("   ", "The address is empty."),
        ("x@y.org\r\nBcc: evil@z.org", "Must not contain line breaks or control characters."),
        ("x@y.org\nBcc: evil@z.org", "Must not contain line breaks or control characters."),
        ("Name\r\n <x@y.org>", "Must not contain line breaks or control characters."),
        ("x\x00@y.org", "Must not contain line breaks or control characters."),
        ("x@y.org\u2028", "Must not contain line breaks or control characters."),
        ("Evil\x85Name <x@y.org>", "Must not contain line breaks or control characters."),
        ("a@x.org, b@y.org", "Give one address per entry."),
        ("a@x.org; b@y.org", "Give one address per entry."),
        ('"A" <a@x.org>, b@y.org', "Give one address per entry."),
        (
            "Doe, John <j@x.org>",
            'Give one address per entry; a name with a comma must be quoted: "Doe, John" <j@x.org>.',
        ),
        ("Friends: a@x.org, b@y.org;", "Group syntax (name: addresses;) is not accepted."),
        ("Friends: <a@x.org>", "Group syntax (name: addresses;) is not accepted."),
        ("undisclosed-recipients:;", "Group syntax (name: addresses;) is not accepted."),
        ("john.x.org", "'john.x.org' is not an email address: the @ is missing."),
        ("John <john.x.org>", "'john.x.org' is not an email address: the @ is missing."),
        ("@x.org", "'@x.org' has no local part before the @."),
        ("j@", "The domain is missing."),
        ("j@-x.org", "The domain '-x.org' is not valid."),
        ("j@x..org", "The domain 'x..org' is not valid: empty label."),
        ("j@x.org.", "The domain 'x.org.' is not valid: empty label."),
        ("j@x_y.org", "The domain 'x_y.org' is not valid."),
        ("j@1.2.3.4", "The domain '1.2.3.4' is not valid."),
        ("j@[192.0.2.1]", "Address literals (user@[IP]) are not accepted."),
        ("j@xn--zz.org", "The domain 'xn--zz.org' has an invalid IDNA label."),
        ("j..k@x.org", "'j..k@x.org' is not a valid email address."),
        (".j@x.org", "'.j@x.org' is not a valid email address."),
        ("a@b@x.org", "'a@b@x.org' is not a valid email address."),
        ('"john doe"@x.org', "Quoted local parts are not accepted."),
        ("john doe@x.org", "The address must not contain spaces."),
        ("John <j@x.org", "The address has no closing angle bracket."),
        ('"John <j@x.org>', "The name has an unclosed double quote."),
        ('"John" j@x.org', 'A quoted name must be followed by an address in angle brackets: "Name" <addr>.'),
        ("John <j@x.org> trailing", "Unexpected text after the address."),
        ('Jo"hn <j@x.org>', 'A name with special characters must be quoted: "Name" <addr>.'),
        ("j\u200b@x.org", "'j\\u200b@x.org' contains invisible or unassigned characters."),
        ("a" * 65 + "@x.org", "The part before the @ may be at most 64 characters."),
        ("ä" * 33 + "@x.org", "The part before the @ may be at most 64 characters."),
        ("a@" + ".".join(["b" * 63] * 4), "The domain is too long."),
        ("a@" + "b" * 64 + ".org", f"The domain '{'b' * 64}.org' is not valid."),
        ("a" * 64 + "@" + ".".join(["b" * 63] * 3), "An address may be at most 254 characters."),
        ('"' + "n" * 201 + '" <a@x.org>', "A name may be at most 200 characters."),
        ({"name": "x", "address": "a@x.org", "bcc": "e@z.org"}, "Unknown keys: bcc."),
        ({"name": "x"}, 'Give "address" (and optionally "name") as strings.'),
        ({"name": 1, "address": "a@x.org"}, 'Give "address" (and optionally "name") as strings.'),
        (
            {"name": "x\r\nBcc: e@z.org", "address": "a@x.org"},
            "The name must not contain line breaks or control characters.",
        ),
        (
            {"address": "a@x.org\r\nBcc: e@z.org"},
            "The address must not contain line breaks or control characters.",
        ),
        ({"address": "X <a@x.org>"}, 'Give the bare address in "address", the name in "name".'),
        (42, 'An address is a string ("Name <addr>") or an object {"name", "address"}.'),
        (None, 'An address is a string ("Name <addr>") or an object {"name", "address"}.'),
    ],
)
def test_mailbox_parse_refuses(value, message):
    with pytest.raises(AddressError) as caught:
        mailbox_parse(value)
    assert caught.value.message == message
    assert str(caught.value) == message


def test_the_longest_address_and_name_are_accepted():
    address = "a" * 64 + "@" + ".".join(["b" * 63, "c" * 63, "d" * 61])
    assert len(address) == 254
    assert mailbox_parse({"name": "n" * 200, "address": address}) == {"name": "n" * 200, "address": address}


def test_mailbox_list_parse_names_the_bad_entry():
    assert mailbox_list_parse(["a@x.org", {"name": "B", "address": "b@x.org"}]) == [
        {"name": "", "address": "a@x.org"},
        {"name": "B", "address": "b@x.org"},
    ]
    assert mailbox_list_parse(None) == []
    assert mailbox_list_parse([]) == []
    with pytest.raises(AddressError) as caught:
        mailbox_list_parse(["a@x.org", "x@y.org\r\nBcc: evil@z.org"])
    assert caught.value.message == "Entry 2: Must not contain line breaks or control characters."
    assert caught.value.index == 1
    for not_a_list in ("a@x.org", {"address": "a@x.org"}, 3):
        with pytest.raises(AddressError) as caught:
            mailbox_list_parse(not_a_list)
        assert caught.value.message == "Give a list of addresses."


def test_needs_smtputf8():
    assert needs_smtputf8(mailbox_parse("用户@例子.广告")["address"]) is True
    assert needs_smtputf8(mailbox_parse("user@bücher.example")["address"]) is False
    assert needs_smtputf8("plain@x.org") is False


def test_domain_to_ascii():
    assert domain_to_ascii("Bücher.Example") == "xn--bcher-kva.example"
    assert domain_to_ascii("例子。广告") == "xn--fsqu00a.xn--4rr70v"  # ideographic full stop
    assert b"xn--fsqu00a.xn--4rr70v".decode("idna") == "例子.广告"
    # IDNA 2003 (the standard library's codec) maps sharp s to "ss".
    assert domain_to_ascii("straße.de") == "strasse.de"


@pytest.mark.parametrize(
    "value",
    ["Hello", "", "Tab\tinside", "Ünïcode ✓ 🙂", "x" * 10_000, "=?utf-8?q?encoded-looking?="],
)
def test_header_text_check_accepts(value):
    assert header_text_check(value) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("Hi\r\nBcc: evil@z.org", "Must not contain line breaks or control characters."),
        ("Hi\nthere", "Must not contain line breaks or control characters."),
        ("Hi\rthere", "Must not contain line breaks or control characters."),
        ("nul\x00", "Must not contain line breaks or control characters."),
        ("esc\x1b[31m", "Must not contain line breaks or control characters."),
        ("del\x7f", "Must not contain line breaks or control characters."),
        ("line\u2028sep", "Must not contain line breaks or control characters."),
        ("lone \ud800 surrogate", "Must not contain line breaks or control characters."),
        ("x" * 10_001, "Must be at most 10000 characters."),
        (None, "Must be a string."),
        (b"bytes", "Must be a string."),
    ],
)
def test_header_text_check_refuses(value, message):
    with pytest.raises(AddressError) as caught:
        header_text_check(value)
    assert caught.value.message == message


def test_format_mailbox():
    assert format_mailbox({"name": "", "address": "a@x.org"}) == "a@x.org"
    assert format_mailbox({"name": "John Doe", "address": "j@x.org"}) == "John Doe <j@x.org>"
    assert format_mailbox({"name": "Doe, John", "address": "j@x.org"}) == '"Doe, John" <j@x.org>'
    assert format_mailbox({"name": 'A "q" name', "address": "a@x.org"}) == '"A \\"q\\" name" <a@x.org>'
    assert format_mailbox({"name": "Jöhn", "address": "j@x.org"}) == "=?utf-8?b?SsO2aG4=?= <j@x.org>"
    assert format_mailbox({"name": "Jöhn", "address": "j@x.org"}, smtputf8=True) == "Jöhn <j@x.org>"
    assert format_mailbox({"name": "用户", "address": "用户@x.org"}, smtputf8=True) == "用户 <用户@x.org>"
    with pytest.raises(AddressError):
        format_mailbox({"name": "", "address": "用户@x.org"})
    with pytest.raises(AddressError):
        format_mailbox({"name": "x\r\nBcc: e@z.org", "address": "a@x.org"})


def test_format_mailbox_output_parses_back_to_the_same_mailbox():
    for mailbox in (
        {"name": "Doe, John", "address": "j@x.org"},
        {"name": 'A "quoted" name', "address": "a@x.org"},
        {"name": "", "address": "a@xn--bcher-kva.example"},
    ):
        assert mailbox_parse(format_mailbox(mailbox)) == mailbox
