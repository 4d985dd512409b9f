"""test_tracing.py - W3C trace context in, SERVER spans out over OTLP/HTTP (decoded by Google's
protobuf runtime in otlp_receiver.py, not by keel's code), sampling, handler spans, trace-correlated
logs, the traceparent response header, a slow or absent collector, and the span metrics."""
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time

from harness import ROOT, Keel, Suite, get, post, request
from otlp_receiver import OtlpReceiver

HELLO = os.environ.get("KEEL_HELLO", os.path.join(ROOT, "build", "examples", "hello"))
TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
HEX32, HEX16 = re.compile(r"^[0-9a-f]{32}$"), re.compile(r"^[0-9a-f]{16}$")


def traced(rx, *args, binary=None, **env):
    """keel exporting to `rx`, batches flushed after 50 ms."""
    base = rx.endpoint.rsplit("/v1/traces", 1)[0]
    e = {"KEEL_TRACING_ENDPOINT": base, "KEEL_TRACING_BATCH_DELAY": "50ms"}
    e.update(env)
    return Keel(*args, env=e, binary=binary)


def tp(flags="01", trace=TRACE, parent=PARENT):
    return "traceparent: 00-%s-%s-%s\r\n" % (trace, parent, flags)


def metric(k, name, **labels):
    r, _ = request(k, get("/metrics"))
    want = name + ("{%s}" % ",".join('%s="%s"' % kv for kv in labels.items()) if labels else "")
    for line in r.body.decode().splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return None


def wait_metric(k, name, ok, timeout=5, **labels):
    """Polls a metric until ok(value); returns the last value. (The receiver records a batch before
    it answers, so keel counts it exported a moment after the spans are seen.)"""
    deadline = time.time() + timeout
    while True:
        v = metric(k, name, **labels)
        if (v is not None and ok(v)) or time.time() > deadline:
            return v
        time.sleep(0.05)


def test_server_spans():
    with OtlpReceiver() as rx, traced(rx, KEEL_TRACING_SERVICE_NAME="shop") as k:
        t0 = time.time_ns()
        r, _ = request(k, get("/", extra=tp() + "User-Agent: probe/1.0\r\n"))
        assert r.status == 200
        request(k, post("/echo", '{"a":1}'))
        request(k, get("/nowhere"))
        request(k, b"PURGE /x HTTP/1.1\r\nHost: x\r\n\r\n")
        spans = rx.wait_for_spans(4, 5)
        t1 = time.time_ns()
        by = {s["name"]: s for s in spans}
        assert set(by) == {"GET /", "POST /echo", "GET", "HTTP"}, sorted(by)
        g = by["GET /"]
        assert g["trace_id"] == TRACE and g["parent_span_id"] == PARENT, g
        assert HEX16.match(g["span_id"]) and g["span_id"] != PARENT and g["kind"] == 2, g
        assert t0 <= g["start_time_unix_nano"] <= g["end_time_unix_nano"] <= t1, g
        assert g["attributes"] == {
            "http.request.method": "GET", "url.path": "/", "url.scheme": "http", "http.route": "/",
            "http.response.status_code": 200, "network.protocol.version": "1.1",
            "client.address": "127.0.0.1", "user_agent.original": "probe/1.0"}, g["attributes"]
        assert g["status_code"] == 0 and g["flags"] & 1, g
        assert g["resource"]["service.name"] == "shop", g["resource"]
        assert g["resource"]["service.version"] and g["resource"]["host.name"] == socket.gethostname()
        assert g["scope_name"] == "keel", g
        e = by["POST /echo"]
        assert HEX32.match(e["trace_id"]) and e["trace_id"] != TRACE and not e["parent_span_id"], e
        n = by["GET"]
        assert "http.route" not in n["attributes"] and n["attributes"]["http.response.status_code"] == 404
        assert n["status_code"] == 0, "a 4xx is not the server span's error: %r" % n
        o = by["HTTP"]["attributes"]
        assert o["http.request.method"] == "_OTHER" and o["http.request.method_original"] == "PURGE", o
        assert len({s["span_id"] for s in spans}) == 4
        # Scrapes are traced too: every span the receiver got (these 4 and the scrapes') is counted.
        n = wait_metric(k, "keel_trace_spans_exported_total", lambda v: v >= 4 and v == len(rx.spans))
        assert n >= 4 and n == len(rx.spans), (n, len(rx.spans))


