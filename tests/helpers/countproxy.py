"""A TCP relay on loopback that counts the bytes a server sends: what a reader fetched, measured
outside the reader.

Why: "info and mount read only what they need" is a claim about bytes on the wire; counting them
in the reader's own statistics would trust the code under test (and mount reads in a forked
daemon whose counters the test cannot see).  ``CountingProxy(host, port)`` listens on
127.0.0.1 and a free port (``endpoint``), relays every connection to the server, and adds up
``down`` (server -> client) and ``up`` bytes; ``reset()`` zeroes them.  Threads, stopped by
``close()``.
"""

from __future__ import annotations

import socket
import threading


class CountingProxy:
    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.down = self.up = self.connections = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.5)
        self.endpoint = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def reset(self) -> None:
        with self._lock:
            self.down = self.up = self.connections = 0

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            try:
                s = socket.create_connection(self.target, timeout=10)
            except OSError:
                c.close()
                continue
            with self._lock:
                self.connections += 1
            for a, b, down in ((c, s, False), (s, c, True)):
                t = threading.Thread(target=self._pipe, args=(a, b, down), daemon=True)
                t.start()

    def _pipe(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        src.settimeout(1.0)
        try:
            while not self._stop.is_set():
                try:
                    data = src.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    break
                with self._lock:
                    if down:
                        self.down += len(data)
                    else:
                        self.up += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for x in (src, dst):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
