"""Synthetic mailboxes for the read-path benchmark, as database rows and as RFC 822.

Deterministic: a unit of work (tenant, account, piece) always yields the same
messages, with the same ids, so the loader can resume after a crash and the
notmuch Maildir holds exactly the rows of the database.

What the mail looks like (all figures per tenant):

* **Vocabulary**: about 330 common English words (stop words and everyday
  business words, in rough frequency order) followed by 50,000 pronounceable
  pseudo-words, drawn with a Zipf-Mandelbrot law (weight 1/(rank+2.7)). So
  "the" is about 6 % of all words, "meeting" is in a fifth of the messages,
  and a pseudo-word of rank 40,000 is in about a thousand of a million.
* **Bodies**: log-normal length, median 2.6 KB (sigma 0.55, so 95 % between
  0.9 and 7.6 KB), sentences of 6-18 words in paragraphs, a greeting and a
  signature; a quarter carry a ticket or invoice number (seven digits, rare:
  the needle for selective searches). A quarter also have an HTML body.
* **People**: 5,000 correspondents (name and address) chosen with a Zipf law,
  one owner address per account; 1-3 To, a Cc on 30 %.
* **Threads**: conversations of 2-10 messages hold 30 % of the messages,
  with Message-ID, In-Reply-To, References and "Re:" subjects (some "Re: Re:",
  some "Fwd:"); the owner's replies go to Sent.
* **Time**: received_at over 5 years, more mail in recent years.
* **State**: about 10 % unread, 2 % flagged, 10 % answered, 15 % with
  attachments (one or two rows in email_attachments each).
* **Sizes**: 100 accounts whose sizes follow a Zipf law (the largest holds
  about a fifth of the tenant, the smallest about 0.2 %), 10 folders each:
  INBOX 42 %, Archive 18 %, Sent 12 %, Lists 8 %, Work 6 %, Lists/dev 5 %,
  Old 5 %, Trash 2 %, Junk 1.5 %, Drafts 0.5 %.
"""

import base64
import math
import random
import uuid
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from operator import itemgetter

FOLDERS = [  # (name, type, share of an account's messages)
    ("INBOX", "inbox", 0.42),
    ("Archive", "archive", 0.18),
    ("Sent", "sent", 0.12),
    ("Lists", "custom", 0.08),
    ("Work", "custom", 0.06),
    ("Lists/dev", "custom", 0.05),
    ("Old", "custom", 0.05),
    ("Trash", "trash", 0.02),
    ("Junk", "spam", 0.015),
    ("Drafts", "drafts", 0.005),
]
INCOMING = [f for f in FOLDERS if f[1] not in ("sent", "drafts")]

