"""What happens to a model's outputs after inference: top-k classification with accuracy against labels,
or raw comparison with reference outputs (via compare.py). Python 3.8-compatible."""

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .compare import CompareError, ErrorAccumulator


class PostprocessError(ValueError):
    """Outputs that do not fit the labels or reference given; the message says which to check."""


class Postprocessor(object):
    """Base: `process` is called once per frame; `summary` gives the accuracy block of the result."""

    kind = "none"

    def process(
        self,
        outputs: List[np.ndarray],
        label: Optional[int],
        position: int,
        record: bool = True,
        frame_size: Optional[Tuple[int, int]] = None,
    ) -> Any:
        raise NotImplementedError

    def summary(self) -> Optional[Dict[str, Any]]:
        return None


class Classification(Postprocessor):
    """Top-k class indices from the first output (softmax is monotonic, so it is not needed);
    counts top-1 and top-k hits for frames that carry a label."""

    kind = "classification"

    def __init__(self, top_k: int = 5) -> None:
        self.top_k = int(top_k)
        self.count = 0
        self.top1_hits = 0
        self.topk_hits = 0

    def process(
        self,
        outputs: List[np.ndarray],
        label: Optional[int],
        position: int,
        record: bool = True,
        frame_size: Optional[Tuple[int, int]] = None,
    ) -> Any:
        logits = outputs[0]
        # one frame per batch: the scores of the first batch item, whatever trailing 1x1 axes there are
        scores = logits.reshape(logits.shape[0], -1)[0] if logits.ndim >= 2 else logits.reshape(-1)
        classes = scores.shape[0]
        k = min(self.top_k, classes)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        if label is not None:
            if label >= classes:
                raise PostprocessError(
                    "label %d but the model has %d classes: check --labels / class_names" % (label, classes)
                )
            if record:
                self.count += 1
                self.top1_hits += int(top[0] == label)
                self.topk_hits += int(label in top)
        return top

    def summary(self) -> Optional[Dict[str, Any]]:
        if self.count == 0:
            return None
        return {
            "kind": self.kind,
            "count": self.count,
            "top1": self.top1_hits / float(self.count),
            "top%d" % self.top_k: self.topk_hits / float(self.count),
            "top_k": self.top_k,
        }


class RawComparison(Postprocessor):
    """Compares every output with its reference row (`output_<i>` arrays of an .npz, one row per frame)."""

    kind = "raw"

    def __init__(self, reference_path: Optional[str], output_names: Sequence[str]) -> None:
        self.output_names = list(output_names)
        self.reference: Optional[List[np.ndarray]] = None
        if reference_path is not None:
            self.reference = self._load(reference_path)
        self.accumulators = [ErrorAccumulator() for _ in self.output_names]
        self.path = reference_path

    def _load(self, path: str) -> List[np.ndarray]:
        if not os.path.isfile(path):
            raise PostprocessError("reference file %s does not exist: push it with the plan or fix reference" % path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: np.asarray(data[k]) for k in data.files}
        except Exception as exc:  # zipfile/ValueError/OSError: all mean the same to the user
            raise PostprocessError("cannot read reference file %s as .npz: %s" % (path, exc)) from exc
        missing = ["output_%d" % i for i in range(len(self.output_names)) if "output_%d" % i not in arrays]
        if missing:
            raise PostprocessError(
                "reference file %s lacks %s (has %s): write one array output_<i> per model output"
                % (path, ", ".join(missing), ", ".join(sorted(arrays)) or "nothing")
            )
        rows = set(
            arrays["output_%d" % i].shape[0] if arrays["output_%d" % i].ndim else 0
            for i in range(len(self.output_names))
        )
        if len(rows) != 1:
            raise PostprocessError(
                "reference file %s: output arrays have different row counts %s" % (path, sorted(rows))
            )
        return [arrays["output_%d" % i] for i in range(len(self.output_names))]

    def process(
        self,
        outputs: List[np.ndarray],
        label: Optional[int],
        position: int,
        record: bool = True,
        frame_size: Optional[Tuple[int, int]] = None,
    ) -> Any:
        if self.reference is None:
            return outputs
        rows = self.reference[0].shape[0]
        if position >= rows:
            raise PostprocessError(
                "reference file %s has %d rows but the source has more frames (frame %d): give one row per frame"
                % (self.path, rows, position + 1)
            )
        for index, output in enumerate(outputs):
            expected = self.reference[index][position]
            # the reference row may or may not keep the batch axis of one
            test = output[0] if output.ndim and output.shape[0] == 1 and output.shape[1:] == expected.shape else output
            try:
                if record:
                    self.accumulators[index].update(expected, test)
                elif expected.shape != test.shape:
                    raise CompareError("shape mismatch: reference %s vs output %s" % (expected.shape, test.shape))
            except CompareError as exc:
                raise PostprocessError(
                    "output %r vs reference row %d: %s" % (self.output_names[index], position, exc)
                ) from exc
        return outputs

    def summary(self) -> Optional[Dict[str, Any]]:
        if self.reference is None or not self.accumulators or self.accumulators[0].count == 0:
            return None
        per_output = []
        for index, name in enumerate(self.output_names):
            entry = self.accumulators[index].summary()
            entry["name"] = name
            per_output.append(entry)

        def worst(key: str, pick: Any) -> Optional[float]:
            values = [o[key] for o in per_output]
            # a None (NaN output) is the worst of all
            return None if any(v is None for v in values) else pick(values)

        return {
            "kind": self.kind,
            "count": self.accumulators[0].count,
            "sqnr_db": worst("sqnr_db", min),
            "cosine": worst("cosine", min),
            "max_abs_error": worst("max_abs_error", max),
            "outputs": per_output,
        }


def make_postprocessor(
    config: Dict[str, Any],
    output_names: Sequence[str],
    reference_path: Optional[str] = None,
    geometry: Optional[Callable[[int, int], Any]] = None,
    label_masks: Optional[str] = None,
) -> Postprocessor:
    """The postprocessor a plan's postprocess block asks for (classify or raw until runtime.tasks lands)."""
    kind = config.get("kind", "classify")
    if kind in ("classify", "classification"):
        return Classification(config.get("top_k", 5))
    if kind == "raw":
        return RawComparison(reference_path, output_names)
    raise PostprocessError("postprocess kind %r: use classify or raw" % kind)
