"""Amino-acid precision and recall, peptide recall, precision–coverage and calibration.

The conventions follow Casanovo and DeepNovo so that our numbers can be read next
to theirs:

- **Residues match** when their masses agree within 0.1 Da and the masses of
  everything before them (from the N-terminus) agree within 0.5 Da; residues left
  unmatched are then tried the same way from the C-terminus. This is the matching
  of Casanovo's ``aa_match_prefix_suffix``, written afresh (see `aa_match`).
- **A peptide is correct** when it has as many tokens as the label and every one
  of them matches. Mass-equal residues therefore count as correct: I/L always, and
  at 0.1 Da also K/Q (0.036 Da apart), M+15.995/F (0.033 Da), N+0.984/D and
  Q+0.984/E (same composition). The stricter string comparison (I read as L) is
  reported too, as ``peptide_recall_exact``.
- **An N-terminal modification is a token** with its own mass, as in Casanovo: it
  counts as one predicted or true "residue" and is matched like one.
- **A spectrum without a prediction** (skipped, empty peptide or no output row)
  stays in every recall denominator and in the coverage denominator.

Everything here is a pure function over peptide strings (or tokens) and floats;
`peptrm.evaluate` applies these to prediction files and labelled spectra.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from peptrm import masses

# Evaluation conventions rather than settings: changing them would make our numbers
# incomparable with published ones, so they are constants, not config keys.
RESIDUE_TOL_DA = 0.1  # two residues match within this (Casanovo, DeepNovo)
PREFIX_TOL_DA = 0.5  # prefix (or suffix) masses must agree within this to align
ECE_BINS = 10  # equal-width confidence bins of the expected calibration error

Tokens = str | Sequence[str]


# ---------------------------------------------------------------------------
# Residue and peptide matching
# ---------------------------------------------------------------------------


def _tokens(peptide: Tokens) -> list[str]:
    if isinstance(peptide, str):
        return masses.parse(peptide) if peptide else []
    return list(peptide)


def _aligned_matches(
    pred: Sequence[str], true: Sequence[str], tol_da: float, prefix_tol_da: float
) -> list[tuple[int, int]]:
    """Pairs (pred index, true index) of residues that match, walking from the start.

    Both peptides are walked together while their running masses agree within
    `prefix_tol_da`: such a pair is aligned, and it matches when the two residues
    agree within `tol_da`. When the running masses disagree, the lighter side takes
    one more residue, so the walk can re-align after a swap such as GA/AG.
    """
    i = j = 0
    pred_sum = true_sum = 0.0
    matches = []
    while i < len(pred) and j < len(true):
        next_pred = pred_sum + masses.token_mass(pred[i])
        next_true = true_sum + masses.token_mass(true[j])
        if abs(next_pred - next_true) < prefix_tol_da:
            if masses.same_residue_mass(pred[i], true[j], tol_da):
                matches.append((i, j))
            i, j = i + 1, j + 1
            pred_sum, true_sum = next_pred, next_true
        elif next_true > next_pred:
            i, pred_sum = i + 1, next_pred
        else:
            j, true_sum = j + 1, next_true
    return matches


def aa_match(
    pred_tokens: Tokens,
    true_tokens: Tokens,
    tol_da: float = RESIDUE_TOL_DA,
    prefix_tol_da: float = PREFIX_TOL_DA,
) -> tuple[np.ndarray, bool]:
    """Find which predicted residues match the label, and whether all of them do.

    Residues are aligned from the N-terminus and, separately, from the C-terminus
    (see `_aligned_matches`). The result keeps the N-terminal matches up to some
    point and the C-terminal matches after it, choosing the point that keeps the
    most, so one wrong stretch costs only its own residues and no true residue is
    matched twice.

    This follows Casanovo's ``aa_match_prefix_suffix`` with two differences. The
    result has one entry per *predicted* token (Casanovo's array is as long as the
    longer peptide and indexed by the larger of the two positions, so its count
    can exceed the number of predicted residues). And Casanovo starts the
    C-terminal pass at the first N-terminal mismatch, overwriting what lies
    beyond, where we pick the best point. Peptide verdicts are the same.

    Parameters
    ----------
    pred_tokens, true_tokens
        Peptides in Casanovo notation, or their tokens; "" is an empty prediction.
    tol_da
        Two aligned residues match within this mass difference.
    prefix_tol_da
        Residues are aligned only while the masses before (or after) them agree
        within this.

    Returns
    -------
    matches
        Boolean per predicted token.
    peptide_match
        Same number of tokens and every one matched.
    """
    pred = _tokens(pred_tokens)
    true = _tokens(true_tokens)
    matches = np.zeros(len(pred), dtype=bool)
    if not pred:
        return matches, False
    if [_fold_il(t) for t in pred] == [_fold_il(t) for t in true]:
        matches[:] = True
        return matches, True
    prefix = _aligned_matches(pred, true, tol_da, prefix_tol_da)
    reversed_pairs = _aligned_matches(pred[::-1], true[::-1], tol_da, prefix_tol_da)
    suffix = [(len(pred) - 1 - i, len(true) - 1 - j) for i, j in reversed_pairs][::-1]
    for i, _ in _best_split(prefix, suffix):
        matches[i] = True
    return matches, bool(len(pred) == len(true) and matches.all())


def _best_split(
    prefix: list[tuple[int, int]], suffix: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Keep the first k N-terminal pairs and the C-terminal pairs beyond them, best k.

    Both lists are ordered by position in both peptides, so the C-terminal pairs
    lying beyond the k-th N-terminal pair in both peptides form a tail of `suffix`.
    """
    best = suffix
    for k, (last_pred, last_true) in enumerate(prefix, start=1):
        tail = [(i, j) for i, j in suffix if i > last_pred and j > last_true]
        if k + len(tail) > len(best):
            best = prefix[:k] + tail
    return best


