#!/usr/bin/env python3
"""run.py - the benchmark runner: keel beside Go net/http, Rust hyper and nginx, written to docs/benchmarks.md.

Usage: bench/run.py [--quick | --smoke] [--out DIR] [--servers keel,rust,go,nginx] [--from-json FILE]
                   [--pipeline-only | --no-pipeline] [--gateway-only | --no-gateway]
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
  --pipeline-only   only the telemetry pipeline (issue 5, see pipeline_bench()): the Kafka client
             path alone (kafka_bench), end to end OTLP/HTTP
             -> disk buffer -> Kafka mock cluster, split_bench beside the Go and Rust pipelines,
             memory with Kafka down. JSON on stdout; its section of benchmarks.md and the "pipeline"
             key of benchmarks.json are replaced, the rest kept. With --quick or --smoke as above.
  --no-pipeline   no pipeline part (by default it follows the HTTP and gateway parts).
  --gateway-only  only the API gateway (issue 6, see gateway_bench()): keel's reverse proxy beside
             nginx's proxy_pass to the same upstream (an nginx with a fixed /echo), proxy pinned
             to CPU 0, upstream and generator on CPU 1: closed-loop max of POST /echo and GET /,
             POST /echo at 10k req/s. JSON on stdout; its section of benchmarks.md and the
             "gateway" key of benchmarks.json are replaced, the rest kept. With --quick or --smoke.
  --no-gateway    no gateway part (by default it follows the HTTP part).
"""
import argparse
import hashlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

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


def server_cmd(name, port, workers, tmp, sink_port=None, upstream=None):
    """(argv, env, binary path) for a server; workers None means its default. The gateway part's
    proxies, "keel-gw" and "nginx-gw", forward everything to `upstream` (a port on 127.0.0.1)."""
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
        if name == "keel-gw":
            argv += ["-c", gw_config_file(tmp, port, upstream)]
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
    if name in ("nginx", "nginx-gw"):
        # run.sh renders nginx.conf.in (fixed /echo answer) into a scratch prefix and execs nginx;
        # proxy.conf.in for nginx-gw (proxy_pass to the upstream, keep-alive pool).
        if name == "nginx-gw":
            env.update({"TEMPLATE": "proxy.conf.in", "UPSTREAM": "127.0.0.1:%d" % upstream})
        prefix = os.path.join(tmp, "nginx-%d" % port)
        b = shutil.which("nginx") or "/usr/sbin/nginx"
        run_sh = os.path.join(ROOT, "bench", "peers", "nginx", "run.sh")
        return [run_sh, str(port), str(workers or "auto"), prefix], env, b
    raise ValueError(name)


class Server:
    def __init__(self, name, workers, cpus, tmp, sink_port=None, upstream=None):
        self.name = name
        self.port = free_port()
        argv, env, self.binary = server_cmd(name, self.port, workers, tmp, sink_port, upstream)
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


def load(server, path, rate, seconds, warmup, conns, gen_cpu, upstream=None):
    """Runs keel-load once; returns its JSON plus the server's CPU % and the machine's other load.
    With `upstream` (the Server a proxy forwards to) its CPU is measured too (upstream_cpu_pct) and
    is not counted as other load."""
    argv = load_argv(server.port, path, rate, seconds, warmup, conns, gen_cpu)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(warmup)
    up_ticks = upstream.cpu_ticks if upstream else lambda: 0
    c0, u0, (t0, i0), w0 = server.cpu_ticks(), up_ticks(), cpu_times(), time.time()
    gen0 = proc_ticks(p.pid)
    time.sleep(max(0.1, seconds - 0.2))
    c1, u1, (t1, i1), w1 = server.cpu_ticks(), up_ticks(), cpu_times(), time.time()
    gen1 = proc_ticks(p.pid)
    out, err = p.communicate(timeout=seconds + warmup + 60)
    if p.returncode not in (0, 1) or not out.strip():
        raise RuntimeError("keel-load failed (%s): %s" % (p.returncode, err[-500:]))
    r = json.loads(out)
    wall = w1 - w0
    r["server_cpu_pct"] = 100.0 * (c1 - c0) / CLK_TCK / wall
    busy_all = (t1 - t0) - (i1 - i0)  # ticks of all CPUs
    ours = (c1 - c0) + (gen1 - gen0) + (u1 - u0)
    if upstream:
        r["upstream_cpu_pct"] = 100.0 * (u1 - u0) / CLK_TCK / wall
    r["gen_cpu_pct"] = 100.0 * (gen1 - gen0) / CLK_TCK / wall
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


def measured(server, path, rate, cfg, gen_cpu, upstream=None):
    """One run, repeated (up to 4 times) while it ran beside other load on the machine; if the
    machine stays busy, the quietest try is kept and flagged "busy" (the report counts them)."""
    return quiet_enough(lambda: load(server, path, rate, cfg["seconds"], cfg["warmup"], cfg["conns"],
                                     gen_cpu, upstream),
                        cfg["max_other"], "%s %s %s/s" % (server.name, path, rate or "max"),
                        pause=lambda: pause_until_quiet(cfg["max_other"]))


def pause_until_quiet(max_other, seconds=40):
    """After a discarded run: waits (up to `seconds`) until the rest of the machine uses at most
    max_other % of a core (nothing of ours runs now), so the retry does not fall in the same burst
    of other work; at least 2 s."""
    time.sleep(1)
    deadline = time.time() + seconds
    while 100 * NCPU * machine_busy(1) > max_other and time.time() < deadline:
        pass


def busy_runs(tree):
    """(flagged, all): measurements in a results tree kept although the machine stayed busy."""
    if isinstance(tree, list):
        counts = [busy_runs(t) for t in tree]
    elif isinstance(tree, dict):
        if "other_load_pct" in tree:
            return (1 if tree.get("busy") else 0), 1
        counts = [busy_runs(t) for t in tree.values()]
    else:
        return 0, 0
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def busy_note(tree):
    """A sentence for the report when some measurements were flagged busy, else ""."""
    flagged, total = busy_runs(tree)
    if not flagged:
        return ""
    return (" %d of %d measurements ran beside more than that other load in all 5 tries; the "
            "quietest try was kept (their min..max ranges show it)." % (flagged, total))


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
    results["busy_before_pct"] = 100 * (machine_busy(2) if cfg["smoke"] else wait_quiet("run"))
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


def first_line(argv):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (p.stdout or p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "not found"


def versions():
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
             "log off (the peers log nothing).%s"
             % (c["conns"], c["seconds"], c["warmup"], c["reps"], c["max_other"],
                os.path.getsize(BODY), busy_note(results["servers"])))
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
    if results.get("gateway"):
        L.append("")
        L.extend(gateway_section(results["gateway"]))
    elif results.get("gateway_error"):
        L.extend(["", GW_HEADING + "\n", "Not measured: the run failed (%s). Run `make bench-gateway` "
                  "again for this section alone." % results["gateway_error"]])
    if results.get("pipeline"):
        L.append("")
        L.extend(pipeline_section(results["pipeline"], img_dir))
    elif results.get("pipeline_error"):
        L.extend(["", PIPELINE_HEADING + "\n", "Not measured: the run failed (%s). Run "
                  "`make bench-pipeline` again for this section alone." % results["pipeline_error"]])
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
    n10 = at_rate(S.get("nginx", {}).get("pinned") or {"rates": []}, 10000)
    r10 = at_rate(S.get("rust", {}).get("pinned") or {"rates": []}, 10000)
    floor_why = ""
    if n10 and r10:  # the floor: a server that does no request work at all
        ncpu, rcpu = med(n10, "server_cpu_pct")[0], med(r10, "server_cpu_pct")[0]
        floor_why = ("; nginx's fixed answer, which never reads the body, used %.1f%% (%.2fx Rust hyper's), "
                     "so at this rate the kernel's per-request work alone is over half of hyper's CPU here"
                     % (ncpu, ncpu / rcpu) if ncpu > rcpu / 2 else "")
    n_max = S.get("nginx", {}).get("pinned")
    n_max = med(n_max["max"]["/echo"], "achieved_rate")[0] if n_max else None
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
                _, klo, khi = med(k10, "server_cpu_pct")
                _, plo, phi = med(p10, "server_cpu_pct")
                f = limit / pc
                overlap = ("; the runs overlap (keel %.0f..%.0f%%, %s%s %.0f..%.0f%%)"
                           % (klo, khi, "half of " if f < 1 else "", LABEL[peer], f * plo, f * phi)
                           if klo <= f * phi and f * plo <= khi else "")
                line(kc <= limit, "10k req/s CPU: keel %.1f%% vs %s %.1f%% (target <= %.1f%%)"
                     % (kc, LABEL[peer], pc, limit),
                     cpu_why + (floor_why if peer == "rust" else "") + overlap)
        ke, pe = med(k["max"]["/echo"], "achieved_rate")[0], med(p["max"]["/echo"], "achieved_rate")[0]
        want = {"rust": 2.0, "go": 5.0, "nginx": 1.0}[peer]
        why = [gen_bound or "per request keel used %.1f us of CPU, %s %.1f us%s; at 10k req/s (above) the "
               "kernel is three quarters of keel's CPU" % (
                   1e6 / per_cpu(k["max"]["/echo"]), LABEL[peer], 1e6 / per_cpu(p["max"]["/echo"]),
                   " (nginx answers a fixed string and never parses the body; keel parses and "
                   "re-serialises every one)" if peer == "nginx" else "")]
        _, klo, khi = med(k["max"]["/echo"], "achieved_rate")
        _, plo, phi = med(p["max"]["/echo"], "achieved_rate")
        if klo <= want * phi and want * plo <= khi:
            why.append("the runs overlap (keel %.0f..%.0f/s, %.1fx %s %.0f..%.0f/s)"
                       % (klo, khi, want, LABEL[peer], want * plo, want * phi))
        if peer != "nginx" and n_max and want * pe > n_max:
            why.append("%.1fx %s is %.0f/s, %.2fx what nginx's fixed answer, which does no work per "
                       "request beyond the kernel's, did on the same core (%.0f/s)"
                       % (want, LABEL[peer], want * pe, want * pe / n_max, n_max))
        line(ke >= want * pe, "max POST /echo, one core: keel %.0f/s vs %s %.0f/s (ratio %.2f, target >= %.1f;"
             " per CPU-second %.0f vs %.0f, ratio %.2f)"
             % (ke, LABEL[peer], pe, ke / pe, want, per_cpu(k["max"]["/echo"]), per_cpu(p["max"]["/echo"]),
                per_cpu(k["max"]["/echo"]) / per_cpu(p["max"]["/echo"])), "; ".join(why))
    k40 = at_rate(k, 40000)
    if k10 and k40:
        held = med(k40, "achieved_rate")[0] >= 0.97 * 40000
        p99_10, p99_40 = med(k10, "latency_us", "p99")[0], med(k40, "latency_us", "p99")[0]
        best = med(k40, "latency_us", "p99")[1]
        why = ["the best of the runs had p99 %.3f ms, with the generator up to %.1f ms behind its "
               "schedule (median %.1f ms)" % (best / 1000, med(k40, "max_schedule_lag_us")[2] / 1000,
                                               med(k40, "max_schedule_lag_us")[0] / 1000)]
        n40 = at_rate(S.get("nginx", {}).get("pinned") or {"rates": []}, 40000)
        if n40:
            np99 = med(n40, "latency_us", "p99")[0]
            why.append("nginx's fixed answer, same core, same generator, had p99 %.3f ms at 40k (%.2fx keel's "
                       "10k p99): at 40k req/s on this machine the p99 follows the one generator core and "
                       "the loopback, not the server" % (np99 / 1000, np99 / p99_10))
        line(held and p99_40 < 2 * p99_10, "40k req/s held (%s) with p99 %.3f ms vs 2x the 10k p99 (%.3f ms)"
             % ("yes" if held else "no", p99_40 / 1000, 2 * p99_10 / 1000), "; ".join(why))
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


