"""test_trace_export.py - libkeel's OTLP exporter against otlp_receiver.py: Google's protobuf reads keel's spans."""
import os
import shutil
import subprocess
import tempfile
import time

from harness import ROOT, Suite
from otlp_receiver import OtlpReceiver

LIB = os.environ.get("KEEL_LIB", os.path.join(ROOT, "build", "libkeel.so"))
STATIC = os.path.join(os.path.dirname(LIB), "libkeel.a")

# A driver on the internal API: argv endpoint, gzip (0/1), spans; prints the stats as JSON.
DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "obs/trace.h"

int main(int argc, char **argv) {
  if (argc != 4) return 2;
  kl_trace_config c = {.endpoint = argv[1], .service_name = "driver", .host_name = "h1",
                       .compression = atoi(argv[2]), .batch_delay_ms = 50,
                       .retry_initial_ms = 50, .export_timeout_ms = 5000};
  char err[200];
  kl_tracer *t = kl_tracer_new(&c, err, sizeof err);
  if (!t) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  kl_traceq *q = kl_tracer_bind(t);
  kl_trace_rng rng;
  kl_trace_rng_init(&rng);
  kl_trace_ctx parent;
  const char *tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  if (kl_traceparent_parse(tp, strlen(tp), &parent) != 0) return 3;
  int n = atoi(argv[3]);
  for (int i = 0; i < n; i++) {
    kl_trace_ctx ctx = parent;
    kl_trace_span_id_new(&rng, ctx.span_id);
    kl_span s;
    uint64_t t0 = kl_trace_now_ns();
    kl_span_begin(&s, &ctx, parent.span_id, "rojo=00f067aa0ba902b7", 21, "GET /users/{id}", 15,
                  KL_SPAN_SERVER, t0);
    kl_span_attr_str(&s, "http.request.method", "GET", 3);
    kl_span_attr_str(&s, "url.path", "/users/\xff", 8);
    kl_span_attr_int(&s, "http.response.status_code", i % 2 ? 500 : 200);
    kl_span_attr_int(&s, "seq", i);
    kl_span_attr_bool(&s, "flag", i % 2);
    kl_span_attr_double(&s, "ratio", 0.5);
    if (i % 2) kl_span_set_status(&s, KL_STATUS_ERROR, "upstream failed", 15);
    if (kl_span_end(&s, t0 + 1000 + (uint64_t)i, q) != 0) return 4;
  }
  kl_tracer_free(t); /* flushes */
  return 0;
}
"""

class Driver:
    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="keel-trace-")
        self.exe = os.path.join(self.tmp, "driver")
        src = os.path.join(self.tmp, "driver.c")
        with open(src, "w") as f:
            f.write(DRIVER)
        cc = os.environ.get("KEEL_CC", "cc")
        extra = os.environ.get("KEEL_LINK_FLAGS", "").split()
        cmd = [cc, "-std=c17", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror",
               "-I" + os.path.join(ROOT, "include"), "-I" + os.path.join(ROOT, "src"), src, STATIC,
               "-lyaml", "-lz", "-lnghttp2", "-lpthread", "-o", self.exe] + extra
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, "build failed:\n%s\n%s" % (" ".join(cmd), p.stderr[-3000:])

    def run(self, endpoint, gzip, n):
        p = subprocess.run([self.exe, endpoint, "1" if gzip else "0", str(n)], capture_output=True,
                           text=True, timeout=30)
        assert p.returncode == 0, "driver exited %d: %s" % (p.returncode, p.stderr)
        return p

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


DRV = None


def driver():
    global DRV
    if DRV is None:
        DRV = Driver()
    return DRV


def check_spans(spans, n):
    assert len(spans) == n, len(spans)
    seqs = sorted(s["attributes"]["seq"] for s in spans)
    assert seqs == list(range(n)), seqs
    for s in spans:
        i = s["attributes"]["seq"]
        assert s["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert s["parent_span_id"] == "00f067aa0ba902b7"
        assert len(s["span_id"]) == 16 and s["span_id"] != "0" * 16
        assert s["trace_state"] == "rojo=00f067aa0ba902b7"
        assert s["name"] == "GET /users/{id}" and s["kind"] == 2 and s["flags"] == 1
        assert s["end_time_unix_nano"] - s["start_time_unix_nano"] == 1000 + i
        assert abs(s["start_time_unix_nano"] / 1e9 - time.time()) < 120
        a = s["attributes"]
        assert a["http.request.method"] == "GET"
        assert a["url.path"] == "/users/\ufffd"  # invalid UTF-8 arrives replaced, not rejected
        assert a["http.response.status_code"] == (500 if i % 2 else 200)
        assert a["flag"] is bool(i % 2) and a["ratio"] == 0.5
        if i % 2:
            assert (s["status_code"], s["status_message"]) == (2, "upstream failed")
        else:
            assert not s["has_status"] and s["status_code"] == 0
        assert s["resource"] == {"service.name": "driver", "service.version": "0.1.0",
                                 "host.name": "h1"}, s["resource"]
        assert s["scope_name"] == "keel" and s["scope_version"]


def test_plain():
    with OtlpReceiver() as rx:
        driver().run(rx.endpoint, False, 20)
        check_spans(rx.wait_for_spans(20, 5), 20)
        r = rx.requests[0]
        assert r["headers"]["content-type"] == "application/x-protobuf"
        assert not r["gzip"] and r["status"] == 200


def test_gzip():
    with OtlpReceiver() as rx:
        driver().run(rx.endpoint, True, 30)
        check_spans(rx.wait_for_spans(30, 5), 30)
        assert all(r["gzip"] for r in rx.requests)
        assert rx.requests[0]["headers"]["content-encoding"] == "gzip"


def test_retry_then_accept():
    with OtlpReceiver() as rx:
        rx.respond(503, retry_after=1)
        rx.respond(429)
        t0 = time.monotonic()
        driver().run(rx.endpoint, False, 5)
        check_spans(rx.wait_for_spans(5, 5), 5)
        st = [r["status"] for r in rx.requests]
        assert st == [503, 429, 200], st
        assert time.monotonic() - t0 >= 1.0  # Retry-After honoured


def test_bad_request_not_retried():
    with OtlpReceiver() as rx:
        rx.respond(400)
        driver().run(rx.endpoint, False, 3)
        assert [r["status"] for r in rx.wait_for_requests(1, 5)] == [400]
        time.sleep(0.2)  # nothing more comes
        assert len(rx.requests) == 1
        assert rx.spans == []


if __name__ == "__main__":
    try:
        Suite().run(globals())
    finally:
        if DRV:
            DRV.close()
