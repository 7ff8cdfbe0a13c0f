"""Convert a checkpoint saved by the original Quiet-STaR research code into a quietstar checkpoint.

The original code (Zelikman et al. 2024, `ezelikman/quiet-star`) saves a patched `MistralForCausalLM`. Stock
transformers loads such a checkpoint as plain Mistral and silently drops its thinking parts. Its layout:

- `config.json`: a Mistral config (`model_type` "mistral") with extra fields `max_thoughts` and head flags
  (`merged_talk_heads`, `use_concat_talk_head`, `use_complex_talk_head`, `use_weighted_talk_head`, ...);
- tokenizer: `<|startthought|>` and `<|endthought|>` added at ids 32000 and 32001 (vocab_size 32002);
- tensors: Mistral's `model.*` and `lm_head.weight`; `start_embedding` and `end_embedding` of shape (2, H), whose
  row 0 times 100 is the embedding fed for the meta token (row 1 is an unused log-std; the embedding-table rows of
  the meta tokens are unused too); the mixing ("talk") head `talk_head.0.0` (Linear 2H -> H), `talk_head.0.2`
  (Linear H -> H), `talk_head.0.4` (Linear H -> 1, no bias), ReLU between, mixed = (1 - w) h_base + w h_thought.

What the conversion does:

- Mistral tensors keep their names and values; `start_embedding[0]` and `end_embedding[0]` become rows 0 and 1 of
  `thought_embeddings.weight`; `talk_head.0.{0,2,4}` become `mixing_head.{input,hidden,output}`. Tensors keep
  their dtype. The reference feeds `100 * start_embedding[0]` and quietstar feeds
  `meta_embedding_scale * thought_embeddings.weight[0]`, so with `meta_embedding_scale = 100` the stored values
  copy over unchanged and the fed embeddings are bit-identical.
- Config: a `QuietStarConfig` from the Mistral fields, without the reference-only fields, with `sliding_window`
  off (the reference's 4096-token window only matters for longer sequences), the meta-token ids and
  `n_thought_tokens` (not stored by the reference: the released "8-ahead" model is the original code's
  `n_ahead = 8`, i.e. `n_thought_tokens = 7`: start, 5 sampled tokens, end).
- Tokenizer: the source's `tokenizer.json`; without one, its SentencePiece `tokenizer.model` (read so that the
  leading-space marker is kept: "Let" is 3169 as in Mistral, not 8779); without either (the original training script
  saves no tokenizer), the bundled Mistral 7B v0.1 tokenizer with the meta tokens added at 32000 and 32001, as the
  reference added them. The meta tokens keep their ids and are renamed to quietstar's `<|startofthought|>` and
  `<|endofthought|>`, so quietstar code (which looks the tokens up by name) finds them. The old names are no
  longer tokens of the converted tokenizer. A missing pad token is set to EOS, as quietstar's tokenizer does. The
  converted tokenizer must encode a probe text to the same ids as the bundled Mistral tokenizer, or the conversion
  is refused.
- Generation config: suppresses the two meta tokens.

The result is written to a staging directory next to DST and renamed to DST at the end (`quietstar.atomic_files`),
so a failure leaves DST as it was (absent, or the old DST when overwriting).

Usage: `python -m quietstar.tools.convert_reference SRC DST [--n-thought-tokens 7] [--overwrite]`.
"""

import argparse
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from ..atomic_files import atomic_directory
from ..models.configuration_quietstar_mistral import QuietStarConfig
from ..checkpoint_files import check_safetensors_file
from ..meta_tokens import END_OF_THOUGHT, START_OF_THOUGHT
from ..models.modeling_quietstar_mistral import QuietStarForCausalLM
from ..tokenizer import forget_load_options, load_mistral_tokenizer, load_sentencepiece_tokenizer
from ..errors import UserError, report_user_errors

logger = logging.getLogger(__name__)

