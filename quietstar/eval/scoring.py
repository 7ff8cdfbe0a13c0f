"""Datasets, prompts, whitelists and the batched scorer of `quietstar.eval` (see the package docstring)."""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import load_dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..checkpoint_files import text_file_problem
from ..models.configuration_quietstar import QuietStarConfigMixin
from .checkpoint import could_be_hub_id
from ..errors import UserError

logger = logging.getLogger(__name__)

ANSWER_MARKER = "\nA:"
LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class TaskSpec:
    """A zero-shot task: where its data lives on the hub and how its whitelist is built.

    `whitelist_pieces` are answer pieces, each encoded after `whitelist_context` to find its token id as it occurs in
    an answer; `skip_first_answer_token` drops the first answer token from the paper's score (GSM8K's space).
    """

    name: str
    hub_id: str
    hub_config: str | None
    hub_split: str
    whitelist_context: str
    whitelist_pieces: tuple[str, ...]
    skip_first_answer_token: bool
    fields: tuple[str, ...]
    fields_help: str


TASKS = {
    "gsm8k": TaskSpec(
        name="gsm8k",
        hub_id="openai/gsm8k",
        hub_config="main",
        hub_split="test",
        whitelist_context="A: 1",
        whitelist_pieces=tuple("1234567890") + ("\n",),
        skip_first_answer_token=True,
        fields=("question", "answer"),
        fields_help='"question" (text) and "answer" (worked solution ending in "#### <number>")',
    ),
    "csqa": TaskSpec(
        name="csqa",
        hub_id="tau/commonsense_qa",
        hub_config=None,
        hub_split="validation",
        whitelist_context=ANSWER_MARKER,
        whitelist_pieces=(" A", " B", " C", " D", " E", "\n"),
        skip_first_answer_token=False,
        fields=("question", "choices", "answerKey"),
        fields_help='"question" (text), "choices" ({"label": ["A", ...], "text": [...]}) and "answerKey" ("A"-"E"); '
        "choices is nested, so use .jsonl, .json or .parquet",
    ),
}


@dataclass(frozen=True)
class EvalSettings:
    """How examples are scored: batch size, maximum tokens per example (longer ones lose their start) and the
    seed drawn before each (task, mode) run so sampled thoughts are reproducible."""

    batch_size: int = 8
    max_length: int = 256
    seed: int = 0


def _task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; use one of {sorted(TASKS)}")
    return TASKS[name]


def local_data_file(source: str) -> Path | None:
    """The absolute path `source` names when it is a local file (existing, or a path or file name that cannot be a
    hub dataset id), else None (a hub id)."""
    path = Path(source).expanduser()
    if path.exists() or path.suffix in LOCAL_FORMATS or not could_be_hub_id(source):
        return path.absolute()
    return None


