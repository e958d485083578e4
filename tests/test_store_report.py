"""The SQLite results store and the reports built from it (table, JSON, CSV, HTML)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from rich.console import Console

from edgekit import report
from edgekit.errors import EdgekitError
from edgekit.store import ResultsStore, default_db_path


def _result(run_id: str, p50: float) -> dict:
    stage = {"mean": p50, "p50": p50, "p90": p50, "p99": p50 * 2, "std": 0.1, "min": p50, "max": p50 * 2, "count": 3}
    return {
        "schema": "edgekit.result",
        "version": 1,
        "run_id": run_id,
        "status": "ok",
        "mode": "sequential",
        "started_at": f"2026-11-27T12:00:0{run_id[-1]}Z",
        "frames": {"timed": 3, "warmup": 1, "dropped": 0},
        "latency_ms": {"inference": stage, "end_to_end": stage},
        "samples_ms": {"inference": [p50, p50, p50 * 2], "end_to_end": [p50, p50 * 1.5, p50 * 2]},
        "throughput_fps": 1000 / p50,
        "accuracy": {"kind": "classification", "count": 3, "top1": 2 / 3},
        "device": {"cpu": "test cpu", "python": "3.11"},
        "errors": [],
    }


@pytest.fixture
def store(tmp_path):
    store = ResultsStore(tmp_path / "runs.db")
    manifest = {"target": "x86-ort", "precision": "fp32"}
    for i, p50 in enumerate((1.5, 2.5), start=1):
        run_id = f"run-{i}"
        store.add(
            device="local",
            plan={"run_id": run_id},
            result=_result(run_id, p50),
            manifest=manifest,
            artifact_id="f" * 64,
        )
    return store


def test_default_path_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEKIT_DB", str(tmp_path / "x.db"))
    assert default_db_path() == tmp_path / "x.db"
    monkeypatch.delenv("EDGEKIT_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_db_path() == tmp_path / "edgekit" / "results.db"


def test_runs_come_back_oldest_first_and_by_prefix(store):
    assert [r.run_id for r in store.get()] == ["run-1", "run-2"]
    assert [r.run_id for r in store.get(last=1)] == ["run-2"]
    assert store.get(["run-2"])[0].result["throughput_fps"] == 400.0


def test_ambiguous_or_missing_prefix_is_an_error(store):
    with pytest.raises(EdgekitError, match="2 runs"):
        store.get(["run-"])
    with pytest.raises(EdgekitError, match="no run"):
        store.get(["zzz"])


def test_unwritable_store_location_is_explained(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(EdgekitError, match="EDGEKIT_DB"):
        ResultsStore(blocker / "sub" / "runs.db")


def test_table_json_csv_and_html(store):
    runs = store.get()
    buffer = io.StringIO()
    report.print_runs_table(runs, Console(file=buffer, width=200))
    text = buffer.getvalue()
    assert "run-1" in text and "x86-ort/fp32" in text and "66.7%" in text
    assert [r["run_id"] for r in json.loads(report.to_json(runs))] == ["run-1", "run-2"]
    rows = list(csv.DictReader(io.StringIO(report.to_csv(runs))))
    assert rows[1]["inference_p50_ms"] == "2.5"
    page = report.to_html(runs)
    assert page.count("<svg") == 4 + 4  # two histograms per run; p50, p99, fps and top-1 side by side
    assert "run-2" in page and "p99" in page


def test_power_columns_and_side_by_side_charts(tmp_path):
    store = ResultsStore(tmp_path / "power.db")
    for device, watts in (("jetson-1", 6.5), ("jetson-2", 7.25)):
        result = _result(f"{device}-r1", 2.0)
        result["power"] = {"probe": "jetson-ina3221", "rail": "VDD_IN", "avg_w": watts, "energy_per_inference_mj": 13.0}
        store.add(
            device=device,
            plan={"run_id": f"{device}-r1"},
            result=result,
            manifest={"target": "jetson-trt", "precision": "int8"},
            artifact_id="a" * 64,
        )
    runs = store.get()
    buffer = io.StringIO()
    report.print_runs_table(runs, Console(file=buffer, width=200))
    text = buffer.getvalue()
    assert "jetson-1" in text and "jetson-2" in text and "7.25" in text and "13" in text
    page = report.to_html(runs)
    assert "average power" in page and "energy per inference" in page and "7.25 W" in page


HOSTILE = "disk [/] full on [bold]root@[::1]:22[/bold] :smile: \x1b[31mred\x1b[0m"


def test_device_text_is_shown_as_text_in_every_report(isolated_store):
    """Errors, warnings and facts come from devices: markup, emoji codes, IPv6 brackets and terminal escapes in
    them are printed literally (escapes dropped), and one such run does not break the report for good."""
    from click.testing import CliRunner

    from edgekit.cli import main
    from edgekit.device.results import failed_result

    store = ResultsStore(isolated_store)
    failed = failed_result({"run_id": "bad-1", "mode": "sequential"}, HOSTILE)
    store.add(device="[red]dev[/]", plan={"run_id": "bad-1"}, result=failed, manifest={}, artifact_id="e" * 64)
    ok = dict(_result("ok-2", 1.5), device={"cpu": "[/] cpu", "python": "3.11"}, warnings=[HOSTILE])
    store.add(device="[red]dev[/]", plan={"run_id": "ok-2"}, result=ok, manifest={}, artifact_id="e" * 64)
    runner = CliRunner(env={"COLUMNS": "400"})
    for args in (["report"], ["report", "ok-2"], ["report", "--html", str(isolated_store.parent / "r.html")]):
        result = runner.invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        if args != ["report", "--html", str(isolated_store.parent / "r.html")]:
            assert "\x1b" not in result.output
    table = runner.invoke(main, ["report"]).output
    assert r"disk [/] full on [bold]root@[::1]:22[/bold] :smile: \x1b[31mred\x1b[0m" in table.replace("\n", "")
    assert "[red]dev[/]" in table
    assert "warning: disk [/] full" in runner.invoke(main, ["report", "ok-2"]).output


def test_device_facts_table_shows_device_text_as_text():
    from edgekit.cli.common import make_console
    from edgekit.cli.fleet import _print_facts

    facts = [
        {"name": "a[/]", "reachable": False, "error": HOSTILE},
        {"name": "b", "reachable": True, "error": "[/] slow", "cpu": "[bold]ARM[/bold] \x1b]0;x\x07", "python": "3.8"},
    ]
    buffer = io.StringIO()
    console = make_console()
    console.file = buffer
    _print_facts(facts, "fleet[/].yaml", console)
    text = buffer.getvalue()
    assert "a[/]" in text and "[/] slow" in text and "[bold]ARM[/bold]" in text and "\x1b" not in text


def test_run_ids_do_not_collide_and_a_stored_run_is_never_overwritten(store):
    from edgekit.device.plan import new_run_id

    ids = {new_run_id() for _ in range(20000)}
    assert len(ids) == 20000 and all(len(i.split("-")[2]) == 16 for i in ids)
    with pytest.raises(EdgekitError, match="run run-1 is already stored .* never overwritten"):
        store.add(device="other", plan={"run_id": "run-1"}, result=_result("run-1", 9.0), manifest={}, artifact_id="")
    assert store.get(["run-1"])[0].device == "local"  # the first row is intact


def test_the_database_is_private_and_a_long_advice_is_kept_whole(tmp_path):
    from edgekit.device.results import failed_result

    store = ResultsStore(tmp_path / "new" / "runs.db")
    assert (store.path.stat().st_mode & 0o777) == 0o600
    advice = "the host key of dev changed: " + "x" * 1500 + " remove the old key with ssh-keygen -R"
    store.add(
        device="dev", plan={"run_id": "r"}, result=failed_result({"run_id": "r"}, advice), manifest={}, artifact_id=""
    )
    assert store.get(["r"])[0].result["errors"][0]["message"] == advice
