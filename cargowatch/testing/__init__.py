"""Private real services for tests and benchmarks (never the machine's own ones)."""

from cargowatch.testing.services import MosquittoServer, PostgresServer, free_port

__all__ = ["MosquittoServer", "PostgresServer", "free_port"]
