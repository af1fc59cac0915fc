"""The search behind mass-constrained decoding, one chunk of spectra at a time.

A peptide's score is its log-probability under the per-position distributions
(see `peptrm.decoding`) plus, when peaks are given, `evidence_weight` times the
fragment evidence of each cleavage (`peptrm.evidence`). `search_chunk` finds the
best-scoring peptides that fit each precursor: a best-first (A*) search over
prefixes with float64 masses, guided by an admissible bound that a vectorised
dynamic programme over ~1 Da mass bins computes once per chunk, and a beam
search over the same scores when the exact search runs out of budget.
Searches for lists of several sizes over one spectrum (`search_sizes`) each
give what they would alone, but score every prefix once between them. Both
searches run compiled with numba (`_best_first`, `_beam_search`), one call per
spectrum; the bound's table is built with NumPy, once per chunk.

Nothing here imports torch, so worker processes start light.
"""

# B batch, L peptide positions, V vocabulary, R residue tokens, S mass bins

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
from numba import types
from numba.typed import Dict

from peptrm import masses
from peptrm.config import DecodingConfig
from peptrm.evidence import FragmentEvidence, scores_from_steps

RESIDUE_INDICES = np.array(
    [
        i
        for i in range(1, len(masses.VOCAB))
        if i != masses.STOP_INDEX and i not in masses.N_TERMINAL_INDICES
    ]
)  # tokens allowed after position 0
FIRST_INDICES = np.array(
    [i for i in range(len(masses.VOCAB)) if i != masses.STOP_INDEX]
)  # tokens allowed at position 0 (N-terminal modifications only here)
RESIDUE_MASSES = masses.VOCAB_MASSES[RESIDUE_INDICES]
FIRST_MASSES = masses.VOCAB_MASSES[FIRST_INDICES]
IS_N_TERMINAL = np.isin(np.arange(len(masses.VOCAB)), masses.N_TERMINAL_INDICES)
MASS_KEY_DA = 1e-6  # prefixes closer than this in mass are treated as equal mass
# Stands in for the peaks when no evidence is scored (the same compiled types).
NO_EVIDENCE = FragmentEvidence(np.zeros(0), np.zeros(0), 0.0, 2, 0.0).compiled()


def stop_suffix_scores(log_probs: np.ndarray) -> np.ndarray:
    """(B, L+1) log-score of STOP at every position from n on, for n = 0..L."""
    stop = log_probs[:, :, masses.STOP_INDEX]  # (B, L)
    suffix = np.cumsum(stop[:, ::-1], axis=1)[:, ::-1]  # (B, L)
    return np.concatenate([suffix, np.zeros((stop.shape[0], 1))], axis=1)


def isotopes(cfg: DecodingConfig) -> np.ndarray:
    """The 13C isotope errors the precursor may carry, min..max."""
    return np.arange(cfg.min_isotope, cfg.max_isotope + 1)


# --------------------------------------------------------------------------------
# The bound: best completion score per (position, mass bin)
# --------------------------------------------------------------------------------


def _bound_bin_width() -> tuple[float, np.ndarray, float, float]:
    """Choose a bin width near 1 Da at which every residue is nearly whole bins.

    Residue masses sit close to multiples of ~1.0002 Da (the mass defect), so at
    that width the rounding residual of each token spans only ~0.07 Da; the
    residual of a k-token completion then lies within k times that range.
    Returns the width, each residue's bin count and the residual range (Da).
    """
    residue_masses = masses.VOCAB_MASSES[RESIDUE_INDICES]
    widths = np.arange(0.99, 1.01, 1e-5)
    shifts = np.round(residue_masses[None, :] / widths[:, None])
    residual = residue_masses[None, :] - shifts * widths[:, None]
    spread = np.maximum(residual.max(1), 0) - np.minimum(residual.min(1), 0)
    width = float(widths[np.argmin(spread)])
    shifts = np.round(residue_masses / width).astype(np.int64)
    residual = residue_masses - shifts * width
    return width, shifts, min(residual.min(), 0.0), max(residual.max(), 0.0)


BIN_DA, RESIDUE_SHIFTS, RESIDUAL_MIN_DA, RESIDUAL_MAX_DA = _bound_bin_width()


