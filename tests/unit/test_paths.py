"""Route path normalisation: one form for storing and looking up."""

import pytest

from ironfunctions.errors import ValidationError
from ironfunctions.paths import normalize_path


@pytest.mark.parametrize(
    "raw,normal",
    [
        ("/hello", "/hello"), ("/trail/", "/trail"), ("//a///b//", "/a/b"),
        ("/hello%20world", "/hello%20world"), ("/hello world", "/hello%20world"),
        ("/a%2Fb", "/a%2Fb"), ("/%7Euser", "/~user"), ("/caf%C3%A9", "/caf%C3%A9"),
        (b"/bytes/ok", "/bytes/ok"),
    ],
)
def test_normal_forms(raw: str | bytes, normal: str) -> None:
    assert normalize_path(raw) == normal


@pytest.mark.parametrize("raw", ["", "x", "/", "//", "/%zz", "/%", "/a/../b", "/..", "/./a", "/:param",
                                 "/a:b", "/%ff", "/a\nb", "/%2e%2e/x"])
def test_invalid_paths(raw: str) -> None:
    with pytest.raises(ValidationError, match="Invalid Path format"):
        normalize_path(raw)
