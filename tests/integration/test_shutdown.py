"""test_shutdown.py - graceful drain (docs/http.md "Shutdown"): load across SIGTERM, readyz during
the drain delay, slow in-flight requests, the drain timeout, double signals, SIGINT, SIGHUP and idle
keep-alive connections."""
import json
import random
import signal
import socket
import subprocess
import threading
import time

from harness import Keel, Reader, Suite, get, post
from strict_http import Closed, read_one

HELLO = b"Hello, cloud native!"


# ---- the load client ---------------------------------------------------------------------------

class LoadClient(threading.Thread):
    """Loops keep-alive requests on its own connection, behaving as a real HTTP client would."""

    def __init__(self, k, idx, state):
        super().__init__(daemon=True)
        self.k, self.idx, self.state = k, idx, state
        self.rng = random.Random(idx)
        self.ok = []            # (time, had Connection: close)
        self.failures = []
        self.retries = 0
        self.refused = False
        self.n = 0

    def fail(self, msg):
        self.failures.append("client %d request %d: %s" % (self.idx, self.n, msg))

    def next_request(self):
        self.n += 1
        if self.n % 2:
            return get("/"), HELLO
        size = self.rng.choice([0, 10, 100, 1000, 5000, 20000])
        doc = {"client": self.idx, "n": self.n, "pad": "x" * size, "list": [1, 2.5, None, True]}
        body = json.dumps(doc, separators=(",", ":")).encode()
        return post("/echo", body), body

    def connect(self):
        """A new connection, or None when refused after SIGTERM (this client then stops)."""
        try:
            return self.k.connect(timeout=5)
        except ConnectionRefusedError:
            if self.state["sigterm"] is None:
                self.fail("connection refused before SIGTERM")
            self.refused = True
            return None

    def run(self):
        sock, reused = None, False
        deadline = time.time() + 20
        try:
            while time.time() < deadline and not self.failures:
                raw, expect = self.next_request()
                retried = False
                while True:
                    if sock is None:
                        sock, reused = self.connect(), False
                        if sock is None:
                            return
                    try:
                        try:
                            sock.sendall(raw)
                        except (BrokenPipeError, ConnectionResetError) as e:
                            raise Closed(0, "closed while sending (%s)" % e) from None
                        resp = read_one(sock)
                    except Closed as e:
                        sock.close()
                        sock = None
                        if e.got == 0 and reused and not retried:
                            # The server closed an idle keep-alive connection as we reused it:
                            # retry once on a new connection, as Go's and hyper's clients do.
                            if self.state["sigterm"] is None:
                                self.fail("keep-alive connection closed before SIGTERM")
                                return
                            self.retries += 1
                            retried = True
                            continue
                        self.fail("%s (reused=%s, retried=%s)" % (e, reused, retried))
                        return
                    except socket.timeout:
                        self.fail("timed out waiting for the response")
                        return
                    break
                if resp.status != 200:
                    self.fail("status %d: %r" % (resp.status, resp))
                    return
                if resp.body != expect:
                    self.fail("wrong body %r, expected %r" % (resp.body[:80], expect[:80]))
                    return
                close = (resp.header("connection") or "").lower() == "close"
                self.ok.append((time.time(), close))
                if close:
                    sock.close()
                    sock = None
                else:
                    reused = True
            if not self.failures:
                self.fail("still running 20 s after start: the server never stopped accepting")
        except Exception as e:  # noqa: BLE001 - every unexpected error is a failure
            self.fail("unexpected %r" % e)
        finally:
            if sock is not None:
                sock.close()


