"""Peak memory of one whole training step (forward, backward, AdamW), Quiet-STaR against a plain causal step.

`bench_train_step.py` counts what a training forward keeps for backward. The peak of a step is more: the
parameters, their gradients and the optimizer state, the gradients that flow between the passes during backward,
and the transient buffers of the LM head and of the recomputed layers. This benchmark records every tensor
allocation and free of one step with `torch.profiler` (`profile_memory=True`; its memory timeline, from
`torch.profiler._memory_profiler`, which is what `export_memory_timeline` is built on) and reports the largest total
of live tensor bytes, with what is live at that moment grouped by the profiler's category (parameter, gradient,
optimizer state, activation, autograd detail: a gradient in flight, temporary) and by the operator that allocated
it. Tensor bytes, not the allocator's or the process's: the figures are the same on any CPU and carry over to a GPU
(where the caching allocator adds its own slack).

The model is SmolLM2-135M's shape (Llama family: hidden 576, 9 query / 3 key-value heads, vocabulary 49152, tied
embeddings) with random weights and `--layers` of its 30 decoder layers; activation checkpointing on (the training
default). Both steps see the same B x L tokens; the Quiet-STaR step runs N copies of each row, T + A passes.

    python benchmarks/bench_step_peak.py --layers 2 --out-dir benchmarks/results --label after
"""

import argparse
import collections
import logging
import time

import torch
from torch.profiler import profile
from torch.profiler._memory_profiler import MemoryProfile

import quietstar
from common import (
    SMOLLM2_SHAPE,
    add_output_arguments,
    device_description,
    report_stem,
    source_revision,
    utc_now,
    write_report,
)

logger = logging.getLogger("bench_step_peak")
MB = 1e6


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of the SmolLM2-shaped model")
    parser.add_argument("--batch", type=int, default=4, help="B, sequences per step")
    parser.add_argument("--seq-len", type=int, default=128, help="L")
    parser.add_argument("--n-thoughts", type=int, default=2, help="N")
    parser.add_argument("--n-thought-tokens", type=int, default=11, help="T")
    parser.add_argument("--n-ahead-talk", type=int, default=4, help="A")
    parser.add_argument("--top", type=int, default=12, help="allocating operators listed per step")
    add_output_arguments(parser, "step_peak_<label>_cpu.{json,md}")
    return parser.parse_args(argv)


def build_model(args) -> quietstar.QuietStarModelMixin:
    family = quietstar.family_of("llama")
    config = family.config_class(
        **dict(SMOLLM2_SHAPE, num_hidden_layers=args.layers),
        max_position_embeddings=args.seq_len + args.n_thought_tokens + args.n_ahead_talk,
        start_thought_token_id=SMOLLM2_SHAPE["vocab_size"] - 2,
        end_thought_token_id=SMOLLM2_SHAPE["vocab_size"] - 1,
        n_thought_tokens=args.n_thought_tokens,
        n_ahead_talk=args.n_ahead_talk,
        n_thoughts=args.n_thoughts,
        attention_impl="torch",
    )
    torch.manual_seed(0)
    model = family.model_class(config)
    with torch.no_grad():  # a non-zero mixing head, so rewards and the REINFORCE term carry gradients
        model.mixing_head.output.weight.normal_(std=1e-3)
    model.activation_checkpointing_enable({"use_reentrant": False})
    return model.train()


def creating_operators(memory_profile: MemoryProfile) -> dict:
    """TensorKey -> "operator < caller < caller" of the operator whose output the tensor first was."""
    creators = {}
    for node in memory_profile._data_flow_graph.flow_nodes:
        chain, event = [], node._event
        while event is not None and len(chain) < 3:
            chain.append(event.name.split(" object at ")[0])
            event = event.parent
        for key in node.outputs:
            creators.setdefault(key, " < ".join(chain))
    return creators


def replay(memory_profile: MemoryProfile):
    """Walk the memory timeline: yields (live bytes, {TensorKey: bytes} live, {TensorKey: version}) after each event."""
    live, versions, current = {}, {}, 0
    for _, action, (key, version), size in memory_profile.timeline:
        if action.name in ("PREEXISTING", "CREATE"):
            current += size - live.get(key, 0)
            live[key] = size
        elif action.name == "DESTROY":
            current -= live.pop(key, 0)
        versions[key] = version
        yield current, live, versions


