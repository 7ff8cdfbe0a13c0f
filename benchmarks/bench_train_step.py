"""Memory and time of one Quiet-STaR training step, against plain causal steps of the same model.

Memory, independent of the device: during one training forward (train mode, the Quiet-STaR loss included) every
tensor that autograd saves for backward is recorded through `torch.autograd.graph.saved_tensors_hooks`; those the
graph still holds when the forward returns are counted, each storage once (by its data pointer); the storages of
parameters and buffers are left out, since they are there without any forward. Added to that are the tensors held by the thought K/V store of the forward (every tensor
reachable from the store object, found by hooking the model's forward kwargs), again once per storage; the table
gives autograd's bytes, the store's, the bytes both hold, the checkpointed layers' other inputs (below), and the union. "vocab-sized" is the part of autograd's
bytes in storages saved as (..., V) with at least one row per text token (full-vocabulary logits or softmaxes).
"P x plain step" is P times the bytes that one plain causal step (thinking off) of the same model on the same
B * N rows saves: what running the P passes as plain steps would keep, the floor for any implementation that keeps
the passes' activations.

Two sweeps at the preset's shape: n_thought_tokens T over `--thought-lengths` at L = `--fit-seq-len`, with a least
squares fit of the union bytes to a + b * P, P = T + A passes (the relative residuals, and the P^2 coefficient of a
quadratic fit, show whether anything grows faster than linearly), and L over `--seq-lens` at T =
`--sweep-thought-tokens`.

Time: at each L of `--time-seq-lens` (T = `--sweep-thought-tokens`), rounds of one Quiet-STaR forward + backward
over the B * N thought rows followed by P plain causal forward + backward steps (thinking off) of the same model on
the same B * N rows (each sequence repeated N times); the ratio (median over rounds) is the overhead of the
parallel-thought step over running its P passes as plain passes.

On CUDA the rows also give torch.cuda.max_memory_allocated above the memory in use before the step, for a full
forward + backward ("CUDA peak"), and torch.cuda.max_memory_allocated itself (weights and gradients included).
Activation checkpointing is off unless asked for. With `--activation-checkpointing` (the training default) each
decoder layer is recomputed in backward: autograd saves nothing inside a layer during the forward, and what the
layer keeps instead is its inputs. torch's checkpoint saves the positional ones (the hidden states) as saved
tensors, so the hooks count them; the keyword ones (RoPE tables, masks) stay in the recompute closure, so they are
found by hooking the checkpointed layers' forward arguments and added to the union as "layer inputs" (those not
already counted). The per-node breakdown is skipped then, since reading a checkpointed node's saved tensors would
recompute its layer.

Presets: `tiny` (hidden 64, 2 layers, for smoke runs), `mistral-shaped` (Mistral's head layout at hidden 512,
4 layers, 8 query / 2 key-value heads: the memory study on CPU), `mistral-7b` (Mistral 7B v0.1 widths, 32 layers;
`--layers` overrides the depth). All use Mistral's vocabulary of 32000 + 2 meta tokens.

Results go to benchmark_runs/ (JSON, markdown, and a PNG when matplotlib is installed); pass
`--out-dir benchmarks/results` to write the committed results.

    python benchmarks/bench_train_step.py                                   # mistral-shaped on CPU, ~15 minutes
    python benchmarks/bench_train_step.py --preset tiny --quick             # seconds
    python benchmarks/bench_train_step.py --preset mistral-7b --layers 4 --device cuda --dtype bf16
"""

import argparse
import gc
import json
import logging
import re
import statistics
import time
import weakref
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers.modeling_layers import GradientCheckpointingLayer

from common import (
    DTYPES,
    MISTRAL_SHAPES,
    MISTRAL_VOCAB,
    add_output_arguments,
    device_description,
    device_slug,
    pyplot,
    report_stem,
    save_figure,
    source_revision,
    utc_now,
    write_json,
)
from quietstar import QuietStarConfig, QuietStarForCausalLM

