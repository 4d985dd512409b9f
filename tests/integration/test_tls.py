"""test_tls.py - TLS on the HTTP listener (tls.*): handshakes, requests, mTLS, reload on SIGHUP.

Every certificate is made here, at test time, with the openssl command line (no key is ever
committed): a root CA and an intermediate for the server, a separate CA for client certificates,
and the good, expired, wrong-host and foreign certificates the cases need.
"""
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import warnings

from harness import Keel, Reader, Suite, get, post

TMP = tempfile.mkdtemp(prefix="keel-tls-")
HELLO = b"Hello, cloud native!"


def path(name):
    return os.path.join(TMP, name)


def openssl(*args):
    p = subprocess.run(["openssl"] + list(args), capture_output=True, timeout=30)
    assert p.returncode == 0, "openssl %s: %s" % (" ".join(args), p.stderr.decode())


def ext_file(name, text):
    with open(path(name + ".ext"), "w") as f:
        f.write(text)
    return path(name + ".ext")


CA_EXT = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"


def make_cert(name, issuer=None, cn=None, san=None, ca=False, days=2, usage="serverAuth"):
    """Writes NAME.key and NAME.pem: self-signed when issuer is None, else signed by issuer."""
    key, pem = path(name + ".key"), path(name + ".pem")
    subj = "/CN=%s" % (cn or name)
    if issuer is None:
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", key, "-out", pem, "-days", str(days), "-subj", subj)
        return key, pem
    csr = path(name + ".csr")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", csr, "-subj", subj)
    ext = CA_EXT if ca else "extendedKeyUsage=%s\n" % usage
    if san:
        ext += "subjectAltName=%s\n" % san
    # -days -1 gives a certificate whose notAfter is already past: an expired one.
    openssl("x509", "-req", "-in", csr, "-CA", path(issuer + ".pem"), "-CAkey",
            path(issuer + ".key"), "-CAcreateserial", "-days", str(days), "-extfile",
            ext_file(name, ext), "-out", pem)
    return key, pem


def chain(name, *parts):
    with open(path(name), "wb") as out:
        for p in parts:
            with open(path(p + ".pem"), "rb") as f:
                out.write(f.read())
    return path(name)


LOCAL = "DNS:localhost,IP:127.0.0.1"
make_cert("root")
make_cert("inter", "root", ca=True)
make_cert("server", "inter", cn="localhost", san=LOCAL)
SERVER_CHAIN = chain("server-chain.pem", "server", "inter")
make_cert("server2", "root", cn="localhost", san=LOCAL)  # the reload's new certificate
make_cert("expired", "root", cn="localhost", san=LOCAL, days=-1)
make_cert("wronghost", "root", cn="other.example", san="DNS:other.example")
make_cert("clientca")
make_cert("client", "clientca", usage="clientAuth")
make_cert("client-expired", "clientca", usage="clientAuth", days=-1)
make_cert("evilca")
make_cert("client-evil", "evilca", usage="clientAuth")


def tls_config(cert=SERVER_CHAIN, key=None, extra=""):
    return "tls:\n  cert: %s\n  key: %s\n%s" % (cert, key or path("server.key"), extra)


