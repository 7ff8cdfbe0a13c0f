"""The model layer: exactly the files a Quiet-STaR checkpoint carries for `trust_remote_code=True`.

Every module here imports only transformers, torch, einops and its siblings (relative imports), because
`save_pretrained` copies a family's modeling and configuration modules, and the siblings they import, flat into the
checkpoint directory. `tests/test_model_layer.py` enforces the rule.
"""
