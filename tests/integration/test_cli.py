"""test_cli.py - the keel command line: version, check-config messages (FILE:LINE), configuration
precedence (file < KEEL_* < flags), argument errors and the JSON access log on stdout."""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from harness import KEEL, Keel, Reader, Suite, get, pipeline_env, post, request

TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

# Every key, each away from its default (docs/configuration.md).
GOOD = """\
# every key, nested and dotted forms
listen: 127.0.0.1:0
workers: 2
max_connections: 500
limits:
  request_line: 4KiB
  header_bytes: 16KiB
  header_count: 50
  body: 2MiB
timeouts:
  header: 5s
  body: 10s
  idle: 75s
  write: 250ms
shutdown:
  drain_delay: 0
  drain_timeout: 2m
log:
  level: debug
  access: off
log.buffer: 64KiB
metrics:
  enabled: off
  path: /stats
"""

# docs/configuration.md "Example"
DOC_EXAMPLE = """\
# keel.yaml for a pod behind a Kubernetes Service
listen: 0.0.0.0:8080
workers: 2                 # match the pod's CPU limit (0 would use every online CPU)
max_connections: 20000
limits:
  body: 4MiB
timeouts:
  idle: 75s                # longer than the load balancer's idle timeout
shutdown:
  drain_delay: 5s          # let endpoints update before listeners close
  drain_timeout: 20s       # 5s + 20s < terminationGracePeriodSeconds (30s)
log:
  level: info
  access_sample: 0.1       # one request in ten
"""

TMP = tempfile.mkdtemp(prefix="keel-cli-")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env.update(pipeline_env(os.path.join(TMP, "data")))
    env.update(extra)
    return env


