"""test_pipeline_kafka.py - OTLP into Kafka (librdkafka's mock cluster, read back with kcat): exact
records, keys and headers; and every fault with zero acknowledged records lost: brokers down
10 s, produce errors, kill -9 and restart, a full disk buffer, a corrupt byte in a segment."""
import glob
import http.client
import json
import os
import shutil
import signal
import struct
import tempfile
import time

import otlp_gen as g
from harness import Keel, Suite, get, request
from kafka import MockCluster

SIGNAL_TOPIC = {"logs": "otlp_logs", "traces": "otlp_spans", "metrics": "otlp_metrics"}


def post(k, path, body, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", k.otlp_port, timeout=30)
    c.request("POST", path, body=body, headers={"Content-Type": "application/x-protobuf"})
    r = c.getresponse()
    data = r.read()
    if conn is None:
        c.close()
    return r.status, dict((a.lower(), b) for a, b in r.getheaders()), data


def metric(k, name, **labels):
    r, _ = request(k, get("/metrics"))
    want = name + ("{%s}" % ",".join('%s="%s"' % kv for kv in labels.items()) if labels else "")
    for line in r.body.decode().splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return None


def kafka_env(kc, data=None, **extra):
    e = {"KEEL_KAFKA_BROKERS": kc.bootstrap, "KEEL_KAFKA_LINGER": "1ms"}
    if data:
        e["KEEL_DATA_DIR"] = data
    e.update(extra)
    return e


def seqs_in(kc, signal_name, want, timeout=30):
    """The seq of every message in the signal's topic (one record per message), once `want`
    (a count, or a set of seqs: duplicates are allowed, at least once) is there."""
    deadline = time.time() + timeout
    while True:
        out = []
        for m in kc.read_all(SIGNAL_TOPIC[signal_name]):
            recs = g.records_in(signal_name, m["value"])
            assert len(recs) == 1, "a message must hold one record: %d" % len(recs)
            out.append(g.seq_of(signal_name, recs[0]))
        done = set(want) <= set(out) if isinstance(want, (set, list)) else len(out) >= want
        if done or time.time() > deadline:
            return out
        time.sleep(0.3)


def wait_for(cond, timeout=30, what="condition"):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out waiting for " + what
        time.sleep(0.1)


def test_exact_records_keys_headers():
    with MockCluster() as kc, Keel(env=kafka_env(kc)) as k:
        for b in range(3):
            st, _, body = post(k, "/v1/logs", g.logs_request(range(b * 100, b * 100 + 100)))
            assert st == 200, body
        st, _, _ = post(k, "/v1/traces", g.traces_request(range(50)))
        assert st == 200
        st, _, _ = post(k, "/v1/metrics", g.metrics_request(range(20)))
        assert st == 200
        logs = kc.consume("otlp_logs", 300)
        assert len(logs) == 300, len(logs)
        assert sorted(g.seq_of("logs", g.records_in("logs", m["value"])[0]) for m in logs) == \
            list(range(300))
        m0 = logs[0]
        assert m0["key"] == b"svc", m0["key"]
        assert m0["headers"] == {
            "keel.signal": "logs", "content-type": "application/x-protobuf",
            "keel.schema": "opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest"}, m0
        # resource and scope travel with every record
        res = g.first(m0["value"], 1, 1)
        assert g.first(g.first(res, 1), 2) == g.any_str("svc"), res
        spans = kc.consume("otlp_spans", 50)
        assert len(spans) == 50
        for m in spans:
            rec = g.records_in("traces", m["value"])[0]
            seq = g.seq_of("traces", rec)
            assert m["key"] == g.trace_id_of(seq).hex().encode(), (seq, m["key"])
        by_key = {}
        for m in spans:
            by_key.setdefault(m["key"], set()).add(m["partition"])
        assert all(len(p) == 1 for p in by_key.values())
        assert sorted(seqs_in(kc, "metrics", 20)) == list(range(20))
        wait_for(lambda: metric(k, "keel_pipeline_delivered_total", signal="logs") == 300,
                 what="delivered_total")
        wait_for(lambda: metric(k, "keel_pipeline_buffer_pending_bytes") == 0, what="pending 0")
        assert metric(k, "keel_pipeline_delivery_latency_seconds_count") == 370
        with open("/proc/%d/maps" % k.proc.pid) as f:
            assert "librdkafka.so" in f.read(), "the Kafka sink loads librdkafka on demand"


def test_batch_mode_and_json_format():
    env = {"KEEL_OTLP_MODE": "batch", "KEEL_KAFKA_MESSAGE_MAX": "8KiB"}
    with MockCluster() as kc, Keel(env=kafka_env(kc, **env)) as k:
        st, _, _ = post(k, "/v1/logs", g.logs_request(range(300), pad=40))
        assert st == 200
        time.sleep(0.5)
        msgs = kc.consume("otlp_logs", 2)
        wait_for(lambda: metric(k, "keel_pipeline_buffer_records") == 0, what="delivered")
        msgs = kc.read_all("otlp_logs")
        assert 2 <= len(msgs) < 300, len(msgs)  # a message per request, split under the limit
        assert all(len(m["value"]) <= 8 * 1024 for m in msgs), [len(m["value"]) for m in msgs]
        seqs = [g.seq_of("logs", r) for m in msgs for r in g.records_in("logs", m["value"])]
        assert sorted(seqs) == list(range(300)), seqs[:10]
    with MockCluster() as kc, Keel(env=kafka_env(kc, KEEL_OTLP_FORMAT="json")) as k:
        st, _, _ = post(k, "/v1/traces", g.traces_request(range(3)))
        assert st == 200
        msgs = kc.consume("otlp_spans", 3)
        assert len(msgs) == 3
        for m in msgs:
            assert m["headers"]["content-type"] == "application/json", m["headers"]
            obj = json.loads(m["value"])
            spans = obj["resourceSpans"][0]["scopeSpans"][0]["spans"]
            assert len(spans) == 1 and m["key"] == spans[0]["traceId"].encode(), (m["key"], obj)


def test_brokers_down_10s_nothing_lost():
    with MockCluster() as kc, Keel(env=kafka_env(kc)) as k:
        st, _, _ = post(k, "/v1/logs", g.logs_request(range(0, 50)))
        assert st == 200
        assert len(kc.consume("otlp_logs", 50)) == 50
        kc.command("down -1")
        t0 = time.time()
        for b in range(1, 6):  # acknowledged while Kafka is away: durable on disk
            st, _, _ = post(k, "/v1/logs", g.logs_request(range(b * 50, b * 50 + 50)))
            assert st == 200
        wait_for(lambda: metric(k, "keel_pipeline_buffer_records") >= 250, what="pending")
        time.sleep(max(0, 10 - (time.time() - t0)))
        assert metric(k, "keel_pipeline_buffer_oldest_age_seconds") >= 5
        kc.command("up -1")
        got = seqs_in(kc, "logs", set(range(300)), timeout=60)
        assert set(got) == set(range(300)), sorted(set(range(300)) - set(got))[:10]
        wait_for(lambda: metric(k, "keel_pipeline_buffer_records") == 0, what="drained")


def test_produce_errors_nothing_lost():
    with MockCluster() as kc, Keel(env=kafka_env(kc)) as k:
        # A first delivery before the faults: librdkafka 2.0.2's mock cluster can record an
        # idempotent producer's very first sequence even when it answers that request with an
        # injected error, and then acknowledge its retry as a duplicate without storing it
        # (seen here once in about ten runs, always record 0). Real brokers do not; the faults
        # below hit a producer that is past its first batch.
        st, _, _ = post(k, "/v1/logs", g.logs_request([1000]))
        assert st == 200
        assert seqs_in(kc, "logs", {1000}) == [1000]
        kc.command("errors produce 6 NOT_LEADER_FOR_PARTITION")
        kc.command("errors produce 2 REQUEST_TIMED_OUT")
        for b in range(4):
            st, _, _ = post(k, "/v1/logs", g.logs_request(range(b * 25, b * 25 + 25)))
            assert st == 200
        got = seqs_in(kc, "logs", set(range(100)), timeout=60)
        assert set(range(100)) <= set(got), (
            sorted(set(range(100)) - set(got))[:10],
            [(n, metric(k, n)) for n in ("keel_pipeline_buffer_records",
                                         "keel_pipeline_delivery_failures_total",
                                         "keel_pipeline_delivery_retries_total",
                                         "keel_pipeline_in_flight_records")],
            [l for l in k.logs() if l.get("level") != "info"][:10])


def test_kill9_restart_delivers_everything_acknowledged():
    data = tempfile.mkdtemp(prefix="keel-kafka-kill-")
    try:
        with MockCluster() as kc:
            kc.command("down -1")  # nothing can be delivered: all of it waits in the buffer
            with Keel(env=kafka_env(kc, data)) as k:
                acked = g.kill9_while_sending(k)
            assert len(acked) >= 50, len(acked)
            kc.command("up -1")
            with Keel(env=kafka_env(kc, data)) as k2:
                got = set(seqs_in(kc, "logs", set(acked), timeout=60))
                missing = set(acked) - got
                assert not missing, "%d acknowledged records lost: %r" % (
                    len(missing), sorted(missing)[:5])
                wait_for(lambda: metric(k2, "keel_pipeline_buffer_records") == 0, what="drained")
    finally:
        shutil.rmtree(data, ignore_errors=True)


def test_buffer_full_then_recovers():
    env = {"KEEL_BUFFER_MAX": "1MiB", "KEEL_BUFFER_SEGMENT": "64KiB"}
    with MockCluster() as kc, Keel(env=kafka_env(kc, **env)) as k:
        kc.command("down -1")
        acked, refused, seq = [], 0, 0
        c = http.client.HTTPConnection("127.0.0.1", k.otlp_port, timeout=10)
        while refused == 0 and seq < 100000:
            seqs = list(range(seq, seq + 20))
            seq += 20
            st, h, _ = post(k, "/v1/logs", g.logs_request(seqs, pad=500), conn=c)
            if st == 200:
                acked += seqs
            else:
                assert st == 503 and h.get("retry-after"), (st, h)
                refused += 1
        assert refused and len(acked) > 100, (refused, len(acked))
        assert metric(k, "keel_pipeline_requests_refused_total", signal="logs",
                      reason="buffer_full") >= 1
        kc.command("up -1")
        got = set(seqs_in(kc, "logs", set(acked), timeout=60))
        assert set(acked) <= got, sorted(set(acked) - got)[:5]

        def accepted_again():
            st, _, _ = post(k, "/v1/logs", g.logs_request([10 ** 7]))
            return st == 200
        wait_for(accepted_again, what="the buffer to accept again")


def test_corrupt_byte_skipped_rest_delivered():
    data = tempfile.mkdtemp(prefix="keel-kafka-corrupt-")
    try:
        with MockCluster() as kc:
            kc.command("down -1")
            with Keel(env=kafka_env(kc, data, KEEL_SHUTDOWN_FLUSH_TIMEOUT="0")) as k:
                st, _, _ = post(k, "/v1/logs", g.logs_request(range(40)))
                assert st == 200
            seg = sorted(glob.glob(os.path.join(data, "buffer", "*.log")))[0]
            with open(seg, "r+b") as f:
                raw = f.read()
                # walk the frames (magic, length, crc, time) to the 11th record's payload
                off = 0
                for _ in range(10):
                    off += 20 + struct.unpack_from("<I", raw, off + 4)[0]
                f.seek(off + 20 + 30)
                f.write(bytes([raw[off + 50] ^ 0xFF]))
            kc.command("up -1")
            with Keel(env=kafka_env(kc, data)) as k2:
                got = seqs_in(kc, "logs", set(range(40)) - {10}, timeout=60)
                assert sorted(set(got)) == [s for s in range(40) if s != 10], sorted(got)
                wait_for(lambda: metric(k2, "keel_pipeline_buffer_corrupt_records_total") == 1,
                         what="corrupt count")
    finally:
        shutil.rmtree(data, ignore_errors=True)


def test_ack_delivered_waits_for_kafka():
    env = {"KEEL_OTLP_ACK": "delivered", "KEEL_OTLP_ACK_TIMEOUT": "2s"}
    with MockCluster() as kc, Keel(env=kafka_env(kc, **env)) as k:
        st, _, _ = post(k, "/v1/logs", g.logs_request(range(5)))
        assert st == 200
        assert len(kc.read_all("otlp_logs")) == 5, "answered before Kafka had the records"
        kc.command("down -1")
        t0 = time.time()
        st, h, _ = post(k, "/v1/logs", g.logs_request(range(5, 10)))
        assert st == 503 and h.get("retry-after") and time.time() - t0 >= 1.5, (st, h)
        kc.command("up -1")
        assert set(seqs_in(kc, "logs", set(range(10)))) == set(range(10))


def test_sigterm_flushes_and_keeps_the_rest():
    data = tempfile.mkdtemp(prefix="keel-kafka-term-")
    try:
        with MockCluster() as kc:
            with Keel(env=kafka_env(kc, data)) as k:
                st, _, _ = post(k, "/v1/logs", g.logs_request(range(200)))
                assert st == 200
                k.signal(signal.SIGTERM)
                assert k.wait(15) == 0
            assert sorted(seqs_in(kc, "logs", 200)) == list(range(200))
            kc.command("down -1")
            with Keel(env=kafka_env(kc, data, KEEL_SHUTDOWN_FLUSH_TIMEOUT="1s")) as k:
                st, _, _ = post(k, "/v1/logs", g.logs_request(range(200, 250)))
                assert st == 200
                t0 = time.time()
                k.signal(signal.SIGTERM)
                assert k.wait(15) == 0
                assert time.time() - t0 < 8, "the flush deadline was not kept"
                stopped = [l for l in k.logs() if l.get("msg") == "pipeline stopped"]
                assert stopped and int(stopped[0]["pending_bytes"]) > 0, stopped
            kc.command("up -1")
            with Keel(env=kafka_env(kc, data)):
                assert set(seqs_in(kc, "logs", set(range(250)))) == set(range(250))
    finally:
        shutil.rmtree(data, ignore_errors=True)


def environ_of(k):
    """The process's environment block as it is in memory (glibc's loader writes a NUL after
    each tunable's value it parsed, so it is searched, not split) and its name."""
    with open("/proc/%d/environ" % k.proc.pid, "rb") as f:
        env = f.read()
    with open("/proc/%d/comm" % k.proc.pid) as f:
        return env, f.read().strip()


def test_kafka_sink_runs_with_a_larger_malloc_thread_cache():
    """With a Kafka sink keel re-executes itself once with glibc's tcache_count raised (same
    pid, same name, same arguments); GLIBC_TUNABLES that already set it are left alone, and
    the file sink does not re-execute."""
    with MockCluster() as kc:
        with Keel(env=kafka_env(kc, GLIBC_TUNABLES="glibc.malloc.check=0")) as k:
            env, comm = environ_of(k)
            assert b"\0GLIBC_TUNABLES=glibc.malloc.check=0" in env, env
            assert b"glibc.malloc.tcache_count=65535\0" in env, env
            assert comm == "keel", comm
            st, _, _ = post(k, "/v1/logs", g.logs_request(range(10)))
            assert st == 200
            assert sorted(seqs_in(kc, "logs", 10)) == list(range(10))
        with Keel(env=kafka_env(kc, GLIBC_TUNABLES="glibc.malloc.tcache_count=7")) as k:
            env = environ_of(k)[0]
            assert b"GLIBC_TUNABLES=glibc.malloc.tcache_count=7\0" in env and b"65535" not in env
    with Keel() as k:
        assert b"GLIBC_TUNABLES" not in environ_of(k)[0]


if __name__ == "__main__":
    Suite().run(globals())
