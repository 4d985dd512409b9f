"""test_strict.py - every malformed or request-smuggling case of docs/http.md's error table:
the exact status, the exact JSON error message, Connection: close, and the connection closed
afterwards without answering anything smuggled behind the bad request."""
import json

from harness import Keel, Reader, Suite, request, get

H = b"Host: x\r\n"
CT = b"Content-Type: application/json\r\n"
ECHO = b"POST /echo HTTP/1.1\r\n" + H + CT
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


def expect_error(k, raw, status, message, smuggle=True):
    """Sends raw (plus, by default, a valid request behind it) and checks the error answer,
    that it says Connection: close, and that the connection then closes with nothing more."""
    s = k.connect()
    try:
        s.sendall(raw + (SMUGGLED if smuggle else b""))
        r = Reader(s)
        try:
            resp = r.response()
        except Exception as e:  # noqa: BLE001
            raise AssertionError("no answer to %r: %r" % (raw, e))
        ctx = (raw, resp)
        assert resp.status == status, ("want %d" % status,) + ctx
        assert resp.header("date") and resp.header("content-length") is not None, ctx
        assert resp.header("content-type").startswith("application/json"), ctx
        try:
            j = json.loads(resp.body)
        except ValueError:
            raise AssertionError(("body is not JSON",) + ctx)
        assert j.get("error") == message, ("want %r" % message,) + ctx
        assert set(j) == {"error", "offset"}, ctx
        assert isinstance(j["offset"], int) and 0 <= j["offset"] <= len(raw), ctx
        assert (resp.header("connection") or "").lower() == "close", ctx
        assert r.closed(), ("not closed / answered more", raw, r.buf[:200])
        return j
    finally:
        s.close()


def run_cases(cases, config=None):
    """cases: (raw, status, message). Runs them all on one server; reports every failure."""
    failures = []
    with Keel(config=config) as k:
        for raw, status, message in cases:
            try:
                expect_error(k, raw, status, message)
            except AssertionError as e:
                failures.append(str(e)[:400])
        # the server survived all of it
        resp, _ = request(k, get("/"))
        assert resp.status == 200, resp
    assert not failures, "%d of %d cases failed:\n  " % (len(failures), len(cases)) + \
        "\n  ".join(failures)


def ok_cases(cases, config=None):
    """Requests that must NOT be rejected: (raw, status)."""
    with Keel(config=config) as k:
        bad = []
        for raw, status in cases:
            s = k.connect()
            s.sendall(raw)
            try:
                resp = Reader(s).response()
                if resp.status != status:
                    bad.append((raw, resp))
            except Exception as e:  # noqa: BLE001
                bad.append((raw, repr(e)))
            s.close()
        assert not bad, bad


def cl(v):
    return ECHO + b"Content-Length: " + v + b"\r\n\r\n{}"


def te(v, version=b"1.1"):
    return (b"POST /echo HTTP/" + version + b"\r\n" + H + CT + b"Transfer-Encoding: " + v +
            b"\r\n\r\n2\r\n{}\r\n0\r\n\r\n")


def chunk_body(body):
    return ECHO + b"Transfer-Encoding: chunked\r\n\r\n" + body


# --- Content-Length / Transfer-Encoding ---------------------------------------------------

def test_content_length_and_transfer_encoding():
    m = "both Content-Length and Transfer-Encoding"
    run_cases([
        (ECHO + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, m),
        (ECHO + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400, m),
        (ECHO + b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, m),
        (ECHO + b"content-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", 400, m),
    ])


def test_duplicate_content_length():
    m = "duplicate Content-Length"
    run_cases([
        (ECHO + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}", 400, m),
        (ECHO + b"Content-Length: 2\r\nContent-Length: 7\r\n\r\n{}", 400, m),
        (ECHO + b"Content-Length: 7\r\nContent-Length: 2\r\n\r\n{}", 400, m),
        (ECHO + b"Content-Length: 2\r\ncontent-LENGTH: 2\r\n\r\n{}", 400, m),
        (ECHO + b"Content-Length: 2\r\nX-A: b\r\nContent-Length: 0\r\n\r\n{}", 400, m),
    ])


