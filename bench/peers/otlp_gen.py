#!/usr/bin/env python3
"""otlp_gen.py - writes the pipeline benchmark's input: one deterministic OTLP export request (logs or traces).

    bench/peers/otlp_gen.py [--signal logs|traces] [--count 100] --out FILE

The request has one resource (service.name and a few more attributes), one scope, and COUNT log
records (or spans) of about 600 bytes each on the wire. Log records carry the trace and span ids
of the span they were logged in: 5 consecutive records per trace (20 traces per 100 records),
except every 20th record, logged outside any span (no ids), so that keel's Kafka keys (the trace
id; service.name without one) spread over the partitions as a fleet's would. The same arguments
always give the same bytes (no clock, no random module: everything is derived from the record
index). Also imported by check_pipeline.py for the message classes.

The message classes come from bench/peers/otlp/otlp.proto (keel's own minimal OTLP definitions,
the same file the Go peer is generated from): protoc turns it into a descriptor set, loaded into
python3-protobuf's pool. Needs Debian's protobuf-compiler and python3-protobuf (bench/setup.sh
installs both).
"""
import argparse
import hashlib
import os
import subprocess
import sys
import tempfile

try:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
except ImportError:  # a pyenv or venv Python does not see Debian's python3-protobuf
    sys.path.append("/usr/lib/python3/dist-packages")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "otlp")
PKG = "keelbench.otlp"
BASE_NS = 1_700_000_000_000_000_000  # a fixed epoch, in nanoseconds


def load_classes():
    """{message name: class} for every message of otlp.proto, compiled with protoc."""
    with tempfile.TemporaryDirectory(prefix="keel-otlp-") as tmp:
        out = os.path.join(tmp, "otlp.desc")
        subprocess.run(["protoc", "-I", PROTO_DIR, "--descriptor_set_out=" + out, "otlp.proto"],
                       check=True)
        with open(out, "rb") as f:
            fds = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for fdp in fds.file:
        pool.Add(fdp)
    get_class = getattr(message_factory, "GetMessageClass", None)  # protobuf >= 4.22
    factory = None if get_class else message_factory.MessageFactory(pool)
    classes = {}
    for fdp in fds.file:
        for m in fdp.message_type:
            desc = pool.FindMessageTypeByName("%s.%s" % (PKG, m.name))
            classes[m.name] = get_class(desc) if get_class else factory.GetPrototype(desc)
    return classes


def h(i, salt, n):
    """n deterministic bytes for record i."""
    out = b""
    k = 0
    while len(out) < n:
        out += hashlib.sha256(b"%s/%d/%d" % (salt.encode(), i, k)).digest()
        k += 1
    return out[:n]


def pick(i, salt, items):
    return items[int.from_bytes(h(i, salt, 4), "little") % len(items)]


WORDS = ("order", "payment", "cart", "inventory", "shipment", "customer", "token", "session",
         "cache", "retry", "upstream", "latency", "queue", "batch", "partition", "replica")
ROUTES = ("/api/v1/orders/{id}", "/api/v1/carts", "/api/v1/payments/{id}/capture", "/healthz",
          "/api/v2/inventory/{sku}", "/api/v1/users/{id}/sessions")
METHODS = ("GET", "POST", "PUT", "DELETE")
SEVERITIES = ((9, "INFO"), (9, "INFO"), (9, "INFO"), (13, "WARN"), (17, "ERROR"), (5, "DEBUG"))
# Log records come from 20 traces (records 5t..5t+4 share trace t), as logs emitted inside spans
# do, except every 20th one (records 19, 39, ...: 5 of 100), logged outside any span (no trace or
# span id, flags 0). keel keys a log record by its trace id (Kafka spreads the traces over the
# partitions) and one without by the resource's service.name (one partition for all of them).
LOG_PER_TRACE = 5
LOG_UNTRACED = 20  # i % 20 == 19 has no trace id


def kv(cls, key, value):
    """A KeyValue with a string, bool, int or float value."""
    k = cls["KeyValue"](key=key)
    if isinstance(value, bool):
        k.value.bool_value = value
    elif isinstance(value, int):
        k.value.int_value = value
    elif isinstance(value, float):
        k.value.double_value = value
    else:
        k.value.string_value = value
    return k


def fill_resource(cls, res, scope):
    res.attributes.extend([
        kv(cls, "service.name", "checkout"),
        kv(cls, "service.version", "2.14.3"),
        kv(cls, "service.instance.id", "checkout-7d9f8b6c5-x2k4q"),
        kv(cls, "host.name", "node-17.eu-west-1.internal"),
        kv(cls, "deployment.environment", "production"),
    ])
    scope.name = "keel.bench.otlp-gen"
    scope.version = "1.0.0"


