"""The pandas baseline of bench/reconcile.py: recon/variances.sql, recon/explained_movements.sql
and recon/variance_investigation.sql as merges and groupbys, by the same steps as the SQL."""

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
        "erp_movements": "SELECT transaction_id, material_number, location, unit, reason, event_time, quantity_effect "
        "FROM snapshots.erp_movements WHERE partition_hour = $h",
        "mes_applied": "SELECT transaction_id, status, material_number, location, unit, event_time, quantity_effect "
        "FROM snapshots.mes_applied WHERE partition_hour = $h",
        "reconciled": "SELECT first_reconciled_at FROM recon.reconciled_hours WHERE partition_hour = $h",
        "inputs": "SELECT observed_at, in_flight_window_minutes "
        "FROM recon.investigation_inputs WHERE partition_hour = $h",
        "backlog": "SELECT transaction_id, kind, place, reason FROM recon.pipeline_backlog WHERE partition_hour = $h",
        "applied_now": "SELECT transaction_id, applied_at FROM recon.mes_applied_observed WHERE partition_hour = $h",
        "in_flight_checks": "SELECT transaction_id, material_number, location, unit, system, quantity, event_time, "
        "in_flight_since, cause_if_missing, state FROM recon.in_flight_checks WHERE partition_hour = $h",
        "earlier": "SELECT partition_hour, material_number, location, unit, transaction_ids "
        "FROM recon.variance_investigation WHERE partition_hour < $h AND cause <> 'carried_over'",
    }
    with open_warehouse(db, read_only=True) as conn:
        frames = {
            name: conn.execute(query, {"h": HOUR} if "$h" in query else None).df() for name, query in queries.items()
        }
    return frames


def first_seen(inp: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The hour's events as its first reconciliation saw them: those staged by then (all of them
    if the hour was never reconciled), as the SQL's `events` does."""
    ev, reconciled = inp["events"], inp["reconciled"]["first_reconciled_at"]
    if reconciled.empty:
        return ev
    return ev[ev["received_at"] <= reconciled.iloc[0]]


def signed_quantity(events: pd.DataFrame) -> pd.Series:
    outgoing = events["transaction_type"].isin(["issue", "transfer"])
    return events["quantity"].where(~outgoing, -events["quantity"])


def pandas_variances(inp: dict[str, pd.DataFrame]) -> pd.DataFrame:
    ev = first_seen(inp)
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
    # The unit cost is per base unit: a row in another unit (a unit mismatch) has no value.
    out["value_difference"] = (out["abs_difference"] * out["unit_cost"]).round(2).where(out["unit"] == out["base_unit"])
    out["is_variance"] = (
        (out["erp_three_way"].abs() > 1e-6) | (out["mes_three_way"].abs() > 1e-6) | (out["abs_difference"] > 1e-6)
    )
    return out


def minutes_between(earlier: pd.Series, later: pd.Timestamp) -> pd.Series:
    """DuckDB's date_diff('minute', earlier, later): the minute boundaries crossed, as text (NA stays NA)."""
    minutes = (later.floor("min") - earlier.dt.floor("min")) // pd.Timedelta(minutes=1)
    return minutes.astype("Int64").astype("string")


