"""End to end: train a tiny model, resume it, sequence, evaluate; and the errors."""

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from peptrm import __version__, cli
from peptrm.config import load_config
from peptrm.io import InputError

DATA = Path(__file__).parent / "data"
TINY = {
    "model": {"dim": 32, "n_heads": 4, "n_encoder_layers": 1, "n_core_layers": 1},
    "recursion": {"n_latent_steps": 1, "n_cycles": 2, "n_supervision": 2},
    "training": {
        "batch_size": 8,
        "max_steps": 4,
        "warmup_steps": 2,
        "val_every_steps": 2,
        "checkpoint_every_steps": 2,
        "num_workers": 0,
    },
    "preprocess": {"n_peaks": 50},
}
# Bovine serum albumin (UniProt P02769), residues 1-120.
BSA = (
    "MKWVTFISLLLLFSSAYSRGVFRRDTHKSEIAHRFKDLGEEHFKGLVLIAFSQYLQQCPF"
    "DEHVKLVNELTEFAKTCVADESHAGCEKSLHTLFGDELCKVASLRETYGDMADCCEKQEP"
)
CSV_HEADER = [
    "file",
    "index",
    "title",
    "retention_time",
    "rank",
    "peptide",
    "proforma",
    "score",
    "aa_scores",
    "charge",
    "precursor_mz",
    "calc_mz",
    "mass_error_ppm",
    "isotope",
    "n_steps",
    "status",
    "q_value",
]
BROKEN_SKIPPED = {1, 2, 3, 4, 5, 8, 9}  # see tests/data/README.md


