"""test_sandbox.py - keel with security.seccomp on and security.user (nobody): real work through every
subsystem (TLS, a proxied gateway route with DNS re-resolution, health checks and a Redis rate
limit, OTLP into the Kafka mock, the trace exporter, metrics, SIGHUP and admin reload, drain)
must never die of SIGSYS; refusals when the user cannot be used. Needs root (skips otherwise)."""
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import otlp_gen as g
from harness import Keel, Reader, Suite, get
from kafka import MockCluster
from otlp_receiver import OtlpReceiver
from upstream import Upstream

NOBODY = (65534, 65534)


def skip_unless_root():
    if os.geteuid() != 0:
        print("skip: dropping to another user needs root (CI runs as root)")
        return True
    return False


def shared_dir():
    """A directory nobody can read (the config, certificates) with data/ nobody can write."""
    d = tempfile.mkdtemp(prefix="keel-sandbox-")
    os.chmod(d, 0o755)
    os.mkdir(d + "/data")
    os.chown(d + "/data", *NOBODY)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", d + "/tls.key", "-out",
                    d + "/tls.crt", "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True, timeout=30)
    os.chmod(d + "/tls.key", 0o644)
    return d


def tls_get(k, path):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", k.port), timeout=10),
                        server_hostname="localhost")
    s.sendall(get(path))
    r = Reader(s).response()
    s.close()
    return r


def otlp_post(k, body):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", k.otlp_port, timeout=30)
    c.request("POST", "/v1/logs", body=body, headers={"Content-Type": "application/x-protobuf"})
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.split()
    return out


