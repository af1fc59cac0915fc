import dataclasses
import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import peptrm
from peptrm import decoding, masses, search, workers
from peptrm.config import load_config
from peptrm.evidence import FragmentEvidence, read_steps

V = len(masses.VOCAB)


@pytest.fixture
def cfg():
    return dataclasses.replace(
        load_config().decoding,
        precursor_tol_ppm=20.0,
        min_isotope=0,
        max_isotope=1,
        top_k=1,
        max_expansions=20000,
        evidence_weight=0.0,  # the model's log-probs alone unless a test adds peaks
    )


def distribution(rows: list[dict[str, float]], length: int) -> np.ndarray:
    """(1, L, V) log-probs: the given probabilities per position, the rest of each
    position's mass spread evenly over the other tokens; STOP (p 0.99) beyond."""
    probs = np.zeros((length, V))
    for i in range(length):
        row = rows[i] if i < len(rows) else {masses.STOP: 0.99}
        rest = (1.0 - sum(row.values())) / (V - len(row))
        probs[i] = rest
        for token, p in row.items():
            probs[i, masses.TOKEN_INDEX[token]] = p
    return np.log(probs)[None]


def confident(peptide: str, length: int, p: float = 0.9) -> list[dict[str, float]]:
    return [{token: p} for token in masses.parse(peptide)] + [{masses.STOP: p}]


def fits(mass: float, precursor: float, cfg) -> bool:
    tol = cfg.precursor_tol_ppm * precursor * 1e-6
    return any(
        abs(precursor - k * masses.C13_SPACING - mass) <= tol
        for k in range(cfg.min_isotope, cfg.max_isotope + 1)
    )


def test_candidate_mass_is_the_pyteomics_peptide_mass(cfg):
    log_probs = distribution(confident("PEPTLDE", 12), 12)
    precursor = 799.35996  # PEPTIDE, monoisotopic neutral mass (I and L weigh alike)
    (best,) = decoding.decode(torch.from_numpy(log_probs), [precursor], cfg)[0]
    assert best.tokens == ["P", "E", "P", "T", "L", "D", "E"]
    assert best.mass == pytest.approx(masses.peptide_mass("PEPTIDE"), abs=1e-9)
    assert best.mass == pytest.approx(799.359964, abs=1e-6)
    assert best.constrained and best.isotope == 0
    assert abs(best.mass_error_ppm) < 0.1
    assert best.aa_scores == pytest.approx([0.9] * 7)
    # tokens at 0.9, STOP at 0.9 then 0.99 at the 4 remaining positions
    assert best.log_score == pytest.approx(8 * math.log(0.9) + 4 * math.log(0.99))
    assert best.score == pytest.approx(0.9)  # tokens and the ending STOP


def test_second_best_token_is_taken_when_the_argmax_misses_the_mass(cfg):
    rows = confident("PEPTLDEK", 12)
    rows[3] = {"W": 0.6, "T": 0.3}  # argmax W: PEPWLDEK is 85.05 Da too heavy
    log_probs = distribution(rows, 12)
    precursor = masses.peptide_mass("PEPTLDEK")
    (plain,) = decoding.greedy(log_probs)
    assert masses.format_peptide(plain.tokens) == "PEPWLDEK"
    assert not fits(plain.mass, precursor, cfg)
    (best,) = decoding.decode(log_probs, [precursor], cfg)[0]
    assert masses.format_peptide(best.tokens) == "PEPTLDEK"
    assert best.constrained
    assert best.log_score == pytest.approx(
        8 * math.log(0.9) + math.log(0.3) + 3 * math.log(0.99)
    )


def test_isotope_error_is_found_only_when_allowed(cfg):
    log_probs = distribution(confident("LESLLEK", 10), 10)
    precursor = masses.peptide_mass("LESLIEK") + masses.C13_SPACING  # 2nd 13C peak
    (best,) = decoding.decode(log_probs, [precursor], cfg)[0]
    assert masses.format_peptide(best.tokens) == "LESLLEK"
    assert best.constrained and best.isotope == 1
    assert abs(best.mass_error_ppm) < 0.1
    strict = dataclasses.replace(cfg, max_isotope=0)
    (other,) = decoding.decode(log_probs, [precursor], strict)[0]
    assert masses.format_peptide(other.tokens) != "LESLLEK"
    if other.constrained:  # some other peptide weighs the observed mass itself
        assert other.isotope == 0
        assert fits(other.mass, precursor, strict)


