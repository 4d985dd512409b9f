"""upstream.py - a scriptable HTTP/1.1 upstream for gateway tests: records what it receives,
answers by path (echo of the request, delays, errors, malformed or cut responses)."""
import hashlib
import json
import socket
import threading
import time


class Upstream:
    """A threaded raw-socket HTTP/1.1 server on 127.0.0.1 (keep-alive, CL and chunked bodies).

    Paths:
      /rec...            200, JSON: method, target, headers (as received), body length/sha256
      /status/N          answers status N with a small JSON body
      /slow/MS           waits MS milliseconds, then like /rec
      /chunked           a chunked response (three chunks)
      /close             an HTTP/1.1 response delimited by the connection's close
      /big/N             N bytes of a repeating pattern, Content-Length framed
      /die               announces 100000 bytes, sends 1000, closes
      /malformed/KIND    a malformed response (cl-te, status, header, cl-cl)
      anything else      like /rec
    """

    def __init__(self, name="up", tls=None):
        self.name = name
        self.tls = tls  # an ssl.SSLContext: the upstream speaks TLS
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.requests = []     # (method, target, headers dict lowercased, body bytes)
        self.connections = 0
        self.lock = threading.Lock()
        self.stopped = False
        self.fail = None       # a status to answer every request with (an unhealthy backend)
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.stopped = True
        try:
            self.sock.close()
        except OSError:
            pass

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _read_until(c, buf, marker):
        while marker not in buf:
            d = c.recv(65536)
            if not d:
                raise EOFError
            buf += d
        return buf

    def _read_body(self, c, buf, headers):
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                buf = self._read_until(c, buf, b"\r\n")
                line, buf = buf.split(b"\r\n", 1)
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    buf = self._read_until(c, buf, b"\r\n")
                    _, buf = buf.split(b"\r\n", 1)  # no trailers in these tests
                    return body, buf
                while len(buf) < size + 2:
                    d = c.recv(65536)
                    if not d:
                        raise EOFError
                    buf += d
                body += buf[:size]
                buf = buf[size + 2:]
        n = int(headers.get("content-length", "0"))
        h = hashlib.sha256()
        got = 0
        # Large bodies are hashed as they stream by, not kept.
        while got < n:
            if not buf:
                buf = c.recv(1 << 20)
                if not buf:
                    raise EOFError
            take = buf[:n - got]
            h.update(take)
            got += len(take)
            buf = buf[len(take):]
        return (h, got), buf

    def _serve(self, c):
        buf = b""
        try:
            if self.tls:
                c = self.tls.wrap_socket(c, server_side=True)
            while True:
                buf = self._read_until(c, buf, b"\r\n\r\n")
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                hlist = [tuple(x.split(":", 1)) for x in lines[1:]]
                headers = {}
                for k, v in hlist:
                    headers[k.strip().lower()] = v.strip()
                body, buf = self._read_body(c, buf, headers)
                if isinstance(body, tuple):
                    digest, blen = body[0].hexdigest(), body[1]
                else:
                    digest, blen = hashlib.sha256(body).hexdigest(), len(body)
                with self.lock:
                    self.requests.append((method, target, headers, blen))
                if not self._answer(c, method, target, lines, digest, blen):
                    return
        except (EOFError, OSError, ValueError):
            pass
        finally:
            c.close()

    def _send(self, c, status, body, extra=b"", ctype=b"application/json"):
        c.sendall(b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
                  % (status, ctype, len(body), extra) + body)

    def _answer(self, c, method, target, lines, digest, blen):
        path = target.split("?", 1)[0]
        for cmd in ("/status/", "/slow/", "/chunked", "/close", "/big/", "/die", "/malformed/",
                    "/cache/"):  # behind a route prefix (/good/big/10 is /big/10)
            i = path.find(cmd)
            if i > 0:
                path = path[i:]
                break
        if self.fail:
            self._send(c, self.fail, b'{"failing":"%s"}' % self.name.encode())
            return True
        if path.startswith("/status/"):
            st = int(path.split("/")[2])
            self._send(c, st, b'{"status":%d,"upstream":"%s"}' % (st, self.name.encode()))
            return True
        if path.startswith("/cache/"):  # /cache/MS/name: cacheable for a minute, after MS ms
            ms = int(path.split("/")[2])
            time.sleep(ms / 1000.0)
            vary = b"Vary: Accept-Language\r\n" if "vary" in path else b""
            cc = b"no-store" if "nostore" in path else b"public, max-age=60"
            lang = dict((l.split(":", 1)[0].strip().lower(), l.split(":", 1)[1].strip())
                        for l in lines[1:]).get("accept-language", "")
            self._send(c, 200, b'{"n":%d,"lang":"%s"}' % (self.count(), lang.encode()),
                       b"Cache-Control: " + cc + b"\r\n" + vary)
            return True
        if path.startswith("/slow/"):
            time.sleep(int(path.split("/")[2]) / 1000.0)
        if path == "/chunked":
            c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n"
                      b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n")
            return True
        if path == "/close":
            c.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
            return False
        if path.startswith("/big/"):
            n = int(path.split("/")[2])
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
            chunk = bytes(range(256)) * 256
            sent = 0
            while sent < n:
                part = chunk[:min(len(chunk), n - sent)]
                c.sendall(part)
                sent += len(part)
            return True
        if path == "/die":
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
            time.sleep(0.05)
            return False
        if path.startswith("/malformed/"):
            kind = path.split("/")[2]
            raw = {
                "cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "status": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
                "header": b"HTTP/1.1 200 OK\r\nBad Header: x\r\nContent-Length: 0\r\n\r\n",
                "cl-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
                "lf": b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
            }[kind]
            c.sendall(raw)
            return False
        hdrs = [l.split(":", 1) for l in lines[1:]]
        body = json.dumps({"upstream": self.name, "method": method, "target": target,
                           "headers": [[k, v.strip()] for k, v in hdrs],
                           "body_len": blen, "body_sha256": digest}).encode()
        self._send(c, 200, body, b"Connection: X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nX-Kept: 1\r\n")
        return True

    def count(self):
        with self.lock:
            return len(self.requests)
