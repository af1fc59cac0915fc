"""A self-contained HTML report of a sequencing run, and single spectrum plots.

`peptrm report RESULTS SPECTRA... -o report.html` joins our mzTab or CSV to the
spectra it was made from and writes one HTML file with every image embedded
(base64 PNG): the run summary (spectra, sequenced, skipped and why), score and
precursor-ppm histograms, with `SEQ=` labels the metrics table and the
precision-coverage curve, and annotated spectrum plots of the best and worst
scored spectra (b/y ions coloured, per-residue confidence below, a mirror plot
against the true peptide when it is known). `peptrm plot` draws one of them.

Spectrum plots use spectrum_utils (the optional `report` extra). Peptides go to
it as mass-delta ProForma (`masses.to_mass_proforma`): a named modification
would make it look Unimod up online. Figures use matplotlib's Agg canvas, so no
display is needed and pyplot's global backend is left alone.
"""

from __future__ import annotations

import base64
import html
import io as bytes_io
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from peptrm import __version__, evaluate, io, masses

FRAGMENT_TOL_DA = 0.02  # annotation tolerance of the plots (HCD/Orbitrap fragments)
N_EXAMPLES = 3  # best and worst spectra drawn by default
MAX_SKIP_REASONS = 10  # distinct skip reasons listed; the rest are counted


class ReportError(ValueError):
    """The report cannot be made (no spectra join, an index that is not there)."""


@dataclass
class Entry:
    """One spectrum with its rank-1 prediction (None when the run has no row)."""

    spectrum: io.Spectrum | io.Skipped
    prediction: io.Prediction | None


def _key(ref: io.SpectrumRef) -> tuple[str, int]:
    return Path(ref.path).name, ref.index


def join(
    predictions: Iterable[io.Prediction], spectra: Iterable[io.Spectrum | io.Skipped]
) -> list[Entry]:
    """Pair each spectrum with its rank-1 prediction by (file name, index).

    Raises
    ------
    ReportError
        When no prediction joins any spectrum (the wrong spectrum files).
    """
    by_key = {_key(p.ref): p for p in predictions if p.rank == 1}
    entries = [Entry(s, by_key.get(_key(s.ref))) for s in spectra]
    if by_key and not any(e.prediction for e in entries):
        raise ReportError(
            "no prediction joins any of the given spectra (they join by file name "
            "and spectrum index): were the results made from these files?"
        )
    return entries


def load(
    results: str | Path, spectra_paths: Sequence[str | Path]
) -> tuple[list[io.Prediction], list[Entry]]:
    """Read a results file and the spectrum files it was made from, joined."""
    predictions = io.read_predictions(results)
    spectra = [r for path in spectra_paths for r in io.read_spectra(path)]
    return predictions, join(predictions, spectra)


# --- figures ---


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure: Any) -> bytes:
    """A figure as PNG bytes."""
    buffer = bytes_io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def histogram(values: Sequence[float], xlabel: str, bins: int = 30) -> bytes:
    """A PNG histogram of the finite `values` (an empty plot when there are none)."""
    figure = _figure(5, 3)
    axes = figure.add_subplot()
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if finite:
        axes.hist(finite, bins=bins, color="#4477aa")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("spectra")
    return png_bytes(figure)


def _spectrum_utils() -> tuple[Any, Any]:
    try:
        import spectrum_utils.plot as sup
        import spectrum_utils.spectrum as sus
    except ImportError as error:  # the optional extra
        raise ReportError(
            "spectrum plots need spectrum_utils: pip install 'peptrm[report]'"
        ) from error
    return sus, sup


