"""Run under `torchrun --nproc_per_node=2`: FSDP2 optimizer steps on 2 ranks vs one process on the same batches.

Each rank takes its half of fixed global batches of 4 sequences; rank 0 then trains an unsharded copy of the same
initial model in one process on the whole batches as 2 gradient-accumulation micro-batches, in the order of the ranks.
Two steps are run: at initialisation the mixing weight is exactly 0, so the rewards and the REINFORCE term vanish in
the first step and only the second exercises them.
`train_step` seeds thought sampling from (seed, step, global micro-batch index), so both runs sample the same
thoughts for the same sequence and the comparison is exact up to float summation order. Rank 0 writes the loss of
both runs and the largest parameter differences after each step to the JSON file named by argv[1].
"""

import json
import sys
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from quietstar.data import PackedTokenStream, synthetic_corpus_files
from quietstar.training.config import load_config
from quietstar.training.model import build_model, load_tokenizer, setup_model
from quietstar.training.optim import build_optimizer, build_scheduler
from quietstar.training.parallel import World, init_world, shutdown
from quietstar.training.step import train_step

OVERRIDES = [
    "data.seq_len=16",
    "data.synthetic.n_documents=40",
    "train.lr=1e-2",
    "train.warmup_steps=0",
    "train.lr_schedule=constant",
    "train.global_batch_size=4",
    "train.micro_batch_size=2",
    "train.activation_checkpointing=true",
]


def run_steps(config, tokenizer, world, steps_of_micro_batches, reshard_after_forward):
    train = config.train
    model = setup_model(
        config.model,
        tokenizer,
        world,
        seed=train.seed,
        param_dtype="float32",
        activation_checkpointing=train.activation_checkpointing,
        reshard_after_forward=reshard_after_forward,
    )
    optimizer = build_optimizer(model, train, world.device)
    scheduler = build_scheduler(optimizer, train)
    metrics, weights = [], []
    for step, micro_batches in enumerate(steps_of_micro_batches):
        metrics.append(
            train_step(
                model, optimizer, scheduler, micro_batches, world, step=step, seed=train.seed, grad_clip=train.grad_clip, param_dtype="float32"
            )
        )
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        weights.append({name: tensor.clone() for name, tensor in full.items()})  # unsharded: views of live weights
    return metrics, weights


def main(out_path: str) -> None:
    world = init_world("cpu")
    output_dir = Path(out_path).parent
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml", [*OVERRIDES, f"output_dir={output_dir}"])
    tokenizer = load_tokenizer(config.model)
    if world.is_main:
        synthetic_corpus_files(config.data, output_dir)
    world.barrier()
    stream = PackedTokenStream(config.data, tokenizer, synthetic_files=synthetic_corpus_files(config.data, output_dir))
    global_batches = [stream.next_batch(4) for _ in range(2)]
    half = config.train.micro_batch_size
    # reshard_after_forward=False, the setting of the Mistral 7B configs (train.py's torchrun test covers True).
    sharded_metrics, sharded_weights = run_steps(
        config, tokenizer, world, [[b[world.rank * half : (world.rank + 1) * half]] for b in global_batches], False
    )
    if world.is_main:
        single = World(rank=0, world_size=1, device=torch.device("cpu"), distributed=False)
        single_metrics, single_weights = run_steps(
            config, tokenizer, single, [list(b.split(half)) for b in global_batches], True
        )
        initial = build_model(config.model, tokenizer, config.train.seed).state_dict()
        Path(out_path).write_text(
            json.dumps(
                {
                    "sharded": sharded_metrics,
                    "single": single_metrics,
                    "max_param_diff": [_max_diff(a, b) for a, b in zip(sharded_weights, single_weights)],
                    "max_param_change": _max_diff(single_weights[0], initial),
                }
            )
        )
    shutdown(world)


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in b)


if __name__ == "__main__":
    main(sys.argv[1])
