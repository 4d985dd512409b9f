"""test_gateway_policies.py - a gateway route's policies against real upstreams and a real
Redis: API keys with tenants, local rate limits, global limits shared by two keel processes
through one Redis (within 5%), Redis stopped mid-test, request validation and JSON Schema."""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

from harness import Keel, Reader, Suite, request, get, post
from upstream import Upstream
from test_gateway import gw, rec, hdr, free_port


class Redis:
    """A private redis-server on a free port (no persistence), stopped at exit."""

    def __init__(self, port=None):
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(exe):
            raise AssertionError("redis-server is not installed (scripts/deps.sh installs it)")
        self.port = port or free_port()
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=1)
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    s.close()
                    return
                s.close()
            except OSError:
                pass
            assert time.time() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def keyfile(text):
    d = tempfile.mkdtemp(prefix="keel-keys-")
    with open(d + "/keys", "w") as f:
        f.write(text)
    return d


def test_api_keys_and_tenants():
    a = Upstream("a")
    d = keyfile("# tenants and their keys\nacme k-acme-1\nglobex k-globex-1\nk-plain\n")
    os.makedirs(d + "/secret")
    with open(d + "/secret/initech", "w") as f:  # a Secret mounted as files: the name is the tenant
        f.write("k-initech\n")
    routes = ("  - prefix: /c/\n    upstream: a\n    auth: {api_keys: %s/keys}\n    cache: {}\n"
              "  - prefix: /a/\n    upstream: a\n    auth: {api_keys: %s/keys}\n"
              "  - prefix: /b/\n    upstream: a\n    auth: {api_keys: %s/secret}\n"
              "    rate_limit: {rate: 2/min, by: tenant}\n" % (d, d, d))
    with Keel(config=gw({"a": [a.port]}, routes)) as k:
        r, _ = request(k, get("/a/x"))
        assert r.status == 401 and r.header("www-authenticate") == 'Bearer realm="keel"', r
        r, _ = request(k, get("/a/x", extra="Authorization: Bearer wrong\r\n"))
        assert r.status == 401 and r.json()["error"] == "invalid API key", r
        for key in ["k-acme-1", "k-globex-1", "k-plain"]:
            j = rec(request(k, get("/a/x", extra="Authorization: Bearer %s\r\n" % key))[0])
            assert j["target"] == "/a/x", j
        rec(request(k, get("/a/x", extra="X-API-Key: k-acme-1\r\n"))[0])
        # by: tenant: two requests a minute for initech, whoever sends them
        for i in range(2):
            rec(request(k, get("/b/x", extra="X-API-Key: k-initech\r\n"))[0])
        r, _ = request(k, get("/b/x", extra="X-API-Key: k-initech\r\n"))
        assert r.status == 429 and int(r.header("retry-after")) >= 1, r
        assert r.header("ratelimit-limit") == "2" and r.header("ratelimit-remaining") == "0", r
        # Cached responses are kept per tenant: acme's entry is not globex's.
        for key in ["k-acme-1", "k-globex-1", "k-acme-1"]:
            r, _ = request(k, get("/c/cache/0/x", extra="X-API-Key: %s\r\n" % key))
            assert r.status == 200, r
        assert [r for r in a.requests if "cache" in r[1]].__len__() == 2, a.requests
        for line in k.lines:  # keys never reach the logs
            assert "k-acme-1" not in line and "k-initech" not in line, line
    a.close()
    shutil.rmtree(d)


def test_local_rate_limit_by_client_and_header():
    a = Upstream("a")
    routes = ("  - prefix: /c/\n    upstream: a\n    rate_limit: {rate: 5/s, burst: 5, by: client}\n"
              "  - prefix: /h/\n    upstream: a\n    rate_limit: {rate: 1/min, by: 'header:X-User'}\n")
    with Keel(config=gw({"a": [a.port]}, routes)) as k:
        codes = [request(k, get("/c/x"))[0].status for _ in range(8)]
        assert codes[:5] == [200] * 5 and codes[5:] == [429] * 3, codes
        time.sleep(0.25)  # one token back after 200 ms
        assert request(k, get("/c/x"))[0].status == 200
        r, _ = request(k, get("/h/x", extra="X-User: u1\r\n"))
        assert r.status == 200, r
        assert request(k, get("/h/x", extra="X-User: u1\r\n"))[0].status == 429
        assert request(k, get("/h/x", extra="X-User: u2\r\n"))[0].status == 200
        assert request(k, get("/h/x"))[0].status == 200  # no header: the limit does not apply
    a.close()


