"""otlp_receiver.py - an OTLP/HTTP trace receiver for tests: decodes protobuf spans, answers as programmed.

Import it from integration tests (it is not a test itself):

    from otlp_receiver import OtlpReceiver
    with OtlpReceiver() as rx:                 # listens on 127.0.0.1:<ephemeral>
        rx.respond(503, retry_after=1)         # the next answer; later ones are 200
        ... point keel at rx.endpoint ("http://127.0.0.1:PORT/v1/traces") ...
        spans = rx.wait_for_spans(3, timeout=5)
        spans[0]["name"], spans[0]["attributes"]["http.request.method"], rx.requests[0]["gzip"]

The message types are built here from descriptors (field numbers checked against
opentelemetry-proto: collector/{trace,logs,metrics}/v1, trace/v1 (with span events and links),
logs/v1, metrics/v1 (gauge and sum), resource/v1, common/v1) and decoded with Google's protobuf
runtime; other tests use MSG and the Export*Service{Request,Response} classes to build and read
OTLP messages. Run this file to self-check it.
"""
import gzip
import http.client
import http.server
import sys
import threading
import time

try:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
except ImportError:  # a pyenv or venv Python does not see Debian's python3-protobuf
    sys.path.append("/usr/lib/python3/dist-packages")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_PKG = "keeltest.otlp"
_F = descriptor_pb2.FieldDescriptorProto

