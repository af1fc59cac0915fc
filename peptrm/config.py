"""Typed configuration: dataclasses here, every default in resources/defaults.yaml.

`load_config` reads the shipped defaults, overlays a user's (possibly partial) YAML
and builds frozen dataclasses. Nothing else in PepTRM holds a default value.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

DEFAULTS_PATH = Path(str(resources.files("peptrm") / "resources" / "defaults.yaml"))


class ConfigError(ValueError):
    """A configuration file has an unknown key, a wrong type or a value out of range."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Peak filtering and scaling before the model sees a spectrum."""

    min_mz: float  # lowest fragment m/z kept (Th)
    max_mz: float  # highest fragment m/z kept (Th)
    n_peaks: int  # keep at most this many most intense peaks
    min_peaks: int  # spectra with fewer peaks after filtering are skipped
    remove_precursor_tol_da: float  # drop peaks this close to the precursor m/z (Da)
    min_intensity: float  # drop peaks below this fraction of the base peak
    intensity_scaling: str  # "sqrt", "log" or "none", before scaling to unit maximum


@dataclass(frozen=True)
class ModelConfig:
    """Network architecture (carried by every saved model)."""

    dim: int  # D: width of every embedding and block
    n_heads: int  # attention heads in every block
    n_encoder_layers: int  # Transformer layers over the peaks
    n_core_layers: int  # layers of the one tiny recursive network
    max_length: int  # L: peptide positions drafted at once (tokens incl. N-term mod)
    dropout: float  # dropout inside blocks (training only)
    min_wavelength: float  # shortest m/z wavelength of the sinusoidal embedding (Th)
    max_wavelength: float  # longest m/z wavelength of the sinusoidal embedding (Th)
    gate_bias: float  # initial bias of the revision gate; negative = small first edits
    step_embedding_std: float  # init scale of the step embeddings (only at init)
    max_charge: int  # charges above this share the last charge embedding
    draft_mass_encoding: bool  # draft positions carry their predicted b/y ion m/z
    ion_evidence: bool  # draft positions read the peaks at each candidate's ions
    complement_encoding: bool  # peaks also carry their mirror m/z M + 2 proton - m
    suffix_evidence: bool  # ion evidence also anchored at the draft's C-terminus
    evidence_logits: bool  # each candidate token's ion evidence also scores it directly
    peak_annotator: bool  # a second encoder names each peak's ion type (b, y, b++, y++)
    annotator_layers: int  # Transformer layers of that encoder
    chance_evidence: bool  # the core also reads the annotator's chances at the ions
    argmax_prefix: bool  # ion lookups walk the draft's likeliest tokens, not its mean
    # the per-token scorers also read the precursor charge and the cleavage's place
    charge_context: bool = False  # (a default: model.yaml files saved before it load)
    # each position also reads its candidates' next cleavage, under the next draft token
    lookahead_evidence: bool = False  # (a default, as charge_context)