def test_n_terminal_modification_only_at_position_zero(cfg):
    rows = confident("PEPTLDEK", 12)
    rows[2] = {"+42.011": 0.8, "P": 0.15}  # the model wants acetyl mid-peptide
    log_probs = distribution(rows, 12)
    (plain,) = decoding.greedy(log_probs)
    assert plain.tokens[2] == "P"
    (best,) = decoding.decode(log_probs, [masses.peptide_mass("PEPTLDEK")], cfg)[0]
    assert masses.format_peptide(best.tokens) == "PEPTLDEK"
    assert all(t not in masses.N_TERMINAL_MODIFICATIONS for t in best.tokens)

    acetyl = distribution(confident("+42.011PEPTLDEK", 12), 12)
    precursor = masses.peptide_mass("+42.011PEPTIDEK")
    (best,) = decoding.decode(acetyl, [precursor], cfg)[0]
    assert best.tokens[0] == "+42.011" and best.constrained
    assert best.mass == pytest.approx(precursor, abs=1e-9)


def test_greedy_reads_to_the_first_stop_and_scores_the_stop_run():
    rows = [{"G": 0.9}, {"A": 0.9}, {masses.STOP: 0.9}, {"K": 0.9}]  # K after STOP
    log_probs = distribution(rows, 6)
    (plain,) = decoding.greedy(log_probs)
    assert plain.tokens == ["G", "A"]
    rest = (1 - 0.9) / (V - 1)  # probability of STOP at position 3
    expected = 3 * math.log(0.9) + math.log(rest) + 2 * math.log(0.99)
    assert plain.log_score == pytest.approx(expected)
    assert plain.isotope is None and plain.mass_error_ppm is None


def test_greedy_never_returns_an_empty_or_modification_only_peptide():
    rows = [{"+42.011": 0.5, "G": 0.2}, {masses.STOP: 0.9, "A": 0.05}]
    (plain,) = decoding.greedy(distribution(rows, 4))
    assert plain.tokens == ["+42.011", "A"]
    rows = [{masses.STOP: 0.9, "S": 0.05}]
    (plain,) = decoding.greedy(distribution(rows, 4))
    assert plain.tokens == ["S"]


def test_unconstrained_fallback_when_nothing_fits(cfg):
    log_probs = distribution(confident("PEPTLDEK", 8), 8)
    (plain,) = decoding.greedy(log_probs)
    # 30 Da: no peptide of residues >= 57 Da weighs that; nan: mass unknown
    for precursor in (30.0, float("nan")):
        (best,) = decoding.decode(log_probs, [precursor], cfg, 3)[0]
        assert not best.constrained
        assert best.tokens == plain.tokens
        assert best.log_score == pytest.approx(plain.log_score)


def test_top_k_is_distinct_ordered_and_fits(cfg):
    rows = confident("PEPTLDEK", 12, p=0.7)
    rows[1] = {"E": 0.5, "Q+0.984": 0.3, "K": 0.1}  # near-isobaric alternatives
    log_probs = distribution(rows, 12)
    precursor = masses.peptide_mass("PEPTLDEK")
    top = decoding.decode(log_probs, [precursor], cfg, 5)[0]
    assert len(top) == 5
    peptides = [masses.format_peptide(c.tokens) for c in top]
    assert len(set(peptides)) == 5
    assert peptides[0] == "PEPTLDEK"
    scores = [c.log_score for c in top]
    assert scores == sorted(scores, reverse=True)
    assert all(c.constrained and fits(c.mass, precursor, cfg) for c in top)
    (single,) = decoding.decode(log_probs, [precursor], cfg, 1)[0]
    assert single.tokens == top[0].tokens


SMALL = ["G", "A", "S", "P", "V", "+42.011"]  # a reduced vocabulary for brute force


