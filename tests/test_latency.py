"""Latency histograms and process metrics on the scrape, equal to the shell's stats()."""
import re
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from whatsup.observe import latency


def _scrape(server):
    port = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", server.log()).group(1)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def _samples(text):
    """(name, labels) -> value of a scrape; parsing it proves the exposition is valid."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_histograms_and_process_metrics_are_scraped_and_equal_the_shells_stats(make_server, ask):
    server = make_server({"metrics.listen": "127.0.0.1:0"})
    server.register("alice", "bob")
    with server.client("alice") as alice, server.client("bob") as bob:
        alice.send("bob", "hi", id="m1")
        assert bob.recv(5)["id"] == "m1"
        assert alice.recv(5)["status"] == "delivered"
    deadline = time.monotonic() + 20
    while True:  # bob's ack of the message, then alice's of the ✓✓ receipt (sent as she hung up)
        samples = _samples(_scrape(server))
        if samples[("whatsup_delivery_latency_seconds_count", ())] == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert samples[("whatsup_delivery_latency_seconds_count", ())] == 2
    assert samples[("whatsup_sent_latency_seconds_count", ())] == 1
    assert samples[("whatsup_login_seconds_count", ())] == 2
    assert samples[("whatsup_commit_seconds_count", (("store", "offd"),))] >= 1
    assert samples[("whatsup_commit_batch_entries_count", (("store", "accounts"),))] >= 1
    assert samples[("whatsup_process_resident_memory_bytes", ())] > 0
    assert samples[("whatsup_process_open_fds", ())] > 0
    assert samples[("whatsup_logins_total", ())] == 2  # the hand-kept names stay
    with server.shell() as shell:
        stats = ask(shell, "stats(0.01)['metrics']['latency']")
    for name in ("whatsup_sent_latency_seconds", "whatsup_delivery_latency_seconds", "whatsup_login_seconds"):
        assert stats[name]["count"] == samples[(name + "_count", ())]
        assert stats[name]["buckets"]["+Inf"] == samples[(name + "_bucket", (("le", "+Inf"),))]


def test_a_snapshot_renders_back_to_its_own_numbers():
    latency.COMMIT.labels("table").observe(0.002)
    snap = latency.snapshot()
    text = latency.render(snap)
    table = snap["whatsup_commit_seconds"]["table"]
    assert f'whatsup_commit_seconds_count{{store="table"}} {table["count"]}' in text
    assert f'whatsup_commit_seconds_bucket{{store="table",le="0.0025"}} {table["buckets"]["0.0025"]}' in text
    assert table["buckets"]["0.0025"] >= 1