COMMON = [
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "is",
    "that",
    "for",
    "it",
    "you",
    "i",
    "on",
    "with",
    "this",
    "be",
    "as",
    "are",
    "have",
    "at",
    "we",
    "not",
    "your",
    "will",
    "or",
    "from",
    "by",
    "our",
    "can",
    "an",
    "if",
    "all",
    "but",
    "they",
    "would",
    "please",
    "was",
    "has",
    "there",
    "so",
    "about",
    "any",
    "more",
    "my",
    "me",
    "do",
    "he",
    "which",
    "one",
    "been",
    "also",
    "new",
    "what",
    "up",
    "their",
    "out",
    "just",
    "time",
    "when",
    "get",
    "need",
    "them",
    "should",
    "some",
    "know",
    "like",
    "us",
    "let",
    "see",
    "here",
    "were",
    "other",
    "thanks",
    "how",
    "may",
    "make",
    "only",
    "now",
    "could",
    "its",
    "back",
    "had",
    "then",
    "into",
    "these",
    "work",
    "over",
    "first",
    "week",
    "today",
    "team",
    "meeting",
    "project",
    "report",
    "review",
    "update",
    "call",
    "next",
    "send",
    "email",
    "message",
    "attached",
    "file",
    "information",
    "thank",
    "regards",
    "best",
    "hi",
    "hello",
    "question",
    "issue",
    "data",
    "customer",
    "client",
    "plan",
    "working",
    "sure",
    "following",
    "already",
    "soon",
    "help",
    "also",
    "still",
    "take",
    "look",
    "good",
    "great",
    "yes",
    "note",
    "check",
    "change",
    "changes",
    "please",
    "could",
    "tomorrow",
    "monday",
    "friday",
    "agenda",
    "minutes",
    "budget",
    "quarter",
    "invoice",
    "contract",
    "order",
    "payment",
    "account",
    "price",
    "cost",
    "sales",
    "marketing",
    "product",
    "release",
    "version",
    "build",
    "test",
    "testing",
    "server",
    "deploy",
    "system",
    "support",
    "service",
    "access",
    "password",
    "login",
    "user",
    "users",
    "document",
    "documents",
    "draft",
    "final",
    "approval",
    "schedule",
    "deadline",
    "status",
    "progress",
    "item",
    "items",
    "list",
    "point",
    "points",
    "group",
    "office",
    "room",
    "lunch",
    "day",
    "days",
    "month",
    "year",
    "morning",
    "afternoon",
    "evening",
    "call",
    "phone",
    "number",
    "address",
    "details",
    "attached",
    "copy",
    "version",
    "share",
    "feedback",
    "comment",
    "comments",
    "discuss",
    "discussion",
    "decision",
    "agree",
    "proposal",
    "offer",
    "request",
    "requests",
    "reply",
    "ticket",
    "problem",
    "error",
    "fix",
    "bug",
    "patch",
    "code",
    "branch",
    "merge",
    "commit",
    "review",
    "reviewed",
    "design",
    "spec",
    "notes",
    "summary",
    "action",
    "actions",
    "owner",
    "owners",
    "task",
    "tasks",
    "goal",
    "goals",
    "risk",
    "risks",
    "cost",
    "costs",
    "revenue",
    "forecast",
    "board",
    "hiring",
    "candidate",
    "interview",
    "training",
    "policy",
    "holiday",
    "travel",
    "hotel",
    "flight",
    "expense",
    "expenses",
    "conference",
    "event",
    "slides",
    "presentation",
    "demo",
    "launch",
    "campaign",
    "partner",
    "partners",
    "vendor",
    "shipment",
    "delivery",
    "warehouse",
    "inventory",
    "stock",
    "quality",
    "audit",
    "compliance",
    "legal",
    "security",
    "incident",
    "outage",
    "database",
    "backup",
    "migration",
    "performance",
    "latency",
    "dashboard",
    "metrics",
    "analytics",
    "survey",
    "research",
]

