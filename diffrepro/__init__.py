"""diffrepro: a reproducibility harness for methods that make diffusion models cheaper."""

__version__ = "0.1.0"