def completion_bounds(
    residue_log_probs: np.ndarray,
    stop_suffix: np.ndarray,
    n_bins: int,
    cleavage: np.ndarray | None = None,
) -> np.ndarray:
    """Best completion score from each position for each mass-bin total.

    bounds[b, i, s] is the best score of tokens at positions i..n-1 (residues
    only) plus STOP from n on, over completions whose token bin counts sum to s.
    Row 0 is left at -inf: the root is expanded explicitly (it alone may take an
    N-terminal modification). One max-plus shift per residue and position, over
    the whole batch and mass axis at once. NumPy, not torch: these ~700 small
    operations run single-threaded, and torch's thread pool stalls on every one
    of them when the 2 cores are shared with another process (measured: 5 s
    instead of 25 ms per 32 spectra).

    Parameters
    ----------
    residue_log_probs
        (B, L, R) log-probs of the tokens in `RESIDUE_INDICES`.
    stop_suffix
        (B, L+1) from `stop_suffix_scores`.
    n_bins
        S, the mass bins kept (covering the heaviest precursor of the batch).
    cleavage
        (B, S) or None: an upper bound on the evidence bonus of a cleavage
        before a completion whose bins sum to s (`_cleavage_bounds`); it is
        added at every cleavage inside a completion. Column 0 must be 0.

    Returns
    -------
    np.ndarray
        (B, L+1, S) float32 bounds; -inf where no completion has that total.
    """
    batch, length, _ = residue_log_probs.shape
    residue_log_probs = residue_log_probs.astype(np.float32)
    bounds = np.full((batch, length + 1, n_bins), -np.inf, dtype=np.float32)
    bounds[:, :, 0] = stop_suffix  # stop here: the STOP run from position i
    widest = int(RESIDUE_SHIFTS.max())
    for i in range(length - 1, 0, -1):
        reach = min(n_bins, (length - i) * widest + 1)  # heavier is unreachable
        current, following = bounds[:, i, :reach], bounds[:, i + 1, :reach]
        if cleavage is not None:  # a cleavage between position i and the rest
            following = following + cleavage[:, :reach]
        for r, shift in enumerate(RESIDUE_SHIFTS.tolist()):
            if shift >= reach:
                continue
            extended = following[:, : reach - shift] + residue_log_probs[:, i, r, None]
            np.maximum(current[:, shift:], extended, out=current[:, shift:])
    return bounds


def range_max_table(bounds: np.ndarray, widest: int) -> np.ndarray:
    """Sparse table of window maxima: table[j, ..., s] = max(bounds[..., s:s+2^j])."""
    n_levels = max(int(widest).bit_length(), 1)
    table = np.empty((n_levels, *bounds.shape), dtype=bounds.dtype)  # (J, B, L+1, S)
    table[0] = bounds
    for j in range(1, n_levels):
        span = 1 << (j - 1)
        table[j, ..., -span:] = table[j - 1, ..., -span:]
        np.maximum(
            table[j - 1, ..., :-span],
            table[j - 1, ..., span:],
            out=table[j, ..., :-span],
        )
    return table


# --------------------------------------------------------------------------------
# The exact search
# --------------------------------------------------------------------------------


@dataclass
class _Spectrum:
    """Everything the search reads about one spectrum."""

    log_probs: np.ndarray  # (L, V) float64
    stop_suffix: np.ndarray  # (L+1,)
    table: np.ndarray  # (J, L+1, S) range-max table of the extension bounds
    targets: np.ndarray  # (I,) residue-sum targets, one per isotope (Da)
    tol_da: float
    evidence: FragmentEvidence | None = None  # peaks, to score cleavages
    weight: float = 0.0  # of the evidence against the model's log-probs

    def __post_init__(self) -> None:
        # A completion of k <= L-row tokens whose bins sum to s weighs within
        # [s*w + k*RESIDUAL_MIN, s*w + k*RESIDUAL_MAX]: the bins that could reach
        # a target window lie within these offsets (in bins) of need / w.
        remaining = self.log_probs.shape[0] - np.arange(self.log_probs.shape[0] + 1)
        self.lo_offset = (-self.tol_da - remaining * RESIDUAL_MAX_DA) / BIN_DA - 1e-6
        self.hi_offset = (self.tol_da - remaining * RESIDUAL_MIN_DA) / BIN_DA + 1e-6
        scoring = self.evidence is not None and self.weight != 0
        self.compiled_evidence = (
            self.evidence.compiled() if scoring else NO_EVIDENCE
        )  # what the compiled search reads (`FragmentEvidence.compiled`)


@numba.njit(cache=True, nogil=True)
def _remaining(targets: np.ndarray, prefix_mass: np.ndarray) -> np.ndarray:
    """(C, I) residue mass each prefix still needs to reach each isotope's target."""
    out = np.empty((len(prefix_mass), len(targets)))
    for c in range(len(prefix_mass)):
        for i in range(len(targets)):
            out[c, i] = targets[i] - prefix_mass[c]
    return out


@numba.njit(cache=True, nogil=True)
def _extension_bound(table, row, lo_offset, hi_offset, remaining) -> np.ndarray:
    """Admissible bound on the best >=1-token completion of prefixes at `row`.

    The maximum of the bounds over every bin total that could reach a target
    window (one window per isotope; `remaining` (C, I) from `_remaining`), from
    the range-max table in two lookups per window; none after the last row.
    """
    if row == table.shape[1] - 1:
        return np.full(remaining.shape[0], -np.inf)
    n_levels, n_bins = table.shape[0], table.shape[-1]
    out = np.empty(remaining.shape[0])
    for c in range(remaining.shape[0]):
        best = -np.inf
        for i in range(remaining.shape[1]):
            need = remaining[c, i] / BIN_DA  # bins
            lo = min(max(np.ceil(need + lo_offset), 0.0), n_bins - 1.0)
            hi = min(np.floor(need + hi_offset), n_bins - 1.0)
            width = hi - lo + 1
            if width < 1:
                continue
            level, span = 0, int(width)  # the largest 2^level <= width
            while (2 << level) <= span and level < n_levels - 1:
                level += 1
            end = max(int(hi) - (1 << level) + 1, 0)
            value = max(table[level, row, int(lo)], table[level, row, end])
            best = max(best, value)
        out[c] = best
    return out


