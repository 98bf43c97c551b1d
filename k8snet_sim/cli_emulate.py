"""The ``emulate`` command (registered on the main Typer app by :func:`register`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``emulate`` command to ``app``."""
    return None
