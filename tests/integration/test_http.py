"""test_http.py - HTTP/1.1 protocol behaviour of the real binary (docs/http.md): keep-alive,
pipelining, chunked bodies split everywhere, 100-continue, HEAD, HTTP/1.0, Date/Content-Length,
404/405/415/400 bodies, absolute-form targets, query strings, large bodies, leading CRLF."""
import calendar
import json
import re
import socket
import time

from harness import Keel, Reader, Suite, request, get, post

DATE_RE = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} "
                     r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
                     r"\d{2}:\d{2}:\d{2} GMT$")
HELLO = b"Hello, cloud native!"
CHUNKED_HEAD = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")


def check_common(r):
    """Every response: a current IMF-fixdate Date, and a Content-Length matching the body."""
    d = r.header("date")
    assert d and DATE_RE.match(d), "bad Date %r in %r" % (d, r)
    t = calendar.timegm(time.strptime(d, "%a, %d %b %Y %H:%M:%S GMT"))
    assert abs(t - time.time()) < 5, "Date %r is not now" % d
    if r.status != 204:
        cl = r.header("content-length")
        assert cl is not None, "no Content-Length in %r" % r
        assert [k.lower() for k, _ in r.headers].count("content-length") == 1, r
    return r


def check_hello(r):
    check_common(r)
    assert r.status == 200 and r.body == HELLO, r
    assert r.header("content-length") == "20", r
    assert r.header("content-type").startswith("text/plain"), r


def check_echo(r, body):
    check_common(r)
    assert r.status == 200, r
    assert r.body == (body.encode() if isinstance(body, str) else body), (r, body)
    assert r.header("content-type") == "application/json", r


def chunked(*parts, ext=b"", trailers=b""):
    out = b""
    for p in parts:
        out += b"%x%s\r\n%s\r\n" % (len(p), ext, p)
    return out + b"0\r\n" + trailers + b"\r\n"