@numba.njit(cache=True, nogil=True)
def _may_end(first: bool, token: int) -> bool:
    """Whether a peptide may end on `token`: it holds at least one residue."""
    return not (first and IS_N_TERMINAL[token])


@numba.njit(cache=True, nogil=True)
def _cleavage_bonus(position, tokens, child_mass, weight, evidence) -> np.ndarray:
    """Evidence bonus of the cleavage after each child that goes on (C,).

    `evidence` from `FragmentEvidence.compiled` (`NO_EVIDENCE` when weight is 0).
    None after an N-terminal modification alone: it is not a residue boundary.
    """
    if weight == 0:
        return np.zeros(len(child_mass))
    bonus = weight * scores_from_steps(child_mass, *evidence)
    if position == 0:
        for c in range(len(tokens)):
            if IS_N_TERMINAL[tokens[c]]:
                bonus[c] = 0.0
    return bonus


@numba.njit(cache=True, nogil=True)
def _fit_any(remaining: np.ndarray, tol_da: float) -> np.ndarray:
    """Whether each residue sum fits the precursor at some allowed isotope.

    `remaining` (C, I) from `_remaining`: within tolerance of zero at some isotope.
    """
    out = np.zeros(remaining.shape[0], np.bool_)
    for c in range(remaining.shape[0]):
        for i in range(remaining.shape[1]):
            out[c] = out[c] or abs(remaining[c, i]) <= tol_da
    return out


# The compiled best-first search. Heap entries are float64 4-tuples
# (-f, kind, serial, payload): kind TERMINAL (a finished peptide, f its exact
# log-score, payload its index in the found list) pops before kind CHILDREN (a
# prefix's children, f the bound of the best one not yet taken, payload the
# index of its record) of equal f; serials are unique, so payloads never compare.
TERMINAL, CHILDREN = 0.0, 1.0
_PREFIX_KEY = types.UniTuple(types.float64, 3)  # (length, mass, score) of a prefix
_MASS_KEY = types.UniTuple(types.int64, 2)  # (length, mass in MASS_KEY_DA units)


@numba.njit(cache=True, nogil=True)
def _mass_key(mass: float) -> np.int64:
    """A prefix mass in MASS_KEY_DA units: prefixes of one key weigh the same."""
    return np.int64(np.rint(mass / MASS_KEY_DA))


@numba.njit(cache=True, nogil=True)
def _extend(log_probs, stop_suffix, table, targets, tol_da, lo_offset, hi_offset,
            weight, evidence, position, mass, g):  # fmt: skip
    """Score every one-token extension of one prefix.

    Returns the children that end a fitting peptide (their scores with the
    STOP run, and their tokens, in token order); then all children sorted by
    bound (best first, ties in token order; those that cannot fit last), as
    columns (token, mass, score with the cleavage bonus, bound, -bound, mass
    key); and how many can still fit. A pure function of the prefix's length,
    mass and score, so the searches of several sizes over one spectrum compute
    it once per prefix and share it.
    """
    first = position == 0
    tokens = FIRST_INDICES if first else RESIDUE_INDICES
    token_masses = FIRST_MASSES if first else RESIDUE_MASSES
    n = len(tokens)
    child_g, child_mass = np.empty(n), np.empty(n)
    for c in range(n):
        child_g[c] = g + log_probs[position, tokens[c]]
        child_mass[c] = mass + token_masses[c]
    bonus = _cleavage_bonus(position, tokens, child_mass, weight, evidence)
    row = position + 1
    remaining = _remaining(targets, child_mass)
    fits = _fit_any(remaining, tol_da)
    window = _extension_bound(table, row, lo_offset[row], hi_offset[row], remaining)
    end_scores, end_tokens, n_ends = np.empty(n), np.empty(n, np.int64), 0
    scores, bounds, count = np.empty(n), np.empty(n), 0
    for c in range(n):
        stop = child_g[c] + stop_suffix[row]
        if stop >= -1e300 and fits[c] and _may_end(first, tokens[c]):
            end_scores[n_ends], end_tokens[n_ends] = stop, tokens[c]
            n_ends += 1
        scores[c] = child_g[c] + bonus[c]
        bounds[c] = scores[c] + window[c]
        count += bounds[c] >= -1e300
    order = np.argsort(-bounds, kind="mergesort")  # stable: ties in token order
    keys = np.empty(n, np.int64)
    for j in range(n):
        keys[j] = _mass_key(child_mass[order[j]])
    return (
        end_scores[:n_ends], end_tokens[:n_ends], tokens[order], child_mass[order],
        scores[order], bounds[order], -bounds[order], keys, count,
    )  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _floor(values: np.ndarray, n: int) -> float:
    """The lowest of the len(values) best scores `_keep_best` keeps; -inf until full.

    Below the top_k-th fitting peptide found, nothing can make the list; a
    prefix that scores no better than the top_k kept at its mass is dominated.
    """
    return values.min() if n == len(values) else -np.inf


