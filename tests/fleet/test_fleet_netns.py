"""A fleet of real devices made of network namespaces, each with its own sshd, link and limits.

Six devices run the demo's digits artifact in parallel: a healthy one, a weak one (a cgroup CPU quota),
one on a slow link (tc tbf, 1 Mbit/s), one with a full disk (a 128 KiB tmpfs work folder), one whose
host key changed (known_hosts holds another key) and one that dies mid-run (everything in its namespace
is killed once its agent starts). No mocks: real namespaces, veths, sshd, paramiko, agent and store.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from netns import KillWhen, NsSpec, cleanup_stale, netns_fleet, unavailable_reason

from edgekit.cli import main
from edgekit.device.ssh import SshTransport
from edgekit.store import ResultsStore

_REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"namespace devices unavailable: {_REASON}")

SPECS = [
    NsSpec("healthy", tags=("good",)),
    NsSpec("weak", cpu_quota=0.25, tags=("good",)),
    NsSpec("slow", rate="1mbit", tags=("good",)),
    NsSpec("full", workdir_size="128k"),
    NsSpec("rekeyed", wrong_host_key=True),
    NsSpec("killed"),
]
GOOD = ("healthy", "weak", "slow")


def _tbf_sent_bytes(veth: str) -> int:
    shown = subprocess.run(["tc", "-s", "qdisc", "show", "dev", veth], capture_output=True, text=True).stdout
    match = re.search(r"qdisc tbf .*?Sent (\d+) bytes", shown, re.S)
    assert match, shown
    return int(match.group(1))


@pytest.fixture(scope="module")
def fleet_run(tmp_path_factory, digits_artifact, digits_video):
    """The namespaces, the fleet file, and the first run of the artifact across all six devices."""
    from edgekit.api import run_fleet

    root = tmp_path_factory.mktemp("netns")
    video, labels = digits_video
    with pytest.MonkeyPatch.context() as patch, netns_fleet(SPECS, root) as ns:
        db = root / "results.db"
        patch.setenv("EDGEKIT_DB", str(db))
        fleet_file = ns.write_fleet(root / "fleet.toml")
        killer = KillWhen(ns["killed"], marker="--plan")  # the agent's command line
        killer.start()
        try:
            records = run_fleet(digits_artifact, fleet_file, str(video), labels=labels, warmup=2, timeout_s=120)
        finally:
            killer.stop()
        weak_stat = (ns["weak"].cgroup / "cpu.stat").read_text() if ns["weak"].cgroup else ""
        yield {
            "ns": ns,
            "fleet": fleet_file,
            "db": db,
            "records": {r.device: r for r in records},
            "killer": killer,
            "weak_stat": weak_stat,
            "slow_sent_first": _tbf_sent_bytes(ns["slow"].host_veth),
            "video": video,
            "labels": labels,
            "root": root,
        }


def _messages(record) -> str:
    return " | ".join(e["message"] for e in record.result["errors"])


def test_healthy_weak_and_slow_devices_finish_with_accuracy(fleet_run, digits_artifact):
    records, labels = fleet_run["records"], fleet_run["labels"]
    assert list(records) == [s.name for s in SPECS]  # one record per device, in fleet order
    for name in GOOD:
        result = records[name].result
        assert result["status"] == "ok", (name, _messages(records[name]))
        assert result["artifact_id"] == digits_artifact.id
        assert result["frames"]["timed"] == len(labels)
        assert result["accuracy"]["count"] == len(labels) and result["accuracy"]["top1"] >= 0.8
        assert result["latency_ms"]["inference"]["count"] == len(labels)
    # the weak device really ran under its quota, and the slow link really carried the push
    ns = fleet_run["ns"]
    assert ns["weak"].weak_by
    if ns["weak"].cgroup is not None:
        throttled = dict(line.split() for line in fleet_run["weak_stat"].splitlines())
        assert int(throttled["nr_throttled"]) > 0, fleet_run["weak_stat"]
    pushed = digits_artifact.path.joinpath("model.onnx").stat().st_size + fleet_run["video"].stat().st_size
    assert fleet_run["slow_sent_first"] > pushed


def test_full_disk_is_an_error_naming_the_device_and_its_free_space(fleet_run):
    record = fleet_run["records"]["full"]
    assert record.result["status"] == "error"
    message = _messages(record)
    assert "device full" in message and "free" in message, message
    assert re.search(r"has \d+(\.\d+)? [KM]i?B free", message), message
    assert str(fleet_run["ns"]["full"].workdir) in message


def test_changed_host_key_is_refused(fleet_run):
    record = fleet_run["records"]["rekeyed"]
    assert record.result["status"] == "error"
    message = _messages(record)
    assert "device rekeyed" in message and "host key" in message and "CHANGED" in message, message
    assert "ssh-keygen -R" in message


def test_a_device_that_dies_mid_run_fails_alone_with_a_clear_message(fleet_run):
    killer, record = fleet_run["killer"], fleet_run["records"]["killed"]
    assert killer.fired.is_set() and "--plan" in killer.killed[0]  # it died while its agent ran
    assert record.result["status"] in ("error", "partial")
    message = _messages(record)
    assert "device killed" in message, message
    # "lost the connection while running the agent; the run was abandoned" when paramiko notices the
    # dead connection first, "cannot read .../result.json (Socket is closed)" when the agent's channel
    # closes before the transport is marked inactive (a race in paramiko's shutdown order)
    assert re.search(r"lost the connection|Socket is closed|connection may be gone", message), message


def test_every_result_is_stored(fleet_run):
    records = fleet_run["records"]
    stored = {run.device: run for run in ResultsStore(fleet_run["db"]).get([r.run_id for r in records.values()])}
    assert set(stored) == set(records)
    for name, record in records.items():
        assert stored[name].run_id == record.run_id
        assert stored[name].status == record.result["status"]
    for name in GOOD:  # nothing of the healthy devices is lost: the full result, samples included
        assert stored[name].result == records[name].result
        assert len(stored[name].result["samples_ms"]["inference"]) == len(fleet_run["labels"])


def test_cli_second_run_pushes_nothing_and_devices_check(fleet_run, digits_artifact, tmp_path):
    ns, fleet_file = fleet_run["ns"], fleet_run["fleet"]
    labels_file = tmp_path / "labels.json"
    labels_file.write_text(json.dumps(fleet_run["labels"]))
    runner = CliRunner(env={"COLUMNS": "200", "EDGEKIT_DB": str(fleet_run["db"])})

    sent_before = _tbf_sent_bytes(ns["slow"].host_veth)
    ran = runner.invoke(
        main,
        [
            "run",
            str(digits_artifact.path),
            "--fleet",
            str(fleet_file),
            "--source",
            str(fleet_run["video"]),
            "--labels",
            str(labels_file),
            "--warmup",
            "2",
            "--timeout",
            "120",
        ],
    )
    assert ran.exit_code == 1, ran.output  # some devices fail
    for name in GOOD:
        assert f"{name}: ok" in ran.output, ran.output
    for name in ("full", "rekeyed", "killed"):
        assert f"{name}: error" in ran.output, ran.output
    stored = ResultsStore(fleet_run["db"]).get(last=100)
    assert len(stored) == 2 * len(SPECS)
    # the second run sent no file: the slow link carried only commands, plan and SFTP chatter
    second = _tbf_sent_bytes(ns["slow"].host_veth) - sent_before
    assert second < 40_000 < fleet_run["slow_sent_first"] - 100_000, (second, fleet_run["slow_sent_first"])
    for name in GOOD:
        with SshTransport(ns.edgekit_device(name)) as ssh:
            assert ssh.push_artifact(digits_artifact).bytes_sent == 0
            assert ssh.push_agent().bytes_sent == 0
            assert ssh.bytes_sent == 0

    checked = runner.invoke(main, ["devices", "check", "--fleet", str(fleet_file), "--json"])
    assert checked.exit_code == 1, checked.output
    facts = {f["name"]: f for f in json.loads(checked.output)}
    for name in GOOD:
        assert facts[name]["reachable"] is True, facts[name]
        assert facts[name]["python"] == ".".join(map(str, sys.version_info[:3]))
        assert "onnxruntime" in facts[name]["engines"]
    assert facts["rekeyed"]["reachable"] is False and "CHANGED" in facts["rekeyed"]["error"]
    assert facts["killed"]["reachable"] is False and "refused the connection" in facts["killed"]["error"]
    table = runner.invoke(main, ["devices", "check", "--fleet", str(fleet_file), "--tags", "good"])
    assert table.exit_code == 0, table.output
    assert all(name in table.output for name in GOOD) and "yes" in table.output


def test_leftovers_of_a_crashed_run_are_cleaned_up_first(tmp_path):
    """A run killed with SIGKILL leaves its namespaces, tmpfs and cgroup behind; the next run removes them."""
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from pathlib import Path\n"
        "from netns import NsSpec, netns_fleet\n"
        "specs = [NsSpec('a', cpu_quota=0.5), NsSpec('b', workdir_size='64k', rate='1mbit')]\n"
        f"with netns_fleet(specs, Path({str(tmp_path)!r})) as ns:\n"
        "    print(ns.run_id, flush=True)\n"
        "    time.sleep(60)\n"
    )
    crashed = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        run_id = crashed.stdout.readline().strip()
        assert run_id.startswith("ek-p"), run_id
    finally:
        crashed.kill()  # no cleanup runs: SIGKILL
        crashed.wait()

    def leftovers() -> list[str]:
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        found = [line for line in namespaces.splitlines() if line.startswith(run_id)]
        found += [line for line in Path("/proc/self/mounts").read_text().splitlines() if run_id in line]
        found += [str(p) for base in Path("/sys/fs/cgroup").glob("*") for p in base.glob(f"{run_id}*")]
        found += [str(p) for p in Path("/sys/class/net").glob(f"ekh{run_id[-4:]}*")]  # host ends of the veths
        return found

    assert len(leftovers()) >= 5  # two namespaces, two veths and the tmpfs at least
    removed = cleanup_stale()
    assert any(run_id in item for item in removed), removed
    assert leftovers() == []
