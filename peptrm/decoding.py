"""Mass-constrained decoding of the model's per-position log-probabilities.

The model drafts all L positions at once: position i holds a distribution over
the vocabulary, and a peptide of n tokens is read as tokens at positions 0..n-1
followed by STOP at every later position (`masses.encode`). Its log-score is

    sum_{i<n} log p_i(token_i) + sum_{j>=n} log p_j(STOP),

so a search over peptides is a search over (length, tokens) with additive
scores. `mass_constrained` finds the highest-scoring peptides whose neutral mass
fits the observed precursor mass within tolerance at an allowed 13C isotope
error; `greedy` is the unconstrained reading. Nothing here knows the model, so
tests drive it with hand-written distributions.

The search (`peptrm.search`) is exact (best-first A* over prefixes with float64
masses) and fast because of an admissible bound computed once per chunk of 32
spectra by a vectorised dynamic programme over ~1 Da mass bins; see
`mass_constrained` for the claims. With fragment evidence it ranks by
log-score plus the evidence of each cleavage. Chunks run in worker processes.
"""

# B batch, L peptide positions, V vocabulary, R residue tokens, S mass bins

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from peptrm import masses, workers
from peptrm.config import DecodingConfig
from peptrm.evidence import FragmentEvidence
from peptrm.search import (
    CHUNK,
    IS_N_TERMINAL,
    ChunkResult,
    ChunkTask,
    isotopes,
    search_chunk,
)

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One decoded peptide and what it scored.

    `score` is the geometric mean probability of the peptide's tokens and of the
    STOP that ends it (when it is shorter than L): exp of their mean log-prob.
    The STOP run further on is left out of `score` (not of `log_score`) because
    those positions are nearly always certain and would flatter short peptides.
    `isotope` and `mass_error_ppm` compare the observed precursor, less the
    isotope offset, with the peptide's mass; an unconstrained fallback reports
    the allowed isotope that comes closest, and `greedy` without a precursor
    reports None for both.
    """

    tokens: list[str]  # Casanovo notation, one per position (I is read as L)
    indices: list[int]  # vocabulary indices of `tokens`
    log_score: float  # sum of log-probs over all L positions (tokens, then STOP)
    score: float  # in [0, 1]: geometric mean probability of tokens and final STOP
    aa_scores: list[float]  # probability of each token at its position
    mass: float  # neutral monoisotopic mass (Da)
    isotope: int | None  # 13C isotope error used to match the precursor
    mass_error_ppm: float | None  # (observed - isotope offset - mass) / mass
    constrained: bool  # False: nothing fitted, this is the unconstrained reading
    search_score: float = float("nan")  # what the search ranked by: log_score plus
    # the fragment evidence of its cleavages (`peptrm.evidence`), times its weight


# --------------------------------------------------------------------------------
# Scores, masses and the precursor check
# --------------------------------------------------------------------------------


def _as_log_probs(log_probs: Tensor | np.ndarray) -> np.ndarray:
    """(B, L, V) float64 numpy copy of the model output."""
    if isinstance(log_probs, Tensor):
        log_probs = log_probs.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(log_probs, dtype=np.float64)
    if array.ndim != 3 or array.shape[2] != len(masses.VOCAB):
        raise ValueError(
            f"log_probs should be (batch, positions, {len(masses.VOCAB)}), "
            f"not {array.shape}"
        )
    if np.any(array > 1e-6):
        raise ValueError("log_probs holds positive values: pass log-probabilities")
    return array


def residue_sum(indices: Sequence[int]) -> float:
    """Sum of token masses, added left to right as the search adds them."""
    total = 0.0
    for index in indices:
        total += float(masses.VOCAB_MASSES[index])
    return total


def closest_isotope(
    peptide_mass: float, precursor_mass: float, cfg: DecodingConfig
) -> tuple[int, float, bool]:
    """Find the allowed isotope error nearest the precursor, its ppm error, a fit.

    The observed precursor may be the k-th 13C peak, so the peptide fits when
    |precursor - k * C13_SPACING - mass| <= tol_ppm * precursor * 1e-6.
    """
    allowed = isotopes(cfg)
    errors_da = precursor_mass - allowed * masses.C13_SPACING - peptide_mass
    best = int(np.argmin(np.abs(errors_da)))
    tol_da = masses.ppm_to_da(cfg.precursor_tol_ppm, precursor_mass)
    fits = bool(abs(errors_da[best]) <= tol_da)
    # Reported in ppm of the observed precursor mass, the same reference the fit
    # uses, so a fitting peptide never reports more than the tolerance.
    error_ppm = errors_da[best] / precursor_mass * 1e6
    return int(allowed[best]), float(error_ppm), fits


def make_candidate(
    log_probs: np.ndarray,
    indices: Sequence[int],
    precursor_mass: float | None,
    cfg: DecodingConfig | None,
    constrained: bool,
    search_score: float | None = None,
) -> Candidate:
    """Score the peptide `indices` (tokens, then STOP) under (L, V) log-probs.

    `search_score` is the search's own ranking score; None means the log-score.
    """
    length = log_probs.shape[0]
    n = len(indices)
    token_scores = log_probs[np.arange(n), list(indices)]
    stop_scores = log_probs[n:, masses.STOP_INDEX]
    ending = token_scores if n == length else np.append(token_scores, stop_scores[0])
    mass = residue_sum(indices) + masses.H2O
    isotope = error_ppm = None
    if precursor_mass is not None and cfg is not None and np.isfinite(precursor_mass):
        isotope, error_ppm, _ = closest_isotope(mass, precursor_mass, cfg)
    log_score = float(token_scores.sum() + stop_scores.sum())
    return Candidate(
        tokens=[masses.VOCAB[i] for i in indices],
        indices=[int(i) for i in indices],
        log_score=log_score,
        score=float(np.exp(ending.mean())),
        aa_scores=[float(p) for p in np.exp(token_scores)],
        mass=mass,
        isotope=isotope,
        mass_error_ppm=error_ppm,
        constrained=constrained,
        search_score=log_score if search_score is None else float(search_score),
    )


# --------------------------------------------------------------------------------
# Greedy (unconstrained) reading
# --------------------------------------------------------------------------------


def greedy_indices(log_probs: np.ndarray) -> list[list[int]]:
    """Per-position argmax of (B, L, V) log-probs, read up to the first STOP.

    Masks keep the reading a valid peptide: N-terminal modifications only at
    position 0, no STOP at position 0, and no STOP straight after an N-terminal
    modification (a peptide holds at least one residue). Argmaxes after the
    first STOP are ignored; the candidate is scored as if STOP filled them.
    """
    scores = log_probs.copy()
    scores[:, 1:, list(masses.N_TERMINAL_INDICES)] = -np.inf
    scores[:, 0, masses.STOP_INDEX] = -np.inf
    if scores.shape[1] == 1:  # no room for a residue after a modification
        scores[:, 0, list(masses.N_TERMINAL_INDICES)] = -np.inf
    best = scores.argmax(axis=2)  # (B, L)
    if scores.shape[1] > 1:
        after_mod = IS_N_TERMINAL[best[:, 0]]
        second = scores[after_mod, 1].copy()
        second[:, masses.STOP_INDEX] = -np.inf
        best[after_mod, 1] = second.argmax(axis=1)
    out = []
    for row in best:
        stops = np.flatnonzero(row == masses.STOP_INDEX)
        out.append(row[: stops[0] if len(stops) else len(row)].tolist())
    return out


def greedy(log_probs: Tensor | np.ndarray) -> list[Candidate]:
    """Read each spectrum without the mass constraint (see `greedy_indices`)."""
    array = _as_log_probs(log_probs)
    return [
        make_candidate(row, indices, None, None, constrained=False)
        for row, indices in zip(array, greedy_indices(array), strict=True)
    ]


def mass_constrained(
    log_probs: Tensor | np.ndarray,
    precursor_mass: Tensor | np.ndarray | Sequence[float],
    cfg: DecodingConfig,
    top_k: int | None = None,
    evidence: Sequence[FragmentEvidence | None] | None = None,
) -> list[list[Candidate]]:
    """Find the `top_k` best-scoring peptides that fit each precursor mass.

    A peptide fits when |precursor - k * C13_SPACING - mass| <= precursor_tol_ppm
    * precursor * 1e-6 for an isotope error k in [min_isotope, max_isotope]. The
    peptides found are ranked by log-score, distinct (as token sequences) and
    checked with float64 masses, never bins.

    How: a best-first (A*) search extends prefixes one position at a time, in
    order of prefix score plus an upper bound on the best completion that could
    still reach the precursor. The bound comes from `completion_bounds`, a
    dynamic programme over ~1 Da mass bins run once per spectrum (vectorised
    over batch and mass axis): since each residue's mass is within a known
    residual of its bin count, a window of bins is certain to contain every
    completion that could fit, so the bound is admissible. Finished peptides
    are scored exactly, so the first to leave the queue is the best fitting one.
    A dense programme at 0.005 Da would cost ~0.6 s per 4 kDa spectrum; this
    costs ~2 M bin updates plus a few dozen prefix extensions when the model is
    confident (benchmarks/bench_decoding.py: 430-770 spectra/s at batch 256 on
    2 cores; 50-110/s when every precursor mass is wrong).

    Exactness. The search returns the true best fitting peptides (up to float
    rounding of scores and 1e-6 Da in mass) whenever it finishes within
    `cfg.max_expansions` extended prefixes; when the bound shows that no peptide
    can fit, it says so without searching. If the budget runs out (rare with a
    confident model; seen with wrong precursor masses, where only poor peptides
    fit and many score alike) it returns the best fitting peptides
    already scored, which fit but are not proven best, or, with none scored,
    the greedy reading with constrained=False. All tokens are considered at
    every position: nothing is pruned by probability.

    Parameters
    ----------
    log_probs
        (B, L, V) per-position log-probabilities.
    precursor_mass
        (B,) observed neutral precursor masses (Da); nan means unknown.
    cfg
        Tolerance, isotope range and search budget.
    top_k
        Peptides per spectrum; None takes `cfg.top_k`.
    evidence
        Per spectrum, its peaks (`peptrm.evidence`) or None. With
        `cfg.evidence_weight` > 0 a peptide scores its log-score plus that
        weight times the evidence of each of its cleavages, and the bound
        carries the evidence too, so the search stays exact for that score.

    Returns
    -------
    list[list[Candidate]]
        Per spectrum, up to `top_k` fitting candidates best first, or the single
        greedy candidate (constrained=False) when none fits.
    """
    top_k = cfg.top_k if top_k is None else top_k
    return mass_constrained_lists(log_probs, precursor_mass, cfg, (top_k,), evidence)[0]


def has_mass(precursor_mass: np.ndarray) -> np.ndarray:
    """Which precursor masses the search can fit (finite and positive)."""
    return np.isfinite(precursor_mass) & (precursor_mass > 0)


def mass_chunks(precursor_mass: np.ndarray) -> list[np.ndarray]:
    """Indices of a batch in the chunks the search takes them in (`search.CHUNK`).

    Spectra of similar precursor mass share a bound table, so they go lightest
    first; those without a usable mass (nan or not positive) come last, in a
    chunk of their own. Searching a chunk alone gives what searching the whole
    batch gives for it.
    """
    usable = has_mass(precursor_mass)
    order = np.flatnonzero(usable)
    order = order[np.argsort(precursor_mass[order])]  # similar masses share a table
    chunks = [order[i : i + CHUNK] for i in range(0, len(order), CHUNK)]
    if not usable.all():
        chunks.append(np.flatnonzero(~usable))
    return chunks


def mass_constrained_lists(
    log_probs: Tensor | np.ndarray,
    precursor_mass: Tensor | np.ndarray | Sequence[float],
    cfg: DecodingConfig,
    sizes: Sequence[int],
    evidence: Sequence[FragmentEvidence | None] | None = None,
) -> list[list[list[Candidate]]]:
    """`mass_constrained` at several `top_k` at once: per size, per spectrum.

    Each list equals what `mass_constrained` returns at that size (a search
    that runs out of budget can end differently at another size), but the
    bound tables are built once and every prefix is scored once for all of
    them (`search.search_sizes`). The exception: where the smallest size's
    search runs out of budget, the larger ones get `cfg.hard_expansions`.
    """
    array = _as_log_probs(log_probs)
    precursor = np.asarray(
        precursor_mass.detach().cpu().double()
        if isinstance(precursor_mass, Tensor)
        else precursor_mass,
        dtype=np.float64,
    ).reshape(-1)
    if len(precursor) != len(array):
        raise ValueError(f"{len(precursor)} precursor masses for {len(array)} spectra")
    weighted = cfg.evidence_weight > 0 and evidence is not None
    if weighted and len(evidence) != len(array):
        raise ValueError(f"evidence for {len(evidence)} spectra, not {len(array)}")
    sizes = tuple(sizes)
    usable = has_mass(precursor)  # the rest get the greedy reading below
    chunks = [chunk for chunk in mass_chunks(precursor) if usable[chunk].all()]
    tasks = [
        ChunkTask(
            array[chunk],
            precursor[chunk],
            [evidence[b] for b in chunk.tolist()] if weighted else None,
            cfg,
            sizes,
        )
        for chunk in chunks
    ]
    out: list[list[list[Candidate]]] = [[[] for _ in range(len(array))] for _ in sizes]
    exhausted = beamed = 0
    for chunk, result in zip(chunks, _run(tasks, cfg.workers), strict=True):
        exhausted += result.exhausted
        beamed += result.beamed
        for b, lists in zip(chunk.tolist(), result.found, strict=True):
            for per_size, found in zip(out, lists, strict=True):
                per_size[b] = [
                    make_candidate(
                        array[b], indices, float(precursor[b]), cfg, True, score
                    )
                    for score, indices in found
                ]
    fallback = greedy_indices(array)
    unconstrained = 0
    for b in range(len(array)):
        unconstrained += not out[0][b]
        for per_size in out:
            if not per_size[b]:
                greedy_reading = make_candidate(
                    array[b], fallback[b], precursor[b], cfg, False
                )
                per_size[b] = [greedy_reading]
    log.debug(
        "decoded %d spectra: %d with no fitting peptide, %d past the search budget"
        " (%d searched again by beam)",
        len(array),
        unconstrained,
        exhausted,
        beamed,
    )
    return out


def _run(tasks: list[ChunkTask], n_workers: int) -> list[ChunkResult]:
    """Search every chunk, in worker processes when there are several chunks."""
    return workers.parallel_map(search_chunk, tasks, n_workers)


def decode(
    log_probs: Tensor | np.ndarray,
    precursor_mass: Tensor | np.ndarray | Sequence[float],
    cfg: DecodingConfig,
    top_k: int | None = None,
    evidence: Sequence[FragmentEvidence | None] | None = None,
) -> list[list[Candidate]]:
    """Decode a batch for the pipeline: mass-constrained, greedy when none fits.

    See `mass_constrained`; this is the one entry point `sequence` calls, with
    `evidence.from_batch` of the collated batch.
    """
    return mass_constrained(log_probs, precursor_mass, cfg, top_k, evidence)


def decode_lists(
    log_probs: Tensor | np.ndarray,
    precursor_mass: Tensor | np.ndarray | Sequence[float],
    cfg: DecodingConfig,
    sizes: Sequence[int],
    evidence: Sequence[FragmentEvidence | None] | None = None,
) -> list[list[list[Candidate]]]:
    """`decode` at several list sizes at once (see `mass_constrained_lists`)."""
    return mass_constrained_lists(log_probs, precursor_mass, cfg, sizes, evidence)
