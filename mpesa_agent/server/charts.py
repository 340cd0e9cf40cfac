"""Bar charts as SVG markup, drawn on the server: the analytics page needs no chart library, no
script and nothing from a CDN. Colours come from the stylesheet (classes `bar-<series>`)."""
from __future__ import annotations

import math
from typing import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 40, 8, 18, 34  # room for the axis labels
MAX_LABELS = 8  # axis labels at most, so that they stay apart on a phone
MAX_BAR = 48  # a bar's widest, when there are few buckets


def stacked_bars(buckets: Sequence[dict], key: str, series: Sequence[tuple[str, str]], title: str,
                 label=str) -> Markup:
    """One bar per bucket, stacked by `series` ((field, words) pairs); `key` names each bucket,
    shown through `label`. Each segment carries a <title> so the numbers can be read, not only seen."""
    totals = [sum(bucket.get(field, 0) or 0 for field, _ in series) for bucket in buckets]
    top = nice_ceiling(max(totals, default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(1, len(buckets))
    bar = min(MAX_BAR, max(1.0, slot * 0.75))
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for tick in (0, top / 2, top):
        y = TOP + plot_h - plot_h * tick / top
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#dde2e7"/>'
                     f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_number(tick)}</text>')
    every = max(1, math.ceil(len(buckets) / MAX_LABELS))
    for index, bucket in enumerate(buckets):
        x = LEFT + index * slot + (slot - bar) / 2
        y = TOP + plot_h
        name = escape(label(bucket[key]))
        for field, words in series:
            value = bucket.get(field, 0) or 0
            if not value:
                continue
            height = plot_h * value / top
            y -= height
            parts.append(f'<rect class="bar-{field}" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{height:.1f}">'
                         f'<title>{name}: {value} {escape(words)}</title></rect>')
        if index % every == 0:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{name}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def nice_ceiling(value: float) -> float:
    """The axis top: 1, 2, 5 or 10 times a power of ten, at least `value` (and at least 1)."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


def _number(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"