def test_invalid_content_length():
    m = "invalid Content-Length"
    run_cases([(cl(v), 400, m) for v in (
        b"+2", b"-2", b"2 2", b"2,2", b"2, 2", b"0x2", b"0X2", b"", b"  ", b"2a", b"a",
        b"1" * 19, b"9" * 19, b"0" * 19, b"1" * 40, b"2.0", b"1e1", b"\"2\"",
        b"\xd9\xa2",  # ARABIC-INDIC DIGIT TWO
    )])


def test_valid_content_length_forms():
    ok_cases([
        (cl(b"2"), 200),
        (cl(b"0002"), 200),  # 1*DIGIT: leading zeros are digits
        (cl(b"000000000000000002"), 200),  # 18 digits
        (ECHO + b"Content-Length:2\r\n\r\n{}", 200),
        (ECHO + b"Content-Length: \t2 \t\r\n\r\n{}", 200),  # OWS around the value
        (cl(b"999999999999999999"), 413),  # 18 digits, valid but too large
    ])


def test_transfer_encoding_codings():
    run_cases([
        (te(b"gzip"), 400, "chunked is not the final transfer coding"),
        (te(b"identity"), 400, "chunked is not the final transfer coding"),
        (te(b"chunked, gzip"), 400, "chunked is not the final transfer coding"),
        (te(b"xchunked"), 400, "chunked is not the final transfer coding"),
        (te(b"chunkedx"), 400, "chunked is not the final transfer coding"),
        (te(b"chunked\r\nTransfer-Encoding: gzip"), 400,
         "chunked is not the final transfer coding"),
        (te(b"gzip, chunked"), 501, "unsupported transfer coding"),
        (te(b"deflate,chunked"), 501, "unsupported transfer coding"),
        (te(b"gzip\r\nTransfer-Encoding: chunked"), 501, "unsupported transfer coding"),
        (te(b"chunked, chunked"), 400, "chunked applied more than once"),
        (te(b"chunked\r\nTransfer-Encoding: chunked"), 400, "chunked applied more than once"),
        (te(b"chunked", version=b"1.0"), 400, "Transfer-Encoding in an HTTP/1.0 request"),
    ])


def test_transfer_encoding_valid_forms():
    ok_cases([
        (te(b"chunked"), 200),
        (te(b"Chunked"), 200),  # coding names are case-insensitive
        (te(b"CHUNKED"), 200),
        (te(b"\tchunked\t"), 200),
        (te(b"chunked "), 200),
    ])


# --- line endings, header syntax ----------------------------------------------------------

def test_bare_lf():
    m = "line not terminated by CRLF"
    run_cases([
        (b"GET / HTTP/1.1\nHost: x\r\n\r\n", 400, m),
        (b"GET / HTTP/1.1\r\nHost: x\n\r\n", 400, m),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\n", 400, m),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\nX-C: d\r\n\r\n", 400, m),
        (b"GET / HTTP/1.1\nHost: x\n\n", 400, m),
        (b"\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 400, m),
        (chunk_body(b"2\r\n{}\r\n0\r\nX-T: 1\n\r\n"), 400, m),
        (chunk_body(b"2\r\n{}\r\n0\r\n\n"), 400, m),
    ])


def test_bare_cr_in_header_value():
    m = "bare CR in header value"
    run_cases([
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400, m),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\r\n\r\n", 400, m),
        (b"GET / HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n", 400, m),
    ])


def test_obs_fold():
    m = "obsolete line folding is not allowed"
    run_cases([
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400, m),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n", 400, m),
        (b"GET / HTTP/1.1\r\n Host: x\r\n\r\n", 400, m),
        (ECHO + b"Transfer-Encoding: gzip\r\n ,chunked\r\n\r\n0\r\n\r\n", 400, m),
        (ECHO + b"Content-Length: 2\r\n 0\r\n\r\n{}", 400, m),
    ])


def test_whitespace_before_colon():
    m = "whitespace before colon in header"
    run_cases([
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400, m),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A\t: b\r\n\r\n", 400, m),
        (ECHO + b"Transfer-Encoding : chunked\r\nContent-Length: 2\r\n\r\n{}", 400, m),
        (ECHO + b"Content-Length : 2\r\n\r\n{}", 400, m),
    ])