@dataclass(frozen=True)
class RecursionConfig:
    """The TRM recursion: n, T and N_sup."""

    n_latent_steps: int  # n: latent updates per improvement step
    n_cycles: int  # T: improvement steps per forward; T-1 run without gradients
    n_supervision: int  # N_sup: supervised improvement steps per training spectrum


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation, losses, curricula and logging of `peptrm train`."""

    seed: int  # seeds Python, NumPy and torch; the same seed reproduces a run
    stream: int  # batch stream: 0 the seed's own; k > 0 new batches, the same split
    batch_size: int  # spectra per optimiser step
    max_steps: int  # optimiser steps in the whole run
    learning_rate: float  # peak AdamW learning rate
    weight_decay: float  # AdamW weight decay
    warmup_steps: int  # linear warm-up steps before cosine decay
    grad_clip: float  # gradient-norm clip
    ema_decay: float  # decay of the weight EMA used for validation and export
    ema_warmup: bool  # the EMA's decay warms up from 0.1 (False: fixed ema_decay)
    supervision_decay: float  # step weights w_k ∝ decay^(N_sup-k): last steps dominate
    halt_loss_weight: float  # weight of the halting (draft-is-correct) loss
    mass_loss_weight: float  # weight of the precursor-mass loss (in residue units)
    spectrum_loss_weight: float  # weight of the matched-filter b/y spectrum loss
    sigma_start_da: float  # spectrum-loss peak width at step 0 (Da)
    sigma_end_da: float  # spectrum-loss peak width at the end of the curriculum (Da)
    real_fraction_start: float  # share of real spectra in a batch at step 0
    real_fraction_end: float  # share of real spectra in a batch at the last step
    synthetic_difficulty_steps: (
        int  # steps over which simulated spectra go clean -> realistic
    )
    curriculum_start_length: int  # longest simulated peptide at step 0 (residues)
    padding_loss_weight: float  # residue-loss weight of positions past the first STOP
    augment_dropout: float  # share of a real spectrum's peaks dropped at each draw
    augment_noise_peaks: float  # mean noise peaks added to a real spectrum per draw
    augment_intensity_sd: float  # lognormal sd of per-peak intensity jitter
    augment_shift_ppm: float  # sd of per-peak m/z shifts of real spectra (ppm)
    draft_fraction: float  # share of spectra whose recursion starts from a wrong draft
    draft_mean_errors: float  # mean errors in such a draft (Poisson; 0 errors allowed)
    infill_fraction: float  # share starting from their own peptide with a stretch blank
    annotator_only: bool  # train only the peak annotator (the rest stays as loaded)
    trainable: list[str]  # train only weights named with these prefixes ([]: all)
    chance_annotators: list[str]  # fold runs whose annotators read real spectra
    annotation_tol_da: float  # a peak is labelled an ion within this of its m/z (Da)
    val_fraction: float  # share of labelled training spectra held out for validation
    # Cross-fitting (`peptrm calibrate --cross-fit`): the training part falls into
    # `folds` peptide-disjoint folds; a run with `left_out_fold` k >= 0 does not
    # learn from fold k's real spectra (-1: learns from all).
    folds: int
    left_out_fold: int
    val_every_steps: int  # run validation every this many steps
    checkpoint_every_steps: int  # write a checkpoint every this many steps
    num_workers: int  # data-loader worker processes (0 = in the main process)
    precision: str  # Lightning precision: "32-true", "bf16-mixed", ...
    compile: bool  # torch.compile the model


@dataclass(frozen=True)
class SimulationConfig:
    """Synthetic spectra: peptides, modifications, charges, noise and errors."""

    min_length: int  # shortest simulated peptide (residues)
    max_length: int  # longest simulated peptide (residues)
    missed_cleavages: int  # tryptic missed cleavages allowed
    charge_weights: list[float]  # relative frequency of precursor charges 1, 2, 3, 4
    oxidation_rate: float  # chance that a methionine is M+15.995
    deamidation_rate: float  # chance that an N or Q is deamidated
    n_terminal_rate: float  # chance that a peptide carries an N-terminal modification
    fragment_tol_ppm: float  # sd of the fragment m/z error (ppm)
    precursor_tol_ppm: float  # sd of the precursor m/z error (ppm)
    isotope_error_rate: float  # chance that the precursor is the +1 13C peak
    dropout: float  # chance that a b/y ion is missing, in a realistic spectrum
    noise_peaks: int  # mean number of noise peaks, in a realistic spectrum
    # b/y intensities: "builtin" (`simulate.ladder_intensities`) or "ms2pip"
    # (ms2pip 4.1.2's HCD2019 predictions; needs the `ms2pip` extra)
    intensity_model: str = "builtin"
    # At precursor charge 3+, between these shares of the peptide's length a b/y
    # fragment's 1+ ion fades into its 2+ ion ([] = off: 1+ at every length)
    high_charge_fade: list[float] = dataclasses.field(default_factory=list)


@dataclass(frozen=True)
class DecodingConfig:
    """Mass-constrained decoding and inference batching."""

    precursor_tol_ppm: float  # precursor mass tolerance for the mass constraint (ppm)
    min_isotope: int  # lowest isotope error considered (usually 0)
    max_isotope: int  # highest isotope error considered
    top_k: int  # candidates written per spectrum
    refine_rounds: int  # rounds of feeding the constrained peptide back as the draft
    halt_threshold: float  # stop refining once the halting probability passes this
    halt_unchanged: int  # also stop once the likeliest tokens held N steps (0 = off)
    batch_size: int  # spectra per inference batch
    max_expansions: int  # prefixes the exact search may extend per spectrum
    beam_width: int  # prefixes per position of the beam search run past the budget
    hard_expansions: int  # the larger searches' budget once the smallest ran out
    evidence_weight: float  # of each cleavage's fragment evidence vs log-probs
    fragment_tol_da: float  # fragment m/z tolerance of the evidence (Da)
    workers: int  # processes that decode (0 = one per CPU core)
    network_threads: int = 0  # torch threads beside the workers (0: cores / 4, >= 2)
    precision: str = "float32"  # the network's arithmetic at inference (PRECISIONS)
    supervision_steps: int = 0  # steps run at inference (0: the model's N_sup)
    first_residue_starts: int = 0  # runs from the likeliest first residues (0: one)


@dataclass(frozen=True)
class Config:
    """The whole configuration, one section per concern."""

    preprocess: PreprocessConfig
    model: ModelConfig
    recursion: RecursionConfig
    training: TrainingConfig
    simulation: SimulationConfig
    decoding: DecodingConfig

    @property
    def inference_steps(self) -> int:
        """Supervision steps sequencing runs per spectrum (before halting).

        `decoding.supervision_steps`, or the model's N_sup when 0; never more
        than N_sup, since the network never trained the steps past it.
        """
        steps = self.decoding.supervision_steps or self.recursion.n_supervision
        return min(steps, self.recursion.n_supervision)


def _check_type(value: Any, expected: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(expected)
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} = {value!r} is not a list")
        return [_check_type(v, item_type, key, source) for v in value]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(expected):
            try:
                return _check_type(value, option, key, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: {key} = {value!r} is not {expected}")
    if expected is type(None):
        if value is None:
            return None
        raise ConfigError(f"{source}: {key} = {value!r} is not null")
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        # YAML 1.1 (PyYAML) reads 1e-2 as text: a float needs a dot, as in 1.0e-2.
        try:
            return float(value)
        except ValueError:
            pass
    if expected in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{source}: {key} = {value!r} should be {expected.__name__}")
    if not isinstance(value, expected):
        raise ConfigError(
            f"{source}: {key} = {value!r} should be {expected.__name__}, "
            f"not {type(value).__name__}"
        )
    return value


# Allowed ranges, (lowest, highest) inclusive; None leaves that side open. A value
# outside them would fail far from the config (a division by zero, an empty
# top-k) or silently do something else (a negative top-k writes every candidate).
INTENSITY_MODELS = ("builtin", "ms2pip")  # simulation.intensity_model
PRECISIONS = ("float32", "bfloat16")  # decoding.precision
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "preprocess.min_mz": (0, None),
    "preprocess.n_peaks": (1, None),
    "preprocess.min_peaks": (0, None),
    "preprocess.remove_precursor_tol_da": (0, None),
    "preprocess.min_intensity": (0, 1),
    "model.dim": (1, None),
    "model.n_heads": (1, None),
    "model.n_encoder_layers": (0, None),
    "model.n_core_layers": (1, None),
    "model.max_length": (2, None),
    "model.dropout": (0, 1),
    "model.min_wavelength": (1e-12, None),
    "model.max_wavelength": (1e-12, None),
    "model.max_charge": (1, None),
    "recursion.n_latent_steps": (1, None),
    "recursion.n_cycles": (1, None),
    "recursion.n_supervision": (1, None),
    "decoding.supervision_steps": (0, None),
    "decoding.first_residue_starts": (0, None),
    "training.batch_size": (1, None),
    "training.max_steps": (1, None),
    "training.learning_rate": (0, None),
    "training.weight_decay": (0, None),
    "training.warmup_steps": (0, None),
    "training.grad_clip": (0, None),
    "training.ema_decay": (0, 1),
    "model.step_embedding_std": (0, None),
    "training.supervision_decay": (0, None),
    "training.halt_loss_weight": (0, None),
    "training.mass_loss_weight": (0, None),
    "training.spectrum_loss_weight": (0, None),
    "training.sigma_start_da": (0, None),
    "training.sigma_end_da": (0, None),
    "training.real_fraction_start": (0, 1),
    "training.real_fraction_end": (0, 1),
    "training.synthetic_difficulty_steps": (0, None),
    "training.val_fraction": (0, 1),
    "training.folds": (2, None),
    "training.left_out_fold": (-1, None),
    "training.draft_fraction": (0, 1),
    "training.infill_fraction": (0, 1),
    "training.draft_mean_errors": (0, None),
    "training.annotation_tol_da": (0, None),
    "model.annotator_layers": (1, None),
    "training.val_every_steps": (1, None),
    "training.checkpoint_every_steps": (1, None),
    "training.num_workers": (0, None),
    "simulation.min_length": (1, None),
    "simulation.max_length": (1, None),
    "simulation.missed_cleavages": (0, None),
    "simulation.charge_weights": (0, None),
    "simulation.oxidation_rate": (0, 1),
    "simulation.deamidation_rate": (0, 1),
    "simulation.n_terminal_rate": (0, 1),
    "simulation.fragment_tol_ppm": (0, None),
    "simulation.precursor_tol_ppm": (0, None),
    "simulation.isotope_error_rate": (0, 1),
    "simulation.dropout": (0, 1),
    "simulation.noise_peaks": (0, None),
    "decoding.precursor_tol_ppm": (0, None),
    "decoding.top_k": (1, None),
    "decoding.refine_rounds": (0, None),
    "decoding.halt_threshold": (0, 1),
    "decoding.halt_unchanged": (0, None),
    "decoding.batch_size": (1, None),
    "decoding.max_expansions": (1, None),
    "decoding.beam_width": (0, None),
    "decoding.hard_expansions": (0, None),
    "decoding.evidence_weight": (0, None),
    "decoding.fragment_tol_da": (0, None),
    "decoding.workers": (0, None),
    "decoding.network_threads": (0, None),
}
# Pairs (lower, upper) where the first may not exceed the second.
_ORDERED = (
    ("preprocess.min_mz", "preprocess.max_mz"),
    ("simulation.min_length", "simulation.max_length"),
    ("decoding.min_isotope", "decoding.max_isotope"),
)


def range_problem(key: str, value: Any) -> str | None:
    """Why `value` is out of range for the dotted `key`, or None when it is fine.

    The CLI checks its flags (``--top-k``, ``--batch-size``) with the same table.
    """
    low, high = _RANGES.get(key, (None, None))
    for item in value if isinstance(value, list) else [value]:
        if low is not None and item < low:
            return f"{key} = {value!r} is below {low}"
        if high is not None and item > high:
            return f"{key} = {value!r} is above {high}"
    return None


def _check_ranges(config: Config, source: str) -> None:
    values = {
        f"{section}.{key}": value
        for section, keys in config_to_dict(config).items()
        for key, value in keys.items()
    }
    for key, value in values.items():
        problem = range_problem(key, value)
        if problem:
            raise ConfigError(f"{source}: {problem}")
    for lower, upper in _ORDERED:
        if values[lower] > values[upper]:
            raise ConfigError(
                f"{source}: {lower} = {values[lower]!r} is above "
                f"{upper} = {values[upper]!r}"
            )
    if config.simulation.intensity_model not in INTENSITY_MODELS:
        raise ConfigError(
            f"{source}: simulation.intensity_model = "
            f"{config.simulation.intensity_model!r}: give one of "
            + ", ".join(INTENSITY_MODELS)
        )
    fade = config.simulation.high_charge_fade
    if fade and not (len(fade) == 2 and 0 <= fade[0] < fade[1] <= 1):
        raise ConfigError(
            f"{source}: simulation.high_charge_fade = {fade!r}: give [] or two "
            "shares of the peptide's length, [start, end] with 0 <= start < end <= 1"
        )
    if config.decoding.precision not in PRECISIONS:
        raise ConfigError(
            f"{source}: decoding.precision = {config.decoding.precision!r}: give one "
            "of " + ", ".join(PRECISIONS)
        )
    t = config.training
    if t.draft_fraction + t.infill_fraction > 1:
        raise ConfigError(
            f"{source}: training.draft_fraction + training.infill_fraction = "
            f"{t.draft_fraction + t.infill_fraction!r} is above 1"
        )
    if t.left_out_fold >= t.folds:
        raise ConfigError(
            f"{source}: training.left_out_fold = {t.left_out_fold} is not one of "
            f"the {t.folds} folds (0..{t.folds - 1}, or -1 for none)"
        )
    if config.model.dim % config.model.n_heads:
        raise ConfigError(
            f"{source}: model.dim = {config.model.dim} is not a multiple of "
            f"model.n_heads = {config.model.n_heads}"
        )


def _merge(base: dict, overlay: dict, source: str, prefix: str = "") -> dict:
    merged = dict(base)
    for key, value in overlay.items():
        if key not in base:
            close = difflib.get_close_matches(key, list(base), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {prefix + key!r}{hint}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {prefix + key} should be a section")
            merged[key] = _merge(base[key], value, source, f"{prefix}{key}.")
        else:
            merged[key] = value
    return merged


def _build(cls: type, values: dict, source: str, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    names = {f.name for f in fields(cls)}
    missing = names - set(values)
    if missing:
        raise ConfigError(
            f"{source}: missing keys {sorted(prefix + m for m in missing)}"
        )
    for f in fields(cls):
        expected = hints[f.name]
        value = values[f.name]
        if dataclasses.is_dataclass(expected):
            kwargs[f.name] = _build(expected, value, source, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _check_type(value, expected, prefix + f.name, source)
    return cls(**kwargs)


def read_yaml(path: Path) -> dict:
    """A config YAML as a nested dict (empty for an empty file)."""
    try:
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    except IsADirectoryError as error:
        raise ConfigError(f"{path}: is a directory, not a YAML file") from error
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: no such file") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def load_config(
    path: str | Path | None = None,
    overrides: dict | None = None,
    overrides_source: str = "overrides",
) -> Config:
    """Read the shipped defaults, overlay the YAML at `path`, then `overrides`.

    `overrides` is a nested dict in the same shape (the CLI's flags and a model's
    stored architecture use it); `overrides_source` names it in error messages
    (the model.yaml it came from, say).
    """
    layers: list[tuple[str, dict]] = []
    if path is not None:
        layers.append((str(path), read_yaml(Path(path))))
    if overrides:
        layers.append((overrides_source, overrides))
    return load_layers(layers)


def load_layers(layers: list[tuple[str, dict]]) -> Config:
    """Overlay (source, values) layers on the defaults, in order, and build.

    Each layer is checked as it is laid on, so an unknown key, a wrong type or a
    value out of range names the file that brought it.
    """
    values = read_yaml(DEFAULTS_PATH)
    config = _build(Config, values, str(DEFAULTS_PATH))
    for source, layer in layers:
        values = _merge(values, layer, source)
        config = _build(Config, values, source)
        _check_ranges(config, source)
    return config


def config_to_dict(config: Any) -> dict:
    """The nested-dict form of a config (for checkpoints and model.yaml)."""
    return dataclasses.asdict(config)
