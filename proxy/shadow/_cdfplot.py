"""The latency plot of a comparison report: both sides' CDFs as inline SVG.

A CDF shows the whole distribution of a route's paired answer times (both
sides answered the same requests) and where the sides part; it is drawn up to
the slower side's 99th percentile, so one outlier does not squash the rest.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = ["cdf_svg"]

_W, _H, _LEFT, _BOTTOM, _PAD = 560, 220, 56, 36, 12
# Points drawn per curve at most, whatever the number of requests.
_POINTS: Final = 200


def cdf_svg(legacy: Sequence[float], new: Sequence[float]) -> str:
    """Both sides' latency CDFs as inline SVG, up to the slower side's p99."""
    if not legacy and not new:
        return "<p>no compared requests</p>"
    top = max(_quantile(legacy, 0.99), _quantile(new, 0.99)) * 1.1 or 0.001
    width, height = _W - _LEFT - _PAD, _H - _BOTTOM - _PAD

    def xy(seconds: float, share: float) -> str:
        return f"{_LEFT + min(seconds / top, 1.0) * width:.1f},{_PAD + (1 - share) * height:.1f}"

    curves = [
        f'<polyline class="{name}" fill="none" stroke-width="2" '
        f'points="{" ".join(xy(s, q) for s, q in _steps(values))}"/>'
        for name, values in (("legacy", legacy), ("new", new))
        if values
    ]
    # Bottom right: a CDF rises early, so that corner is the emptiest.
    legend = "".join(
        f'<line class="{name}" x1="{_W - 130}" y1="{y}" x2="{_W - 110}" y2="{y}" stroke-width="2"/>'
        f'<text x="{_W - 104}" y="{y + 4}">{name} ({len(values)})</text>'
        for name, values, y in (("legacy", legacy, height - 24), ("new", new, height - 8))
    )
    label = (
        f'<text x="{_LEFT + width / 2:.1f}" y="{_H - 4}" text-anchor="middle">'
        "latency, ms (share of requests at or below)</text>"
    )
    return (
        f'<svg width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" role="img" '
        f'aria-label="latency distribution of legacy and new">'
        f"{_grid(top, width, height)}{''.join(curves)}{legend}{label}</svg>"
    )


def _grid(top: float, width: int, height: int) -> str:
    """Axes, grid lines and tick labels: milliseconds across, the share of requests up."""
    lines = []
    for k in range(5):
        x = _LEFT + k * width / 4
        lines.append(
            f'<line class="grid" x1="{x:.1f}" y1="{_PAD}" x2="{x:.1f}" y2="{_PAD + height}"/>'
            f'<text x="{x:.1f}" y="{_PAD + height + 14}" text-anchor="middle">'
            f"{top * k / 4 * 1000:.1f}</text>"
        )
    for share in (0.0, 0.5, 0.9, 1.0):
        y = _PAD + (1 - share) * height
        lines.append(
            f'<line class="grid" x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + width}" y2="{y:.1f}"/>'
            f'<text x="{_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{share:.0%}</text>'
        )
    return "".join(lines)


def _steps(values: Sequence[float]) -> Iterator[tuple[float, float]]:
    """At most _POINTS points of the empirical CDF of `values`, as (seconds, share) steps."""
    ordered = sorted(values)
    n = len(ordered)
    stride = max(n // _POINTS, 1)
    yield ordered[0], 0.0
    for index in [*range(0, n, stride), n - 1]:
        yield ordered[index], (index + 1) / n


def _quantile(values: Sequence[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(math.ceil(share * len(ordered)) - 1, 0)]
