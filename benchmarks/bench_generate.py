"""End-to-end generation speed with and without thinking: tokens/s of `model.generate()` for a few thought lengths.

A thinking model spends one base step and `n_thought_tokens` thought steps (single tokens on the KV cache) per
generated token, so its tokens/s should be close to the plain model's divided by n_thought_tokens + 1; the counted
model calls per generated token are reported next to the timings to show that the context is never re-forwarded.

The model is random-initialised at a preset shape, with Mistral's vocabulary of 32000 + 2 meta tokens: `tiny`
(hidden 64, 2 layers; the default on CPU) or `mistral-7b` (Mistral 7B v0.1's widths, 32 layers; the default on
CUDA, in bf16); `--layers` overrides the depth. The weights are initialised on the target device. The console shows
a table; a JSON report (tagged with the device name and library versions), the table as markdown and a PNG plot go
to benchmark_runs/ (not tracked by git). Pass `--out-dir benchmarks/results` to write the committed results.

    python benchmarks/bench_generate.py                                   # tiny model on CPU, about a minute
    python benchmarks/bench_generate.py --preset mistral-7b --device cuda --dtype bf16
    python benchmarks/bench_generate.py --preset mistral-7b --layers 4 --device cuda   # a few layers, seconds
    python benchmarks/bench_generate.py --out-dir benchmarks/results      # refresh the committed CPU results
"""

import argparse
import logging
import statistics
import time
from pathlib import Path

import torch

from common import (
    DTYPES,
    MISTRAL_SHAPES,
    MISTRAL_VOCAB,
    add_output_arguments,
    device_slug,
    host_record,
    pyplot,
    report_stem,
    save_figure,
    write_report,
)
from quietstar import QuietStarConfig, QuietStarForCausalLM

logger = logging.getLogger("bench_generate")
PRESETS = {name: MISTRAL_SHAPES[name] for name in ("tiny", "mistral-7b")}
VOCAB = MISTRAL_VOCAB


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: cuda when available, else cpu"
    )
    parser.add_argument("--preset", choices=list(PRESETS), help="model shape (default: tiny on CPU, mistral-7b on CUDA)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--layers", type=int, help="decoder layers (default: the preset's)")
    parser.add_argument("--thought-lengths", type=int, nargs="+", default=[3, 6, 11], help="n_thought_tokens values")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    add_output_arguments(parser, "generate_<device>.{json,md,png}", label=False)
    args = parser.parse_args(argv)
    on_gpu = torch.device(args.device).type == "cuda"
    args.preset = args.preset or ("mistral-7b" if on_gpu else "tiny")
    args.dtype = args.dtype or ("bf16" if on_gpu else "fp32")
    if min(args.thought_lengths) < 3:
        parser.error("--thought-lengths must be >= 3 (start, at least one thought token, end)")
    if min(args.batch_size, args.prompt_length, args.new_tokens, args.repeats, args.layers or 1) < 1:
        parser.error("--batch-size, --prompt-length, --new-tokens, --repeats and --layers must be >= 1")
    return args


def model_shape(args) -> dict:
    """The preset's widths, with `--layers` decoder layers when given."""
    return dict(PRESETS[args.preset], **({"num_hidden_layers": args.layers} if args.layers else {}))


