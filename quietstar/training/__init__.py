"""The training system behind `train.py`: config, model set-up, FSDP2, optimiser, step, checkpoints, metrics."""