class ReadyProber(threading.Thread):
    """GET /readyz on a new connection every 25 ms until the listener refuses."""

    def __init__(self, k, state):
        super().__init__(daemon=True)
        self.k, self.state = k, state
        self.results = []   # (time sent, status, body, time answered)
        self.errors = []

    def run(self):
        deadline = time.time() + 20
        while time.time() < deadline:
            t = time.time()
            try:
                s = self.k.connect(timeout=5)
            except ConnectionRefusedError:
                if self.state["sigterm"] is None:
                    self.errors.append("readyz: refused before SIGTERM")
                return
            try:
                s.sendall(get("/readyz", extra="Connection: close\r\n"))
                r = read_one(s)
                self.results.append((t, r.status, r.body, time.time()))
            except Closed as e:
                # Never acceptable: keel stops new handshakes before it closes a listener, so a
                # connection it completed is served (a late one is refused instead).
                self.results.append((t, None, str(e), time.time()))
            except Exception as e:  # noqa: BLE001
                self.errors.append("readyz: %r" % e)
                return
            finally:
                s.close()
            time.sleep(0.025)


DRAIN_DELAY = 1.0
DRAIN_TIMEOUT = 3.0


def test_drain_under_load():
    cfg = "shutdown:\n  drain_delay: 1s\n  drain_timeout: 3s\nlog:\n  access: off\n"
    with Keel(config=cfg) as k:
        state = {"sigterm": None}
        clients = [LoadClient(k, i, state) for i in range(6)]
        prober = ReadyProber(k, state)
        for c in clients:
            c.start()
        prober.start()
        time.sleep(0.7)
        before = sum(len(c.ok) for c in clients)
        state["sigterm"] = t_sig = time.time()
        k.signal(signal.SIGTERM)
        try:
            rc = k.wait(DRAIN_DELAY + DRAIN_TIMEOUT + 5)
        except subprocess.TimeoutExpired:
            raise AssertionError("keel still running %.1f s after SIGTERM"
                                 % (DRAIN_DELAY + DRAIN_TIMEOUT + 5)) from None
        elapsed = time.time() - t_sig
        for c in clients:
            c.join(10)
        prober.join(10)
        assert not any(c.is_alive() for c in clients) and not prober.is_alive(), "clients hung"

        failures = [f for c in clients for f in c.failures] + prober.errors
        total = sum(len(c.ok) for c in clients)
        retries = sum(c.retries for c in clients)
        print("  load: %d requests ok (%d before SIGTERM), %d idempotent retries, "
              "%d/%d clients ended by a refused connect, exit after %.2fs"
              % (total, before, retries, sum(c.refused for c in clients), len(clients), elapsed))
        assert not failures, "%d failures:\n  %s" % (len(failures), "\n  ".join(failures[:20]))
        assert before >= 20, "too little load before SIGTERM: %d requests" % before
        assert rc == 0, "exit code %d after a clean drain" % rc
        assert elapsed >= DRAIN_DELAY - 0.05, "exited %.2fs after SIGTERM, before the drain delay" % elapsed
        assert elapsed <= DRAIN_DELAY + DRAIN_TIMEOUT + 1, "exit took %.2fs" % elapsed

        # During the delay: normal keep-alive service goes on while /readyz says 503.
        window = [(t, close) for c in clients for t, close in c.ok
                  if t_sig + 0.1 <= t <= t_sig + DRAIN_DELAY - 0.1]
        assert len(window) >= 10, "only %d requests served during the drain delay" % len(window)
        assert not any(close for _, close in window), \
            "Connection: close during the drain delay (listeners should still be open)"
        pre = [r for r in prober.results if r[3] < t_sig]  # answered before the signal was sent
        assert pre and all(r[1] == 200 for r in pre), "readyz before SIGTERM: %r" % pre
        during = [r for r in prober.results if t_sig + 0.05 <= r[0] <= t_sig + DRAIN_DELAY - 0.1]
        assert len(during) >= 5, "too few readyz probes during the delay: %r" % during
        bad = [r for r in during if r[1] != 503 or json.loads(r[2]) != {"status": "draining"}]
        assert not bad, "readyz during the drain delay: %r" % bad
        lost = [r for r in prober.results if r[1] is None]
        assert not lost, "readyz connections closed without an answer: %r" % lost
        # Every client must eventually have seen Connection: close or a refusal, never silence.
        late = [c.idx for c in clients if not c.refused]
        assert not late, "clients %r ended without the listener refusing them" % late


