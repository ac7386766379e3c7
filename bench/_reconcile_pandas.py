"""The pandas baseline of bench/reconcile.py: variances.sql and variance_investigation.sql as
merges and groupbys, by the same steps as the SQL."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _reconcile_compare import summarize
from _reconcile_data import HOUR

from invsync_pipeline.warehouse import open_warehouse

KEY = ["material_number", "location", "unit"]


def load_inputs(db: Path) -> dict[str, pd.DataFrame]:
    """The hour's input tables as DataFrames, only the columns the reconciliation reads."""
    queries = {
        "events": """SELECT transaction_id, event_time, source_system, target_system, material_number,
                            transaction_type, reason, quantity, unit, location, to_location, received_at
                     FROM staging.inventory_events WHERE partition_hour = $h""",
        "erp": "SELECT material_number, location, unit, begin_quantity, end_quantity "
        "FROM snapshots.erp_inventory WHERE partition_hour = $h",
        "mes": "SELECT material_number, location, unit, begin_quantity, end_quantity "
        "FROM snapshots.mes_inventory WHERE partition_hour = $h",
        "materials": "SELECT material_number, material_type, base_unit, unit_cost, abc_class "
        "FROM snapshots.erp_materials",
        "erp_movements": "SELECT transaction_id, material_number, location, unit, reason, quantity_effect "
        "FROM snapshots.erp_movements WHERE partition_hour = $h",
        "mes_applied": "SELECT transaction_id, status, material_number, location, unit, quantity_effect "
        "FROM snapshots.mes_applied WHERE partition_hour = $h",
        "backlog": "SELECT transaction_id, kind, place, reason FROM recon.pipeline_backlog WHERE partition_hour = $h",
        "applied_now": "SELECT transaction_id, applied_at FROM recon.mes_applied_observed WHERE partition_hour = $h",
        "earlier": "SELECT partition_hour, material_number, location, unit, transaction_ids "
        "FROM recon.variance_investigation WHERE partition_hour < $h AND cause <> 'carried_over'",
    }
    with open_warehouse(db, read_only=True) as conn:
        frames = {
            name: conn.execute(query, {"h": HOUR} if "$h" in query else None).df() for name, query in queries.items()
        }
    return frames


def signed_quantity(events: pd.DataFrame) -> pd.Series:
    outgoing = events["transaction_type"].isin(["issue", "transfer"])
    return events["quantity"].where(~outgoing, -events["quantity"])


