"""One optimizer step of a Mistral-shaped model: Quiet-STaR (per thought-attention implementation) vs a plain step.

For each sequence length L and each `attention_impl` (dense, torch, triton) it times a full Quiet-STaR training step
(all T + A passes on B * N rows, the loss, backward, clipping, AdamW) and, as the reference, a plain causal-LM step
of the same model with thinking off. It reports tokens/s (of the B x L text tokens), the MFU estimate (FLOPs of all
passes, `quietstar.training.flops`), peak memory, and the step time relative to (passes x plain step), the target of
DESIGN.md section 3 (at most 1.3). Out-of-memory runs are recorded as such. Results go to
`benchmarks/results/train_step_<device>.json` and `.md`.

    python benchmarks/bench_train_step.py                        # CUDA: Mistral 7B width, 4 layers; CPU: tiny
    python benchmarks/bench_train_step.py --seq-lens 256 1024 4096 --layers 32 --impls torch triton
"""

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from quietstar import QuietStarConfig, QuietStarForCausalLM
from quietstar.training.config import TrainConfig
from quietstar.training.flops import peak_flops_per_device, plain_step_flops, quietstar_step_flops
from quietstar.training.metrics import peak_memory_gb
from quietstar.training.optim import build_optimizer, build_scheduler
from quietstar.training.parallel import World
from quietstar.training.step import train_step

logger = logging.getLogger("bench_train_step")
RESULTS = Path(__file__).resolve().parent / "results"

# Mistral 7B v0.1 widths; the number of layers is a flag (per-layer throughput is what the step measures).
MISTRAL_7B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8)
TINY = dict(hidden_size=64, intermediate_size=192, num_attention_heads=4, num_key_value_heads=2)


