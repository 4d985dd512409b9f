"""test_limits.py - configured size limits (414, 431, 413), max_connections (503), and the
header, body, idle and write timeouts of docs/http.md, with small limits and short timeouts."""
import json
import select
import socket
import threading
import time

from harness import Keel, Reader, Suite, request, get, post

LIMITS = """
limits:
  request_line: 128
  header_bytes: 512
  header_count: 8
  body: 1KiB
"""
TIMEOUT_MS = 400
TIMEOUTS = """
timeouts:
  header: %(t)dms
  body: %(t)dms
  idle: %(t)dms
  write: %(t)dms
""" % {"t": TIMEOUT_MS}
T = TIMEOUT_MS / 1000.0
ECHO_HEAD = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def check_error(r, resp, status, message, offset=True):
    ctx = resp
    assert resp.status == status, ("want %d" % status, ctx)
    assert resp.header("date") and resp.header("content-length") is not None, ctx
    j = json.loads(resp.body)
    assert j.get("error") == message, ("want %r" % message, ctx)
    if offset:
        assert set(j) == {"error", "offset"} and isinstance(j["offset"], int), ctx
    else:
        assert "offset" not in j, ctx
    assert (resp.header("connection") or "").lower() == "close", ctx
    assert r.closed(), ("connection not closed after %d" % status, r.buf[:200])
    return j


def send_expect(k, raw, status, message):
    s = k.connect()
    try:
        s.sendall(raw)
        r = Reader(s)
        return check_error(r, r.response(), status, message)
    finally:
        s.close()


def ok(k, raw, status=200):
    s = k.connect()
    try:
        s.sendall(raw)
        resp = Reader(s).response()
        assert resp.status == status, (raw[:80], resp)
        return resp
    finally:
        s.close()


def wait_eof(sock, timeout):
    """Reads until EOF/reset; returns (bytes read, elapsed) or raises on timeout."""
    t0 = time.time()
    data = b""
    sock.settimeout(timeout)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    except socket.timeout:
        raise AssertionError("connection still open after %.1fs (got %r)" % (timeout, data[:100]))
    return data, time.time() - t0


# --- sizes --------------------------------------------------------------------------------

def test_request_line_too_long_414():
    with Keel(config=LIMITS) as k:
        ok(k, get("/" + "a" * 90), 404)  # a line within the limit
        send_expect(k, get("/" + "a" * 200), 414, "request line too long")
        # an unfinished overlong line is answered at once, without waiting for its end
        send_expect(k, b"GET /" + b"a" * 300, 414, "request line too long")
        # long method or version count too
        send_expect(k, b"G" * 200 + b" / HTTP/1.1\r\nHost: x\r\n\r\n", 414,
                    "request line too long")


def test_head_too_large_431():
    with Keel(config=LIMITS) as k:
        ok(k, get("/", extra="X-A: %s\r\n" % ("b" * 300)))
        send_expect(k, get("/", extra="X-A: %s\r\n" % ("b" * 600)), 431,
                    "request header too large")
        # spread over several fields
        extra = "".join("X-%d: %s\r\n" % (i, "c" * 100) for i in range(6))
        send_expect(k, get("/", extra=extra), 431, "request header too large")
        # unfinished: answered without waiting for the end of the head
        send_expect(k, b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"d" * 700, 431,
                    "request header too large")


def test_too_many_header_fields_431():
    with Keel(config=LIMITS) as k:
        seven = "".join("X-%d: v\r\n" % i for i in range(7))  # + Host = 8 fields
        ok(k, get("/", extra=seven))
        send_expect(k, get("/", extra=seven + "X-7: v\r\n"), 431, "too many header fields")
        send_expect(k, get("/", extra="".join("X: v\r\n" for _ in range(30))), 431,
                    "too many header fields")


def test_content_length_over_limit_413_immediately():
    with Keel(config=LIMITS) as k:
        body = b'"' + b"a" * 1022 + b'"'  # exactly 1 KiB
        resp = ok(k, post("/echo", body))
        assert resp.body == body
        s = k.connect()
        s.sendall(ECHO_HEAD + b"Content-Length: 1025\r\n\r\n")  # no body sent
        r = Reader(s)
        check_error(r, r.response(), 413, "request body too large")
        s.close()
        send_expect(k, ECHO_HEAD + b"Content-Length: 999999999999999999\r\n\r\n", 413,
                    "request body too large")


