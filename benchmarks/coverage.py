"""Coverage matrix: every zoo model (benchmarks/coverage_zoo.py, 24 architectures) x every target/precision cell,
built through edgekit's public API, beside what a user would pick instead (the anchors), measured in the same run.

Cells: x86-ort fp32/int8, android-tflite fp32/fp16/int8, ios-coreml fp32/fp16/w8/w8a8, jetson-trt fp16/int8.
Quantized cells get a QuantSpec from `edgekit.calibration.calibrate` on 8 real probe images (photo crops, rendered
text lines or document pages, seeded) in the target's own scheme; the calibration's seconds are shown apart.
ios-coreml builds from the torch module where the model has one (Model.from the cached ONNX + its module, so a
QuantSpec fits both routes) and from the ONNX otherwise; the manifest's route is recorded.

Each cell: ok / refused (a clean EdgekitError: its first line) / crash (anything else, a hang past --timeout or a
dead process: the last line of the traceback; a crash is a defect). The validation figure is read from the
artifact manifest's `validation` block, whatever keys it has (SQNR dB, max abs error relative to the reference
range, top-1 agreement, passed), else ios-coreml's `replay_max_abs_error`.

Anchors, on the same models:
- onnx2tf (fp32 TFLite from the same ONNX file, its default settings plus a fixed input shape `-ois`), in its own
  venv (~/.cache/edgekit/onnx2tf-venv, Python 3.12, `pip install onnx2tf[tensorflow]`, created on first use),
  run as a subprocess; its .tflite is checked against ONNX Runtime FP32 on the probe images with our LiteRT.
- coremltools' direct conversion of the traced torch module (`ct.convert`, mlprogram, fp32 and fp16). Core ML
  cannot predict on Linux: such a cell is "converted", unvalidated. Models without a torch module count as
  not converted (coremltools 9 has no ONNX frontend).

Each model's cells run in one worker process (imports paid once); a cell that crashes the process or runs past
--timeout is recorded and the worker restarts at the next cell, so no cell can end the run.

Needs beyond edgekit[all]: a `bench` extra would be torch, torchvision, timm, ultralytics, rapidocr (see
coverage_zoo's torchvision shim), plus Python 3.12 for the onnx2tf anchor's venv.

    .venv/bin/python benchmarks/coverage.py [--quick] [--models a,b] [--cells x86-ort,ios-coreml:fp16,anchors]
        [--timeout 600] [--json coverage.json] [--resume]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import coverage_anchors as anchors
import coverage_zoo as zoo

CELLS = [
    "x86-ort:fp32",
    "x86-ort:int8",
    "android-tflite:fp32",
    "android-tflite:fp16",
    "android-tflite:int8",
    "ios-coreml:fp32",
    "ios-coreml:fp16",
    "ios-coreml:w8",
    "ios-coreml:w8a8",
    "jetson-trt:fp16",
    "jetson-trt:int8",
]
ANCHORS = ["onnx2tf:fp32", "coremltools:fp32", "coremltools:fp16"]
# anchor cell -> our cell it is compared with
ANCHOR_OF = {
    "onnx2tf:fp32": "android-tflite:fp32",
    "coremltools:fp32": "ios-coreml:fp32",
    "coremltools:fp16": "ios-coreml:fp16",
}
GREEN = ("ok", "converted")
TRT_BUILD = "10.3"  # JetPack 6.1+; the 8.5 parser's refusals (JetPack 5) are reported beside
PROBES = anchors.PROBES
FP32_BUDGET = anchors.FP32_BUDGET


# -- one cell, inside a worker ----------------------------------------------------------------------------------


class Worker:
    """Runs cells of one model: the Model (ONNX, and ONNX + torch module for ios-coreml), QuantSpecs per scheme."""

    def __init__(self, name: str) -> None:
        self.entry = zoo.ZOO[name]
        self.probes = zoo.probe_folder(self.entry.probes, PROBES)
        self.model = zoo.load(self.entry)
        self._with_torch: Any = None
        self._specs: dict[tuple[str, str], tuple[Any, float]] = {}

    def with_torch(self) -> Any:
        if self._with_torch is None:
            self._with_torch = zoo.load(self.entry, with_torch=True) if self.entry.has_torch else self.model
        return self._with_torch

    def run(self, cell: str) -> dict[str, Any]:
        tool, precision = cell.split(":")
        start = time.perf_counter()
        result: dict[str, Any] = {"cell": cell}
        try:
            if tool == "onnx2tf":
                result.update(anchors.onnx2tf_cell(self))
            elif tool == "coremltools":
                result.update(anchors.coremltools_cell(self, precision))
            else:
                result.update(self.ours(tool, precision))
        except Exception as exc:  # sorted into refused (EdgekitError) and crash (anything else: a defect)
            result.update(_failure(exc))
        result["seconds"] = round(time.perf_counter() - start - result.get("calibration_s", 0.0), 2)
        return result

    def ours(self, target_name: str, precision: str) -> dict[str, Any]:
        from edgekit.api import build
        from edgekit.targets import get_target

        target = get_target(target_name)
        model = self.with_torch() if target_name == "ios-coreml" else self.model
        spec, calibration_s = None, 0.0
        if precision in target.quantized_precisions:
            spec, calibration_s = self.spec(target.activation_scheme, target.weight_scheme)
        # jetson-trt builds for JetPack 6.1+ (TensorRT 10.3); what JetPack 5's 8.5 parser would refuse is noted
        options = {"trt_version": TRT_BUILD} if target_name == "jetson-trt" else None
        older = target.model_refusals(model, precision) if target_name == "jetson-trt" else []
        with tempfile.TemporaryDirectory(dir=anchors.work_dir()) as out:
            artifact = build(
                model,
                target_name,
                Path(out) / "artifact",
                precision=precision,
                quant_spec=spec,
                calib=str(self.probes),  # not calibrated again: the build validates on these images
                options=options,
            )
            manifest = artifact.manifest
        figure, passed = validation_figure(manifest, precision)
        route = (manifest.get("coreml") or {}).get("route")
        return {
            "status": "ok",
            "figure": figure,
            "passed": passed,
            "validation": manifest.get("validation"),
            "route": route,
            "trt_8_5_refuses": sorted({r.op for r in older}),
            "calibration_s": round(calibration_s, 2),
        }

    def spec(self, activations: str, weights: str) -> tuple[Any, float]:
        """The model's QuantSpec in one scheme, calibrated once per worker on the probe images."""
        from edgekit.calibration.calibrate import calibrate

        key = (activations, weights)
        if key not in self._specs:
            start = time.perf_counter()
            spec = calibrate(
                self.model, str(self.probes), activations=activations, weights=weights, progress=False
            ).spec
            self._specs[key] = (spec, time.perf_counter() - start)
            return self._specs[key]
        return self._specs[key][0], 0.0

    def probe_inputs(self) -> list[Any]:
        import cv2

        from edgekit.runtime.preprocess import preprocess

        return [preprocess(cv2.imread(str(p)), self.model.preprocess) for p in sorted(self.probes.glob("*.png"))]


