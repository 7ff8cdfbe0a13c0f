"""The thought-length curriculum: which (n_thought_tokens, n_ahead_talk) a run trains with at each step."""

import logging

from ..models.configuration_quietstar import QuietStarConfigMixin
from .config import ThoughtLengthStage

logger = logging.getLogger(__name__)


def thought_lengths_at(stages: list[ThoughtLengthStage], step: int, initial: tuple[int, int]) -> tuple[int, int]:
    """(n_thought_tokens, n_ahead_talk) in force at optimizer step `step` (0-based): those of the last stage whose
    step is at most `step`, or `initial` (the model's own) before the first stage. `stages` have increasing steps."""
    lengths = initial
    for stage in stages:
        if stage.step > step:
            break
        lengths = (stage.n_thought_tokens, stage.n_ahead_talk)
    return lengths


def apply_thought_curriculum(
    config: QuietStarConfigMixin, stages: list[ThoughtLengthStage], step: int, initial: tuple[int, int]
) -> bool:
    """Set `config.n_thought_tokens` and `config.n_ahead_talk` to the lengths in force at `step`; True if they
    changed. A model reads both from its config at every forward, so the next step thinks with them."""
    lengths = thought_lengths_at(stages, step, initial)
    if lengths == (config.n_thought_tokens, config.n_ahead_talk):
        return False
    config.n_thought_tokens, config.n_ahead_talk = lengths
    config.validate_quietstar_fields()
    logger.info("step %d: thoughts of %d tokens, %d look-ahead tokens", step, *lengths)
    return True


__all__ = ["apply_thought_curriculum", "thought_lengths_at"]
