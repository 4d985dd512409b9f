"""test_logs.py - a blocked stdout never stalls the workers; dropped log lines are counted and reported."""
import json
import os
import signal
import socket
import subprocess
import tempfile
import time

from harness import KEEL, Reader, Suite, get, pipeline_env


def start_with_pipe(extra_env=None):
    """Starts keel with stdout on a pipe that nobody reads; returns (proc, read fd, socket)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    rfd, wfd = os.pipe()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env.update(pipeline_env(tempfile.mkdtemp(prefix="keel-data-")))
    env.update(extra_env or {})
    proc = subprocess.Popen([KEEL, "serve", "--listen", "127.0.0.1:%d" % port, "--workers", "1"],
                            stdout=wfd, stderr=subprocess.DEVNULL, env=env)
    os.close(wfd)
    deadline = time.time() + 10
    while True:
        try:
            return proc, rfd, socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            if time.time() > deadline:
                proc.kill()
                os.close(rfd)
                raise AssertionError("keel did not start")
            time.sleep(0.05)


def send_batches(s, n):
    """n pipelined GET / in batches of 100, each answered 200."""
    r = Reader(s)
    for i in range(0, n, 100):
        s.sendall(get("/?i=%d" % i) * 100)
        for _ in range(100):
            resp = r.response()
            assert resp.status == 200, resp


def test_blocked_stdout_does_not_stall_requests():
    proc, rfd, s = start_with_pipe({"KEEL_LOG_BUFFER": "4KiB"})
    try:
        t0 = time.time()
        n = 3000  # ~1 MB of access log: far more than the pipe and the 4 KiB ring hold
        send_batches(s, n)
        elapsed = time.time() - t0
        assert elapsed < 20, "requests stalled behind the log: %.1fs" % elapsed
        s.close()
        proc.send_signal(signal.SIGTERM)
        # Now drain the pipe: the writer thread gets unblocked and reports the drops.
        with os.fdopen(rfd, "rb") as f:
            rfd = None
            out = f.read()
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        if rfd is not None:
            os.close(rfd)
    lines = [json.loads(l) for l in out.decode().splitlines() if l.strip()]
    requests = sum(1 for l in lines if l.get("msg") == "request")
    dropped = sum(int(l.get("dropped", 0)) for l in lines if l.get("msg") == "log lines dropped")
    assert dropped > 0, "expected dropped lines to be reported"
    assert requests + dropped == n, "request lines %d + dropped %d != %d" % (requests, dropped, n)


def test_exit_with_stdout_never_read():
    """SIGTERM still ends the process when nobody ever reads its stdout."""
    proc, rfd, s = start_with_pipe()
    try:
        send_batches(s, 2000)  # the 64 KiB pipe is full long before
        s.close()
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.time() - t0 < 5, "exit took %.1fs" % (time.time() - t0)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(rfd)


if __name__ == "__main__":
    Suite().run(globals())
