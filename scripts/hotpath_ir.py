#!/usr/bin/env python3
"""hotpath_ir.py - instructions per POST /echo request of a keel binary, counted by callgrind.

usage: scripts/hotpath_ir.py BUILD_DIR [BUILD_DIR...] [--requests N]

Runs BUILD_DIR/keel serve (one worker) under `valgrind --tool=callgrind` twice, driven by one
keep-alive client sending N/6 and then N fixed POST /echo requests one after another (closed loop,
no timing involved), and reports the instruction difference divided by the request difference:
the per-request cost with start-up and shutdown cancelled out. Compares builds (e.g. before and
after a flag change) without running a benchmark; needs valgrind.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

BODY = b'{"user":{"id":42,"name":"keel","tags":["a","b","c"]},"items":[1,2,3,4.5,true,null]}'
REQ = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
       + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_response(sock, buf):
    while True:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            m = re.search(rb"(?i)content-length:\s*(\d+)", buf[:head_end])
            total = head_end + 4 + (int(m.group(1)) if m else 0)
            if len(buf) >= total:
                if not buf.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError("unexpected answer: %r" % buf[:80])
                return buf[total:]
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed")
        buf += chunk


def run(build, n):
    port = free_port()
    out = tempfile.NamedTemporaryFile(prefix="keel-callgrind-", delete=False).name
    env = dict(os.environ, KEEL_LOG_LEVEL="error")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
                             os.path.join(build, "keel"), "serve", "--listen",
                             "127.0.0.1:%d" % port, "--workers", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        buf = b""
        for _ in range(n):
            sock.sendall(REQ)
            buf = read_response(sock, buf)
        sock.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=120)[1].decode(errors="replace")
    m = re.search(r"Collected : (\d+)", err)
    os.unlink(out)
    if not m:
        raise RuntimeError("no callgrind total in:\n" + err[-2000:])
    return int(m.group(1))


def main():
    args = sys.argv[1:]
    n = 12000
    if "--requests" in args:
        i = args.index("--requests")
        n = int(args[i + 1])
        del args[i:i + 2]
    if not args:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    lo = max(1, n // 6)
    for build in args:
        a, b = run(build, lo), run(build, n)
        print("%s: %d Ir for %d requests, %d Ir for %d: %.0f instructions per request"
              % (build, a, lo, b, n, (b - a) / (n - lo)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
