#!/usr/bin/env python3
"""run.py - the benchmark runner: keel beside Go net/http, Rust hyper and nginx, written to docs/benchmarks.md.

Usage: bench/run.py [--quick | --smoke] [--out DIR] [--servers keel,rust,go,nginx] [--from-json FILE]
       bench/run.py --pipeline-peers-only [--pipeline-seconds S] [--pipeline-reps N] [--pipeline-signals logs,traces]
  (default)  the full run: closed-loop max throughput, constant rates until a server cannot hold
             the rate, idle/peak RSS, binary sizes; pinned (server CPU 0, generator CPU 1, one
             worker) and unpinned (default workers); every measurement 3 times, median reported.
  --quick    about a minute: fewer rates, shorter runs, one repetition.
  --smoke    a few seconds, keel only: checks that the harness works (CI runs it; no timings asserted).
  --from-json FILE   no measuring: render benchmarks.md and the plots again from a recorded run.
  --pipeline-peers-only   only the Go and Rust OTLP pipeline peers (decode + split + re-encode,
             pinned to CPU 1 with one thread, and unpinned with two): their numbers as JSON on
             stdout (see pipeline_peers()); nothing is written.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("KEEL_BENCH_BUILD", os.path.join(ROOT, "build"))
PEERS = os.path.join(BUILD, "bench", "peers")
BODY = os.path.join(ROOT, "bench", "peers", "body.json")
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited with %s" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not open port %d" % port)


# ---- the servers ------------------------------------------------------------------------------

# keel's observability variants (issue 4): the default "keel" records metrics and does not trace.
OBS_VARIANTS = ("keel-bare", "keel-obs")


def server_cmd(name, port, workers, tmp, sink_port=None):
    """(argv, env, binary path) for a server; workers None means its default."""
    env = dict(os.environ)
    for k in list(env):
        if k.startswith(("KEEL_", "OTEL_")):
            del env[k]
    if name.startswith("keel"):
        argv = [os.path.join(BUILD, "keel"), "serve", "--listen", "127.0.0.1:%d" % port]
        if workers:
            argv += ["--workers", str(workers)]
        env["KEEL_LOG_ACCESS"] = "off"  # the peers log nothing either
        # The pipeline runs as shipped (idle here), on private ports and data.
        env.update({"KEEL_OTLP_HTTP_LISTEN": "127.0.0.1:0", "KEEL_OTLP_GRPC_LISTEN": "127.0.0.1:0",
                    "KEEL_DATA_DIR": os.path.join(tmp, "keel-data-%d" % port)})
        if name == "keel-bare":
            env["KEEL_METRICS_ENABLED"] = "off"
        elif name == "keel-obs":  # metrics on (the default) and 10% of traces to an OTLP sink
            env["KEEL_TRACING_ENDPOINT"] = "http://127.0.0.1:%d" % sink_port
            env["KEEL_TRACING_SAMPLE_RATIO"] = "0.1"
        return argv, env, argv[0]
    if name in ("go", "rust"):
        env["PORT"] = str(port)
        if workers:
            env["GOMAXPROCS" if name == "go" else "WORKERS"] = str(workers)
        b = os.path.join(PEERS, name + "-echo")
        return [b], env, b
    if name == "nginx":
        # run.sh renders nginx.conf.in (fixed /echo answer) into a scratch prefix and execs nginx.
        prefix = os.path.join(tmp, "nginx-%d" % port)
        b = shutil.which("nginx") or "/usr/sbin/nginx"
        run_sh = os.path.join(ROOT, "bench", "peers", "nginx", "run.sh")
        return [run_sh, str(port), str(workers or "auto"), prefix], env, b
    raise ValueError(name)


class Server:
    def __init__(self, name, workers, cpus, tmp, sink_port=None):
        self.port = free_port()
        argv, env, self.binary = server_cmd(name, self.port, workers, tmp, sink_port)
        if cpus:
            argv = ["taskset", "-c", cpus] + argv
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.port, self.proc)

    def pids(self):
        """The server's processes (nginx has a master and workers)."""
        out = [self.proc.pid]
        try:
            for d in os.listdir("/proc"):
                if d.isdigit():
                    with open("/proc/%s/stat" % d) as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    if int(fields[1]) == self.proc.pid:
                        out.append(int(d))
        except OSError:
            pass
        return out

    def cpu_ticks(self):
        total = 0
        for pid in self.pids():
            try:
                with open("/proc/%d/stat" % pid) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except OSError:
                pass
        return total

    def status_kb(self, field):
        total = 0
        for pid in self.pids():
            try:
                with open("/proc/%d/status" % pid) as f:
                    for line in f:
                        if line.startswith(field + ":"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# ---- the machine --------------------------------------------------------------------------------

def cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v), idle