@pytest.fixture(autouse=True)
def restore_logging():
    """`cli.main` points the root logger at this test's stderr; undo that after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def _psm_rows(path: Path) -> list[dict[str, str]]:
    """PSM rows of an mzTab file as dicts keyed by the PSH header."""
    header, rows = [], []
    for line in path.read_text().splitlines():
        cells = line.split("\t")
        if cells[0] == "PSH":
            header = cells[1:]
        elif cells[0] == "PSM":
            rows.append(dict(zip(header, cells[1:], strict=True)))
    return rows


def _csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def _checkpoint_step(path: Path) -> tuple[int, int]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return checkpoint["global_step"], checkpoint["batches_seen"]


def test_train_resume_sequence_evaluate(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("tiny.yaml").write_text(yaml.safe_dump(TINY))
    Path("tiny.fasta").write_text(
        ">sp|P02769|ALBU_BOVIN Albumin OS=Bos taurus\n" + BSA + "\n"
    )
    train = [str(DATA / "overfit64.mgf"), "--fasta", "tiny.fasta", "-c", "tiny.yaml"]

    # train 4 steps
    assert cli.main(["train", *train, "-o", "RUN", "--no-progress"]) == 0
    for name in ("model/model.safetensors", "model/model.yaml", "checkpoints/end.ckpt"):
        assert (tmp_path / "RUN" / name).is_file(), name
    assert (
        yaml.safe_load(Path("RUN/model/model.yaml").read_text())["model"]["dim"] == 32
    )
    assert _checkpoint_step(Path("RUN/checkpoints/end.ckpt"))[0] == 4

    # resume to step 8: it continues from step 4 rather than starting again
    end = "RUN/checkpoints/end.ckpt"
    resume = ["--resume", end, "--max-steps", "8", "--no-progress"]
    assert cli.main(["train", *train, "-o", "RUN", *resume]) == 0
    steps, batches = _checkpoint_step(Path(end))
    assert steps == 8
    assert batches == 4  # 8 optimiser steps / n_supervision 2: no batch seen twice

    # sequence two files, one of them broken: one rank-1 row per spectrum
    small, broken = str(DATA / "small.mgf"), str(DATA / "broken.mgf")
    capsys.readouterr()
    sequence = ["sequence", small, broken, "-m", "RUN/model", "--no-progress"]
    assert cli.main([*sequence, "-o", "out.mztab"]) == 0
    assert "accuracy against the SEQ= labels" in capsys.readouterr().out
    rows = _psm_rows(Path("out.mztab"))
    assert [r["spectra_ref"] for r in rows] == [
        f"ms_run[{run}]:index={index}" for run in (1, 2) for index in range(10)
    ]
    assert all(r["opt_ms_run[1]_rank"] == "1" for r in rows)
    for index, row in enumerate(rows[10:]):
        status = row["opt_ms_run[1]_status"]
        if index in BROKEN_SKIPPED:
            assert status.startswith("skipped:")
            assert f"broken.mgf, spectrum {index} (TITLE=" in status
            assert row["sequence"] == "null"
        else:
            assert status in ("ok", "unconstrained")
            assert row["sequence"] != "null"
    assert all(r["opt_ms_run[1]_status"] in ("ok", "unconstrained") for r in rows[:10])

    # CSV, chosen by the extension
    assert cli.main([*sequence, "-o", "out.csv"]) == 0
    header, csv_rows = _csv_rows(Path("out.csv"))
    assert header == CSV_HEADER
    assert [(Path(r["file"]).name, int(r["index"])) for r in csv_rows] == [
        (name, index) for name in ("small.mgf", "broken.mgf") for index in range(10)
    ]

    # top-k: up to 3 ranked rows per sequenced spectrum, one per skipped one
    assert cli.main([*sequence, "-o", "top3.csv", "--top-k", "3"]) == 0
    _, top = _csv_rows(Path("top3.csv"))
    by_spectrum: dict[tuple[str, str], list[int]] = {}
    for row in top:
        by_spectrum.setdefault((row["file"], row["index"]), []).append(int(row["rank"]))
    assert len(by_spectrum) == 20
    for (file, index), ranks in by_spectrum.items():
        assert ranks == list(range(1, len(ranks) + 1)) and len(ranks) <= 3
        if file.endswith("broken.mgf") and int(index) in BROKEN_SKIPPED:
            assert ranks == [1]
    assert max(len(ranks) for ranks in by_spectrum.values()) == 3

    # calibrate on labelled spectra: the model folder gains calibration.yaml and
    # sequencing with it writes the calibrated probabilities as scores
    assert cli.main(["calibrate", small, "-m", "RUN/model"]) == 0
    assert Path("RUN/model/calibration.yaml").is_file()
    assert cli.main([*sequence, "-o", "calibrated.csv"]) == 0
    _, calibrated = _csv_rows(Path("calibrated.csv"))
    raw = {(r["file"], r["index"]): r["score"] for r in csv_rows if r["score"]}
    new = {(r["file"], r["index"]): r["score"] for r in calibrated if r["score"]}
    assert raw.keys() == new.keys() and raw != new
    assert all(0 <= float(v) <= 1 for v in new.values())

    # evaluate: a table on stdout, a JSON report and a PNG curve
    capsys.readouterr()
    assert cli.main(["evaluate", "out.mztab", small]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [
        "file",
        "spectra",
        "peptide",
        "recall",
        "peptide",
        "precision",
        "exact",
        "recall",
        "AA",
        "precision",
        "AA",
        "recall",
        "AUPCC",
    ]
    assert [line.split()[:2] for line in table[1:]] == [
        ["small.mgf", "10"],
        ["overall", "10"],
    ]
    report = json.loads(Path("out.eval.json").read_text())
    assert report["overall"]["n_spectra"] == 10
    assert Path("out.pc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_configure_writes_a_loadable_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["configure", "-o", "x.yaml"]) == 0
    assert load_config("x.yaml") == load_config()


def test_version_prints_the_versions(capsys):
    assert cli.main(["version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"peptrm {__version__}, python ")
    assert f"torch {torch.__version__}" in out


def test_python_dash_m_runs_the_same_command_line():
    result = subprocess.run(
        [sys.executable, "-m", "peptrm", "version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"peptrm {__version__}")


def _processes_with(marker: str) -> list[int]:
    """Process ids whose environment holds `marker` (Linux: /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_sequence_exits_at_once_with_every_row_and_no_process_left(tmp_path):
    """`peptrm sequence` ends with `os._exit` (`cli.console`): its output, the
    accuracy table and its log are all written first, and the decoding workers
    (started here: 160 spectra are 5 chunks) and their forkserver are gone soon
    after, not orphaned."""
    import time
    import uuid

    big = tmp_path / "big.mgf"
    demo = (Path(cli.__file__).parent / "resources" / "demo.mgf").read_text()
    big.write_text(demo * 4)
    out = tmp_path / "out.mztab"
    marker = f"PEPTRM_TEST_RUN={uuid.uuid4().hex}"
    name, value = marker.split("=")
    printed, logged = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with printed.open("w") as stdout, logged.open("w") as stderr:  # not pipes:
        code = subprocess.run(  # a process left behind would hold them open
            [sys.executable, "-m", "peptrm", "sequence", str(big), "-o", str(out)]
            + ["--no-progress"],
            stdout=stdout,
            stderr=stderr,
            timeout=600,
            check=False,
            env={**os.environ, name: value},
        ).returncode
    assert code == 0, logged.read_text()
    assert "accuracy against the SEQ= labels in the input:" in printed.read_text()
    assert "160 spectra, 160 sequenced" in logged.read_text()
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert sum(row[0] == "PSM" for row in rows) == 160
    deadline = time.monotonic() + 60
    while _processes_with(marker.encode()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_with(marker.encode()) == []


def _error_lines(err: str, command: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"peptrm {command}:")]


@pytest.mark.parametrize(
    "argv",
    [
        ["sequence", "missing.mgf", "-o", "out.mztab", "--no-progress"],
        ["evaluate", "missing.mztab", str(DATA / "small.mgf")],
    ],
    ids=["sequence", "evaluate"],
)
def test_missing_input_is_one_line_and_exit_code_one(
    tmp_path, monkeypatch, capsys, argv
):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert _error_lines(err, argv[0]) == [
        f"peptrm {argv[0]}: error: {argv[1]}: no such file"
    ]
    assert "Traceback" not in err


def test_unknown_config_key_names_the_file_and_the_key(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text("recursion:\n  n_cycle: 3\n")
    small = str(DATA / "small.mgf")
    argv = ["sequence", small, "-c", "bad.yaml", "-o", "out.mztab", "--no-progress"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    (line,) = _error_lines(err, "sequence")
    assert "bad.yaml" in line and "'recursion.n_cycle'" in line
    assert "did you mean 'n_cycles'?" in line
    assert "Traceback" not in err


def test_verbose_reraises_with_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="missing.mgf: no such file"):
        cli.main(["--verbose", "sequence", "missing.mgf", "-o", "x.mztab"])


def test_a_missing_input_leaves_no_output_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["sequence", "missing.mgf", "-o", "out.mztab", "--no-progress"]
    assert cli.main(argv) == 1
    assert not Path("out.mztab").exists()


def _sequence_small(*extra: str) -> list[str]:
    return ["sequence", str(DATA / "small.mgf"), "--no-progress", *extra]


@pytest.mark.parametrize(
    "output, message",
    [
        ("small.mgf", "is an input file; refusing to overwrite it"),
        ("other.mgf", "looks like a spectrum file"),
        ("out.txt", "unknown output extension '.txt'"),
    ],
)
def test_sequence_refuses_outputs_that_lose_data(
    tmp_path, monkeypatch, capsys, output, message
):
    monkeypatch.chdir(tmp_path)
    small = Path("small.mgf")
    small.write_bytes((DATA / "small.mgf").read_bytes())
    before = small.read_bytes()
    assert cli.main(["sequence", "small.mgf", "-o", output, "--no-progress"]) == 1
    (line,) = _error_lines(capsys.readouterr().err, "sequence")
    assert message in line
    assert small.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.mgf"]


def test_ctrl_c_exits_130_with_one_line_and_no_output(tmp_path, monkeypatch, capsys):
    from peptrm import sequence

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sequence, "network_pass", interrupted)
    assert cli.main(_sequence_small("-o", "out.mztab")) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "interrupted" in line] == [
        "peptrm sequence: interrupted; no output written"
    ]
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file


