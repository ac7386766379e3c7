"""variance_report: the hour's variances with their causes, as a table, a CSV file and an HTML page."""

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from html import escape
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd

from invsync_pipeline.assets.hours import chunk_bounds, each_chunk, hourly_asset
from invsync_pipeline.assets.metadata import md_table
from invsync_pipeline.assets.variances import variance_investigation
from invsync_pipeline.partitions import hour_bounds
from invsync_pipeline.plant_scope import asset_key
from invsync_pipeline.resources import InvsyncResource, WarehouseResource
from invsync_pipeline.warehouse import sql

HISTORY_HOURS = 48
ITEM_COLUMNS = ("partition_hour", "warehouse", "material_type", "abc_class", "material_number", "location", "unit",
                "cause", "system", "is_timing", "erp_end", "mes_end", "erp_three_way", "mes_three_way",
                "cross_difference", "pct_difference", "unit_cost", "value_difference", "explained_quantity",
                "explained_value", "transaction_ids", "detail", "correction_id", "correction_status",
                "critical")  # fmt: skip


@dataclass(frozen=True)
class HourFigures:
    """What the report says about one hour, read back from the warehouse."""

    hour: datetime
    material_locations: int
    in_agreement: int
    variances: int
    value_at_stake: Decimal
    variances_without_cost: int
    by_plant: list[tuple]  # plant, material-locations, in agreement, variances, accuracy %, value
    by_material_type: list[tuple]  # the same per material type
    by_cause: list[tuple]  # cause, timing, items, transactions, explained value
    by_plant_and_cause: list[tuple]  # plant, cause, items
    items: list[dict]  # the rows of recon.variance_report, largest value first
    history: list[tuple]  # hour, material-locations, variances: the last HISTORY_HOURS hours

    @property
    def accuracy_pct(self) -> float:
        return 100.0 * self.in_agreement / self.material_locations if self.material_locations else 100.0


