"""test_metrics.py - GET /metrics: golden signals per route, protocol errors, saturation, process
metrics, OpenMetrics negotiation, promtool's verdict and a real Prometheus server scraping keel."""
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

from harness import ROOT, Keel, Reader, Suite, get, post, request

PROM_CT = "text/plain; version=0.0.4; charset=utf-8"
OM_CT = "application/openmetrics-text; version=1.0.0; charset=utf-8"
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(k, accept=None, path="/metrics"):
    extra = "Accept: %s\r\n" % accept if accept else ""
    r, _ = request(k, get(path, extra=extra))
    assert r.status == 200, r
    return r


def parse(text):
    """{(name, ((label, value), ...)): float} from the text format (written for this test)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        labels = tuple(sorted(LABEL.findall(m.group(2) or "")))
        key = (m.group(1), labels)
        assert key not in out, "duplicate sample %r" % (key,)
        out[key] = float(m.group(3))
    return out


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def metrics(k, **kw):
    return parse(scrape(k, **kw).body.decode())


def test_promtool_accepts_exposition():
    with Keel("--workers", "2") as k:
        request(k, get("/"))
        request(k, post("/echo", '{"a":[1,2]}'))
        request(k, get("/missing"))
        text = scrape(k).body
        p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
        assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), \
            "promtool check metrics: rc %d\n%s%s" % (p.returncode, p.stdout.decode(), p.stderr.decode())


def test_golden_signals_per_route_summed_over_workers():
    with Keel("--workers", "2") as k:
        socks = [k.connect() for _ in range(8)]  # spread over both workers' listeners
        for i, s in enumerate(socks):
            for _ in range(5):
                s.sendall(get("/"))
                assert Reader(s).response().status == 200
            s.sendall(post("/echo", '{"i":%d}' % i))
            assert Reader(s).response().status == 200
            s.close()
        request(k, get("/", extra="Connection: close\r\n"), head_request=False)
        r, _ = request(k, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", head_request=True)
        assert r.status == 200
        assert request(k, get("/nope"))[0].status == 404
        assert request(k, post("/", "{}"))[0].status == 405
        assert request(k, post("/echo", "{bad"))[0].status == 400
        m = metrics(k)
        expect = {("GET", "/", "200"): 41, ("HEAD", "/", "200"): 1, ("POST", "/echo", "200"): 8,
                  ("POST", "/echo", "400"): 1, ("GET", "", "404"): 1, ("POST", "", "405"): 1}
        for (method, route, code), n in expect.items():
            got = value(m, "keel_http_requests_total", method=method, route=route, code=code)
            assert got == n, "requests_total{%s %r %s} = %r, expected %d" % (method, route, code, got, n)
        # The histogram counts the same requests, cumulatively, and takes some time.
        for (method, route), n in {("GET", "/"): 41, ("POST", "/echo"): 9, ("GET", ""): 1}.items():
            name = "http_server_request_duration_seconds"
            count = value(m, name + "_count", method=method, route=route)
            assert count == n, "%s_count{%s %r} = %r, expected %d" % (name, method, route, count, n)
            buckets = sorted(((float(dict(l)["le"]), v) for (nm, l), v in m.items()
                              if nm == name + "_bucket" and dict(l)["method"] == method
                              and dict(l)["route"] == route), key=lambda x: x[0])
            assert buckets[0][0] == 0.00005 and buckets[-1][0] == float("inf"), buckets
            assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), "not cumulative: %r" % buckets
            assert buckets[-1][1] == n, buckets
            assert 0 < value(m, name + "_sum", method=method, route=route) < n * 1.0
        assert value(m, "keel_http_requests_total", method="GET", route="/metrics", code="200") is None, \
            "the scrape counted itself before it was answered"


def _raw(k, data, timeout=5):
    """Sends raw bytes on a new connection; returns the status line's code and whether it closed."""
    s = k.connect(timeout=timeout)
    s.sendall(data)
    r = Reader(s)
    resp = r.response()
    closed = r.closed(2)
    s.close()
    return resp.status, closed