def pandas_variances(inp: dict[str, pd.DataFrame]) -> pd.DataFrame:
    ev = inp["events"]
    transfers = ev[ev["transaction_type"] == "transfer"]
    cols = ["event_time", "material_number", "location", "unit", "target_system"]
    effects = pd.concat(
        [
            ev[cols].assign(is_count=ev["transaction_type"] == "cycle_count", qty=signed_quantity(ev)),
            transfers[cols].assign(location=transfers["to_location"], is_count=False, qty=transfers["quantity"]),
        ],
        ignore_index=True,
    )
    ledgers = {}
    for system in ("ERP", "MES"):
        p = effects[effects["target_system"].fillna(system) == system]
        moves = p[~p["is_count"]]
        ledger = p.assign(move=p["qty"].where(~p["is_count"], 0.0)).groupby(KEY, sort=False)
        ledger = ledger.agg(net_movement=("move", "sum"), transactions=("qty", "size"))
        # arg_max(qty, event_time): the latest cycle count per material-location
        last = p[p["is_count"]].sort_values("event_time").drop_duplicates(KEY, keep="last")
        last = last[[*KEY, "qty", "event_time"]].rename(columns={"qty": "counted", "event_time": "counted_at"})
        after = moves[[*KEY, "event_time", "qty"]].merge(last, on=KEY)
        after = after[after["event_time"] > after["counted_at"]].groupby(KEY)["qty"].sum().rename("net_after_count")
        ledger = ledger.join(last.set_index(KEY)["counted"]).join(after)
        ledger["net_after_count"] = ledger["net_after_count"].fillna(0.0)
        ledgers[system] = ledger.reset_index()

    erp, mes = inp["erp"], inp["mes"]
    keys = pd.concat([erp[KEY], mes[KEY], ledgers["ERP"][KEY], ledgers["MES"][KEY]]).drop_duplicates()
    b = keys.merge(erp, on=KEY, how="left").merge(mes, on=KEY, how="left", suffixes=("_erp", "_mes"))
    for system in ("ERP", "MES"):
        s = system.lower()
        b = b.merge(
            ledgers[system].add_prefix(f"{s}_").rename(columns={f"{s}_{k}": k for k in KEY}), on=KEY, how="left"
        )
    out = pd.DataFrame({k: b[k] for k in KEY})
    for s in ("erp", "mes"):
        out[f"{s}_begin"] = b[f"begin_quantity_{s}"].fillna(0.0)
        out[f"{s}_end"] = b[f"end_quantity_{s}"].fillna(0.0)
        out[f"{s}_ledger_net"] = b[f"{s}_net_movement"].fillna(0.0)
        out[f"{s}_expected_end"] = np.where(
            b[f"{s}_counted"].notna(),
            b[f"{s}_counted"] + b[f"{s}_net_after_count"],
            out[f"{s}_begin"] + out[f"{s}_ledger_net"],
        )
        out[f"{s}_three_way"] = out[f"{s}_expected_end"] - out[f"{s}_end"]
    out["ledger_transactions"] = b["erp_transactions"].fillna(0) + b["mes_transactions"].fillna(0)
    out["cross_difference"] = out["erp_end"] - out["mes_end"]
    out["abs_difference"] = out["cross_difference"].abs()
    larger = np.maximum(out["erp_end"].abs(), out["mes_end"].abs()).replace(0.0, np.nan)
    out["pct_difference"] = (100 * out["abs_difference"] / larger).round(4)
    out = out.merge(inp["materials"], on="material_number", how="left")
    out["warehouse"] = out["location"].str.split("/").str[0]
    out["value_difference"] = (out["abs_difference"] * out["unit_cost"]).round(2)
    out["is_variance"] = (
        (out["erp_three_way"].abs() > 1e-6) | (out["mes_three_way"].abs() > 1e-6) | (out["abs_difference"] > 1e-6)
    )
    return out


