"""Probe (session 25, not part of PepTRM): charge-3+ peaks read as 1+ too.

At charge 3 and above each peak's 1+ equivalent (2 m - proton, below the
precursor mass) is added as a peak of ALPHA times its intensity, then
benchmarks/bench_refine.py runs with the same arguments:

    ALPHA=0.5 OMP_NUM_THREADS=1 python checkpoints/charge_context/probe_input_1plus.py \
        peptrm/resources --rounds 0 --simulated 300 --charge 3 \
        -c configs/experiments/argmax_nsup8_fade.yaml

The network then reads twice the peaks (collate's P doubled), so ALPHA=0 (the
added peaks are padding) is the baseline at that width.
"""

import dataclasses
import os
import runpy
import sys

import numpy as np

from peptrm import masses, preprocess

ORIGINAL = preprocess.collate
ALPHA = float(os.environ.get("ALPHA", "1.0"))


def collate(spectra, n_peaks, max_length=None):
    """`preprocess.collate` of the spectra with their 1+ equivalents added."""
    out = []
    for s in spectra:
        if s.charge >= 3 and len(s.mz):
            mass = masses.mz_to_mass(s.precursor_mz, s.charge)
            virtual = 2 * s.mz - masses.PROTON
            keep = (virtual < mass) & (virtual > 50)
            mz = np.concatenate([s.mz, virtual[keep]])
            added = ALPHA * s.intensity[keep]
            intensity = np.concatenate([s.intensity, added]).astype(np.float32)
            order = np.argsort(mz, kind="stable")
            s = dataclasses.replace(s, mz=mz[order], intensity=intensity[order])
        out.append(s)
    return ORIGINAL(out, 2 * n_peaks, max_length)


if __name__ == "__main__":
    preprocess.collate = collate
    sys.path.insert(0, "benchmarks")
    sys.argv = ["bench_refine.py"] + sys.argv[1:]
    runpy.run_path("benchmarks/bench_refine.py", run_name="__main__")
