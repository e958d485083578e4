"""Run one artifact across a fleet: one thread per device, each failure kept to its own device.

Every device gets its own plan (own run id) built from the same options, runs the agent through its
transport (local or SSH), and its validated result is stored as soon as it arrives, so a device that
dies, hangs or fills its disk never costs the results of the others.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass
from typing import Any

from edgekit.artifact import Artifact
from edgekit.device.plan import new_run_id
from edgekit.device.results import failed_result, interrupted_result, signal_name
from edgekit.device.transport import Cancellable, ProgressFn, Transport
from edgekit.device.watch import RunWatch
from edgekit.errors import RunInterrupted
from edgekit.store import ResultsStore


@dataclass(frozen=True)
class FleetRecord:
    """One run on one device: its plan and its validated result (also what `edgekit.run` returns)."""

    device: str
    run_id: str
    plan: dict[str, Any]
    result: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.result["status"] == "ok"


INTERRUPT_WAIT_S = 20.0  # after a signal: how long devices get to stop and hand back what they measured


def run_fleet(
    artifact: Artifact,
    devices: Iterable[Any],
    plan_for: Callable[[Any, str], dict[str, Any]],
    transport_for: Callable[[Any], Transport],
    *,
    timeout_s: float | None = None,
    store: ResultsStore | None = None,
    on_done: Callable[[FleetRecord], None] | None = None,
    progress_for: Callable[[Any], ProgressFn] | None = None,
    finish: Callable[[Any, dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None,
    watch_for: Callable[[Any], RunWatch] | None = None,
) -> list[FleetRecord]:
    """Run `artifact` on every device in parallel; return one record per device, in device order.

    `plan_for(device, run_id)` builds the device's plan; `transport_for(device)` gives its `Transport`
    (local or SSH). Ctrl-C (or a signal the CLI turns into one) stops every device at once: running agents
    are stopped in parallel and keep what they measured (`partial`), devices still connecting or pushing
    start nothing (`cancelled`); every record is stored and RunInterrupted is raised with them.
    `progress_for(device)` gives a `(sent, total)` callback for the device's pushes; `watch_for(device)` the
    RunWatch that follows its agent's progress and stops it when it stalls (default: RunWatch()). `finish(device, plan,
    result)` gives the result to keep and store (the host's scores added to it).
    """
    devices = list(devices)
    fleet = _FleetRun(artifact, plan_for, transport_for, timeout_s, store, progress_for, finish)
    fleet.watch_for = watch_for
    records: dict[str, FleetRecord] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, len(devices)), thread_name_prefix="edgekit-device")
    futures = {pool.submit(fleet.one, device): device for device in devices}
    interrupted = False
    try:
        for future in as_completed(futures):
            record = future.result()
            records[record.device] = record
            if on_done:
                on_done(record)
    except KeyboardInterrupt as exc:
        interrupted = True
        signum = getattr(exc, "signum", signal.SIGINT)
        fleet.cancel_all(signum)
        done, _ = wait(futures, timeout=INTERRUPT_WAIT_S)
        for future, device in futures.items():
            if device.name in records:
                continue
            record = (
                future.result() if future in done and future.exception() is None else fleet.abandoned(device, signum)
            )
            records[device.name] = record
            if on_done:
                on_done(record)
        ordered = [records[d.name] for d in devices]
        states = ", ".join(f"{r.device}: {r.result['status']}" for r in ordered)
        raise RunInterrupted(f"stopped by {signal_name(signum)}: {states}", signum=signum, records=ordered) from exc
    finally:
        pool.shutdown(wait=not interrupted, cancel_futures=True)
    return [records[d.name] for d in devices if d.name in records]


class _FleetRun:
    """One fleet run's shared state: the open transports and whether (by which signal) it was cancelled."""

    def __init__(
        self,
        artifact: Artifact,
        plan_for: Callable[[Any, str], dict[str, Any]],
        transport_for: Callable[[Any], Transport],
        timeout_s: float | None,
        store: ResultsStore | None,
        progress_for: Callable[[Any], ProgressFn] | None,
        finish: Callable[[Any, dict[str, Any], dict[str, Any]], dict[str, Any]] | None,
    ) -> None:
        self.artifact, self.plan_for, self.transport_for = artifact, plan_for, transport_for
        self.timeout_s, self.store, self.progress_for, self.finish = timeout_s, store, progress_for, finish
        self.lock = threading.Lock()
        self.open: dict[str, Transport] = {}
        self.plans: dict[str, dict[str, Any]] = {}
        self.stored: set[str] = set()
        self.signum: int | None = None
        self.watch_for: Callable[[Any], RunWatch] | None = None

    def one(self, device: Any) -> FleetRecord:
        run_id = new_run_id()
        plan = self.plan_for(device, run_id)
        with self.lock:
            self.plans[device.name] = plan
        result = (
            self._run(device, plan)
            if self.signum is None
            else interrupted_result(plan, None, self.signum, started=False)
        )
        if self.finish is not None and result["status"] != "cancelled":
            result = self.finish(device, plan, result)
        return self._keep(device, plan, result)

    def _run(self, device: Any, plan: dict[str, Any]) -> dict[str, Any]:
        try:
            with self.transport_for(device) as transport:
                with self.lock:
                    self.open[device.name] = transport
                    late = self.signum
                if late is not None and isinstance(transport, Cancellable):
                    transport.cancel(late)  # the signal came while it connected: it starts nothing
                progress = self.progress_for(device) if self.progress_for else None
                watch = self.watch_for(device) if self.watch_for else None
                return transport.run(self.artifact, plan, timeout_s=self.timeout_s, progress=progress, watch=watch)
        except Exception as exc:  # a transport that could not even start: the device fails alone
            message = str(exc) if device.name in str(exc) else f"{device.name}: {exc}"
            return failed_result(plan, message)
        finally:
            with self.lock:
                self.open.pop(device.name, None)

    def _keep(self, device: Any, plan: dict[str, Any], result: dict[str, Any]) -> FleetRecord:
        record = FleetRecord(device.name, plan["run_id"], plan, result)
        with self.lock:
            if device.name in self.stored:  # the runner gave up on this device already and stored that
                return record
            self.stored.add(device.name)
        if self.store is not None:
            self.store.add(device=device.name, plan=plan, result=result, manifest=self.artifact.manifest,
                           artifact_id=self.artifact.id)  # fmt: skip
        return record

    def cancel_all(self, signum: int) -> None:
        """Stop every device at once: each open transport's agent in a thread of its own."""
        with self.lock:
            self.signum = signum
            transports = [t for t in self.open.values() if isinstance(t, Cancellable)]
        for transport in transports:
            threading.Thread(target=transport.cancel, args=(signum,), daemon=True).start()

    def abandoned(self, device: Any, signum: int) -> FleetRecord:
        """The record of a device that did not stop within INTERRUPT_WAIT_S (its thread is left behind)."""
        with self.lock:
            plan = self.plans.get(device.name) or {"run_id": new_run_id()}
        message = (
            f"{device.name}: did not stop within {INTERRUPT_WAIT_S:g} s of {signal_name(signum)}; its agent may "
            "still be running: check the device"
        )
        return self._keep(device, plan, failed_result(plan, message))
