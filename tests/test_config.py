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
