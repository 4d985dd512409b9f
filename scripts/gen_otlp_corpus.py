#!/usr/bin/env python3
"""gen_otlp_corpus.py - writes the seed corpus of fuzz_otlp (tests/fuzz/corpus/otlp/): small OTLP requests.

A few valid Export{Logs,Trace,Metrics}ServiceRequests per signal (every metric data kind, several
resources and scopes, schema urls, unknown fields) and a few with one bad record, encoded by the
tiny protobuf writer below (field numbers from opentelemetry-proto v1). Run from anywhere:

    python3 scripts/gen_otlp_corpus.py
"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fuzz", "corpus", "otlp")


def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def key(num, wt):
    return varint(num << 3 | wt)


def ln(num, data):
    if isinstance(data, str):
        data = data.encode()
    return key(num, 2) + varint(len(data)) + data


def vi(num, v):
    return key(num, 0) + varint(v & 0xFFFFFFFFFFFFFFFF)


def f64(num, v):
    return key(num, 1) + struct.pack("<Q", v)


def dbl(num, v):
    return key(num, 1) + struct.pack("<d", v)


def f32(num, v):
    return key(num, 5) + struct.pack("<I", v)


def attr(num, k, v):
    if isinstance(v, bool):
        val = vi(2, int(v))
    elif isinstance(v, int):
        val = vi(3, v)
    elif isinstance(v, float):
        val = dbl(4, v)
    else:
        val = ln(1, v)
    return ln(num, ln(1, k) + ln(2, val))


def resource(svc):
    return attr(1, "service.name", svc) + attr(1, "host.name", "node-1")


def scope(name):
    return ln(1, name) + ln(2, "1.2.0")


def request(resources):
    """resources: [(resource bytes, [(scope bytes, [record bytes], schema)], schema)]"""
    out = b""
    for res, scopes, rschema in resources:
        rx = ln(1, res) if res is not None else b""
        for sc, recs, sschema in scopes:
            sx = ln(1, sc) if sc is not None else b""
            for r in recs:
                sx += ln(2, r)
            if sschema:
                sx += ln(3, sschema)
            rx += ln(2, sx)
        if rschema:
            rx += ln(3, rschema)
        out += ln(1, rx)
    return out


TID = bytes(range(16))
SID = bytes(range(8))


def log(body, tid=None):
    r = f64(1, 1700000000000000000) + vi(2, 9) + ln(3, "INFO") + ln(5, ln(1, body)) + attr(6, "k", "v")
    if tid:
        r += ln(9, tid) + ln(10, SID)
    return r + f64(11, 1700000000000000001)


def span(name, tid=TID):
    return (ln(1, tid) + ln(2, SID) + ln(5, name) + vi(6, 2) + f64(7, 1) + f64(8, 2) +
            attr(9, "http.route", "/") + ln(11, f64(1, 1) + ln(2, "event")) +
            ln(13, ln(1, TID) + ln(2, SID)) + ln(15, ln(2, "ok") + vi(3, 1)) + f32(16, 1))


def number_point(i):
    return f64(2, 1) + f64(3, 2 + i) + dbl(4, 1.5 * i) + attr(7, "pt", str(i))


def metric(name, kind, data):
    return ln(1, name) + ln(2, "desc") + ln(3, "ms") + ln(kind, data) + attr(12, "meta", "x")


def metrics():
    pts = b"".join(ln(1, number_point(i)) for i in range(3))
    hist = b"".join(ln(1, f64(3, 5) + f64(4, 3) + dbl(5, 2.0) + ln(6, struct.pack("<3Q", 1, 1, 1)) +
                       ln(7, struct.pack("<2d", 1.0, 2.0)) + attr(9, "pt", str(i))) for i in range(2))
    exp = b"".join(ln(1, attr(1, "pt", str(i)) + f64(4, 3) + vi(6, 3) + ln(8, vi(1, 2) + ln(2, bytes([1, 2]))))
                   for i in range(2))
    summ = b"".join(ln(1, f64(4, 2) + dbl(5, 3.0) + ln(6, dbl(1, 0.5) + dbl(2, 1.0)) + attr(7, "pt", str(i)))
                    for i in range(2))
    return [
        metric("gauge", 5, pts),
        metric("sum", 7, pts + vi(2, 2) + vi(3, 1)),
        metric("histogram", 9, hist + vi(2, 1)),
        metric("exp_histogram", 10, exp + vi(2, 2)),
        metric("summary", 11, summ),
    ]


def main():
    os.makedirs(OUT, exist_ok=True)
    files = {
        "logs_basic.bin": request([(resource("checkout"), [(scope("app"), [log("hello"), log("traced", TID)], None)], None)]),
        "logs_groups.bin": request([
            (resource("a"), [(scope("s1"), [log("1")], "https://opentelemetry.io/schemas/1.21.0"),
                             (scope("s2"), [log("2"), log("3")], None)], "https://opentelemetry.io/schemas/1.21.0"),
            (None, [(None, [log("no resource")], None)], None)]),
        "logs_bad_record.bin": request([(resource("x"), [(scope("s"), [log("ok"), vi(3, 1), log("ok2")], None)], None)]),
        "logs_unknown_fields.bin": vi(7, 1) + request([(resource("u"), [(scope("s"), [log("u") + vi(99, 1)], None)], None)]) + ln(2, "x"),
        "traces_basic.bin": request([(resource("api"), [(scope("tracer"), [span("GET /"), span("POST /", bytes([0xab] * 16))], None)], None)]),
        "traces_bad_id.bin": request([(resource("api"), [(scope("tracer"), [span("ok"), span("short", TID[:15])], None)], None)]),
        "metrics_every_kind.bin": request([(resource("svc"), [(scope("meter"), metrics(), "https://s")], None)]),
        "metrics_gauge.bin": request([(resource("svc"), [(scope("meter"), metrics()[:1], None)], None)]),
    }
    for name, data in files.items():
        assert len(data) < 4096, name
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        print("%s: %d bytes" % (name, len(data)))


if __name__ == "__main__":
    main()
