"""The one place where the project's own errors become `invsync: <message>` on stderr and an exit code."""

from __future__ import annotations

from typing import IO, Any

import click


class Failure(click.ClickException):
    """A command that cannot go on: `invsync: <message>` on stderr, exit code 2 unless told otherwise.

    Commands raise it for their own refusals (no warehouse yet, nothing by that id); the group
    raises it for the project's errors (``project_errors``)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"invsync: {self.format_message()}", file=file, err=file is None)


def project_errors() -> tuple[type[Exception], ...]:
    """The errors the project raises for something an operator can fix: bad input or config, a
    refused step, a broker or MES out of reach. Imported only when a command failed, so that
    `invsync --help` does not load pika, DuckDB and the reference systems."""
    from invsync_pipeline.contract import ContractViolation
    from invsync_pipeline.cutover.state import SwitchRefused
    from invsync_pipeline.messaging.connection import BrokerUnavailable
    from invsync_pipeline.messaging.outbox import OutboxError
    from invsync_pipeline.messaging.topology import TopologyConflict
    from invsync_pipeline.onboarding import OnboardingError
    from invsync_pipeline.recon.corrections import ReviewError
    from invsync_pipeline.recon.rules import RulesError
    from invsync_pipeline.reference.faults import FaultProfileError
    from invsync_pipeline.reference.sim_run import SimulationError
    from invsync_pipeline.settings import ConfigError
    from invsync_pipeline.sources.erp import ErpPostingError
    from invsync_pipeline.sources.mes import MesError

    return (
        ConfigError, BrokerUnavailable, ContractViolation, TopologyConflict, OutboxError, RulesError, ReviewError,
        OnboardingError, SwitchRefused, ErpPostingError, MesError, FaultProfileError, SimulationError,
    )  # fmt: skip


class TranslatingGroup(click.Group):
    """A command group whose commands end with one clear line and exit code 2 on the project's
    errors, not a traceback. Deliberate outcomes keep their own codes: exit 1 for a partial
    failure (invalid lines, refused replays), and click's own exit 2 for a usage error."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own: usage errors, --help, Failure; no need to load the project's errors
        except Exception as exc:
            if isinstance(exc, project_errors()):
                raise Failure(str(exc)) from None
            raise
