"""The chunked LM-head operations against the unfused computation: values, gradients, sampled tokens, saved memory."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from reference_lm_head import unfused_logits, unfused_logprob, unfused_nll, unfused_pick
from scripts import load_script

from quietstar.models.lm_head import sample_thought_tokens, weighted_linear_cross_entropy

IGNORE = -100
ROWS, LENGTH, HIDDEN, VOCAB = 2, 9, 8, 37  # 18 rows: not a multiple of the chunk sizes 4 and 7
META_IDS = [VOCAB - 2, VOCAB - 1]
CHUNK_SIZES = [1, 4, 7, 64]
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-11, atol=1e-11)}


def make_inputs(dtype, seed=0):
    """(B', L, H) hidden states and a (V, H) head weight, both requiring grad."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(ROWS, LENGTH, HIDDEN, generator=generator, dtype=dtype).requires_grad_()
    weight = torch.randn(VOCAB, HIDDEN, generator=generator, dtype=dtype).requires_grad_()
    return hidden, weight


def grads(output, weights, inputs):
    return torch.autograd.grad((output * weights).sum(), inputs)


def targets_and_weights(dtype, seed=1):
    """(B', L) targets with ignored rows, and non-uniform row weights."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, VOCAB, (ROWS, LENGTH), generator=generator)
    targets[0, -3:] = IGNORE
    targets[1, 2] = IGNORE
    return targets, torch.rand(ROWS, LENGTH, generator=generator, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_weighted_linear_cross_entropy_matches_unfused_values_and_gradients(dtype, chunk_size):
    hidden, weight = make_inputs(dtype)
    targets, row_weights = targets_and_weights(dtype)
    expected_nll = unfused_nll(hidden, weight, targets)
    expected_loss = (expected_nll * row_weights).sum()

    loss, nll = weighted_linear_cross_entropy(
        hidden, weight, targets, row_weights, ignore_index=IGNORE, chunk_size=chunk_size
    )

    assert nll.shape == targets.shape and nll.dtype == loss.dtype == torch.promote_types(dtype, torch.float32)
    assert not nll.requires_grad and loss.requires_grad
    torch.testing.assert_close(nll, expected_nll.detach(), **TOLERANCE[dtype])
    torch.testing.assert_close(loss, expected_loss, **TOLERANCE[dtype])
    assert bool((nll[targets == IGNORE] == 0).all()) and bool((nll[targets != IGNORE] > 0).all())
    # the gradients computed in forward are scaled by the upstream gradient of the sum (here 2.5)
    got = torch.autograd.grad(2.5 * loss, (hidden, weight))
    for g, w in zip(got, torch.autograd.grad(2.5 * expected_loss, (hidden, weight))):
        assert g.dtype == dtype
        torch.testing.assert_close(g, w, **TOLERANCE[dtype])
    assert bool((got[0][targets == IGNORE] == 0).all())


def test_weighted_linear_cross_entropy_passes_gradcheck():
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(7, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 3, IGNORE, 10, 4, 4, 1])
    row_weights = torch.rand(7, generator=generator, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda h, w: weighted_linear_cross_entropy(h, w, targets, row_weights, chunk_size=3)[0],
        (hidden, weight),
        eps=1e-6,
        atol=1e-8,
    )


@pytest.mark.parametrize("setting", ["autocast", "bfloat16 inputs"])
def test_weighted_linear_cross_entropy_in_bfloat16_settings_computes_in_float32(setting):
    """Under bf16 autocast, or with bf16 hidden states and weight, the logits are still float32 products: the NLLs
    and gradients match the fp32 head on the same (for bf16 inputs: the same rounded) values to fp32 precision."""
    hidden, weight = make_inputs(torch.float32)
    if setting == "bfloat16 inputs":
        hidden = hidden.detach().bfloat16().requires_grad_()
        weight = weight.detach().bfloat16().requires_grad_()
    targets, row_weights = targets_and_weights(torch.float32, seed=3)
    expected = unfused_nll(hidden.float(), weight.float(), targets)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=setting == "autocast"):
        (loss, nll), saved = saved_storages(
            lambda: weighted_linear_cross_entropy(hidden, weight, targets, row_weights, chunk_size=4)
        )
    assert nll.dtype == loss.dtype == torch.float32
    # kept for backward: the gradients of hidden and of the weight, nothing else (no logits, no cast copies)
    assert sorted(shape for _, shapes in saved.values() for shape in shapes) == sorted(
        [(ROWS * LENGTH, HIDDEN), tuple(weight.shape)]
    )
    assert sum(nbytes for nbytes, _ in saved.values()) == hidden.nbytes + weight.nbytes
    torch.testing.assert_close(nll, expected.detach(), **TOLERANCE[torch.float32])
    got = torch.autograd.grad(loss, (hidden, weight))
    want = torch.autograd.grad((expected * row_weights).sum(), (hidden, weight))
    for g, w in zip(got, want):
        assert g.dtype == hidden.dtype
        torch.testing.assert_close(g.float(), w.float(), **(TOLERANCE[torch.float32] if g.dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)))


def test_weighted_linear_cross_entropy_without_grad_keeps_nothing():
    hidden, weight = make_inputs(torch.float64)
    targets, row_weights = targets_and_weights(torch.float64)
    with torch.no_grad():
        (loss, nll), saved = saved_storages(
            lambda: weighted_linear_cross_entropy(hidden, weight, targets, row_weights, chunk_size=4)
        )
    assert saved == {} and not loss.requires_grad
    expected = unfused_nll(hidden, weight, targets).detach()
    torch.testing.assert_close(nll, expected, **TOLERANCE[torch.float64])
    torch.testing.assert_close(loss, (expected * row_weights).sum(), **TOLERANCE[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("clipped", [False, True], ids=["advantages", "clipped-advantages"])
def test_sampling_draws_the_unfused_tokens_and_log_probabilities(dtype, chunk_size, clipped):
    hidden, weight = make_inputs(dtype)
    torch.manual_seed(123)
    logits = unfused_logits(hidden, weight, META_IDS)
    expected_tokens = unfused_pick(logits, temperature=1.0)
    expected_logprob = unfused_logprob(logits, expected_tokens, temperature=3.0)
    after_unfused = torch.rand(3)

    torch.manual_seed(123)
    tokens, logprob = sample_thought_tokens(
        hidden, weight, banned_ids=META_IDS, sample_temperature=1.0, logprob_temperature=3.0, chunk_size=chunk_size
    )
    assert torch.equal(torch.rand(3), after_unfused)  # the same generator state consumed as the unfused draw
    assert torch.equal(tokens, expected_tokens)
    assert logprob.dtype == torch.promote_types(dtype, torch.float32)
    torch.testing.assert_close(logprob, expected_logprob, **TOLERANCE[dtype])
    advantages = torch.randn(ROWS, LENGTH, generator=torch.Generator().manual_seed(4), dtype=dtype)
    if clipped:  # about half the rows get an exactly zero gradient, which backward skips
        advantages = advantages.clamp(min=0)
        assert 0 < int((advantages == 0).sum()) < advantages.numel()
    got = grads(logprob, advantages, (hidden, weight))
    want = grads(expected_logprob, advantages, (hidden, weight))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOLERANCE[dtype])


def test_explicit_uniform_numbers_give_the_draw_of_the_same_numbers():
    hidden, weight = make_inputs(torch.float32)
    uniform = torch.rand(ROWS, LENGTH, generator=torch.Generator().manual_seed(5))
    tokens, _ = sample_thought_tokens(
        hidden, weight, banned_ids=META_IDS, sample_temperature=0.7, logprob_temperature=None, uniform=uniform,
        chunk_size=4,
    )
    probs = torch.softmax(unfused_logits(hidden, weight, META_IDS).detach() / 0.7, dim=-1)
    cdf = probs.cumsum(-1)
    expected = torch.searchsorted(cdf, uniform.unsqueeze(-1) * cdf[..., -1:], right=True).squeeze(-1)
    assert torch.equal(tokens, expected)


def test_banned_ids_are_never_drawn_even_when_they_dominate():
    hidden, weight = make_inputs(torch.float32)
    with torch.no_grad():
        weight[META_IDS] = 50 * hidden.detach().mean(dim=(0, 1))  # the meta tokens would win almost every draw
    assert bool(torch.isin(F.linear(hidden, weight).argmax(-1), torch.tensor(META_IDS)).any())
    torch.manual_seed(0)
    for temperature in (0.0, 1.0, 10.0):
        for chunk_size in (1, 5):
            tokens, logprob = sample_thought_tokens(
                hidden, weight, banned_ids=META_IDS, sample_temperature=temperature, logprob_temperature=1.0,
                chunk_size=chunk_size,
            )
            assert not bool(torch.isin(tokens, torch.tensor(META_IDS)).any())
            assert bool(torch.isfinite(logprob).all())


@pytest.mark.parametrize("chunk_size", [4, 64])
def test_argmax_mode_takes_the_masked_argmax_and_draws_no_random_numbers(chunk_size):
    hidden, weight = make_inputs(torch.float64)
    logits = unfused_logits(hidden, weight, META_IDS)
    torch.manual_seed(7)
    tokens, logprob = sample_thought_tokens(
        hidden, weight, banned_ids=META_IDS, sample_temperature=0, logprob_temperature=2.0, chunk_size=chunk_size
    )
    after = torch.rand(2)
    torch.manual_seed(7)
    assert torch.equal(after, torch.rand(2))
    assert torch.equal(tokens, logits.argmax(-1))
    torch.testing.assert_close(logprob, unfused_logprob(logits, tokens, 2.0), **TOLERANCE[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_given_tokens_mode_scores_the_given_tokens(dtype):
    hidden, weight = make_inputs(dtype)
    given = torch.randint(0, VOCAB - 2, (ROWS, LENGTH), generator=torch.Generator().manual_seed(8))
    tokens, logprob = sample_thought_tokens(
        hidden, weight, banned_ids=META_IDS, sample_temperature=1.0, logprob_temperature=0.5, given_tokens=given,
        chunk_size=7,
    )
    expected = unfused_logprob(unfused_logits(hidden, weight, META_IDS), given, 0.5)
    assert torch.equal(tokens, given)
    torch.testing.assert_close(logprob, expected, **TOLERANCE[dtype])
    got = torch.autograd.grad(logprob.sum(), (hidden, weight))
    for g, w in zip(got, torch.autograd.grad(expected.sum(), (hidden, weight))):
        torch.testing.assert_close(g, w, **TOLERANCE[dtype])


def test_without_a_log_probability_nothing_is_recorded_for_backward():
    hidden, weight = make_inputs(torch.float32)
    torch.manual_seed(9)
    with_logprob, _ = sample_thought_tokens(
        hidden, weight, banned_ids=META_IDS, sample_temperature=1.0, logprob_temperature=1.0, chunk_size=4
    )
    torch.manual_seed(9)
    tokens, logprob = sample_thought_tokens(
        hidden, weight, banned_ids=META_IDS, sample_temperature=1.0, logprob_temperature=None, chunk_size=4
    )
    assert logprob is None and tokens.grad_fn is None and not tokens.requires_grad
    assert torch.equal(tokens, with_logprob)


def test_invalid_arguments_are_one_line_errors():
    hidden, weight = make_inputs(torch.float32)
    targets = torch.zeros(ROWS, LENGTH, dtype=torch.long)
    row_weights = torch.ones(ROWS, LENGTH)
    with pytest.raises(ValueError, match="chunk_size"):
        weighted_linear_cross_entropy(hidden, weight, targets, row_weights, chunk_size=0)
    with pytest.raises(ValueError, match="leading shape"):
        weighted_linear_cross_entropy(hidden, weight, targets[:, 1:], row_weights[:, 1:])
    with pytest.raises(ValueError, match="leading shape"):
        weighted_linear_cross_entropy(hidden, weight, targets, row_weights[:, 1:])
    with pytest.raises(ValueError, match="hidden size"):
        weighted_linear_cross_entropy(hidden, weight[:, 1:], targets, row_weights)
    with pytest.raises(ValueError, match="uniform"):
        sample_thought_tokens(
            hidden, weight, banned_ids=META_IDS, sample_temperature=1.0, logprob_temperature=1.0,
            uniform=torch.rand(3),
        )
    with pytest.raises(ValueError, match="logprob_temperature"):
        sample_thought_tokens(hidden, weight, banned_ids=META_IDS, sample_temperature=1.0, logprob_temperature=0.0)


def saved_storages(function):
    """Run `function()` recording what autograd saves for backward: {storage data_ptr: (nbytes, shapes)}."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        nbytes, shapes = storages.get(storage.data_ptr(), (storage.nbytes(), []))
        storages[storage.data_ptr()] = (nbytes, shapes + [tuple(tensor.shape)])
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = function()
    return output, storages


def test_chunked_functions_save_no_vocabulary_sized_tensor_per_row():
    rows, vocab = 300, 1000  # rows > hidden, so only a (rows, V)-sized tensor can reach rows * V elements
    generator = torch.Generator().manual_seed(10)
    hidden = torch.randn(rows, HIDDEN, generator=generator, requires_grad=True)
    weight = torch.randn(vocab, HIDDEN, generator=generator, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    banned = [vocab - 2, vocab - 1]

    def unfused():
        nll = unfused_nll(hidden, weight, targets)
        masked = unfused_logits(hidden, weight, banned)
        tokens = unfused_pick(masked, 1.0)
        return nll, unfused_logprob(masked, tokens, 2.0)

    def chunked():
        loss, _ = weighted_linear_cross_entropy(hidden, weight, targets, torch.ones(rows), chunk_size=64)
        _, logprob = sample_thought_tokens(
            hidden, weight, banned_ids=banned, sample_temperature=1.0, logprob_temperature=2.0, chunk_size=64
        )
        return loss, logprob

    _, unfused_saved = saved_storages(unfused)
    (nll, logprob), chunked_saved = saved_storages(chunked)
    vocab_sized = rows * vocab * 4
    assert max(nbytes for nbytes, _ in unfused_saved.values()) >= vocab_sized  # the unfused path does keep one
    assert all(nbytes < vocab_sized for nbytes, _ in chunked_saved.values()), chunked_saved
    # the cross-entropy keeps the gradients of hidden and weight; sampling keeps hidden and weight by reference,
    # the ids, one log-sum-exp per row and the banned ids
    chunked_bytes = sum(nbytes for nbytes, _ in chunked_saved.values())
    assert chunked_bytes <= 2 * (hidden.nbytes + weight.nbytes) + rows * (8 + 4) + 16
    assert chunked_bytes < sum(nbytes for nbytes, _ in unfused_saved.values()) / 4
    torch.autograd.grad(nll + logprob.sum(), (hidden, weight))  # and backward runs from what was saved


def peak_transient_bytes(function) -> int:
    """Largest total of tensor bytes allocated by `function()` and live at once, minus what is live when it returns
    (the profiler's memory timeline; tensors that existed before the call are not counted)."""
    bench = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_step_peak.py", "bench_step_peak")
    with torch.profiler.profile(record_shapes=True, with_stack=True, profile_memory=True) as prof:
        output = function()
    timeline = bench.live_bytes_timeline(prof)
    return max(timeline) - timeline[-1], output


def test_a_chunk_needs_one_vocabulary_sized_buffer():
    """Forward and backward of both chunked functions hold at most one (chunk, V) fp32 logits buffer at a time (plus
    the sampler's CDF while it draws), never the previous chunk's next to the current one's."""
    rows, vocab, chunk = 64, 4096, 16
    generator = torch.Generator().manual_seed(11)
    hidden = torch.randn(rows, HIDDEN, generator=generator, requires_grad=True)
    weight = torch.randn(vocab, HIDDEN, generator=generator, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    buffer = chunk * vocab * 4
    small = 2 * weight.nbytes + 8 * rows * HIDDEN * 4  # gradients of the weight and of the rows, row vectors

    def cross_entropy():
        loss, _ = weighted_linear_cross_entropy(hidden, weight, targets, torch.ones(rows), chunk_size=chunk)
        return torch.autograd.grad(loss, (hidden, weight))

    def log_probability(given):
        _, logprob = sample_thought_tokens(
            hidden, weight, banned_ids=[0], sample_temperature=1.0, logprob_temperature=3.0, chunk_size=chunk,
            given_tokens=targets if given else None,
        )
        return torch.autograd.grad(logprob.sum(), (hidden, weight))

    assert peak_transient_bytes(cross_entropy)[0] < buffer + small
    assert peak_transient_bytes(lambda: log_probability(given=True))[0] < buffer + small
    assert peak_transient_bytes(lambda: log_probability(given=False))[0] < 2 * buffer + small