def _annotated(spectrum: io.Spectrum, peptide: str) -> Any:
    """A spectrum_utils spectrum annotated with b/y ions of `peptide`."""
    sus, _ = _spectrum_utils()
    out = sus.MsmsSpectrum(
        str(spectrum.ref),
        spectrum.precursor_mz,
        spectrum.charge,
        np.asarray(spectrum.mz, dtype=np.float64),
        np.asarray(spectrum.intensity, dtype=np.float32),
    )
    return out.annotate_proforma(
        masses.to_mass_proforma(peptide),
        FRAGMENT_TOL_DA,
        "Da",
        ion_types="by",
        max_ion_charge=max(1, min(2, spectrum.charge - 1)),
    )


def spectrum_plot(entry: Entry) -> bytes:
    """The annotated spectrum of an entry's prediction, its residue scores below.

    With a true peptide (`SEQ=`) and a prediction that differs, the lower half
    mirrors the spectrum annotated with the true peptide.
    """
    _, sup = _spectrum_utils()
    spectrum, prediction = entry.spectrum, entry.prediction
    if (
        not isinstance(spectrum, io.Spectrum)
        or not prediction
        or not prediction.peptide
    ):
        raise ReportError(f"{spectrum.ref}: no predicted peptide to draw")
    truth = spectrum.peptide if spectrum.label_problem is None else None
    figure = _figure(10, 6.5)
    grid = figure.add_gridspec(2, 1, height_ratios=[4, 1])
    axes = figure.add_subplot(grid[0])
    predicted = _annotated(spectrum, prediction.peptide)
    if truth and truth != prediction.peptide:
        sup.mirror(predicted, _annotated(spectrum, truth), ax=axes)
        axes.set_title(
            f"{spectrum.ref}\npredicted (top) {prediction.peptide}, score "
            f"{prediction.score:.3f}; true (bottom) {truth}",
            fontsize=9,
        )
    else:
        sup.spectrum(predicted, grid=False, ax=axes)
        verdict = " (= SEQ)" if truth else ""
        axes.set_title(
            f"{spectrum.ref}\n{prediction.peptide}{verdict}, score "
            f"{prediction.score:.3f}",
            fontsize=9,
        )
    _residue_bars(figure.add_subplot(grid[1]), prediction)
    return png_bytes(figure)


def _residue_bars(axes: Any, prediction: io.Prediction) -> None:
    """Per-residue confidence of a prediction as bars labelled by token."""
    tokens = masses.parse(prediction.peptide)
    scores = list(prediction.aa_scores)[: len(tokens)]
    scores += [math.nan] * (len(tokens) - len(scores))
    positions = np.arange(len(tokens))
    colours = ["#228833" if s >= 0.5 else "#ee6677" for s in np.nan_to_num(scores)]
    axes.bar(positions, np.nan_to_num(scores), color=colours)
    axes.set_xticks(positions, tokens, fontsize=7, rotation=90)
    axes.set_ylim(0, 1)
    axes.set_ylabel("residue\nscore", fontsize=8)


# --- the report ---


def summary(predictions: Sequence[io.Prediction]) -> dict[str, Any]:
    """Counts of a run's rank-1 rows: spectra, sequenced, skipped and why."""
    first = [p for p in predictions if p.rank == 1]
    skipped = [
        p.status.removeprefix("skipped: ")
        for p in first
        if p.status.startswith("skipped")
    ]
    reasons = Counter(_reason(text) for text in skipped)
    return {
        "spectra": len(first),
        "sequenced": sum(1 for p in first if p.peptide),
        "skipped": len(skipped),
        "unconstrained": sum(1 for p in first if p.status == "unconstrained"),
        "skip_reasons": reasons.most_common(),
    }


def _reason(status: str) -> str:
    """A skip reason without its spectrum prefix ("file, spectrum i (TITLE=t): ")."""
    head, sep, tail = status.partition("): ")
    if sep and ", spectrum " in head:
        return tail
    head, sep, tail = status.partition(": ")
    return tail if sep and ", spectrum " in head else status


