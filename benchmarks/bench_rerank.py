"""Where accuracy goes: the anatomy of errors, recall@K, and what reranking recovers.

For one model on labelled spectra (default: the held-out split of the training
files; `--files` for dev), decode the search's top K and sort every spectrum into

  * right: the rank-1 peptide is the labelled one;
  * not representable: the label cannot be written in our vocabulary within L
    positions, or does not fit the precursor at any allowed isotope error;
  * search error: the label scores higher under the search's own objective than
    what the search returned (the search missed it);
  * scoring error: the label fits but the objective ranks a wrong peptide above it.

It prints recall@1/5/K of the search, then the same after reranking: with
`--fit`, out-of-fold (5 folds by spectrum, the model never scores a spectrum it
was fitted on); with `--fit-train`, a reranker fitted on the training part of
the training files (what the held-out split is not); otherwise with the
model's shipped reranker (`rerank.txt`). After reranking it also prints the
rank-1 AUPCC, the peptide-score ECE and the reranking time per spectrum.

`--leave-file-out` estimates what dev will see from the training files alone:
each training file's training part is reranked by a reranker (and Platt map)
fitted on the other files' training parts, and the pooled figures are printed
with a line per file. Dev is other files (other labs, instruments, base rates),
and the out-of-fold figures by spectrum are optimistic about it (calibration,
FDR at 5-10 %); leaving whole files out reproduces that, so settings of the
reranker and calibration can be chosen here instead of on dev.

`--ms2pip` (with `--fit`, `--fit-train` or `--leave-file-out`) fits a second
reranker that also reads ms2pip's predicted intensities (`peptrm.predicted`)
and shows the two side by side. A shipped reranker with ms2pip features is
shown beside its plain fallback (what users without ms2pip get).

    python benchmarks/bench_rerank.py [--model DIR] [--files A.mgf ...] [--k 20]
        [--fit | --fit-train | --leave-file-out] [--ms2pip]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
from common import TRAIN_FILES, print_provenance

from peptrm import decoding, evidence, masses, predicted, preprocess, rerank, train
from peptrm.confidence import cleavage_evidence, q_values
from peptrm.io import Spectrum, read_spectra
from peptrm.metrics import (
    area_under_precision_coverage,
    expected_calibration_error,
    precision_coverage,
)
from peptrm.sequence import SCORING_CHUNK, annotate, load_scorers, refine, search_top
from peptrm.weights import BUNDLED, load_model


def load(files: list[Path], cfg) -> list[Spectrum]:
    """Labelled, preprocessed spectra of `files`."""
    prepare = preprocess.pipeline(cfg.preprocess)
    out = []
    for path in files:
        for record in read_spectra(path):
            if isinstance(record, Spectrum) and record.peptide:
                if not record.label_problem:
                    record = prepare(record)
                    if isinstance(record, Spectrum):
                        out.append(record)
    return out


def true_search_score(log_probs, label, precursor, peaks, cfg) -> float | None:
    """The label's score under the search objective, None if it cannot fit."""
    try:
        tokens = masses.encode(label, log_probs.shape[0])
    except ValueError:
        return None
    indices = [int(t) for t in tokens if t != masses.STOP_INDEX]
    candidate = decoding.make_candidate(log_probs, indices, precursor, cfg, True)
    _, _, fits = decoding.closest_isotope(candidate.mass, precursor, cfg)
    if not fits:
        return None
    bonus = np.nansum(cleavage_evidence(candidate, peaks))
    return candidate.log_score + cfg.evidence_weight * bonus


def anatomy(groups, spectra, history, peaks_all, cfg) -> dict[str, int]:
    """Count right / not representable / search / scoring errors at rank 1."""
    counts = dict.fromkeys(("right", "not representable", "search", "scoring"), 0)
    for options, spectrum, log_probs, peaks in zip(
        groups, spectra, history, peaks_all, strict=True
    ):
        if options and rerank.is_correct(options[0], spectrum.peptide):
            counts["right"] += 1
            continue
        precursor = masses.mz_to_mass(spectrum.precursor_mz, spectrum.charge)
        score = true_search_score(log_probs, spectrum.peptide, precursor, peaks, cfg)
        if score is None:
            counts["not representable"] += 1
        elif not options or score > options[0].search_score + 1e-6:
            counts["search"] += 1
        else:
            counts["scoring"] += 1
    return counts


