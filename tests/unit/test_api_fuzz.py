"""Bad input never gets a 500: random JSON shapes thrown at every management endpoint
(in process, memory datastore). A fixed seed keeps failures reproducible."""

import json
import random

from treq.testing import StubTreq
from twisted.internet.task import Clock

from ironfunctions.api import build_api
from ironfunctions.calls.memory import MemoryCallStore
from ironfunctions.datastore.memory import MemoryDatastore
from ironfunctions.routecache import RouteCache

FIELDS = ["name", "config", "path", "image", "memory", "headers", "type", "format", "max_concurrency",
          "timeout", "idle_timeout", "jwt_key", "app_name"]


def junk(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 7, 128, 3600, 10**12, -(10**12), 2**63])
    if kind == 3:
        return rng.choice([0.5, 1e308, -0.0, 64.0])
    if kind == 4:
        return rng.choice(["", "x", "/a", "//", "/%zz", "/a/../b", "\x00", "sync", "async", "http", "é☃",
                           "a" * 40, "/:p", "img:1", "A-b_c", "\r\nX: y"])
    if kind == 5:
        return "".join(rng.choice("ab/%:.\x00 é") for _ in range(rng.randrange(6)))
    if kind == 6:
        return [junk(rng, depth + 1) for _ in range(rng.randrange(3))]
    keys = rng.sample(FIELDS, rng.randrange(len(FIELDS)))
    return {k: junk(rng, depth + 1) for k in keys}


def test_random_bodies_and_paths_never_get_a_500() -> None:
    rng = random.Random(1234)
    ds = MemoryDatastore()
    clock = Clock()
    treq = StubTreq(build_api(ds, RouteCache(ds, clock), calls=MemoryCallStore(), clock=clock, host_memory_mb=2048))
    targets = [
        ("POST", "/v1/apps", "app"), ("PATCH", "/v1/apps/fz", "app"), ("POST", "/v1/apps/fz/routes", "route"),
        ("PUT", "/v1/apps/fz/routes/r", "route"), ("PATCH", "/v1/apps/fz/routes/r", "route"),
        ("DELETE", "/v1/apps/fz/routes/r", None), ("GET", "/v1/apps/fz/calls?per_page=x&status=", None),
        ("DELETE", "/v1/apps/fz", None),
    ]
    statuses = set()
    for n in range(600):
        method, path, wrapper = rng.choice(targets)
        value = junk(rng)
        if wrapper and rng.random() < 0.8:
            value = {wrapper: value}
        body = json.dumps(value).encode() if rng.random() < 0.9 else bytes(rng.randrange(256) for _ in range(8))
        out = []
        d = treq.request(method, "http://node" + path, data=body)  # type: ignore[attr-defined]  # StubTreq sets its methods in __init__
        d.addCallback(lambda r: treq.content(r).addCallback(lambda c: out.append((r.code, c))))  # type: ignore[attr-defined]
        treq.flush()
        assert out, (method, path, body)
        code, content = out[0]
        statuses.add(code)
        assert code < 500, (method, path, body, content)
        assert content.endswith(b"\n") and json.loads(content), (method, path, body, content)
    assert {400, 404} <= statuses
