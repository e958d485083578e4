"""The `edgekit` command line: a thin shell over the Python API.

`main` is the group; the commands live by subject in `model` (inspect, targets, observers, quantize, build),
`run` (run, report, demo), `fleet` (devices check) and `compress` (prune, distill, qat), and are added here.
Every heavy import happens inside the command that needs it, so `edgekit --help` stays fast.
"""

from __future__ import annotations

import click

from edgekit.cli import compress, fleet, model, run


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="edgekit")
def main() -> None:
    """Take a trained vision model to edge devices and measure it there.

    \b
    The usual path:
      edgekit inspect model.onnx                      what is in the model, what each target cannot run
      edgekit quantize model.onnx --calib imgs/ -o q  INT8: QuantSpec, QDQ model, per-tensor error report
      edgekit build model.onnx -t x86-ort -o art      an artifact: model + manifest, addressed by content
      edgekit run art --source video.mp4              latency per stage, throughput, accuracy (this machine)
      edgekit run art --fleet lab.toml --source v     the same on every device of a fleet, over SSH
      edgekit report                                  every stored run, as a table, JSON, CSV or HTML
    Try it end to end with `edgekit demo` (add --int8 for the quantized model beside it).
    """


for _command in (
    model.inspect,
    model.targets,
    model.observers,
    model.quantize,
    model.build,
    run.run,
    run.report,
    run.demo,
    fleet.devices,
    compress.prune,
    compress.distill,
    compress.qat,
):
    main.add_command(_command)

__all__ = ["main"]
