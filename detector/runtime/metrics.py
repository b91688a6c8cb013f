"""Metrics: every Prometheus series the worker and the notifier export, on an injected registry.

Labels come from closed sets (outcomes, reject reasons, configured stream names), never from
producer ids: an attacker who controls producer ids must not control our cardinality.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from detector import __version__
from detector.core.alerts import KINDS

OUTCOMES = ("scored", "warmup", "invalid", "replayed")
REJECT_REASONS = (
    "empty_entry",
    "too_many_fields",
    "entry_too_large",
    "invalid_utf8",
    "string_too_long",
    "empty_producer",
    "invalid_time",
    "invalid_json",
    "payload_not_object",
    "json_too_deep",
    "non_finite_number",
    "poison",
    "error",
    "invalid_feedback",
)
FEEDBACK_OUTCOMES = ("applied", "unknown_producer", "invalid")
# Scoring is sub-millisecond: web-latency default buckets would put everything in the first.
EVENT_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 0.1)
BATCH_BUCKETS = (1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 5.0)


class Metrics:
    """The worker's metrics. Tests pass a fresh ``CollectorRegistry``."""

    def __init__(self, registry: CollectorRegistry, streams: tuple[str, ...], model: str) -> None:
        self.registry = registry
        self.events = Counter(
            "detector_events", "Events by outcome", ["outcome"], registry=registry
        )
        # Labelled children resolved once: ``labels()`` per batch was a cost per read round.
        self.outcome = {outcome: self.events.labels(outcome) for outcome in OUTCOMES}
        self.alerts = Counter(
            "detector_alerts", "Alerts emitted, by kind", ["kind"], registry=registry
        )
        self.alerts_of = {kind: self.alerts.labels(kind) for kind in KINDS}
        self.feedback = Counter(
            "detector_feedback",
            "Analyst feedback entries: applied, on a producer not tracked, or invalid "
            "(dead-lettered)",
            ["outcome"],
            registry=registry,
        )
        for outcome in FEEDBACK_OUTCOMES:
            self.feedback.labels(outcome)
        self.feedback_rules_evicted = Gauge(
            "detector_feedback_rules_evicted",
            "Feedback rules pushed out by newer ones (a bounded number per producer)",
            registry=registry,
        )
        self.suppressed = Counter(
            "detector_alerts_suppressed",
            "Anomalous events held back by the per-producer cooldown",
            registry=registry,
        )
        self.dead_lettered = Counter(
            "detector_dead_lettered",
            "Entries written to the dead-letter stream, by reason",
            ["reason"],
            registry=registry,
        )
        for reason in REJECT_REASONS:
            self.dead_lettered.labels(reason)
        self.event_seconds = Histogram(
            "detector_event_processing_seconds",
            "Processing time per event (decode, features, score, learn), amortised over its "
            "batch; one observation per batch",
            buckets=EVENT_BUCKETS,
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "detector_batch_seconds",
            "Time from a batch read to its commit",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.checkpoint_seconds = Histogram(
            "detector_checkpoint_seconds",
            "Time spent serialising and signing a checkpoint, plus the time from sending its "
            "commit (with its acks) until Redis confirmed it",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.checkpoint_bytes = Gauge(
            "detector_checkpoint_bytes",
            "Bytes written by the last checkpoint commit (changed producers only)",
            registry=registry,
        )
        self.lag = Gauge(
            "detector_consumer_lag",
            "Entries in the stream not yet delivered to the group",
            ["stream"],
            registry=registry,
        )
        self.pending = Gauge(
            "detector_pending_entries",
            "Entries delivered to the group but not acknowledged",
            ["stream"],
            registry=registry,
        )
        for stream in streams:
            self.lag.labels(stream)
            self.pending.labels(stream)
        self.producers = Gauge(
            "detector_producers_tracked", "Producers with state in memory", registry=registry
        )
        self.evicted = Gauge(
            "detector_producers_evicted",
            "Producers evicted so far (cap or idle TTL)",
            registry=registry,
        )
        self.redis_errors = Counter(
            "detector_redis_errors", "Redis errors recovered from", registry=registry
        )
        self.claimed = Counter(
            "detector_claimed_entries",
            "Entries claimed from other consumers' pending lists",
            registry=registry,
        )
        # Resource exhaustion (docs/security.md): totals kept in the checkpoint, hence gauges.
        self.refused = Gauge(
            "detector_producers_refused",
            "Events of producers refused admission (store full), scored in the overflow state",
            registry=registry,
        )
        self.admitted_when_full = Gauge(
            "detector_producers_admitted_when_full",
            "Producers admitted while the store was full, each replacing one in warm-up",
            registry=registry,
        )
        self.alerts_capped = Gauge(
            "detector_alerts_capped",
            "Alerts held back by the global cap per minute (summarised in alert_storm alerts)",
            registry=registry,
        )
        # Partitioned workers (--partitions): ownership and its changes.
        self.partitions_owned = Gauge(
            "detector_partitions_owned",
            "Partitions this worker holds the lease of",
            registry=registry,
        )
        self.lease_losses = Counter(
            "detector_lease_losses",
            "Partitions lost without releasing them (lease expired or taken; commit refused)",
            registry=registry,
        )
        self.rebalances = Counter(
            "detector_rebalances",
            "Changes of this worker's target partitions (members joined or left)",
            registry=registry,
        )
        # Durable writes (--min-replicas-acked): each WAIT, and those that timed out.
        self.replication_wait_seconds = Histogram(
            "detector_replication_wait_seconds",
            "Time from sending a read, append or commit to its WAIT's reply (durable writes)",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.replication_timeouts = Counter(
            "detector_replication_timeouts",
            "WAITs that timed out before enough replicas acknowledged; the worker waited again",
            registry=registry,
        )
        info = Info("detector", "Detector build and model", registry=registry)
        info.info({"version": __version__, "model": model})

    def set_exhaustion(self, refused: int, admitted_when_full: int, alerts_capped: int) -> None:
        """Totals over the worker's pipelines (``Admission`` and ``AlertBudget`` counters)."""
        self.refused.set(refused)
        self.admitted_when_full.set(admitted_when_full)
        self.alerts_capped.set(alerts_capped)

    def waited(self, seconds: float, enough: bool) -> None:
        """One WAIT of a durable write (:class:`~detector.gateway.streams.Replication`)."""
        self.replication_wait_seconds.observe(seconds)
        if not enough:
            self.replication_timeouts.inc()

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from outside
        start_http_server(port, addr=addr, registry=self.registry)


# What came of one webhook request: 2xx; a permanent refusal (other 4xx, 3xx); a request to
# slow down (429, 408, 425); a server error (5xx); no answer (connection error, timeout).
NOTIFY_RESULTS = ("ok", "rejected", "throttled", "server_error", "error")
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class NotifierMetrics:
    """The notifier's metrics (``detector notify --metrics-port``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "detector_notify_requests",
            "Webhook requests by result (ok, rejected, throttled, server_error, error)",
            ["result"],
            registry=registry,
        )
        for result in NOTIFY_RESULTS:
            self.requests.labels(result)
        self.delivered = Counter(
            "detector_notify_delivered", "Alerts the webhook accepted (2xx)", registry=registry
        )
        self.dead_lettered = Counter(
            "detector_notify_dead_lettered",
            "Alerts the webhook refused for good (or entries that are no alert), written to the"
            " notifier's dead-letter stream",
            registry=registry,
        )
        self.trimmed = Counter(
            "detector_notify_trimmed",
            "Alerts trimmed from the alert stream before the notifier delivered them",
            registry=registry,
        )
        self.undelivered = Gauge(
            "detector_notify_undelivered",
            "Alerts in the stream the notifier's group has not read yet",
            registry=registry,
        )
        self.request_seconds = Histogram(
            "detector_notify_request_seconds",
            "Time of one webhook request, answered or not",
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        info = Info("detector_notify", "Detector notifier build", registry=registry)
        info.info({"version": __version__})

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from outside
        start_http_server(port, addr=addr, registry=self.registry)