def recall_at(groups, labels, ks) -> dict[int, float]:
    """Share of spectra whose label is among the first k candidates."""
    out = {}
    for k in ks:
        hits = sum(
            any(rerank.is_correct(c, label) for c in options[:k])
            for options, label in zip(groups, labels, strict=True)
        )
        out[k] = hits / len(labels)
    return out


def decode_top(model, cfg, spectra, k, table=None):
    """Top-k candidates, final log-probs and peaks of every spectrum."""
    groups, history, peaks_all = [], [], []
    for start in range(0, len(spectra), 256):
        batch = preprocess.collate(spectra[start : start + 256], cfg.preprocess.n_peaks)
        log_probs, _, _ = refine(
            model,
            batch,
            cfg.inference_steps,
            cfg.decoding.halt_threshold,
            starts=cfg.decoding.first_residue_starts,
        )
        peaks = evidence.from_batch(
            annotate(model, batch), cfg.decoding.fragment_tol_da, table
        )
        groups += search_top(log_probs, batch["precursor_mass"], cfg, k, peaks, k)
        history += list(log_probs.double().numpy())
        peaks_all += peaks
    return groups, history, peaks_all


def fdr_table(groups, labels) -> None:
    """Estimated vs true FDR of the rank-1 peptides at q-value thresholds."""
    scores = np.array([o[0].score if o else np.nan for o in groups])
    right = rank1_right(groups, labels)
    exact = rank1_right(groups, labels, rerank.is_exact)
    q = q_values(scores)
    known = np.isfinite(scores)
    ece = expected_calibration_error(scores[known], right[known])
    ece_exact = expected_calibration_error(scores[known], exact[known])
    print(
        f"\npeptide-score ECE (reranked, calibrated): {ece:.4f} "
        f"(against the exact peptide: {ece_exact:.4f})"
    )
    print(
        f"{'q-value <=':>10} {'accepted':>9} {'estimated FDR':>14} {'true FDR':>9}"
        f"{'exact':>7}"
    )
    for threshold in (0.01, 0.05, 0.10):
        accepted = q <= threshold
        n = int(accepted.sum())
        estimated = float(np.mean(1 - scores[accepted])) if n else float("nan")
        true = float(np.mean(~right[accepted])) if n else float("nan")
        wrong = float(np.mean(~exact[accepted])) if n else float("nan")
        print(f"{threshold:>10.2f} {n:>9} {estimated:>14.4f} {true:>9.4f}{wrong:>7.4f}")


def fit_on_training_part(model, cfg, table, k, feature_sets):
    """Rerankers fitted on the training part of the training files, one per set."""
    fit_on = train.training_part(TRAIN_FILES, cfg)
    started = time.perf_counter()
    fit_groups, _, fit_peaks = decode_top(model, cfg, fit_on, k, table)
    print(
        f"training part: {len(fit_on)} spectra, searched in "
        f"{time.perf_counter() - started:.0f} s"
    )
    rerankers = {}
    for name, features in feature_sets.items():
        started = time.perf_counter()
        rerankers[name], report = rerank.fit(
            fit_groups,
            fit_peaks,
            [s.charge for s in fit_on],
            [s.peptide for s in fit_on],
            k,
            features=features,
        )
        print(f"fitted {name} ({time.perf_counter() - started:.0f} s): {report}")
    return rerankers


def leave_file_out(model, cfg, scorers, k, feature_sets) -> None:
    """Rerank each training file by rerankers fitted on the other files; print."""
    spectra = train.training_part(TRAIN_FILES, cfg)
    started = time.perf_counter()
    groups, _, peaks_all = decode_top(model, cfg, spectra, k, scorers.cleavage)
    print(
        f"training part: {len(spectra)} spectra, searched in "
        f"{time.perf_counter() - started:.0f} s; each file reranked by a reranker "
        "fitted on the other files"
    )
    files = np.array([Path(s.ref.path).name for s in spectra])
    labels = [s.peptide for s in spectra]
    charges = [s.charge for s in spectra]
    pooled: dict[str, list] = {name: [None] * len(spectra) for name in feature_sets}
    for name_of_file in dict.fromkeys(files):
        inside = np.flatnonzero(files == name_of_file)
        outside = np.flatnonzero(files != name_of_file)
        for name, features in feature_sets.items():
            reranker, _ = rerank.fit(
                [groups[i] for i in outside],
                [peaks_all[i] for i in outside],
                [charges[i] for i in outside],
                [labels[i] for i in outside],
                k,
                features=features,
            )
            reranked, _ = rerank_all(
                scorers,
                reranker,
                [groups[i] for i in inside],
                [peaks_all[i] for i in inside],
                [charges[i] for i in inside],
            )
            for i, options in zip(inside, reranked, strict=True):
                pooled[name][i] = options
    print(
        f"\n{'left-out file, reranked':<36}{'spectra':>8}{'right':>7}"
        f"{'recall@1':>10}{'mean score':>11}{'ECE':>8}"
    )
    for name, reranked in pooled.items():
        for which in [*dict.fromkeys(files), "all files"]:
            everything = which == "all files"
            rows = (
                np.arange(len(files)) if everything else np.flatnonzero(files == which)
            )
            part = [reranked[i] for i in rows]
            part_labels = [labels[i] for i in rows]
            right = rank1_right(part, part_labels)
            scores = np.array([o[0].score if o else np.nan for o in part])
            known = np.isfinite(scores)
            ece = expected_calibration_error(scores[known], right[known])
            print(
                f"{name + ', ' + which:<36.36}{len(rows):>8}{int(right.sum()):>7}"
                f"{right.mean():>10.4f}{np.nanmean(scores):>11.4f}{ece:>8.4f}"
            )
    for name, reranked in pooled.items():
        print(
            f"\nFDR, {name}, files left out, pooled (AUPCC "
            f"{aupcc(reranked, labels):.4f}):",
            end="",
        )
        fdr_table(reranked, labels)