def test_calibrate_never_replaces_the_bundled_calibration(tmp_path, capsys):
    from peptrm.weights import BUNDLED

    before = (BUNDLED / "calibration.yaml").read_bytes()
    assert cli.main(["calibrate", str(DATA / "small.mgf")]) == 1
    (line,) = _error_lines(capsys.readouterr().err, "calibrate")
    assert "is the bundled model; refusing to replace its calibration" in line
    assert cli.main(["calibrate", str(DATA / "small.mgf"), "-o", str(BUNDLED)]) == 1
    assert (BUNDLED / "calibration.yaml").read_bytes() == before


def test_calibrate_cross_fit_networks_needs_the_fold_annotators(tmp_path, capsys):
    argv = ["calibrate", str(DATA / "small.mgf"), "-o", str(tmp_path)]
    assert cli.main([*argv, "--training-part", "--cross-fit-networks", "a", "b"]) == 1
    (line,) = _error_lines(capsys.readouterr().err, "calibrate")
    assert "--cross-fit-networks goes with --cross-fit" in line
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_calibrate_with_ms2pip_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    from peptrm import predicted

    monkeypatch.setattr(predicted, "available", lambda: False)
    argv = ["calibrate", str(DATA / "small.mgf"), "-o", str(tmp_path), "--ms2pip"]
    assert cli.main(argv) == 1
    (line,) = _error_lines(capsys.readouterr().err, "calibrate")
    assert "--ms2pip needs ms2pip 4.1.2" in line and "--no-deps ms2pip==4.1.2" in line
    assert list(tmp_path.iterdir()) == []  # nothing fitted, nothing written