def load_examples(task: str, source: str | None = None, limit: int | None = None) -> list[tuple[str, str]]:
    """Load `(prompt, answer)` pairs: prompt `"Q: ...\\nA:"`, answer the gold continuation (`" 18\\n"`, `" B\\n"`).

    `source` is a hub dataset id (default: the task's; GSM8K `main`/`test`, CommonsenseQA `validation`) or a local
    .json/.jsonl/.parquet/.csv file with the hub's fields (`TaskSpec.fields`; GSM8K: question, answer with
    "#### <number>"; CommonsenseQA: question, choices {label, text}, answerKey). `limit` keeps the first examples.
    Raises `UserError` naming the file (and, for a bad JSON line or invalid UTF-8, where in it) when the data is
    missing, empty, unreadable or lacks a field.
    """
    spec = _task(task)
    source = source or spec.hub_id
    path = local_data_file(source)
    if path is not None:
        dataset = _load_local(spec, path)
    else:
        config = spec.hub_config if source == spec.hub_id else None
        try:
            dataset = load_dataset(source, config, split=spec.hub_split)
        except (OSError, ValueError) as error:
            reason = _first_line(error)
            raise UserError(f"cannot load the {task} data set {source!r} from the hub: {reason}") from error
    where = str(path) if path is not None else repr(source)
    missing = [name for name in spec.fields if name not in dataset.column_names]
    if missing:
        raise UserError(f"{task} data {where} lacks the field(s) {missing}; a {task} file needs {spec.fields_help}")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    to_pair = _gsm8k_pair if task == "gsm8k" else _csqa_pair
    pairs = []
    for number, row in enumerate(dataset, start=1):
        try:
            pairs.append(to_pair(row))
        except (KeyError, TypeError, AttributeError) as error:
            raise UserError(
                f"{task} data {where} example {number} is not in the {task} format ({error!r}); a {task} file needs "
                f"{spec.fields_help}"
            ) from error
        except ValueError as error:
            raise UserError(f"{task} data {where} example {number}: {error}") from error
    return pairs


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _load_local(spec: TaskSpec, path: Path):
    """The local data file `path` as a `datasets.Dataset`, with a `UserError` for every way it can be unusable."""
    if not path.exists():
        raise UserError(f"{spec.name} data file {path} does not exist")
    if not path.is_file():
        raise UserError(f"{spec.name} data file {path} is not a file")
    if path.suffix not in LOCAL_FORMATS:
        raise UserError(f"{spec.name} data file {path} must end in one of {sorted(LOCAL_FORMATS)}")
    if path.stat().st_size == 0:
        raise UserError(f"{spec.name} data file {path} is empty: it holds no examples")
    try:
        dataset = load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
    except Exception as error:  # datasets wraps reader errors in its own types; name the file and the place
        json_lines = LOCAL_FORMATS[path.suffix] == "json"
        problem = None if path.suffix == ".parquet" else text_file_problem(path, json_lines=json_lines)
        problem = problem or f"{path} cannot be read: {_first_line(error)}"
        raise UserError(f"{spec.name} data file {problem}") from error
    if len(dataset) == 0:
        raise UserError(f"{spec.name} data file {path} holds no examples")
    return dataset


def _gsm8k_pair(row: dict) -> tuple[str, str]:
    if "####" not in row["answer"]:
        raise ValueError(f"answer without '#### <number>': {row['answer'][-80:]!r}")
    return "Q: " + row["question"] + ANSWER_MARKER, row["answer"].split("####")[-1] + "\n"


def _csqa_pair(row: dict) -> tuple[str, str]:
    choices = "\n".join(f"({label}) {text}" for label, text in zip(row["choices"]["label"], row["choices"]["text"]))
    return "Q: " + row["question"] + "\n" + choices + ANSWER_MARKER, " " + row["answerKey"] + "\n"


def whitelist_token_ids(tokenizer: PreTrainedTokenizerBase, task: str) -> list[int]:
    """Token ids of the task's answer whitelist, as the pieces are tokenised inside an answer.

    For Mistral's tokenizer these are the reference's ids: GSM8K `[28740, 28750, 28770, 28781, 28782, 28784, 28787,
    28783, 28774, 28734, 13]` (digits 1-9, 0, newline), CommonsenseQA `[330, 365, 334, 384, 413, 13]` (A-E, newline).
    """
    spec = _task(task)
    context = tokenizer.encode(spec.whitelist_context, add_special_tokens=False)
    ids = []
    for piece in spec.whitelist_pieces:
        encoded = tokenizer.encode(spec.whitelist_context + piece, add_special_tokens=False)
        if encoded[: len(context)] != context or len(encoded) != len(context) + 1:
            raise ValueError(
                f"the tokenizer does not write {piece!r} after {spec.whitelist_context!r} as a single token, which the "
                f"paper's whitelist metric for {task} needs"
            )
        ids.append(encoded[-1])
    return ids


