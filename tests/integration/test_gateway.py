"""test_gateway.py - the API gateway against real upstreams (a scriptable Python upstream, keel
itself, nginx): routing, path normalisation, proxy headers, smuggling and injection attempts,
malformed and dying upstreams, streaming with bounded memory, pooling, retries, ejection and
health checks, timeouts, circuit breaking, check-config."""
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from harness import KEEL, Keel, Reader, Suite, request, get, post
from upstream import Upstream


def gw(ups, routes, extra=""):
    """A config with upstreams {name: [ports]} (or raw YAML) and a routes YAML block."""
    y = "workers: 1\n" + extra + "upstreams:\n"
    for name, spec in ups.items():
        if isinstance(spec, str):
            y += "  %s:\n%s\n" % (name, spec)
        else:
            y += "  %s:\n    endpoints: [%s]\n" % (name, ", ".join("127.0.0.1:%d" % p for p in spec))
    return y + "routes:\n" + routes


def rec(resp):
    assert resp.status == 200, resp
    return resp.json()


def hdr(j, name):
    vals = [v for k, v in j["headers"] if k.lower() == name.lower()]
    return vals[0] if len(vals) == 1 else (vals or None)


def vmhwm_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


ROUTES = """
  - path: /hello
    handler: hello
  - path: /only-post
    methods: [POST]
    upstream: a
  - host: api.example.com
    prefix: /
    upstream: b
  - host: "*.wild.test"
    prefix: /w
    upstream: b
  - prefix: /admin
    upstream: b
  - prefix: /api/
    upstream: a
"""


def test_routing_table():
    a, b = Upstream("a"), Upstream("b")
    with Keel(config=gw({"a": [a.port], "b": [b.port]}, ROUTES)) as k:
        r, _ = request(k, get("/hello"))
        assert r.status == 200 and r.body == b"Hello, cloud native!", r
        assert rec(request(k, get("/api/x?q=1"))[0])["upstream"] == "a"
        assert rec(request(k, get("/api/x", host="api.example.com"))[0])["upstream"] == "b"
        assert rec(request(k, get("/w/1", host="x.wild.test:8080"))[0])["upstream"] == "b"
        j = rec(request(k, get("/api/x?q=1&b=%20"))[0])
        assert j["target"] == "/api/x?q=1&b=%20", j  # the query goes through untouched
        r, _ = request(k, get("/apix"))
        assert r.status == 404, r
        assert rec(request(k, get("/admin"))[0])["upstream"] == "b"
        assert rec(request(k, get("/admin/x"))[0])["upstream"] == "b"
        r, _ = request(k, get("/adminx"))
        assert r.status == 404, r  # a prefix matches whole segments
        r, _ = request(k, get("/only-post"))
        assert r.status == 405 and r.header("allow") == "POST", r
        assert rec(request(k, post("/only-post", "{}"))[0])["method"] == "POST"
        r, _ = request(k, get("/nothing"))
        assert r.status == 404 and r.json()["path"] == "/nothing", r
        r, _ = request(k, get("/livez"))  # keel's own routes come first
        assert r.status == 200, r
    a.close()
    b.close()


def test_path_normalisation():
    a, b = Upstream("a"), Upstream("b")
    with Keel(config=gw({"a": [a.port], "b": [b.port]}, ROUTES)) as k:
        for path in ["/%61dmin/x", "/api/../admin/x", "//admin/x", "/api/./../admin/x",
                     "/api/%2e%2e/admin/x", "/ADMIN/../admin/x", "/admin//x"]:
            j = rec(request(k, get(path))[0])
            assert j["upstream"] == "b" and j["target"] == "/admin/x", (path, j)
        j = rec(request(k, get("/api/a%2Db%7e%7Bc%7d"))[0])
        assert j["target"] == "/api/a-b~%7Bc%7D", j  # unreserved decoded, others upper-cased
        for path in ["/api%2fx", "/api/%2F../admin", "/api/%00", "/api/%5c", "/..", "/api/../../x",
                     "/api/%zz", "/api/%4"]:
            r, rd = request(k, get(path))
            assert r.status == 400, (path, r)
            assert "error" in r.json() and rd.closed(), (path, r)
        n = a.count() + b.count()
        assert n == 8, n  # the 400s never reached an upstream
    a.close()
    b.close()


