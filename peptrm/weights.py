"""Model weights on disk: safetensors plus the YAML of the config, as trained.

A saved model is a folder (or the package's resources) holding `model.safetensors`
and `model.yaml`; the YAML carries the architecture so the weights always load
with the shape they were trained with.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from safetensors.torch import load_file, save_file

from peptrm import masses
from peptrm.config import Config, config_to_dict, load_config
from peptrm.model import PepTRM

BUNDLED = Path(str(resources.files("peptrm") / "resources"))
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "model.yaml"
_ARCHITECTURE = ("model", "recursion", "preprocess")  # sections a model carries
LEGACY_OFF = (
    "ion_evidence",
    "complement_encoding",
    "suffix_evidence",
)  # absent from older model.yaml


def save_model(model: PepTRM, cfg: Config, folder: str | Path) -> Path:
    """Write `model.safetensors` and `model.yaml` into `folder`; return the weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / WEIGHTS_NAME, metadata={"vocab": " ".join(masses.VOCAB)})
    values = config_to_dict(cfg)
    with open(folder / CONFIG_NAME, "w") as handle:
        yaml.safe_dump({k: values[k] for k in _ARCHITECTURE}, handle, sort_keys=False)
    return folder / WEIGHTS_NAME


def model_config(folder: str | Path, user_config: str | Path | None = None) -> Config:
    """A saved model's config: defaults, the user's file, then its architecture."""
    with open(Path(folder) / CONFIG_NAME) as handle:
        architecture = yaml.safe_load(handle)
    # Models saved before these inputs existed were trained without them.
    for key in LEGACY_OFF:
        architecture.setdefault("model", {}).setdefault(key, False)
    return load_config(user_config, overrides=architecture)


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
