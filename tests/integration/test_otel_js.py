"""test_otel_js.py - the real OpenTelemetry JS exporters (OTLP/HTTP protobuf, gRPC) send to keel; Kafka gets every record.

Over HTTP and gRPC, plain and gzip: spans and log records arrive one per Kafka message, exactly.

tests/otel-js/send.js (Node.js, the npm packages pinned in tests/otel-js/package-lock.json) emits
traces of three spans (attributes of every type, an event, a link, statuses) and log records (string
and map bodies, severities, some inside an active span) and prints what it sent. The test installs
the packages itself (`npm ci`, once per package-lock.json, under a lock), runs the script against
keel delivering to the Kafka-protocol mock cluster, reads the topics back with kcat and decodes
every message with Google's protobuf runtime (otlp_receiver's classes), independently of keel.
"""
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time

import otlp_receiver as rx
from harness import ROOT, Keel, Suite, get, request
from kafka import MockCluster

OTEL_JS = os.path.join(ROOT, "tests", "otel-js")
SEND = os.path.join(OTEL_JS, "send.js")
MARKER = os.path.join(OTEL_JS, "node_modules", ".keel-installed")
SPANS, LOGS = 30, 20  # send.js adds one span per log record emitted inside a span (LOGS / 2)
NPM_TIMEOUT = 300

SERVICE = "otel-js-test"
HEADERS = {
    "otlp_spans": {"keel.signal": "traces", "content-type": "application/x-protobuf",
                   "keel.schema":
                   "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest"},
    "otlp_logs": {"keel.signal": "logs", "content-type": "application/x-protobuf",
                  "keel.schema": "opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest"},
}


def _installed_id():
    """What node_modules must have been installed from: the lock file's hash and node's version."""
    with open(os.path.join(OTEL_JS, "package-lock.json"), "rb") as f:
        lock = hashlib.sha256(f.read()).hexdigest()
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30)
    return "%s node %s\n" % (lock, node.stdout.strip())


