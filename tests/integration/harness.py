"""harness.py - starts build/keel on an ephemeral loopback port and talks raw HTTP/1.1 to it."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEEL = os.environ.get("KEEL_BIN", os.path.join(ROOT, "build", "keel"))


def pipeline_env(data_dir):
    """KEEL_* settings that keep a test's pipeline to itself: ephemeral ports, its own data."""
    return {"KEEL_OTLP_HTTP_LISTEN": "127.0.0.1:0", "KEEL_OTLP_GRPC_LISTEN": "127.0.0.1:0",
            "KEEL_DATA_DIR": data_dir}


class Keel:
    """A running keel process. Use as a context manager; stdout lines are collected."""

    def __init__(self, *args, env=None, config=None, binary=None):
        self.args = list(args)
        self.env = dict(os.environ)
        for k in list(self.env):
            if k.startswith("KEEL_") and k not in ("KEEL_BIN", "KEEL_HELLO", "KEEL_LIB"):
                del self.env[k]
        # The pipeline's listeners and data directory: private to this instance, so tests
        # running side by side never share a port (SO_REUSEPORT would allow it) or a buffer.
        self.data_dir = tempfile.mkdtemp(prefix="keel-data-")
        self.env.update(pipeline_env(self.data_dir))
        self.env.update(env or {})
        self.binary = binary or KEEL
        self.config_file = None
        if config is not None:
            fd, self.config_file = tempfile.mkstemp(suffix=".yaml")
            with os.fdopen(fd, "w") as f:
                f.write(config)
        self.lines = []
        self.port = None
        self.otlp_port = None
        self.grpc_port = None
        self.admin_port = None
        self._listening = threading.Event()

    def start(self):
        cmd = [self.binary]
        if self.binary == KEEL:
            cmd += ["serve", "--listen", "127.0.0.1:0"]
            if self.config_file:
                cmd += ["-c", self.config_file]
        else:
            self.env.setdefault("KEEL_LISTEN", "127.0.0.1:0")
        cmd += self.args
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=self.env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._listening.wait(10):
            self.kill()
            raise AssertionError("keel did not start: %r %r" % (self.lines, self.proc.stderr.read()))
        return self

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if obj.get("msg") == "otlp_grpc listening":  # logged before "listening"
                self.grpc_port = int(obj["address"].rsplit(":", 1)[1])
            if obj.get("msg") == "listening":
                if obj.get("otlp_http"):
                    self.otlp_port = int(obj["otlp_http"].rsplit(":", 1)[1])
                if obj.get("admin"):
                    self.admin_port = int(obj["admin"].rsplit(":", 1)[1])
                self.port = int(obj["address"].rsplit(":", 1)[1])
                self._listening.set()

    def logs(self):
        out = []
        for line in list(self.lines):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def wait(self, timeout=15):
        return self.proc.wait(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError("keel did not exit within 15 s of SIGTERM")
            if exc[0] is None:
                assert rc == 0, "keel exited %d after SIGTERM" % rc
        self._reader.join(5)
        if self.config_file:
            os.unlink(self.config_file)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        return False

    def connect(self, timeout=5):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s


class Response:
    def __init__(self, status, reason, headers, body, version):
        self.status, self.reason, self.headers, self.body, self.version = (
            status, reason, headers, body, version)

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %d %r %r>" % (self.status, self.headers, self.body[:200])


class Reader:
    """Reads responses off a socket, keeping bytes that belong to the next one."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        self.buf += chunk

    def response(self, head_request=False):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        version, status, reason = (lines[0].split(" ", 2) + [""])[:3]
        headers = [tuple(x.strip() for x in l.split(":", 1)) for l in lines[1:]]
        resp = Response(int(status), reason, headers, b"", version)
        if head_request or resp.status in (100, 204, 304):
            return resp
        n = int(resp.header("content-length") or 0)
        while len(self.buf) < n:
            self._fill()
        resp.body, self.buf = self.buf[:n], self.buf[n:]
        return resp

    def closed(self, timeout=3):
        """True when the peer closes (EOF or reset) with no further bytes within timeout."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return not self.buf
                self.buf += chunk
        except ConnectionResetError:
            return not self.buf
        except socket.timeout:
            return False


def request(k, raw, head_request=False):
    """Sends raw bytes on a new connection and returns (response, reader)."""
    s = k.connect()
    s.sendall(raw)
    r = Reader(s)
    return r.response(head_request), r


def get(path, host="x", extra=""):
    return ("GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (path, host, extra)).encode()


def post(path, body, ctype="application/json", extra=""):
    if isinstance(body, str):
        body = body.encode()
    return ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
            % (path, ctype, len(body), extra)).encode() + body


class Suite:
    """A minimal runner: each test_* function gets a name and a pass/fail line."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def run(self, module_globals):
        only = sys.argv[1:]
        for name, fn in sorted(module_globals.items()):
            if not name.startswith("test_") or not callable(fn):
                continue
            if only and name not in only:
                continue
            t0 = time.time()
            try:
                fn()
                self.passed += 1
                print("ok   %s (%.2fs)" % (name, time.time() - t0), flush=True)
            except Exception as e:  # noqa: BLE001 - report every failure kind
                self.failed += 1
                import traceback
                traceback.print_exc()
                print("FAIL %s: %r" % (name, e), flush=True)
        print("%d passed, %d failed" % (self.passed, self.failed))
        sys.exit(1 if self.failed or not self.passed else 0)
