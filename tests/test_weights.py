import copy
from dataclasses import replace

import pytest
import torch
import yaml
from safetensors import safe_open

from peptrm import masses, preprocess
from peptrm.config import load_config
from peptrm.io import Spectrum, read_spectra
from peptrm.model import PepTRM
from peptrm.weights import (
    BUNDLED,
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_cross_fit,
    load_model,
    save_model,
)

TINY = {
    "model": {"dim": 32, "n_heads": 4, "n_encoder_layers": 1, "n_core_layers": 1},
    "recursion": {"n_latent_steps": 1, "n_cycles": 2, "n_supervision": 2},
    "preprocess": {"n_peaks": 50},
}


def _tiny_model(seed: int = 0) -> tuple[PepTRM, object]:
    cfg = load_config(overrides=TINY)
    torch.manual_seed(seed)
    return PepTRM(cfg.model, cfg.recursion, len(masses.VOCAB)).eval(), cfg


def _outputs(model: PepTRM, cfg, path) -> torch.Tensor:
    """Draft logits (B, L, V) after one supervision step on the spectra of `path`."""
    prepare = preprocess.pipeline(cfg.preprocess)
    spectra = [prepare(s) for s in read_spectra(path) if isinstance(s, Spectrum)]
    batch = preprocess.collate(spectra, cfg.preprocess.n_peaks)
    with torch.no_grad():
        spectrum = model.encode_batch(batch)
        y, z = model.initial_state(spectrum)
        y, _, halt = model(spectrum, y, z)
    return torch.cat([y.flatten(), halt.flatten()])


def test_save_then_load_gives_identical_outputs(tmp_path, small_mgf):
    model, cfg = _tiny_model()
    before = _outputs(model, cfg, small_mgf)
    weights = save_model(model, cfg, tmp_path / "model")
    assert weights == tmp_path / "model" / WEIGHTS_NAME
    loaded, loaded_cfg = load_model(tmp_path / "model")
    assert not loaded.training  # eval mode: no dropout at inference
    after = _outputs(loaded, loaded_cfg, small_mgf)
    assert torch.equal(before, after)
    other, _ = _tiny_model(seed=1)  # the comparison can fail: other weights differ
    assert not torch.equal(before, _outputs(other, cfg, small_mgf))


def test_model_yaml_carries_the_architecture_over_the_defaults(tmp_path):
    defaults = load_config()
    assert defaults.model.dim != 32 and defaults.recursion.n_supervision != 2
    model, cfg = _tiny_model()
    save_model(model, cfg, tmp_path)
    stored = yaml.safe_load((tmp_path / CONFIG_NAME).read_text())
    assert stored["model"]["dim"] == 32
    assert set(stored) == {"model", "recursion", "preprocess"}  # no training state
    loaded, loaded_cfg = load_model(tmp_path)
    assert loaded_cfg.model == cfg.model
    assert loaded_cfg.recursion == cfg.recursion
    assert loaded_cfg.preprocess.n_peaks == 50  # the model was trained on 50 peaks
    assert loaded.z_init.shape == (32,)


def _fold_run(model: PepTRM, cfg, folder, fold: int, folds: int = 3, seed: int = 0):
    """`model` with an annotator of its own, saved as the run that left `fold` out."""
    torch.manual_seed(100 + seed)
    run = PepTRM(cfg.model, cfg.recursion, len(masses.VOCAB))
    state = {k: v for k, v in model.state_dict().items()}
    state.update(
        {k: v for k, v in run.state_dict().items() if k.startswith("annotator.")}
    )
    run.load_state_dict(state)
    training = replace(cfg.training, folds=folds, left_out_fold=fold)
    save_model(run, replace(cfg, training=training), folder)
    return folder


def _annotated_model():
    cfg = load_config(
        overrides={**TINY, "model": {**TINY["model"], "peak_annotator": True}}
    )
    torch.manual_seed(0)
    return PepTRM(cfg.model, cfg.recursion, len(masses.VOCAB)).eval(), cfg


def test_a_run_that_left_a_fold_out_says_which_in_its_yaml(tmp_path):
    model, cfg = _annotated_model()
    _fold_run(model, cfg, tmp_path, fold=2)
    stored = yaml.safe_load((tmp_path / CONFIG_NAME).read_text())
    assert stored["training"] == {"folds": 3, "left_out_fold": 2}
    _, loaded_cfg = load_model(tmp_path)
    assert (loaded_cfg.training.folds, loaded_cfg.training.left_out_fold) == (3, 2)


