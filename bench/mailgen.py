"""Synthetic mail for the sync benchmark, and a fast Maildir++ writer.

`generate()` yields `(folder, raw_bytes, maildir_flags, timestamp)`: first
the real corpus files (../shared/corpus), then synthetic messages of about
10 KB with realistic headers (Received, Message-ID, In-Reply-To/References
for about a third, From/To/Cc with some RFC 2047 names, Date, Subject, List-Id
in list folders) and three shapes: text/plain (60 %), multipart/alternative
text + HTML (25 %), multipart/mixed text + a small base64 attachment (15 %).
With `size` above 50 KB every message is a text part and one big base64
attachment of about that size.
Deterministic for a given seed.

`MaildirWriter` writes them straight into a Dovecot user's Maildir++
(`.Folder.Sub/cur`, `S=`/`W=` sizes in the file name, flags after `:2,`,
mtime = INTERNALDATE, owned by the mail uid), which Dovecot indexes on first
access: far faster than APPENDing one by one (see bench/README.md).
"""

import base64
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.header import Header
from email.utils import format_datetime
from pathlib import Path

# The ten folders of the default run, INBOX first; more get generic names.
FOLDERS = ["INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive", "Lists", "Lists.dev", "Work", "Old"]

_WORD_TEXT = """
the of and to in is that for it as was with be by on not he this are or his from at which but have an
they you were her she there been one all we their has would when if so no will more can said what about
up out them into some could time only new other then people than now its also two may first like any my
these over after most back where our well just way even good very much because through meeting project
release deploy server client invoice budget quarter report schedule review draft attached please thanks
regards question update status ticket customer contract design feedback kernel patch driver memory
scheduler commit branch merge build test failure regression bisect café naïve résumé façade Grüße Straße
über déjà señor smörgåsbord
"""
_WORDS = _WORD_TEXT.split()
_FIRST = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory",
          "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter", "Zoë", "José", "Jürgen",
          "Søren", "Amélie", "Łukasz", "Björk", "Chloé", "Renée"]  # fmt: skip
_LAST = ["Smith", "Jones", "Müller", "García", "Dubois", "Rossi", "Nowak", "Johansson", "O'Brien",
         "Tanaka", "Kowalski", "Novák", "Pérez", "Fischer", "Martin", "Bernard", "Lefèvre", "Nguyen",
         "Wang", "Kim"]  # fmt: skip
_DOMAINS = ["example.com", "example.org", "mail.example.net", "corp.example.com", "lists.example.org"]
_ATTACHMENTS = [
    ("application/pdf", "report-{n}.pdf"),
    ("image/png", "screenshot-{n}.png"),
    ("application/octet-stream", "data-{n}.bin"),
    ("text/csv", "export-{n}.csv"),
]
_FLAG_CHOICES = ["S"] * 55 + [""] * 25 + ["FS"] * 6 + ["RS"] * 10 + ["F"] * 2 + ["FRS"] * 2


@dataclass
class _Person:
    name: str
    address: str

    def header(self) -> str:
        if self.name.isascii():
            if any(c in self.name for c in "'.,"):
                return f'"{self.name}" <{self.address}>'
            return f"{self.name} <{self.address}>"
        return f"{Header(self.name, 'utf-8').encode()} <{self.address}>"


def _people(rng: random.Random, count: int) -> list[_Person]:
    people = []
    for _ in range(count):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        local = f"{first}.{last}".lower().encode("ascii", "ignore").decode().replace("'", "")
        people.append(_Person(f"{first} {last}", f"{local}{rng.randint(1, 99)}@{rng.choice(_DOMAINS)}"))
    return people


def _line_pool(rng: random.Random, count: int = 4000) -> list[str]:
    lines = []
    for _ in range(count):
        words, length = [], 0
        target = rng.randint(40, 76)
        while length < target:
            word = rng.choice(_WORDS)
            words.append(word)
            length += len(word) + 1
        line = " ".join(words)
        lines.append(line[0].upper() + line[1:] + ("." if rng.random() < 0.3 else ""))
    return lines


