"""The import path of the Triton thought attention before version 0.2 (`quietstar.kernels.thought_attention`).

Checkpoints saved by quietstar 0.1 carry modeling code that imports the kernel from here when it runs on a GPU with
`trust_remote_code=True`; the operator itself lives in `quietstar.ops.thought_attention`.
"""
