"""A result file is read with bounded memory: chunked, raw samples thinned, every field still validated."""

from __future__ import annotations

import io
import json
import threading
import time
import tracemalloc

import pytest
from test_results_validation import good_result

from edgekit.device import result_file
from edgekit.device.result_file import (
    CappedWriter,
    ResultBudget,
    ResultTooBig,
    max_result_bytes,
    read_result,
)
from edgekit.device.results import validate_result
from edgekit.errors import RunError


def read(document: bytes | str, **options) -> dict:
    data = document.encode() if isinstance(document, str) else document
    return read_result(io.BytesIO(data), run_id="r1", **options)


DETECT = {
    "kind": "detect",
    "frames": [{"frame": 0, "size": [480, 640], "boxes": [[1.0, 2.0, 30.5, 40.25, 0.9, 3]]}],
    "count": 1,
    "truncated": False,
}


@pytest.mark.parametrize("chunk", [3, 7, 1 << 20])
def test_same_result_as_the_whole_file_parser_across_chunk_boundaries(monkeypatch, chunk: int):
    monkeypatch.setattr(result_file, "_CHUNK", chunk)  # keys, strings, escapes and numbers split anywhere
    result = good_result(
        task_output=DETECT,
        warnings=['a "quoted" \\ warning \u00e9', "x" * 50],
        errors=[{"stage": "engine", "message": 'it said \\"no\\" {[}]'}],
        evil={"nested": [[[["deep"]]]], "s": "]}"},
        samples_ms={"inference": [1.5, 2, -0.0, 1e-3, 3.25e2], "end_to_end": []},
    )
    for indent in (None, 1):
        text = json.dumps(result, indent=indent)
        assert read(text) == validate_result(json.loads(text), run_id="r1")


def test_samples_are_thinned_evenly_with_a_note():
    values = [float(i) for i in range(1000)]
    clean = read(json.dumps(good_result(samples_ms={"inference": values, "preprocess": values[:10]})), keep_samples=100)
    kept = clean["samples_ms"]["inference"]
    assert kept == values[::16] and 50 <= len(kept) <= 100  # every 16th: 63 samples, evenly spaced
    assert clean["samples_ms"]["preprocess"] == values[:10]
    assert clean["warnings"][-1].startswith("raw samples thinned on the host to at most 100 per stage")
    assert "inference 63 of 1,000 (every 16)" in clean["warnings"][-1] and "preprocess" not in clean["warnings"][-1]


@pytest.mark.parametrize(
    "samples, message",
    [
        ('[1, "2"]', "holds something other than finite numbers"),
        ("[1, [2]]", "holds something other than finite numbers"),
        ("[1, 2,]", "holds something other than finite numbers"),
        ("[1, NaN]", "holds something other than finite numbers"),
        ("[1, 01]", "holds something other than finite numbers"),
        ('"many"', "not a list"),
        ("[1, 2", "holds something other than finite numbers"),
    ],
)
def test_bad_samples_are_refused_naming_the_field(samples: str, message: str):
    text = json.dumps(good_result(samples_ms={}))
    text = text.replace('"samples_ms": {}', f'"samples_ms": {{"inference": {samples}}}')
    with pytest.raises(RunError, match=f"samples_ms.inference.*{message}|{message}.*samples_ms.inference"):
        read(text)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"schema": "edgekit.result"', "ends|expected"),
        ("[1, 2]", "expected '{'"),
        ('{"schema": "edgekit.result"} trailing', "more after the result object"),
        ('{"schema" "x"}', "expected ':'"),
        ('{"status": tru}', "field status is not valid JSON"),
    ],
)
def test_malformed_files_are_refused(text: str, message: str):
    with pytest.raises(RunError, match=message):
        read(text)


def test_fields_outside_the_contract_are_dropped_and_the_rest_is_bounded(monkeypatch):
    big = json.dumps(good_result(padding="x" * 5000))
    assert "padding" not in read(big)
    monkeypatch.setattr(result_file, "MAX_OTHER_BYTES", 1000)
    with pytest.raises(RunError, match="fields other than samples_ms hold more than"):
        read(json.dumps(good_result(warnings=["y" * 2000])))


def test_memory_stays_bounded_on_a_big_result(tmp_path):
    stages = ("capture", "preprocess", "inference", "postprocess", "end_to_end")
    path = tmp_path / "result.json"
    with open(path, "w") as out:  # ~17 MB: five stages of 300,000 samples, written the agent's way
        head = json.dumps(good_result(samples_ms={}))
        out.write(head.replace('"samples_ms": {}', '"samples_ms": {' + ", ".join(f'"{s}": []' for s in stages) + "}"))
    text = path.read_text()
    for stage in stages:
        text = text.replace(f'"{stage}": []', f'"{stage}": [' + ",\n ".join(["12.3456"] * 300_000) + "]")
    path.write_text(text)
    size = path.stat().st_size
    del text
    tracemalloc.start()
    try:
        with open(path, "rb") as handle:
            clean = read_result(handle, run_id="r1")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(clean["samples_ms"]["inference"]) == 37_500  # every 8th
    # a constant (chunks and the kept samples), not a multiple of the file (json.load: ~4x the file)
    assert size > 15e6 and peak < 12e6, (size, peak)


def test_limit_from_the_environment(monkeypatch):
    monkeypatch.delenv("EDGEKIT_MAX_RESULT_MB", raising=False)
    assert max_result_bytes() == 256 << 20
    monkeypatch.setenv("EDGEKIT_MAX_RESULT_MB", "512")
    assert max_result_bytes() == 512 << 20
    monkeypatch.setenv("EDGEKIT_MAX_RESULT_MB", "lots")
    with pytest.raises(RunError, match="EDGEKIT_MAX_RESULT_MB='lots' is not a size in megabytes"):
        max_result_bytes()


def test_a_download_that_grows_past_the_limit_is_cut_off():
    sink = io.BytesIO()
    writer = CappedWriter(sink, 10, "dev:/r/result.json")
    writer.write(b"12345")
    with pytest.raises(ResultTooBig, match="grew while downloading"):
        writer.write(b"678901")
    assert sink.getvalue() == b"12345"


def test_the_budget_makes_big_results_take_turns():
    budget = ResultBudget(100)
    inside: list[int] = []
    most = []

    def fetch(size: int) -> None:
        with budget.hold(size):
            inside.append(size)
            most.append(sum(inside))
            time.sleep(0.05)
            inside.remove(size)

    threads = [threading.Thread(target=fetch, args=(size,)) for size in (80, 80, 500, 10, 10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(most) <= 500 and budget.used == 0
    assert all(total <= 100 or total == 500 for total in most)  # a result over the budget goes alone


def test_every_field_the_validator_keeps_is_read_by_the_file_reader():
    from edgekit.device.results import RESULT_FIELDS

    # a field missing from RESULT_FIELDS is dropped unparsed by the reader: memory and cold start once were
    assert set(validate_result(good_result(), run_id=good_result()["run_id"])) <= set(RESULT_FIELDS)
