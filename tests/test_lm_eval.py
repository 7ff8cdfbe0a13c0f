"""lm-evaluation-harness (`hf` model type) on local task files with a tiny checkpoint: loglikelihood and
generate_until both go through the thinking forward. Skipped when lm_eval (with accelerate) is not installed."""

import json
import textwrap

import pytest
import torch
from tiny_checkpoint import save_tiny_checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer

lm_eval = pytest.importorskip("lm_eval", reason="pip install 'lm-eval[hf]' to run the lm-eval test")
pytest.importorskip("accelerate", reason="lm-eval's hf model needs accelerate: pip install 'lm-eval[hf]'")

DOCS = [
    {"question": "Where would you put a plate after washing it?", "choices": ["cupboard", "river", "oven"], "label": 0},
    {"question": "What do people use to cut paper?", "choices": ["spoon", "scissors", "pillow"], "label": 1},
]
TASKS = """
    task: local_mc
    dataset_path: json
    dataset_kwargs: {{data_files: {{validation: {data}}}}}
    validation_split: validation
    output_type: multiple_choice
    doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
    doc_to_target: label
    doc_to_choice: "{{{{choices}}}}"
    metric_list: [{{metric: acc}}]
    ---
    task: local_gen
    dataset_path: json
    dataset_kwargs: {{data_files: {{validation: {data}}}}}
    validation_split: validation
    output_type: generate_until
    doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
    doc_to_target: "{{{{choices[label]}}}}"
    generation_kwargs: {{until: ["\\n"], do_sample: false, max_gen_toks: 4}}
    metric_list: [{{metric: exact_match}}]
"""


def test_lm_eval_hf_model_scores_and_generates_with_thoughts(tmp_path):
    from lm_eval.tasks import TaskManager

    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt")
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    for index, task in enumerate(textwrap.dedent(TASKS).format(data=data).split("---\n")):
        (tmp_path / f"task{index}.yaml").write_text(task)
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={checkpoint},dtype=float32",
        tasks=["local_mc", "local_gen"],
        task_manager=TaskManager(include_path=str(tmp_path)),
        batch_size=2,
        device="cpu",
        log_samples=True,
    )
    assert set(results["results"]) == {"local_mc", "local_gen"}

    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    sample = results["samples"]["local_mc"][0]
    (context, continuation), (loglikelihood, _) = sample["arguments"][0], sample["resps"][0][0]
    ids = tokenizer.encode(context + continuation)
    n_context = len(tokenizer.encode(context))
    with torch.no_grad():
        logprobs = {
            thinking: model(torch.tensor([ids]), thinking=thinking).logits[0].log_softmax(-1) for thinking in (True, False)
        }
    expected = {t: sum(float(lp[k - 1, ids[k]]) for k in range(n_context, len(ids))) for t, lp in logprobs.items()}
    assert loglikelihood == pytest.approx(expected[True], abs=1e-3)
    assert loglikelihood != pytest.approx(expected[False], abs=1e-3)  # lm-eval scored the thought-mixed logits

    generated = results["samples"]["local_gen"][0]
    prompt = tokenizer(generated["arguments"][0][0], return_tensors="pt").input_ids
    ours = model.generate(prompt, max_new_tokens=4, do_sample=False)[0, prompt.shape[1] :]
    assert generated["resps"][0][0] == tokenizer.decode(ours, skip_special_tokens=True).split("\n")[0]