def time_generate(model, input_ids, args, device, thinking: bool) -> dict:
    """Median wall time of `generate` over the repeats (after one warm-up), and model calls per generated token."""
    calls = []
    handle = model.model.register_forward_pre_hook(lambda module, inputs: calls.append(1))
    kwargs = dict(
        max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, thinking=thinking, pad_token_id=0
    )
    try:
        model.generate(input_ids, **kwargs)
        counted = len(calls)
        seconds = []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model.generate(input_ids, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
    finally:
        handle.remove()
    median = statistics.median(seconds)
    return {
        "seconds": median,
        "tokens_per_s": args.batch_size * args.new_tokens / median,
        "model_calls_per_token": counted / args.new_tokens,
    }


def to_markdown(report: dict) -> str:
    """The results as a markdown table, one row per setting, with the slowdown expected from the call count."""
    settings = report["settings"]
    lines = [
        f"# Generation with and without thinking ({report['device']})",
        "",
        f"Preset {report['preset']} ({report['model']['parameters'] / 1e6:.1f} M parameters), {settings['dtype']}, "
        f"batch {settings['batch_size']}, prompt {settings['prompt_length']} tokens, {settings['new_tokens']} new "
        f"tokens, median of {settings['repeats']}; {settings['decoding']}; torch {report['versions']['torch']}, "
        f"transformers {report['versions']['transformers']}; {report['date']}; host load average "
        f"{report['load_average_1min']:.1f}.",
        "",
        "| thinking | n_thought_tokens | tokens/s | model calls per token | slowdown | expected slowdown (calls) |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        if row["thinking"]:
            lines.append(
                f"| yes | {row['n_thought_tokens']} | {row['tokens_per_s']:.1f} | {row['model_calls_per_token']:.1f} | "
                f"{row['slowdown']:.2f}x | {row['model_calls_per_token']:.0f}x |"
            )
        else:
            lines.append(f"| no | - | {row['tokens_per_s']:.1f} | {row['model_calls_per_token']:.1f} | 1.00x | 1x |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> bool:
    """Tokens/s against n_thought_tokens, next to plain tokens/s / (n_thought_tokens + 1); False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    plain, *thinking = report["results"]
    lengths = [row["n_thought_tokens"] for row in thinking]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(lengths, [row["tokens_per_s"] for row in thinking], "o-", label="thinking, measured")
    axes.plot(
        lengths, [plain["tokens_per_s"] / (length + 1) for length in lengths], "--",
        label="plain / (n_thought_tokens + 1)",
    )
    axes.axhline(plain["tokens_per_s"], color="grey", linestyle=":", label="no thinking")
    axes.set(
        xlabel="n_thought_tokens", ylabel="generated tokens/s", ylim=(0, 1.5 * plain["tokens_per_s"]),
        title=f"generate(), preset {report['preset']}, {report['settings']['dtype']}\n{report['device']}",
    )
    axes.legend(loc="upper right")
    save_figure(figure, path)
    return True


@torch.no_grad()
def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    shape = model_shape(args)
    config = QuietStarConfig(**shape, vocab_size=VOCAB, start_thought_token_id=VOCAB - 2, end_thought_token_id=VOCAB - 1)
    with device:  # initialised where it runs: a 7B-wide model initialised on the CPU first takes minutes
        model = QuietStarForCausalLM(config)
    model = model.to(device=device, dtype=DTYPES[args.dtype]).eval()
    model.mixing_head.output.weight.normal_(0, 0.02)  # non-zero, as after training (cost does not depend on it)
    model.generation_config.suppress_tokens = [VOCAB - 2, VOCAB - 1]
    input_ids = torch.randint(0, VOCAB - 2, (args.batch_size, args.prompt_length), device=device)

    results = [{"thinking": False, "n_thought_tokens": None, **time_generate(model, input_ids, args, device, False)}]
    for thought_length in args.thought_lengths:
        model.config.n_thought_tokens = thought_length
        row = time_generate(model, input_ids, args, device, True)
        row["slowdown"] = results[0]["tokens_per_s"] / row["tokens_per_s"]
        results.append({"thinking": True, "n_thought_tokens": thought_length, **row})

    report = {
        "benchmark": "generate",
        **host_record(device),
        "preset": args.preset,
        "model": {**shape, "vocab_size": VOCAB, "parameters": sum(p.numel() for p in model.parameters())},
        "settings": {
            "dtype": args.dtype,
            "batch_size": args.batch_size,
            "prompt_length": args.prompt_length,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "decoding": "greedy, greedy thoughts",
        },
        "results": results,
    }
    markdown = to_markdown(report)
    print(markdown)
    stem = report_stem(args.out_dir, "generate", device_slug(device))
    write_report(stem, report, markdown)
    written = [".json", ".md"] + ([".png"] if plot(report, stem.with_suffix(".png")) else [])
    logger.info("wrote %s.{%s}", stem, ",".join(suffix[1:] for suffix in written))
    return report


if __name__ == "__main__":
    main()