@numba.njit(cache=True, nogil=True)
def _keep_best(values: np.ndarray, n: int, score: float) -> int:
    """Keep the len(values) highest scores seen in `values[:n]`; the new n."""
    if n < len(values):
        values[n] = score
        return n + 1
    lowest = np.argmin(values)
    if score > values[lowest]:
        values[lowest] = score
    return n


@numba.njit(cache=True, nogil=True)
def _best_first(log_probs, stop_suffix, table, targets, tol_da, lo_offset,
                hi_offset, weight, evidence, sizes, max_expansions,
                hard_expansions):  # fmt: skip
    """The exact search for the top `sizes[i]` fitting peptides, for each i.

    Expanding a prefix pushes its fitting one-token endings above the floor
    (the top_k-th fitting score found) and, as one heap entry, its children
    above the floor, best bound first (partial expansion: most children are
    never reached, so they are never pushed one by one). Taking a child skips
    it when `top_k` prefixes of the same length and mass (within MASS_KEY_DA)
    already scored at least as well: they dominate every completion it could
    have. When a terminal pops, no unexplored peptide can score higher: it is
    the next best. Past `max_expansions`, the fitting peptides already pushed
    are returned best first: they fit, but are not proven the best. Once a
    search of an earlier size ran out of budget, the later ones may extend only
    `hard_expansions` prefixes (at most `max_expansions`).

    The scored extensions of each prefix are shared between the sizes. Returns
    per found peptide its size index, score and path node, the path nodes
    (token, parent; -1 is the root) and whether each size ran out of budget.
    """
    shared = Dict.empty(_PREFIX_KEY, types.int64)  # prefix -> index into scored
    scored = [_extend(log_probs, stop_suffix, table, targets, tol_da, lo_offset,
                      hi_offset, weight, evidence, 0, 0.0, 0.0)]  # fmt: skip
    shared[(0.0, 0.0, 0.0)] = 0
    node_token, node_parent = [0], [0]  # path nodes; parent -1 is the root
    node_token.clear()
    node_parent.clear()
    out_size, out_score, out_node = [0], [0.0], [0]
    out_size.clear()
    out_score.clear()
    out_node.clear()
    ran_out = np.zeros(len(sizes), np.bool_)
    for size_index, top_k in enumerate(sizes):
        heap = [(0.0, 0.0, 0.0, 0.0)]
        heap.clear()
        serial, expansions = 0.0, 0
        budget = max_expansions
        if ran_out[:size_index].any():
            budget = min(hard_expansions, max_expansions)
        fitting, n_fitting = np.empty(top_k), 0  # the top_k fitting scores pushed
        seen = Dict.empty(_MASS_KEY, types.int64)  # (length, mass) -> index
        better, n_better = [np.empty(top_k)], [0]  # the top_k scores per mass
        better.clear()
        n_better.clear()
        # children records: length, index into scored, end, parent node, next
        records = [(0, 0, 0, 0)]
        records.clear()
        next_child = [0]
        next_child.clear()
        terminals, terminal_node = [0.0], [0]
        terminals.clear()
        terminal_node.clear()
        found = [0]
        found.clear()
        position, mass, g, path = 0, 0.0, 0.0, -1  # the prefix to expand next
        expanding = True
        while True:
            if expanding:  # expand (position, mass, g, path)
                expanding = False
                expansions += 1
                key = (float(position), mass, g)
                e = shared.get(key, -1)
                if e < 0:
                    e = len(scored)
                    shared[key] = e
                    scored.append(
                        _extend(log_probs, stop_suffix, table, targets, tol_da,
                                lo_offset, hi_offset, weight, evidence, position,
                                mass, g)
                    )  # fmt: skip
                end_scores, end_tokens, _, _, _, bounds, negated, _, count = scored[e]
                floor = _floor(fitting, n_fitting)
                for j in range(len(end_scores)):
                    if end_scores[j] < floor:
                        continue
                    node_token.append(end_tokens[j])
                    node_parent.append(path)
                    terminals.append(end_scores[j])
                    terminal_node.append(len(node_token) - 1)
                    entry = (-end_scores[j], TERMINAL, serial, len(terminals) - 1.0)
                    heapq.heappush(heap, entry)
                    serial += 1
                    n_fitting = _keep_best(fitting, n_fitting, end_scores[j])
                floor = _floor(fitting, n_fitting)
                end = np.searchsorted(negated[:count], -floor, side="right")
                if end > 0:
                    records.append((position + 1, e, end, path))
                    next_child.append(0)
                    entry = (-bounds[0], CHILDREN, serial, len(records) - 1.0)
                    heapq.heappush(heap, entry)
                    serial += 1
            if len(heap) == 0 or len(found) >= top_k:
                break
            if heap[0][1] == CHILDREN and expansions >= budget:
                ran_out[size_index] = True
                while len(heap) > 0:
                    entry = heapq.heappop(heap)
                    if entry[1] == TERMINAL:
                        found.append(int(entry[3]))
                break
            entry = heapq.heappop(heap)
            if entry[1] == TERMINAL:
                found.append(int(entry[3]))
                continue
            # take the best remaining child of a record, unless it is dominated
            r = int(entry[3])
            length, e, end, parent = records[r]
            c = next_child[r]
            next_child[r] = c + 1
            tokens, child_masses, scores, bounds, _, keys = scored[e][2:8]
            if c + 1 < end:
                heapq.heappush(heap, (-bounds[c + 1], CHILDREN, serial, float(r)))
                serial += 1
            floor = _floor(fitting, n_fitting)
            if bounds[c] < floor:
                continue
            slot = seen.get((length, keys[c]), -1)
            if slot < 0:
                slot = len(better)
                seen[(length, keys[c])] = slot
                better.append(np.empty(top_k))
                n_better.append(0)
            if _floor(better[slot], n_better[slot]) >= scores[c]:
                continue  # dominated by top_k prefixes of the same mass
            n_better[slot] = _keep_best(better[slot], n_better[slot], scores[c])
            node_token.append(tokens[c])
            node_parent.append(parent)
            position, mass, g, path = (
                length,
                child_masses[c],
                scores[c],
                len(node_token) - 1,
            )
            expanding = True
        for t in found[:top_k]:
            out_size.append(size_index)
            out_score.append(terminals[t])
            out_node.append(terminal_node[t])
    return (
        np.array(out_size), np.array(out_score), np.array(out_node),
        np.array(node_token), np.array(node_parent), ran_out,
    )  # fmt: skip