def brute_force(log_probs: np.ndarray, precursor: float, cfg) -> list[tuple]:
    """Every peptide over SMALL up to L tokens that fits: (log_score, tokens)."""
    length = log_probs.shape[0]
    stop = log_probs[:, masses.STOP_INDEX]
    out = []
    for n in range(1, length + 1):
        for tokens in itertools.product(SMALL, repeat=n):
            if any(t in masses.N_TERMINAL_MODIFICATIONS for t in tokens[1:]):
                continue  # N-terminal modifications only at position 0
            if tokens[-1] in masses.N_TERMINAL_MODIFICATIONS:
                continue  # a modification alone is no peptide
            if not fits(masses.peptide_mass(list(tokens)), precursor, cfg):
                continue
            indices = [masses.TOKEN_INDEX[t] for t in tokens]
            score = log_probs[np.arange(n), indices].sum() + stop[n:].sum()
            out.append((score, list(tokens)))
    return sorted(out, key=lambda x: -x[0])


def test_exact_against_brute_force_on_random_distributions(cfg):
    rng = np.random.default_rng(7)
    length, batch = 5, 24
    allowed = [masses.STOP_INDEX] + [masses.TOKEN_INDEX[t] for t in SMALL]
    logits = np.full((batch, length, V), -np.inf)
    logits[:, :, allowed] = rng.normal(0, 2.0, size=(batch, length, len(allowed)))
    log_probs = torch.log_softmax(torch.from_numpy(logits), dim=-1).numpy()
    precursor = np.empty(batch)
    for b in range(batch):  # a random peptide's mass, sometimes its 13C peak
        tokens = list(rng.choice(SMALL[:-1], size=rng.integers(1, length + 1)))
        shift = masses.C13_SPACING if b % 3 == 0 else 0.0
        precursor[b] = masses.peptide_mass(tokens) + shift
    precursor[-2:] = [123.0, 700.5]  # masses nothing over SMALL may fit
    top = decoding.decode(torch.from_numpy(log_probs), precursor, cfg, 3)
    fitted = 0
    for b in range(batch):
        expected = brute_force(log_probs[b], precursor[b], cfg)
        if not expected:
            assert len(top[b]) == 1 and not top[b][0].constrained
            continue
        fitted += 1
        found = top[b]
        assert len(found) == min(3, len(expected))
        for candidate, (score, _) in zip(found, expected, strict=False):
            assert candidate.constrained
            assert fits(candidate.mass, precursor[b], cfg)
            assert candidate.log_score == pytest.approx(score, abs=1e-9)
        assert found[0].tokens == expected[0][1]
    assert fitted >= batch - 4  # the comparison really ran on most spectra


def test_bad_input_is_rejected(cfg):
    with pytest.raises(ValueError, match="log_probs should be"):
        decoding.decode(np.zeros((2, 5, V - 1)), [1.0, 2.0], cfg)
    with pytest.raises(ValueError, match="2 precursor masses for 1 spectra"):
        decoding.decode(np.log(np.full((1, 5, V), 1 / V)), [1.0, 2.0], cfg)
    with pytest.raises(ValueError, match="positive"):
        decoding.decode(np.ones((1, 5, V)), [1.0], cfg)


def test_past_the_budget_only_fitting_peptides_are_called_constrained(cfg):
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 1.0, size=(8, 12, V))
    log_probs = torch.log_softmax(torch.from_numpy(logits), dim=-1).numpy()
    precursor = np.linspace(600.0, 1200.0, 8)
    tight = dataclasses.replace(cfg, max_expansions=3)
    found = decoding.decode(log_probs, precursor, tight)
    for (best,), mass in zip(found, precursor, strict=True):
        if best.constrained:
            assert fits(best.mass, mass, cfg)


def evidence_score(tokens: list[str], evidence, weight: float) -> float:
    """weight * evidence of every cleavage inside the peptide (not after a lone
    N-terminal modification, which is no residue boundary)."""
    total, prefix = 0.0, 0.0
    for i, token in enumerate(tokens[:-1]):
        prefix += float(masses.VOCAB_MASSES[masses.TOKEN_INDEX[token]])
        if i == 0 and token in masses.N_TERMINAL_MODIFICATIONS:
            continue
        total += weight * float(evidence.score(np.array([prefix]))[0])
    return total


