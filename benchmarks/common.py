"""What every benchmark shares: where it ran, and the data it reads.

Run benchmarks from the repository root as `python benchmarks/NAME.py`; this
module sits beside them on the script's path.
"""

from __future__ import annotations

import dataclasses
import platform
import subprocess
import sys
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEV = SHARED / "dev"
TRAIN = SHARED / "train"
# The training files of the bundled model (pominova_mouse_small.mgf is left out:
# its labels do not match its spectra).
TRAIN_FILES = [
    TRAIN / name
    for name in (
        "mzlib_yeast_mzid.mgf",
        "nist_bsa_consensus_iontrap.mgf",
        "pepnet_nist_synthetic_example.mgf",
        "pepnet_nist_synthetic_trainval.mgf",
        "proteometools_kuester_cluster.mgf",
    )
]


def commit() -> str:
    """Short git commit of this checkout, or 'unknown' outside git."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def print_provenance(model: str | None = None) -> None:
    """Print the command line, commit, versions, CPU threads and the model."""
    print(f"command: {' '.join(sys.argv)}")
    print(
        f"commit {commit()}; python {platform.python_version()}; torch "
        f"{torch.__version__}; cpu {platform.machine()}, {torch.get_num_threads()} "
        f"threads; model {model or 'bundled'}"
    )


def load_model_one_process(folder):
    """A saved model and its config with decoding in this process (`workers` 1).

    Benchmarks time one process, and a long one must not hand its searches to
    workers that would import code edited while it runs.
    """
    from peptrm.weights import load_model

    model, cfg = load_model(folder)
    decoding = dataclasses.replace(cfg.decoding, workers=1)
    return model, dataclasses.replace(cfg, decoding=decoding)
