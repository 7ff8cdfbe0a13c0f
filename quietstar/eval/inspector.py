"""`python -m quietstar.eval.inspector CHECKPOINT --text "..."`: what the model thinks at every position of a text.

For each position i (after token x[i]) the table shows the thought generated there, the mixing weight w of the
next-token prediction and the thought's reward as in training: the NLL of the next `n_ahead_talk` tokens without the
thought minus their NLL with it (positive = the thought helped). As in training, only positions whose whole window
x[i+1..i+A] lies inside the text have a reward (the last A positions have none). An HTML heatmap colours every token
by the reward (and by w) of the thought that follows it; hover a token to read its thought.
"""

import argparse
import html
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..devices import DTYPES
from .checkpoint import NotQuietStarCheckpointError, load_checkpoint, resolve_checkpoint
from ..errors import report_user_errors
from ..models.loss import look_ahead_scores

PROG = "python -m quietstar.eval.inspector"


@dataclass
class ThoughtReport:
    """Per position i of one text (L positions): `tokens[i]` = x[i] as it appears in the text (with its leading
    space), `thoughts[i]` the thought after it, `mixing_weights` (L,) w of the prediction of x[i+1], `rewards` (L,)
    summed NLL improvement over x[i+1..i+A] (NaN where that window runs past the text), `base_nll` / `mixed_nll`
    (L,) NLL of x[i+1] without / with the thought (NaN at the last position)."""

    tokens: list[str]
    thoughts: list[str]
    mixing_weights: torch.Tensor
    rewards: torch.Tensor
    base_nll: torch.Tensor
    mixed_nll: torch.Tensor


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """The text of every token as it appears in `tokenizer.decode(ids)`, leading space included.

    Decoding a SentencePiece token on its own drops its leading-space marker ("▁Q" -> "Q"), so each token's text is
    what it adds to the decoded prefix. The texts concatenate to `tokenizer.decode(ids)`; a character split over
    several byte tokens belongs to the byte that completes it (the others get "").
    """
    texts, shown = [], ""
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:end])
        if text.endswith("\ufffd") and end < len(ids):
            texts.append("")  # an incomplete multi-byte character: wait for the byte that completes it
            continue
        texts.append(text[len(os.path.commonprefix([shown, text])):])
        shown = text
    return texts


def decode_after(tokenizer, context_ids: list[int], ids: list[int]) -> str:
    """The text `ids` add after `context_ids`, so that a leading space of the first token is kept."""
    before = tokenizer.decode(context_ids)
    text = tokenizer.decode(context_ids + ids)
    return text[len(os.path.commonprefix([before, text])):]


@torch.no_grad()
def inspect_text(model, tokenizer, text: str) -> ThoughtReport:
    """Think at every position of `text` in parallel (eval mode) and score each thought on the next tokens."""
    input_ids = tokenizer(text, return_tensors="pt").input_ids.to(model.device)
    if input_ids.shape[1] < 2:
        raise ValueError("the text must encode to at least two tokens")
    model.eval()
    passes = model.run_parallel_thoughts(input_ids, n_ahead_talk=model.config.n_ahead_talk)
    scores = look_ahead_scores(
        passes.base_hidden, passes.talk_hidden, input_ids, model.lm_head.weight,
        base_loss_weight=model.config.base_loss_weight,
    )
    last = torch.full((1,), float("nan"), device=input_ids.device)
    ids = input_ids[0].tolist()
    thoughts = passes.thought_ids[0].tolist()  # (L, T - 2)
    return ThoughtReport(
        tokens=token_texts(tokenizer, ids),
        thoughts=[decode_after(tokenizer, [token], thought) for token, thought in zip(ids, thoughts)],
        mixing_weights=passes.mixing_weights[0][0].float().cpu(),
        rewards=scores.rewards[0].float().masked_fill(~scores.rewarded[0], float("nan")).cpu(),
        base_nll=torch.cat([scores.base_nll[0, :-1], last]).float().cpu(),
        mixed_nll=torch.cat([scores.talk_nll[0][0, :-1], last]).float().cpu(),
    )


