"""Fixtures: a namespaced topology on the real local broker and a runtime dir under tmp_path.

Each test gets its own INVSYNC_NAMESPACE, so tests never see each other's queues, and its own
INVSYNC_HOME, so staged events, outboxes and DuckDB files are real files that vanish with
tmp_path. A missing broker fails the test with how to start one; it never skips.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator

import pika
import pytest
import yaml

from invsync_pipeline.messaging.connection import BrokerUnavailable, connect
from invsync_pipeline.messaging.topology import Topology, apply_topology, delete_topology
from invsync_pipeline.settings import DEFAULT_CONFIG_PATH, Settings, load_settings
from invsync_pipeline_tests.private_broker import private_broker, private_cluster  # noqa: F401 - fixtures, registered here

# Short retry tiers so a message can walk retry 1 -> 2 -> 3 -> parking inside a test.
TEST_RETRY_DELAYS_MS = [300, 600, 900]


def _broker_reachable(host: str = "127.0.0.1", port: int = 5672) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    """Settings written to a config file and the environment, so subprocesses see them too."""
    monkeypatch.setenv("INVSYNC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # tests use ephemeral Dagster instances
    for name in ("INVSYNC_MES_URL", "INVSYNC_MES_TOKEN", "INVSYNC_ERP_URL", "INVSYNC_RULES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("INVSYNC_NAMESPACE", f"test.{uuid.uuid4().hex[:10]}.")
    config = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    config["topology"]["retry_delays_ms"] = TEST_RETRY_DELAYS_MS
    path = tmp_path / "invsync.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("INVSYNC_CONFIG", str(path))
    return load_settings()


@pytest.fixture
def connection(settings) -> Iterator[pika.BlockingConnection]:
    try:
        conn = connect(settings)
    except BrokerUnavailable as exc:
        pytest.fail(f"{exc}\nThe test command (`make test`) starts a local broker when it is installed.")
    yield conn
    # A long test leaves this connection idle past the heartbeat, and the broker drops it.
    with contextlib.suppress(pika.exceptions.AMQPError):
        if conn.is_open:
            conn.close()


@pytest.fixture
def topology(settings, connection) -> Iterator[Topology]:
    topo = apply_topology(settings, connection)
    yield topo
    conn = connect(settings)
    try:
        delete_topology(settings, conn)
    finally:
        conn.close()
