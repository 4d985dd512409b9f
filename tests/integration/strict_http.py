"""strict_http.py - a strict one-response-at-a-time HTTP/1.1 reader for the integration tests:
unlike harness.Reader it says how many bytes arrived before a close, and refuses extra bytes."""


class Closed(Exception):
    """The peer closed (EOF or reset) after `got` bytes of the response."""

    def __init__(self, got, how):
        super().__init__("connection %s after %d response bytes" % (how, got))
        self.got = got


class Resp:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return "<Resp %d %r %r>" % (self.status, self.headers, self.body[:120])


def read_one(sock):
    """Reads exactly one response (no pipelining, so nothing may follow it)."""
    buf = b""

    def fill():
        nonlocal buf
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            raise Closed(len(buf), "reset") from None
        if not chunk:
            raise Closed(len(buf), "closed")
        buf += chunk

    while b"\r\n\r\n" not in buf:
        fill()
    head_len = buf.index(b"\r\n\r\n") + 4
    lines = buf[:head_len - 4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise AssertionError("bad status line %r" % lines[0])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    n = int(headers.get("content-length", "-1"))
    if n < 0:
        raise AssertionError("response without Content-Length: %r" % lines)
    while len(buf) < head_len + n:
        fill()
    if len(buf) > head_len + n:
        raise AssertionError("unexpected bytes after the response: %r" % buf[head_len + n:][:80])
    return Resp(int(parts[1]), headers, buf[head_len:])
