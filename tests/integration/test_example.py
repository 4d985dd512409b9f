"""test_example.py - examples/hello (the article's service on libkeel): hello, probes, access log,
configuration from KEEL_* and a clean exit on SIGTERM."""
import json
import os
import re
import signal
import subprocess
import time

from harness import ROOT, Keel, Suite, get, post, request

HELLO = os.environ.get("KEEL_HELLO", os.path.join(ROOT, "build", "examples", "hello"))
TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def hello(**env):
    assert os.access(HELLO, os.X_OK), "example not built: %s" % HELLO
    return Keel(binary=HELLO, env=env)  # the harness sets KEEL_LISTEN=127.0.0.1:0


def test_hello_and_probes():
    with hello() as k:
        r, _ = request(k, get("/"))
        assert r.status == 200 and r.body == b"Hello, cloud native!", r
        assert r.header("content-type").startswith("text/plain"), r
        r, _ = request(k, get("/readyz"))
        assert r.status == 200 and json.loads(r.body) == {"status": "ready"}, r
        for path in ("/livez", "/healthz"):
            r, _ = request(k, get(path))
            assert r.status == 200 and json.loads(r.body) == {"status": "ok"}, (path, r)
        r, _ = request(k, get("/missing"))
        assert r.status == 404, r
        r, _ = request(k, post("/echo", "[1]"))
        assert r.status == 404, "the example has no /echo route: %r" % r
        r, _ = request(k, post("/", "[1]"))
        assert r.status == 405 and "GET" in (r.header("allow") or ""), r


def test_access_log():
    with hello() as k:
        r, _ = request(k, get("/"))
        assert r.status == 200
        end = time.time() + 3
        while time.time() < end and not any(l.get("msg") == "request" for l in k.logs()):
            time.sleep(0.02)
    listening = [l for l in k.logs() if l.get("msg") == "listening"]
    assert listening and listening[0]["address"].startswith("127.0.0.1:"), k.lines
    reqs = [l for l in k.logs() if l.get("msg") == "request"]
    assert len(reqs) == 1, "want one access log line: %r" % k.lines
    a = reqs[0]
    assert a["http.request.method"] == "GET" and a["url.path"] == "/", a
    assert a["http.response.status_code"] == 200, a
    assert TS.match(a["ts"]), a
    for line in k.lines:
        assert isinstance(json.loads(line), dict), line


def test_env_configures_example():
    with hello(KEEL_LOG_ACCESS="off", KEEL_WORKERS="1") as k:
        r, _ = request(k, get("/"))
        assert r.status == 200
    assert not [l for l in k.logs() if l.get("msg") == "request"], k.lines
    assert [str(l.get("workers")) for l in k.logs() if l.get("msg") == "listening"] == ["1"]


def test_sigterm_exits_0():
    with hello() as k:
        s = k.connect()
        s.sendall(get("/"))
        t = time.time()
        k.signal(signal.SIGTERM)
        rc = k.wait(5)
        s.close()
        assert rc == 0, "exit code %d" % rc
        assert time.time() - t < 2, "exit took %.2fs" % (time.time() - t)
    assert any(l.get("msg") == "stopped" for l in k.logs()), k.lines


def test_bad_env_fails():
    # A duration without a unit is refused; the example reports it and exits 1 before serving.
    env = hello(KEEL_TIMEOUTS_IDLE="10", KEEL_LISTEN="127.0.0.1:0").env
    p = subprocess.run([HELLO], env=env, capture_output=True, timeout=10)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert b"KEEL_TIMEOUTS_IDLE" in p.stderr, p.stderr


if __name__ == "__main__":
    Suite().run(globals())