def global_cfg(redis_port, up_port, on_error="local", rate="100/s", burst=100):
    return gw({"a": [up_port]},
              "  - prefix: /\n    upstream: a\n    rate_limit: {rate: %s, burst: %d, by: route, "
              "scope: global, on_redis_error: %s, replicas: 2}\n" % (rate, burst, on_error),
              extra="redis: {address: 127.0.0.1:%d, timeout: 50ms, circuit: {failures: 3, cooldown: 500ms}}\n"
              % redis_port)


def test_global_limit_across_two_processes():
    rd = Redis()
    a = Upstream("a")
    try:
        cfg = global_cfg(rd.port, a.port, rate="200/s", burst=20)
        with Keel(config=cfg) as k1, Keel(config=cfg) as k2:
            allowed = [0, 0]
            stop = time.time() + 2.0
            t0 = time.time()

            def hammer(i, k):
                s = k.connect()
                rdr = Reader(s)
                while time.time() < stop:
                    s.sendall(get("/rec"))
                    if rdr.response().status == 200:
                        allowed[i] += 1
                s.close()
            ts = [threading.Thread(target=hammer, args=(i, k)) for i, k in enumerate((k1, k2))]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            secs = time.time() - t0
            want = 20 + 200 * secs
            total = sum(allowed)
            assert abs(total - want) <= 0.05 * want, (allowed, want, secs)
            assert min(allowed) > 0.2 * total, allowed  # both processes used the shared bucket
    finally:
        rd.stop()
        a.close()


def test_redis_stopped_mid_test():
    rd = Redis()
    a = Upstream("a")
    try:
        with Keel(config=global_cfg(rd.port, a.port, on_error="closed", rate="1000/s", burst=1000)) as k:
            assert request(k, get("/rec"))[0].status == 200
            r, _ = request(k, get("/rec"))
            assert r.header("ratelimit-limit") == "1000", r
            rd.stop()
            t0 = time.time()
            codes = [request(k, get("/rec"))[0] for _ in range(10)]
            assert all(c.status == 503 and c.header("retry-after") == "1" for c in codes), codes
            assert time.time() - t0 < 2, time.time() - t0  # each within about the timeout
        with Keel(config=global_cfg(rd.port, a.port, on_error="open")) as k:
            for _ in range(5):
                r, _ = request(k, get("/rec"))
                assert r.status == 200 and r.header("ratelimit-limit") is None, r
        rd2 = Redis(port=rd.port)  # Redis comes back: decisions are global again
        try:
            with Keel(config=global_cfg(rd.port, a.port, on_error="closed", rate="1/min", burst=3)) as k:
                deadline = time.time() + 5
                while request(k, get("/rec"))[0].status == 503:  # the client (re)connects
                    assert time.time() < deadline
                    time.sleep(0.1)
                codes = [request(k, get("/rec"))[0].status for _ in range(4)]
                assert codes.count(429) >= 2 and 503 not in codes, codes
        finally:
            rd2.stop()
    finally:
        rd.stop()
        a.close()


SCHEMA = {
    "type": "object",
    "required": ["name", "items"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 8},
        "items": {"type": "array", "maxItems": 3,
                  "items": {"type": "object", "properties": {"qty": {"type": "integer", "minimum": 1}}}},
        "kind": {"enum": ["a", "b"]},
    },
}


