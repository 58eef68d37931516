"""``HOT_TRANSPORT``'s default: the socket transport when the bridge is built, the
engine's attach stream (with a warning at start) when it is not; an explicit
``socket`` without the bridge refuses to start."""

from __future__ import annotations

from pathlib import Path

import pytest

from ironfunctions import bridge, tap

MISSING = "bridge binary /x/ifbridge is missing; build it with scripts/setup.sh"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for _, env, _ in tap.SETTINGS:
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("NODE_ID", "node-test")
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def parse(args: list[str]) -> tap.Options:
    options = tap.Options()  # type: ignore[no-untyped-call]
    options.parseOptions(args)  # type: ignore[no-untyped-call]
    return options


def test_the_default_is_the_socket_transport_when_the_bridge_is_built(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setattr(bridge, "missing", lambda: None)
    options = parse([])
    assert options["config"].hot_transport == "socket" and not options.get("bridge_missing")


def test_without_the_bridge_the_default_falls_back_to_attach_and_says_why(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setattr(bridge, "missing", lambda: MISSING)
    options = parse([])
    assert options["config"].hot_transport == "attach"
    assert options["bridge_missing"] == MISSING  # makeService logs it as a warning


@pytest.mark.parametrize("how", ["env", "option"])
def test_an_explicit_socket_transport_without_the_bridge_refuses_to_start(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], how: str,
) -> None:
    clean_env.setattr(bridge, "missing", lambda: MISSING)
    args = ["--hot-transport=socket"] if how == "option" else []
    if how == "env":
        clean_env.setenv("HOT_TRANSPORT", "socket")
    with pytest.raises(SystemExit) as exited:
        parse(args)
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("ironfunctions: configuration error: HOT_TRANSPORT=socket: bridge binary")


def test_an_explicit_attach_transport_needs_no_bridge(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setattr(bridge, "missing", lambda: MISSING)
    clean_env.setenv("HOT_TRANSPORT", "attach")
    options = parse([])
    assert options["config"].hot_transport == "attach" and not options.get("bridge_missing")
