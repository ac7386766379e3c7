"""Several sync workers on the same queues: `invsync sync-worker --processes N`.

Each worker is a process of its own (`invsync sync-worker`, one pika connection, its own MES
calls), so N workers use N cores. They share the plant queues, the sync log (SQLite, WAL: a row
per transaction, the first outcome kept) and the MES's idempotency by transaction_id, which is
what keeps the effect exactly-once among them: a message a dead worker had not acked goes to
another one, which finds it applied (docs/runbook.md, "Several workers").

The supervisor restarts a worker that dies (a crash, `kill -9`, the OOM killer) after a
back-off, and gives up, stopping the others, when one keeps dying within seconds of its start:
that is a configuration error (a wrong token, an unreachable MES) no restart can fix, and its
own error above says which. SIGTERM or SIGINT is passed on to every worker, which finishes its
in-flight work and acks; the supervisor then prints the workers' figures added up.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("invsync.sync")

QUICK_DEATH_S = 10.0  # a worker that dies this soon after its start did not get going at all
GIVE_UP_AFTER = 5  # quick deaths in a row of one worker slot


class WorkersFailed(RuntimeError):
    """A worker keeps dying at start; the others were stopped."""


@dataclass
class _Slot:
    number: int
    proc: subprocess.Popen | None = None
    started: float = 0.0
    quick_deaths: int = 0
    restarts: int = 0
    stats: list[dict[str, Any]] = field(default_factory=list)  # one per run of this slot that ended cleanly


class Supervisor:
    """Runs ``processes`` copies of ``command`` (a worker's argv) and keeps them running."""

    def __init__(self, command: list[str], processes: int, *, env: dict[str, str] | None = None):
        self.command, self.processes, self.env = command, processes, env
        self.slots = [_Slot(i) for i in range(processes)]
        self._stop = threading.Event()
        self._readers: list[threading.Thread] = []

    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def pids(self) -> list[int]:
        return [slot.proc.pid for slot in self.slots if slot.proc is not None and slot.proc.poll() is None]

    def run(self) -> dict[str, Any]:
        """Until stopped (or every worker ended on its own, as with --seconds): the figures of
        all workers added up, with ``workers`` and ``restarts``."""
        for slot in self.slots:
            self._start(slot)
        try:
            while not self._stop.wait(0.2):
                if all(self._check(slot) for slot in self.slots):
                    break  # every worker finished its run (--seconds)
        finally:
            self._stop_all()
        return self.totals()

    def totals(self) -> dict[str, Any]:
        total: dict[str, Any] = {"workers": self.processes, "restarts": sum(s.restarts for s in self.slots)}
        for slot in self.slots:
            for stats in slot.stats:
                for key, value in stats.items():
                    if isinstance(value, dict):
                        merged = total.setdefault(key, {})
                        for k, v in value.items():
                            merged[k] = merged.get(k, 0) + v
                    elif isinstance(value, int | float):
                        total[key] = total.get(key, 0) + value
        return total

    # --- one slot -----------------------------------------------------------------------------
    def _start(self, slot: _Slot) -> None:
        slot.proc = subprocess.Popen(self.command, env=self.env, stdout=subprocess.PIPE, text=True)
        slot.started = time.monotonic()
        reader = threading.Thread(target=self._read_stats, args=(slot, slot.proc), daemon=True)
        reader.start()
        self._readers.append(reader)
        log.info("worker %d started (pid %d)", slot.number, slot.proc.pid)

    def _read_stats(self, slot: _Slot, proc: subprocess.Popen) -> None:
        """A worker prints its figures as one JSON line when it ends; anything else goes on."""
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                stats = json.loads(line)
            except ValueError:
                sys.stdout.write(line)
                continue
            if isinstance(stats, dict):
                slot.stats.append(stats)

    def _check(self, slot: _Slot) -> bool:
        """True once the slot's worker ended on its own with success; restarts it if it died."""
        assert slot.proc is not None
        code = slot.proc.poll()
        if code is None:
            return False
        if code == 0:
            return True
        lived = time.monotonic() - slot.started
        slot.quick_deaths = slot.quick_deaths + 1 if lived < QUICK_DEATH_S else 0
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        if slot.quick_deaths >= GIVE_UP_AFTER:
            self._stop.set()
            raise WorkersFailed(
                f"worker {slot.number} died {slot.quick_deaths} times within {QUICK_DEATH_S:.0f} s of its start "
                f"(last: {how}); its error is above. Stopped the other workers"
            )
        backoff = min(2 ** max(slot.quick_deaths - 1, 0), 30) if slot.quick_deaths else 0
        log.warning("worker %d (pid %d) died after %.0f s (%s); restarting it%s", slot.number, slot.proc.pid, lived,
                    how, f" in {backoff} s" if backoff else "")  # fmt: skip
        if backoff and self._stop.wait(backoff):
            return True
        slot.restarts += 1
        self._start(slot)
        return False

    def _stop_all(self) -> None:
        running = [slot.proc for slot in self.slots if slot.proc is not None and slot.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)  # each finishes its in-flight work and acks
        deadline = time.monotonic() + 60
        for proc in running:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop within 60 s of SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait()
        for reader in self._readers:
            reader.join(5)