def run(*args, env=None, timeout=10):
    p = subprocess.run([KEEL] + list(args), capture_output=True, timeout=timeout,
                       env=env if env is not None else clean_env())
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def write(name, text):
    path = os.path.join(TMP, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def expect_config_error(name, text, line, *needles):
    """check-config on `text` exits 1 with 'keel: PATH:LINE: ...' mentioning every needle."""
    path = write(name, text)
    rc, out, err = run("check-config", "-c", path)
    assert rc == 1, "check-config %s: exit %d, want 1 (stderr %r)" % (name, rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, "want exactly one message line on stderr: %r" % err
    want = "keel: %s:%d: " % (path, line)
    assert lines[0].startswith(want), "want %r..., got %r" % (want, lines[0])
    for n in needles:
        assert n in lines[0], "message %r lacks %r" % (lines[0], n)
    assert "ok" not in out, out
    return lines[0]


# ---- version, help, arguments --------------------------------------------------------------

def test_version():
    rc, out, err = run("version")
    assert rc == 0, (rc, err)
    assert re.match(r"^keel 0\.1\.0(\s|$)", out), "version output %r" % out
    assert out.count("\n") == 1, "one line expected: %r" % out
    assert err == "", err


def test_unknown_arguments_exit_2():
    for args in (["serve", "--bogus"], ["frob"], ["serve", "-c"], ["serve", "--listen"],
                 ["check-config"], ["check-config", "-x", "f"], ["serve", "extra"]):
        rc, out, err = run(*args, timeout=5)
        assert rc == 2, "%r: exit %d, want 2 (stderr %r)" % (args, rc, err)
        assert err.startswith("keel: "), "%r: stderr %r" % (args, err)
        assert "listening" not in out, "%r started serving: %r" % (args, out)


# ---- check-config -----------------------------------------------------------------------------

def test_check_config_good():
    for name, text in (("good.yaml", GOOD), ("doc-example.yaml", DOC_EXAMPLE),
                       ("empty.yaml", ""), ("comments.yaml", "# nothing\n# at all\n")):
        path = write(name, text)
        rc, out, err = run("check-config", "-c", path)
        assert rc == 0, "check-config %s: exit %d, stderr %r" % (name, rc, err)
        assert err == "", err


def test_check_config_unknown_key():
    expect_config_error("unknown.yaml",
                        "listen: 127.0.0.1:0\nlimits:\n  body: 1MiB\n  bodyy: 3\nworkers: 1\n",
                        4, "unknown key 'limits.bodyy'")
    expect_config_error("unknown-top.yaml", "workers: 1\n\n# c\nlisten_addr: x\n", 4,
                        "listen_addr")


def test_check_config_bad_duration():
    expect_config_error("duration.yaml", "workers: 1\ntimeouts:\n  header: 5s\n  idle: 5x\n", 4,
                        "timeouts.idle", "5x")
    expect_config_error("duration-nounit.yaml", "shutdown:\n\n  drain_timeout: 10\n", 3,
                        "shutdown.drain_timeout")


def test_check_config_out_of_range():
    expect_config_error("range.yaml", "workers: 4\nmax_connections: 0\n", 2, "max_connections")
    expect_config_error("range2.yaml", "log:\n  level: info\n  buffer: 1GiB\n", 3, "log.buffer")


def test_check_config_syntax_error():
    expect_config_error("syntax.yaml", "workers: 4\nlimits:\n  body: 3\n  x: y: z\n", 4,
                        "syntax error")


def test_check_config_wrong_type():
    expect_config_error("type.yaml", "workers: 4\nlog:\n  level: {x: 1}\n", 3, "log.level")
    expect_config_error("type2.yaml", "workers: 1\nmax_connections: [1, 2]\n", 2,
                        "max_connections")


def test_check_config_missing_file():
    path = os.path.join(TMP, "does-not-exist.yaml")
    rc, out, err = run("check-config", "-c", path)
    assert rc == 1, (rc, err)
    assert err.startswith("keel: %s: " % path), err
    assert "no such file" in err.lower(), err


def test_serve_bad_config_exits_1():
    path = write("serve-bad.yaml", "workers: 1\nlimits:\n  bodyy: 3\n")
    t = time.time()
    rc, out, err = run("serve", "-c", path, "--listen", "127.0.0.1:0", timeout=10)
    assert rc == 1, (rc, err)
    assert time.time() - t < 5
    assert err.startswith("keel: %s:3: unknown key 'limits.bodyy'" % path), err
    assert "listening" not in out, out


# ---- precedence: file < environment < flags ------------------------------------------------

def listening(k):
    return [l for l in k.logs() if l.get("msg") == "listening"][0]


def test_env_limits_body():
    with Keel(env={"KEEL_LIMITS_BODY": "10"}) as k:
        r, _ = request(k, post("/echo", '{"a":"xxxxxxxxxxxx"}'))  # 20 bytes
        assert r.status == 413, r
        assert r.json()["error"] == "request body too large", r
        r, _ = request(k, post("/echo", '{"a":"xx"}'))  # 10 bytes: at the limit
        assert r.status == 200 and r.body == b'{"a":"xx"}', r


def test_env_overrides_file():
    cfg = "workers: 3\nlimits:\n  body: 5\n"
    with Keel(env={"KEEL_WORKERS": "2", "KEEL_LIMITS_BODY": "1KiB"}, config=cfg) as k:
        assert str(listening(k)["workers"]) == "2", listening(k)
        r, _ = request(k, post("/echo", '{"a":"xxxxxxxxxxxx"}'))
        assert r.status == 200, r


def test_flag_listen_overrides_env():
    # KEEL_LISTEN names an address that cannot be bound here; --listen 127.0.0.1:0 must win.
    with Keel(env={"KEEL_LISTEN": "192.0.2.1:9"}) as k:
        assert listening(k)["address"].startswith("127.0.0.1:"), listening(k)
        r, _ = request(k, get("/"))
        assert r.status == 200, r


def test_env_listen_used_without_flag():
    # The harness adds --listen only for build/keel itself; this path names the same binary.
    other = os.path.join(os.path.dirname(KEEL), ".", os.path.basename(KEEL))
    with Keel("serve", binary=other) as k:
        assert listening(k)["address"].startswith("127.0.0.1:"), listening(k)
        r, _ = request(k, get("/"))
        assert r.status == 200, r


def test_flag_workers_overrides_env():
    with Keel("--workers", "1", env={"KEEL_WORKERS": "3"}) as k:
        assert str(listening(k)["workers"]) == "1", listening(k)


def test_env_workers_1():
    with Keel(env={"KEEL_WORKERS": "1"}) as k:
        assert str(listening(k)["workers"]) == "1", listening(k)
        for _ in range(3):
            r, _ = request(k, get("/"))
            assert r.status == 200, r


def test_kubernetes_service_variables_ignored():
    env = {"KEEL_SERVICE_HOST": "10.0.0.1", "KEEL_SERVICE_PORT": "8080",
           "KEEL_PORT": "tcp://10.0.0.1:8080", "KEEL_PORT_8080_TCP_ADDR": "10.0.0.1"}
    with Keel(env=env) as k:
        r, _ = request(k, get("/"))
        assert r.status == 200, r


def test_env_invalid_value_stops_startup():
    for args in (["serve", "--listen", "127.0.0.1:0"], ["check-config", "-c", write("ok.yaml", "")]):
        rc, out, err = run(*args, env=clean_env(KEEL_WORKERS="abc"))
        assert rc == 1, "%r: exit %d (stderr %r)" % (args, rc, err)
        assert err.startswith("keel: KEEL_WORKERS: "), err
        assert "abc" in err, err
        assert "listening" not in out, out
    rc, out, err = run("serve", "--listen", "127.0.0.1:0", env=clean_env(KEEL_TIMEOUTS_IDLE="5x"))
    assert rc == 1 and err.startswith("keel: KEEL_TIMEOUTS_IDLE: "), (rc, err)
    rc, out, err = run("serve", "--listen", "127.0.0.1:0", env=clean_env(KEEL_WORKERS=""))
    assert rc == 1 and "KEEL_WORKERS" in err, "an empty variable is an error: %r" % ((rc, err),)


# ---- the log on stdout ---------------------------------------------------------------------

def wait_for(k, pred, timeout=3):
    end = time.time() + timeout
    while time.time() < end:
        found = [l for l in k.logs() if pred(l)]
        if found:
            return found
        time.sleep(0.02)
    return []


def is_request(l):
    return l.get("msg") == "request"


def test_access_log_line():
    with Keel() as k:
        r, _ = request(k, get("/"))
        assert r.status == 200
        lines = wait_for(k, is_request)
        assert lines, "no access log line: %r" % k.lines
        r, _ = request(k, get("/nope?x=1"))
        assert r.status == 404
        assert wait_for(k, lambda l: is_request(l) and l.get("url.path") == "/nope")
    reqs = [l for l in k.logs() if is_request(l)]
    assert len(reqs) == 2, "want one line per request: %r" % reqs
    a, b = reqs
    assert a["http.request.method"] == "GET" and a["url.path"] == "/", a
    assert a["http.response.status_code"] == 200 and a["http.route"] == "/", a
    assert b["http.response.status_code"] == 404 and b["url.path"] == "/nope", b
    assert "http.route" not in b, "no route matched, so no http.route: %r" % b
    for l in reqs:
        assert TS.match(l["ts"]), "ts %r is not RFC 3339 UTC with milliseconds" % l["ts"]
        assert l["level"] == "info", l


def test_access_log_off():
    with Keel(config="log:\n  access: off\n") as k:
        for _ in range(3):
            r, _ = request(k, get("/"))
            assert r.status == 200
        r, _ = request(k, post("/echo", "[1]"))
        assert r.status == 200
    assert k.proc.returncode == 0
    assert any(l.get("msg") == "stopped" for l in k.logs()), k.lines  # stdout was all read
    reqs = [l for l in k.logs() if is_request(l)]
    assert not reqs, "log.access: off still wrote %r" % reqs


def test_stdout_is_json_lines():
    with Keel(config="log:\n  level: debug\n") as k:
        request(k, get("/"))
        request(k, post("/echo", "{bad"))
        s = k.connect()
        s.sendall(post("/echo", '{"ok":true}'))
        Reader(s).response()
        s.close()
        k.signal(signal.SIGHUP)
        time.sleep(0.2)
    assert k.lines, "no output"
    for line in k.lines:
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError("stdout line is not JSON: %r" % line) from None
        assert isinstance(obj, dict), line
        assert TS.match(obj.get("ts", "")) and obj.get("level") and obj.get("msg"), line
    assert len([l for l in k.logs() if is_request(l)]) == 3, k.lines


if __name__ == "__main__":
    try:
        Suite().run(globals())
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
