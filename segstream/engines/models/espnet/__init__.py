"""ESPNet: efficient spatial pyramid of dilated convolutions (Mehta et al., ECCV 2018)."""

from segstream.engines.models.espnet.model import ESPNet, ESPNetEncoder

__all__ = ["ESPNet", "ESPNetEncoder"]
