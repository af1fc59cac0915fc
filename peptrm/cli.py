"""The `peptrm` command: sequence | train | evaluate | calibrate | report | plot | ...

This module parses arguments, loads the config, calls the modules that do the
work and sets the exit code; no science lives here.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

from peptrm import LOG_FORMAT, __version__

log = logging.getLogger("peptrm")

DEMO = Path(str(resources.files("peptrm") / "resources" / "demo.mgf"))


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `low`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value

    return parse


def _fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1 (an FDR)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} is not between 0 and 1")
    return value


def _charge(text: str) -> int:
    """An argparse type: a precursor charge from 1 to `masses.MAX_CHARGE`."""
    from peptrm.masses import MAX_CHARGE

    value = _at_least(1)(text)
    if value > MAX_CHARGE:
        raise argparse.ArgumentTypeError(f"{value} is above {MAX_CHARGE}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peptrm",
        description="De novo peptide sequencing with a Tiny Recursive Model.",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="debug logging and tracebacks"
    )
    # --verbose also after the subcommand; SUPPRESS keeps the top-level value
    # when the subcommand does not repeat it.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="debug logging and tracebacks",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    seq = commands.add_parser(
        "sequence", parents=[verbose], help="sequence MS/MS spectra (MGF, mzML, mzXML)"
    )
    seq.add_argument("inputs", nargs="*", help="spectrum files")
    seq.add_argument("--demo", action="store_true", help="add the bundled demo spectra")
    seq.add_argument("-o", "--output", required=True, help="output .mztab or .csv")
    seq.add_argument("-m", "--model", help="model folder (default: the bundled model)")
    seq.add_argument("-c", "--config", help="YAML overlaid on the defaults")
    seq.add_argument(
        "--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps"
    )
    seq.add_argument(
        "--top-k",
        type=_at_least(1),
        help="candidates per spectrum (default: config)",
    )
    seq.add_argument(
        "--batch-size",
        type=_at_least(1),
        help="spectra per batch (default: config)",
    )
    seq.add_argument(
        "--default-charge",
        type=_charge,
        help="charge for spectra without one (default: skip them)",
    )
    seq.add_argument(
        "--fdr",
        type=_fraction,
        help="mark rank-1 rows whose estimated q-value is above this (e.g. 0.01) "
        "in their status; every row is still written, with its q_value",
    )
    seq.add_argument(
        "--devices",
        type=_at_least(1),
        default=1,
        help="sequence in this many processes, each with the model on its own "
        "device: GPUs 0..N-1 with --device cuda, or shares of the CPU cores "
        "with --device cpu; the output is the same as with one (default: 1)",
    )
    seq.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    trn = commands.add_parser(
        "train",
        parents=[verbose],
        help="train a model on labelled and simulated spectra",
    )
    trn.add_argument("inputs", nargs="*", help="labelled spectrum files (SEQ=)")
    trn.add_argument(
        "--fasta", nargs="*", default=[], help="FASTA files for simulated spectra"
    )
    trn.add_argument(
        "--val",
        nargs="*",
        default=[],
        help="labelled validation files (default: a peptide-disjoint split)",
    )
    trn.add_argument(
        "-o", "--output", required=True, help="run folder (checkpoints, logs, model)"
    )
    trn.add_argument("-c", "--config", help="YAML overlaid on the defaults")
    trn.add_argument(
        "--resume", help="checkpoint to resume from (e.g. RUN/checkpoints/end.ckpt)"
    )
    trn.add_argument(
        "--init-from",
        help="a saved model folder to start a new run from (same model settings)",
    )
    trn.add_argument(
        "--max-steps", type=_at_least(1), help="override training.max_steps"
    )
    trn.add_argument(
        "--left-out-fold",
        type=_at_least(0),
        help="learn nothing from this fold of the real spectra (training.folds "
        "peptide-disjoint folds): one of the runs `peptrm calibrate --cross-fit` reads",
    )
    trn.add_argument(
        "--stop-at-step",
        type=int,
        help="stop after this many optimiser steps, leaving the schedules (which run "
        "to training.max_steps) as they are: replays a run that stopped on --max-time",
    )
    trn.add_argument(
        "--max-time",
        help="stop after this wall-clock time, DD:HH:MM:SS (counted across resumes)",
    )
    trn.add_argument("--accelerator", default="auto", help="Lightning accelerator")
    trn.add_argument(
        "--devices", default="auto", help="Lightning devices (GPUs use DDP)"
    )
    trn.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    ev = commands.add_parser(
        "evaluate", parents=[verbose], help="score predictions against labelled spectra"
    )
    ev.add_argument("predictions", help="our mzTab or CSV")
    ev.add_argument("labelled", nargs="+", help="labelled spectrum files (SEQ=)")
    ev.add_argument(
        "-o", "--output", help="JSON report (default: PREDICTIONS.eval.json)"
    )
    ev.add_argument(
        "--plot", help="precision-coverage PNG (default: PREDICTIONS.pc.png)"
    )

    cal = commands.add_parser(
        "calibrate",
        parents=[verbose],
        help="fit the learned scorers (cleavage log-odds, reranker, calibrated "
        "peptide and residue scores) on labelled spectra",
    )
    cal.add_argument("inputs", nargs="+", help="labelled spectrum files (SEQ=)")
    cal.add_argument("-m", "--model", help="model folder (default: the bundled model)")
    cal.add_argument(
        "--held-out",
        action="store_true",
        help="use only the peptide-disjoint validation split that `peptrm train` "
        "holds out of these files (for calibrating on the training files)",
    )
    cal.add_argument(
        "--training-part",
        action="store_true",
        help="use only the spectra of these files that `peptrm train` learns from "
        "(not the held-out split), so the held-out split can judge the scorers",
    )
    cal.add_argument(
        "--platt-held-out",
        action="store_true",
        help="with --training-part: fit the reranker's map to a probability on "
        "the held-out split instead (spectra the network did not train on, "
        "like a user's)",
    )
    cal.add_argument(
        "--cross-fit",
        nargs="+",
        metavar="RUN",
        help="with --training-part: the model folders of runs that each left one "
        "fold out (peptrm train --left-out-fold k, the peak annotator alone); each "
        "spectrum is annotated by the annotator that never learned from it, carried "
        "onto the model's network",
    )
    cal.add_argument(
        "--cross-fit-networks",
        nargs="+",
        metavar="RUN",
        default=[],
        help="with --cross-fit: the model folders of runs of the model's own recipe "
        "that each left one fold out (peptrm train --left-out-fold k); each "
        "spectrum is then read by the whole network that never learned from it, "
        "as a user's spectra are",
    )
    cal.add_argument(
        "-o",
        "--output",
        help="folder for calibration.yaml, rerank.txt/.yaml (and rerank_ms2pip.txt/"
        ".yaml with --ms2pip) and cleavage.yaml "
        "(default: the -m folder; the bundled model's scorers are never replaced)",
    )
    cal.add_argument("-c", "--config", help="YAML overlaid on the defaults")
    cal.add_argument("--device", default="cpu", help="torch device")
    cal.add_argument(
        "--ms2pip",
        action="store_true",
        help="the reranker also reads ms2pip's predicted fragment intensities "
        "(needs the ms2pip extra; see peptrm/predicted.py)",
    )

    rep = commands.add_parser(
        "report",
        parents=[verbose],
        help="a self-contained HTML report of a run: summary, histograms, "
        "accuracy (with SEQ=) and annotated spectra (needs peptrm[report])",
    )
    rep.add_argument("results", help="our mzTab or CSV")
    rep.add_argument("spectra", nargs="+", help="the spectrum files it was made from")
    rep.add_argument("-o", "--output", required=True, help="the .html to write")
    rep.add_argument(
        "-m",
        "--model",
        help="model folder whose refinement the report shows step by step for the "
        "chosen spectra (default: the bundled model)",
    )
    rep.add_argument(
        "--examples",
        type=_at_least(0),
        default=3,
        help="best and worst scored spectra to draw",
    )
    rep.add_argument(
        "--index",
        type=_at_least(0),
        nargs="*",
        default=[],
        help="spectrum indices to draw as well",
    )

    plot = commands.add_parser(
        "plot",
        parents=[verbose],
        help="one annotated spectrum (b/y ions, residue scores, mirror against "
        "SEQ=) as a PNG (needs peptrm[report])",
    )
    plot.add_argument("results", help="our mzTab or CSV")
    plot.add_argument("spectra", nargs="+", help="the spectrum files it was made from")
    plot.add_argument(
        "--index", type=_at_least(0), required=True, help="the spectrum's index"
    )
    plot.add_argument(
        "--file", help="the spectrum file's name, when several share the index"
    )
    plot.add_argument("-o", "--output", required=True, help="the .png to write")

    cfg = commands.add_parser(
        "configure", parents=[verbose], help="write the default config to edit"
    )
    cfg.add_argument("-o", "--output", default="peptrm.yaml", help="where to write it")

    commands.add_parser("version", parents=[verbose], help="print versions")
    return parser


REFERENCE = Path(__file__).parents[1] / "docs" / "cli.md"


def _argument_name(action: argparse.Action) -> str:
    """How an argument is written: ``-o, --output OUTPUT`` or ``inputs ...``."""
    if not action.option_strings:
        many = action.nargs in ("*", "+")
        return f"`{action.dest}{' ...' if many else ''}`"
    name = ", ".join(action.option_strings)
    if action.nargs != 0:  # takes a value
        metavar = action.metavar or action.dest.upper()
        name += f" {metavar}{' ...' if action.nargs in ('*', '+') else ''}"
    return f"`{name}`"


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def reference_markdown() -> str:
    """The command-line reference (docs/cli.md), built from the argument parser.

    Generated, so it cannot drift from the parser: `write_reference` rewrites the
    file and a test checks the committed copy against this text.
    """
    parser = _parser()
    lines = [
        "# Command-line reference",
        "",
        'Generated from the argument parser by `python -c "from peptrm import cli; '
        'cli.write_reference()"`; do not edit by hand (a test checks it).',
        "",
        parser.description or "",
        "",
        "Exit codes: 0 ok, 1 error (one line on stderr; the traceback with "
        "`--verbose`), 2 bad arguments, 130 interrupted (Ctrl-C), 143 terminated "
        "(SIGTERM).",
    ]
    subcommands = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    )
    helps = {a.dest: a.help for a in subcommands._choices_actions}
    for name, sub in subcommands.choices.items():
        lines += ["", f"## peptrm {name}", "", _cell(helps.get(name, "")), ""]
        lines += ["| argument | default | meaning |", "|---|---|---|"]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if action.option_strings:
                required = action.required
            else:  # argparse's own flag for positionals differs between versions
                required = action.nargs not in ("*", "?")
            if required:
                default = "required"
            elif action.default in (None, False, argparse.SUPPRESS, []):
                default = ""
            else:
                default = f"`{action.default}`"
            lines.append(
                f"| {_argument_name(action)} | {default} | {_cell(action.help or '')} |"
            )
    return "\n".join(lines) + "\n"


def write_reference(path: str | Path = REFERENCE) -> None:
    """Rewrite docs/cli.md from the parser."""
    Path(path).write_text(reference_markdown())


def _versions() -> str:
    import torch

    return (
        f"peptrm {__version__}, python {platform.python_version()}, torch "
        f"{torch.__version__}"
    )


def _sequence(args: argparse.Namespace) -> int:
    from peptrm import evaluate, sequence
    from peptrm.weights import BUNDLED, load_model

    if args.fdr is not None and not 0 < args.fdr < 1:
        raise ValueError(f"--fdr {args.fdr:g}: give a false discovery rate in (0, 1)")
    inputs = list(args.inputs) + ([str(DEMO)] if args.demo else [])
    if not inputs:
        raise ValueError("no input files: give spectrum files or --demo")
    model, cfg = load_model(args.model, args.config)
    scorers = sequence.load_scorers(args.model or BUNDLED)
    if args.batch_size:
        from dataclasses import replace

        cfg = replace(cfg, decoding=replace(cfg.decoding, batch_size=args.batch_size))
    log.info("model: %s", args.model or "bundled")
    summary = sequence.sequence_files(
        inputs,
        args.output,
        model,
        cfg,
        args.device,
        args.top_k,
        args.default_charge,
        progress=not args.no_progress,
        scorers=scorers,
        fdr=args.fdr,
        devices=args.devices,
    )
    log.info(
        "wrote %s: %d spectra, %d sequenced, %d skipped, %d without a mass-fitting "
        "peptide",
        args.output,
        summary.spectra,
        summary.sequenced,
        summary.skipped,
        summary.unconstrained,
    )
    for reason in summary.skip_examples:
        log.warning("skipped: %s", reason)
    if summary.skipped > len(summary.skip_examples):
        log.warning(
            "... and %d more skipped spectra: see the status column of %s",
            summary.skipped - len(summary.skip_examples),
            args.output,
        )
    log.info(
        "%.1f spectra/s on %s (%.1f s in all: model %.1f s, decoding %.1f s); "
        "mean refinement steps %.2f",
        summary.spectra_per_second,
        args.device if args.devices == 1 else f"{args.devices} x {args.device}",
        summary.seconds,
        summary.model_seconds,
        summary.decode_seconds,
        summary.mean_steps,
    )
    if not Path(args.output).is_file():  # a FIFO or device: nothing to read back
        return 0
    readable = [p for p in summary.inputs if p not in summary.unreadable]
    report = evaluate.evaluate_files(args.output, readable)
    if report["overall"].get("n_spectra", 0):  # labelled input: say how we did
        sys.stdout.write("accuracy against the SEQ= labels in the input:\n")
        sys.stdout.write(evaluate.format_table(report) + "\n")
    return 0


def _train(args: argparse.Namespace) -> int:
    from peptrm import train
    from peptrm.config import load_config

    flags = {"max_steps": args.max_steps, "left_out_fold": args.left_out_fold}
    flags = {key: value for key, value in flags.items() if value is not None}
    overrides = {"training": flags} if flags else None
    if args.resume and not args.config:
        cfg = train.config_from_checkpoint(args.resume)
        if flags:
            from dataclasses import replace

            cfg = replace(cfg, training=replace(cfg.training, **flags))
    else:
        cfg = load_config(args.config, overrides)
    log.debug("config: %s", cfg)
    folder = train.train(
        cfg,
        args.inputs,
        args.fasta,
        args.output,
        args.val,
        args.resume,
        args.accelerator,
        args.devices,
        progress=not args.no_progress,
        max_time=args.max_time,
        stop_at_step=args.stop_at_step,
        init_from=args.init_from,
    )
    log.info("model written to %s (use: peptrm sequence ... -m %s)", folder, folder)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from peptrm import predicted, rerank, sequence, train
    from peptrm.weights import BUNDLED, load_cross_fit, load_model

    folder = Path(args.output or args.model or BUNDLED)
    if folder.resolve() == BUNDLED.resolve():
        raise ValueError(
            f"{folder}: is the bundled model; refusing to replace its calibration "
            "(pass -o FOLDER for the new calibration.yaml, and -m FOLDER to use it)"
        )
    if args.ms2pip and not predicted.available():
        raise ValueError(
            f"--ms2pip needs ms2pip {predicted.VERSION}: {predicted.INSTALL}"
        )
    if args.cross_fit_networks and not args.cross_fit:
        raise ValueError("--cross-fit-networks goes with --cross-fit")
    if args.cross_fit and not args.training_part:
        raise ValueError("--cross-fit goes with --training-part")
    model, cfg = load_model(args.model, args.config)
    cross_fit = (
        load_cross_fit(args.cross_fit, model, args.cross_fit_networks)
        if args.cross_fit
        else []
    )
    if args.held_out and args.training_part:
        raise ValueError("give --held-out or --training-part, not both")
    if args.held_out:
        spectra = train.held_out_split(args.inputs, cfg)
    elif args.training_part:
        spectra = train.training_part(args.inputs, cfg)
    else:
        spectra = train.load_labelled(args.inputs, cfg)
    if args.platt_held_out and not args.training_part:
        raise ValueError("--platt-held-out goes with --training-part")
    names = ", ".join(Path(p).name for p in args.inputs)
    platt_spectra = (
        train.held_out_split(args.inputs, cfg) if args.platt_held_out else []
    )
    scorers, report = sequence.calibrate(
        model,
        spectra,
        cfg,
        args.device,
        rerank_features=rerank.PREDICTED_FEATURES if args.ms2pip else rerank.FEATURES,
        fitted_on=f"{len(spectra)} spectra of {names}"
        + (" (held-out split)" if args.held_out else "")
        + (" (training part)" if args.training_part else "")
        + (f", cross-fitted in {len(cross_fit)} folds" if cross_fit else "")
        + (" (whole networks)" if args.cross_fit_networks else ""),
        platt_spectra=platt_spectra,
        platt_fitted_on=f"{len(platt_spectra)} spectra of {names} (held-out split)",
        cross_fit=cross_fit,
    )
    paths = scorers.save(folder)
    reranker = scorers.reranker
    if reranker is not None:
        log.info(
            "reranker: rank-1 recall %.3f in search order, %.3f reranked "
            "(out-of-fold; AA precision %.3f), recall@%d %.3f",
            report["search_rank1_recall"],
            report["reranked_rank1_recall_out_of_fold"],
            report["reranked_aa_precision_out_of_fold"],
            reranker.k,
            report[f"recall_at_{reranker.k}"],
        )
    if "reranked_rank1_recall_out_of_fold_without_ms2pip" in report:
        log.info(
            "reranker without ms2pip's features (the fallback): %.3f reranked "
            "(out-of-fold); ms2pip reads its best %d (recall@%d %.3f)",
            report["reranked_rank1_recall_out_of_fold_without_ms2pip"],
            reranker.shortlist,
            reranker.shortlist,
            report[f"recall_at_shortlist_{reranker.shortlist}"],
        )
    if "platt_spectra" in report:
        log.info(
            "reranker's probability map refitted on the %d held-out spectra",
            report["platt_spectra"],
        )
    log.info(
        "calibrated on %d spectra (%d peptides right): peptide-score ECE %.3f raw, "
        "%.3f calibrated (on the fitting set); wrote %s",
        report["spectra"],
        report["correct"],
        report["ece_raw"],
        report["ece_calibrated"],
        ", ".join(map(str, paths)),
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from peptrm import evaluate

    stem = Path(args.predictions)
    report = evaluate.evaluate_files(args.predictions, args.labelled)
    sys.stdout.write(evaluate.format_table(report) + "\n")
    overall = report["overall"]
    if overall["n_spectra"] and overall["n_no_row"] == overall["n_spectra"]:
        raise ValueError(
            f"no prediction of {args.predictions} joins any of the "
            f"{overall['n_spectra']} labelled spectra: were the predictions made "
            "from these files? (they join by file name and spectrum index)"
        )
    json_path = args.output or str(stem.with_suffix(".eval.json"))
    png_path = args.plot or str(stem.with_suffix(".pc.png"))
    evaluate.write_report(report, json_path)
    evaluate.plot_precision_coverage(report, png_path)
    log.info("wrote %s and %s", json_path, png_path)
    return 0


def _report(args: argparse.Namespace) -> int:
    from peptrm import report

    if not args.output.lower().endswith((".html", ".htm")):
        raise ValueError(f"{args.output}: the report is HTML; name it .html")
    path = report.write_report(
        args.results, args.spectra, args.output, args.examples, args.index, args.model
    )
    log.info("wrote %s", path)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from peptrm import report

    if not args.output.lower().endswith(".png"):
        raise ValueError(f"{args.output}: the plot is a PNG; name it .png")
    path = report.write_plot(
        args.results, args.spectra, args.index, args.output, args.file
    )
    log.info("wrote %s", path)
    return 0


def _configure(args: argparse.Namespace) -> int:
    from peptrm.config import DEFAULTS_PATH

    shutil.copyfile(DEFAULTS_PATH, args.output)
    log.info("wrote %s: edit it and pass it with -c", args.output)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code.

    0 ok, 1 error (one line on stderr; the traceback with --verbose), 2 bad
    arguments, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=LOG_FORMAT,
        force=True,
    )
    if args.command == "version":
        sys.stdout.write(_versions() + "\n")
        return 0
    log.info("peptrm %s", " ".join(sys.argv[1:] if argv is None else argv))
    if args.command == "sequence":  # its workers' imports overlap ours from here
        from peptrm import workers

        workers.network_threads_sleep()  # before torch loads
        workers.keep_freed_memory()
        workers.start_forkserver()
    log.info(_versions())
    handlers = {
        "sequence": _sequence,
        "train": _train,
        "evaluate": _evaluate,
        "calibrate": _calibrate,
        "configure": _configure,
        "report": _report,
        "plot": _plot,
    }
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:  # signal handlers can only be set from the main thread
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt as interrupt:
        what = "terminated" if isinstance(interrupt, _Terminated) else "interrupted"
        sys.stderr.write(f"peptrm {args.command}: {what}; no output written\n")
        return 143 if isinstance(interrupt, _Terminated) else 130
    except Exception as error:  # noqa: BLE001 - one line for users, traceback on --verbose
        if args.verbose:
            raise
        sys.stderr.write(f"peptrm {args.command}: error: {error}\n")
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def console() -> None:
    """The installed `peptrm` command and `python -m peptrm`: `main`, then exit.

    After `peptrm sequence`, once `main` has written its output and the
    decoding workers are shut down, the process exits at once: tearing the
    interpreter down (torch, numba's compiled search, the model) took ~0.65 s
    more of every run, to free memory that the operating system frees anyway.
    Other commands exit as usual.
    """
    code = main()
    if sys.argv[1:2] != ["sequence"]:
        sys.exit(code)
    from peptrm import workers

    workers.stop()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that it unwinds like Ctrl-C."""


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so temporary outputs are removed."""
    raise _Terminated