def wait_log(k, msg, after=0, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(o.get("msg") == msg for o in k.logs()[after:]):
            return
        time.sleep(0.05)
    raise AssertionError("no %r in %r" % (msg, k.lines[-20:]))


def redis_server():
    """A private redis-server (test_gateway_policies.Redis), or None when it is not installed."""
    if not shutil.which("redis-server") and not os.path.exists("/usr/bin/redis-server"):
        return None
    from test_gateway_policies import Redis
    return Redis()


def test_everything_under_seccomp_as_nobody():
    if skip_unless_root():
        return
    d = shared_dir()
    up = Upstream("a")
    rx = OtlpReceiver().start()
    rd = redis_server()
    try:
        with MockCluster(brokers=1, partitions=1) as kc:
            rate = ""
            extra = ""
            if rd:
                rate = ("    rate_limit: {rate: 1000/s, burst: 1000, by: route, scope: global, "
                        "on_redis_error: local}\n")
                extra = "redis: {address: 127.0.0.1:%d, timeout: 200ms}\n" % rd.port
            cfg = ("workers: 2\n"
                   "tls: {cert: %s/tls.crt, key: %s/tls.key}\n"
                   "admin: {listen: 127.0.0.1:0}\n"
                   "tracing: {endpoint: 'http://127.0.0.1:%d', batch_delay: 100ms}\n"
                   "shutdown: {drain_delay: 300ms, drain_timeout: 5s}\n"
                   "security: {user: nobody, seccomp: on}\n"
                   "%s"
                   "upstreams:\n"
                   "  a:\n"
                   "    endpoints: [localhost:%d]\n"
                   "    resolve: 200ms\n"
                   "    health_check: {path: /rec, interval: 200ms}\n"
                   "routes:\n"
                   "  - prefix: /api/\n"
                   "    upstream: a\n%s"
                   % (d, d, rx.port, extra, up.port, rate))
            env = {"KEEL_DATA_DIR": d + "/data", "KEEL_KAFKA_BROKERS": kc.bootstrap,
                   "KEEL_KAFKA_LINGER": "1ms"}
            k = Keel(config=cfg, env=env)
            os.chmod(k.config_file, 0o644)  # SIGHUP reads it again as nobody
            with k:
                st = proc_status(k.proc.pid)
                assert st["Uid"] == ["65534"] * 4 and st["Gid"] == ["65534"] * 4, st["Uid"]
                assert st["Seccomp"] == ["2"], st["Seccomp"]  # 2: filter mode
                assert st["NoNewPrivs"] == ["1"]
                # HTTP over TLS (libssl was dlopen()ed before the filter; handshakes after it)
                for path in ("/readyz", "/livez", "/metrics"):
                    r = tls_get(k, path)
                    assert r.status == 200, (path, r)
                # the gateway: proxied upstream (connect from a worker), resolver and health thread
                time.sleep(0.5)
                for _ in range(5):
                    r = tls_get(k, "/api/x")
                    assert r.status == 200, r
                assert up.count() >= 5
                # the pipeline: disk buffer, librdkafka's threads, delivery to the mock
                for b in range(3):
                    assert otlp_post(k, g.logs_request(range(b * 10, b * 10 + 10))) == 200
                msgs = kc.consume("otlp_logs", 30)
                assert len(msgs) >= 30, len(msgs)
                # the trace exporter (spans of the requests above)
                deadline = time.time() + 10
                while not rx.requests and time.time() < deadline:
                    time.sleep(0.1)
                assert rx.requests, "no trace export arrived"
                # reload twice: SIGHUP, then the admin endpoint
                n = len(k.logs())
                k.signal(signal.SIGHUP)
                wait_log(k, "configuration reloaded", n)
                s = socket.create_connection(("127.0.0.1", k.admin_port), timeout=10)
                s.sendall(b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                assert Reader(s).response().status == 200
                s.close()
                assert tls_get(k, "/api/y").status == 200
                assert otlp_post(k, g.logs_request(range(100, 110))) == 200
                # drain: SIGTERM while a connection is open, then a clean exit (Keel.__exit__
                # asserts exit code 0)
                held = socket.create_connection(("127.0.0.1", k.port), timeout=10)
                k.signal(signal.SIGTERM)
                rc = k.proc.wait(30)
                held.close()
                assert rc == 0, "keel exited %d (-%d is SIGSYS): %r" % (rc, signal.SIGSYS,
                                                                       k.lines[-10:])
            logs = [o.get("msg") for o in k.logs()]
            for want in ("switched user", "seccomp filter installed", "stopped"):
                assert want in logs, (want, logs)
            assert not any(o.get("level") == "error" for o in k.logs()), k.lines
            # every file keel made in data_dir belongs to nobody
            for root, dirs, files in os.walk(d + "/data"):
                for name in dirs + files:
                    assert os.stat(os.path.join(root, name)).st_uid == NOBODY[0], name
    finally:
        up.close()
        rx.stop()
        if rd:
            rd.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_file_sink_and_grpc_under_seccomp():
    """The file sink (rotation, deletion) and the OTLP/gRPC receiver, seccomp on, no user change."""
    d = tempfile.mkdtemp(prefix="keel-sandbox-")
    try:
        env = {"KEEL_DATA_DIR": d, "KEEL_SECURITY_SECCOMP": "on", "KEEL_FILES_ROTATE": "64KiB",
               "KEEL_FILES_KEEP": "2"}
        with Keel(env=env) as k:
            for b in range(40):
                assert otlp_post(k, g.logs_request(range(b * 50, b * 50 + 50))) == 200
            try:
                import grpc  # python3-grpcio
            except ImportError:
                grpc = None
            if grpc:
                ch = grpc.insecure_channel("127.0.0.1:%d" % k.grpc_port)
                call = ch.unary_unary("/opentelemetry.proto.collector.logs.v1.LogsService/Export")
                call(g.logs_request(range(5)), timeout=10)
                ch.close()
            k.signal(signal.SIGTERM)
            rc = k.proc.wait(30)
            assert rc == 0, "keel exited %d: %r" % (rc, k.lines[-10:])
        files = os.listdir(d + "/out")
        assert 1 <= len([f for f in files if f.startswith("logs-")]) <= 3, files
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_refused(env, cfg=None):
    k = Keel(config=cfg, env=env)
    cmd = [k.binary, "serve", "--listen", "127.0.0.1:0"] + (["-c", k.config_file] if cfg else [])
    p = subprocess.run(cmd, env=k.env, capture_output=True, text=True, timeout=30)
    shutil.rmtree(k.data_dir, ignore_errors=True)
    if k.config_file:
        os.unlink(k.config_file)
    return p


def test_refuses_when_the_user_cannot_be_used():
    p = run_refused({"KEEL_SECURITY_USER": "no-such-user-keel"})
    assert p.returncode == 1, p
    assert "security.user: user 'no-such-user-keel' not found" in p.stderr, p.stderr
    if skip_unless_root():
        return
    # data_dir owned by root, mode 0700: nobody cannot write it, so keel refuses to start
    d = tempfile.mkdtemp(prefix="keel-sandbox-")
    try:
        p = run_refused({"KEEL_SECURITY_USER": "nobody", "KEEL_DATA_DIR": d})
        assert p.returncode == 1, p
        errs = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
        assert any(o.get("msg") == "data_dir is not writable by security.user" for o in errs), p.stdout
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_check_config_knows_the_keys():
    k = Keel(config="security:\n  user: 65532:65532\n  seccomp: log\n")
    p = subprocess.run([k.binary, "check-config", "-c", k.config_file], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    with open(k.config_file, "w") as f:
        f.write("security:\n  seccomp: strict\n")
    p = subprocess.run([k.binary, "check-config", "-c", k.config_file], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 1 and "'strict' is not one of off|on|log" in p.stderr, p.stderr
    os.unlink(k.config_file)
    shutil.rmtree(k.data_dir, ignore_errors=True)


if __name__ == "__main__":
    Suite().run(globals())
