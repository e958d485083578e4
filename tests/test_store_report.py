"""The SQLite results store and the reports built from it (table, JSON, CSV, HTML)."""

from __future__ import annotations

import csv
import dataclasses
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
    assert page.count("<svg") == 2 + 2  # two histograms per run, in its details
    assert page.count('class="bar"') == 2  # a stacked per-stage bar per run
    assert "run-2" in page and "p99" in page and "66.7%" in page


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
    assert "power W" in page and "mJ/ inf" in page and "<td>7.25</td>" in page


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
    page = isolated_store.parent / "r.html"
    for args in (["report"], ["report", "--status", "all"], ["report", "ok-2"], ["report", "--html", str(page)]):
        result = runner.invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        if "--html" not in args:
            assert "\x1b" not in result.output
    assert "[red]dev[/]" in page.read_text() and "\x1b" not in page.read_text()
    table = runner.invoke(main, ["report", "--status", "error"]).output
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


# -- a report a team would send: what ran where in every row, error runs apart ---------------------------------


@pytest.fixture
def team(tmp_path):
    from report_testkit import fill_team_store

    return fill_team_store(tmp_path / "team.db")


def test_every_row_says_model_task_device_target_and_mode(team):
    runs = team.get(statuses=report.statuses_for(None))
    assert len(runs) == 6 and {r.status for r in runs} == {"ok"}
    rows = list(csv.DictReader(io.StringIO(report.to_csv(runs))))
    assert list(rows[0])[:9] == [
        "run_id",
        "started_at",
        "model",
        "task",
        "device",
        "target",
        "precision",
        "mode",
        "status",
    ]
    by_model = {(r["model"], r["target"], r["precision"]): r for r in rows}
    classifier = by_model[("mobilenetv3_small", "x86-ort", "fp32")]
    assert (
        classifier["task"] == "classify" and classifier["mode"] == "pipelined" and classifier["device"] == "x86-box-1"
    )
    assert float(classifier["peak_rss_mb"]) > 0 and float(classifier["model_load_ms"]) > 0
    old = by_model[("yolov8n", "x86-ort", "fp32")]  # a version 1 result: memory was not measured, so no number
    assert old["task"] == "detect" and old["peak_rss_mb"] == "" and old["first_inference_ms"] == ""
    entries = json.loads(report.to_json(runs))
    assert {e["model"] for e in entries} == {"mobilenetv3_small", "yolov8n", "lraspp_mobilenet"}
    assert all(e["task"] and e["mode"] in ("sequential", "pipelined") for e in entries)

    console = Console(record=True, width=260)
    report.print_runs_table(runs, console)
    text = console.export_text()
    lines = [line for line in text.splitlines() if "x86-ort/" in line or "tflite/" in line or "trt/" in line]
    assert [line.split()[1] for line in lines] == ["lraspp_mobilenet", *["mobilenetv3_small"] * 3, "yolov8n", "yolov8n"]
    assert "pipe*" in text and "includes time waiting in queues" in text
    assert "peak" in text and "load" in text and "top-1 98.4%" in text and "mIoU 0.712" in text and "mAP 0.412" in text
    assert "c0ffee12aa34bb56" not in text and "aa34bb56" in text  # short ids, one line each


def test_old_manifests_without_a_model_name_show_the_source_hash():
    from edgekit.store import StoredRun

    run = StoredRun("r", "", "dev", "", "x86-ort", "fp32", "ok", {}, {}, {"source_model_sha256": "0123456789ab"})
    assert report.model_name(run) == "model 01234567"
    assert report.model_name(dataclasses.replace(run, manifest={})) == "-"


def test_error_runs_are_counted_by_default_and_listed_apart(team, monkeypatch):
    from click.testing import CliRunner

    from edgekit.cli import main

    runner = CliRunner(env={"COLUMNS": "240", "EDGEKIT_DB": str(team.path)})
    default = runner.invoke(main, ["report"], catch_exceptions=False).output
    assert "2 error runs not shown: edgekit report --status error" in default
    assert "dead0000beef0001" not in default and "yolov8n" in default
    errors = runner.invoke(main, ["report", "--status", "error"], catch_exceptions=False).output
    assert "edgekit runs (latency" not in errors  # no table of dashes for runs that timed nothing
    assert "runs that failed" in errors and "beef0001" in errors and "truncated MP4" in errors
    assert "not shown" not in errors
    everything = runner.invoke(main, ["report", "--status", "all"], catch_exceptions=False).output
    assert "edgekit runs (latency" in everything and "runs that failed" in everything
    one = runner.invoke(main, ["report", "beef0002"], catch_exceptions=False).output  # the short id finds it
    assert "tensorrt" in one and "<b>lab</b>" in one and "\x1b" not in one


def test_only_error_runs_print_no_empty_table(tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import main
    from edgekit.device.results import failed_result

    store = ResultsStore(tmp_path / "e.db")
    store.add(
        device="d", plan={"run_id": "x-1"}, result=failed_result({"run_id": "x-1"}, "boom"), manifest={}, artifact_id=""
    )
    out = CliRunner(env={"EDGEKIT_DB": str(store.path)}).invoke(main, ["report"], catch_exceptions=False).output
    assert "no ok or partial runs" not in out and "edgekit runs (latency" not in out and " - " not in out
    assert "1 error run not shown: edgekit report --status error" in out


def test_the_html_page_groups_by_model_then_device_and_keeps_failures_apart(team):
    from report_testkit import HOSTILE_DEVICE

    page = report.to_html(team.get(statuses=report.statuses_for("all")))
    sections = page.split("<section>")[1:]
    assert [s[s.index("<h2>") + 4 : s.index("<span")] for s in sections[:3]] == [
        "lraspp_mobilenet",
        "mobilenetv3_small",
        "yolov8n",
    ]
    assert "Runs that failed (2)" in sections[3] and "truncated MP4" in sections[3]
    assert "&lt;b&gt;" in sections[3] and "<b>" not in page  # device and error text escaped
    assert HOSTILE_DEVICE not in page and "\x1b" not in page.replace("\\x1b", "")
    classifier = sections[1]
    assert classifier.count("rowspan") == 2 and "pipelined" in classifier and "includes time waiting" in classifier
    assert "98.4%" in classifier and "<td>7.9</td>" in classifier and "41.3" in classifier
    detector = sections[2]
    assert "0.412" in detector and "mAP" in detector and "<td>-</td>" in detector  # v1 run: memory not measured
    assert page.count('class="bar"') == 6 and "aa34bb56</span></td>" in page


def test_the_report_says_when_more_runs_are_stored_than_it_shows(store):
    from click.testing import CliRunner

    from edgekit.cli import main

    runner = CliRunner(env={"COLUMNS": "240", "EDGEKIT_DB": str(store.path)})
    one = runner.invoke(main, ["report", "--last", "1"], catch_exceptions=False).output
    assert "the latest 1 of 2 stored runs; `edgekit report --last 2` shows them all" in one
    both = runner.invoke(main, ["report", "--last", "2"], catch_exceptions=False).output
    assert "stored runs;" not in both