def _slow_body():
    return ('{"data":"' + "abcdefghij" * 20000 + '"}').encode()  # 200 KB + a little


def test_slow_request_survives_drain():
    body = _slow_body()
    with Keel(config="shutdown:\n  drain_delay: 0s\n  drain_timeout: 10s\n") as k:
        s = k.connect(timeout=10)
        head = ("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: %d\r\n\r\n" % len(body)).encode()
        pieces = [body[i:i + 20000] for i in range(0, len(body), 20000)]
        s.sendall(head + pieces[0])
        time.sleep(0.2)
        t_sig = time.time()
        k.signal(signal.SIGTERM)
        for p in pieces[1:]:
            time.sleep(1.5 / len(pieces))
            s.sendall(p)
        r = read_one(s)
        assert r.status == 200, r
        assert r.body == body, "echo body differs (%d bytes vs %d)" % (len(r.body), len(body))
        assert (r.header("connection") or "").lower() == "close", \
            "in-flight response during drain lacks Connection: close: %r" % r.headers
        assert Reader(s).closed(3), "connection not closed after the Connection: close response"
        s.close()
        rc = k.wait(5)
        assert rc == 0, "exit code %d" % rc
        assert time.time() - t_sig < 4, "exit took %.2fs" % (time.time() - t_sig)
        # New connections are refused once the listeners are closed (drain_delay 0).
        try:
            socket.create_connection(("127.0.0.1", k.port), timeout=2).close()
            raise AssertionError("connect succeeded after keel exited")
        except ConnectionRefusedError:
            pass


def test_drain_timeout_cuts_stuck_client():
    with Keel(config="shutdown:\n  drain_delay: 0s\n  drain_timeout: 1s\n") as k:
        s = k.connect(timeout=5)
        # Half a request head, never finished (timeouts.header is 10 s, well beyond the drain).
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        time.sleep(0.2)
        t_sig = time.time()
        k.signal(signal.SIGTERM)
        try:
            rc = k.wait(5)
        except subprocess.TimeoutExpired:
            raise AssertionError("keel ignored drain_timeout: still running 5 s after SIGTERM") from None
        elapsed = time.time() - t_sig
        s.close()
        assert rc == 1, "exit code %d after the drain timeout cut a connection (want 1)" % rc
        assert 0.8 <= elapsed <= 2.0, "exit %.2fs after SIGTERM with drain_timeout 1s" % elapsed
        time.sleep(0.2)
        assert any(l.get("msg", "").startswith("drain timeout") for l in k.logs()), k.lines[-5:]


def _double_signal(sig, want):
    with Keel(config="shutdown:\n  drain_delay: 5s\n") as k:
        s = k.connect()
        s.sendall(get("/"))
        assert read_one(s).status == 200
        k.signal(sig)
        time.sleep(0.3)
        assert k.proc.poll() is None, "exited before the drain delay (code %r)" % k.proc.poll()
        t = time.time()
        k.signal(sig)
        try:
            rc = k.wait(3)
        except subprocess.TimeoutExpired:
            raise AssertionError("second signal did not exit at once") from None
        elapsed = time.time() - t
        s.close()
        # "exits at once with status 128+signal": exit(128+sig); a shell reports a death by the
        # signal the same way, so -sig is accepted too.
        assert rc in (want, -sig), "exit status %r after a second %s, want %d" % (rc, sig.name, want)
        assert elapsed < 1.0, "second signal took %.2fs" % elapsed


def test_double_sigterm_exits_at_once():
    _double_signal(signal.SIGTERM, 143)


def test_double_sigint_exits_at_once():
    _double_signal(signal.SIGINT, 130)


