import dataclasses
import math

import numpy as np
import pytest
import torch

from peptrm import masses
from peptrm.config import load_config
from peptrm.model import (
    KERNEL_WIDTHS_DA,
    LookupCache,
    PepTRM,
    SinusoidalEncoding,
    attend,
)

V = len(masses.VOCAB)


@pytest.fixture
def tiny():
    cfg = load_config(
        overrides={
            "model": {"dim": 32, "n_heads": 4, "max_length": 12},
            "recursion": {"n_latent_steps": 2, "n_cycles": 2, "n_supervision": 2},
        }
    )
    torch.manual_seed(0)
    return PepTRM(cfg.model, cfg.recursion, V).eval(), cfg


def _batch(n_peaks=20, batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    mz = torch.sort(torch.rand(batch, n_peaks, generator=g) * 1500 + 100).values
    intensity = torch.rand(batch, n_peaks, generator=g)
    return (
        mz,
        intensity,
        torch.tensor([1200.5, 900.25, 2000.0]),
        torch.tensor([2, 3, 2]),
    )


def _ladder_spectrum(peptide):
    """Peaks (1, N) at the b and y ions of `peptide`, all at intensity 1; its
    neutral mass (1,); and how many of the peaks are b ions (they come first)."""
    b, y = masses.fragment_mz(peptide, 1)
    mz = torch.tensor([np.concatenate([b, y])], dtype=torch.float32)
    mass = torch.tensor([masses.peptide_mass(peptide)], dtype=torch.float64)
    return mz, torch.ones_like(mz), mass, len(b)


def test_shapes(tiny):
    model, cfg = tiny
    spectrum = model.encode(*_batch())
    assert spectrum.x.shape == (3, 21, 32) and spectrum.padding.shape == (3, 21)
    y, z = model.initial_state(spectrum)
    y, z, halt = model(spectrum, y, z)
    assert y.shape == (3, 12, V) and z.shape == (3, 12, 32) and halt.shape == (3,)


def test_padded_peaks_change_nothing(tiny):
    """Zero-intensity padding must be masked out of every attention."""
    model, _ = tiny
    mz, intensity, mass, charge = _batch()
    spectrum = model.encode(mz, intensity, mass, charge)
    y1, _, h1 = model(spectrum, *model.initial_state(spectrum))
    mz_pad = torch.cat([mz, torch.full((3, 7), 555.5)], 1)
    intensity_pad = torch.cat([intensity, torch.zeros(3, 7)], 1)
    spectrum = model.encode(mz_pad, intensity_pad, mass, charge)
    y2, _, h2 = model(spectrum, *model.initial_state(spectrum))
    # The draft ladder encodes m/z to 0.001 Th, so 1e-7 rounding in y grows a little
    # over 4 think/revise rounds (~3e-3); a padding leak shows as O(0.1-1) changes.
    torch.testing.assert_close(y1, y2, atol=1e-2, rtol=0)
    torch.testing.assert_close(h1, h2, atol=1e-2, rtol=0)


@pytest.mark.parametrize("cross", [False, True])
def test_attend_is_multihead_attention_with_its_weights(cross):
    """SDPA over an nn.MultiheadAttention's weights gives its output and gradients."""
    torch.manual_seed(3)
    attention = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    query = torch.randn(3, 12, 32, requires_grad=True)
    memory = torch.randn(3, 21, 32) if cross else query
    padding = torch.arange(21 if cross else 12) >= torch.tensor([[21], [9], [5]])
    ours = attend(attention, query, memory, padding)
    theirs = attention(
        query, memory, memory, key_padding_mask=padding, need_weights=False
    )[0]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    (grad_ours,) = torch.autograd.grad(ours.sum(), query)
    (grad_theirs,) = torch.autograd.grad(theirs.sum(), query)
    torch.testing.assert_close(grad_ours, grad_theirs, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # nn.MultiheadAttention's inference fast path
        fast = attention.eval()(
            query, memory, memory, key_padding_mask=padding, need_weights=False
        )[0]
    rows = ~padding if not cross else torch.ones(3, 12, dtype=torch.bool)
    torch.testing.assert_close(ours[rows], fast[rows], atol=1e-5, rtol=1e-5)


def test_one_cycle_equals_one_improvement(tiny):
    model, cfg = tiny
    one = PepTRM(cfg.model, dataclasses.replace(cfg.recursion, n_cycles=1), V).eval()
    one.load_state_dict(model.state_dict())
    spectrum = one.encode(*_batch())
    y0, z0 = one.initial_state(spectrum)
    y_forward, z_forward, _ = one(spectrum, y0, z0, supervision_step=0)
    y_improve, z_improve = one.improve(spectrum, y0, z0, step=0)
    torch.testing.assert_close(y_forward, y_improve)
    torch.testing.assert_close(z_forward, z_improve)


def test_no_gradient_reaches_the_first_cycles(tiny):
    """With T=2, gradients come only from the last cycle: the first is in no_grad."""
    model, _ = tiny
    spectrum = model.encode(*_batch())
    y, z = model.initial_state(spectrum)
    seen = []
    original = model.improve

    def spy(*args, **kwargs):
        seen.append(torch.is_grad_enabled())
        return original(*args, **kwargs)

    model.improve = spy
    y, z, _ = model(spectrum, y, z)
    assert seen == [False, True]
    assert y.requires_grad


def test_gate_starts_small(tiny):
    """Initial revision gate is sigmoid(gate_bias): the first draft moves ~12 %."""
    model, cfg = tiny
    assert torch.sigmoid(model.heads.gate.bias).item() == pytest.approx(
        torch.sigmoid(torch.tensor(cfg.model.gate_bias)).item()
    )


def test_sinusoidal_encoding_separates_close_peaks():
    encode = SinusoidalEncoding(256, 0.001, 10000.0)
    a, b, far = encode(torch.tensor([500.00, 500.01, 900.0]))
    near_distance = (a - b).norm()
    assert near_distance > 0.5  # 0.01 Th apart is clearly distinct
    assert (a - far).norm() > near_distance


def test_same_seed_same_output():
    cfg = load_config(overrides={"model": {"dim": 32, "n_heads": 4, "max_length": 12}})
    outputs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = PepTRM(cfg.model, cfg.recursion, V).eval()
        spectrum = model.encode(*_batch())
        outputs.append(model(spectrum, *model.initial_state(spectrum))[0])
    torch.testing.assert_close(outputs[0], outputs[1])


def test_draft_ladder_is_the_b_and_y_series_of_a_confident_draft(tiny):
    """A one-hot draft of PEPTIDE encodes exactly its b/y ion m/z per position."""
    model, cfg = tiny
    tokens = torch.as_tensor(masses.encode("PEPTLDE", cfg.model.max_length))
    probs = torch.nn.functional.one_hot(tokens, V).float().unsqueeze(0)  # (1, L, V)
    precursor = torch.tensor([masses.peptide_mass("PEPTLDE")], dtype=torch.float64)
    b, y = masses.fragment_mz("PEPTLDE")
    encode, project = model.encoder.mz_encoding, model.encoder.mz_projection
    expected = project(encode(torch.tensor(b[1]))) + project(encode(torch.tensor(y[4])))
    torch.testing.assert_close(
        model.ladder(probs, precursor)[0, 1], expected, atol=1e-3, rtol=1e-3
    )  # b2 and y5 after position 2


def _model_on_a_ladder(**model_settings):
    """A small untrained model (L = 12) with `model_settings`, the encoded ladder
    spectrum of PEPTLDEK (`_ladder_spectrum`) and its tokens (L,)."""
    shape = {"dim": 32, "n_heads": 4, "max_length": 12}
    cfg = load_config(overrides={"model": {**shape, **model_settings}})
    model = PepTRM(cfg.model, cfg.recursion, V).eval()
    peptide = ["P", "E", "P", "T", "L", "D", "E", "K"]
    mz, intensity, mass, _ = _ladder_spectrum(peptide)
    spectrum = model.encode(mz, intensity, mass, torch.tensor([2]))
    return model, spectrum, torch.as_tensor(masses.encode(peptide, 12))


def test_ion_evidence_finds_the_true_ladder_from_either_end():
    """With the draft on the true peptide, every true token sees its b and y ions."""
    model, spectrum, tokens = _model_on_a_ladder(suffix_evidence=True)
    probs = torch.nn.functional.one_hot(tokens, V).double().unsqueeze(0)
    shape = (1, 12, V, len(masses.FRAGMENT_IONS), -1)
    prefix = model.ion_evidence(probs, spectrum)[0].reshape(shape)
    suffix = model.suffix_ion_evidence(probs, spectrum).reshape(shape)
    b_ion, y_ion = 0, 1  # masses.FRAGMENT_IONS order; channel 0 = narrow kernel
    for i in range(7):  # cleavage after token i: b(i+1) and y(7-i)
        assert prefix[0, i, tokens[i], b_ion, 0] > 0.99
        assert prefix[0, i, tokens[i], y_ion, 0] > 0.99
    for i in range(1, 8):  # cleavage before token i: b(i) and y(8-i)
        assert suffix[0, i, tokens[i], b_ion, 0] > 0.99
        assert suffix[0, i, tokens[i], y_ion, 0] > 0.99
    wrong = masses.TOKEN_INDEX["W"]  # W at position 2 has no ions here
    assert prefix[0, 2, wrong, b_ion, 0] < 0.01 and suffix[0, 2, wrong, y_ion, 0] < 0.01


def test_the_lookup_cache_never_reads_a_row_of_an_older_lookup():
    """Position 5 of PEPTLDEK is looked up, then (PEPT: past the draft's end) it
    repeats position 4, then PEPTLDEK again puts it at the same prefix: it must
    read what a fresh lookup reads, not the row it had two lookups ago."""
    model, spectrum, _ = _model_on_a_ladder(argmax_prefix=True)
    cached = spectrum._replace(
        lookups=LookupCache(1, 12, torch.device("cpu")), origin=torch.arange(1)
    )
    for peptide in ("PEPTLDEK", "PEPT", "PEPTLDEK", "PEPTLDEK"):
        tokens = torch.as_tensor(masses.encode(list(peptide), 12))
        probs = torch.nn.functional.one_hot(tokens, V).double().unsqueeze(0)
        fresh = model.prefix_lookup(probs, spectrum)
        again = model.prefix_lookup(probs, cached)
        assert torch.equal(again.found, fresh.found), peptide
        assert torch.equal(again.row, fresh.row)
    residues = masses.peptide_mass("PEPTL") - masses.H2O
    assert cached.lookups.prefix[0, 5].item() == pytest.approx(residues)


@pytest.mark.parametrize("argmax_prefix", [False, True])
def test_argmax_prefix_finds_the_ladder_of_a_draft_that_is_not_one_hot(argmax_prefix):
    """A draft of the true peptide as sure as a given one (p = 0.85 per token).

    Its expected residue masses are off by a Da or more (the 15 % left is
    spread over the vocabulary), so from the second position on the expected
    walk's lookups miss every ion; the argmax walk's are exact.
    """
    model, spectrum, tokens = _model_on_a_ladder(argmax_prefix=argmax_prefix)
    probs = model.draft_logits(tokens.unsqueeze(0)).softmax(-1)  # (1, L, V)
    assert probs.max(-1).values.max() < 0.86
    expected_mass = (probs[0, 0].double() @ model.token_masses).item()
    wide = max(KERNEL_WIDTHS_DA)  # Da
    assert abs(expected_mass - masses.VOCAB_MASSES[tokens[0]]) > 3 * wide
    shape = (12, V, len(masses.FRAGMENT_IONS), -1)
    found = model.ion_evidence(probs, spectrum)[0][0].reshape(shape)
    b_ion, y_ion = 0, 1  # masses.FRAGMENT_IONS order; channel 0 = narrow kernel
    true_ions = torch.stack([found[i, tokens[i], (b_ion, y_ion), 0] for i in range(7)])
    assert torch.all(true_ions[0] > 0.99)  # nothing before the first position
    if argmax_prefix:
        assert torch.all(true_ions > 0.99)
    else:
        assert torch.all(true_ions[1:] < 0.01)


def test_draft_logits_put_a_confident_draft_only_where_given(tiny):
    model, cfg = tiny
    tokens = torch.as_tensor(np.stack([masses.encode("PEPTLDEK", 12)] * 2))
    y = model.draft_logits(tokens, torch.tensor([True, False]))
    assert y.shape == (2, 12, V)
    assert torch.equal(y[0].argmax(-1), tokens[0])
    p = y[0].softmax(-1).max(-1).values
    expected = math.exp(5) / (math.exp(5) + V - 1)  # DRAFT_CONFIDENCE = 5
    assert torch.allclose(p, torch.full_like(p, expected), atol=1e-4)
    assert torch.count_nonzero(y[1]) == 0  # the blank draft of initial_state
    positions = torch.zeros(2, 12, dtype=torch.bool)
    positions[0, :3] = True  # only the first three tokens of the first row
    y = model.draft_logits(tokens, positions)
    assert torch.equal(y[0, :3].argmax(-1), tokens[0, :3])
    assert torch.count_nonzero(y[0, 3:]) == 0 and torch.count_nonzero(y[1]) == 0


def _with_and_without(setting, **model_settings):
    """A small one-step model with `setting` on, and the same model with it off
    holding the first's weights: (with, without, the weights only the first has)."""
    overrides = {
        "model": {"dim": 32, "n_heads": 4, "max_length": 12, setting: True,
                  **model_settings},
        "recursion": {"n_latent_steps": 1, "n_cycles": 1, "n_supervision": 1},
    }  # fmt: skip
    cfg = load_config(overrides=overrides)
    torch.manual_seed(0)
    added = PepTRM(cfg.model, cfg.recursion, V)
    plain = PepTRM(dataclasses.replace(cfg.model, **{setting: False}), cfg.recursion, V)
    missing, unexpected = plain.load_state_dict(added.state_dict(), strict=False)
    assert not missing
    return added, plain, unexpected


def test_evidence_logits_start_as_the_model_without_them_and_learn():
    """The per-token evidence scorer starts at zero (a fine-tuned model starts
    unchanged) and a gradient reaches it through the revision."""
    with_logits, plain, unexpected = _with_and_without("evidence_logits")
    assert all(k.startswith("evidence_scorer") for k in unexpected)
    peptide = ["P", "E", "P", "T", "L", "D", "E", "K"]
    mz, intensity, mass, _ = _ladder_spectrum(peptide)
    outputs = []
    for model in (with_logits, plain):
        spectrum = model.encode(mz, intensity, mass, torch.tensor([2]))
        y0, z0 = model.initial_state(spectrum)
        outputs.append(model(spectrum, y0, z0)[0])
    torch.testing.assert_close(outputs[0], outputs[1])
    tokens = torch.as_tensor(masses.encode(peptide, 12)).unsqueeze(0)
    loss = torch.nn.functional.cross_entropy(outputs[0].transpose(1, 2), tokens)
    loss.backward()
    assert with_logits.evidence_scorer[-1].weight.grad.abs().sum() > 0


def test_lookahead_reads_the_next_cleavage_and_starts_as_the_model_without_it():
    """Position 0's candidate P under the draft's E at position 1 reads the ions
    of PE (b2), as position 1's candidate E does after P; the projection starts
    at zero and a gradient reaches it."""
    ahead, plain, unexpected = _with_and_without("lookahead_evidence")
    assert all(k.startswith("lookahead_projection") for k in unexpected)
    peptide = ["P", "E", "P", "T", "L", "D", "E", "K"]
    mz, intensity, mass, _ = _ladder_spectrum(peptide)
    spectrum = ahead.encode(mz, intensity, mass, torch.tensor([2]))
    tokens = torch.as_tensor(masses.encode(peptide, 12)).unsqueeze(0)
    probs = ahead.draft_logits(tokens).softmax(-1)
    found_ahead, _, row_ahead, _ = ahead.lookahead_lookup(probs, spectrum)
    found_next, _, row_next, _ = ahead.prefix_lookup(probs, spectrum)
    p, e = masses.VOCAB.index("P"), masses.VOCAB.index("E")
    first = found_ahead[row_ahead[0, 0]].view(V, -1)[p]
    torch.testing.assert_close(first, found_next[row_next[0, 1]].view(V, -1)[e])
    assert first.abs().sum() > 0  # b2 of PE is a peak
    own = found_next[row_next[0, 0]].view(V, -1)[p]  # its own lookup: b1 of P
    assert not torch.equal(first, own)
    outputs = []
    for model in (ahead, plain):
        spectrum = model.encode(mz, intensity, mass, torch.tensor([2]))
        y0, z0 = model.initial_state(spectrum)
        y1, z1, _ = model(spectrum, y0, z0)
        outputs.append(model(spectrum, y1.detach(), z1.detach())[0])
    torch.testing.assert_close(outputs[0], outputs[1])
    loss = torch.nn.functional.cross_entropy(outputs[0].transpose(1, 2), tokens)
    loss.backward()
    assert ahead.lookahead_projection.weight.grad.abs().sum() > 0


def test_peak_annotator_gives_each_peak_a_chance_per_ion_type():
    from peptrm.model import ANNOTATED_IONS

    cfg = load_config(overrides={"model": {"dim": 32, "n_heads": 4,
                                           "peak_annotator": True,
                                           "annotator_layers": 1}})  # fmt: skip
    model = PepTRM(cfg.model, cfg.recursion, len(masses.VOCAB)).eval()
    batch = {
        "mz": torch.tensor([[200.1, 300.2, 0.0], [150.0, 0.0, 0.0]]),
        "intensity": torch.tensor([[1.0, 0.5, 0.0], [1.0, 0.0, 0.0]]),
        "precursor_mass": torch.tensor([800.4, 600.3], dtype=torch.float64),
        "charge": torch.tensor([2, 3]),
    }
    chances = model.annotate_batch(batch)
    assert chances.shape == (2, 3, len(ANNOTATED_IONS))
    assert ((chances > 0) & (chances < 1)).all()
    # each peak's chances depend on the other peaks it is read with
    alone = model.annotate_batch(
        {k: v[:1] for k, v in batch.items()}
        | {
            "mz": torch.tensor([[200.1, 0.0, 0.0]]),
            "intensity": torch.tensor([[1.0, 0.0, 0.0]]),
        }
    )
    assert not torch.allclose(alone[0, 0], chances[0, 0])


def test_chance_evidence_reads_the_annotators_word_at_each_candidates_ions():
    """At the true token's b and y ions the annotator's b and y chances of the
    peaks there, per kernel width; nothing where a token has no peak or where
    the peak is named another ion type."""
    from peptrm.model import ANNOTATED_IONS, KERNEL_WIDTHS_DA

    cfg = load_config(overrides={"model": {"dim": 32, "n_heads": 4, "max_length": 12,
                                           "peak_annotator": True,
                                           "annotator_layers": 1,
                                           "chance_evidence": True}})  # fmt: skip
    model = PepTRM(cfg.model, cfg.recursion, V).eval()
    peptide = ["P", "E", "P", "T", "L", "D", "E", "K"]
    mz, intensity, mass, n_b = _ladder_spectrum(peptide)
    chance = torch.zeros(1, mz.shape[1], len(ANNOTATED_IONS))
    chance[0, :n_b, 0] = 0.9  # the b peaks are named b ions
    chance[0, n_b:, 1] = 0.7  # the y peaks y ions
    order = torch.randperm(mz.shape[1])  # the lookup sorts the peaks itself
    tokens = torch.as_tensor(masses.encode(peptide, 12))
    probs = torch.nn.functional.one_hot(tokens, V).double().unsqueeze(0)

    def read(chance):
        spectrum = model.encode(
            mz[:, order], intensity[:, order], mass, torch.tensor([2]), chance[:, order]
        )
        _, found = model.ion_evidence(probs, spectrum)
        return found.reshape(1, 12, V, len(ANNOTATED_IONS), len(KERNEL_WIDTHS_DA))

    found = read(chance)
    for i in range(7):  # cleavage after token i: b(i+1) and y(7-i), both kernels
        torch.testing.assert_close(found[0, i, tokens[i], 0], torch.tensor([0.9] * 2))
        torch.testing.assert_close(found[0, i, tokens[i], 1], torch.tensor([0.7] * 2))
        assert found[0, i, tokens[i], 2:].max() < 0.01  # no doubly charged ions named
    wrong = masses.TOKEN_INDEX["W"]  # W at position 2 has no ions here
    assert found[0, 2, wrong].max() < 0.01
    relabelled = chance.flip(-1)  # the same peaks named y++ and b++
    assert read(relabelled)[0, :7, :, :2].max() < 0.01
    with pytest.raises(ValueError, match="ion chances"):
        model.encode(mz, intensity, mass, torch.tensor([2]))


def test_chance_evidence_starts_as_the_model_without_it_and_learns():
    """Its projection and per-token scorer start at zero (the bundled model
    fine-tuned with them starts unchanged); gradients reach both."""
    reading, plain, unexpected = _with_and_without(
        "chance_evidence", peak_annotator=True, annotator_layers=1
    )
    assert unexpected
    assert all(k.startswith(("chance_projection", "chance_scorer")) for k in unexpected)
    peptide = ["P", "E", "P", "T", "L", "D", "E", "K"]
    mz, intensity, mass, _ = _ladder_spectrum(peptide)
    batch = {"mz": mz, "intensity": intensity, "precursor_mass": mass,
             "charge": torch.tensor([2])}  # fmt: skip
    outputs = []
    for model in (reading, plain):  # the reader runs its own annotator
        spectrum = model.encode_batch(batch)
        y0, z0 = model.initial_state(spectrum)
        outputs.append(model(spectrum, y0, z0)[0])
    torch.testing.assert_close(outputs[0], outputs[1])
    tokens = torch.as_tensor(masses.encode(peptide, 12)).unsqueeze(0)
    loss = torch.nn.functional.cross_entropy(outputs[0].transpose(1, 2), tokens)
    loss.backward()
    assert reading.chance_scorer[-1].weight.grad.abs().sum() > 0
    assert reading.chance_projection.weight.grad.abs().sum() > 0


def test_candidate_context_marks_charge_3_and_4_and_the_cleavage_share():
    """PEPTLDEK (909.45 Da of residues): a cleavage after PEP (b 323.15 Da)
    sits at a share of 0.355 of it, after the whole peptide at 1."""
    from peptrm.model import candidate_context

    peptide = ["P", "E", "P", "T", "L", "D", "E", "K"]
    mass = masses.peptide_mass(peptide)
    b_pep = sum(masses.VOCAB_MASSES[masses.TOKEN_INDEX[t]] for t in peptide[:3])
    b = torch.tensor([[0.0, b_pep, mass - masses.H2O]] * 3, dtype=torch.float64)
    context = candidate_context(
        b, torch.tensor([mass] * 3, dtype=torch.float64), torch.tensor([2, 3, 5])
    )
    share = float(b_pep / (mass - masses.H2O))
    assert share == pytest.approx(0.3553, abs=1e-4)
    torch.testing.assert_close(context[0, 1], torch.tensor([0.0, 0, share, 0, 0]))
    torch.testing.assert_close(context[1, 1], torch.tensor([1.0, 0, share, share, 0]))
    torch.testing.assert_close(context[2, 2], torch.tensor([0.0, 1, 1, 0, 1]))
    assert context[:, 0, 2:].abs().sum() == 0  # the first cleavage: share 0


def test_charge_context_starts_as_the_model_without_it_and_reads_the_charge():
    """Its weights start at zero (the bundled model fine-tuned with it starts
    unchanged) and gradients reach them; given weights, the same spectrum read
    at charge 3 drafts differently from charge 2, and the lookup cache of
    inference reads the context as a fresh lookup does."""
    reading, plain, unexpected = _with_and_without(
        "charge_context", peak_annotator=True, annotator_layers=1, chance_evidence=True
    )
    assert unexpected == ["chance_context.weight"]
    peptide = ["P", "E", "P", "T", "L", "D", "E", "K"]
    mz, intensity, mass, n_b = _ladder_spectrum(peptide)
    chance = torch.zeros(1, mz.shape[1], 4)
    chance[0, :n_b, 2] = 0.9  # the b peaks named b++ ions

    def draft(model, charge, steps=1, remember=False):
        spectrum = model.encode(mz, intensity, mass, torch.tensor([charge]), chance)
        spectrum = model.remember(spectrum) if remember else spectrum
        y, z = model.initial_state(spectrum)
        for step in range(steps):
            y, z, _ = model(spectrum, y, z, step)
        return y

    with torch.no_grad():  # a trained scorer's last layer, in both
        reading.chance_scorer[-1].weight.normal_(0, 1.0)
        plain.chance_scorer[-1].weight.copy_(reading.chance_scorer[-1].weight)
    torch.testing.assert_close(draft(reading, 3), draft(plain, 3))
    tokens = torch.as_tensor(masses.encode(peptide, 12)).unsqueeze(0)
    loss = torch.nn.functional.cross_entropy(draft(reading, 3).transpose(1, 2), tokens)
    loss.backward()
    assert reading.chance_context.weight.grad.abs().sum() > 0
    reading.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        reading.chance_context.weight.normal_(0, 1.0)
        assert (draft(reading, 3) - draft(reading, 2)).abs().max() > 1e-3
        torch.testing.assert_close(
            draft(reading, 3, steps=3, remember=True), draft(reading, 3, steps=3)
        )


def test_nearest_peaks_kernels_are_the_gaussian_near_a_peak_and_zero_far_from_one():
    from peptrm.model import KERNEL_FLOOR, nearest_peaks, sort_peaks

    peaks = sort_peaks(
        torch.tensor([[300.0, 100.0, 500.0, 0.0]]),
        torch.tensor([[0.5, 1.0, 0.25, 0.0]]),  # the last is padding
    )
    ions = torch.tensor([[100.015625, 299.75, 500.0, 400.0, 1e5, 504.0]])  # exact
    nearest, kernels = nearest_peaks(peaks, ions)
    assert nearest[0, :3].tolist() == [0, 1, 2]  # sorted: 100, 300, 500
    distance = torch.tensor([0.015625, 0.25, 0.0])
    for w, sigma in enumerate(KERNEL_WIDTHS_DA):
        expected = torch.exp(-0.5 * (distance / sigma) ** 2)
        assert torch.allclose(kernels[0, :3, w], expected, rtol=1e-5, atol=0)
        assert kernels[0, 3:, w].tolist() == [0.0, 0.0, 0.0]  # 4 Da and more away
    # 4 Da from a peak the wide kernel's exponent is -89, past the floor: exp
    # would give a float32 subnormal there (its slow path), the floor gives 0
    wide = -0.5 * (4.0 / max(KERNEL_WIDTHS_DA)) ** 2
    assert wide < KERNEL_FLOOR and torch.exp(torch.tensor(wide)).item() > 0
    # 100 Da from a peak the Gaussian is far below exp(KERNEL_FLOOR), so 0 is
    # what it gives, the floor only spares exp its slow path there
    assert math.exp(-0.5 * (100 / max(KERNEL_WIDTHS_DA)) ** 2) < math.exp(KERNEL_FLOOR)


def _chance_model_and_batch(seed=3):
    """A small untrained model with ion and chance evidence (argmax walk), a
    batch of 3 random spectra with chances, and drafts of 8, 3 and 0 residues."""
    from peptrm.model import ANNOTATED_IONS

    cfg = load_config(overrides={"model": {"dim": 32, "n_heads": 4, "max_length": 12,
                                           "peak_annotator": True,
                                           "annotator_layers": 1,
                                           "chance_evidence": True,
                                           "argmax_prefix": True}})  # fmt: skip
    torch.manual_seed(seed)
    model = PepTRM(cfg.model, cfg.recursion, V).eval()
    mz, intensity, mass, charge = _batch(n_peaks=40)
    chance = torch.rand(3, 40, len(ANNOTATED_IONS))
    spectrum = model.encode(mz, intensity, mass.double(), charge, chance)
    drafts = ["PEPTLDEK", "GAK"]
    tokens = torch.as_tensor(np.stack([masses.encode(p, 12) for p in drafts]))
    tokens = torch.cat([tokens, torch.zeros_like(tokens[:1])])  # the blank draft
    probs = torch.nn.functional.one_hot(tokens, V).double()
    return model, spectrum, probs


def test_lookup_reads_each_distinct_position_once_and_every_position_its_ions():
    """Past a draft's last residue (STOP weighs nothing) every position reads
    the cleavage after it, so only distinct rows are looked up: 9 + 4 + 1 for
    drafts of 8, 3 and 0 residues, padded to a multiple of ROW_MULTIPLE. Spread
    back, they are what looking up every position of the batch gives."""
    from peptrm.model import (
        ROW_MULTIPLE,
        candidate_ion_mz,
        lookup_chances,
        lookup_peaks,
        nearest_peaks,
    )

    model, spectrum, probs = _chance_model_and_batch()
    lookup = model.prefix_lookup(probs, spectrum)
    assert len(lookup.found) == ROW_MULTIPLE  # 14 distinct rows, padded
    assert lookup.row[0].tolist() == list(range(9)) + [8] * 3
    assert lookup.row[1].tolist() == [9, 10, 11, 12] + [12] * 8
    assert lookup.row[2].tolist() == [13] * 12
    found, chances = lookup.expand()
    # every position, the long way
    token = model.token_masses[probs.argmax(-1)]
    b = (torch.cumsum(token, 1) - token).unsqueeze(-1) + model.token_masses
    ion_mz = candidate_ion_mz(b, spectrum.precursor_mass).float()  # (B, L, V, I)
    nearest, kernels = nearest_peaks(spectrum.peaks, ion_mz.reshape(3, -1))
    expected = lookup_peaks(spectrum.peaks, nearest, kernels).reshape(3, 12, -1)
    torch.testing.assert_close(found, expected, rtol=1e-6, atol=1e-7)
    ions, kinds = ion_mz.shape[-1], chances.shape[-1] // V // kernels.shape[-1]
    ladder = (slice(None), slice(None), slice(0, kinds))
    nearest = nearest.view(3, -1, ions)[ladder]
    kernels = kernels.view(3, -1, ions, kernels.shape[-1])[ladder]
    expected = lookup_chances(spectrum.peaks, nearest, kernels).reshape(3, 12, -1)
    torch.testing.assert_close(chances, expected, rtol=1e-6, atol=1e-7)
    assert expected[0].abs().sum() > 0  # random chances: something is read


def test_a_spectrum_reads_the_same_evidence_and_drafts_in_any_batch():
    """Spectrum 0 alone and beside two others: bit for bit the same evidence
    and the same two improvement steps (sequencing 1 or N devices, any batch
    size, must write the same rows)."""
    model, spectrum, probs = _chance_model_and_batch()
    alone = spectrum._replace(
        x=spectrum.x[:1],
        padding=spectrum.padding[:1],
        precursor_mass=spectrum.precursor_mass[:1],
        peaks=type(spectrum.peaks)(*(t[:1] for t in spectrum.peaks)),
    )
    together = model.ion_evidence(probs, spectrum)
    single = model.ion_evidence(probs[:1], alone)
    assert torch.equal(together[0][:1], single[0])
    assert torch.equal(together[1][:1], single[1])
    with torch.no_grad():
        y, z = model.initial_state(spectrum)
        y_alone, z_alone = model.initial_state(alone)
        for step in range(2):
            y, z, _ = model(spectrum, y, z, step)
            y_alone, z_alone, _ = model(alone, y_alone, z_alone, step)
    torch.testing.assert_close(y[:1], y_alone, rtol=0, atol=1e-5)


def test_remembered_keys_and_values_change_nothing(tiny):
    """`remember` projects x once for every think call: the same numbers."""
    model, _ = tiny
    spectrum = model.encode(*_batch())
    remembered = model.remember(spectrum)
    assert len(remembered.memory_kv) == len(model.net.blocks)
    with torch.no_grad():
        y, z = model.initial_state(spectrum)
        out = model(spectrum, y, z, 0)
        out_remembered = model(remembered, y, z, 0)
    for a, b in zip(out, out_remembered, strict=True):
        assert torch.equal(a, b)