# (name, number, type, label, type_name or None, oneof index or None)
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_MESSAGES = {
    "AnyValue": [
        ("string_value", 1, _F.TYPE_STRING, _OPT, None, 0),
        ("bool_value", 2, _F.TYPE_BOOL, _OPT, None, 0),
        ("int_value", 3, _F.TYPE_INT64, _OPT, None, 0),
        ("double_value", 4, _F.TYPE_DOUBLE, _OPT, None, 0),
        ("array_value", 5, _F.TYPE_MESSAGE, _OPT, "ArrayValue", 0),
        ("kvlist_value", 6, _F.TYPE_MESSAGE, _OPT, "KeyValueList", 0),
        ("bytes_value", 7, _F.TYPE_BYTES, _OPT, None, 0),
    ],
    "ArrayValue": [("values", 1, _F.TYPE_MESSAGE, _REP, "AnyValue", None)],
    "KeyValueList": [("values", 1, _F.TYPE_MESSAGE, _REP, "KeyValue", None)],
    "KeyValue": [
        ("key", 1, _F.TYPE_STRING, _OPT, None, None),
        ("value", 2, _F.TYPE_MESSAGE, _OPT, "AnyValue", None),
    ],
    "InstrumentationScope": [
        ("name", 1, _F.TYPE_STRING, _OPT, None, None),
        ("version", 2, _F.TYPE_STRING, _OPT, None, None),
        ("attributes", 3, _F.TYPE_MESSAGE, _REP, "KeyValue", None),
        ("dropped_attributes_count", 4, _F.TYPE_UINT32, _OPT, None, None),
    ],
    "Resource": [
        ("attributes", 1, _F.TYPE_MESSAGE, _REP, "KeyValue", None),
        ("dropped_attributes_count", 2, _F.TYPE_UINT32, _OPT, None, None),
    ],
    "Status": [  # field 1 is reserved
        ("message", 2, _F.TYPE_STRING, _OPT, None, None),
        ("code", 3, _F.TYPE_INT32, _OPT, None, None),  # enum StatusCode on the wire: a varint
    ],
    "SpanEvent": [  # Span.Event
        ("time_unix_nano", 1, _F.TYPE_FIXED64, _OPT, None, None),
        ("name", 2, _F.TYPE_STRING, _OPT, None, None),
        ("attributes", 3, _F.TYPE_MESSAGE, _REP, "KeyValue", None),
        ("dropped_attributes_count", 4, _F.TYPE_UINT32, _OPT, None, None),
    ],
    "SpanLink": [  # Span.Link
        ("trace_id", 1, _F.TYPE_BYTES, _OPT, None, None),
        ("span_id", 2, _F.TYPE_BYTES, _OPT, None, None),
        ("trace_state", 3, _F.TYPE_STRING, _OPT, None, None),
        ("attributes", 4, _F.TYPE_MESSAGE, _REP, "KeyValue", None),
        ("dropped_attributes_count", 5, _F.TYPE_UINT32, _OPT, None, None),
        ("flags", 6, _F.TYPE_FIXED32, _OPT, None, None),
    ],
    "Span": [
        ("trace_id", 1, _F.TYPE_BYTES, _OPT, None, None),
        ("span_id", 2, _F.TYPE_BYTES, _OPT, None, None),
        ("trace_state", 3, _F.TYPE_STRING, _OPT, None, None),
        ("parent_span_id", 4, _F.TYPE_BYTES, _OPT, None, None),
        ("name", 5, _F.TYPE_STRING, _OPT, None, None),
        ("kind", 6, _F.TYPE_INT32, _OPT, None, None),  # enum SpanKind
        ("start_time_unix_nano", 7, _F.TYPE_FIXED64, _OPT, None, None),
        ("end_time_unix_nano", 8, _F.TYPE_FIXED64, _OPT, None, None),
        ("attributes", 9, _F.TYPE_MESSAGE, _REP, "KeyValue", None),
        ("dropped_attributes_count", 10, _F.TYPE_UINT32, _OPT, None, None),
        ("events", 11, _F.TYPE_MESSAGE, _REP, "SpanEvent", None),
        ("dropped_events_count", 12, _F.TYPE_UINT32, _OPT, None, None),
        ("links", 13, _F.TYPE_MESSAGE, _REP, "SpanLink", None),
        ("dropped_links_count", 14, _F.TYPE_UINT32, _OPT, None, None),
        ("status", 15, _F.TYPE_MESSAGE, _OPT, "Status", None),
        ("flags", 16, _F.TYPE_FIXED32, _OPT, None, None),
    ],
    "ScopeSpans": [
        ("scope", 1, _F.TYPE_MESSAGE, _OPT, "InstrumentationScope", None),
        ("spans", 2, _F.TYPE_MESSAGE, _REP, "Span", None),
        ("schema_url", 3, _F.TYPE_STRING, _OPT, None, None),
    ],
    "ResourceSpans": [
        ("resource", 1, _F.TYPE_MESSAGE, _OPT, "Resource", None),
        ("scope_spans", 2, _F.TYPE_MESSAGE, _REP, "ScopeSpans", None),
        ("schema_url", 3, _F.TYPE_STRING, _OPT, None, None),
    ],
    "ExportTraceServiceRequest": [
        ("resource_spans", 1, _F.TYPE_MESSAGE, _REP, "ResourceSpans", None),
    ],
    "ExportTracePartialSuccess": [
        ("rejected_spans", 1, _F.TYPE_INT64, _OPT, None, None),
        ("error_message", 2, _F.TYPE_STRING, _OPT, None, None),
    ],
    "ExportTraceServiceResponse": [
        ("partial_success", 1, _F.TYPE_MESSAGE, _OPT, "ExportTracePartialSuccess", None),
    ],
    # logs/v1 and collector/logs/v1
    "LogRecord": [
        ("time_unix_nano", 1, _F.TYPE_FIXED64, _OPT, None, None),
        ("severity_number", 2, _F.TYPE_INT32, _OPT, None, None),  # enum SeverityNumber
        ("severity_text", 3, _F.TYPE_STRING, _OPT, None, None),
        ("body", 5, _F.TYPE_MESSAGE, _OPT, "AnyValue", None),
        ("attributes", 6, _F.TYPE_MESSAGE, _REP, "KeyValue", None),
        ("dropped_attributes_count", 7, _F.TYPE_UINT32, _OPT, None, None),
        ("flags", 8, _F.TYPE_FIXED32, _OPT, None, None),
        ("trace_id", 9, _F.TYPE_BYTES, _OPT, None, None),
        ("span_id", 10, _F.TYPE_BYTES, _OPT, None, None),
        ("observed_time_unix_nano", 11, _F.TYPE_FIXED64, _OPT, None, None),
        ("event_name", 12, _F.TYPE_STRING, _OPT, None, None),
    ],
    "ScopeLogs": [
        ("scope", 1, _F.TYPE_MESSAGE, _OPT, "InstrumentationScope", None),
        ("log_records", 2, _F.TYPE_MESSAGE, _REP, "LogRecord", None),
        ("schema_url", 3, _F.TYPE_STRING, _OPT, None, None),
    ],
    "ResourceLogs": [
        ("resource", 1, _F.TYPE_MESSAGE, _OPT, "Resource", None),
        ("scope_logs", 2, _F.TYPE_MESSAGE, _REP, "ScopeLogs", None),
        ("schema_url", 3, _F.TYPE_STRING, _OPT, None, None),
    ],
    "ExportLogsServiceRequest": [
        ("resource_logs", 1, _F.TYPE_MESSAGE, _REP, "ResourceLogs", None),
    ],
    "ExportLogsPartialSuccess": [
        ("rejected_log_records", 1, _F.TYPE_INT64, _OPT, None, None),
        ("error_message", 2, _F.TYPE_STRING, _OPT, None, None),
    ],
    "ExportLogsServiceResponse": [
        ("partial_success", 1, _F.TYPE_MESSAGE, _OPT, "ExportLogsPartialSuccess", None),
    ],
    # metrics/v1 (gauge and sum only) and collector/metrics/v1
    "NumberDataPoint": [
        ("start_time_unix_nano", 2, _F.TYPE_FIXED64, _OPT, None, None),
        ("time_unix_nano", 3, _F.TYPE_FIXED64, _OPT, None, None),
        ("as_double", 4, _F.TYPE_DOUBLE, _OPT, None, 0),
        ("as_int", 6, _F.TYPE_SFIXED64, _OPT, None, 0),
        ("attributes", 7, _F.TYPE_MESSAGE, _REP, "KeyValue", None),
        ("flags", 8, _F.TYPE_UINT32, _OPT, None, None),
    ],
    "Gauge": [("data_points", 1, _F.TYPE_MESSAGE, _REP, "NumberDataPoint", None)],
    "Sum": [
        ("data_points", 1, _F.TYPE_MESSAGE, _REP, "NumberDataPoint", None),
        ("aggregation_temporality", 2, _F.TYPE_INT32, _OPT, None, None),  # enum
        ("is_monotonic", 3, _F.TYPE_BOOL, _OPT, None, None),
    ],
    "Metric": [  # histogram = 9, exponential_histogram = 10, summary = 11: not modelled
        ("name", 1, _F.TYPE_STRING, _OPT, None, None),
        ("description", 2, _F.TYPE_STRING, _OPT, None, None),
        ("unit", 3, _F.TYPE_STRING, _OPT, None, None),
        ("gauge", 5, _F.TYPE_MESSAGE, _OPT, "Gauge", 0),
        ("sum", 7, _F.TYPE_MESSAGE, _OPT, "Sum", 0),
        ("metadata", 12, _F.TYPE_MESSAGE, _REP, "KeyValue", None),
    ],
    "ScopeMetrics": [
        ("scope", 1, _F.TYPE_MESSAGE, _OPT, "InstrumentationScope", None),
        ("metrics", 2, _F.TYPE_MESSAGE, _REP, "Metric", None),
        ("schema_url", 3, _F.TYPE_STRING, _OPT, None, None),
    ],
    "ResourceMetrics": [
        ("resource", 1, _F.TYPE_MESSAGE, _OPT, "Resource", None),
        ("scope_metrics", 2, _F.TYPE_MESSAGE, _REP, "ScopeMetrics", None),
        ("schema_url", 3, _F.TYPE_STRING, _OPT, None, None),
    ],
    "ExportMetricsServiceRequest": [
        ("resource_metrics", 1, _F.TYPE_MESSAGE, _REP, "ResourceMetrics", None),
    ],
    "ExportMetricsPartialSuccess": [
        ("rejected_data_points", 1, _F.TYPE_INT64, _OPT, None, None),
        ("error_message", 2, _F.TYPE_STRING, _OPT, None, None),
    ],
    "ExportMetricsServiceResponse": [
        ("partial_success", 1, _F.TYPE_MESSAGE, _OPT, "ExportMetricsPartialSuccess", None),
    ],
}


