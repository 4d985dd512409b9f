"""test_gateway_doc.py - docs/gateway.md's example is real: the config of its "## Example"
section (with its schema file and API-key file) passes `keel check-config`, and keel serving
it behaves as the page says (validation, API keys with a global rate limit through a real
Redis, the response cache, the built-in handler, reload on the admin listener)."""
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile

from harness import KEEL, ROOT, Keel, Reader, Suite, request, get, post
from upstream import Upstream
from test_gateway_policies import Redis

DOC = os.path.join(ROOT, "docs", "gateway.md")


def example_blocks():
    """The first ```yaml, ```json and ```text blocks of the "## Example" section."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"^## Example\n(.*?)(?=^## )", text, re.S | re.M)
    assert m, "docs/gateway.md has no '## Example' section"
    blocks = {}
    for lang, body in re.findall(r"^```(\w+)\n(.*?)^```", m.group(1), re.S | re.M):
        blocks.setdefault(lang, body)
    for lang in ("yaml", "json", "text"):
        assert lang in blocks, "the Example section lacks a ```%s block" % lang
    return blocks["yaml"], blocks["json"], blocks["text"]


class CatalogUpstream(Upstream):
    """The example's services: /v1/catalog/... answers are cacheable for a minute."""

    def _answer(self, c, method, target, lines, digest, blen):
        if target.startswith("/v1/catalog/"):
            self._send(c, 200, b'{"item":"%s","n":%d}' % (target.encode(), self.count()),
                       b"Cache-Control: public, max-age=60\r\n")
            return True
        return Upstream._answer(self, c, method, target, lines, digest, blen)


def served(up, prefix):
    """Requests the upstream got under `prefix` (health checks aside)."""
    with up.lock:
        return sum(1 for _, target, _, _ in up.requests if target.startswith(prefix))


def localise(config, d, ports, redis_port):
    """The example's addresses and files, pointed at this test's upstreams, Redis and files."""
    for ip, port in ports.items():
        assert ip + ":8080" in config, ip
        config = config.replace(ip + ":8080", "127.0.0.1:%d" % port)
    for old, new in (("10.0.0.20:6379", "127.0.0.1:%d" % redis_port),
                     ("127.0.0.1:9901", "127.0.0.1:0"),
                     ("/etc/keel/schemas/order.json", d + "/order.json"),
                     ("/etc/keel/api-keys", d + "/api-keys")):
        assert old in config, old
        config = config.replace(old, new)
    return config


def test_example_config():
    config, schema, keys = example_blocks()
    json.loads(schema)  # the schema block is JSON
    key_lines = [l.split() for l in keys.splitlines() if l.strip() and not l.startswith("#")]
    assert key_lines and all(len(l) == 2 for l in key_lines), keys  # "TENANT KEY"
    key = key_lines[0][1]
    d = tempfile.mkdtemp(prefix="keel-gwdoc-")
    with open(d + "/order.json", "w") as f:
        f.write(schema)
    with open(d + "/api-keys", "w") as f:
        f.write(keys)
    orders, catalog = Upstream("orders"), CatalogUpstream("catalog")
    rd = Redis()
    try:
        ports = {"10.0.1.11": orders.port, "10.0.1.12": orders.port,
                 "10.0.2.11": catalog.port, "10.0.2.12": catalog.port}
        text = localise(config, d, ports, rd.port)
        path = d + "/keel.yaml"
        with open(path, "w") as f:
            f.write(text)
        # The documented file itself (real paths aside) passes check-config.
        p = subprocess.run([KEEL, "check-config", "-c", path], capture_output=True, text=True,
                           timeout=10)
        assert p.returncode == 0 and "ok" in p.stdout, (p.stdout, p.stderr)
        assert "(4 gateway routes)" in p.stdout, p.stdout

        with Keel(config=text) as k:
            # create-order: validated, then proxied; a bad body never reaches the upstream
            good = '{"sku":"A-1","qty":2}'
            r, _ = request(k, post("/v1/orders", good, extra="X-Tenant: acme\r\n"))
            assert r.status == 200 and r.json()["upstream"] == "orders", r
            r, _ = request(k, post("/v1/orders", '{"sku":"A-1","qty":0}', extra="X-Tenant: acme\r\n"))
            assert r.status == 422, r
            e = r.json()
            assert e["path"] == "/qty" and e["keyword"] == "minimum", e
            r, _ = request(k, get("/v1/orders"))
            assert r.status == 405 and r.header("allow") == "POST", r
            assert served(orders, "/v1/orders") == 1, orders.requests  # not /healthz checks

            # partner-api: 401 without a key; with one, through Redis, with RateLimit headers
            r, _ = request(k, get("/partner/v1/invoices"))
            assert r.status == 401 and r.header("www-authenticate") == 'Bearer realm="keel"', r
            r, _ = request(k, get("/partner/v1/invoices", extra="Authorization: Bearer %s\r\n" % key))
            assert r.status == 200 and r.json()["target"] == "/partner/v1/invoices", r
            assert r.header("ratelimit-limit") == "200", r

            # catalog: the second GET is a cache hit, and so is a HEAD
            r1, _ = request(k, get("/v1/catalog/items/42"))
            assert r1.status == 200 and r1.header("x-cache") == "MISS", r1
            r2, _ = request(k, get("/v1/catalog/items/42"))
            assert r2.header("x-cache") == "HIT" and r2.body == r1.body, r2
            assert r2.header("age") is not None, r2
            r, _ = request(k, b"HEAD /v1/catalog/items/42 HTTP/1.1\r\nHost: x\r\n\r\n",
                           head_request=True)
            assert r.status == 200 and r.header("x-cache") == "HIT", r
            assert served(catalog, "/v1/catalog/") == 1, catalog.requests

            # the built-in handler, and keel's own endpoints before gateway routes
            r, _ = request(k, post("/debug/echo", '{"a": [1, 2]}'))
            assert r.status == 200 and r.body == b'{"a":[1,2]}', r
            assert request(k, get("/readyz"))[0].status == 200
            r, _ = request(k, get("/elsewhere"))
            assert r.status == 404 and r.json() == {"error": "not found", "path": "/elsewhere"}, r

            # POST /-/reload on the admin listener answers as documented
            assert k.admin_port, k.lines
            s = socket.create_connection(("127.0.0.1", k.admin_port), timeout=10)
            s.sendall(b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            r = Reader(s).response()
            s.close()
            assert r.status == 200 and r.json() == {"reloaded": True, "routes": 4,
                                                    "upstreams": 2}, r
    finally:
        rd.stop()
        orders.close()
        catalog.close()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    Suite().run(globals())
