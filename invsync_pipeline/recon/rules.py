"""The source-of-truth rules file (data/rules.yaml): loaded, validated, and asked questions."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REASONS = ("purchase_receipt", "production_receipt", "production_consumption", "shipment", "scrap", "return",
           "stock_transfer", "physical_inventory", "correction")  # fmt: skip
CAUSES = ("in_flight", "pending_sync", "retrying", "quarantined", "dead_lettered", "late_delivery", "carried_over",
          "missing_in_mes", "missing_in_erp", "not_published", "unit_mismatch", "unexplained")  # fmt: skip
TIMING_CAUSES = ("in_flight", "pending_sync", "retrying", "late_delivery")


class RulesError(ValueError):
    """The rules file breaks a rule; the message names the file, the field and the value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TruthRule(_Strict):
    name: str = Field(min_length=1)
    reasons: tuple[str, ...] | None = None
    truth: Literal["ERP", "MES"]

    @field_validator("reasons")
    @classmethod
    def _known(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for reason in value or ():
            if reason not in REASONS:
                raise ValueError(f"unknown reason {reason!r}; use one of {', '.join(REASONS)}")
        return value


class Threshold(_Strict):
    critical_pct: float = Field(gt=0, le=100)
    critical_value: float = Field(gt=0)


class Thresholds(_Strict):
    default: Threshold
    by_material_type: dict[Literal["raw", "wip", "finished", "packaging", "mro"], Threshold] = {}
    by_abc_class: dict[Literal["A", "B", "C"], Threshold] = {}


class Rules(_Strict):
    version: Literal[1]
    source_of_truth: tuple[TruthRule, ...] = Field(min_length=1)
    thresholds: Thresholds
    always_review: tuple[str, ...] = ("unit_mismatch", "unexplained")
    # A variance no movement explains on either side (stock moved with nothing recorded):
    # request_count holds it as a request for a physical count; correct treats it as any other.
    without_movement: Literal["request_count", "correct"] = "request_count"

    @field_validator("always_review")
    @classmethod
    def _known_causes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cause in value:
            if cause not in CAUSES:
                raise ValueError(f"unknown cause {cause!r}; use one of {', '.join(CAUSES)}")
            if cause in TIMING_CAUSES:
                raise ValueError(f"cause {cause!r} resolves by itself and is never corrected; remove it")
        return value

    @model_validator(mode="after")
    def _has_default(self) -> Rules:
        if self.source_of_truth[-1].reasons is not None:
            raise ValueError("the last source_of_truth rule must have no `reasons`: it is the default")
        names = [rule.name for rule in self.source_of_truth]
        if len(set(names)) != len(names):
            raise ValueError(f"source_of_truth rule names must be unique, got {names}")
        return self

    def truth_for(self, reason: str | None) -> TruthRule:
        for rule in self.source_of_truth:
            if rule.reasons is None or (reason is not None and reason in rule.reasons):
                return rule
        return self.source_of_truth[-1]

    def threshold_for(self, material_type: str | None, abc_class: str | None) -> Threshold:
        t = self.thresholds
        if abc_class in t.by_abc_class:
            return t.by_abc_class[abc_class]  # type: ignore[index]
        if material_type in t.by_material_type:
            return t.by_material_type[material_type]  # type: ignore[index]
        return t.default


def load_rules(path: str | Path) -> Rules:
    """Read and validate the rules file (settings ``reconciliation.rules_path``: INVSYNC_RULES or
    data/rules.yaml)."""
    path = Path(path)
    if not path.exists():
        raise RulesError(f"rules file {path} does not exist (set reconciliation.rules_path or INVSYNC_RULES to it)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}") from None
    try:
        return Rules.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'file'}={err.get('input')!r}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise RulesError(f"{path}: {problems}") from None