def test_validation():
    a = Upstream("a")
    d = tempfile.mkdtemp(prefix="keel-schema-")
    with open(d + "/order.json", "w") as f:
        json.dump(SCHEMA, f)
    routes = ("  - path: /orders\n    upstream: a\n    validate:\n      methods: [POST]\n"
              "      content_types: [application/json]\n      max_body: 1KiB\n"
              "      require_headers: [X-Tenant]\n      schema: %s/order.json\n"
              "  - path: /small\n    handler: echo\n    max_body: 10\n"
              "  - rate_limit: {rate: 5/s}\n    name: early\n    path: /early\n    handler: echo\n"
              "  - path: /inline\n    handler: echo\n    validate:\n      schema:\n"
              "        type: object\n        required: [n]\n        properties:\n"
              "          n: {type: integer, maximum: 10}\n" % d)
    good = json.dumps({"name": "x", "items": [{"qty": 2}], "kind": "a"})
    with Keel(config=gw({"a": [a.port]}, routes)) as k:
        j = rec(request(k, post("/orders", good, extra="X-Tenant: t\r\n"))[0])
        assert j["body_len"] == len(good), j  # validated, then proxied whole
        r, _ = request(k, get("/orders", extra="X-Tenant: t\r\n"))
        assert r.status == 405, r
        r, _ = request(k, post("/orders", good, ctype="text/plain", extra="X-Tenant: t\r\n"))
        assert r.status == 415, r
        r, _ = request(k, post("/orders", good))
        assert r.status == 400 and "X-Tenant" in r.json()["error"], r
        r, _ = request(k, post("/orders", "x" * 2000, extra="X-Tenant: t\r\n"))
        assert r.status == 413, r
        r, _ = request(k, post("/orders", "{not json", extra="X-Tenant: t\r\n"))
        assert r.status == 400, r
        bad = json.dumps({"name": "x", "items": [{"qty": 2}, {"qty": 0}]})
        r, _ = request(k, post("/orders", bad, extra="X-Tenant: t\r\n"))
        assert r.status == 422, r
        e = r.json()
        assert e["path"] == "/items/1/qty" and e["keyword"] == "minimum", e
        r, _ = request(k, post("/orders", json.dumps({"name": "x", "items": [], "extra": 1}),
                               extra="X-Tenant: t\r\n"))
        assert r.status == 422 and r.json()["keyword"] == "additionalProperties", r
        assert a.count() == 1, a.requests  # only the valid order reached the upstream
        r, _ = request(k, post("/small", '{"a":"0123456789"}'))
        assert r.status == 413, r  # a handler route's max_body
        r, _ = request(k, post("/early", '{"a":1}'))
        assert r.status == 200 and r.header("ratelimit-limit") == "5", r
        r, _ = request(k, post("/inline", '{"n": 3}'))
        assert r.status == 200 and r.body == b'{"n":3}', r
        r, _ = request(k, post("/inline", '{"n": 30}'))
        assert r.status == 422 and r.json()["path"] == "/n", r
    a.close()
    shutil.rmtree(d)


def test_cache_shared_through_redis():
    """Two keel processes behind one Redis: what one fetched, the other serves (X-Cache: HIT)
    without asking the upstream; with Redis gone, each still serves (its own copy, or upstream)."""
    rd = Redis()
    a = Upstream("a")
    try:
        cfg = gw({"a": [a.port]}, "  - prefix: /cache/\n    upstream: a\n    cache: {}\n",
                 extra="redis: {address: 127.0.0.1:%d, timeout: 50ms}\ncache: {redis: true}\n"
                 % rd.port)
        with Keel(config=cfg) as k1, Keel(config=cfg) as k2:
            r1, _ = request(k1, get("/cache/0/shared"))
            assert r1.status == 200 and r1.header("x-cache") == "MISS", r1
            deadline = time.time() + 2
            while True:  # the SET is asynchronous
                r2, _ = request(k2, get("/cache/0/shared"))
                if r2.header("x-cache") == "HIT" or time.time() > deadline:
                    break
                time.sleep(0.05)
            assert r2.header("x-cache") == "HIT" and r2.body == r1.body, r2
            assert r2.header("age") is not None, r2
            assert a.count() <= 2, a.count()  # k2 may have missed once before the SET landed
            n = a.count()
            r3, _ = request(k2, get("/cache/0/shared"))  # now in k2's own memory
            assert r3.header("x-cache") == "HIT" and a.count() == n, r3
            rd.stop()
            r4, _ = request(k1, get("/cache/0/other"))  # Redis down: a miss goes upstream
            assert r4.status == 200 and r4.header("x-cache") == "MISS", r4
    finally:
        rd.stop()
        a.close()


if __name__ == "__main__":
    Suite().run(globals())
