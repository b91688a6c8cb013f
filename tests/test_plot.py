"""`detector plot`: a producer's timeline, scored as `detector score` scores, drawn as a PNG
or a self-contained HTML page."""

from __future__ import annotations

import math
import os
import random
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pytest

from detector.core.checkpoint import Signer
from detector.core.errors import ConfigError, install_hint
from detector.core.events import Decoder
from detector.core.features.surprise import signed_log, unlog
from detector.offline import Scoring, read_records, score_file
from detector.plot import html_page, write_png
from detector.timeline import BAND_SD, Timeline, trace
from tests.helpers import START_MS, order_events

SVG = "{http://www.w3.org/2000/svg}"
KEY = b"k" * 64
CREATED, REFUNDED = "amount [order.created]", "amount [order.refunded]"


def shop_file(tmp_path: Path) -> Path:
    """svc-0 sends two event types whose amounts differ a hundredfold (kept apart: the
    moments are per type), then a burst of never-seen currencies, then, past the cooldown, an amount
    far outside its band; svc-1 is ordinary traffic."""
    rng = random.Random(3)
    events = order_events(producers=2, per_producer=400, seed=4)
    events = [e for e in events if e["producer"] == "svc-1"]
    t = START_MS
    for i in range(600):
        t += 1000 + rng.randrange(500)
        refund = i % 3 == 2
        data = {
            "amount": round(rng.lognormvariate(7.6 if refund else 3.0, 0.3), 2),
            "currency": rng.choice(["EUR", "USD"]),
            "order_id": f"o{i}",
        }
        events.append(_event("svc-0", t, "order.refunded" if refund else "order.created", data))
    for k, currency in enumerate(("XMR", "BTC", "DOGE")):  # a burst of novelties: they multiply
        data = {"amount": 21.0, "currency": currency, "order_id": f"n{k}"}
        events.append(_event("svc-0", t + 1000 * (k + 1), "order.created", data))
    data = {"amount": 1e6, "currency": "EUR", "order_id": "x"}
    events.append(_event("svc-0", t + 400_000, "order.created", data))
    events.sort(key=lambda e: int(e["ts"]))
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path


def _event(producer: str, ts: int, etype: str, data: dict[str, object]) -> dict[str, str]:
    return {"producer": producer, "ts": str(ts), "type": etype, "data": orjson.dumps(data).decode()}


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Timeline]:
    path = shop_file(tmp_path_factory.mktemp("plot"))
    return path, trace(path, Scoring(), "svc-0")


def test_the_scores_are_those_of_detector_score(
    shop: tuple[Path, Timeline], tmp_path: Path
) -> None:
    path, timeline = shop
    out = tmp_path / "scores.csv"
    score_file(path, out, Scoring())
    rows = [r.split(",") for r in out.read_text().splitlines()[1:]]
    theirs = [(int(r[1]), r[2], r[3] == "1") for r in rows if r[0] == "svc-0"]
    ours = [(p.time_ms, "" if p.score is None else repr(p.score), p.alert is not None)
            for p in timeline.points]  # fmt: skip
    assert ours == theirs
    assert sum(alert for *_, alert in ours) == 2


def test_each_band_is_the_moments_of_its_event_type_before_the_event(
    shop: tuple[Path, Timeline],
) -> None:
    path, timeline = shop
    # The same state, rebuilt by hand: the moments of (type, field) before the k-th event.
    pipeline = Scoring().pipeline()
    decoder = Decoder()
    events = [decoder.decode("events", f"0-{n}", fields)
              for n, (_, fields) in enumerate(read_records(path))]  # fmt: skip
    mine = [n for n, e in enumerate(events) if e.producer == "svc-0"]
    checked = {CREATED: 0, REFUNDED: 0}
    done = 0
    for k, point in zip(mine, timeline.points, strict=True):
        pipeline.process(events[done:k])
        done = k
        event = events[k]
        name = f"amount [{event.type}]"
        x, band = point.values[name]
        assert x == event.numbers["amount"]
        tracked = pipeline.store.slot_of("svc-0") is not None
        moments = pipeline.view("svc-0").numeric.get(f"{event.type}\x1famount") if tracked else None
        if moments is None or moments.count < 50:  # not judged yet: no band
            assert band is None
            continue
        sd = max(math.sqrt(max(moments.var, 0.0)), 0.05)
        assert band is not None
        assert band.mean == pytest.approx(unlog(moments.mean), rel=1e-12)
        assert band.low == pytest.approx(unlog(moments.mean - BAND_SD * sd), rel=1e-12)
        assert band.high == pytest.approx(unlog(moments.mean + BAND_SD * sd), rel=1e-12)
        checked[name] += 1
    assert checked[CREATED] > 300 and checked[REFUNDED] > 100
    last = {name: next(p.values[name][1] for p in reversed(timeline.points) if name in p.values)
            for name in (CREATED, REFUNDED)}  # fmt: skip
    assert last[CREATED] is not None and last[REFUNDED] is not None
    assert last[CREATED].high < 100 < 500 < last[REFUNDED].low  # kept apart by type
    outlier = timeline.points[-1]
    value, band = outlier.values[CREATED]
    assert band is not None and value > band.high
    assert signed_log(band.high) < signed_log(value)


