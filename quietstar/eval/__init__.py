"""Zero-shot GSM8K and CommonsenseQA scored as in the Quiet-STaR paper, plus argmax accuracy.

The paper (Zelikman et al. 2024, the reference's `eval_helpers.py`) teacher-forces `"Q: <question>\\nA:"` followed by
the gold answer (`" 18\\n"` for GSM8K, `" B\\n"` for CommonsenseQA, whose question also lists the choices as
`"(A) ..."` lines) through the thought-mixed forward, and scores each example with the product over the answer tokens
of the gold token's probability renormalised over a whitelist: the ten digits and the newline for GSM8K (the first
answer token, the space before the number, is skipped), A-E and the newline for CommonsenseQA. Answer tokens outside
the whitelist (a comma inside a number) are skipped. The mean of that product is the paper's "accuracy".

Two exact-match numbers come with it: `whitelist_argmax_accuracy` (every scored token is the most likely whitelist
token) and `argmax_accuracy` (every answer token, the leading space included, is the most likely token of the whole
vocabulary, meta tokens excluded: greedy decoding would write the answer).
"""

from .scoring import TASKS, EvalSettings, TaskSpec, evaluate_task, load_examples, score_examples, whitelist_token_ids

__all__ = [
    "TASKS",
    "EvalSettings",
    "TaskSpec",
    "evaluate_task",
    "load_examples",
    "score_examples",
    "whitelist_token_ids",
]
