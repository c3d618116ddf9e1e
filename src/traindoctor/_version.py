"""The package version, in a module of its own: importable without the package's lazy names."""

__version__ = "0.1.0"
