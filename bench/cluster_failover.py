"""Cluster failover: a 3-node RabbitMQ cluster loses a node, then another, under a steady stream.

A local cluster of private nodes (scripts/rabbit-cluster, beside the machine's broker) with
quorum queues; the ERP (this process) enqueues events into the outbox at a steady rate, the
outbox relay publishes them, the sync worker applies them to the reference MES, and the drain
stages the ledger tap, each as its own process (the drain as a loop of `invsync staged drain`,
the ledger tap sensor's ticks). A third of the way in, node 1 is killed with kill -9 (every
client starts on node 1, and the queues' leaders live there); it is started again 10 s later.
Two thirds in, once node 1 is back, node 2 is killed, and started again 10 s later.

    .venv/bin/python bench/cluster_failover.py [--events 50000] [--rate 1000]

Prints one JSON line last: {"nodes": 3, "events", "killed", "lost", "applied_twice",
"staged_once", "staged_copies", "seconds"}: lost = events missing from the MES or the staged
log; applied_twice = stock the MES holds beyond one application per event (each moves 1);
staged_once = distinct events staged; staged_copies = staged rows (redeliveries and
re-publishes after a lost confirm give copies; staging keeps one).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sync_lag import TOKEN, event, free_port  # noqa: E402 - the same events and MES as the lag bench

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base(n: int) -> int:
    while True:
        base = random.randint(30000, 45000 - n)
        if all(_free(p) for i in range(n) for p in (base + i, base + 20000 + i)):
            return base


class Cluster:
    def __init__(self, name: str, base: int, nodes_dir: Path):
        self.name, self.base, self.env = name, base, dict(os.environ, INVSYNC_RABBIT_NODES_DIR=str(nodes_dir))

    def run(self, *args: str) -> str:
        done = subprocess.run([str(SCRIPTS / "rabbit-cluster"), args[0], self.name, *args[1:]], env=self.env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"rabbit-cluster {' '.join(args)} failed:\n{done.stderr}")
        return done.stdout.strip()


def applied_count(mes_db: Path) -> int:
    with sqlite3.connect(mes_db, timeout=30) as db:
        return db.execute("SELECT count(*) FROM transactions WHERE transaction_id LIKE 'fo-%'").fetchone()[0]


def staged_ids(staged: Path) -> list[str]:
    ids = []
    for segment in (staged / "events").rglob("*.jsonl"):
        ids += [json.loads(line)["transaction_id"] for line in segment.read_text().splitlines() if line]
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=1000, help="events the ERP enqueues per second")
    parser.add_argument("--down-seconds", type=float, default=10.0, help="how long a killed node stays down")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="invsync-failover-"))
    cluster = Cluster(f"fo-{uuid.uuid4().hex[:6]}", free_base(3), home / "nodes")
    cluster.run("start", str(cluster.base), "3")
    port = free_port()
    env = dict(os.environ, INVSYNC_HOME=str(home), INVSYNC_NAMESPACE=f"fo.{uuid.uuid4().hex[:8]}.",
               INVSYNC_AMQP_URL=cluster.run("urls"), INVSYNC_MES_URL=f"http://127.0.0.1:{port}",
               INVSYNC_MES_TOKEN=TOKEN)  # fmt: skip
    os.environ.update(env)
    from invsync_pipeline.contract import parse_event
    from invsync_pipeline.messaging.outbox import Outbox
    from invsync_pipeline.messaging.topology import apply_topology
    from invsync_pipeline.settings import load_settings

    settings = load_settings()
    assert settings.queue_type == "quorum", settings.queue_type
    apply_topology(settings)
    cli = [sys.executable, "-m", "invsync_pipeline.cli"]
    drain_loop = "\n".join([  # the ledger tap sensor's ticks; a tick that finds no broker is just retried
        "import time", "from invsync_pipeline.cli import main", "while True:",
        "    try:", "        main(['staged', 'drain'], standalone_mode=False)",
        "    except (Exception, SystemExit) as exc:", "        print(exc, flush=True)",
        "    time.sleep(0.5)"])  # fmt: skip
    procs = [
        subprocess.Popen([sys.executable, "-c", "from invsync_pipeline.reference.mes_service import serve; "
                          f"serve('127.0.0.1', {port}, {str(home / 'mes.sqlite')!r}, {TOKEN!r})"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([*cli, "sync-worker", "--log-level", "WARNING"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
        subprocess.Popen([*cli, "outbox", "relay"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-c", drain_loop], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
    ]  # fmt: skip
    killed: list[str] = []
    started = time.monotonic()
    try:
        n, tick, sent = args.events, 0.05, 0
        plan = {n // 3: 1, 2 * n // 3: 2}  # event index -> node to kill there
        back_at: dict[int, float] = {}
        with Outbox(settings) as box:
            t0 = time.monotonic()
            while sent < n:
                due = min(n, int((time.monotonic() - t0) * args.rate) + 1)
                for at, node in list(plan.items()):
                    if due > at and (node == 1 or not back_at):  # node 2 only once node 1 is back
                        cluster.run("kill", str(node))
                        killed.append(f"{cluster.name}-{node}@localhost")
                        back_at[node] = time.monotonic() + args.down_seconds
                        del plan[at]
                for node, when in list(back_at.items()):
                    if time.monotonic() >= when:
                        cluster.run("restart", str(node))
                        del back_at[node]
                if due > sent:
                    box.enqueue([parse_event(event("fo", i)) for i in range(sent, due)])
                    sent = due
                time.sleep(tick)
        for node in list(back_at):
            time.sleep(max(0.0, back_at.pop(node) - time.monotonic()))
            cluster.run("restart", str(node))
        ids = {f"fo-{i:08d}" for i in range(n)}
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if applied_count(home / "mes.sqlite") >= n and ids <= set(staged_ids(settings.staged_dir)):
                break
            time.sleep(1)
        seconds = time.monotonic() - started
        time.sleep(3)  # anything still on its way (copies) lands before counting
        with sqlite3.connect(home / "mes.sqlite") as db:
            applied = {
                r[0] for r in db.execute("SELECT transaction_id FROM transactions WHERE transaction_id LIKE 'fo-%'")
            }
            stock = db.execute("SELECT coalesce(sum(quantity_micro), 0) FROM stock").fetchone()[0] // 10**6
        staged = staged_ids(settings.staged_dir)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run([str(SCRIPTS / "rabbit-cluster"), "stop", cluster.name], env=cluster.env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    figures = {"nodes": 3, "events": n, "killed": killed, "lost": len(ids - applied) + len(ids - set(staged)),
               "applied_twice": stock - len(applied & ids), "staged_once": len(set(staged) & ids),
               "staged_copies": len(staged), "seconds": round(seconds, 1)}  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
