"""otlp_gen.py - builds OTLP Export*ServiceRequest bodies (protobuf and OTLP/JSON) for pipeline tests.

A minimal protobuf writer written for the tests (field numbers from opentelemetry-proto v1:
collector/{logs,trace,metrics}/v1, logs/v1, trace/v1, metrics/v1, resource/v1, common/v1),
so the requests keel decodes are not produced by keel's own code. Every record carries a
unique marker (its `seq`) so tests can count what arrives exactly.
"""
import json
import struct


def varint(v):
    out = bytearray()
    v &= (1 << 64) - 1
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(num, wt):
    return varint(num << 3 | wt)


def f_len(num, data):
    if isinstance(data, str):
        data = data.encode()
    return key(num, 2) + varint(len(data)) + data


def f_varint(num, v):
    return key(num, 0) + varint(v)


def f_fixed64(num, v):
    return key(num, 1) + struct.pack("<Q", v)


def f_double(num, v):
    return key(num, 1) + struct.pack("<d", v)


def any_str(s):
    return f_len(1, s)


def kv(k, v):
    if isinstance(v, bool):
        val = f_varint(2, 1 if v else 0)
    elif isinstance(v, int):
        val = f_varint(3, v)
    elif isinstance(v, float):
        val = f_double(4, v)
    else:
        val = any_str(v)
    return f_len(1, k) + f_len(2, val)


def resource(service="svc", **attrs):
    body = f_len(1, kv("service.name", service))
    for k, v in attrs.items():
        body += f_len(1, kv(k.replace("_", "."), v))
    return body


def scope(name="test-scope", version="1.0"):
    return f_len(1, name) + f_len(2, version)


T0 = 1_700_000_000_000_000_000


def log_record(seq, body=None, trace_id=None, span_id=None, pad=0):
    text = body if body is not None else "log record %d %s" % (seq, "x" * pad)
    r = f_fixed64(1, T0 + seq) + f_varint(2, 9) + f_len(3, "INFO") + f_len(5, any_str(text))
    r += f_len(6, kv("seq", seq))
    if trace_id:
        r += f_len(9, trace_id)
    if span_id:
        r += f_len(10, span_id)
    return r


def logs_request(seqs, service="svc", trace_ids=None, pad=0):
    """ExportLogsServiceRequest: one resource, one scope, a log record per seq."""
    recs = b"".join(f_len(2, log_record(s, trace_id=(trace_ids or {}).get(s), pad=pad))
                    for s in seqs)
    scope_logs = f_len(1, scope()) + recs
    rl = f_len(1, resource(service)) + f_len(2, scope_logs)
    return f_len(1, rl)


def span(seq, trace_id, span_id, name=None):
    s = f_len(1, trace_id) + f_len(2, span_id) + f_len(5, name or "span %d" % seq)
    s += f_varint(6, 2) + f_fixed64(7, T0 + seq) + f_fixed64(8, T0 + seq + 1000)
    s += f_len(9, kv("seq", seq))
    return s


def trace_id_of(seq):
    return struct.pack(">QQ", 0x1000 + seq, seq + 1)


def span_id_of(seq):
    return struct.pack(">Q", 0x2000 + seq)


def traces_request(seqs, service="svc"):
    spans = b"".join(f_len(2, span(s, trace_id_of(s), span_id_of(s))) for s in seqs)
    ss = f_len(1, scope()) + spans
    rs = f_len(1, resource(service)) + f_len(2, ss)
    return f_len(1, rs)


def gauge_point(seq, value):
    return f_fixed64(3, T0 + seq) + f_double(4, value) + f_len(7, kv("seq", seq))


def metrics_request(seqs, service="svc", name="queue.depth"):
    """A gauge with one data point per seq (each becomes one record)."""
    points = b"".join(f_len(1, gauge_point(s, float(s))) for s in seqs)
    metric = f_len(1, name) + f_len(2, "a test gauge") + f_len(3, "1") + f_len(5, points)
    sm = f_len(1, scope()) + f_len(2, metric)
    rm = f_len(1, resource(service)) + f_len(2, sm)
    return f_len(1, rm)


def logs_json(seqs, service="svc"):
    """The same logs as OTLP/JSON."""
    return json.dumps({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeLogs": [{
            "scope": {"name": "test-scope", "version": "1.0"},
            "logRecords": [{
                "timeUnixNano": str(T0 + s), "severityNumber": 9, "severityText": "INFO",
                "body": {"stringValue": "log record %d " % s},
                "attributes": [{"key": "seq", "value": {"intValue": str(s)}}],
            } for s in seqs]}]}]}).encode()