def parse_args():
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["mistral7b", "tiny"], default="mistral7b" if cuda else "tiny")
    parser.add_argument("--layers", type=int, default=4 if cuda else 2, help="decoder layers")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[256, 1024, 4096] if cuda else [32, 64])
    parser.add_argument("--impls", nargs="+", default=["dense", "torch", "triton"], choices=["dense", "torch", "triton"])
    parser.add_argument("--batch", type=int, default=1, help="sequences per step (each thought about N times)")
    parser.add_argument("--n-thought-tokens", type=int, default=11)
    parser.add_argument("--n-ahead-talk", type=int, default=4)
    parser.add_argument("--n-thoughts", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16" if cuda else "float32")
    parser.add_argument("--no-activation-checkpointing", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/train_step_<device>.json)")
    return parser.parse_args()


def build(args, attention_impl: str, device: torch.device) -> QuietStarForCausalLM:
    shape = MISTRAL_7B if args.preset == "mistral7b" else TINY
    config = QuietStarConfig(
        **shape,
        num_hidden_layers=args.layers,
        vocab_size=32002,
        max_position_embeddings=max(args.seq_lens) + args.n_thought_tokens + args.n_ahead_talk,
        n_thought_tokens=args.n_thought_tokens,
        n_ahead_talk=args.n_ahead_talk,
        n_thoughts=args.n_thoughts,
        start_thought_token_id=32000,
        end_thought_token_id=32001,
        attention_impl=attention_impl,
    )
    torch.manual_seed(0)
    model = QuietStarForCausalLM(config).to(device)
    with torch.no_grad():  # a non-zero mixing head, so rewards and the REINFORCE term are exercised
        model.mixing_head.output.weight.normal_(std=1e-3)
    if not args.no_activation_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    return model.train()


def plain_step(model, optimizer, tokens, dtype):
    """A plain causal-LM step of the same model (thinking off): the reference cost of one pass."""
    with torch.autocast(tokens.device.type, dtype=getattr(torch, dtype), enabled=dtype != "float32"):
        loss = model(tokens, labels=tokens, thinking=False).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(args, kind: str, attention_impl: str, length: int, device: torch.device) -> dict:
    """Time `args.steps` steps of one kind ("quietstar" or "plain"); returns the result row."""
    row = {"kind": kind, "attention_impl": attention_impl if kind == "quietstar" else None, "seq_len": length}
    if attention_impl == "triton" and device.type != "cuda":
        return {**row, "status": "skipped (triton needs CUDA)"}
    model = optimizer = None
    try:
        model = build(args, attention_impl, device)
        train = TrainConfig(lr=1e-6, warmup_steps=0, lr_schedule="constant", max_steps=args.steps + 1)
        optimizer = build_optimizer(model, train, device)
        scheduler = build_scheduler(optimizer, train)
        world = World(rank=0, world_size=1, device=device, distributed=False)
        tokens = torch.randint(0, 32000, (args.batch, length), device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        durations = []
        for step in range(args.steps + 1):
            start = time.perf_counter()
            if kind == "quietstar":
                train_step(
                    model, optimizer, scheduler, [tokens], world, step=step, seed=0, grad_clip=1.0, param_dtype=args.dtype
                )
            else:
                plain_step(model, optimizer, tokens, args.dtype)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            durations.append(time.perf_counter() - start)
        seconds = sum(durations[1:]) / args.steps
        count = quietstar_step_flops if kind == "quietstar" else plain_step_flops
        flops = count(model.config, args.batch, length)
        peak = peak_flops_per_device(device, None)
        return {
            **row,
            "status": "ok",
            "step_seconds": seconds,
            "tokens_per_second": args.batch * length / seconds,
            "tflops_per_second": flops / seconds / 1e12,
            "mfu": flops / seconds / peak if peak else None,
            "peak_memory_gb": peak_memory_gb(device),
        }
    except torch.OutOfMemoryError:
        return {**row, "status": "oom"}
    finally:
        del model, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()


def to_markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        f"# Training step: {meta['device']}",
        "",
        f"Model: {meta['preset']} width, {meta['layers']} layers; batch {meta['batch']}; T={meta['n_thought_tokens']}, "
        f"A={meta['n_ahead_talk']}, N={meta['n_thoughts']}; {meta['dtype']}; activation checkpointing "
        f"{meta['activation_checkpointing']}. `vs plain` = step time / (passes x plain step at the same L).",
        "",
        "| L | step | status | s/step | tokens/s | TFLOP/s | MFU | peak mem (GB) | vs plain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    passes = meta["n_thought_tokens"] + meta["n_ahead_talk"]
    for row in rows:
        plain = next((r for r in rows if r["kind"] == "plain" and r["seq_len"] == row["seq_len"]), {})
        name = row["kind"] if row["kind"] == "plain" else f"quietstar/{row['attention_impl']}"
        if row["status"] != "ok":
            lines.append(f"| {row['seq_len']} | {name} | {row['status']} | | | | | | |")
            continue
        ratio = ""
        if row["kind"] == "quietstar" and plain.get("status") == "ok":
            ratio = f"{row['step_seconds'] / (passes * plain['step_seconds']):.2f}"
        mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "n/a"
        lines.append(
            f"| {row['seq_len']} | {name} | ok | {row['step_seconds']:.3f} | {row['tokens_per_second']:.0f} | "
            f"{row['tflops_per_second']:.3g} | {mfu} | {row['peak_memory_gb']:.2f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = []
    for length in args.seq_lens:
        rows.append(measure(args, "plain", "torch", length, device))
        logger.info("%s", rows[-1])
        for impl in args.impls:
            rows.append(measure(args, "quietstar", impl, length, device))
            logger.info("%s", rows[-1])
    meta = {
        "device": device_name,
        "preset": args.preset,
        "layers": args.layers,
        "batch": args.batch,
        "n_thought_tokens": args.n_thought_tokens,
        "n_ahead_talk": args.n_ahead_talk,
        "n_thoughts": args.n_thoughts,
        "dtype": args.dtype,
        "activation_checkpointing": not args.no_activation_checkpointing,
        "torch": torch.__version__,
    }
    out = args.out or RESULTS / f"train_step_{'cuda' if device.type == 'cuda' else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    out.with_suffix(".md").write_text(to_markdown(meta, rows))
    logger.info("wrote %s and %s", out, out.with_suffix(".md"))


if __name__ == "__main__":
    main()