def _failure(exc: BaseException) -> dict[str, Any]:
    """refused (an EdgekitError: its first line, and the lines it introduces when it ends in ':') or crash (the last
    line of the traceback and where it was raised); `detail` keeps the whole message."""
    from edgekit.errors import EdgekitError

    text = str(exc).strip()
    if isinstance(exc, EdgekitError):
        lines = [line.strip() for line in text.splitlines() if line.strip()] or [""]
        message = lines[0] + (" " + "; ".join(lines[1:4]) if lines[0].endswith(":") else "")
        return {"status": "refused", "message": f"{type(exc).__name__}: {message}"[:400], "detail": text[:2000]}
    last = traceback.format_exception_only(type(exc), exc)[-1].strip().splitlines()[0]
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return {"status": "crash", "message": (last + where)[:400], "detail": text[:2000]}


def validation_figure(manifest: dict[str, Any], precision: str = "") -> tuple[str, bool | None]:
    """(short text, passed or None) from the manifest's `validation` block, whatever keys it has. Without a verdict
    there, an fp32 cell is judged by the issue's budget (max abs error <= 1e-4 of the reference range)."""
    block = manifest.get("validation")
    if not isinstance(block, dict):
        replay = (manifest.get("coreml") or {}).get("replay_max_abs_error")
        return (f"replay {replay:.1e}" if isinstance(replay, (int, float)) else "-"), None
    passed = _find(block, ("passed", "ok", "within_budget"))
    sqnr = _find(block, ("sqnr_db", "sqnr", "min_sqnr_db"))
    error = _find(block, ("max_abs_error", "max_abs_err"))
    scale = _find(block, ("reference_abs_max", "reference_range", "output_range"))
    top1 = _find(block, ("top1_agreement", "top1"))
    if not isinstance(passed, bool) and precision == "fp32" and _number(error) and _number(scale) and scale > 0:
        passed = error / scale <= FP32_BUDGET
    if isinstance(sqnr, (int, float)):
        text = f"{sqnr:.1f}dB"
    elif _number(error) and _number(scale) and scale > 0:
        text = f"rel {error / scale:.1e}"
    elif isinstance(error, (int, float)):
        text = f"abs {error:.1e}"
    elif isinstance(top1, (int, float)):
        text = f"top1 {top1:.2f}"
    else:
        text = "?"
    return text, passed if isinstance(passed, bool) else None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _find(block: Any, keys: tuple[str, ...]) -> Any:
    """The first of `keys` in `block`, searching nested dicts (and the first dict of lists) breadth-first."""
    queue = [block]
    while queue:
        item = queue.pop(0)
        if isinstance(item, dict):
            for key in keys:
                if key in item and not isinstance(item[key], (dict, list)):
                    return item[key]
            queue.extend(v for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            queue.extend(v for v in item if isinstance(v, dict))
    return None


def worker_main(name: str, cells: list[str]) -> None:
    """Print one JSON line per event: loaded, then start/done per cell."""
    start = time.perf_counter()
    try:
        worker = Worker(name)
    except Exception as exc:
        _emit({"event": "load_failed", **_failure(exc)})
        return
    _emit({"event": "loaded", "seconds": round(time.perf_counter() - start, 2)})
    for cell in cells:
        _emit({"event": "start", "cell": cell})
        _emit({"event": "done", **worker.run(cell)})


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record, default=str) + "\n")
    sys.stdout.flush()


