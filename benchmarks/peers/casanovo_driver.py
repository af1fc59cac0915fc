"""Run Casanovo's command line on one CPU thread, training to a wall-clock budget.

Runs inside Casanovo's own virtual environment (it imports casanovo, not peptrm),
started by `bench_casanovo.py`:

    python casanovo_driver.py --max-time-s 180 --report fit.json -- train ...
    python casanovo_driver.py -- sequence ...

Casanovo 5.2.1 has no setting for a time limit, so this wraps Lightning's
`Trainer` before Casanovo imports it: `max_time` stops the fit at the budget,
and the fit always ends with a checkpoint (`--end-checkpoint`), whatever
Casanovo's own checkpoint callbacks kept. The report gives the parameter
count, the seconds inside `fit`, the optimiser steps and the epochs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time

import torch


def budget_trainer(max_time_s: float | None, report: str | None, end_ckpt: str | None):
    """A `lightning.pytorch.Trainer` subclass that stops at `max_time_s` and reports."""
    import lightning.pytorch as pl

    class BudgetTrainer(pl.Trainer):
        def __init__(self, *args, **kwargs) -> None:
            if max_time_s:
                kwargs["max_time"] = datetime.timedelta(seconds=max_time_s)
            super().__init__(*args, **kwargs)

        def fit(self, model, *args, **kwargs):
            start = time.perf_counter()
            try:
                return super().fit(model, *args, **kwargs)
            finally:
                seconds = time.perf_counter() - start
                if end_ckpt:
                    self.save_checkpoint(end_ckpt)
                if report:
                    n_parameters = sum(p.numel() for p in model.parameters())
                    with open(report, "w") as handle:
                        json.dump(
                            {
                                "n_parameters": n_parameters,
                                "fit_seconds": seconds,
                                "global_step": self.global_step,
                                "epochs": self.current_epoch,
                                "end_checkpoint": end_ckpt,
                            },
                            handle,
                        )

    return BudgetTrainer


def main() -> None:
    """Patch Lightning, then hand the remaining arguments to Casanovo's CLI."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-time-s", type=float, help="stop training after this")
    parser.add_argument("--report", help="JSON written when training ends")
    parser.add_argument("--end-checkpoint", help="checkpoint saved when training ends")
    parser.add_argument("casanovo_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the same single thread PepTRM's figures use

    import lightning.pytorch as pl

    pl.Trainer = budget_trainer(args.max_time_s, args.report, args.end_checkpoint)
    from casanovo.casanovo import main as casanovo_main

    rest = args.casanovo_args
    sys.argv = ["casanovo", *(rest[1:] if rest[:1] == ["--"] else rest)]
    casanovo_main()


if __name__ == "__main__":
    main()
