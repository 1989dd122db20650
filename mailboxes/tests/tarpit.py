"""A tarpit IMAP server for tests: it accepts, then trickles.

`greeting`: the greeting itself comes one byte every `interval` seconds.
`after_login`: it greets and logs anyone in at once, then answers every
other command with an endless line, one byte every `interval` seconds.
Either way a client whose reads each wait less than a read timeout is kept
busy; a connection is dropped after `give_up_after` seconds, so that a
client without a deadline fails (slowly) instead of hanging a test run."""

import contextlib
import socket
import threading
import time


class Tarpit:
    def __init__(self, *, mode: str = "after_login", interval: float = 0.1, give_up_after: float = 20.0):
        assert mode in ("greeting", "after_login")
        self.mode, self.interval, self.give_up_after = mode, interval, give_up_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket, data: bytes, until: float) -> None:
        for byte in data:
            if time.monotonic() > until or self.closed.is_set():
                return
            conn.sendall(bytes([byte]))
            time.sleep(self.interval)

    def _serve(self, conn: socket.socket) -> None:
        until = time.monotonic() + self.give_up_after
        try:
            if self.mode == "greeting":
                self._trickle(conn, b"* OK tarpit ready" + b"." * 100_000 + b"\r\n", until)
                return
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1] tarpit ready\r\n")
            file = conn.makefile("rb")
            while line := file.readline():
                tag, _, rest = line.decode("latin-1").strip().partition(" ")
                command = rest.split(" ", 1)[0].upper()
                if command == "CAPABILITY":
                    conn.sendall(f"* CAPABILITY IMAP4rev1\r\n{tag} OK done\r\n".encode())
                elif command == "LOGIN":
                    conn.sendall(f"{tag} OK logged in\r\n".encode())
                elif command == "LOGOUT":
                    conn.sendall(f"* BYE\r\n{tag} OK bye\r\n".encode())
                    return
                else:
                    self._trickle(conn, b'* LIST () "/" ' + b"x" * 100_000, until)
                    return
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
