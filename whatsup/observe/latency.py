"""Latency histograms and process metrics, on prometheus_client (docs/ARCHITECTURE.md, "Metrics").

The counters and gauges of :mod:`whatsup.observe.metrics` are read from the node's own
state when scraped; what cannot be read afterwards — how long each ✓, each
delivery, each fsync and each login took — is observed where it happens into
the histograms below (one per process: a whatsupd runs one node), with
prometheus_client's own process collector (CPU seconds, resident memory, open
fds). :func:`snapshot` turns all of it into the dict that ``stats()`` shows and
:func:`render` writes, so the shell and the scrape stay one view.

An observation costs about a microsecond (a lock and a bucket search); the
hot paths make at most one per message and one per acked item.
"""
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)
FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

SENT = Histogram("whatsup_sent_latency_seconds", "✓ latency: a message's arrival (queued in offd) "
                 "to its ✓ (durable, sent answered)", buckets=FAST, registry=REGISTRY)
DELIVERY = Histogram("whatsup_delivery_latency_seconds", "an item's queueing in offd to the device's "
                     "ack (offline time included)",
                     buckets=(0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0, 600.0, 3600.0, 86400.0), registry=REGISTRY)
COMMIT = Histogram("whatsup_commit_seconds", "one group commit (write + fsync) of a store (offd, accounts, "
                   "table)", ["store"], buckets=FAST, registry=REGISTRY)
COMMIT_SIZE = Histogram("whatsup_commit_batch_entries", "entries written by one group commit", ["store"],
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096), registry=REGISTRY)
LABEL = {"whatsup_commit_seconds": "store", "whatsup_commit_batch_entries": "store"}  # the labelled ones
LOGIN = Histogram("whatsup_login_seconds", "a login frame to its answer (the password check included)",
                  buckets=FAST, registry=REGISTRY)
REDIS = Histogram("whatsup_redis_seconds", "one pipeline of a node's outbox to Redis (its entries, directory "
                  "writes and acknowledgements; retries included)", buckets=FAST, registry=REGISTRY)
ProcessCollector(namespace="whatsup", registry=REGISTRY)


def snapshot():
    """Every histogram and process metric: name -> value, or for histograms (and labelled
    histograms, under their label value) {"count", "sum", "buckets": {le: cumulative count}}."""
    out = {}
    for family in REGISTRY.collect():
        if family.type != "histogram":
            for sample in family.samples:
                out[sample.name] = sample.value
            continue
        for sample in family.samples:
            label = tuple(v for k, v in sorted(sample.labels.items()) if k != "le")
            hist = out.setdefault(family.name, {})
            if label:
                hist = hist.setdefault(label[0], {})
            hist.setdefault("buckets", {})
            if sample.name.endswith("_bucket"):
                hist["buckets"][sample.labels["le"]] = sample.value
            elif sample.name.endswith("_count"):
                hist["count"] = sample.value
            elif sample.name.endswith("_sum"):
                hist["sum"] = sample.value
    return out


def render(snap):
    """The Prometheus text of a :func:`snapshot` (families from REGISTRY, values from ``snap``)."""
    lines = []
    for family in REGISTRY.collect():
        lines += [f"# HELP {family.name} {family.documentation}", f"# TYPE {family.name} {family.type}"]
        value = snap.get(family.name) if family.type == "histogram" else None
        if family.type != "histogram":
            lines += [f"{s.name} {snap.get(s.name, s.value)}" for s in family.samples]
        elif value and "buckets" in value:
            lines += _histogram(family.name, "", value)
        elif value:
            for key, hist in sorted(value.items()):
                lines += _histogram(family.name, f'{LABEL[family.name]}="{key}",', hist)
    return "\n".join(lines) + "\n"


def _histogram(name, labels, hist):
    lines = [f'{name}_bucket{{{labels}le="{le}"}} {n}' for le, n in hist["buckets"].items()]
    plain = f"{{{labels[:-1]}}}" if labels else ""
    return lines + [f"{name}_count{plain} {hist.get('count', 0)}", f"{name}_sum{plain} {hist.get('sum', 0.0)}"]
