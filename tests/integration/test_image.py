"""test_image.py - the container image's steps without an OCI builder, and the systemd unit.

deploy/rootfs.sh (the script the Dockerfile's final stage is made of) fills a temp dir; keel runs
from it as 65532:65532 with the root mounted read-only and only /var/lib/keel writable (a mount
namespace + chroot, as a container runtime would), seccomp on from the image's keel.yaml: it must
serve /readyz, take an OTLP request into /var/lib/keel and stop cleanly. The tree is < 30 MB and
holds every library keel dlopen()s. deploy/Dockerfile must keep using that script and the
contract's user, entrypoint and command. deploy/systemd/keel.service: systemd-analyze verify,
TimeoutStopSec above the drain settings of deploy/keel.yaml, ExecStart path."""
import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import otlp_gen as g
from harness import ROOT, KEEL, Keel, Suite, get, request

DEPLOY = os.path.join(ROOT, "deploy")
UID = 65532
MAX_BYTES = 30 * 1000 * 1000
# The sanitizer build: LeakSanitizer needs /proc at exit, which a bare chroot lacks.
ASAN = "-fsanitize=address" in os.environ.get("KEEL_LINK_FLAGS", "")


def tree_bytes(d):
    total = 0
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.lstat(p).st_size
    return total


def dlopened_sonames():
    names = set()
    for src in glob.glob(os.path.join(ROOT, "src", "**", "*.c"), recursive=True):
        with open(src, encoding="utf-8") as f:
            names.update(re.findall(r'dlopen\("([^"]+)"', f.read()))
    return names


