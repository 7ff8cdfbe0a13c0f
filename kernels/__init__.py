"""Triton kernels of quietstar (installed as `quietstar.kernels`)."""
