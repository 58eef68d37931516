"""Domain values hold their own copies of the mappings they are given."""

from typing import cast

from ironfunctions.models import App, CallRequest, CallResult


def test_values_copy_headers_and_maps_so_later_changes_do_not_leak_in() -> None:
    headers = {"A": ["1"], "B": []}
    params = {"x": "y"}
    request = CallRequest("GET", "http://h/r/a/p", headers=headers, params=params)
    result = CallResult("c", "success", headers=headers)
    headers["A"].append("2")
    headers["C"] = ["3"]
    params["z"] = "w"
    assert request.headers == result.headers == {"A": ["1"], "B": []}
    assert request.params == {"x": "y"}


def test_missing_or_empty_mappings_become_new_empty_dicts() -> None:
    empty: dict[str, list[str]] = {}
    request = CallRequest("GET", "u", headers=empty, params=None)
    assert request.headers == {} and request.headers is not empty and request.params == {}
    assert CallResult("c", "success").headers == {} and App("a", config=None).config == {}
    assert CallResult("c", "success").headers is not CallResult("c", "success").headers


def test_call_status_values_are_the_wire_strings() -> None:
    """One vocabulary for call statuses; JSON, SQL and f-strings see the plain string."""
    import json

    from ironfunctions.models import CallStatus

    assert [s.value for s in CallStatus] == ["queued", "running", "success", "error", "timeout", "cancelled"]
    assert json.dumps({"status": CallStatus.TIMEOUT}) == '{"status": "timeout"}'
    assert f"{CallStatus.ERROR}" == "error" and cast(str, CallStatus.SUCCESS) == "success"  # mypy: a member is its string
    assert [s for s in CallStatus if s.terminal] == ["success", "error", "timeout", "cancelled"]


def test_call_result_status_is_a_member_even_when_given_its_string() -> None:
    from ironfunctions.models import CallStatus

    assert CallResult("c", "success").status is CallStatus.SUCCESS
