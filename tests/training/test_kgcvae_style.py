"""model.kgcvae_style in training: validated, recorded in the run's config, and an older run resumes only as legacy."""
import json

import pytest

from training.config import ConfigError, load_config
from training.loop import RunError, Trainer
from training.report import model_variant


@pytest.mark.parametrize("value, message", [
    ("original", "model.kgcvae_style must be one of zhao, legacy"),
    ("1", "model.kgcvae_style must be a string"),
])
def test_bad_style_fails_naming_the_key(value, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [f"model.kgcvae_style={value}"])


def test_a_kgcvae_run_records_its_style():
    cfg = load_config("swda-cyclical")
    assert cfg.to_dict()["model"]["kgcvae_style"] == "zhao"
    assert cfg.model_config(64, n_acts=5).kgcvae_style == "zhao"
    assert load_config("tiny", ["model.kgcvae=true"]).to_dict()["model"]["kgcvae_style"] == "zhao"
    legacy = load_config("swda-cyclical", ["model.kgcvae_style=legacy"])
    assert legacy.model_config(64, n_acts=5).kgcvae_style == "legacy"
    # a plain CVAE records nothing it does not use
    assert "kgcvae_style" not in load_config("tiny", ["model.kgcvae=false"]).to_dict()["model"]


def test_a_run_started_before_the_field_resumes_only_as_legacy(tmp_path, synthetic_corpus):
    overrides = ["data.corpus=jsonl", f"data.dir={synthetic_corpus}", "model.kgcvae=true", "train.steps=4"]
    cfg = load_config("tiny", overrides)
    old = cfg.to_dict()
    del old["model"]["kgcvae_style"]  # as config.json was written before kgcvae_style existed
    (tmp_path / "config.json").write_text(json.dumps(old))
    (tmp_path / "checkpoint.safetensors").write_bytes(b"")
    with pytest.raises(RunError, match=r"different config \(model.kgcvae_style\).*--set model.kgcvae_style=legacy"):
        Trainer(cfg, tmp_path).prepare()
    # as legacy the config matches, and prepare goes on to the data (this corpus has no acts: a later error)
    with pytest.raises(RunError, match="needs dialog-act labels"):
        Trainer(load_config("tiny", [*overrides, "model.kgcvae_style=legacy"]), tmp_path).prepare()


@pytest.mark.parametrize("model, want", [
    ({"preset": "zhao", "kgcvae": True, "kgcvae_style": "zhao"}, "kgCVAE (Zhao et al.'s), zhao preset"),
    ({"preset": "zhao", "kgcvae": True}, "kgCVAE (legacy), zhao preset"),
    ({"preset": "cpu", "kgcvae": True, "kgcvae_style": "legacy"}, "kgCVAE (legacy), cpu preset"),
    ({"preset": "cpu"}, "CVAE, cpu preset"),
    (None, "unknown"),
])
def test_reports_name_the_model_variant(model, want):
    assert model_variant({"model": model} if model is not None else {}) == want
