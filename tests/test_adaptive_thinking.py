"""Adaptive thinking (the thought gate and `think_threshold`) and distillation of the thinking prediction into the
base one: gate skips where it predicts below the threshold (cached generation against fresh forwards with the same
skips), threshold 0 is today's generation, the gate's fit and checkpoints, the distillation KL by hand."""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from reference_lm_head import unfused_distillation_kl
from safetensors.torch import load_file, save_file
from test_generation import left_padded_prompt, oracle_logits, plain_hidden
from tiny import END_ID, START_ID, TINY_VOCAB, tiny_config, tiny_model
from transformers import AutoModelForCausalLM

import quietstar
from quietstar import fit_thought_gate
from quietstar.models.lm_head import linear_distillation_kl
from quietstar.training.thought_gate_fitting import thought_effects

PROMPT_LENGTH, NEW_TOKENS = 6, 6


def fitted_model(seed: int = 0, **overrides):
    """A tiny thinking model whose gate is fitted on 8 random rows of 12 tokens."""
    model = tiny_model(seed, **overrides).eval()
    generator = torch.Generator().manual_seed(seed + 100)
    fit_thought_gate(model, torch.randint(0, TINY_VOCAB - 2, (8, 12), generator=generator))
    return model


def base_logits(model, context: list[int]) -> torch.Tensor:
    """The base prediction after `context` as a thinking model returns it (meta tokens at the lowest logit)."""
    logits = model.lm_head(plain_hidden(model, context))
    logits[..., [START_ID, END_ID]] = torch.finfo(logits.dtype).min
    return logits


def count_model_calls(model):
    calls = []
    handle = model.model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(1), with_kwargs=True)
    return calls, handle


def test_unfitted_gate_thinks_everywhere_whatever_the_threshold():
    model = tiny_model().eval()
    assert not model.thought_gate.fitted
    input_ids, attention_mask = left_padded_prompt()
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=4, do_sample=False, pad_token_id=0, output_logits=True)
    today = model.generate_with_thoughts(input_ids, **kwargs)
    model.config.think_threshold = 1e9
    gated = model.generate_with_thoughts(input_ids, **kwargs)
    assert gated.thought_used.all()
    assert torch.equal(gated.sequences, today.sequences) and torch.equal(gated.thought_ids, today.thought_ids)
    for got, expected in zip(gated.logits, today.logits):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("decoding", [dict(do_sample=False), dict(do_sample=True, temperature=0.9, top_k=20)])
def test_threshold_zero_with_a_fitted_gate_is_todays_generation_token_for_token(decoding):
    unfitted = tiny_model().eval()
    model = fitted_model()
    assert model.thought_gate.fitted and model.config.think_threshold == 0
    input_ids, attention_mask = left_padded_prompt()
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, pad_token_id=0, output_logits=True, **decoding)
    torch.manual_seed(4)
    expected = unfitted.generate_with_thoughts(input_ids, **kwargs)
    calls, handle = count_model_calls(model)
    torch.manual_seed(4)
    got = model.generate_with_thoughts(input_ids, **kwargs)
    handle.remove()
    assert torch.equal(got.sequences, expected.sequences)
    assert torch.equal(got.thought_ids, expected.thought_ids) and got.thought_used.all()
    for step_got, step_expected in zip(got.logits, expected.logits):
        torch.testing.assert_close(step_got, step_expected, rtol=0, atol=0)
    assert len(calls) == 1 + model.config.n_thought_tokens + (NEW_TOKENS - 1) * (model.config.n_thought_tokens + 1)


