"""POP3 for the sync engine (RFC 1939, 2449, 2595, 3206, 5034): a small client
over the IMAP side's connection policy, which it shares rather than copies
(`mailboxes.imap.connection`: `resolve`, `ssl_context`, `Deadline` and the
socket whose reads are bounded by a timeout and a deadline):

* the host is resolved once within the connect timeout and deadline, checked
  against the private-address guard and MAIL_ALLOWED_PORTS, and the socket
  goes to that address;
* implicit TLS (995) or STLS, both verifying the certificate and the host
  name; an account that asks for STLS from a server that does not offer it
  is refused (`InsecureServer`), never continued in clear; plaintext only
  with MAIL_ALLOW_PLAINTEXT;
* connecting and logging in within MAIL_CONNECTION_DEADLINE, the session
  within SYNC_DEADLINE, each read within MAIL_READ_TIMEOUT; a line longer
  than `max_line` or a message larger than `max_literal` aborts;
* AUTH PLAIN when the server lists it (RFC 5034), else USER/PASS; APOP on an
  unencrypted connection to a server that offers it (its greeting's
  timestamp), so a passive listener never sees the password there (an
  active attacker can strip the timestamp from the greeting and get
  USER/PASS: only TLS protects against that);
* RETR and DELE pipelined when the server says PIPELINING (RFC 2449).

Errors are the IMAP side's (`MailServerError` and its subclasses), so the
sync task treats both protocols alike. Knows nothing of Django models.
"""

from mailboxes.pop3.client import Oversized, Pop3Error, Pop3Session

__all__ = ["Oversized", "Pop3Error", "Pop3Session"]