# -- the parent: workers with timeouts --------------------------------------------------------------------------


def run_model(name: str, cells: list[str], timeout: float, log: Path, report: Any = None) -> list[dict[str, Any]]:
    """Every cell of one model, in workers; a crash or a hang ends only the cell it happened in. `report` is called
    with each cell's result as it arrives."""
    results: list[dict[str, Any]] = []
    left = list(cells)
    while left:
        done = _one_worker(name, left, timeout, log, report or (lambda record: None))
        results += done
        finished = {r["cell"] for r in done}
        left = [c for c in left if c not in finished]
    return results


def _one_worker(name: str, cells: list[str], timeout: float, log: Path, report: Any) -> list[dict[str, Any]]:
    command = [sys.executable, __file__, "--worker", name, "--cells", ",".join(cells)]
    with open(log, "a") as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, start_new_session=True)
        results: list[dict[str, Any]] = []
        current, deadline = None, time.monotonic() + timeout * 2  # loading may export the model first
        while True:
            line = _read_line(process, deadline)
            if line is None:  # hung
                os.killpg(process.pid, 9)
                process.wait()
                return [*results, *_lost(cells, results, current, f"hang: no result within {timeout:.0f} s")]
            if line == "":  # the process ended
                process.wait()
                if len(results) == len(cells):
                    return results
                why = f"process died (rc {process.returncode}): {_last_line(log)}"
                return [*results, *_lost(cells, results, current, why)]
            record = json.loads(line)
            event = record.pop("event")
            if event == "load_failed":
                process.wait()
                return [{"cell": c, **record, "message": "model did not load: " + record["message"]} for c in cells]
            if event in ("loaded", "start"):
                current, deadline = record.get("cell"), time.monotonic() + timeout
            elif event == "done":
                results.append(record)
                report(record)
                current = None


