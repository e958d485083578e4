"""The `edgekit devices` group: commands on the devices of a fleet file."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from edgekit.cli.common import fail_cleanly, make_console


@click.group()
def devices() -> None:
    """Devices of a fleet file."""


@devices.command("check")
@click.option(
    "--fleet",
    type=click.Path(dir_okay=False, exists=True),
    required=True,
    help="The fleet file (TOML); per device or in [defaults], "
    "connect_timeout (s, default 10) and connect_retries (default 2) bound a silent device.",
)
@click.option("--tags", multiple=True, help="Only devices carrying this tag (repeatable).")
@click.option("--device", "names", multiple=True, help="Only this device (repeatable).")
@click.option("--trust-on-first-use", is_flag=True, help="Accept and save unknown SSH host keys (never changed ones).")
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
@fail_cleanly
def devices_check(
    fleet: str, tags: tuple[str, ...], names: tuple[str, ...], trust_on_first_use: bool, as_json: bool
) -> None:
    """Connect to each device and report: reachable, Python, engines, CPU, GPU, free disk, power probe."""
    from edgekit.api import check_devices

    console = make_console()
    with console.status(f"checking the devices of {fleet}"):
        facts = check_devices(fleet, tags=list(tags), names=list(names), trust_on_first_use=trust_on_first_use)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        _print_facts(facts, fleet, console)
    if not all(f["reachable"] and not f.get("error") for f in facts):
        sys.exit(1)


def _print_facts(facts: list[dict[str, Any]], fleet: str, console: Any) -> None:
    from rich.table import Table

    from edgekit.console_text import as_text

    table = Table(title=f"devices in {fleet}", title_justify="left")
    columns = ("device", "reachable", "python", "engines", "cpu", "int8 weights", "gpu", "free disk", "power probe")
    for column in columns:
        table.add_column(column)
    for f in facts:
        free = f.get("disk.free_bytes")
        cells = (
            f["name"],
            _reachability(f),
            str(f.get("python", "-")),
            ", ".join(f.get("engines") or []) or "-",
            str(f.get("cpu", "-")),
            _int8_weights(f),
            ", ".join(f.get("gpu.names") or []) or "-",
            f"{free / 1e9:.1f} GB" if isinstance(free, (int, float)) else "-",
            str(f.get("power_probe") or "-"),
        )
        table.add_row(*(as_text(c) if isinstance(c, str) else c for c in cells))  # device text is never markup
    console.print(table)


def _int8_weights(facts: dict[str, Any]) -> str:
    """The x86-ort INT8 weights safe on the device's CPU (runtime/isa.py), or `-` off x86."""
    scheme = facts.get("isa.x86_weights")
    if scheme not in ("int8_per_channel", "int7_per_channel"):
        return "-"
    vnni = facts.get("isa.vnni")
    return f"8-bit ({vnni})" if scheme == "int8_per_channel" else "7-bit (no VNNI)"


def _reachability(facts: dict[str, Any]) -> Any:
    from edgekit.console_text import styled

    if not facts["reachable"]:
        return styled(("no", "red"), f": {facts.get('error', '')}")
    return styled(("yes, but", "yellow"), f": {facts['error']}") if facts.get("error") else "yes"
