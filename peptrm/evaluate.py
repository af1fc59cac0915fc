"""Evaluate prediction files against labelled spectra: join, score, report.

Reads a predictions file (mzTab or CSV) and labelled spectrum files through `io`,
pairs each labelled spectrum with its rank-1 prediction, and scores the pairs per
file and overall with the metrics of `peptrm.metrics`, whose docstring gives the
matching conventions. A labelled spectrum without a prediction (skipped, empty
peptide or no output row) enters as an empty prediction, so it stays in every
recall denominator and in the coverage denominator. The report is written as a
plain text table, as JSON and as a precision–coverage plot (PNG).

The metric functions are re-exported here, so `evaluate.aa_match` and the like
keep working for callers written before they moved to `peptrm.metrics`.
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
from peptrm.metrics import (
    ECE_BINS,
    PREFIX_TOL_DA,
    RESIDUE_TOL_DA,
    BatchMatch,
    Tokens,
    aa_match,
    aa_match_batch,
    area_under_precision_coverage,
    expected_calibration_error,
    precision_coverage,
    same_peptide,
)

__all__ = [
    # this module's own
    "Joined",
    "evaluate",
    "evaluate_files",
    "evaluate_joined",
    "format_table",
    "join",
    "plot_precision_coverage",
    "write_report",
    # re-exported from peptrm.metrics
    "ECE_BINS",
    "PREFIX_TOL_DA",
    "RESIDUE_TOL_DA",
    "BatchMatch",
    "Tokens",
    "aa_match",
    "aa_match_batch",
    "area_under_precision_coverage",
    "expected_calibration_error",
    "precision_coverage",
    "same_peptide",
]

log = logging.getLogger(__name__)


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


_AMBIGUOUS = object()  # two prediction files share a name: the name cannot join


def _resolved(path: str) -> str:
    return str(Path(path).resolve())


def _index_predictions(predictions: Iterable[Prediction]) -> tuple[dict, dict]:
    """Rank-1 predictions keyed by (resolved path, index) and by (file name, index).

    A second rank-1 row for one spectrum of one file is a bug and raises. Two
    files that share a name mark their (name, index) keys ambiguous.
    """
    by_path: dict[tuple[str, int], Prediction] = {}
    by_name: dict[tuple[str, int], Any] = {}
    for prediction in predictions:
        if prediction.rank != 1:
            continue
        key = (_resolved(prediction.ref.path), prediction.ref.index)
        if key in by_path:
            raise ValueError(f"{prediction.ref}: more than one rank-1 prediction")
        by_path[key] = prediction
        name = (Path(prediction.ref.path).name, prediction.ref.index)
        by_name[name] = _AMBIGUOUS if name in by_name else prediction
    return by_path, by_name


def join(
    predictions: Iterable[Prediction], spectra: Iterable[Spectrum | Skipped]
) -> tuple[dict[str, Joined], int]:
    """Pair each labelled spectrum with its rank-1 prediction, by file and index.

    A prediction joins the spectrum of the same file (resolved path) and index;
    failing that, the spectrum of a file with the same name, because predictions
    are often made from a copy of the labelled file elsewhere. Labelled files
    that share a name are reported under their full paths.

    Returns
    -------
    joined
        Per labelled file (its name, or its path when names collide), its pairs
        and counts.
    n_unjoined
        Rank-1 predictions that matched no spectrum, labelled or not (a sign that
        the predictions were made from other files).
    """
    by_path, by_name = _index_predictions(predictions)
    joined: dict[str, Joined] = {}
    names: dict[str, str] = {}  # file name -> the first labelled path with it
    used: set[int] = set()
    for record in spectra:
        name = Path(record.ref.path).name
        first = names.setdefault(name, _resolved(record.ref.path))
        label = name if first == _resolved(record.ref.path) else record.ref.path
        counts = joined.setdefault(label, Joined())
        prediction = by_path.get((_resolved(record.ref.path), record.ref.index))
        if prediction is None:
            prediction = by_name.get((name, record.ref.index))
            prediction = None if prediction is _AMBIGUOUS else prediction
        if prediction is not None:
            used.add(id(prediction))
        if record.peptide is None:
            counts.n_unlabelled += 1
            continue
        if _label_problem(record):
            counts.n_bad_label += 1
            continue
        if prediction is None:
            counts.n_no_row += 1
            counts.pairs.append(("", math.nan, record.peptide))
        else:
            counts.pairs.append((prediction.peptide, prediction.score, record.peptide))
        counts.n_missed += not (prediction and prediction.peptide)
    unjoined = [p.ref for p in by_path.values() if id(p) not in used]
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
        seen: set[str] = set()
        for path in labelled_paths:
            if _resolved(str(path)) not in seen:  # a file given twice counts once
                seen.add(_resolved(str(path)))
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
    # every residue as labelled (I = L), where peptide recall matches by mass:
    # E and a deamidated Q, D and a deamidated N weigh the same
    ("exact recall", "peptide_recall_exact"),
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