def test_gate_skips_exactly_where_it_predicts_below_the_threshold_and_cached_equals_fresh_forwards():
    """Each generated token: the gate's prediction on a fresh forward of its context decides thinking; a thinking
    token equals a fresh forward of context + thought, a skipped one the fresh base prediction; a thought is run
    (n_thought_tokens model calls) exactly at the steps where some row thinks."""
    model = fitted_model()
    input_ids, attention_mask = left_padded_prompt(seed=2)
    with torch.no_grad():  # a threshold between the predictions of the prompts' last positions, so both cases occur
        predicted = model.thought_gate.predicted_log_kl(model(input_ids, attention_mask=attention_mask, thinking=False,
                                                              output_hidden_states=True).hidden_states[-1][:, -1])
    model.config.think_threshold = float(predicted.mean().exp())
    calls, handle = count_model_calls(model)
    out = model.generate_with_thoughts(
        input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0,
        output_logits=True,
    )
    handle.remove()
    generated = out.sequences[:, PROMPT_LENGTH:]
    assert out.thought_used.any() and not out.thought_used.all()  # the test sees both cases
    log_threshold = math.log(model.config.think_threshold)
    with torch.no_grad():
        for b in range(2):
            real_prompt = input_ids[b][attention_mask[b].bool()].tolist()
            for t in range(NEW_TOKENS):
                context = real_prompt + generated[b, :t].tolist()
                thinks = bool(model.thought_gate.predicted_log_kl(plain_hidden(model, context)) >= log_threshold)
                assert bool(out.thought_used[b, t]) == thinks, (b, t)
                if thinks:
                    expected = oracle_logits(model, context, out.thought_ids[b, t].tolist())
                else:
                    expected = base_logits(model, context)
                    assert (out.thought_ids[b, t] == -100).all() and out.mixing_weights[b, t] == 0
                torch.testing.assert_close(out.logits[t][b], expected, rtol=1e-4, atol=1e-4)
    steps_with_thought = out.thought_used.any(dim=0)
    thought_length = model.config.n_thought_tokens
    assert len(calls) == NEW_TOKENS + thought_length * int(steps_with_thought.sum())