def live_bytes_timeline(prof) -> list[int]:
    """Live tensor bytes after each allocation or free of the profiled region, tensors made before it excluded."""
    memory_profile = MemoryProfile(prof.profiler.kineto_results)
    preexisting = sum(size for _, action, _, size in memory_profile.timeline if action.name == "PREEXISTING")
    return [current - preexisting for current, _, _ in replay(memory_profile)] or [0]


def peak_of(prof, top: int) -> dict:
    """The largest total of live tensor bytes in the profiled region, and what is live then."""
    memory_profile = MemoryProfile(prof.profiler.kineto_results)
    peak, at_peak, versions = 0, {}, {}
    for current, live, versions in replay(memory_profile):
        if current > peak:
            peak, at_peak = current, dict(live)
    creators = creating_operators(memory_profile)
    by_category, by_operator = collections.Counter(), collections.Counter()
    for key, size in at_peak.items():
        category = memory_profile._categories.get(key, versions.get(key, 0))
        name = category.name.lower() if category is not None else "unknown"
        by_category[name] += size
        by_operator[f"{name}: {creators.get(key, '?')}"] += size
    return dict(
        peak_bytes=peak,
        by_category={name: size for name, size in by_category.most_common()},
        by_operator=[dict(what=what, bytes=size) for what, size in by_operator.most_common(top)],
    )


def measure(model, tokens: torch.LongTensor, thinking: bool, top: int) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        torch.manual_seed(0)
        model(tokens, thinking=thinking, labels=None if thinking else tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # the optimizer state exists from the first step on
    start = time.perf_counter()
    with profile(record_shapes=True, with_stack=True, profile_memory=True) as prof:
        step()
    seconds = time.perf_counter() - start
    result = peak_of(prof, top)
    result["profiled_step_s"] = seconds
    return result


def to_markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        f"# Peak live tensor memory of one training step: {meta['device']}",
        "",
        f"SmolLM2-135M shape with {meta['layers']} of its 30 layers, vocabulary 49152; B={meta['batch']}, "
        f"L={meta['seq_len']}; Quiet-STaR N={meta['n_thoughts']}, T={meta['n_thought_tokens']}, "
        f"A={meta['n_ahead_talk']}; fp32, AdamW, activation checkpointing; quietstar {meta['quietstar_revision']}.",
        "",
        "| step | peak MB | " + " | ".join(f"{name} MB" for name in meta["categories"]) + " |",
        "|---|---|" + "---|" * len(meta["categories"]),
    ]
    for name, row in report["steps"].items():
        cells = [f"{row['by_category'].get(category, 0) / MB:.1f}" for category in meta["categories"]]
        lines.append(f"| {name} | {row['peak_bytes'] / MB:.1f} | " + " | ".join(cells) + " |")
    for name, row in report["steps"].items():
        lines += ["", f"Live at the peak of the {name} step, by allocating operator:", "", "| MB | what |", "|---|---|"]
        lines += [f"| {item['bytes'] / MB:.1f} | {item['what']} |" for item in row["by_operator"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    tokens = torch.randint(SMOLLM2_SHAPE["vocab_size"] - 2, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0))
    steps = {}
    for name, thinking in (("plain", False), ("quietstar", True)):
        steps[name] = measure(build_model(args), tokens, thinking, args.top)
        logger.info("%s: peak %.1f MB %s", name, steps[name]["peak_bytes"] / MB, steps[name]["by_category"])
    categories = sorted({c for row in steps.values() for c in row["by_category"]}, key=lambda c: -steps["quietstar"]["by_category"].get(c, 0))
    report = {
        "benchmark": "step_peak",
        "date": utc_now(),
        "meta": dict(
            device=device_description(torch.device("cpu")),
            layers=args.layers,
            batch=args.batch,
            seq_len=args.seq_len,
            n_thoughts=args.n_thoughts,
            n_thought_tokens=args.n_thought_tokens,
            n_ahead_talk=args.n_ahead_talk,
            categories=categories,
            torch=torch.__version__,
            quietstar_revision=source_revision(),
        ),
        "steps": steps,
    }
    markdown = to_markdown(report)
    write_report(report_stem(args.out_dir, "step_peak", args.label, "cpu"), report, markdown)
    print(markdown)
    return report


if __name__ == "__main__":
    main()
