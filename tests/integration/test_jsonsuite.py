"""test_jsonsuite.py - JSONTestSuite (github.com/nst/JSONTestSuite, test_parsing/) through the real
server: every file POSTed to /echo on reused keep-alive connections. y_ accepted and echoed
compactly, n_ rejected with {"error","offset"}, i_ either way but never a 5xx, hang or crash."""
import decimal
import json
import os

from harness import ROOT, Keel, Suite, get, post
from strict_http import Closed, read_one

SUITE_DIR = os.path.normpath(os.path.join(ROOT, "..", "shared", "testdata", "JSONTestSuite",
                                          "test_parsing"))


def compact(src):
    """`src` with JSON's insignificant whitespace removed (strings kept byte for byte)."""
    out = bytearray()
    in_str = esc = False
    for b in src:
        if in_str:
            out.append(b)
            if esc:
                esc = False
            elif b == 0x5C:
                esc = True
            elif b == 0x22:
                in_str = False
        elif b in b" \t\r\n":
            continue
        else:
            out.append(b)
            in_str = b == 0x22
    return bytes(out)


class NoValue(Exception):
    pass


def pyload(data):
    """Python's reading of `data` as strict UTF-8 JSON (exact numbers), or NoValue."""
    def bad_constant(name):
        raise ValueError("constant %s" % name)
    try:
        return json.loads(data.decode("utf-8"), parse_float=decimal.Decimal,
                          parse_constant=bad_constant)
    except (UnicodeDecodeError, ValueError, RecursionError, ArithmeticError):
        raise NoValue() from None


class Client:
    """Keep-alive client that reconnects only when the server says Connection: close."""

    def __init__(self, k):
        self.k, self.sock, self.reconnects = k, None, 0

    def post(self, body):
        raw = post("/echo", body)
        for attempt in (1, 2):
            fresh = self.sock is None
            if fresh:
                self.sock = self.k.connect(timeout=10)
                self.reconnects += 1
            try:
                self.sock.sendall(raw)
                r = read_one(self.sock)
            except Closed as e:
                self.close()
                if fresh or e.got or attempt == 2:
                    raise
                continue  # a reused keep-alive connection closed under us: retry once
            if (r.header("connection") or "").lower() == "close":
                self.close()
            return r

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def check_error_body(r, size):
    e = json.loads(r.body)
    assert isinstance(e.get("error"), str) and e["error"], e
    off = e.get("offset")
    assert isinstance(off, int) and not isinstance(off, bool), "offset %r" % (off,)
    assert 0 <= off <= size, "offset %d outside the %d-byte body" % (off, size)


def test_json_test_suite():
    assert os.path.isdir(SUITE_DIR), "JSONTestSuite not found at %s" % SUITE_DIR
    names = sorted(n for n in os.listdir(SUITE_DIR) if n.endswith(".json"))
    kinds = {p: [n for n in names if n.startswith(p + "_")] for p in "yni"}
    assert len(kinds["y"]) >= 90 and len(kinds["n"]) >= 180 and len(kinds["i"]) >= 30, \
        "JSONTestSuite looks incomplete: %r" % {p: len(v) for p, v in kinds.items()}

    failures = []
    y_ok = n_ok = i_acc = i_rej = compared = 0
    with Keel() as k:
        c = Client(k)
        for name in names:
            with open(os.path.join(SUITE_DIR, name), "rb") as f:
                data = f.read()
            try:
                r = c.post(data)
            except Exception as e:  # noqa: BLE001 - timeouts, resets: all failures
                failures.append("%s: no response: %r" % (name, e))
                c.close()
                if k.proc.poll() is not None:
                    failures.append("keel died (exit %r) on %s" % (k.proc.returncode, name))
                    break
                continue
            try:
                if r.status >= 500:
                    raise AssertionError("status %d %r" % (r.status, r.body[:200]))
                if r.status == 200:
                    assert r.header("content-type") == "application/json", r
                    assert r.body == compact(data), "echo %r, want %r" % (r.body[:200],
                                                                         compact(data)[:200])
                    try:
                        want = pyload(data)
                        got = pyload(r.body)
                    except NoValue:
                        pass  # Python cannot read it either (e.g. lone surrogates): bytes checked
                    else:
                        assert got == want, "parsed echo differs: %r vs %r" % (got, want)
                        compared += 1
                elif r.status == 400:
                    check_error_body(r, len(data))
                else:
                    raise AssertionError("status %d %r" % (r.status, r.body[:200]))
                if name.startswith("y_"):
                    assert r.status == 200, "valid JSON rejected: %d %r" % (r.status, r.body)
                    y_ok += 1
                elif name.startswith("n_"):
                    assert r.status == 400, "invalid JSON accepted: %r" % r.body[:200]
                    n_ok += 1
                elif r.status == 200:
                    i_acc += 1
                else:
                    i_rej += 1
            except Exception as e:  # noqa: BLE001
                failures.append("%s: %s" % (name, e))

        print("  JSONTestSuite via /echo: y %d/%d accepted, n %d/%d rejected, i %d (%d accepted, "
              "%d rejected); %d compared with Python's parser; %d connections"
              % (y_ok, len(kinds["y"]), n_ok, len(kinds["n"]), len(kinds["i"]), i_acc, i_rej,
                 compared, c.reconnects))
        c.close()
        assert k.proc.poll() is None, "keel exited with %r" % k.proc.returncode
        s = k.connect()
        s.sendall(get("/"))
        r = read_one(s)
        s.close()
        assert r.status == 200 and r.body == b"Hello, cloud native!", r
    assert not failures, "%d failures:\n  %s" % (len(failures), "\n  ".join(failures[:40]))
    assert i_acc + i_rej == len(kinds["i"])
    assert compared >= len(kinds["y"]) - 5, "only %d documents compared" % compared


if __name__ == "__main__":
    Suite().run(globals())
