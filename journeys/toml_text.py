"""TOML text as tables, with nesting deeper than Python can parse refused as a TOML error.

``tomllib`` parses inline tables and arrays recursively: a file nesting them
about 1000 deep raises ``RecursionError``, which would escape every loader's
``TOMLDecodeError`` handling as a traceback.
"""

from __future__ import annotations

import tomllib
from typing import Any


def load_toml(text: str) -> dict[str, Any]:
    """``tomllib.loads(text)``; raises ``tomllib.TOMLDecodeError`` for nesting too deep."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise tomllib.TOMLDecodeError(
            "nested too deeply (inline tables or arrays within each other)"
        ) from None