logger = logging.getLogger("bench_train_step")
VOCAB = MISTRAL_VOCAB
PRESETS = MISTRAL_SHAPES
QUICK = dict(thought_lengths=[3, 4, 5], fit_seq_len=8, seq_lens=[8, 12], sweep_thought_tokens=4, time_seq_lens=[8])
MIB = 2**20


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="mistral-shaped")
    parser.add_argument("--layers", type=int, help="decoder layers (default: the preset's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="fp32", help="bf16 runs the step under autocast")
    parser.add_argument("--attention-impl", default="auto", choices=["auto", "torch", "triton"])
    parser.add_argument("--batch", type=int, default=1, help="B, sequences per step")
    parser.add_argument("--n-thoughts", type=int, default=2, help="N, thoughts per position")
    parser.add_argument("--n-ahead-talk", type=int, default=4, help="A, look-ahead passes")
    parser.add_argument("--thought-lengths", type=int, nargs="+", default=[3, 6, 11, 16], help="T values of the fit")
    parser.add_argument("--fit-seq-len", type=int, default=256, help="L of the T sweep")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[128, 256, 512, 1024], help="L values of the L sweep")
    parser.add_argument("--sweep-thought-tokens", type=int, default=11, help="T of the L sweep and of the timing")
    parser.add_argument("--time-seq-lens", type=int, nargs="*", default=[256], help="L values timed (none: skip)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed rounds (one Quiet-STaR step and P plain steps) after a warm-up"
    )
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small sweeps and lengths, for a smoke run")
    add_output_arguments(parser, "train_step_<label>_<device>.{json,md,png}")
    parser.add_argument(
        "--render", type=Path, help="only rewrite the markdown and PNG of this JSON report (e.g. of a stopped run)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
        args.repeats = 1
    if min(args.thought_lengths + [args.sweep_thought_tokens]) < 3:
        parser.error("--thought-lengths and --sweep-thought-tokens must be >= 3 (start, a thought token, end)")
    if min(args.batch, args.n_thoughts, args.n_ahead_talk, args.repeats, args.fit_seq_len, *args.seq_lens) < 1:
        parser.error("--batch, --n-thoughts, --n-ahead-talk, --repeats and the sequence lengths must be >= 1")
    if len(set(args.thought_lengths)) < 2:
        parser.error("--thought-lengths needs at least two distinct values for the fit")
    return args


def attention_impl(args, device: torch.device) -> str:
    """The thought-attention implementation: "auto" is the fused Triton kernel on CUDA and "torch" elsewhere."""
    if args.attention_impl != "auto":
        return args.attention_impl
    return "triton" if device.type == "cuda" else "torch"


def build_model(args, thought_length: int, max_length: int, device: torch.device) -> QuietStarForCausalLM:
    shape = dict(PRESETS[args.preset])
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    config = QuietStarConfig(
        **shape,
        vocab_size=VOCAB,
        max_position_embeddings=max_length + thought_length + args.n_ahead_talk,
        n_thought_tokens=thought_length,
        n_ahead_talk=args.n_ahead_talk,
        n_thoughts=args.n_thoughts,
        start_thought_token_id=VOCAB - 2,
        end_thought_token_id=VOCAB - 1,
        attention_impl=attention_impl(args, device),
    )
    torch.manual_seed(0)
    with device:  # initialised where it runs: Mistral 7B's widths initialised on the CPU first take much longer
        model = QuietStarForCausalLM(config)
    model = model.to(device)
    with torch.no_grad():  # a non-zero mixing head, so rewards and the REINFORCE term carry gradients
        model.mixing_head.output.weight.normal_(std=1e-3)
    if args.activation_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    return model.train()


def autocast(args, device: torch.device):
    return torch.autocast(device.type, dtype=DTYPES[args.dtype], enabled=args.dtype != "fp32")


def reachable_tensors(root) -> list[torch.Tensor]:
    """Every tensor held by `root`: its attributes, and the lists, tuples, dicts and quietstar objects inside them."""
    found, seen, stack = [], set(), [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            found.append(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif type(obj).__module__.startswith("quietstar"):
            stack.extend(vars(obj).values() if hasattr(obj, "__dict__") else ())
            stack.extend(getattr(obj, name) for name in getattr(type(obj), "__slots__", ()) if hasattr(obj, name))
    return found


def is_quietstar_state(value) -> bool:
    """A forward kwarg that is a quietstar object (the thought K/V store), not a tensor or a plain value."""
    return not isinstance(value, torch.Tensor) and type(value).__module__.startswith("quietstar")


def storage_key(tensor: torch.Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def saved_bytes_by_node(loss: torch.Tensor, saved: set[tuple[int, int]]) -> dict[str, int]:
    """Bytes of the `saved` storages per kind of autograd node that holds them (each storage under one node).

    Walks the graph from `loss`, reading each node's saved tensors (`_saved_*` attributes of built-in nodes,
    `saved_tensors` of custom Functions); the part of `saved` no node exposes is reported as "other".
    """
    totals, assigned, seen, stack = {}, set(), set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
        values = [getattr(node, name) for name in dir(node) if name.startswith("_saved_")]
        if hasattr(node, "saved_tensors"):
            values += list(node.saved_tensors)
        kind = re.sub(r"\d+$", "", type(node).__name__)
        for value in values:
            for tensor in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(tensor, torch.Tensor) and (key := storage_key(tensor)) in saved and key not in assigned:
                    assigned.add(key)
                    totals[kind] = totals.get(kind, 0) + key[1]
    totals["other"] = sum(nbytes for _, nbytes in saved - assigned)
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def measure_memory(model, tokens: torch.LongTensor, args, device: torch.device, thinking: bool = True) -> dict:
    """Bytes saved for backward by one training forward, and held by its thought K/V store (see the module doc).

    With `thinking=False` the forward is one plain causal step (thinking off) on the same B * N rows the Quiet-STaR
    step runs its passes on: P times its bytes is what P plain steps would keep, the floor for P passes.
    """
    parameter_storages = {storage_key(t) for t in [*model.parameters(), *model.buffers()]}
    text_tokens = tokens.shape[0] * args.n_thoughts * tokens.shape[1]
    packed = []  # weak references to what autograd saved: only what the graph still holds at the end is counted

    def pack(tensor):
        # A detached alias (same storage, no grad_fn): the saved copy does not form a reference cycle with the node
        # that saved it, so tensors saved by parts of the graph that the forward drops are freed as usual.
        alias = tensor.detach()
        packed.append(weakref.ref(alias))
        return alias

    states = {}  # id -> the quietstar objects passed to any module's forward (the thought K/V store)
    layer_inputs = []  # tensors a checkpointed layer keeps to recompute itself in backward

    def record_arguments(module, positional, kwargs):
        states.update((id(value), value) for value in kwargs.values() if is_quietstar_state(value))
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing and module.training:
            for value in (*positional, *kwargs.values()):
                layer_inputs.extend(t for t in (value if isinstance(value, tuple) else (value,)) if isinstance(t, torch.Tensor))

    hooks = [module.register_forward_pre_hook(record_arguments, with_kwargs=True) for module in model.modules()]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        in_use = torch.cuda.memory_allocated(device)
    try:
        torch.manual_seed(0)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast(args, device):
            if thinking:
                loss = model(tokens).loss
            else:
                rows = tokens.repeat_interleave(args.n_thoughts, dim=0)
                loss = model(rows, labels=rows, thinking=False).loss
    finally:
        for hook in hooks:
            hook.remove()
    gc.collect()
    saved: dict[tuple[int, int], bool] = {}  # live storage -> saved as a vocabulary-sized (rows, V) tensor
    for tensor in (ref() for ref in packed):
        key = None if tensor is None else storage_key(tensor)
        if key is not None and key[1] and key not in parameter_storages:
            vocab_sized = tensor.ndim >= 2 and tensor.shape[-1] == VOCAB and tensor.numel() >= text_tokens * VOCAB
            saved[key] = saved.get(key, False) or vocab_sized
    store = {storage_key(t) for state in states.values() for t in reachable_tensors(state) if t.untyped_storage().nbytes()}
    store -= parameter_storages
    inputs = {storage_key(t) for t in layer_inputs if t.untyped_storage().nbytes()} - parameter_storages
    inputs -= store | saved.keys()
    del layer_inputs  # the checkpoint's own references free them in backward; this list must not outlive it
    by_node = {} if args.activation_checkpointing else saved_bytes_by_node(loss, set(saved))
    cuda_peak = cuda_max_allocated = None
    if device.type == "cuda":
        loss.backward()
        torch.cuda.synchronize(device)
        cuda_max_allocated = torch.cuda.max_memory_allocated(device)
        cuda_peak = cuda_max_allocated - in_use
        model.zero_grad(set_to_none=True)
    del loss
    autograd_bytes = sum(nbytes for _, nbytes in saved)
    store_bytes = sum(nbytes for _, nbytes in store)
    shared_bytes = sum(nbytes for _, nbytes in store & saved.keys())
    layer_input_bytes = sum(nbytes for _, nbytes in inputs)
    return {
        "autograd_saved_bytes": autograd_bytes,
        "vocab_sized_bytes": sum(nbytes for (_, nbytes), vocab_sized in saved.items() if vocab_sized),
        "kv_store_bytes": store_bytes,
        "shared_bytes": shared_bytes,
        "layer_input_bytes": layer_input_bytes,
        "union_bytes": autograd_bytes + store_bytes - shared_bytes + layer_input_bytes,
        "autograd_saved_storages": len(saved),
        "kv_store_storages": len(store),
        "cuda_peak_bytes": cuda_peak,
        "cuda_max_allocated_bytes": cuda_max_allocated,
        "autograd_saved_bytes_by_node": by_node,
    }


def step_seconds(model, tokens: torch.LongTensor, thinking: bool, args, device: torch.device) -> float:
    """Wall time of one forward + backward: the Quiet-STaR loss, or the plain causal loss with thinking off."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    torch.manual_seed(0)
    with autocast(args, device):
        loss = model(tokens).loss if thinking else model(tokens, labels=tokens, thinking=False).loss
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds


def random_tokens(args, length: int, device: torch.device) -> torch.LongTensor:
    generator = torch.Generator().manual_seed(length)
    return torch.randint(0, VOCAB - 2, (args.batch, length), generator=generator).to(device)


def release(device: torch.device) -> None:
    """Free the last row's model and graph before the next: reference cycles in a forward's graph would otherwise
    keep gigabytes alive until the garbage collector happens to run."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def memory_row(args, study: str, thought_length: int, length: int, device: torch.device) -> dict:
    row = {"study": study, "n_thought_tokens": thought_length, "passes": thought_length + args.n_ahead_talk}
    row["seq_len"] = length
    tokens = random_tokens(args, length, device)
    try:
        model = build_model(args, thought_length, length, device)
        row |= {"status": "ok", **measure_memory(model, tokens, args, device)}
        plain = measure_memory(model, tokens, args, device, thinking=False)
        row["plain_step_saved_bytes"] = plain["autograd_saved_bytes"] + plain["layer_input_bytes"]
        del model
    except torch.OutOfMemoryError:
        row["status"] = "oom"
    release(device)  # the model is gone with the call's frame
    logger.info("%s", row)
    return row


def time_steps(args, thought_length: int, length: int, device: torch.device) -> dict:
    """Alternate one Quiet-STaR step and P plain steps on the same B * N rows; after one warm-up round, the medians.

    Each round's ratio compares the two halves of the same round, so a machine whose load drifts affects both.
    """
    passes = thought_length + args.n_ahead_talk
    model = build_model(args, thought_length, length, device)
    tokens = random_tokens(args, length, device)
    rows = tokens.repeat_interleave(args.n_thoughts, dim=0)
    quietstar_seconds, plain_seconds, ratios = [], [], []
    for round_idx in range(args.repeats + 1):
        quietstar = step_seconds(model, tokens, True, args, device)
        plain = [step_seconds(model, rows, False, args, device) for _ in range(passes)]
        if round_idx:
            quietstar_seconds.append(quietstar)
            plain_seconds.append(sum(plain) / passes)
            ratios.append(quietstar / sum(plain))
    return {
        "quietstar_seconds": statistics.median(quietstar_seconds),
        "plain_seconds": statistics.median(plain_seconds),
        "ratio": statistics.median(ratios),
        "round_ratios": ratios,
    }


def time_row(args, length: int, device: torch.device) -> dict:
    thought_length = args.sweep_thought_tokens
    row = {"n_thought_tokens": thought_length, "passes": thought_length + args.n_ahead_talk, "seq_len": length}
    try:
        row |= {"status": "ok", **time_steps(args, thought_length, length, device)}
    except torch.OutOfMemoryError:
        row["status"] = "oom"
    release(device)
    logger.info("%s", row)
    return row


def linear_fit(passes: list[int], values: list[int]) -> dict:
    """Least squares fit of values = a + b * P; relative residuals; the P^2 coefficient of a quadratic fit."""
    p, y = np.asarray(passes, dtype=float), np.asarray(values, dtype=float)
    slope, intercept = np.polyfit(p, y, 1)
    residuals = (y - (intercept + slope * p)) / y
    fit = {"a_bytes": intercept, "b_bytes_per_pass": slope, "relative_residuals": residuals.tolist()}
    fit["max_abs_relative_residual"] = float(np.abs(residuals).max())
    if len(set(passes)) >= 4:  # with 3 points a quadratic interpolates the residuals exactly
        quadratic = np.polyfit(p, y, 2)[0]
        fit["quadratic_bytes_per_pass2"] = quadratic
        fit["quadratic_share_at_max_p"] = float(quadratic * p.max() ** 2 / y[p.argmax()])
    return fit


def mib(value) -> str:
    return "n/a" if value is None else f"{value / MIB:.1f}"


def to_markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        f"# Training step memory and time: {meta['device']}",
        "",
        f"Preset {meta['preset']} ({meta['model']}), vocab {VOCAB}; B={meta['batch']}, N={meta['n_thoughts']}, "
        f"A={meta['n_ahead_talk']}; {meta['dtype']}; attention {meta['attention_impl']}; activation checkpointing "
        f"{meta['activation_checkpointing']}; quietstar {meta['quietstar_revision']}.",
        "",
        "## Memory of one training forward (MiB)",
        "",
        "| study | T | P | L | autograd saved | of which vocab-sized | K/V store | shared | layer inputs | union "
        "| union / (P L) KiB | P x plain step | union / (P x plain) | CUDA peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["memory"]:
        if row["status"] != "ok":
            lines.append(f"| {row['study']} | {row['n_thought_tokens']} | {row['passes']} | {row['seq_len']} | "
                         f"{row['status']} | | | | | | | | | |")
            continue
        per_slice = row["union_bytes"] / (row["passes"] * row["seq_len"]) / 1024
        plain_floor = row.get("plain_step_saved_bytes")
        plain_cells = "| |" if plain_floor is None else (
            f"{mib(row['passes'] * plain_floor)} | {row['union_bytes'] / (row['passes'] * plain_floor):.2f} |"
        )
        lines.append(
            f"| {row['study']} | {row['n_thought_tokens']} | {row['passes']} | {row['seq_len']} | "
            f"{mib(row['autograd_saved_bytes'])} | {mib(row['vocab_sized_bytes'])} | {mib(row['kv_store_bytes'])} | "
            f"{mib(row['shared_bytes'])} | {mib(row.get('layer_input_bytes', 0))} | {mib(row['union_bytes'])} | "
            f"{per_slice:.1f} | {plain_cells} "
            f"{mib(row['cuda_peak_bytes'])} |"
        )
    measured = [r for r in report["memory"] if r["status"] == "ok"]
    paper_setting = (meta["sweep_thought_tokens"], meta["fit_seq_len"])
    detail = next((r for r in measured if (r["n_thought_tokens"], r["seq_len"]) == paper_setting), None)
    if detail is not None and detail["autograd_saved_bytes_by_node"]:
        parts = list(detail["autograd_saved_bytes_by_node"].items())[:8]
        lines += [
            "",
            f"Largest parts of autograd's bytes at T = {detail['n_thought_tokens']}, L = {detail['seq_len']}, by the kind "
            "of node that saved them (MiB): " + ", ".join(f"{name} {mib(nbytes)}" for name, nbytes in parts) + ".",
        ]
    fit = report["fit"]
    if fit is not None:
        residuals = ", ".join(f"{100 * r:+.2f}%" for r in fit["relative_residuals"])
        lines += [
            "",
            f"Fit over T (L = {meta['fit_seq_len']}): union = {mib(fit['a_bytes'])} MiB + "
            f"{mib(fit['b_bytes_per_pass'])} MiB x P; relative residuals {residuals} "
            f"(max {100 * fit['max_abs_relative_residual']:.2f}%).",
        ]
    if fit is not None and "quadratic_share_at_max_p" in fit:
        lines.append(
            f"A quadratic fit's P^2 term is {100 * fit['quadratic_share_at_max_p']:.1f}% of the bytes at the largest P."
        )
    if report["time"]:
        lines += [
            "",
            "## Step time (forward + backward)",
            "",
            f"Plain = a causal step of the same model on the same B x N = {meta['batch'] * meta['n_thoughts']} rows "
            "(thinking off); ratio = Quiet-STaR / (P x plain), the median over rounds of one Quiet-STaR step and P "
            "plain steps.",
            "",
            "| T | P | L | Quiet-STaR s | plain s | ratio |",
            "|---|---|---|---|---|---|",
        ]
        for row in report["time"]:
            if row["status"] != "ok":
                lines.append(f"| {row['n_thought_tokens']} | {row['passes']} | {row['seq_len']} | {row['status']} | | |")
                continue
            lines.append(
                f"| {row['n_thought_tokens']} | {row['passes']} | {row['seq_len']} | {row['quietstar_seconds']:.3f} | "
                f"{row['plain_seconds']:.3f} | {row['ratio']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> bool:
    """Union bytes against P (T sweep) and against L (L sweep); False when matplotlib is not installed."""
    plt = pyplot()
    if plt is None:
        return False
    measured = [r for r in report["memory"] if r["status"] == "ok"]
    fit_rows = [r for r in measured if r["study"] == "thought_length"]
    length_rows = [r for r in measured if r["study"] == "seq_len"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    passes = [r["passes"] for r in fit_rows]
    left.plot(passes, [r["union_bytes"] / MIB for r in fit_rows], "o", label="measured")
    if report["fit"] is not None:
        line = [report["fit"]["a_bytes"] + report["fit"]["b_bytes_per_pass"] * p for p in passes]
        left.plot(passes, [v / MIB for v in line], "-", label="a + b P")
    left.set(xlabel="passes P = T + A", ylabel="saved + K/V store (MiB)", title=f"L = {report['meta']['fit_seq_len']}")
    left.legend()
    right.plot([r["seq_len"] for r in length_rows], [r["union_bytes"] / MIB for r in length_rows], "o-")
    right.set(
        xlabel="sequence length L", ylabel="saved + K/V store (MiB)", title=f"T = {report['meta']['sweep_thought_tokens']}"
    )
    figure.suptitle(f"{report['meta']['preset']}, quietstar {report['meta']['quietstar_revision']}")
    save_figure(figure, path)
    return True


def fit_of(memory: list[dict]) -> dict | None:
    rows = [r for r in memory if r["study"] == "thought_length" and r["status"] == "ok"]
    if len({r["passes"] for r in rows}) < 2:
        return None
    return linear_fit([r["passes"] for r in rows], [r["union_bytes"] for r in rows])


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    if args.render:
        report = json.loads(args.render.read_text())
        render(report, args.render.with_suffix(""))
        return report
    device = torch.device(args.device)
    shape = dict(PRESETS[args.preset], **({"num_hidden_layers": args.layers} if args.layers else {}))
    report = {
        "benchmark": "train_step",
        "date": utc_now(),
        "meta": {
            "device": device_description(device),
            "preset": args.preset,
            "model": shape,
            "vocab_size": VOCAB,
            "batch": args.batch,
            "n_thoughts": args.n_thoughts,
            "n_ahead_talk": args.n_ahead_talk,
            "fit_seq_len": args.fit_seq_len,
            "sweep_thought_tokens": args.sweep_thought_tokens,
            "dtype": args.dtype,
            "attention_impl": attention_impl(args, device),
            "activation_checkpointing": args.activation_checkpointing,
            "repeats": args.repeats,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "quietstar_revision": source_revision(dirty=True),
        },
        "memory": [],
        "fit": None,
        "time": [],
    }
    stem = report_stem(args.out_dir, "train_step", args.label, device_slug(device))
    # The JSON is rewritten after every row, so a run the operating system stops (CPU memory) keeps what it measured.
    for length in args.time_seq_lens:
        report["time"].append(time_row(args, length, device))
        write_json(stem, report)
    memory = report["memory"]
    for thought_length in args.thought_lengths:
        memory.append(memory_row(args, "thought_length", thought_length, args.fit_seq_len, device))
        report["fit"] = fit_of(memory)
        write_json(stem, report)
    for length in args.seq_lens:  # a setting the T sweep already measured is not measured again (it is exact)
        same = [r for r in memory if (r["n_thought_tokens"], r["seq_len"]) == (args.sweep_thought_tokens, length)]
        if same:
            memory.append(dict(same[0], study="seq_len"))
        else:
            memory.append(memory_row(args, "seq_len", args.sweep_thought_tokens, length, device))
        write_json(stem, report)
    render(report, stem)
    return report


def render(report: dict, stem: Path) -> None:
    """Print the markdown tables and write them (and the PNG, with matplotlib) next to the JSON `stem`.json."""
    markdown = to_markdown(report)
    print(markdown)
    stem.with_suffix(".md").write_text(markdown)  # the JSON is there already: main wrote it after every row
    written = [stem.with_suffix(suffix).name for suffix in (".json", ".md")]
    written += [stem.with_suffix(".png").name] if plot(report, stem.with_suffix(".png")) else []
    logger.info("wrote %s in %s", ", ".join(written), stem.parent)


if __name__ == "__main__":
    main()
