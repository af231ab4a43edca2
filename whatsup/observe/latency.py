"""Latency histograms and process metrics, on prometheus_client (docs/ARCHITECTURE.md, "Metrics").

The counters and gauges of :mod:`whatsup.observe.metrics` are read from the node's own
state when scraped; what cannot be read afterwards — how long each ✓, each
delivery, each fsync and each login took — is observed where it happens into
the histograms below (one per process: a whatsupd runs one node), with
prometheus_client's own process collector (CPU seconds, resident memory, open
fds). :func:`snapshot` turns all of it into the dict that ``stats()`` shows and
:func:`render` writes, so the shell and the scrape stay one view.

The histograms are observed on the hub only, so they take no lock: an
observation is a bucket search and two additions (0.7 µs), where
prometheus_client's Histogram took 4.2 µs with its locks, and a message makes
about four (its ✓, its delivery, a group commit's time and size).
"""
from bisect import bisect_left

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import INF, floatToGoString

REGISTRY = CollectorRegistry(auto_describe=True)
FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Counts:
    """One histogram's buckets and sum (hub only: no lock)."""
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds):
        self.bounds, self.counts, self.sum = bounds, [0] * (len(bounds) + 1), 0.0

    def observe(self, value):
        self.counts[bisect_left(self.bounds, value)] += 1  # le is inclusive: the first bound >= value
        self.sum += value


class Histogram:
    """A histogram family for REGISTRY, with one optional label (``labels(value)``: its child)."""
    labelled = {}  # name -> label of the labelled families (render names the label)

    def __init__(self, name, documentation, label=None, buckets=FAST, registry=REGISTRY):
        self.name, self.documentation, self.label, self.bounds = name, documentation, label, tuple(buckets)
        if label:
            Histogram.labelled[name] = label
        self.children = {}
        self.counts = None if label else Counts(self.bounds)
        self._les = [floatToGoString(b) for b in (*self.bounds, INF)]
        registry.register(self)

    def observe(self, value):
        self.counts.observe(value)

    def labels(self, value):
        child = self.children.get(value)
        if child is None:
            child = self.children[value] = Counts(self.bounds)
        return child

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label] if self.label else [])
        for key, c in ([((), self.counts)] if self.counts else [((k,), c) for k, c in self.children.items()]):
            total, buckets = 0, []
            for le, n in zip(self._les, c.counts):
                total += n
                buckets.append((le, total))
            family.add_metric(list(key), buckets, c.sum)
        return [family]

SENT = Histogram("whatsup_sent_latency_seconds", "✓ latency: a message's arrival (queued in offd) "
                 "to its ✓ (durable, sent answered)")
DELIVERY = Histogram("whatsup_delivery_latency_seconds", "an item's queueing in offd to the device's "
                     "ack (offline time included)",
                     buckets=(0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0, 600.0, 3600.0, 86400.0))
COMMIT = Histogram("whatsup_commit_seconds", "one group commit (write + fsync) of a store (offd, accounts, "
                   "table)", "store")
COMMIT_SIZE = Histogram("whatsup_commit_batch_entries", "entries written by one group commit", "store",
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096))
LOGIN = Histogram("whatsup_login_seconds", "a login frame to its answer (the password check included)")
REDIS = Histogram("whatsup_redis_seconds", "one pipeline of a node's outbox to Redis (its entries, directory "
                  "writes and acknowledgements; retries included)")
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
                lines += _histogram(family.name, f'{Histogram.labelled[family.name]}="{key}",', hist)
    return "\n".join(lines) + "\n"


def _histogram(name, labels, hist):
    lines = [f'{name}_bucket{{{labels}le="{le}"}} {n}' for le, n in hist["buckets"].items()]
    plain = f"{{{labels[:-1]}}}" if labels else ""
    return lines + [f"{name}_count{plain} {hist.get('count', 0)}", f"{name}_sum{plain} {hist.get('sum', 0.0)}"]