def test_load_cross_fit_orders_the_runs_by_fold_and_checks_them(tmp_path):
    model, cfg = _annotated_model()
    folders = [_fold_run(model, cfg, tmp_path / f"f{k}", k, seed=k) for k in (2, 0, 1)]
    runs = load_cross_fit(folders, model)
    for k, run in enumerate(runs):  # fold k's run is the one saved as fold k
        saved, _ = load_model(tmp_path / f"f{k}")
        head = saved.annotator.head.weight
        assert torch.equal(run.annotator.head.weight, head)
    assert not torch.equal(runs[0].annotator.head.weight, runs[1].annotator.head.weight)
    assert torch.equal(runs[0].heads.residues.weight, model.heads.residues.weight)

    with pytest.raises(ValueError, match="one per fold"):  # 2 runs of 3 folds
        load_cross_fit(folders[:2], model)
    twice = _fold_run(model, cfg, tmp_path / "again", 0)
    with pytest.raises(ValueError, match="a second run that left out fold 0"):
        load_cross_fit([folders[0], folders[1], twice], model)
    other, _ = _annotated_model()
    with torch.no_grad():
        other.heads.residues.weight.add_(1.0)  # another network (a fine-tune)
    carried = load_cross_fit(folders, other)  # keeps it, takes each fold's annotator
    for k, run in enumerate(carried):
        assert torch.equal(run.heads.residues.weight, other.heads.residues.weight)
        assert torch.equal(run.annotator.head.weight, runs[k].annotator.head.weight)
    assert not torch.equal(other.annotator.head.weight, runs[0].annotator.head.weight)
    wider = replace(cfg.model, annotator_layers=cfg.model.annotator_layers + 1)
    different = PepTRM(wider, cfg.recursion, len(masses.VOCAB))
    with pytest.raises(ValueError, match="fold 0: its peak annotator does not fit"):
        load_cross_fit(folders, different)


def test_load_cross_fit_reads_each_fold_with_the_network_that_left_it_out(tmp_path):
    model, cfg = _annotated_model()
    annotators = [
        _fold_run(model, cfg, tmp_path / f"a{k}", k, seed=k) for k in range(3)
    ]
    networks = []
    for k in (1, 2, 0):  # fine-tunes of the model, each without one fold, any order
        network = copy.deepcopy(model)
        with torch.no_grad():
            network.heads.residues.weight.add_(float(k + 1))
        networks.append(_fold_run(network, cfg, tmp_path / f"n{k}", k, seed=10 + k))
    runs = load_cross_fit(annotators, model, networks)
    plain = load_cross_fit(annotators, model)
    for k, run in enumerate(runs):  # fold k: network k's weights, annotator k's
        shifted = model.heads.residues.weight + float(k + 1)
        assert torch.equal(run.heads.residues.weight, shifted)
        assert torch.equal(run.annotator.head.weight, plain[k].annotator.head.weight)
    with pytest.raises(ValueError, match="one run per fold: 2 runs for 3 folds"):
        load_cross_fit(annotators, model, networks[:2])
    other_cfg = replace(cfg, recursion=replace(cfg.recursion, n_supervision=3))
    stranger = _fold_run(model, other_cfg, tmp_path / "stranger", 0)
    with pytest.raises(ValueError, match="not the model's architecture"):
        load_cross_fit(annotators, model, [stranger, networks[0], networks[1]])


def test_a_user_config_cannot_change_the_architecture_of_a_saved_model(tmp_path):
    model, cfg = _tiny_model()
    save_model(model, cfg, tmp_path / "model")
    user = tmp_path / "user.yaml"
    user.write_text("model:\n  dim: 64\ndecoding:\n  top_k: 3\n")
    loaded, loaded_cfg = load_model(tmp_path / "model", user)
    assert loaded_cfg.model.dim == 32  # the weights' shape wins
    assert loaded_cfg.decoding.top_k == 3  # sequencing settings still apply


def test_load_model_without_weights_names_the_folder(tmp_path):
    folder = tmp_path / "empty_model"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="empty_model") as error:
        load_model(folder)
    assert WEIGHTS_NAME in str(error.value)


def test_bundled_model_is_small_and_loads_with_its_vocabulary():
    weights = BUNDLED / WEIGHTS_NAME
    assert weights.stat().st_size < 25 * 2**20  # ships inside the wheel
    with safe_open(str(weights), "pt") as handle:
        assert handle.metadata()["vocab"].split() == list(masses.VOCAB)
    model, cfg = load_model()
    stored = yaml.safe_load((BUNDLED / CONFIG_NAME).read_text())
    assert cfg.model.dim == stored["model"]["dim"]
    assert model.z_init.shape == (stored["model"]["dim"],)
    assert not model.training


def test_user_preprocess_overrides_the_models_with_a_warning(tmp_path, caplog):
    model, cfg = _tiny_model()  # trained on 50 peaks
    save_model(model, cfg, tmp_path / "model")
    _, plain = load_model(tmp_path / "model")
    assert plain.preprocess.n_peaks == 50  # the model's setting, not the default
    user = tmp_path / "user.yaml"
    user.write_text("preprocess:\n  n_peaks: 80\n  min_mz: 50.0\n")
    with caplog.at_level("WARNING"):
        _, loaded_cfg = load_model(tmp_path / "model", user)
    assert loaded_cfg.preprocess.n_peaks == 80  # the user's setting takes effect
    assert loaded_cfg.preprocess.min_mz == 50.0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1  # min_mz equals the model's: no warning
    assert "preprocess.n_peaks = 80 differs from the 50" in warnings[0]
    assert "model.yaml" in warnings[0]


def test_errors_in_a_models_yaml_name_that_file(tmp_path):
    model, cfg = _tiny_model()
    save_model(model, cfg, tmp_path / "model")
    path = tmp_path / "model" / CONFIG_NAME
    path.write_text(path.read_text().replace("dim: 32", "dim: wide"))
    with pytest.raises(ValueError, match=r"model\.yaml: model\.dim = 'wide'"):
        load_model(tmp_path / "model")
