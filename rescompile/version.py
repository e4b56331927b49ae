"""The package version, in a module of its own so that the backends can name it without importing
the package (and, through it, the API that imports them)."""

__version__ = "0.1.0"
