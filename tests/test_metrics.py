import re
import urllib.request

import pytest

from whatsup.observe import metrics
from whatsup.client import ServerError


def scrape(server):
    port = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", server.log()).group(1)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))


def test_metrics_endpoint_counts_logins_messages_receipts_and_errors_by_code(make_server):
    server = make_server({"metrics.listen": "127.0.0.1:0"})
    server.register("alice", "bob")
    alice, bob = server.client("alice"), server.client("bob")
    alice.send("bob", "hi", id="m1")
    assert bob.recv(5)["id"] == "m1"
    assert alice.recv(5)["status"] == "delivered"
    with pytest.raises(ServerError):
        server.client("alice", password="wrong-password")
    m = scrape(server)
    assert m["whatsup_logins_total"] == "2"
    assert m["whatsup_messages_in_total"] == "1"
    assert m["whatsup_receipts_total"] == "1"
    assert m["whatsup_online_users"] == "2"
    assert m['whatsup_errors_total{code="auth_failed"}'] == "1"
    assert int(m['whatsup_processes{kind="session"}']) >= 2  # the refused client may still be connected
    assert int(m["whatsup_offd_commit_batches_total"]) >= 1
    assert int(m["whatsup_frames_out_total"]) >= 4


def test_the_shells_stats_carry_the_same_metrics(server):
    server.register("alice")
    server.client("alice")
    with server.shell() as shell:
        out, ok = shell.run("stats(0.1)['metrics']['logins_total'], "
                            "sorted(m for m in stats(0.1)['metrics'] if not m.startswith('cluster_'))[:3]")
    assert ok and out.startswith("(1, ['connections_total', 'disconnections_total', 'errors_total'])")


def test_a_non_loopback_metrics_address_is_refused_at_start(make_server):
    with pytest.raises(RuntimeError, match="loopback only"):
        make_server({"metrics.listen": "0.0.0.0:9100"})


def test_render_writes_prometheus_text_with_labels_escaped():
    snap = {m.name: ({} if m.label else 0) for m in metrics.METRICS}
    snap["errors_total"] = {'odd"code': 2}
    snap["logins_total"] = 7
    text = metrics.render(snap)
    assert "# TYPE whatsup_logins_total counter\nwhatsup_logins_total 7\n" in text
    assert 'whatsup_errors_total{code="odd\\"code"} 2' in text