def examples(
    entries: Sequence[Entry], n: int = N_EXAMPLES
) -> tuple[list[Entry], list[Entry]]:
    """The `n` best and `n` worst scored entries with a drawable prediction."""
    drawable = [
        e
        for e in entries
        if isinstance(e.spectrum, io.Spectrum)
        and e.prediction is not None
        and e.prediction.peptide
        and math.isfinite(e.prediction.score)
    ]
    ranked = sorted(drawable, key=lambda e: -e.prediction.score)
    best = ranked[:n]
    worst = [e for e in ranked[::-1][:n] if e not in best]
    return best, worst


def entry_at(entries: Sequence[Entry], index: int, file: str | None = None) -> Entry:
    """The entry of spectrum `index` (in `file`, a name, when several are given)."""
    found = [
        e
        for e in entries
        if e.spectrum.ref.index == index
        and (file is None or Path(e.spectrum.ref.path).name == Path(file).name)
    ]
    if not found:
        raise ReportError(
            f"no spectrum with index {index}" + (f" in {file}" if file else "")
        )
    if len(found) > 1:
        raise ReportError(
            f"spectrum index {index} is in several files; pass --file with one of "
            + ", ".join(Path(e.spectrum.ref.path).name for e in found)
        )
    return found[0]


def _image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _metrics_section(predictions: list[io.Prediction], entries: list[Entry]) -> str:
    labelled = [e.spectrum for e in entries]
    joined, _ = evaluate.join(predictions, labelled)
    report = evaluate.evaluate_joined(joined)
    if not report["overall"]["n_spectra"]:
        return (
            "<p>No <code>SEQ=</code> labels in these spectra: no accuracy to show.</p>"
        )
    buffer = bytes_io.BytesIO()
    evaluate.plot_precision_coverage(report, buffer)
    table = html.escape(evaluate.format_table(report))
    return f"<h2>Accuracy against the SEQ= labels</h2><pre>{table}</pre>" + _image(
        buffer.getvalue(), "precision-coverage curve"
    )


def _examples_section(title: str, chosen: Sequence[Entry]) -> str:
    if not chosen:
        return ""
    parts = [f"<h2>{html.escape(title)}</h2>"]
    for entry in chosen:
        parts.append(
            f"<figure>{_image(spectrum_plot(entry), str(entry.spectrum.ref))}"
            f"<figcaption>{html.escape(str(entry.spectrum.ref))}</figcaption></figure>"
        )
    return "".join(parts)


def refinement_plot(trace: Sequence[Any]) -> bytes:
    """Mean draft confidence and explained intensity after each supervision step."""
    figure = _figure(5, 2.6)
    axes = figure.add_subplot(1, 1, 1)
    steps = [t.step for t in trace]
    axes.plot(steps, [float(np.mean(t.confidence or [0])) for t in trace], "o-",
              label="mean residue confidence")  # fmt: skip
    axes.plot(steps, [t.explained for t in trace], "s-", label="intensity explained")
    axes.set_xlabel("supervision step")
    axes.set_ylim(0, 1)
    axes.set_xticks(steps)
    axes.legend(fontsize=8)
    return png_bytes(figure)


def _refinement_section(chosen: Sequence[Entry], model_dir: str | Path | None) -> str:
    """For each chosen spectrum: its draft after every step, as a table and a plot."""
    from peptrm import preprocess
    from peptrm.sequence import refinement_trace
    from peptrm.weights import load_model

    spectra = [e for e in chosen if isinstance(e.spectrum, io.Spectrum)]
    if not spectra:
        return ""
    model, cfg = load_model(model_dir)
    prepare = preprocess.pipeline(cfg.preprocess)
    parts = ["<h2>The refinement, step by step</h2>"]
    for entry in spectra:
        spectrum = prepare(entry.spectrum)
        if isinstance(spectrum, io.Skipped):
            continue
        trace = refinement_trace(model, spectrum, cfg, FRAGMENT_TOL_DA)
        rows = [
            [
                t.step,
                t.peptide,
                " ".join(f"{c:.2f}" for c in t.confidence),
                f"{t.explained:.3f}",
            ]
            for t in trace
        ]
        truth = (
            f"; true peptide {entry.spectrum.peptide}" if entry.spectrum.peptide else ""
        )
        parts.append(f"<h3>{html.escape(str(entry.spectrum.ref) + truth)}</h3>")
        parts.append(
            _table(rows, ["step", "draft (greedy)", "residue confidence", "explained"])
        )
        parts.append(_image(refinement_plot(trace), "refinement curve"))
    return "".join(parts)


