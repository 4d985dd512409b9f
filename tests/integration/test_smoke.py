"""test_smoke.py - the README's first steps: hello, echo, probes, 404 and 405 on the real binary."""
from harness import Keel, Suite, request, get, post


def test_hello():
    with Keel() as k:
        r, _ = request(k, get("/"))
        assert r.status == 200 and r.body == b"Hello, cloud native!", r
        assert r.header("content-type").startswith("text/plain")
        assert r.header("date") and r.header("content-length") == "20"


def test_echo_roundtrip():
    with Keel() as k:
        r, _ = request(k, post("/echo", '{"a":[1,2.5,"x"],"b":{"c":null}}'))
        assert r.status == 200 and r.body == b'{"a":[1,2.5,"x"],"b":{"c":null}}', r
        assert r.header("content-type") == "application/json"


if __name__ == "__main__":
    Suite().run(globals())