def test_invalid_traceparent_is_ignored():
    bad = ["00-%s-%s-01" % (TRACE.upper(), PARENT), "00-%s-%s-01" % ("0" * 32, PARENT),
           "00-%s-%s-01" % (TRACE, "0" * 16), "ff-%s-%s-01" % (TRACE, PARENT),
           "00-%s-%s-1" % (TRACE, PARENT), "00-%s-%s-01-extra" % (TRACE, PARENT), "garbage"]
    with OtlpReceiver() as rx, traced(rx) as k:
        for v in bad:
            r, _ = request(k, get("/", extra="traceparent: %s\r\n" % v))
            assert r.status == 200, (v, r)
        # Two traceparent headers: ambiguous, so ignored as well.
        r, _ = request(k, get("/", extra=tp() + tp(parent="1111111111111111")))
        assert r.status == 200
        spans = rx.wait_for_spans(len(bad) + 1, 5)
        for s in spans:
            assert s["trace_id"] != TRACE and not s["parent_span_id"], s


def test_future_version_and_tracestate_continue():
    with OtlpReceiver() as rx, traced(rx) as k:
        request(k, get("/", extra="traceparent: 01-%s-%s-01-what-the-future-holds\r\n"
                                  "tracestate: vendor=abc,other=1\r\n" % (TRACE, PARENT)))
        s = rx.wait_for_spans(1, 5)[0]
        assert s["trace_id"] == TRACE and s["parent_span_id"] == PARENT, s
        assert s["trace_state"] == "vendor=abc,other=1", s


