"""The faults the plant simulator can inject: what each one does and what reconciliation should say about it.

A ``FaultProfile`` says how many of each type a run injects. ``default`` has a few of each,
``none`` has none, and a YAML file can ask for any mix::

    name: heavy-duplicates        # optional, defaults to the file name
    faults:
      duplicate: 10
      lost_message: 2
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


@dataclass(frozen=True)
class FaultKind:
    """What a fault type does and what the hourly reconciliation should find for it."""

    name: str
    delivery: str  # how the event reaches the exchange (planned_events.delivery)
    expected_cause: str  # the cause reconciliation should report; "none" when no variance remains
    acceptable_causes: tuple[str, ...]  # other causes that are also right
    lacking_system: str | None  # the system that misses the movement (variance_investigation.system)
    description: str


FAULT_KINDS: dict[str, FaultKind] = {
    k.name: k
    for k in (
        # A movement missing on one side is `in_flight` while younger than the in-flight window.
        FaultKind("lost_message", "tap_only", "missing_in_mes", ("in_flight",), "MES",
                  "posted in the ERP and published to the ledger tap only; the MES never gets it"),
        FaultKind("erp_posting_never_sent", "not_sent", "not_published", ("in_flight",), "MES",
                  "posted in the ERP, never published"),
        FaultKind("duplicate", "outbox_twice", "none", (), None,
                  "published twice with the same transaction_id; applied once, so no variance"),
        FaultKind("late_delivery", "outbox_late", "late_delivery", ("none",), "MES",
                  "stamped in its hour, published after every event of the later hours; no variance once applied"),
        FaultKind("out_of_order", "outbox_reordered", "none", (), None,
                  "two events of one material-location published in reverse order; no variance"),
        FaultKind("malformed", "malformed", "quarantined", ("dead_lettered",), "MES",
                  "posted in the ERP; the message has a non-numeric quantity, so the drain quarantines it and "
                  "the sync worker parks it"),
        FaultKind("mes_consumption_not_in_erp", "mes_publisher", "missing_in_erp", ("in_flight",), "ERP",
                  "backflushed in the MES (and published by it), never posted in the ERP"),
        FaultKind("uom_mismatch", "outbox_other_unit", "unit_mismatch", (), None,
                  "posted in the ERP in the base unit; the message carries a smaller unit (G for KG, x1000), so "
                  "the MES books it under that unit"),
    )
}  # fmt: skip
FAULT_TYPES: tuple[str, ...] = tuple(FAULT_KINDS)
DEFAULT_COUNT = 2


class FaultProfileError(ValueError):
    """A fault profile name or file that cannot be used; the message says which field and what to write."""


class FaultProfile(BaseModel):
    """How many faults of each type a simulation injects."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    counts: dict[str, int] = Field(default_factory=dict)

    @field_validator("counts")
    @classmethod
    def _known_types(cls, value: dict[str, int]) -> dict[str, int]:
        for fault_type, count in value.items():
            if fault_type not in FAULT_KINDS:
                raise ValueError(f"unknown fault type {fault_type!r}; use one of {', '.join(FAULT_TYPES)}")
            if not isinstance(count, int) or count < 0:
                raise ValueError(f"{fault_type}={count!r}: give a whole number >= 0")
        # Every type present, in the canonical order, so equal profiles compare and hash equal.
        return {t: value.get(t, 0) for t in FAULT_TYPES}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @classmethod
    def default(cls) -> FaultProfile:
        return cls(name="default", counts=dict.fromkeys(FAULT_TYPES, DEFAULT_COUNT))

    @classmethod
    def none(cls) -> FaultProfile:
        return cls(name="none", counts={})

    @classmethod
    def from_yaml(cls, path: str | Path) -> FaultProfile:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise FaultProfileError(f"fault profile {path}: cannot read it ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise FaultProfileError(f"fault profile {path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("faults", {}), dict):
            raise FaultProfileError(
                f"fault profile {path}: expected a mapping with `faults: {{<fault type>: <count>}}`; "
                f"fault types: {', '.join(FAULT_TYPES)}"
            )
        unknown = sorted(set(raw) - {"name", "faults"})
        if unknown:
            raise FaultProfileError(f"fault profile {path}: unknown key(s) {unknown}; use `name` and `faults`")
        try:
            return cls(name=str(raw.get("name") or path.stem), counts=raw.get("faults") or {})
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            rule = err["msg"].removeprefix("Value error, ")
            raise FaultProfileError(f"fault profile {path}: faults: {rule}") from None


def resolve_profile(profile: FaultProfile | str | Path) -> FaultProfile:
    """``default``, ``none``, a path to a YAML file, or a profile object as it is."""
    if isinstance(profile, FaultProfile):
        return profile
    if str(profile) == "default":
        return FaultProfile.default()
    if str(profile) == "none":
        return FaultProfile.none()
    if not Path(profile).is_file():
        raise FaultProfileError(f"--faults {profile!s}: use `default`, `none`, or the path of a YAML fault profile")
    return FaultProfile.from_yaml(profile)