def ensure_node_modules():
    """Installs tests/otel-js/node_modules with `npm ci` when it is missing or stale. Returns the
    lock file, held shared until the test ends (an install elsewhere takes it exclusively, so
    node_modules is never replaced under a running send.js)."""
    for tool in ("node", "npm"):
        assert shutil.which(tool), "%s not on PATH: this test needs Node.js >= 20.6 and npm" % tool
    lock = open(os.path.join(OTEL_JS, ".install.lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    want = _installed_id()
    try:
        with open(MARKER) as f:
            have = f.read()
    except OSError:
        have = None
    if have != want:
        t0 = time.time()
        p = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                           cwd=OTEL_JS, capture_output=True, text=True, timeout=NPM_TIMEOUT)
        assert p.returncode == 0, "npm ci failed (%d): %s" % (p.returncode, p.stderr[-2000:])
        with open(MARKER, "w") as f:
            f.write(want)
        print("npm ci in tests/otel-js: %.1fs" % (time.time() - t0), flush=True)
    fcntl.flock(lock, fcntl.LOCK_SH)  # downgrade: other runs may use node_modules, not replace it
    return lock


def send(protocol, endpoint, run_id, compression):
    p = subprocess.run(["node", SEND, protocol, endpoint, run_id, str(SPANS), str(LOGS),
                        compression], cwd=OTEL_JS, capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, "send.js %s exited %d:\n%s\n%s" % (
        protocol, p.returncode, p.stderr[-4000:], p.stdout[-1000:])
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["errors"] == [], summary["errors"]
    assert len(summary["spans"]) == SPANS + LOGS // 2 and len(summary["logs"]) == LOGS, summary
    # small batches: several export requests per signal, each answered with success
    assert summary["exports"]["spans"]["calls"] >= 2, summary["exports"]
    assert summary["exports"]["logs"]["calls"] >= 2, summary["exports"]
    return summary


def one(repeated, what):
    assert len(repeated) == 1, "%s: %d, want exactly 1" % (what, len(repeated))
    return repeated[0]


def kinds(kvs):
    """Repeated KeyValue -> {key: (AnyValue case, value)}: the value's wire type is checked too."""
    return {kv.key: (kv.value.WhichOneof("value"), rx.any_value(kv.value)) for kv in kvs}


def check_resource(resource, run_id):
    attrs = kinds(resource.attributes)
    assert attrs["service.name"] == ("string_value", SERVICE), attrs
    assert attrs["run.id"] == ("string_value", run_id), attrs
    assert attrs["telemetry.sdk.language"] == ("string_value", "nodejs"), attrs
    assert attrs["telemetry.sdk.name"] == ("string_value", "opentelemetry"), attrs


def check_common_attrs(attrs, seq, run_id):
    assert attrs["seq"] == ("int_value", seq), attrs
    assert attrs["run.id"] == ("string_value", run_id), attrs
    assert attrs["attr.string"] == ("string_value", "value-%d" % seq), attrs
    assert attrs["attr.double"] == ("double_value", seq + 0.5), attrs
    assert attrs["attr.bool"] == ("bool_value", seq % 2 == 0), attrs
    assert attrs["attr.strings"] == ("array_value", ["a", "b%d" % seq]), attrs
    assert attrs["attr.ints"] == ("array_value", [seq, seq * 2]), attrs


def read_topic(kc, topic, want):
    msgs = kc.consume(topic, want, timeout=30)
    time.sleep(0.5)  # anything beyond `want` (a duplicate, a split gone wrong) shows up too
    msgs = kc.read_all(topic)
    assert len(msgs) == want, "%s: %d messages, want %d" % (topic, len(msgs), want)
    for m in msgs:
        assert m["headers"] == HEADERS[topic], m["headers"]
    return msgs


def check_spans(kc, summary):
    run_id = summary["run_id"]
    sent = {s["span_id"]: s for s in summary["spans"]}
    now = time.time_ns()
    got = {}
    for m in read_topic(kc, "otlp_spans", len(sent)):
        req = rx.ExportTraceServiceRequest()
        req.ParseFromString(m["value"])
        rs = one(req.resource_spans, "resource_spans")
        check_resource(rs.resource, run_id)
        ss = one(rs.scope_spans, "scope_spans")
        assert (ss.scope.name, ss.scope.version) == ("keel-interop", "1.2.3"), ss.scope
        span = one(ss.spans, "spans")
        sid = span.span_id.hex()
        assert sid in sent and sid not in got, sid
        got[sid] = span
        want = sent[sid]
        assert span.trace_id.hex() == want["trace_id"], (span.trace_id.hex(), want)
        assert m["key"] == want["trace_id"].encode(), (m["key"], want)
        assert span.parent_span_id.hex() == want["parent_span_id"], (span.parent_span_id, want)
        assert span.name == want["name"], (span.name, want)
        assert span.kind == want["kind"] + 1, (span.kind, want)  # the JS API's INTERNAL is 0
        assert now - 600 * 10**9 < span.start_time_unix_nano <= span.end_time_unix_nano <= now, span
        assert span.flags & 0xff == 1, span.flags  # sampled
        if want["seq"] is None:  # the span around a log record
            assert not span.attributes and not span.events and not span.links, span
            continue
        seq = want["seq"]
        check_common_attrs(kinds(span.attributes), seq, run_id)
        if seq % 3 == 0:
            ev = one(span.events, "events")
            assert ev.name == "started", ev
            assert kinds(ev.attributes) == {"event.seq": ("int_value", seq)}, ev
            assert span.start_time_unix_nano <= ev.time_unix_nano <= span.end_time_unix_nano, ev
            assert (span.status.code, span.status.message) == (1, ""), span.status
        else:
            assert not span.events, span.events
        if seq % 3 == 2:
            assert (span.status.code, span.status.message) == (2, "failed-%d" % seq), span.status
        if seq % 3 == 1:
            assert span.status.code == 0, span.status
        if want["link"]:
            link = one(span.links, "links")
            assert link.span_id.hex() == want["link"], (link.span_id.hex(), want)
            assert link.trace_id.hex() == sent[want["link"]]["trace_id"], link
            assert kinds(link.attributes) == {"link.seq": ("int_value", seq)}, link
        else:
            assert not span.links, span.links
    assert set(got) == set(sent)
    # the tree: every trace of three has its root and two children, children after the root
    roots = [s for s in summary["spans"] if s["seq"] is not None and s["seq"] % 3 == 0]
    assert len(roots) == SPANS // 3
    for r in roots:
        kids = [s for s in summary["spans"] if s["parent_span_id"] == r["span_id"]]
        assert len(kids) == 2 and all(k["trace_id"] == r["trace_id"] for k in kids), (r, kids)


def check_logs(kc, summary):
    run_id = summary["run_id"]
    sent = {l["seq"]: l for l in summary["logs"]}
    seen = set()
    for m in read_topic(kc, "otlp_logs", len(sent)):
        req = rx.ExportLogsServiceRequest()
        req.ParseFromString(m["value"])
        rl = one(req.resource_logs, "resource_logs")
        check_resource(rl.resource, run_id)
        sl = one(rl.scope_logs, "scope_logs")
        assert (sl.scope.name, sl.scope.version) == ("keel-interop-logs", "4.5.6"), sl.scope
        rec = one(sl.log_records, "log_records")
        attrs = kinds(rec.attributes)
        seq = attrs["seq"][1]
        assert seq in sent and seq not in seen, seq
        seen.add(seq)
        want = sent[seq]
        check_common_attrs(attrs, seq, run_id)
        assert attrs["attr.bytes"] == ("bytes_value", bytes([seq & 255, 1, 2])), attrs
        if seq % 4 == 3:
            assert kinds(rec.body.kvlist_value.values) == {
                "msg": ("string_value", "structured-%d" % seq), "n": ("int_value", seq)}, rec.body
        else:
            assert rec.body.WhichOneof("value") == "string_value", rec.body
            assert rec.body.string_value == "log line %d" % seq, rec.body
        sev = (13, "WARN") if seq % 3 == 0 else (9, "INFO")
        assert (rec.severity_number, rec.severity_text) == sev, rec
        assert rec.time_unix_nano > 0 and rec.observed_time_unix_nano >= rec.time_unix_nano, rec
        assert rec.trace_id.hex() == want["trace_id"], (rec.trace_id.hex(), want)
        assert rec.span_id.hex() == want["span_id"], (rec.span_id.hex(), want)
        if want["trace_id"]:  # emitted inside a span: keyed by its trace, flags say sampled
            assert m["key"] == want["trace_id"].encode(), (m["key"], want)
            assert rec.flags & 0xff == 1, rec.flags
        else:
            assert m["key"] == SERVICE.encode(), m["key"]
    assert seen == set(sent)
    assert sum(1 for l in summary["logs"] if l["trace_id"]) == LOGS // 2


def rejected(k):
    r, _ = request(k, get("/metrics"))
    total = 0.0
    for line in r.body.decode().splitlines():
        if line.startswith("keel_pipeline_records_rejected_total"):
            total += float(line.split()[-1])
    return total


def roundtrip(protocol, compression):
    lock = ensure_node_modules()
    try:
        env = {"KEEL_KAFKA_LINGER": "1ms"}
        with MockCluster() as kc, Keel(env=dict(env, KEEL_KAFKA_BROKERS=kc.bootstrap)) as k:
            if protocol == "http":
                endpoint = "http://127.0.0.1:%d" % k.otlp_port
            else:
                endpoint = "http://127.0.0.1:%d" % k.grpc_port
            run_id = "%s-%s-%d" % (protocol, compression, os.getpid())
            summary = send(protocol, endpoint, run_id, compression)
            check_spans(kc, summary)
            check_logs(kc, summary)
            assert rejected(k) == 0
            bad = [l for l in k.logs() if l.get("level") in ("warn", "error")]
            assert not bad, bad
    finally:
        lock.close()


def test_http_protobuf():
    roundtrip("http", "none")


def test_http_protobuf_gzip():
    roundtrip("http", "gzip")


def test_grpc():
    roundtrip("grpc", "none")


def test_grpc_gzip():
    roundtrip("grpc", "gzip")


if __name__ == "__main__":
    Suite().run(globals())
