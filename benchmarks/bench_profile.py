"""Where one spectrum's CPU goes: the pipeline in one process, one thread.

Sequences the dev files batch by batch in this process (`sequence.predict_batch`,
decoding in this process, torch on one thread), after a short warm-up that
loads the compiled search and ms2pip, and prints milliseconds per spectrum:
the whole batch loop, the network, the search and scoring, and inside the
scoring the reranker's candidate features (its own and ms2pip's, without
ms2pip's predictions). No start-up, no worker processes,
no writing: the work each spectrum costs, to compare commits side by side
(run one after the other, in turn, a few times: this machine's speed drifts).
With `--profile N` it also prints cProfile's N most expensive functions.

    python benchmarks/bench_profile.py [--spectra 1365] [--profile 25]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch
from common import DEV, load_model_one_process, print_provenance

from peptrm import io, preprocess, rerank, sequence
from peptrm.weights import BUNDLED


def main() -> None:
    """Time the dev files through the pipeline; print ms per spectrum by part."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spectra", type=int, default=0, help="first N (0: all)")
    parser.add_argument("--profile", type=int, default=0, help="cProfile's top N")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print_provenance()
    model, cfg = load_model_one_process(None)
    scorers = sequence.load_scorers(BUNDLED)
    prepare = preprocess.pipeline(cfg.preprocess)
    spectra = [
        prepare(record)
        for path in sorted(DEV.glob("*.mgf"))
        for record in io.read_spectra(path)
        if isinstance(record, io.Spectrum)
    ]
    spectra = spectra[: args.spectra or None]
    warm = sequence.RunSummary()
    sequence.predict_batch(model, spectra[:8], cfg, "cpu", 1, warm, scorers)
    features = [0.0]

    def timing(timed):
        def timed_call(*args, **kwargs):
            started = time.perf_counter()
            out = timed(*args, **kwargs)
            features[0] += time.perf_counter() - started
            return out

        return timed_call

    # the reranker looks them up here: its plain features and ms2pip's
    rerank.candidate_features = timing(rerank.candidate_features)
    rerank.predicted_features = timing(rerank.predicted_features)
    summary = sequence.RunSummary()
    profile = cProfile.Profile() if args.profile else None
    size = cfg.decoding.batch_size
    started, cpu = time.perf_counter(), time.process_time()
    if profile:
        profile.enable()
    for start in range(0, len(spectra), size):
        batch = spectra[start : start + size]
        sequence.predict_batch(model, batch, cfg, "cpu", 1, summary, scorers)
    if profile:
        profile.disable()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    n = len(spectra)
    print(f"{n} dev spectra, batch {size}, ms per spectrum:")
    print(f"{'all':>14} {1e3 * wall / n:8.1f}   (CPU {1e3 * cpu / n:.1f})")
    print(f"{'network':>14} {1e3 * summary.model_seconds / n:8.1f}")
    print(f"{'search+score':>14} {1e3 * summary.decode_seconds / n:8.1f}")
    print(f"{'  features':>14} {1e3 * features[0] / n:8.1f}")
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
