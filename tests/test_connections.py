"""Slowloris and connection abuse: the login deadline, the per-address cap and the connection
bound (docs/PROTOCOL.md, "Limits"), end to end. Deadlines are set to their minimum; the tests
wait for the server's verdict, they never time it. The deadline rules themselves (idle, login,
send) are unit tests of the connection core (tests/test_c2s.py)."""
import time

import pytest

from rawwire import RawConnection


def test_a_connection_that_never_logs_in_is_closed_even_if_it_trickles_bytes(make_server):
    server = make_server({"protocol.login_timeout": 1.0})
    with RawConnection(server) as conn:
        conn.hello()
        conn.sock.sendall(b"\x00\x00\x00\x40")  # a frame header whose body never comes...
        frames, deadline = [], time.monotonic() + 30
        with pytest.raises(EOFError):
            while time.monotonic() < deadline:      # ... while a byte every 0.2 s keeps it "active"
                conn.sock.sendall(b"\x80")
                frame = conn.recv(0.2)
                if frame is not None:
                    frames.append(frame)
        assert [f["code"] for f in frames] == ["idle_timeout"]
        assert "login" in frames[0]["message"]


def test_connections_over_the_per_address_cap_are_refused_and_other_addresses_are_not(make_server):
    server = make_server({"server.max_connections_per_ip": 2})
    first, second = RawConnection(server), RawConnection(server)
    first.hello(), second.hello()
    with RawConnection(server) as third:
        assert third.until_closed()[0]["code"] == "too_many_connections"
    with RawConnection(server, source="127.0.0.2") as elsewhere:
        assert elsewhere.hello()["type"] == "hello"
    first.sock.close()
    for _ in range(100):  # the server sees the close asynchronously
        with RawConnection(server) as again:
            try:
                if again.hello()["type"] == "hello":
                    break
            except EOFError:
                time.sleep(0.05)
    else:
        raise AssertionError("a slot freed by a close was never reused")
    second.sock.close()


def test_at_max_connections_the_listener_waits_until_a_connection_ends(make_server):
    server = make_server({"server.max_connections": 3})
    held = [RawConnection(server) for _ in range(3)]
    for conn in held:
        conn.hello()
    with RawConnection(server) as waiting:  # connected in the kernel's backlog, not served
        waiting.send({"type": "hello", "ref": 1, "versions": [1]})
        assert waiting.recv(1.0) is None
        held.pop().sock.close()
        assert waiting.recv(30)["type"] == "hello"
    for conn in held:
        conn.sock.close()
