"""Compression on torch (the torch extra): pruning, distillation, quantization-aware training and
mixed-precision training, each a building block for the user's own training loop. Import the
submodules directly; importing this package does not import torch."""