def test_protocol_errors_by_reason():
    cfg = ("limits:\n  request_line: 1KiB\n  header_bytes: 2KiB\n  body: 1KiB\n"
           "timeouts:\n  header: 300ms\n")
    with Keel(config=cfg) as k:
        cases = [
            ("smuggling", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
            ("smuggling", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", 400),
            ("bad_request", b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            ("uri_too_long", b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
            ("header_too_large", b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"b" * 3000 + b"\r\n\r\n", 431),
            ("body_too_large", post("/echo", "[" + "1," * 1000 + "1]"), 413),
            ("unsupported", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        ]
        for reason, data, status in cases:
            got, closed = _raw(k, data)
            assert got == status and closed, "%s: status %d, closed %s" % (reason, got, closed)
        s = k.connect()
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and then nothing: 408 after 300 ms
        r = Reader(s)
        assert r.response().status == 408
        s.close()
        m = metrics(k)
        want = {"smuggling": 2, "bad_request": 1, "uri_too_long": 1, "header_too_large": 1,
                "body_too_large": 1, "unsupported": 1, "timeout": 1}
        got = {reason: value(m, "keel_http_protocol_errors_total", reason=reason) for reason in want}
        assert got == want, "protocol errors %r, expected %r" % (got, want)
        answered = {l: v for (n, l), v in m.items() if n == "keel_http_requests_total"}
        assert not answered, "rejected requests must not count as answered: %r" % answered


def test_connections_and_in_flight():
    with Keel("--workers", "1", config="max_connections: 4\n") as k:
        idle = [k.connect() for _ in range(2)]
        partial = k.connect()
        partial.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
        time.sleep(0.2)
        m = metrics(k)  # the scrape's own connection is the fourth
        assert value(m, "keel_http_connections_active") == 4, m
        assert value(m, "keel_http_requests_in_flight") == 2, "the partial POST and the scrape"
        assert value(m, "keel_http_connections_max") == 4
        time.sleep(0.3)  # the scrape's connection closed: let keel see it go before counting
        third = k.connect()  # fourth open connection: fills the cap
        extra = k.connect()  # fifth: refused with 503
        r = Reader(extra)
        assert r.response().status == 503
        extra.close()
        third.close()
        for s in idle + [partial]:
            s.close()
        deadline, refused = time.time() + 5, 0
        while True:
            r, _ = request(k, get("/metrics"))  # 503 while keel has not yet seen the closes
            refused += r.status == 503
            if r.status == 200:
                m = parse(r.body.decode())
                if value(m, "keel_http_connections_active") == 1:
                    break
            assert time.time() < deadline, "connections never closed: %r" % r
            time.sleep(0.05)
        assert value(m, "keel_http_connections_active") == 1, m
        assert value(m, "keel_http_requests_in_flight") == 1, "a closed partial request left in flight"
        assert value(m, "keel_http_connections_rejected_total") == 1 + refused, refused
        assert value(m, "keel_http_connections_accepted_total") >= 6


def test_loop_lag_and_process_metrics():
    t0 = time.time()
    with Keel("--workers", "2") as k:
        for _ in range(20):
            request(k, get("/"))
        m = metrics(k)
        lag = [value(m, "keel_worker_loop_lag_seconds_count", worker=w) for w in ("0", "1")]
        assert all(v is not None for v in lag) and sum(lag) >= 20, "loop lag counts %r" % lag
        rss = value(m, "process_resident_memory_bytes")
        assert 512 * 1024 < rss < 256 * 1024 * 1024, rss
        fds = len(os.listdir("/proc/%d/fd" % k.proc.pid))
        assert abs(value(m, "process_open_fds") - fds) <= 3, (value(m, "process_open_fds"), fds)
        soft = int(open("/proc/%d/limits" % k.proc.pid).read().split("Max open files")[1].split()[0])
        assert value(m, "process_max_fds") == soft
        assert abs(value(m, "process_start_time_seconds") - t0) < 3, (value(m, "process_start_time_seconds"), t0)
        assert value(m, "process_cpu_seconds_total") > 0
        info = [l for (n, l) in m if n == "keel_build_info"]
        assert len(info) == 1 and dict(info[0])["version"] and dict(info[0])["revision"], info
        assert value(m, "keel_draining") == 0 and value(m, "keel_log_lines_dropped_total") == 0


def test_openmetrics_when_asked():
    with Keel() as k:
        request(k, get("/"))
        r = scrape(k)
        assert r.header("content-type") == PROM_CT, r
        assert "# TYPE keel_http_requests_total counter" in r.body.decode()
        r = scrape(k, accept="application/openmetrics-text;version=1.0.0;q=0.5,"
                             "text/plain;version=0.0.4;q=0.3,*/*;q=0.2")
        assert r.header("content-type") == OM_CT, r
        text = r.body.decode()
        assert text.endswith("# EOF\n"), text[-200:]
        assert "# TYPE keel_http_requests counter\n" in text
        assert "# TYPE keel_build info\n" in text
        assert value(parse(text), "keel_http_requests_total", method="GET", route="/", code="200") == 1


def test_path_and_switch():
    with Keel(config="metrics:\n  path: /internal/metrics\n") as k:
        assert request(k, get("/metrics"))[0].status == 404
        m = metrics(k, path="/internal/metrics")
        assert value(m, "keel_http_requests_total", method="GET", route="", code="404") == 1
    with Keel(env={"KEEL_METRICS_ENABLED": "off"}) as k:
        assert request(k, get("/metrics"))[0].status == 404
        assert request(k, get("/"))[0].status == 200


def test_example_app_metrics():
    hello = os.environ.get("KEEL_HELLO", os.path.join(ROOT, "build", "examples", "hello"))
    with Keel(binary=hello) as k:
        for _ in range(3):
            assert request(k, get("/"))[0].status == 200
        m = metrics(k)
        assert value(m, "hello_greetings_total") == 3, [x for x in m if x[0].startswith("hello")]
        assert value(m, "keel_http_requests_total", method="GET", route="/", code="200") == 3


def test_dashboard_and_alert_metrics_are_exposed():
    # test_alerts.py checks the dashboard and rules use only METRICS; this checks keel has them.
    from test_alerts import METRICS
    with Keel() as k:
        request(k, get("/"))
        names = {n for n, _ in metrics(k)} | {"up"}  # Prometheus adds up itself
        missing = sorted(METRICS - names)
        assert not missing, "used by deploy/ but not exposed by keel: %s" % missing


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _query(port, q):
    url = "http://127.0.0.1:%d/api/v1/query?%s" % (port, urllib.parse.urlencode({"query": q}))
    with urllib.request.urlopen(url, timeout=5) as f:
        body = json.load(f)
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_keel():
    prom = shutil.which("prometheus")
    assert prom, "prometheus is not installed (scripts/deps.sh installs it)"
    with Keel("--workers", "2") as k, tempfile.TemporaryDirectory() as tmp:
        for _ in range(7):
            request(k, get("/"))
        port = _free_port()
        cfg = os.path.join(tmp, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: keel\n    static_configs:\n"
                    "      - targets: ['127.0.0.1:%d']\n" % k.port)
        p = subprocess.Popen([prom, "--config.file=" + cfg, "--storage.tsdb.path=" + tmp + "/data",
                              "--web.listen-address=127.0.0.1:%d" % port],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline, last = time.time() + 40, None
            while time.time() < deadline:
                time.sleep(0.5)
                try:
                    up = _query(port, 'up{job="keel"}')
                    got = _query(port, 'keel_http_requests_total{route="/",method="GET",code="200"}')
                except OSError as e:  # not listening yet
                    last = e
                    continue
                last = (up, got)
                if up and up[0]["value"][1] == "1" and got and got[0]["value"][1] == "7":
                    break
            else:
                raise AssertionError("Prometheus never saw keel's 7 requests: %r" % (last,))
            p99 = _query(port, 'histogram_quantile(0.99, sum by (le) '
                               '(http_server_request_duration_seconds_bucket{route="/"}))')
            assert p99 and 0 < float(p99[0]["value"][1]) <= 0.01, p99
            targets = json.load(urllib.request.urlopen(
                "http://127.0.0.1:%d/api/v1/targets" % port, timeout=5))["data"]["activeTargets"]
            assert targets[0]["health"] == "up" and not targets[0]["lastError"], targets
        finally:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    Suite().run(globals())