_ONSETS = [
    "b",
    "c",
    "d",
    "f",
    "g",
    "h",
    "j",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "w",
    "z",
    "b",
    "d",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "br",
    "ch",
    "cl",
    "dr",
    "fl",
    "gr",
    "kr",
    "pl",
    "pr",
    "sh",
    "sk",
    "sl",
    "st",
    "th",
    "tr",
    "qu",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou", "y"]
_CODAS = ["", "", "", "n", "r", "s", "l", "m", "t", "nd", "st", "rk", "x", "ng"]
_FIRST = [
    "James",
    "Mary",
    "John",
    "Patricia",
    "Robert",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Charles",
    "Karen",
    "Christopher",
    "Lisa",
    "Daniel",
    "Nancy",
    "Matthew",
    "Betty",
    "Anthony",
    "Sandra",
    "Mark",
    "Margaret",
    "Donald",
    "Ashley",
    "Steven",
    "Kimberly",
    "Andrew",
    "Emily",
    "Paul",
    "Donna",
    "Joshua",
    "Michelle",
    "Kenneth",
    "Carol",
    "Kevin",
    "Amanda",
    "Brian",
    "Melissa",
    "George",
    "Deborah",
    "Timothy",
    "Stephanie",
    "Ronald",
    "Rebecca",
    "Jason",
    "Sharon",
    "Edward",
    "Laura",
    "Jeffrey",
    "Cynthia",
    "Ryan",
    "Dorothy",
    "Jacob",
    "Amy",
    "Gary",
    "Kathleen",
    "Nicholas",
    "Angela",
    "Eric",
    "Shirley",
    "Jonathan",
    "Brenda",
    "Stephen",
    "Emma",
    "Larry",
    "Anna",
    "Justin",
    "Pamela",
    "Scott",
    "Nicole",
    "Brandon",
    "Samantha",
    "Benjamin",
    "Katherine",
    "Samuel",
    "Christine",
    "Gregory",
    "Helen",
    "Alexander",
    "Debra",
    "Frank",
    "Rachel",
    "Patrick",
    "Carolyn",
    "Raymond",
    "Janet",
]
_LAST = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Green",
    "Adams",
    "Nelson",
    "Baker",
    "Hall",
    "Rivera",
    "Campbell",
    "Mitchell",
    "Carter",
    "Roberts",
    "Gomez",
    "Phillips",
    "Evans",
    "Turner",
    "Diaz",
    "Parker",
    "Cruz",
    "Edwards",
    "Collins",
    "Reyes",
    "Stewart",
    "Morris",
    "Morales",
    "Murphy",
    "Cook",
    "Rogers",
    "Gutierrez",
    "Ortiz",
    "Morgan",
    "Cooper",
    "Peterson",
    "Bailey",
    "Reed",
    "Kelly",
    "Howard",
    "Ramos",
    "Kim",
    "Cox",
    "Ward",
    "Richardson",
    "Watson",
    "Brooks",
    "Chavez",
    "Wood",
]
_ATTACHMENTS = [
    ("application/pdf", "report-{n}.pdf", 180_000),
    ("image/png", "screenshot-{n}.png", 90_000),
    ("image/jpeg", "photo-{n}.jpg", 900_000),
    ("text/csv", "export-{n}.csv", 40_000),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "budget-{n}.xlsx", 60_000),
]
YEARS = 5
END = datetime(2025, 6, 1, tzinfo=UTC)
PIECE = 20_000  # messages of one account generated (and loaded) as one unit
UIDVALIDITY = 1_700_000_000
TABLE_SIZE = 1 << 24


def _stable_seed(*parts) -> int:
    """A seed from the parts, the same in every process (hash() is salted)."""
    value = 1469598103934665603
    for char in repr(parts).encode():
        value = ((value ^ char) * 1099511628211) % (1 << 64)
    return value


@dataclass
class Person:
    name: str
    address: str

    def as_dict(self) -> dict:
        return {"name": self.name, "address": self.address}

    def header(self) -> str:
        return f"{self.name} <{self.address}>"


class Vocabulary:
    """Common words then pseudo-words, with Zipf-Mandelbrot cumulative weights."""

    def __init__(self, seed: int = 7, pseudo_words: int = 50_000):
        rng = random.Random(seed)
        words = list(dict.fromkeys(COMMON))
        seen = set(words)
        target = len(words) + pseudo_words
        while len(words) < target:
            word = "".join(
                rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                for _ in range(rng.choice((1, 2, 2, 2, 3)))
            )
            if word not in seen and 4 <= len(word) <= 12:
                seen.add(word)
                words.append(word)
        self.words = words
        # Drawing with cum_weights bisects a 50,000-entry list for every
        # word; a table where each word fills slots in proportion to its
        # weight makes a draw one index (the rarest word still has ~29 slots).
        # Indices come from random bytes (24 bits each) and the table is read
        # with itemgetter: no Python-level loop per word.
        weights = [1.0 / (rank + 2.7) for rank in range(1, len(words) + 1)]
        scale = TABLE_SIZE / sum(weights)
        table = []
        for word, weight in zip(words, weights, strict=True):
            table.extend([word] * max(1, round(weight * scale)))
        table += [words[0]] * (TABLE_SIZE - len(table))  # rounding: a few slots either way
        self.table = table[:TABLE_SIZE]
        # Subject words: content words, not the stop words at the top.
        self.subject_words = words[60:20_000]
        total, self.subject_cum = 0.0, []
        for rank in range(1, len(self.subject_words) + 1):
            total += 1.0 / (rank + 10)
            self.subject_cum.append(total)

    def draw(self, rng: random.Random, count: int) -> list[str]:
        raw = bytearray(rng.randbytes(4 * count))
        raw[3::4] = bytes(count)  # little-endian uint32 with the top byte cleared: 0 .. 2**24-1
        if count == 1:
            return [self.table[array("I", raw)[0]]]
        return list(itemgetter(*array("I", raw))(self.table))

    def rank(self, word: str) -> int:
        return self.words.index(word) + 1


