"""`python -m quietstar.eval CHECKPOINT`: zero-shot GSM8K and CommonsenseQA as the Quiet-STaR paper scored them.

Writes a JSON file with the scores per task and mode (thinking / base), the evaluation settings, the absolute paths
of the checkpoint and the data files (hub ids as given) and the model config. A plain base checkpoint (the model a
run started from) has no thoughts; `--modes base` scores it as it is, for comparison. Examples:

    python -m quietstar.eval outputs/tiny/final --limit 200
    python -m quietstar.eval CKPT --tasks gsm8k --gsm8k data/gsm8k_test.jsonl --thought-temperature 0
    python -m quietstar.eval BASE_CHECKPOINT --modes base --limit 200
"""

import argparse
import json
import logging
from pathlib import Path

import quietstar

from ..devices import DTYPES
from ..errors import report_user_errors
from .checkpoint import NotQuietStarCheckpointError, load_checkpoint, resolve_checkpoint
from .scoring import LOCAL_FORMATS, TASKS, EvalSettings, evaluate_task, load_examples, local_data_file

MODES = {"thinking": True, "base": False}
PROG = "python -m quietstar.eval"


def parse_args(argv=None) -> argparse.Namespace:
    formats = "/".join(sorted(LOCAL_FORMATS))
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.splitlines()[0],
        epilog="Local data files hold one example per row (a JSON object per line in .jsonl) with the fields of the "
        "hub data sets: "
        + "; ".join(f"{name}: {spec.fields_help}" for name, spec in TASKS.items())
        + ".",
    )
    parser.add_argument(
        "checkpoint",
        help="checkpoint directory (or hub model id) with its tokenizer: a quietstar checkpoint, or with --modes base "
        "also the base model it started from",
    )
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["gsm8k", "csqa"])
    for name, spec in TASKS.items():
        parser.add_argument(
            f"--{name}",
            default=spec.hub_id,
            help=f"hub data set id or local {formats} file with the fields {', '.join(spec.fields)} "
            f"(default {spec.hub_id})",
        )
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="with and/or without thinking")
    parser.add_argument("--limit", type=int, help="score only the first N examples of each task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256, help="tokens per example (the paper's 256)")
    parser.add_argument(
        "--thought-temperature", type=float, default=1.0,
        help="thought sampling temperature: 1.0 samples thoughts as the paper's evaluation did, 0 is greedy",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    parser.add_argument("--output", type=Path, default=Path("eval_results.json"), help="report file (default eval_results.json)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.max_length < 2 or (args.limit is not None and args.limit < 1):
        parser.error("--batch-size and --limit must be >= 1 and --max-length >= 2")
    if args.thought_temperature < 0:
        parser.error("--thought-temperature must be >= 0")
    return args


def main(argv=None) -> dict:
    """Run the CLI; a missing or damaged checkpoint or data file ends it with one line naming the path (see
    `report_user_errors`)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with report_user_errors(PROG, hints={NotQuietStarCheckpointError: "score it without thinking with --modes base"}):
        return evaluate(args)


def evaluate(args: argparse.Namespace) -> dict:
    """Load the checkpoint and every task's data, score them and write the report; return it."""
    checkpoint = resolve_checkpoint(args.checkpoint)
    examples = {task: load_examples(task, getattr(args, task), args.limit) for task in args.tasks}
    model, tokenizer = load_checkpoint(
        checkpoint,
        args.device,
        args.dtype,
        plain="thinking" not in args.modes,  # a base checkpoint is scored as it is
        inference_thought_temperature=args.thought_temperature,
    )
    settings = EvalSettings(batch_size=args.batch_size, max_length=args.max_length, seed=args.seed)
    results = {}
    for task in args.tasks:
        source = getattr(args, task)
        local = local_data_file(source)
        results[task] = {"source": str(local) if local is not None else source}
        for mode in args.modes:
            scores = evaluate_task(model, tokenizer, task, examples[task], thinking=MODES[mode], settings=settings)
            results[task][mode] = scores
            print(
                f"{task:6s} {mode:8s} n={scores['n_examples']:5d}  paper={scores['paper_accuracy']:.4f}  "
                f"whitelist-argmax={scores['whitelist_argmax_accuracy']:.4f}  argmax={scores['argmax_accuracy']:.4f}"
            )
    report = {
        "checkpoint": checkpoint,
        "quietstar_version": quietstar.__version__,
        "settings": {
            "tasks": args.tasks,
            "modes": args.modes,
            "limit": args.limit,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "thought_temperature": args.thought_temperature,
            "seed": args.seed,
            "device": str(model.device),
            "dtype": str(model.dtype),
        },
        "model_config": model.config.to_dict(),
        "results": results,
    }
    output = args.output.absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")
    return report


if __name__ == "__main__":
    main()