def rerank_all(scorers, reranker, groups, peaks_all, charges):
    """Every spectrum's candidates reranked (copies) and the seconds it took."""
    started = time.perf_counter()
    scoring = dataclasses.replace(scorers, reranker=reranker)
    jobs = [
        ([dataclasses.replace(c) for c in options], peaks, charge)
        for options, peaks, charge in zip(groups, peaks_all, charges, strict=True)
    ]
    reranked = []  # in chunks, as `peptrm sequence` scores them
    for start in range(0, len(jobs), SCORING_CHUNK):
        reranked += scoring.apply_many(jobs[start : start + SCORING_CHUNK])
    return reranked, time.perf_counter() - started


def rank1_right(groups, labels, right=rerank.is_correct) -> np.ndarray:
    """Whether each spectrum's first candidate is its label.

    `right` is `rerank.is_correct` (residues by mass, Casanovo's recall: E for
    a deamidated Q passes) or `rerank.is_exact` (token for token).
    """
    return np.array(
        [
            bool(o) and right(o[0], label)
            for o, label in zip(groups, labels, strict=True)
        ]
    )


def aupcc(groups, labels) -> float:
    """Area under the precision-coverage curve of the rank-1 peptide scores."""
    scores = np.array([o[0].score if o else np.nan for o in groups])
    coverage, precision = precision_coverage(scores, rank1_right(groups, labels))
    return area_under_precision_coverage(coverage, precision)