REFERENCE_START_OF_THOUGHT = "<|startthought|>"
REFERENCE_END_OF_THOUGHT = "<|endthought|>"
# The reference multiplies start/end_embedding[0] by this hard-coded constant (its `embedding_scale`).
REFERENCE_EMBEDDING_SCALE = 100.0
# Encoded by the converted tokenizer and by the bundled Mistral tokenizer: the ids must agree. It starts with a word
# (the leading-space marker) and has digits, a newline, a tab, a double space and non-ASCII (byte fallback).
TOKENIZER_PROBE_TEXT = "Let x = 12.\nThen  2x + 1 = 25,\tso x is 12 (checked: naïve → 🙂)."

# Head flags of the reference config and the values of the layout this converter supports (the paper's model).
# A missing flag means the reference's default, which is the supported value.
SUPPORTED_HEAD_FLAGS = {
    "merged_lm_and_think_heads": True,
    "merged_lm_and_talk_heads": False,
    "use_concat_talk_head": True,
    "use_complex_talk_head": True,
    "use_weighted_talk_head": True,
    "use_shallow_talk": False,
}
# Reference-only config fields with no meaning for quietstar (the think-head flags are unused when the LM head is
# the thought sampler, `merged_lm_and_think_heads`).
REFERENCE_ONLY_FIELDS = (
    "max_thoughts",
    "merged_talk_heads",
    "use_shallow_think",
    "use_complex_think_head",
    *SUPPORTED_HEAD_FLAGS,
)
# Fields of the source config that the new config must not inherit.
DROPPED_FIELDS = ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path", "sliding_window")

# Reference mixing-head tensor name -> quietstar name.
MIXING_HEAD_NAMES = {
    "talk_head.0.0.weight": "mixing_head.input.weight",
    "talk_head.0.0.bias": "mixing_head.input.bias",
    "talk_head.0.2.weight": "mixing_head.hidden.weight",
    "talk_head.0.2.bias": "mixing_head.hidden.bias",
    "talk_head.0.4.weight": "mixing_head.output.weight",
}
META_EMBEDDING_NAMES = ("start_embedding", "end_embedding")  # row 0 of each -> thought_embeddings.weight row 0 / 1


def convert_reference_checkpoint(
    src: str | Path, dst: str | Path, n_thought_tokens: int = 7, overwrite: bool = False
) -> Path:
    """Convert the reference checkpoint directory `src` into a quietstar checkpoint at `dst`; return `dst`.

    `n_thought_tokens` counts the start and end meta tokens (the reference's `n_ahead` minus 1; 7 for the released
    "8-ahead" model). Raises `UserError` naming what is missing or malformed when `src` is not in the reference
    layout, and when `dst` is `src` or exists and `overwrite` is false. Nothing is written at `dst` unless the whole
    conversion succeeds.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise UserError(f"SRC {src} is not a directory")
    if dst.resolve() == src.resolve():
        raise UserError(f"DST must differ from SRC, got {dst} for both")
    if dst.exists() and not overwrite:
        raise UserError(f"DST {dst} already exists; pass overwrite=True (--overwrite) to replace it")

    config = _build_config(src, n_thought_tokens)
    tokenizer = _load_tokenizer(src)
    meta_ids = _reference_meta_token_ids(tokenizer, config.vocab_size)
    config.start_thought_token_id, config.end_thought_token_id = meta_ids
    config.validate_quietstar_fields()
    with torch.device("meta"):
        model = QuietStarForCausalLM(config)
    expected_shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    state_dict = _convert_tensors(_read_tensors(src), expected_shapes, config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.config.dtype = model.lm_head.weight.dtype
    model.generation_config = _generation_config(src, config)

    with atomic_directory(dst) as staging:
        model.save_pretrained(staging)
        converted_tokenizer = _save_renamed_tokenizer(tokenizer, staging, meta_ids)
        _check_token_ids(converted_tokenizer, src)
    logger.info("converted %s -> %s (n_thought_tokens=%d, meta token ids %s)", src, dst, n_thought_tokens, meta_ids)
    return dst


# ------------------------------------------------------------------------------------------------------- config


def _build_config(src: Path, n_thought_tokens: int) -> QuietStarConfig:
    """QuietStarConfig from the reference's Mistral config, checking that its head flags are the supported ones."""
    config_path = src / "config.json"
    if not config_path.is_file():
        raise UserError(f"{config_path} is missing")
    fields = json.loads(config_path.read_text())
    if fields.get("model_type") != "mistral":
        raise UserError(
            f"{config_path}: model_type must be 'mistral' (the reference code patches Mistral), "
            f"got {fields.get('model_type')!r}"
        )
    for flag, supported in SUPPORTED_HEAD_FLAGS.items():
        if fields.get(flag, supported) != supported:
            raise UserError(
                f"{config_path}: {flag}={fields[flag]!r} is not supported; the supported (paper) layout has "
                + ", ".join(f"{name}={value}" for name, value in SUPPORTED_HEAD_FLAGS.items())
            )
    if "max_thoughts" not in fields:
        logger.warning("%s has no max_thoughts field: it may be a plain Mistral config", config_path)
    if fields.get("sliding_window") is not None:
        logger.info("dropping sliding_window=%s (quietstar thinks without a sliding window)", fields["sliding_window"])
    for name in (*REFERENCE_ONLY_FIELDS, *DROPPED_FIELDS):
        fields.pop(name, None)
    try:
        return QuietStarConfig(
            **fields, n_thought_tokens=n_thought_tokens, meta_embedding_scale=REFERENCE_EMBEDDING_SCALE
        )
    except ValueError as error:
        raise UserError(f"{config_path} with --n-thought-tokens {n_thought_tokens}: {error}") from None


