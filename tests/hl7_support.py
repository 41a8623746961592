"""Test support for the HL7 tests: a plain-socket MLLP receiver and client."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

import hl7

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"


def frame(er7: str) -> bytes:
    """One MLLP block."""
    return SB + er7.encode("utf-8") + EB + CR


def read_block(sock: socket.socket, buf: bytearray) -> bytes | None:
    """Read one MLLP block (None at EOF)."""
    while True:
        end = buf.find(EB + CR)
        if end >= 0:
            block = bytes(buf[:end])
            del buf[: end + 2]
            return block.lstrip(SB)
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf.extend(chunk)


def send_plain(port: int, er7: str, timeout_s: float = 10.0) -> hl7.Message:
    """Send one message with a plain socket and return the parsed answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(frame(er7))
        block = read_block(s, bytearray())
    assert block is not None, "server closed the connection without an answer"
    return hl7.parse(block.decode("utf-8"))


class Receiver:
    """An MLLP receiver that acknowledges everything with AA and records it, in order."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.messages: list[hl7.Message] = []
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._hold: socket.socket | None = None  # keeps the port while down
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def up(self) -> Receiver:
        """Start listening (on the same port as before, if any)."""
        if self._hold is not None:
            self._hold.close()
            self._hold = None
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(5)
        self.port = srv.getsockname()[1]
        self._server = srv
        t = threading.Thread(target=self._accept, args=(srv,), daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def down(self) -> None:
        """Stop listening and drop every connection; the port stays taken (refusing)."""
        srv, self._server = self._server, None
        if srv is not None:
            with contextlib.suppress(OSError):
                srv.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the listener thread
            srv.close()
            for t in self._threads:
                t.join(2.0)
            self._threads = []
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        self._conns = []
        if srv is not None and self._hold is None:
            hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            hold.bind(("127.0.0.1", self.port))  # bound, not listening: connections refused
            self._hold = hold

    def close(self) -> None:
        """Down, and free the port."""
        self.down()
        if self._hold is not None:
            self._hold.close()
            self._hold = None

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        try:
            while True:
                block = read_block(conn, buf)
                if block is None:
                    return
                msg = hl7.parse(block.decode("utf-8"))
                with self._lock:
                    self.messages.append(msg)
                cid = str(msg.segment("MSH")[10])
                conn.sendall(frame(f"MSH|^~\\&|RCV|RCV|||20260101||ACK|A{cid}|P|2.6\rMSA|AA|{cid}"))
        except OSError:
            return

    def of_type(self, msg_type: str) -> list[hl7.Message]:
        """Messages whose MSH-9 starts with ``msg_type`` (e.g. ``ORU^R42``)."""
        with self._lock:
            return [m for m in self.messages if str(m.segment("MSH")[9]).startswith(msg_type)]

    def wait_for(
        self, test: Callable[[], object], timeout_s: float = 20.0, what: str = "a message"
    ) -> object:
        """Poll ``test`` until it returns something truthy."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            got = test()
            if got:
                return got
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")


def obx_values(msg: hl7.Message) -> dict[str, str]:
    """OBX-3 code -> OBX-5 value (first occurrence)."""
    out: dict[str, str] = {}
    for o in msg.segments("OBX"):
        code = str(o.extract_field(1, 3, 1, 1))
        value = str(o(5)) if len(o) > 5 else ""
        out.setdefault(code, value)
    return out