def _read_line(process: subprocess.Popen, deadline: float) -> str | None:
    """The worker's next stdout line, "" at its end, None past the deadline."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([process.stdout], [], [], min(left, 5.0))
        if ready:
            line = process.stdout.readline()
            if line == "" or line.startswith("{"):
                return line


def _lost(cells: list[str], results: list[dict], current: str | None, why: str) -> list[dict[str, Any]]:
    """The cell that was running when the worker died or hung is a crash; with none running (died while loading),
    every cell left is."""
    finished = {r["cell"] for r in results}
    victims = [current] if current else [c for c in cells if c not in finished]
    return [{"cell": c, "status": "crash", "message": why, "seconds": None} for c in victims]


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


# -- report -----------------------------------------------------------------------------------------------------


def cpu_isa() -> str:
    from detection import cpu_isa as isa

    return isa()


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = ["edgekit", "onnx", "onnxruntime", "tensorflow", "ai-edge-litert", "coremltools", "torch", "timm",
             "torchvision", "ultralytics"]  # fmt: skip
    found = {}
    for name in names:
        found[name] = "-"
        for distribution in (name, f"{name}-cpu"):
            try:
                found[name] = version(distribution)
                break
            except PackageNotFoundError:
                continue
    onnx2tf = anchors.ONNX2TF_VENV / "bin" / "python"
    if onnx2tf.exists():
        probe = "import importlib.metadata as m; print(m.version('onnx2tf'), m.version('tensorflow'))"
        done = subprocess.run([str(onnx2tf), "-c", probe], capture_output=True, text=True)
        found["onnx2tf (its venv: onnx2tf, tensorflow)"] = done.stdout.strip() or "-"
    return found


def cell_text(result: dict[str, Any] | None) -> str:
    if result is None:
        return ""
    status = result["status"]
    if status not in GREEN:
        return status
    seconds = f" {result['seconds']:.0f}s" if result.get("seconds") is not None else ""
    mark = "!" if result.get("passed") is False else ""
    return f"{status}{mark} {result.get('figure', '-')}{seconds}"


def print_matrix(results: dict[str, dict[str, dict]], models: list[str], cells: list[str]) -> None:
    from _common import print_table

    by_target: dict[str, list[str]] = defaultdict(list)
    for cell in cells:
        by_target[cell.split(":")[0]].append(cell)
    for target, columns in by_target.items():
        rows = []
        for name in models:
            entry = zoo.ZOO[name]
            row = [name, "real" if entry.real_weights else "random"]
            row += [cell_text(results.get(name, {}).get(c)) for c in columns]
            if target == "ios-coreml":
                routes = {r.get("route") for r in results.get(name, {}).values() if r.get("route")}
                row.append("; ".join(sorted(routes)) or "-")
            if target == "jetson-trt":
                older = {op for r in results.get(name, {}).values() for op in r.get("trt_8_5_refuses", [])}
                row.append(", ".join(sorted(older)) or "-")
            rows.append(row)
        extra = {"ios-coreml": ["route"], "jetson-trt": [f"built for TensorRT {TRT_BUILD}; 8.5 (JetPack 5) refuses"]}
        header = ["model", "weights", *[c.split(":")[1] for c in columns], *extra.get(target, [])]
        print_table(f"{target}: status, validation figure, build s ('!' = outside the manifest's budget)", header, rows)


def summary(results: dict[str, dict[str, dict]], models: list[str], cells: list[str]) -> dict[str, Any]:
    """Green counts per target and for the anchors, each anchor against our matching cells on the same models."""
    out: dict[str, Any] = {"targets": {}, "anchors": {}}

    def found(cell_names: list[str], names: list[str]) -> list[dict]:
        got = [results.get(n, {}).get(c) for n in names for c in cell_names]
        return [r for r in got if r is not None]

    def count(cell_names: list[str], names: list[str]) -> tuple[int, int]:
        got = found(cell_names, names)
        return sum(r["status"] in GREEN for r in got), len(got)

    def within_budget(cell_names: list[str], names: list[str]) -> int:
        """Built and inside the manifest's validation budget (fp32 max abs, fp16 40 dB, int8 20 dB / top-1)."""
        return sum(r["status"] in GREEN and r.get("passed") is not False for r in found(cell_names, names))

    ours = [c for c in cells if c.split(":")[0] not in ("onnx2tf", "coremltools")]
    for target in [*dict.fromkeys(c.split(":")[0] for c in ours), "all"]:
        chosen = ours if target == "all" else [c for c in ours if c.startswith(target + ":")]
        green, total = count(chosen, models)
        real = [n for n in models if zoo.ZOO[n].real_weights]
        out["targets"][target] = {
            "green": green, "total": total, "within_budget": within_budget(chosen, models),
            "real_weights_within_budget": within_budget(chosen, real), "real_weights_total": len(found(chosen, real)),
        }  # fmt: skip
    for anchor in [c for c in cells if c in ANCHOR_OF]:
        green, total = count([anchor], models)
        mine, mine_total = count([ANCHOR_OF[anchor]], models)
        torch_models = [n for n in models if zoo.ZOO[n].has_torch]
        out["anchors"][anchor] = {
            "green": green, "total": total, "ours_cell": ANCHOR_OF[anchor], "ours_green": mine,
            "ours_total": mine_total, "torch_models_green": count([anchor], torch_models)[0],
            "ours_torch_models_green": count([ANCHOR_OF[anchor]], torch_models)[0], "torch_models": len(torch_models),
        }  # fmt: skip
    return out


