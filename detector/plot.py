"""Plot: a producer's :class:`~detector.timeline.Timeline` as a PNG or a self-contained HTML
page (``detector plot``).

Panels share the event-time axis (UTC): one per numeric series (its values, and the expected
band with its mean), the novelties, then the calibrated score with the alert threshold.
Values are drawn on the detector's own scale, ``sign(x)·log1p(|x|)`` (where the bands are
symmetric), and scores as their rarity, ``-log10(1 - score)``: 5 is "rarer than 1 in 10^5"
(0.99999), which a linear axis would squeeze against 1. Alerts are numbered lines across every
panel, their reasons listed below.

The PNG needs matplotlib (the ``plot`` extra); the HTML page is inline SVG with no script,
stylesheet or font from elsewhere: it opens offline, and hovering a mark shows its details.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from html import escape
from io import BytesIO
from pathlib import Path
from typing import Any

from detector.core.alerts import Alert
from detector.core.errors import ConfigError, install_hint
from detector.timeline import Point, Timeline

MAX_RARITY = 16.0  # a score of 1.0: float64 cannot tell 1 - score below ~1e-16
MAX_SERIES = 12  # the busiest series; a producer's fields are capped at 64
MAX_LABELS = 6  # novelties named on the PNG (the HTML names each on hover)
LABEL_CHARS = 110
COLORS = {
    "value": "#1f5fa8",
    "band": "#9ec5ec",
    "score": "#444444",
    "alert": "#c62828",
    "threshold": "#e65100",
    "novel": "#ef6c00",
    "seen": "#8e8e8e",
}


def write_plot(timeline: Timeline, path: Path) -> None:
    """``path`` as PNG or HTML, from its suffix."""
    if path.suffix.lower() == ".html":
        path.write_text(html_page(timeline), encoding="utf-8")
    else:
        write_png(timeline, path)


def rarity(score: float) -> float:
    """A calibrated score as ``-log10(1 - score)``.

    >>> rarity(0.999), rarity(1.0)
    (3.0, 16.0)
    """
    return min(-math.log10(max(1.0 - score, 10**-MAX_RARITY)), MAX_RARITY)


def slog(x: float) -> float:
    return math.copysign(math.log1p(abs(x)), x)


def shown_series(timeline: Timeline) -> list[str]:
    """The series drawn: the :data:`MAX_SERIES` with the most events, in first-seen order."""
    counts: dict[str, int] = {}
    for p in timeline.points:
        for name in p.values:
            counts[name] = counts.get(name, 0) + 1
    top = set(sorted(counts, key=lambda n: -counts[n])[:MAX_SERIES])
    return [name for name in timeline.series if name in top]


def novelty_kind(point: Point) -> str | None:
    """How a point's novelties are marked: ``new`` (something never seen, judged surprising),
    ``young`` (never seen, in a field not judged yet), ``rare`` (seen, but rare), or None."""
    if not point.novelties:
        return None
    if any(n.new and n.surprise > 0 for n in point.novelties):
        return "new"
    return "young" if any(n.new for n in point.novelties) else "rare"


def alert_label(alert: Alert) -> str:
    """An alert's time, kind and reasons, in one line."""
    when = datetime.fromtimestamp(alert.event_time / 1000, tz=UTC).strftime("%H:%M:%S")
    why = alert.why if len(alert.why) <= LABEL_CHARS else alert.why[: LABEL_CHARS - 1] + "…"
    kind = "" if alert.kind == "anomaly" else f"{alert.kind}: "
    return f"{when} {kind}{why}"


