"""test_logs.py - a blocked stdout never stalls the workers; dropped log lines are counted and reported."""
import json
import os
import signal
import socket
import subprocess
import time

from harness import KEEL, Reader, Suite, get


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_blocked_stdout_does_not_stall_requests():
    port = free_port()
    rfd, wfd = os.pipe()  # nobody reads rfd until the end: the pipe (64 KiB) fills up
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env["KEEL_LOG_BUFFER"] = "4KiB"
    proc = subprocess.Popen([KEEL, "serve", "--listen", "127.0.0.1:%d" % port, "--workers", "1"],
                            stdout=wfd, stderr=subprocess.DEVNULL, env=env)
    os.close(wfd)
    try:
        deadline = time.time() + 10
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert time.time() < deadline, "keel did not start"
                time.sleep(0.05)
        r = Reader(s)
        t0 = time.time()
        n = 3000  # ~1 MB of access log: far more than the pipe and the 4 KiB ring hold
        for i in range(0, n, 100):
            s.sendall(get("/?i=%d" % i) * 100)
            for _ in range(100):
                resp = r.response()
                assert resp.status == 200, resp
        elapsed = time.time() - t0
        assert elapsed < 20, "requests stalled behind the log: %.1fs" % elapsed
        s.close()
        proc.send_signal(signal.SIGTERM)
        # Now drain the pipe: the writer thread must get unblocked and report the drops.
        out = b""
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
    port = free_port()
    rfd, wfd = os.pipe()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    proc = subprocess.Popen([KEEL, "serve", "--listen", "127.0.0.1:%d" % port, "--workers", "1"],
                            stdout=wfd, stderr=subprocess.DEVNULL, env=env)
    os.close(wfd)
    try:
        deadline = time.time() + 10
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert time.time() < deadline, "keel did not start"
                time.sleep(0.05)
        r = Reader(s)
        for _ in range(20):  # 2000 access lines: the 64 KiB pipe is full long before
            s.sendall(get("/") * 100)
            for _ in range(100):
                assert r.response().status == 200
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