def _node_path(node: int, token: np.ndarray, parent: np.ndarray) -> list[int]:
    """The tokens from the root to a node of `_best_first`'s path nodes."""
    out = []
    while node >= 0:
        out.append(int(token[node]))
        node = int(parent[node])
    return out[::-1]


def _short_sums(most: int) -> list[np.ndarray]:
    """Sorted residue sums of exactly k residues, k = 1..most (Da)."""
    residue_masses = masses.VOCAB_MASSES[RESIDUE_INDICES]
    out, sums = [], np.zeros(1)
    for _ in range(most):
        sums = np.unique(np.round((sums[:, None] + residue_masses).ravel(), 9))
        out.append(sums)
    return out


SHORT_SUMS = tuple(_short_sums(5))  # 20, 197, 1,262, 5,910 and 21,560 masses
# Prefixes of one mass the beam keeps (`_beam`). Search recall @1/5/15, held-out
# split / a third of the training part: 1, 0.347/0.429/0.469 / 0.232/0.347/0.375;
# 4, 0.347/0.469/0.520 / 0.232/0.370/0.421; 8, 0.347/0.474/0.531 /
# 0.232/0.372/0.425, at a third more decoding time than 4. With `width`
# runners-up in all (not `width` * 3): 0.347/0.464/0.515 / 0.232/0.361/0.411,
# 19 s of decoding the training part against 23 s, but held-out reranked
# recall 0.383 against 0.398 after refitting the scorers on each.
BEAM_PER_MASS = 4


@numba.njit(cache=True, nogil=True)
def _short_completion(remaining, tol_da, rows_left, short_sums) -> bool:
    """Whether a prefix can still fit exactly, as far as 1-5 residues tell.

    `remaining` (I,) is what the prefix still needs at each isotope
    (`_remaining`); one reachable isotope is enough. A remaining mass no
    heavier than three residues can be must be a sum of one to five residues
    (`SHORT_SUMS`) within tolerance, with rows left for them; a heavier
    remainder is assumed reachable (the bound table has already checked it to
    ~1 Da). Four or five light residues (GASK) weigh less than three heavy
    ones: judged by 1-3 residues only, as once, every prefix that still needed
    them was dropped from the beam. Six or more below that weight (all G, A,
    S, P or V) are still taken for a dead end, which keeps the beam off the
    many light remainders that no residues sum to.
    """
    heaviest = short_sums[2][-1]  # of three residues
    for need in remaining:
        if need > heaviest + tol_da:
            return True
        for k in range(min(rows_left, len(short_sums))):
            sums = short_sums[k]
            at = min(max(np.searchsorted(sums, need), 1), len(sums) - 1)
            if min(abs(sums[at] - need), abs(sums[at - 1] - need)) <= tol_da:
                return True
    return False


