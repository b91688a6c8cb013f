"""River's HalfSpaceTrees against detector.core.trees on the same events, in one process.

``python -m benchmarks.bench_trees``: per event score_one + learn_one (the pipeline's order),
the pickled size and the time to pickle, for the hst spec's trees. The inputs imitate the
trees' real ones: squashed surprises, 0 for most features of most events.
"""

from __future__ import annotations

import math
import pickle
import random
import statistics
import timeit
from typing import Any

import click
from river import anomaly

from detector.core.scoring import TreesModel, load_spec
from detector.core.trees import HalfSpaceTrees


def _events(n: int, seed: int) -> list[dict[str, float]]:
    rng = random.Random(seed)
    scale = load_spec("hst").params["scale"]
    return [
        {
            f: 0.0 if rng.random() < 0.6 else 1.0 - math.exp(-rng.expovariate(0.7) / scale)
            for f in TreesModel.inputs
        }
        for _ in range(n)
    ]


@click.command()
@click.option("--events", default=20_000, show_default=True)
@click.option("--rounds", default=5, show_default=True)
def main(events: int, rounds: int) -> None:
    params = load_spec("hst").params
    kw = {k: params[k] for k in ("n_trees", "height", "window_size", "seed")}
    feats = TreesModel.inputs
    points = _events(events, 1)
    vectors = [[x[f] for f in feats] for x in points]
    river = anomaly.HalfSpaceTrees(limits=dict.fromkeys(feats, (0.0, 1.0)), **kw)
    arrays = HalfSpaceTrees(feats, **kw)

    def run_river() -> None:
        for x in points:
            river.score_one(x)
            river.learn_one(x)

    def run_arrays() -> None:
        for v in vectors:
            arrays.score_one(v)
            arrays.learn_one(v)

    times: dict[str, list[float]] = {"river": [], "arrays": []}
    for _ in range(rounds):  # interleaved: both see the same machine load
        times["river"].append(timeit.timeit(run_river, number=1) / events * 1e6)
        times["arrays"].append(timeit.timeit(run_arrays, number=1) / events * 1e6)
    for name, ts in times.items():
        click.echo(f"{name:7s} score+learn: median {statistics.median(ts):6.1f} µs/event "
                   f"(min {min(ts):.1f}, max {max(ts):.1f})")  # fmt: skip
    ratios = [r / a for r, a in zip(times["river"], times["arrays"], strict=True)]
    click.echo(f"river/arrays: median {statistics.median(ratios):.2f} per paired round")
    models: dict[str, Any] = {"river": river, "arrays": arrays}
    for name, model in models.items():
        blob = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        dump = timeit.timeit(lambda m=model: pickle.dumps(m, pickle.HIGHEST_PROTOCOL), number=5)
        load = timeit.timeit(lambda b=blob: pickle.loads(b), number=5)  # noqa: S301 - own blob
        click.echo(f"{name:7s} pickle: {len(blob) / 1e6:.3f} MB, "
                   f"dumps {dump / 5 * 1e3:.2f} ms, loads {load / 5 * 1e3:.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
