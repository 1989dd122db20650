"""A small POP3 server for the faults Dovecot cannot be made to show: no
UIDL, a connection dropped in the middle of a RETR, no STLS. Plain TCP on
127.0.0.1, one thread per connection; it records the commands it got."""

import hashlib
import socket
import socketserver
import threading


class FakePop3:
    def __init__(
        self,
        messages: list[bytes],
        *,
        uidl: bool = True,
        stls: bool = False,
        apop: bool = False,
        drop_in_retr: int | None = None,
        uidls: list[str] | None = None,
        list_sizes: list[int] | None = None,
        raw_answers: dict[int, bytes] | None = None,
        refuse_retr: set[int] | None = None,
        user: str = "user",
        password: str = "secret",  # noqa: S107 - a test server's
    ) -> None:
        self.messages = messages
        self.uidl = uidl
        self.stls = stls
        self.apop = apop  # the greeting carries an APOP timestamp
        self.drop_in_retr = drop_in_retr  # message number whose RETR is cut off halfway
        # The UIDL of each message, in order (sequential ones, as some servers give);
        # by default one made from the message's content.
        self.uidls = uidls
        self.list_sizes = list_sizes  # what LIST says (a server lying about sizes)
        # RETR n answered "+OK" and these bytes as they are (no dot-stuffing, no terminator added)
        self.raw_answers = raw_answers or {}
        self.refuse_retr = refuse_retr or set()  # RETR n answered -ERR
        self.user, self.password = user, password
        self.commands: list[str] = []
        fake = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                fake._session(self.rfile, self.wfile, self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakePop3":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _session(self, rfile, wfile, sock: socket.socket) -> None:
        def send(data: bytes) -> None:
            wfile.write(data)
            wfile.flush()

        def multiline(data: bytes) -> bytes:
            lines = data.split(b"\r\n")
            if lines and lines[-1] == b"":
                lines.pop()
            stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
            return b"".join(line + b"\r\n" for line in stuffed) + b".\r\n"

        timestamp = b"<1896.697170952@fake.example>"
        send(b"+OK fake POP3 ready " + (timestamp if self.apop else b"") + b"\r\n")
        logged_in = False
        deleted: set[int] = set()
        while True:
            line = rfile.readline()
            if not line:
                return
            words = line.decode().strip().split()
            if not words:
                continue
            command = words[0].upper()
            self.commands.append(command)
            number = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
            if command == "CAPA":
                capabilities = ["USER", "TOP", "PIPELINING"] + (["UIDL"] if self.uidl else [])
                capabilities += ["STLS"] if self.stls else []
                send(b"+OK\r\n" + multiline("\r\n".join(capabilities).encode() + b"\r\n"))
            elif command == "USER":
                send(b"+OK\r\n")
            elif command == "APOP" and self.apop:
                digest = hashlib.md5(timestamp + self.password.encode(), usedforsecurity=False).hexdigest()
                logged_in = words[1:] == [self.user, digest]
                send(b"+OK logged in\r\n" if logged_in else b"-ERR [AUTH] wrong\r\n")
            elif command == "PASS":
                logged_in = words[1:] == [self.password]
                send(b"+OK logged in\r\n" if logged_in else b"-ERR [AUTH] wrong\r\n")
            elif not logged_in:
                send(b"-ERR log in first\r\n")
            elif command == "LIST":
                sizes = self.list_sizes or [len(m) for m in self.messages]
                listing = "".join(f"{i} {size}\r\n" for i, size in enumerate(sizes, 1))
                send(b"+OK\r\n" + multiline(listing.encode()))
            elif command == "UIDL" and self.uidl:
                ids = self.uidls or [f"fake-{abs(hash(m)) % 10**12}" for m in self.messages]
                listing = "".join(f"{i} {uidl}\r\n" for i, uidl in enumerate(ids, 1))
                send(b"+OK\r\n" + multiline(listing.encode()))
            elif command == "RETR" and number in self.refuse_retr:
                send(b"-ERR [SYS/TEMP] cannot read it now\r\n")
            elif command == "RETR" and number in self.raw_answers:
                send(b"+OK\r\n" + self.raw_answers[number])
            elif command in ("RETR", "TOP") and 1 <= number <= len(self.messages):
                message = self.messages[number - 1]
                if command == "TOP":
                    message = message.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
                elif number == self.drop_in_retr:
                    send(b"+OK\r\n" + message[: len(message) // 2])
                    sock.shutdown(socket.SHUT_RDWR)
                    return
                send(b"+OK\r\n" + multiline(message))
            elif command == "DELE" and 1 <= number <= len(self.messages):
                deleted.add(number)
                send(b"+OK\r\n")
            elif command == "QUIT":
                self.messages = [m for i, m in enumerate(self.messages, 1) if i not in deleted]
                if self.uidls:
                    self.uidls = [u for i, u in enumerate(self.uidls, 1) if i not in deleted]
                send(b"+OK bye\r\n")
                return
            else:
                send(b"-ERR unknown command\r\n")