def format_table(report: ThoughtReport, width: int = 40) -> str:
    """A fixed-width terminal table, one row per position."""

    def cell(text: str, size: int) -> str:
        text = repr(text)[1:-1]  # newlines and other control characters as escapes
        return text if len(text) <= size else text[: size - 1] + "~"

    header = f"{'pos':>4}  {'token':<14}  {'thought after it':<{width}}  {'w':>7}  {'reward':>8}  {'nll base->mixed':>16}"
    lines = [header, "-" * len(header)]
    for i, (token, thought) in enumerate(zip(report.tokens, report.thoughts)):
        nll = "" if i == len(report.tokens) - 1 else f"{report.base_nll[i]:.3f}->{report.mixed_nll[i]:.3f}"
        reward = "" if math.isnan(report.rewards[i]) else f"{report.rewards[i]:.3f}"
        lines.append(
            f"{i:>4}  {cell(token, 14):<14}  {cell(thought, width):<{width}}  {report.mixing_weights[i]:>7.3f}  "
            f"{reward:>8}  {nll:>16}"
        )
    return "\n".join(lines)


def _colour(value: float, scale: float) -> str:
    """Green for positive, red for negative values, saturating at |value| = scale; grey for NaN (no value)."""
    if math.isnan(value):
        return "hsla(0, 0%, 50%, 0.15)"
    strength = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    hue = 120 if value >= 0 else 0
    return f"hsla({hue}, 70%, 45%, {0.08 + 0.8 * strength:.3f})"


def format_html(report: ThoughtReport, title: str) -> str:
    """A self-contained HTML page with two heatmaps over the text: thought reward and mixing weight."""
    sections = []
    for name, values in (("reward of the thought after each token", report.rewards), ("mixing weight w", report.mixing_weights)):
        scale = float(values.abs().nan_to_num(0.0).max()) or 1.0
        spans = []
        for i, token in enumerate(report.tokens):
            reward = "none (window past the text)" if math.isnan(report.rewards[i]) else f"{report.rewards[i]:.3f}"
            tip = f"pos {i} | thought: {report.thoughts[i]} | w={report.mixing_weights[i]:.3f} | reward={reward}"
            text = html.escape(token).replace("\n", "&#8629;<br>")
            spans.append(f'<span title="{html.escape(tip)}" style="background:{_colour(float(values[i]), scale)}">{text}</span>')
        sections.append(f"<h2>{html.escape(name)} (scale &plusmn;{scale:.3g})</h2><div class=\"text\">{''.join(spans)}</div>")
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        ".text{font-family:monospace;white-space:pre-wrap;line-height:1.8}"
        ".text span{padding:1px 0;border-radius:3px}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title><style>{style}</style>"
        f"</head><body><h1>{html.escape(title)}</h1><p>Green: positive, red: negative. Hover a token for the thought "
        f"generated after it.</p>{''.join(sections)}</body></html>\n"
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkpoint",
        help="quietstar checkpoint directory (or hub model id) with its tokenizer, e.g. outputs/tiny/final",
    )
    parser.add_argument(
        "--text", required=True,
        help="the text to inspect (required); in bash, $'...' quoting passes a real newline: $'Q: 1 + 1 = ?\\nA: 2'",
    )
    parser.add_argument(
        "--html",
        type=Path,
        default=Path("thoughts.html"),
        help="where to write the heatmap page (default: %(default)s)",
    )
    parser.add_argument(
        "--thought-temperature", type=float, default=0.0,
        help="thought sampling temperature: 0 picks the most likely token (greedy thoughts), 1.0 samples from the "
        "model's distribution (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the thought sampling when --thought-temperature > 0 (default: %(default)s)",
    )
    parser.add_argument(
        "--device", default="auto",
        help="torch device to run on (cpu, cuda, cuda:1, ...); auto takes CUDA when available (default: %(default)s)",
    )
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", *DTYPES],
        help="weight dtype; auto is bfloat16 on CUDA and float32 otherwise (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.thought_temperature < 0:
        parser.error("--thought-temperature must be >= 0")
    return args


def main(argv=None) -> ThoughtReport:
    args = parse_args(argv)
    with report_user_errors(PROG, hints={NotQuietStarCheckpointError: "it has no thoughts to inspect"}):
        model, tokenizer = load_checkpoint(
            resolve_checkpoint(args.checkpoint), args.device, args.dtype,
            inference_thought_temperature=args.thought_temperature,
        )
    torch.manual_seed(args.seed)
    report = inspect_text(model, tokenizer, args.text)
    print(format_table(report))
    args.html.parent.mkdir(parents=True, exist_ok=True)
    args.html.write_text(format_html(report, f"Quiet-STaR thoughts: {args.checkpoint}"))
    print(f"wrote {args.html}")
    return report


if __name__ == "__main__":
    main()
