"""Versioned schema migrations of both stores.

Each dialect has one ordered list of numbered steps (``SQLITE``, ``POSTGRES``). A step is
applied once, in its own transaction, and recorded in ``schema_migrations``; the runner in
each store takes a database-wide lock first (SQLite ``BEGIN IMMEDIATE``, PostgreSQL an
advisory lock), so two processes starting together never both apply a step. Steps are never
edited once released: a schema change is a new step at the end of the list.

Statements are kept one per string (no splitting on ``;``: trigger bodies contain them) and
in Python modules, so they ship with the package without package-data configuration.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema step."""

    version: int
    name: str
    statements: tuple[str, ...]


def check_sequence(steps: tuple[Migration, ...]) -> None:
    """Versions must be 1, 2, 3, ... in order (a typo here would silently skip a step)."""
    for expected, step in enumerate(steps, start=1):
        if step.version != expected:
            raise RuntimeError(
                f"migration {step.name!r} has version {step.version}, not {expected}"
            )


SCHEMA_MIGRATIONS_TABLE = "schema_migrations"

__all__ = ["SCHEMA_MIGRATIONS_TABLE", "Migration", "check_sequence"]
