"""An origin that accepts a request and never answers: a listening socket the test
holds, for what a download does while it waits on the origin's first byte."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


class Mute:
    """A loopback socket that listens; :meth:`asked` accepts the download's
    connection and reads its request, which is never answered."""

    def __init__(self, srv: socket.socket) -> None:
        self.srv = srv
        self.url = f"http://127.0.0.1:{srv.getsockname()[1]}/mute.gguf"

    @contextmanager
    def asked(self) -> Iterator[socket.socket]:
        """The accepted connection, once its request has arrived (closed after)."""
        conn, _ = self.srv.accept()
        with conn:
            conn.settimeout(5)
            assert conn.recv(65536).startswith(b"GET /mute.gguf")  # asked, and never answered
            yield conn


@contextmanager
def mute_origin() -> Iterator[Mute]:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(5)
        yield Mute(srv)