def _percent(green: int, total: int) -> str:
    return f"{green}/{total} ({100 * green / total:.0f} %)" if total else "0/0"


def print_summary(figures: dict[str, Any]) -> None:
    from _common import print_table

    rows = [
        [
            t,
            _percent(v["green"], v["total"]),
            _percent(v["within_budget"], v["total"]),
            _percent(v["real_weights_within_budget"], v["real_weights_total"]),
        ]
        for t, v in figures["targets"].items()
    ]
    print_table(
        "cells per target: green = built (and ran where it can run here); within budget = its validation passed "
        "(random weights make int8 figures meaningless: the real-weight models' column is the one to read)",
        ["target", "green", "within budget", "real weights: within budget"],
        rows,
    )
    rows = []
    for anchor, v in figures["anchors"].items():
        ratio = f"{v['ours_green'] / v['green']:.2f}x" if v["green"] else "inf"
        torch_only = f"{v['ours_torch_models_green']} vs {v['torch_models_green']} of {v['torch_models']}"
        ours = _percent(v["ours_green"], v["ours_total"])
        rows.append([anchor, _percent(v["green"], v["total"]), v["ours_cell"], ours, ratio, torch_only])
    print_table(
        "anchors on the same models (green: onnx2tf = converted and ran in LiteRT; coremltools = converted)",
        [
            "anchor",
            "anchor green",
            "our cell",
            "our green",
            "ours/anchor",
            "models with a torch module: ours vs anchor",
        ],
        rows,
    )


def print_failures(results: dict[str, dict[str, dict]]) -> None:
    from _common import print_table

    rows = [
        [name, cell, r["status"], r.get("message", "")[:150]]
        for name, cells in results.items()
        for cell, r in cells.items()
        if r["status"] not in GREEN and r["status"] != "n/a"
    ]
    rows.sort(key=lambda row: (row[1], row[2], row[3]))
    print_table("cells not green (model, cell, status, first line of the refusal / last line of the crash)",
                ["model", "cell", "status", "message"], rows)  # fmt: skip


# -- main -------------------------------------------------------------------------------------------------------


