"""test_otlp_grpc.py - the OTLP/gRPC receiver with a real gRPC client (Debian's grpcio): the three
Export methods into the file sink, partial success, gzip, INVALID_ARGUMENT / UNIMPLEMENTED /
RESOURCE_EXHAUSTED answers, a gzip bomb, clients that do not speak HTTP/2, many concurrent calls
on one channel, and SIGTERM."""
import glob
import json
import os
import shutil
import socket
import sys
import tempfile
import time

try:
    import grpc
except ImportError:  # a pyenv or venv Python does not see Debian's python3-grpcio
    sys.path.append("/usr/lib/python3/dist-packages")
    import grpc

import otlp_receiver as pb
from harness import Keel, Suite

SVC = "/opentelemetry.proto.collector.%s.v1.%s/Export"
METHODS = {
    "logs": (SVC % ("logs", "LogsService"), pb.ExportLogsServiceResponse),
    "traces": (SVC % ("trace", "TraceService"), pb.ExportTraceServiceResponse),
    "metrics": (SVC % ("metrics", "MetricsService"), pb.ExportMetricsServiceResponse),
}
T0 = 1_700_000_000_000_000_000


def channel(k):
    # grpc would otherwise honour http_proxy for a loopback address.
    return grpc.insecure_channel("127.0.0.1:%d" % k.grpc_port,
                                 options=[("grpc.enable_http_proxy", 0)])


def stub(ch, signal_name, raw=False, path=None):
    """A unary callable for an Export method; raw=True sends bytes as they are."""
    method, resp = METHODS[signal_name]
    ser = (lambda b: b) if raw else (lambda m: m.SerializeToString())
    return ch.unary_unary(path or method, request_serializer=ser,
                          response_deserializer=resp.FromString)


def _resource(target, service="grpc-test"):
    kv = target.resource.attributes.add(key="service.name")
    kv.value.string_value = service


def logs_request(seqs, pad=0):
    req = pb.ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    _resource(rl)
    sl = rl.scope_logs.add()
    sl.scope.name = "grpc-scope"
    for s in seqs:
        r = sl.log_records.add(time_unix_nano=T0 + s, severity_number=9, severity_text="INFO")
        r.body.string_value = "grpc log %d%s" % (s, "x" * pad)
        r.attributes.add(key="seq").value.int_value = s
    return req


def trace_id(seq):
    return (0x1000 + seq).to_bytes(8, "big") + (seq + 1).to_bytes(8, "big")


def traces_request(seqs, bad=()):
    """Spans per seq; those in `bad` carry a 3-byte trace id (rejected alone)."""
    req = pb.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _resource(rs)
    ss = rs.scope_spans.add()
    ss.scope.name = "grpc-scope"
    for s in seqs:
        sp = ss.spans.add(trace_id=b"\x01\x02\x03" if s in bad else trace_id(s),
                          span_id=(0x2000 + s).to_bytes(8, "big"), name="span %d" % s, kind=2,
                          start_time_unix_nano=T0 + s, end_time_unix_nano=T0 + s + 1000)
        sp.attributes.add(key="seq").value.int_value = s
    return req


def metrics_request(seqs):
    req = pb.ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    _resource(rm)
    sm = rm.scope_metrics.add()
    sm.scope.name = "grpc-scope"
    m = sm.metrics.add(name="queue.depth", description="a test gauge", unit="1")
    for s in seqs:
        p = m.gauge.data_points.add(time_unix_nano=T0 + s, as_double=float(s))
        p.attributes.add(key="seq").value.int_value = s
    return req


def records(k, signal_name, want, timeout=10):
    """The file sink's JSON lines for a signal, once at least `want` exist (or the timeout)."""
    deadline = time.time() + timeout
    pattern = os.path.join(k.data_dir, "out", signal_name + "-*.jsonl")
    while True:
        lines = []
        for path in sorted(glob.glob(pattern)):
            with open(path) as f:
                lines += [json.loads(l) for l in f if l.strip()]
        if len(lines) >= want or time.time() > deadline:
            return lines
        time.sleep(0.05)


def seq_of(rec, res_key, scope_key, recs_key):
    """The seq attribute of the one record in an OTLP/JSON line."""
    scopes = rec[res_key][0][scope_key]
    assert len(rec[res_key]) == 1 and len(scopes) == 1, rec
    items = scopes[0][recs_key]
    if recs_key == "metrics":
        items = items[0]["gauge"]["dataPoints"]
    assert len(items) == 1, rec
    attrs = {a["key"]: a["value"] for a in items[0]["attributes"]}
    return int(attrs["seq"]["intValue"])