def _title(timeline: Timeline) -> str:
    first, last = timeline.points[0].time_ms, timeline.points[-1].time_ms
    span = " to ".join(
        datetime.fromtimestamp(t / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M") for t in (first, last)
    )
    return (
        f"{timeline.producer} · model {timeline.model} · {span} UTC · "
        f"{len(timeline.points)} events, {len(timeline.alerts)} alerts, "
        f"{timeline.novelties} with something never seen"
    )


# -- PNG (matplotlib) ---------------------------------------------------------------------


def write_png(timeline: Timeline, path: Path) -> None:
    """Draw with matplotlib (off screen).

    Raises:
        ConfigError: matplotlib is not installed (with the install hint).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
    except ImportError:
        msg = f"a PNG plot needs matplotlib: {install_hint('plot')}; or write a .html file"
        raise ConfigError(msg) from None
    series = shown_series(timeline)
    heights = [2.0] * len(series) + [0.6, 2.4]
    fig, axes = plt.subplots(
        len(heights),
        1,
        sharex=True,
        figsize=(11, sum(heights) + 1.6 + 0.2 * len(timeline.alerts)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    axes = axes[:, 0]
    when = [_utc(p.time_ms) for p in timeline.points]
    for ax, name in zip(axes, series, strict=False):
        _png_series(ax, timeline, name)
    _png_novelties(axes[-2], timeline, when)
    _png_scores(axes[-1], timeline, when)
    for n, alert in enumerate(timeline.alerts, 1):
        for ax in axes:
            ax.axvline(_utc(alert.event_time), color=COLORS["alert"], lw=0.8, ls="--", alpha=0.7)
        axes[0].annotate(
            str(n),
            (_utc(alert.event_time), 1.0),
            xycoords=("data", "axes fraction"),
            color=COLORS["alert"],
            fontsize=8,
            ha="center",
            va="bottom",
        )
    axes[-1].xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=UTC))  # type: ignore[no-untyped-call]
    axes[-1].set_xlabel("event time (UTC)")
    fig.suptitle(_title(timeline), fontsize=9)
    notes = [f"{n}. {alert_label(a)}" for n, a in enumerate(timeline.alerts, 1)]
    if notes:
        fig.text(0.01, 0.005, "\n".join(notes), fontsize=7, va="bottom", family="monospace")
    bottom = (0.35 + 0.2 * len(notes)) / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom, 1, 0.97))
    out = BytesIO()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    # A chart has few colours: 256 of them keep it sharp at a third of the bytes.
    from PIL import Image  # matplotlib's own dependency

    with Image.open(out) as image:
        image.convert("RGB").quantize(256).save(path, optimize=True)


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _png_series(ax: Any, timeline: Timeline, name: str) -> None:
    pts = [(p.time_ms, *p.values[name]) for p in timeline.points if name in p.values]
    banded = [(_utc(t), b) for t, _, b in pts if b is not None]
    if banded:
        xs = [t for t, _ in banded]
        ax.fill_between(
            xs,
            [b.low for _, b in banded],
            [b.high for _, b in banded],
            step="post",
            color=COLORS["band"],
            alpha=0.6,
            lw=0,
            label="expected (mean ± 3 sd)",
        )
        ax.step(xs, [b.mean for _, b in banded], where="post", color=COLORS["band"], lw=0.8)
    ax.plot(
        [_utc(t) for t, _, _ in pts],
        [x for _, x, _ in pts],
        ".",
        ms=2,
        color=COLORS["value"],
        label="value",
    )
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylabel(name, fontsize=7)
    ax.tick_params(labelsize=7)
    ax.legend(loc="upper left", fontsize=6, frameon=False)


def _png_novelties(ax: Any, timeline: Timeline, when: list[datetime]) -> None:
    marks: dict[str, list[datetime]] = {"new": [], "young": [], "rare": []}
    labelled: set[str] = set()
    for t, p in zip(when, timeline.points, strict=True):
        kind = novelty_kind(p)
        if kind is None:
            continue
        marks[kind].append(t)
        first = next((n for n in p.novelties if n.new and n.surprise > 0), None)
        if first is not None and first.what not in labelled and len(labelled) < MAX_LABELS:
            labelled.add(first.what)
            ax.annotate(
                first.what,
                (t, 1),
                xytext=(3, 3),
                textcoords="offset points",
                fontsize=6,
                color=COLORS["novel"],
            )
    looks = {  # kind: row, marker, style, label
        "new": (1, "D", {"color": COLORS["novel"]}, "never seen (judged surprising)"),
        "young": (1, "o", {"mfc": "none", "color": COLORS["novel"]}, "never seen (not judged yet)"),
        "rare": (0, "|", {"color": COLORS["seen"]}, "rare type / value / shape"),
    }
    for kind, (row, marker, style, label) in looks.items():
        ax.plot(marks[kind], [row] * len(marks[kind]), marker, ms=4, label=label, **style)
    ax.set_ylim(-0.6, 1.9)
    ax.set_yticks([0, 1], ["rare", "new"], fontsize=6)
    ax.set_ylabel("novelty", fontsize=7)
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 0.97), fontsize=6, frameon=False, ncol=3)


def _png_scores(ax: Any, timeline: Timeline, when: list[datetime]) -> None:
    scored = [
        (t, rarity(p.score), p.flagged)
        for t, p in zip(when, timeline.points, strict=True)
        if p.score is not None
    ]
    ax.plot(
        [t for t, _, _ in scored],
        [r for _, r, _ in scored],
        ".",
        ms=2,
        color=COLORS["score"],
        label="calibrated score",
    )
    ax.step(
        when,
        [rarity(p.threshold) for p in timeline.points],
        where="post",
        color=COLORS["threshold"],
        lw=1,
        label="threshold",
    )
    hot = [(t, r) for t, r, f in scored if f]
    ax.plot(
        [t for t, _ in hot], [r for _, r in hot], "o", ms=4, color=COLORS["alert"], label="flagged"
    )
    ax.set_ylabel("rarity\n-log10(1 - score)", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.legend(loc="upper left", fontsize=6, frameon=False, ncol=3)


# -- HTML (inline SVG) --------------------------------------------------------------------

WIDTH, LEFT, RIGHT = 1100, 80, 20
SERIES_H, NOVEL_H, SCORE_H, GAP = 110, 36, 150, 26


class _Axis:
    """A linear map from data to pixels."""

    def __init__(self, lo: float, hi: float, a: float, b: float) -> None:
        if hi <= lo:
            lo, hi = lo - 1.0, hi + 1.0
        self.lo, self.hi, self.a, self.b = lo, hi, a, b

    def __call__(self, v: float) -> float:
        return round(self.a + (v - self.lo) / (self.hi - self.lo) * (self.b - self.a), 1)


def html_page(timeline: Timeline) -> str:
    """The whole page: a heading, the SVG, the alerts' reasons."""
    svg = _svg(timeline)
    items = "".join(
        f'<li class="alert-reason" data-alert-id="{escape(a.alert_id)}">'
        f"{escape(alert_label(a))} (score {a.score:.6f}, threshold {a.threshold:.6f})</li>"
        for a in timeline.alerts
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>detector plot: {escape(timeline.producer)}</title>"
        "<style>body{font:13px sans-serif;margin:16px}svg text{font:11px sans-serif}"
        "li{margin:2px 0}</style></head><body>"
        f'<h1 style="font-size:15px">{escape(_title(timeline))}</h1>{svg}'
        f'<ol class="alerts">{items}</ol></body></html>\n'
    )


def _svg(timeline: Timeline) -> str:
    points = timeline.points
    t0, t1 = points[0].time_ms, max(points[-1].time_ms, points[0].time_ms + 1)
    x = _Axis(t0, t1, LEFT, WIDTH - RIGHT)
    parts: list[str] = []
    top = 40.0
    for name in shown_series(timeline):
        parts.append(_svg_series(timeline, name, x, top))
        top += SERIES_H + GAP
    parts.append(_svg_novelties(timeline, x, top))
    top += NOVEL_H + GAP
    parts.append(_svg_scores(timeline, x, top))
    bottom = top + SCORE_H
    parts.append(_svg_time_axis(x, t0, t1, bottom))
    for n, a in enumerate(timeline.alerts, 1):
        ax = x(min(max(a.event_time, t0), t1))
        parts.append(
            f'<g class="alert" data-alert-id="{escape(a.alert_id)}"><title>'
            f"{escape(alert_label(a))}</title>"
            f'<line x1="{ax}" y1="20" x2="{ax}" y2="{bottom}" stroke="{COLORS["alert"]}" '
            f'stroke-dasharray="4 3"/><text x="{ax}" y="16" text-anchor="middle" '
            f'fill="{COLORS["alert"]}">{n}</text></g>'
        )
    height = bottom + 34
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}">' + "".join(parts) + "</svg>"
    )


