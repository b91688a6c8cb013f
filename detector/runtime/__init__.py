"""The runtime: the worker's loop, its consumers, their commit lifecycle, partitions and
ownership. It drives the core through the Redis layer and imports no application."""