def rpc_error(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except grpc.RpcError as e:
        return e
    raise AssertionError("the call succeeded")


def test_three_signals_into_the_file_sink():
    with Keel() as k, channel(k) as ch:
        assert k.grpc_port, k.lines
        r = stub(ch, "logs")(logs_request(range(10)), timeout=15)
        assert isinstance(r, pb.ExportLogsServiceResponse) and not r.HasField("partial_success")
        r = stub(ch, "traces")(traces_request(range(5)), timeout=15)
        assert not r.HasField("partial_success"), r
        r = stub(ch, "metrics")(metrics_request(range(4)), timeout=15)
        assert not r.HasField("partial_success"), r

        logs = records(k, "logs", 10)
        assert sorted(seq_of(l, "resourceLogs", "scopeLogs", "logRecords") for l in logs) == \
            list(range(10)), logs
        rec = logs[0]["resourceLogs"][0]
        assert rec["resource"]["attributes"][0] == {"key": "service.name",
                                                   "value": {"stringValue": "grpc-test"}}, rec
        lr = rec["scopeLogs"][0]["logRecords"][0]
        assert lr["body"]["stringValue"].startswith("grpc log ") and lr["severityText"] == "INFO"

        spans = records(k, "traces", 5)
        assert sorted(seq_of(s, "resourceSpans", "scopeSpans", "spans") for s in spans) == \
            list(range(5)), spans
        sp = [s for s in spans if seq_of(s, "resourceSpans", "scopeSpans", "spans") == 3][0]
        sp = sp["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        assert sp["traceId"] == trace_id(3).hex() and sp["name"] == "span 3", sp

        pts = records(k, "metrics", 4)
        assert sorted(seq_of(m, "resourceMetrics", "scopeMetrics", "metrics") for m in pts) == \
            list(range(4)), pts
        assert pts[0]["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["name"] == \
            "queue.depth"


def test_partial_success():
    with Keel() as k, channel(k) as ch:
        r = stub(ch, "traces")(traces_request(range(6), bad={2, 4}), timeout=15)
        assert r.partial_success.rejected_spans == 2, r
        assert r.partial_success.error_message, r
        spans = records(k, "traces", 4)
        assert sorted(seq_of(s, "resourceSpans", "scopeSpans", "spans") for s in spans) == \
            [0, 1, 3, 5], spans


def test_gzip_messages():
    with Keel() as k, channel(k) as ch:
        r = stub(ch, "logs")(logs_request(range(20), pad=200), timeout=15,
                             compression=grpc.Compression.Gzip)
        assert not r.HasField("partial_success"), r
        stub(ch, "metrics")(metrics_request(range(3)), timeout=15,
                            compression=grpc.Compression.Gzip)
        assert len(records(k, "logs", 20)) == 20
        assert len(records(k, "metrics", 3)) == 3


def test_undecodable_is_invalid_argument():
    with Keel() as k, channel(k) as ch:
        # resource_logs (field 1) says 5 bytes, 4 follow.
        e = rpc_error(stub(ch, "logs", raw=True), b"\x0a\x05junk", timeout=15)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        assert "byte" in e.details(), e.details()
        # The channel stays usable.
        stub(ch, "logs")(logs_request([1]), timeout=15)
        assert len(records(k, "logs", 1)) == 1


def test_api_keys_unauthenticated():
    tmp = tempfile.mkdtemp(prefix="keel-grpc-keys-")
    try:
        with open(os.path.join(tmp, "keys"), "w") as f:
            f.write("grpc-key-1\n")
        with Keel(env={"KEEL_OTLP_API_KEYS": os.path.join(tmp, "keys")}) as k, channel(k) as ch:
            e = rpc_error(stub(ch, "logs"), logs_request([1]), timeout=15)
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
            e = rpc_error(stub(ch, "logs"), logs_request([1]), timeout=15,
                          metadata=[("authorization", "Bearer nope")])
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
            stub(ch, "logs")(logs_request([2]), timeout=15,
                             metadata=[("authorization", "Bearer grpc-key-1")])
            stub(ch, "logs")(logs_request([3]), timeout=15, metadata=[("x-api-key", "grpc-key-1")])
            logs = records(k, "logs", 2)
            assert sorted(seq_of(l, "resourceLogs", "scopeLogs", "logRecords") for l in logs) == \
                [2, 3], logs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_unknown_method_is_unimplemented():
    with Keel() as k, channel(k) as ch:
        for path in ("/opentelemetry.proto.collector.logs.v1.LogsService/Nope",
                     "/grpc.health.v1.Health/Check", "/x"):
            e = rpc_error(stub(ch, "logs", raw=True, path=path), b"", timeout=15)
            assert e.code() == grpc.StatusCode.UNIMPLEMENTED, (path, e)
            assert e.details(), e


def test_oversize_and_gzip_bomb_are_resource_exhausted():
    with Keel(env={"KEEL_OTLP_MAX_REQUEST": "64KiB"}) as k, channel(k) as ch:
        logs = stub(ch, "logs")
        big = logs_request(range(4), pad=30000)  # ~120 KB
        assert big.ByteSize() > 65536
        e = rpc_error(logs, big, timeout=15)
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
        assert "max_request" in e.details(), e.details()
        # Small on the wire (zeros compress ~1000:1), too large once inflated.
        bomb = logs_request([0], pad=0)
        bomb.resource_logs[0].scope_logs[0].log_records[0].body.string_value = "\0" * 2_000_000
        e = rpc_error(logs, bomb, timeout=15, compression=grpc.Compression.Gzip)
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
        # Neither broke the connection; a message under the cap is still served.
        logs(logs_request(range(3)), timeout=15)
        assert len(records(k, "logs", 3)) == 3


def test_not_http2_is_closed():
    with Keel() as k, channel(k) as ch:
        for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 100):
            s = socket.create_connection(("127.0.0.1", k.grpc_port), timeout=5)
            s.sendall(junk)
            data = b""
            while True:  # keel may send its SETTINGS (and a GOAWAY) before closing
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
            assert b"HTTP/1.1" not in data, data
        stub(ch, "logs")(logs_request([1]), timeout=15)


def test_many_concurrent_calls_on_one_channel():
    with Keel() as k, channel(k) as ch:
        logs, traces = stub(ch, "logs"), stub(ch, "traces")
        calls = []
        for i in range(150):  # more than one connection's 100 concurrent streams
            if i % 2:
                calls.append(logs.future(logs_request(range(i * 10, i * 10 + 10)), timeout=30))
            else:
                calls.append(traces.future(traces_request(range(i * 10, i * 10 + 5)),
                                           timeout=30))
        for c in calls:
            assert not c.result(timeout=60).HasField("partial_success")
        assert len(records(k, "logs", 750)) == 750
        assert len(records(k, "traces", 375)) == 375


def test_sigterm_while_idle_exits_cleanly():
    k = Keel().start()
    try:
        with channel(k) as ch:
            stub(ch, "logs")(logs_request(range(2)), timeout=15)
            t0 = time.time()
            k.signal()
            assert k.wait(15) == 0, k.lines[-5:]
            assert time.time() - t0 < 10
            # Closed: a new call fails as the server is gone.
            e = rpc_error(stub(ch, "logs"), logs_request([9]), timeout=3)
            assert e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), e
        msgs = [o.get("msg") for o in k.logs()]
        assert "otlp_grpc listening" in msgs and "stopped" in msgs, msgs
    finally:
        k.kill()
        k.__exit__(None, None, None)


def test_sigterm_during_calls():
    """Calls in flight at SIGTERM are answered (OK, or UNAVAILABLE for streams the final GOAWAY
    refused: a client retries those elsewhere); every record answered OK reaches the sink."""
    k = Keel().start()
    try:
        with channel(k) as ch:
            traces = stub(ch, "traces")
            traces(traces_request([0]), timeout=15)  # connected
            calls = [traces.future(traces_request(range(i * 10 + 10, i * 10 + 20)), timeout=20)
                     for i in range(100)]
            time.sleep(0.05)
            k.signal()
            codes = [c.code() for c in calls]
            assert k.wait(15) == 0, k.lines[-5:]
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
        ok = codes.count(grpc.StatusCode.OK)
        assert ok > 0, codes
        spans = records(k, "traces", 1 + ok * 10, timeout=2)
        assert len(spans) >= 1 + ok * 10, (len(spans), ok)
    finally:
        k.kill()
        k.__exit__(None, None, None)


if __name__ == "__main__":
    Suite().run(globals())