def test_forwarded_headers_and_hop_by_hop():
    a = Upstream("a")
    with Keel(config=gw({"a": [a.port]}, "  - prefix: /\n    upstream: a\n")) as k:
        extra = ("X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"
                 "Connection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 300\r\n"
                 "TE: trailers\r\nUpgrade: websocket\r\nProxy-Authorization: Basic x\r\n"
                 "X-Custom: kept\r\n")
        r, _ = request(k, get("/rec", host="front.example", extra=extra))
        j = rec(r)
        assert hdr(j, "host") == "front.example", j
        assert hdr(j, "x-forwarded-for") == "203.0.113.7, 127.0.0.1", j
        assert hdr(j, "x-forwarded-proto") == "http", j
        for h in ["x-secret", "keep-alive", "te", "upgrade", "proxy-authorization", "connection"]:
            assert hdr(j, h) is None, (h, j)
        assert hdr(j, "x-custom") == "kept", j
        rid = hdr(j, "x-request-id")
        assert rid and len(rid) == 36 and rid[14] == "4", j
        j2 = rec(request(k, get("/rec", extra="X-Request-Id: abc-123\r\n"))[0])
        assert hdr(j2, "x-request-id") == "abc-123", j2
        # HTTP/1.0 without Host: the upstream still gets one (its address)
        j3 = rec(request(k, b"GET /rec HTTP/1.0\r\n\r\n")[0])
        assert hdr(j3, "host") == "127.0.0.1:%d" % a.port, j3
        # The response: hop-by-hop fields (and those its Connection names) are dropped.
        assert r.header("x-hop") is None and r.header("keep-alive") is None, r
        assert r.header("x-kept") == "1" and r.header("date"), r
    a.close()


