"""Comparing the DuckDB and pandas outputs of bench/reconcile.py row by row."""

from __future__ import annotations

import json

import pandas as pd


def _q(value) -> float:
    return round(float(value), 6) + 0.0


def _t(value) -> str | None:
    return None if pd.isna(value) else pd.Timestamp(value).isoformat()


def summarize(variances: pd.DataFrame, investigation: pd.DataFrame, movements: pd.DataFrame) -> dict:
    """Everything the comparison looks at, in a form that is equal when the outputs are: the
    variance rows with their three numbers, every movement that explains a variance
    (recon.explained_movements) and every investigation row. `detail`'s distinct parts are
    compared sorted, whatever order each side joins them in."""
    var = variances[variances["is_variance"]]
    variance_rows = sorted(
        [m, loc, u, _q(a), _q(b), _q(c)]
        for m, loc, u, a, b, c in zip(
            var["material_number"], var["location"], var["unit"], var["erp_three_way"], var["mes_three_way"],
            var["cross_difference"], strict=True,
        )
    )  # fmt: skip
    investigation_rows = sorted(
        [m, loc, u, s, c, bool(t), _q(q), list(ids), sorted(str(d).split("; "))]
        for m, loc, u, s, c, t, q, ids, d in zip(
            investigation["material_number"], investigation["location"], investigation["unit"],
            investigation["system"], investigation["cause"], investigation["is_timing"],
            investigation["explained_quantity"], investigation["transaction_ids"], investigation["detail"], strict=True,
        )
    )  # fmt: skip
    movement_rows = sorted(
        [m, loc, u, s, c, tx, _q(q), _t(t), _t(since), str(d)]
        for m, loc, u, s, c, tx, q, t, since, d in zip(
            movements["material_number"], movements["location"], movements["unit"], movements["system"],
            movements["cause"], movements["transaction_id"], movements["quantity"], movements["event_time"],
            movements["in_flight_since"], movements["detail"], strict=True,
        )
    )  # fmt: skip
    causes: dict[str, int] = {}
    for row in investigation_rows:
        causes[f"{row[4]}/{row[3]}"] = causes.get(f"{row[4]}/{row[3]}", 0) + 1
    return {
        "material_locations": len(variances),
        "variances": len(var),
        "causes": dict(sorted(causes.items())),
        "variance_rows": variance_rows,
        "movement_rows": movement_rows,
        "investigation_rows": investigation_rows,
    }


def assert_same(duck: dict, pan: dict) -> None:
    assert duck["material_locations"] == pan["material_locations"], (
        duck["material_locations"],
        pan["material_locations"],
    )
    assert duck["variances"] == pan["variances"], (
        f"variance rows: DuckDB {duck['variances']}, pandas {pan['variances']}"
    )
    assert duck["causes"] == pan["causes"], f"causes: DuckDB {duck['causes']}, pandas {pan['causes']}"
    for name in ("variance_rows", "movement_rows", "investigation_rows"):
        if duck[name] != pan[name]:
            d, p = ({json.dumps(r) for r in rows[name]} for rows in (duck, pan))
            raise AssertionError(f"{name} differ; only DuckDB: {sorted(d - p)[:3]}; only pandas: {sorted(p - d)[:3]}")
