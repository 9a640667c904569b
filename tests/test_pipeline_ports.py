"""The pipeline's early port check: a port in use is refused in words; a port whose last
connection only waits out TIME_WAIT (a Prometheus scrape of the previous run) is not."""

from __future__ import annotations

import socket
import time

import pytest

from services.pipeline import _check_port


def _listener() -> socket.socket:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    return srv


def test_a_port_something_listens_on_is_refused_naming_it() -> None:
    with _listener() as srv:
        port = srv.getsockname()[1]
        with pytest.raises(ValueError, match=rf"metrics.port: cannot bind 127.0.0.1:{port}"):
            _check_port("127.0.0.1", port, "metrics.port")


def test_a_port_left_in_time_wait_by_a_closed_connection_is_free() -> None:
    srv = _listener()
    port = srv.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    conn.close()  # the server side closes first: its end waits out TIME_WAIT
    client.recv(1)
    client.close()
    srv.close()
    deadline = time.monotonic() + 2.0  # the last FIN's handling may lag the close by a moment
    while "06" not in (states := _tcp_states(port)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "06" in states, f"expected a TIME_WAIT socket on {port}, found states {states}"
    _check_port("127.0.0.1", port, "metrics.port")


def _tcp_states(port: int) -> set[str]:
    """The kernel's TCP states (hex codes, 06 = TIME_WAIT) of local sockets on `port`."""
    states = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port:
                states.add(fields[3])
    return states