def _beam(spec: _Spectrum, width: int, top_k: int) -> list[tuple[float, list[int]]]:
    """Beam search over the exact search's scores and bound: [(score, indices)].

    Position by position, keeps the prefixes of the `width` masses with the
    best prefix score plus completion bound: the best of each, as ever, and up
    to `BEAM_PER_MASS` - 1 runners-up of the same mass beside it. Prefixes of
    one mass share their completions, so the best alone is exact for the top 1
    but drops every reordering of an unfragmented stretch from longer lists;
    the runners-up take no mass's place, so the best answer cannot get worse.
    The cap does not follow `top_k`, so a list of any size is the first
    entries of the longest (`search_sizes` runs the beam once). Every kept
    prefix can still reach the precursor (its bound is finite), so a fitting
    peptide is found unless the beam drops all of them. Not exact: it is the
    second chance when the exact search runs out of budget.
    """
    score, node, token, parent = _beam_search(
        spec.log_probs, spec.stop_suffix, spec.table, spec.targets, spec.tol_da,
        spec.lo_offset, spec.hi_offset, spec.weight, spec.compiled_evidence,
        SHORT_SUMS, width, top_k, BEAM_PER_MASS,
    )  # fmt: skip
    return [
        (s, _node_path(n, token, parent))
        for s, n in zip(score.tolist(), node.tolist(), strict=True)
    ]


@numba.njit(cache=True, nogil=True)
def _beam_search(log_probs, stop_suffix, table, targets, tol_da, lo_offset, hi_offset,
                 weight, evidence, short_sums, width, top_k, per_mass):  # fmt: skip
    """`_beam`, compiled.

    Returns the finished peptides' scores and path nodes, best first, and the
    path nodes (token, parent; -1 is the root).
    """
    node_token, node_parent = [0], [0]
    node_token.clear()
    node_parent.clear()
    finished, finished_node = [0.0], [0]
    finished.clear()
    finished_node.clear()
    prefix_mass, g, paths = np.zeros(1), np.zeros(1), np.full(1, -1)
    for position in range(log_probs.shape[0]):
        first = position == 0
        tokens = FIRST_INDICES if first else RESIDUE_INDICES
        token_masses = FIRST_MASSES if first else RESIDUE_MASSES
        token_log_probs = log_probs[position][tokens]
        n_tokens = len(tokens)
        n = len(g) * n_tokens
        child_g, child_mass = np.empty(n), np.empty(n)
        child_token, parent = np.empty(n, np.int64), np.empty(n, np.int64)
        for p in range(len(g)):
            for t in range(n_tokens):
                c = p * n_tokens + t
                child_g[c] = g[p] + token_log_probs[t]
                child_mass[c] = prefix_mass[p] + token_masses[t]
                child_token[c], parent[c] = tokens[t], p
        remaining = _remaining(targets, child_mass)
        fits = _fit_any(remaining, tol_da)
        stop = child_g + stop_suffix[position + 1]
        for c in range(n):
            if fits[c] and _may_end(first, child_token[c]):
                node_token.append(child_token[c])
                node_parent.append(paths[parent[c]])
                finished.append(stop[c])
                finished_node.append(len(node_token) - 1)
        child_g = child_g + _cleavage_bonus(
            position, child_token, child_mass, weight, evidence
        )
        row = position + 1
        f = child_g + _extension_bound(
            table, row, lo_offset[row], hi_offset[row], remaining
        )
        rows_left = log_probs.shape[0] - row
        kept = _beam_keep(f, child_mass, remaining, tol_da, rows_left, short_sums,
                          width, per_mass)  # fmt: skip
        n_kept = len(kept)
        if n_kept == 0:
            break
        g, prefix_mass = child_g[kept], child_mass[kept]
        kept_paths = np.empty(n_kept, np.int64)
        for j in range(n_kept):
            node_token.append(child_token[kept[j]])
            node_parent.append(paths[parent[kept[j]]])
            kept_paths[j] = len(node_token) - 1
        paths = kept_paths
    scores = np.array(finished)
    order = np.argsort(-scores, kind="mergesort")[:top_k]  # stable: ties stay
    return (
        scores[order], np.array(finished_node)[order], np.array(node_token),
        np.array(node_parent),
    )  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _beam_keep(f, child_mass, remaining, tol_da, rows_left, short_sums, width,
               per_mass):  # fmt: skip
    """The children (indices) one beam step keeps, best `f` first.

    Children in order of `f` (ties in index order), up to `width` * `per_mass`:
    the `width` best masses, `per_mass` prefixes of each, each one still able
    to fit (`_short_completion`). Sorting all ~5,000 children every step was
    most of the beam's time, so only those at or above the
    2 * `width` * `per_mass`-th best `f` are sorted first; the rest (after the
    `width`-th mass, only those of a mass kept) are sorted only if the beam is
    not full by then. They follow the first ones in a full stable sort, so the
    beam keeps what sorting all of them keeps.
    """
    alive = np.flatnonzero(np.isfinite(f))
    capacity = min(width * per_mass, len(alive))
    kept = np.empty(capacity, np.int64)
    n_kept, n_masses = 0, 0
    of_mass = Dict.empty(types.int64, types.int64)  # prefixes kept per mass
    head, rest = alive, alive[:0]
    first = 2 * width * per_mass
    if len(alive) > first:
        scores = f[alive]
        threshold = -np.partition(-scores, first - 1)[first - 1]  # first-th best
        head, rest = alive[scores >= threshold], alive[scores < threshold]
    for part in range(2):
        rows = head
        if part == 1:
            if n_kept == capacity or len(rest) == 0:
                break
            if n_masses == width:  # only a mass already kept can take more
                wanted = np.zeros(len(rest), np.bool_)
                for j in range(len(rest)):
                    key = _mass_key(child_mass[rest[j]])
                    wanted[j] = of_mass.get(key, 0) > 0
                rest = rest[wanted]
            rows = rest
        rows = rows[np.argsort(-f[rows], kind="mergesort")]  # stable
        for c in rows:  # best first: the `width` best masses, `per_mass` of each
            key = _mass_key(child_mass[c])
            seen = of_mass.get(key, 0)
            if seen == per_mass or (seen == 0 and n_masses == width):
                continue
            # asked only of prefixes that would be kept: the check is the cost
            if not _short_completion(remaining[c], tol_da, rows_left, short_sums):
                continue
            n_masses += seen == 0
            of_mass[key] = seen + 1
            kept[n_kept] = c
            n_kept += 1
            if n_kept == capacity:
                break
    return kept[:n_kept]


