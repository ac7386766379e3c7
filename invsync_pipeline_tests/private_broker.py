"""A private RabbitMQ node that a test may stop, kill and start again (scripts/rabbit-node).

The machine's broker at 5672 is shared by every test and engineer and is never stopped; a test
that needs a broker outage gets its own node beside it, on free ports chosen at run time, with
its data under the test's tmp dir. ``PrivateNode`` also works without the fixture, for a test
that needs several nodes (a cluster).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "rabbit-node"
# The machine's broker and epmd: a private node never takes these.
RESERVED_PORTS = frozenset({4369, 5672, 15672, 15692, 25672})
INSTALL_HINT = (
    "rabbitmq-server is not installed, and tests that stop a broker need it to run a private node "
    "(scripts/rabbit-node). Install it: Debian/Ubuntu `apt-get install rabbitmq-server`, macOS "
    "`brew install rabbitmq`; or set INVSYNC_RABBITMQ_SBIN to the sbin directory of RabbitMQ's "
    "generic-unix package."
)


class PrivateNodeError(RuntimeError):
    """scripts/rabbit-node failed; the message carries its output (and the node's log tail)."""


def rabbitmq_installed() -> bool:
    if os.environ.get("INVSYNC_RABBITMQ_SBIN"):
        return True
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/lib/rabbitmq/bin", "/usr/local/sbin"])
    return shutil.which("rabbitmq-server", path=path) is not None


def free_port() -> int:
    """A TCP port nothing listens on now (the OS's pick), never one of the machine's broker."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


class PrivateNode:
    """One node ``{name}@localhost``: AMQP on 127.0.0.1:``port``, Erlang distribution on
    ``dist_port``, files under ``base_dir/name`` (the script's default when None)."""

    def __init__(self, name: str, port: int, dist_port: int, base_dir: Path | None = None) -> None:
        self.name = name
        self.port = port
        self.dist_port = dist_port
        self.base_dir = base_dir

    @property
    def node(self) -> str:
        """The Erlang node name, for ``rabbitmqctl -n``."""
        return f"{self.name}@localhost"

    @property
    def url(self) -> str:
        """The AMQP URL for pika (guest may log in: the connection comes from loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def start(self) -> None:
        """Start (or start again, with its data); returns once it accepts AMQP."""
        self._run("start", str(self.port), str(self.dist_port))

    def stop(self) -> None:
        """Graceful stop: clients see their connections closed by the broker."""
        self._run("stop")

    def kill(self) -> None:
        """kill -9 of this node's beam process: a crash, no goodbye to the clients."""
        self._run("kill")

    def wait(self) -> None:
        """Until it accepts AMQP again."""
        self._run("wait")

    def is_running(self) -> bool:
        return self._run("status", check=False).returncode == 0

    def _run(self, command: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        if self.base_dir is not None:
            env["INVSYNC_RABBIT_NODES_DIR"] = str(self.base_dir)
        result = subprocess.run(
            [str(SCRIPT), command, self.name, *args], env=env, capture_output=True, text=True, timeout=180
        )
        if check and result.returncode != 0:
            raise PrivateNodeError(
                f"scripts/rabbit-node {command} {self.name} failed ({result.returncode}):\n"
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    def __repr__(self) -> str:
        return f"PrivateNode({self.node}, amqp 127.0.0.1:{self.port}, dist {self.dist_port})"


@pytest.fixture
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateNode]:
    """A started private node on free ports, killed after the test however the test ends."""
    if not rabbitmq_installed():
        pytest.fail(INSTALL_HINT)
    node = PrivateNode(
        f"invsync-test-{uuid.uuid4().hex[:8]}",
        free_port(),
        free_port(),
        base_dir=tmp_path_factory.mktemp("rabbit-nodes"),
    )
    try:
        node.start()
    except PrivateNodeError as exc:
        with contextlib.suppress(PrivateNodeError):
            node.kill()
        pytest.fail(str(exc))
    try:
        yield node
    finally:
        # Nothing of it may outlive the test: kill (instant; its data is thrown away anyway).
        node.kill()


CLUSTER_SCRIPT = SCRIPT.with_name("rabbit-cluster")


class PrivateCluster:
    """``n`` private nodes joined as a cluster (scripts/rabbit-cluster): node i (1-based) takes
    AMQP on ``base_port + i - 1``."""

    def __init__(self, name: str, base_port: int, base_dir: Path, n: int = 3) -> None:
        self.name, self.base_port, self.base_dir, self.n = name, base_port, base_dir, n

    @property
    def urls(self) -> str:
        """INVSYNC_AMQP_URL for the whole cluster: its nodes, comma-separated, node 1 first."""
        return ",".join(f"amqp://guest:guest@127.0.0.1:{self.base_port + i}/%2F" for i in range(self.n))

    def start(self) -> None:
        self._run("start", str(self.base_port), str(self.n))

    def kill(self, i: int) -> None:
        self._run("kill", str(i))

    def restart(self, i: int) -> None:
        self._run("restart", str(i))

    def running_nodes(self) -> str:
        return self._run("status", check=False).stdout

    def kill_all(self) -> None:
        for i in range(1, self.n + 1):
            with contextlib.suppress(PrivateNodeError):
                self.kill(i)

    def _run(self, command: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, INVSYNC_RABBIT_NODES_DIR=str(self.base_dir))
        result = subprocess.run([str(CLUSTER_SCRIPT), command, self.name, *args], env=env, capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        if check and result.returncode != 0:
            raise PrivateNodeError(
                f"scripts/rabbit-cluster {command} {self.name} failed ({result.returncode}):\n"
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result


def _free_run(n: int) -> int:
    """A base port such that base..base+n-1 and their distribution ports (+20000) are all free."""
    import random

    while True:
        base = random.randint(30000, 45000 - n)
        ports = [base + i for i in range(n)] + [base + 20000 + i for i in range(n)]
        if RESERVED_PORTS.isdisjoint(ports) and all(_port_free(p) for p in ports):
            return base


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def private_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateCluster]:
    """A started 3-node cluster of private nodes, killed after the test however it ends."""
    if not rabbitmq_installed():
        pytest.fail(INSTALL_HINT)
    cluster = PrivateCluster(f"invsync-cl-{uuid.uuid4().hex[:6]}", _free_run(3), tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
    except PrivateNodeError as exc:
        cluster.kill_all()
        pytest.fail(str(exc))
    try:
        yield cluster
    finally:
        cluster.kill_all()
