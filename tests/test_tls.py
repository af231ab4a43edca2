"""The optional TLS listener: a self-signed certificate made at test time, the client and the
CLI verifying it, and the non-blocking TLS read/write path under bursts (docs/PROTOCOL.md,
"Limits" > "TLS")."""
import datetime
import ipaddress
import re
import socket
import ssl

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from whatsup.cli.whatsup import main as cli
from whatsup.client import Client

TLS_ON = re.compile(r"TLS clients on ([0-9.]+):(\d+)")


def self_signed(directory):
    """A certificate for 127.0.0.1 / localhost; it is its own CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whatsup test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return str(certfile), str(keyfile)


def start_tls_server(make_server, directory, **settings):
    certfile, keyfile = self_signed(directory)
    server = make_server({"tls.listen": "127.0.0.1:0", "tls.certfile": certfile, "tls.keyfile": keyfile,
                          "ratelimit.msg": 0.0, **settings})
    host, port = TLS_ON.search(server.log()).groups()
    server.tls_address = f"{host}:{port}"
    server.cafile = certfile
    return server


@pytest.fixture
def tls_server(make_server, tmp_path):
    return start_tls_server(make_server, tmp_path)


def test_tls_and_plain_clients_talk_to_each_other_through_bursts_and_large_frames(tls_server):
    tls_server.register("alice", "bob")
    alice = Client(tls_server.tls_address, tls=True, cafile=tls_server.cafile)
    alice.login("alice", "pw-alice")
    bob = tls_server.client("bob")
    big = "é" * 30_000  # ~60 KB: several TLS records per frame
    for i in range(300):
        bob.send_nowait("alice", big if i % 50 == 0 else f"burst {i}", id=f"b{i}")
    got = []
    while len(got) < 300:
        frame = alice.recv(30)
        assert frame is not None, f"stopped after {len(got)}"
        if frame["type"] == "msg":
            got.append(frame)
    assert [f["id"] for f in got] == [f"b{i}" for i in range(300)]
    assert got[50]["body"] == big
    for i in range(300):
        alice.send_nowait("bob", f"back {i}", id=f"a{i}")
    sent = [alice.recv(30) for _ in range(300)]
    assert all(f["type"] == "sent" for f in sent)
    back = [f for f in bob.drain(1.0) if f["type"] == "msg"]
    assert [f["id"] for f in back] == [f"a{i}" for i in range(300)]
    alice.close(), bob.close()


def test_a_client_without_the_ca_refuses_the_server(tls_server):
    with pytest.raises(ssl.SSLCertVerificationError):
        Client(tls_server.tls_address, tls=True)


def test_plain_bytes_on_the_tls_port_cost_the_client_its_connection_only(tls_server):
    tls_server.register("carol")
    with pytest.raises(OSError):
        Client(tls_server.tls_address, timeout=10)  # speaks msgpack to a TLS listener
    with Client(tls_server.tls_address, tls=True, cafile=tls_server.cafile) as carol:
        carol.login("carol", "pw-carol")


def test_the_cli_sends_and_reads_over_tls(tls_server, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    base = ["--server", tls_server.tls_address, "--tls", "--cafile", tls_server.cafile]
    runner = CliRunner(env={"WHATSUP_PASSWORD": "correct-horse"})
    for user in ("dave", "erin"):
        assert runner.invoke(cli, base + ["register", user]).exit_code == 0
    result = runner.invoke(cli, base + ["send", "--as", "dave", "erin", "over tls"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, base + ["inbox", "--as", "erin", "--json"])
    assert result.exit_code == 0 and '"over tls"' in result.output, result.output


def test_a_tls_client_that_never_finishes_the_handshake_is_closed_at_the_login_deadline(make_server, tmp_path):
    server = start_tls_server(make_server, tmp_path, **{"protocol.login_timeout": 1.0})
    host, port = server.tls_address.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as silent:
        assert silent.recv(1) == b""  # closed by the server, nothing said
    assert "TLS handshake with" in server.log()
