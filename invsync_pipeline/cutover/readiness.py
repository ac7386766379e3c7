"""The go-live gate: event-driven accuracy at or above the bar for N consecutive days, and its trend chart."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from html import escape

import duckdb
import pandas as pd

from invsync_pipeline.settings import Settings


@dataclass(frozen=True)
class Readiness:
    passed: bool
    streak: int  # consecutive days at the gate, ending with the latest compared day
    needed: int
    min_accuracy: float
    trend: pd.DataFrame  # day, scope, material_locations, accuracy, batch_accuracy, at_gate

    @property
    def latest(self) -> pd.Series | None:
        return self.trend.iloc[-1] if len(self.trend) else None

    def summary(self) -> str:
        if not len(self.trend):
            return "no day compared yet: materialize cutover_comparison for the shadow period"
        last = self.latest
        verdict = "ready to go live" if self.passed else "not ready"
        return (
            f"{verdict}: {self.streak} consecutive day(s) at >= {100 * self.min_accuracy:.2f}% "
            f"({self.needed} needed) "
            f"(latest {last['day']}: {100 * last['accuracy']:.2f}% of {last['material_locations']} "
            f"material-locations in scope {last['scope']})"
        )


def readiness(conn: duckdb.DuckDBPyConnection, settings: Settings) -> Readiness:
    """The gate as the compared days stand (cutover.daily_accuracy, slice in_scope)."""
    gate = settings.cutover.gate
    trend = conn.execute(
        "SELECT day, scope, material_locations, event_accuracy AS accuracy, batch_accuracy "
        "FROM cutover.daily_accuracy WHERE slice = 'in_scope' ORDER BY day"
    ).df()
    trend["at_gate"] = trend["accuracy"].fillna(0) >= gate.min_accuracy
    streak, previous = 0, None
    for day, at_gate in zip(trend["day"][::-1], trend["at_gate"][::-1], strict=True):
        # A day never compared breaks the run as surely as a bad one.
        if not at_gate or (previous is not None and previous - day != timedelta(days=1)):
            break
        streak, previous = streak + 1, day
    trend["day"] = trend["day"].astype(str)
    return Readiness(streak >= gate.consecutive_days, streak, gate.consecutive_days, gate.min_accuracy, trend)


def trend_svg(result: Readiness, width: int = 720, height: int = 260) -> str:
    """A small line chart of daily accuracy (event-driven and batch) with the gate line; plain SVG."""
    trend = result.trend
    left, right, top, bottom = 44, 44, 44, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    low = min([result.min_accuracy - 0.01, *trend["accuracy"].dropna(), *trend["batch_accuracy"].dropna()], default=0)
    low = max(0.0, min(low, 0.98))

    def x(i: int) -> float:
        return left + (plot_w * i / max(len(trend) - 1, 1))

    def y(value: float) -> float:
        return top + plot_h * (1 - (value - low) / (1 - low))

    def line(column: str, colour: str) -> str:
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(trend[column]) if pd.notna(v))
        return f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>' if points else ""

    verdict, _, detail = result.summary().partition(": ")
    gate_y = y(result.min_accuracy)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(verdict)}</text>',
        f'<text x="{left}" y="32">{escape(detail)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>',
        f'<line x1="{left}" x2="{left + plot_w}" y1="{gate_y:.1f}" y2="{gate_y:.1f}" '
        'stroke="#c00" stroke-dasharray="4 3"/>',
        f'<text x="{left + plot_w + 4}" y="{gate_y + 4:.1f}" fill="#c00">gate</text>',
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">100%</text>',
        f'<text x="{left - 4}" y="{top + plot_h + 4}" text-anchor="end">{100 * low:.0f}%</text>',
        line("batch_accuracy", "#999"),
        line("accuracy", "#1565c0"),
    ]
    for i, day in enumerate(trend["day"]):
        if i in (0, len(trend) - 1) or i % 7 == 0:
            parts.append(f'<text x="{x(i):.1f}" y="{height - 18}" text-anchor="middle">{escape(str(day))}</text>')
    parts.append(f'<text x="{left}" y="{height - 4}" fill="#1565c0">event-driven</text>')
    parts.append(f'<text x="{left + 90}" y="{height - 4}" fill="#999">batch sync</text>')
    parts.append("</svg>")
    return "\n".join(p for p in parts if p)
