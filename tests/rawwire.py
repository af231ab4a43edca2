"""A raw protocol connection for tests that must misbehave: stall, trickle, flood, lie.

The real client (whatsup.client.Client) is polite; these tests need a socket
that logs in and then never reads, sends half a frame, or claims to be someone
else. Frames are still encoded with the real codec.
"""
import socket
import time

from whatsup import protocol


class RawConnection:
    def __init__(self, server, source=None, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window the server sees stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.settimeout(10)
        self.sock.connect(server.address)
        self.decoder = protocol.FrameDecoder(1 << 24)
        self.frames = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()

    def send(self, frame):
        self.sock.sendall(protocol.encode(frame))

    def recv(self, timeout=10.0):
        """The next frame; None on timeout; EOFError once the server has closed."""
        deadline = time.monotonic() + timeout
        while not self.frames:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            except ConnectionResetError:
                data = b""
            if not data:
                raise EOFError("closed by the server")
            self.frames += self.decoder.feed(data)
        return self.frames.pop(0)

    def until_closed(self, timeout=30.0):
        """Every frame until the server closes the connection (AssertionError if it does not)."""
        out, deadline = [], time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                frame = self.recv(deadline - time.monotonic())
                if frame is not None:
                    out.append(frame)
        except EOFError:
            return out
        raise AssertionError(f"still open after {timeout}s; got {out[-3:]}")

    def request(self, frame, ref):
        self.send({**frame, "ref": ref})
        while True:
            answer = self.recv()
            assert answer is not None, f"no answer to {frame['type']}"
            if answer.get("ref") == ref:
                return answer

    def hello(self):
        return self.request({"type": "hello", "versions": [1]}, 1)

    def login(self, user, password=None):
        self.hello()
        return self.request({"type": "login", "user": user, "password": password or f"pw-{user}"}, 2)