def select_cells(spec: str | None) -> list[str]:
    every = CELLS + ANCHORS
    if not spec:
        return every
    chosen = []
    for part in spec.split(","):
        part = part.strip()
        if part == "anchors":
            chosen += ANCHORS
        elif part == "ours":
            chosen += CELLS
        else:
            matched = [c for c in every if c == part or c.split(":")[0] == part]
            if not matched:
                raise SystemExit(f"unknown cell {part!r}; cells: {', '.join(every)} (or a target name, ours, anchors)")
            chosen += matched
    return list(dict.fromkeys(chosen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated zoo names (default: all; --list shows them)")
    parser.add_argument("--cells", help="comma-separated cells or target names, 'ours', 'anchors' (default: all)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one cell may take (default 600)")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(zoo.QUICK)}")
    parser.add_argument("--json", type=Path, help="write the results here (rewritten after each model)")
    parser.add_argument("--resume", action="store_true", help="keep the cells already in --json, run the rest")
    parser.add_argument("--list", action="store_true", help="list the zoo and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cells = select_cells(args.cells)
    if args.worker:
        worker_main(args.worker, cells)
        return
    if args.list:
        for entry in zoo.ZOO.values():
            weights = "real" if entry.real_weights else "random"
            print(f"{entry.name:20} {entry.task:8} {entry.size} {weights:6} torch={entry.has_torch} {entry.source}")
        return
    models = zoo.QUICK if args.quick else (args.models.split(",") if args.models else list(zoo.ZOO))
    unknown = [m for m in models if m not in zoo.ZOO]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; --list shows the zoo")
    run(models, cells, args)


def run(models: list[str], cells: list[str], args: argparse.Namespace) -> None:
    print(f"CPU: {cpu_isa()}; {os.cpu_count()} cores; Python {platform.python_version()}")
    versions = tool_versions()
    print("tools: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    results: dict[str, dict[str, dict]] = {}
    if args.resume and args.json and args.json.exists():
        results = json.loads(args.json.read_text()).get("results", {})
    log = anchors.work_dir() / "workers.log"
    started = time.perf_counter()
    for name in models:
        todo = [c for c in cells if c not in results.get(name, {})]
        if not todo:
            continue
        print(f"[{time.perf_counter() - started:6.0f}s] {name}: {len(todo)} cells", flush=True)
        shown: set[str] = set()

        def show(record: dict[str, Any], shown: set[str] = shown) -> None:
            shown.add(record["cell"])
            print(f"    {record['cell']:22} {cell_text(record):28} {record.get('message', '')[:110]}", flush=True)

        for record in run_model(name, todo, args.timeout, log, show):
            results.setdefault(name, {})[record["cell"]] = record
            if record["cell"] not in shown:  # a crash or hang the parent recorded
                show(record)
        if args.json:
            _write_json(args.json, results, models, cells, versions)
    ran = [m for m in models if m in results]
    print_matrix(results, ran, cells)
    figures = summary(results, ran, cells)
    print_summary(figures)
    print_failures({m: results[m] for m in ran})
    print(f"\n{len(ran)} models, {sum(len(results[m]) for m in ran)} cells in {time.perf_counter() - started:.0f} s")
    if args.json:
        _write_json(args.json, results, models, cells, versions)


def _write_json(path: Path, results: dict, models: list[str], cells: list[str], versions: dict) -> None:
    ran = [m for m in models if m in results]
    document = {
        "cpu": cpu_isa(),
        "tools": versions,
        "cells": cells,
        "models": {
            m: {
                "family": e.family,
                "task": e.task,
                "size": list(e.size),
                "real_weights": e.real_weights,
                "source": e.source,
                "export": e.export,
                "torch_module": e.has_torch,
            }
            for m, e in ((m, zoo.ZOO[m]) for m in ran)
        },  # fmt: skip
        "results": results,
        "summary": summary(results, ran, cells),
    }
    path.write_text(json.dumps(document, indent=1, default=str))


if __name__ == "__main__":
    main()
