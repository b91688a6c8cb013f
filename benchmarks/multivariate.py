"""Multivariate streams with documented faults: what the joint feature adds to a spec.

A seeded generator of producers whose numeric fields are correlated through latent factors,
each producer with one fault of a known kind after a clean history, scored through the
pipeline twice: with the spec as it is and with its ``joint`` feature off (or on, if the spec
has it off). Reported per fault kind: detection rate, delay (events from the fault's start to
the first alert on its producer) and, over all producers, false alerts per producer-day.

The stream: every producer sends one ``telemetry`` event every ~10 s (jittered) with four
fields driven by two AR(1) latent factors ``f`` (flow) and ``g`` (load), in log space::

    flow     = exp(3.0 + 0.40 f + 0.08 e1)     # flow and pressure move together (r ~ 0.96)
    pressure = exp(2.0 + 0.40 f + 0.08 e2)
    latency  = exp(5.0 + 0.30 g + 0.10 e3)     # latency up while requests fall (r ~ -0.9)
    requests = exp(4.0 - 0.30 g + 0.10 e4)

Fault kinds (each lasts :data:`FAULT_EVENTS` events):

- ``correlation_break``: ``pressure`` follows a factor of its own: each field keeps its usual
  distribution, the pair stops moving together.
- ``stuck_field``: ``flow`` freezes at its last value while the others move.
- ``sign_flip``: ``requests`` moves *with* latency (``+0.30 g``) instead of against it.
- ``joint_shift``: every field shifts by 1.5 of its own sds (each within 2 sd), latency and
  requests the same way (against their relation).
- ``variance_collapse``: the factors and noises shrink to a tenth: values sit at their usual
  centre (not unusual for a per-event judge: a known blind spot, reported as such).

Examples:
    >>> s = stream(seed=1, producers=5, events=300)
    >>> len(s.events), sorted({f.kind for f in s.faults})[:2]
    (1500, ['correlation_break', 'joint_shift'])
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from dataclasses import dataclass

import click

from detector.core.events import Event
from detector.core.pipeline import Pipeline
from detector.core.scoring import ModelSpec, load_spec

KINDS = ("correlation_break", "stuck_field", "sign_flip", "joint_shift", "variance_collapse")
FAULT_EVENTS = 30
STEP_MS = 10_000
GRACE_EVENTS = 10  # an alert this many events after a fault's end still belongs to it
DAY_MS = 86_400_000
_PHI = 0.0  # the factors' AR(1) coefficient per event (0: independent events)


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    producer: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class Stream:
    events: list[Event]  # in event-time order
    faults: list[Fault]
    producer_days: float


def _values(r: random.Random, f: float, g: float, spread: float = 1.0) -> list[float]:
    def n() -> float:
        return spread * r.gauss(0.0, 1.0)

    return [
        3.0 + 0.40 * f + 0.08 * n(),
        2.0 + 0.40 * f + 0.08 * n(),
        5.0 + 0.30 * g + 0.10 * n(),
        4.0 - 0.30 * g + 0.10 * n(),
    ]


# The fields' sds in log space (the factors' stationary sd is 1).
_SDS = (math.hypot(0.40, 0.08), math.hypot(0.40, 0.08), math.hypot(0.30, 0.10),
        math.hypot(0.30, 0.10))  # fmt: skip
NAMES = ("flow", "pressure", "latency", "requests")


def stream(seed: int, producers: int = 20, events: int = 3000) -> Stream:
    """Every producer's events (the faults cycle through :data:`KINDS` over the producers),
    each fault placed at a seeded point of the producer's second half."""
    out: list[tuple[int, int, Event]] = []
    faults = []
    start = 1_767_225_600_000
    for k in range(producers):
        name = f"unit-{k}"
        kind = KINDS[k % len(KINDS)]
        r = random.Random(f"multivariate:{seed}:{name}")
        first = r.randint(events // 2, events - FAULT_EVENTS - GRACE_EVENTS - 1)
        f = g = h = 0.0
        t = start + r.randint(0, STEP_MS)
        frozen = 0.0
        fault_t = [0, 0]
        for i in range(events):
            innov = math.sqrt(1 - _PHI * _PHI)
            f = _PHI * f + innov * r.gauss(0.0, 1.0)
            g = _PHI * g + innov * r.gauss(0.0, 1.0)
            h = _PHI * h + innov * r.gauss(0.0, 1.0)
            faulty = first <= i < first + FAULT_EVENTS
            if faulty and kind == "variance_collapse":
                y = _values(r, 0.1 * f, 0.1 * g, 0.1)
            else:
                y = _values(r, f, g)
            if faulty:
                if i == first:
                    fault_t[0] = t
                fault_t[1] = t
                if kind == "correlation_break":
                    y[1] = 2.0 + 0.40 * h + 0.08 * r.gauss(0.0, 1.0)
                elif kind == "stuck_field":
                    y[0] = frozen
                elif kind == "sign_flip":
                    y[3] = 4.0 + 0.30 * g + 0.10 * r.gauss(0.0, 1.0)
                elif kind == "joint_shift":
                    y = [v + 1.5 * sd for v, sd in zip(y, _SDS, strict=True)]
            else:
                frozen = y[0]
            numbers = {n: round(math.exp(v), 3) for n, v in zip(NAMES, y, strict=True)}
            out.append((t, k, Event("mv", f"{t}-{k}", name, t, "telemetry", numbers, {}, 80)))
            t += STEP_MS // 2 + r.randint(0, STEP_MS)
        faults.append(Fault(kind, name, fault_t[0], fault_t[1]))
    out.sort(key=lambda e: (e[0], e[1]))
    span = producers * events * STEP_MS
    return Stream([e for _, _, e in out], faults, span / DAY_MS)


@dataclass
class KindResult:
    injected: int = 0
    caught: int = 0
    delays: list[int] = dataclasses.field(default_factory=list)  # in events
    joint_led: int = 0  # first matching alert's first reason is the joint feature's


@dataclass
class Result:
    kinds: dict[str, KindResult]
    false: int
    producer_days: float


def run(spec: ModelSpec, s: Stream) -> Result:
    """Score ``s`` through the pipeline and match its alerts to the faults."""
    pipeline = Pipeline(spec)
    alerts: dict[str, list[tuple[int, str]]] = {}
    seq: dict[str, list[int]] = {}
    for v in pipeline.process(s.events):
        e = v.event
        seq.setdefault(e.producer, []).append(e.event_time_ms)
        if v.alert is not None:
            top = v.alert.reasons[0].feature if v.alert.reasons else ""
            alerts.setdefault(e.producer, []).append((e.event_time_ms, top))
    kinds = {k: KindResult() for k in KINDS}
    false = 0
    for fault in s.faults:
        times = seq[fault.producer]
        end_i = min(times.index(fault.end_ms) + GRACE_EVENTS, len(times) - 1)
        until = times[end_i]
        kr = kinds[fault.kind]
        kr.injected += 1
        mine = [
            (t, top) for t, top in alerts.get(fault.producer, []) if fault.start_ms <= t <= until
        ]
        false += len(alerts.get(fault.producer, [])) - len(mine)
        if mine:
            kr.caught += 1
            kr.delays.append(times.index(mine[0][0]) - times.index(fault.start_ms))
            kr.joint_led += mine[0][1] == "joint"
    return Result(kinds, false, s.producer_days)


def with_joint(spec: ModelSpec, fields: int) -> ModelSpec:
    """``spec`` with ``joint_fields`` set (0: the joint feature off)."""
    return dataclasses.replace(
        spec, features=dataclasses.replace(spec.features, joint_fields=fields)
    )


def table(results: dict[str, list[Result]]) -> str:
    """One row per fault kind and variant: caught/injected, median delay, joint-led."""
    lines = ["| variant | fault kind | caught | median delay (events) | joint reason first |",
             "|---|---|---|---|---|"]  # fmt: skip
    for variant, rs in results.items():
        for kind in KINDS:
            injected = sum(r.kinds[kind].injected for r in rs)
            caught = sum(r.kinds[kind].caught for r in rs)
            delays = [d for r in rs for d in r.kinds[kind].delays]
            led = sum(r.kinds[kind].joint_led for r in rs)
            median = f"{statistics.median(delays):.0f}" if delays else "-"
            lines.append(f"| {variant} | {kind} | {caught}/{injected} | {median} | {led} |")
        false = sum(r.false for r in rs)
        days = sum(r.producer_days for r in rs)
        lines.append(
            f"| {variant} | false alerts | {false} ({false / days:.2f}/producer-day) |  |  |"
        )
    return "\n".join(lines)


@click.command()
@click.option("--model", default="stats", show_default=True, help="spec name or TOML path")
@click.option("--seeds", default="1,2,3", show_default=True, help="comma-separated")
@click.option("--producers", default=20, show_default=True)
@click.option("--events", default=3000, show_default=True, help="per producer")
@click.option("--joint-fields", default=4, show_default=True, help="for the 'joint on' run")
def main(model: str, seeds: str, producers: int, events: int, joint_fields: int) -> None:
    """Detection rate, delay and false alerts per fault kind, with and without ``joint``."""
    spec = load_spec(model)
    variants = {"joint off": with_joint(spec, 0), "joint on": with_joint(spec, joint_fields)}
    results: dict[str, list[Result]] = {v: [] for v in variants}
    for seed in (int(x) for x in seeds.split(",") if x):
        s = stream(seed, producers, events)
        for variant, vspec in variants.items():
            results[variant].append(run(vspec, s))
    click.echo(table(results))


if __name__ == "__main__":
    main()
