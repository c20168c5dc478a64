"""evalkit: one fair protocol for evaluating large audio language models."""

__version__ = "0.1.0"
