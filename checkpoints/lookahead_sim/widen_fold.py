"""Tool (session 27, not part of PepTRM): a fold network, with the lookahead added.

Writes the model folder SRC (trained without `model.lookahead_evidence`) to DST
with the lookahead on and its projection zero, as the option starts: the network
reads every spectrum as before, and it loads beside fold runs trained with the
lookahead (`benchmarks/bench_refine.py --fold-runs` takes one architecture).
From the repository root:

    python checkpoints/lookahead_sim/widen_fold.py SRC DST
"""

import dataclasses
import logging
import sys

import torch
from safetensors.torch import load_file

from peptrm import masses, weights
from peptrm.model import PepTRM

src, dst = sys.argv[1], sys.argv[2]
cfg = weights.model_config(src)
shape = dataclasses.replace(cfg.model, lookahead_evidence=True)
cfg = dataclasses.replace(cfg, model=shape)
model = PepTRM(cfg.model, cfg.recursion, len(masses.VOCAB))
state = load_file(f"{src}/{weights.WEIGHTS_NAME}")
missing, unexpected = model.load_state_dict(state, strict=False)
if unexpected or not all(k.startswith("lookahead_projection.") for k in missing):
    sys.exit(f"{src}: not the model without the lookahead ({missing}, {unexpected})")
if any(torch.count_nonzero(model.state_dict()[k]) for k in missing):
    sys.exit("the lookahead projection does not start at zero")
logging.basicConfig(level=logging.INFO)
written = weights.save_model(model.eval(), cfg, dst)
logging.info("%s -> %s, added %s", src, written, missing)