# ---- the telemetry pipeline (issue 5): OTLP/HTTP -> disk buffer -> Kafka, and the splitter alone ----
# pipeline_bench() measures keel's shipped pipeline three ways (see the docstrings below):
#   client    the Kafka client path alone: build/bench/kafka_bench, keel's producer settings and
#             produce calls with no keel around them, into a fresh mock cluster, without and with
#             keel's three headers per message: the ceiling librdkafka and the cluster set here.
#   e2e       keel-load POSTs OTLP logs (100 records a request) to keel's OTLP/HTTP listener;
#             keel buffers them durably and produces one Kafka message per record to a mock cluster
#             (build/tools/kafka_mock, librdkafka's mock brokers); records/s from keel's counters.
#   nullsink  decode + split + re-encode alone: keel's split_bench beside the Go and Rust peers.
#   memory    Kafka down: keel's buffer fills to buffer.max, receivers answer 503, peak RSS; then
#             Kafka up and the time to drain.
# Pinning (2 cores shared by generator, keel and the mock cluster, as issue 5 asks): nothing is
# pinned in e2e and memory. keel has 2 workers plus its syncer and sink threads and librdkafka's
# broker threads, the mock cluster its own threads, the generator one thread: pinning any of them
# to one core would cap it there while the others queue on the other core, so the scheduler shares
# the two cores. The null-sink runs are pinned (one core: CPU 1) or use both cores (2 threads).

KAFKA_TOPICS = "otlp_logs,otlp_spans,otlp_metrics"
E2E_TARGET = 700000        # records/s end to end, sustained (issue 5)
NULLSINK_TARGET = 1400000  # records/s decode + split + re-encode on the 2 cores
RSS_TARGET_KB = 256 * 1024  # peak RSS, whatever the load

PIPELINE_CFG = {
    # smoke: does the harness work (CI); no peers, no memory test, nothing asserted about speed
    "smoke": dict(reps=1, seconds=2, warmup=0.5, conns=[16], fsync=["10ms"], drain_max=5,
                  client_seconds=1, client_warmup=0.3,
                  null_seconds=1, null_modes=["pinned"], peers=False, memory=False, max_other=1000),
    "quick": dict(reps=1, seconds=4, warmup=1, conns=[16, 64], fsync=["10ms", "always"], drain_max=5,
                  client_seconds=2, client_warmup=0.5,
                  null_seconds=2, null_modes=["pinned", "two"], peers=True, memory=True,
                  buffer_max="256MiB", hold=4, fill_max=60, up_max=90, max_other=100, profile=True),
    "full": dict(reps=3, seconds=8, warmup=2, conns=[16, 32, 64], fsync=["10ms", "always"],
                 drain_max=10, client_seconds=8, client_warmup=1,
                 null_seconds=3, null_modes=["pinned", "two"], peers=True, memory=True,
                 buffer_max="256MiB", hold=10, fill_max=90, up_max=180, max_other=15, profile=True),
}


def scrape(port):
    """keel's /metrics as {'name{labels}': value}."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, val = line.rpartition(" ")
        try:
            out[key] = float(val)
        except ValueError:
            pass
    return out


def mval(m, name, **labels):
    """The sum of the series of `name` that carry all of `labels`."""
    tot = 0.0
    for key, v in m.items():
        n, _, lab = key.partition("{")
        if n == name and all('%s="%s"' % kv in lab for kv in labels.items()):
            tot += v
    return tot


def mock_argv(brokers=3, partitions=6, topics=KAFKA_TOPICS):
    return [os.path.join(BUILD, "tools", "kafka_mock"), "--brokers", str(brokers),
            "--partitions", str(partitions), "--topics", topics]


class KafkaMock:
    """build/tools/kafka_mock: a Kafka-protocol cluster on loopback, driven by stdin commands."""

    def __init__(self):
        self.argv = mock_argv()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1,
                                     start_new_session=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("BOOTSTRAP "):
            self.stop()
            raise RuntimeError("kafka_mock did not start: %r" % line)
        self.bootstrap = line.split(" ", 1)[1]

    def command(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if answer != "OK":
            raise RuntimeError("kafka_mock %r: %r" % (cmd, answer))

    def cpu_ticks(self):
        return proc_ticks(self.proc.pid)

    def status_kb(self, field):
        return proc_status_kb(self.proc.pid, field)

    def stop(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def proc_status_kb(pid, field):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pipeline_env(data_dir, otlp_port, brokers, fsync, extra=None):
    """keel's environment for the pipeline runs (what the report prints as the exact command)."""
    env = {"KEEL_LOG_ACCESS": "off", "KEEL_DATA_DIR": data_dir,
           "KEEL_OTLP_HTTP_LISTEN": "127.0.0.1:%d" % otlp_port, "KEEL_OTLP_GRPC_LISTEN": "",
           "KEEL_KAFKA_BROKERS": brokers, "KEEL_BUFFER_FSYNC": fsync,
           "KEEL_SHUTDOWN_FLUSH_TIMEOUT": "0s"}  # stop at once: the mock's data is thrown away
    env.update(extra or {})
    return env