def test_parent_based_sampling_and_response_header():
    with OtlpReceiver() as rx, traced(rx, KEEL_TRACING_SAMPLE_RATIO="0",
                                      KEEL_TRACING_RESPONSE_HEADER="on") as k:
        r, _ = request(k, get("/"))                      # new trace, ratio 0: not recorded
        m = re.match(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-00$", r.header("traceparent") or "")
        assert m, r
        r, _ = request(k, get("/", extra=tp("00")))      # parent not sampled: not recorded
        assert r.header("traceparent").startswith("00-%s-" % TRACE) and r.header("traceparent").endswith("-00")
        r, _ = request(k, get("/", extra=tp("01")))      # parent sampled: recorded
        h = r.header("traceparent")
        assert h.startswith("00-%s-" % TRACE) and h.endswith("-01"), h
        spans = rx.wait_for_spans(1, 5)
        time.sleep(0.3)
        assert len(rx.spans) == 1, rx.spans
        assert rx.spans[0]["span_id"] == h.split("-")[2], "the response names the recorded span"


def test_ratio_sampling():
    with OtlpReceiver() as rx, traced(rx, KEEL_TRACING_SAMPLE_RATIO="0.25") as k:
        s = k.connect()
        n = 800
        for i in range(0, n, 100):
            s.sendall(get("/") * 100)
        got = b""
        while got.count(b"HTTP/1.1 200") < n:
            got += s.recv(65536)
        # Every span of the 800 requests is exported once the receiver's count and keel's agree.
        exported = wait_metric(k, "keel_trace_spans_exported_total",
                               lambda v: v >= 100 and v == len(rx.spans))
        # Binomial(800, 0.25): mean 200, sd 12.2; +-5 sd.
        assert 139 <= exported <= 261, exported
        assert len(rx.spans) == exported, (len(rx.spans), exported)


def test_handler_spans_and_logs():
    with OtlpReceiver() as rx, traced(rx, binary=HELLO) as k:
        r, _ = request(k, get("/", extra=tp()))
        assert r.status == 200
        spans = rx.wait_for_spans(2, 5)
        server = next(s for s in spans if s["kind"] == 2)
        child = next(s for s in spans if s["kind"] == 1)
        assert server["attributes"]["greeting.kind"] == "hello", server
        assert child["name"] == "compose greeting" and child["trace_id"] == TRACE, child
        assert child["parent_span_id"] == server["span_id"], (child, server)
        assert child["attributes"] == {"greeting.language": "en"}, child
        assert server["start_time_unix_nano"] <= child["start_time_unix_nano"] <= \
            child["end_time_unix_nano"] <= server["end_time_unix_nano"], (server, child)
        deadline = time.time() + 3
        while time.time() < deadline and not any('"msg":"request"' in l for l in k.lines):
            time.sleep(0.05)
        access = [json.loads(l) for l in k.lines if '"msg":"request"' in l]
        assert access and access[0]["trace_id"] == TRACE and access[0]["span_id"] == server["span_id"], access
        assert access[0]["severity_number"] == 9 and access[0]["level"] == "info"
        others = [json.loads(l) for l in k.lines if '"msg":"listening"' in l]
        assert others and "trace_id" not in others[0], "lines outside a request carry no trace id"


def test_error_span_and_flush_at_exit():
    cfg = "shutdown:\n  drain_delay: 1s\n"
    with OtlpReceiver() as rx:
        base = rx.endpoint.rsplit("/v1/traces", 1)[0]
        k = Keel(config=cfg, env={"KEEL_TRACING_ENDPOINT": base, "KEEL_TRACING_BATCH_DELAY": "1m"})
        with k:
            k.signal(signal.SIGTERM)
            time.sleep(0.2)
            r, _ = request(k, get("/readyz"))
            assert r.status == 503
            assert k.wait(10) == 0
        spans = rx.wait_for_spans(1, 5)  # the batch waited a minute: keel flushed it on exit
        s = spans[0]
        assert s["name"] == "GET /readyz" and s["status_code"] == 2, s
        assert s["attributes"]["error.type"] == "503", s


def test_gzip_and_retry_after_503():
    with OtlpReceiver() as rx:
        rx.respond(status=503, retry_after=1, count=1)
        with traced(rx, KEEL_TRACING_GZIP="on") as k:
            t0 = time.time()
            request(k, get("/"))
            spans = rx.wait_for_spans(1, 10)
            assert spans[0]["name"] == "GET /"
            assert time.time() - t0 >= 0.9, "retried before Retry-After"
            assert all(q["gzip"] for q in rx.requests), rx.requests
            assert [q["status"] for q in rx.requests][:2] == [503, 200], rx.requests


def test_collector_down_never_slows_requests():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    env = {"KEEL_TRACING_ENDPOINT": "http://127.0.0.1:%d" % port, "KEEL_TRACING_QUEUE": "4KiB",
           "KEEL_TRACING_BATCH_DELAY": "10ms", "KEEL_TRACING_EXPORT_TIMEOUT": "1s"}
    with Keel("--workers", "1", env=env) as k:
        c = k.connect()
        t0 = time.time()
        for _ in range(20):
            c.sendall(get("/") * 50)
        got = b""
        while got.count(b"HTTP/1.1 200") < 1000:
            got += c.recv(65536)
        assert time.time() - t0 < 5, "requests waited for the collector"
        dropped = metric(k, "keel_trace_spans_dropped_total", reason="queue_full")
        assert dropped and dropped > 0, "a 4 KiB ring cannot hold 1000 spans: %r" % dropped
        assert metric(k, "keel_trace_spans_exported_total") == 0
        t1 = time.time()
    assert time.time() - t1 < 5, "exit waited too long for an absent collector"


def test_otel_environment():
    with OtlpReceiver() as rx:
        base = rx.endpoint.rsplit("/v1/traces", 1)[0]
        env = {"OTEL_SERVICE_NAME": "from-otel", "OTEL_EXPORTER_OTLP_ENDPOINT": base,
               "KEEL_TRACING_BATCH_DELAY": "50ms"}
        with Keel(env=env) as k:
            request(k, get("/"))
            s = rx.wait_for_spans(1, 5)[0]
            assert s["resource"]["service.name"] == "from-otel", s["resource"]


# An embedding service on the public API only: a handler that calls "upstream" the way a gateway
# will (a CLIENT span, the traceparent to send, the tracestate to pass on) and keeps its own gauge
# and histogram.
EMBED = r"""
#include <stdio.h>
#include <string.h>
#include <keel/keel.h>
#include <keel/metrics.h>
#include <keel/trace.h>

static keel_metric *inflight, *sizes;

static void call(keel_req *req, void *ud) {
  (void)ud;
  keel_gauge_add(inflight, 1);
  keel_span *up = keel_span_start(req, "GET upstream", KEEL_SPAN_CLIENT);
  keel_span_attr_int(up, "upstream.try", 1);
  char tp[56] = "";
  size_t n = keel_req_traceparent(req, up, tp);
  keel_span_error(up, "upstream timed out");
  keel_span_end(up);
  keel_span_end(up); /* twice: no effect */
  keel_span *open = keel_span_start(req, "never ended", KEEL_SPAN_INTERNAL);
  (void)open; /* ended by keel with the request */
  keel_str ts = keel_req_tracestate(req);
  char body[256];
  int len = snprintf(body, sizeof body, "{\"sampled\":%d,\"n\":%zu,\"tp\":\"%s\",\"ts\":\"%.*s\"}",
                     keel_req_sampled(req), n, tp, (int)ts.len, ts.ptr);
  keel_histogram_observe(sizes, (double)len);
  keel_gauge_add(inflight, -1);
  keel_respond(req, 200, "application/json", body, (size_t)len);
}

int main(void) {
  keel_config cfg;
  char err[256];
  keel_config_init(&cfg);
  if (keel_config_apply_env(&cfg, err, sizeof err)) return fprintf(stderr, "%s\n", err), 1;
  keel_server *srv = keel_server_new(&cfg, err, sizeof err);
  if (!srv) return fprintf(stderr, "%s\n", err), 1;
  static const double bounds[] = {10, 100, 1000};
  const char *labels[] = {"route", "/call", NULL};
  if (keel_metric_gauge(srv, "embed_inflight", "Calls in progress.", NULL, &inflight) ||
      keel_metric_histogram(srv, "embed_body_bytes", "Body sizes.", labels, bounds, 3, &sizes) ||
      keel_route(srv, "GET", "/call", call, NULL))
    return 1;
  int rc = keel_server_run(srv);
  keel_server_free(srv);
  return rc ? 1 : 0;
}
"""


def build_embed():
    tmp = tempfile.mkdtemp(prefix="keel-embed-")
    src, exe = os.path.join(tmp, "embed.c"), os.path.join(tmp, "embed")
    with open(src, "w") as f:
        f.write(EMBED)
    lib = os.environ.get("KEEL_LIB", os.path.join(ROOT, "build", "libkeel.so"))
    cmd = [os.environ.get("KEEL_CC", "cc"), "-std=c17", "-Wall", "-Wextra", "-Werror",
           "-I" + os.path.join(ROOT, "include"), src, os.path.join(os.path.dirname(lib), "libkeel.a"),
           "-lyaml", "-lz", "-lnghttp2", "-lpthread", "-o", exe] + os.environ.get("KEEL_LINK_FLAGS", "").split()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, "build failed:\n%s\n%s" % (" ".join(cmd), p.stderr[-3000:])
    return exe


def test_public_api_for_outgoing_calls():
    exe = build_embed()
    with OtlpReceiver() as rx, traced(rx, binary=exe) as k:
        r, _ = request(k, get("/call", extra=tp() + "tracestate: vendor=1\r\n"))
        body = json.loads(r.body)
        assert body["sampled"] == 1 and body["n"] == 55 and body["ts"] == "vendor=1", body
        spans = rx.wait_for_spans(3, 5)
        by = {s["name"]: s for s in spans}
        server, client, auto = by["GET /call"], by["GET upstream"], by["never ended"]
        assert client["kind"] == 3 and client["parent_span_id"] == server["span_id"], client
        assert client["status_code"] == 2 and client["status_message"] == "upstream timed out", client
        assert client["attributes"] == {"upstream.try": 1}, client
        # What the handler would send upstream names the CLIENT span as the caller.
        assert body["tp"] == "00-%s-%s-01" % (TRACE, client["span_id"]), (body, client)
        assert auto["end_time_unix_nano"] <= server["end_time_unix_nano"], (auto, server)
        assert sum(1 for s in spans if s["name"] == "GET upstream") == 1, "ended twice"
        r, _ = request(k, get("/call", extra=tp("00")))  # not sampled: still propagated
        body = json.loads(r.body)
        assert body["sampled"] == 0 and body["tp"].startswith("00-%s-" % TRACE) and body["tp"].endswith("-00")
        m, _ = request(k, get("/metrics"))
        text = m.body.decode()
        assert "\nembed_inflight 0\n" in text, text[:300]
        assert '\nembed_body_bytes_count{route="/call"} 2\n' in text
        assert '\nembed_body_bytes_bucket{route="/call",le="10"} 0\n' in text
    with Keel(binary=exe) as k:  # tracing off: nothing to propagate
        body = json.loads(request(k, get("/call", extra=tp()))[0].body)
        assert body == {"sampled": 0, "n": 0, "tp": "", "ts": ""}, body


def test_proxied_request_spans():
    """A proxied request: its SERVER span, and a CLIENT span per upstream attempt whose id is the
    traceparent the upstream received."""
    from upstream import Upstream
    a = Upstream("a")
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    cfg = ("workers: 1\nupstreams:\n  u: {endpoints: [127.0.0.1:%d, 127.0.0.1:%d], balance: round_robin, "
           "retry_budget: {percent: 100%%, min_per_second: 100}}\n"
           "routes:\n  - prefix: /api/\n    upstream: u\n    retries: {attempts: 1, backoff: 1ms}\n"
           % (dead_port, a.port))
    with OtlpReceiver() as rx:
        base = rx.endpoint.rsplit("/v1/traces", 1)[0]
        with Keel(config=cfg, env={"KEEL_TRACING_ENDPOINT": base,
                                   "KEEL_TRACING_BATCH_DELAY": "50ms"}) as k:
            for _ in range(2):  # one of the two goes to the dead endpoint first, then retries
                r, _ = request(k, get("/api/x", extra=tp()))
                assert r.status == 200, r
            spans = rx.wait_for_spans(2 + 3, 5)
            time.sleep(0.2)  # a fourth CLIENT span when both went to the dead endpoint first
            spans = rx.spans
    server = [s for s in spans if s["kind"] == 2]
    client = [s for s in spans if s["kind"] == 3]
    assert len(server) == 2 and len(client) in (3, 4), spans
    for s in server:
        assert s["name"] == "GET /api/*" and s["trace_id"] == TRACE and s["parent_span_id"] == PARENT, s
        assert s["attributes"]["http.route"] == "/api/*", s
    ids = {s["span_id"] for s in server}
    failed = [c for c in client if c["attributes"].get("error.type") == "connection"]
    ok = [c for c in client if c["attributes"].get("http.response.status_code") == 200]
    assert len(failed) == len(client) - 2 and len(ok) == 2, client
    for c in client:
        assert c["trace_id"] == TRACE and c["parent_span_id"] in ids and c["name"] == "GET", c
        assert c["attributes"]["server.address"] == "127.0.0.1", c
    assert failed[0]["status_code"] == 2, failed[0]
    # The upstream saw this trace with the successful CLIENT spans as parents.
    got = sorted(h["traceparent"] for _, _, h, _ in a.requests)
    want = sorted("00-%s-%s-01" % (TRACE, c["span_id"]) for c in ok)
    assert got == want, (got, want)
    a.close()


if __name__ == "__main__":
    Suite().run(globals())