def main() -> None:
    """Decode the top K, print the anatomy and recall@K before and after reranking."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model")
    parser.add_argument("--files", nargs="*", type=Path)
    parser.add_argument(
        "--k", type=int, default=rerank.DEFAULT_K, help="candidates reranked"
    )
    parser.add_argument("--fit", action="store_true", help="out-of-fold reranking")
    parser.add_argument(
        "--fit-train", action="store_true", help="fit on the training part first"
    )
    parser.add_argument(
        "--leave-file-out",
        action="store_true",
        help="rerank each training file by a reranker fitted on the other files "
        "(the training part; an honest proxy for dev's calibration and FDR)",
    )
    parser.add_argument(
        "--ms2pip",
        action="store_true",
        help="with --fit or --fit-train: also fit with ms2pip's predicted-intensity "
        "features and compare side by side",
    )
    parser.add_argument(
        "--evidence-weight",
        type=float,
        help="search with this decoding.evidence_weight instead of the model's",
    )
    parser.add_argument(
        "--supervision-steps",
        type=int,
        help="run this decoding.supervision_steps instead of the configured one",
    )
    args = parser.parse_args()
    print_provenance(args.model)
    model, cfg = load_model(args.model)
    changes = {
        "evidence_weight": args.evidence_weight,
        "supervision_steps": args.supervision_steps,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    cfg = dataclasses.replace(
        cfg, decoding=dataclasses.replace(cfg.decoding, **changes)
    )
    print(f"evidence weight: {cfg.decoding.evidence_weight:g}")
    print(f"supervision steps: {cfg.inference_steps}")
    scorers = load_scorers(args.model or BUNDLED)
    table = scorers.cleavage
    print("search evidence: " + ("learned cleavage log-odds" if table else "hand-made"))
    feature_sets = {"ours": rerank.FEATURES}
    if args.ms2pip:
        if not predicted.available():
            raise SystemExit(f"--ms2pip needs ms2pip: {predicted.INSTALL}")
        feature_sets["ours + ms2pip"] = rerank.PREDICTED_FEATURES
    if args.leave_file_out:
        leave_file_out(model, cfg, scorers, args.k, feature_sets)
        return
    if args.files:
        print(f"files: {', '.join(p.name for p in args.files)}")
        spectra = load(args.files, cfg)
    else:
        print("files: the held-out split of the training files")
        spectra = train.held_out_split(TRAIN_FILES, cfg)
    labels = [s.peptide for s in spectra]
    started = time.perf_counter()
    groups, history, peaks_all = decode_top(model, cfg, spectra, args.k, table)
    seconds = time.perf_counter() - started
    n = len(spectra)
    print(f"{n} spectra; model + top-{args.k} search {seconds:.1f} s")
    ks = (1, 5, args.k)
    search_recall = recall_at(groups, labels, ks)
    print(
        f"\n{'':<30}" + "".join(f"{'recall@' + str(k):>11}" for k in ks) + "    exact@1"
    )
    print(
        f"{'search order':<30}"
        + "".join(f"{search_recall[k]:>11.4f}" for k in ks)
        + f"{rank1_right(groups, labels, rerank.is_exact).mean():>11.4f}"
    )
    counts = anatomy(groups, spectra, history, peaks_all, cfg.decoding)
    charges = [s.charge for s in spectra]
    if args.fit:
        for name, features in feature_sets.items():
            started = time.perf_counter()
            _, report = rerank.fit(
                groups, peaks_all, charges, labels, args.k, features=features
            )
            out_of_fold = report["reranked_rank1_recall_out_of_fold"]
            print(f"{'reranked out-of-fold, ' + name:<30}{out_of_fold:>11.4f}")
            print(f"  fit report ({time.perf_counter() - started:.0f} s): {report}")
    rerankers = {}
    if args.fit_train:
        rerankers = fit_on_training_part(model, cfg, table, args.k, feature_sets)
    elif not args.fit and scorers.reranker is not None:
        rerankers = {"shipped": scorers.reranker}
    results = {}
    for name, reranker in rerankers.items():
        reranked, spent = rerank_all(scorers, reranker, groups, peaks_all, charges)
        results[name] = reranked, spent
        if name == "shipped" and reranker.fallback is not None:
            results["shipped, without ms2pip"] = rerank_all(
                scorers, reranker.fallback, groups, peaks_all, charges
            )
    if results:
        print(
            f"\n{'reranked':<30}"
            + "".join(f"{'recall@' + str(k):>11}" for k in ks)
            + f"{'AUPCC':>8}{'ECE':>8}{'ms/spectrum':>13}    exact@1"
        )
    for name, (reranked, spent) in results.items():
        after = recall_at(reranked, labels, ks)
        scores = np.array([o[0].score if o else np.nan for o in reranked])
        right = rank1_right(reranked, labels)
        ece = expected_calibration_error(
            scores[np.isfinite(scores)], right[np.isfinite(scores)]
        )
        print(
            f"{name:<30}"
            + "".join(f"{after[k]:>11.4f}" for k in ks)
            + f"{aupcc(reranked, labels):>8.4f}{ece:>8.4f}{1000 * spent / n:>13.1f}"
            + f"{rank1_right(reranked, labels, rerank.is_exact).mean():>11.4f}"
        )
    if len(results) > 1:
        names = list(results)
        base = rank1_right(results[names[0]][0], labels)
        for name in names[1:]:
            other = rank1_right(results[name][0], labels)
            gained, lost = int((other & ~base).sum()), int((base & ~other).sum())
            print(f"rank 1, {name} vs {names[0]}: {gained} gained, {lost} lost")
    for name, (reranked, _) in results.items():
        print(f"\nFDR, {name}:", end="")
        fdr_table(reranked, labels)
    print("\nanatomy at rank 1 (search order" + (", reranked)" if results else ")"))
    after_counts = {
        name: anatomy(reranked, spectra, history, peaks_all, cfg.decoding)
        for name, (reranked, _) in results.items()
    }
    for name, value in counts.items():
        line = f"  {name:<18} {value:>5} ({value / n:.3f})"
        for which, numbers in after_counts.items():
            line += f"   {which} {numbers[name]:>5} ({numbers[name] / n:.3f})"
        print(line)


if __name__ == "__main__":
    main()