def test_chunked_body_over_limit_413():
    with Keel(config=LIMITS) as k:
        half = b"a" * 512
        body = b'"' + b"a" * 1022 + b'"'
        raw = (ECHO_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" +
               b"1\r\n\"\r\n200\r\n" + half + b"\r\n1fe\r\n" + half[:510] + b"\r\n1\r\n\"\r\n0\r\n\r\n")
        resp = ok(k, raw)  # exactly 1 KiB after de-chunking
        assert resp.body == body, resp
        s = k.connect()
        s.sendall(ECHO_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(2):
            s.sendall(b"200\r\n" + half + b"\r\n")
            time.sleep(0.02)
        s.sendall(b"1\r\na\r\n")  # byte 1025
        r = Reader(s)
        check_error(r, r.response(), 413, "request body too large")
        s.close()
        # one chunk that is too large on its own: answered before its data arrives
        send_expect(k, ECHO_HEAD + b"Transfer-Encoding: chunked\r\n\r\n401\r\n", 413,
                    "request body too large")


# --- max_connections ----------------------------------------------------------------------

def two_admitted(k):
    a, b = k.connect(), k.connect()
    for s in (a, b):  # both really accepted and served
        s.sendall(get("/"))
        assert Reader(s).response().status == 200
    return a, b


def test_max_connections_503():
    with Keel(config="workers: 1\nmax_connections: 2\n") as k:
        a, b = two_admitted(k)
        c = k.connect()
        data, _ = wait_eof(c, 5)  # answered at once, without a request, then closed
        c.close()
        assert b"\r\n\r\n" in data, data
        head, body = data.split(b"\r\n\r\n", 1)
        rc = Reader(None)
        rc.buf = head + b"\r\n\r\n"
        resp = rc.response(head_request=True)
        assert resp.status == 503, data
        assert resp.header("retry-after") == "1", data
        assert resp.header("content-length") == str(len(body)), (
            "Content-Length %r but the body has %d bytes" % (resp.header("content-length"),
                                                             len(body)), data)
        assert json.loads(body)["error"] == "too many connections", data
        assert resp.header("date"), ("no Date header", data)
        assert (resp.header("connection") or "").lower() == "close", data
        a.close()
        b.close()


def test_max_connections_recovers():
    with Keel(config="workers: 1\nmax_connections: 2\n") as k:
        a, b = two_admitted(k)
        for _ in range(3):
            c = k.connect()
            data, _ = wait_eof(c, 5)
            c.close()
            assert data.startswith(b"HTTP/1.1 503 "), data
        # the two admitted connections are unaffected
        a.sendall(get("/livez"))
        assert Reader(a).response().status == 200
        # after closing one, a new connection is served again (allow the close to be seen)
        b.close()
        deadline = time.time() + 3
        while True:
            d = k.connect()
            d.sendall(get("/", extra="Connection: close\r\n"))
            data, _ = wait_eof(d, 5)
            d.close()
            if data.startswith(b"HTTP/1.1 200 "):
                break
            assert data.startswith(b"HTTP/1.1 503 ") and time.time() < deadline, data
            time.sleep(0.05)
        assert data.endswith(b"\r\n\r\nHello, cloud native!"), data
        # and still only two at a time: hold a second one, then a third is refused
        deadline = time.time() + 3
        while True:
            e = k.connect()
            e.sendall(get("/"))
            try:
                if Reader(e).response().status == 200:
                    break
            except EOFError:  # a 503 (see test_max_connections_503 for its framing)
                pass
            e.close()
            assert time.time() < deadline, "no second connection admitted"
            time.sleep(0.05)
        c = k.connect()
        data, _ = wait_eof(c, 5)
        assert data.startswith(b"HTTP/1.1 503 "), data
        c.close()
        e.close()
        a.close()


# --- timeouts -----------------------------------------------------------------------------

def slowloris(trickle, gap):
    """Sends trickle one byte per gap seconds until the server answers; checks the 408 came at
    timeouts.header after the connect (not extended by the trickle)."""
    with Keel(config=TIMEOUTS) as k:
        s = k.connect()
        t0 = time.time()
        s.send(trickle[:1])
        sent = 1
        while True:
            assert time.time() - t0 < T + 3, "slowloris never cut (sent %d bytes)" % sent
            if select.select([s], [], [], gap)[0]:
                break
            try:
                s.send(trickle[sent:sent + 1])
                sent += 1
            except OSError:
                break
        r = Reader(s)
        resp = r.response()
        elapsed = time.time() - t0
        check_error(r, resp, 408, "timed out reading the request head", offset=False)
        assert T - 0.1 <= elapsed < T + 1.0, "cut after %.2fs, %d bytes (header timeout %.2fs)" % (
            elapsed, sent, T)
        assert sent >= 2, sent
        s.close()


def test_slowloris_cut_at_header_timeout():
    slowloris(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100, 0.1)


def test_slowloris_in_request_line_cut_at_header_timeout():
    slowloris(b"GET /" + b"a" * 100, T / 2)


def test_slowloris_in_headers_cut_at_header_timeout():
    # request line sent at once; the trickle is in the header section only
    with Keel(config=TIMEOUTS) as k:
        s = k.connect()
        t0 = time.time()
        s.sendall(b"GET / HTTP/1.1\r\n")
        sent = 0
        while not select.select([s], [], [], 0.1)[0]:
            assert time.time() - t0 < T + 3, "never cut"
            s.send(b"X-Slow: a\r\n"[sent % 11:sent % 11 + 1])
            sent += 1
        r = Reader(s)
        resp = r.response()
        elapsed = time.time() - t0
        check_error(r, resp, 408, "timed out reading the request head", offset=False)
        assert T - 0.1 <= elapsed < T + 1.0, elapsed
        s.close()


def test_header_timeout_per_request_on_keepalive():
    """On a kept-alive connection the header clock starts at the request's first byte."""
    with Keel(config=TIMEOUTS.replace("idle: %dms" % TIMEOUT_MS, "idle: 5s")) as k:
        s = k.connect()
        r = Reader(s)
        s.sendall(get("/"))
        assert r.response().status == 200
        time.sleep(T * 1.5)  # idle, longer than the header timeout: must not count
        t0 = time.time()
        s.sendall(b"GET / HTTP/1.1\r\n")
        resp = r.response()
        elapsed = time.time() - t0
        check_error(r, resp, 408, "timed out reading the request head", offset=False)
        assert T - 0.1 <= elapsed < T + 1.0, elapsed
        s.close()


def test_silent_connection_closed_at_header_timeout():
    with Keel(config=TIMEOUTS) as k:
        s = k.connect()
        data, elapsed = wait_eof(s, T + 3)
        assert T - 0.1 <= elapsed < T + 1.0, elapsed
        if data:  # a 408 is allowed here; if anything is sent, it must be that
            r = Reader(s)
            r.buf = data
            resp = r.response()
            assert resp.status == 408, resp
            assert resp.json()["error"] == "timed out reading the request head", resp
            assert r.buf == b""
        s.close()
        ok(k, get("/"))


def test_body_stall_408():
    with Keel(config=TIMEOUTS) as k:
        s = k.connect()
        s.sendall(ECHO_HEAD + b"Content-Length: 10\r\n\r\n[1,")
        t0 = time.time()
        r = Reader(s)
        resp = r.response()
        elapsed = time.time() - t0
        check_error(r, resp, 408, "timed out reading the request body", offset=False)
        assert T - 0.1 <= elapsed < T + 1.0, elapsed
        s.close()
        # chunked stall between chunks
        s = k.connect()
        s.sendall(ECHO_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n[1\r\n")
        r = Reader(s)
        check_error(r, r.response(), 408, "timed out reading the request body", offset=False)
        s.close()


def test_slow_body_with_short_pauses_is_fine():
    """timeouts.body bounds each pause, not the whole body."""
    with Keel(config=TIMEOUTS) as k:
        body = b"[1,2,3,4,5]"
        s = k.connect()
        s.sendall(ECHO_HEAD + b"Content-Length: %d\r\n\r\n" % len(body))
        t0 = time.time()
        for i in range(len(body)):
            time.sleep(T / 4)
            s.send(body[i:i + 1])
        assert time.time() - t0 > T * 2  # the whole body took longer than one timeout
        resp = Reader(s).response()
        assert resp.status == 200 and resp.body == body, resp
        s.close()


def test_idle_keepalive_closed_silently():
    with Keel(config=TIMEOUTS) as k:
        s = k.connect()
        r = Reader(s)
        s.sendall(get("/"))
        assert r.response().status == 200
        t0 = time.time()
        data, _ = wait_eof(s, T + 3)
        elapsed = time.time() - t0
        assert data == b"" and r.buf == b"", data
        assert T - 0.1 <= elapsed < T + 1.0, elapsed
        s.close()


def test_write_timeout_non_reading_client():
    cfg = "workers: 1\ntimeouts:\n  write: 500ms\n"
    n, size = 16, 500_000
    body = b'"' + b"w" * (size - 2) + b'"'
    req = post("/echo", body)
    with Keel(config=cfg) as k:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(5)
        s.connect(("127.0.0.1", k.port))
        send_err = []

        def sender():
            try:
                s.sendall(req * n)
            except OSError as e:
                send_err.append(e)

        th = threading.Thread(target=sender, daemon=True)
        th.start()
        time.sleep(0.7)
        # meanwhile the (single) worker serves others
        resp, r2 = request(k, get("/"))
        assert resp.status == 200, resp
        r2.sock.close()
        time.sleep(1.5)
        # now read: the server must have given up on this client
        total = 0
        eof = False
        s.settimeout(5)
        t0 = time.time()
        try:
            while time.time() - t0 < 10:
                chunk = s.recv(1 << 20)
                if not chunk:
                    eof = True
                    break
                total += len(chunk)
        except ConnectionResetError:
            eof = True
        except socket.timeout:
            pass
        full = n * (len(body) + 100)
        assert eof, "connection not closed (read %d bytes)" % total
        assert total < n * len(body), "all %d responses arrived (%d bytes of ~%d)" % (
            n, total, full)
        th.join(5)
        s.close()
        # and other clients are still served
        resp, r3 = request(k, get("/"))
        assert resp.status == 200 and resp.body == b"Hello, cloud native!", resp
        r3.sock.close()


if __name__ == "__main__":
    Suite().run(globals())
