"""Run one artifact across a fleet: one thread per device, each failure kept to its own device.

Every device gets its own plan (own run id) built from the same options, runs the agent through its
transport (local or SSH), and its validated result is stored as soon as it arrives, so a device that
dies, hangs or fills its disk never costs the results of the others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from edgekit.artifact import Artifact
from edgekit.device.plan import new_run_id
from edgekit.device.results import failed_result
from edgekit.device.transport import Cancellable, ProgressFn, Transport
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


def run_fleet(
    artifact: Artifact,
    devices: Iterable[Any],
    plan_for: Callable[[Any, str], dict[str, Any]],
    transport_for: Callable[[Any], Transport],
    *,
    timeout_s: float = 3600.0,
    store: ResultsStore | None = None,
    on_done: Callable[[FleetRecord], None] | None = None,
    progress_for: Callable[[Any], ProgressFn] | None = None,
    finish: Callable[[Any, dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None,
) -> list[FleetRecord]:
    """Run `artifact` on every device in parallel; return one record per device, in device order.

    `plan_for(device, run_id)` builds the device's plan; `transport_for(device)` gives its `Transport`
    (local or SSH). Ctrl-C cancels: transports that can (`Cancellable`) stop their remote agents, and
    every device still gets a record.
    `progress_for(device)` gives a `(sent, total)` callback for the device's pushes. `finish(device, plan,
    result)` gives the result to keep and store (the host's scores added to it).
    """
    devices = list(devices)
    records: dict[str, FleetRecord] = {}
    open_transports: dict[str, Transport] = {}
    lock = threading.Lock()

    def one(device: Any) -> FleetRecord:
        run_id = new_run_id()
        plan = plan_for(device, run_id)
        try:
            with transport_for(device) as transport:
                with lock:
                    open_transports[device.name] = transport
                progress = progress_for(device) if progress_for else None
                result = transport.run(artifact, plan, timeout_s=timeout_s, progress=progress)
        except Exception as exc:  # a transport that could not even start: the device fails alone
            message = str(exc) if device.name in str(exc) else f"{device.name}: {exc}"
            result = failed_result(plan, message)
        finally:
            with lock:
                open_transports.pop(device.name, None)
        if finish is not None:
            result = finish(device, plan, result)
        record = FleetRecord(device.name, run_id, plan, result)
        if store is not None:
            store.add(device=device.name, plan=plan, result=result, manifest=artifact.manifest, artifact_id=artifact.id)
        return record

    pool = ThreadPoolExecutor(max_workers=max(1, len(devices)), thread_name_prefix="edgekit-device")
    futures = {pool.submit(one, device): device for device in devices}
    try:
        for future in as_completed(futures):
            record = future.result()
            records[record.device] = record
            if on_done:
                on_done(record)
    except KeyboardInterrupt:
        with lock:
            for transport in open_transports.values():
                if isinstance(transport, Cancellable):
                    transport.cancel()
        for future, device in futures.items():
            if future.done() and not future.cancelled() and future.exception() is None:
                records[device.name] = future.result()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [records[d.name] for d in devices if d.name in records]
