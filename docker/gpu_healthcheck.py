"""HEALTHCHECK of the CUDA image: healthy when torch sees a GPU and can run a kernel on it."""

import sys

import torch

if not torch.cuda.is_available():
    print("unhealthy: torch.cuda.is_available() is False (started without --gpus / no driver?)", file=sys.stderr)
    sys.exit(1)
x = torch.ones(8, device="cuda")
sys.exit(0 if float((x * 2).sum()) == 16.0 else 1)