class Synth:
    """Synthetic messages of about `size` bytes, deterministic for a seed."""

    def __init__(self, seed: int = 1, size: int = 10_000):
        self.rng = random.Random(seed)
        self.size = size
        self.lines = _line_pool(self.rng)
        self.people = _people(self.rng, 400)
        self.me = _Person("Bench User", "bench@example.com")
        self.recent: list[tuple[str, list[str], str]] = []  # (message-id, references, subject)
        self.start = datetime(2023, 1, 1, tzinfo=UTC)

    def _text(self, size: int) -> str:
        count = max(3, size // 60)
        return "\n".join(self.rng.choices(self.lines, k=count)) + "\n"

    def message(self, n: int, total: int, folder: str) -> tuple[bytes, float]:
        rng = self.rng
        when = self.start + timedelta(seconds=int(2 * 365 * 86400 * n / max(total, 1)) + rng.randint(0, 3600))
        msgid = f"{n:08d}.{rng.getrandbits(48):012x}@bench.example.com"
        subject_words = rng.choices(_WORDS, k=rng.randint(3, 8))
        subject = " ".join(subject_words).capitalize()
        references: list[str] = []
        if self.recent and rng.random() < 0.35:
            parent_id, parent_refs, parent_subject = rng.choice(self.recent[-2000:])
            references = [*parent_refs, parent_id][-10:]
            subject = parent_subject if parent_subject.startswith("Re: ") else f"Re: {parent_subject}"
        self.recent.append((msgid, references, subject))
        if len(self.recent) > 4000:
            del self.recent[:2000]

        sender = self.me if folder in ("Sent", "Drafts") else rng.choice(self.people)
        to = [self.me] if sender is not self.me else rng.sample(self.people, rng.randint(1, 3))
        cc = rng.sample(self.people, rng.randint(1, 4)) if rng.random() < 0.3 else []
        subject_header = subject if subject.isascii() else Header(subject, "utf-8").encode()
        headers = [
            f"Return-Path: <{sender.address}>",
            f"Received: from mx{rng.randint(1, 9)}.example.net"
            f" (mx.example.net [192.0.2.{rng.randint(1, 254)}])"
            f"\n\tby mail.example.com (Postfix) with ESMTPS id {rng.getrandbits(40):010X}"
            f"\n\tfor <bench@example.com>; {format_datetime(when)}",
            f"Received: from [198.51.100.{rng.randint(1, 254)}] (helo=client)\n\tby mx.example.net"
            f" with esmtpsa (TLS1.3) id {rng.getrandbits(32):08x};"
            f" {format_datetime(when - timedelta(seconds=3))}",
            f"Message-ID: <{msgid}>",
            f"Date: {format_datetime(when)}",
            f"From: {sender.header()}",
            "To: " + ",\n ".join(p.header() for p in to),
        ]
        if cc:
            headers.append("Cc: " + ",\n ".join(p.header() for p in cc))
        headers.append(f"Subject: {subject_header}")
        if references:
            headers.append(f"In-Reply-To: <{references[-1]}>")
            headers.append("References: " + "\n ".join(f"<{r}>" for r in references))
        if folder.startswith("Lists"):
            headers.append(f"List-Id: Bench discussion <{folder.lower()}.lists.example.org>")
        headers += ["X-Mailer: BenchMailer 1.0", "MIME-Version: 1.0"]

        target = max(1500, int(rng.gauss(self.size, self.size * 0.3)))
        shape = rng.random()
        big = self.size > 50_000  # large messages: a text part and one big attachment
        if shape < 0.60 and not big:
            body = self._text(target - 1100)
            headers += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
        elif shape < 0.85 and not big:
            boundary = f"=_alt_{rng.getrandbits(64):016x}"
            text = self._text((target - 1300) // 2)
            html = (
                "<html><body>\n"
                + "".join(f"<p>{line}</p>\n" for line in text.splitlines())
                + "</body></html>\n"
            )
            headers.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
            body = (
                f"--{boundary}\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
                f"{text}\n--{boundary}\nContent-Type: text/html; charset=utf-8\n"
                f"Content-Transfer-Encoding: 8bit\n\n{html}\n--{boundary}--\n"
            )
        else:
            boundary = f"=_mix_{rng.getrandbits(64):016x}"
            mime, name = rng.choice(_ATTACHMENTS)
            data = rng.randbytes(int((target - 8000) * 3 / 4) if big else rng.randint(1000, 3000))
            encoded = base64.encodebytes(data).decode()
            text = self._text(6000 if big else target - 1500 - len(encoded))
            headers.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
            body = (
                f"--{boundary}\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
                f'{text}\n--{boundary}\nContent-Type: {mime}; name="{name.format(n=n)}"\n'
                f'Content-Disposition: attachment; filename="{name.format(n=n)}"\n'
                f"Content-Transfer-Encoding: base64\n\n{encoded}\n--{boundary}--\n"
            )
        raw = ("\n".join(headers) + "\n\n" + body).encode("utf-8")
        return raw, when.timestamp()


def generate(
    count: int, folders: list[str], corpus: list[Path], seed: int = 1, size: int = 10_000
) -> Iterator[tuple[str, bytes, str, float]]:
    """`count` messages, round-robin over `folders`: corpus files first,
    then synthetic ones of about `size` bytes."""
    rng = random.Random(seed + 1)
    synth = Synth(seed, size)
    for n in range(count):
        folder = folders[n % len(folders)]
        if n < len(corpus):
            raw = corpus[n].read_bytes()
            when = datetime(2022, 6, 1, tzinfo=UTC).timestamp() + n * 600
        else:
            raw, when = synth.message(n, count, folder)
        flags = "DS" if folder == "Drafts" else rng.choice(_FLAG_CHOICES)
        yield folder, raw, flags, when


def virtual_size(raw: bytes) -> int:
    """RFC822.SIZE as an IMAP server reports it: every bare LF becomes CRLF."""
    return len(raw) + raw.count(b"\n") - raw.count(b"\r\n")


class MaildirWriter:
    """Writes messages into a Dovecot user's Maildir++ (`root` = INBOX)."""

    def __init__(self, root: Path, uid: int, gid: int):
        self.root = Path(root)
        self.uid, self.gid = uid, gid
        self.dirs: dict[str, Path] = {}
        self.count = 0
        self.bytes = 0
        self.pid = os.getpid()

    def _dir(self, folder: str) -> Path:
        path = self.dirs.get(folder)
        if path is None:
            path = self.root if folder.upper() == "INBOX" else self.root / ("." + folder)
            self._mkdir(self.root)
            self._mkdir(path)
            for sub in ("cur", "new", "tmp"):
                self._mkdir(path / sub)
            if path != self.root:
                marker = path / "maildirfolder"
                marker.touch()
                os.chown(marker, self.uid, self.gid)
            self.dirs[folder] = path
        return path

    def _mkdir(self, path: Path) -> None:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chown(path, self.uid, self.gid)

    def write(self, folder: str, raw: bytes, flags: str, when: float) -> None:
        self.count += 1
        self.bytes += len(raw)
        seconds = int(when)
        name = (
            f"{seconds}.M{self.count}P{self.pid}Q{self.count}.bench,S={len(raw)},W={virtual_size(raw)}"
            f":2,{''.join(sorted(flags))}"
        )
        path = self._dir(folder) / "cur" / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view) :]
            os.fchown(fd, self.uid, self.gid)
        finally:
            os.close(fd)
        os.utime(path, (when, when))
