import dataclasses

import pytest
import yaml

from peptrm import config


def _leaves(cls, prefix=""):
    out = set()
    for f in dataclasses.fields(cls):
        kind = cls.__annotations__[f.name]
        sub = getattr(config, kind, None) if isinstance(kind, str) else None
        if sub is not None and dataclasses.is_dataclass(sub):
            out |= _leaves(sub, f"{prefix}{f.name}.")
        else:
            out.add(prefix + f.name)
    return out


def _yaml_leaves(data, prefix=""):
    out = set()
    for key, value in data.items():
        if isinstance(value, dict):
            out |= _yaml_leaves(value, f"{prefix}{key}.")
        else:
            out.add(prefix + key)
    return out


def test_defaults_fill_every_field_and_nothing_else():
    with open(config.DEFAULTS_PATH) as handle:
        defaults = yaml.safe_load(handle)
    assert _yaml_leaves(defaults) == _leaves(config.Config)


def test_partial_overlay_changes_only_its_keys(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("recursion:\n  n_cycles: 3\n")
    cfg = config.load_config(path)
    assert cfg.recursion.n_cycles == 3
    assert cfg.recursion.n_latent_steps == config.load_config().recursion.n_latent_steps


def test_unknown_key_names_file_and_closest_key(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("recursion:\n  n_cycle: 3\n")
    with pytest.raises(
        config.ConfigError,
        match=r"my.yaml: unknown key 'recursion.n_cycle' "
        r"\(did you mean 'n_cycles'\?\)",
    ):
        config.load_config(path)


def test_wrong_type_names_key_value_and_type(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  dim: wide\n")
    with pytest.raises(
        config.ConfigError, match=r"bad.yaml: model.dim = 'wide' should be int"
    ):
        config.load_config(path)


def test_integers_are_accepted_for_floats():
    cfg = config.load_config(overrides={"decoding": {"precursor_tol_ppm": 10}})
    assert cfg.decoding.precursor_tol_ppm == 10.0 and isinstance(
        cfg.decoding.precursor_tol_ppm, float
    )


def test_numbers_in_exponent_form_are_floats(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("training:\n  learning_rate: 1e-2\n")  # PyYAML reads this as text
    assert config.load_config(path).training.learning_rate == 0.01


@pytest.mark.parametrize(
    "text, message",
    [
        ("decoding:\n  top_k: 0\n", r"decoding.top_k = 0 is below 1"),
        ("decoding:\n  top_k: -2\n", r"decoding.top_k = -2 is below 1"),
        (
            "decoding:\n  precursor_tol_ppm: -5\n",
            r"decoding.precursor_tol_ppm = -5.0 is below 0",
        ),
        (
            "decoding:\n  fragment_tol_da: -0.1\n",
            r"decoding.fragment_tol_da = -0.1 is below 0",
        ),
        ("decoding:\n  batch_size: 0\n", r"decoding.batch_size = 0 is below 1"),
        ("preprocess:\n  n_peaks: 0\n", r"preprocess.n_peaks = 0 is below 1"),
        (
            "preprocess:\n  min_mz: 3000\n",
            r"preprocess.min_mz = 3000.0 is above preprocess.max_mz",
        ),
        (
            "decoding:\n  min_isotope: 2\n",
            r"decoding.min_isotope = 2 is above decoding.max_isotope",
        ),
        (
            "simulation:\n  charge_weights: [1, -1]\n",
            r"simulation.charge_weights = \[1.0, -1.0\] is below 0",
        ),
        ("model:\n  dim: 30\n", r"model.dim = 30 is not a multiple of model.n_heads"),
        (
            "training:\n  draft_fraction: 0.6\n  infill_fraction: 0.5\n",
            r"training.draft_fraction \+ training.infill_fraction = 1.1 is above 1",
        ),
        (
            "training:\n  folds: 3\n  left_out_fold: 3\n",
            r"training.left_out_fold = 3 is not one of the 3 folds",
        ),
        (
            "training:\n  left_out_fold: -2\n",
            r"training.left_out_fold = -2 is below -1",
        ),
        (
            "decoding:\n  precision: float16\n",
            r"decoding.precision = 'float16': give one of float32, bfloat16",
        ),
    ],
)
def test_values_out_of_range_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match="bad.yaml: " + message):
        config.load_config(path)


def test_defaults_are_in_range():
    config.load_layers([("defaults again", {})])


def test_a_directory_or_a_missing_file_says_so(tmp_path):
    with pytest.raises(config.ConfigError, match="is a directory"):
        config.load_config(tmp_path)
    with pytest.raises(config.ConfigError, match="none.yaml: no such file"):
        config.load_config(tmp_path / "none.yaml")