def test_injection_and_smuggling_attempts():
    a = Upstream("a")
    with Keel(config=gw({"a": [a.port]}, "  - prefix: /\n    upstream: a\n")) as k:
        attempts = [
            # CR or LF inside a value that would be forwarded
            b"GET /rec HTTP/1.1\r\nHost: x\r\nX-A: a\rX-Injected: 1\r\n\r\n",
            b"GET /rec HTTP/1.1\r\nHost: x\r\nX-A: a\nX-Injected: 1\r\n\r\n",
            # CL.TE and TE.CL
            b"POST /rec HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
            b"POST /rec HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nGET /x H\r\n0\r\n\r\n",
            # obfuscated Transfer-Encoding
            b"POST /rec HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
            b"POST /rec HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
            b"POST /rec HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ]
        for raw in attempts:
            r, rd = request(k, raw)
            assert r.status in (400, 501), (raw, r)
            assert rd.closed(), raw
        assert a.count() == 0, a.requests
        # A chunked body with a smuggled request inside stays one request upstream.
        s = k.connect()
        body = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        s.sendall(b"POST /rec HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                  % (len(body), body) + get("/rec"))
        rd = Reader(s)
        j1, j2 = rec(rd.response()), rec(rd.response())
        assert j1["body_len"] == len(body) and j2["target"] == "/rec", (j1, j2)
        assert [t for _, t, _, _ in a.requests] == ["/rec", "/rec"], a.requests
        s.close()
    a.close()


def test_malformed_and_dying_upstreams():
    a = Upstream("a")
    with Keel(config=gw({"a": [a.port]}, "  - prefix: /\n    upstream: a\n    retries: {attempts: 0}\n")) as k:
        for kind in ["cl-te", "status", "header", "cl-cl", "lf"]:
            r, _ = request(k, get("/malformed/" + kind))
            assert r.status == 502, (kind, r)
            assert r.json()["error"] == "the upstream sent a malformed response", r
        # Killed mid-response: the client sees the body cut (the connection closes early).
        s = k.connect()
        s.sendall(get("/die"))
        data = b""
        s.settimeout(5)
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        head, body = data.split(b"\r\n\r\n", 1)
        assert b"200" in head.split(b"\r\n")[0] and b"Content-Length: 100000" in head, head
        assert len(body) == 1000, len(body)
        # Chunked and close-delimited responses are re-framed for the client.
        r, _ = request(k, get("/chunked"))
        assert r.status == 200, r
        s = k.connect()
        s.sendall(get("/chunked"))
        raw = b""
        while not raw.endswith(b"0\r\n\r\n"):
            raw += s.recv(65536)
        assert b"Transfer-Encoding: chunked" in raw and b"hello" in raw and b"world" in raw, raw
        s.sendall(get("/close"))
        raw = b""
        while not raw.endswith(b"0\r\n\r\n"):
            raw += s.recv(65536)
        assert b"until the end" in raw and b"Transfer-Encoding: chunked" in raw, raw
        s.close()
        assert rec(request(k, get("/rec"))[0])["upstream"] == "a"  # still serving
    a.close()


def test_streaming_bounded_memory():
    a = Upstream("a")
    with Keel(config=gw({"a": [a.port]}, "  - prefix: /\n    upstream: a\n")) as k:
        size = 256 << 20  # 256 MiB up, then 256 MiB down
        s = k.connect(timeout=60)
        s.sendall(b"POST /rec HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        want = hashlib.sha256()
        for i in range(size >> 20):  # bytes that differ per MiB: order and content both count
            chunk = bytes([i & 0xff]) * (1 << 20)
            want.update(chunk)
            s.sendall(chunk)
        j = Reader(s).response().json()
        assert j["body_len"] == size and j["body_sha256"] == want.hexdigest(), j
        s.sendall(get("/big/%d" % size))
        rd = Reader(s)
        while b"\r\n\r\n" not in rd.buf:
            rd._fill()
        head, rest = rd.buf.split(b"\r\n\r\n", 1)
        got = len(rest)
        while got < size:
            d = s.recv(1 << 20)
            assert d, got
            got += len(d)
        assert got == size
        s.close()
        hwm = vmhwm_kb(k.proc.pid)
        assert hwm < 40 * 1024, "peak RSS %d kB while streaming 512 MiB" % hwm
    a.close()


def test_keepalive_pool():
    a = Upstream("a")
    with Keel(config=gw({"a": [a.port]}, "  - prefix: /\n    upstream: a\n")) as k:
        for _ in range(20):
            rec(request(k, get("/rec"))[0])
        assert a.count() == 20 and a.connections == 1, (a.count(), a.connections)
    a.close()


def test_retries_on_connect_failure_and_5xx():
    a, b = Upstream("a"), Upstream("b")
    dead = free_port()
    spec = ("    endpoints: [127.0.0.1:%d, 127.0.0.1:%d]\n"
            "    retry_budget: {percent: 20%%, min_per_second: 10}" % (dead, a.port))
    cfg = gw({"u": spec, "v": [b.port]},
             "  - prefix: /status/\n    upstream: v\n    retries: {attempts: 2, backoff: 1ms}\n"
             "  - prefix: /\n    upstream: u\n    retries: {attempts: 1, backoff: 1ms}\n")
    with Keel(config=cfg) as k:
        for _ in range(4):  # one endpoint refuses connections: the retry goes to the other
            assert rec(request(k, get("/rec"))[0])["upstream"] == "a"
        # An idempotent request answered 503 is retried (here on the same only endpoint).
        before = b.count()
        r, _ = request(k, get("/status/503"))
        assert r.status == 503 and b.count() - before == 3, (r, b.count() - before)
        # POST is not idempotent: its 503 is passed on, not retried.
        before = b.count()
        r, _ = request(k, post("/status/503", "{}"))
        assert r.status == 503 and b.count() - before == 1, (r, b.count() - before)
        m = request(k, get("/metrics"))[0].body.decode()
        assert 'keel_gateway_upstream_retries_total{upstream="v"} 2' in m, m
        assert 'keel_gateway_endpoint_up{upstream="u",endpoint="127.0.0.1:%d#1"} 1' % a.port in m
    a.close()
    b.close()


def test_retry_budget():
    b = Upstream("b")
    spec = ("    endpoints: [127.0.0.1:%d]\n    retry_budget: {percent: 10%%, min_per_second: 2}\n"
            "    outlier: {failures: 0}" % b.port)
    cfg = gw({"v": spec}, "  - prefix: /\n    upstream: v\n    retries: {attempts: 3, backoff: 1ms}\n")
    with Keel(config=cfg) as k:
        t0 = time.time()
        n = 40
        for _ in range(n):
            r, _ = request(k, get("/status/503"))
            assert r.status == 503, r
        secs = max(1, int(time.time() - t0) + 1)
        extra = b.count() - n
        # At most 10% extra load, with a floor of 2 per second (per one-second window).
        assert extra <= max(2 * secs, n * 10 // 100 + 2 * secs), (extra, secs)
        assert extra >= 2, extra
    b.close()


def test_ejection_and_return():
    a, b = Upstream("a"), Upstream("b")
    spec = ("    endpoints: [127.0.0.1:%d, 127.0.0.1:%d]\n    outlier: {failures: 3, ejection: 1s}"
            % (a.port, b.port))
    cfg = gw({"u": spec}, "  - prefix: /\n    upstream: u\n    retries: {attempts: 0}\n")
    with Keel(config=cfg) as k:
        # a answers 500s: after 3 in a row it is ejected and b takes everything.
        a.fail = 500
        for _ in range(8):
            request(k, get("/rec"))
        before = a.count()
        assert before == 3, before
        for _ in range(10):
            assert rec(request(k, get("/rec"))[0])["upstream"] == "b"
        assert a.count() == before, (a.count(), before)
        a.fail = None
        time.sleep(1.2)  # the ejection ends: a gets traffic again
        for _ in range(10):
            rec(request(k, get("/rec"))[0])
        assert a.count() > before, (a.count(), before)
    a.close()
    b.close()


def test_active_health_checks():
    a, b = Upstream("a"), Upstream("b")
    spec = ("    endpoints: [127.0.0.1:%d, 127.0.0.1:%d]\n"
            "    health_check: {path: /status/200, interval: 100ms, timeout: 500ms, healthy: 1, unhealthy: 2}"
            % (a.port, b.port))
    cfg = gw({"u": spec}, "  - prefix: /\n    upstream: u\n")
    with Keel(config=cfg) as k:
        deadline = time.time() + 5
        while a.count() == 0 or b.count() == 0:  # both are being checked
            assert time.time() < deadline
            time.sleep(0.05)
        a.close()  # a stops answering
        deadline = time.time() + 5
        while not any(l.get("msg") == "upstream endpoint unhealthy" for l in k.logs()):
            assert time.time() < deadline, k.lines[-5:]
            time.sleep(0.05)
        for _ in range(10):
            assert rec(request(k, get("/rec"))[0])["upstream"] == "b"
    b.close()


def test_timeouts_and_circuit():
    a = Upstream("a")
    spec = "    endpoints: [127.0.0.1:%d]\n    max_pending: 1" % a.port
    cfg = gw({"u": spec}, "  - prefix: /\n    upstream: u\n    timeouts: {first_byte: 300ms}\n"
             "    retries: {attempts: 0}\n")
    with Keel(config=cfg) as k:
        t0 = time.time()
        r, _ = request(k, get("/slow/2000"))
        assert r.status == 504 and time.time() - t0 < 1.5, r
        # One request in flight (max_pending 1): a second one is refused at once.
        s = k.connect()
        s.sendall(get("/slow/600"))
        time.sleep(0.1)
        r, _ = request(k, get("/rec"))
        assert r.status == 503 and r.header("retry-after") == "1", r
        r2 = Reader(s).response()
        assert r2.status == 504, r2
        s.close()
    a.close()


def test_keel_and_nginx_upstreams():
    if not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"):
        raise AssertionError("nginx is not installed (scripts/deps.sh installs it)")
    d = tempfile.mkdtemp(prefix="keel-nginx-")
    port = free_port()
    os.makedirs(d + "/www/static")
    with open(d + "/www/static/file.txt", "w") as f:
        f.write("from nginx\n")
    conf = """
daemon off; worker_processes 1; pid %(d)s/nginx.pid; error_log %(d)s/error.log;
events { worker_connections 64; }
http { access_log off; client_body_temp_path %(d)s; proxy_temp_path %(d)s;
  fastcgi_temp_path %(d)s; uwsgi_temp_path %(d)s; scgi_temp_path %(d)s;
  server { listen 127.0.0.1:%(p)d; root %(d)s/www;
    location = /json { default_type application/json; return 200 '{"from":"nginx"}'; } } }
""" % {"d": d, "p": port}
    with open(d + "/nginx.conf", "w") as f:
        f.write(conf)
    ng = subprocess.Popen(["/usr/sbin/nginx", "-c", d + "/nginx.conf", "-p", d],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Keel("--workers", "1", env={"KEEL_PIPELINE_ENABLED": "false"}) as up:
            cfg = gw({"ng": [port], "kl": [up.port]},
                     "  - prefix: /static/\n    upstream: ng\n  - path: /json\n    upstream: ng\n"
                     "  - path: /echo\n    upstream: kl\n")
            deadline = time.time() + 5
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.time() < deadline, "nginx did not start"
                    time.sleep(0.05)
            with Keel(config=cfg) as k:
                r, _ = request(k, get("/static/file.txt"))
                assert r.status == 200 and r.body == b"from nginx\n", r
                assert r.header("server", ) and "nginx" in r.header("server"), r
                r, _ = request(k, get("/json"))
                assert r.json() == {"from": "nginx"}, r
                body = json.dumps({"a": [1, 2, {"b": "c\u00e9"}], "n": 1.5})
                r, _ = request(k, post("/echo", body))
                assert r.status == 200 and json.loads(r.body) == json.loads(body), r
    finally:
        ng.terminate()
        ng.wait(5)
        shutil.rmtree(d, ignore_errors=True)


def test_check_config_errors():
    cases = [
        ("routes:\n  - prefix: /\n    upstream: nope\n", "no upstream named 'nope'"),
        ("routes:\n  - prefix: /a/../b\n    handler: hello\n", "is not normalised"),
        ("routes:\n  - path: /x\n    handler: nope\n", "not a built-in handler"),
        ("routes:\n  - path: /x\n", "needs upstream: or handler:"),
        ("routes:\n  - path: /x\n    handler: hello\n    colour: red\n", "unknown key 'colour'"),
        ("upstreams:\n  u:\n    endpoints: [nohost.invalid:1]\n", "cannot resolve"),
        ("upstreams:\n  u:\n    balance: random\n    endpoints: [127.0.0.1:1]\n", "round_robin|least_request"),
        ("upstreams:\n  u: {}\n", "has no endpoints"),
        ("routes:\n  - path: /x\n    handler: hello\n    methods: [FETCH]\n", "'FETCH' is not one of"),
        ("admin:\n  listen: 0.0.0.0:9901\n", "must be a loopback address"),
        ("routes:\n  - prefix: /\n    handler: hello\n    rate_limit: {rate: 5/s, scope: global}\n",
         "needs a top-level redis"),
        ("routes:\n  - prefix: /\n    handler: hello\n    validate: {schema: {type: objekt}}\n",
         "validate.schema"),
    ]
    for text, want in cases:
        fd, path = tempfile.mkstemp(suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        p = subprocess.run([KEEL, "check-config", "-c", path], capture_output=True, text=True)
        os.unlink(path)
        assert p.returncode == 1 and want in p.stderr, (text, p.stderr)
        assert path in p.stderr or "admin.listen" in p.stderr, (text, p.stderr)




def test_hot_reload_under_load():
    a, b = Upstream("a"), Upstream("b")
    d = tempfile.mkdtemp(prefix="keel-reload-")
    keys = d + "/keys"
    with open(keys, "w") as f:
        f.write("k-one\n")

    def cfg(up):
        return ("workers: 2\nadmin:\n  listen: 127.0.0.1:0\n"
                + gw({"a": [a.port], "b": [b.port]},
                     "  - prefix: /api/\n    upstream: %s\n"
                     "  - prefix: /secure/\n    upstream: a\n    auth: {api_keys: %s}\n" % (up, keys))
                .replace("workers: 1\n", ""))
    with Keel(config=cfg("a")) as k:
        failures, served, stop = [], [0], threading.Event()

        def load():
            s = k.connect()
            rd = Reader(s)
            while not stop.is_set():
                s.sendall(get("/api/rec"))
                r = rd.response()
                if r.status != 200:
                    failures.append(r)
                served[0] += 1
            s.close()
        ts = [threading.Thread(target=load) for _ in range(4)]
        for t in ts:
            t.start()
        time.sleep(0.3)
        with open(k.config_file, "w") as f:
            f.write(cfg("b"))
        k.signal(signal.SIGHUP)
        deadline = time.time() + 5
        while b.count() == 0:
            assert time.time() < deadline, k.lines[-5:]
            time.sleep(0.02)
        # A bad config is refused: the running one keeps serving.
        with open(k.config_file, "w") as f:
            f.write(cfg("nowhere"))
        s = socket.create_connection(("127.0.0.1", k.admin_port))
        s.sendall(b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        r = Reader(s).response()
        assert r.status == 400 and "no upstream named 'nowhere'" in r.json()["error"], r
        before = b.count()
        time.sleep(0.2)
        assert b.count() > before  # still b
        # The admin endpoint reloads too, and the API keys file is read again.
        with open(keys, "w") as f:
            f.write("k-two\n")
        with open(k.config_file, "w") as f:
            f.write(cfg("a"))
        s.sendall(b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        r = Reader(s).response()
        assert r.status == 200 and r.json()["routes"] == 2, r
        s.close()
        time.sleep(0.3)
        stop.set()
        for t in ts:
            t.join()
        assert not failures, failures[:3]
        assert served[0] > 100, served
        after = a.count()
        assert rec(request(k, get("/api/rec"))[0])["upstream"] == "a" and a.count() == after + 1
        m = request(k, get("/metrics"))[0].body.decode()
        assert 'keel_config_reloads_total{result="success"} 2' in m, m[-600:]
        assert 'keel_config_reloads_total{result="failure"} 1' in m
        assert request(k, get("/secure/x", extra="X-API-Key: k-one\r\n"))[0].status == 401
        assert request(k, get("/secure/x", extra="X-API-Key: k-two\r\n"))[0].status == 200
    a.close()
    b.close()
    shutil.rmtree(d)


def test_response_cache():
    a = Upstream("a")
    cfg = gw({"a": [a.port]}, "  - prefix: /cache/\n    upstream: a\n    cache: {max_object: 64KiB}\n"
             "  - prefix: /\n    upstream: a\n", extra="cache: {memory: 4MiB}\n")
    with Keel(config=cfg) as k:
        r1, _ = request(k, get("/cache/0/x"))
        assert r1.status == 200 and r1.header("x-cache") == "MISS", r1
        r2, _ = request(k, get("/cache/0/x"))
        assert r2.header("x-cache") == "HIT" and r2.body == r1.body, r2
        assert r2.header("age") is not None and r2.header("cache-control") == "public, max-age=60", r2
        r4, _ = request(k, ("HEAD /cache/0/x HTTP/1.1\r\nHost: x\r\n\r\n").encode(), head_request=True)
        assert r4.status == 200 and r4.header("x-cache") == "HIT", r4
        assert int(r4.header("content-length")) == len(r1.body), r4
        assert a.count() == 1, a.count()
        # no-store is never stored; a request's no-cache goes upstream and refreshes the entry
        request(k, get("/cache/0/nostore"))
        r, _ = request(k, get("/cache/0/nostore"))
        assert r.header("x-cache") == "MISS" and a.count() == 3, (r, a.count())
        r, _ = request(k, get("/cache/0/x", extra="Cache-Control: no-cache\r\n"))
        assert r.header("x-cache") == "MISS" and a.count() == 4, r
        # Vary: one entry per Accept-Language
        for lang in ["en", "fr", "en", "fr"]:
            r, _ = request(k, get("/cache/0/vary", extra="Accept-Language: %s\r\n" % lang))
            assert r.json()["lang"] == lang, r
        assert a.count() == 6, a.count()
        # Coalescing: 20 concurrent misses for one slow key send one upstream request.
        before = a.count()
        results = []

        def one():
            results.append(request(k, get("/cache/300/burst"))[0])
        ts = [threading.Thread(target=one) for _ in range(20)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert all(r.status == 200 for r in results), results
        assert len(set(r.body for r in results)) == 1, [r.body for r in results]
        assert a.count() - before == 1, a.count() - before
        # Routes without cache: are never cached.
        request(k, get("/plain"))
        r, _ = request(k, get("/plain"))
        assert r.header("x-cache") is None, r
    a.close()


def test_dns_names_are_resolved_again():
    """An endpoint named by DNS follows its name: keel runs in a private mount namespace where a
    temporary file stands in for /etc/hosts, and the test moves the name to another address."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        print("skip: needs root and unshare(1) for a private /etc/hosts")
        return
    a = Upstream("a")
    b = socket.socket()
    b.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    b.bind(("127.0.0.2", a.port))  # the same port on another loopback address
    b.listen(16)

    def serve_b():
        while True:
            try:
                c, _ = b.accept()
            except OSError:
                return
            c.recv(65536)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nB")
            c.close()
    threading.Thread(target=serve_b, daemon=True).start()
    d = tempfile.mkdtemp(prefix="keel-dns-")
    hosts = d + "/hosts"
    with open(hosts, "w") as f:
        f.write("127.0.0.1 localhost\n127.0.0.1 backend.keel.test\n")
    wrapper = d + "/keel-ns"
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nexec unshare -m sh -c 'mount --bind \"$0\" /etc/hosts && exec \"$@\"' "
                "%s %s \"$@\"\n" % (hosts, KEEL))
    os.chmod(wrapper, 0o755)
    cfg_file = d + "/keel.yaml"
    with open(cfg_file, "w") as f:
        f.write(gw({"d": "    endpoints: [backend.keel.test:%d]\n    resolve: 200ms\n    keepalive: 0"
                    % a.port}, "  - prefix: /\n    upstream: d\n"))
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        print("skip: unshare -m is not permitted here: %s" % probe.stderr.decode().strip())
        return
    with Keel("serve", "-c", cfg_file, binary=wrapper) as k:
        assert rec(request(k, get("/rec"))[0])["upstream"] == "a"
        with open(hosts, "w") as f:  # the same file: the bind mount shows the new content
            f.write("127.0.0.1 localhost\n127.0.0.2 backend.keel.test\n")
        deadline = time.time() + 5
        while not any("address changed" in l for l in k.lines):
            assert time.time() < deadline, k.lines[-5:]
            time.sleep(0.05)
        r, _ = request(k, get("/rec"))
        assert r.status == 200 and r.body == b"B", r
    b.close()
    a.close()
    shutil.rmtree(d)


def test_otlp_receiver_as_a_route():
    """The OTLP/HTTP receiver behind a gateway route on the main listener: records land in the
    pipeline (here its file sink) and the answer is the receiver's own."""
    cfg = ("workers: 1\nroutes:\n  - path: /otel/v1/logs\n    handler: otlp_logs\n"
           "    auth: {api_keys: %s}\n")
    d = tempfile.mkdtemp(prefix="keel-otlp-route-")
    with open(d + "/keys", "w") as f:
        f.write("team-a k-otel\n")
    body = json.dumps({"resourceLogs": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "via-gateway"}}]},
        "scopeLogs": [{"logRecords": [{"body": {"stringValue": "one"}},
                                      {"body": {"stringValue": "two"}}]}]}]})
    with Keel(config=cfg % (d + "/keys")) as k:
        r, _ = request(k, post("/otel/v1/logs", body))
        assert r.status == 401, r  # the route's API keys come first
        r, _ = request(k, post("/otel/v1/logs", body, extra="X-API-Key: k-otel\r\n"))
        assert r.status == 200 and r.json() == {}, r
        deadline = time.time() + 5
        out = os.path.join(k.data_dir, "out")
        while True:
            lines = []
            for name in os.listdir(out) if os.path.isdir(out) else []:
                with open(os.path.join(out, name)) as f:
                    lines += [l for l in f if "via-gateway" in l]
            if len(lines) == 2 or time.time() > deadline:
                break
            time.sleep(0.05)
        assert len(lines) == 2, lines
    shutil.rmtree(d)


if __name__ == "__main__":
    Suite().run(globals())
