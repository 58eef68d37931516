"""Hostile load, one run: every bound of SPEC §8 measured against its target.

Each part is its own script (``bench/hostile_<part>.py``, each starting the daemons it
needs and cleaning up); this one runs them in turn, each in a fresh process so no part
inherits another's memory or open files, and prints their figures one block after the
other. ``--only stderr,conns`` runs some of them. The hot and cold benchmarks
(``bench/hot.py``, ``bench/cold.py``) show that none of the bounds costs the fast path.

    .venv/bin/python bench/hostile.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

PARTS = {
    "stderr": "a function flooding stderr: daemon log lines, /health while it floods",
    "conns": "slow and stalled clients, connections at the cap, stalled uploads",
    "quotas": "async submits beyond ASYNC_MAX_QUEUED(_BYTES)",
    "fairshare": "a second app while a first one floods the node with slow calls",
}
HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ", ".join(PARTS))
    args = parser.parse_args()
    chosen = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in PARTS]
    if unknown:
        parser.error(f"unknown part(s): {', '.join(unknown)}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.path.dirname(HERE),
                                                                     os.environ.get("PYTHONPATH")])))
    failed = []
    for part in chosen:
        print(f"== {part}: {PARTS[part]}", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, os.path.join(HERE, f"hostile_{part}.py")], env=env)
        print(f"== {part}: {'done' if code == 0 else f'FAILED (exit {code})'} "
              f"in {time.monotonic() - started:.0f} s\n", flush=True)
        if code:
            failed.append(part)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
