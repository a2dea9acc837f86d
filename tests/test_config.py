from pathlib import Path

import pytest
import yaml

from modalign.config import Config, load_config, save_config, to_dict
from modalign.errors import ConfigError


def test_defaults_and_overrides_are_typed() -> None:
    cfg = load_config(
        None,
        [
            "train.epochs=7",
            "train.grad_clip=none",
            "loss.pairs=[[a, b]]",
            "train.tensorboard=no",
            "model.encoders.audio.name=mlp",
            "model.encoders.audio.options={hidden_dim: 8}",
            "eval.ks=[1, 3]",
        ],
    )
    assert cfg.train.epochs == 7 and isinstance(cfg.train.epochs, int)
    assert cfg.train.grad_clip is None
    assert cfg.loss.pairs == (("a", "b"),)
    assert cfg.train.tensorboard is False
    assert cfg.model.encoders["audio"].name == "mlp" and cfg.model.encoders["audio"].options == {
        "hidden_dim": 8
    }
    assert cfg.eval.ks == (1, 3)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=three", "'train.epochs': 'three' is not an integer"),
        ("train.tensorboard=maybe", "is not a boolean"),
        ("model.head.kind=conv", "is not one of linear, mlp"),
        (
            "trian.epochs=1",
            "unknown key 'trian.epochs'; valid keys in 'the config': codebook, data, eval, loss, model, name, train",
        ),
        ("train.epochs", "not of the form section.key=value"),
        ("train.epochs.x=1", "holds a value, not a section"),
    ],
)
def test_bad_overrides_are_named(override: str, message: str) -> None:
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
    ):
        load_config(None, [override])


def test_yaml_file_unknown_key_and_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'train\.epochz'; valid keys in 'train': accumulate"
    ):
        load_config(path)
    path.write_text("train:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"train\.lr"):
        load_config(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_relative_paths_anchor_to_config_folder_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "c.yaml"
    path.parent.mkdir()
    path.write_text("data:\n  manifest: ../pairs.csv\n  features: {text: t.npy}\ntrain:\n  lr: 1\n")
    cfg = load_config(path)
    assert cfg.data.manifest == str(tmp_path / "pairs.csv")
    assert cfg.data.features["text"] == str(tmp_path / "sub" / "t.npy")
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "resolved.yaml").read_text()) == to_dict(cfg)


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.train = None  # type: ignore[misc]


def test_override_paths_are_relative_to_the_current_directory(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "c.yaml").write_text("data:\n  features: {text: t.npy}\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("cfg/c.yaml", ["data.manifest=runs/m.csv", "data.features.image=i.npy"])
    assert cfg.data.manifest == str(tmp_path / "runs" / "m.csv")  # typed here: relative to here
    assert cfg.data.features["image"] == str(tmp_path / "i.npy")
    assert cfg.data.features["text"] == str(tmp_path / "cfg" / "t.npy")  # written in the file


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.accumulate=0", r"train\.accumulate = 0: must be >= 1"),
        ("train.batch_size=0", r"train\.batch_size = 0: must be >= 1"),
        ("train.log_every=0", r"train\.log_every = 0"),
        ("train.chunk_size=0", r"train\.chunk_size = 0: must be >= 1 or null"),
        ("train.lr=0", r"train\.lr = 0\.0: must be positive"),
        ("train.device=tpu", r"train\.device = 'tpu'"),
        ("train.early_stopping.patience=0", r"patience = 0: must be >= 1"),
        ("loss.tile_size=0", r"loss\.tile_size = 0"),
        ("eval.ks=[0, 5]", r"eval\.ks = \[0, 5\]"),
    ],
)
def test_out_of_range_values_fail_at_load_time(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