def _generation_config(src: Path, config: QuietStarConfig) -> GenerationConfig:
    """The source's generation config (or one from the model config) with the meta tokens suppressed."""
    if (src / "generation_config.json").is_file():
        generation_config = GenerationConfig.from_pretrained(src)
    else:
        generation_config = GenerationConfig.from_model_config(config)
    meta_ids = {config.start_thought_token_id, config.end_thought_token_id}
    generation_config.suppress_tokens = sorted(set(generation_config.suppress_tokens or []) | meta_ids)
    return generation_config


# ------------------------------------------------------------------------------------------------------ tensors


def _read_tensors(src: Path) -> dict[str, torch.Tensor]:
    """All tensors of `src`: `model.safetensors`, `pytorch_model.bin`, or their shards listed by an index json."""
    for weights_name, load in (("model.safetensors", _load_safetensors), ("pytorch_model.bin", _load_bin)):
        index_path = src / f"{weights_name}.index.json"
        if index_path.is_file():
            weight_map = json.loads(index_path.read_text()).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise UserError(f"{index_path} has no weight_map")
            shard_names = sorted(set(weight_map.values()))
            missing_shards = [name for name in shard_names if not (src / name).is_file()]
            if missing_shards:
                raise UserError(f"{index_path} lists shards that are missing: {missing_shards}")
            tensors = {}
            for name in shard_names:
                tensors.update(load(src / name))
            return tensors
        if (src / weights_name).is_file():
            return load(src / weights_name)
    raise UserError(
        f"no weights in {src}: expected model.safetensors, pytorch_model.bin or a *.index.json with shards"
    )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    logger.info("reading %s", path)
    check_safetensors_file(path)
    return load_file(path)


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    logger.info("reading %s", path)
    tensors = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(tensors, dict):
        raise UserError(f"{path} does not hold a state dict (got {type(tensors).__name__})")
    return tensors