def build_rootfs(dest):
    p = subprocess.run([os.path.join(DEPLOY, "rootfs.sh"), KEEL, dest], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p


def test_rootfs_contents_and_size():
    d = tempfile.mkdtemp(prefix="keel-rootfs-")
    try:
        root = d + "/root"
        build_rootfs(root)
        size = tree_bytes(root)
        print("rootfs: %.1f MB" % (size / 1e6))
        assert size < MAX_BYTES, "the image tree is %d bytes (target < 30 MB)" % size
        names = dlopened_sonames()
        assert {"libssl.so.3", "librdkafka.so.1", "libhiredis.so.0.14"} <= names, names
        present = {os.path.basename(p) for p in glob.glob(root + "/**/*.so*", recursive=True)}
        missing = names - present
        assert not missing, "dlopen()ed by keel but not in the rootfs: %s" % missing
        with open(root + "/etc/passwd") as f:
            assert "keel:x:%d:%d:" % (UID, UID) in f.read()
        with open(root + "/etc/group") as f:
            assert "keel:x:%d:" % UID in f.read()
        assert os.path.getsize(root + "/etc/ssl/certs/ca-certificates.crt") > 1000
        with open(root + "/etc/keel/keel.yaml") as a, open(DEPLOY + "/keel.yaml") as b:
            assert a.read() == b.read()
        assert os.stat(root + "/var/lib/keel").st_uid == (UID if os.geteuid() == 0 else os.geteuid())
        # nothing else: the binary, libraries, /etc files, the empty data and tmp directories
        for p in glob.glob(root + "/**", recursive=True):
            rel = os.path.relpath(p, root)
            assert rel == "." or rel.split("/")[0] in ("usr", "lib", "lib64", "etc", "var", "tmp"), rel
        # the binary runs from the tree's own libraries only (not the sanitizer build: with no
        # /proc in a bare chroot, LSan fails at exit)
        p = subprocess.run(["chroot", root, "/usr/bin/keel", "version"], capture_output=True,
                           text=True, timeout=30) if os.geteuid() == 0 and not ASAN else None
        if p is not None:
            assert p.returncode == 0 and p.stdout.startswith("keel 0.1.0"), p
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_dockerfile_uses_the_script_and_the_contract():
    with open(DEPLOY + "/Dockerfile") as f:
        text = f.read()
    lines = [x.strip() for x in text.splitlines() if x.strip() and not x.startswith("#")]
    froms = [x for x in lines if x.startswith("FROM ")]
    assert froms[0].startswith("FROM debian:12") and froms[-1] == "FROM scratch", froms
    assert "deploy/rootfs.sh /build/keel /rootfs" in text
    assert "-DCMAKE_BUILD_TYPE=Release" in text
    assert "USER 65532:65532" in lines
    assert 'ENTRYPOINT ["/usr/bin/keel"]' in lines
    assert 'CMD ["serve", "-c", "/etc/keel/keel.yaml"]' in lines
    assert any(x.startswith("VOLUME") and "/var/lib/keel" in x for x in lines)
    # the build stage installs every -dev package scripts/deps.sh lists for the libraries
    with open(os.path.join(ROOT, "scripts", "deps.sh")) as f:
        deps = f.read()
    for pkg in ("libyaml-dev", "zlib1g-dev", "librdkafka-dev", "libnghttp2-dev", "libssl-dev",
                "libhiredis-dev", "libseccomp-dev"):
        assert pkg in deps and pkg in text, pkg


def contract_config():
    import yaml  # python3-yaml (scripts/deps.sh)
    with open(DEPLOY + "/keel.yaml") as f:
        return yaml.safe_load(f)


def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", str(text))
    assert m, text
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def test_image_config_is_the_contract():
    c = contract_config()
    assert c["listen"] == "0.0.0.0:8080"
    assert c["otlp"]["http_listen"] == "0.0.0.0:4318" and c["otlp"]["grpc_listen"] == "0.0.0.0:4317"
    assert c["data_dir"] == "/var/lib/keel"
    assert c["security"]["seccomp"] in ("on", True)  # YAML 1.1 reads a bare on as true
    assert seconds(c["shutdown"]["drain_delay"]) == 5 and seconds(c["shutdown"]["drain_timeout"]) == 20
    p = subprocess.run([KEEL, "check-config", "-c", DEPLOY + "/keel.yaml"], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr


def can_unshare_mounts():
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("chroot"):
        return "needs root, unshare(1) and chroot(1) (CI runs as root)"
    p = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    if p.returncode != 0:
        return "unshare -m is not permitted here: %s" % p.stderr.strip()
    return None


def test_keel_runs_from_the_rootfs_read_only_as_65532():
    why = can_unshare_mounts()
    if why:
        print("skip: " + why)
        return
    d = tempfile.mkdtemp(prefix="keel-rootfs-")
    try:
        root, data = d + "/root", d + "/data"
        build_rootfs(root)
        for m in ("proc", "dev"):
            os.makedirs(root + "/" + m, exist_ok=True)
        os.mkdir(data)
        os.chown(data, UID, UID)
        # What a runtime does: the image read-only, a volume on /var/lib/keel, then the user.
        script = ('mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && '
                  'mount --bind "$1" "$0/var/lib/keel" && mount -t proc proc "$0/proc" && '
                  'exec chroot --userspec=%d:%d "$0" /usr/bin/keel serve -c /etc/keel/keel.yaml'
                  % (UID, UID))
        env = {"KEEL_LISTEN": "127.0.0.1:0", "KEEL_DATA_DIR": "/var/lib/keel",
               "KEEL_SHUTDOWN_DRAIN_DELAY": "0s"}  # ports: the harness's ephemeral ones
        k = Keel("-m", "sh", "-c", script, root, data, binary=shutil.which("unshare"), env=env)
        with k:
            with open("/proc/%d/status" % k.proc.pid) as f:
                st = f.read()
            assert re.search(r"^Uid:\s+%d\s+%d\s+%d\s+%d$" % ((UID,) * 4), st, re.M), st
            assert re.search(r"^Seccomp:\s+2$", st, re.M), "seccomp is on in the image's config"
            r, _ = request(k, get("/readyz"))
            assert r.status == 200, r
            import http.client
            c = http.client.HTTPConnection("127.0.0.1", k.otlp_port, timeout=30)
            c.request("POST", "/v1/logs", body=g.logs_request(range(10)),
                      headers={"Content-Type": "application/x-protobuf"})
            assert c.getresponse().status == 200
            c.close()
            # the root is read-only for keel: nothing but the volume was written
            with open("/proc/%d/mountinfo" % k.proc.pid) as f:
                mounts = f.read()
            roots = [x.split() for x in mounts.splitlines() if x.split()[4] == "/"]
            assert roots and all(f[5].split(",")[0] == "ro" for f in roots), roots
            k.signal(signal.SIGTERM)
            assert k.proc.wait(30) == 0, k.lines[-10:]
        made = [os.path.join(r, f) for r, _, fs in os.walk(data) for f in fs]
        assert any("/buffer/" in p for p in made), made
        assert any("/out/logs-" in p for p in made), made  # the file sink delivered them
        assert all(os.stat(p).st_uid == UID for p in made)
        assert not any(o.get("level") == "error" for o in k.logs()), k.lines
    finally:
        subprocess.run(["rm", "-rf", d])


# ---- systemd -------------------------------------------------------------------------------

UNIT = os.path.join(DEPLOY, "systemd", "keel.service")


def unit_settings():
    out = {}
    with open(UNIT) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", "[")) and "=" in line:
                k, v = line.split("=", 1)
                out.setdefault(k, []).append(v)
    return out


def test_systemd_unit_invariants():
    u = unit_settings()
    assert u["ExecStart"] == ["/usr/bin/keel serve -c /etc/keel/keel.yaml"], u["ExecStart"]
    assert u["Type"][0] in ("simple", "exec"), "keel has no sd_notify: Type=notify would hang"
    assert u["KillSignal"] == ["SIGTERM"] and u["Restart"] == ["on-failure"]
    s = contract_config()["shutdown"]
    need = seconds(s["drain_delay"]) + seconds(s["drain_timeout"]) + seconds(s.get("flush_timeout", "5s"))
    assert seconds(u["TimeoutStopSec"][0]) > need, (u["TimeoutStopSec"], need)
    assert u["StateDirectory"] == ["keel"] and contract_config()["data_dir"] == "/var/lib/keel"
    for k, v in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                 ("PrivateTmp", "yes"), ("PrivateDevices", "yes"), ("LockPersonality", "yes"),
                 ("MemoryDenyWriteExecute", "yes")):
        assert u.get(k) == [v], (k, u.get(k))
    assert "@system-service" in u["SystemCallFilter"]
    assert u["CapabilityBoundingSet"] == [""]  # no port below 1024 in deploy/keel.yaml
    assert int(u["LimitNOFILE"][0]) >= 65536
    if not shutil.which("systemd-analyze"):
        print("skip: systemd-analyze verify (install systemd)")
        return
    d = tempfile.mkdtemp(prefix="keel-unit-")
    try:  # verify checks that ExecStart's binary exists: point it at this build's keel
        with open(UNIT) as f:
            text = f.read().replace("/usr/bin/keel", KEEL)
        with open(d + "/keel.service", "w") as f:
            f.write(text)
        p = subprocess.run(["systemd-analyze", "verify", d + "/keel.service"], capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0 and "keel.service" not in p.stderr, p.stderr
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    Suite().run(globals())
