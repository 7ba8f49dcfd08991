from embedexp.models.api import APIEncoder, check_trainable
from embedexp.models.encoder import POOLING_MODES, Encoder

__all__ = ["APIEncoder", "Encoder", "POOLING_MODES", "check_trainable"]
