"""`invsync contract`: the v1 message contract for other teams, and checking a file against it."""

from __future__ import annotations

import json
import sys
from typing import IO

import click

from invsync_pipeline.cli.options import jsonl_file, jsonl_lines, settings


@click.group()
def contract() -> None:
    """The v1 message contract."""


@contract.command("schema")
def contract_schema() -> None:
    """Print the JSON Schema of contract v1 for other teams."""
    from invsync_pipeline.contract import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@contract.command("validate")
@jsonl_file
@click.pass_context
def contract_validate(ctx: click.Context, file: IO[bytes]) -> None:
    """Check a JSON Lines file of events; print each bad line with its reason."""
    from invsync_pipeline.contract import ContractLimits, try_parse_event

    limits = ContractLimits.from_settings(settings(ctx))
    bad = 0
    total = 0
    for lineno, line in jsonl_lines(file):
        total += 1
        result = try_parse_event(line, limits=limits)
        if not hasattr(result, "transaction_id"):
            bad += 1
            click.echo(f"line {lineno}: {result}")
    click.echo(f"{total - bad} valid, {bad} invalid")
    sys.exit(1 if bad else 0)
