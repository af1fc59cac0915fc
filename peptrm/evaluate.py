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

Everything here is a pure function over strings and floats except the file-level
helpers at the end, which read our output files and labelled spectra through `io`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from peptrm import io, masses
from peptrm.io import Prediction, Skipped, Spectrum

log = logging.getLogger(__name__)

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


# ---------------------------------------------------------------------------
# All metrics of one set of (prediction, score, label) triples
# ---------------------------------------------------------------------------


def evaluate(
    pairs: Iterable[tuple[str, float, str]],
    tol_da: float = RESIDUE_TOL_DA,
    prefix_tol_da: float = PREFIX_TOL_DA,
) -> dict[str, Any]:
    """Every metric of (predicted peptide or "", peptide score, true peptide) triples.

    The precision–coverage curve ranks non-empty predictions by score; one whose
    score is nan still counts as predicted and is ranked last. ECE is over the
    non-empty predictions. The curve itself comes last in the dict, under
    ``curve``.
    """
    preds, scores, labels = [], [], []
    for pred, score, label in pairs:
        preds.append(pred)
        labels.append(label)
        score = float(score)
        if not pred:
            score = math.nan  # no prediction: never covered
        elif math.isnan(score):
            score = -math.inf  # predicted but unscored: covered last
        scores.append(score)
    batch = aa_match_batch(preds, labels, tol_da, prefix_tol_da)
    scores_array = np.array(scores, dtype=float)
    coverage, precision = precision_coverage(scores_array, batch.correct)
    calibrated = np.isfinite(scores_array)
    return {
        "n_spectra": batch.n_peptides,
        "n_predicted": batch.n_peptides_predicted,
        "n_peptides_correct": batch.n_peptides_correct,
        "n_peptides_exact": batch.n_peptides_exact,
        "n_aa_matched": batch.n_aa_matched,
        "n_aa_predicted": batch.n_aa_predicted,
        "n_aa_true": batch.n_aa_true,
        "peptide_recall": batch.peptide_recall,
        "peptide_precision": batch.peptide_precision,
        "peptide_recall_exact": batch.peptide_recall_exact,
        "aa_precision": batch.aa_precision,
        "aa_recall": batch.aa_recall,
        "aupcc": area_under_precision_coverage(coverage, precision)
        if batch.n_peptides
        else math.nan,
        "ece": expected_calibration_error(
            scores_array[calibrated], batch.correct[calibrated]
        ),
        "curve": {"coverage": coverage.tolist(), "precision": precision.tolist()},
    }


# ---------------------------------------------------------------------------
# Files: join predictions to labelled spectra, report, table, plot
# ---------------------------------------------------------------------------


@dataclass
class Joined:
    """One labelled file's spectra joined to their predictions."""

    pairs: list[tuple[str, float, str]] = field(default_factory=list)
    n_unlabelled: int = 0  # no SEQ: left out of every metric
    n_bad_label: int = 0  # a SEQ we cannot use (unknown residue): left out
    n_no_row: int = 0  # labelled, but the predictions have no rank-1 row for it
    n_missed: int = 0  # labelled, and no row or an empty peptide (in the pairs)


def _label_problem(record: Spectrum | Skipped) -> str | None:
    problem = getattr(record, "label_problem", None)
    if problem:
        return problem
    try:
        masses.parse(record.peptide or "")
    except masses.UnknownResidueError as error:
        return str(error)
    return None


def _index_predictions(
    predictions: Iterable[Prediction],
) -> dict[tuple[str, int], Prediction]:
    """Rank-1 predictions keyed by (file name, index); a second row for one is a bug."""
    by_key: dict[tuple[str, int], Prediction] = {}
    for prediction in predictions:
        if prediction.rank != 1:
            continue
        key = (Path(prediction.ref.path).name, prediction.ref.index)
        if key in by_key:
            raise ValueError(f"{prediction.ref}: more than one rank-1 prediction")
        by_key[key] = prediction
    return by_key


def join(
    predictions: Iterable[Prediction], spectra: Iterable[Spectrum | Skipped]
) -> tuple[dict[str, Joined], int]:
    """Pair each labelled spectrum with its rank-1 prediction, by file name and index.

    File names are compared without their folders, because predictions are often
    made from a copy of the labelled file elsewhere. Two labelled files with the
    same name would be ambiguous, so they raise.

    Returns
    -------
    joined
        Per labelled file name, its pairs and counts.
    n_unjoined
        Rank-1 predictions that matched no spectrum, labelled or not (a sign that
        the predictions were made from other files).
    """
    by_key = _index_predictions(predictions)
    joined: dict[str, Joined] = {}
    paths: dict[str, str] = {}
    seen: set[tuple[str, int]] = set()
    for record in spectra:
        name = Path(record.ref.path).name
        if paths.setdefault(name, record.ref.path) != record.ref.path:
            raise ValueError(
                f"labelled files {paths[name]} and {record.ref.path} share the name "
                f"{name!r}; predictions cannot tell them apart"
            )
        counts = joined.setdefault(name, Joined())
        key = (name, record.ref.index)
        seen.add(key)
        if record.peptide is None:
            counts.n_unlabelled += 1
            continue
        if _label_problem(record):
            counts.n_bad_label += 1
            continue
        prediction = by_key.get(key)
        if prediction is None:
            counts.n_no_row += 1
            counts.pairs.append(("", math.nan, record.peptide))
        else:
            counts.pairs.append((prediction.peptide, prediction.score, record.peptide))
        counts.n_missed += not (prediction and prediction.peptide)
    unjoined = [p.ref for key, p in by_key.items() if key not in seen]
    if unjoined:
        log.warning(
            "%d predictions match no labelled spectrum, such as %s",
            len(unjoined),
            ", ".join(str(ref) for ref in unjoined[:3]),
        )
    return joined, len(unjoined)