def _fold_il(text: str) -> str:
    return text.replace("I", "L")


def same_peptide(pred: str, true: str) -> bool:
    """Whether two peptide strings are identical once I is read as L."""
    return bool(pred) and _fold_il(pred) == _fold_il(true)


@dataclass
class BatchMatch:
    """Residue and peptide counts over many (prediction, label) pairs.

    Ratios with a zero denominator are nan: "undefined", never a flattering 0 or 1.
    """

    n_aa_matched: int  # predicted residues that match a label residue
    n_aa_predicted: int  # residues in non-empty predictions
    n_aa_true: int  # residues in every label, predicted or not
    n_peptides: int  # labelled spectra
    n_peptides_predicted: int  # spectra with a non-empty prediction
    n_peptides_correct: int  # predictions whose every residue matches (see aa_match)
    n_peptides_exact: int  # predictions identical to the label, I read as L
    correct: np.ndarray = field(repr=False)  # bool per pair: the peptide is correct

    @property
    def aa_precision(self) -> float:
        """Matched residues over predicted residues."""
        return _ratio(self.n_aa_matched, self.n_aa_predicted)

    @property
    def aa_recall(self) -> float:
        """Matched residues over label residues."""
        return _ratio(self.n_aa_matched, self.n_aa_true)

    @property
    def peptide_recall(self) -> float:
        """Correct peptides over labelled spectra."""
        return _ratio(self.n_peptides_correct, self.n_peptides)

    @property
    def peptide_precision(self) -> float:
        """Correct peptides over non-empty predictions."""
        return _ratio(self.n_peptides_correct, self.n_peptides_predicted)

    @property
    def peptide_recall_exact(self) -> float:
        """Peptides identical to the label (I as L) over labelled spectra."""
        return _ratio(self.n_peptides_exact, self.n_peptides)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