def pandas_investigation(variances: pd.DataFrame, inp: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """recon.explained_movements and recon.variance_investigation of the hour."""
    ev = first_seen(inp)
    var = variances.loc[
        variances["is_variance"], [*KEY, "cross_difference", "erp_three_way", "mes_three_way", "erp_begin", "mes_begin"]
    ]
    # When the hour was first investigated, and the in-flight window then (none: 0 minutes). The
    # SQL cross-joins this one row: without it, only unit mismatches are explained.
    inputs = inp["inputs"]
    observed_at = inputs["observed_at"].iloc[0] if len(inputs) else pd.NaT
    window = inputs["in_flight_window_minutes"].fillna(0).iloc[0] if len(inputs) else 0
    window_text = str(int(window))
    young_after = observed_at - pd.Timedelta(minutes=int(window))

    def observed(x: pd.DataFrame) -> pd.DataFrame:
        return x if len(inputs) else x.iloc[0:0]

    def young(x: pd.DataFrame) -> pd.Series:
        return x["event_time"] > young_after

    def in_window_text(x: pd.DataFrame) -> pd.Series:
        return (minutes_between(x["event_time"], observed_at) + " min old within the " + window_text
                + "-min in-flight window; looked at again later")  # fmt: skip

    moves = ev[ev["transaction_type"] != "cycle_count"]
    transfers = ev[ev["transaction_type"] == "transfer"]
    cols = ["transaction_id", *KEY, "target_system", "source_system", "reason", "received_at", "event_time"]
    ledger_fx = pd.concat(
        [
            moves[cols].assign(qty=signed_quantity(moves)),
            transfers[cols].assign(location=transfers["to_location"], qty=transfers["quantity"]),
        ],
        ignore_index=True,
    )
    erp_fx = inp["erp_movements"].rename(columns={"quantity_effect": "qty"})
    mes_fx = inp["mes_applied"]
    mes_fx = mes_fx.loc[mes_fx["status"] == "applied", ["transaction_id", *KEY, "event_time", "quantity_effect"]]
    mes_fx = mes_fx.rename(columns={"quantity_effect": "qty"})
    # As the SQL does: only transactions with a row at a variance's material-location-unit can
    # explain one, and every comparison below is by transaction_id.
    explaining = pd.concat([fx.merge(var[KEY], on=KEY)["transaction_id"] for fx in (ledger_fx, erp_fx, mes_fx)])
    ledger_fx, erp_fx, mes_fx = (fx[fx["transaction_id"].isin(explaining)] for fx in (ledger_fx, erp_fx, mes_fx))
    # "Is it in the ledger?" asks of every event of the hour, cycle counts included.
    ledger_ids = ev.loc[ev["transaction_id"].isin(explaining), "transaction_id"]
    backlog = inp["backlog"].dropna(subset=["transaction_id"]).groupby("transaction_id", as_index=False).first()

    pairs = erp_fx[["transaction_id", *KEY, "qty", "event_time"]].merge(
        ledger_fx[["transaction_id", *KEY, "qty"]], on="transaction_id", suffixes=("_erp", "_ledger")
    )
    um = pairs[
        (pairs["material_number_erp"] == pairs["material_number_ledger"])
        & (pairs["location_erp"] == pairs["location_ledger"])
        & (pairs["unit_erp"] != pairs["unit_ledger"])
    ]
    um_text = "the message carried " + um["unit_ledger"] + " where the ERP booked " + um["unit_erp"]
    um_ids = um["transaction_id"]

    def frame(src, unit, system, cause, qty, text, since=pd.NaT) -> pd.DataFrame:
        def values(v):  # positional, so the parts' indexes do not matter
            return v.to_numpy() if isinstance(v, pd.Series) else v

        return pd.DataFrame(
            {"material_number": values(src["material_number"]), "location": values(src["location"]),
             "unit": values(unit), "system": values(system), "cause": values(cause), "qty": values(qty),
             "transaction_id": values(src["transaction_id"]), "event_time": values(src["event_time"]),
             "in_flight_since": values(since), "detail": values(text)},
            index=pd.RangeIndex(len(src)),
        )  # fmt: skip

    def held_text(x: pd.DataFrame) -> pd.Series:
        return (x["place"] + ": " + x["reason"]).where(x["place"].notna() & x["reason"].notna())

    um_erp = um.rename(columns={"material_number_erp": "material_number", "location_erp": "location"})
    parts = [
        frame(um_erp, um["unit_erp"], "MES", "unit_mismatch", um["qty_erp"], um_text),
        frame(um_erp, um["unit_ledger"], "ERP", "unit_mismatch", um["qty_ledger"], um_text),
    ]

    # Booked in the ERP, never in the ledger: in the pipeline, on its way, quarantined, or never sent.
    unpublished = observed(erp_fx[~erp_fx["transaction_id"].isin(ledger_ids) & ~erp_fx["transaction_id"].isin(um_ids)])
    unpublished = unpublished.merge(backlog, on="transaction_id", how="left", suffixes=("", "_held"))
    is_young = young(unpublished)
    cause = unpublished["kind"].where(unpublished["kind"].notna(), np.where(is_young, "in_flight", "not_published"))
    text = held_text(unpublished.drop(columns="reason").rename(columns={"reason_held": "reason"}))
    text = text.fillna(("ERP document not on the exchange yet, " + in_window_text(unpublished)).where(is_young))
    parts.append(frame(unpublished, unpublished["unit"], "MES", cause, unpublished["qty"],
                       text.fillna("ERP document with no event on the exchange")))  # fmt: skip

    # In the ledger and meant for the MES, not in the MES's applied log.
    for_mes = observed(
        ledger_fx[
            (ledger_fx["target_system"].fillna("MES") == "MES")
            & ~ledger_fx["transaction_id"].isin(mes_fx["transaction_id"])
            & ~ledger_fx["transaction_id"].isin(um_ids)
        ]
    )
    for_mes = for_mes.merge(backlog, on="transaction_id", how="left", suffixes=("", "_held"))
    for_mes = for_mes.merge(inp["applied_now"], on="transaction_id", how="left")
    is_young = young(for_mes)
    cause = np.select(
        [for_mes["kind"].notna(), for_mes["applied_at"].notna(), is_young],
        [for_mes["kind"], "late_delivery", "in_flight"],
        "missing_in_mes",
    )
    text = held_text(for_mes.drop(columns="reason").rename(columns={"reason_held": "reason"}))
    text = (
        text.fillna(
            "applied by the MES at " + for_mes["applied_at"].dt.strftime("%Y-%m-%d %H:%M:%S") + ", after its snapshot"
        )
        .fillna(("not in the MES yet, " + in_window_text(for_mes)).where(is_young))
        .fillna("received " + for_mes["received_at"].dt.strftime("%Y-%m-%d %H:%M:%S") + "; not in the MES applied log")
    )
    parts.append(frame(for_mes, for_mes["unit"], "MES", cause, for_mes["qty"], text))

    # In the ledger and meant for the ERP (MES backflushes, ERP corrections), not in the ERP.
    for_erp = observed(
        ledger_fx[
            (ledger_fx["target_system"].fillna("ERP") == "ERP")
            & (ledger_fx["source_system"] != "ERP")
            & ~ledger_fx["transaction_id"].isin(erp_fx["transaction_id"])
        ]
    )
    is_young = young(for_erp)
    text = ("from " + for_erp["source_system"] + ", " + for_erp["reason"]
            + ("; not in the ERP yet, " + in_window_text(for_erp)).where(is_young, ""))  # fmt: skip
    parts.append(frame(for_erp, for_erp["unit"], "ERP", np.where(is_young, "in_flight", "missing_in_erp"),
                       for_erp["qty"], text))  # fmt: skip

    # Applied in the MES, never in the ledger (an MES posting that was not published).
    mes_only = observed(
        mes_fx[~mes_fx["transaction_id"].isin(ledger_ids) & ~mes_fx["transaction_id"].isin(erp_fx["transaction_id"])]
    )
    is_young = young(mes_only)
    text = ("MES applied it; not on the exchange yet, " + in_window_text(mes_only)).where(
        is_young, "MES applied it; no event on the exchange"
    )
    parts.append(frame(mes_only, mes_only["unit"], "ERP", np.where(is_young, "in_flight", "not_published"),
                       mes_only["qty"], text))  # fmt: skip

    # Found in flight by an earlier hour, still missing after its window.
    checks = inp["in_flight_checks"]
    missing = observed(checks[checks["state"] == "missing"])
    text = ("in flight since the hour of " + missing["in_flight_since"].dt.strftime("%Y-%m-%d %H:00")
            + " UTC; not arrived " + minutes_between(missing["event_time"], observed_at) + " min after the movement, "
            + "past the " + window_text + "-min in-flight window")  # fmt: skip
    parts.append(frame(missing, missing["unit"], missing["system"], missing["cause_if_missing"], missing["quantity"],
                       text, missing["in_flight_since"]))  # fmt: skip

    movements = pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True).merge(var[KEY], on=KEY)
    movements["detail"] = movements["detail"].astype(object).where(movements["detail"].notna(), None)

    explained = movements.groupby([*KEY, "system", "cause"], as_index=False).agg(
        explained_quantity=("qty", "sum"),
        transaction_ids=("transaction_id", lambda s: sorted(set(s))),
        detail=("detail", lambda s: "; ".join(sorted(s.dropna().unique())) or None),
    )
    # Movements an earlier hour found in flight and this hour found still missing: the carried part
    # shrinks by them.
    again = movements[movements["in_flight_since"].notna()]
    looked_at_again = (
        again.assign(
            mes_lacks=again["qty"].where(again["system"] == "MES", 0.0),
            erp_lacks=again["qty"].where(again["system"] == "ERP", 0.0),
        )
        .groupby(KEY, as_index=False)[["mes_lacks", "erp_lacks"]]
        .sum()
        .assign(looked_again=True)
    )
    # The RECON corrections of the hour (as its first reconciliation saw them), per system they correct.
    corrections = ev[
        (ev["source_system"] == "RECON") & (ev["reason"] == "correction") & (ev["transaction_type"] == "adjustment")
    ].merge(var[KEY], on=KEY)
    corrected = (
        corrections.assign(
            to_erp=corrections["quantity"].where(corrections["target_system"] == "ERP", 0.0),
            to_mes=corrections["quantity"].where(corrections["target_system"] == "MES", 0.0),
        )
        .groupby(KEY, as_index=False)[["to_erp", "to_mes"]]
        .sum()
        .assign(corrected=True)
    )
    # The systems already disagreed when the hour began; what the hour's corrections and the
    # movements looked at again left of it is carried over, named by the latest earlier hour's
    # transactions.
    began_apart = (
        var[var["erp_begin"] != var["mes_begin"]]
        .merge(corrected, on=KEY, how="left")
        .merge(looked_at_again, on=KEY, how="left")
        .fillna({"to_erp": 0.0, "to_mes": 0.0, "mes_lacks": 0.0, "erp_lacks": 0.0})
    )
    left_over = ((began_apart["erp_begin"] + began_apart["to_erp"]) - (began_apart["mes_begin"] + began_apart["to_mes"])
                 - began_apart["mes_lacks"] + began_apart["erp_lacks"])  # fmt: skip
    began_apart = began_apart.assign(left_over=left_over)[left_over.abs() > 1e-6]
    earlier = inp["earlier"].sort_values("partition_hour").drop_duplicates(KEY, keep="last")
    began_apart = began_apart.merge(earlier[[*KEY, "transaction_ids"]], on=KEY, how="left")
    earlier_ids = [list(ids) if isinstance(ids, list | np.ndarray) else [] for ids in began_apart["transaction_ids"]]
    less = np.where(began_apart["corrected"].notna(), "; less the RECON corrections of the hour", "")
    less_again = np.where(began_apart["looked_again"].notna(), "; less the movements looked at again", "")
    carried = pd.DataFrame(
        {**{k: began_apart[k] for k in KEY}, "system": "MES", "cause": "carried_over",
         "explained_quantity": began_apart["left_over"],
         "transaction_ids": earlier_ids,
         "detail": "the systems already disagreed when the hour began"
                   + pd.Series(np.char.add(less, less_again), index=began_apart.index)}
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
    explained["is_timing"] = explained["cause"].isin(["in_flight", "pending_sync", "retrying", "late_delivery"])
    investigation = pd.concat([explained, unexplained], ignore_index=True)
    return movements.rename(columns={"qty": "quantity"}), investigation


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
        movements, investigation = pandas_investigation(variances, inputs)
        runs.append(time.perf_counter() - started)
        print(json.dumps({"run": runs[-1]}), flush=True)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # inputs included, as a pandas job has them
    summary = summarize(variances, investigation, movements)
    return {"seconds": min(runs), "runs": runs, "peak_rss_mb": peak_rss_mb, **summary}
