"""JSON bodies as the Go server writes them, for the management API and ``/r/`` alike.

Pure (no Twisted), so the runner's ``Invoker`` can use it without loading the API.
"""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> bytes:
    """A JSON body: compact, UTF-8, ending in a newline (as the Go server's encoder)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
