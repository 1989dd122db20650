"""The fast FETCH response parser against IMAPClient's, on imaplib's data."""

import pytest
from imapclient.response_parser import parse_fetch_response

from mailboxes.imap import parse_fetch_fast

BODY = b"From: a@b.c\r\nSubject: (x) {3}\r\n\r\nbody )\r\n"


def reference(data):
    return dict(parse_fetch_response(data, normalise_times=False, uid_is_key=False))


@pytest.mark.parametrize(
    "data",
    [
        [None],
        [b"1 (UID 7 RFC822.SIZE 1234)", b"2 (UID 9 RFC822.SIZE 0)"],
        [
            (
                b'1 (UID 7 FLAGS (\\Seen $Forwarded 42) INTERNALDATE "01-Jan-2023 10:00:00 +0100" '
                b"RFC822.SIZE %d MODSEQ (12) BODY[] {%d}" % (len(BODY), len(BODY)),
                BODY,
            ),
            b")",
            (b'2 (UID 8 FLAGS () INTERNALDATE " 2-Feb-2024 23:59:59 -0800" BODY[] {0}', b""),
            b")",
            b"1 (FLAGS (\\Flagged))",  # an unsolicited change of message 1, merged as IMAPClient does
        ],
        [b"3 (UID 4 FLAGS (\\Seen) MODSEQ (99))"],
    ],
)
def test_fast_fetch_parser_agrees_with_imapclient(data):
    assert parse_fetch_fast(data) == reference(data)


@pytest.mark.parametrize(
    "data",
    [
        [b'1 (UID 7 INTERNALDATE "01-Jan-2023 \\"10:00:00 +0100")'],  # escapes
        [(b"1 (UID 7 BODY[] {5}", b"abcde"), b" FLAGS (\\Seen))"],  # items after the literal
        [(b"1 (UID 7 BODY[] {9}", b"abcde"), b")"],  # a literal of another length
        [b"1 (UID 7 BODY[] NIL)"],
        [b"1 (UID 7 ENVELOPE (NIL))"],
        [b"1 (UID 7  RFC822.SIZE 3)"],
        [b"1 (UID 7 RFC822.SIZE 3"],
    ],
)
def test_fast_fetch_parser_leaves_other_shapes_to_imapclient(data):
    assert parse_fetch_fast(data) is None