def _cleavage_bounds(
    evidence: FragmentEvidence, spec: _Spectrum, n_bins: int, weight: float
) -> np.ndarray:
    """(S,) bound on the bonus of a cleavage before a completion of s bins.

    A completion whose bins sum to s holds k <= min(L-1, s / lightest residue's
    bins) tokens and weighs s*w plus k residuals; the peptide's residues sum to
    a target within tolerance, so the cleavage lies in a window of prefix mass
    per isotope target, narrow near the C-terminus and wider further in.
    """
    bins = np.arange(n_bins)
    tokens = np.minimum(spec.log_probs.shape[0] - 1, bins // RESIDUE_SHIFTS.min())
    below = spec.tol_da + tokens * RESIDUAL_MAX_DA
    above = spec.tol_da - tokens * RESIDUAL_MIN_DA
    centre = (spec.targets[:, None] - bins[None, :] * BIN_DA).ravel()  # (I * S,)
    windows = evidence.window_bounds(
        centre - np.tile(below, len(spec.targets)),
        centre + np.tile(above, len(spec.targets)),
    )
    out = weight * windows.reshape(len(spec.targets), n_bins).max(axis=0)
    out[0] = 0.0  # s = 0: the peptide ends, no cleavage
    return out


def _bins_needed(precursor_mass: float, length: int, cfg: DecodingConfig) -> int:
    """Mass bins S that cover every residue sum the search can ask about."""
    heaviest = (
        precursor_mass
        - cfg.min_isotope * masses.C13_SPACING
        - masses.H2O
        + masses.ppm_to_da(cfg.precursor_tol_ppm, precursor_mass)
        - min(masses.VOCAB_MASSES.min(), 0.0)  # an N-terminal loss leaves more
        - length * RESIDUAL_MIN_DA
    )
    return max(int(math.ceil(heaviest / BIN_DA)) + 2, 2)


def _widest_window(precursor_mass: float, length: int, cfg: DecodingConfig) -> int:
    """Bins in the widest window `_extension_bound` asks for (sizes the table)."""
    tol_da = masses.ppm_to_da(cfg.precursor_tol_ppm, precursor_mass)
    spread = (length - 1) * (RESIDUAL_MAX_DA - RESIDUAL_MIN_DA)
    return int(math.ceil((2 * tol_da + spread) / BIN_DA)) + 2


CHUNK = 32  # spectra per bound table: (J, 32, L+1, S) float32 is ~50 MB at 4 kDa


def _merge(
    first: list[tuple[float, list[int]]],
    second: list[tuple[float, list[int]]],
    top_k: int,
) -> list[tuple[float, list[int]]]:
    """The best `top_k` distinct peptides of two searches' results."""
    best: dict[tuple[int, ...], float] = {}
    for score, indices in first + second:
        key = tuple(indices)
        best[key] = max(score, best.get(key, -np.inf))
    ranked = sorted(best.items(), key=lambda item: -item[1])[:top_k]
    return [(score, list(key)) for key, score in ranked]


@dataclass
class ChunkTask:
    """Spectra of similar precursor mass that share one bound table."""

    log_probs: np.ndarray  # (C, L, V) float64 log-probabilities
    precursor: np.ndarray  # (C,) observed neutral precursor masses (Da)
    evidence: Sequence[FragmentEvidence | None] | None  # peaks, or None
    cfg: DecodingConfig
    sizes: tuple[int, ...]  # the top_k of each search, one list per size


@dataclass
class ChunkResult:
    """Per spectrum, one list per size: the best fitting [(score, indices)]."""

    found: list[list[list[tuple[float, list[int]]]]]
    exhausted: int  # searches that ran out of budget
    beamed: int  # spectra searched again by beam


def search_sizes(
    spec: _Spectrum, sizes: Sequence[int], cfg: DecodingConfig
) -> tuple[list[list[tuple[float, list[int]]]], int, bool]:
    """The exact search for each size's top list of one spectrum, sharing work.

    A search for more peptides prunes less, so within the same budget it can
    end elsewhere than a search for fewer (and miss the best one that search
    finds): each size runs its own search, to the same result as if it ran
    alone. But they extend mostly the same prefixes, so every prefix is scored
    once (`_best_first`) and the beam, when needed, runs once at the largest
    size (its shorter lists are prefixes of the longer). Returns the lists,
    the searches that ran out of budget and whether the beam ran.

    The smallest search runs first. When even it runs out of budget, the larger
    ones extend at most `cfg.hard_expansions` prefixes before the beam answers
    for them (with the beam on): on such spectra the beam's list held every
    peptide that their full searches added (dev and the training part's
    out-of-fold spectra gave the same lists at 0 as at `max_expansions`), and
    those full searches were ~15 % of the search's time. Otherwise each size's
    list is what its own search alone gives.
    """
    order = np.argsort(np.array(sizes), kind="stable")  # smallest first
    hard = cfg.hard_expansions if cfg.beam_width > 0 else cfg.max_expansions
    size_of, score, node, token, parent, ran_out = _best_first(
        spec.log_probs, spec.stop_suffix, spec.table, spec.targets, spec.tol_da,
        spec.lo_offset, spec.hi_offset, spec.weight, spec.compiled_evidence,
        np.array(sizes, np.int64)[order], cfg.max_expansions, hard,
    )  # fmt: skip
    size_of, ran_out = order[size_of], ran_out[np.argsort(order)]  # as in `sizes`
    beam: list[tuple[float, list[int]]] | None = None
    out = []
    for i, size in enumerate(sizes):
        found = [
            (float(score[j]), _node_path(node[j], token, parent))
            for j in np.flatnonzero(size_of == i).tolist()
        ]
        if (ran_out[i] or not found) and cfg.beam_width > 0:
            if beam is None:
                beam = _beam(spec, cfg.beam_width, max(sizes))
            found = _merge(found, beam[:size], size)
        out.append(found)
    return out, int(ran_out.sum()), beam is not None


def search_chunk(task: ChunkTask) -> ChunkResult:
    """Bound table for the chunk, then the exact searches (and beam) per spectrum."""
    result = ChunkResult([], 0, 0)
    for spec in chunk_spectra(task):
        found, exhausted, beamed = search_sizes(spec, task.sizes, task.cfg)
        result.exhausted += exhausted
        result.beamed += beamed
        result.found.append(found)
    return result


def chunk_spectra(task: ChunkTask) -> list[_Spectrum]:
    """What the search reads of each spectrum of a chunk, with the chunk's bounds."""
    array, precursor, cfg = task.log_probs, task.precursor, task.cfg
    length = array.shape[1]
    weighted = cfg.evidence_weight > 0 and task.evidence is not None
    stop_suffix = stop_suffix_scores(array)
    heaviest = float(precursor.max())
    n_bins = _bins_needed(heaviest, length, cfg)
    specs = [
        _Spectrum(
            log_probs=array[j],
            stop_suffix=stop_suffix[j],
            table=np.empty(0),  # filled below, once the bounds are known
            targets=precursor[j] - isotopes(cfg) * masses.C13_SPACING - masses.H2O,
            tol_da=masses.ppm_to_da(cfg.precursor_tol_ppm, float(precursor[j])),
            evidence=task.evidence[j] if weighted else None,
            weight=cfg.evidence_weight if weighted else 0.0,
        )
        for j in range(len(array))
    ]
    cleavage = None
    if weighted:
        cleavage = np.zeros((len(array), n_bins), dtype=np.float32)
        for j, spec in enumerate(specs):
            if spec.evidence is not None:
                cleavage[j] = _cleavage_bounds(spec.evidence, spec, n_bins, spec.weight)
    bounds = completion_bounds(
        array[:, :, RESIDUE_INDICES], stop_suffix, n_bins, cleavage
    )
    bounds[..., 0] = -np.inf  # stopping now is scored exactly, as a terminal
    finite = np.isfinite(bounds)  # raise every bound: covers float32 rounding
    bounds[finite] += np.abs(bounds[finite]) * 1e-5 + 1e-6
    table = range_max_table(bounds, _widest_window(heaviest, length, cfg))
    for j, spec in enumerate(specs):
        spec.table = table[:, j]
    return specs
