"""Compression of torch models: prune, distill, qat, thin shells over `edgekit.compress.recipes` (which
does the work and returns what to print)."""

from __future__ import annotations

from typing import Any, Literal

import click

from edgekit.cli.common import fail_cleanly, make_console, parse_json_object
from edgekit.console_text import styled


def _model_options(func: Any) -> Any:
    """The options every compression command shares: which model, which data, how long to train."""
    options = [
        click.option(
            "--model",
            "model_path",
            metavar="MODULE:ATTR",
            default=None,
            help="A torch nn.Module (or a zero-argument factory of one) by import path, e.g. "
            "mypkg.nets:trained_net. Its weights are taken as they are (trained).",
        ),
        click.option(
            "--demo",
            is_flag=True,
            help="Use the demo's digit CNN instead, trained here from scratch on the demo digits for --demo-epochs.",
        ),
        click.option(
            "--demo-epochs",
            type=click.IntRange(min=0),
            default=5,
            show_default=True,
            help="Training epochs of the --demo model before compressing it.",
        ),
        click.option(
            "--data",
            type=click.Path(exists=True, file_okay=False),
            default=None,
            help="Labelled image folder (one sub-folder per class), split 80/20 train/eval. "
            "Default: the 1,000 demo digits shipped with edgekit (800 train, 200 eval).",
        ),
        click.option(
            "--preprocess",
            "preprocess_json",
            default=None,
            metavar="JSON",
            help="Preprocessing spec for --data images (default: the digits' 28x28 gray spec).",
        ),
        click.option(
            "--epochs",
            type=click.IntRange(min=0),
            default=3,
            show_default=True,
            help="Training epochs of the compression step.",
        ),
        click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate."),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True),
        click.option(
            "-o", "--out", type=click.Path(file_okay=False), required=True, help="Output folder (model.onnx, ...)."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _load_data(data: str | None, preprocess_json: str | None, batch_size: int) -> Any:
    from edgekit.compress.recipes import load_data

    preprocess = parse_json_object(preprocess_json, option_name="--preprocess") if preprocess_json else None
    return load_data(data, preprocess=preprocess, batch_size=batch_size)


def _load_model(model_path: str | None, demo: bool, data: Any, demo_epochs: int) -> Any:
    from edgekit.compress.recipes import prepare_model

    return prepare_model(data, None if demo else model_path, demo_epochs=demo_epochs)


def _require_one_model(model_path: str | None, demo: bool) -> None:
    if bool(model_path) == bool(demo):
        raise click.UsageError("give exactly one of --model MODULE:ATTR or --demo")


def _print_table(before: Any, after: Any, data: Any, names: tuple[str, str], console: Any) -> None:
    from edgekit.compress.compare import print_before_after
    from edgekit.compress.recipes import compare

    rows = compare(before, after, data, names)
    title = f"{names[0]} vs {names[1]} (ONNX Runtime, {len(data.eval_arrays[1])} eval images)"
    print_before_after(rows, console, title=title)


@click.command()
@_model_options
@click.option("--structured", is_flag=True, help="Remove whole conv channels (a smaller, faster network).")
@click.option("--ratio", type=float, default=0.5, show_default=True, help="--structured: fraction of channels removed.")
@click.option(
    "--criterion",
    type=click.Choice(["l1", "l2", "bn_gamma"]),
    default="l1",
    show_default=True,
    help="--structured: how channels are scored.",
)
@click.option(
    "--multiple-of",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="--structured: keep channel counts a multiple of N (fast kernels want 8; 1 = exact).",
)
@click.option(
    "--sparsity", type=float, default=0.8, show_default=True, help="Unstructured: fraction of weights zeroed."
)
@click.option(
    "--schedule",
    type=click.Choice(["cubic", "oneshot"]),
    default="cubic",
    show_default=True,
    help="Unstructured: reach --sparsity gradually over the first half of training, or at once.",
)
@click.option(
    "--target-macs",
    type=float,
    default=None,
    metavar="F",
    help="--structured: prune until this fraction of the MACs remains (instead of --ratio), e.g. 0.5.",
)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="--structured --target-macs: reach it in N cut + fine-tune rounds of --epochs each.",
)
@click.option(
    "--max-drop",
    type=float,
    default=None,
    metavar="PTS",
    help="--structured --target-macs: stop at the last round whose top-1 is within PTS points of the original's.",
)
@click.option(
    "--keep-residual",
    is_flag=True,
    help="--structured: leave channel groups joined by residual additions whole and prune inside the blocks "
    "(MobileNetV2-style nets: more speed for the same MACs).",
)
@click.option(
    "--distill",
    is_flag=True,
    help="Fine-tune with the unpruned model as the teacher (Hinton KD, T=4, alpha=0.5): recovers more "
    "accuracy per epoch, at the cost of a teacher forward pass per step.",
)
@fail_cleanly
def prune(
    model_path: str | None,
    demo: bool,
    demo_epochs: int,
    data: str | None,
    preprocess_json: str | None,
    epochs: int,
    lr: float,
    batch_size: int,
    out: str,
    structured: bool,
    ratio: float,
    criterion: Literal["l1", "l2", "bn_gamma"],
    multiple_of: int,
    sparsity: float,
    schedule: Literal["cubic", "oneshot"],
    target_macs: float | None,
    rounds: int,
    max_drop: float | None,
    keep_residual: bool,
    distill: bool,
) -> None:
    """Prune a torch model, fine-tune it, export it and compare before/after.

    \b
    Structured pruning removes whole conv channels (fewer params, MACs and ms on any runtime);
    unstructured magnitude pruning zeroes single weights (smaller only once compressed, faster only on
    sparse kernels). Writes OUT/model.onnx.
    \b
    Examples:
      edgekit prune --demo --structured --ratio 0.5 --distill -o pruned
      edgekit prune --demo --structured --target-macs 0.5 --rounds 3 --epochs 2 --distill -o pruned
      edgekit prune --model mypkg.nets:mobilenet --data imgs/ --structured --target-macs 0.5 --keep-residual -o out
      edgekit prune --demo --sparsity 0.8 --schedule cubic --epochs 5 -o sparse
      edgekit prune --model mypkg.nets:trained_net --data imgs/ --structured --criterion bn_gamma -o out
    """
    from edgekit.compress.recipes import Training, prune_structured, prune_unstructured

    _check_prune_options(structured, ratio, sparsity, target_macs, rounds, max_drop)
    _require_one_model(model_path, demo)
    console = make_console()
    data_set = _load_data(data, preprocess_json, batch_size)
    model = _load_model(model_path, demo, data_set, demo_epochs)
    training = Training(epochs=epochs, lr=lr)
    if structured:
        result = prune_structured(
            model,
            data_set,
            out,
            ratio=ratio,
            criterion=criterion,
            multiple_of=multiple_of,
            coupled="keep" if keep_residual else "prune",
            target_macs=target_macs,
            rounds=rounds,
            max_drop=max_drop,
            training=training,
            distill=distill,
        )
        _print_structured(result, console, max_drop=max_drop, multiple_of=multiple_of, target_macs=target_macs)
    else:
        result = prune_unstructured(
            model,
            data_set,
            out,
            sparsity=sparsity,
            schedule=schedule,
            training=training,
            distill=distill,
        )
        zeros, total = result.zero_weights, result.prunable_weights
        console.print(f"{zeros}/{total} prunable weights are zero ({zeros / total * 100:.1f}%)")
    _print_table(result.before, result.after, data_set, ("original", "pruned"), console)
    console.print(f"pruned model written to {result.path}")


def _check_prune_options(
    structured: bool, ratio: float, sparsity: float, target_macs: float | None, rounds: int, max_drop: float | None
) -> None:
    if target_macs is not None and not (structured and 0.0 < target_macs < 1.0):
        raise click.BadParameter(f"{target_macs}: a fraction in (0, 1), with --structured", param_hint="--target-macs")
    if (rounds > 1 or max_drop is not None) and target_macs is None:
        raise click.UsageError("--rounds and --max-drop go with --structured --target-macs")
    if structured and not 0.0 < ratio < 1.0:
        raise click.BadParameter(
            f"{ratio} must be in (0, 1): a ratio of 1 would remove every channel", param_hint="--ratio"
        )
    if not structured and not 0.0 < sparsity < 1.0:
        raise click.BadParameter(f"{sparsity} must be in (0, 1)", param_hint="--sparsity")


def _print_structured(
    result: Any, console: Any, *, max_drop: float | None, multiple_of: int, target_macs: float | None
) -> None:
    """The layers channel pruning left whole, and the rounds toward --target-macs."""
    for name, reason in result.skipped.items():
        console.print(styled((f"{name} not pruned:", "yellow"), f" {reason}"))
    for step in result.rounds:
        verdict = "kept" if step.accepted else f"undone (more than {max_drop} pts below {result.baseline:.2f}%)"
        console.print(f"round {step.round}: {step.macs_fraction:.0%} of the MACs, top-1 {step.metric:.2f}%, {verdict}")
    if result.rounds and all(step.accepted for step in result.rounds) and not result.reached_target:
        console.print(
            styled(
                (
                    f"{result.macs_fraction:.0%} of the MACs is as far as channels in multiples of "
                    f"{multiple_of} go on this model (target {target_macs:.0%}): lower --multiple-of",
                    "yellow",
                )
            )
        )


@click.command()
@_model_options
@click.option(
    "--teacher",
    required=True,
    metavar="T.onnx|MODULE:ATTR",
    help="The teacher: an .onnx file (run by ONNX Runtime) or a torch module by import path.",
)
@click.option(
    "--student",
    "student_path",
    metavar="MODULE:ATTR",
    default=None,
    help="The student to train: a torch module or zero-argument factory by import path.",
)
@click.option("--demo-student", is_flag=True, help="Use a half-width demo digit CNN (from scratch) as the student.")
@click.option(
    "--temperature",
    type=click.FloatRange(min=0, min_open=True),
    default=4.0,
    show_default=True,
    help="Softmax temperature of the distillation term.",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Weight of the distillation term (1 - alpha weights the hard labels).",
)
@fail_cleanly
def distill(
    model_path: str | None,
    demo: bool,
    demo_epochs: int,
    data: str | None,
    preprocess_json: str | None,
    epochs: int,
    lr: float,
    batch_size: int,
    out: str,
    teacher: str,
    student_path: str | None,
    demo_student: bool,
    temperature: float,
    alpha: float,
) -> None:
    """Train a small student to mimic a teacher (knowledge distillation), export it, compare the two.

    \b
    The teacher's softened outputs (--temperature) and the true labels (weighted by --alpha) train the
    student for --epochs. Writes OUT/model.onnx (the student). --model/--demo are not used here.
    \b
    Examples:
      edgekit distill --teacher edgekit/assets/digits_cnn.onnx --demo-student --epochs 5 -o student
      edgekit distill --teacher big.onnx --student mypkg.nets:small_net --data imgs/ -o student
    """
    from edgekit.compress.recipes import Training
    from edgekit.compress.recipes import distill as run_distill

    if bool(student_path) == bool(demo_student):
        raise click.UsageError("give exactly one of --student MODULE:ATTR or --demo-student")
    console = make_console()
    data_set = _load_data(data, preprocess_json, batch_size)
    result = run_distill(
        teacher,
        data_set,
        out,
        student=student_path,
        temperature=temperature,
        alpha=alpha,
        training=Training(epochs=epochs, lr=lr),
    )
    _print_table(result.teacher, result.student, data_set, ("teacher", "student"), console)
    console.print(f"student written to {result.path}")


@click.command()
@_model_options
@click.option(
    "--spec",
    "spec_path",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Start activation scales from this quant_spec.json (default: calibrate).",
)
@click.option("--learnable", is_flag=True, help="Learn the quantization scales too (LSQ).")
@fail_cleanly
def qat(
    model_path: str | None,
    demo: bool,
    demo_epochs: int,
    data: str | None,
    preprocess_json: str | None,
    epochs: int,
    lr: float,
    batch_size: int,
    out: str,
    spec_path: str | None,
    learnable: bool,
) -> None:
    """Quantization-aware training: fine-tune with int8 fake quantization, export, compare FP32 vs int8.

    \b
    BatchNorm is folded, every Conv2d/Linear fake-quantizes its weights (x86-ort's int7 per channel)
    and inputs (uint8), the model trains for --epochs, then OUT/ gets model.onnx (QDQ), model_float.onnx,
    quant_spec.json (for `edgekit build -p int8 --spec`) and x86-ort-int8/ (the built int8 artifact).
    \b
    Examples:
      edgekit qat --demo --epochs 2 -o qat
      edgekit qat --model mypkg.nets:trained_net --data imgs/ --learnable -o qat
      edgekit build qat/model_float.onnx -p int8 --spec qat/quant_spec.json -o art
    """
    from edgekit.compress.recipes import Training
    from edgekit.compress.recipes import qat as run_qat

    _require_one_model(model_path, demo)
    console = make_console()
    data_set = _load_data(data, preprocess_json, batch_size)
    model = _load_model(model_path, demo, data_set, demo_epochs)
    result = run_qat(model, data_set, out, spec=spec_path, learnable=learnable, training=Training(epochs=epochs, lr=lr))
    _print_table(result.before, result.int8, data_set, ("fp32", "qat int8 (x86-ort)"), console)
    console.print(
        f"QAT export written to {out} (model.onnx, model_float.onnx, quant_spec.json); "
        f"int8 artifact {result.artifact.id[:16]} in {result.artifact.path}"
    )