def test_sigint_drains_like_sigterm():
    with Keel(config="shutdown:\n  drain_delay: 500ms\n") as k:
        s = k.connect()
        s.sendall(get("/readyz"))
        r = read_one(s)
        assert r.status == 200 and json.loads(r.body) == {"status": "ready"}, r
        t_sig = time.time()
        k.signal(signal.SIGINT)
        time.sleep(0.1)
        s.sendall(get("/readyz"))
        r = read_one(s)
        assert r.status == 503 and json.loads(r.body) == {"status": "draining"}, r
        s.sendall(get("/"))
        r = read_one(s)
        assert r.status == 200 and r.body == HELLO, r
        rc = k.wait(5)
        elapsed = time.time() - t_sig
        assert rc == 0, "exit code %d after SIGINT" % rc
        assert 0.45 <= elapsed < 2.5, "exit %.2fs after SIGINT with drain_delay 500ms" % elapsed
        assert Reader(s).closed(1), "keep-alive connection not closed at drain"
        s.close()


def test_sighup_is_ignored():
    with Keel() as k:
        k.signal(signal.SIGHUP)
        time.sleep(0.3)
        assert k.proc.poll() is None, "SIGHUP stopped keel (code %r)" % k.proc.poll()
        s = k.connect()
        s.sendall(get("/readyz"))
        r = read_one(s)
        s.close()
        assert r.status == 200, "readyz after SIGHUP: %r" % r


def test_idle_keepalive_closed_at_drain():
    with Keel(config="timeouts:\n  idle: 60s\n") as k:
        socks = []
        for _ in range(4):
            s = k.connect()
            s.sendall(get("/"))
            r = read_one(s)
            assert r.status == 200 and r.header("connection") != "close", r
            socks.append(s)
        t_sig = time.time()
        k.signal(signal.SIGTERM)
        for i, s in enumerate(socks):
            assert Reader(s).closed(2), "idle keep-alive connection %d not closed at drain" % i
            s.close()
        rc = k.wait(3)
        elapsed = time.time() - t_sig
        assert rc == 0, "exit code %d" % rc
        assert elapsed < 2.0, "exit took %.2fs with idle connections open" % elapsed


def test_queued_connection_served_at_drain():
    # "connections the kernel already accepted are still served": freeze keel, let a connection
    # with a complete request wait in the accept queue, then SIGTERM (drain_delay 0) and resume.
    results = []
    for _ in range(5):
        with Keel("--workers", "1") as k:
            ka = k.connect()
            ka.sendall(get("/"))
            assert read_one(ka).status == 200
            k.signal(signal.SIGSTOP)
            try:
                time.sleep(0.05)
                s = k.connect()
                s.sendall(get("/"))          # new connection: in the accept queue
                ka.sendall(get("/"))         # reused keep-alive connection: request unread
                k.signal(signal.SIGTERM)
                time.sleep(0.05)
            finally:
                k.signal(signal.SIGCONT)
            for name, c in (("queued", s), ("keep-alive", ka)):
                try:
                    r = read_one(c)
                    ok = r.status == 200 and r.body == HELLO
                    results.append((name, r.status if ok else repr(r)))
                except (Closed, OSError) as e:
                    results.append((name, repr(e)))
                c.close()
            rc = k.wait(5)
            assert rc == 0, "exit code %d" % rc
    bad = [r for r in results if r[1] != 200]
    assert not bad, "%d/%d requests lost at drain: %r" % (len(bad), len(results), bad)


def test_connection_without_request_closed_at_drain():
    # An accepted connection that has sent nothing has no request in flight: it is idle too.
    with Keel() as k:
        socks = [k.connect() for _ in range(3)]
        s = k.connect()
        s.sendall(get("/"))
        assert read_one(s).status == 200  # all accepted by now
        socks.append(s)
        t_sig = time.time()
        k.signal(signal.SIGTERM)
        for i, s in enumerate(socks):
            assert Reader(s).closed(2), "connection %d not closed at drain" % i
            s.close()
        rc = k.wait(3)
        elapsed = time.time() - t_sig
        assert rc == 0, "exit code %d" % rc
        assert elapsed < 2.0, "exit took %.2fs" % elapsed


if __name__ == "__main__":
    Suite().run(globals())