def test_exact_with_fragment_evidence_against_brute_force(cfg):
    rng = np.random.default_rng(11)
    length, batch, weight = 5, 16, 0.8
    weighted = dataclasses.replace(cfg, evidence_weight=weight, fragment_tol_da=0.02)
    allowed = [masses.STOP_INDEX] + [masses.TOKEN_INDEX[t] for t in SMALL]
    logits = np.full((batch, length, V), -np.inf)
    logits[:, :, allowed] = rng.normal(0, 1.5, size=(batch, length, len(allowed)))
    log_probs = torch.log_softmax(torch.from_numpy(logits), dim=-1).numpy()
    precursor, peaks = np.empty(batch), []
    for b in range(batch):  # a random peptide, some of its b/y ions and noise
        tokens = list(rng.choice(SMALL[:-1], size=rng.integers(2, length + 1)))
        precursor[b] = masses.peptide_mass(tokens)
        ions = np.concatenate(masses.fragment_mz(tokens, 1))
        mz = np.concatenate(
            [rng.choice(ions, size=len(ions) // 2), rng.uniform(50, 500, 6)]
        )
        peaks.append(
            FragmentEvidence(mz, rng.uniform(0.1, 1, len(mz)), precursor[b], 2, 0.02)
        )
    top = decoding.decode(log_probs, precursor, weighted, 3, peaks)
    for b in range(batch):
        expected = sorted(
            (
                (score + evidence_score(tokens, peaks[b], weight), tokens)
                for score, tokens in brute_force(log_probs[b], precursor[b], cfg)
            ),
            key=lambda x: -x[0],
        )
        assert [c.tokens for c in top[b]] == [t for _, t in expected[:3]]
        for candidate, (score, _) in zip(top[b], expected, strict=False):
            assert candidate.search_score == pytest.approx(score, abs=1e-9)
    # without evidence the same call ranks by log-score alone
    plain = decoding.decode(log_probs, precursor, cfg, 3, peaks)
    assert all(c.search_score == c.log_score for row in plain for c in row)
    assert any(p[0].tokens != w[0].tokens for p, w in zip(plain, top, strict=True))


def test_a_prefix_mass_on_a_step_edge_of_the_evidence_is_scored_exactly(cfg):
    """Peaks exactly one tolerance from the b ions put the true prefixes on edges of
    the evidence's step function: the search then scores those cleavages exactly
    (`evidence.exact_scores`, not the step read by `evidence.read_steps`), and
    ranks as brute force does."""
    tol, weight, length = 0.02, 0.8, 5
    weighted = dataclasses.replace(
        cfg, evidence_weight=weight, fragment_tol_da=tol, workers=1
    )
    tokens = ["G", "A", "S", "V"]
    precursor = masses.peptide_mass(tokens)
    b_ions = masses.fragment_mz(tokens, 1)[0]
    mz = np.sort(np.concatenate([b_ions + tol, [120.3, 301.7]]))
    peaks = FragmentEvidence(mz, np.linspace(0.2, 1, len(mz)), precursor, 2, tol)
    rng = np.random.default_rng(5)
    allowed = [masses.STOP_INDEX] + [masses.TOKEN_INDEX[t] for t in SMALL]
    logits = np.full((1, length, V), -np.inf)
    logits[:, :, allowed] = rng.normal(0, 1.5, size=(1, length, len(allowed)))
    log_probs = torch.log_softmax(torch.from_numpy(logits), dim=-1).numpy()
    top = decoding.decode(log_probs, np.array([precursor]), weighted, 3, [peaks])[0]
    expected = sorted(
        (
            (score + evidence_score(found, peaks, weight), found)
            for score, found in brute_force(log_probs[0], precursor, cfg)
        ),
        key=lambda x: -x[0],
    )
    prefixes = np.cumsum([masses.VOCAB_MASSES[masses.TOKEN_INDEX[t]] for t in tokens])
    edges, values = peaks.compiled()[:2]
    _, close = read_steps(edges, values, prefixes[:-1])
    assert close.all()  # every true cleavage goes down the exact path
    assert [c.tokens for c in top] == [t for _, t in expected[:3]]
    for candidate, (score, _) in zip(top, expected, strict=False):
        assert candidate.search_score == pytest.approx(score, abs=1e-9)


def test_evidence_finds_the_peptide_a_flat_model_cannot(cfg):
    peptide = ["P", "E", "P", "T", "L", "D", "E", "K"]
    length = 12
    flat = distribution([{}] * len(peptide), length)  # uniform over tokens
    precursor = masses.peptide_mass(peptide)
    b, y = masses.fragment_mz(peptide, 1)
    mz = np.concatenate([b[:-1], y[:-1]])
    peaks = [FragmentEvidence(mz, np.ones(len(mz)), precursor, 2, 0.02)]
    model_only = decoding.decode(flat, [precursor], cfg, 1, peaks)[0][0]
    weighted = dataclasses.replace(
        cfg, evidence_weight=1.0, fragment_tol_da=0.02, max_expansions=2000
    )
    (best,) = decoding.decode(flat, [precursor], weighted, 1, peaks)[0]
    assert best.tokens == peptide
    assert model_only.tokens != peptide
    assert best.constrained and best.search_score > best.log_score


def test_beam_second_chance_finds_a_fitting_peptide_past_the_budget(cfg):
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 0.5, size=(6, 16, V))  # near-flat: the budget runs out
    log_probs = torch.log_softmax(torch.from_numpy(logits), dim=-1).numpy()
    residues = [t for t in masses.VOCAB if t.isalpha() and t != masses.STOP]
    precursor = np.array(  # masses of random 8-12-residue peptides
        [
            masses.peptide_mass(list(rng.choice(residues, size=rng.integers(8, 13))))
            for _ in range(6)
        ]
    )
    tight = dataclasses.replace(cfg, max_expansions=5, beam_width=0)
    beam = dataclasses.replace(cfg, max_expansions=5, beam_width=32)
    without = decoding.decode(log_probs, precursor, tight)
    found = decoding.decode(log_probs, precursor, beam)
    assert sum(row[0].constrained for row in without) < len(precursor)
    for (best,), mass in zip(found, precursor, strict=True):
        assert best.constrained and fits(best.mass, mass, cfg)


def test_a_beam_wide_enough_for_every_prefix_gives_the_exact_top_list(cfg):
    """Prefixes of one mass share their completions, so the beam keeps several
    of each mass, not one: one would drop every reordering of an unfragmented
    stretch (GA.. vs AG..) from the list, though it may score second. And a
    remainder of four or more light residues is no dead end (VVPPV after V)."""
    rng = np.random.default_rng(13)
    length, batch, top_k = 5, 12, search.BEAM_PER_MASS
    allowed = [masses.STOP_INDEX] + [masses.TOKEN_INDEX[t] for t in SMALL]
    logits = np.full((batch, length, V), -np.inf)
    logits[:, :, allowed] = rng.normal(0, 1.0, size=(batch, length, len(allowed)))
    log_probs = torch.log_softmax(torch.from_numpy(logits), dim=-1).numpy()
    precursor = np.array(
        [
            masses.peptide_mass(list(rng.choice(SMALL[:-1], size=length)))
            for _ in range(batch)
        ]
    )
    beam_only = dataclasses.replace(cfg, max_expansions=1, beam_width=100_000)
    top = decoding.decode(log_probs, precursor, beam_only, top_k)
    same_composition = 0
    for b in range(batch):
        expected = brute_force(log_probs[b], precursor[b], cfg)[:top_k]
        assert [c.log_score for c in top[b]] == pytest.approx(
            [score for score, _ in expected], abs=1e-9
        )
        same_composition += sorted(expected[0][1]) == sorted(expected[1][1])
    assert same_composition >= batch // 2  # the lists hold reorderings to keep


def test_a_beam_step_keeps_what_sorting_every_child_keeps():
    """The beam sorts only its best children first and the rest when it must;
    it keeps what one stable sort of all of them keeps: the `width` best
    masses, `per_mass` prefixes of each, each able to fit, ties in index
    order. Many children share a mass and a score here, and some are dead ends."""
    rng = np.random.default_rng(21)
    short_sums = search.SHORT_SUMS
    for trial in range(40):
        n, width, per_mass = int(rng.integers(1, 3000)), int(rng.integers(1, 40)), 4
        masses_da = rng.choice(rng.uniform(300, 900, size=n // 3 + 1), size=n)
        f = np.round(rng.normal(0, 2, size=n), 1)  # ties
        f[rng.random(n) < 0.1] = -np.inf  # cannot fit
        need = rng.uniform(0, 400, size=(n, 2))  # some light remainders: dead ends
        tol_da, rows_left = 0.02, int(rng.integers(1, 6))
        kept = search._beam_keep(f, masses_da, need, tol_da, rows_left, short_sums,
                                 width, per_mass)  # fmt: skip
        expected, of_mass = [], {}
        alive = np.flatnonzero(np.isfinite(f))
        for c in alive[np.argsort(-f[alive], kind="stable")]:
            key = int(np.rint(masses_da[c] / search.MASS_KEY_DA))
            seen = of_mass.get(key, 0)
            if seen == per_mass or (seen == 0 and len(of_mass) == width):
                continue
            if not search._short_completion(need[c], tol_da, rows_left, short_sums):
                continue
            of_mass[key] = seen + 1
            expected.append(c)
            if len(expected) == min(width * per_mass, len(alive)):
                break
        assert kept.tolist() == expected, trial


def test_worker_processes_decode_exactly_as_one_process(cfg):
    rng = np.random.default_rng(9)
    peptides = [
        list(rng.choice(list("ADEFGHKLMNPQRSTVWY"), size=rng.integers(7, 12)))
        for _ in range(70)  # three chunks of up to 32 spectra
    ]
    log_probs = np.concatenate(
        [distribution(confident("".join(p), 14, p=0.5), 14) for p in peptides]
    )
    precursor = [masses.peptide_mass(p) for p in peptides]
    one = decoding.decode(log_probs, precursor, dataclasses.replace(cfg, workers=1))
    workers.start_workers(2)  # three chunks alone would not start the pool
    two = decoding.decode(log_probs, precursor, dataclasses.replace(cfg, workers=2))
    assert [c[0].tokens for c in one] == [c[0].tokens for c in two]
    assert [c[0].log_score for c in one] == [c[0].log_score for c in two]
    assert sum(c[0].tokens == p for c, p in zip(one, peptides, strict=True)) >= 60


def _bundled_search_inputs(small_mgf):
    """The bundled model's config, refined log-probs, peaks and precursor masses
    of the ten test spectra, as the pipeline hands them to the search."""
    from peptrm import evidence, preprocess
    from peptrm.io import Spectrum, read_spectra
    from peptrm.sequence import annotate, load_scorers, refine
    from peptrm.weights import BUNDLED, load_model

    model, config = load_model()
    prepare = preprocess.pipeline(config.preprocess)
    spectra = [prepare(s) for s in read_spectra(small_mgf) if isinstance(s, Spectrum)]
    batch = preprocess.collate(spectra, config.preprocess.n_peaks)
    log_probs, _, _ = refine(model, batch, config.recursion.n_supervision, 0.9)
    table = load_scorers(BUNDLED).cleavage
    peaks = evidence.from_batch(
        annotate(model, batch), config.decoding.fragment_tol_da, table
    )
    return config, log_probs, peaks, batch["precursor_mass"]


def test_lists_of_several_sizes_equal_one_search_per_size(small_mgf):
    """The shared searches give each size what it gets alone, past the budget too.

    The bundled model and its learned cleavage table on the ten test spectra,
    with a budget small enough that most searches run out of it (their lists
    differ from an unlimited search's): there each size's own search and the
    one beam they share must still give what each would alone (with the larger
    searches' budget kept when the smallest runs out: `hard_expansions`).
    """
    config, log_probs, peaks, precursor = _bundled_search_inputs(small_mgf)
    cfg = dataclasses.replace(
        config.decoding, max_expansions=150, hard_expansions=150, workers=1
    )
    shared = decoding.decode_lists(log_probs, precursor, cfg, (20, 1, 3), peaks)
    for size, lists in zip((20, 1, 3), shared, strict=True):
        alone = decoding.decode(log_probs, precursor, cfg, size, peaks)
        assert [[c.indices for c in row] for row in lists] == [
            [c.indices for c in row] for row in alone
        ]
        assert [[c.search_score for c in row] for row in lists] == [
            [c.search_score for c in row] for row in alone
        ]
    top_20 = shared[0]
    assert all(len(row) == 20 for row in top_20)
    exact = dataclasses.replace(cfg, max_expansions=100_000)
    unlimited = decoding.decode(log_probs, precursor, exact, 20, peaks)
    differ = [
        [c.indices for c in a] != [c.indices for c in b]
        for a, b in zip(top_20, unlimited, strict=True)
    ]
    assert sum(differ) >= len(differ) // 2  # the budget ran out: the beam answered


def test_once_the_smallest_search_runs_out_the_beam_answers_for_the_larger(
    small_mgf, monkeypatch
):
    """`hard_expansions`: a spectrum whose top-1 search runs out of budget gets
    the beam's list for the larger sizes at once (0), its top-1 list untouched;
    a spectrum whose top-1 search finishes gets what the full budgets give, and
    without the beam the larger searches keep their whole budget."""
    config, log_probs, peaks, precursor = _bundled_search_inputs(small_mgf)
    full = dataclasses.replace(
        config.decoding, max_expansions=150, hard_expansions=150, workers=1
    )
    hard = dataclasses.replace(full, hard_expansions=0)
    array = log_probs.double().numpy()
    task = search.ChunkTask(array, precursor.double().numpy(), peaks, hard, (20, 1))
    sizes, n_hard = (20, 1), 0
    for spec in search.chunk_spectra(task):
        # the compiled search for the top 1 then the top 20, and for the top 1 alone
        ran_out, path_nodes = [], []
        for searched in ([1, 20], [1]):
            out = search._best_first(
                spec.log_probs, spec.stop_suffix, spec.table, spec.targets,
                spec.tol_da, spec.lo_offset, spec.hi_offset, spec.weight,
                spec.compiled_evidence, np.array(searched), 150, 0,
            )  # fmt: skip
            ran_out.append(out[5])
            path_nodes.append(len(out[3]))
        cut, cut_out, _ = search.search_sizes(spec, sizes, hard)
        kept, kept_out, _ = search.search_sizes(spec, sizes, full)
        assert cut[1] == kept[1]  # the top-1 search is never cut
        if ran_out[1][0]:  # the top-1 search ran out of budget
            n_hard += 1
            assert ran_out[0][1] and cut_out == 2  # the top-20 search stopped ...
            # ... once it had expanded the root: it took no child
            assert path_nodes[0] - path_nodes[1] <= len(search.FIRST_INDICES)
            assert cut[0] == search._beam(spec, hard.beam_width, 20)
        else:
            assert (cut, cut_out) == (kept, kept_out)
        no_beam = dataclasses.replace(hard, beam_width=0)
        no_beam_full = dataclasses.replace(full, beam_width=0)
        without = search.search_sizes(spec, sizes, no_beam)
        assert without[:2] == search.search_sizes(spec, sizes, no_beam_full)[:2]
    assert 0 < n_hard < len(array)  # both kinds of spectra were checked
    calls = []  # what the pipeline's searches ask of the compiled search
    compiled = search._best_first

    def spy(*args):
        calls.append((args[9].tolist(), args[10], args[11]))
        return compiled(*args)

    monkeypatch.setattr(search, "_best_first", spy)
    search.search_sizes(spec, sizes, hard)
    search.search_sizes(spec, sizes, no_beam)
    assert calls == [([1, 20], 150, 0), ([1, 20], 150, 150)]


def _cache_folder_in_a_fresh_process(tmp_path, **env) -> str:
    """Where numba caches the compiled search, as a new process sets it up."""
    code = "from peptrm import search; print(search._best_first._cache._cache_path)"
    environ = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    environ.update(env)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_the_compiled_search_caches_outside_the_installed_package(tmp_path):
    """Not beside the source, where `pip uninstall` would leave it behind (and
    shadow a later editable install); a NUMBA_CACHE_DIR the user set stands."""
    package = Path(peptrm.__file__).parent
    cache = Path(
        _cache_folder_in_a_fresh_process(tmp_path, XDG_CACHE_HOME=str(tmp_path))
    )
    assert cache.is_relative_to(tmp_path / "peptrm" / "numba")
    assert not cache.is_relative_to(package)
    own = tmp_path / "mine"
    chosen = _cache_folder_in_a_fresh_process(tmp_path, NUMBA_CACHE_DIR=str(own))
    assert Path(chosen).is_relative_to(own)
