"""The training entry point behind `train.py`: command line, checks, then the loop (single process, or torchrun with
FSDP2). Read top to bottom: `main` checks what the user asked for, `run` sets up and trains.

    python train.py                                   # the tiny offline default (configs/tiny.yaml, outputs/tiny)
    python train.py --config configs/tiny.yaml --output-dir DIR --train.max_steps=50
    torchrun --nproc_per_node=8 train.py --config configs/mistral7b_openwebmath.yaml [--resume]

Any config field can be overridden with `--section.key=value` (see quietstar/training/config.py). The run writes
`config.yaml`, `metrics.jsonl`, checkpoints under `checkpoints/` and the final HF model to `final/` in its output
directory. An output directory that already holds a run is used only with `--resume` (continue it) or `--overwrite`
(delete it and start again). A resume keeps the run's settings: changing one (say `--model.quietstar.n_thoughts=4`)
needs `--allow-config-change`, and every change is recorded in `config_changes.jsonl` (see
quietstar/training/resume.py); resuming a finished run says that there is nothing to do.
"""

import argparse
import logging
import os
import shutil
from pathlib import Path

import yaml
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from ..errors import report_user_errors
from .data import PackedTokenStream, synthetic_corpus_files
from .checkpoint import (
    export_hf,
    latest_checkpoint,
    load_checkpoint,
    removed_on_write_error,
    replace_directory,
    save_checkpoint,
)
from .config import (
    SYNTHETIC_SOURCE,
    ConfigError,
    JobConfig,
    batch_layout,
    config_to_dict,
    load_config,
)
from .curriculum import apply_thought_curriculum
from .flops import peak_flops_per_device, quietstar_step_flops
from .metrics import MetricsLogger, StepTimer, peak_memory_gb, truncate_metrics
from .model import load_tokenizer, setup_model
from .optim import build_optimizer, build_scheduler
from .parallel import World, init_world, shutdown
from .resume import Resumption, check_resume, finished_message, record_config_changes
from .run_directory import check_output_dir, clear_generated_corpus, clear_run
from .step import train_step

logger = logging.getLogger("quietstar.train")
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


