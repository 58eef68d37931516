"""The static stdio bridge of hot containers under ``HOT_TRANSPORT=socket``.

``ifbridge.c`` is compiled with ``gcc -static -O2`` into ``ifbridge`` beside it, by
``scripts/setup.sh`` (and by the test setup). The Docker driver bind-mounts the binary
read-only into each hot container as its entrypoint wrapper: it connects to a unix
socket the daemon listens on, makes that connection its stdin and stdout, and execs the
image's own entrypoint and command. The function's bytes then skip the engine's attach
relay (dockerd + the containerd shim), which costs ~0.15 ms per round trip.
"""

from __future__ import annotations

import os
import subprocess

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ifbridge.c")
BINARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ifbridge")


def build(output: str = BINARY, source: str = SOURCE) -> str:
    """Compile the bridge with ``gcc -static -O2`` (for setup and tests, never the
    daemon); return ``output``. Raise ``RuntimeError`` with gcc's message on failure."""
    tmp = output + ".tmp"
    result = subprocess.run(
        ["gcc", "-static", "-O2", "-o", tmp, source], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"gcc -static {source} failed: {result.stderr.strip()}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, output)
    return output


def missing(path: str = BINARY) -> str | None:
    """Why the bridge at ``path`` cannot be used, or ``None`` when it can."""
    if not os.path.isfile(path):
        return f"bridge binary {path} is missing; build it with scripts/setup.sh (needs gcc and libc6-dev)"
    if not os.access(path, os.X_OK):
        return f"bridge binary {path} is not executable"
    return None