def _encode(tokenizer, prompt: str, answer: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + answer (special tokens added as the tokenizer does) and the answer's first index."""
    prompt_ids = tokenizer.encode(prompt)
    ids = tokenizer.encode(prompt + answer)
    answer_start = len(prompt_ids)
    if ids[:answer_start] != prompt_ids or answer_start == len(ids):
        raise ValueError(f"the tokenizer merges the answer {answer!r} into the prompt's last token; cannot score it")
    if len(ids) > max_length:
        if len(ids) - answer_start + 1 > max_length:
            raise ValueError(f"max_length={max_length} is shorter than the answer {answer!r} plus one context token")
        cut = len(ids) - max_length
        ids, answer_start = ids[cut:], answer_start - cut
    return ids, answer_start


@torch.no_grad()
def score_examples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    examples: list[tuple[str, str]],
    *,
    thinking: bool,
    settings: EvalSettings = EvalSettings(),
) -> list[dict[str, float]]:
    """Score `(prompt, answer)` pairs; one dict per example with `paper_score`, `whitelist_argmax`, `argmax`.

    Examples are batched by length (right padding, the reference's side) and run through `model(...)` in eval mode
    with `thinking` on or off; with thinking every position's logits are thought-mixed. `model` is a Quiet-STaR model
    or, with `thinking=False`, also a plain causal LM (a base checkpoint, scored as it is).
    """
    spec = _task(task)
    whitelist = torch.tensor(whitelist_token_ids(tokenizer, task))
    config = model.config
    quietstar_model = isinstance(config, QuietStarConfigMixin)
    if thinking and not quietstar_model:
        raise ValueError(f"thinking needs a Quiet-STaR model; {type(model).__name__} is a plain causal LM")
    meta_ids, thinking_option = [], {}
    if quietstar_model:
        meta_ids = [i for i in (config.start_thought_token_id, config.end_thought_token_id) if i is not None]
        thinking_option = {"thinking": thinking}
    encoded = [_encode(tokenizer, prompt, answer, settings.max_length) for prompt, answer in examples]
    order = sorted(range(len(encoded)), key=lambda k: len(encoded[k][0]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = model.device
    model.eval()
    scores: list[dict[str, float] | None] = [None] * len(encoded)
    for start in range(0, len(order), settings.batch_size):
        batch = order[start : start + settings.batch_size]
        width = max(len(encoded[k][0]) for k in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, k in enumerate(batch):
            ids = encoded[k][0]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        logits = model(
            input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False, **thinking_option
        ).logits.float().cpu()
        if meta_ids:
            logits[..., meta_ids] = float("-inf")
        for row, k in enumerate(batch):
            ids, answer_start = encoded[k]
            scores[k] = _score_answer(logits[row], torch.tensor(ids), answer_start, whitelist, spec)
    return scores


def _score_answer(logits, ids, answer_start, whitelist, spec: TaskSpec) -> dict[str, float]:
    """logits (L', V) of one example, ids (L,) its tokens, answer tokens ids[answer_start:]."""
    positions = torch.arange(answer_start - 1, len(ids) - 1)
    targets = ids[positions + 1]
    argmax = bool((logits[positions].argmax(-1) == targets).all())
    if spec.skip_first_answer_token:
        positions, targets = positions[1:], targets[1:]
    in_whitelist = torch.isin(targets, whitelist)
    positions, targets = positions[in_whitelist], targets[in_whitelist]
    whitelist_probs = torch.softmax(logits[positions][:, whitelist], dim=-1)
    gold = (targets.unsqueeze(-1) == whitelist).float().argmax(-1)
    gold_probs = whitelist_probs.gather(-1, gold.unsqueeze(-1)).squeeze(-1)
    return {
        "paper_score": float(gold_probs.prod()),
        "whitelist_argmax": float(bool((whitelist_probs.argmax(-1) == gold).all())),
        "argmax": float(argmax),
    }


def evaluate_task(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    examples: list[tuple[str, str]],
    *,
    thinking: bool,
    settings: EvalSettings = EvalSettings(),
) -> dict[str, float]:
    """Mean scores over `examples`: `paper_accuracy`, `whitelist_argmax_accuracy`, `argmax_accuracy`, `n_examples`."""
    if not examples:
        raise ValueError(f"no {task} examples to evaluate")
    torch.manual_seed(settings.seed)
    scores = score_examples(model, tokenizer, task, examples, thinking=thinking, settings=settings)
    logger.info("scored %d %s examples (thinking=%s)", len(scores), task, thinking)
    means = {key: sum(score[key] for score in scores) / len(scores) for key in scores[0]}
    return {
        "paper_accuracy": means["paper_score"],
        "whitelist_argmax_accuracy": means["whitelist_argmax"],
        "argmax_accuracy": means["argmax"],
        "n_examples": len(scores),
    }