def machine_busy(seconds=1.0):
    """Fraction of all CPUs busy over `seconds` (before a run, nothing of ours is running)."""
    t0, i0 = cpu_times()
    time.sleep(seconds)
    t1, i1 = cpu_times()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def stripped_size(path):
    with tempfile.NamedTemporaryFile() as t:
        subprocess.run(["strip", "-o", t.name, path], check=True)
        return os.path.getsize(t.name)


# ---- one measurement ---------------------------------------------------------------------------

def load_argv(port, path, rate, seconds, warmup, conns, gen_cpu):
    """The keel-load command line for one measurement (POST of the shared body for /echo)."""
    argv = [os.path.join(BUILD, "keel-load"), "http://127.0.0.1:%d%s" % (port, path),
            "-c", str(conns), "-r", str(rate), "-d", str(seconds), "-w", str(warmup), "--json"]
    if path == "/echo":
        argv += ["-m", "POST", "-H", "Content-Type: application/json", "--body-file", BODY]
    return (["taskset", "-c", gen_cpu] if gen_cpu else []) + argv


def load(server, path, rate, seconds, warmup, conns, gen_cpu):
    """Runs keel-load once; returns its JSON plus the server's CPU % and the machine's other load."""
    argv = load_argv(server.port, path, rate, seconds, warmup, conns, gen_cpu)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(warmup)
    c0, (t0, i0), w0 = server.cpu_ticks(), cpu_times(), time.time()
    gen0 = proc_ticks(p.pid)
    time.sleep(max(0.1, seconds - 0.2))
    c1, (t1, i1), w1 = server.cpu_ticks(), cpu_times(), time.time()
    gen1 = proc_ticks(p.pid)
    out, err = p.communicate(timeout=seconds + warmup + 60)
    if p.returncode not in (0, 1) or not out.strip():
        raise RuntimeError("keel-load failed (%s): %s" % (p.returncode, err[-500:]))
    r = json.loads(out)
    wall = w1 - w0
    r["server_cpu_pct"] = 100.0 * (c1 - c0) / CLK_TCK / wall
    busy_all = (t1 - t0) - (i1 - i0)  # ticks of all CPUs
    ours = (c1 - c0) + (gen1 - gen0)
    r["other_load_pct"] = max(0.0, 100.0 * (busy_all - ours) / CLK_TCK / wall)
    r["peak_rss_kb"] = server.status_kb("VmHWM")
    return r