def test_evaluate_against_the_wrong_labelled_file_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(_sequence_small("-o", "out.csv")) == 0
    Path("copy").mkdir()
    other = Path("copy/small.mgf")  # a copy elsewhere still joins, by file name
    other.write_bytes((DATA / "small.mgf").read_bytes())
    capsys.readouterr()
    assert cli.main(["evaluate", "out.csv", str(DATA / "broken.mgf")]) == 1
    (line,) = _error_lines(capsys.readouterr().err, "evaluate")
    assert "no prediction of out.csv joins any of the" in line
    assert cli.main(["evaluate", "out.csv", str(other)]) == 0


def test_a_file_twice_or_two_files_of_one_name_exit_zero(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("b").mkdir()
    Path("b/small.mgf").write_bytes((DATA / "small.mgf").read_bytes())
    small = str(DATA / "small.mgf")
    assert cli.main(["sequence", small, small, "-o", "twice.csv"]) == 0
    _, rows = _csv_rows(Path("twice.csv"))
    assert len(rows) == 10  # read once
    assert cli.main(["sequence", small, "b/small.mgf", "-o", "two.mztab"]) == 0
    assert len(_psm_rows(Path("two.mztab"))) == 20


@pytest.mark.parametrize(
    "flag, message",
    [
        (["--top-k", "-2"], "argument --top-k: -2 is below 1"),
        (["--top-k", "0"], "argument --top-k: 0 is below 1"),
        (["--default-charge", "0"], "argument --default-charge: 0 is below 1"),
        (["--default-charge", "99"], "argument --default-charge: 99 is above 10"),
        (["--batch-size", "0"], "argument --batch-size: 0 is below 1"),
        (["--fdr", "5"], "argument --fdr: 5 is not between 0 and 1"),
    ],
)
def test_flags_out_of_range_are_usage_errors(capsys, flag, message):
    with pytest.raises(SystemExit) as exit_:
        cli.main(_sequence_small("-o", "out.mztab", *flag))
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_verbose_also_works_after_the_subcommand(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="missing.mgf: no such file"):
        cli.main(["sequence", "missing.mgf", "-o", "x.mztab", "--verbose"])


def test_the_cli_reference_is_generated_from_the_parser():
    committed = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    assert committed == cli.reference_markdown(), (
        'docs/cli.md is stale: run python -c "from peptrm import cli; '
        'cli.write_reference()"'
    )
    for option in ("--default-charge", "--fdr", "--held-out", "--top-k"):
        assert f"| `{option}" in committed


def readme_example() -> tuple[dict[str, int], dict[str, list[str]]]:
    """The demo run's counts and accuracy table as the README's "What to expect" shows.

    Counts come from its "wrote ...: N spectra, N sequenced, N skipped, N without
    a mass-fitting peptide" line; the table maps each file row to its cells.
    """
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("### What to expect", 1)[1].split("```", 2)[1]
    return _demo_counts(section), _demo_table(section)


def _demo_counts(text: str) -> dict[str, int]:
    import re

    match = re.search(
        r"(\d+) spectra, (\d+) sequenced, (\d+) skipped, (\d+) without a "
        r"mass-fitting peptide",
        text,
    )
    assert match, "no 'wrote ...' line"
    keys = ("spectra", "sequenced", "skipped", "unconstrained")
    return dict(zip(keys, map(int, match.groups()), strict=True))


def _demo_table(text: str) -> dict[str, list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("file "))
    rows = {}
    for line in lines[start + 1 :]:
        cells = line.split()
        if not cells:
            break
        rows[cells[0]] = cells[1:]
    return rows


def test_the_readme_shows_what_the_demo_prints(tmp_path, monkeypatch, capsys):
    from peptrm import predicted

    if not predicted.available():  # the README shows the quick-start install's run
        pytest.skip("the README shows the demo with ms2pip 4.1.2 installed")
    counts, table = readme_example()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sequence", "--demo", "-o", "demo.mztab", "--no-progress"]) == 0
    printed = capsys.readouterr()
    assert _demo_counts(printed.err) == counts
    shown = _demo_table(printed.out)
    stale = "README.md's 'What to expect' table is stale; paste what the demo prints"
    assert list(shown) == list(table), stale
    for name, cells in shown.items():
        assert cells[0] == table[name][0], stale  # spectra
        # Another CPU rounds the network's floats differently (its kernels sum in
        # another order), and over 8 argmax-walk steps a near tie can read a
        # spectrum or two differently: the README's 0.300 / 0.555 / 0.554 / AUPCC
        # 0.554 (Intel Xeon) were 0.275 / 0.552 / 0.549 / 0.519 on a 2-core AMD
        # EPYC, one spectrum of 40. So: peptide figures within 2 spectra, AA
        # figures within 0.03, and AUPCC, which one confident spectrum moves
        # most, within 0.06.
        n = int(cells[0])
        tolerance = [2 / n] * 3 + [0.03, 0.03, 0.06]
        for shown_cell, readme_cell, atol in zip(
            cells[1:], table[name][1:], tolerance, strict=True
        ):
            assert abs(float(shown_cell) - float(readme_cell)) <= atol + 1e-9, stale


def test_sigterm_leaves_no_output_and_exits_143(tmp_path):
    import signal
    import time

    big = tmp_path / "big.mgf"  # the demo 10 times: a run of about a minute
    demo = (Path(cli.__file__).parent / "resources" / "demo.mgf").read_text()
    big.write_text(demo * 10)
    out = tmp_path / "out.mztab"
    command = [sys.executable, "-m", "peptrm", "sequence", str(big), "-o", str(out)]
    process = subprocess.Popen(
        [*command, "--no-progress", "--batch-size", "8"],
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stderr:  # wait until sequencing has started
        if "model: bundled" in line:
            break
    time.sleep(2)
    process.send_signal(signal.SIGTERM)
    err = process.stderr.read()
    assert process.wait(timeout=120) == 143, err
    assert "peptrm sequence: terminated; no output written" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.mgf"]