@hourly_asset(
    # auto_corrections by key: the report only reads recon.corrections after it, and a key keeps
    # this module from importing the corrections module.
    deps=[variance_investigation, asset_key("auto_corrections")],
    group_name="reconciliation",
    kinds={"duckdb", "html"},
    metadata={"dagster/table_name": "recon.variance_report"},
)
def variance_report(
    context: dg.AssetExecutionContext, invsync: InvsyncResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The hour's variances for people: each one with its causes, value and correction status.

    Writes `recon.variance_report` (one row per variance and cause) and, under
    INVSYNC_HOME/reports, `variances-<YYYY-MM-DDTHH>.csv` and a self-contained HTML page:
    headline figures (material-locations, in agreement, accuracy, variances, value at stake),
    tables by plant, material type and cause, the item list, and a chart of the last 48 hours.
    `reports/latest.html` is a copy of the newest hour's page. Re-running an hour rewrites the
    same table rows and files (a supervisor's review decisions since then do show)."""
    return each_chunk(context, lambda keys: _variance_report_hours(keys, invsync, warehouse))


def _variance_report_hours(
    partition_keys: Sequence[str], invsync: InvsyncResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The reports of the consecutive hours ``partition_keys`` (one, or a chunk): the table in
    one statement, then each hour's figures and files; metadata of the last hour, counts summed."""
    first, last = chunk_bounds(partition_keys)
    with warehouse.connect() as conn:
        conn.execute("BEGIN TRANSACTION")
        conn.execute("DELETE FROM recon.variance_report WHERE partition_hour BETWEEN ? AND ?", [first, last])
        conn.execute(
            f"INSERT INTO recon.variance_report {sql('reports/variance_report')}",
            {"first_hour": first, "last_hour": last},
        )
        conn.execute("COMMIT")
        figures = [read_hour_figures(conn, hour_bounds(key)[0]) for key in partition_keys]
    folder = invsync.settings().reports_dir
    per_hour = [_report_metadata(f, *_write_report_files(folder, f)) for f in figures]
    newest = max(folder.glob("variances-*.html"))  # names sort by hour; a backfill never replaces a newer page
    write_atomically(folder / "latest.html", newest.read_text())
    if len(per_hour) == 1:
        return per_hour[0]
    # A chunk: the last hour's tables and files, its hours' counts summed (as each_chunk sums chunks).
    metadata = dict(per_hour[-1].metadata or {})
    for name in SUMMED_METADATA:
        metadata[name] = sum((result.metadata or {})[name] for result in per_hour)
    return dg.MaterializeResult(metadata=metadata)


SUMMED_METADATA = ("dagster/row_count", "material_locations", "in_agreement", "variances", "value_at_stake",
                   "held_for_review")  # fmt: skip


def _write_report_files(folder: Path, figures: HourFigures) -> tuple[Path, Path]:
    stem = f"variances-{figures.hour:%Y-%m-%dT%H}"
    csv_path = write_atomically(folder / f"{stem}.csv", render_csv(figures.items))
    html_path = write_atomically(folder / f"{stem}.html", render_html(figures, csv_name=f"{stem}.csv"))
    return csv_path, html_path


def _report_metadata(figures: HourFigures, csv_path: Path, html_path: Path) -> dg.MaterializeResult:
    pivot = pd.DataFrame(figures.by_plant_and_cause, columns=["plant", "cause", "items"])
    if len(pivot):
        pivot = pivot.pivot(index="plant", columns="cause", values="items").fillna(0).astype(int).reset_index()
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(figures.items),
            "material_locations": figures.material_locations,
            "in_agreement": figures.in_agreement,
            "variances": figures.variances,
            "accuracy_pct": round(figures.accuracy_pct, 3),
            "value_at_stake": float(figures.value_at_stake),
            "held_for_review": sum(1 for i in figures.items if i["correction_status"] == "held_for_review"),
            "variances_by_plant_and_cause": dg.MetadataValue.md(md_table(pivot, limit=50)),
            "report_html": dg.MetadataValue.path(str(html_path)),
            "report_csv": dg.MetadataValue.path(str(csv_path)),
        }
    )


def _breakdown(conn: duckdb.DuckDBPyConnection, start: datetime, column: str) -> list[tuple]:
    # `column` is one of our own two expressions below; the hour is bound.
    return conn.execute(
        f"""SELECT {column} AS name, count(*), count(*) FILTER (WHERE NOT is_variance),
                   count(*) FILTER (WHERE is_variance),
                   round(100.0 * count(*) FILTER (WHERE NOT is_variance) / count(*), 2),
                   coalesce(sum(value_difference) FILTER (WHERE is_variance), 0)
            FROM recon.variances WHERE partition_hour = ? GROUP BY name ORDER BY name""",
        [start],
    ).fetchall()


def read_hour_figures(conn: duckdb.DuckDBPyConnection, start: datetime) -> HourFigures:
    """The report's figures for the hour starting at `start`, from recon.variances and recon.variance_report."""
    locations, agreeing, variances, value, without_cost = conn.execute(
        """SELECT count(*), count(*) FILTER (WHERE NOT is_variance), count(*) FILTER (WHERE is_variance),
                  coalesce(sum(value_difference) FILTER (WHERE is_variance), 0),
                  count(*) FILTER (WHERE is_variance AND value_difference IS NULL)
           FROM recon.variances WHERE partition_hour = ?""",
        [start],
    ).fetchone()
    item = "[material_number, location, unit]"  # a variance with two causes is one item
    by_cause = conn.execute(
        f"""SELECT cause, bool_or(is_timing), count(DISTINCT {item}) AS items, sum(len(transaction_ids)),
                   sum(explained_value)
            FROM recon.variance_report WHERE partition_hour = ? GROUP BY cause ORDER BY items DESC, cause""",
        [start],
    ).fetchall()
    by_plant_and_cause = conn.execute(
        f"""SELECT warehouse, cause, count(DISTINCT {item}) FROM recon.variance_report
            WHERE partition_hour = ? GROUP BY ALL ORDER BY ALL""",
        [start],
    ).fetchall()
    cursor = conn.execute(
        f"""SELECT {", ".join(ITEM_COLUMNS)} FROM recon.variance_report WHERE partition_hour = ?
            ORDER BY value_difference DESC NULLS LAST, abs(cross_difference) DESC, warehouse, material_number,
                     location, unit, cause, system""",
        [start],
    )
    items = [dict(zip(ITEM_COLUMNS, row, strict=True)) for row in cursor.fetchall()]
    history = conn.execute(
        """SELECT partition_hour, count(*), count(*) FILTER (WHERE is_variance) FROM recon.variances
           WHERE partition_hour > ? AND partition_hour <= ? GROUP BY partition_hour ORDER BY partition_hour""",
        [start - timedelta(hours=HISTORY_HOURS), start],
    ).fetchall()
    return HourFigures(
        hour=start, material_locations=locations, in_agreement=agreeing, variances=variances, value_at_stake=value,
        variances_without_cost=without_cost, by_plant=_breakdown(conn, start, "warehouse"),
        by_material_type=_breakdown(conn, start, "coalesce(material_type, '(unknown)')"), by_cause=by_cause,
        by_plant_and_cause=by_plant_and_cause, items=items, history=history,
    )  # fmt: skip


def write_atomically(path: Path, text: str) -> Path:
    """Write to a temporary file beside `path`, fsync, then rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _plain(value: object) -> str:
    """A CSV cell: exact decimals without trailing zeros, lists space-separated, booleans true/false."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        text = format(value, "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    if isinstance(value, list):
        return " ".join(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def render_csv(items: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(ITEM_COLUMNS)
    writer.writerows([_plain(item[c]) for c in ITEM_COLUMNS] for item in items)
    return out.getvalue()


def _num(value: object, places: int | None = None) -> str:
    """A number for people: thousands separated; `places` fixed, else as many as it has."""
    if value is None:
        return "–"
    if places is not None:
        return f"{Decimal(value):,.{places}f}"
    return f"{Decimal(value).normalize():,f}" if isinstance(value, Decimal) else f"{value:,}"


def _table(headers: list[str], rows: list[list[object]], numeric: set[int], empty: str) -> str:
    if not rows:
        return f'<p class="none">{escape(empty)}</p>'
    head = "".join(f"<th{' class=n' if i in numeric else ''}>{escape(h)}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{escape(str(v))}</td>' for i, v in enumerate(row))
        + "</tr>"
        for row in rows
    )  # fmt: skip
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _breakdown_table(rows: list[tuple], what: str) -> str:
    headers = [what, "material-locations", "in agreement", "variances", "accuracy %", "value at stake"]
    shown = [[name, _num(n), _num(ok), _num(v), _num(acc, 2), _num(val, 2)] for name, n, ok, v, acc, val in rows]
    return _table(headers, shown, {1, 2, 3, 4, 5}, "No material-locations were reconciled in this hour.")


def render_history_svg(history: list[tuple], hour: datetime) -> str:
    """Variances per hour (bars, left axis) and accuracy % (line, right axis) for the last HISTORY_HOURS hours."""
    width, height, left, right, top, bottom = 760, 240, 44, 48, 24, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    slot = plot_w / HISTORY_HOURS
    first = hour - timedelta(hours=HISTORY_HOURS - 1)
    by_hour = {h: (n, v) for h, n, v in history}
    top_count = max([v for _, v in by_hour.values()] + [1])
    accuracies = [100.0 * (n - v) / n for n, v in by_hour.values() if n]
    low = min(95, 5 * int(min(accuracies, default=100.0) // 5))  # the accuracy axis starts at a round number below

    def x(i: int) -> float:
        return left + i * slot

    def y_count(v: float) -> float:
        return top + plot_h * (1 - v / top_count)

    def y_acc(a: float) -> float:
        return top + plot_h * (1 - (a - low) / (100 - low))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'role="img" aria-labelledby="chart-title" font-family="sans-serif" font-size="11">',
        f'<title id="chart-title">Variances per hour and accuracy %, the {HISTORY_HOURS} hours to '
        f"{hour:%Y-%m-%d %H}:00 UTC</title>",
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" fill="#b45309">{top_count}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" fill="#b45309">0</text>',
        f'<text x="{left + plot_w + 6}" y="{top + 4}" fill="#1d4ed8">100 %</text>',
        f'<text x="{left + plot_w + 6}" y="{top + plot_h}" fill="#1d4ed8">{low} %</text>',
        f'<text x="{left}" y="{top - 8}" fill="#b45309">■ variances</text>',
        f'<text x="{left + 90}" y="{top - 8}" fill="#1d4ed8">● accuracy %</text>',
    ]
    line: list[str] = []
    segments = []
    for i in range(HISTORY_HOURS):
        at = first + timedelta(hours=i)
        if at.hour % 6 == 0:
            label = f"{at:%d %b}" if at.hour == 0 else f"{at:%H}h"
            parts.append(f'<text x="{x(i) + slot / 2:.1f}" y="{height - bottom + 16}" text-anchor="middle" '
                         f'fill="#444">{label}</text>')  # fmt: skip
        if at not in by_hour:
            if line:
                segments.append(line)
            line = []
            continue
        n, v = by_hour[at]
        acc = 100.0 * (n - v) / n if n else 100.0
        hint = f"<title>{at:%Y-%m-%d %H}:00 UTC: {v} of {n} material-locations differ, accuracy {acc:.2f} %</title>"
        fill = "#b45309" if at == hour else "#f59e0b"  # this hour's bar is darker
        bar_top = y_count(v)
        parts.append(f'<rect x="{x(i) + 1:.1f}" y="{bar_top:.1f}" width="{slot - 2:.1f}" '
                     f'height="{top + plot_h - bar_top:.1f}" fill="{fill}">{hint}</rect>')  # fmt: skip
        parts.append(f'<circle cx="{x(i) + slot / 2:.1f}" cy="{y_acc(acc):.1f}" r="2.5" fill="#1d4ed8">{hint}</circle>')
        line.append(f"{x(i) + slot / 2:.1f},{y_acc(acc):.1f}")
    segments.append(line)
    parts += [f'<polyline points="{" ".join(s)}" fill="none" stroke="#1d4ed8" stroke-width="1.5"/>'
              for s in segments if len(s) > 1]  # fmt: skip
    if not history:
        parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle" fill="#666">'
                     "no reconciled hours yet</text>")  # fmt: skip
    return "".join(parts) + "</svg>"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;color:#111}
body{margin:2rem auto;max-width:1200px;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.25rem}h2{font-size:1.15rem;margin-top:2rem}p.sub,p.none{color:#555}
.cards{display:flex;flex-wrap:wrap;gap:1rem;margin:1.5rem 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.75rem 1rem;min-width:9rem}
.card b{display:block;font-size:1.6rem}.card span{color:#555;font-size:.85rem}
table{border-collapse:collapse;font-size:.85rem;margin-top:.5rem}
th,td{border-bottom:1px solid #e5e5e5;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#fafafa}
"""


def render_html(figures: HourFigures, csv_name: str) -> str:
    """A self-contained page (inline CSS and SVG, no scripts) of the hour's report."""
    f = figures
    hour = f"{f.hour:%Y-%m-%d %H}:00–{f.hour + timedelta(hours=1):%H}:00 UTC"
    cards = [("material-locations", _num(f.material_locations)), ("in agreement", _num(f.in_agreement)),
             ("accuracy", f"{f.accuracy_pct:.2f} %"), ("variances", _num(f.variances)),
             ("value at stake", _num(f.value_at_stake, 2))]  # fmt: skip
    no_cost = (f" {f.variances_without_cost} variance(s) have no unit cost in the ERP and are not valued."
               if f.variances_without_cost else "")  # fmt: skip
    causes = [[c, "yes" if timing else "no", _num(n), _num(tx), _num(val, 2)] for c, timing, n, tx, val in f.by_cause]
    items = [
        [i["warehouse"], i["material_number"], i["material_type"] or "(unknown)", i["location"], i["unit"],
         i["cause"], i["system"] or "–", _num(i["erp_end"]), _num(i["mes_end"]), _num(i["cross_difference"]),
         _num(i["pct_difference"], 2), _num(i["value_difference"], 2), _num(i["explained_quantity"]),
         i["correction_status"] or ("none: timing" if i["is_timing"] else "–"),
         " ".join(i["transaction_ids"]), i["detail"] or ""]
        for i in f.items
    ]  # fmt: skip
    item_headers = ["plant", "material", "type", "location", "unit", "cause", "missing in", "ERP end", "MES end",
                    "ERP − MES", "%", "value", "explained", "correction", "transactions", "detail"]  # fmt: skip
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Inventory variances {escape(hour)}</title><style>{_CSS}</style></head>
<body>
<h1>Inventory variances, {escape(hour)}</h1>
<p class="sub">ERP against MES at the hour's end. A material-location is in agreement when both systems end the
hour with the same balance and, for each, beginning balance + the hour's movements − ending balance is zero.
Accuracy is the share in agreement. Value at stake is |ERP − MES| × the ERP unit cost.{escape(no_cost)}</p>
<div class="cards">{"".join(f"<div class=card><b>{v}</b><span>{escape(k)}</span></div>" for k, v in cards)}</div>
<h2>The last {HISTORY_HOURS} hours</h2>
{render_history_svg(f.history, f.hour)}
<h2>By plant</h2>
{_breakdown_table(f.by_plant, "plant")}
<h2>By material type</h2>
{_breakdown_table(f.by_material_type, "material type")}
<h2>By cause</h2>
<p class="sub">A variance can have more than one cause. Timing causes resolve by themselves and are never corrected.</p>
{_table(["cause", "timing", "variances", "transactions", "explained value"], causes, {2, 3, 4}, "No variances.")}
<h2>Variances</h2>
<p class="sub">Largest value first; one row per cause. Also as <a href="{escape(csv_name)}">CSV</a>.</p>
{_table(item_headers, items, {7, 8, 9, 10, 11, 12}, "Every material-location is in agreement.")}
</body></html>
"""