@dataclass
class Account:
    index: int
    id: uuid.UUID
    owner: Person
    folders: dict[str, uuid.UUID]  # folder name -> id


@dataclass
class Tenant:
    index: int
    id: uuid.UUID
    slug: str
    domain: str
    people: list[Person]
    people_cum: list[float]
    accounts: list[Account] = field(default_factory=list)


def make_people(tenant_index: int, count: int = 5_000) -> tuple[list[Person], list[float]]:
    rng = random.Random(_stable_seed("people", tenant_index))
    people, seen = [], set()
    domains = [
        f"{rng.choice(_LAST).lower()}{n}.example.{rng.choice(['com', 'org', 'net'])}" for n in range(400)
    ]
    while len(people) < count:
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        address = f"{first}.{last}{rng.randint(1, 999)}@{rng.choice(domains)}".lower()
        if address not in seen:
            seen.add(address)
            people.append(Person(f"{first} {last}", address))
    total, cum = 0.0, []
    for rank in range(1, count + 1):
        total += 1.0 / (rank + 5) ** 0.9
        cum.append(total)
    return people, cum


def account_sizes(total: int, accounts: int) -> list[int]:
    """Zipf sizes (1/rank) summing to `total`, largest first."""
    weights = [1.0 / rank for rank in range(1, accounts + 1)]
    scale = total / sum(weights)
    sizes = [math.floor(w * scale) for w in weights]
    for i in range(total - sum(sizes)):
        sizes[i % accounts] += 1
    return sizes


def units(total: int, accounts: int) -> list[tuple[int, int, int]]:
    """(account index, piece index, message count) of one tenant."""
    out = []
    for account, size in enumerate(account_sizes(total, accounts)):
        for piece, start in enumerate(range(0, size, PIECE)):
            out.append((account, piece, min(PIECE, size - start)))
    return out


# --- One message --------------------------------------------------------------------


@dataclass
class Generated:
    row: dict
    attachments: list[dict]
    folder_name: str
    maildir_flags: str