def _build_classes():
    fdp = descriptor_pb2.FileDescriptorProto(name="keeltest_otlp.proto", package=_PKG,
                                             syntax="proto3")
    for mname, fields in _MESSAGES.items():
        m = fdp.message_type.add(name=mname)
        if any(f[5] is not None for f in fields):
            m.oneof_decl.add(name="value")
        for name, number, ftype, label, tname, oneof in fields:
            f = m.field.add(name=name, number=number, type=ftype, label=label)
            if tname:
                f.type_name = ".%s.%s" % (_PKG, tname)
            if oneof is not None:
                f.oneof_index = oneof
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(fdp.SerializeToString())
    classes = {}
    get_class = getattr(message_factory, "GetMessageClass", None)  # protobuf >= 4.22
    factory = None if get_class else message_factory.MessageFactory(pool)
    for mname in _MESSAGES:
        desc = pool.FindMessageTypeByName("%s.%s" % (_PKG, mname))
        classes[mname] = get_class(desc) if get_class else factory.GetPrototype(desc)
    return classes


MSG = _build_classes()
ExportTraceServiceRequest = MSG["ExportTraceServiceRequest"]
ExportTraceServiceResponse = MSG["ExportTraceServiceResponse"]
ExportLogsServiceRequest = MSG["ExportLogsServiceRequest"]
ExportLogsServiceResponse = MSG["ExportLogsServiceResponse"]
ExportMetricsServiceRequest = MSG["ExportMetricsServiceRequest"]
ExportMetricsServiceResponse = MSG["ExportMetricsServiceResponse"]

