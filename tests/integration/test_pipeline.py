"""test_pipeline.py - the OTLP/HTTP receiver into the disk buffer and the file sink: answers, records
split one per line, JSON and gzip, refusals (415, 400, 413, partial success), malformed input,
SIGKILL and restart without losing an acknowledged record, metrics, and memory under abuse."""
import glob
import gzip
import http.client
import json
import os
import shutil
import signal
import tempfile
import time

import otlp_gen as g
from harness import Keel, Suite, get, request


def post(k, path, body, ctype="application/x-protobuf", headers=None, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", k.otlp_port, timeout=15)
    h = {"Content-Type": ctype}
    h.update(headers or {})
    c.request("POST", path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    if conn is None:
        c.close()
    return r.status, dict((a.lower(), b) for a, b in r.getheaders()), data


def records(k, signal_name, want=None, timeout=10, data_dir=None):
    """Every JSON line the file sink wrote for a signal (waits until `want` lines exist)."""
    deadline = time.time() + timeout
    out = os.path.join(data_dir or k.data_dir, "out", signal_name + "-*.jsonl")
    while True:
        lines = []
        for path in sorted(glob.glob(out)):
            with open(path) as f:
                lines += [json.loads(l) for l in f if l.strip()]
        if want is None or len(lines) >= want or time.time() > deadline:
            return lines
        time.sleep(0.05)


def metric(k, name, **labels):
    r, _ = request(k, get("/metrics"))
    want = name + ("{%s}" % ",".join('%s="%s"' % kv for kv in labels.items()) if labels else "")
    for line in r.body.decode().splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return None


def test_logs_protobuf_split_into_lines():
    with Keel() as k:
        assert k.otlp_port, k.lines
        for batch in range(3):
            st, h, body = post(k, "/v1/logs", g.logs_request(range(batch * 10, batch * 10 + 10)))
            assert st == 200, (st, body)
            assert h["content-type"] == "application/x-protobuf", h
            assert body == b"", body  # ExportLogsServiceResponse without partial_success
        lines = records(k, "logs", 30)
        seqs = sorted(g.seq_of_json_record(o) for o in lines)
        assert seqs == list(range(30)), seqs
        one = lines[0]
        rl = one["resourceLogs"]
        assert len(rl) == 1 and len(rl[0]["scopeLogs"]) == 1, one
        assert len(rl[0]["scopeLogs"][0]["logRecords"]) == 1, one
        attrs = {a["key"]: a["value"] for a in rl[0]["resource"]["attributes"]}
        assert attrs["service.name"] == {"stringValue": "svc"}, attrs
        assert rl[0]["scopeLogs"][0]["scope"]["name"] == "test-scope", one
        rec = rl[0]["scopeLogs"][0]["logRecords"][0]
        assert rec["severityText"] == "INFO" and rec["body"]["stringValue"].startswith("log record")
        assert metric(k, "keel_pipeline_records_accepted_total", signal="logs") == 30
        with open("/proc/%d/maps" % k.proc.pid) as f:
            maps = f.read()
        assert "librdkafka" not in maps and "libcrypto" not in maps, \
            "a keel without Kafka or API keys loads neither librdkafka nor libcrypto"


def test_traces_and_metrics():
    with Keel() as k:
        st, _, _ = post(k, "/v1/traces", g.traces_request(range(5)))
        assert st == 200
        st, _, _ = post(k, "/v1/metrics", g.metrics_request(range(7)))
        assert st == 200
        spans = records(k, "traces", 5)
        assert sorted(g.seq_of_json_record(o) for o in spans) == list(range(5)), spans
        s0 = [o for o in spans if g.seq_of_json_record(o) == 0][0]
        sp = s0["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        assert sp["traceId"] == g.trace_id_of(0).hex() and sp["spanId"] == g.span_id_of(0).hex(), sp
        pts = records(k, "metrics", 7)
        assert sorted(g.seq_of_json_record(o) for o in pts) == list(range(7)), pts
        m = pts[0]["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]
        assert m["name"] == "queue.depth" and len(m["gauge"]["dataPoints"]) == 1, m


def test_json_request_and_gzip():
    with Keel() as k:
        st, h, body = post(k, "/v1/logs", g.logs_json(range(100, 104)), "application/json")
        assert st == 200 and h["content-type"] == "application/json", (st, h, body)
        assert json.loads(body) == {}, body
        st, _, body = post(k, "/v1/logs", gzip.compress(g.logs_request(range(200, 205))),
                           headers={"Content-Encoding": "gzip"})
        assert st == 200, body
        seqs = sorted(g.seq_of_json_record(o) for o in records(k, "logs", 9))
        assert seqs == [100, 101, 102, 103, 200, 201, 202, 203, 204], seqs


def test_refusals():
    with Keel(env={"KEEL_OTLP_MAX_REQUEST": "64KiB"}) as k:
        st, _, body = post(k, "/v1/logs", g.logs_request([1]), "text/plain")
        assert st == 415, (st, body)
        st, _, body = post(k, "/v1/logs", b"not gzip", headers={"Content-Encoding": "gzip"})
        assert st == 400 and b"gzip" in body, (st, body)
        st, _, body = post(k, "/v1/logs", b"x", headers={"Content-Encoding": "br"})
        assert st == 415, (st, body)
        bomb = gzip.compress(b"\0" * (1 << 20))  # 1 KiB that inflates to 1 MiB
        st, _, body = post(k, "/v1/logs", bomb, headers={"Content-Encoding": "gzip"})
        assert st == 413, (st, body)
        st, _, body = post(k, "/v1/logs", b"\0" * (65 * 1024))
        assert st == 413, (st, body)
        # Undecodable protobuf: 400 with a google.rpc.Status body saying where.
        st, h, body = post(k, "/v1/logs", g.logs_request([1])[:-3])
        assert st == 400 and h["content-type"] == "application/x-protobuf", (st, h)
        assert body[:2] == b"\x08\x03" and b"at byte" in body, body
        st, h, body = post(k, "/v1/logs", b'{"resourceLogs": 5}', "application/json")
        assert st == 400 and json.loads(body)["code"] == 3, body
        st, _, _ = post(k, "/v1/nothing", b"")
        assert st == 404
        assert metric(k, "keel_pipeline_requests_refused_total", signal="logs",
                      reason="bad_request") >= 3
        assert records(k, "logs") == [], "nothing refused may reach the sink"


def test_partial_success():
    with Keel() as k:
        good = g.span(1, g.trace_id_of(1), g.span_id_of(1))
        bad = g.span(2, b"\x01\x02\x03", g.span_id_of(2))  # a trace id must be 16 bytes
        ss = g.f_len(1, g.scope()) + g.f_len(2, good) + g.f_len(2, bad)
        req = g.f_len(1, g.f_len(1, g.resource()) + g.f_len(2, ss))
        st, _, body = post(k, "/v1/traces", req)
        assert st == 200, body
        # ExportTraceServiceResponse{partial_success{rejected_spans=1, error_message}}
        assert body[0] == 0x0A and b"\x08\x01" in body[:6], body
        st, _, body = post(k, "/v1/traces", g.traces_request([9]))
        assert st == 200
        seqs = sorted(g.seq_of_json_record(o) for o in records(k, "traces", 2))
        assert seqs == [1, 9], seqs
        assert metric(k, "keel_pipeline_records_rejected_total", signal="traces") == 1


def test_malformed_corpus_and_memory():
    nested = g.any_str("leaf")
    for _ in range(200):  # AnyValue arrays 200 deep
        nested = g.f_len(5, g.f_len(1, nested))
    # too deep in a resource attribute: the whole request is refused
    deep = g.f_len(1, g.f_len(1, g.f_len(1, g.f_len(1, "k") + g.f_len(2, nested))))
    # too deep inside one log record: that record alone is rejected (partial success)
    deep_rec = g.f_len(1, g.f_len(2, g.f_len(1, g.scope()) + g.f_len(2, g.f_len(5, nested))
                                  + g.f_len(2, g.log_record(7))))
    corpus = [
        b"\x0a",                                   # truncated length
        b"\x0a\xff\xff\xff\xff\x0f",               # a 4 GiB length in 6 bytes
        b"\x08" + b"\xff" * 11,                    # varint longer than 10 bytes
        b"\x0a\x05\x0a\x03\x0a\x01",               # nested lengths beyond the body
        b"\x0b\x0c",                               # group wire types
        b"\x00\x00",                               # field number 0
        deep,
        g.logs_request([1])[:7],
    ]
    with Keel(env={"KEEL_OTLP_MAX_REQUEST": "1MiB"}) as k:
        for body in corpus:
            for path in ("/v1/logs", "/v1/traces", "/v1/metrics"):
                st, _, resp = post(k, path, body)
                assert st == 400, (path, body[:16], st, resp)
        st, _, resp = post(k, "/v1/logs", deep_rec)
        assert st == 200 and b"nested too deep" in resp, (st, resp)
        assert [g.seq_of_json_record(o) for o in records(k, "logs", 1)] == [7]
        # gzip bombs and large bodies, many times over: memory stays bounded
        bomb = gzip.compress(b"\x0a" * (64 << 20))
        for _ in range(20):
            st, _, _ = post(k, "/v1/logs", bomb, headers={"Content-Encoding": "gzip"})
            assert st == 413
        st, _, _ = post(k, "/v1/logs", g.logs_request([5]))
        assert st == 200
        with open("/proc/%d/status" % k.proc.pid) as f:
            hwm = [l for l in f if l.startswith("VmHWM")][0]
        kb = int(hwm.split()[1])
        assert kb < 128 * 1024, "peak RSS %d KiB" % kb


def test_sigkill_loses_nothing_acknowledged():
    """Acknowledged records survive kill -9: after a restart the sink has every one of them."""
    data = tempfile.mkdtemp(prefix="keel-kill-")
    try:
        with Keel(env={"KEEL_DATA_DIR": data}) as k:
            acked = g.kill9_while_sending(k, senders=3, batch=20, pad=400, after=1.0)
        assert len(acked) > 100, len(acked)
        with Keel(env={"KEEL_DATA_DIR": data}) as k2:
            lines = records(k2, "logs", len(acked), timeout=20, data_dir=data)
            got = set(g.seq_of_json_record(o) for o in lines)
            missing = set(acked) - got
            assert not missing, "%d acknowledged records lost, e.g. %r" % (
                len(missing), sorted(missing)[:5])
    finally:
        shutil.rmtree(data, ignore_errors=True)


def test_bodies_in_flight_are_capped():
    """Slow uploads cannot make keel buffer more than buffer.memory of request bodies."""
    import socket
    with Keel(env={"KEEL_BUFFER_MEMORY": "1MiB", "KEEL_OTLP_MAX_REQUEST": "512KiB"}) as k:
        body = g.logs_request(range(3), pad=150_000)  # ~450 KB: two fit in 1 MiB, not three
        assert 400 * 1024 < len(body) < 500 * 1024, len(body)
        head = ("POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                "Content-Length: %d\r\n\r\n" % len(body)).encode()
        slow = []
        for _ in range(2):  # each holds ~450 KB of the budget while it trickles
            c = socket.create_connection(("127.0.0.1", k.otlp_port), timeout=10)
            c.sendall(head + body[:1000])
            slow.append(c)
        time.sleep(0.3)
        second = socket.create_connection(("127.0.0.1", k.otlp_port), timeout=10)
        second.sendall(head + body[:1000])
        answer = second.recv(4096).decode("latin-1")
        assert answer.startswith("HTTP/1.1 429") and "Retry-After: 1" in answer, answer
        first = slow[0]
        first.sendall(body[1000:])
        answer = first.recv(4096).decode("latin-1")
        assert answer.startswith("HTTP/1.1 200"), answer
        st, _, _ = post(k, "/v1/logs", body)  # the budget was given back
        assert st == 200
        for c in slow + [second]:
            c.close()


def test_api_keys():
    tmp = tempfile.mkdtemp(prefix="keel-keys-")
    try:
        with open(os.path.join(tmp, "team-a"), "w") as f:
            f.write("# rotated 2026-11\nsecret-key-A\n")
        with open(os.path.join(tmp, "team-b"), "w") as f:
            f.write("secret-key-B\n")
        with Keel(env={"KEEL_OTLP_API_KEYS": tmp}) as k:
            req = g.logs_request([1])
            st, h, body = post(k, "/v1/logs", req)
            assert st == 401 and h.get("www-authenticate", "").startswith("Bearer"), (st, h)
            assert body[:2] == b"\x08\x10", body  # google.rpc.Status code 16 UNAUTHENTICATED
            st, _, _ = post(k, "/v1/logs", req, headers={"Authorization": "Bearer wrong"})
            assert st == 401
            st, _, _ = post(k, "/v1/logs", req, headers={"Authorization": "Bearer secret-key-A"})
            assert st == 200
            st, _, _ = post(k, "/v1/logs", g.logs_request([2]), headers={"X-API-Key": "secret-key-B"})
            assert st == 200
            assert sorted(g.seq_of_json_record(o) for o in records(k, "logs", 2)) == [1, 2]
            assert metric(k, "keel_pipeline_requests_refused_total", signal="logs",
                          reason="unauthorized") == 2
            r, _ = request(k, get("/metrics"))
            assert b"secret-key" not in r.body
            assert not any("secret-key" in l for l in k.lines), "a key was logged"
        st = Keel(env={"KEEL_OTLP_API_KEYS": os.path.join(tmp, "nope")})
        try:
            st.start()
            raise AssertionError("keel started with an unreadable key file")
        except AssertionError as e:
            assert "otlp.api_keys" in str(e), e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_api_keys_rotate_on_sighup():
    """A Secret rotated in place: SIGHUP reads otlp.api_keys again; a broken rotation keeps the
    keys that work."""
    tmp = tempfile.mkdtemp(prefix="keel-keys-")
    keys = os.path.join(tmp, "keys")
    try:
        with open(keys, "w") as f:
            f.write("old-key\n")
        with Keel(env={"KEEL_OTLP_API_KEYS": keys}) as k:
            def status(key):
                return post(k, "/v1/logs", g.logs_request([1]), headers={"X-API-Key": key})[0]

            def reloaded(n):
                deadline = time.time() + 5
                while time.time() < deadline:
                    done = [l for l in k.logs() if l.get("msg") in ("configuration reloaded", "reload failed: "
                                                                      "the previous configuration keeps serving")]
                    if len(done) >= n:
                        return done[n - 1]
                    time.sleep(0.05)
                raise AssertionError("no reload line: %r" % k.lines[-5:])

            assert status("old-key") == 200 and status("new-key") == 401
            with open(keys + ".tmp", "w") as f:
                f.write("new-key\n")
            os.rename(keys + ".tmp", keys)
            assert status("old-key") == 200, "keys changed before the reload"
            k.signal(signal.SIGHUP)
            assert reloaded(1)["msg"] == "configuration reloaded"
            assert status("new-key") == 200 and status("old-key") == 401
            with open(keys, "w") as f:
                f.write("# nothing yet\n")  # a rotation caught half way: no keys
            k.signal(signal.SIGHUP)
            line = reloaded(2)
            assert "otlp.api_keys" in line.get("error", ""), line
            assert status("new-key") == 200, "a failed reload dropped the working keys"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    Suite().run(globals())
