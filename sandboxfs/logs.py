"""Logging set-up shared by both command lines (``sandboxfs ...`` and the 0.2 one)."""

import logging

FORMAT = "%(asctime)s sandboxfs[%(process)d] %(levelname)s %(name)s: %(message)s"


def configure(level: str = "info") -> None:
    """Log to stderr at ``level`` (debug, info, warning, error), one line per record."""
    logging.basicConfig(level=getattr(logging, level.upper()), format=FORMAT)
