"""The invocation edge's layers: the runner's ``Invoker`` and the pure modules of
``ironfunctions.http`` load nothing of twisted.web or Klein, and the ``http`` package
itself imports nothing (so the runner can use ``http.headers`` without the server)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

import ironfunctions
import ironfunctions.http

PURE = ["ironfunctions.runner.invoker", "ironfunctions.runner.external", "ironfunctions.http.headers",
        "ironfunctions.http.errors", "ironfunctions.http.jsonbody", "ironfunctions.http.bearer"]


@pytest.mark.parametrize("module", PURE)
def test_module_loads_no_web_server(module: str) -> None:
    """In a fresh interpreter: importing ``module`` loads no twisted.web, Klein or werkzeug."""
    probe = (f"import sys, {module}\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('klein', 'werkzeug', 'treq')"
             " or m.startswith('twisted.web')))")
    root = os.path.dirname(os.path.dirname(ironfunctions.__file__))  # the checkout
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": root})
    assert (out.returncode, out.stderr, out.stdout.strip()) == (0, "", "[]")


def test_the_http_package_file_imports_nothing() -> None:
    with open(ironfunctions.http.__file__) as f:
        tree = ast.parse(f.read())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
