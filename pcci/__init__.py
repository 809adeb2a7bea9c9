"""pcci: the Parallel Computing Communication Interface."""

__version__ = "2.0.0.dev0"
