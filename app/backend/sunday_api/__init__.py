"""Sunday.com in miniature: a tiny boards-and-items HTTP API."""

__all__ = ["__version__"]

__version__ = "0.1.0"
