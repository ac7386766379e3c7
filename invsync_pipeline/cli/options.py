"""What the commands share: instant and hour option types, JSON Lines file arguments, and the
settings and outside systems read from the one config path given to `invsync --config`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from invsync_pipeline.resources import ErpResource, MesResource
    from invsync_pipeline.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


class Instant(click.ParamType):
    """An RFC 3339 instant with an offset (Z for UTC), e.g. 2026-11-24T10:00:00Z; an aware datetime in UTC."""

    name = "text"  # the help shows TEXT, as it always has for these options

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not an RFC 3339 instant such as 2026-11-24T10:00:00Z", param, ctx)
        if moment.tzinfo is None:
            self.fail(f"{value!r} has no offset; add Z for UTC, e.g. {value}Z", param, ctx)
        return moment.astimezone(UTC)


class UtcHour(click.ParamType):
    """A whole hour, e.g. 2026-11-24T08:00Z; without an offset it is read as UTC. An aware datetime in UTC."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            ts = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is not an ISO hour such as 2026-11-24T08:00Z", param, ctx)
        ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
        if ts != ts.replace(minute=0, second=0, microsecond=0):
            self.fail(f"{value!r} is not a whole hour; use e.g. {ts:%Y-%m-%dT%H}:00Z", param, ctx)
        return ts


INSTANT = Instant()
UTC_HOUR = UtcHour()


def jsonl_file(fn: F) -> F:
    """The required FILE argument of a command that reads JSON Lines (opened binary; `-` is stdin)."""
    return click.argument("file", type=click.File("rb"))(fn)


def jsonl_lines(file: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of a JSON Lines file with their 1-based line numbers, line ends removed."""
    for lineno, line in enumerate(file, start=1):
        if line.strip():
            yield lineno, line.rstrip(b"\r\n")


def config_path(ctx: click.Context) -> str | None:
    """The config file given to `invsync --config` (or INVSYNC_CONFIG); None: the default."""
    return (ctx.find_root().obj or {}).get("config_path")


def settings(ctx: click.Context) -> Settings:
    """The settings from the command's config file and the environment."""
    from invsync_pipeline.settings import load_settings

    return load_settings(config_path(ctx))


def erp_resource(ctx: click.Context) -> ErpResource:
    """The plant's ERP, on the same config file as the settings."""
    from invsync_pipeline.resources import ErpResource

    return ErpResource(config_path=config_path(ctx))


def mes_resource(ctx: click.Context) -> MesResource:
    """The plant's MES (live and shadow), on the same config file as the settings."""
    from invsync_pipeline.resources import MesResource

    return MesResource(config_path=config_path(ctx))
