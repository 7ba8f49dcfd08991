from embedexp.models.encoder import POOLING_MODES, Encoder

__all__ = ["Encoder", "POOLING_MODES"]