def test_parallel_forward_applies_the_same_gate_as_the_cache():
    model = fitted_model()
    input_ids, attention_mask = left_padded_prompt(seed=3)
    with torch.no_grad():
        everywhere = model(input_ids, attention_mask=attention_mask, use_cache=False)
        plain = model(input_ids, attention_mask=attention_mask, use_cache=False, thinking=False, output_hidden_states=True)
        predicted = model.thought_gate.predicted_log_kl(plain.hidden_states[-1])
        model.config.think_threshold = float(predicted[attention_mask.bool()].median().exp())
        gated = model(input_ids, attention_mask=attention_mask, use_cache=False)
        cache = model(input_ids[:, :2], attention_mask=attention_mask[:, :2]).past_key_values
        rest = model(input_ids[:, 2:], attention_mask=attention_mask, past_key_values=cache)
    thinks = predicted >= math.log(model.config.think_threshold)
    assert torch.equal(gated.thought_used, thinks) and thinks.any() and not thinks.all()
    base = plain.logits.masked_fill(torch.isin(torch.arange(TINY_VOCAB), torch.tensor([START_ID, END_ID])),
                                    torch.finfo(plain.logits.dtype).min)
    expected = torch.where(thinks.unsqueeze(-1), everywhere.logits, base)
    torch.testing.assert_close(gated.logits, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(gated.thought_ids[thinks], everywhere.thought_ids[thinks]) and (gated.thought_ids[~thinks] == -100).all()
    torch.testing.assert_close(rest.logits, gated.logits[:, 2:], rtol=1e-4, atol=1e-5)
    assert torch.equal(rest.thought_used, thinks[:, 2:])


def test_fit_is_the_least_squares_solution_on_the_measured_log_kl():
    model = tiny_model().eval()
    generator = torch.Generator().manual_seed(7)
    input_ids = torch.randint(0, TINY_VOCAB - 2, (12, 16), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[:4, 12:] = 0  # right padding is left out of the fit
    fit = fit_thought_gate(model, input_ids, attention_mask, batch_size=5, ridge=0.0)
    base, kl = thought_effects(model, input_ids, attention_mask)
    real = attention_mask.bool()
    assert fit.n_positions == int(real.sum())
    target = kl[real].clamp(min=quietstar.training.thought_gate_fitting.MIN_KL).log().double()
    predicted = model.thought_gate.predicted_log_kl(base[real]).double()
    residual = target - predicted
    # normal equations of least squares with a bias: the residual is orthogonal to the features and sums to 0
    assert abs(float(residual.mean())) < 1e-3 * float(target.std())
    correlation = base[real].double().T @ residual / residual.numel()
    assert float(correlation.abs().max()) < 1e-3 * float(base[real].double().abs().mean() * target.std())
    r2 = 1 - (residual**2).sum() / ((target - target.mean()) ** 2).sum()
    assert fit.r2 == pytest.approx(float(r2), abs=1e-4) and fit.r2 > 0.5
    assert fit.kl_quantiles["q10"] <= fit.kl_quantiles["q50"] <= fit.kl_quantiles["q90"]
    # the same KL as the eval-mode outputs: thought-mixed against base logits
    with torch.no_grad():
        mixed = model(input_ids[:2], use_cache=False).logits
        plain = model(input_ids[:2], thinking=False).logits
    plain[..., [START_ID, END_ID]] = float("-inf")
    hand = (mixed.softmax(-1) * (mixed.log_softmax(-1) - plain.log_softmax(-1))).nan_to_num().sum(-1)
    torch.testing.assert_close(kl[:2, :12].float(), hand[:, :12], rtol=1e-4, atol=1e-6)  # (rows 0-1 pad after 12)


def test_fitted_gate_saves_and_a_checkpoint_without_a_gate_loads_as_unfitted(tmp_path):
    model = fitted_model()
    model.config.think_threshold = 0.02
    model.save_pretrained(tmp_path / "fitted")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "fitted").eval()
    assert loaded.thought_gate.fitted and loaded.config.think_threshold == 0.02
    assert torch.equal(loaded.thought_gate.weight, model.thought_gate.weight)
    assert torch.equal(loaded.thought_gate.bias, model.thought_gate.bias)

    # an older checkpoint: no thought_gate tensors at all
    old = tmp_path / "old"
    model.save_pretrained(old)
    weights = load_file(old / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("thought_gate.")}, old / "model.safetensors",
              metadata={"format": "pt"})
    legacy = AutoModelForCausalLM.from_pretrained(old).eval()
    assert not legacy.thought_gate.fitted  # thinks everywhere, as before the gate existed
    for name, tensor in model.state_dict().items():
        if not name.startswith("thought_gate."):
            assert torch.equal(legacy.state_dict()[name], tensor), name
    input_ids = torch.randint(0, TINY_VOCAB - 2, (1, 7))
    model.config.think_threshold = 0.0
    with torch.no_grad():
        out = legacy(input_ids)
        torch.testing.assert_close(out.logits, model(input_ids).logits, rtol=1e-6, atol=1e-6)
    assert out.thought_used.all()


