"""expkit: versioned, reviewed experiment records for pretraining small language models."""

__version__ = "0.1.0"
