"""pyiii: the iii engine, its worker SDK and the worker manager."""

__version__ = "0.1.0"
