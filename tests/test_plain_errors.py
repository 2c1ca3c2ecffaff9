"""Transport failures read as short words (issue 12, item 4): real loopback failures, no library text."""

import socket

import pytest
from pydantic import SecretStr

from daemon.api import ScantrustClient, TransportError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_refused_connection_names_host_and_port_without_the_library_text() -> None:
    port = free_port()  # nothing listens there now
    client = ScantrustClient(f"http://127.0.0.1:{port}", SecretStr("t0ken"), connect_timeout=2, read_timeout=5)
    with pytest.raises(TransportError) as caught:
        client.me()
    client.close()
    message = str(caught.value)
    assert message == f"GET /api/v2/me/: cannot connect to 127.0.0.1:{port} (connection refused)"
    assert "Max retries" not in message
    assert "t0ken" not in message