def recv_some(sock, timeout=0.3):
    """Whatever arrives within timeout (b"" if nothing, or EOF)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536)
    except socket.timeout:
        return b""
    finally:
        sock.settimeout(5)


# --- keep-alive and pipelining ------------------------------------------------------------

def test_keepalive_several_requests():
    with Keel() as k:
        s = k.connect()
        r = Reader(s)
        for i in range(6):
            if i % 2:
                body = '{"n":%d}' % i
                s.sendall(post("/echo", body))
                resp = r.response()
                check_echo(resp, body)
            else:
                s.sendall(get("/"))
                resp = r.response()
                check_hello(resp)
            assert (resp.header("connection") or "").lower() != "close", resp
        # still open: one more request works, and nothing unsolicited arrived
        assert r.buf == b""
        s.sendall(get("/livez"))
        resp = check_common(r.response())
        assert resp.status == 200 and resp.json() == {"status": "ok"}, resp


def test_pipelining_100_in_order():
    with Keel() as k:
        s = k.connect()
        raw = b""
        expect = []
        for i in range(100):
            if i % 3 == 0:
                raw += get("/")
                expect.append(None)
            else:
                body = '{"i":%d,"s":"%s"}' % (i, "x" * (i % 17))
                raw += post("/echo", body)
                expect.append(body)
        s.sendall(raw)
        r = Reader(s)
        for i, body in enumerate(expect):
            resp = r.response()
            if body is None:
                check_hello(resp)
            else:
                check_echo(resp, body)
        assert r.buf == b"", r.buf[:100]
        assert recv_some(s) == b""


# --- chunked request bodies ---------------------------------------------------------------

def test_chunked_one_byte_per_send():
    body = b'{"chunked":[1,2,3],"s":"abc"}'
    req = CHUNKED_HEAD + chunked(body[:7], body[7:8], body[8:])
    with Keel() as k:
        s = k.connect()
        for i in range(len(req)):
            s.send(req[i:i + 1])
            time.sleep(0.001)
        r = Reader(s)
        check_echo(r.response(), body)
        # the connection is still usable afterwards
        s.sendall(get("/"))
        check_hello(r.response())


def test_chunked_every_two_part_split():
    body = b'{"k":"v","n":[10,20]}'
    req = CHUNKED_HEAD + chunked(body[:5], body[5:], ext=b";a=b", trailers=b"X-T: 1\r\n")
    with Keel() as k:
        s = k.connect()
        r = Reader(s)
        for cut in range(1, len(req)):
            s.sendall(req[:cut])
            time.sleep(0.002)
            s.sendall(req[cut:])
            resp = r.response()
            try:
                check_echo(resp, body)
            except AssertionError:
                raise AssertionError("split at %d (%r | %r): %r" % (cut, req[:cut][-10:],
                                                                    req[cut:][:10], resp))
        assert r.buf == b""


def test_chunked_every_two_part_split_fresh_connection():
    body = b'[true,false,null]'
    req = CHUNKED_HEAD + chunked(body[:3], body[3:])
    with Keel() as k:
        for cut in range(len(CHUNKED_HEAD) - 4, len(req)):
            s = k.connect()
            s.sendall(req[:cut])
            time.sleep(0.002)
            s.sendall(req[cut:])
            check_echo(Reader(s).response(), body)
            s.close()


def test_chunk_extensions_and_trailers():
    body = b'{"a":"hello world"}'
    with Keel() as k:
        cases = [
            chunked(body, ext=b";name"),
            chunked(body, ext=b";name=value"),
            chunked(body, ext=b';name="quoted value; with \\" stuff"'),
            chunked(body[:4], body[4:], ext=b";a=1;b=2"),
            chunked(body, trailers=b"X-Trailer: yes\r\n"),
            chunked(body, trailers=b"X-One: 1\r\nX-Two: 2\r\n"),
            chunked(body, ext=b";e=1", trailers=b"X-Checksum: abc\r\n"),
            b"%X\r\n%s\r\n0\r\n\r\n" % (len(body), body),  # upper-case hex
            b"00%x\r\n%s\r\n000\r\n\r\n" % (len(body), body),  # leading zeros
        ]
        s = k.connect()
        r = Reader(s)
        for c in cases:
            s.sendall(CHUNKED_HEAD + c)
            resp = r.response()
            assert resp.status == 200 and resp.body == body, (c, resp)
        # trailers did not leak into the next request: it still parses
        s.sendall(get("/"))
        check_hello(r.response())


def test_chunked_empty_body_is_invalid_json():
    with Keel() as k:
        resp, _ = request(k, CHUNKED_HEAD + b"0\r\n\r\n")
        check_common(resp)
        assert resp.status == 400, resp
        j = resp.json()
        assert j["offset"] == 0 and isinstance(j["error"], str), j


# --- Expect: 100-continue -----------------------------------------------------------------

def test_expect_100_continue():
    body = b'{"expect":"continue"}'
    head = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(body))
    with Keel() as k:
        s = k.connect()
        s.sendall(head)
        r = Reader(s)
        interim = r.response()
        assert interim.status == 100, interim
        assert interim.version == "HTTP/1.1" and interim.reason == "Continue", interim
        assert r.buf == b"", r.buf
        s.sendall(body)
        check_echo(r.response(), body)
        # chunked with Expect too, on the same connection
        s.sendall(CHUNKED_HEAD[:-2] + b"Expect: 100-continue\r\n\r\n")
        assert r.response().status == 100
        s.sendall(chunked(body))
        check_echo(r.response(), body)


def test_expect_100_not_sent_when_body_already_there():
    body = b'{"a":1}'
    with Keel() as k:
        resp, r = request(k, post("/echo", body, extra="Expect: 100-continue\r\n"))
        # the 100 is optional only in that case per RFC; docs/http.md says keel does not send it
        assert resp.status == 200 and resp.body == body, resp
        check_common(resp)


def test_expect_100_over_limit_is_413_without_100():
    with Keel(config="limits:\n  body: 1KiB\n") as k:
        s = k.connect()
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
        r = Reader(s)
        resp = r.response()
        check_common(resp)
        assert resp.status == 413, resp
        assert resp.json()["error"] == "request body too large", resp
        assert (resp.header("connection") or "").lower() == "close", resp
        assert r.closed()
        r.sock.close()


def test_expect_other_is_417():
    with Keel() as k:
        resp, r = request(k, post("/echo", "{}", extra="Expect: something-else\r\n"))
        check_common(resp)
        assert resp.status == 417, resp
        r.sock.close()


# --- HEAD ---------------------------------------------------------------------------------

def test_head_same_headers_no_body_then_pipelined():
    with Keel() as k:
        g, _ = request(k, get("/"))
        s = k.connect()
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n" + get("/") +
                  b"HEAD /livez HTTP/1.1\r\nHost: x\r\n\r\n" + get("/livez"))
        r = Reader(s)
        h = r.response(head_request=True)
        assert h.status == 200 and h.body == b"", h
        check_common(h)
        assert h.header("content-length") == "20", h
        names = lambda resp: sorted(k2.lower() for k2, _ in resp.headers)  # noqa: E731
        assert names(h) == names(g), (h.headers, g.headers)
        for name in ("content-type", "content-length"):
            assert h.header(name) == g.header(name), name
        # the HEAD response had no body: the next one starts right after its head
        assert r.buf.startswith(b"HTTP/1.1 200") or r.buf == b"", r.buf[:40]
        check_hello(r.response())
        h2 = r.response(head_request=True)
        assert h2.status == 200 and h2.header("content-length") == str(len(b'{"status":"ok"}'))
        g2 = r.response()
        assert g2.body == b'{"status":"ok"}', g2
        assert r.buf == b""


def test_head_on_post_only_route_is_405():
    with Keel() as k:
        resp, _ = request(k, b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n", head_request=True)
        assert resp.status == 405, resp
        assert "POST" in resp.header("allow"), resp


# --- HTTP/1.0 and Connection --------------------------------------------------------------

def test_http10_closes_by_default():
    with Keel() as k:
        resp, r = request(k, b"GET / HTTP/1.0\r\n\r\n")
        assert resp.status == 200 and resp.body == HELLO, resp
        check_common(resp)
        assert (resp.header("connection") or "close").lower() == "close", resp
        assert r.closed()
        r.sock.close()


def test_http10_keepalive():
    with Keel() as k:
        s = k.connect()
        r = Reader(s)
        for _ in range(3):
            s.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            resp = r.response()
            check_hello(resp)
            assert (resp.header("connection") or "").lower() == "keep-alive", resp
        # without the header on the same connection: answered, then closed
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        check_hello(r.response())
        assert r.closed()
        r.sock.close()


def test_http10_post_keepalive():
    body = b'{"v":"1.0"}'
    with Keel() as k:
        s = k.connect()
        s.sendall(b"POST /echo HTTP/1.0\r\nConnection: Keep-Alive\r\nContent-Type: "
                  b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        r = Reader(s)
        check_echo(r.response(), body)
        s.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        check_hello(r.response())


def test_connection_close_from_client():
    with Keel() as k:
        s = k.connect()
        s.sendall(get("/", extra="Connection: close\r\n"))
        r = Reader(s)
        resp = r.response()
        check_hello(resp)
        assert resp.header("connection").lower() == "close", resp
        assert r.closed()
        r.sock.close()


def test_connection_close_stops_pipeline():
    with Keel() as k:
        s = k.connect()
        s.sendall(get("/") + get("/", extra="Connection: close\r\n") + get("/nope"))
        r = Reader(s)
        check_hello(r.response())
        last = r.response()
        check_hello(last)
        assert last.header("connection").lower() == "close", last
        assert r.closed(), r.buf[:100]  # the third request is not answered
        r.sock.close()


def test_connection_token_list():
    with Keel() as k:
        s = k.connect()
        s.sendall(get("/", extra="Connection: foo, close\r\n"))
        r = Reader(s)
        check_hello(r.response())
        assert r.closed()
        r.sock.close()


# --- status bodies ------------------------------------------------------------------------

def test_404_json():
    with Keel() as k:
        for path in ("/nope", "/echo/x", "/a/b/c", "/ECHO"):
            resp, _ = request(k, get(path))
            check_common(resp)
            assert resp.status == 404, resp
            assert resp.header("content-type").startswith("application/json"), resp
            assert resp.json() == {"error": "not found", "path": path}, resp


def test_405_json_and_allow():
    with Keel() as k:
        for raw in (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                    b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"PUT /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                    b"get / HTTP/1.1\r\nHost: x\r\n\r\n"):  # methods are case-sensitive
            resp, _ = request(k, raw)
            check_common(resp)
            assert resp.status == 405, (raw, resp)
            assert resp.json() == {"error": "method not allowed", "allow": "GET, HEAD"}, resp
            assert resp.header("allow") == "GET, HEAD", resp
        resp, _ = request(k, get("/echo"))
        check_common(resp)
        assert resp.status == 405, resp
        j = resp.json()
        assert j["error"] == "method not allowed" and j["allow"] == resp.header("allow"), resp
        assert "POST" in j["allow"] and "GET" not in j["allow"], j


def test_405_keeps_connection():
    with Keel() as k:
        s = k.connect()
        s.sendall(b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n" + get("/"))
        r = Reader(s)
        assert r.response().status == 405
        check_hello(r.response())


def test_415_content_type():
    with Keel() as k:
        for ctype in ("text/plain", "application/jsonx", "application/x-json",
                      "application/json-patch+json", "multipart/form-data"):
            resp, _ = request(k, post("/echo", "{}", ctype=ctype))
            check_common(resp)
            assert resp.status == 415, (ctype, resp)
            assert "error" in resp.json(), resp
        raw = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        resp, _ = request(k, raw)
        check_common(resp)
        assert resp.status == 415, resp
        # parameters and case are allowed
        for ctype in ("application/json; charset=utf-8", "application/json;charset=UTF-8",
                      "Application/JSON"):
            resp, _ = request(k, post("/echo", "[1]", ctype=ctype))
            assert resp.status == 200 and resp.body == b"[1]", (ctype, resp)


def test_invalid_json_offsets():
    cases = [
        ('{"a":}', 5),
        ("[1,2,]", 5),
        ('{"a":1}x', 7),
        ("[1 2]", 3),
        ('{"a" 1}', 5),
        ("{,}", 1),
        ('  @', 2),
    ]
    with Keel() as k:
        s = k.connect()
        r = Reader(s)
        for body, off in cases:
            s.sendall(post("/echo", body))
            resp = r.response()
            check_common(resp)
            assert resp.status == 400, (body, resp)
            j = resp.json()
            assert set(j) == {"error", "offset"} and isinstance(j["error"], str), (body, j)
            assert j["offset"] == off, (body, j, off)
        # a JSON error is not a protocol error: the connection stays usable
        s.sendall(get("/"))
        check_hello(r.response())


def test_echo_deep_nesting_400():
    with Keel() as k:
        ok = "[" * 128 + "]" * 128
        resp, _ = request(k, post("/echo", ok))
        assert resp.status == 200 and resp.body == ok.encode(), resp
        resp, _ = request(k, post("/echo", "[" * 129 + "]" * 129))
        check_common(resp)
        assert resp.status == 400, resp


def test_echo_compacts_and_preserves():
    with Keel() as k:
        body = ' { "a" : [ 1 , 2.50 , -0.0e+10 , "x\\u00e9\\n" ] ,\n "b" : { } } '
        resp, _ = request(k, post("/echo", body))
        check_echo(resp, '{"a":[1,2.50,-0.0e+10,"x\\u00e9\\n"],"b":{}}')


# --- targets ------------------------------------------------------------------------------

def test_absolute_form_target():
    with Keel() as k:
        resp, _ = request(k, b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n")
        check_hello(resp)
        resp, _ = request(k, b"GET https://example.com:8080/livez HTTP/1.1\r\nHost: x\r\n\r\n")
        assert resp.status == 200 and resp.json() == {"status": "ok"}, resp
        body = b'{"abs":true}'
        resp, _ = request(k, b"POST http://x/echo HTTP/1.1\r\nHost: x\r\nContent-Type: "
                          b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        check_echo(resp, body)


def test_query_string_ignored_for_routing():
    with Keel() as k:
        resp, _ = request(k, get("/?a=b&c=d"))
        check_hello(resp)
        resp, _ = request(k, get("/livez?x"))
        assert resp.status == 200 and resp.json() == {"status": "ok"}, resp
        resp, _ = request(k, post("/echo?pretty=1", '{"q":1}'))
        check_echo(resp, '{"q":1}')
        resp, _ = request(k, get("/nope?x=1"))
        assert resp.status == 404, resp
        resp, _ = request(k, get("/?"))
        check_hello(resp)


def test_large_echo_body():
    items = ['"%06d%s"' % (i, "abcdefghij" * 9) for i in range(9000)]
    body = ("[" + ",".join(items) + "]").encode()
    assert 850_000 < len(body) < 1_000_000, len(body)
    with Keel() as k:
        s = k.connect(timeout=10)
        s.sendall(post("/echo", body) + get("/"))
        r = Reader(s)
        resp = r.response()
        check_echo(resp, body)
        assert resp.header("content-length") == str(len(body))
        check_hello(r.response())


def test_leading_crlf_ignored():
    with Keel() as k:
        resp, _ = request(k, b"\r\n" + get("/"))
        check_hello(resp)
        resp, _ = request(k, b"\r\n\r\n\r\n" + get("/"))
        check_hello(resp)
        s = k.connect()
        r = Reader(s)
        s.sendall(get("/"))
        check_hello(r.response())
        s.sendall(b"\r\n")
        time.sleep(0.05)
        s.sendall(b"\r\n" + get("/"))
        check_hello(r.response())


def test_response_headers_sane():
    with Keel() as k:
        s = k.connect()
        s.sendall(get("/") + post("/echo", "[]") + get("/nope") + get("/readyz") +
                  b"PATCH / HTTP/1.1\r\nHost: x\r\n\r\n")
        r = Reader(s)
        for want in (200, 200, 404, 200, 405):
            resp = r.response()
            check_common(resp)
            assert resp.status == want, resp
            assert resp.version == "HTTP/1.1", resp
            assert int(resp.header("content-length")) == len(resp.body), resp
            if resp.status != 200 or resp.header("content-type").startswith("application/json"):
                json.loads(resp.body)


if __name__ == "__main__":
    Suite().run(globals())
