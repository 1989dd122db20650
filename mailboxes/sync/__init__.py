"""The sync engine: server folders and messages (IMAP, and POP3) into PostgreSQL.

`account_sync()` brings one account's database copy in step with its server:

* Folders: LIST (with SPECIAL-USE), types from special-use flags or common
  names, hierarchy from the delimiter. A folder missing from the server whose
  UIDVALIDITY reappears under a new name was renamed (its messages keep their
  rows); otherwise it was deleted, with its messages.
* Per folder, a cursor: UIDVALIDITY, `uidnext` (every UID below it is stored
  or quarantined) and HIGHESTMODSEQ. A cheap STATUS first: when nothing moved,
  the folder is done without SELECT. Otherwise new UIDs are fetched in
  batches (by count and by bytes), flag changes come from CONDSTORE
  `CHANGEDSINCE` (or a full FLAGS fetch without it), expunges from QRESYNC
  `VANISHED` (or a UID-set comparison without it).
* Each batch is parsed and its blobs written outside any transaction (on
  this thread, message by message, so a batch in flight holds rows, not raw
  mail), then stored with the folder's cursor in one transaction on a writer
  thread, by COPY: a crash anywhere is followed by a sync that picks up at
  the cursor, and `UNIQUE (tenant, folder, uidvalidity, imap_uid)` makes a
  replayed batch a no-op. The pipeline between the two threads is bounded
  by bytes, so memory stays flat whatever the size of the mail.
* A UIDVALIDITY change re-matches the folder's old rows to the new UIDs by
  content hash, then Message-ID: no duplicates, no row lost for a message
  that is still there; rows left over at the end are gone from the server.
* A message that cannot be parsed or is over a limit is quarantined with its
  reason; the sync goes on.

No database transaction is ever open across a network read. One sync per
account at a time (a PostgreSQL advisory lock).

POP3 accounts go through the same engine (`pop3`): each server unique id
(UIDL) is given a UID of ours in the account's INBOX before anything is
downloaded, and from there the messages are fetched (RETR), parsed, stored,
quarantined and counted exactly as IMAP ones; see that module's docstring.

The parts: `engine` (`account_sync`, the per-folder flow), `pop3` (POP3
accounts), `folders` (folder types, the folder list and renames), `storage`
(rows, COPY through a temporary table, the cursor, re-matching), `pipeline`
(the writer thread and the blob-writing threads), `config` (the account's
mail server settings).
"""

from mailboxes.sync.config import server_config
from mailboxes.sync.engine import Progress, SyncReport, account_sync
from mailboxes.sync.storage import flag_fields

__all__ = ["Progress", "SyncReport", "account_sync", "flag_fields", "server_config"]
