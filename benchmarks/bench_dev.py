"""Accuracy, refinement curve, decoding and calibration of a model on labelled spectra.

Prints, for one model on the given labelled files (default: ../shared/data/dev):
  * the refinement curve: AA precision, AA recall and peptide recall of the greedy
    and of the configured (mass-constrained + evidence) decode after every
    supervision step t = 1..N_sup (no halting);
  * greedy vs mass-constrained on the model alone vs constrained with fragment
    evidence (the configured decoder), its calibrated scores when the model has a
    calibration.yaml, and constrained + feedback (one extra refinement round with
    the decoded peptide as the draft): peptide recall, AA precision and recall;
  * the share of constrained peptides within the precursor tolerance (must be 100 %);
  * ECE of the peptide score and of per-residue scores, and the AUPCC;
  * halting: mean supervision steps per spectrum; model and decoding throughput.

    python benchmarks/bench_dev.py [--model DIR] [--files A.mgf ... | --held-out]
        [--no-feedback]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from common import DEV, TRAIN_FILES, print_provenance

from peptrm import decoding, evaluate, evidence, masses, preprocess, train
from peptrm.io import Spectrum, read_spectra
from peptrm.metrics import (
    BatchMatch,
    aa_match,
    aa_match_batch,
    expected_calibration_error,
)
from peptrm.sequence import (
    FEEDBACK_STEPS,
    annotate,
    candidates_as_draft,
    load_scorers,
    refine,
)
from peptrm.weights import BUNDLED, load_model


def load(files: list[Path], cfg) -> list[Spectrum]:
    """Labelled, preprocessed spectra (unusable ones are counted and left out)."""
    prepare = preprocess.pipeline(cfg.preprocess)
    kept, left_out = [], 0
    for path in files:
        for record in read_spectra(path):
            if (
                isinstance(record, Spectrum)
                and record.peptide
                and not record.label_problem
            ):
                record = prepare(record)
                if isinstance(record, Spectrum):
                    kept.append(record)
                    continue
            left_out += 1
    print(f"spectra: {len(kept)} usable, {left_out} left out (unlabelled or unusable)")
    return kept


def scores(candidates: list[list[decoding.Candidate]]) -> tuple[list[str], list[float]]:
    """Best peptide and its score per spectrum."""
    peptides = [masses.format_peptide(c[0].tokens) if c else "" for c in candidates]
    return peptides, [c[0].score if c else float("nan") for c in candidates]


def metrics(peptides: list[str], truth: list[str]) -> BatchMatch:
    """AA and peptide match counts."""
    return aa_match_batch(peptides, truth)


def residue_calibration(candidates, truth) -> float:
    """ECE of per-residue scores against per-residue correctness."""
    all_scores, all_correct = [], []
    for options, label in zip(candidates, truth, strict=True):
        if not options or not options[0].tokens:
            continue
        matched, _ = aa_match(options[0].tokens, masses.parse(label))
        all_scores += list(options[0].aa_scores[: len(matched)])
        all_correct += list(matched)
    return expected_calibration_error(np.array(all_scores), np.array(all_correct))


@torch.no_grad()
def all_steps(
    model, batch, n_steps: int, threshold: float
) -> tuple[list, torch.Tensor, torch.Tensor]:
    """Log-probabilities after every step, halting steps and last halt probability.

    No halting is applied; `stop` is where it would have stopped, and the last
    halting probability is a confidence head of its own (scored in the table).
    """
    spectrum = model.encode_batch(batch)
    y, z = model.initial_state(spectrum)
    history, stop = [], torch.full((len(y),), n_steps)
    for k in range(n_steps):
        y, z, halt = model(spectrum, y, z, supervision_step=k)
        history.append(y.log_softmax(dim=-1))
        newly = (torch.sigmoid(halt) >= threshold) & (stop == n_steps)
        stop[newly] = k + 1
    return history, stop, torch.sigmoid(halt)


def main() -> None:
    """Run every measurement and print one block of figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="model folder (default: bundled)")
    parser.add_argument(
        "--files",
        nargs="*",
        type=Path,
        default=sorted(DEV.glob("*.mgf")) if DEV.is_dir() else [],
    )
    parser.add_argument(
        "--held-out",
        action="store_true",
        help="the held-out split of ../shared/data/train instead (to choose settings)",
    )
    parser.add_argument("--no-feedback", action="store_true")
    parser.add_argument(
        "--no-decoded-curve",
        dest="decoded_curve",
        action="store_false",
        help="refinement curve with greedy decoding only (saves N_sup-1 decodes)",
    )
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    print_provenance(args.model)
    model, cfg = load_model(args.model)
    scorers = load_scorers(args.model or BUNDLED)
    calibration, reranker = scorers.calibration, scorers.reranker
    print(
        "scorers: "
        + ("learned cleavage log-odds" if scorers.cleavage else "hand-made evidence")
        + (f", reranker (top {reranker.k})" if reranker else "")
        + (", calibration" if calibration else "")
    )
    model_only = dataclasses.replace(cfg.decoding, evidence_weight=0.0)
    if args.held_out:
        print("files: the held-out split of the training files")
        spectra = train.held_out_split(TRAIN_FILES, cfg)
    else:
        print(f"files: {', '.join(p.name for p in args.files)}")
        spectra = load(args.files, cfg)
    truth = [s.peptide for s in spectra]
    n_sup = cfg.recursion.n_supervision
    greedy_by_step: list[list[str]] = [[] for _ in range(n_sup)]
    decoded_by_step: list[list[str]] = [[] for _ in range(n_sup)]
    constrained, feedback, greedy_final, plain, calibrated = [], [], [], [], []
    hand, reranked = [], []
    by_halting = []  # the constrained peptides scored by the halting head
    halted_steps = []
    model_s = decode_s = 0.0
    for start in range(0, len(spectra), args.batch_size):
        chunk = spectra[start : start + args.batch_size]
        batch = annotate(model, preprocess.collate(chunk, cfg.preprocess.n_peaks))
        t0 = time.perf_counter()
        history, steps, halting = all_steps(
            model, batch, n_sup, cfg.decoding.halt_threshold
        )
        model_s += time.perf_counter() - t0
        halted_steps += steps.tolist()
        peaks = evidence.from_batch(
            batch, cfg.decoding.fragment_tol_da, scorers.cleavage
        )
        if scorers.cleavage is not None:
            hand_peaks = evidence.from_batch(batch, cfg.decoding.fragment_tol_da)
        for k, log_probs in enumerate(history):
            greedy_by_step[k] += scores([[c] for c in decoding.greedy(log_probs)])[0]
            if args.decoded_curve and k < n_sup - 1:  # the last step is timed below
                decoded_by_step[k] += scores(
                    decoding.decode(
                        log_probs, batch["precursor_mass"], cfg.decoding, 1, peaks
                    )
                )[0]
        final = history[-1]
        greedy_final += [[c] for c in decoding.greedy(final)]
        plain += decoding.decode(final, batch["precursor_mass"], model_only, 1)
        t0 = time.perf_counter()
        decoded = decoding.decode(
            final, batch["precursor_mass"], cfg.decoding, 1, peaks
        )
        decode_s += time.perf_counter() - t0
        constrained += decoded
        if scorers.cleavage is not None:
            hand += decoding.decode(
                final, batch["precursor_mass"], cfg.decoding, 1, hand_peaks
            )
        if reranker is not None:
            top = decoding.decode(
                final, batch["precursor_mass"], cfg.decoding, reranker.k, peaks
            )
            for options, peaks_of, charge in zip(
                top, peaks, batch["charge"].tolist(), strict=True
            ):
                reranked.append(scorers.apply(options, peaks_of, charge)[:1])
        by_halting += [
            [dataclasses.replace(c, score=float(p))]
            for (c,), p in zip(decoded, halting.tolist(), strict=True)
        ]
        decoded_by_step[-1] += scores(decoded)[0]
        if calibration is not None:
            for (candidate,), peaks_of in zip(decoded, peaks, strict=True):
                score, residues = calibration.apply(candidate, peaks_of)
                calibrated.append(
                    [dataclasses.replace(candidate, score=score, aa_scores=residues)]
                )
        if not args.no_feedback:
            draft = candidates_as_draft(model, decoded, cfg.model.max_length)
            with torch.no_grad():
                again, _, _ = refine(model, batch, FEEDBACK_STEPS, 1.0, draft=draft)
            feedback += decoding.decode(
                again, batch["precursor_mass"], cfg.decoding, 1, peaks
            )
    n = len(spectra)
    print("\nrefinement curve (decode after each supervision step, no halting):")
    columns = f" {'AA precision':>12} {'AA recall':>9} {'pep recall':>14}"
    print(
        f"{'':>4} {'greedy':^38} {'mass-constrained + evidence':^38}\n"
        f"{'step':>4}{columns}{columns}"
    )
    for k, peptides in enumerate(greedy_by_step):
        line = f"{k + 1:>4}"
        for found in (peptides, decoded_by_step[k]):
            if len(found) == len(truth):
                m = metrics(found, truth)
                line += (
                    f" {m.aa_precision:>12.4f} {m.aa_recall:>9.4f} "
                    f"{m.peptide_recall:>14.4f}"
                )
        print(line)
    print(
        f"\n{'decoder':<28} {'peptide recall':>14} {'AA precision':>12} "
        f"{'AA recall':>9} "
        f"{'AUPCC':>6} {'ECE peptide':>11} {'ECE residue':>11}"
    )
    weight = cfg.decoding.evidence_weight
    rows = [
        ("greedy", greedy_final),
        ("constrained, model only", plain),
    ]
    if hand:
        rows.append((f"constrained + hand evidence {weight:g}", hand))
    kind = "learned cleavage" if scorers.cleavage else "evidence"
    rows.append((f"constrained + {kind} {weight:g}", constrained))
    rows.append(("  same, halting-head scores", by_halting))
    if calibration is not None:
        rows.append(("  same, calibrated scores", calibrated))
    if reranked:
        rows.append((f"  + reranker top {reranker.k} (default)", reranked))
    if feedback:
        rows.append(("constrained + feedback", feedback))
    for name, candidates in rows:
        peptides, peptide_scores = scores(candidates)
        m = metrics(peptides, truth)
        report = evaluate.evaluate(zip(peptides, peptide_scores, truth, strict=True))
        correct = np.array(m.correct, dtype=bool)
        ece = expected_calibration_error(np.array(peptide_scores), correct)
        print(
            f"{name:<28} {m.peptide_recall:>14.4f} {m.aa_precision:>12.4f} "
            f"{m.aa_recall:>9.4f} {report['aupcc']:>6.4f} {ece:>11.4f} "
            f"{residue_calibration(candidates, truth):>11.4f}"
        )
    fits = [c[0] for c in constrained if c and c[0].constrained]
    tol = cfg.decoding.precursor_tol_ppm
    within = sum(abs(c.mass_error_ppm) <= tol * (1 + 1e-6) + 1e-6 for c in fits)
    print(
        f"\nconstrained rows: {len(fits)} of {n} fit a peptide; "
        f"{within} of them within "
        f"{tol:g} ppm ({100 * within / max(len(fits), 1):.2f} %); "
        f"{n - len(fits)} fell back to the unconstrained decode"
    )
    halting = dataclasses.replace(cfg.decoding).halt_threshold
    print(
        f"halting (threshold {halting}): mean {np.mean(halted_steps):.2f} of {n_sup} "
        f"supervision steps per spectrum"
    )
    print(
        f"model: {n / model_s:.1f} spectra/s for all {n_sup} steps; decoding: "
        f"{n / decode_s:.1f} spectra/s; decoding share of model + decode: "
        f"{decode_s / (model_s + decode_s):.1%}"
    )


if __name__ == "__main__":
    main()
