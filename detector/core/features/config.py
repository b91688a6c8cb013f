"""How producer baselines learn and what they may hold: the features' settings (a spec's
``[features]`` table)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# The features, in the order they judge an event (ties among reasons keep this order).
FEATURES = (
    "rate", "value", "size", "type", "category", "schema", "replayed_id", "drift", "joint", "peer",
    "sequence", "resonance",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """How producer baselines learn and what they may hold.

    Attributes:
        fading_factor: weight of the newest event in running moments (memory ~ 1/fading).
        rate_fading_factor: smoothing of the inter-arrival time, in events.
        rate_horizon_s: memory of the usual (smoothed) inter-arrival in event time, not in
            events (0: ``fading_factor`` per event). A flood packs hundreds of events into
            seconds; a count-based baseline would learn it before it looked unusual.
        min_count: observations of a numeric field before it is judged.
        min_sd: floor on a standard deviation in log space (about a 5% change).
        max_numeric_fields: numeric (type, field) pairs tracked per producer.
        max_categorical_fields: categorical (type, field) pairs tracked per producer.
        max_categories: distinct values per field before it counts as an id (not judged).
        max_types: distinct event types per producer; one more and its types are no longer
            judged (an attacker can mint types), which ``first_type_rarity`` reports once.
        first_type_rarity: a type the producer never sent is decisive (alerts at that event
            once the producer is past warm-up, whatever the calibrated score, even inside its
            cooldown) when its past made a new type at least this rare (Good-Turing,
            ``-log10 p``: 3 is less likely than 1 in 1,000); so is the type that overflows
            ``max_types``. Its first occurrence is then counted whatever the verdict, so only
            the first event of a type is news. 0: off, new types are judged by their surprise.
        max_schemas: distinct payload shapes tracked per producer.
        novelty_prior: pseudo-count of "new value" observations (Good-Turing smoothing).
        disabled: features never computed (their surprise stays 0), e.g. ``("rate", "size")``
            for univariate metric streams, where irregular sampling and the number of digits
            of a value say nothing about the metric.
        seasonal_buckets: a per-field time-of-period profile of numeric values with this many
            buckets of ``seasonal_period_s / seasonal_buckets`` (UTC, event time); 0 = off.
            A value is also judged against its bucket, so a daily cycle is not "spread".
        seasonal_period_s: the period the buckets divide (86400: time of day).
        seasonal_fading: memory of each bucket, in its own observations.
        seasonal_min_count: observations of a bucket before it is judged.
        seasonal_explains: once a bucket is judged, it replaces the running moments (a value
            usual for its time of day is usual, however far from the overall mean); else the
            larger of the two surprises counts.
        window_values: last values kept per numeric field for an empirical (rank) judgement:
            robust where a normal fit is not (counts, spikes, few distinct values); 0 = off.
        window_tail: values beyond which the window's tail is extrapolated (exponential).
        window_weight: multiplier of the window surprise (its p-values are rank based and
            coarser than the fitted ones; the calibration puts everything on one scale).
        window_floor: a value the window holds ``k >= 1`` values at least as extreme as is
            no rarer than ``k`` in ``n``, whatever the extrapolated tail says (a mix of usual
            values and recurring spikes fits no exponential tail).
        max_profiled_fields: numeric fields per producer with a seasonal profile or window.
        id_field: payload field holding the producer's event id (unique per event).
        replay_horizon_s: event time for which each producer's event ids are remembered (from
            their first send, against the newest event time seen); an id the same producer
            sends again within it is a ``replayed_id``; 0 = off. The ids of all producers
            share one window (it grows with events, not producers), 24 bytes per id.
        replay_max_ids: bound of that window: beyond this many ids the oldest are forgotten
            first (1,000,000: at most 24 MiB; ~555 ids/s fill it within 30 minutes).
        burst_s: event time over which novelties (never-seen types, values or shapes) and
            repeated ids count as one burst: each one in the burst multiplies the evidence
            of the next (independent rare events multiply; a broken producer repeats itself).
        novelty_burst: whether novelties multiply within a burst (off: each judged alone).
        drift_horizon_s: memory, in event time, of a slow reference level per numeric field
            (per event type); a CUSUM of values against it reveals a level creeping away
            (``drift``), which the ~100-event baselines follow unnoticed; 0 = off.
        drift_slack: CUSUM allowance per event, in reference standard deviations: shifts
            smaller than this never accumulate.
        drift_clip: largest standardised distance one value adds (one outlier is no drift).
        peers: peer groups (:mod:`detector.core.features.peers`): producers of one kind, what
            each kind sends; a first event of a type other kinds own alerts naming the kind,
            a type another producer of its kind already sends is no news (a release pages
            once), a newcomer of a known kind is judged against its kind while it warms up.
        peer_patterns: producer id globs naming kinds (``"payment-*"``: kind ``payment-*``),
            or regexes with a ``(?P<kind>...)`` group; producers no pattern matches get the
            family (before the first ``.``) of the type they send most as their kind.
        peer_min_events: events of a producer before its kind is learned from its types, and
            events of a kind's members of a type before the kind owns it.
        peer_max_kinds: kinds summarised; a producer that would mint one more gets none (its
            kind's overflow alerts once).
        peer_rate_factor: a producer in warm-up sending this many times faster than its kind's
            usual rate alerts (once).
        peer_release_s: a release's window (event time from its kind's first event of the
            type): while another producer of its kind sends that type too, a producer's events
            of it are no type or shape novelty (the group's adoption is the evidence: it paged
            once, at its first sender); 0: off.
        drift_restart: a CUSUM statistic learned above this (an accepted new normal, or a
            drift the calibration found usual) restarts the reference from the next events.
        sequence_window: values per window of the sequence feature: the shape of a numeric
            field's last ``sequence_window`` values (z-normalised) against its nearest earlier
            window among the last ``sequence_history`` values (a "discord" distance, judged
            against the field's usual distances); 0 = off (no state).
        sequence_history: values per field the nearest window is searched among (8 bytes
            each; a per-event cost of about ``sequence_history * sequence_window``).
        sequence_fading: memory of the usual log-distance, in values.
        sequence_weight: multiplier of the sequence surprise.
        resonance_step: values per step of the resonance feature's ART memory of shapes
            (one memory per numeric field: a step keeps its spike, a window of 8 steps is
            one shape); a shape unlike every learned one alerts by itself. 0 = off (no state).
        resonance_learn: steps the memory learns before it may report (its range, first
            vigilances and first shapes come from them).
        resonance_capacity: shapes (ART categories, 256 bytes each) per field; beyond it the
            least recently resonating is replaced.
    """

    fading_factor: float = 0.01
    rate_fading_factor: float = 0.1
    rate_horizon_s: float = 0.0
    min_count: int = 20
    min_sd: float = 0.05
    max_numeric_fields: int = 64
    max_categorical_fields: int = 64
    max_categories: int = 64
    max_types: int = 64
    first_type_rarity: float = 0.0
    max_schemas: int = 32
    novelty_prior: float = 0.1
    disabled: tuple[str, ...] = ()
    seasonal_buckets: int = 0
    seasonal_period_s: int = 86_400
    seasonal_fading: float = 0.1
    seasonal_min_count: int = 12
    seasonal_explains: bool = False
    window_values: int = 0
    window_tail: int = 20
    window_weight: float = 2.0
    window_floor: bool = False
    max_profiled_fields: int = 8
    id_field: str = "event_id"
    replay_horizon_s: float = 0.0
    replay_max_ids: int = 1_000_000
    burst_s: float = 60.0
    novelty_burst: bool = False
    drift_horizon_s: float = 0.0
    drift_slack: float = 0.5
    drift_clip: float = 3.0
    drift_restart: float = 30.0
    joint_fields: int = 0
    joint_fading: float = 0.005
    joint_min_count: int = 100
    joint_ridge: float = 0.05
    joint_max_types: int = 8
    peers: bool = False
    peer_patterns: tuple[str, ...] = ()
    peer_min_events: int = 200
    peer_max_kinds: int = 64
    peer_rate_factor: float = 10.0
    peer_release_s: float = 3600.0
    sequence_window: int = 0
    sequence_history: int = 512
    sequence_fading: float = 0.01
    sequence_weight: float = 1.0
    resonance_step: int = 0
    resonance_learn: int = 104
    resonance_capacity: int = 256

    def __post_init__(self) -> None:
        unknown = sorted(set(self.disabled) - set(FEATURES))
        if unknown:
            msg = f"disabled: unknown features {unknown} (known: {list(FEATURES)})"
            raise ValueError(msg)
        if self.seasonal_buckets < 0 or self.window_values < 0:
            msg = "seasonal_buckets and window_values must be >= 0"
            raise ValueError(msg)
        if self.seasonal_buckets and self.seasonal_period_s * 1000 < self.seasonal_buckets:
            msg = "seasonal_period_s is shorter than one millisecond per bucket"
            raise ValueError(msg)
        if self.first_type_rarity < 0 or self.max_types < 1:
            msg = "first_type_rarity must be >= 0 and max_types >= 1"
            raise ValueError(msg)
        if min(self.replay_horizon_s, self.drift_horizon_s, self.rate_horizon_s) < 0:
            msg = "replay_horizon_s, drift_horizon_s and rate_horizon_s must be >= 0"
            raise ValueError(msg)
        if self.replay_max_ids < 1:
            msg = "replay_max_ids must be >= 1"
            raise ValueError(msg)
        if min(self.drift_slack, self.drift_clip, self.burst_s) <= 0:
            msg = "drift_slack, drift_clip and burst_s must be > 0"
            raise ValueError(msg)
        self._check_joint()
        self._check_peers()
        if self.sequence_window < 0 or (
            self.sequence_window and self.sequence_history < 4 * self.sequence_window
        ):
            msg = "sequence_window must be >= 0 and sequence_history >= 4 * sequence_window"
            raise ValueError(msg)
        if self.resonance_step < 0 or self.resonance_learn < 16 or self.resonance_capacity < 1:
            msg = "resonance_step must be >= 0, resonance_learn >= 16, resonance_capacity >= 1"
            raise ValueError(msg)
        if self.window_values and self.window_values < 2 * self.window_tail:
            msg = "window_values must be at least 2 * window_tail"
            raise ValueError(msg)

    def _check_joint(self) -> None:
        if self.joint_fields == 1 or not 0 <= self.joint_fields <= 16:
            msg = "joint_fields must be 0 (off) or 2..16"
            raise ValueError(msg)
        if not (0 < self.joint_fading <= 1 and 0 < self.joint_ridge < 1):
            msg = "joint_fading must be in (0, 1] and joint_ridge in (0, 1)"
            raise ValueError(msg)
        if self.joint_max_types < 1 or self.joint_min_count < 2:
            msg = "joint_max_types must be >= 1 and joint_min_count >= 2"
            raise ValueError(msg)

    def _check_peers(self) -> None:
        if (
            self.peer_min_events < 1
            or self.peer_max_kinds < 1
            or self.peer_rate_factor <= 1
            or self.peer_release_s < 0
        ):
            msg = (
                "peer_min_events and peer_max_kinds must be >= 1, peer_rate_factor > 1, "
                "peer_release_s >= 0"
            )
            raise ValueError(msg)
        for p in self.peer_patterns:
            if "(?P<kind>" in p:
                try:
                    re.compile(p)
                except re.error as exc:
                    msg = f"peer_patterns: {p!r}: {exc}"
                    raise ValueError(msg) from None