_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
    "img{max-width:100%}figure{margin:1em 0}pre{background:#f6f6f6;padding:8px}"
)


def render(
    results: str | Path,
    predictions: list[io.Prediction],
    entries: list[Entry],
    n_examples: int = N_EXAMPLES,
    chosen: Sequence[Entry] = (),
    model_dir: str | Path | None = None,
) -> str:
    """The report as one HTML document, every image embedded.

    The refinement section runs the model (`model_dir`, default the bundled one)
    on the chosen spectra, or on the best-scored one when none is chosen.
    """
    counts = summary(predictions)
    first = [p for p in predictions if p.rank == 1]
    reasons = counts["skip_reasons"][:MAX_SKIP_REASONS]
    more = len(counts["skip_reasons"]) - len(reasons)
    best, worst = examples(entries, n_examples)
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>PepTRM report: "
        f"{html.escape(Path(results).name)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>PepTRM report: {html.escape(Path(results).name)}</h1>",
        f"<p>PepTRM {__version__}; {len(entries)} spectra read from the spectrum "
        "files.</p>",
        "<h2>Run summary</h2>",
        _table(
            [
                ["spectra (rank-1 rows)", counts["spectra"]],
                ["sequenced", counts["sequenced"]],
                ["skipped", counts["skipped"]],
                ["no mass-fitting peptide (unconstrained)", counts["unconstrained"]],
            ],
            ["", "count"],
        ),
    ]
    if reasons:
        parts.append("<h3>Why spectra were skipped</h3>")
        parts.append(_table(reasons, ["reason", "spectra"]))
        if more:
            parts.append(f"<p>... and {more} more distinct reasons.</p>")
    parts += [
        "<h2>Scores and precursor mass errors</h2>",
        _image(
            histogram([p.score for p in first if p.peptide], "peptide score"),
            "score histogram",
        ),
        _image(
            histogram(
                [p.mass_error_ppm for p in first if p.mass_error_ppm is not None],
                "precursor mass error (ppm)",
            ),
            "precursor ppm histogram",
        ),
        _metrics_section(predictions, entries),
        _examples_section("Chosen spectra", chosen),
        _examples_section("Best scored spectra", best),
        _examples_section("Worst scored spectra", worst),
        _refinement_section(list(chosen) or list(best[:1]), model_dir),
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(
    results: str | Path,
    spectra_paths: Sequence[str | Path],
    output: str | Path,
    n_examples: int = N_EXAMPLES,
    indices: Sequence[int] = (),
    model_dir: str | Path | None = None,
) -> Path:
    """Write the HTML report of `results` (made from `spectra_paths`) to `output`."""
    predictions, entries = load(results, spectra_paths)
    chosen = [entry_at(entries, i) for i in indices]
    text = render(results, predictions, entries, n_examples, chosen, model_dir)
    with io.replace_when_done(output) as path:
        Path(path).write_text(text, encoding="utf-8")
    return Path(output)


def write_plot(
    results: str | Path,
    spectra_paths: Sequence[str | Path],
    index: int,
    output: str | Path,
    file: str | None = None,
) -> Path:
    """Write the annotated plot of spectrum `index` to a PNG."""
    _, entries = load(results, spectra_paths)
    png = spectrum_plot(entry_at(entries, index, file))
    with io.replace_when_done(output) as path:
        Path(path).write_bytes(png)
    return Path(output)
