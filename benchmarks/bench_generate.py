"""End-to-end generation speed with and without thinking: tokens/s of `model.generate()` for a few thought lengths.

A thinking model spends one base step and `n_thought_tokens` thought steps (single tokens on the KV cache) per
generated token, so its tokens/s should be close to the plain model's divided by n_thought_tokens + 1; the counted
model calls per generated token are reported next to the timings to show that the context is never re-forwarded.

The model is random-initialised at a preset shape (`tiny` by default: hidden 64, 2 layers, Mistral's vocabulary of
32000 + 2 meta tokens; `mistral-7b` for GPUs). Results go to benchmarks/results/generate_<device>.json, tagged with
the device name and library versions.

    python benchmarks/bench_generate.py                                   # tiny model on CPU, about a minute
    python benchmarks/bench_generate.py --preset mistral-7b --device cuda --dtype bf16
"""

import argparse
import datetime
import json
import platform
import re
import statistics
import time
from pathlib import Path

import torch
import transformers

import quietstar
from quietstar import QuietStarConfig, QuietStarForCausalLM

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PRESETS = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2),
    "mistral-7b": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8
    ),
}
VOCAB = 32002  # Mistral's 32000 tokens + <|startofthought|>, <|endofthought|>


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--thought-lengths", type=int, nargs="+", default=[3, 6, 11], help="n_thought_tokens values")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, help="JSON path (default benchmarks/results/generate_<device>.json)")
    args = parser.parse_args(argv)
    if min(args.thought_lengths) < 3:
        parser.error("--thought-lengths must be >= 3 (start, at least one thought token, end)")
    if min(args.batch_size, args.prompt_length, args.new_tokens, args.repeats) < 1:
        parser.error("--batch-size, --prompt-length, --new-tokens and --repeats must be >= 1")
    return args


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def device_slug(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


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


@torch.no_grad()
def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = QuietStarConfig(
        **PRESETS[args.preset], vocab_size=VOCAB, start_thought_token_id=VOCAB - 2, end_thought_token_id=VOCAB - 1
    )
    model = QuietStarForCausalLM(config).to(device=device, dtype=DTYPES[args.dtype]).eval()
    model.mixing_head.output.weight.normal_(0, 0.02)  # non-zero, as after training (cost does not depend on it)
    model.generation_config.suppress_tokens = [VOCAB - 2, VOCAB - 1]
    input_ids = torch.randint(0, VOCAB - 2, (args.batch_size, args.prompt_length), device=device)

    results = [{"thinking": False, "n_thought_tokens": None, **time_generate(model, input_ids, args, device, False)}]
    print(f"no thinking          : {results[0]['tokens_per_s']:9.1f} tokens/s")
    for thought_length in args.thought_lengths:
        model.config.n_thought_tokens = thought_length
        row = time_generate(model, input_ids, args, device, True)
        row["slowdown"] = results[0]["tokens_per_s"] / row["tokens_per_s"]
        results.append({"thinking": True, "n_thought_tokens": thought_length, **row})
        print(
            f"thinking, {thought_length:2d} tokens   : {row['tokens_per_s']:9.1f} tokens/s  "
            f"({row['slowdown']:.1f}x slower, {row['model_calls_per_token']:.1f} model calls per token)"
        )

    report = {
        "benchmark": "generate",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "quietstar": quietstar.__version__},
        "preset": args.preset,
        "model": {**PRESETS[args.preset], "vocab_size": VOCAB, "parameters": sum(p.numel() for p in model.parameters())},
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
    output = args.output or RESULTS_DIR / f"generate_{device_slug(device)}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")
    return report


if __name__ == "__main__":
    main()