def seq_of_json_record(obj):
    """The seq attribute of the single record in an OTLP/JSON message (any signal)."""
    for rk, sk, recs in (("resourceLogs", "scopeLogs", "logRecords"),
                         ("resourceSpans", "scopeSpans", "spans")):
        for r in obj.get(rk, []):
            for s in r.get(sk, []):
                for rec in s.get(recs, []):
                    return _seq_attr(rec.get("attributes", []))
    for r in obj.get("resourceMetrics", []):
        for s in r.get("scopeMetrics", []):
            for m in s.get("metrics", []):
                for kind in ("gauge", "sum", "histogram"):
                    for p in m.get(kind, {}).get("dataPoints", []):
                        return _seq_attr(p.get("attributes", []))
    return None


def _seq_attr(attrs):
    for a in attrs:
        if a.get("key") == "seq":
            return int(a["value"]["intValue"])
    return None


def fields(data):
    """Decodes one protobuf message into [(number, value)]: ints for varint/fixed, bytes for LEN."""
    out, i = [], 0
    while i < len(data):
        k, i = _uvarint(data, i)
        num, wt = k >> 3, k & 7
        if wt == 0:
            v, i = _uvarint(data, i)
        elif wt == 1:
            v, i = struct.unpack_from("<Q", data, i)[0], i + 8
        elif wt == 5:
            v, i = struct.unpack_from("<I", data, i)[0], i + 4
        elif wt == 2:
            n, i = _uvarint(data, i)
            v, i = data[i:i + n], i + n
            if len(v) != n:
                raise ValueError("truncated")
        else:
            raise ValueError("wire type %d" % wt)
        out.append((num, v))
    return out


def _uvarint(data, i):
    v = shift = 0
    while True:
        b = data[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, i


def first(msg, *path):
    """The first LEN field along a path of field numbers (e.g. resource_logs, scope_logs, ...)."""
    for num in path:
        msg = next(v for n, v in fields(msg) if n == num)
    return msg


def records_in(signal_name, data):
    """The records (log records, spans, data points) of an Export*ServiceRequest, as bytes."""
    out = []
    for _, r in [f for f in fields(data) if f[0] == 1]:
        for _, s in [f for f in fields(r) if f[0] == 2]:
            for n, rec in fields(s):
                if n != 2:
                    continue
                if signal_name != "metrics":
                    out.append(rec)
                    continue
                for dn, d in fields(rec):  # Metric: gauge=5, sum=7, histogram=9, exp=10, summary=11
                    if dn in (5, 7, 9, 10, 11):
                        out += [p for pn, p in fields(d) if pn == 1]
    return out


def seq_of(signal_name, rec):
    """The int `seq` attribute of a record (attributes: log 6, span 9, data point 7)."""
    attr = {"logs": 6, "traces": 9, "metrics": 7}[signal_name]
    for n, kvb in fields(rec):
        if n == attr:
            kvf = dict(fields(kvb))
            if kvf.get(1) == b"seq":
                return dict(fields(kvf[2]))[3]
    return None


def kill9_while_sending(k, senders=2, batch=10, pad=300, after=1.5):
    """Posts logs from `senders` threads until keel is killed with SIGKILL `after` seconds in;
    returns the seqs keel acknowledged (answered 200) before it died."""
    import http.client
    import signal
    import threading
    import time
    acked, stop = [], threading.Event()

    def sender(base):
        c = http.client.HTTPConnection("127.0.0.1", k.otlp_port, timeout=10)
        i = 0
        while not stop.is_set():
            seqs = list(range(base + i * batch, base + (i + 1) * batch))
            try:
                c.request("POST", "/v1/logs", body=logs_request(seqs, pad=pad),
                          headers={"Content-Type": "application/x-protobuf"})
                r = c.getresponse()
                r.read()
            except (OSError, http.client.HTTPException):
                return
            if r.status == 200:
                acked.extend(seqs)
            i += 1

    ts = [threading.Thread(target=sender, args=(b * 1_000_000,)) for b in range(senders)]
    for t in ts:
        t.start()
    time.sleep(after)
    k.proc.send_signal(signal.SIGKILL)
    k.proc.wait()
    stop.set()
    for t in ts:
        t.join()
    return acked