def common_attrs(cls, i):
    status = pick(i, "status", (200, 200, 200, 201, 204, 404, 500, 503))
    return [
        kv(cls, "http.request.method", pick(i, "method", METHODS)),
        kv(cls, "http.route", pick(i, "route", ROUTES)),
        kv(cls, "http.response.status_code", status),
        kv(cls, "client.address", "10.%d.%d.%d" % tuple(h(i, "ip", 3))),
        kv(cls, "user_agent.original", "keel-bench/1.0 (linux; x86_64) client-%d" % (i % 7)),
        kv(cls, "request.id", h(i, "rid", 16).hex()),
        kv(cls, "duration_ms", round(0.25 + (int.from_bytes(h(i, "dur", 2), "little") / 97.0), 3)),
        kv(cls, "cache.hit", bool(h(i, "hit", 1)[0] & 1)),
    ]


def sentence(i, salt, nbytes):
    words = []
    k = 0
    while sum(len(w) + 1 for w in words) < nbytes:
        words.append(pick(i * 1000 + k, salt, WORDS))
        k += 1
    return " ".join(words)[:nbytes]


def log_request(cls, count):
    req = cls["ExportLogsServiceRequest"]()
    rl = req.resource_logs.add()
    sl = rl.scope_logs.add()
    fill_resource(cls, rl.resource, sl.scope)
    rl.schema_url = sl.schema_url = "https://opentelemetry.io/schemas/1.24.0"
    for i in range(count):
        r = sl.log_records.add()
        r.time_unix_nano = BASE_NS + i * 1_000_003
        r.observed_time_unix_nano = r.time_unix_nano + 250_000
        r.severity_number, r.severity_text = pick(i, "sev", SEVERITIES)
        r.body.string_value = "record %d: %s %s -> %s" % (
            i, pick(i, "method", METHODS), pick(i, "route", ROUTES), sentence(i, "body", 112))
        r.attributes.extend(common_attrs(cls, i))
        r.attributes.append(kv(cls, "log.logger", "com.example.checkout.OrderController"))
        r.attributes.append(kv(cls, "thread.name", "worker-%d" % (i % 16)))
        if i % LOG_UNTRACED != LOG_UNTRACED - 1:  # logged inside a span: keel keys it by the trace id
            r.flags = 1
            r.trace_id = h(i // LOG_PER_TRACE, "trace", 16)
            r.span_id = h(i, "span", 8)
    return req


def trace_request(cls, count):
    req = cls["ExportTraceServiceRequest"]()
    rs = req.resource_spans.add()
    ss = rs.scope_spans.add()
    fill_resource(cls, rs.resource, ss.scope)
    rs.schema_url = ss.schema_url = "https://opentelemetry.io/schemas/1.24.0"
    for i in range(count):
        s = ss.spans.add()
        s.trace_id = h(i // 4, "trace", 16)
        s.span_id = h(i, "span", 8)
        if i % 4:
            s.parent_span_id = h(i - 1, "span", 8)
        s.name = "%s %s" % (pick(i, "method", METHODS), pick(i, "route", ROUTES))
        s.kind = 2 if i % 4 == 0 else 3  # SERVER, then CLIENT children
        s.start_time_unix_nano = BASE_NS + i * 1_000_003
        s.end_time_unix_nano = s.start_time_unix_nano + 1_234_567
        s.attributes.extend(common_attrs(cls, i))
        s.attributes.append(kv(cls, "db.statement", sentence(i, "db", 90)))
        ev = s.events.add()
        ev.time_unix_nano = s.start_time_unix_nano + 1000
        ev.name = "cache.lookup"
        ev.attributes.append(kv(cls, "cache.key", "orders:" + h(i, "ck", 12).hex()))
        s.status.code = 2 if i % 10 == 9 else 1
        if s.status.code == 2:
            s.status.message = "upstream returned 503"
        s.flags = 0x101
    return req


def build(signal, count, cls=None):
    cls = cls or load_classes()
    return (log_request if signal == "logs" else trace_request)(cls, count)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--signal", choices=("logs", "traces"), default="logs")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    data = build(a.signal, a.count).SerializeToString(deterministic=True)
    tmp = a.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, a.out)
    print("%s: %d %s, %d bytes (%.0f per record)" % (a.out, a.count, a.signal, len(data),
                                                     len(data) / max(a.count, 1)), file=sys.stderr)


if __name__ == "__main__":
    main()
