"""Host evaluation around a run: what `edgekit.run` checks before the run (annotations against the source
and the model's classes, the reference artifact built or found), and what it adds to the result after it
(`accuracy.labels`, `accuracy.reference`, the empty-detections warning, saved detections), so the result is
stored once, whole. A failure to score goes into the result's `errors` (stage "evaluate"), never into a
half-stored run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, EvaluationError
from edgekit.evaluate.coco import FILE_SOURCES, CocoLabels, ModelClasses, SourceIndex, load_annotations
from edgekit.evaluate.detections import BOX_TASKS
from edgekit.evaluate.reference import compare_to_reference, reference_artifact

STAGE = "evaluate"


@dataclass
class HostEvaluation:
    """What a run is scored against; `prepare` makes one (or None when nothing was asked)."""

    labels: CocoLabels | None = None
    reference: Any = None  # the reference Artifact
    save_detections: Path | None = None
    per_device: bool = False  # a fleet: one detections file per device
    reference_run_id: str | None = None
    reference_result: dict[str, Any] | None = None

    @classmethod
    def prepare(
        cls,
        artifact: Any,
        source: Any,
        plan: dict[str, Any],
        *,
        annotations: str | Path | None = None,
        reference: Any = None,
        save_detections: str | Path | None = None,
        source_on_host: bool = True,
        per_device: bool = False,
    ) -> HostEvaluation | None:
        """Check everything before the run: the task returns boxes, the annotations fit the source and the
        model's classes, the reference artifact exists (built when given a model). EvaluationError if not."""
        if annotations is None and reference is None and save_detections is None:
            return None
        postprocess = plan.get("postprocess") or {}
        if postprocess.get("kind") not in BOX_TASKS:
            raise EvaluationError(
                "annotations, a detection reference and saved detections need a detect or text-detect task; this "
                f"run's task is {postprocess.get('kind')!r}: pass --task detect (or store the task in the model)"
            )
        labels = None
        if annotations is not None:
            names = artifact.manifest.get("class_names")
            index = SourceIndex.of(source.kind, source.uri, on_host=source_on_host, class_names=names)
            labels = load_annotations(annotations, index, ModelClasses.of(artifact.manifest, postprocess))
        if reference is not None:
            if not source_on_host or source.kind not in FILE_SOURCES:
                raise EvaluationError(
                    "a reference run needs the same frames: a video or an image folder on this host, not a "
                    f"{'device-side' if not source_on_host else source.kind} source"
                )
            reference = reference_artifact(reference, artifact)
        path = Path(save_detections) if save_detections is not None else None
        return cls(labels, reference, path, per_device)

    @staticmethod
    def keep_outputs(plan: dict[str, Any]) -> dict[str, Any]:
        """The plan with per-frame detections returned (scoring needs them)."""
        return {**plan, "postprocess": {**plan["postprocess"], "keep_outputs": True}}

    def run_reference(self, source: Any, settings: Any, plan: dict[str, Any], store: Any = None) -> None:
        """Run the reference artifact here, on `source`, with the task settings of `plan`; store it as a run."""
        if self.reference is None:
            return
        from edgekit.device.local import LocalTransport
        from edgekit.device.plan import make_plan

        quiet = dataclasses.replace(
            settings, pipelined=False, threads=None, engine_options=None, labels=None, power_probe=None, reference=None
        )
        reference_plan = make_plan(
            str(self.reference.path.resolve()), source, quiet, engine=self.reference.manifest["engine"]
        )
        reference_plan["postprocess"] = dict(plan["postprocess"])
        transport = LocalTransport()
        result = transport.run(self.reference, reference_plan, timeout_s=settings.timeout_s, watch=settings.watch())
        result = finish(result, None, reference_plan["postprocess"])
        if store is not None:
            store.add(
                device=transport.name,
                plan=reference_plan,
                result=result,
                manifest=self.reference.manifest,
                artifact_id=self.reference.id,
            )
        self.reference_run_id, self.reference_result = reference_plan["run_id"], result

    def apply(self, result: dict[str, Any], device: str) -> None:
        """Add the scores to `result` (in place); each step that fails adds an `evaluate` error instead."""
        output = result.get("task_output")
        steps = [("labels", self.labels, lambda: self.labels.score(output))]
        steps.append(("reference", self.reference, lambda: self._reference_block(output)))
        blocks = {}
        for key, wanted, step in steps:
            if wanted is not None:
                block = _attempt(result, step)
                if block is not None:
                    blocks[key] = block
        if blocks:
            kind = (output or {}).get("kind")
            result["accuracy"] = {**(result.get("accuracy") or {"kind": kind}), **blocks}
            if (output or {}).get("truncated"):
                result["warnings"].append(
                    f"the agent kept only the first {output.get('count')} detections (task_output truncated): "
                    "the scores cover the frames it returned"
                )
        if self.save_detections is not None:
            _attempt(result, lambda: self._save(output, result["run_id"], device))

    def _reference_block(self, output: dict[str, Any] | None) -> dict[str, Any]:
        reference = self.reference_result or {}
        if reference.get("status") not in ("ok", "partial"):
            messages = "; ".join(str(e.get("message", "")) for e in reference.get("errors", [])) or "no result"
            raise EvaluationError(
                f"the FP32 reference run {self.reference_run_id} failed ({messages}); see "
                f"`edgekit report {self.reference_run_id}`"
            )
        block = compare_to_reference(output, reference.get("task_output"))
        return {**block, "run_id": self.reference_run_id, "artifact_id": self.reference.id}

    def detections_path(self, device: str) -> Path:
        path = self.save_detections
        assert path is not None
        return path.with_name(f"{path.stem}.{device}{path.suffix}") if self.per_device else path

    def _save(self, output: dict[str, Any] | None, run_id: str, device: str) -> None:
        """One JSON line per frame: run id, task kind and the frame's entry from task_output."""
        if not output or not isinstance(output.get("frames"), list):
            raise EvaluationError("the agent returned no per-frame detections (task_output) to save")
        path = self.detections_path(device)
        lines = [json.dumps({"run_id": run_id, "kind": output.get("kind"), **frame}) for frame in output["frames"]]
        staged = path.with_name(path.name + ".partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            staged.write_text("".join(line + "\n" for line in lines))
            staged.replace(path)
        except OSError as exc:
            raise EvaluationError(f"cannot write detections to {path}: {exc}") from exc


def evaluation_errors(result: dict[str, Any]) -> list[str]:
    """The messages of the errors scoring added to `result` (the run itself may have gone well)."""
    return [str(e.get("message", "")) for e in result.get("errors") or [] if e.get("stage") == STAGE]


def _attempt(result: dict[str, Any], step: Any) -> Any:
    try:
        return step()
    except EdgekitError as exc:
        result["errors"].append({"stage": STAGE, "message": str(exc)})
    except Exception as exc:  # a scorer's own failure (pycocotools, a malformed entry) is this run's error
        result["errors"].append({"stage": STAGE, "message": f"{type(exc).__name__}: {exc}"})
    return None


def finish(
    result: dict[str, Any], evaluation: HostEvaluation | None, postprocess: dict[str, Any], device: str = "local"
) -> dict[str, Any]:
    """The result to store: with the empty-detections warning, and scored when `evaluation` says so (a run
    that failed is not scored: its errors say why)."""
    result = {**result, "warnings": list(result.get("warnings") or []), "errors": list(result.get("errors") or [])}
    warning = empty_detections_warning(result, postprocess)
    if warning:
        result["warnings"].append(warning)
    if evaluation is not None and result.get("status") != "error":
        evaluation.apply(result, device)
    return result


def empty_detections_warning(result: dict[str, Any], postprocess: dict[str, Any]) -> str | None:
    """A warning when a box task found nothing on any frame, naming the usual causes."""
    output = result.get("task_output")
    if not isinstance(output, dict) or output.get("kind") not in BOX_TASKS:
        return None
    frames = output.get("frames") or []
    if frames:
        if any(f.get("boxes") or f.get("polygons") for f in frames if isinstance(f, dict)):
            return None
        count = len(frames)
    elif output.get("count") == 0 and (result.get("frames") or {}).get("timed"):
        count = result["frames"]["timed"]
    else:
        return None
    if output["kind"] == "text-detect":
        thresholds = "threshold {}, box_threshold {}".format(
            postprocess.get("threshold", 0.3), postprocess.get("box_threshold", 0.6)
        )
    else:
        thresholds = f"conf {postprocess.get('conf', 0.25)}"
    return (
        f"no detections on any of the {count} frames; likely causes: the thresholds ({thresholds}: try lower "
        "ones with --postprocess), the preprocessing (resize mode, scale, mean/std or layout unlike training: "
        "see `edgekit inspect`), or the colour order (the model may expect RGB where frames are BGR, or the reverse)"
    )