def pandas_investigation(variances: pd.DataFrame, inp: dict[str, pd.DataFrame]) -> pd.DataFrame:
    ev = inp["events"]
    var = variances.loc[
        variances["is_variance"], [*KEY, "cross_difference", "erp_three_way", "mes_three_way", "erp_begin", "mes_begin"]
    ]
    moves = ev[ev["transaction_type"] != "cycle_count"]
    transfers = ev[ev["transaction_type"] == "transfer"]
    cols = ["transaction_id", *KEY, "target_system", "source_system", "reason", "received_at"]
    ledger_fx = pd.concat(
        [
            moves[cols].assign(qty=signed_quantity(moves)),
            transfers[cols].assign(location=transfers["to_location"], qty=transfers["quantity"]),
        ],
        ignore_index=True,
    )
    erp_fx = inp["erp_movements"].rename(columns={"quantity_effect": "qty"})
    mes_fx = inp["mes_applied"]
    mes_fx = mes_fx.loc[mes_fx["status"] == "applied", ["transaction_id", *KEY, "quantity_effect"]]
    mes_fx = mes_fx.rename(columns={"quantity_effect": "qty"})
    # As the SQL does: only transactions with a row at a variance's material-location-unit can
    # explain one, and every comparison below is by transaction_id.
    explaining = pd.concat([fx.merge(var[KEY], on=KEY)["transaction_id"] for fx in (ledger_fx, erp_fx, mes_fx)])
    ledger_fx, erp_fx, mes_fx = (fx[fx["transaction_id"].isin(explaining)] for fx in (ledger_fx, erp_fx, mes_fx))
    # "Is it in the ledger?" asks of every event of the hour, cycle counts included.
    ledger_ids = ev.loc[ev["transaction_id"].isin(explaining), "transaction_id"]
    backlog = inp["backlog"].dropna(subset=["transaction_id"]).groupby("transaction_id", as_index=False).first()

    pairs = erp_fx[["transaction_id", *KEY, "qty"]].merge(
        ledger_fx[["transaction_id", *KEY, "qty"]], on="transaction_id", suffixes=("_erp", "_ledger")
    )
    um = pairs[
        (pairs["material_number_erp"] == pairs["material_number_ledger"])
        & (pairs["location_erp"] == pairs["location_ledger"])
        & (pairs["unit_erp"] != pairs["unit_ledger"])
    ]
    um_text = "the message carried " + um["unit_ledger"] + " where the ERP booked " + um["unit_erp"]
    um_ids = um["transaction_id"]

    def frame(src, unit, system, cause, qty, text) -> pd.DataFrame:
        def values(v):  # positional, so the parts' indexes do not matter
            return v.to_numpy() if isinstance(v, pd.Series) else v

        return pd.DataFrame(
            {"material_number": values(src["material_number"]), "location": values(src["location"]),
             "unit": values(unit), "system": system, "cause": values(cause), "qty": values(qty),
             "transaction_id": values(src["transaction_id"]), "reason_text": values(text)},
            index=pd.RangeIndex(len(src)),
        )  # fmt: skip

    def held_text(x: pd.DataFrame) -> pd.Series:
        return (x["place"] + ": " + x["reason"]).where(x["place"].notna() & x["reason"].notna())

    parts = [
        frame(um.rename(columns={"material_number_erp": "material_number", "location_erp": "location"}),
              um["unit_erp"], "MES", "unit_mismatch", um["qty_erp"], um_text),
        frame(um.rename(columns={"material_number_erp": "material_number", "location_erp": "location"}),
              um["unit_ledger"], "ERP", "unit_mismatch", um["qty_ledger"], um_text),
    ]  # fmt: skip

    unpublished = erp_fx[~erp_fx["transaction_id"].isin(ledger_ids) & ~erp_fx["transaction_id"].isin(um_ids)]
    unpublished = unpublished.merge(backlog, on="transaction_id", how="left", suffixes=("", "_held"))
    parts.append(
        frame(unpublished, unpublished["unit"], "MES", unpublished["kind"].fillna("not_published"), unpublished["qty"],
              held_text(unpublished.drop(columns="reason").rename(columns={"reason_held": "reason"}))
              .fillna("ERP document with no event on the exchange"))
    )  # fmt: skip

    for_mes = ledger_fx[
        (ledger_fx["target_system"].fillna("MES") == "MES")
        & ~ledger_fx["transaction_id"].isin(mes_fx["transaction_id"])
        & ~ledger_fx["transaction_id"].isin(um_ids)
    ]
    for_mes = for_mes.merge(backlog, on="transaction_id", how="left", suffixes=("", "_held"))
    for_mes = for_mes.merge(inp["applied_now"], on="transaction_id", how="left")
    cause = for_mes["kind"].where(
        for_mes["kind"].notna(), np.where(for_mes["applied_at"].notna(), "late_delivery", "missing_in_mes")
    )
    text = held_text(for_mes.drop(columns="reason").rename(columns={"reason_held": "reason"}))
    text = text.fillna(
        "applied by the MES at " + for_mes["applied_at"].dt.strftime("%Y-%m-%d %H:%M:%S") + ", after its snapshot"
    ).fillna("received " + for_mes["received_at"].dt.strftime("%Y-%m-%d %H:%M:%S") + "; not in the MES applied log")
    parts.append(frame(for_mes, for_mes["unit"], "MES", cause, for_mes["qty"], text))

    for_erp = ledger_fx[
        (ledger_fx["target_system"].fillna("ERP") == "ERP")
        & (ledger_fx["source_system"] != "ERP")
        & ~ledger_fx["transaction_id"].isin(erp_fx["transaction_id"])
    ]
    parts.append(frame(for_erp, for_erp["unit"], "ERP", "missing_in_erp", for_erp["qty"],
                       "from " + for_erp["source_system"] + ", " + for_erp["reason"]))  # fmt: skip

    mes_only = mes_fx[
        ~mes_fx["transaction_id"].isin(ledger_ids) & ~mes_fx["transaction_id"].isin(erp_fx["transaction_id"])
    ]
    parts.append(frame(mes_only, mes_only["unit"], "ERP", "not_published", mes_only["qty"],
                       "MES applied it; no event on the exchange"))  # fmt: skip

    explanations = pd.concat(parts, ignore_index=True).merge(var[KEY], on=KEY)
    explained = explanations.groupby([*KEY, "system", "cause"], as_index=False).agg(
        explained_quantity=("qty", "sum"),
        transaction_ids=("transaction_id", lambda s: sorted(set(s))),
        detail=("reason_text", lambda s: "; ".join(s.dropna().unique())),
    )
    # The systems already disagreed when the hour began; what the hour's RECON corrections left of
    # it is carried over, named by the latest earlier hour's transactions.
    corrections = ledger_fx[(ledger_fx["source_system"] == "RECON") & (ledger_fx["reason"] == "correction")]
    corrected = (
        corrections.assign(
            to_erp=corrections["qty"].where(corrections["target_system"] == "ERP", 0.0),
            to_mes=corrections["qty"].where(corrections["target_system"] == "MES", 0.0),
        )
        .groupby(KEY, as_index=False)[["to_erp", "to_mes"]]
        .sum()
    )
    began_apart = var[var["erp_begin"] != var["mes_begin"]].merge(corrected, on=KEY, how="left", indicator=True)
    left_over = (began_apart["erp_begin"] + began_apart["to_erp"].fillna(0.0)) - (
        began_apart["mes_begin"] + began_apart["to_mes"].fillna(0.0)
    )
    began_apart = began_apart.assign(left_over=left_over)[left_over.abs() > 1e-6]
    earlier = inp["earlier"].sort_values("partition_hour").drop_duplicates(KEY, keep="last")
    began_apart = began_apart.merge(earlier[[*KEY, "transaction_ids"]], on=KEY, how="left")
    earlier_ids = [list(ids) if isinstance(ids, list | np.ndarray) else [] for ids in began_apart["transaction_ids"]]
    less = np.where(began_apart["_merge"] == "both", "; less the RECON corrections of the hour", "")
    carried = pd.DataFrame(
        {**{k: began_apart[k] for k in KEY}, "system": "MES", "cause": "carried_over",
         "explained_quantity": began_apart["left_over"],
         "transaction_ids": earlier_ids,
         "detail": "the systems already disagreed when the hour began" + pd.Series(less, index=began_apart.index)}
    )  # fmt: skip
    explained = pd.concat([explained, carried], ignore_index=True)
    by_system = (
        explained.assign(
            ERP=explained["explained_quantity"].where(explained["system"] == "ERP", 0.0),
            MES=explained["explained_quantity"].where(explained["system"] == "MES", 0.0),
        )
        .groupby(KEY, as_index=False)[["ERP", "MES"]]
        .sum()
    )
    residuals = var.merge(by_system, on=KEY, how="left").fillna({"ERP": 0.0, "MES": 0.0})
    residuals["residual"] = residuals["cross_difference"] + residuals["ERP"] - residuals["MES"]
    residuals = residuals[residuals["residual"].abs() > 1e-6]
    unexplained = pd.DataFrame(
        {**{k: residuals[k] for k in KEY}, "system": "MES", "cause": "unexplained", "is_timing": False,
         "explained_quantity": residuals["residual"], "transaction_ids": [[] for _ in range(len(residuals))],
         "detail": "three-way ERP " + residuals["erp_three_way"].map(decimal_text)
                   + ", MES " + residuals["mes_three_way"].map(decimal_text)}
    )  # fmt: skip
    explained["is_timing"] = explained["cause"].isin(["pending_sync", "retrying", "late_delivery"])
    return pd.concat([explained, unexplained], ignore_index=True)


def decimal_text(value: float) -> str:
    """A DECIMAL(18,6) as DuckDB casts it to VARCHAR."""
    return f"{round(value, 6) + 0.0:.6f}"


def run_pandas(db: Path, repeat: int) -> dict:
    inputs = load_inputs(db)
    print(json.dumps({"loaded": True}), flush=True)  # the parent's time limit per run starts now
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        variances = pandas_variances(inputs)
        investigation = pandas_investigation(variances, inputs)
        runs.append(time.perf_counter() - started)
        print(json.dumps({"run": runs[-1]}), flush=True)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # inputs included, as a pandas job has them
    return {"seconds": min(runs), "runs": runs, "peak_rss_mb": peak_rss_mb, **summarize(variances, investigation)}