def test_novelties_and_alerts_are_kept_with_their_reasons(shop: tuple[Path, Timeline]) -> None:
    _, timeline = shop
    news = [n for p in timeline.points for n in p.novelties if n.new and n.surprise > 0]
    # An id field is judged until it shows id-like cardinality: its first ids are new too.
    assert {n.what.partition("=")[0] for n in news} == {"order_id", "currency"}
    novel = [n for n in news if n.what.startswith("currency=")]
    assert [(n.feature, n.what) for n in novel] == [
        ("category", f"currency={c}") for c in ("XMR", "BTC", "DOGE")
    ]
    assert [n.surprise for n in novel] == sorted(n.surprise for n in novel)  # a burst
    assert [a.reasons[0].feature for a in timeline.alerts] == ["category", "value"]
    assert timeline.points[-1].alert is timeline.alerts[-1]
    thresholds = [p.threshold for p in timeline.points if p.score is not None]
    assert all(0.99999 <= t < 1 for t in thresholds)  # the spec's, raised per producer


def test_the_html_page_holds_every_element_and_nothing_from_elsewhere(
    shop: tuple[Path, Timeline],
) -> None:
    _, timeline = shop
    page = html_page(timeline)
    assert (
        re.search(r"<script|<link|@import|url\(|https?://(?!www\.w3\.org/2000/svg)", page) is None
    )
    svg = ET.fromstring(  # noqa: S314 (our own page)
        page[page.index("<svg") : page.index("</svg>") + len("</svg>")]
    )
    groups = svg.findall(f"{SVG}g[@class='series']")
    assert [g.get("data-series") for g in groups] == timeline.series == [CREATED, REFUNDED]
    for g in groups:
        assert g.find(f"{SVG}path[@class='band']") is not None
        values = g.find(f"{SVG}path[@class='values']")
        assert values is not None and values.get("d", "").count("h0") > 150
    threshold = svg.findall(f".//{SVG}polyline[@class='threshold']")
    assert len(threshold) == 1 and len(threshold[0].get("points", "").split()) > 100
    alerts = svg.findall(f"{SVG}g[@class='alert']")
    assert [a.get("data-alert-id") for a in alerts] == [a.alert_id for a in timeline.alerts]
    titles = [a.findtext(f"{SVG}title") or "" for a in alerts]
    assert "category(currency) DOGE vs" in titles[0] and "value(amount) 1e+06 vs" in titles[1]
    assert all(a.find(f"{SVG}line") is not None for a in alerts)
    listed = re.findall(r'<li class="alert-reason"[^>]*>([^<]*)</li>', page)
    assert len(listed) == 2 and "value(amount) 1e+06 vs" in listed[1]
    novel = svg.findall(f".//{SVG}circle[@class='novelty new']")
    said = [c.findtext(f"{SVG}title") or "" for c in novel]
    judged = [p for p in timeline.points if any(n.new and n.surprise > 0 for n in p.novelties)]
    assert len(said) == len(judged) >= 3
    assert "new category currency=XMR (surprise 4.6)" in said[-3]
    flagged = svg.findall(f".//{SVG}circle[@class='flagged']")
    assert len(flagged) >= 2


def test_the_png_renders(shop: tuple[Path, Timeline], tmp_path: Path) -> None:
    from PIL import Image

    _, timeline = shop
    out = tmp_path / "svc-0.png"
    write_png(timeline, out)
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.width >= 800 and image.height >= 600
        assert len(image.convert("RGB").getcolors(1 << 16) or []) > 8  # drawn, not blank


def test_a_png_without_matplotlib_says_how_to_install_it(
    shop: tuple[Path, Timeline], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match=re.escape(install_hint("plot"))):
        write_png(shop[1], tmp_path / "x.png")


def test_the_command_draws_a_window_from_a_baseline(tmp_path: Path) -> None:
    path = shop_file(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    env["DETECTOR_CHECKPOINT_KEY"] = KEY.decode()
    lines = path.read_bytes().splitlines(keepends=True)
    history, live = tmp_path / "history.jsonl", tmp_path / "live.jsonl"
    history.write_bytes(b"".join(lines[:400]))
    live.write_bytes(b"".join(lines[400:]))
    base, page = tmp_path / "b.baseline", tmp_path / "p.html"
    start = int(orjson.loads(lines[700])["ts"])
    for args in (
        ["train", "--input", str(history), "--baseline", str(base)],
        ["plot", "--input", str(live), "--producer", "svc-0", "--output", str(page),
         "--baseline", str(base), "--from", str(start)],
    ):  # fmt: skip
        out = subprocess.run([sys.executable, "-m", "detector.cli", *args], env=env,
                             capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert out.returncode == 0, out.stderr
    # From the baseline, as `detector score --baseline` scores: no warm-up.
    scoring = Scoring(baseline=base, signer=Signer(KEY))
    drawn = trace(live, scoring, "svc-0", start)
    assert drawn.points[0].time_ms >= start and drawn.points[0].score is not None
    assert f"{len(drawn.points)} events" in page.read_text()
    csv = tmp_path / "s.csv"
    score_file(live, csv, scoring)
    rows = [r.split(",") for r in csv.read_text().splitlines()[1:]]
    assert [repr(p.score) for p in drawn.points] == [
        r[2] for r in rows if r[0] == "svc-0" and int(r[1]) >= start
    ]


def test_the_output_and_the_window_are_checked_before_anything_runs(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from detector.cli import cli

    args = ["plot", "--input", str(shop_file(tmp_path)), "--producer", "svc-0", "--output"]
    out = CliRunner().invoke(cli, [*args, "x.svg"])
    assert out.exit_code == 2 and "x.svg: give a .png or .html file" in out.output
    out = CliRunner().invoke(cli, [*args, "x.html", "--from", "yesterday"])
    assert out.exit_code == 2 and "'yesterday' is neither epoch ms nor ISO-8601" in out.output
