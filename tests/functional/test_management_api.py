"""The management API of SPEC §3 over real HTTP against a real daemon process
(``twistd -n ironfunctions``) on the embedded default SQLite store."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import cast

import jwt

from tests.daemon import REPO, TWISTD, Daemon, DaemonFactory, Reply, http


def error_of(reply: Reply) -> str:
    return cast(str, reply.json()["error"]["message"])


def test_hello_version_and_unknown_path(daemon: Daemon) -> None:
    r = daemon.get("/")
    assert r.status == 200
    assert r.json() == {"goto": "https://github.com/iron-io/functions", "hello": "world!"}
    assert r.body.endswith(b"\n")
    assert r.header("content-type") == "application/json"
    for path in ("/version", "/v1/version"):
        assert set(daemon.get(path).json()) == {"version"}
    r = daemon.get("/no/such/thing")
    assert (r.status, r.json()) == (404, {"error": {"message": "Not Found"}})


def test_app_lifecycle(daemon: Daemon) -> None:
    r = daemon.post("/v1/apps", {"app": {"name": "myapp", "config": {"A": "1", "B": "2"}}})
    assert r.status == 200
    assert r.json() == {"message": "App successfully created", "app": {"name": "myapp", "config": {"A": "1", "B": "2"}}}
    assert daemon.post("/v1/apps", {"app": {"name": "myapp"}}).status == 409
    daemon.post("/v1/apps", {"app": {"name": "aaa"}})
    listed = daemon.get("/v1/apps").json()
    assert listed["message"] == "Successfully listed applications"
    assert [a["name"] for a in listed["apps"]] == ["aaa", "myapp"]
    r = daemon.request("PATCH", "/v1/apps/myapp", {"app": {"config": {"A": "", "C": "3"}}})
    assert r.json() == {"message": "App successfully updated", "app": {"name": "myapp", "config": {"B": "2", "C": "3"}}}
    r = daemon.request("PATCH", "/v1/apps/myapp", {"app": {"name": "other"}})
    assert (r.status, error_of(r)) == (400, "Could not update app - name is immutable")
    assert daemon.get("/v1/apps/myapp").json()["message"] == "Successfully loaded app"
    r = daemon.request("DELETE", "/v1/apps/myapp")
    assert (r.status, r.json()) == (200, {"message": "App deleted"})
    r = daemon.get("/v1/apps/myapp")
    assert (r.status, error_of(r)) == (404, "App not found")
    assert daemon.request("DELETE", "/v1/apps/myapp").status == 404


ROUTE_FIELDS = ["app_name", "path", "image", "memory", "headers", "type", "format",
                "max_concurrency", "timeout", "idle_timeout", "config", "jwt_key"]


def test_route_defaults_field_order_and_lifecycle(daemon: Daemon) -> None:
    r = daemon.post("/v1/apps/newapp/routes", {"route": {"path": "/hello", "image": "iron/hello"}})
    assert r.status == 200, r.body
    body = r.json()
    assert body["message"] == "Route successfully created"
    assert list(body["route"]) == ROUTE_FIELDS
    assert body["route"] == {
        "app_name": "newapp", "path": "/hello", "image": "iron/hello", "memory": 128, "headers": {},
        "type": "sync", "format": "default", "max_concurrency": 1, "timeout": 30, "idle_timeout": 30,
        "config": {}, "jwt_key": "",
    }
    # The app was created with the route.
    assert daemon.get("/v1/apps/newapp").status == 200
    r = daemon.post("/v1/apps/newapp/routes", {"route": {"path": "/hello", "image": "x"}})
    assert (r.status, error_of(r)) == (409, "Route already exists")
    r = daemon.request("DELETE", "/v1/apps/newapp")
    assert (r.status, error_of(r)) == (400, "Cannot remove apps with routes")

    r = daemon.request("PATCH", "/v1/apps/newapp/routes/hello", {"route": {
        "memory": 256, "timeout": 5, "headers": {"X-A": ["1", "2"], "X-B": ["b"]}, "config": {"K": "v", "L": "w"}}})
    assert r.status == 200 and r.json()["message"] == "Route successfully updated"
    r = daemon.request("PATCH", "/v1/apps/newapp/routes/hello", {"route": {
        "headers": {"X-B": [], "X-A": ["3"]}, "config": {"L": ""}}})
    route = r.json()["route"]
    assert (route["memory"], route["timeout"]) == (256, 5)
    assert route["headers"] == {"X-A": ["3"]}
    assert route["config"] == {"K": "v"}
    # Repeating a PATCH changes nothing more.
    again = daemon.request("PATCH", "/v1/apps/newapp/routes/hello", {"route": {
        "headers": {"X-B": [], "X-A": ["3"]}, "config": {"L": ""}}}).json()["route"]
    assert again == route
    r = daemon.request("PATCH", "/v1/apps/newapp/routes/hello", {"route": {"path": "/other"}})
    assert (r.status, error_of(r)) == (400, "Could not update route - path is immutable")
    assert daemon.get("/v1/apps/newapp/routes/hello").json()["message"] == "Successfully loaded route"

    r = daemon.request("DELETE", "/v1/apps/newapp/routes/hello")
    assert r.json() == {"message": "Route deleted"}
    r = daemon.get("/v1/apps/newapp/routes/hello")
    assert (r.status, error_of(r)) == (404, "Route not found")
    r = daemon.get("/v1/apps/ghost/routes/hello")
    assert (r.status, error_of(r)) == (404, "App not found")
    assert daemon.get("/v1/apps/ghost/routes").status == 404


def test_route_listing_filters_and_all_routes(daemon: Daemon) -> None:
    daemon.post("/v1/apps/a/routes", {"route": {"path": "/x", "image": "img1"}})
    daemon.post("/v1/apps/a/routes", {"route": {"path": "/y", "image": "img2"}})
    daemon.post("/v1/apps/b/routes", {"route": {"path": "/z", "image": "img1"}})
    r = daemon.get("/v1/apps/a/routes")
    assert r.json()["message"] == "Successfully listed routes"
    assert [x["path"] for x in r.json()["routes"]] == ["/x", "/y"]
    assert [x["path"] for x in daemon.get("/v1/apps/a/routes?image=img2").json()["routes"]] == ["/y"]
    assert [(x["app_name"], x["path"]) for x in daemon.get("/v1/routes").json()["routes"]] == [
        ("a", "/x"), ("a", "/y"), ("b", "/z")]
    assert [x["app_name"] for x in daemon.get("/v1/routes?image=img1").json()["routes"]] == ["a", "b"]


def test_paths_are_normalised_when_stored_and_looked_up(daemon: Daemon) -> None:
    r = daemon.post("/v1/apps/a/routes", {"route": {"path": "/trail/", "image": "i"}})
    assert r.json()["route"]["path"] == "/trail"
    r = daemon.post("/v1/apps/a/routes", {"route": {"path": "//deep///er", "image": "i"}})
    assert r.json()["route"]["path"] == "/deep/er"
    assert daemon.get("/v1/apps/a/routes/trail/").status == 200
    assert daemon.get("/v1/apps/a/routes//deep//er").json()["route"]["path"] == "/deep/er"
    assert daemon.post("/v1/apps/a/routes", {"route": {"path": "/trail", "image": "i"}}).status == 409


def test_put_creates_or_replaces_whole_route(daemon: Daemon) -> None:
    r = daemon.request("PUT", "/v1/apps/p/routes/fn", {"route": {"image": "one", "memory": 64, "config": {"A": "b"}}})
    assert (r.status, r.json()["message"]) == (200, "Route successfully created")
    assert r.json()["route"]["memory"] == 64
    r = daemon.request("PUT", "/v1/apps/p/routes/fn", {"route": {"image": "two"}})
    assert (r.status, r.json()["message"]) == (200, "Route successfully updated")
    # Fields left out take their defaults.
    assert (r.json()["route"]["memory"], r.json()["route"]["config"]) == (128, {})
    r = daemon.request("PUT", "/v1/apps/p/routes/fn", {"route": {"memory": 64}})
    assert (r.status, error_of(r)) == (400, "Missing route Image")


BAD_APPS = [
    (b"{not json", 400, "Invalid JSON"),
    (b"", 400, "Invalid JSON"),
    (b"[]", 400, None),
    (b"{}", 400, "Missing new application"),
    (b'{"app": {}}', 400, "Missing app name"),
    (b'{"app": {"name": ""}}', 400, "Missing app name"),
    (b'{"app": {"name": "' + b"a" * 31 + b'"}}', 400, "App name must be 30 characters or less"),
    (b'{"app": {"name": "bad name!"}}', 400, "Invalid app name"),
    (b'{"app": {"name": 12}}', 400, "Invalid app name"),
    (b'{"app": "x"}', 400, None),
    (b'{"app": {"name": "ok", "config": {"k": 1}}}', 400, None),
    (b'{"app": {"name": "ok", "config": []}}', 400, None),
]


def test_bad_app_input_gets_4xx_with_message(daemon: Daemon) -> None:
    for body, status, message in BAD_APPS:
        r = daemon.post("/v1/apps", body)
        assert r.status == status, (body, r.status, r.body)
        assert r.header("content-type") == "application/json"
        if message:
            assert error_of(r) == message, body
        else:
            assert error_of(r)
    assert daemon.get("/v1/apps").json()["apps"] == []


BAD_ROUTES = [
    ({}, "Missing new route"),
    ({"route": {"image": "i"}}, "Missing route Path"),
    ({"route": {"path": "/x"}}, "Missing route Image"),
    ({"route": {"path": "/%zz", "image": "i"}}, "Invalid Path format"),
    ({"route": {"path": "//", "image": "i"}}, "Invalid Path format"),
    ({"route": {"path": "/a/../b", "image": "i"}}, "Invalid Path format"),
    ({"route": {"path": "/:param", "image": "i"}}, "Invalid Path format"),
    ({"route": {"path": "noslash", "image": "i"}}, "Invalid Path format"),
    ({"route": {"path": "/x", "image": "i", "type": "weird"}}, "Invalid route Type"),
    ({"route": {"path": "/x", "image": "i", "format": "json-ish"}}, "Invalid route Format"),
    ({"route": {"path": "/x", "image": "i", "memory": "64"}}, "memory"),
    ({"route": {"path": "/x", "image": "i", "memory": -1}}, "memory"),
    ({"route": {"path": "/x", "image": "i", "memory": 10**9}}, "memory"),
    ({"route": {"path": "/x", "image": "i", "timeout": 0}}, "timeout"),
    ({"route": {"path": "/x", "image": "i", "timeout": 3601}}, "timeout"),
    ({"route": {"path": "/x", "image": "i", "idle_timeout": -5}}, "idle_timeout"),
    ({"route": {"path": "/x", "image": "i", "max_concurrency": 0}}, "max_concurrency"),
    ({"route": {"path": "/x", "image": "i", "max_concurrency": True}}, "max_concurrency"),
    ({"route": {"path": "/x", "image": "i", "headers": {"X": [1]}}}, "header"),
    ({"route": {"path": "/x", "image": "i", "headers": {"X": ["a\r\nInjected: 1"]}}}, "header"),
    ({"route": {"path": "/x", "image": "i", "headers": "nope"}}, "headers"),
]


def test_bad_route_input_gets_400_listing_the_problem(daemon: Daemon) -> None:
    for body, message in BAD_ROUTES:
        r = daemon.post("/v1/apps/a/routes", body)
        assert r.status == 400, (body, r.status, r.body)
        assert message in error_of(r), (body, r.body)
    r = daemon.post("/v1/apps/a/routes", {"route": {"path": "/%zz", "image": "", "type": "x"}})
    assert error_of(r).split("; ") == ["Invalid Path format", "Missing route Image", "Invalid route Type"]
    # Unknown fields are ignored.
    r = daemon.post("/v1/apps/a/routes", {"route": {"path": "/ok", "image": "i", "bogus": 1}, "extra": True})
    assert r.status == 200
    r = daemon.request("PATCH", "/v1/apps/a/routes/ok", {"route": {"memory": "lots"}})
    assert r.status == 400 and "memory" in error_of(r)
    r = daemon.request("PATCH", "/v1/apps/a/routes/ok", b"{")
    assert (r.status, error_of(r)) == (400, "Invalid JSON")
    r = daemon.get("/v1/apps/a/routes/%zz")
    assert (r.status, error_of(r)) == (400, "Invalid Path format")
    # Nothing invalid was stored.
    assert [x["path"] for x in daemon.get("/v1/apps/a/routes").json()["routes"]] == ["/ok"]


def test_huge_body_gets_413_and_the_daemon_keeps_serving(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory(env={"MAX_REQUEST_SIZE": "64KiB"})
    r = d.post("/v1/apps", b"{" + b" " * (100 * 1024) + b"}")
    assert r.status == 413
    assert "too large" in error_of(r)
    assert d.get("/v1/apps").status == 200


def test_apps_and_routes_persist_across_restart(daemon: Daemon) -> None:
    daemon.post("/v1/apps", {"app": {"name": "keep", "config": {"A": "1"}}})
    daemon.post("/v1/apps/keep/routes", {"route": {"path": "/fn", "image": "img", "jwt_key": "k", "headers": {"X": ["y"]}}})
    before = daemon.get("/v1/apps/keep/routes/fn").json()
    daemon.restart()
    assert daemon.get("/v1/apps/keep").json()["app"] == {"name": "keep", "config": {"A": "1"}}
    assert daemon.get("/v1/apps/keep/routes/fn").json() == before


def test_jwt_auth_key_guards_v1_tasks_metrics_and_stats(daemon_factory: DaemonFactory) -> None:
    key = "s3cret-s3cret-s3cret-s3cret-s3cr"  # 32 bytes, the least JWT_AUTH_KEY accepts
    d = daemon_factory(env={"JWT_AUTH_KEY": key})
    r = d.get("/v1/apps")
    assert (r.status, r.json()) == (401, {"error": {"message": "Invalid API Authorization token."}})
    bad = jwt.encode({"exp": int(time.time()) + 60}, "wrong-wrong-wrong-wrong-wrong-wr", algorithm="HS256")
    assert d.get("/v1/apps", headers={"Authorization": f"Bearer {bad}"}).status == 401
    expired = jwt.encode({"exp": int(time.time()) - 60}, key, algorithm="HS256")
    assert d.get("/v1/apps", headers={"Authorization": f"Bearer {expired}"}).status == 401
    good = jwt.encode({"exp": int(time.time()) + 60}, key, algorithm="HS256")
    for path in ("/v1/apps", "/tasks", "/metrics", "/stats"):
        assert d.get(path).status == 401, path
        assert d.get(path, headers={"Authorization": f"Bearer {good}"}).status in (200, 202), path
    for path in ("/", "/version", "/health"):
        assert d.get(path).status == 200, path


def test_daemon_logs_one_logfmt_line_per_event(daemon: Daemon) -> None:
    daemon.stop()
    lines = [line for line in daemon.log().splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert line.startswith("time=") and " level=" in line, line


def test_invalid_config_stops_with_one_line_naming_the_variable(tmp_path: Path) -> None:
    for env, variable in [({"PORT": "http"}, "PORT"), ({"DB_URL": "mysql://x"}, "DB_URL"),
                          ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"), ({"MAX_CONCURRENCY": "-1"}, "MAX_CONCURRENCY")]:
        proc = subprocess.run([TWISTD, "-n", "--pidfile=", "ironfunctions"], cwd=tmp_path,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO, **env},
                              capture_output=True, timeout=60)
        assert proc.returncode != 0
        err = proc.stderr.decode().strip().splitlines()
        assert len(err) == 1 and variable in err[0], (env, proc.stderr)


def test_twistd_help_lists_plugin_and_options(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO}
    out = subprocess.run([TWISTD, "--help"], env=env, capture_output=True, timeout=60).stdout.decode()
    assert "ironfunctions" in out
    out = subprocess.run([TWISTD, "-n", "ironfunctions", "--help"], env=env, cwd=tmp_path,
                         capture_output=True, timeout=60).stdout.decode()
    for option in ["--port", "--listen", "--db-url", "--mq-url", "--api-url", "--log-level", "--jwt-auth-key",
                   "--docker-host", "--num-async", "--max-concurrency", "--max-request-size",
                   "--max-response-size", "--statsd-url", "--docker-network", "--node-id",
                   "--async-max-attempts", "--async-retry-delay", "--api-auth"]:
        assert option in out, option


def test_option_wins_over_environment(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory(env={"LOG_LEVEL": "error"}, args=["--log-level", "debug"])
    d.get("/v1/apps")
    d.stop()
    assert "level=debug" in d.log()


def test_health_stats_and_metrics(daemon: Daemon) -> None:
    r = daemon.get("/health")
    assert r.status == 200
    stats = daemon.get("/stats").json()
    assert set(stats) == {"Queue", "Running", "Complete"}
    r = daemon.get("/metrics")
    assert r.status == 200 and cast(str, r.header("content-type")).startswith("text/plain")


def test_raw_http_client_gets_a_reply_to_garbage(daemon: Daemon) -> None:
    r = http("POST", daemon.url + "/v1/apps", b"\xff\xfe\x00garbage", {"Content-Type": "application/json"})
    assert r.status == 400 and error_of(r) == "Invalid JSON"


def test_listener_backlog_holds_a_burst_of_clients(daemon: Daemon) -> None:
    """The listening socket queues at least 500 pending connections (or the kernel's
    somaxconn): with Twisted's default 50, a burst of 500 concurrent calls got
    connection resets instead of 503 + Retry-After (bench/cold_load.py)."""
    with open("/proc/sys/net/core/somaxconn") as f:
        somaxconn = int(f.read())
    out = subprocess.run(["ss", "-ltnH", f"sport = :{daemon.port}"], capture_output=True, text=True, check=True)
    backlogs = [int(line.split()[2]) for line in out.stdout.splitlines() if line.strip()]
    assert backlogs and min(backlogs) >= min(500, somaxconn), out.stdout
