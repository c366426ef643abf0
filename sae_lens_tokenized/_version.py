"""The package version (one place; read by the Hub model card without importing the package)."""

__version__ = "0.4.0"