def evaluate_joined(joined: Mapping[str, Joined]) -> dict[str, Any]:
    """Metrics per labelled file and over all of them (pooled, not averaged)."""
    report: dict[str, Any] = {"files": {}}
    every = Joined()
    for name, counts in joined.items():
        report["files"][name] = _with_counts(evaluate(counts.pairs), counts)
        every.pairs += counts.pairs
        every.n_unlabelled += counts.n_unlabelled
        every.n_bad_label += counts.n_bad_label
        every.n_no_row += counts.n_no_row
        every.n_missed += counts.n_missed
    report["overall"] = _with_counts(evaluate(every.pairs), every)
    return report


def _with_counts(metrics: dict[str, Any], counts: Joined) -> dict[str, Any]:
    curve = metrics.pop("curve")
    return {
        **metrics,
        "n_unlabelled": counts.n_unlabelled,
        "n_bad_label": counts.n_bad_label,
        "n_no_row": counts.n_no_row,
        "n_missed": counts.n_missed,
        "curve": curve,
    }


def evaluate_files(
    predictions_path: str | Path, labelled_paths: Sequence[str | Path]
) -> dict[str, Any]:
    """Evaluate a predictions file (mzTab or CSV) against labelled spectrum files.

    Only rank-1 rows count. Spectra without SEQ, or with a SEQ we cannot use, are
    left out and counted; labelled spectra without a prediction count as missed.
    """
    predictions = io.read_predictions(predictions_path)

    def spectra() -> Iterable[Spectrum | Skipped]:
        for path in labelled_paths:
            yield from io.read_spectra(path)

    joined, n_unjoined = join(predictions, spectra())
    report = evaluate_joined(joined)
    report["predictions"] = str(predictions_path)
    report["n_unjoined_predictions"] = n_unjoined
    return report


_COLUMNS = (
    ("spectra", "n_spectra"),
    ("peptide recall", "peptide_recall"),
    ("peptide precision", "peptide_precision"),
    ("AA precision", "aa_precision"),
    ("AA recall", "aa_recall"),
    ("AUPCC", "aupcc"),
)


def format_table(report: Mapping[str, Any]) -> str:
    """Write the report as a plain text table: a row per labelled file, then overall.

    Ratios have three decimals; an undefined one (nothing to divide by) is "-".
    """
    rows = [["file", *(title for title, _ in _COLUMNS)]]
    named = [*report["files"].items(), ("overall", report["overall"])]
    for name, metrics in named:
        rows.append([name, *(_cell(metrics[key]) for _, key in _COLUMNS)])
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(width) if c == 0 else cell.rjust(width)
            for c, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return "\n".join(lines)


def _cell(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "-" if math.isnan(value) else f"{value:.3f}"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def write_report(report: Mapping[str, Any], json_path: str | Path) -> None:
    """Write the report as JSON; undefined ratios (nan) become null."""
    with open(json_path, "w") as handle:
        json.dump(_json_safe(report), handle, indent=2)
        handle.write("\n")


def plot_precision_coverage(report: Mapping[str, Any], png_path: str | Path) -> None:
    """Draw one precision–coverage curve per file, plus the overall one, to a PNG.

    `report` is what `evaluate_files` returns, or any mapping of name -> metrics
    (or name -> {"coverage", "precision"}). Uses matplotlib's Agg canvas directly,
    so it neither needs a display nor changes pyplot's global backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if "files" in report:
        curves = {**report["files"], "overall": report["overall"]}
    else:
        curves = dict(report)
    figure = Figure(figsize=(5, 4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, metrics in curves.items():
        curve = metrics.get("curve", metrics)
        label = name
        if "aupcc" in metrics and not math.isnan(metrics["aupcc"]):
            label = f"{name} (AUPCC {metrics['aupcc']:.3f})"
        if not curve["coverage"]:
            continue
        axes.step(  # from coverage 0, where the first step begins
            [0.0, *curve["coverage"]],
            [curve["precision"][0], *curve["precision"]],
            where="pre",
            label=label,
            linewidth=2.0 if name == "overall" else 1.0,
        )
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("Coverage (share of labelled spectra)")
    axes.set_ylabel("Peptide precision")
    axes.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    figure.savefig(png_path)
