"""A client of the reference MES: the inventory API every MES offers, plus what only the reference has.

Backflushes the MES books and publishes itself, its outbox of unpublished ones, and the admin
API that injects faults. Tests, the simulator and the demo use it; the pipeline never does: it
talks to any MES through ``sources.mes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from invsync_pipeline.contract import InventoryEvent, parse_event
from invsync_pipeline.sources.mes import MesClient, instant_param


@dataclass(frozen=True)
class BackflushResult:
    event: InventoryEvent
    mes_transaction_id: str
    status: str  # applied | duplicate
    published: bool


class ReferenceMesClient(MesClient):
    """The reference MES (reference/mes_service.py): the inventory API and its own extras."""

    def backflush(
        self,
        material_number: str,
        material_type: str,
        location: str,
        quantity: Decimal | str,
        unit: str,
        order: str,
        transaction_id: str | None = None,
        timestamp: datetime | str | None = None,
    ) -> BackflushResult:
        """Record WIP consumed by a production order in the MES (it publishes the event itself)."""
        payload = {
            "material_number": material_number,
            "material_type": material_type,
            "location": location,
            "quantity": str(quantity),
            "unit": unit,
            "order": order,
            "transaction_id": transaction_id,
            "timestamp": instant_param(timestamp, "timestamp"),
        }
        _, body = self._request(
            "POST", "/api/v1/production/backflush", json_body={k: v for k, v in payload.items() if v is not None}
        )
        return BackflushResult(
            parse_event(body["event"]), body["mes_transaction_id"], body["status"], body["published"]
        )

    def unpublished(self) -> list[dict[str, Any]]:
        """MES-originated events the MES has not managed to publish yet."""
        return self._request("GET", "/api/v1/production/unpublished")[1]["items"]

    def get_faults(self) -> dict[str, Any]:
        return self._request("GET", "/api/v1/admin/faults")[1]

    def set_faults(
        self,
        error_rate: float | None = None,
        latency_ms: int | None = None,
        outage: bool | None = None,
        outage_windows: list[dict[str, str]] | None = None,
        lost_answer_rate: float | None = None,
        locked_locations: list[str] | None = None,
    ) -> dict[str, Any]:
        """Change the reference MES's injected faults; arguments left None keep their value."""
        patch = {"error_rate": error_rate, "latency_ms": latency_ms, "outage": outage, "outage_windows": outage_windows,
                 "lost_answer_rate": lost_answer_rate, "locked_locations": locked_locations}  # fmt: skip
        return self._request(
            "PUT", "/api/v1/admin/faults", json_body={k: v for k, v in patch.items() if v is not None}
        )[1]
