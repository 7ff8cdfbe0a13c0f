"""`quietstar.devices`: what "auto" picks, and one-line errors naming the field for names that cannot be used."""

import pytest
import torch

from quietstar.devices import resolve_device, resolve_dtype
from quietstar.errors import UserError


def test_auto_picks_cuda_when_available_and_its_dtype():
    device = resolve_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", device) == (torch.bfloat16 if device.type == "cuda" else torch.float32)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_device("cpu") == torch.device("cpu") and resolve_dtype("float16", device) == torch.float16


def test_names_that_cannot_be_used_are_one_line_naming_the_field():
    with pytest.raises(UserError, match=r"^--device 'gpu' is not a torch device: "):
        resolve_device("gpu", "--device")
    with pytest.raises(UserError, match=r"^--dtype must be 'auto' or one of \['bfloat16', 'float16', 'float32'\], got 'fp8'$"):
        resolve_dtype("fp8", torch.device("cpu"), "--dtype")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_names_the_field():
    with pytest.raises(UserError, match=r"^train.device is 'cuda' but CUDA is not available$"):
        resolve_device("cuda", "train.device")
