"""autopar's version (one place: the package, the tuning cache's keys and the command line read it)."""

__version__ = "0.1.0"