def test_invalid_header_name():
    m = "invalid character in header name"
    run_cases([
        (b"GET / HTTP/1.1\r\nHost: x\r\nX(A: b\r\n\r\n", 400, m),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX\"A: b\r\n\r\n", 400, m),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX@A: b\r\n\r\n", 400, m),
        (b"GET / HTTP/1.1\r\nHost: x\r\n: b\r\n\r\n", 400, m),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX\x00A: b\r\n\r\n", 400, m),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX\xc3\xa9: b\r\n\r\n", 400, m),
        (b"GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", 400, m),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX/A: b\r\n\r\n", 400, m),
    ])


def test_control_chars_in_value():
    m = "invalid character in header value"
    cases = [(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a" + bytes([c]) + b"b\r\n\r\n", 400, m)
             for c in list(range(0, 9)) + list(range(11, 13)) + list(range(14, 32)) + [127]]
    cases.append((b"GET / HTTP/1.1\r\nHost: x\x00\r\n\r\n", 400, m))
    cases.append((ECHO + b"Content-Length: 2\x00\r\n\r\n{}", 400, m))
    run_cases(cases)


def test_valid_header_values():
    ok_cases([
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\tb\r\n\r\n", 200),  # HTAB is allowed
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: caf\xc3\xa9 \x80\xff\r\n\r\n", 200),  # obs-text
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A:\r\n\r\n", 200),  # empty value
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A:   \r\n\r\n", 200),
        (b"GET / HTTP/1.1\r\nHost: x\r\n!#$%&'*+-.^_`|~09azAZ: v\r\n\r\n", 200),  # tchars
        (b"GET / HTTP/1.1\r\nhOsT: x\r\n\r\n", 200),
    ])


# --- request line -------------------------------------------------------------------------

def test_invalid_method():
    m = "invalid character in method"
    run_cases([(meth + b" / HTTP/1.1\r\nHost: x\r\n\r\n", 400, m) for meth in (
        b"GE(T", b"GE\"T", b"G,ET", b"GET:", b"GE\x00T", b"GE\x7fT", b"G\xc3\x89T",
        b"GE@T", b"GE[T", b"GE{T", b"GE\tT",
    )])


def test_invalid_target_chars():
    m = "invalid character in request target"
    run_cases([(b"GET " + t + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400, m) for t in (
        b"/a b", b"/a\x01b", b"/\x00", b"/a\x7f", b"/caf\x80", b"/caf\xc3\xa9", b"/a\tb",
        b"/\x1b[0m", b"/?q=\xff",
    )])


def test_invalid_target_form():
    m = "invalid request target"
    run_cases([(b"GET " + t + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400, m) for t in (
        b"a", b"*", b"echo", b"ftp://x/", b"x:80", b"?a=b",
    )])


def test_invalid_version():
    m = "invalid HTTP version"
    run_cases([(b"GET / " + v + b"\r\nHost: x\r\n\r\n", 400, m) for v in (
        b"HTTP/1.1x", b"HTTP/11", b"http/1.1", b"HTTP/1.", b"HTTP/1", b"HTTP/.1",
        b"HTTP/1.10", b"HTTP/a.b", b"HTTP1.1", b"HTTPS/1.1", b"HTTP/\xd9\xa1.1",
    )])


def test_version_not_supported():
    m = "HTTP version not supported"
    run_cases([(b"GET / " + v + b"\r\nHost: x\r\n\r\n", 505, m) for v in (
        b"HTTP/2.0", b"HTTP/3.0", b"HTTP/0.9", b"HTTP/9.9", b"HTTP/2.1",
    )])


def test_http_1x_minor_accepted():
    # HTTP/1.x with an unknown minor is handled as the highest 1.x keel speaks (RFC 9110 2.5)
    ok_cases([(b"GET / HTTP/1.9\r\nHost: x\r\n\r\n", 200)])


# --- Host ---------------------------------------------------------------------------------

def test_host():
    run_cases([
        (b"GET / HTTP/1.1\r\n\r\n", 400, "missing Host header"),
        (b"GET / HTTP/1.1\r\nX-Host: x\r\n\r\n", 400, "missing Host header"),
        (b"GET http://x/ HTTP/1.1\r\n\r\n", 400, "missing Host header"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n", 400, "duplicate Host header"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400, "duplicate Host header"),
        (b"GET / HTTP/1.1\r\nhost: x\r\nHOST: y\r\n\r\n", 400, "duplicate Host header"),
        (b"GET / HTTP/1.0\r\nHost: x\r\nHost: y\r\n\r\n", 400, "duplicate Host header"),
    ])


def test_host_not_required_for_http10():
    with Keel() as k:
        resp, r = request(k, b"GET / HTTP/1.0\r\n\r\n")
        assert resp.status == 200 and resp.body == b"Hello, cloud native!", resp
        assert r.closed()
        r.sock.close()


# --- chunked framing ----------------------------------------------------------------------

def test_invalid_chunk_size():
    m = "invalid chunk size"
    run_cases([(chunk_body(b), 400, m) for b in (
        b"zz\r\n{}\r\n0\r\n\r\n",
        b"0x2\r\n{}\r\n0\r\n\r\n",
        b"0x10\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n",
        b";ext\r\n{}\r\n0\r\n\r\n",
        b"\r\n{}\r\n0\r\n\r\n",
        b"2x\r\n{}\r\n0\r\n\r\n",
        b"-2\r\n{}\r\n0\r\n\r\n",
        b"+2\r\n{}\r\n0\r\n\r\n",
        b" 2\r\n{}\r\n0\r\n\r\n",
        b"2\r\n{}\r\n0x\r\n\r\n",
        b"2\r\n{}\r\nz\r\n\r\n",
        b"2 2\r\n{}\r\n0\r\n\r\n",
        b"g\r\n{}\r\n0\r\n\r\n",
    )])


def test_invalid_chunk_extension():
    run_cases([(chunk_body(b"2;\x00\r\n{}\r\n0\r\n\r\n"), 400,
                "invalid character in chunk extension")])


def test_chunk_size_too_large():
    m = "chunk size too large"
    run_cases([(chunk_body(b), 400, m) for b in (
        b"1000000000000000\r\n{}\r\n0\r\n\r\n",  # 16 digits: 2^60
        b"ffffffffffffffff\r\n{}\r\n0\r\n\r\n",
        b"10000000000000002\r\n{}\r\n0\r\n\r\n",  # wraps to 2 in 64 bits
        b"100000000000000000000000000000002\r\n{}\r\n0\r\n\r\n",  # wraps to 2 in 128 bits
        b"2\r\n{}\r\n1000000000000000\r\n",
    )])


def test_chunk_size_15_digits_is_body_limit():
    # just below the "too large" threshold: a valid size, so it is the body limit that answers
    expect = ("413", "request body too large")
    with Keel() as k:
        j = expect_error(k, chunk_body(b"fffffffffffffff\r\n{}"), int(expect[0]), expect[1],
                         smuggle=False)
        assert "offset" in j


def test_chunk_data_not_followed_by_crlf():
    m = "chunk data not followed by CRLF"
    run_cases([(chunk_body(b), 400, m) for b in (
        b"2\r\n{}X\r\n0\r\n\r\n",
        b"2\r\n{}XY0\r\n\r\n",
        b"1\r\n{}\r\n0\r\n\r\n",
        b"2\r\n{}\r0\r\n\r\n",
        b"3\r\n{}\r\n0\r\n\r\n",  # data eats the CR: LF then "0" follows
    )])


# --- offsets ------------------------------------------------------------------------------

def test_error_offsets_point_at_the_bad_byte():
    hd = b"GET / HTTP/1.1\r\nHost: x\r\n"  # 25 bytes
    chunk_head = ECHO + b"Transfer-Encoding: chunked\r\n\r\n"
    cases = [
        (b"GE(T / HTTP/1.1\r\nHost: x\r\n\r\n", 2),
        (b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", 6),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 6),
        (b"GET / HTTP/1.1\nHost: x\r\n\r\n", 14),
        (hd + b"X(A: b\r\n\r\n", 26),
        (hd + b"X-A: a\x00b\r\n\r\n", 31),
        (hd + b"X-A: a\rb\r\n\r\n", 31),
        (hd + b"Host : x\r\n\r\n", 29),
        (hd + b"  x\r\n\r\n", 25),
        (chunk_head + b"zz\r\n{}\r\n0\r\n\r\n", len(chunk_head)),
    ]
    with Keel() as k:
        bad = []
        for raw, off in cases:
            resp, r = request(k, raw)
            r.sock.close()
            j = resp.json()
            if j.get("offset") != off:
                bad.append((raw, off, j))
        assert not bad, bad


# --- smuggling ----------------------------------------------------------------------------

def smuggle_cases():
    inner = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    cl_te = (ECHO + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
             % (5 + len(inner)) + inner)
    te_cl_body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)
    te_cl = ECHO + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" + te_cl_body
    return [
        (cl_te, 400, "both Content-Length and Transfer-Encoding"),
        (te_cl, 400, "both Content-Length and Transfer-Encoding"),
        # TE obfuscations
        (ECHO + b"Transfer-Encoding: xchunked\r\n\r\n" + te_cl_body,
         400, "chunked is not the final transfer coding"),
        (ECHO + b"Transfer-Encoding : chunked\r\n\r\n" + te_cl_body,
         400, "whitespace before colon in header"),
        (ECHO + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n" + te_cl_body,
         400, "chunked is not the final transfer coding"),
        (ECHO + b"Transfer-Encoding:\x0bchunked\r\n\r\n" + te_cl_body,
         400, "invalid character in header value"),
        (ECHO + b"X: y\nTransfer-Encoding: chunked\r\n\r\n" + te_cl_body,
         400, "line not terminated by CRLF"),
        (ECHO + b"X: y\rTransfer-Encoding: chunked\r\n\r\n" + te_cl_body,
         400, "bare CR in header value"),
        # CL obfuscations
        (ECHO + b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner,
         400, "duplicate Content-Length"),
        (ECHO + b"Content-Length: 0, %d\r\n\r\n" % len(inner) + inner,
         400, "invalid Content-Length"),
        (ECHO + b"Content-Length: 0\r\n %d\r\n\r\n" % len(inner) + inner,
         400, "obsolete line folding is not allowed"),
        # TE in HTTP/1.0 with CL (a 1.0 proxy would use the CL)
        (b"POST /echo HTTP/1.0\r\n" + CT + b"Transfer-Encoding: chunked\r\n\r\n" + te_cl_body,
         400, "Transfer-Encoding in an HTTP/1.0 request"),
        # chunk-size overflow to 0 / small numbers
        (chunk_body(b"10000000000000000\r\n\r\n" + inner), 400, "chunk size too large"),
    ]


def test_smuggling_payloads():
    run_cases(smuggle_cases())


def test_smuggled_request_not_answered_after_400():
    """The raw CL.TE/TE.CL shapes, checked byte by byte: exactly one answer, the 400, then EOF."""
    with Keel() as k:
        for raw, status, message in smuggle_cases()[:2]:
            s = k.connect()
            s.sendall(raw + SMUGGLED)
            r = Reader(s)
            resp = r.response()
            assert resp.status == status and resp.json()["error"] == message, resp
            assert r.closed(), r.buf
            assert b"smuggled" not in r.buf and r.buf == b"", r.buf
            s.close()


def test_valid_request_after_valid_chunked_is_answered():
    """Control for the smuggling tests: the same bytes correctly framed are two requests."""
    with Keel() as k:
        s = k.connect()
        s.sendall(chunk_body(b"2\r\n{}\r\n0\r\n\r\n") + SMUGGLED)
        r = Reader(s)
        a = r.response()
        b = r.response()
        assert a.status == 200 and a.body == b"{}", a
        assert b.status == 404 and b.json()["path"] == "/smuggled", b


def test_empty_transfer_encoding_refused():
    """An empty Transfer-Encoding is still a framing header: with Content-Length it is refused,
    alone it has no final chunked coding."""
    run_cases([
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\nContent-Length: 2\r\n\r\n{}",
         400, "both Content-Length and Transfer-Encoding"),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \r\n\r\n",
         400, "chunked is not the final transfer coding"),
    ])


if __name__ == "__main__":
    Suite().run(globals())