def client(cafile=path("root.pem"), cert=None, alpn=("http/1.1",)):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        ctx.load_verify_locations(cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(path(cert + ".pem"), path(cert + ".key"))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def tls_connect(k, ctx, host="localhost"):
    raw = k.connect()
    return ctx.wrap_socket(raw, server_hostname=host)


def der(name):
    return ssl.PEM_cert_to_DER_cert(open(path(name + ".pem")).read())


def wait_log(k, msg, timeout=5):
    end = time.time() + timeout
    while time.time() < end:
        for line in k.logs():
            if line.get("msg") == msg:
                return line
        time.sleep(0.05)
    raise AssertionError("no %r log line: %r" % (msg, k.lines[-10:]))


def tls_errors(k):
    return [l.get("error") for l in k.logs() if l.get("msg") == "TLS error"]


def refused(k, ctx):
    """The server refuses the connection: at the handshake, or (TLS 1.3 client certificates are
    checked after the client's side finished) on the first read, with no HTTP answer."""
    try:
        s = tls_connect(k, ctx)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    try:
        s.settimeout(5)
        s.sendall(get("/"))
        data = s.recv(65536)
        return data == b""
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    finally:
        s.close()


# ---- handshake and requests ----------------------------------------------------------------


def test_requests_over_tls_keepalive_and_pipelined():
    with Keel(config=tls_config()) as k:
        assert wait_log(k, "listening").get("tls") == "on"
        s = tls_connect(k, client())
        assert s.version() in ("TLSv1.2", "TLSv1.3"), s.version()
        assert s.selected_alpn_protocol() == "http/1.1", s.selected_alpn_protocol()
        r = Reader(s)
        s.sendall(get("/"))
        resp = r.response()
        assert resp.status == 200 and resp.body == HELLO, resp
        # one full TLS record (16 KiB) of small pipelined requests: keel's first input buffer
        # takes it in several reads, and the rest waits decrypted inside OpenSSL, where epoll
        # cannot see it (nothing more arrives on the socket)
        reqs = [get("/", extra="X-Pad: %s\r\n" % ("p" * 100)) for _ in range(119)]
        fill = 16384 - sum(len(q) for q in reqs) - len(reqs[0])
        reqs.append(get("/", extra="X-Pad: %s\r\n" % ("p" * (100 + fill))))
        data = b"".join(reqs)
        assert len(data) == 16384, len(data)
        s2 = tls_connect(k, client())  # a fresh connection: its input buffer is 4 KiB
        r2 = Reader(s2)
        s2.sendall(data)
        for i in range(len(reqs)):
            resp = r2.response()
            assert resp.status == 200 and resp.body == HELLO, (i, resp)
        s2.close()
        # a body much larger than one TLS record (16 KiB) and than keel's first input buffer
        body = '{"data":"%s","n":[1,2,3]}' % ("x" * 100000)
        s.sendall(post("/echo", body))
        resp = r.response()
        assert resp.status == 200 and resp.body == body.encode(), (resp.status, len(resp.body))
        # pipelined: three requests in one write, three answers in order
        s.sendall(get("/") + post("/echo", '{"a":1}') + get("/livez"))
        a, b, c = r.response(), r.response(), r.response()
        assert a.body == HELLO and b.body == b'{"a":1}' and c.status == 200, (a, b, c)
        # pipelined big bodies: keel decrypts more than it can take at once
        s.sendall(post("/echo", body) * 3)
        for _ in range(3):
            resp = r.response()
            assert resp.status == 200 and len(resp.body) == len(body), resp.status
        s.close()


def test_tls12_works_and_tls11_is_refused():
    with Keel(config=tls_config()) as k:
        ctx = client()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        s = tls_connect(k, ctx)
        assert s.version() == "TLSv1.2", s.version()
        assert s.cipher()[0].startswith("ECDHE-") and ("GCM" in s.cipher()[0] or
                                                       "CHACHA" in s.cipher()[0]), s.cipher()
        s.sendall(get("/"))
        assert Reader(s).response().body == HELLO
        s.close()
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1*, on purpose
        old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        try:
            tls_connect(k, old).close()
            raise AssertionError("a TLS 1.1 handshake succeeded")
        except ssl.SSLError as e:
            assert "PROTOCOL_VERSION" in str(e).upper() or "UNSUPPORTED" in str(e).upper(), e
        wait_log(k, "TLS error")
        assert "unsupported protocol" in tls_errors(k), tls_errors(k)


def test_alpn_h2_only_gets_no_protocol():
    with Keel(config=tls_config()) as k:
        s = tls_connect(k, client(alpn=("h2",)))
        assert s.selected_alpn_protocol() is None, s.selected_alpn_protocol()
        s.sendall(get("/"))
        assert Reader(s).response().body == HELLO
        s.close()
        s = tls_connect(k, client(alpn=("h2", "http/1.1")))
        assert s.selected_alpn_protocol() == "http/1.1"
        s.close()


def test_chain_verifies_against_the_root_only():
    """The client trusts only the root: keel must send the intermediate with its certificate."""
    with Keel(config=tls_config()) as k:
        s = tls_connect(k, client(cafile=path("root.pem")))
        cert = s.getpeercert()
        issuer = dict(x[0] for x in cert["issuer"])
        assert issuer.get("commonName") == "inter", cert
        s.close()
        s = tls_connect(k, client(), host="127.0.0.1")  # the IP address SAN
        s.close()
    # the leaf alone (no intermediate) cannot be verified by the same client
    with Keel(config=tls_config(cert=path("server.pem"))) as k:
        try:
            tls_connect(k, client()).close()
            raise AssertionError("verified without the intermediate")
        except ssl.SSLCertVerificationError as e:
            assert "unable to get local issuer" in str(e), e


def test_expired_and_wrong_host_certificates_fail_verification():
    with Keel(config=tls_config(cert=path("expired.pem"), key=path("expired.key"))) as k:
        try:
            tls_connect(k, client()).close()
            raise AssertionError("an expired certificate verified")
        except ssl.SSLCertVerificationError as e:
            assert "certificate has expired" in str(e), e
        s = tls_connect(k, client(cafile=None))  # not verifying: served all the same
        s.sendall(get("/"))
        assert Reader(s).response().body == HELLO
        s.close()
    with Keel(config=tls_config(cert=path("wronghost.pem"), key=path("wronghost.key"))) as k:
        try:
            tls_connect(k, client()).close()
            raise AssertionError("a certificate for another host verified")
        except ssl.SSLCertVerificationError as e:
            assert "Hostname mismatch" in str(e) or "hostname" in str(e).lower(), e
        tls_connect(k, client(), host="other.example").close()


# ---- client certificates (mTLS) ---------------------------------------------------------------


def test_mtls_require():
    cfg = tls_config(extra="  client_ca: %s\n" % path("clientca.pem"))
    with Keel(config=cfg) as k:
        assert refused(k, client()), "no client certificate was accepted"
        assert refused(k, client(cert="client-evil")), "a certificate from another CA was accepted"
        assert refused(k, client(cert="client-expired")), "an expired client certificate was accepted"
        s = tls_connect(k, client(cert="client"))
        s.sendall(get("/"))
        assert Reader(s).response().body == HELLO
        s.close()
        time.sleep(0.2)
        errs = tls_errors(k)
        assert "peer did not return a certificate" in errs, errs
        assert "certificate has expired" in errs, errs
        assert "unable to get local issuer certificate" in errs, errs


def test_mtls_optional_and_none():
    cfg = tls_config(extra="  client_ca: %s\n  client_auth: optional\n" % path("clientca.pem"))
    with Keel(config=cfg) as k:
        for c in (None, "client"):
            s = tls_connect(k, client(cert=c))
            s.sendall(get("/"))
            assert Reader(s).response().body == HELLO, c
            s.close()
        assert refused(k, client(cert="client-evil")), "optional still verifies a certificate sent"
    cfg = tls_config(extra="  client_ca: %s\n  client_auth: none\n" % path("clientca.pem"))
    with Keel(config=cfg) as k:
        s = tls_connect(k, client(cert="client-evil"))
        s.sendall(get("/"))
        assert Reader(s).response().body == HELLO
        s.close()


# ---- reload on SIGHUP -----------------------------------------------------------------------------


def test_sighup_reload_new_cert_keeps_open_connections():
    shutil.copy(SERVER_CHAIN, path("live.pem"))
    shutil.copy(path("server.key"), path("live.key"))
    with Keel(config=tls_config(cert=path("live.pem"), key=path("live.key"))) as k:
        old = tls_connect(k, client())
        assert old.getpeercert(True) == der("server")
        r_old = Reader(old)
        old.sendall(get("/"))
        assert r_old.response().body == HELLO
        shutil.copy(path("server2.pem"), path("live.pem"))
        shutil.copy(path("server2.key"), path("live.key"))
        k.signal(signal.SIGHUP)
        wait_log(k, "configuration reloaded")
        new = tls_connect(k, client())
        assert new.getpeercert(True) == der("server2"), "the new connection got the old certificate"
        new.sendall(get("/"))
        assert Reader(new).response().body == HELLO
        # the connection opened before the reload keeps working on its own context
        for _ in range(3):
            old.sendall(get("/"))
            assert r_old.response().body == HELLO
        old.sendall(post("/echo", '{"big":"%s"}' % ("y" * 40000)))
        assert r_old.response().status == 200
        old.close()
        new.close()
        # a broken key: the error is logged and the current certificate stays
        with open(path("live.key"), "w") as f:
            f.write("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
        k.signal(signal.SIGHUP)
        line = wait_log(k, "reload failed: the previous configuration keeps serving")
        assert line["level"] == "error" and "tls.key" in line["error"], line
        s = tls_connect(k, client())
        assert s.getpeercert(True) == der("server2")
        s.sendall(get("/"))
        assert Reader(s).response().body == HELLO
        s.close()
        # a key of another certificate: refused as well
        shutil.copy(path("server.key"), path("live.key"))
        k.signal(signal.SIGHUP)
        time.sleep(0.3)
        fails = [l for l in k.logs() if l.get("msg", "").startswith("reload failed")]
        assert len(fails) == 2 and "does not belong" in fails[1]["error"], fails
        s = tls_connect(k, client())
        assert s.getpeercert(True) == der("server2")
        s.close()


# ---- misbehaving clients ---------------------------------------------------------------------------


def test_plain_http_to_tls_port_is_closed():
    with Keel(config=tls_config()) as k:
        s = k.connect()
        s.sendall(get("/"))
        assert Reader(s).closed(3), "plain HTTP got an answer or the connection stayed open"
        s.close()
        s = tls_connect(k, client())
        s.sendall(get("/"))
        assert Reader(s).response().body == HELLO
        s.close()
        time.sleep(0.2)
        assert "http request" in tls_errors(k), tls_errors(k)


def test_stalled_handshake_closed_at_header_timeout():
    with Keel(config=tls_config(extra="timeouts:\n  header: 1s\n")) as k:
        silent = k.connect()
        partial = k.connect()
        partial.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's start
        t0 = time.time()
        assert Reader(silent).closed(4) and Reader(partial).closed(4), "handshake never timed out"
        elapsed = time.time() - t0
        assert 0.5 < elapsed < 3.5, elapsed
        s = tls_connect(k, client())
        s.sendall(get("/"))
        assert Reader(s).response().body == HELLO
        s.close()


def test_many_clients_at_once():
    with Keel("--workers", "2", config=tls_config()) as k:
        socks = [tls_connect(k, client()) for _ in range(20)]
        for s in socks:
            s.sendall(get("/"))
        for s in socks:
            assert Reader(s).response().body == HELLO
            s.close()


# ---- the gateway behind TLS ----------------------------------------------------------------------


def test_gateway_streams_through_tls():
    """Proxied requests and responses are streamed (not buffered) through the TLS connection."""
    from upstream import Upstream
    a = Upstream("a")
    cfg = tls_config() + ("workers: 1\nupstreams:\n  a:\n    endpoints: [127.0.0.1:%d]\n"
                          "routes:\n  - prefix: /\n    upstream: a\n" % a.port)
    try:
        with Keel(config=cfg) as k:
            s = tls_connect(k, client())
            s.settimeout(30)
            size = 8 << 20
            s.sendall(b"POST /rec HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
            chunk = b"z" * (1 << 20)
            for _ in range(size >> 20):
                s.sendall(chunk)
            r = Reader(s)
            j = r.response().json()
            assert j["body_len"] == size, j
            assert ["X-Forwarded-Proto", "https"] in j["headers"], j["headers"]
            s.sendall(get("/big/%d" % size))
            while b"\r\n\r\n" not in r.buf:
                r._fill()
            head, rest = r.buf.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 200"), head
            got = len(rest)
            while got < size:  # counted, not joined: TLS reads come in 16 KiB records
                d = s.recv(1 << 20)
                assert d, got
                got += len(d)
            assert got == size, got
            r.buf = b""
            s.sendall(get("/hello"))
            assert r.response().status in (200, 404)
            s.close()
    finally:
        a.close()


# ---- configuration -------------------------------------------------------------------------------


def check_config(text):
    fd, f = tempfile.mkstemp(suffix=".yaml", dir=TMP)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    p = subprocess.run([os.environ.get("KEEL_BIN", "build/keel"), "check-config", "-c", f],
                       capture_output=True, timeout=10, env=env)
    return p.returncode, p.stderr.decode()


def test_check_config():
    rc, err = check_config(tls_config())
    assert rc == 0, err
    rc, err = check_config(tls_config(cert=path("missing.pem")))
    assert rc == 1 and "tls.cert %s: No such file or directory" % path("missing.pem") in err, err
    rc, err = check_config(tls_config(key=path("server2.key")))
    assert rc == 1 and "does not belong to the certificate" in err, err
    rc, err = check_config(tls_config(cert=path("server.key")))
    assert rc == 1 and "not a PEM certificate chain" in err, err
    rc, err = check_config("tls:\n  cert: %s\n" % SERVER_CHAIN)
    assert rc == 1 and "set both or neither" in err, err
    rc, err = check_config(tls_config(extra="  client_ca: %s\n" % path("nope.pem")))
    assert rc == 1 and "tls.client_ca" in err, err
    rc, err = check_config(tls_config(extra="  client_auth: maybe\n"))
    assert rc == 1 and "none|optional|require" in err, err


def test_no_tls_maps_no_libssl():
    with Keel() as k:
        with open("/proc/%d/maps" % k.proc.pid) as f:
            maps = f.read()
        assert "libssl" not in maps, "a keel without TLS mapped libssl"
    with Keel(config=tls_config()) as k:
        with open("/proc/%d/maps" % k.proc.pid) as f:
            assert "libssl.so.3" in f.read()


# ---- TLS to upstreams --------------------------------------------------------------------------

def upstream_ctx(cert, key=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(path(cert), key or path("server.key"))
    return ctx


def test_upstream_tls_verification():
    from upstream import Upstream
    good = Upstream("good", tls=upstream_ctx("server-chain.pem"))
    expired = Upstream("expired", tls=upstream_ctx("expired.pem", path("expired.key")))
    wrong = Upstream("wrong", tls=upstream_ctx("wronghost.pem", path("wronghost.key")))
    plain = Upstream("plain")
    cfg = ("workers: 1\nupstreams:\n"
           "  good: {endpoints: [localhost:%d], tls: {ca: %s}, health_check: {path: /status/200, interval: 100ms}}\n"
           "  expired: {endpoints: [127.0.0.1:%d], tls: {ca: %s}, outlier: {failures: 0}}\n"
           "  wrong: {endpoints: [localhost:%d], tls: {ca: %s}, outlier: {failures: 0}}\n"
           "  unverified: {endpoints: [127.0.0.1:%d], tls: {verify: false}}\n"
           "  named: {endpoints: [127.0.0.1:%d], tls: {ca: %s, server_name: other.example}}\n"
           "  system: {endpoints: [127.0.0.1:%d], tls: true, outlier: {failures: 0}}\n"
           "  plain: {endpoints: [127.0.0.1:%d], tls: {ca: %s}, outlier: {failures: 0}}\n"
           "routes:\n" % (good.port, path("root.pem"), expired.port, path("root.pem"), wrong.port,
                          path("root.pem"), wrong.port, wrong.port, path("root.pem"), good.port,
                          plain.port, path("root.pem")))
    for name in ["good", "expired", "wrong", "unverified", "named", "system", "plain"]:
        cfg += "  - prefix: /%s/\n    upstream: %s\n    retries: {attempts: 0}\n" % (name, name)
    with Keel(config=cfg) as k:
        def ask(p):
            s = k.connect()
            s.sendall(get(p))
            r = Reader(s).response()
            s.close()
            return r
        r = ask("/good/rec")
        assert r.status == 200 and b'"upstream": "good"' in r.body, r
        r = ask("/good/big/3000000")  # a large body over TLS, streamed
        assert r.status == 200 and len(r.body) == 3000000, (r.status, len(r.body))
        r = ask("/expired/rec")
        assert r.status == 502 and "certificate has expired" in r.json()["error"], r
        r = ask("/wrong/rec")
        assert r.status == 502 and "hostname mismatch" in r.json()["error"], r
        r = ask("/unverified/rec")  # verification off, by explicit choice
        assert r.status == 200, r
        r = ask("/named/rec")  # SNI and the checked name from server_name
        assert r.status == 200, r
        r = ask("/system/rec")  # default trust store: this private root is not in it
        assert r.status == 502 and "TLS" in r.json()["error"], r
        r = ask("/plain/rec")  # plain HTTP behind a tls: upstream (it waits for a request head)
        assert r.status == 504 and "TLS handshake" in r.json()["error"], r
        deadline = time.time() + 5  # the health check runs over TLS too
        while good.count() < 4:
            assert time.time() < deadline, good.count()
            time.sleep(0.05)
        assert all(t.startswith("/") for _, t, _, _ in good.requests)
    for u in (good, expired, wrong, plain):
        u.close()


if __name__ == "__main__":
    try:
        Suite().run(globals())
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
