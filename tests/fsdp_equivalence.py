"""Run under `torchrun --nproc_per_node=2`: FSDP2 on 2 ranks vs one process on the same batches.

Each rank takes its half of fixed global batches of 4 sequences; rank 0 also runs an unsharded copy of the same
model in one process on the whole batches as 2 gradient-accumulation micro-batches, in the order of the ranks.
`train_step` seeds thought sampling from (seed, step, global micro-batch index), so both runs sample the same thoughts
for the same sequence and the comparison is exact up to float summation order.

1. Gradients: from the same weights, with the mixing head's output layer set to random values so that the mixing
   weight, the rewards and the REINFORCE term are all non-zero, one forward/backward (`accumulate_gradients`), once
   with `reshard_after_forward` True and once False. The sharded gradients are gathered to full tensors before any
   optimizer step. FSDP2's warnings that a wrapped module returned a view tensor are counted over all ranks.
2. Optimizer steps: two `train_step`s from the initial model. At initialisation the mixing weight is exactly 0, so
   the rewards and the REINFORCE term vanish in the first step and only the second exercises them.

Rank 0 writes the results to the JSON file named by argv[1].
"""

import json
import sys
import warnings
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.tensor import DTensor

from quietstar.training.data import PackedTokenStream, synthetic_corpus_files
from quietstar.training.config import load_config
from quietstar.training.model import build_model, load_tokenizer, setup_model
from quietstar.training.optim import build_optimizer, build_scheduler
from quietstar.training.parallel import World, init_world, shutdown
from quietstar.training.step import LOSS_FIELDS, accumulate_gradients, train_step

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
VIEW_WARNING = "returned a view tensor"


def make_model(config, tokenizer, world, reshard_after_forward, state_dict=None):
    """The training model of `world` (sharded under torchrun), with `state_dict` (full, on every rank) if given."""
    model = setup_model(
        config.model,
        tokenizer,
        world,
        seed=config.train.seed,
        param_dtype="float32",
        activation_checkpointing=config.train.activation_checkpointing,
        reshard_after_forward=reshard_after_forward,
    )
    if state_dict is not None:  # set_model_state_dict replaces the entries of the dict it is given by shards
        set_model_state_dict(model, dict(state_dict), options=StateDictOptions(full_state_dict=True))
    return model


def full_gradients(model) -> dict[str, torch.Tensor]:
    """Every parameter's gradient as a full (unsharded) tensor on the CPU."""
    gradients = {}
    for name, parameter in model.named_parameters():
        grad = parameter.grad
        if isinstance(grad, DTensor):
            grad = grad.full_tensor()
        gradients[name] = grad.detach().cpu().clone()
    return gradients


def compare_gradients(config, tokenizer, world, global_batch, state_dict, reshard_after_forward, single):
    """One backward on both sides from `state_dict`; rank 0 gets the comparison, other ranks None."""
    half = config.train.micro_batch_size
    sharded = make_model(config, tokenizer, world, reshard_after_forward, state_dict)
    own_rows = [global_batch[world.rank * half : (world.rank + 1) * half]]
    totals = accumulate_gradients(sharded, own_rows, world, step=0, seed=config.train.seed, param_dtype="float32")
    losses = world.all_reduce_mean(totals)
    sharded_gradients = full_gradients(sharded)
    if not world.is_main:
        return None
    reference = make_model(config, tokenizer, single, True, state_dict)
    reference_totals = accumulate_gradients(
        reference, list(global_batch.split(half)), single, step=0, seed=config.train.seed, param_dtype="float32"
    )
    reference_gradients = full_gradients(reference)
    scale = max(g.abs().max().item() for g in reference_gradients.values())
    return {
        "reshard_after_forward": reshard_after_forward,
        "sharded": dict(zip(LOSS_FIELDS, losses.tolist())),
        "single": dict(zip(LOSS_FIELDS, reference_totals.tolist())),
        "names": sorted(sharded_gradients) == sorted(reference_gradients),
        "max_grad": scale,
        # Per tensor: largest difference relative to the largest gradient of that tensor (floored at 1e-6 of the
        # largest gradient of the model, for tensors whose gradient is almost zero).
        "max_rel_grad_diff": max(
            (sharded_gradients[name] - g).abs().max().item() / max(g.abs().max().item(), 1e-6 * scale)
            for name, g in reference_gradients.items()
        ),
        "max_abs_grad_diff": max(
            (sharded_gradients[name] - g).abs().max().item() for name, g in reference_gradients.items()
        ),
        "mixing_head_grad": reference_gradients["mixing_head.output.weight"].abs().max().item(),
    }


def run_steps(config, tokenizer, world, steps_of_micro_batches, reshard_after_forward):
    model = make_model(config, tokenizer, world, reshard_after_forward)
    train = config.train
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
    single = World(rank=0, world_size=1, device=torch.device("cpu"), distributed=False)
    output_dir = Path(out_path).parent
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml", [*OVERRIDES, f"output_dir={output_dir}"])
    tokenizer = load_tokenizer(config.model)
    if world.is_main:
        synthetic_corpus_files(config.data, output_dir)
    world.barrier()
    stream = PackedTokenStream(config.data, tokenizer, synthetic_files=synthetic_corpus_files(config.data, output_dir))
    global_batches = [stream.next_batch(4) for _ in range(2)]
    half = config.train.micro_batch_size

    # Every rank builds the same weights; a random mixing-head output layer makes w, rewards and REINFORCE non-zero.
    initial = build_model(config.model, tokenizer, config.train.seed)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        initial.mixing_head.output.weight.normal_(std=0.1, generator=generator)
    thinking_state = {name: tensor.clone() for name, tensor in initial.state_dict().items()}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gradient_reports = [
            compare_gradients(config, tokenizer, world, global_batches[0], thinking_state, reshard, single)
            for reshard in (True, False)
        ]
        # reshard_after_forward=False, the setting of the Mistral 7B configs (train.py's torchrun test covers True).
        sharded_metrics, sharded_weights = run_steps(
            config, tokenizer, world, [[b[world.rank * half : (world.rank + 1) * half]] for b in global_batches], False
        )
    view_warnings = sum(VIEW_WARNING in str(w.message) for w in caught)
    view_warnings = int(world.all_reduce_mean(torch.tensor([float(view_warnings)])).item() * world.world_size)
    if world.is_main:
        single_metrics, single_weights = run_steps(
            config, tokenizer, single, [list(b.split(half)) for b in global_batches], True
        )
        initial_weights = build_model(config.model, tokenizer, config.train.seed).state_dict()
        Path(out_path).write_text(
            json.dumps(
                {
                    "gradients": gradient_reports,
                    "fsdp_view_warnings": view_warnings,
                    "sharded": sharded_metrics,
                    "single": single_metrics,
                    "max_param_diff": [_max_diff(a, b) for a, b in zip(sharded_weights, single_weights)],
                    "max_param_change": _max_diff(single_weights[0], initial_weights),
                }
            )
        )
    shutdown(world)


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in b)


if __name__ == "__main__":
    main(sys.argv[1])
