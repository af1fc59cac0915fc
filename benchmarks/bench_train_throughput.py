"""Training throughput of a few model sizes: spectrum-steps per second.

A spectrum-step is one spectrum through one supervised improvement step (T
cycles of n+1 network calls, backward and optimiser update). Data loading is
left out: a fixed simulated batch is reused, so this is the model's cost alone.

    python benchmarks/bench_train_throughput.py [--device cuda] [--seconds 15]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time

import numpy as np
import torch

from peptrm import preprocess, simulate
from peptrm.config import load_config
from peptrm.model import count_parameters
from peptrm.train import PepTRMModule

SIZES = {  # name -> config overrides
    "d256_n4_T2": {
        "model": {"dim": 256},
        "recursion": {"n_latent_steps": 4, "n_cycles": 2},
    },
    "d256_n4_T1": {
        "model": {"dim": 256},
        "recursion": {"n_latent_steps": 4, "n_cycles": 1},
    },
    "d384_n4_T2": {
        "model": {"dim": 384},
        "recursion": {"n_latent_steps": 4, "n_cycles": 2},
    },
    "d128_n6_T3": {
        "model": {"dim": 128},
        "recursion": {"n_latent_steps": 6, "n_cycles": 3},
    },
}


def measure(
    name: str,
    overrides: dict,
    batch_size: int,
    device: str,
    seconds: float,
    peptides: list[str],
) -> dict:
    """Time deep-supervision updates of one size on a fixed batch."""
    cfg = load_config(overrides={**overrides, "training": {"batch_size": batch_size}})
    rng = np.random.default_rng(0)
    prepare = preprocess.pipeline(cfg.preprocess)
    spectra = [
        prepare(s)
        for s in simulate.simulate_batch(peptides, batch_size, rng, cfg.simulation, 1.0)
    ]
    batch = preprocess.collate(spectra, cfg.preprocess.n_peaks, cfg.model.max_length)
    batch = {k: v.to(device) for k, v in batch.items()}
    module = PepTRMModule(cfg).to(device)
    model = module.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(
        device_type=device.split(":")[0],
        dtype=torch.bfloat16,
        enabled=device.startswith("cuda"),
    )
    steps = 0
    started = None
    while True:
        y = z = None
        for k in range(cfg.recursion.n_supervision):
            with autocast:
                spectrum = model.encode_batch(batch)
                if y is None:
                    y, z = model.initial_state(spectrum)
                y, z, halt = model(spectrum, y, z, supervision_step=k)
                loss = module.step_loss(y, halt, batch)["total"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            y, z = y.detach(), z.detach()
            steps += 1
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if started is None:  # first batch is warm-up
            started, steps = time.perf_counter(), 0
        elif time.perf_counter() - started > seconds:
            break
    elapsed = time.perf_counter() - started
    return {
        "size": name,
        "params_M": count_parameters(model) / 1e6,
        "updates_per_s": steps / elapsed,
        "spectrum_steps_per_s": steps * batch_size / elapsed,
    }


def main() -> None:
    """Print a table of training throughput per size."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--sizes", nargs="*", default=list(SIZES))
    parser.add_argument("--fasta", default="../shared/data/fasta/crap_2015-01-30.fasta")
    args = parser.parse_args()
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    device_name = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else platform.processor() or platform.machine()
    )
    print(f"command: {' '.join(sys.argv)}")
    print(
        f"commit {commit}; torch {torch.__version__}; "
        f"device {args.device} ({device_name}); "
        f"threads {torch.get_num_threads()}; batch {args.batch_size}"
    )
    peptides = simulate.digest_fasta([args.fasta], load_config().simulation)
    print(f"{'size':<12} {'params(M)':>9} {'updates/s':>10} {'spectrum-steps/s':>17}")
    for name in args.sizes:
        row = measure(
            name, SIZES[name], args.batch_size, args.device, args.seconds, peptides
        )
        print(
            f"{row['size']:<12} {row['params_M']:>9.2f} {row['updates_per_s']:>10.2f} "
            f"{row['spectrum_steps_per_s']:>17.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
