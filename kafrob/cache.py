"""Where kafrob keeps what it downloads or builds (thesis checkpoints, compiled kernels)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV_VAR = "KAFROB_CACHE_DIR"


def cache_root() -> Path:
    """$KAFROB_CACHE_DIR, else $XDG_CACHE_HOME/kafrob, else ~/.cache/kafrob."""
    explicit = os.environ.get(CACHE_ENV_VAR)
    return Path(explicit) if explicit else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kafrob"
