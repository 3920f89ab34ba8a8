"""Model definitions: base MIGMs, the VQ tokenizer, the evaluation classifier, presets."""
from __future__ import annotations

import torch

from ..errors import BackendUnavailable


def require_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device; BackendUnavailable where it names a CUDA GPU this machine lacks
    (torch's own error is a bare AssertionError, "Torch not compiled with CUDA enabled")."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable(f"device {str(device)!r}: no CUDA device here (torch {torch.__version__}, "
                                 f"CUDA {torch.version.cuda or 'not built in'}); use device='cpu'")
    return device
