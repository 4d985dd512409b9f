"""test_cpus.py - `workers: 0` follows the CPU affinity and the cgroup CPU limit; keel raises its
open-files limit. Against the real binary: the "listening" line says how many workers started."""
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Keel, Suite  # noqa: E402


def workers_started(env=None):
    with Keel(env=env) as k:
        lines = [l for l in k.logs() if l.get("msg") == "listening"]
        assert lines, k.logs()
        return lines[0]["workers"], k


def test_affinity_bounds_the_workers():
    saved = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(saved)})  # keel inherits it
        n, _ = workers_started()
        assert n == 1, "workers: 0 under a one-CPU affinity started %d workers" % n
    finally:
        os.sched_setaffinity(0, saved)
    n, _ = workers_started()
    assert n == len(saved), "workers: 0 started %d workers on %d CPUs" % (n, len(saved))
    n, _ = workers_started({"KEEL_WORKERS": "3"})
    assert n == 3, "an explicit worker count is taken as is"


def cgroup_dir():
    """A fresh child cgroup with a CPU quota controller we may write, and its flavour; or None."""
    v1 = "/sys/fs/cgroup/cpu"
    if os.path.exists(os.path.join(v1, "cpu.cfs_quota_us")):
        d = os.path.join(v1, "keel-test-%d" % os.getpid())
    elif os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        own = open("/proc/self/cgroup").read().split("0::", 1)[1].strip()
        d = os.path.join("/sys/fs/cgroup" + own.rstrip("/"), "..", "keel-test-%d" % os.getpid())
    else:
        return None, None
    try:
        os.mkdir(d)
    except OSError:
        return None, None
    v2 = os.path.exists(os.path.join(d, "cpu.max"))
    if not v2 and not os.path.exists(os.path.join(d, "cpu.cfs_quota_us")):
        os.rmdir(d)
        return None, None
    return d, "v2" if v2 else "v1"


def test_cgroup_cpu_limit_bounds_the_workers():
    if len(os.sched_getaffinity(0)) < 2:
        print("skip: one CPU, a limit of one cannot lower the count")
        return
    d, flavour = cgroup_dir()
    if not d:
        print("skip: no writable cgroup with a CPU controller here (run as root on cgroup v1 or "
              "a delegated v2 subtree)")
        return
    home = [l.split(":", 2)[2] for l in open("/proc/self/cgroup").read().splitlines()
            if (flavour == "v2" and l.startswith("0::")) or (flavour == "v1" and "cpu" in l.split(":")[1].split(","))][0]
    parent = os.path.dirname(d) if flavour == "v2" else "/sys/fs/cgroup/cpu" + home.rstrip("/")
    try:
        if flavour == "v2":
            open(os.path.join(d, "cpu.max"), "w").write("50000 100000")
        else:
            open(os.path.join(d, "cpu.cfs_quota_us"), "w").write("50000")
        open(os.path.join(d, "cgroup.procs"), "w").write(str(os.getpid()))  # keel starts inside
        try:
            n, _ = workers_started()
        finally:
            open(os.path.join(parent, "cgroup.procs"), "w").write(str(os.getpid()))
        assert n == 1, "a half-CPU cgroup (%s) limit started %d workers" % (flavour, n)
    finally:
        os.rmdir(d)


def test_open_files_limit_raised_and_warned():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low_hard = min(hard, 4096) if hard != resource.RLIM_INFINITY else 4096
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, low_hard))  # this process only, to its end
    with Keel(env={"KEEL_MAX_CONNECTIONS": "10000"}) as k:
        limits = open("/proc/%d/limits" % k.proc.pid).read()
        row = [l for l in limits.splitlines() if l.startswith("Max open files")][0].split()
        assert row[3] == str(low_hard) and row[4] == str(low_hard), row
        warn = [l for l in k.logs() if "open-files limit" in l.get("msg", "")]
        assert warn and warn[0]["limit"] == str(low_hard), k.logs()
    with Keel(env={"KEEL_MAX_CONNECTIONS": "100"}) as k:
        assert not [l for l in k.logs() if "open-files limit" in l.get("msg", "")]


if __name__ == "__main__":
    Suite().run(globals())