def proc_ticks(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


def measured(server, path, rate, cfg, gen_cpu):
    """One run, repeated (up to 4 times) while it ran beside other load on the machine."""
    for tries in range(5):
        r = load(server, path, rate, cfg["seconds"], cfg["warmup"], cfg["conns"], gen_cpu)
        if r["other_load_pct"] <= cfg["max_other"]:
            break
        log("  discarded: other load %.0f%% of a core" % r["other_load_pct"])
        time.sleep(2)
    else:
        raise SystemExit("refusing to record: the machine stays busy with something else")
    return r


def med(runs, key, sub=None):
    vals = [(r[key][sub] if sub else r[key]) for r in runs]
    return statistics.median(vals), min(vals), max(vals)


# ---- the whole run -----------------------------------------------------------------------------

def run_mode(cfg, names, mode, res, tmp):
    """All servers run at once (idle ones cost nothing) and take turns: every measurement point is
    taken for each server in turn, repetition by repetition, so the shared machine's slow and fast
    moments fall on all of them alike and the ratios compare like with like."""
    pinned = mode == "pinned"
    gen_cpu = "1" if pinned and NCPU > 1 else None
    if not pinned:
        names = [n for n in names if n not in OBS_VARIANTS]  # their comparison is pinned only
    srvs, sink = {}, None
    try:
        if "keel-obs" in names:
            # The OTLP endpoint of keel-obs: keel-load's test server answers every POST 200 at once
            # (it reads and drops the bodies), on the generator's CPU, away from the servers'.
            sink_port = free_port()
            argv = [os.path.join(BUILD, "bench", "keel-load-testserver"), str(sink_port), "0"]
            sink = subprocess.Popen((["taskset", "-c", gen_cpu] if gen_cpu else []) + argv,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(sink_port, sink)
        for name in names:
            srvs[name] = Server(name, 1 if pinned else None, "0" if pinned else None, tmp,
                                sink_port if name == "keel-obs" else None)
        time.sleep(0.5)
        for name, srv in srvs.items():
            res[name].setdefault("binary_bytes", stripped_size(srv.binary))
            res[name][mode] = {"idle_rss_kb": srv.status_kb("VmRSS"),
                               "max": {p: [] for p in ("/echo", "/")}, "rates": []}
        for path in ("/echo", "/"):
            for rep in range(cfg["reps"]):
                for name, srv in srvs.items():
                    log("%s %s max %s (%d/%d)" % (name, mode, path, rep + 1, cfg["reps"]))
                    res[name][mode]["max"][path].append(measured(srv, path, 0, cfg, gen_cpu))
        holding = list(srvs)
        for rate in (cfg["rates"] if pinned else cfg["unpinned_rates"]):
            if not holding:
                break
            if rate != 10000:  # the observability variants are compared at 10k req/s only
                holding = [n for n in holding if n not in OBS_VARIANTS]
            runs = {name: [] for name in holding}
            for rep in range(cfg["reps"]):
                for name in holding:
                    log("%s %s %d/s (%d/%d)" % (name, mode, rate, rep + 1, cfg["reps"]))
                    runs[name].append(measured(srvs[name], "/echo", rate, cfg, gen_cpu))
            for name in list(holding):
                res[name][mode]["rates"].append({"rate": rate, "runs": runs[name]})
                held = med(runs[name], "achieved_rate")[0] >= 0.97 * rate
                if not held or med(runs[name], "latency_us", "p99")[0] > 1e6:
                    holding.remove(name)  # past its capacity: higher rates only pile up
        for name, srv in srvs.items():
            res[name][mode]["peak_rss_kb"] = srv.status_kb("VmHWM")
    finally:
        for srv in srvs.values():
            srv.stop()
        if sink:
            sink.kill()
            sink.wait()


def run(cfg, servers):
    results = {"config": cfg, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               "servers": {}}
    busy = machine_busy(2)
    results["busy_before_pct"] = 100 * busy
    if busy > 0.25 and not cfg["smoke"]:
        log("machine busy (%.0f%% of all CPUs) before the run: waiting" % (100 * busy))
        for _ in range(30):
            time.sleep(5)
            busy = machine_busy(2)
            if busy <= 0.25:
                break
        else:
            raise SystemExit("refusing to benchmark: the machine stays busy (%.0f%%)" % (100 * busy))
    tmp = tempfile.mkdtemp(prefix="keel-bench-")
    try:
        for name in servers:
            results["servers"][name] = {}
        for mode in cfg["modes"]:
            run_mode(cfg, servers, mode, results["servers"], tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return results


def profile(rate, seconds, tmp):
    """Where keel's time goes at `rate` req/s, pinned: perf's top symbols and its DSO split."""
    if not shutil.which("perf"):
        return None
    srv = Server("keel", 1, "0", tmp)
    data = os.path.join(tmp, "perf.data")
    try:
        argv = load_argv(srv.port, "/echo", rate, seconds + 2, 1, 64, "1" if NCPU > 1 else None)
        gen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)
        rec = subprocess.run(["perf", "record", "-q", "-o", data, "-p", str(srv.proc.pid), "--",
                              "sleep", str(seconds)], capture_output=True, text=True)
        gen.wait(seconds + 30)
        if rec.returncode != 0:
            log("perf record failed: " + rec.stderr.strip()[-200:])
            return None
        def top(sort, n):
            p = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                                "--sort", sort, "--percent-limit", "0.5"],
                               capture_output=True, text=True)
            rows = [l.rstrip() for l in p.stdout.splitlines() if l.strip() and not l.startswith("#")]
            return rows[:n]
        return {"rate": rate, "dso": top("dso", 8), "sym": top("sym", 25)}
    finally:
        srv.stop()