SPAN_KIND = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER",
             5: "CONSUMER"}
STATUS_CODE = {0: "UNSET", 1: "OK", 2: "ERROR"}


def any_value(v):
    """An AnyValue as a plain Python value (None when empty)."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return attributes(v.kvlist_value.values)
    return getattr(v, which)


def attributes(kvs):
    """Repeated KeyValue as a dict."""
    return {kv.key: any_value(kv.value) for kv in kvs}


def decode_request(body):
    """ExportTraceServiceRequest bytes -> a list of span dicts (see OtlpReceiver.spans)."""
    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = []
    for rs in req.resource_spans:
        res = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append({
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "trace_state": s.trace_state,
                    "name": s.name,
                    "kind": s.kind,
                    "start_time_unix_nano": s.start_time_unix_nano,
                    "end_time_unix_nano": s.end_time_unix_nano,
                    "attributes": attributes(s.attributes),
                    "dropped_attributes_count": s.dropped_attributes_count,
                    "status_code": s.status.code,
                    "status_message": s.status.message,
                    "has_status": s.HasField("status"),
                    "flags": s.flags,
                    "resource": res,
                    "scope_name": ss.scope.name,
                    "scope_version": ss.scope.version,
                })
    return out


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a collector would

    def log_message(self, fmt, *args):  # quiet
        pass

    def do_POST(self):  # noqa: N802 (http.server's naming)
        rx = self.server.receiver
        rec = {"method": "POST", "path": self.path,
               "headers": {k.lower(): v for k, v in self.headers.items()},
               "time": time.monotonic(), "body_size": 0, "gzip": False, "spans": 0,
               "status": None, "error": None}
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            return self._finish(rx, rec, 411, error="no Content-Length")
        body = self.rfile.read(int(length))
        rec["body_size"] = len(body)
        if self.path != "/v1/traces":
            return self._finish(rx, rec, 404, error="path")
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/x-protobuf":
            return self._finish(rx, rec, 415, error="content type %r" % ctype)
        enc = self.headers.get("Content-Encoding", "").strip().lower()
        rec["gzip"] = enc == "gzip"
        try:
            if rec["gzip"]:
                body = gzip.decompress(body)
            elif enc not in ("", "identity"):
                return self._finish(rx, rec, 415, error="encoding %r" % enc)
            spans = decode_request(body)
        except Exception as e:  # a bad body is a 400, as a collector answers
            return self._finish(rx, rec, 400, error="decode: %s" % e)
        rec["spans"] = len(spans)
        self._finish(rx, rec, None, spans=spans)

    def _finish(self, rx, rec, status, error=None, spans=None):
        rec["error"] = error
        plan = rx._next_answer() if status is None else {"status": status}
        st = plan.get("status", 200)
        rec["status"] = st
        # Recorded before the answer goes out: a sender that saw the answer finds it here.
        # Only answered-with-2xx spans count as received: a sender retries the others.
        rx._record(rec, spans if 200 <= st < 300 else None)
        if plan.get("delay"):
            time.sleep(plan["delay"])
        body = plan.get("body")
        if body is None:
            body = ExportTraceServiceResponse().SerializeToString() if st < 300 else b""
        self.send_response(st)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        if plan.get("retry_after") is not None:
            self.send_header("Retry-After", str(plan["retry_after"]))
        if plan.get("close"):
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class OtlpReceiver:
    """A threaded OTLP/HTTP trace receiver on host:port (0: ephemeral). A context manager.

    spans:    decoded spans of requests answered 2xx, in arrival order, each a dict with
              trace_id / span_id / parent_span_id (lowercase hex, "" when absent), trace_state,
              name, kind (int), start_time_unix_nano, end_time_unix_nano, attributes (dict),
              dropped_attributes_count, status_code (int), status_message, has_status, flags,
              resource (dict of resource attributes), scope_name, scope_version.
    requests: one dict per request: method, path, headers (lowercase names), body_size
              (as sent), gzip, spans (count decoded), status (answered), error, time.
    respond(): programs the next answers; without a program every answer is 200 with an
              empty ExportTraceServiceResponse.
    """

    def __init__(self, host="127.0.0.1", port=0):
        self._lock = threading.Condition()
        self._plan = []
        self._spans = []
        self._requests = []
        self._httpd = _Server((host, port), _Handler)
        self._httpd.receiver = self
        self.host, self.port = self._httpd.server_address[:2]
        self.endpoint = "http://%s:%d/v1/traces" % (self.host, self.port)
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._thread:
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def respond(self, status=200, retry_after=None, delay=0.0, count=1, close=False, body=None):
        """Queues `count` answers: HTTP `status`, an optional Retry-After (seconds), a `delay`
        (seconds) before answering, Connection: close, or a raw `body`."""
        with self._lock:
            for _ in range(count):
                self._plan.append({"status": status, "retry_after": retry_after, "delay": delay,
                                   "close": close, "body": body})

    def _next_answer(self):
        with self._lock:
            return self._plan.pop(0) if self._plan else {"status": 200}

    def _record(self, rec, spans):
        with self._lock:
            self._requests.append(rec)
            if spans:
                self._spans.extend(spans)
            self._lock.notify_all()

    @property
    def spans(self):
        with self._lock:
            return list(self._spans)

    @property
    def requests(self):
        with self._lock:
            return list(self._requests)

    def clear(self):
        """Forgets received spans and requests (not the programmed answers)."""
        with self._lock:
            self._spans.clear()
            self._requests.clear()

    def _wait(self, what, n, timeout):
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(what) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("waited %.1f s for %d, have %d" % (timeout, n, len(what)))
                self._lock.wait(left)
            return list(what)

    def wait_for_spans(self, n, timeout=5.0):
        """Waits until at least `n` spans were received; returns them all (TimeoutError if not)."""
        return self._wait(self._spans, n, timeout)

    def wait_for_requests(self, n, timeout=5.0):
        """Waits until at least `n` requests were answered; returns them all."""
        return self._wait(self._requests, n, timeout)


def _self_check():
    """Encodes a request with the same classes, posts it to a receiver, and decodes it back."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for k, v in (("service.name", "keel"), ("host.name", "box")):
        kv = rs.resource.attributes.add(key=k)
        kv.value.string_value = v
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "keel", "0.1.0"
    s = ss.spans.add(trace_id=bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736"),
                     span_id=bytes.fromhex("00f067aa0ba902b7"), name="GET /x", kind=2,
                     start_time_unix_nano=1, end_time_unix_nano=2, flags=1,
                     parent_span_id=bytes.fromhex("0102030405060708"), trace_state="a=b")
    for k, field, v in (("http.request.method", "string_value", "GET"),
                        ("http.response.status_code", "int_value", 503),
                        ("ok", "bool_value", False), ("ratio", "double_value", 0.5)):
        setattr(s.attributes.add(key=k).value, field, v)
    arr = s.attributes.add(key="list").value.array_value
    arr.values.add().int_value = 1
    arr.values.add().string_value = "two"
    s.status.code, s.status.message = 2, "boom"
    body = req.SerializeToString()

    def post(rx, data, enc=None):
        c = http.client.HTTPConnection(rx.host, rx.port, timeout=5)
        h = {"Content-Type": "application/x-protobuf"}
        if enc:
            h["Content-Encoding"] = enc
        c.request("POST", "/v1/traces", body=data, headers=h)
        r = c.getresponse()
        out = (r.status, r.getheader("Retry-After"), r.read())
        c.close()
        return out

    with OtlpReceiver() as rx:
        st, _, resp = post(rx, body)
        assert st == 200, st
        ExportTraceServiceResponse().ParseFromString(resp)
        rx.respond(503, retry_after=1)
        assert post(rx, gzip.compress(body), "gzip")[:2] == (503, "1")
        assert post(rx, gzip.compress(body), "gzip")[0] == 200
        assert post(rx, b"\x0a\x05junk")[0] == 400
        spans = rx.wait_for_spans(2, timeout=5)
        assert len(spans) == 2, spans  # the 503 and the 400 do not count
        sp = spans[1]
        assert sp["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert sp["span_id"] == "00f067aa0ba902b7" and sp["parent_span_id"] == "0102030405060708"
        assert sp["name"] == "GET /x" and sp["kind"] == 2 and sp["flags"] == 1
        assert sp["trace_state"] == "a=b"
        assert sp["attributes"] == {"http.request.method": "GET",
                                    "http.response.status_code": 503, "ok": False,
                                    "ratio": 0.5, "list": [1, "two"]}, sp["attributes"]
        assert (sp["status_code"], sp["status_message"]) == (2, "boom")
        assert sp["resource"] == {"service.name": "keel", "host.name": "box"}
        assert (sp["scope_name"], sp["scope_version"]) == ("keel", "0.1.0")
        reqs = rx.requests
        assert [r["status"] for r in reqs] == [200, 503, 200, 400], reqs
        assert [r["gzip"] for r in reqs] == [False, True, True, False]
        assert reqs[0]["body_size"] == len(body)
        assert reqs[3]["error"].startswith("decode")
    print("otlp_receiver self-check: ok")


if __name__ == "__main__":
    _self_check()