def test_trust_remote_code_loads_the_gate_and_gateless_checkpoints(tmp_path):
    model = fitted_model()
    input_ids = torch.randint(0, TINY_VOCAB - 2, (1, 9))
    with torch.no_grad():
        plain = model(input_ids, thinking=False, output_hidden_states=True)
        model.config.think_threshold = float(model.thought_gate.predicted_log_kl(plain.hidden_states[-1]).median().exp())
        expected = model(input_ids)
    assert expected.thought_used.any() and not expected.thought_used.all()
    model.save_pretrained(tmp_path / "fitted")
    weights = load_file(tmp_path / "fitted" / "model.safetensors")
    model.save_pretrained(tmp_path / "old")
    save_file({k: v for k, v in weights.items() if not k.startswith("thought_gate.")},
              tmp_path / "old" / "model.safetensors", metadata={"format": "pt"})
    torch.save({"input_ids": input_ids, "logits": expected.logits, "used": expected.thought_used}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["quietstar"] = None
        import torch
        from transformers import AutoModelForCausalLM
        data = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        fitted = AutoModelForCausalLM.from_pretrained({str(tmp_path / "fitted")!r}, trust_remote_code=True).eval()
        assert type(fitted).__module__.startswith("transformers_modules")
        with torch.no_grad():
            out = fitted(data["input_ids"])
        assert torch.equal(out.thought_used, data["used"])
        torch.testing.assert_close(out.logits, data["logits"], rtol=0, atol=1e-6)
        old = AutoModelForCausalLM.from_pretrained({str(tmp_path / "old")!r}, trust_remote_code=True).eval()
        assert not old.thought_gate.fitted
        with torch.no_grad():
            assert old(data["input_ids"]).thought_used.all()
        print("remote code ok")
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code ok" in result.stdout


def test_distillation_kl_and_its_gradient_by_hand():
    torch.manual_seed(0)
    vocab, hidden = 7, 5
    weight = torch.randn(vocab, hidden, requires_grad=True)
    student = torch.randn(2, 3, hidden, requires_grad=True)
    teacher = torch.randn(2, 3, hidden, requires_grad=True)
    row_weights = torch.tensor([[0.5, 0.0, 0.25], [0.25, 0.0, 0.0]])
    banned = [5, 6]
    loss, kl = linear_distillation_kl(student, teacher, weight, row_weights, banned_ids=banned, chunk_size=2)

    hand_kl = unfused_distillation_kl(student, teacher, weight, banned)  # the banned ids left out of both
    hand_loss = (hand_kl * row_weights).sum()
    torch.testing.assert_close(kl, hand_kl.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, hand_loss.detach(), rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(loss * 3, (student, weight))
    hand_grads = torch.autograd.grad(hand_loss * 3, (student, weight))
    for got, expected in zip(grads, hand_grads):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.autograd.grad(loss, teacher, allow_unused=True)[0] is None  # the teacher is a constant
    assert (kl >= 0).all() and kl.abs().sum() > 0


def test_distillation_term_is_the_kl_of_the_eval_mode_outputs_and_is_added_to_the_loss():
    """Training with distill_loss_weight: `distill_loss` is the mean over scored positions of KL(thought-mixed ||
    base) of the next-token distributions that eval mode returns for the same thoughts; the loss grows by the weight
    times it, and its gradient reaches the LM but not the thought-only parameters."""
    input_ids = torch.randint(0, TINY_VOCAB - 2, (2, 9), generator=torch.Generator().manual_seed(1))
    thought_ids = torch.randint(0, TINY_VOCAB - 2, (2, 9, 3), generator=torch.Generator().manual_seed(2))
    model = tiny_model(n_thoughts=1, distill_loss_weight=0.7)
    without = tiny_model(n_thoughts=1)
    out = model.train()(input_ids, thought_ids=thought_ids)
    reference = without.train()(input_ids, thought_ids=thought_ids)
    with torch.no_grad():
        mixed = model.eval()(input_ids, thought_ids=thought_ids, use_cache=False).logits
        plain = model(input_ids, thinking=False).logits
    plain[..., [START_ID, END_ID]] = float("-inf")
    kl = (mixed.softmax(-1) * (mixed.log_softmax(-1) - plain.log_softmax(-1))).nan_to_num().sum(-1)
    hand = kl[:, :-1].mean()  # the last position has no next token
    torch.testing.assert_close(out.distill_loss, hand, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.loss, reference.loss + 0.7 * hand, rtol=1e-4, atol=1e-6)
    assert reference.distill_loss == 0

    def gradients(distill_loss_weight):
        """Gradients with only the base NLL and the distillation term (no thought NLL, no REINFORCE)."""
        net = tiny_model(n_thoughts=1, policy_loss_weight=0.0, base_loss_weight=1.0,
                         distill_loss_weight=distill_loss_weight).train()
        net(input_ids, thought_ids=thought_ids).loss.backward()
        return {name: p.grad for name, p in net.named_parameters()}

    with_distill, without_distill = gradients(1.0), gradients(0.0)
    for name in ("lm_head.weight", "model.layers.0.mlp.down_proj.weight"):  # the student's path learns
        assert not torch.allclose(with_distill[name], without_distill[name]), name
    for name in ("mixing_head.output.weight", "thought_embeddings.weight"):  # the teacher is a constant
        assert with_distill[name] is None or with_distill[name].abs().sum() == 0, name


@pytest.mark.parametrize(("field", "value"), [("think_threshold", -0.1), ("think_threshold", True),
                                              ("distill_loss_weight", -1.0), ("distill_loss_weight", "high")])
def test_new_fields_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_config(**{field: value})