class Generator:
    def __init__(self, vocabulary: Vocabulary, tenant: Tenant):
        self.vocab = vocabulary
        self.tenant = tenant

    def _person(self, rng: random.Random) -> Person:
        return rng.choices(self.tenant.people, cum_weights=self.tenant.people_cum)[0]

    def _subject(self, rng: random.Random) -> str:
        words = rng.choices(self.vocab.subject_words, cum_weights=self.vocab.subject_cum, k=rng.randint(2, 7))
        return " ".join(words).capitalize()

    def _body(self, rng: random.Random, greet: Person, sign: Person) -> str:
        size = min(60_000, int(rng.lognormvariate(math.log(2600), 0.55)))
        draw = rng.random
        words = self.vocab.draw(rng, max(8, size // 6))
        paragraphs, sentences, i = [], [], 0
        per_paragraph = 3 + int(draw() * 4)
        while i < len(words):
            length = 6 + int(draw() * 13)
            sentence = words[i : i + length]
            sentence[0] = sentence[0].capitalize()
            sentences.append(" ".join(sentence) + ".")
            i += length
            if len(sentences) >= per_paragraph:
                paragraphs.append(" ".join(sentences))
                sentences = []
                per_paragraph = 3 + int(draw() * 4)
        if sentences:
            paragraphs.append(" ".join(sentences))
        if rng.random() < 0.25:
            kind = rng.choice(("Ticket", "Invoice", "Order", "Case"))
            paragraphs.insert(rng.randint(0, len(paragraphs)), f"{kind} {rng.randint(1_000_000, 9_999_999)}.")
        first = greet.name.split()[0]
        return f"Hi {first},\n\n" + "\n\n".join(paragraphs) + f"\n\nRegards,\n{sign.name}\n"

    def unit(self, account: Account, piece: int, count: int) -> Iterator[Generated]:
        """The `count` messages of one piece of one account."""
        rng = random.Random(_stable_seed("unit", self.tenant.index, account.index, piece))
        uid = piece * PIECE
        made = 0
        span = YEARS * 365 * 86400
        while made < count:
            size = 1 if rng.random() >= 0.0667 else rng.randint(2, 10)
            size = min(size, count - made)
            thread_id = uuid.UUID(int=rng.getrandbits(128), version=4)
            base_subject = self._subject(rng)
            start = END - timedelta(seconds=span * (1 - rng.random() ** 0.75))
            correspondent = self._person(rng)
            references: list[str] = []
            when = start
            for position in range(size):
                uid += 1
                made += 1
                outgoing = size > 1 and position % 2 == 1 and rng.random() < 0.8
                if position == 0:
                    subject = base_subject
                else:
                    roll = rng.random()
                    prefix = "Re: Re: " if roll < 0.1 else "Fwd: " if roll < 0.15 else "Re: "
                    subject = prefix + base_subject
                    when = when + timedelta(seconds=rng.randint(120, 3 * 86400))
                    when = min(when, END)
                yield self._message(
                    rng,
                    account=account,
                    uid=uid,
                    subject=subject,
                    when=when,
                    outgoing=outgoing,
                    correspondent=correspondent,
                    thread_id=thread_id if size > 1 else None,
                    references=references,
                )

    def _message(self, rng, *, account, uid, subject, when, outgoing, correspondent, thread_id, references):
        tenant = self.tenant
        if outgoing:
            folder = ("Sent", "sent")
            sender, recipients = account.owner, [correspondent]
        else:
            folder = rng.choices(INCOMING, weights=[f[2] for f in INCOMING])[0][:2]
            if thread_id is None and rng.random() < FOLDERS[2][2] / (1 - FOLDERS[2][2]):
                folder = ("Sent", "sent")
            if rng.random() < 0.005:
                folder = ("Drafts", "drafts")
            sender = account.owner if folder[1] in ("sent", "drafts") else correspondent
            recipients = [account.owner] if sender is not account.owner else [correspondent]
        recipients += [self._person(rng) for _ in range(rng.choice((0, 0, 0, 1, 2)))]
        cc = [self._person(rng) for _ in range(rng.choice((1, 2)))] if rng.random() < 0.3 else []
        message_id = f"<{rng.getrandbits(64):016x}.{uid}@{sender.address.split('@')[1]}>"
        in_reply_to = references[-1] if references else ""
        refs = list(references[-10:])
        references.append(message_id)
        body = self._body(rng, greet=recipients[0], sign=sender)
        html = ""
        if rng.random() < 0.25:
            html = "<html><body>" + "".join(f"<p>{p}</p>" for p in body.split("\n\n")) + "</body></html>"
        is_draft = folder[1] == "drafts"
        is_read = (
            is_draft or folder[1] == "sent" or rng.random() >= 0.14 * (1 if folder[1] != "archive" else 0.2)
        )
        is_flagged = rng.random() < 0.02
        is_answered = not outgoing and rng.random() < 0.10
        flags = [f for f, on in (("\\Seen", is_read), ("\\Flagged", is_flagged),
                                 ("\\Answered", is_answered), ("\\Draft", is_draft)) if on]  # fmt: skip
        maildir_flags = "".join(c for c, on in (("D", is_draft), ("F", is_flagged), ("R", is_answered),
                                                 ("S", is_read)) if on)  # fmt: skip
        message_uuid = uuid.UUID(int=rng.getrandbits(128), version=4)
        attachments = []
        if rng.random() < 0.15:
            for _ in range(rng.choice((1, 1, 1, 2))):
                mime, name, typical = rng.choice(_ATTACHMENTS)
                attachments.append(
                    {
                        "id": uuid.UUID(int=rng.getrandbits(128), version=4),
                        "message_id": message_uuid,
                        "filename": name.format(n=rng.randint(1, 9999)),
                        "mime_type": mime,
                        "size_bytes": int(typical * rng.uniform(0.2, 3)),
                        "content_hash": f"{rng.getrandbits(256):064x}",
                    }
                )
        size = len(body) + len(html) + 900 + sum(a["size_bytes"] * 4 // 3 for a in attachments)
        snippet = " ".join(body.split())[:200]
        content_hash = f"{rng.getrandbits(256):064x}"
        row = {
            "id": message_uuid,
            "tenant_id": tenant.id,
            "created_at": when,
            "updated_at": when,
            "account_id": account.id,
            "folder_id": account.folders[folder[0]],
            "imap_uid": uid,
            "uidvalidity": UIDVALIDITY,
            "modseq": uid,
            "pop3_uidl": "",
            "message_id": message_id,
            "in_reply_to": in_reply_to,
            "references": refs,
            "from_address": sender.address,
            "from_name": sender.name,
            "to": [p.as_dict() for p in recipients],
            "cc": [p.as_dict() for p in cc],
            "bcc": [],
            "reply_to": [],
            "subject": subject,
            "text_body": body,
            "html_body": html,
            "snippet": snippet,
            "is_read": is_read,
            "is_flagged": is_flagged,
            "is_draft": is_draft,
            "is_answered": is_answered,
            "flags": flags,
            "has_attachments": bool(attachments),
            "thread_id": thread_id,
            "sent_at": when - timedelta(seconds=rng.randint(1, 90)),
            "received_at": when,
            "size_bytes": size,
            "content_hash": content_hash,
            "raw_blob_key": content_hash,
            "is_deleted": False,
            "deleted_at": None,
        }
        return Generated(row, attachments, folder[0], maildir_flags)


def rfc822(generated: Generated) -> bytes:
    """The message as a mail file: the same headers and text as the row, the
    HTML as an alternative part, attachments as small base64 parts (their
    stored size is not reproduced: notmuch indexes only their names)."""
    row = generated.row
    headers = [
        f"From: {row['from_name']} <{row['from_address']}>",
        "To: " + ", ".join(f"{p['name']} <{p['address']}>" for p in row["to"]),
    ]
    if row["cc"]:
        headers.append("Cc: " + ", ".join(f"{p['name']} <{p['address']}>" for p in row["cc"]))
    headers += [
        f"Subject: {row['subject']}",
        f"Date: {format_datetime(row['sent_at'])}",
        f"Message-ID: {row['message_id']}",
    ]
    if row["in_reply_to"]:
        headers.append(f"In-Reply-To: {row['in_reply_to']}")
        headers.append("References: " + " ".join(row["references"]))
    headers.append("MIME-Version: 1.0")
    text_part = (
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n" + row["text_body"]
    )
    if row["html_body"]:
        text_part = (
            'Content-Type: multipart/alternative; boundary="alt"\n\n--alt\n'
            + text_part
            + "\n--alt\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
            + row["html_body"]
            + "\n--alt--\n"
        )
    if generated.attachments:
        parts = ['Content-Type: multipart/mixed; boundary="mix"', "", "--mix", text_part]
        for a in generated.attachments:
            payload = base64.encodebytes(a["content_hash"].encode() * 4).decode()
            parts += [
                "--mix",
                f'Content-Type: {a["mime_type"]}; name="{a["filename"]}"',
                f'Content-Disposition: attachment; filename="{a["filename"]}"',
                "Content-Transfer-Encoding: base64",
                "",
                payload,
            ]
        parts.append("--mix--\n")
        body = "\n".join(parts)
    else:
        body = text_part
    return ("\n".join(headers) + "\n" + body).encode()
