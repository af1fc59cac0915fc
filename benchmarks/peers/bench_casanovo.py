"""PepTRM's bundled model beside Casanovo trained from scratch on the same data.

Casanovo (5.2.1) runs in its own virtual environment (created here when missing:
torch 2.13.0 first, so pip does not pull CUDA, then casanovo 5.2.1 and pyarrow
21.0.0). It is trained from scratch on what PepTRM's bundled model saw: the part
of the five training files of `benchmarks/common.py` that PepTRM trains on
(`peptrm.train.training_part`), validated on the peptide-disjoint split PepTRM
holds out (`held_out_split`), plus spectra from PepTRM's simulator on the tryptic
peptides of `../shared/data/fasta`, following the bundled run's curriculum
(`configs/experiments/ion_d64.yaml`). Its config is `casanovo configure`'s,
edited (MassIVE-KB tokenizer for our SEQ= notation, CPU, one thread, short
warm-up, validation once an epoch); training stops at a wall-clock budget, the
bundled model's 100 minutes on one CPU thread (network and annotator; `--quick`:
3 minutes).

Both tools then sequence `../shared/data/dev` (`--quick`: the first 100 spectra
of each file) in a process of their own on one thread with the same batch size,
and `peptrm evaluate` scores both. Casanovo's mzTab is converted to PepTRM's CSV
first (its modifications back to our notation, its rows checked against the
spectra they claim). One table: parameters, training time, AA precision, AA
recall, peptide recall, AUPCC, spectra/s, and PepTRM / Casanovo.

    python benchmarks/peers/bench_casanovo.py --quick
    python benchmarks/peers/bench_casanovo.py            # the full run, ~2 h
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import pickle
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import yaml

# This checkout's peptrm (not an installed one) and benchmarks/common.py.
sys.path[:0] = [
    str(Path(__file__).resolve().parents[2]),
    str(Path(__file__).resolve().parents[1]),
]
from common import DEV, SHARED, TRAIN_FILES, print_provenance  # noqa: E402

from peptrm import masses, preprocess, simulate, train  # noqa: E402
from peptrm.io import Skipped, Spectrum, read_spectra  # noqa: E402
from peptrm.io.results import CSV_COLUMNS  # noqa: E402
from peptrm.weights import BUNDLED, model_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DRIVER = HERE / "casanovo_driver.py"
BUNDLED_RUN = ROOT / "configs" / "experiments" / "ion_d64.yaml"
FASTA = sorted((SHARED / "fasta").glob("*.fasta"))
CASANOVO = "casanovo==5.2.1"
PINS = ("torch==2.13.0", (CASANOVO, "pyarrow==21.0.0"))  # installed in this order
# The bundled model (README.md, "The bundled model"): the ion-evidence network's
# 2,400 batches of 32 (5,165 s on one CPU thread, checkpoints/ion_d64/metrics.csv,
# train/wall_s at batch 2,399) plus its peak annotator's 4,000 steps (859 s,
# checkpoints/annotator/metrics.csv at step 3,999). Casanovo gets the same
# wall-clock and the network's data mix.
BUNDLED_SECONDS = 5165 + 859
BUNDLED_BATCHES = 2400
QUICK_SECONDS = 180
QUICK_SHARE = 0.1  # --quick simulates this share of the bundled run's spectra
QUICK_DEV = 100  # --quick sequences the first spectra of each dev file
# depthcharge writes PepTRM's N-terminal "+43.006-17.027" as a mass, not a name.
# Casanovo's model keys, settable from the command line (default: Casanovo's own).
ARCHITECTURE = ("dim_model", "n_head", "dim_feedforward", "n_layers")
CASANOVO_MASS_TOKENS = {"[+25.980265]-": "+43.006-17.027"}
NO_ROW = "no Casanovo PSM (skipped, or no peptide ended within max_peptide_len)"
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}


# ---------------------------------------------------------------------------
# Casanovo's environment
# ---------------------------------------------------------------------------
def ensure_venv(venv: Path) -> Path:
    """Casanovo's python, creating its virtual environment when it is missing."""
    python = venv / "bin" / "python"
    if (venv / "bin" / "casanovo").exists():
        return python
    print(f"creating Casanovo's virtual environment in {venv}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    torch_pin, rest = PINS
    pip = [str(python), "-m", "pip", "install"]
    subprocess.run([*pip, torch_pin], check=True)  # first: no CUDA wheels
    subprocess.run([*pip, *rest], check=True)
    return python


def casanovo_env(cache: Path) -> dict[str, str]:
    """One thread, and a cache folder of our own for spectrum_utils' Unimod table."""
    return {**os.environ, **ONE_THREAD, "XDG_CACHE_HOME": str(cache)}


def seed_unimod_cache(cache: Path) -> Path:
    """Write the Unimod entries Casanovo's mzTab writer looks up, so it stays offline.

    Casanovo 5.2.1 writes each PSM's `modifications` through spectrum_utils, which
    resolves a named modification (``M[Oxidation]``) against Unimod and downloads
    unimod.obo when its cache lacks it: offline, `casanovo sequence` crashes on
    the first modified prediction. spectrum_utils reads a cached vocabulary
    without checking its date when it comes from unimod.org, so a cache of the
    names our vocabulary uses (`masses.UNIMOD`, masses from `masses`) suffices.
    """
    by_accession: dict[str, tuple[float, str]] = {}
    by_name: dict[str, tuple[float, str]] = {}
    for token, entries in masses.UNIMOD.items():
        if len(entries) != 1:
            continue  # a label of two modifications: each has its own entry
        number, name = entries[0]
        delta = masses.modification_delta(token)
        by_accession[f"UNIMOD:{number}"] = (delta, name)
        by_name[name] = (delta, f"UNIMOD:{number}")
    path = cache / "spectrum_utils" / "UNIMOD.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        now = datetime.datetime.now(datetime.UTC)
        pickle.dump(((by_accession, by_name), now), handle)
    return path


def casanovo_version(python: Path) -> str:
    """The installed Casanovo version (read from package metadata, no import)."""
    code = "import importlib.metadata as m; print(m.version('casanovo'))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


# ---------------------------------------------------------------------------
# Training data: the bundled model's real and simulated spectra, as MGF
# ---------------------------------------------------------------------------
def write_mgf(path: Path, spectra: Iterable[Spectrum]) -> int:
    """Write labelled spectra as MGF with SEQ= in our (Casanovo) notation."""
    n = 0
    with open(path, "w") as handle:
        for s in spectra:
            handle.write("BEGIN IONS\n")
            handle.write(
                f"TITLE={s.ref.title or f'{Path(s.ref.path).name}:{s.ref.index}'}\n"
            )
            handle.write(f"PEPMASS={s.precursor_mz:.6f}\n")
            handle.write(f"CHARGE={s.charge}+\n")
            handle.write(f"SEQ={s.peptide}\n")
            for mz, intensity in zip(s.mz, s.intensity, strict=True):
                handle.write(f"{mz:.5f} {intensity:.6g}\n")
            handle.write("END IONS\n")
            n += 1
    return n


def raw_records(chosen: Sequence[Spectrum]) -> list[Spectrum]:
    """The spectra of `chosen` as read from their files, before PepTRM's preprocessing.

    `training_part` and `held_out_split` return preprocessed spectra; Casanovo
    preprocesses itself, so it gets the records as the files have them.
    """
    wanted = {(str(s.ref.path), s.ref.index) for s in chosen}
    paths = dict.fromkeys(str(s.ref.path) for s in chosen)
    return [
        record
        for path in paths
        for record in read_spectra(path)
        if isinstance(record, Spectrum) and (path, record.ref.index) in wanted
    ]


def simulated_spectra(
    cfg, peptides: Sequence[str], real, share: float
) -> list[Spectrum]:
    """PepTRM's simulated training spectra, `share` of the bundled run's.

    Follows `train.TrainingStream.make_batch` over the bundled run's batches: its
    real-spectrum share, difficulty and length curriculum per batch, and its
    preprocessing check; the spectra are kept raw. With `share` < 1 the batches
    are spread evenly over the run so the whole curriculum is seen.
    """
    stream = train.TrainingStream(cfg, peptides, real)
    prepare = preprocess.pipeline(cfg.preprocess)
    size = cfg.training.batch_size
    n_batches = max(1, round(BUNDLED_BATCHES * share))
    out: list[Spectrum] = []
    for position in np.linspace(0, BUNDLED_BATCHES - 1, n_batches).round().astype(int):
        rng = np.random.default_rng([cfg.training.seed, int(position)])
        real_share, difficulty = stream.schedule(int(position))
        n_simulated = size - int(rng.binomial(size, real_share))
        n_allowed = int(
            np.searchsorted(stream.lengths, stream.longest(difficulty), "right")
        )
        allowed = stream.by_length[: max(n_allowed, 1)]
        kept = 0
        while kept < n_simulated:
            for s in simulate.simulate_batch(
                allowed, n_simulated - kept, rng, cfg.simulation, difficulty
            ):
                if not isinstance(prepare(s), Skipped):
                    out.append(s)
                    kept += 1
    return out


def write_training_data(work: Path, share: float) -> dict[str, int]:
    """train.mgf (training part + simulated) and val.mgf (held-out split)."""
    cfg = model_config(BUNDLED, BUNDLED_RUN)
    part = train.training_part(TRAIN_FILES, cfg)
    held_out = train.held_out_split(TRAIN_FILES, cfg)
    peptides = simulate.digest_fasta(FASTA, cfg.simulation)
    simulated = simulated_spectra(cfg, peptides, part, share)
    rng = np.random.default_rng(cfg.training.seed)
    mixed = raw_records(part) + simulated
    mixed = [mixed[i] for i in rng.permutation(len(mixed))]
    counts = {
        "real": len(part),
        "simulated": len(simulated),
        "train": write_mgf(work / "train.mgf", mixed),
        "val": write_mgf(work / "val.mgf", raw_records(held_out)),
    }
    return counts


# ---------------------------------------------------------------------------
# Casanovo: configure, train, sequence, convert
# ---------------------------------------------------------------------------
def run_casanovo(
    python: Path, args: Sequence[str], env: dict, log: Path, driver_args=()
) -> float:
    """Run one Casanovo command through the driver; its wall-clock seconds."""
    command = [str(python), str(DRIVER), *driver_args, "--", *args]
    start = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode:
        tail = log.read_text().splitlines()[-30:]
        raise RuntimeError(f"casanovo {args[0]} failed ({log}):\n" + "\n".join(tail))
    return seconds


def casanovo_config(
    python: Path, work: Path, env: dict, n_train: int, cfg, architecture: dict
) -> Path:
    """`casanovo configure`'s full config, edited for this benchmark.

    `cfg` is the bundled run's PepTRM config (batch sizes, peptide length);
    `architecture` overrides Casanovo's model keys (empty: Casanovo's own).
    """
    run_casanovo(
        python, ["configure", "-d", str(work), "-o", "casanovo", "-f"], env,
        work / "configure.log",
    )  # fmt: skip
    path = work / "casanovo.yaml"
    config = yaml.safe_load(path.read_text())
    batch_size = cfg.training.batch_size
    steps_per_epoch = max(1, n_train // batch_size)
    config.update(
        massivekb_tokenizer=True,  # reads SEQ= as C+57.021, M+15.995, +42.011...
        accelerator="cpu",
        devices=1,
        train_batch_size=batch_size,  # the bundled model's batch
        predict_batch_size=cfg.decoding.batch_size,  # PepTRM's inference batch
        # PepTRM drafts at most max_length residues; Casanovo's 100 makes an
        # undertrained model (which never stops) decode 100 steps per spectrum,
        # each re-running the whole decoder: ten times the time of 32.
        max_peptide_len=cfg.model.max_length,
        max_epochs=1000,  # the wall-clock budget stops training, not epochs
        # Validate about once an epoch; a little under one, since Casanovo drops
        # spectra it cannot use (over max_charge, too few peaks).
        val_check_interval=max(1, int(0.9 * steps_per_epoch)),
        # Casanovo's warm-up (100,000 steps) and cosine period are for days of
        # GPU training; a few hundred CPU steps would never leave the warm-up.
        warmup_iters=100,
        cosine_schedule_period_iters=20_000,
        **architecture,
    )
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def train_casanovo(
    python: Path, work: Path, env: dict, config: Path, budget_s: float
) -> dict:
    """Train from scratch to `budget_s` seconds of fitting; the run's figures."""
    ckpt_dir = work / "casanovo_train"
    report = work / "casanovo_fit.json"
    end = ckpt_dir / "budget_end.ckpt"
    seconds = run_casanovo(
        python,
        ["train", str(work / "train.mgf"), "-p", str(work / "val.mgf"),
         "-c", str(config), "-d", str(ckpt_dir), "-o", "casanovo", "-f"],
        env,
        work / "train.log",
        ["--max-time-s", str(budget_s), "--report", str(report),
         "--end-checkpoint", str(end)],
    )  # fmt: skip
    fit = json.loads(report.read_text())
    fit["process_seconds"] = seconds
    return fit


def from_casanovo_proforma(sequence: str) -> str:
    """Casanovo's ProForma peptide (``[Acetyl]-M[Oxidation]K``) in our notation.

    The names are the inverse of `masses.to_proforma` (the same Unimod names
    depthcharge's MassIVE-KB tokenizer writes), plus depthcharge's mass for
    carbamylation with ammonia loss. An unknown modification raises.
    """
    names = {masses.to_proforma([t]): t for t in masses.UNIMOD}
    names.update(CASANOVO_MASS_TOKENS)
    tokens = []
    n_term = re.match(r"^((?:\[[^\]]+\])+-)", sequence)
    if n_term:
        tokens.append(names[n_term.group(1)])
        sequence = sequence[n_term.end() :]
    for residue, mod in re.findall(r"([A-Z])((?:\[[^\]]+\])?)", sequence):
        tokens.append(names[residue + mod] if mod else residue)
    return masses.format_peptide(tokens)


def read_casanovo_mztab(path: Path) -> list[dict[str, str]]:
    """PSM rows of Casanovo's mzTab, with `file` set from its ms_run locations."""
    runs: dict[str, str] = {}
    header: list[str] = []
    rows = []
    for line in path.read_text().splitlines():
        cells = line.split("\t")
        if cells[0] == "MTD" and cells[1].endswith("-location"):
            runs[cells[1].split("-")[0]] = cells[2].removeprefix("file://")
        elif cells[0] == "PSH":
            header = cells[1:]
        elif cells[0] == "PSM":
            row = dict(zip(header, cells[1:], strict=True))
            run, _, spectrum = row["spectra_ref"].partition(":")
            row["file"], row["index"] = runs[run], spectrum.removeprefix("index=")
            rows.append(row)
    return rows


def convert_casanovo(mztab: Path, inputs: Sequence[Path], csv_path: Path) -> int:
    """Casanovo's mzTab as PepTRM's prediction CSV, which `peptrm evaluate` reads.

    Each row joins its spectrum by (file, 0-based index); its precursor m/z is
    checked against that spectrum's, so a shifted index cannot pass unnoticed.
    A spectrum Casanovo wrote no row for (it skipped it, or its peptide never
    ended within `max_peptide_len`) gets a row with an empty peptide, so it counts
    as unpredicted, as PepTRM's own rows do.
    """
    precursors = {
        (str(path.resolve()), r.ref.index): r.precursor_mz
        for path in inputs
        for r in read_spectra(path)
    }
    rows = read_casanovo_mztab(mztab)
    predicted = set()
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            key = (str(Path(row["file"]).resolve()), int(row["index"]))
            expected = precursors.get(key)
            exp_mz = float(row["exp_mass_to_charge"])
            if expected is None or abs(expected - exp_mz) > 0.01:
                raise ValueError(
                    f"{mztab}: PSM for {key} has precursor {exp_mz}, the spectrum "
                    f"{expected}: Casanovo's index does not match ours"
                )
            peptide = from_casanovo_proforma(
                row["opt_global_cv_MS:1003169_proforma_peptidoform_sequence"]
            )
            values = {
                "file": row["file"],
                "index": row["index"],
                "rank": 1,
                "peptide": peptide,
                "proforma": masses.to_proforma(peptide),
                "score": row["search_engine_score[1]"],
                "aa_scores": row["opt_global_aa_scores"],
                "charge": row["charge"],
                "precursor_mz": row["exp_mass_to_charge"],
                "calc_mz": row["calc_mass_to_charge"],
            }
            writer.writerow([values.get(column, "") for column in CSV_COLUMNS])
            predicted.add(key)
        for path, index in sorted(set(precursors) - predicted):
            values = {"file": path, "index": index, "rank": 1, "status": NO_ROW}
            writer.writerow([values.get(column, "") for column in CSV_COLUMNS])
    return len(rows)


# ---------------------------------------------------------------------------
# PepTRM, evaluation, the table
# ---------------------------------------------------------------------------
def peptrm(args: Sequence[str], log: Path) -> float:
    """Run `python -m peptrm ARGS` from this checkout on one thread; its seconds."""
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run(
            [sys.executable, "-m", "peptrm", *args],
            env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    if done.returncode:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"peptrm {args[0]} failed ({log}):\n{tail}")
    return seconds


def evaluate(predictions: Path, labelled: Sequence[Path], work: Path) -> dict:
    """`peptrm evaluate`'s overall figures for a predictions file."""
    report = predictions.with_suffix(".eval.json")
    peptrm(
        ["evaluate", str(predictions), *map(str, labelled), "-o", str(report),
         "--plot", str(predictions.with_suffix(".pc.png"))],
        work / f"evaluate_{predictions.stem}.log",
    )  # fmt: skip
    return json.loads(report.read_text())["overall"]


def dev_inputs(work: Path, limit: int | None) -> list[Path]:
    """The dev files, or copies of their first `limit` spectra (same names, indexes)."""
    files = sorted(DEV.glob("*.mgf"))
    if limit is None:
        return files
    subset = work / "dev"
    subset.mkdir(exist_ok=True)
    out = []
    for path in files:
        blocks = re.findall(r"BEGIN IONS.*?END IONS\n", path.read_text(), re.S)
        (subset / path.name).write_text("".join(blocks[:limit]))
        out.append(subset / path.name)
    return out


def peptrm_parameters() -> int:
    """Parameters of the bundled network."""
    from peptrm.weights import load_model

    model, _ = load_model(None)
    return sum(p.numel() for p in model.parameters())


def _number(value: float | None) -> float:
    """A figure as a float: nan where undefined (JSON null, e.g. no predictions)."""
    return float("nan") if value is None else float(value)


def print_table(rows: dict[str, dict]) -> None:
    """One row per figure: PepTRM, Casanovo and their ratio."""
    figures = (
        ("parameters", "parameters", "{:,.0f}"),
        ("training time (s)", "train_seconds", "{:.0f}"),
        ("AA precision", "aa_precision", "{:.3f}"),
        ("AA recall", "aa_recall", "{:.3f}"),
        ("peptide recall", "peptide_recall", "{:.3f}"),
        ("AUPCC", "aupcc", "{:.3f}"),
        ("spectra/s (whole process)", "spectra_per_s", "{:.2f}"),
    )
    names = list(rows)
    print(f"{'':27}{names[0]:>12}{names[1]:>12}{'PepTRM/Casanovo':>17}")
    for title, key, form in figures:
        a, b = (_number(rows[name][key]) for name in names)
        ratio = f"{a / b:.2f}" if np.isfinite(a / b if b else np.nan) else "-"
        cells = (form.format(x) if np.isfinite(x) else "-" for x in (a, b))
        print(f"{title:27}" + "".join(f"{cell:>12}" for cell in cells) + f"{ratio:>17}")


def main() -> None:
    """Prepare data, train Casanovo, sequence dev with both, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few minutes end to end")
    parser.add_argument("--venv", type=Path, default=Path("/tmp/casanovo_venv"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_casanovo"))
    parser.add_argument("--budget-s", type=float, help="Casanovo's training budget")
    parser.add_argument(
        "--reuse-training",
        action="store_true",
        help="sequence with the checkpoint and figures of this work folder's last "
        "Casanovo training (casanovo_fit.json) instead of training again",
    )
    for key in ARCHITECTURE:
        parser.add_argument(
            f"--{key.replace('_', '-')}", type=int, help=f"Casanovo's {key}"
        )
    args = parser.parse_args()
    architecture = {
        key: getattr(args, key) for key in ARCHITECTURE if getattr(args, key)
    }
    budget = args.budget_s or (QUICK_SECONDS if args.quick else BUNDLED_SECONDS)
    share = QUICK_SHARE if args.quick else 1.0
    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)

    print_provenance()
    python = ensure_venv(args.venv)
    print(
        f"casanovo {casanovo_version(python)} ({args.venv}); {platform.node()}, "
        f"{os.cpu_count()} CPUs; one thread each; {datetime.date.today()}"
    )
    env = casanovo_env(work / "cache")
    seed_unimod_cache(work / "cache")
    cfg = model_config(BUNDLED, BUNDLED_RUN)
    predict_batch = cfg.decoding.batch_size

    start = time.perf_counter()
    counts = write_training_data(work, share)
    print(
        f"training MGF: {counts['real']} real (training part) + {counts['simulated']} "
        f"simulated = {counts['train']}; validation (held-out split): {counts['val']} "
        f"({time.perf_counter() - start:.0f} s)",
        flush=True,
    )
    config = casanovo_config(python, work, env, counts["train"], cfg, architecture)
    shape = yaml.safe_load(config.read_text())
    print(
        "casanovo architecture: " + ", ".join(f"{k} {shape[k]}" for k in ARCHITECTURE)
    )
    if args.reuse_training:
        fit = json.loads((work / "casanovo_fit.json").read_text())
        print(f"reusing {fit['end_checkpoint']} ({fit['global_step']} steps)")
    else:
        print(f"training Casanovo from scratch for {budget:.0f} s ...", flush=True)
        fit = train_casanovo(python, work, env, config, budget)
        print(
            f"casanovo: {fit['global_step']} steps of {cfg.training.batch_size} "
            f"({fit['global_step'] * cfg.training.batch_size / counts['train']:.2f} "
            "epochs), "
            f"{fit['fit_seconds']:.0f} s fitting, {fit['process_seconds']:.0f} s "
            "in all",
            flush=True,
        )

    inputs = dev_inputs(work, QUICK_DEV if args.quick else None)
    n_spectra = sum(1 for path in inputs for _ in read_spectra(path))
    print(f"sequencing {n_spectra} spectra of {', '.join(p.name for p in inputs)}")
    casanovo_seconds = run_casanovo(
        python,
        ["sequence", *map(str, inputs), "-m", fit["end_checkpoint"],
         "-c", str(config), "-d", str(work), "-o", "casanovo_dev", "-f"],
        env,
        work / "sequence_casanovo.log",
    )  # fmt: skip
    casanovo_csv = work / "casanovo_dev.csv"
    convert_casanovo(work / "casanovo_dev.mztab", inputs, casanovo_csv)
    overlay = work / "peptrm_one_process.yaml"
    overlay.write_text(yaml.safe_dump({"decoding": {"workers": 1}}))
    peptrm_out = work / "peptrm_dev.mztab"
    peptrm_seconds = peptrm(
        ["sequence", *map(str, inputs), "-o", str(peptrm_out), "-c", str(overlay)],
        work / "sequence_peptrm.log",
    )

    rows = {
        "PepTRM": {
            **evaluate(peptrm_out, inputs, work),
            "parameters": peptrm_parameters(),
            "train_seconds": BUNDLED_SECONDS,
            "spectra_per_s": n_spectra / peptrm_seconds,
        },
        "Casanovo": {
            **evaluate(casanovo_csv, inputs, work),
            "parameters": fit["n_parameters"],
            "train_seconds": fit["fit_seconds"],
            "spectra_per_s": n_spectra / casanovo_seconds,
        },
    }
    print(
        f"\n{n_spectra} dev spectra; PepTRM: bundled model (trained "
        f"{BUNDLED_SECONDS} s on one CPU thread, not rerun); Casanovo: trained "
        f"here; batch {predict_batch}, one thread; spectra/s over the whole "
        "`sequence` process "
        f"(PepTRM {peptrm_seconds:.1f} s, Casanovo {casanovo_seconds:.1f} s)"
    )
    print_table(rows)
    print(f"outputs in {work}")


if __name__ == "__main__":
    main()
