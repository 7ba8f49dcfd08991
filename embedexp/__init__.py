"""embedexp: config-driven training and evaluation of text embedding models."""

__version__ = "0.1.0"
