"""Resuming a run: which settings a resume may change, the record of the changes, and a run with nothing left to do.

The run's `config.yaml` holds the config it runs with. `--resume` compares the config it is given with that one:

- Settings of the run, everything that decides what is trained and how (the model and its Quiet-STaR fields, the
  data, optimisation and schedule, batch sizes, dtype, seed), may differ only with `--allow-config-change`; without
  it the resume is refused in one line naming each field with its old and new value.
- How the run is carried out may change freely, since it does not change what is computed (up to float rounding):
  `train.device`, `train.activation_checkpointing`, `train.reshard_after_forward`, `model.quietstar.attention_impl`,
  `model.quietstar.lm_head_chunk_size`, the `checkpoint` interval, retention and export dtype, and `logging`.
- `train.max_steps` may change freely with `train.lr_schedule: constant` (a longer or shorter run). With a cosine or
  linear schedule the learning rate of every later step depends on it, so there it is a setting of the run.

Every change that is made, allowed or free, is appended to `<output_dir>/config_changes.jsonl` as one record per
field, `{"step": S, "field": "model.quietstar.n_thought_tokens", "old": 4, "new": 8}` (S: the checkpoint step
training continues from; a key of `model.quietstar` or `model.architecture` that was not set has no "old", one that
is no longer set has no "new"), and `config.yaml` then holds the new config; so the run's history says how every
step was trained. A run whose latest checkpoint is at `train.max_steps` (or past it) and whose final model is
written has nothing left to do.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import complete_checkpoints
from .config import ConfigError, JobConfig, config_to_dict, load_config
from ..errors import UserError
from .run_directory import CONFIG_CHANGES

# Fields that say how this start was asked for, not how the run trains.
_NOT_COMPARED = ("output_dir", "checkpoint.resume")
# Fields that change how the run is carried out, not what it computes (a prefix covers its whole section).
_CARRIED_OUT = (
    "train.device",
    "train.activation_checkpointing",
    "train.reshard_after_forward",
    "model.quietstar.attention_impl",
    "model.quietstar.lm_head_chunk_size",
    "checkpoint.interval",
    "checkpoint.keep_last",
    "checkpoint.export_dtype",
    "logging",
)
_UNSET = object()


@dataclass(frozen=True)
class ConfigChange:
    """One config field whose value differs from the run's: `field` is its dotted key (as in an override), `old` and
    `new` its values (`_UNSET` for a key of a free-form mapping that is not set on that side)."""

    field: str
    old: Any = _UNSET
    new: Any = _UNSET

    def describe(self) -> str:
        """`field old -> new`, e.g. `model.quietstar.n_thought_tokens 4 -> 8`."""
        return f"{self.field} {_show(self.old)} -> {_show(self.new)}"

    def record(self, step: int) -> dict[str, Any]:
        """The `config_changes.jsonl` record of this change made when training continues from `step`."""
        record = {"step": step, "field": self.field}
        if self.old is not _UNSET:
            record["old"] = self.old
        if self.new is not _UNSET:
            record["new"] = self.new
        return record


def _show(value: Any) -> str:
    return "unset" if value is _UNSET else json.dumps(value)


def _matches(field: str, keys: tuple[str, ...]) -> bool:
    return any(field == key or field.startswith(key + ".") for key in keys)


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[ConfigChange]:
    """The fields whose values differ between two configs as plain data (`config_to_dict`), in config order.

    Mappings are compared key by key and lists of the same length item by item (`data.sources.0.probability`);
    lists of different lengths are one change of the whole list."""
    changes = []
    for key in [*old, *(key for key in new if key not in old)]:
        field = f"{prefix}{key}"
        if _matches(field, _NOT_COMPARED):
            continue
        before, after = old.get(key, _UNSET), new.get(key, _UNSET)
        if isinstance(before, dict) and isinstance(after, dict):
            changes.extend(config_changes(before, after, f"{field}."))
        elif isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
            indexed = config_changes(dict(enumerate(before)), dict(enumerate(after)), f"{field}.")
            changes.extend(indexed)
        elif before != after:
            changes.append(ConfigChange(field, before, after))
    return changes


def is_run_setting(change: ConfigChange, config: JobConfig) -> bool:
    """Whether `change` changes what the run trains (needs `--allow-config-change`) rather than how it is carried
    out; `config` is the new config (its `train.lr_schedule` decides about `train.max_steps`)."""
    if change.field == "train.max_steps":
        return config.train.lr_schedule != "constant"
    return not _matches(change.field, _CARRIED_OUT)


@dataclass(frozen=True)
class Resumption:
    """What `--resume` will do: continue from the checkpoint at `step`, with `changes` to the run's config; nothing
    at all when `finished`."""

    step: int
    changes: list[ConfigChange]
    finished: bool


def check_resume(config: JobConfig, *, allow_config_change: bool) -> Resumption | None:
    """What resuming the run in `config.output_dir` with `config` does; None when it has no checkpoint (training
    starts at step 0 with `config`: nothing trained under the old config is kept).

    Raises `UserError` naming each changed setting of the run unless `allow_config_change`, and when the
    run's `config.yaml` cannot be read as a config."""
    output_dir = Path(config.output_dir)
    found = complete_checkpoints(output_dir)
    if not found:
        return None
    step = found[-1][0]
    stored = output_dir / "config.yaml"
    changes = []
    if stored.is_file():
        try:
            run_config = load_config(stored)
        except ConfigError as error:
            raise UserError(f"cannot read the config of the run in {output_dir}: {error}") from None
        changes = config_changes(config_to_dict(run_config), config_to_dict(config))
    settings = [change for change in changes if is_run_setting(change, config)]
    if settings and not allow_config_change:
        raise UserError(
            f"--resume with settings that differ from those of the run in {output_dir} (its config.yaml): "
            f"{', '.join(change.describe() for change in settings)}; resume with the run's settings, or pass "
            f"--allow-config-change to change them from step {step} on (recorded in {CONFIG_CHANGES})"
        )
    finished = step >= config.train.max_steps and (output_dir / "final").is_dir()
    return Resumption(step=step, changes=changes, finished=finished)


def finished_message(config: JobConfig, resumption: Resumption) -> str:
    """The one line saying that the resumed run has nothing left to do."""
    output_dir = Path(config.output_dir)
    return (
        f"the run in {output_dir} is finished: its latest checkpoint is at step {resumption.step} of "
        f"train.max_steps={config.train.max_steps} and {output_dir / 'final'} holds the trained model; nothing to do "
        "(raise train.max_steps to train further)"
    )


def record_config_changes(output_dir: str | Path, step: int, changes: list[ConfigChange]) -> None:
    """Append one `config_changes.jsonl` record per change, made when training continues from `step`."""
    with open(Path(output_dir) / CONFIG_CHANGES, "a") as file:
        file.writelines(json.dumps(change.record(step)) + "\n" for change in changes)