def parse_args(argv: list[str] | None) -> tuple[JobConfig, bool, bool]:
    """(config, overwrite, allow_config_change) from the command line; raises `ConfigError` for an invalid config or
    argument."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: configs/tiny.yaml)")
    parser.add_argument("--output-dir", help="output directory (overrides output_dir)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the output directory from its latest complete checkpoint (from step 0 when it "
        "has none); same as checkpoint.resume=true",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in the output directory: once the new run is set up, its config.yaml, metrics.jsonl, "
        "checkpoints/, final/ and wandb/ are deleted (other files are kept) and the generated corpus is rewritten",
    )
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: continue the run even though settings of the run (model, Quiet-STaR fields, data, "
        "optimisation, batch) differ from its config.yaml; each change is recorded in config_changes.jsonl with the "
        "step it applies from",
    )
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--") or "=" not in item:
            raise ConfigError(f"unrecognised argument {item!r}: overrides look like --section.key=value")
        overrides.append(item[2:])
    if args.output_dir is not None:
        overrides.append(f"output_dir={args.output_dir}")
    if args.resume:
        overrides.append("checkpoint.resume=true")
    config = load_config(args.config, overrides)
    if args.allow_config_change and not config.checkpoint.resume:
        raise ConfigError("--allow-config-change only applies with --resume")
    return config, args.overwrite, args.allow_config_change


def main(argv: list[str] | None = None) -> None:
    """Check the command line, the config and the output directory, then train. A user error ends the process as
    every quietstar command reports one (`quietstar.errors.report_user_errors`): one line `train.py: error: ...` on
    stderr from rank 0 only (under torchrun every rank finds the same error) and exit status 2. Resuming a finished
    run prints one line saying so (rank 0) and exits with status 0."""
    rank = int(os.environ.get("RANK", 0))
    with report_user_errors("train.py", quiet=rank != 0):
        config, overwrite, allow_config_change = parse_args(argv)
        batch_layout(config.train, int(os.environ.get("WORLD_SIZE", 1)))
        check_output_dir(config.output_dir, resume=config.checkpoint.resume, overwrite=overwrite)
        resumption = check_resume(config, allow_config_change=allow_config_change) if config.checkpoint.resume else None
        if resumption is not None and resumption.finished:
            if rank == 0:
                print(f"train.py: {finished_message(config, resumption)}")
            return
        run(config, overwrite, resumption)


def run(config: JobConfig, overwrite: bool, resumption: Resumption | None = None) -> None:
    """Train as `config` says in `config.output_dir`, already checked by `check_output_dir` (and, when resuming, by
    `check_resume`, whose `resumption` lists the config changes to record)."""
    world = init_world(config.train.device)
    logging.basicConfig(
        level=logging.INFO if world.is_main else logging.WARNING,
        format=f"%(asctime)s [rank {world.rank}] %(levelname)s %(name)s: %(message)s",
    )
    hf_logging.disable_progress_bar()
    output_dir = Path(config.output_dir)
    train = config.train
    micro_batch_size, n_micro = batch_layout(train, world.world_size)
    logger.info(
        "%d rank(s) on %s, %d micro-batch(es) of %d per step", world.world_size, world.device, n_micro, micro_batch_size
    )

    # Tokenizer, data, model, optimizer, schedule; then the latest checkpoint if resuming. Nothing is written in the
    # output directory yet, so a start that fails leaves no directory behind, or an existing one as it was. The data
    # comes first, so that an error in it is found before a large model is loaded, unless its generated corpus goes
    # into the output directory: then it waits until the model is set up.
    tokenizer = load_tokenizer(config.model)
    corpus_in_output_dir = uses_generated_corpus(config) and config.data.synthetic.directory is None
    data = None if corpus_in_output_dir else open_data(config, tokenizer, world, overwrite)
    model = setup_model(
        config.model,
        tokenizer,
        world,
        seed=train.seed,
        param_dtype=train.param_dtype,
        activation_checkpointing=train.activation_checkpointing,
        reshard_after_forward=train.reshard_after_forward,
        trainable_parameters=train.trainable_parameters,
    )
    optimizer = build_optimizer(model, train, world.device)
    scheduler = build_scheduler(optimizer, train)
    step, data_state = 0, None
    checkpoint = latest_checkpoint(output_dir) if config.checkpoint.resume else None
    if checkpoint is not None:
        step, data_state = load_checkpoint(checkpoint, model, optimizer, scheduler, world)
        logger.info("resumed from %s at step %d", checkpoint, step)
    if data is None:
        data = open_data(config, tokenizer, world, overwrite)
    if data_state is not None:
        data.load_state_dict(data_state)
    # Only now, with everything set up, does the run touch its files: a start that fails leaves them as they were.
    if world.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            deleted = clear_run(output_dir)
            if deleted:
                logger.info("--overwrite: deleted %s from %s", ", ".join(deleted), output_dir)
        if config.checkpoint.resume:
            dropped = truncate_metrics(output_dir / "metrics.jsonl", step)
            if dropped:
                logger.info("dropped %d record(s) past step %d from metrics.jsonl", dropped, step)
        if resumption is not None and resumption.changes:
            record_config_changes(output_dir, step, resumption.changes)
            logger.info(
                "config changes from step %d on (recorded in config_changes.jsonl): %s",
                step,
                ", ".join(change.describe() for change in resumption.changes),
            )
        tmp_config = output_dir / ".tmp-config.yaml"  # renamed when complete: a kill leaves a whole config.yaml
        tmp_config.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
        os.replace(tmp_config, output_dir / "config.yaml")
    world.barrier()
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "model: %.1fM parameters (%.1fM trained); thoughts of %d tokens, %d look-ahead tokens, %d thoughts per position",
        n_params / 1e6,
        n_trainable / 1e6,
        model.config.n_thought_tokens,
        model.config.n_ahead_talk,
        model.config.n_thoughts,
    )

    tokens_per_step = train.global_batch_size * config.data.seq_len
    flops_per_step = quietstar_step_flops(model.config, train.global_batch_size, config.data.seq_len)
    peak_flops = peak_flops_per_device(world.device, config.logging.peak_flops_per_device)
    metrics_logger = MetricsLogger(output_dir, config.logging, config_to_dict(config), train.max_steps, world.is_main)
    save = dict(tokenizer=tokenizer, world=world, export_dtype=config.checkpoint.export_dtype, keep_last=config.checkpoint.keep_last)
    saved_step = step if checkpoint is not None else None
    initial_lengths = (model.config.n_thought_tokens, model.config.n_ahead_talk)
    timer = StepTimer()
    while step < train.max_steps:
        if apply_thought_curriculum(model.config, train.thought_curriculum, step, initial_lengths):
            flops_per_step = quietstar_step_flops(model.config, train.global_batch_size, config.data.seq_len)
        lengths = dict(n_thought_tokens=model.config.n_thought_tokens, n_ahead_talk=model.config.n_ahead_talk)
        micro_batches = [data.next_batch(micro_batch_size) for _ in range(n_micro)]
        metrics = train_step(
            model,
            optimizer,
            scheduler,
            micro_batches,
            world,
            step=step,
            seed=train.seed,
            grad_clip=train.grad_clip,
            param_dtype=train.param_dtype,
        )
        step += 1
        seconds = timer.lap()
        if step % config.logging.interval == 0 or step == train.max_steps:
            metrics.update(
                tokens_per_second=tokens_per_step / seconds,
                mfu=flops_per_step / seconds / (peak_flops * world.world_size) if peak_flops else None,
                peak_memory_gb=peak_memory_gb(world.device),
                step_seconds=seconds,
                **lengths,
            )
            metrics_logger.log(step, metrics, timer.mean)
        if config.checkpoint.interval and step % config.checkpoint.interval == 0:
            save_checkpoint(output_dir, step, model, optimizer, scheduler, data.state_dict(), **save)
            saved_step = step
            timer.restart()

    if saved_step != step:
        save_checkpoint(output_dir, step, model, optimizer, scheduler, data.state_dict(), **save)
    final, tmp_final = output_dir / "final", output_dir / ".tmp-final"
    if world.is_main:
        shutil.rmtree(tmp_final, ignore_errors=True)
    with removed_on_write_error(tmp_final, final, world):
        export_hf(model, tokenizer, tmp_final, world, config.checkpoint.export_dtype)
    if world.is_main:
        replace_directory(tmp_final, final)
        logger.info("wrote %s", final)
    metrics_logger.close()
    shutdown(world)


def uses_generated_corpus(config: JobConfig) -> bool:
    return any(source.path == SYNTHETIC_SOURCE for source in config.data.sources)


def open_data(
    config: JobConfig, tokenizer: PreTrainedTokenizerBase, world: World, overwrite: bool
) -> PackedTokenStream:
    """This rank's token stream. The generated corpus is written once (by rank 0; with `--overwrite` anew at its
    default place in the output directory) and then read like any local dataset."""
    output_dir = Path(config.output_dir)
    synthetic_files = None
    if uses_generated_corpus(config):
        if world.is_main:
            if overwrite and config.data.synthetic.directory is None:
                clear_generated_corpus(output_dir)  # regenerated here, with this run's settings
            synthetic_corpus_files(config.data, output_dir)
        world.barrier()
        synthetic_files = synthetic_corpus_files(config.data, output_dir)
    return PackedTokenStream(
        config.data,
        tokenizer,
        rank=world.rank,
        world_size=world.world_size,
        seed=config.train.seed,
        synthetic_files=synthetic_files,
    )

