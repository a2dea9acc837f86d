"""Sounds as pictures: an ImageNet-pretrained CNN over the log-mel spectrogram.

No pretrained audio network can be installed offline here, but an ImageNet CNN transfers to
spectrograms far better than hand-made statistics: image networks learn edges, onsets and
textures that spectrograms also have, and ImageNet initialisation is how strong audio models
start (Palanisamy et al., 2020; Gong et al., 2021). ``audio_efficientnet`` runs the offline
EfficientNet-Lite0 over each clip's log-mel spectrogram, drawn as a grey image (standardised per
clip, low frequencies at the bottom), averages the last feature maps over frequency and pools
them over time by mean and max (as PANNs does; Kong et al., 2020): 2 x 1280 features.

Each clip runs through the network on its own, so a clip's features never depend on the batch it
came in; clips shorter than ``min_frames`` are padded with their own quietest level (silence),
since the network shrinks its input 32-fold.

References:
    Palanisamy, Singhania & Yao, 2020, "Rethinking CNN models for audio classification".
    Gong, Chung & Glass, 2021, "AST: Audio Spectrogram Transformer" (ImageNet pretraining).
    Kong et al., 2020, "PANNs: Large-scale pretrained audio neural networks" (mean + max pooling).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from modalign.encoders.audio import AudioFileEncoder
from modalign.encoders.base import ENCODERS
from modalign.encoders.image import EfficientNetLite0Encoder
from modalign.errors import ConfigError


def spectrogram_image(logmel: torch.Tensor, min_frames: int) -> torch.Tensor:
    """One clip's log-mels (M, T) as a standardised 3-channel image (1, 3, M, max(T, min_frames)).

    Example:
        >>> spectrogram_image(torch.randn(8, 5), min_frames=16).shape
        torch.Size([1, 3, 8, 16])
    """
    if logmel.shape[1] < min_frames:  # pad with the clip's quietest level (silence)
        logmel = F.pad(logmel, (0, min_frames - logmel.shape[1]), value=float(logmel.min()))
    x = (logmel - logmel.mean()) / (logmel.std() + 1e-5)  # (M, T), zero mean, unit variance
    x = x.flip(0)  # low frequencies at the bottom, as spectrograms are drawn
    return x[None, None].expand(1, 3, -1, -1)  # grey: the same plane in R, G and B


@ENCODERS.register("audio_efficientnet")
class SpectrogramCNNEncoder(AudioFileEncoder):
    """Frozen features of EfficientNet-Lite0 over log-mel spectrograms (2 * 1280: mean and max over time).

    Args:
        modality: modality name. input_dim: unused (raw encoder).
        sample_rate: clips are resampled to this rate. n_mels: mel bands (the image's height).
        max_seconds: longer clips are cut. min_frames: shorter clips are padded with silence.
        weights: EfficientNet-Lite0 state dict; default the offline package's.
        frozen: must be True: each clip runs through the CNN alone, so its batch norm could not
            train (False is refused).

    Example:
        >>> enc = SpectrogramCNNEncoder("sound", n_mels=32)
        >>> enc(enc.collate([torch.randn(8000), torch.randn(3000)])).shape
        torch.Size([2, 2560])
    """

    frozen_default = True
    preferred_batch_size = 16

    def __init__(
        self,
        modality: str,
        input_dim: int | None = None,
        sample_rate: int = 16000,
        n_mels: int = 128,
        max_seconds: float = 10.0,
        min_frames: int = 64,
        weights: str | None = None,
        frozen: bool = True,
    ) -> None:
        if not frozen:
            raise ConfigError(
                "audio_efficientnet: frozen: false is not supported (clips run through the CNN "
                "one at a time, so its batch norm cannot train); use audio_conv to train"
            )
        cnn = EfficientNetLite0Encoder(modality, weights=weights, frozen=True)
        super().__init__(modality, 2 * cnn.output_dim, True, sample_rate, max_seconds, n_mels)
        self.cnn, self.min_frames = cnn, int(min_frames)

    def cache_key(self) -> str:
        return f"audio_efficientnet:{self.cnn.cache_key()}:{self._prep_key()}:min={self.min_frames}"

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # -> (B, 2560)
        logmel, mask = self.logmel_and_mask(batch)  # (B, M, T), (B, 1, T)
        frames = mask[:, 0].sum(-1).long().tolist()  # valid frames per clip
        out = []
        for clip, n in zip(logmel, frames, strict=True):  # one clip at a time: no padding shared
            image = spectrogram_image(clip[:, : max(n, 1)], self.min_frames)
            with torch.no_grad():
                maps = self.cnn.net.extract_features(
                    image.contiguous(memory_format=torch.channels_last)
                )  # (1, 1280, M/32, T/32)
            over_time = maps.mean(2)  # (1, 1280, T/32): frequency averaged
            out.append(torch.cat([over_time.mean(-1), over_time.amax(-1)], dim=-1))
        return torch.cat(out)  # (B, 2560)
