"""Loading a checkpoint and its tokenizer for evaluation and inspection."""

from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..checkpoint_files import CheckpointError, check_weight_files, could_be_hub_id
from ..devices import resolve_device, resolve_dtype
from ..models.configuration_quietstar import QuietStarConfigMixin


class NotQuietStarCheckpointError(CheckpointError):
    """A checkpoint of a plain causal LM (a base model) where thinking needs a Quiet-STaR one; the message names the
    checkpoint and its `model_type`."""


def resolve_checkpoint(checkpoint: str | Path) -> str:
    """The absolute path of the local checkpoint directory `checkpoint`, or `checkpoint` itself for a hub id.

    Raises `CheckpointError` when `checkpoint` is no directory and cannot be a hub id ("no such checkpoint
    directory"), is a file, is a directory without `config.json`, or has a truncated or damaged `model.safetensors`
    (or shard).
    """
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path.resolve()} is not a checkpoint directory: it has no config.json")
        check_weight_files(path)
        return str(path.resolve())
    if path.exists():
        raise CheckpointError(f"{path.resolve()} is a file, not a checkpoint directory")
    if not could_be_hub_id(str(checkpoint)):
        raise CheckpointError(f"no such checkpoint directory: {path.absolute()}")
    return str(checkpoint)


def load_checkpoint(
    checkpoint: str | Path, device: str = "auto", dtype: str = "auto", *, plain: bool = False, **config_overrides
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `checkpoint` (a directory or hub id with a tokenizer) in eval mode.

    `device` "auto" picks CUDA when available; `dtype` "auto" is bfloat16 on CUDA and float32 elsewhere (a
    `UserError` for a device or dtype that cannot be used).
    `config_overrides` set Quiet-STaR config fields (for example `inference_thought_temperature=1.0`). A checkpoint of
    a plain causal LM (a base model, no Quiet-STaR config) raises `NotQuietStarCheckpointError` unless `plain` allows
    it; it is then loaded as its plain transformers class, without `config_overrides`. Raises `CheckpointError` (see
    `resolve_checkpoint`) naming the directory or file when the checkpoint cannot be loaded.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    source = resolve_checkpoint(checkpoint)
    try:
        config = AutoConfig.from_pretrained(source)  # ValueError: a model_type transformers does not know
    except (OSError, ValueError) as error:
        raise _load_error(source, error) from error
    if not isinstance(config, QuietStarConfigMixin):
        if not plain:
            raise NotQuietStarCheckpointError(
                f"{source} is not a quietstar checkpoint: its config has model_type {config.model_type!r}"
            )
        config_overrides = {}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **config_overrides)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as error:
        raise _load_error(source, error) from error
    return model.to(torch_device).eval(), tokenizer


def _load_error(source: str, error: Exception) -> CheckpointError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if Path(source).is_dir():
        return CheckpointError(f"cannot load the checkpoint {source}: {reason}")
    return CheckpointError(
        f"no such checkpoint directory: {Path(source).absolute()}, and no hub model {source!r} could be loaded: "
        f"{reason}"
    )
