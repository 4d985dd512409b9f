"""kafka.py - a Kafka-protocol test cluster (build/tools/kafka_mock, librdkafka's mock) and a kcat reader.

Import it from integration tests (it is not a test itself):

    with MockCluster(brokers=3, partitions=4) as kc:     # started here, stopped at exit
        ... keel with KEEL_KAFKA_BROKERS=kc.bootstrap ...
        kc.command("down -1")                            # every broker refuses connections
        msgs = kc.consume("otlp_logs", want=100)         # read back with kcat, an independent client

Each message is a dict: key (bytes or None), value (bytes), headers (dict), partition.
"""
import os
import subprocess
import time

from harness import ROOT

TOOLS = os.environ.get("KEEL_TOOLS", os.path.join(ROOT, "build", "tools"))
TOPICS = ("otlp_logs", "otlp_spans", "otlp_metrics")


class MockCluster:
    def __init__(self, brokers=3, partitions=4, topics=TOPICS):
        self.args = [os.path.join(TOOLS, "kafka_mock"), "--brokers", str(brokers),
                     "--partitions", str(partitions), "--topics", ",".join(topics)]
        self.bootstrap = None

    def __enter__(self):
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        line = self.proc.stdout.readline().strip()
        assert line.startswith("BOOTSTRAP "), "kafka_mock did not start: %r" % line
        self.bootstrap = line.split(" ", 1)[1]
        return self

    def __exit__(self, *exc):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return False

    def command(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer == "OK", "kafka_mock %r: %r" % (cmd, answer)

    def read_all(self, topic):
        """Every message in the topic now (kcat: from the beginning of each partition to its end)."""
        fmt = "%K|%S|%p|%h|%k%s"
        p = subprocess.run(["kcat", "-b", self.bootstrap, "-C", "-t", topic, "-o", "beginning",
                            "-e", "-q", "-f", fmt], capture_output=True, timeout=60)
        assert p.returncode == 0, "kcat: %r" % p.stderr[-500:]
        return parse(p.stdout)

    def consume(self, topic, want, timeout=30):
        """Reads until at least `want` messages are there (or the timeout); returns them all."""
        deadline = time.time() + timeout
        while True:
            msgs = self.read_all(topic)
            if len(msgs) >= want or time.time() > deadline:
                return msgs
            time.sleep(0.3)


def parse(out):
    """Splits kcat output of the format %K|%S|%p|%h|%k%s (lengths first: binary-safe)."""
    msgs, i = [], 0
    while i < len(out):
        j = out.index(b"|", i)
        klen = int(out[i:j])
        k = out.index(b"|", j + 1)
        vlen = int(out[j + 1:k])
        m = out.index(b"|", k + 1)
        part = int(out[k + 1:m])
        n = out.index(b"|", m + 1)
        hdr = out[m + 1:n].decode()
        i = n + 1
        key = None
        if klen >= 0:
            key, i = out[i:i + klen], i + klen
        val, i = out[i:i + max(vlen, 0)], i + max(vlen, 0)
        headers = dict(h.split("=", 1) for h in hdr.split(",") if "=" in h)
        msgs.append({"key": key, "value": val, "headers": headers, "partition": part})
    return msgs
