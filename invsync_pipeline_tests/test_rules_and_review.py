"""Bad input to the rules file or the review commands gets a clear error and changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from invsync_pipeline.cli import main
from invsync_pipeline.recon.corrections import Correction
from invsync_pipeline.recon.review_store import review_store
from invsync_pipeline.recon.rules import RulesError, load_rules
from invsync_pipeline.settings import load_settings

HOUR = datetime(2026, 11, 24, 10, tzinfo=UTC)


def _rules_file(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(load_settings().reconciliation.rules_path.read_text())
    mutate(data)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_shipped_rules_say_erp_wins_receipts_and_mes_wins_wip_consumption():
    rules = load_rules(load_settings().reconciliation.rules_path)
    assert rules.truth_for("purchase_receipt").truth == "ERP"
    assert rules.truth_for("shipment").truth == "ERP"
    assert rules.truth_for("production_consumption").truth == "MES"
    assert rules.threshold_for("raw", None).critical_pct == 5.0
    assert rules.threshold_for("mro", "A").critical_pct == 2.0  # ABC class wins over material type


@pytest.mark.parametrize(
    ("mutate", "names"),
    [
        (lambda d: d["source_of_truth"][0].update(truth="SAP"), ["source_of_truth.0.truth", "'SAP'"]),
        (lambda d: d["source_of_truth"][0].update(reasons=["purchase"]), ["unknown reason 'purchase'"]),
        (lambda d: d["thresholds"]["default"].update(critical_pct=-5), ["critical_pct", "-5"]),
        (lambda d: d["thresholds"]["by_material_type"].update(steel={"critical_pct": 1, "critical_value": 1}),
         ["by_material_type.steel"]),
        (lambda d: d.update(always_review=["everything"]), ["unknown cause 'everything'"]),
        (lambda d: d["source_of_truth"].pop(), ["last source_of_truth rule must have no `reasons`"]),
        (lambda d: d.update(colour="red"), ["colour"]),
    ],
)  # fmt: skip
def test_a_bad_rules_file_is_refused_naming_the_field_and_value(tmp_path, mutate, names):
    path = _rules_file(tmp_path, mutate)
    with pytest.raises(RulesError) as err:
        load_rules(path)
    for name in names:
        assert name in str(err.value)
    result = CliRunner().invoke(main, ["rules", "check", str(path)])
    assert result.exit_code == 2 and names[0] in result.output


def test_rules_that_are_not_yaml_are_refused(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("source_of_truth: [unclosed")
    with pytest.raises(RulesError, match="not valid YAML"):
        load_rules(path)


HELD = Correction(
    correction_id="RECON-abc", partition_hour=HOUR, material_number="MAT-1", material_type="raw",
    location="WH01/RM01", unit="KG", cause="missing_in_mes", target_system="MES", quantity=Decimal(600),
    truth="ERP", rule="erp_wins_receipts_and_shipments", pct_of_balance=Decimal(60), value=None, critical=True,
    status="held_for_review", decided_by="auto:erp_wins_receipts_and_shipments", before_quantity=Decimal(1000),
    explained_by=("TX-1",), note="critical", method="resend",
)  # fmt: skip


@pytest.fixture
def held_correction(settings) -> str:
    with review_store(settings) as store:
        store.hold(HELD, evidence={})
    return "RECON-abc"


def _state(settings) -> tuple:
    with review_store(settings) as store:
        item = store.item("RECON-abc")
        return (item["status"], item["decided_by"], item["decision_note"]), len(store.trail("RECON-abc"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["review", "approve", "RECON-nope", "--by", "Sam"], "no correction 'RECON-nope'"),
        (["review", "approve", "RECON-abc", "--by", "  "], "--by must name the supervisor"),
        (["review", "reject", "RECON-abc", "--by", "Sam", "--note", " "], "--note must say why"),
        (["review", "show", "RECON-nope"], "no correction 'RECON-nope'"),
    ],
)
def test_bad_review_commands_say_what_is_wrong_and_change_nothing(settings, held_correction, args, message):
    before = _state(settings)

    result = CliRunner().invoke(main, args)

    assert result.exit_code == 2
    assert message in result.output
    assert _state(settings) == before


def test_a_rejected_correction_is_closed_with_who_and_why_and_cannot_be_approved(settings, held_correction):
    runner = CliRunner()
    assert "RECON-abc" in runner.invoke(main, ["review", "list"]).output

    result = runner.invoke(main, ["review", "reject", "RECON-abc", "--by", "Sam", "--note", "count was wrong"])

    assert result.exit_code == 0, result.output
    status, decided_by, note = _state(settings)[0]
    assert (status, decided_by, note) == ("rejected", "supervisor:Sam", "count was wrong")
    again = runner.invoke(main, ["review", "approve", "RECON-abc", "--by", "Sam"])
    assert again.exit_code == 2 and "is rejected, not waiting for review" in again.output
    assert runner.invoke(main, ["review", "list"]).output.strip() == "nothing waits for review"


def test_items_held_before_the_review_store_existed_are_adopted_into_it_by_the_next_run(settings):
    from invsync_pipeline.recon.review import adopt_held
    from invsync_pipeline.warehouse import open_warehouse

    with open_warehouse(settings.warehouse_path) as conn:  # as an older release left it: held in DuckDB only
        conn.execute(
            "INSERT INTO recon.corrections VALUES ('RECON-old', ?, 'MAT-1', 'raw', 'WH01/RM01', 'KG', "
            "'missing_in_mes', 'MES', 600, 'ERP', 'erp_wins_receipts_and_shipments', 60, NULL, true, "
            "'held_for_review', 'auto:erp_wins_receipts_and_shipments', ?, 1000, NULL, ['TX-1'], NULL, 'critical', "
            "'resend')",
            [HOUR, HOUR],
        )
        with review_store(settings) as store:
            assert adopt_held(conn, store, recent_hours=6) == 1
            assert adopt_held(conn, store, recent_hours=6) == 0  # once
            item = store.item("RECON-old")
    assert (item["status"], item["quantity"], item["explained_by"]) == ("held_for_review", "600.000000", ["TX-1"])
    assert item["evidence"]["movements"] == [{"transaction_id": "TX-1"}]
