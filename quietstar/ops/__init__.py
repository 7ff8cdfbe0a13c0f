"""Fused GPU operators (Triton), each with a readable PyTorch reference beside it. Installed with the package only;
checkpoints do not carry them."""