class PipelineKeel(Server):
    """keel serve with its pipeline on private ports, a scratch data dir and a Kafka sink."""

    def __init__(self, tmp, brokers, fsync, workers=2, extra=None):
        self.port, self.otlp_port = free_port(), free_port()
        self.data_dir = tempfile.mkdtemp(prefix="keel-data-", dir=tmp)
        self.binary = os.path.join(BUILD, "keel")
        self.argv = [self.binary, "serve", "--listen", "127.0.0.1:%d" % self.port,
                     "--workers", str(workers)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_", "OTEL_"))}
        self.env = pipeline_env(self.data_dir, self.otlp_port, brokers, fsync, extra)
        env.update(self.env)
        self.log_path = self.data_dir + ".log"
        with open(self.log_path, "wb") as errf:
            self.proc = subprocess.Popen(self.argv, env=env, stdout=errf, stderr=errf,
                                         start_new_session=True)
        try:
            wait_port(self.port, self.proc)
            wait_port(self.otlp_port, self.proc)
        except RuntimeError as e:
            raise RuntimeError("%s; keel's log: %s" % (e, self.log_tail()))

    def log_tail(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-800:]
        except OSError:
            return ""

    def metrics(self):
        return scrape(self.port)

    def stop(self):
        Server.stop(self)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def otlp_load_argv(port, body, conns, seconds, warmup):
    """keel-load, closed loop (max throughput): POST /v1/logs with the protobuf request `body`."""
    return [os.path.join(BUILD, "keel-load"), "http://127.0.0.1:%d/v1/logs" % port,
            "-m", "POST", "-H", "Content-Type: application/x-protobuf", "--body-file", body,
            "-c", str(conns), "-r", "0", "-d", "%g" % seconds, "-w", "%g" % warmup, "--json"]


def load_json(p, out, err):
    if p.returncode not in (0, 1) or not out.strip():
        raise RuntimeError("keel-load failed (%s): %s" % (p.returncode, err[-500:]))
    return json.loads(out)


# -- the input: otlp-logs-100.pb of bench/peers/otlp_gen.py, or an equivalent built here --

def pb_varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def pb_len(num, data):
    return pb_varint(num << 3 | 2) + pb_varint(len(data)) + data


def pb_str(num, s):
    return pb_len(num, s.encode())


def pb_int(num, v):
    return pb_varint(num << 3) + pb_varint(v & (2 ** 64 - 1))


def pb_fixed64(num, v):
    return pb_varint(num << 3 | 1) + v.to_bytes(8, "little")


def pb_attr(key, value):
    """KeyValue{key, AnyValue{string or int}} as an `attributes` entry."""
    any_ = pb_str(1, value) if isinstance(value, str) else pb_int(3, value)
    return pb_str(1, key) + pb_len(2, any_)


def otlp_logs_body(count=100):
    """An ExportLogsServiceRequest like otlp_gen.py's (one resource and scope, `count` log records
    of about 600 bytes each on the wire; 5 consecutive records per trace id, every 20th record
    without trace and span ids, so that keel's Kafka keys spread as otlp_gen.py's do), encoded with
    the standard library: the smoke run and a machine without bench/setup.sh need no protoc and
    no python3-protobuf."""
    res = b"".join(pb_len(1, pb_attr(k, v)) for k, v in (
        ("service.name", "checkout"), ("service.version", "2.14.3"),
        ("service.instance.id", "checkout-7d9f8b6c5-x2k4q"),
        ("host.name", "node-17.eu-west-1.internal"), ("deployment.environment", "production")))
    scope = pb_str(1, "keel.bench.run") + pb_str(2, "1.0.0")
    recs = b""
    for i in range(count):
        t = 1_700_000_000_000_000_000 + i * 1_000_003
        h = lambda salt, n: (hashlib.sha256(b"%s/%d" % (salt, i)).digest() * 2)[:n]
        body = ("record %d: GET /api/v1/orders/%d -> " % (i, i * 7919 % 100000) +
                " ".join(("order", "payment", "cart", "cache", "retry", "upstream")[(i + k) % 6]
                         for k in range(20)))[:140]
        attrs = [("http.request.method", "GET"), ("http.route", "/api/v1/orders/{id}"),
                 ("http.response.status_code", 200 + i % 3), ("client.address", "10.0.%d.%d" % (i % 7, i)),
                 ("user_agent.original", "keel-bench/1.0 (linux; x86_64) client-%d" % (i % 7)),
                 ("request.id", h(b"rid", 16).hex()), ("duration_ms", i * 37 % 1000),
                 ("cache.hit", "yes" if i % 2 else "no"),
                 ("log.logger", "com.example.checkout.OrderController"),
                 ("thread.name", "worker-%d" % (i % 16))]
        rec = (pb_fixed64(1, t) + pb_int(2, 9) + pb_str(3, "INFO") + pb_len(5, pb_str(1, body)) +
               b"".join(pb_len(6, pb_attr(k, v)) for k, v in attrs) +
               (pb_varint(8 << 3 | 5) + (1).to_bytes(4, "little") +  # flags, trace id, span id
                pb_len(9, hashlib.sha256(b"trace/%d" % (i // 5)).digest()[:16]) + pb_len(10, h(b"span", 8))
                if i % 20 != 19 else b"") + pb_fixed64(11, t + 250_000))
        recs += pb_len(2, rec)
    schema = "https://opentelemetry.io/schemas/1.24.0"
    scope_logs = pb_len(1, scope) + recs + pb_str(3, schema)
    resource_logs = pb_len(1, res) + pb_len(2, scope_logs) + pb_str(3, schema)
    return pb_len(1, resource_logs)


def pipeline_input(tmp):
    """(path, description) of the OTLP logs request the end-to-end runs POST."""
    path = os.path.join(PEERS, PIPELINE_INPUTS["logs"])
    if os.path.exists(path):
        return path, {"file": path, "bytes": os.path.getsize(path), "records": 100,
                      "made_by": "bench/peers/otlp_gen.py (bench/setup.sh)"}
    path = os.path.join(tmp, "otlp-logs-100-stdlib.pb")
    with open(path, "wb") as f:
        f.write(otlp_logs_body(100))
    return path, {"file": path, "bytes": os.path.getsize(path), "records": 100,
                  "made_by": "bench/run.py otlp_logs_body() (no bench/setup.sh output found)"}


# -- end to end --

def thread_ticks(pid):
    """{thread name: CPU ticks} of a process, threads of the same name added."""
    out = {}
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return out
    for t in tids:
        try:
            with open("/proc/%d/task/%s/stat" % (pid, t)) as f:
                s = f.read()
        except OSError:
            continue
        name = s[s.index("(") + 1:s.rindex(")")]
        fields = s.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0) + int(fields[11]) + int(fields[12])
    return out


def perf_top(data, sort, n):
    p = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", sort,
                        "--percent-limit", "0.7"], capture_output=True, text=True)
    return [l.rstrip() for l in p.stdout.splitlines() if l.strip() and not l.startswith("#")][:n]


def e2e_run(pc, body, fsync, conns, tmp, perf_data=None):
    """One end-to-end measurement on a fresh mock cluster and a fresh keel (empty buffer).

    keel-load runs closed loop for warm-up + window; over the window: keel's counters (records
    accepted into the buffer, delivered to Kafka, buffer syncs), the pending records every second,
    CPU of keel, the mock cluster and the generator, and the rest of the machine. After the load,
    up to drain_max seconds of delivery alone (the sink's rate with nothing else to do). With
    perf_data, `perf record` samples keel during the window (its figures are then not comparable)."""
    seconds, warmup = pc["seconds"], pc["warmup"]
    mock = KafkaMock()
    srv = None
    try:
        srv = PipelineKeel(tmp, mock.bootstrap, fsync)
        time.sleep(0.3)
        argv = otlp_load_argv(srv.otlp_port, body, conns, seconds, warmup)
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(warmup)
        m0 = srv.metrics()
        k0, mk0, g0 = srv.cpu_ticks(), mock.cpu_ticks(), proc_ticks(p.pid)
        th0 = thread_ticks(srv.proc.pid)
        (t0, i0), w0 = cpu_times(), time.time()
        rec = None
        if perf_data:
            rec = subprocess.Popen(["perf", "record", "-q", "-o", perf_data, "-p", str(srv.proc.pid), "--",
                                    "sleep", "%g" % max(1, seconds - 1)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        series = [(0.0, mval(m0, "keel_pipeline_buffer_records"))]
        end = w0 + max(0.1, seconds - 0.2)
        while end - time.time() > 0.3:
            time.sleep(min(1.0, end - time.time()))
            series.append((time.time() - w0, mval(srv.metrics(), "keel_pipeline_buffer_records")))
        time.sleep(max(0.0, end - time.time()))
        m1 = srv.metrics()
        k1, mk1, g1 = srv.cpu_ticks(), mock.cpu_ticks(), proc_ticks(p.pid)
        th1 = thread_ticks(srv.proc.pid)
        (t1, i1), w1 = cpu_times(), time.time()
        wall = w1 - w0
        if rec:
            rec.wait(60)
        series.append((wall, mval(m1, "keel_pipeline_buffer_records")))
        out, err = p.communicate(timeout=seconds + warmup + 60)
        r = load_json(p, out, err)
        # delivery alone, once the load has stopped
        t_end, d_end = time.time(), mval(srv.metrics(), "keel_pipeline_delivered_total", signal="logs")
        pend_after = mval(m1, "keel_pipeline_buffer_records")
        m2 = m1
        while time.time() - t_end < pc["drain_max"]:
            time.sleep(0.25)
            m2 = srv.metrics()
            if mval(m2, "keel_pipeline_buffer_records") == 0:
                break
        drained = mval(m2, "keel_pipeline_delivered_total", signal="logs") - d_end
        peak_rss = srv.status_kb("VmHWM")
    finally:
        if srv:
            srv.stop()
        mock_rss = mock.status_kb("VmHWM")
        mock.stop()
    d = lambda name, **lab: mval(m1, name, **lab) - mval(m0, name, **lab)
    acc = d("keel_pipeline_records_accepted_total", signal="logs") / wall
    dlv = d("keel_pipeline_delivered_total", signal="logs") / wall
    pend0, pend1 = series[0][1], series[-1][1]
    growth = (pend1 - pend0) / wall
    behind = growth > max(0.02 * acc, 1000)  # the buffer grows: Kafka delivery does not keep up
    n200 = r["status"].get("200", 0)
    ours = (k1 - k0) + (mk1 - mk0) + (g1 - g0)
    busy_all = (t1 - t0) - (i1 - i0)
    res = {
        "fsync": fsync, "conns": conns, "seconds": seconds, "warmup": warmup,
        "requests_per_s": r["achieved_rate"] * n200 / max(1, r["requests"]),
        "requests": r["requests"], "status": r["status"], "non2xx": r["non2xx"], "errors": r["errors"],
        "latency_us": {q: r["latency_us"][q] for q in ("p50", "p99", "p999", "max") if q in r["latency_us"]},
        "records_accepted_per_s": acc, "records_delivered_per_s": dlv,
        "sustained_per_s": dlv if behind else acc, "delivery_behind": behind,
        "pending_records_start": pend0, "pending_records_end": pend1, "pending_growth_per_s": growth,
        "pending_bytes_end": mval(m1, "keel_pipeline_buffer_pending_bytes"), "pending_series": series,
        "rejected": d("keel_pipeline_records_rejected_total"),
        "refused": {k.split('reason="')[1].split('"')[0]: v - m0.get(k, 0) for k, v in m1.items()
                    if k.startswith("keel_pipeline_requests_refused_total{") and v - m0.get(k, 0) > 0},
        "syncs_per_s": d("keel_pipeline_buffer_syncs_total") / wall,
        "delivery_failures": d("keel_pipeline_delivery_failures_total"),
        "after_load": {"pending_records": pend_after, "seconds": time.time() - t_end,
                       "delivered": drained, "left": mval(m2, "keel_pipeline_buffer_records"),
                       "records_per_s": drained / max(1e-9, min(time.time() - t_end, pc["drain_max"]))},
        "keel_cpu_pct": 100.0 * (k1 - k0) / CLK_TCK / wall,
        "mock_cpu_pct": 100.0 * (mk1 - mk0) / CLK_TCK / wall,
        "gen_cpu_pct": 100.0 * (g1 - g0) / CLK_TCK / wall,
        "other_load_pct": max(0.0, 100.0 * (busy_all - ours) / CLK_TCK / wall),
        "keel_threads_cpu_pct": {n: 100.0 * (v - th0.get(n, 0)) / CLK_TCK / wall for n, v in th1.items()
                                 if v - th0.get(n, 0) > 0},
        "keel_peak_rss_kb": peak_rss, "mock_peak_rss_kb": mock_rss,
        "delivered_total": mval(m2, "keel_pipeline_delivered_total", signal="logs"),
        "accepted_total": mval(m2, "keel_pipeline_records_accepted_total", signal="logs"),
        "argv": argv,
    }
    log("pipeline e2e fsync=%-6s c=%-3d %6.0f req/s, accepted %7.0f/s, delivered %7.0f/s%s, "
        "p99 %.1f ms, keel %3.0f%% mock %3.0f%% gen %3.0f%% other %3.0f%%, RSS %d KiB"
        % (fsync, conns, res["requests_per_s"], acc, dlv, " (behind)" if behind else "",
           res["latency_us"].get("p99", 0) / 1000, res["keel_cpu_pct"], res["mock_cpu_pct"],
           res["gen_cpu_pct"], res["other_load_pct"], peak_rss))
    return res


def quiet_enough(run_once, max_other, what, pause=lambda: time.sleep(2)):
    """Runs `run_once` until the rest of the machine used at most max_other % of a core meanwhile
    (5 tries, `pause` between them); otherwise keeps the quietest try and flags it "busy"."""
    tries = []
    for _ in range(5):
        r = run_once()
        tries.append(r)
        if r["other_load_pct"] <= max_other:
            return r
        log("  %s: other load %.0f%% of a core: again" % (what, r["other_load_pct"]))
        pause()
    r = min(tries, key=lambda t: t["other_load_pct"])
    r["busy"] = True
    log("  %s: the machine stayed busy; kept the quietest run, flagged" % what)
    return r


def e2e_all(pc, body, tmp):
    """Connections swept with the first fsync mode; the best count then measured `reps` times per
    fsync mode (the sweep's run at that count is the first repetition), modes taking turns."""
    fs0 = pc["fsync"][0]
    sweep = [quiet_enough(lambda: e2e_run(pc, body, fs0, c, tmp), pc["max_other"], "e2e c=%d" % c)
             for c in pc["conns"]]
    best = max(sweep, key=lambda r: r["sustained_per_s"])["conns"]
    modes = {fs: {"runs": [r for r in sweep if r["conns"] == best] if fs == fs0 else []}
             for fs in pc["fsync"]}
    for _ in range(pc["reps"]):
        for fs in pc["fsync"]:
            if len(modes[fs]["runs"]) < pc["reps"]:
                modes[fs]["runs"].append(quiet_enough(lambda: e2e_run(pc, body, fs, best, tmp),
                                                      pc["max_other"], "e2e %s" % fs))
    res = {"conns": best, "sweep": sweep, "modes": modes}
    if pc.get("profile") and shutil.which("perf"):
        data = os.path.join(tmp, "perf.data")
        r = e2e_run(pc, body, fs0, best, tmp, perf_data=data)
        if os.path.exists(data):
            res["profile"] = {"fsync": fs0, "conns": best, "seconds": max(1, pc["seconds"] - 1),
                              "records_per_s": r["records_accepted_per_s"],
                              "threads": r["keel_threads_cpu_pct"],
                              "dso": perf_top(data, "dso", 8), "sym": perf_top(data, "comm,dso,sym", 30)}
    return res


# -- null sink --

def run_polled(argv, timeout=600):
    """Runs one command to completion: its exit code, stdout, stderr and peak RSS, its CPU time
    and wall time, and the CPU the rest of the machine used meanwhile (% of one core). The peak RSS
    is VmHWM read every 20 ms while it runs: the same for the three programs (Go's ru_maxrss may
    keep this Python's size across the exec)."""
    (t0, i0), w0 = cpu_times(), time.time()
    with tempfile.TemporaryFile() as o, tempfile.TemporaryFile() as e:
        p = subprocess.Popen(argv, stdout=o, stderr=e)
        hwm, deadline = 0, time.time() + timeout
        while True:
            hwm = max(hwm, proc_status_kb(p.pid, "VmHWM"))
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                p.kill()
            time.sleep(0.02)
        p.returncode = os.waitstatus_to_exitcode(status)
        o.seek(0)
        e.seek(0)
        out, err = o.read().decode(errors="replace"), e.read().decode(errors="replace")
    (t1, i1), w1 = cpu_times(), time.time()
    cpu = ru.ru_utime + ru.ru_stime
    busy_all = ((t1 - t0) - (i1 - i0)) / CLK_TCK
    return p.returncode, out, err, hwm, cpu, w1 - w0, max(0.0, 100.0 * (busy_all - cpu) / max(1e-9, w1 - w0))


def split_bench_path():
    return os.path.join(BUILD, "bench", "split_bench")


class NullSink:
    """Argument vectors of the three null-sink programs, which take the same options and print the
    same JSON line: the same input file, duration and threads for all. Modes: "pinned" (CPU 1, one
    thread) and "two" (2 threads, unpinned: both cores)."""

    def __init__(self, pc, peers, body):
        self.seconds = pc["null_seconds"]
        self.pin = "1" if NCPU > 1 else "0"
        self.input = body
        self.progs = ["keel"] + [p for p in peers
                                 if os.access(os.path.join(PEERS, p + "-pipeline"), os.X_OK)]

    def argv(self, prog, mode):
        binary = split_bench_path() if prog == "keel" else os.path.join(PEERS, prog + "-pipeline")
        a = [binary, "--input", self.input, "--seconds", "%g" % self.seconds,
             "--threads", "1" if mode == "pinned" else "2", "--signal", "logs"]
        a += ["--json"] if prog == "keel" else []
        return ["taskset", "-c", self.pin] + a if mode == "pinned" else a

    def run(self, prog, mode):
        argv = self.argv(prog, mode)
        rc, out, err, hwm, cpu, wall, other = run_polled(argv)
        if rc != 0 or not out.strip():
            raise RuntimeError("%s failed (%s): %s" % (" ".join(argv), rc, err[-300:]))
        res = json.loads(out.strip().splitlines()[-1])
        res.update({"self_reported_max_rss_kb": res["max_rss_kb"], "max_rss_kb": hwm or res["max_rss_kb"],
                    "cpu_s": cpu, "wall_s": wall, "other_load_pct": other, "argv": argv})
        log("pipeline null sink %-5s %-6s %9.0f records/s, %.0f bytes/record, %d KiB max RSS, other load %.0f%%"
            % (prog, mode, res["records_per_s"], res["bytes_out"] / max(1, res["records"]),
               res["max_rss_kb"], other))
        return res


def nullsink_all(pc, body):
    """Records/s of keel's split_bench and the Go and Rust peers on the request `body`, modes x
    repetitions, the programs taking turns within a repetition."""
    if not os.access(split_bench_path(), os.X_OK):
        return {"skipped": "%s not built" % split_bench_path()}
    ns = NullSink(pc, ("go", "rust") if pc["peers"] else (), body)
    res = {"seconds": ns.seconds, "input": body,
           "programs": {p: {m: {"runs": []} for m in pc["null_modes"]} for p in ns.progs}}
    if pc["peers"] and len(ns.progs) < 3:
        res["peers_missing"] = "run bench/setup.sh %s to build the Go and Rust pipelines" % PEERS
        log("pipeline: " + res["peers_missing"])
    for mode in pc["null_modes"]:
        for _ in range(pc["reps"]):
            for prog in ns.progs:
                res["programs"][prog][mode]["runs"].append(
                    quiet_enough(lambda: ns.run(prog, mode), pc["max_other"], "null sink %s" % prog))
    return res


# -- the Kafka client path alone --

CLIENT_HEADERS = (0, 3)    # kafka_bench --headers: none, and keel's three (signal, schema, content type)
CLIENT_SIZE_DEFAULT = 909  # bytes per single-record message of the default input, when not measured


def kafka_bench_path():
    return os.path.join(BUILD, "bench", "kafka_bench")


def message_size(body):
    """(bytes, how) of the Kafka message value keel makes of one record of `body`: the null sink's
    "bytes out per record" (split_bench, one pass over the request), or CLIENT_SIZE_DEFAULT."""
    argv = [split_bench_path(), "--input", body, "--iterations", "1", "--signal", "logs", "--json"]
    if os.access(split_bench_path(), os.X_OK):
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if p.returncode == 0 and p.stdout.strip():
            r = json.loads(p.stdout.strip().splitlines()[-1])
            if r.get("records"):
                return int(round(r["bytes_out"] / r["records"])), "split_bench, one pass over the input"
    return CLIENT_SIZE_DEFAULT, "default (split_bench not available)"


def kafka_bench_argv(bootstrap, pc, size, headers, body):
    """kafka_bench's command line: keel's defaults for compression, linger and records in flight;
    values cut from the end-to-end input, so that lz4 sees bytes like keel's."""
    return [kafka_bench_path(), "--brokers", bootstrap, "--topic", KAFKA_TOPICS.split(",")[0],
            "--seconds", "%g" % pc["client_seconds"], "--warmup", "%g" % pc["client_warmup"],
            "--size", str(size), "--headers", str(headers), "--compression", "lz4", "--linger-ms", "5",
            "--inflight", "65536", "--value-file", body, "--json"]


def client_run(pc, body, size, headers):
    """One kafka_bench run on a fresh mock cluster: its JSON (messages delivered in the window, the
    producer's CPU over it by getrusage), plus the mock cluster's CPU and the rest of the machine's
    load over the same window (read from /proc, the window found by sleeping through the warm-up)."""
    mock = KafkaMock()
    try:
        argv = kafka_bench_argv(mock.bootstrap, pc, size, headers, body)
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(pc["client_warmup"] + 0.05)
        b0, m0, (t0, i0), w0 = proc_ticks(p.pid), mock.cpu_ticks(), cpu_times(), time.time()
        time.sleep(max(0.1, pc["client_seconds"] - 0.1))
        b1, m1, (t1, i1), w1 = proc_ticks(p.pid), mock.cpu_ticks(), cpu_times(), time.time()
        out, err = p.communicate(timeout=pc["client_seconds"] + pc["client_warmup"] + 60)
        mock_rss = mock.status_kb("VmHWM")
    finally:
        mock.stop()
    if p.returncode != 0 or not out.strip():
        raise RuntimeError("%s failed (%s): %s" % (" ".join(argv), p.returncode, err[-500:]))
    r = json.loads(out.strip().splitlines()[-1])
    wall = w1 - w0
    r.update({"producer_cpu_pct": 100.0 * r["cpu_s"] / r["seconds"],
              "mock_cpu_pct": 100.0 * (m1 - m0) / CLK_TCK / wall, "mock_peak_rss_kb": mock_rss,
              "other_load_pct": max(0.0, 100.0 * ((t1 - t0) - (i1 - i0) - (b1 - b0) - (m1 - m0))
                                    / CLK_TCK / wall),
              "argv": argv})
    log("pipeline client path headers=%d size=%d: %7.0f messages/s, %.2f us CPU/message, producer "
        "%3.0f%% mock %3.0f%% other %3.0f%%" % (headers, size, r["msgs_per_s"], r["us_per_msg"],
                                                r["producer_cpu_pct"], r["mock_cpu_pct"],
                                                r["other_load_pct"]))
    return r


def client_all(pc, body):
    """The Kafka client path alone, without and with keel's headers, `reps` times, the two taking
    turns: {"size", "size_from", "seconds", "headers": {"0": {"runs"}, "3": {"runs"}}}, or
    {"skipped"} (no kafka_bench) or {"error"} (a run failed: the rest of the pipeline part goes on)."""
    if not os.access(kafka_bench_path(), os.X_OK):
        return {"skipped": "%s not built" % kafka_bench_path()}
    size, how = message_size(body)
    res = {"size": size, "size_from": how, "seconds": pc["client_seconds"],
           "headers": {str(h): {"runs": []} for h in CLIENT_HEADERS}}
    try:
        for _ in range(pc["reps"]):
            for h in CLIENT_HEADERS:
                res["headers"][str(h)]["runs"].append(quiet_enough(
                    lambda h=h: client_run(pc, body, size, h), pc["max_other"], "client path headers=%d" % h))
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as e:
        log("pipeline client path failed: %s" % e)
        res["error"] = str(e)
    return res


# -- Kafka down --

def memory_run(pc, body, tmp):
    """Kafka down (`down -1` on every broker) under closed-loop load until the buffer is full
    (503), `hold` seconds more of it, one request of our own to read the 503's Retry-After; then
    `up -1` and the time until the buffer is empty. keel's peak RSS (VmHWM) over all of it."""
    mock = KafkaMock()
    srv, p = None, None
    res = {"buffer_max": pc["buffer_max"], "hold_s": pc["hold"]}
    try:
        srv = PipelineKeel(tmp, mock.bootstrap, "10ms", extra={"KEEL_BUFFER_MAX": pc["buffer_max"]})
        time.sleep(1.0)  # the producer's first metadata round
        mock.command("down -1")
        argv = otlp_load_argv(srv.otlp_port, body, 32, pc["fill_max"] + pc["hold"] + 30, 0)
        res["argv"] = argv
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        while time.time() - t0 < pc["fill_max"]:
            time.sleep(0.25)
            m = srv.metrics()
            if mval(m, "keel_pipeline_requests_refused_total", reason="buffer_full") > 0:
                res["fill_s"] = time.time() - t0
                break
        res["rss_at_full_kb"] = srv.status_kb("VmRSS")
        time.sleep(min(1.0, pc["hold"] / 2))
        res["probe"] = otlp_probe(srv.otlp_port, body)
        time.sleep(max(0.0, pc["hold"] - min(1.0, pc["hold"] / 2)))
        p.send_signal(signal.SIGINT)  # keel-load stops scheduling and reports
        out, err = p.communicate(timeout=60)
        r = load_json(p, out, err)
        p = None
        m = srv.metrics()
        res.update({"load_s": time.time() - t0, "requests": r["requests"], "status": r["status"],
                    "errors": r["errors"], "non2xx": r["non2xx"],
                    "refused": {k.split('reason="')[1].split('"')[0]: v for k, v in m.items()
                                if k.startswith("keel_pipeline_requests_refused_total{") and v},
                    "pending_records": mval(m, "keel_pipeline_buffer_records"),
                    "pending_bytes": mval(m, "keel_pipeline_buffer_pending_bytes"),
                    "peak_rss_down_kb": srv.status_kb("VmHWM"),
                    "mock_peak_rss_kb": mock.status_kb("VmHWM")})
        d0 = mval(m, "keel_pipeline_delivered_total", signal="logs")
        mock.command("up -1")
        t_up = time.time()
        while time.time() - t_up < pc["up_max"]:
            time.sleep(0.2)
            m = srv.metrics()
            if "first_delivery_s" not in res and mval(m, "keel_pipeline_delivered_total", signal="logs") > d0:
                res["first_delivery_s"] = time.time() - t_up
            if mval(m, "keel_pipeline_buffer_records") == 0:
                res["drain_s"] = time.time() - t_up
                break
        res["drained"] = mval(m, "keel_pipeline_delivered_total", signal="logs") - d0
        res["left_records"] = mval(m, "keel_pipeline_buffer_records")
        since_first = time.time() - t_up - res.get("first_delivery_s", 0)
        res["drain_records_per_s"] = res["drained"] / max(1e-9, since_first)
        res["peak_rss_kb"] = srv.status_kb("VmHWM")
    finally:
        if p:
            p.kill()
            p.wait()
        if srv:
            srv.stop()
        mock.stop()
    log("pipeline Kafka down: full after %s s, statuses %s, probe %s, peak RSS %d KiB, %d records "
        "pending, drained in %s s"
        % ("%.1f" % res["fill_s"] if "fill_s" in res else "never", res.get("status"), res.get("probe"),
           res.get("peak_rss_kb", 0), res.get("pending_records", 0),
           "%.1f" % res["drain_s"] if "drain_s" in res else "more than %d" % pc["up_max"]))
    return res


def otlp_probe(port, body):
    """One POST /v1/logs of our own: its status and Retry-After header."""
    with open(body, "rb") as f:
        data = f.read()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("POST", "/v1/logs", body=data, headers={"Content-Type": "application/x-protobuf"})
        resp = c.getresponse()
        resp.read()
        return {"status": resp.status, "retry_after": resp.getheader("Retry-After")}
    finally:
        c.close()


def wait_quiet(what, limit=0.25, tries=30):
    """Waits (up to tries x 7 s) for the machine to be under `limit` busy; its busy share."""
    busy = machine_busy(2)
    if busy > limit:
        log("machine busy (%.0f%% of all CPUs) before the %s: waiting" % (100 * busy, what))
        for _ in range(tries):
            time.sleep(5)
            busy = machine_busy(2)
            if busy <= limit:
                break
        else:
            raise SystemExit("refusing to benchmark: the machine stays busy (%.0f%%)" % (100 * busy))
    return busy


def pipeline_bench(level="full"):
    """The telemetry pipeline's measurements (level full, quick or smoke; see PIPELINE_CFG)."""
    pc = dict(PIPELINE_CFG[level])
    for b in (os.path.join(BUILD, "keel"), os.path.join(BUILD, "keel-load"),
              os.path.join(BUILD, "tools", "kafka_mock")):
        if not os.access(b, os.X_OK):
            raise SystemExit("%s missing: build first (cmake --build %s)" % (b, BUILD))
    P = {"level": level, "config": pc, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    P["busy_before_pct"] = 100 * (machine_busy(1) if level == "smoke" else wait_quiet("pipeline runs"))
    tmp = tempfile.mkdtemp(prefix="keel-pipeline-")
    try:
        body, P["input"] = pipeline_input(tmp)
        P["kafka_mock"] = mock_argv()
        P["client"] = client_all(pc, body)
        P["e2e"] = e2e_all(pc, body, tmp)
        P["nullsink"] = nullsink_all(pc, body)
        if pc["memory"]:
            P["memory"] = memory_run(pc, body, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    P["versions"] = {"keel": first_line([os.path.join(BUILD, "keel"), "version"]),
                     "librdkafka": first_line(["pkg-config", "--modversion", "rdkafka"]),
                     "go": first_line(["go", "version"]), "rustc": first_line(["/usr/bin/rustc", "--version"]),
                     "kernel": platform.release(), "cpu": cpu_model()}
    P["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return P


# -- the report: the "Telemetry pipeline (issue 5)" section of benchmarks.md --

PIPELINE_HEADING = "## Telemetry pipeline (issue 5)"
NULL_LABEL = {"keel": "keel (kl_otlp_split, split_bench)", "go": "Go (google.golang.org/protobuf)",
              "rust": "Rust (prost)"}


def rmed(runs, key):
    """(median, min, max) of runs[i][key]."""
    vals = [r[key] for r in runs]
    return statistics.median(vals), min(vals), max(vals)


def lat_med(runs, q):
    vals = [r["latency_us"][q] for r in runs]
    return statistics.median(vals), min(vals), max(vals)


def kfmt(t):
    """(median, min, max) of records/s as '712k (690k..731k)'."""
    return "%.0fk (%.0fk..%.0fk)" % tuple(x / 1000 for x in t)


def shell_env(env):
    return " ".join("%s=%s" % (k, v if v else "''") for k, v in env.items())


def cmd_str(argv):
    """A command line as the report shows it: paths relative to the repository, ports as <port>."""
    out = []
    for a in argv:
        a = os.path.relpath(a, ROOT) if a.startswith(ROOT + os.sep) else a
        a = re.sub(r"127\.0\.0\.1:\d+/", "127.0.0.1:<otlp port>/", a)
        out.append("'%s'" % a if " " in a else a)
    return " ".join(out)


def pipeline_section(P, img_dir=None):
    """The section's lines (markdown)."""
    pc = P["config"]
    e2e = P["e2e"]
    L = [PIPELINE_HEADING + "\n"]
    quick = {"quick": " (quick run: one repetition, short windows; `make bench` for the real figures)",
             "smoke": " (smoke run: checks that the harness works, the figures mean nothing)"}
    L.append("Written by `bench/run.py` (%s)%s.\n"
             % (P.get("cmdline", "make bench"), quick.get(P["level"], "")))
    v = P["versions"]
    L.append("- Date: %s to %s; load on the machine before: %.0f%%" % (P["started"], P["finished"],
                                                                      P["busy_before_pct"]))
    L.append("- Machine: %s, %d CPUs, kernel %s. Versions: %s; librdkafka %s; %s; %s"
             % (v["cpu"], NCPU, v["kernel"], v["keel"], v["librdkafka"], v["go"], v["rustc"]))
    inp = P["input"]
    L.append("- Input: one OTLP `ExportLogsServiceRequest` of %d log records, %d bytes (%.0f per record), "
             "made by %s." % (inp["records"], inp["bytes"], inp["bytes"] / inp["records"], inp["made_by"]))
    L.append("- Figures are medians of %d repetition%s with (min..max); a run during which the rest of "
             "the machine used more than %d%% of a core is repeated (up to 5 times; if it stays busy "
             "the quietest is kept and flagged below)."
             % (pc["reps"], "s" if pc["reps"] > 1 else "", pc["max_other"]))
    L.append("")

    # end to end
    L.append("### End to end: OTLP/HTTP -> durable disk buffer -> Kafka\n")
    r0 = e2e["sweep"][0]
    L.append("Generator, keel and the mock cluster share the machine's %d cores, none pinned: keel runs "
             "2 workers plus its syncer, its sink and librdkafka's threads, the mock cluster its own, "
             "keel-load one thread; pinning any of them to one core would cap it there while the "
             "others queue on the other, so the scheduler shares the cores. Each run starts a fresh "
             "mock cluster and a fresh keel (empty buffer); keel-load drives `POST /v1/logs` closed loop "
             "(every connection keeps one request in flight) for %gs of warm-up and a %gs window. "
             "Records accepted (written to the buffer) and delivered (confirmed by Kafka, "
             "`acks=all`, idempotent producer, one message per record) come from keel's counters "
             "`keel_pipeline_records_accepted_total` and `keel_pipeline_delivered_total` over the "
             "window; *sustained* is the accepted rate while the buffer's pending records stay flat, "
             "and the delivered rate when they grow (delivery does not keep up). Then up to %gs of "
             "delivery alone (no load) shows what the sink does by itself.\n"
             % (NCPU, r0["warmup"], r0["seconds"], pc["drain_max"]))
    L.append("```sh")
    L.append(cmd_str(mock_argv()))
    shown = {k: {"KEEL_KAFKA_BROKERS": "<bootstrap>", "KEEL_DATA_DIR": "<scratch dir>",
                 "KEEL_OTLP_HTTP_LISTEN": "127.0.0.1:<otlp port>"}.get(k, v)
             for k, v in pipeline_env("", 0, "", pc["fsync"][0]).items()}
    L.append(shell_env(shown) + " " + cmd_str([os.path.join(BUILD, "keel"), "serve", "--listen",
                                               "127.0.0.1:<port>", "--workers", "2"]))
    L.append(cmd_str(e2e["modes"][pc["fsync"][0]]["runs"][0]["argv"]))
    L.append("```\n")
    L.append("(%skeel's other settings are its defaults: `otlp.ack: durable`, `buffer.max` 1GiB, "
             "`buffer.memory` 64MiB, `kafka.linger` 5ms, lz4.)\n"
             % ("and the same with `KEEL_BUFFER_FSYNC=%s`; " % "`, `".join(pc["fsync"][1:])
                if len(pc["fsync"]) > 1 else ""))
    L.append("| fsync | connections | req/s answered 200 | records accepted/s | records delivered/s "
             "| sustained records/s | pending at end (records) | p50 (ms) | p99 (ms) | keel CPU % "
             "| mock CPU % | keel-load CPU % | keel peak RSS (MiB) |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    def row(label, conns, runs):
        L.append("| %s | %d | %s | %s | %s | %s | %.0f | %s | %s | %s | %s | %s | %.0f |" % (
            label, conns, fmt_range(rmed(runs, "requests_per_s")), kfmt(rmed(runs, "records_accepted_per_s")),
            kfmt(rmed(runs, "records_delivered_per_s")), kfmt(rmed(runs, "sustained_per_s")),
            rmed(runs, "pending_records_end")[0], fmt_range(lat_med(runs, "p50"), 0.001, 1),
            fmt_range(lat_med(runs, "p99"), 0.001, 1), fmt_range(rmed(runs, "keel_cpu_pct")),
            fmt_range(rmed(runs, "mock_cpu_pct")), fmt_range(rmed(runs, "gen_cpu_pct")),
            max(r["keel_peak_rss_kb"] for r in runs) / 1024))
    for fs, m in e2e["modes"].items():
        row("`%s`" % fs, e2e["conns"], m["runs"])
    if len(e2e["sweep"]) > 1:
        for r in e2e["sweep"]:
            row("`%s`, sweep" % r["fsync"], r["conns"], [r])
    L.append("")
    L.append("The connection count was swept with fsync `%s` (one run each, rows \"sweep\"); the best "
             "(%d) was used for the repetitions." % (pc["fsync"][0], e2e["conns"]) if len(e2e["sweep"]) > 1 else
             "One connection count (%d)." % e2e["conns"])
    for fs, m in e2e["modes"].items():
        runs = m["runs"]
        al = [r["after_load"] for r in runs if r["after_load"]["pending_records"] > 50000]
        extra = ""
        if al:
            extra = ("; with the load stopped, delivery alone ran at %s records/s"
                     % kfmt(rmed(al, "records_per_s")))
        th = {}
        for r in runs:
            for n, v in r.get("keel_threads_cpu_pct", {}).items():
                th.setdefault(n, []).append(v)
        th = sorted(((statistics.median(v), n) for n, v in th.items()), reverse=True)
        L.append("- `%s`: %.0f buffer syncs/s, pending records grew by %s/s over the window%s%s. keel's CPU "
                 "by thread (%% of a core): %s." % (
                     fs, rmed(runs, "syncs_per_s")[0], kfmt(rmed(runs, "pending_growth_per_s")), extra,
                     "; Kafka delivery failures: %d" % sum(r["delivery_failures"] for r in runs)
                     if any(r["delivery_failures"] for r in runs) else "",
                     ", ".join("%s %.0f" % (n, v) for v, n in th if v >= 1) or "-"))
    L.append("")
    L.append("Thread names: `keel` = the workers (HTTP parsing, decode, split, the buffer append) plus the "
             "main and syncer threads; `keel-sink` reads the buffer and produces; `rdk:*` are "
             "librdkafka's (`rdk:broker*` one per broker connection: framing, lz4, socket I/O).\n")
    prof = e2e.get("profile")
    if prof:
        L.append("Where keel's time goes end to end (one more run, fsync `%s`, %d connections, under "
                 "`perf record -p` for %gs, %.0fk records/s accepted meanwhile; by binary, then the "
                 "top symbols by thread; `[k]` kernel, `[.]` user space):\n"
                 % (prof["fsync"], prof["conns"], prof["seconds"], prof["records_per_s"] / 1000))
        L.append("```")
        L.extend(prof["dso"] + [""] + prof["sym"])
        L.append("```\n")

    L.extend(client_section(P.get("client")))

    # null sink
    ns = P["nullsink"]
    L.append("### Decode + split + re-encode into a null sink\n")
    if "skipped" in ns:
        L.append("Not measured: %s.\n" % ns["skipped"])
    else:
        L.append("Each program loops over one OTLP logs request (100 records) for %gs: decode, split into "
                 "one single-record request per record, copy each into a null sink (keel gathers the "
                 "message's pieces into a buffer; Go and Rust encode it into one) and count its bytes. "
                 "All read the same file, `%s` (the end-to-end input above). \"1 core\": pinned to "
                 "CPU 1, one thread; \"2 cores\": 2 threads, unpinned. Max RSS: VmHWM, polled.\n"
                 % (ns["seconds"], os.path.relpath(ns["input"], ROOT) if ns["input"].startswith(ROOT)
                    else os.path.basename(ns["input"])))
        L.append("```sh")
        for prog, modes in ns["programs"].items():
            for mode, m in modes.items():
                L.append(cmd_str(m["runs"][0]["argv"]))
        L.append("```\n")
        modes = list(next(iter(ns["programs"].values())).keys())
        hdr = {"pinned": "1 core (CPU 1), records/s", "two": "2 cores, records/s"}
        L.append("| program | " + " | ".join(hdr[m] for m in modes)
                 + " | ns per record (1 core) | bytes out per record | max RSS (KiB) |")
        L.append("|---|" + "---|" * len(modes) + "---|---|---|")
        for prog, pm in ns["programs"].items():
            cells = [kfmt(rmed(pm[m]["runs"], "records_per_s")) for m in modes]
            one = rmed(pm["pinned"]["runs"], "records_per_s")[0] if "pinned" in pm else 0
            r0 = pm[modes[0]]["runs"][0]
            L.append("| %s | %s | %s | %.0f | %d |" % (
                NULL_LABEL[prog], " | ".join(cells), "%.0f" % (1e9 / one) if one else "-",
                r0["bytes_out"] / max(1, r0["records"]),
                max(r["max_rss_kb"] for m in modes for r in pm[m]["runs"])))
        L.append("")
        if ns.get("peers_missing"):
            L.append("Go and Rust not measured: %s.\n" % ns["peers_missing"])

    # memory
    mem = P.get("memory")
    if mem:
        L.append("### Memory with Kafka down\n")
        L.append("keel with `KEEL_BUFFER_MAX=%s` (fsync `10ms`), every broker of the mock cluster down "
                 "(`down -1`) a second after start, keel-load closed loop with 32 connections until the "
                 "receiver refuses with 503 (buffer full) and %gs more; one request of our own reads the "
                 "refusal's headers. Then `up -1`, no load, and the time until the buffer is empty.\n"
                 % (mem["buffer_max"], mem["hold_s"]))
        L.append("| buffer full after (s) | answers (status: count) | our request | pending at `up` "
                 "| first delivery after (s) | drained in (s) | drain records/s | keel peak RSS (MiB) "
                 "| mock peak RSS (MiB) |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        pr = mem.get("probe", {})
        L.append("| %s | %s | %s%s | %.0f records, %.0f MiB | %s | %s | %s | %.0f | %.0f |" % (
            "%.1f" % mem["fill_s"] if "fill_s" in mem else "never",
            ", ".join("%s: %d" % kv for kv in sorted(mem.get("status", {}).items())),
            pr.get("status", "-"),
            ", Retry-After: %s" % pr["retry_after"] if pr.get("retry_after") else ", no Retry-After",
            mem.get("pending_records", 0), mem.get("pending_bytes", 0) / 2**20,
            "%.1f" % mem["first_delivery_s"] if "first_delivery_s" in mem else "-",
            "%.1f" % mem["drain_s"] if "drain_s" in mem else "> %d" % pc["up_max"],
            "%.0fk" % (mem.get("drain_records_per_s", 0) / 1000),
            mem.get("peak_rss_kb", 0) / 1024, mem.get("mock_peak_rss_kb", 0) / 1024))
        L.append("")
        L.append("\"Drain records/s\" counts from the first delivery: before it, librdkafka waits out "
                 "its reconnect backoff (`reconnect.backoff.max.ms`, 10 s by default) to brokers that "
                 "were down.\n")

    # targets
    L.append("### keel against the targets (issue 5)\n")
    def line(ok, text, why=""):
        L.append("- %s %s" % ("MET:" if ok else "MISSED:", text) + ("" if ok or not why else ". Why: " + why))
    for fs, m in e2e["modes"].items():
        runs = m["runs"]
        sus = rmed(runs, "sustained_per_s")[0]
        kc, gc, mc = (rmed(runs, k)[0] for k in ("keel_cpu_pct", "gen_cpu_pct", "mock_cpu_pct"))
        behind = sum(r["delivery_behind"] for r in runs) * 2 > len(runs)
        why = ("keel used %.0f%% CPU, keel-load %.0f%%, the mock cluster %.0f%% (of %d00%%): %.2f us of keel "
               "CPU per sustained record; to reach 700k/s with the CPU the generator and the mock cluster left "
               "it, keel would need <= %.2f us"
               % (kc, gc, mc, NCPU, kc / 100 * 1e6 / max(1, sus),
                  max(0.0, NCPU * 100 - gc - mc) / 100 * 1e6 / E2E_TARGET))
        ing, dlv_us = split_cost(runs)
        if ing is not None:
            why += ("; by thread, accepting cost %.2f us of CPU per record (workers) and delivering %.2f us "
                    "(keel-sink and librdkafka's threads)" % (ing, dlv_us))
        why += "; the rest of the machine used %.0f%% of a core meanwhile" % rmed(runs, "other_load_pct")[0]
        if behind:
            why += ("; delivery did not keep up (pending grew by %.0fk records/s)"
                    % (rmed(runs, "pending_growth_per_s")[0] / 1000))
        why += client_why(P.get("client"))
        line(sus >= E2E_TARGET, "end to end, fsync `%s`: %.0f records/s sustained (accepted %.0f, delivered "
             "%.0f), target >= %d" % (fs, sus, rmed(runs, "records_accepted_per_s")[0],
                                      rmed(runs, "records_delivered_per_s")[0], E2E_TARGET), why)
    if "skipped" not in ns:
        kp = ns["programs"]["keel"]
        if "two" in kp:
            two = rmed(kp["two"]["runs"], "records_per_s")[0]
            one = rmed(kp["pinned"]["runs"], "records_per_s")[0] if "pinned" in kp else 0
            line(two >= NULLSINK_TARGET, "decode + split + re-encode, 2 cores: %.0f records/s, target >= %d"
                 % (two, NULLSINK_TARGET),
                 "one core does %.0f records/s (%.0f ns per record); 1.4M/s on two needs <= %.0f ns"
                 % (one, 1e9 / max(1, one), 2e9 / NULLSINK_TARGET) if one else "")
        peers = [p for p in ("go", "rust") if p in ns["programs"]]
        if peers:
            for mode in [m for m in ("pinned", "two") if m in kp]:
                k = rmed(kp[mode]["runs"], "records_per_s")[0]
                pr_ = {p: rmed(ns["programs"][p][mode]["runs"], "records_per_s")[0] for p in peers}
                L.append("- %s: keel %.0fk records/s, %s" % (
                    "1 core" if mode == "pinned" else "2 cores",
                    k / 1000, ", ".join("%s %.0fk (keel %.2fx)" % ({"go": "Go", "rust": "Rust"}[p],
                                                                 pr_[p] / 1000, k / pr_[p]) for p in peers)))
        if pc["peers"]:
            line(len(peers) == 2, "the Go and Rust reference pipelines measured beside keel (null sink)",
                 ns.get("peers_missing", ""))
    peaks = [("end to end", max(r["keel_peak_rss_kb"] for m in e2e["modes"].values() for r in m["runs"]))]
    if mem and "peak_rss_kb" in mem:
        peaks.append(("Kafka down, buffer full, then draining", mem["peak_rss_kb"]))
    worst = max(peaks, key=lambda t: t[1])
    line(worst[1] <= RSS_TARGET_KB, "peak RSS %s, target <= 256 MiB" % ", ".join(
        "%s %.0f MiB" % (w, kb / 1024) for w, kb in peaks), "the peak was in the run \"%s\"" % worst[0])
    if mem:
        st = mem.get("status", {})
        ok = (mem.get("probe", {}).get("status") == 503 and bool(mem.get("probe", {}).get("retry_after"))
              and set(st) <= {"200", "503"} and "503" in st)
        line(ok, "with the buffer full the receiver answers 503 + Retry-After (statuses seen: %s; our "
             "request: %s, Retry-After %s)" % (", ".join(sorted(st)) or "none",
                                              mem.get("probe", {}).get("status"),
                                              mem.get("probe", {}).get("retry_after")),
             "the buffer did not fill within %ds" % pc["fill_max"] if "fill_s" not in mem else "")
        if "drain_s" in mem:
            L.append("- After Kafka came back: %.0f pending records drained in %.1f s, the first delivered "
                     "after %.1f s (%.0fk records/s from then)." % (mem["drained"], mem["drain_s"],
                                                                  mem.get("first_delivery_s", 0),
                                                                  mem["drain_records_per_s"] / 1000))
    flagged = [("e2e %s c=%d" % (r["fsync"], r["conns"]), r["other_load_pct"])
               for m in e2e["modes"].values() for r in m["runs"] if r.get("busy")]
    flagged += [("client path headers=%s" % h, r["other_load_pct"])
                for h, m in client_measured(P.get("client")) for r in m["runs"] if r.get("busy")]
    if "skipped" not in ns:
        flagged += [("null sink %s %s" % (p, mode), r["other_load_pct"])
                    for p, pm in ns["programs"].items() for mode, m in pm.items()
                    for r in m["runs"] if r.get("busy")]
    if flagged:
        L.append("\nRuns kept although the machine stayed busy: " + "; ".join(
            "%s (other load %.0f%% of a core)" % f for f in flagged) + ".")
    if img_dir and os.path.exists(os.path.join(img_dir, "pipeline.png")):
        L.append("\n![pipeline records/s](img/pipeline.png)")
    L.append("")
    return L


def client_measured(C):
    """[(headers, {"runs"})] of the client-path measurement that have runs (none for an older run's
    JSON without the key, or when it was skipped)."""
    if not C or "skipped" in C:
        return []
    return [(h, m) for h, m in C.get("headers", {}).items() if m["runs"]]


def client_section(C):
    """The "Kafka client path alone" subsection's lines ([] for an older run without it)."""
    if not C:
        return []
    L = ["### Kafka client path alone: librdkafka into the mock cluster, no keel\n"]
    if "skipped" in C:
        return L + ["Not measured: %s.\n" % C["skipped"]]
    done = client_measured(C)
    if not done:
        return L + ["Not measured: %s.\n" % C.get("error", "no run finished")]
    L.append("`build/bench/kafka_bench` does what keel's sink does per record and nothing else: the "
             "same librdkafka producer (idempotent, `acks=all`, lz4, `linger.ms` 5, "
             "`partitioner=murmur2_random`, keel's queue limits, `message.timeout.ms=0`), the same "
             "`rd_kafka_produceva()` call (16-byte random key as a trace id, value of %d bytes without "
             "copy, timestamp, and with `--headers 3` keel's three headers `keel.signal`, "
             "`keel.schema`, `content-type`), delivery reports served by `rd_kafka_poll()` on the "
             "producing thread, at most 65536 messages undelivered (keel's window), keel's glibc "
             "malloc settings (its mmap and trim thresholds; the larger thread cache keel serve runs "
             "with, which kafka_bench sets for itself the same way: GLIBC_TUNABLES was `%s`). "
             "Values are cut "
             "from the end-to-end input at varying offsets, so lz4 sees bytes like keel's; %d bytes "
             "is the message keel makes of one record (%s). Each run starts a fresh mock cluster "
             "(the end-to-end one) and counts the messages whose delivery report said success over a "
             "%gs window after a warm-up; producer CPU is the process's (all librdkafka threads) by "
             "`getrusage` over the window, the mock cluster's from /proc. Producer and mock share the "
             "%d cores, unpinned.\n" % (C["size"], done[0][1]["runs"][0].get("glibc_tunables", "?"),
                                        C["size"], C["size_from"], C["seconds"], NCPU))
    L.append("```sh")
    L.append(cmd_str(mock_argv()))
    for h, m in done:
        a = ["<bootstrap>" if i and m["runs"][0]["argv"][i - 1] == "--brokers" else x
             for i, x in enumerate(m["runs"][0]["argv"])]
        L.append(cmd_str(a))
    L.append("```\n")
    L.append("| headers per message | value bytes | messages/s delivered | producer CPU % "
             "| us of CPU per message | mock CPU % | failed deliveries |")
    L.append("|---|---|---|---|---|---|---|")
    names = {"0": "none", "3": "keel's 3"}
    for h, m in done:
        runs = m["runs"]
        L.append("| %s | %d | %s | %s | %s | %s | %d |" % (
            names.get(h, h), C["size"], kfmt(rmed(runs, "msgs_per_s")),
            fmt_range(rmed(runs, "producer_cpu_pct")), fmt_range(rmed(runs, "us_per_msg"), 1, 2),
            fmt_range(rmed(runs, "mock_cpu_pct")), sum(r["failed"] for r in runs)))
    L.append("")
    if C.get("error"):
        L.append("A run failed: %s.\n" % C["error"])
    return L


def client_why(C):
    """The end-to-end miss's clause about the client path alone ("" for an older run without it)."""
    got = dict(client_measured(C))
    if "3" not in got:
        return ""
    r3 = got["3"]["runs"]
    rate3 = rmed(r3, "msgs_per_s")[0]
    text = ("; the Kafka client path alone, with keel's three headers, delivered %.0f messages/s using "
            "%.2f us of CPU per message" % (rate3, rmed(r3, "us_per_msg")[0]))
    if "0" in got:
        r0 = got["0"]["runs"]
        text += " (%.0f messages/s and %.2f us without headers)" % (rmed(r0, "msgs_per_s")[0],
                                                                  rmed(r0, "us_per_msg")[0])
    if rate3 < E2E_TARGET:
        text += (": below the target by itself, with no OTLP receiver, buffer or generator beside it, so "
                 "on this machine no end-to-end rate reaches the target while librdkafka makes the messages")
    return text


def split_cost(runs):
    """Medians over runs of keel's CPU per record accepted (the threads named keel: workers, main,
    syncer) and per record delivered (keel-sink and librdkafka's rdk:* threads), in microseconds."""
    ing, dlv = [], []
    for r in runs:
        th = r.get("keel_threads_cpu_pct") or {}
        if not th or not r["records_accepted_per_s"] or not r["records_delivered_per_s"]:
            continue
        ing.append(th.get("keel", 0) / 100 * 1e6 / r["records_accepted_per_s"])
        dlv.append(sum(v for n, v in th.items() if n == "keel-sink" or n.startswith("rdk:"))
                   / 100 * 1e6 / r["records_delivered_per_s"])
    if not ing:
        return None, None
    return statistics.median(ing), statistics.median(dlv)


def pipeline_plot(P, img_dir):
    """docs/img/pipeline.png: records/s of keel end to end and of the three null-sink programs."""
    ns = P["nullsink"]
    if not shutil.which("gnuplot") or "skipped" in ns:
        return
    os.makedirs(img_dir, exist_ok=True)
    rows = []
    for fs, m in P["e2e"]["modes"].items():
        rows.append(("keel e2e, fsync %s" % fs, float("nan"), rmed(m["runs"], "sustained_per_s")[0]))
    for prog, pm in ns["programs"].items():
        rows.append(("%s null sink" % {"keel": "keel", "go": "Go", "rust": "Rust"}[prog],
                     rmed(pm["pinned"]["runs"], "records_per_s")[0] if "pinned" in pm else float("nan"),
                     rmed(pm["two"]["runs"], "records_per_s")[0] if "two" in pm else float("nan")))
    with tempfile.NamedTemporaryFile("w", suffix=".dat", delete=False) as f:
        for i, (label, one, two) in enumerate(rows):
            f.write('%d "%s" %s %s\n' % (i, label, one / 1000, two / 1000))
        dat = f.name
    script = ("set terminal pngcairo size 900,540 noenhanced\nset grid\nset key left top\n"
              "set output '%s/pipeline.png'\nset title 'OTLP logs records/s (k): end to end to Kafka, "
              "and decode + split + re-encode into a null sink'\nset style data histograms\n"
              "set style fill solid 0.8\nset ylabel 'k records/s'\nset yrange [0:*]\nset xtics rotate by -15\n"
              "set datafile missing 'nan'\n"
              "plot '%s' using 3:xtic(2) title '1 core (null sink)', "
              "'' using 4 title '2 cores (end to end: sustained to Kafka)', "
              "%g with lines dt 2 title 'e2e target 700k', %g with lines dt 3 title 'null sink target 1.4M'\n"
              % (img_dir, dat, E2E_TARGET / 1000, NULLSINK_TARGET / 1000))
    subprocess.run(["gnuplot"], input=script, text=True, check=False)
    os.unlink(dat)


def pipeline_failures(P):
    """What a smoke run refuses: requests that failed, records not delivered, a failed program."""
    bad = []
    for m in P["e2e"]["modes"].values():
        for r in m["runs"]:
            errs = sum(r["errors"].values())
            if errs or r["non2xx"] or not r["requests"]:
                bad.append("e2e %s: %d requests, %d errors, %d non-2xx"
                           % (r["fsync"], r["requests"], errs, r["non2xx"]))
            if not r["accepted_total"] or not r["delivered_total"]:
                bad.append("e2e %s: %d records accepted, %d delivered" % (r["fsync"], r["accepted_total"],
                                                                         r["delivered_total"]))
    C = P.get("client") or {}
    if C.get("error"):
        bad.append("client path: " + C["error"])
    return bad


# ---- the gateway (issue 6): keel's reverse proxy beside nginx's proxy_pass, one upstream ---------
# Pinning on the 2 cores: the proxy under test on CPU 0 with one worker, alone, as the servers of
# the HTTP part; the upstream (Debian's nginx with bench/peers/nginx/nginx.conf.in, one worker:
# a fixed /echo answer and GET /) and keel-load share CPU 1. Both proxies run at once (idle, one
# costs nothing) with the same upstream, pinning, generator and connections, and take turns point
# by point, repetition by repetition. "direct" is keel-load against the upstream itself: the
# latency floor that both proxies add to. The proxy is the only thing on its core, so the closed
# loop is limited by the proxy (it does about twice the socket work of the upstream per request)
# unless CPU 1 saturates first: the report gives both CPUs and the proxy's CPU per request.

GW_HEADING = "## Gateway: keel vs nginx proxy_pass (issue 6)"
GW_LABEL = {"keel-gw": "keel gateway", "nginx-gw": "nginx proxy_pass", "direct": "upstream direct (no proxy)"}
GW_KEEPALIVE = 64
GW_CFG = {
    # smoke: the harness works and keel proxies without errors (CI); nothing asserted about speed
    "smoke": dict(reps=1, seconds=1, warmup=0.5, conns=64, rate=10000, paths=["/echo"], direct=False,
                  max_other=1000, profile=False),
    "quick": dict(reps=1, seconds=3, warmup=1, conns=64, rate=10000, paths=["/echo", "/"], direct=True,
                  max_other=100, profile=True),
    "full": dict(reps=3, seconds=8, warmup=2, conns=64, rate=10000, paths=["/echo", "/"], direct=True,
                 max_other=10, profile=True),
}


def gw_config(upstream_port):
    """keel's gateway config for the benchmark: every path to the one upstream, pooled."""
    return ("upstreams:\n  up:\n    endpoints: [127.0.0.1:%d]\n    keepalive: %d\n"
            "routes:\n  - prefix: /\n    upstream: up\n" % (upstream_port, GW_KEEPALIVE))


def gw_config_file(tmp, port, upstream_port):
    path = os.path.join(tmp, "keel-gw-%d.yaml" % port)
    with open(path, "w") as f:
        f.write(gw_config(upstream_port))
    return path


def gw_profile(srv, cfg, gen_cpu, tmp, seconds=4):
    """perf record of the keel proxy for `seconds` of a closed loop of POST /echo (after the
    measurements: its overhead touches no figure). perf's top binaries and symbols, or None."""
    if not shutil.which("perf"):
        return None
    data = os.path.join(tmp, "perf-gw.data")
    argv = load_argv(srv.port, "/echo", 0, seconds + 2, 1, cfg["conns"], gen_cpu)
    gen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        rec = subprocess.run(["perf", "record", "-q", "-o", data, "-p", str(srv.proc.pid), "--",
                              "sleep", str(seconds)], capture_output=True, text=True)
    finally:
        gen.wait(seconds + 30)
    if rec.returncode != 0 or not os.path.exists(data):
        log("perf record failed: " + rec.stderr.strip()[-200:])
        return None
    own = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--dsos", "keel",
                          "--sort", "sym", "--percent-limit", "1"], capture_output=True, text=True)
    return {"seconds": seconds, "path": "/echo", "dso": perf_top(data, "dso", 8),
            "sym": perf_top(data, "dso,sym", 30),
            "keel": [l.rstrip() for l in own.stdout.splitlines() if l.strip() and not l.startswith("#")][:12]}


def gateway_bench(level="full"):
    """keel's gateway beside nginx's proxy_pass (level full, quick or smoke; see GW_CFG):
    {"points": {"max /echo" | "max /" | "rate 10000": {proxy: [runs]}}, ...}."""
    cfg = dict(GW_CFG[level])
    for b in (os.path.join(BUILD, "keel"), os.path.join(BUILD, "keel-load")):
        if not os.access(b, os.X_OK):
            raise SystemExit("%s missing: build first (cmake --build %s)" % (b, BUILD))
    have_nginx = bool(shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"))
    if not have_nginx and level != "smoke":
        raise SystemExit("nginx missing: run scripts/deps.sh or bench/setup.sh first")
    gen_cpu = "1" if NCPU > 1 else None
    G = {"level": level, "config": cfg, "keepalive": GW_KEEPALIVE,
         "upstream": "nginx" if have_nginx else "keel",  # keel's own /echo if nginx is missing (smoke)
         "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    G["busy_before_pct"] = 100 * (machine_busy(1) if level == "smoke" else wait_quiet("gateway runs"))
    proxies = ["keel-gw", "nginx-gw"] if have_nginx else ["keel-gw"]
    tmp = tempfile.mkdtemp(prefix="keel-gw-")
    up, srvs = None, {}
    try:
        up = Server(G["upstream"], 1, gen_cpu, tmp)
        for name in proxies:
            srvs[name] = Server(name, 1, "0" if gen_cpu else None, tmp, upstream=up.port)
        time.sleep(0.5)
        G["idle_rss_kb"] = {n: s.status_kb("VmRSS") for n, s in srvs.items()}
        G["binary_bytes"] = {n: stripped_size(s.binary) for n, s in srvs.items()}
        targets = dict(srvs, **({"direct": up} if cfg["direct"] else {}))
        points = [("max " + p, p, 0) for p in cfg["paths"]] + [("rate %d" % cfg["rate"], "/echo", cfg["rate"])]
        G["points"] = {pt: {n: [] for n in targets} for pt, _, _ in points}
        for pt, path, rate in points:
            for rep in range(cfg["reps"]):
                for name, srv in targets.items():
                    log("gateway %s %s (%d/%d)" % (name, pt, rep + 1, cfg["reps"]))
                    r = measured(srv, path, rate, cfg, gen_cpu, None if name == "direct" else up)
                    if name == "direct":  # the upstream is the server measured: no proxy
                        r["upstream_cpu_pct"], r["server_cpu_pct"] = r["server_cpu_pct"], None
                    G["points"][pt][name].append(r)
        G["peak_rss_kb"] = {n: s.status_kb("VmHWM") for n, s in srvs.items()}
        if cfg["profile"]:
            G["profile"] = gw_profile(srvs["keel-gw"], cfg, gen_cpu, tmp)
    finally:
        for s in list(srvs.values()) + ([up] if up else []):
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    G["versions"] = {"keel": first_line([os.path.join(BUILD, "keel"), "version"]),
                     "nginx": first_line(["nginx", "-v"]) if have_nginx else "not found",
                     "kernel": platform.release(), "cpu": cpu_model()}
    G["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return G


def gw_cpu_us(runs):
    """Median over runs of the proxy's CPU per request, in microseconds."""
    return statistics.median(r["server_cpu_pct"] / 100 * 1e6 / max(1.0, r["achieved_rate"]) for r in runs)


def gateway_section(G):
    """The section's lines (markdown)."""
    cfg, P = G["config"], G["points"]
    L = [GW_HEADING + "\n"]
    note = {"quick": " (quick run: one repetition, short windows; `make bench-gateway` for the real figures)",
            "smoke": " (smoke run: checks that the harness works, the figures mean nothing)"}
    L.append("Written by `bench/run.py` (%s)%s.\n" % (G.get("cmdline", "make bench-gateway"),
                                                     note.get(G["level"], "")))
    v = G["versions"]
    L.append("- Date: %s to %s; load on the machine before: %.0f%%"
             % (G["started"], G["finished"], G["busy_before_pct"]))
    L.append("- Machine: %s, %d CPUs, kernel %s. Versions: %s; %s" % (v["cpu"], NCPU, v["kernel"], v["keel"],
                                                                     v["nginx"]))
    L.append("- Setup: one upstream for both proxies, %s with one worker (`bench/peers/nginx/nginx.conf.in`: "
             "`POST /echo` answers a fixed copy of body.json, `GET /` a short text). The proxy under test runs "
             "pinned to CPU 0 with one worker, alone; the upstream and the generator `build/keel-load` share "
             "CPU 1. Both proxies run at once and take turns, point by point and repetition by repetition%s. "
             "Upstream keep-alive pools of %d connections on both sides."
             % ("Debian's nginx" if G["upstream"] == "nginx" else "keel (nginx was not found)",
                "; *direct* is the generator against the upstream itself, the floor both proxies add to"
                if "direct" in next(iter(P.values())) else "", G["keepalive"]))
    L.append("- Method: %d connections, %gs per measurement after %gs of warm-up, %d repetition%s; figures "
             "are medians with (min..max). A run beside more than %d%% of a core of other load is discarded "
             "and repeated (up to 5 tries). Request body for POST: bench/peers/body.json (%d bytes).%s"
             % (cfg["conns"], cfg["seconds"], cfg["warmup"], cfg["reps"], "s" if cfg["reps"] > 1 else "",
                cfg["max_other"], os.path.getsize(BODY), busy_note(P)))
    L.append("")
    L.append("keel (`keel serve --workers 1 -c gw.yaml`, access log off, everything else its defaults):\n")
    L.append("```yaml")
    L.extend(gw_config(0).replace("127.0.0.1:0", "127.0.0.1:<upstream port>").rstrip("\n").split("\n"))
    L.append("```\n")
    L.append("nginx (`bench/peers/nginx/proxy.conf.in`, `worker_processes 1`, access log off):\n")
    L.append("```nginx")
    L.append("upstream up { server 127.0.0.1:<upstream port>; keepalive %d; keepalive_requests 1000000; }"
             % G["keepalive"])
    L.append("location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }")
    L.append("```\n")
    L.append("Not the same work per request: keel adds `X-Forwarded-For`, `X-Forwarded-Proto` and a "
             "generated `X-Request-Id` to every request and keeps its metrics on; nginx with this config "
             "adds nothing but rewrites `Host`, and buffers the request body (606 bytes, in memory) before "
             "sending it.\n")
    names = [n for n in ("keel-gw", "nginx-gw", "direct") if n in next(iter(P.values()))]
    maxes = [pt for pt in P if pt.startswith("max ")]
    L.append("### Max throughput, closed loop, %d connections\n" % cfg["conns"])
    L.append("| path | through | req/s | p99 (ms) | proxy CPU % | upstream CPU % | keel-load CPU % "
             "| proxy CPU per request (us) |")
    L.append("|---|---|---|---|---|---|---|---|")
    for pt in maxes:
        for n in names:
            runs = P[pt][n]
            L.append("| `%s %s` | %s | %s | %s | %s | %s | %s | %s |" % (
                "POST" if pt.endswith("/echo") else "GET", pt[4:], GW_LABEL[n],
                fmt_range(med(runs, "achieved_rate")), fmt_range(med(runs, "latency_us", "p99"), 0.001, 2),
                fmt_range(med(runs, "server_cpu_pct")) if n != "direct" else "-",
                fmt_range(med(runs, "upstream_cpu_pct")), fmt_range(med(runs, "gen_cpu_pct")),
                "%.1f" % gw_cpu_us(runs) if n != "direct" else "-"))
    L.append("")
    L.append("A proxy below ~97% CPU in a closed loop was not the limit: it waited for CPU 1, where "
             "keel-load and the upstream together use up to 100% (every request crosses between the "
             "cores four times); then its CPU per request is the fairer comparison.\n")
    rpt = "rate %d" % cfg["rate"]
    L.append("### Constant rate, %d req/s, POST /echo\n" % cfg["rate"])
    L.append("| through | achieved | p50 (ms) | p99 (ms) | p99.9 (ms) | proxy CPU % | upstream CPU % "
             "| proxy peak RSS (KiB) | generator lag (ms) |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for n in names:
        runs = P[rpt][n]
        L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            GW_LABEL[n], fmt_range(med(runs, "achieved_rate")),
            fmt_range(med(runs, "latency_us", "p50"), 0.001, 3),
            fmt_range(med(runs, "latency_us", "p99"), 0.001, 3),
            fmt_range(med(runs, "latency_us", "p999"), 0.001, 3),
            fmt_range(med(runs, "server_cpu_pct")) if n != "direct" else "-",
            fmt_range(med(runs, "upstream_cpu_pct")),
            G["peak_rss_kb"][n] if n in G["peak_rss_kb"] else "-",
            fmt_range(med(runs, "max_schedule_lag_us"), 0.001, 1)))
    L.append("")
    L.extend(gateway_targets(G, names, maxes, rpt))
    prof = G.get("profile")
    if prof:
        L.append("\n### Where the keel proxy's time goes (perf, closed loop, POST /echo)\n")
        L.append("`perf record -p` on the keel proxy for %ds of one more closed-loop run (after the "
                 "measurements above); share of samples by binary, then the top symbols (`[k]` kernel, "
                 "`[.]` user space):\n" % prof["seconds"])
        L.append("```")
        L.extend(prof["dso"] + [""] + prof["sym"])
        L.append("```\n")
        if prof.get("keel"):
            L.append("Within keel's own code (share of keel's samples):\n")
            L.append("```")
            L.extend(prof["keel"])
            L.append("```\n")
        L.append(gw_profile_summary(prof))
    bad = gateway_failures(G)
    if bad:
        L.append("\n### Measurements with failed requests\n")
        L.extend("- " + b for b in bad)
    L.append("")
    return L


def gw_profile_summary(prof):
    """One sentence: the binaries' shares and keel's own heaviest symbols."""
    share = {}
    for row in prof["dso"]:
        parts = row.split()
        if len(parts) >= 2 and parts[0].endswith("%"):
            share[parts[1]] = float(parts[0][:-1])
    own = []
    for row in prof["sym"]:
        parts = row.split()
        if len(parts) >= 4 and parts[1] == "keel" and parts[0].endswith("%"):
            own.append("`%s` %s" % (parts[-1], parts[0]))
    return ("The kernel has %.0f%% of the samples, libc (system-call entry points, malloc, memmove) %.0f%%, "
            "keel's own code %.0f%%%s." % (
                share.get("[kernel.kallsyms]", 0), share.get("libc.so.6", 0), share.get("keel", 0),
                "; keel's heaviest: " + ", ".join(own[:6]) if own else ""))


def gateway_targets(G, names, maxes, rpt):
    """The issue 6 targets: keel's p99 at the rate no more than nginx's, its max at least nginx's."""
    P = G["points"]
    L = ["### keel against the targets (issue 6)\n"]
    if "nginx-gw" not in names:
        L.append("- Not judged: nginx was not measured.")
        return L
    def line(ok, text, why=""):
        L.append("- %s %s" % ("MET:" if ok else "MISSED:", text) + ("" if ok or not why else ". Why: " + why))
    k, n = P[rpt]["keel-gw"], P[rpt]["nginx-gw"]
    d = P[rpt].get("direct")
    for q, label in (("p99", "p99"), ("p999", "p99.9")):
        kv, klo, khi = med(k, "latency_us", q)
        nv, nlo, nhi = med(n, "latency_us", q)
        added = ""
        if d:
            dv = med(d, "latency_us", q)[0]
            added = "; added over direct (%.3f ms): keel %+.3f ms, nginx %+.3f ms" % (
                dv / 1000, (kv - dv) / 1000, (nv - dv) / 1000)
        why = []
        if klo <= nhi and nlo <= khi:
            why.append("the runs overlap (keel %.3f..%.3f ms, nginx %.3f..%.3f ms)"
                       % (klo / 1000, khi / 1000, nlo / 1000, nhi / 1000))
        kl, nl = med(k, "max_schedule_lag_us")[0], med(n, "max_schedule_lag_us")[0]
        if q == "p999":
            why.append("the generator itself fell up to %.1f ms (keel's runs) and %.1f ms (nginx's) behind "
                       "its schedule (medians)" % (kl / 1000, nl / 1000))
        kc, nc = med(k, "server_cpu_pct")[0], med(n, "server_cpu_pct")[0]
        why.append("at this rate keel used %.0f%% of its core, nginx %.0f%%" % (kc, nc))
        text = "%d req/s %s: keel %.3f ms vs nginx %.3f ms (ratio %.2f)%s" % (
            G["config"]["rate"], label, kv / 1000, nv / 1000, kv / nv, added)
        if q == "p99":
            line(kv <= nv, text, "; ".join(why))
        else:
            L.append("- (not a target) " + text)
    kc, nc = med(k, "server_cpu_pct")[0], med(n, "server_cpu_pct")[0]
    L.append("- (not a target) %d req/s proxy CPU: keel %.1f%% vs nginx %.1f%% (ratio %.2f)"
             % (G["config"]["rate"], kc, nc, kc / max(0.1, nc)))
    for pt in maxes:
        k, n = P[pt]["keel-gw"], P[pt]["nginx-gw"]
        kv, nv = med(k, "achieved_rate")[0], med(n, "achieved_rate")[0]
        kc, nc = med(k, "server_cpu_pct")[0], med(n, "server_cpu_pct")[0]
        ku, nu = gw_cpu_us(k), gw_cpu_us(n)
        why = ("keel used %.1f us of CPU per proxied request, nginx %.1f us (ratio %.2f); keel's core was %.0f%% "
               "busy, nginx's %.0f%%; the upstream's %.0f%% and %.0f%%" % (
                   ku, nu, ku / nu, kc, nc, med(k, "upstream_cpu_pct")[0], med(n, "upstream_cpu_pct")[0]))
        if kc < 97:
            why += "; keel was not CPU-bound, so CPU 1 (generator + upstream) set its limit"
        if G.get("profile"):
            why += "; see the profile below"
        line(kv >= nv, "max %s %s, closed loop: keel %.0f req/s vs nginx %.0f req/s (ratio %.2f)"
             % ("POST" if pt.endswith("/echo") else "GET", pt[4:], kv, nv, kv / nv), why)
    L.append("- Peak RSS: keel %d KiB, nginx %d KiB (master + worker); idle: keel %d KiB, nginx %d KiB."
             % (G["peak_rss_kb"]["keel-gw"], G["peak_rss_kb"]["nginx-gw"], G["idle_rss_kb"]["keel-gw"],
                G["idle_rss_kb"]["nginx-gw"]))
    return L


def gateway_failures(G):
    """Every measurement whose requests failed or were answered non-2xx."""
    bad = []
    for pt, by in G.get("points", {}).items():
        for name, runs in by.items():
            for r in runs:
                errs = sum(r["errors"].values())
                if errs or r["non2xx"] or not r["requests"]:
                    bad.append("gateway %s %s: %d requests, %d errors, %d non-2xx"
                               % (name, pt, r["requests"], errs, r["non2xx"]))
    return bad


def splice_section(md_path, lines, heading=PIPELINE_HEADING):
    """Puts a section (the pipeline's by default) into benchmarks.md in place of its previous
    version (or at the end)."""
    old = ""
    if os.path.exists(md_path):
        with open(md_path) as f:
            old = f.read()
    section = "\n".join(lines).rstrip("\n") + "\n"
    if not old:
        new = "# keel benchmarks\n\n" + section
    else:
        start = old.find(heading + "\n")
        if start < 0:
            new = old.rstrip("\n") + "\n\n" + section
        else:
            nxt = old.find("\n## ", start + len(heading))
            new = old[:start] + section + (old[nxt + 1:] if nxt >= 0 else "")
    with open(md_path, "w") as f:
        f.write(new)


def write_part(out, key, data, lines, heading):
    """One part run alone: its JSON on stdout, its section of out/benchmarks.md and its key of
    out/benchmarks.json replaced, the rest of both kept."""
    print(json.dumps(data, indent=1))
    splice_section(os.path.join(out, "benchmarks.md"), lines, heading)
    jpath = os.path.join(out, "benchmarks.json")
    try:
        with open(jpath) as f:
            whole = json.load(f)
    except (OSError, ValueError):
        whole = {}
    whole[key] = data
    with open(jpath, "w") as f:
        json.dump(whole, f, indent=1)
    log("wrote the %s section of %s" % (key, os.path.join(out, "benchmarks.md")))


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
    ap.add_argument("--pipeline-only", action="store_true",
                    help="only the telemetry pipeline part: JSON on stdout, its section of benchmarks.md")
    ap.add_argument("--no-pipeline", action="store_true", help="no pipeline part")
    ap.add_argument("--gateway-only", action="store_true",
                    help="only the gateway part: JSON on stdout, its section of benchmarks.md")
    ap.add_argument("--no-gateway", action="store_true", help="no gateway part")
    a = ap.parse_args()
    level = "smoke" if a.smoke else "quick" if a.quick else "full"
    if a.pipeline_only:
        out = a.out or os.path.join(ROOT, "docs")
        os.makedirs(out, exist_ok=True)
        P = pipeline_bench(level)
        P["cmdline"] = "python3 bench/run.py --pipeline-only" + ("" if level == "full" else " --" + level)
        img = os.path.join(out, "img")
        pipeline_plot(P, img)
        write_part(out, "pipeline", P, pipeline_section(P, img), PIPELINE_HEADING)
        bad = pipeline_failures(P)
        if bad and a.smoke:
            raise SystemExit("pipeline: " + "; ".join(bad))
        return
    if a.gateway_only:
        out = a.out or os.path.join(ROOT, "docs")
        os.makedirs(out, exist_ok=True)
        G = gateway_bench(level)
        G["cmdline"] = "make bench-gateway" if level == "full" else "python3 bench/run.py --gateway-only --" + level
        write_part(out, "gateway", G, gateway_section(G), GW_HEADING)
        bad = gateway_failures(G)
        if bad and a.smoke:
            raise SystemExit("gateway: " + "; ".join(bad))
        return
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
        parts = [("gateway", gateway_bench, a.no_gateway), ("pipeline", pipeline_bench, a.no_pipeline)]
        for key, bench, skip in parts:
            if skip:
                continue
            try:
                results[key] = bench(level)
            except (RuntimeError, OSError, ValueError, subprocess.SubprocessError, SystemExit) as e:
                if a.smoke:
                    raise
                # the HTTP results of the run are kept (a busy machine refuses one part with
                # SystemExit); the report says what failed: `make bench-<part>` redoes it alone
                log("%s part failed: %s" % (key, e))
                results[key + "_error"] = str(e)
        with open(os.path.join(out, "benchmarks.json"), "w") as f:
            json.dump(results, f, indent=1)
    img = os.path.join(out, "img")
    plots(results, img)
    cmdline = "make bench" if not (a.quick or a.smoke) else ("make bench-quick" if a.quick else "smoke")
    if a.from_json:
        cmdline = results.get("cmdline", "make bench")
    results["cmdline"] = cmdline
    if results.get("pipeline"):
        results["pipeline"].setdefault("cmdline", cmdline)
        pipeline_plot(results["pipeline"], img)
    if results.get("gateway"):
        results["gateway"].setdefault("cmdline", cmdline)
    report(results, os.path.join(out, "benchmarks.md"), img, cmdline)
    log("wrote %s" % os.path.join(out, "benchmarks.md"))
    bad = failed_requests(results)
    if results.get("pipeline"):
        bad += ["pipeline: " + b for b in pipeline_failures(results["pipeline"])]
    if results.get("gateway"):
        bad += gateway_failures(results["gateway"])
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