def _convert_tensors(
    tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], config: QuietStarConfig
) -> dict[str, torch.Tensor]:
    """Check the reference tensors against the layout of quietstar's `expected` shapes and rename them."""
    hidden = config.hidden_size
    reference_shapes = {
        name: shape
        for name, shape in expected.items()
        if not name.startswith(("mixing_head.", "thought_embeddings.", "thought_gate."))
    }
    reference_shapes.update({name: (2, hidden) for name in META_EMBEDDING_NAMES})
    reference_shapes.update({name: expected[ours] for name, ours in MIXING_HEAD_NAMES.items()})

    missing = sorted(set(reference_shapes) - set(tensors))
    unexpected = sorted(set(tensors) - set(reference_shapes))
    wrong_shapes = [
        f"{name}: expected {reference_shapes[name]}, got {tuple(tensors[name].shape)}"
        for name in sorted(set(reference_shapes) & set(tensors))
        if tuple(tensors[name].shape) != reference_shapes[name]
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_abbreviate(missing)}")
    if wrong_shapes:
        problems.append(f"tensors with wrong shapes: {_abbreviate(wrong_shapes)}")
    if unexpected:
        problems.append(f"tensors not in the reference layout: {_abbreviate(unexpected)}")
    if problems:
        raise UserError(
            "not a checkpoint of the original Quiet-STaR code in the supported layout (hidden_size="
            f"{hidden}, vocab_size={config.vocab_size}); " + "; ".join(problems)
        )

    converted = {name: tensors[name] for name in reference_shapes if name.startswith(("model.", "lm_head."))}
    converted.update({ours: tensors[name] for name, ours in MIXING_HEAD_NAMES.items()})
    converted["thought_embeddings.weight"] = torch.stack([tensors[name][0] for name in META_EMBEDDING_NAMES])
    # The reference has no thought gate: the converted model gets an unfitted one (weight 0, bias +inf), which
    # thinks at every position, as the reference does.
    dtype = converted["thought_embeddings.weight"].dtype
    converted["thought_gate.weight"] = torch.zeros(expected["thought_gate.weight"], dtype=dtype)
    converted["thought_gate.bias"] = torch.full(expected["thought_gate.bias"], float("inf"), dtype=dtype)
    return converted


