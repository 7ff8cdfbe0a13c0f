"""The dtype and device names that configs and command lines use, and what "auto" picks."""

import torch

from .errors import UserError

# Dtype names accepted by configs and command lines (the training config allows the first two).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str, field: str = "device") -> torch.device:
    """The torch device `name` ("cpu", "cuda", "cuda:1", ...); "auto" is CUDA when available, else the CPU.

    Raises `UserError` naming `field` (the config key or flag the name came from) for a CUDA device without CUDA.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(f"{field} {name!r} is not a torch device: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{field} is {name!r} but CUDA is not available")
    return device


def resolve_dtype(name: str, device: torch.device, field: str = "dtype") -> torch.dtype:
    """The torch dtype `name` (a key of `DTYPES`); "auto" is bfloat16 on CUDA and float32 elsewhere. Raises `UserError`
    naming `field` for any other name."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise UserError(f"{field} must be 'auto' or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]
