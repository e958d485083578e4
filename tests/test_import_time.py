"""`import edgekit` stays light: no torch, TensorFlow or coremltools, and the CLI help is fast."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "tensorflow", "coremltools", "ai_edge_litert", "tflite_runtime", "onnxruntime", "onnx", "cv2")


def test_import_edgekit_loads_no_heavy_module():
    code = f"import sys, edgekit; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


def test_cli_help_loads_no_heavy_module():
    code = (
        "import sys\nfrom edgekit.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print('LOADED=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "LOADED="
