"""`python -m quietstar.eval.generate CHECKPOINT --prompt "..."`: a thinking `generate()` and the thought behind each token.

Generates greedily twice from the same prompt: with thinking (stock `generate()` in eval mode, through
`generate_with_thoughts` to read back each token's thought and mixing weight) and without (`thinking=False`, the base
model), and prints both continuations plus one row per generated token: the token, the thought the model generated
before predicting it, and the mixing weight w of that prediction.
"""

import argparse
from dataclasses import dataclass

import torch

from .checkpoint import load_checkpoint, resolve_checkpoint
from ..devices import DTYPES
from ..errors import report_user_errors
from .inspector import decode_after


@dataclass
class ThinkingGeneration:
    """One prompt's continuations: `thinking_text` / `plain_text` with and without thinking; per generated token t
    (with thinking): `tokens[t]` its text (leading space kept), `thoughts[t]` the thought before it and
    `mixing_weights[t]` its w, shape (generated_length,)."""

    prompt: str
    thinking_text: str
    plain_text: str
    tokens: list[str]
    thoughts: list[str]
    mixing_weights: torch.Tensor


@torch.no_grad()
def generate_with_and_without_thinking(model, tokenizer, prompt: str, max_new_tokens: int) -> ThinkingGeneration:
    """Greedy continuations of `prompt` with and without thinking, and the thought behind each thinking token."""
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    settings = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    model.eval()
    thinking = model.generate_with_thoughts(**inputs, **settings)
    plain = model.generate(**inputs, thinking=False, **settings)
    context = inputs.input_ids[0].tolist()
    generated = thinking.sequences[0, len(context):].tolist()
    tokens, thoughts = [], []
    for t, token in enumerate(generated):
        before = context + generated[:t]
        thoughts.append(decode_after(tokenizer, before, thinking.thought_ids[0, t].tolist()))
        tokens.append(decode_after(tokenizer, before, [token]))
    return ThinkingGeneration(
        prompt=prompt,
        thinking_text=decode_after(tokenizer, context, generated),
        plain_text=decode_after(tokenizer, context, plain[0, len(context):].tolist()),
        tokens=tokens,
        thoughts=thoughts,
        mixing_weights=thinking.mixing_weights[0].float().cpu(),
    )


def format_generation(result: ThinkingGeneration, width: int = 48) -> str:
    """The prompt, both continuations and a fixed-width table of the thinking tokens."""

    def cell(text: str, size: int) -> str:
        text = repr(text)[1:-1]  # newlines and other control characters as escapes
        return text if len(text) <= size else text[: size - 1] + "~"

    header = f"{'step':>4}  {'thought before the token':<{width}}  {'token':<14}  {'w':>7}"
    lines = [
        f"prompt: {cell(result.prompt, 1000)}",
        f"with thinking:    {cell(result.thinking_text, 1000)}",
        f"without thinking: {cell(result.plain_text, 1000)}",
        "",
        header,
        "-" * len(header),
    ]
    for t, (token, thought) in enumerate(zip(result.tokens, result.thoughts)):
        lines.append(f"{t:>4}  {cell(thought, width):<{width}}  {cell(token, 14):<14}  {result.mixing_weights[t]:>7.3f}")
    return "\n".join(lines)


def main(argv=None) -> ThinkingGeneration:
    parser = argparse.ArgumentParser(prog="python -m quietstar.eval.generate", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument(
        "--prompt", required=True, help="the prompt; in bash, $'...' quoting passes a real newline: $'Q: 1 + 1 = ?\\nA:'"
    )
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--thought-temperature", type=float, default=0.0, help="0 = greedy thoughts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be >= 1")
    if args.thought_temperature < 0:
        parser.error("--thought-temperature must be >= 0")
    with report_user_errors(parser.prog):
        model, tokenizer = load_checkpoint(
            resolve_checkpoint(args.checkpoint), args.device, args.dtype,
            inference_thought_temperature=args.thought_temperature,
        )
    torch.manual_seed(args.seed)
    result = generate_with_and_without_thinking(model, tokenizer, args.prompt, args.max_new_tokens)
    print(format_generation(result))
    return result


if __name__ == "__main__":
    main()
