"""``python -m benchmarks.scenarios``: run the scenarios benchmark and print its table."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from benchmarks.scenarios.matching import GRACE_MS, Score
from benchmarks.scenarios.runner import DAY_MS, Setting, run_seed
from detector.core.scoring import load_spec
from detector.shop.simulator import INCIDENT_KINDS


def _kinds(text: str) -> tuple[str, ...]:
    wanted = INCIDENT_KINDS if text == "all" else tuple(k for k in text.split(",") if k)
    unknown = sorted(set(wanted) - set(INCIDENT_KINDS))
    if unknown:
        msg = f"unknown kinds {unknown} (known: {', '.join(INCIDENT_KINDS)})"
        raise click.BadParameter(msg, param_hint="--kinds")
    return wanted


@click.command()
@click.option("--model", default="stats", show_default=True, help="spec name or path")
@click.option("--seeds", default="7,8,9", show_default=True)
@click.option("--hours", default=24.0, show_default=True, help="event time per seed")
@click.option("--kinds", default="all", show_default=True, help="comma-separated, or 'all'")
@click.option("--threshold", type=float, default=None, help="override the spec's threshold")
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="also write the results as JSON here ('-': stdout)",
)
@click.option("--missed", is_flag=True, help="list the incidents no alert matched")
@click.option("--sweep", default="", help="also simulate these thresholds, e.g. 0.9999,0.99999")
@click.option(
    "--horizons",
    default="",
    help="also simulate these rarity horizons in days (0: none) at the threshold, e.g. 0,1,10",
)
@click.option(
    "--rate-scale",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="scale every producer's event rate (a shorter run of the same shop)",
)
@click.option(
    "--feedback-first-day",
    is_flag=True,
    help="simulate an analyst marking the first day's false alerts as false positives",
)
def main(
    model: str,
    seeds: str,
    hours: float,
    kinds: str,
    threshold: float | None,
    json_path: Path | None,
    missed: bool,
    sweep: str,
    horizons: str,
    rate_scale: float,
    feedback_first_day: bool,
) -> None:
    """The shop with every incident kind through the worker's path: recall, delay, reasons,
    precision and false alerts per producer per day."""
    spec = load_spec(model)
    wanted = _kinds(kinds)
    console = Console(stderr=json_path == Path("-"), width=180)  # the sweep has 14 columns
    used = spec.decision.threshold if threshold is None else threshold
    sweep_at = [(float(t), spec.decision.rarity_horizon_ms) for t in sweep.split(",") if t]
    sweep_at += [(used, round(float(h) * DAY_MS)) for h in horizons.split(",") if h]
    total = Score()
    swept: dict[Setting, Score] = {s: Score() for s in sweep_at}
    runs = []
    for seed in (int(s) for s in seeds.split(",")):
        try:
            run = run_seed(
                spec, seed, hours, wanted, threshold, sweep=sweep_at, rate_scale=rate_scale,
                feedback_first_day=feedback_first_day,
            )  # fmt: skip
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        runs.append(run)
        total.add(run.score)
        for t, sc in run.sweep.items():
            swept[t].add(sc)
        console.print(
            f"seed {seed}: {run.events:,} events, {run.score.alerts} alerts "
            f"({run.score.false} false, {run.score.during_pauses} during pauses), pipeline "
            f"{run.events_per_s:,.0f} events/s"
        )
        caught, injected = run.later()
        console.print(
            f"seed {seed}: false alerts per day {run.false_by_day()}, incidents after the first "
            f"day caught {caught}/{injected}, feedback {run.feedback} "
            f"(applied {run.feedback_applied})"
        )
    console.print(_table(total, f"{spec.name} at {used:g}, seeds {seeds}, {hours:g} h each"))
    if swept:
        console.print(_sweep_table(swept))
    if missed:
        for kind, ks in total.kinds.items():
            for detail in ks.missed:
                console.print(f"missed {kind}: {detail}")
    if json_path is not None:
        doc = _json(total, runs, model, seeds, hours, used, swept)
        text = json.dumps(doc, indent=2, allow_nan=False)
        if json_path == Path("-"):
            sys.stdout.write(text + "\n")
        else:
            json_path.write_text(text + "\n")


def _fmt(x: float, spec: str) -> str:
    return "-" if math.isnan(x) else format(x, spec)


def _table(total: Score, title: str) -> Table:
    t = Table(title=title)
    for col in (
        "kind",
        "injected",
        "caught",
        "recall",
        "median delay s",
        "max delay s",
        "top reason ok",
    ):
        t.add_column(col, justify="left" if col == "kind" else "right")
    for kind in INCIDENT_KINDS:
        ks = total.kinds.get(kind)
        if ks is None:
            continue
        t.add_row(
            kind,
            str(ks.injected),
            str(ks.caught),
            _fmt(ks.recall, ".0%"),
            _fmt(ks.delay_s("median"), ".0f"),
            _fmt(ks.delay_s("max"), ".0f"),
            f"{ks.top_reason_matches}/{ks.caught}",
        )
    injected = sum(k.injected for k in total.kinds.values())
    caught = sum(k.caught for k in total.kinds.values())
    t.add_section()
    t.add_row(
        "all",
        str(injected),
        str(caught),
        _fmt(caught / max(injected, 1), ".0%"),
        "",
        "",
        str(sum(k.top_reason_matches for k in total.kinds.values())),
    )
    t.caption = (
        f"alerts {total.alerts}: true {total.true}, false {total.false}, precision "
        f"{_fmt(total.precision, '.1%')}; {total.producer_days:.1f} producer-days, "
        f"{_fmt(total.false_per_producer_day, '.2f')} false alerts per producer per day; "
        f"false by top reason {dict(sorted(total.false_by_reason.items()))}; producers' alerts "
        f"during stream pauses {total.during_pauses}; a group paging again {total.repeats}"
    )
    return t


def _sweep_table(swept: dict[Setting, Score]) -> Table:
    t = Table(title="simulated settings (caught/injected per kind)")
    kinds = [k for k in INCIDENT_KINDS if any(k in sc.kinds for sc in swept.values())]
    for col in ("threshold", "horizon d", *kinds, "false", "false/producer/day"):
        t.add_column(col, justify="right")
    for (threshold, horizon_ms), sc in sorted(swept.items()):
        cells = [f"{sc.kinds[k].caught}/{sc.kinds[k].injected}" for k in kinds]
        false = (str(sc.false), _fmt(sc.false_per_producer_day, ".2f"))
        t.add_row(f"{threshold:g}", f"{horizon_ms / DAY_MS:g}", *cells, *false)
    return t


def _json(
    total: Score,
    runs: list[Any],
    model: str,
    seeds: str,
    hours: float,
    threshold: float,
    swept: dict[Setting, Score],
) -> dict[str, Any]:
    def num(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 4)

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "river": version("river"),
            "numpy": version("numpy"),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "command": " ".join(["python -m benchmarks.scenarios", *sys.argv[1:]]),
        "model": model,
        "seeds": seeds,
        "hours": hours,
        "threshold": threshold,
        "grace_ms": GRACE_MS,
        "kinds": {
            kind: {
                "injected": ks.injected,
                "caught": ks.caught,
                "recall": num(ks.recall),
                "median_delay_s": num(ks.delay_s("median")),
                "max_delay_s": num(ks.delay_s("max")),
                "top_reason_matches": ks.top_reason_matches,
                "missed": ks.missed,
            }
            for kind, ks in total.kinds.items()
        },
        "alerts": total.alerts,
        "true": total.true,
        "false": total.false,
        "precision": num(total.precision),
        "producer_days": round(total.producer_days, 3),
        "false_per_producer_day": num(total.false_per_producer_day),
        "false_by_top_reason": total.false_by_reason,
        "during_pauses": total.during_pauses,
        "repeats": total.repeats,
        "simulated": [
            {
                "threshold": t,
                "horizon_days": h / DAY_MS,
                "caught": sum(k.caught for k in sc.kinds.values()),
                "injected": sum(k.injected for k in sc.kinds.values()),
                "false": sc.false,
                "false_per_producer_day": num(sc.false_per_producer_day),
            }
            for (t, h), sc in sorted(swept.items())
        ],
        "per_seed": [
            {
                "seed": r.seed,
                "events": r.events,
                "rejected": r.rejected,
                "alerts": r.score.alerts,
                "false": r.score.false,
                "false_by_day": r.false_by_day(),
                "caught_after_first_day": r.later()[0],
                "injected_after_first_day": r.later()[1],
                "feedback": r.feedback,
                "feedback_applied": r.feedback_applied,
            }
            for r in runs
        ],
    }


if __name__ == "__main__":
    main()