def _frame(top: float, height: float, label: str) -> str:
    return (
        f'<rect x="{LEFT}" y="{top}" width="{WIDTH - LEFT - RIGHT}" height="{height}" '
        f'fill="none" stroke="#bbb"/><text x="{LEFT + 4}" y="{top - 4}">{escape(label)}</text>'
    )


def _dots(xy: list[tuple[float, float]]) -> str:
    """Points as one path of zero-length segments (round caps draw them), each pixel once."""
    return "".join(f"M{a} {b}h0" for a, b in dict.fromkeys(xy))


def _svg_series(timeline: Timeline, name: str, x: _Axis, top: float) -> str:
    pts = [(p.time_ms, *p.values[name]) for p in timeline.points if name in p.values]
    ys = [slog(v) for _, v, _ in pts]
    for _, _, b in pts:
        if b is not None:
            ys += [slog(b.low), slog(b.high)]
    y = _Axis(min(ys), max(ys), top + SERIES_H, top)
    out = [f'<g class="series" data-series="{escape(name)}">', _frame(top, SERIES_H, name)]
    out += _value_ticks(y, min(ys), max(ys))
    columns: dict[float, tuple[float, float, float]] = {}  # one band step per pixel column
    for t, _, b in pts:
        if b is not None:
            columns[round(x(t))] = (y(slog(b.low)), y(slog(b.mean)), y(slog(b.high)))
    if columns:
        cols = sorted(columns)
        upper = " ".join(f"{c} {columns[c][2]}" for c in cols)
        lower = " ".join(f"{c} {columns[c][0]}" for c in reversed(cols))
        mean = " ".join(f"{c} {columns[c][1]}" for c in cols)
        out.append(
            f'<path class="band" d="M{upper} L{lower}Z" fill="{COLORS["band"]}" '
            'fill-opacity="0.6"><title>expected: mean ± 3 sd</title></path>'
        )
        out.append(
            f'<polyline class="band-mean" points="{mean}" fill="none" stroke="{COLORS["band"]}"/>'
        )
    dots = _dots([(x(t), y(slog(v))) for t, v, _ in pts])
    out.append(
        f'<path class="values" d="{dots}" stroke="{COLORS["value"]}" stroke-width="2.5" '
        'stroke-linecap="round"/></g>'
    )
    return "".join(out)