def versions():
    def first_line(argv):
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (p.stdout or p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "not found"
    return {
        "keel": first_line([os.path.join(BUILD, "keel"), "version"]),
        "go": first_line(["go", "version"]),
        "rustc": first_line(["/usr/bin/rustc", "--version"]),
        "nginx": first_line(["nginx", "-v"]),
        "kernel": platform.release(),
        "cpu": cpu_model(),
    }


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ---- the report --------------------------------------------------------------------------------

LABEL = {"keel": "keel", "rust": "Rust hyper", "go": "Go net/http", "nginx": "nginx (fixed)",
         "keel-bare": "keel, metrics and tracing off", "keel-obs": "keel, metrics + tracing 10%"}


def fmt_range(t, scale=1.0, digits=0):
    m, lo, hi = (x * scale for x in t)
    f = "%%.%df" % digits
    return (f % m) + " (" + (f % lo) + ".." + (f % hi) + ")"


def report(results, out_md, img_dir, cmdline):
    servers = list(results["servers"])
    v = results["versions"]
    L = []
    L.append("# keel benchmarks\n")
    L.append("Written by `bench/run.py` (%s). Do not edit by hand: run `make bench` again.\n"
             % cmdline)
    L.append("- Date: %s to %s" % (results["started"], results["finished"]))
    L.append("- Machine: %s, %d CPUs, kernel %s; load on the machine before the run: %.0f%%"
             % (v["cpu"], NCPU, v["kernel"], results["busy_before_pct"]))
    L.append("- Versions: %s; %s; %s; %s" % (v["keel"], v["go"], v["rustc"], v["nginx"]))
    c = results["config"]
    L.append("- Method: generator `build/keel-load` (open loop, latency from the intended send time, "
             "coordinated omission corrected), %d connections, %ds per measurement after %ds warm-up, "
             "%d repetitions; figures are medians with (min..max). Pinned: server on CPU 0 with one "
             "worker, generator on CPU 1. Runs beside other load over %d%% of a core are discarded "
             "and repeated (latency tails grow with any other load). Request body: bench/peers/body.json (%d bytes). keel runs with its access "
             "log off (the peers log nothing)."
             % (c["conns"], c["seconds"], c["warmup"], c["reps"], c["max_other"],
                os.path.getsize(BODY)))
    L.append("")
    for mode in c["modes"]:
        L.append("## Max throughput, closed loop, %s\n" % mode)
        L.append("| server | POST /echo req/s | GET / req/s | p99 POST (ms) | server CPU % "
                 "| POST /echo req/s per CPU-second |")
        L.append("|---|---|---|---|---|---|")
        for s in servers:
            m = results["servers"][s].get(mode)
            if not m:
                continue
            e, g = m["max"]["/echo"], m["max"]["/"]
            L.append("| %s | %s | %s | %s | %s | %.0f |" % (
                LABEL[s], fmt_range(med(e, "achieved_rate")), fmt_range(med(g, "achieved_rate")),
                fmt_range(med(e, "latency_us", "p99"), 0.001, 2),
                fmt_range(med(e, "server_cpu_pct")), per_cpu(e)))
        L.append("")
        L.append("A server below ~97% CPU in a closed loop was waiting for the generator (one core "
                 "driving one core over loopback): its req/s is the generator's limit, and req/s "
                 "per CPU-second (median over runs) is the fairer comparison.\n")
    for mode in c["modes"]:
        rows = [(s, rr) for s in servers for rr in results["servers"][s].get(mode, {}).get("rates", [])]
        if not rows:
            continue
        L.append("## Constant rate, POST /echo, %s\n" % mode)
        L.append("| server | offered req/s | achieved | p50 (ms) | p99 (ms) | p99.9 (ms) | CPU % "
                 "| peak RSS (KiB) | generator lag (ms) |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for s, rr in rows:
            runs = rr["runs"]
            L.append("| %s | %d | %s | %s | %s | %s | %s | %d | %s |" % (
                LABEL[s], rr["rate"], fmt_range(med(runs, "achieved_rate")),
                fmt_range(med(runs, "latency_us", "p50"), 0.001, 3),
                fmt_range(med(runs, "latency_us", "p99"), 0.001, 3),
                fmt_range(med(runs, "latency_us", "p999"), 0.001, 3),
                fmt_range(med(runs, "server_cpu_pct")), max(r["peak_rss_kb"] for r in runs),
                fmt_range(med(runs, "max_schedule_lag_us"), 0.001, 1)))
        L.append("")
        L.append("Generator lag: how far keel-load itself fell behind its schedule at worst in a run "
                 "(its CPU did not run it in time). Every request due in such a gap is late by up "
                 "to that much for any server, so p99.9 of about that size is this machine's "
                 "floor, not the server's.\n")
    L.append("## Size and memory\n")
    L.append("| server | stripped binary (bytes) | idle RSS (KiB) | peak RSS under load (KiB) |")
    L.append("|---|---|---|---|")
    for s in servers:
        m = results["servers"][s].get("pinned") or next(iter(results["servers"][s].values()))
        L.append("| %s | %d | %d | %d |" % (LABEL[s], results["servers"][s]["binary_bytes"],
                                          m["idle_rss_kb"], m["peak_rss_kb"]))
    L.append("")
    L.extend(obs_cost(results))
    L.extend(ratios(results))
    prof = results.get("profile")
    if prof:
        L.append("\n## Where keel's time goes at %d req/s (perf, pinned, POST /echo)\n" % prof["rate"])
        L.append("`perf record` on the keel process for 4 s of the run; share of samples by binary, "
                 "then the top symbols (`[k]` kernel, `[.]` user space):\n")
        L.append("```")
        L.extend(prof["dso"] + [""] + prof["sym"])
        L.append("```")
        share = {}
        for row in prof["dso"]:
            parts = row.split()
            if len(parts) >= 2 and parts[0].endswith("%"):
                share[parts[1]] = float(parts[0][:-1])
        L.append("\nkeel's own code is %.0f%% of these samples, libc (mostly the system-call entry "
                 "points) %.0f%%, the kernel %.0f%%: TCP over loopback, epoll, and the return from "
                 "idle (`pvm_irq_enable` on this VM: re-enabling interrupts after the context switch "
                 "into a process woken on an idle CPU). At 10k req/s every request wakes the "
                 "sleeping worker once; that wake-up and the kernel's per-request TCP work, not "
                 "request handling, are what a lower CPU share would have to remove."
                 % (share.get("keel", 0), share.get("libc.so.6", 0), share.get("[kernel.kallsyms]", 0)))
    bad = failed_requests(results)
    if bad:
        L.append("\n## Measurements with failed requests\n")
        L.append("Errors (timeouts, resets) or non-2xx answers; past a server's capacity timeouts are "
                 "expected.\n")
        L.extend("- " + b for b in bad)
    if img_dir:
        L.append("")
        for name, title in (("p99", "p99 latency vs offered rate"), ("cpu", "server CPU vs rate"),
                            ("max", "max throughput")):
            if os.path.exists(os.path.join(img_dir, "bench-%s.png" % name)):
                L.append("![%s](img/bench-%s.png)" % (title, name))
    with open(out_md, "w") as f:
        f.write("\n".join(L) + "\n")


def per_cpu(runs):
    """Median of req/s per second of server CPU (closed loop)."""
    return statistics.median(r["achieved_rate"] * 100.0 / max(1.0, r["server_cpu_pct"]) for r in runs)


def at_rate(m, rate):
    for rr in m["rates"]:
        if rr["rate"] == rate:
            return rr["runs"]
    return None


def ratios(results):
    S = results["servers"]
    L = ["## keel against the targets (issue 3)\n"]
    k = S.get("keel", {}).get("pinned")
    if not k:
        return L
    def line(ok, text, why=""):
        L.append("- %s %s" % ("MET:" if ok else "MISSED:", text) + ("" if ok or not why else ". Why: " + why))
    k10 = at_rate(k, 10000)
    kcpu = med(k["max"]["/echo"], "server_cpu_pct")[0]
    gen_bound = ("keel's CPU was %.0f%% in these runs, so it waited for the generator (one core cannot "
                 "drive more over loopback); per CPU-second keel did %.0f requests" % (kcpu, per_cpu(k["max"]["/echo"]))
                 if kcpu < 97 else "")
    cpu_why = ("about three quarters of keel's CPU at this rate is the kernel (TCP over loopback and the "
               "wake-up of an idle worker for every request), see the profile below; keel's own code "
               "is under a tenth")
    for peer in ("rust", "go", "nginx"):
        p = S.get(peer, {}).get("pinned")
        if not p:
            continue
        p10 = at_rate(p, 10000)
        if k10 and p10:
            for q in ("p99", "p999"):
                kv, pv = med(k10, "latency_us", q)[0], med(p10, "latency_us", q)[0]
                klag, plag = med(k10, "max_schedule_lag_us")[0], med(p10, "max_schedule_lag_us")[0]
                _, klo, khi = med(k10, "latency_us", q)
                _, plo, phi = med(p10, "latency_us", q)
                why = []
                if klo <= phi and plo <= khi:
                    why.append("the runs overlap (keel %.3f..%.3f ms, %s %.3f..%.3f ms)"
                               % (klo / 1000, khi / 1000, LABEL[peer], plo / 1000, phi / 1000))
                if q == "p999":
                    why.append("the generator itself fell up to %.1f ms behind its schedule in keel's "
                               "runs and %.1f ms in %s's (medians), and tails of this size follow that "
                               "lag more than the server" % (klag / 1000, plag / 1000, LABEL[peer]))
                why = "; ".join(why)
                line(kv < pv, "10k req/s %s: keel %.3f ms vs %s %.3f ms (ratio %.2f)"
                     % (q, kv / 1000, LABEL[peer], pv / 1000, kv / pv), why)
            kc, pc = med(k10, "server_cpu_pct")[0], med(p10, "server_cpu_pct")[0]
            limit = pc / 2 if peer == "rust" else pc if peer == "nginx" else None
            if limit is not None:
                line(kc <= limit, "10k req/s CPU: keel %.1f%% vs %s %.1f%% (target <= %.1f%%)"
                     % (kc, LABEL[peer], pc, limit), cpu_why)
        ke, pe = med(k["max"]["/echo"], "achieved_rate")[0], med(p["max"]["/echo"], "achieved_rate")[0]
        want = {"rust": 2.0, "go": 5.0, "nginx": 1.0}[peer]
        line(ke >= want * pe, "max POST /echo, one core: keel %.0f/s vs %s %.0f/s (ratio %.2f, target >= %.1f;"
             " per CPU-second %.0f vs %.0f, ratio %.2f)"
             % (ke, LABEL[peer], pe, ke / pe, want, per_cpu(k["max"]["/echo"]), per_cpu(p["max"]["/echo"]),
                per_cpu(k["max"]["/echo"]) / per_cpu(p["max"]["/echo"])),
             gen_bound or "per request keel used %.1f us of CPU, %s %.1f us%s; at 10k req/s (above) the "
             "kernel is three quarters of keel's CPU" % (
                 1e6 / per_cpu(k["max"]["/echo"]), LABEL[peer], 1e6 / per_cpu(p["max"]["/echo"]),
                 " (nginx answers a fixed string and never parses the body; keel parses and "
                 "re-serialises every one)" if peer == "nginx" else ""))
    k40 = at_rate(k, 40000)
    if k10 and k40:
        held = med(k40, "achieved_rate")[0] >= 0.97 * 40000
        p99_10, p99_40 = med(k10, "latency_us", "p99")[0], med(k40, "latency_us", "p99")[0]
        best = med(k40, "latency_us", "p99")[1]
        line(held and p99_40 < 2 * p99_10, "40k req/s held (%s) with p99 %.3f ms vs 2x the 10k p99 (%.3f ms)"
             % ("yes" if held else "no", p99_40 / 1000, 2 * p99_10 / 1000),
             "the best of the runs had p99 %.3f ms; the others ran beside up to %.0f%% of a core of "
             "other load and generator lag up to %.1f ms" % (best / 1000, med(k40, "other_load_pct")[2],
                                                            med(k40, "max_schedule_lag_us")[2] / 1000))
    kb = S["keel"]["binary_bytes"]
    line(kb <= 1 << 20, "stripped binary %d bytes (target <= 1 MiB)" % kb)
    line(k["idle_rss_kb"] <= 3072, "idle RSS %d KiB (target <= 3072)" % k["idle_rss_kb"])
    r = S.get("rust", {}).get("pinned")
    if r:
        line(k["peak_rss_kb"] <= r["peak_rss_kb"], "peak RSS under load %d KiB vs Rust hyper %d KiB"
             % (k["peak_rss_kb"], r["peak_rss_kb"]))
    return L


def obs_cost(results):
    """Issue 4: what metrics and 10% tracing cost, against keel with both off (pinned)."""
    S = results["servers"]
    bare, obs = (S.get(n, {}).get("pinned") for n in OBS_VARIANTS)
    if not bare or not obs:
        return []
    L = ["## The cost of observability (issue 4)\n",
         "keel three ways, side by side like the peers: metrics and tracing off "
         "(`KEEL_METRICS_ENABLED=off`); the default (metrics on, no tracing; the \"keel\" rows "
         "above); metrics on and 10% of traces exported over OTLP/HTTP to a local sink "
         "(`KEEL_TRACING_ENDPOINT`, `KEEL_TRACING_SAMPLE_RATIO=0.1`).\n",
         "| keel | max POST /echo req/s | per CPU-second | 10k req/s p99 (ms) | 10k req/s CPU % |",
         "|---|---|---|---|---|"]
    rows = [(n, S[n]["pinned"]) for n in ("keel-bare", "keel", "keel-obs") if S.get(n, {}).get("pinned")]
    for n, m in rows:
        r10 = at_rate(m, 10000)
        L.append("| %s | %s | %.0f | %s | %s |" % (
            LABEL[n], fmt_range(med(m["max"]["/echo"], "achieved_rate")), per_cpu(m["max"]["/echo"]),
            fmt_range(med(r10, "latency_us", "p99"), 0.001, 3) if r10 else "-",
            fmt_range(med(r10, "server_cpu_pct")) if r10 else "-"))
    L.append("")
    L.append("Each row does a subset of the next one's work (off, metrics, metrics + tracing), so where "
             "a row beats the one above it, the gap is this machine's run-to-run noise; the ranges "
             "(min..max of the repetitions) show how large it was in this run.\n")
    tb, to = med(bare["max"]["/echo"], "achieved_rate")[0], med(obs["max"]["/echo"], "achieved_rate")[0]
    cb, co = per_cpu(bare["max"]["/echo"]), per_cpu(obs["max"]["/echo"])
    L.append("- %s throughput cost: %.1f%% (%.0f vs %.0f req/s; per CPU-second %.1f%%), target <= 10%%"
             % ("MET:" if to >= 0.9 * tb else "MISSED:", 100 * (1 - to / tb), to, tb, 100 * (1 - co / cb)))
    b10, o10 = at_rate(bare, 10000), at_rate(obs, 10000)
    if b10 and o10:
        pb, po = med(b10, "latency_us", "p99")[0], med(o10, "latency_us", "p99")[0]
        L.append("- %s p99 cost at 10k req/s: %+.0f us (%.3f vs %.3f ms), target <= +50 us"
                 % ("MET:" if po - pb <= 50 else "MISSED:", po - pb, po / 1000, pb / 1000))
    L.append("")
    return L


def plots(results, img_dir):
    if not shutil.which("gnuplot"):
        log("gnuplot not found: no plots")
        return
    os.makedirs(img_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="keel-plot-")
    S = results["servers"]
    names = [s for s in S if S[s].get("pinned") and s not in OBS_VARIANTS]
    for s in names:
        with open(os.path.join(tmp, s + ".dat"), "w") as f:
            for rr in S[s]["pinned"]["rates"]:
                f.write("%d %f %f\n" % (rr["rate"], med(rr["runs"], "latency_us", "p99")[0] / 1000,
                                        med(rr["runs"], "server_cpu_pct")[0]))
    with open(os.path.join(tmp, "max.dat"), "w") as f:
        for i, s in enumerate(names):
            f.write("%d \"%s\" %f %f\n" % (i, LABEL[s], med(S[s]["pinned"]["max"]["/echo"], "achieved_rate")[0],
                                           med(S[s]["pinned"]["max"]["/"], "achieved_rate")[0]))
    common = "set terminal pngcairo size 900,540 noenhanced\nset grid\nset key left top\n"
    series = lambda col: ", ".join("'%s/%s.dat' using 1:%d with linespoints title '%s'"
                                   % (tmp, s, col, LABEL[s]) for s in names)
    scripts = {
        "p99": common + "set output '%s/bench-p99.png'\nset title 'POST /echo p99 latency vs offered rate (pinned, one core)'\n"
               "set xlabel 'offered req/s'\nset ylabel 'p99 ms'\nset logscale y\nplot %s\n" % (img_dir, series(2)),
        "cpu": common + "set output '%s/bench-cpu.png'\nset title 'server CPU vs offered rate (pinned, one core)'\n"
               "set xlabel 'offered req/s'\nset ylabel 'CPU %% of one core'\nplot %s\n" % (img_dir, series(3)),
        "max": common + "set output '%s/bench-max.png'\nset title 'max throughput, closed loop, one core'\n"
               "set style data histograms\nset style fill solid 0.8\nset ylabel 'req/s'\nset yrange [0:*]\n"
               "plot '%s/max.dat' using 3:xtic(2) title 'POST /echo', '' using 4 title 'GET /'\n" % (img_dir, tmp),
    }
    for name, script in scripts.items():
        subprocess.run(["gnuplot"], input=script, text=True, check=False)
    shutil.rmtree(tmp, ignore_errors=True)


# ---- pipeline peers: OTLP decode + split + re-encode into a null sink ----------------------------
# Not part of the HTTP report above: the Go and Rust reference pipelines (bench/peers/go-pipeline,
# bench/peers/rust-pipeline, built by bench/setup.sh) take one OTLP export request of 100 records,
# decode it, split it into one request per record (same resource and scope), encode each and count
# the bytes. keel's pipeline stage is to be measured on the same input and put beside them.

PIPELINE_INPUTS = {"logs": "otlp-logs-100.pb", "traces": "otlp-traces-100.pb"}


def pipeline_run(argv):
    """Runs one pipeline peer to completion: its JSON line, plus its CPU time and the machine's other load."""
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    (t0, i0), w0 = cpu_times(), time.time()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    (t1, i1), w1 = cpu_times(), time.time()
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the peer (and taskset) only: run one at a time
    if p.returncode != 0 or not p.stdout.strip():
        raise RuntimeError("%s failed (%s): %s" % (" ".join(argv), p.returncode, p.stderr[-500:]))
    r = json.loads(p.stdout.strip().splitlines()[-1])
    wall = max(1e-9, w1 - w0)
    r["cpu_s"] = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    busy_all = ((t1 - t0) - (i1 - i0)) / CLK_TCK  # CPU-seconds of all CPUs
    r["other_load_pct"] = max(0.0, 100.0 * (busy_all - r["cpu_s"]) / wall)
    r["argv"] = argv
    return r


def pipeline_peers(seconds=3.0, reps=1, signals=("logs",), peers=("go", "rust"), peers_dir=None):
    """Measures the Go and Rust OTLP pipeline peers; returns their numbers (nothing is written).

    Two modes per peer and signal: "pinned" (taskset -c 1, --threads 1: records/s of one core) and
    "unpinned" (--threads 2, no taskset). Every measurement `reps` times, the peers taking turns
    repetition by repetition; the median run by records_per_s is reported beside all runs:
      {"input": {signal: {"file", "bytes", "records"}}, "seconds": S, "reps": N,
       "peers": {peer: {signal: {mode: {"records_per_s", "records", "seconds", "bytes_out",
                                         "max_rss_kb", "runs": [...]}}}}}
    A run's cpu_s is the peer's CPU time; other_load_pct the CPU the rest of the machine used
    meanwhile, in % of one core (the shared machine's noise: compare runs with little of it).
    """
    peers_dir = peers_dir or PEERS
    pin_cpu = "1" if NCPU > 1 else "0"
    modes = {"pinned": (["taskset", "-c", pin_cpu], 1), "unpinned": ([], 2)}
    res = {"seconds": seconds, "reps": reps, "input": {}, "peers": {},
           "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    for signal in signals:
        path = os.path.join(peers_dir, PIPELINE_INPUTS[signal])
        if not os.path.exists(path):
            raise SystemExit("%s missing: run bench/setup.sh %s first" % (path, peers_dir))
        res["input"][signal] = {"file": path, "bytes": os.path.getsize(path), "records": 100}
    for name in peers:
        binary = os.path.join(peers_dir, name + "-pipeline")
        if not os.access(binary, os.X_OK):
            raise SystemExit("%s missing: run bench/setup.sh %s first" % (binary, peers_dir))
        res["peers"][name] = {sig: {mode: {"runs": []} for mode in modes} for sig in signals}
    for signal in signals:
        for mode, (prefix, threads) in modes.items():
            for rep in range(reps):
                for name in peers:
                    argv = prefix + [os.path.join(peers_dir, name + "-pipeline"),
                                     "--input", res["input"][signal]["file"], "--seconds", str(seconds),
                                     "--threads", str(threads), "--signal", signal]
                    r = pipeline_run(argv)
                    log("pipeline %-5s %-6s %-8s rep %d: %9.0f records/s, %d KiB max RSS, other load %.0f%%"
                        % (name, signal, mode, rep + 1, r["records_per_s"], r["max_rss_kb"],
                           r["other_load_pct"]))
                    res["peers"][name][signal][mode]["runs"].append(r)
    for name in peers:
        for signal in signals:
            for mode in modes:
                m = res["peers"][name][signal][mode]
                mid = sorted(m["runs"], key=lambda r: r["records_per_s"])[len(m["runs"]) // 2]
                for k in ("records_per_s", "records", "seconds", "bytes_out", "max_rss_kb"):
                    m[k] = mid[k]
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--servers", default=None)
    ap.add_argument("--out", default=None, help="folder for benchmarks.md and img/ (default docs/)")
    ap.add_argument("--from-json", default=None,
                    help="no measuring: render benchmarks.md and the plots again from a recorded run")
    ap.add_argument("--pipeline-peers-only", action="store_true",
                    help="only measure the Go and Rust OTLP pipeline peers; print their numbers as JSON")
    ap.add_argument("--pipeline-seconds", type=float, default=3.0, help="seconds per pipeline run (3)")
    ap.add_argument("--pipeline-reps", type=int, default=1, help="pipeline runs per measurement (1)")
    ap.add_argument("--pipeline-signals", default="logs,traces", help="logs,traces (both)")
    a = ap.parse_args()
    if a.pipeline_peers_only:
        res = pipeline_peers(seconds=a.pipeline_seconds, reps=a.pipeline_reps,
                             signals=a.pipeline_signals.split(","))
        print(json.dumps(res, indent=1))
        return
    if a.smoke:
        cfg = dict(reps=1, seconds=2, warmup=1, conns=16, rates=[10000], modes=["pinned"],
                   unpinned_rates=[], max_other=1000, smoke=True)
        servers = ["keel", "keel-bare", "keel-obs"]
    elif a.quick:
        cfg = dict(reps=1, seconds=3, warmup=1, conns=64, rates=[10000, 40000], modes=["pinned"],
                   unpinned_rates=[], max_other=100, smoke=False)
        servers = ["keel", "rust", "go", "nginx"] + list(OBS_VARIANTS)
    else:
        cfg = dict(reps=3, seconds=8, warmup=2, conns=64, rates=[10000, 20000, 40000, 80000, 160000],
                   modes=["pinned", "unpinned"], unpinned_rates=[10000, 40000], max_other=10, smoke=False)
        servers = ["keel", "rust", "go", "nginx"] + list(OBS_VARIANTS)
    if a.servers:
        servers = a.servers.split(",")
    out = a.out or os.path.join(ROOT, "docs")
    os.makedirs(out, exist_ok=True)
    if a.from_json:
        with open(a.from_json) as f:
            results = json.load(f)
    else:
        results = run(cfg, servers)
        if "keel" in servers and not a.smoke:
            tmp = tempfile.mkdtemp(prefix="keel-perf-")
            try:
                results["profile"] = profile(10000, 4, tmp)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        results["versions"] = versions()
        with open(os.path.join(out, "benchmarks.json"), "w") as f:
            json.dump(results, f, indent=1)
    img = os.path.join(out, "img")
    plots(results, img)
    cmdline = "make bench" if not (a.quick or a.smoke) else ("make bench-quick" if a.quick else "smoke")
    if a.from_json:
        cmdline = results.get("cmdline", "make bench")
    results["cmdline"] = cmdline
    report(results, os.path.join(out, "benchmarks.md"), img, cmdline)
    log("wrote %s" % os.path.join(out, "benchmarks.md"))
    bad = failed_requests(results)
    if bad and a.smoke:
        raise SystemExit("failed requests: " + "; ".join(bad))


def failed_requests(results):
    """Every measurement whose requests failed or were answered non-2xx (a broken peer or harness)."""
    bad = []
    for name, res in results["servers"].items():
        for mode, m in res.items():
            if not isinstance(m, dict):
                continue
            runs = [(p, r) for p, rs in m["max"].items() for r in rs]
            runs += [(rr["rate"], r) for rr in m["rates"] for r in rr["runs"]]
            for what, r in runs:
                errs = sum(r["errors"].values())
                if errs or r["non2xx"] or not r["requests"]:
                    bad.append("%s %s %s: %d requests, %d errors, %d non-2xx"
                               % (name, mode, what, r["requests"], errs, r["non2xx"]))
    return bad


if __name__ == "__main__":
    main()
