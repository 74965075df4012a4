"""Every config value is checked by type and range, with an error that names its key."""
import pytest

from training.config import ConfigError, find_config, load_config


@pytest.mark.parametrize("override, message", [
    ("model.kgcvae=no", "model.kgcvae must be true or false"),
    ("model.dropout=abc", "model.dropout must be a finite number"),
    ("model.dropout=1.5", r"model.dropout must lie in \[0, 1\)"),
    ("model.word_dropout=-0.1", "model.word_dropout"),
    ("model.latent_dim=0", "model.latent_dim must be at least 1"),
    ("train.log_every=0", "train.log_every must be >= 1"),
    ("train.steps=abc", "train.steps must be an integer"),
    ("train.lr=-1", "train.lr must be"),
    ("train.export=first", "train.export must be one of best, last"),
    ("schedule.beta_max=nan", "schedule.beta_max must be a finite number"),
    ("schedule.kind=foo", "^schedule.kind must be one of"),  # the key once, not "schedule: schedule.kind"
    ("tokenizer.vocab_size=2", "tokenizer.vocab_size must be >= 8"),
])
def test_bad_values_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [override])


def test_config_by_name():
    assert find_config("tiny").name == "tiny.toml"
    assert find_config("chat-cyclical.toml").name == "chat-cyclical.toml"
    with pytest.raises(ConfigError, match="neither a file nor a name in training/configs: .*tiny"):
        find_config("nonesuch")
    cfg = load_config("chat-cyclical")
    assert cfg.data.corpus == "mix" and [s.corpus for s in cfg.data.sources] == ["chitchat", "dailydialog"]
    assert cfg.data.style == "chat" and cfg.tokenizer.lexicon_min_count == 20
