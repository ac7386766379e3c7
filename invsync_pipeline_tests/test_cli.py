"""The `invsync` command as a whole: one way of reporting an error, shared instant options, a light --help."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import click
import pytest
import yaml
from click.testing import CliRunner

from invsync_pipeline.cli import main
from invsync_pipeline.cli.options import INSTANT, UTC_HOUR


def test_a_project_error_is_one_line_on_stderr_and_exit_code_2(tmp_path, monkeypatch):
    path = tmp_path / "invsync.yaml"
    path.write_text(yaml.safe_dump({"mes_token": "s3cret"}))
    monkeypatch.delenv("INVSYNC_MES_TOKEN", raising=False)

    result = CliRunner().invoke(main, ["--config", str(path), "topology", "export"])

    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    assert result.stderr.startswith("invsync: ") and "INVSYNC_MES_TOKEN" in result.stderr
    assert "Traceback" not in result.output


def test_a_refusal_of_the_command_itself_keeps_its_exit_code(settings):
    result = CliRunner().invoke(main, ["cutover", "go-live"])

    assert result.exit_code == 1
    assert result.stderr.startswith("invsync: not going live: no warehouse at ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-24T10:00:00Z", datetime(2026, 11, 24, 10, tzinfo=UTC)),
        ("2026-11-24T12:30:00+02:00", datetime(2026, 11, 24, 10, 30, tzinfo=UTC)),
    ],
)
def test_an_instant_option_is_an_aware_time_in_utc(text, expected):
    moment = INSTANT.convert(text, None, None)

    assert moment == expected and moment.tzinfo == UTC


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("2026-11-24T10:00:00", "has no offset; add Z for UTC, e.g. 2026-11-24T10:00:00Z"),
        ("yesterday", "is not an RFC 3339 instant such as 2026-11-24T10:00:00Z"),
    ],
)
def test_an_instant_option_without_an_offset_or_a_date_is_refused_saying_what_to_write(text, says):
    with pytest.raises(click.BadParameter, match=says):
        INSTANT.convert(text, None, None)


def test_an_hour_option_reads_no_offset_as_utc_and_refuses_a_part_hour():
    assert UTC_HOUR.convert("2026-11-24T08:00", None, None) == datetime(2026, 11, 24, 8, tzinfo=UTC)
    with pytest.raises(click.BadParameter, match="not a whole hour; use e.g. 2026-11-24T08:00Z"):
        UTC_HOUR.convert("2026-11-24T08:30Z", None, None)


def test_help_loads_neither_the_broker_client_nor_the_warehouse():
    code = (
        "import sys\n"
        "from invsync_pipeline.cli import main\n"
        "try:\n    main(['cutover', 'go-live', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pika', 'duckdb', 'pandas', 'dagster'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert done.stdout.strip().splitlines()[-1] == "[]"