def aa_match_batch(
    pred_peptides: Iterable[Tokens],
    true_peptides: Iterable[Tokens],
    tol_da: float = RESIDUE_TOL_DA,
    prefix_tol_da: float = PREFIX_TOL_DA,
) -> BatchMatch:
    """Match each prediction against its label and add up the counts.

    An empty prediction ("" or no tokens) adds its label's residues to the recall
    denominators and nothing else.
    """
    counts = dict.fromkeys(
        ("matched", "predicted", "true", "peptides", "with_prediction", "exact"), 0
    )
    correct = []
    for pred_peptide, true_peptide in zip(pred_peptides, true_peptides, strict=True):
        pred, true = _tokens(pred_peptide), _tokens(true_peptide)
        matches, peptide_match = aa_match(pred, true, tol_da, prefix_tol_da)
        counts["matched"] += int(matches.sum())
        counts["predicted"] += len(pred)
        counts["true"] += len(true)
        counts["peptides"] += 1
        counts["with_prediction"] += bool(pred)
        counts["exact"] += same_peptide("".join(pred), "".join(true))
        correct.append(peptide_match)
    return BatchMatch(
        n_aa_matched=counts["matched"],
        n_aa_predicted=counts["predicted"],
        n_aa_true=counts["true"],
        n_peptides=counts["peptides"],
        n_peptides_predicted=counts["with_prediction"],
        n_peptides_correct=sum(correct),
        n_peptides_exact=counts["exact"],
        correct=np.array(correct, dtype=bool),
    )


# ---------------------------------------------------------------------------
# Ranking by score: precision–coverage and calibration
# ---------------------------------------------------------------------------


def precision_coverage(
    scores: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Precision at each score threshold against the share of spectra it covers.

    Predictions are ranked by score, highest first; a threshold keeps the top k.
    Coverage is k over *all* spectra, so a spectrum with a nan score (no
    prediction) is never covered and the curve ends at the share predicted. Tied
    scores cannot be split by a threshold, so a tie contributes one point, at its
    end.

    Returns
    -------
    coverage, precision
        One point per distinct score, coverage ascending.
    """
    scores = np.asarray(scores, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    if scores.shape != correct.shape:
        raise ValueError(f"{len(scores)} scores but {len(correct)} correctness flags")
    predicted = ~np.isnan(scores)
    order = np.argsort(-scores[predicted], kind="stable")
    ranked_scores = scores[predicted][order]
    n_correct = np.cumsum(correct[predicted][order])
    n_covered = np.arange(1, len(ranked_scores) + 1)
    tie_end = np.append(ranked_scores[1:] != ranked_scores[:-1], True)[
        : len(ranked_scores)
    ]
    coverage = n_covered[tie_end] / len(scores)
    precision = n_correct[tie_end] / n_covered[tie_end]
    return coverage, precision


def area_under_precision_coverage(coverage: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision–coverage curve (AUPCC), as a step function.

    Each step of coverage is credited with the precision at its end, starting
    from coverage 0. Without ties this is the sum of the top-k precisions over the
    predicted spectra, divided by the number of all spectra. A step rule needs no
    invented point at zero coverage (where precision is undefined), and spectra
    never predicted add no area: a method that abstains more scores less.
    """
    steps = np.diff(np.concatenate([[0.0], coverage]))
    return float(np.sum(steps * precision))


def expected_calibration_error(
    scores: Sequence[float] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
    n_bins: int = ECE_BINS,
) -> float:
    """Measure how far peptide scores are from the chance of being correct (ECE).

    Scores fall into `n_bins` equal-width bins over [0, 1] (1.0 joins the top bin);
    the ECE is the mean over spectra of |accuracy - mean score| of their bin
    (Guo et al. 2017, "On calibration of modern neural networks"). nan scores (no
    prediction) are left out; with none left the ECE is nan.

    Raises
    ------
    ValueError
        If a score lies outside [0, 1]: such scores are not probabilities.
    """
    scores = np.asarray(scores, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    keep = ~np.isnan(scores)
    scores, correct = scores[keep], correct[keep]
    if not len(scores):
        return math.nan
    if scores.min() < 0 or scores.max() > 1:
        bad = scores[(scores < 0) | (scores > 1)][0]
        raise ValueError(f"score {bad} lies outside [0, 1]; ECE needs probabilities")
    bins = np.minimum((scores * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        total += in_bin.sum() * abs(correct[in_bin].mean() - scores[in_bin].mean())
    return float(total / len(scores))
