"""test_load.py - black-box tests of keel-load against keel-load-testserver (Python 3 stdlib only).

KEEL_LOAD and KEEL_LOAD_TESTSERVER name the binaries (CMake sets both). The timing checks compare
keel-load's numbers with what the test server is known to do: answer every request DELAY_US late,
and freeze for STALL_MS once every STALL_EVERY_MS. The machine may be shared, so the two
checks that need a quiet CPU get a second attempt before they fail.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOAD = os.environ.get("KEEL_LOAD", os.path.join(ROOT, "build", "keel-load"))
SERVER = os.environ.get("KEEL_LOAD_TESTSERVER",
                        os.path.join(ROOT, "build", "bench", "keel-load-testserver"))

LAT_KEYS = ["p50", "p90", "p99", "p999", "p9999", "max", "mean"]
ERR_KEYS = ["connect", "read", "write", "timeout", "parse", "closed"]
NUM = (int, float)
TOP_KEYS = {"url": str, "connections": int, "target_rate": NUM, "duration_s": NUM,
            "requests": int, "achieved_rate": NUM, "latency_us": dict,
            "latency_from_send_us": dict, "errors": dict, "non2xx": int, "status": dict}


class Server:
    """keel-load-testserver on an ephemeral loopback port."""

    def __init__(self, delay_us, stall_every_ms=None, stall_ms=None):
        self.args = [SERVER, "0", str(delay_us)]
        if stall_every_ms is not None:
            self.args += [str(stall_every_ms), str(stall_ms)]

    def __enter__(self):
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening "):
            self.proc.kill()
            raise AssertionError("test server did not start: %r %r" % (line, self.proc.stderr.read()))
        self.port = int(line.split()[1])
        return self

    def url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def load(url, *args, expect_rc=0):
    """Runs keel-load --json; returns the parsed result after checking its shape."""
    cmd = [LOAD, url, "--json"] + [str(a) for a in args]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    out = p.stdout.decode()
    if expect_rc is not None and p.returncode != expect_rc:
        raise AssertionError("%s: exit %d, expected %d\nstdout %s\nstderr %s"
                             % (" ".join(cmd), p.returncode, expect_rc, out, p.stderr.decode()))
    lines = out.strip().splitlines()
    assert len(lines) == 1, "--json must print exactly one line: %r" % out
    r = json.loads(lines[0])
    check_schema(r)
    r["_rc"] = p.returncode
    return r


def check_schema(r):
    for key, typ in TOP_KEYS.items():
        assert key in r, "missing %s in %r" % (key, r)
        assert isinstance(r[key], typ) and not isinstance(r[key], bool), (key, r[key])
    for hist in ("latency_us", "latency_from_send_us"):
        for k in LAT_KEYS:
            v = r[hist].get(k)
            assert isinstance(v, NUM) and v >= 0, (hist, k, v)
        if r["requests"]:
            h = r[hist]
            assert h["p50"] <= h["p90"] <= h["p99"] <= h["p999"] <= h["p9999"] <= h["max"], h
    for k in ERR_KEYS:
        assert isinstance(r["errors"].get(k), int), ("errors", k, r["errors"])
    for code, n in r["status"].items():
        assert code.isdigit() and len(code) == 3 and isinstance(n, int) and n > 0, r["status"]
    assert sum(r["status"].values()) == r["requests"], r
    assert r["non2xx"] == sum(n for c, n in r["status"].items() if not c.startswith("2")), r


def no_errors(r):
    assert all(v == 0 for v in r["errors"].values()), r["errors"]


def retry(attempts, fn):
    """For checks a busy machine can spoil (scheduling noise), not for logic."""
    for i in range(attempts):
        try:
            return fn()
        except AssertionError as e:
            if i + 1 == attempts:
                raise
            print("  (attempt %d failed: %s; retrying)" % (i + 1, str(e)[:300]), flush=True)
            time.sleep(1)


def summary(r):
    return "requests %d rate %.1f p50 %.0f p99 %.0f p999 %.0f | from send p50 %.0f p99 %.0f" % (
        r["requests"], r["achieved_rate"], r["latency_us"]["p50"], r["latency_us"]["p99"],
        r["latency_us"]["p999"], r["latency_from_send_us"]["p50"],
        r["latency_from_send_us"]["p99"])


# ---- (1) latency equals the server's known delay ----------------------------------------------

def test_latency_matches_server_delay():
    # Nothing can answer faster than the server's 20 ms delay, so no percentile may read below it
    # (that would be a measuring error); the median must be the delay (10%); the tail only has an
    # upper bound, because a busy machine (CI runs tests in parallel) makes the server's own timer
    # wake-ups late, and that lateness is real latency the generator must report.
    delay = 20000
    tol = 0.10 * delay

    def attempt():
        with Server(delay) as s:
            r = load(s.url(), "-r", 2000, "-d", 4, "-w", 1)
        print("  " + summary(r))
        no_errors(r)
        assert abs(r["requests"] - 8000) <= 1, r["requests"]
        lat = r["latency_us"]
        assert delay - tol <= lat["p50"] <= delay + tol, "p50 %.0f us, want %d +- %.0f" % (
            lat["p50"], delay, tol)
        for p in ("p90", "p99"):
            assert delay - tol <= lat[p] <= 2 * delay, "%s %.0f us, want %d..%d" % (
                p, lat[p], delay - tol, 2 * delay)
        assert r["latency_from_send_us"]["p50"] >= delay * 0.95, r["latency_from_send_us"]
    retry(3, attempt)


# ---- (2) a stalling server shows up in the tail, not hidden by coordinated omission ----------

def test_stall_is_not_hidden():
    with Server(1000, 1000, 100) as s:
        r = load(s.url(), "-r", 2000, "-d", 5, "-w", 1)
    print("  " + summary(r))
    no_errors(r)
    lat, send = r["latency_us"], r["latency_from_send_us"]
    # 10% of the requests are due during a stall and wait out the rest of it (0..100 ms).
    assert lat["p99"] >= 50000, lat
    assert lat["p999"] >= 80000, lat
    # Measured from the send, only the one request per connection in flight sees the stall.
    assert send["p50"] < 5000, send
    assert lat["p90"] > send["p90"], (lat, send)
    assert abs(r["requests"] - 10000) <= 1, r["requests"]


# ---- (3) the schedule is kept ------------------------------------------------------------------

def test_achieved_rate():
    def attempt():
        with Server(100) as s:
            r = load(s.url(), "-r", 5000, "-d", 4, "-w", 1)
        print("  " + summary(r))
        no_errors(r)
        assert abs(r["requests"] - 20000) <= 1, r["requests"]
        assert abs(r["achieved_rate"] - 5000) <= 50, r["achieved_rate"]
        assert r["target_rate"] == 5000 and r["duration_s"] == 4, r
    retry(2, attempt)


# ---- (4) closed loop -----------------------------------------------------------------------------

def test_closed_loop():
    with Server(0) as s:
        r = load(s.url(), "-r", 0, "-c", 16, "-d", 2, "-w", 0.5)
    print("  " + summary(r))
    no_errors(r)
    assert r["target_rate"] == 0 and r["requests"] > 0 and r["achieved_rate"] > 0, r
    # closed loop: each request is due when it is sent, so both views agree
    assert r["latency_us"]["p50"] == r["latency_from_send_us"]["p50"], r


def test_closed_loop_threads_pipeline():
    with Server(0) as s:
        r = load(s.url(), "-r", 0, "-c", 8, "-t", 2, "--pipeline", 4, "-d", 1, "-w", 0.2)
    print("  " + summary(r))
    no_errors(r)
    assert r["requests"] > 0 and r.get("threads") == 2 and r.get("pipeline") == 4, r


def test_open_loop_threads():
    with Server(500) as s:
        r = load(s.url(), "-r", 3000, "-c", 30, "-t", 3, "-d", 1, "-w", 0.2)
    no_errors(r)
    assert abs(r["requests"] - 3000) <= 1, r["requests"]


# ---- (5) the JSON ---------------------------------------------------------------------------------

def test_json_fields():
    with Server(0) as s:
        url = s.url("/x?y=\"z\"")
        r = load(url, "-r", 500, "-c", 4, "-d", 0.5, "-w", 0)
    assert r["url"] == url and r["connections"] == 4 and r["target_rate"] == 500, r
    assert r["duration_s"] == 0.5 and r["status"] == {"200": r["requests"]}, r
    assert r["latency_us"]["mean"] > 0 and r["latency_us"]["max"] >= r["latency_us"]["p9999"], r


# ---- (6) an unreachable server ------------------------------------------------------------------

def test_unreachable_port():
    # A bound socket that does not listen: connections to it are refused, and nobody else gets it.
    hold = socket.socket()
    hold.bind(("127.0.0.1", 0))
    port = hold.getsockname()[1]
    try:
        t0 = time.time()
        r = load("http://127.0.0.1:%d/" % port, "-r", 100, "-c", 4, "-d", 1, "-w", 0,
                 "--timeout", 300, expect_rc=None)
        assert r["_rc"] != 0, r
        assert r["errors"]["connect"] > 0 and r["requests"] == 0, r
        assert time.time() - t0 < 5, "took %.1fs" % (time.time() - t0)
    finally:
        hold.close()


# ---- response framing and connection handling -----------------------------------------------------

def test_response_framing():
    with Server(0) as s:
        for path, status in (("/chunked", "200"), ("/big", "200"), ("/404", "404"),
                             ("/close", "200"), ("/eof", "200")):
            r = load(s.url(path), "-r", 400, "-c", 4, "-d", 0.5, "-w", 0)
            no_errors(r)
            assert abs(r["requests"] - 200) <= 1 and r["status"] == {status: r["requests"]}, (path, r)
            if path == "/404":
                assert r["non2xx"] == r["requests"], r
            if path in ("/close", "/eof"):
                assert r["reconnects"] >= r["requests"] - 1, (path, r)
        r = load(s.url("/bad"), "-r", 200, "-c", 2, "-d", 0.3, "-w", 0, expect_rc=1)
        assert r["requests"] == 0 and r["errors"]["parse"] >= 50 and r["reconnects"] >= 50, r


def test_post_body():
    with Server(0) as s:
        r = load(s.url("/echo"), "-m", "POST", "-H", "Content-Type: application/json",
                 "--body", '{"a":[1,2,3]}', "-r", 1000, "-c", 4, "-d", 0.5, "-w", 0)
        no_errors(r)
        assert abs(r["requests"] - 500) <= 1, r
        with tempfile.NamedTemporaryFile() as f:
            f.write(b"x" * 50000)
            f.flush()
            r = load(s.url("/"), "-m", "PUT", "--body-file", f.name, "-r", 200, "-c", 2,
                     "-d", 0.5, "-w", 0)
        no_errors(r)
        assert abs(r["requests"] - 100) <= 1, r


def test_timeouts_counted():
    # The server freezes for 400 ms every 500 ms: requests in flight then exceed a 150 ms timeout.
    with Server(0, 500, 400) as s:
        r = load(s.url(), "-r", 200, "-c", 4, "-d", 1.5, "-w", 0, "--timeout", 150)
    assert r["errors"]["timeout"] > 0 and r["requests"] > 0, r


def test_text_output():
    with Server(0) as s:
        p = subprocess.run([LOAD, s.url(), "-r", "200", "-c", "2", "-d", "0.3", "-w", "0"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    out = p.stdout.decode()
    assert p.returncode == 0, (p.returncode, out, p.stderr)
    for word in ("requests 60", "coordinated omission", "p99.9", "errors: connect 0", "200=60"):
        assert word in out, (word, out)


def test_usage_errors():
    for args in ([], ["https://127.0.0.1:1/"], ["http://127.0.0.1:1/", "-c", "0"],
                 ["http://127.0.0.1:1/", "-r", "-5"], ["http://127.0.0.1:1/", "--bogus"],
                 ["http://127.0.0.1:99999/"], ["http://127.0.0.1:1/", "-H", "no colon"],
                 ["http://127.0.0.1:1/", "--body", "a", "--body-file", "/dev/null"],
                 ["http://127.0.0.1:1/", "-d"]):
        p = subprocess.run([LOAD] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
        assert p.returncode == 2 and p.stderr, (args, p.returncode, p.stderr)
    p = subprocess.run([LOAD, "--help"], stdout=subprocess.PIPE, timeout=10)
    assert p.returncode == 0 and b"usage" in p.stdout


def main():
    only = sys.argv[1:]
    passed = failed = 0
    t_all = time.time()
    for name, fn in list(globals().items()):
        if not name.startswith("test_") or not callable(fn) or (only and name not in only):
            continue
        t0 = time.time()
        try:
            fn()
            passed += 1
            print("ok   %s (%.1fs)" % (name, time.time() - t0), flush=True)
        except Exception as e:  # noqa: BLE001 - report every failure kind
            failed += 1
            traceback.print_exc()
            print("FAIL %s: %s" % (name, e), flush=True)
    print("total %.1fs" % (time.time() - t_all))
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed or not passed else 0)


if __name__ == "__main__":
    main()