def _value_ticks(y: _Axis, lo: float, hi: float) -> list[str]:
    """Ticks at 0 and ±10^k within the range, on the signed-log scale, 12 px apart at least."""
    out: list[str] = []
    taken: list[float] = []
    for v in [0.0, *(s * 10.0**k for k in range(16) for s in (1, -1))]:
        py = y(slog(v))
        if lo <= slog(v) <= hi and all(abs(py - q) >= 12 for q in taken):
            taken.append(py)
            out.append(
                f'<line x1="{LEFT - 4}" y1="{py}" x2="{LEFT}" y2="{py}" stroke="#888"/>'
                f'<text x="{LEFT - 6}" y="{py + 4}" text-anchor="end">{v:g}</text>'
            )
    return out


def _svg_novelties(timeline: Timeline, x: _Axis, top: float) -> str:
    out = [
        '<g class="novelties">',
        _frame(top, NOVEL_H, "novelties: never seen (orange), rare (grey); hover for details"),
    ]
    for p in timeline.points:
        kind = novelty_kind(p)
        if kind is None:
            continue
        if kind == "rare":
            cy, look = top + NOVEL_H * 0.75, f'r="2" fill="{COLORS["seen"]}"'
        else:
            fill = COLORS["novel"] if kind == "new" else "none"
            cy, look = top + NOVEL_H * 0.3, f'r="3.5" fill="{fill}" stroke="{COLORS["novel"]}"'
        when = datetime.fromtimestamp(p.time_ms / 1000, tz=UTC).strftime("%H:%M:%S")
        text = "; ".join(map(str, p.novelties))
        out.append(
            f'<circle class="novelty {kind}" cx="{x(p.time_ms)}" '
            f'cy="{cy}" {look}><title>{when} {escape(text)}</title></circle>'
        )
    out.append("</g>")
    return "".join(out)


def _svg_scores(timeline: Timeline, x: _Axis, top: float) -> str:
    points = timeline.points
    rare = [rarity(p.score) for p in points if p.score is not None]
    lines = [rarity(p.threshold) for p in points]
    hi = max([*rare, *lines, 1.0]) + 0.5
    y = _Axis(0.0, hi, top + SCORE_H, top)
    out = [
        '<g class="scores">',
        _frame(top, SCORE_H, "calibrated score as rarity: -log10(1 - score)"),
    ]
    for k in range(0, int(hi) + 1, max(1, int(hi) // 6)):
        out.append(f'<text x="{LEFT - 6}" y="{y(k) + 4}" text-anchor="end">{k}</text>')
    columns = {round(x(p.time_ms)): y(r) for p, r in zip(points, lines, strict=True)}
    steps = [f"{c} {columns[c]}" for c in sorted(columns)]
    out.append(
        f'<polyline class="threshold" points="{" ".join(steps)}" fill="none" '
        f'stroke="{COLORS["threshold"]}" stroke-width="1.5"><title>alert threshold'
        "</title></polyline>"
    )
    dots = _dots([(x(p.time_ms), y(rarity(p.score))) for p in points if p.score is not None])
    out.append(
        f'<path class="score" d="{dots}" stroke="{COLORS["score"]}" stroke-width="2.5" '
        'stroke-linecap="round"/>'
    )
    for p in points:
        if p.flagged and p.score is not None:
            out.append(
                f'<circle class="flagged" cx="{x(p.time_ms)}" cy="{y(rarity(p.score))}" '
                f'r="3.5" fill="{COLORS["alert"]}"><title>score {p.score:.8f}</title>'
                "</circle>"
            )
    out.append("</g>")
    return "".join(out)


def _svg_time_axis(x: _Axis, t0: int, t1: int, bottom: float) -> str:
    steps_min = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440)
    span_min = (t1 - t0) / 60_000
    step = next((s for s in steps_min if span_min / s <= 8), 1440) * 60_000
    out = []
    t = -(-t0 // step) * step
    while t <= t1:
        px = x(t)
        label = datetime.fromtimestamp(t / 1000, tz=UTC).strftime("%H:%M")
        out.append(
            f'<line x1="{px}" y1="{bottom}" x2="{px}" y2="{bottom + 4}" stroke="#888"/>'
            f'<text x="{px}" y="{bottom + 16}" text-anchor="middle">{label}</text>'
        )
        t += step
    out.append(
        f'<text x="{WIDTH - RIGHT}" y="{bottom + 30}" text-anchor="end">event time (UTC)</text>'
    )
    return "".join(out)