def _abbreviate(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... ({len(items) - limit} more)"


# ---------------------------------------------------------------------------------------------------- tokenizer


def _load_tokenizer(src: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved with the reference checkpoint, or the bundled Mistral one with the reference's meta tokens.

    `tokenizer.json` is loaded as saved. A bare `tokenizer.model` is read with `LlamaTokenizer`: `AutoTokenizer`
    would pick a generic backend for the Mistral config beside it that drops SentencePiece's leading-space marker
    ("Let" -> 8779 instead of 3169).
    """
    try:
        if (src / "tokenizer.json").is_file():
            return forget_load_options(AutoTokenizer.from_pretrained(src))
        if (src / "tokenizer.model").is_file():
            logger.info("%s has no tokenizer.json: reading its SentencePiece tokenizer.model", src)
            return load_sentencepiece_tokenizer(src)
    except (OSError, ValueError) as error:
        reason = " ".join(str(error).split())  # one line
        raise UserError(f"cannot load the tokenizer of {src}: {reason}") from error
    logger.warning(
        "%s has no tokenizer files (tokenizer.json or tokenizer.model): using the bundled Mistral 7B v0.1 tokenizer "
        "with %s and %s added at ids 32000 and 32001, as the reference's training added them",
        src,
        REFERENCE_START_OF_THOUGHT,
        REFERENCE_END_OF_THOUGHT,
    )
    tokenizer = load_mistral_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [REFERENCE_START_OF_THOUGHT, REFERENCE_END_OF_THOUGHT]})
    return tokenizer


def _reference_meta_token_ids(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> tuple[int, int]:
    """Ids of the reference's `<|startthought|>` and `<|endthought|>`; an error if the tokenizer lacks them."""
    vocab = tokenizer.get_vocab()
    missing = [token for token in (REFERENCE_START_OF_THOUGHT, REFERENCE_END_OF_THOUGHT) if token not in vocab]
    if missing:
        raise UserError(
            f"the tokenizer lacks the reference's meta tokens {missing} (expected at ids 32000 and 32001)"
        )
    ids = (vocab[REFERENCE_START_OF_THOUGHT], vocab[REFERENCE_END_OF_THOUGHT])
    if max(ids) >= vocab_size:
        raise UserError(f"meta token ids {ids} do not fit the model's vocab_size {vocab_size}")
    return ids


def _save_renamed_tokenizer(
    tokenizer: PreTrainedTokenizerBase, directory: Path, meta_ids: tuple[int, int]
) -> PreTrainedTokenizerBase:
    """Save `tokenizer` with the reference's meta tokens renamed to quietstar's, keeping their ids; verify it and
    return the tokenizer as loaded back from `directory`."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    saved = tokenizer.save_pretrained(directory)
    renames = {REFERENCE_START_OF_THOUGHT: START_OF_THOUGHT, REFERENCE_END_OF_THOUGHT: END_OF_THOUGHT}
    for path in map(Path, saved):
        if path.suffix == ".json":
            renamed_json = _rename_strings(json.loads(path.read_text()), renames)
            path.write_text(json.dumps(renamed_json, indent=2, ensure_ascii=False))

    renamed = AutoTokenizer.from_pretrained(directory)
    vocab = renamed.get_vocab()
    got = (vocab.get(START_OF_THOUGHT), vocab.get(END_OF_THOUGHT))
    if got != meta_ids or any(old in vocab for old in renames):
        raise RuntimeError(
            f"renaming the meta tokens failed: {START_OF_THOUGHT}/{END_OF_THOUGHT} have ids {got}, expected "
            f"{meta_ids}, and the old names must be gone (still present: {[old for old in renames if old in vocab]})"
        )
    return renamed


def _check_token_ids(tokenizer: PreTrainedTokenizerBase, src: Path) -> None:
    """Refuse a converted tokenizer that does not encode `TOKENIZER_PROBE_TEXT` to Mistral 7B v0.1's ids."""
    mistral = load_mistral_tokenizer()
    got, expected = tokenizer(TOKENIZER_PROBE_TEXT).input_ids, mistral(TOKENIZER_PROBE_TEXT).input_ids
    if got == expected:
        return
    k = next((k for k, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))

    def describe(ids: list[int], vocabulary: PreTrainedTokenizerBase) -> str:
        return f"{ids[k]} ({vocabulary.convert_ids_to_tokens(ids[k])!r})" if k < len(ids) else "the end"

    raise UserError(
        f"the tokenizer of {src} does not give Mistral 7B v0.1's token ids, which the model's embeddings expect: "
        f"token {k} of {TOKENIZER_PROBE_TEXT!r} is {describe(got, tokenizer)} instead of {describe(expected, mistral)}"
    )


def _rename_strings(value, renames: dict[str, str]):
    """`value` (parsed JSON) with every string and object key equal to a key of `renames` replaced."""
    if isinstance(value, str):
        return renames.get(value, value)
    if isinstance(value, list):
        return [_rename_strings(item, renames) for item in value]
    if isinstance(value, dict):
        return {renames.get(key, key): _rename_strings(item, renames) for key, item in value.items()}
    return value


# ---------------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: `python -m quietstar.tools.convert_reference SRC DST [--n-thought-tokens 7]`."""
    parser = argparse.ArgumentParser(
        prog="python -m quietstar.tools.convert_reference",
        description="Convert a checkpoint of the original Quiet-STaR code (e.g. ezelikman/quietstar-8-ahead) into a "
        "quietstar checkpoint.",
    )
    parser.add_argument("src", type=Path, help="directory of the reference checkpoint (config, weights, tokenizer)")
    parser.add_argument("dst", type=Path, help="directory to write the quietstar checkpoint to (must not exist)")
    parser.add_argument(
        "--n-thought-tokens",
        type=int,
        default=7,
        help="tokens per thought including start and end: the reference's n_ahead minus 1 (default 7, for the "
        "released 8-ahead model)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with report_user_errors(parser.prog):
        dst = convert_reference_checkpoint(args.src, args.dst, args.n_thought_tokens, overwrite=args.overwrite)
    print(f"wrote quietstar checkpoint {dst}")


if __name__ == "__main__":
    main()
