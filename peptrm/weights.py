"""Model weights on disk: safetensors plus the YAML of the config, as trained.

A saved model is a folder (or the package's resources) holding `model.safetensors`
and `model.yaml`; the YAML carries the architecture so the weights always load
with the shape they were trained with.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import yaml
from safetensors.torch import load_file, save_file

from peptrm import masses
from peptrm.config import Config, config_to_dict, load_layers, read_yaml
from peptrm.model import PeakAnnotator, PepTRM

log = logging.getLogger(__name__)

BUNDLED = Path(str(resources.files("peptrm") / "resources"))
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "model.yaml"
_ARCHITECTURE = ("model", "recursion", "preprocess")  # sections a model carries
# A model trained without one fold of its training part carries which (`calibrate
# --cross-fit` reads them); others carry none and load the defaults (no fold).
_CROSS_FIT = ("folds", "left_out_fold")
LEGACY_OFF = (
    "ion_evidence",
    "complement_encoding",
    "suffix_evidence",
    "evidence_logits",
    "peak_annotator",
    "chance_evidence",
    "argmax_prefix",
)  # absent from older model.yaml


def save_model(model: PepTRM, cfg: Config, folder: str | Path) -> Path:
    """Write `model.safetensors` and `model.yaml` into `folder`; return the weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / WEIGHTS_NAME, metadata={"vocab": " ".join(masses.VOCAB)})
    values = config_to_dict(cfg)
    stored = {k: values[k] for k in _ARCHITECTURE}
    if cfg.training.left_out_fold >= 0:  # which spectra it never learned from
        stored["training"] = {k: values["training"][k] for k in _CROSS_FIT}
    with open(folder / CONFIG_NAME, "w") as handle:
        yaml.safe_dump(stored, handle, sort_keys=False)
    return folder / WEIGHTS_NAME


def model_config(folder: str | Path, user_config: str | Path | None = None) -> Config:
    """A saved model's config: defaults, its preprocessing, the user's file, its shape.

    The architecture (`model`, `recursion`) always comes from the model: the
    weights only load with it. Preprocessing is the model's as trained unless the
    user's file sets a key, which then takes effect with a warning that it differs
    from the training setting (sequencing other instruments' spectra may need it).
    """
    path = Path(folder) / CONFIG_NAME
    stored = read_yaml(path)
    shape = {k: stored[k] for k in _ARCHITECTURE if k != "preprocess" and k in stored}
    training = stored.get("training") or {}
    if training:
        shape["training"] = {k: training[k] for k in _CROSS_FIT if k in training}
    # Models saved before these inputs existed were trained without them.
    for key in LEGACY_OFF:
        shape.setdefault("model", {}).setdefault(key, False)
    layers = [(str(path), {"preprocess": stored.get("preprocess") or {}})]
    if user_config is not None:
        user = read_yaml(Path(user_config))
        _warn_about_preprocess(user.get("preprocess"), stored.get("preprocess"), path)
        layers.append((str(user_config), user))
    layers.append((str(path), shape))
    return load_layers(layers)


def _warn_about_preprocess(user: object, trained: object, path: Path) -> None:
    if not isinstance(user, dict) or not isinstance(trained, dict):
        return
    for key, value in user.items():
        if key in trained and value != trained[key]:
            log.warning(
                "preprocess.%s = %r differs from the %r the model was trained with "
                "(%s); using %r",
                key,
                value,
                trained[key],
                path,
                value,
            )


def load_model(
    folder: str | Path | None = None, user_config: str | Path | None = None
) -> tuple[PepTRM, Config]:
    """Load a saved model (the bundled one when `folder` is None) in eval mode."""
    folder = Path(folder) if folder is not None else BUNDLED
    if not (folder / WEIGHTS_NAME).exists():
        raise FileNotFoundError(
            f"{folder}: no {WEIGHTS_NAME} (expected a saved PepTRM model)"
        )
    cfg = model_config(folder, user_config)
    model = PepTRM(cfg.model, cfg.recursion, len(masses.VOCAB))
    model.load_state_dict(load_file(folder / WEIGHTS_NAME))
    return model.eval(), cfg


def _by_fold(
    folders: Sequence[str | Path],
) -> list[tuple[str | Path, PepTRM, Config]]:
    """The saved runs that each left one fold out, loaded and put in fold order.

    Each folder is a run of `peptrm train --left-out-fold k` (its `model.yaml`
    says which of how many folds); together they must leave out every fold once.
    """
    by_fold: dict[int, tuple[str | Path, PepTRM, Config]] = {}
    folds = len(folders)
    for folder in folders:
        other, cfg = load_model(folder)
        fold = cfg.training.left_out_fold
        if fold < 0 or cfg.training.folds != folds:
            raise ValueError(
                f"{folder}: left out fold {fold} of {cfg.training.folds}; --cross-fit "
                f"takes {folds} runs, one per fold (peptrm train --left-out-fold k "
                f"with training.folds {folds})"
            )
        if fold in by_fold:
            raise ValueError(f"{folder}: a second run that left out fold {fold}")
        by_fold[fold] = folder, other, cfg
    return [by_fold[k] for k in range(folds)]


def load_annotators(folders: Sequence[str | Path]) -> list[PeakAnnotator]:
    """The peak annotators of runs that each left one fold out, in fold order.

    Fold k's annotator (`_by_fold`) never learned from the real spectra of fold k
    of the training part, so it reads them as it reads spectra it meets when
    sequencing.
    """
    annotators = []
    for folder, other, cfg in _by_fold(folders):
        if not cfg.model.peak_annotator:
            raise ValueError(f"{folder}: a run without a peak annotator")
        annotators.append(other.annotator)
    return annotators


def load_cross_fit(
    folders: Sequence[str | Path],
    model: PepTRM,
    networks: Sequence[str | Path] = (),
) -> list[PepTRM]:
    """`model` with each fold's peak annotator (`load_annotators`), in fold order.

    `peptrm calibrate --cross-fit` fits the scorers of `model`'s network on
    what these annotators say about the spectra they never learned from. The
    annotator has its own encoder and trains alone (`training.annotator_only`),
    so it can be carried onto another network; it must have the same shape.

    `networks` (`--cross-fit-networks`): runs of `model`'s own recipe that each
    left one fold out too. Fold k is then read by that run's whole network
    (with fold k's annotator), not by `model`'s, which learned from fold k and
    is surer of those spectra than of any it meets when sequencing.
    """
    if not model.cfg.peak_annotator:
        raise ValueError("--cross-fit needs a model with a peak annotator")
    annotators = load_annotators(folders)
    readers = [model] * len(annotators)
    if networks:
        if len(networks) != len(annotators):
            raise ValueError(
                f"--cross-fit-networks takes one run per fold: {len(networks)} "
                f"runs for {len(annotators)} folds"
            )
        readers = []
        for folder, network, cfg in _by_fold(networks):
            if (cfg.model, cfg.recursion) != (model.cfg, model.recursion):
                raise ValueError(
                    f"{folder}: not the model's architecture (model and recursion "
                    "settings differ)"
                )
            readers.append(network)
    runs = []
    for fold, (annotator, reader) in enumerate(zip(annotators, readers, strict=True)):
        run = copy.deepcopy(reader)
        try:
            run.annotator.load_state_dict(annotator.state_dict())
        except RuntimeError as error:
            raise ValueError(
                f"the run that left out fold {fold}: its peak annotator does not "
                f"fit the model's ({error})"
            ) from error
        runs.append(run.eval())
    return runs
