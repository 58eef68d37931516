"""Test function images, built locally FROM scratch (no registry is reachable).

Each directory under ``tests/images/`` holds a ``run.sh``; with the shared Dockerfile
and busybox-static it becomes ``iftest/<name>:1``. An image is rebuilt only when the
content hash (Dockerfile, run.sh, busybox binary) differs from the ``iftest.hash``
label of the existing image, so repeated test runs cost one ``docker image inspect``
per image.

Use the session fixture ``test_images`` (a dict name -> tag) or ``build_test_images()``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from typing import Callable

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGES_DIR = os.path.join(HERE, "images")
ROOT = os.path.dirname(HERE)
START_DOCKERD = os.path.join(ROOT, "scripts", "start-dockerd.sh")
BUSYBOX = "/bin/busybox"
HASH_LABEL = "iftest.hash"


def image_tag(name: str) -> str:
    return f"iftest/{name}:1"


def ensure_dockerd() -> None:
    """Start the engine if needed; fail loudly (never skip) if it cannot start."""
    result = subprocess.run([START_DOCKERD], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        pytest.fail(f"Docker engine unavailable: {result.stderr.strip()}", pytrace=False)


def _hash_files(paths: list[str]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def _existing_hash(tag: str) -> str | None:
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{ index .Config.Labels \"%s\" }}" % HASH_LABEL, tag],
        capture_output=True, text=True,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def build_image(tag: str, dockerfile: str, files: list[str],
                prepare: Callable[[str], None] | None = None) -> str:
    """Build ``tag`` from ``dockerfile`` with ``files`` (and busybox) as its context,
    unless an image with the same content hash exists. Return the tag. ``prepare``,
    if given, adds generated files to the context directory (their sources must be
    among ``files`` so that the hash covers them)."""
    content_hash = _hash_files([dockerfile, BUSYBOX, *files])
    if _existing_hash(tag) == content_hash:
        return tag
    with tempfile.TemporaryDirectory(prefix="iftest-") as context:
        shutil.copy(dockerfile, os.path.join(context, "Dockerfile"))
        shutil.copy(BUSYBOX, os.path.join(context, "busybox"))
        for path in files:
            shutil.copy(path, os.path.join(context, os.path.basename(path)))
        if prepare is not None:
            prepare(context)
        result = subprocess.run(
            ["docker", "build", "-q", "--label", f"{HASH_LABEL}={content_hash}", "-t", tag, context],
            capture_output=True, text=True, env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )
        if result.returncode != 0:
            raise RuntimeError(f"docker build {tag} failed: {result.stderr}")
    return tag


def build_test_images() -> dict[str, str]:
    """Build (or reuse) every test image and the hello example; return name -> tag."""
    if not os.path.exists(BUSYBOX):
        pytest.fail("busybox-static is not installed (apt-get install -y busybox-static)", pytrace=False)
    dockerfile = os.path.join(IMAGES_DIR, "Dockerfile")
    tags = {}
    for name in sorted(os.listdir(IMAGES_DIR)):
        directory = os.path.join(IMAGES_DIR, name)
        if os.path.isdir(directory):
            tags[name] = build_image(image_tag(name), dockerfile, [os.path.join(directory, "run.sh")])
    tags["hotfn"] = build_hotfn_image()
    hello = os.path.join(ROOT, "examples", "hello")
    tags["hello"] = build_image(
        "iron/hello:latest", os.path.join(hello, "Dockerfile"), [os.path.join(hello, "func.sh")]
    )
    return tags


HOTFN_DIR = os.path.join(HERE, "hotfn")


def _compile_hotfn(context: str) -> None:
    result = subprocess.run(
        ["gcc", "-static", "-O2", "-o", os.path.join(context, "hotfn"), os.path.join(context, "hotfn.c")],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"gcc -static hotfn.c failed: {result.stderr}")


def build_hotfn_image() -> str:
    """``iftest/hotfn:1``: the static C hot function (``tests/hotfn/hotfn.c``), compiled
    with ``gcc -static`` here and alone in an image FROM scratch."""
    return build_image(
        image_tag("hotfn"), os.path.join(HOTFN_DIR, "Dockerfile"),
        [os.path.join(HOTFN_DIR, "hotfn.c")], prepare=_compile_hotfn,
    )


@pytest.fixture(scope="session")
def test_images() -> dict[str, str]:
    """Docker is running and every test image exists; name -> tag."""
    ensure_dockerd()
    return build_test_images()


def ensure_bridge() -> str:
    """The static bridge of ``HOT_TRANSPORT=socket`` (``ironfunctions/bridge``), built
    with gcc when missing or older than its source, as ``scripts/setup.sh`` does."""
    from ironfunctions import bridge

    if not os.path.exists(bridge.BINARY) or os.path.getmtime(bridge.BINARY) < os.path.getmtime(bridge.SOURCE):
        bridge.build()
    return bridge.BINARY


@pytest.fixture(scope="session")
def bridge_binary() -> str:
    """Path of the built static bridge."""
    return ensure_bridge()
