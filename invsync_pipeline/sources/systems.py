"""The plant's two systems as one piece of work holds them: the ERP and the MES of the event-driven path."""

from __future__ import annotations

from dataclasses import dataclass

from invsync_pipeline.sources.erp import ErpApi
from invsync_pipeline.sources.mes import MesApi


@dataclass(frozen=True)
class Systems:
    """The plant's ERP and the MES of the event-driven path, opened for one piece of work."""

    erp: ErpApi
    mes: MesApi

    def close(self) -> None:
        try:
            self.mes.close()
        finally:
            self.erp.dispose()

    def __enter__(self) -> Systems:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
