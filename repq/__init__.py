"""RepQ: quantization-aware training for re-parametrized architectures."""

__version__ = "0.1.0"
