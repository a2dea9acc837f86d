from pathlib import Path

import torch

from modalign.config import load_config
from modalign.encoders import ENCODERS, Encoder
from modalign.pipeline import encoder_spec


@ENCODERS.register("test_frozen_lengths")
class FrozenLengths(Encoder):
    """A raw, frozen encoder: the length of a text cell."""

    input_kind = "raw"
    frozen_default = True

    def __init__(self, modality: str, input_dim: int | None = None) -> None:
        super().__init__(modality, 1, frozen=True)

    def load(self, cell: str) -> torch.Tensor:
        return torch.tensor([float(len(cell))])

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch


@ENCODERS.register("test_trainable_lengths")
class TrainableLengths(FrozenLengths):
    frozen_default = False


def test_frozen_raw_encoder_with_a_feature_file_trains_on_the_file(tmp_path: Path) -> None:
    cfg = load_config(None, ["model.encoders.text.name=test_frozen_lengths"])
    assert encoder_spec(cfg, "text") == ("test_frozen_lengths", {})  # no feature file: run it
    cfg = load_config(
        None,
        [
            "model.encoders.text.name=test_frozen_lengths",
            f"data.features.text={tmp_path / 't.npy'}",
        ],
    )
    assert encoder_spec(cfg, "text") == ("precomputed", {})
    cfg = load_config(
        None,
        [
            "model.encoders.text.name=test_trainable_lengths",
            f"data.features.text={tmp_path / 't.npy'}",
        ],
    )
    assert encoder_spec(cfg, "text") == ("test_trainable_lengths", {})  # trainable: must run
    assert encoder_spec(cfg, "image") == ("precomputed", {})  # no entry: precomputed
