"""test_deploy.py - deploy/ without a cluster: every YAML parses and passes yamllint, the kustomizations
name files that exist, and the manifests agree with keel itself: probe paths answer 200 on the ports the
config listens on, the grace period covers the drain, the metric names of the HPA, the adapter rule, the
dashboard and the alerts are in a real keel's /metrics, the Secret mounts are where the config reads, and
`keel check-config` accepts the ConfigMap's config with the Deployment's environment."""
import glob
import math
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

from harness import KEEL, ROOT, Keel, Suite, get, pipeline_env, request
from test_alerts import alert_rules, dashboard, dashboard_exprs, load_yaml, metric_names, promtool, yaml

DEPLOY = os.path.join(ROOT, "deploy")
K8S = os.path.join(DEPLOY, "k8s")
COMPOSE = os.path.join(DEPLOY, "compose", "docker-compose.yaml")
CONFIG = os.path.join(DEPLOY, "keel.yaml")
EXAMPLE = os.path.join(ROOT, "keel.example.yaml")
# The paths agreed in the deploy contract (the image, compose and Kubernetes use the same).
API_KEYS_DIR = "/etc/keel/secrets/api-keys"
TLS_CERT, TLS_KEY = "/etc/keel/tls/tls.crt", "/etc/keel/tls/tls.key"
LISTENERS = {"http": "listen", "otlp-http": "otlp.http_listen", "otlp-grpc": "otlp.grpc_listen"}


def yaml_files():
    return sorted(p for ext in ("yaml", "yml") for p in glob.glob(os.path.join(DEPLOY, "**", "*." + ext),
                                                                 recursive=True))


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ---- a small kustomize: what deploy/k8s uses (resources, images, generators, component patches) ----

def kustomization(directory):
    return load_yaml(os.path.join(directory, "kustomization.yaml"))


def generated(kind, gen, directory):
    data = {}
    for spec in gen.get("files", []):
        key, _, path = spec.partition("=")
        path = path or key
        with open(os.path.join(directory, path)) as f:
            data[os.path.basename(key)] = f.read()
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}, "data": data}


def render(directory=K8S):
    """The objects `kubectl kustomize deploy/k8s` produces, by (kind, name), without hash suffixes."""
    k = kustomization(directory)
    objs = {}
    for r in k.get("resources", []):
        for d in load_docs(os.path.join(directory, r)):
            objs[(d["kind"], d["metadata"]["name"])] = d
    for gen in k.get("configMapGenerator", []):
        objs[("ConfigMap", gen["name"])] = generated("ConfigMap", gen, directory)
    for gen in k.get("secretGenerator", []):
        objs[("Secret", gen["name"])] = generated("Secret", gen, directory)
    images = {i["name"]: i for i in k.get("images", [])}
    for d in objs.values():
        for c in pod_spec(d).get("containers", []) if d["kind"] == "Deployment" else []:
            name, _, tag = c["image"].partition(":")
            if name in images:
                c["image"] = "%s:%s" % (images[name].get("newName", name), images[name].get("newTag", tag or "latest"))
    return objs


def pod_spec(deployment):
    return deployment["spec"]["template"]["spec"]


def the(objs, kind):
    found = [d for (k, _), d in objs.items() if k == kind]
    assert len(found) == 1, "want exactly one %s in deploy/k8s, found %d" % (kind, len(found))
    return found[0]


def container(objs):
    return pod_spec(the(objs, "Deployment"))["containers"][0]


# ---- keel's effective configuration: defaults < deploy/keel.yaml < the Deployment's env ----

def flatten(node, prefix=""):
    out = {}
    for k, v in (node or {}).items():
        key = prefix + str(k)
        if isinstance(v, dict) and key not in ("upstreams",):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def env_name(key):
    return "KEEL_" + key.upper().replace(".", "_")


def quantity(s):
    """A Kubernetes quantity or a keel size in bytes (or CPUs)."""
    m = re.fullmatch(r"([0-9.]+)\s*(m|Ki|Mi|Gi|Ti|KiB|MiB|GiB|TiB|k|M|G)?", str(s))
    assert m, "not a quantity: %r" % s
    mult = {None: 1, "m": 0.001, "k": 1e3, "M": 1e6, "G": 1e9}.get(m.group(2))
    if mult is None:
        mult = 1024 ** (["K", "M", "G", "T"].index(m.group(2)[0]) + 1)
    return float(m.group(1)) * mult


def seconds(s):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", str(s))
    assert m and (m.group(2) or m.group(1) == "0"), "not a keel duration: %r" % s
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 0}[m.group(2)]


def deployment_env(objs):
    """The container's environment as the kubelet sets it (resourceFieldRef resolved)."""
    c = container(objs)
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        else:
            ref = e["valueFrom"]["resourceFieldRef"]
            kind, res = ref["resource"].split(".")
            val = quantity(c["resources"][kind][res]) / quantity(ref.get("divisor", "1"))
            env[e["name"]] = str(math.ceil(val))
    return env


def effective_config(objs):
    cfg = flatten(load_yaml(EXAMPLE))
    cfg.setdefault("admin.listen", "")  # the one key keel.example.yaml leaves to docs/gateway.md
    cfg.update(flatten(load_yaml(CONFIG)))
    by_env = {env_name(k): k for k in cfg}
    for name, value in deployment_env(objs).items():
        assert name in by_env or not name.startswith("KEEL_"), "the Deployment sets %s, which is no keel key" % name
        if name in by_env:
            cfg[by_env[name]] = value
    return cfg


def port_of(address):
    return int(str(address).rsplit(":", 1)[1])


# ---- files ----

def test_every_yaml_parses():
    files = yaml_files()
    assert len(files) >= 15, "expected deploy/ to hold the k8s, compose and prometheus YAML, found %r" % files
    problems = []
    for path in files:
        try:
            load_docs(path)
        except yaml.YAMLError as e:
            problems.append("%s: %s" % (os.path.relpath(path, ROOT), e))
    assert not problems, "\n".join(problems)


def test_yamllint():
    assert shutil.which("yamllint"), "yamllint not found: install Debian's yamllint package (scripts/deps.sh)"
    p = subprocess.run(["yamllint", "--strict", "-f", "parsable", "-c", os.path.join(DEPLOY, ".yamllint"), DEPLOY],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, "yamllint found problems:\n%s%s" % (p.stdout, p.stderr)


def test_kustomizations_name_existing_files():
    problems = []
    for kfile in glob.glob(os.path.join(DEPLOY, "**", "kustomization.yaml"), recursive=True):
        d, k = os.path.dirname(kfile), load_yaml(kfile)
        paths = list(k.get("resources", [])) + list(k.get("components", []))
        paths += [p["path"] for p in k.get("patches", []) if "path" in p]
        for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
            paths += [f.partition("=")[2] or f for f in gen.get("files", [])]
        for p in paths:
            full = os.path.normpath(os.path.join(d, p))
            if not os.path.exists(full):
                problems.append("%s names %s, which does not exist" % (os.path.relpath(kfile, ROOT), p))
            elif not full.startswith(d + os.sep) and os.path.isfile(full):
                problems.append("%s loads %s from outside its directory: kustomize refuses that" % (kfile, p))
    assert not problems, "\n".join(problems)


def test_kubectl_kustomize_builds():
    """When kubectl is on PATH (it is not a Debian package, so not everywhere), the real kustomize
    agrees with render(): same objects, same image; the TLS component applies on top."""
    if not shutil.which("kubectl"):
        print("     (kubectl not on PATH: the real kustomize build is not checked)")
        return
    mine = {(k, n) for (k, n) in render()}

    def build(d):
        p = subprocess.run(["kubectl", "kustomize", d], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, "kubectl kustomize %s failed: %s" % (d, p.stderr)
        return list(yaml.safe_load_all(p.stdout))
    docs = build(K8S)
    theirs = {(d["kind"], re.sub(r"-[a-z0-9]{10}$", "", d["metadata"]["name"])) for d in docs}
    assert theirs == mine, "kubectl kustomize gives %r, render() %r" % (sorted(theirs), sorted(mine))
    dep = [d for d in docs if d["kind"] == "Deployment"][0]
    assert pod_spec(dep)["containers"][0]["image"] == container(render())["image"]
    for d in (K8S, os.path.join(K8S, "prometheus-adapter")):
        build(d)
    with tempfile.TemporaryDirectory() as overlay:  # an overlay that uses the TLS component
        with open(os.path.join(overlay, "kustomization.yaml"), "w") as f:
            yaml.safe_dump({"resources": [os.path.relpath(K8S, overlay)],
                            "components": [os.path.relpath(os.path.join(K8S, "components", "tls"), overlay)]}, f)
        dep = [d for d in build(overlay) if d["kind"] == "Deployment"][0]
        c = pod_spec(dep)["containers"][0]
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http", "scheme": "HTTPS"}, c
        assert {"name": "KEEL_TLS_CERT", "value": TLS_CERT} in c["env"], c["env"]


def test_configmap_source_is_deploy_keel_yaml():
    with open(CONFIG) as f:
        want = f.read()
    with open(os.path.join(K8S, "keel.yaml")) as f:
        assert f.read() == want, "deploy/k8s/keel.yaml differs from deploy/keel.yaml: copy it over again"
    assert render()[("ConfigMap", "keel-config")]["data"]["keel.yaml"] == want


# ---- manifests against the config ----

def test_image_and_security_context():
    objs = render()
    c, pod = container(objs), pod_spec(the(objs, "Deployment"))
    assert c["image"] == "keel:0.1.0", c["image"]
    assert c["args"][-1] == "/etc/keel/keel.yaml" and any(
        m["mountPath"] == "/etc/keel/keel.yaml" for m in c["volumeMounts"]), "the config is not mounted where keel reads it"
    sc, psc = c["securityContext"], pod["securityContext"]
    assert psc["runAsNonRoot"] and psc["runAsUser"] == 65532 and psc["seccompProfile"]["type"] == "RuntimeDefault", psc
    assert sc["runAsNonRoot"] and sc["runAsUser"] == 65532, sc
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, sc
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], sc
    assert sc["seccompProfile"]["type"] == "RuntimeDefault", sc
    assert pod["enableServiceLinks"] is False, "Service links would put KEEL_* variables into keel's environment"
    assert pod["automountServiceAccountToken"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), "resources.%s lacks cpu or memory" % kind


def test_container_ports_match_listeners():
    objs, cfg = render(), None
    cfg = effective_config(objs)
    ports = {p["name"]: p["containerPort"] for p in container(objs)["ports"]}
    assert set(ports) == set(LISTENERS), "container ports %r, want %r" % (sorted(ports), sorted(LISTENERS))
    for name, key in LISTENERS.items():
        assert str(cfg[key]).startswith("0.0.0.0:"), "%s is %s: not reachable from outside the pod" % (key, cfg[key])
        assert ports[name] == port_of(cfg[key]), "port %s is %d, %s listens on %s" % (name, ports[name], key, cfg[key])
    admin = str(cfg["admin.listen"])
    assert admin.startswith("127.0.0.1:") and port_of(admin) not in ports.values(), "admin.listen %s is exposed" % admin
    svc = the(objs, "Service")
    for p in svc["spec"]["ports"]:
        assert p["targetPort"] in ports and p["port"] == ports[p["targetPort"]], "Service port %r" % p
    pol = the(objs, "NetworkPolicy")
    ingress = {p["port"] for rule in pol["spec"]["ingress"] for p in rule["ports"]}
    assert ingress == set(ports.values()), "NetworkPolicy admits %r, keel listens on %r" % (ingress, ports)


def test_selectors_match_the_pods():
    objs = render()
    labels = the(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    svc = the(objs, "Service")

    def matches(selector, have):
        return all(have.get(k) == v for k, v in selector.items())
    assert matches(the(objs, "Deployment")["spec"]["selector"]["matchLabels"], labels)
    assert matches(svc["spec"]["selector"], labels), "the Service selects no keel pod"
    for kind in ("PodDisruptionBudget",):
        assert matches(the(objs, kind)["spec"]["selector"]["matchLabels"], labels), kind
    assert matches(the(objs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"], labels)
    sm = the(objs, "ServiceMonitor")
    assert matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]), "the ServiceMonitor misses the Service"
    assert re.fullmatch("keel.*", svc["metadata"]["name"]), "the job label (Service name) must match the alerts' keel.*"
    assert the(objs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == the(objs, "Deployment")["metadata"]["name"]
    assert "replicas" not in the(objs, "Deployment")["spec"], "replicas in the Deployment fights the HPA on every apply"


def preStop_seconds(c):
    hook = c.get("lifecycle", {}).get("preStop")
    if not hook:
        return 0
    if "sleep" in hook:
        return int(hook["sleep"]["seconds"])
    cmd = " ".join(hook.get("exec", {}).get("command", []))
    m = re.search(r"sleep\s+(\d+)", cmd)
    assert m, "preStop %r: cannot tell how long it takes" % hook
    return int(m.group(1))


def test_grace_period_covers_the_drain():
    objs = render()
    cfg, c = effective_config(objs), container(objs)
    grace = pod_spec(the(objs, "Deployment"))["terminationGracePeriodSeconds"]
    need = preStop_seconds(c) + sum(seconds(cfg["shutdown." + k]) for k in ("drain_delay", "drain_timeout", "flush_timeout"))
    assert grace > need, "terminationGracePeriodSeconds %d <= preStop + drain_delay + drain_timeout + flush_timeout = %g" % (
        grace, need)
    # The readiness probe must notice the 503 within drain_delay, so no request lands after the close.
    rp = c["readinessProbe"]
    assert rp["periodSeconds"] * rp.get("failureThreshold", 3) < seconds(cfg["shutdown.drain_delay"]) + preStop_seconds(c)
    compose = load_yaml(COMPOSE)["services"]["keel"]
    assert seconds(compose["stop_grace_period"]) > need, "compose stop_grace_period is too short"


def test_buffer_fits_volume_and_memory_limit():
    objs = render()
    cfg, c = effective_config(objs), container(objs)
    vol = [v for v in pod_spec(the(objs, "Deployment"))["volumes"] if v["name"] == "data"][0]
    mount = [m for m in c["volumeMounts"] if m["name"] == "data"][0]
    assert mount["mountPath"] == cfg["data_dir"], "the data volume is at %s, data_dir is %s" % (mount["mountPath"], cfg["data_dir"])
    need = quantity(cfg["buffer.max"]) + 2 * quantity(cfg["buffer.segment"])
    assert quantity(vol["emptyDir"]["sizeLimit"]) >= need, "emptyDir sizeLimit %s < buffer.max + 2 segments" % vol["emptyDir"]
    assert quantity(c["resources"]["limits"]["memory"]) >= 3 * quantity(cfg["buffer.memory"]) + 64 * 2 ** 20, (
        "memory limit below 3 x buffer.memory + 64MiB (docs/pipeline.md, the disk buffer's caps)")


def secret_mount(objs, secret):
    c, pod = container(objs), pod_spec(the(objs, "Deployment"))
    vols = [v["name"] for v in pod["volumes"] if v.get("secret", {}).get("secretName") == secret]
    assert len(vols) == 1, "no volume of Secret %s" % secret
    return [m for m in c["volumeMounts"] if m["name"] == vols[0]][0]["mountPath"]


def test_secret_paths_match_config_keys():
    objs = render()
    cfg = effective_config(objs)
    gen = kustomization(K8S)["secretGenerator"][0]["name"]
    assert secret_mount(objs, gen) == cfg["otlp.api_keys"] == API_KEYS_DIR, (
        "otlp.api_keys %r, Secret %s mounted at %s" % (cfg["otlp.api_keys"], gen, secret_mount(objs, gen)))
    tls_dir = secret_mount(objs, "keel-tls")
    comp = os.path.join(K8S, "components", "tls")
    patch = load_yaml(os.path.join(comp, "deployment-patch.yaml"))
    env = {e["name"]: e["value"] for e in pod_spec(patch)["containers"][0]["env"]}
    assert (env["KEEL_TLS_CERT"], env["KEEL_TLS_KEY"]) == (TLS_CERT, TLS_KEY), env
    for path, key in ((TLS_CERT, "tls.crt"), (TLS_KEY, "tls.key")):  # the keys of a kubernetes.io/tls Secret
        assert os.path.dirname(path) == tls_dir and os.path.basename(path) == key, path
    # gateway routes in the ConfigMap that read keys must read them from a mounted Secret too
    for r in (load_yaml(CONFIG) or {}).get("routes", []) or []:
        p = (r.get("auth") or {}).get("api_keys")
        assert not p or p.startswith(API_KEYS_DIR), "route %r reads keys from %s, no Secret is mounted there" % (r, p)


# ---- keel itself ----

def rewritten_config(tmp):
    """deploy/keel.yaml for a run here; a keel that predates the security: section gets it dropped."""
    with open(CONFIG) as f:
        text = f.read()
    probe = os.path.join(tmp, "security.yaml")
    with open(probe, "w") as f:
        f.write("security: {}\n")
    p = subprocess.run([KEEL, "check-config", "-c", probe], capture_output=True, text=True)
    if "unknown key 'security'" in p.stderr:
        print("     (this keel has no security: section yet: dropped from the copy under test)")
        text = re.sub(r"(?m)^security:\n(?:[ #].*\n|\n)*", "", text)
    path = os.path.join(tmp, "keel.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def local_env(objs, tmp, keys=True):
    """The Deployment's environment with this machine's paths and free ports."""
    env = deployment_env(objs)
    kdir = os.path.join(tmp, "api-keys")
    os.makedirs(kdir, exist_ok=True)
    if keys:
        with open(os.path.join(kdir, "default"), "w") as f:
            f.write("test-key-1\n")
    else:  # the generator's placeholder, as the Secret would hold it
        for name, text in render()[("Secret", "keel-api-keys")]["data"].items():
            with open(os.path.join(kdir, name), "w") as f:
                f.write(text)
    env[[k for k, v in env.items() if v == API_KEYS_DIR][0]] = kdir
    env["KEEL_ADMIN_LISTEN"] = "127.0.0.1:0"  # a free port, still on loopback
    return env


def test_check_config_accepts_the_configmap():
    objs = render()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = rewritten_config(tmp)
        env = dict(os.environ, **local_env(objs, tmp))
        p = subprocess.run([KEEL, "check-config", "-c", cfg], capture_output=True, text=True, env=env)
        assert p.returncode == 0, "keel check-config refuses the ConfigMap's config: %s" % p.stderr


def test_placeholder_api_keys_refuse_to_start():
    objs = render()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, **local_env(objs, tmp, keys=False), **pipeline_env(os.path.join(tmp, "data")))
        try:
            p = subprocess.run([KEEL, "serve", "-c", rewritten_config(tmp), "--listen", "127.0.0.1:0"],
                               capture_output=True, text=True, env=env, timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError("keel started with the placeholder Secret: it would take data without a key")
        out = p.stdout + p.stderr  # the error is a log line on stdout
        assert p.returncode != 0 and "no keys" in out, "keel: exit %d, %s" % (p.returncode, out)


def http_status(port, path, tls=False):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # as the kubelet probes
        s = ctx.wrap_socket(s)
    s.sendall(get(path) + b"")
    s.settimeout(5)
    head = b""
    while b"\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    s.close()
    return int(head.split(b" ")[1])


def probes(c):
    return {n: c[n]["httpGet"] for n in ("startupProbe", "livenessProbe", "readinessProbe")}


def listener_port(k, cfg, port_name, c):
    """The port this keel listens on for the container port named port_name."""
    number = {p["name"]: p["containerPort"] for p in c["ports"]}[port_name]
    key = [key for key in LISTENERS.values() if port_of(cfg[key]) == number][0]
    return {"listen": k.port, "otlp.http_listen": k.otlp_port, "otlp.grpc_listen": k.grpc_port}[key]


def scraped_metric_names(k):
    resp, _ = request(k, get("/metrics"))
    assert resp.status == 200, resp
    names = set()
    for line in resp.body.decode().splitlines():
        if line and not line.startswith("#"):
            names.add(re.match(r"[A-Za-z_:][\w:]*", line).group(0))
    return names


def test_probes_drain_and_metrics_on_a_real_keel():
    objs = render()
    c, cfg = container(objs), effective_config(objs)
    grace = pod_spec(the(objs, "Deployment"))["terminationGracePeriodSeconds"]
    with tempfile.TemporaryDirectory() as tmp:
        with Keel(env=local_env(objs, tmp), config=open(rewritten_config(tmp)).read()) as k:
            for name, probe in probes(c).items():
                port = listener_port(k, cfg, probe["port"], c)
                assert http_status(port, probe["path"]) == 200, "%s %s answers no 200" % (name, probe["path"])
            check_metric_names(scraped_metric_names(k))
            # workers: 0 takes the count from the pod's CPU limit (test_cpus.py checks how).
            assert "KEEL_WORKERS" not in deployment_env(objs) and str(cfg.get("workers", 0)) == "0", (
                "a fixed worker count in the Deployment ignores its CPU limit")
            t0 = time.monotonic()
            k.signal(signal.SIGTERM)
            time.sleep(0.3)
            ready, live = probes(c)["readinessProbe"], probes(c)["livenessProbe"]
            assert http_status(k.port, ready["path"]) == 503, "readiness does not fail during the drain"
            assert http_status(k.port, live["path"]) == 200, "liveness fails during the drain: the kubelet restarts keel"
            rc = k.wait(grace + 5)
            took = time.monotonic() - t0
            assert rc == 0 and took < grace, "keel exited %d after %.1fs; the grace period is %ds" % (rc, took, grace)


def check_metric_names(names):
    """Every metric name the HPA, the adapter rule, the dashboard and the alerts use is in names."""
    hists = {n[:-len("_bucket")] for n in names if n.endswith("_bucket")}
    have = names | {"up"} | {h + s for h in hists for s in ("_bucket", "_count", "_sum")}
    used = []
    hpa = load_yaml(os.path.join(K8S, "hpa.yaml"))
    for m in hpa["spec"]["metrics"]:
        if m["type"] in ("Pods", "Object", "External"):
            used.append(("the HPA", m[m["type"].lower()]["metric"]["name"]))
    adapter = load_yaml(os.path.join(K8S, "prometheus-adapter", "config.yaml"))
    for r in adapter["rules"]:
        used += [("adapter seriesQuery", n) for n in metric_names(r["seriesQuery"])]
    used += [("alert " + r["alert"], n) for r in alert_rules() for n in metric_names(r["expr"])]
    used += [(where, n) for where, e in dashboard_exprs(dashboard()) for n in metric_names(e)]
    missing = ["%s uses %s" % (w, n) for w, n in used if n not in have]
    assert not missing, "not in keel's /metrics (pipeline on):\n" + "\n".join(missing)


def test_hpa_metric_is_the_adapter_rule():
    hpa = load_yaml(os.path.join(K8S, "hpa.yaml"))
    pods = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert hpa["apiVersion"] == "autoscaling/v2" and cpu and pods, "the HPA must scale on cpu and a Pods metric"
    rules = load_yaml(os.path.join(K8S, "prometheus-adapter", "config.yaml"))["rules"]
    served = {r["name"]["as"]: r for r in rules}
    assert set(pods) <= set(served), "the HPA asks for %r, the adapter serves %r" % (pods, sorted(served))
    recs = []
    for i, r in enumerate(rules):
        assert r["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}, r
        series = r["seriesQuery"].split("{")[0]
        q = (r["metricsQuery"].replace("<<.Series>>", series).replace("<<.LabelMatchers>>", 'namespace="ns",pod=~"keel-.*"')
             .replace("<<.GroupBy>>", "pod"))
        recs.append({"record": "adapter:rule_%d" % i, "expr": q})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": "adapter", "rules": recs}]}, f)
    try:
        rc, out = promtool("check", "rules", f.name)
    finally:
        os.unlink(f.name)
    assert rc == 0, "the adapter's metricsQuery is not valid PromQL:\n" + out


def test_tls_component_probes_answer_over_https():
    if not shutil.which("openssl"):
        raise AssertionError("openssl not found (scripts/deps.sh installs it)")
    objs = render()
    c, cfg = container(objs), effective_config(objs)
    patch = pod_spec(load_yaml(os.path.join(K8S, "components", "tls", "deployment-patch.yaml")))["containers"][0]
    with tempfile.TemporaryDirectory() as tmp:
        crt, key = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-days", "1", "-subj", "/CN=keel", "-keyout", key, "-out", crt],
                       check=True, capture_output=True, timeout=60)
        env = local_env(objs, tmp)
        env.update({"KEEL_TLS_CERT": crt, "KEEL_TLS_KEY": key})
        with Keel(env=env, config=open(rewritten_config(tmp)).read()) as k:
            for name, probe in probes(c).items():
                assert patch[name]["httpGet"]["scheme"] == "HTTPS", "%s stays HTTP with TLS on" % name
                port = listener_port(k, cfg, probe["port"], c)
                assert http_status(port, probe["path"], tls=True) == 200, "%s over HTTPS" % name


def test_runbook_answers_every_alert():
    with open(os.path.join(ROOT, "docs", "operations.md")) as f:
        doc = f.read()
    sections = set(re.findall(r"(?m)^### (Keel\w+)$", doc))
    names = {r["alert"] for r in alert_rules()}
    assert names == sections, "docs/operations.md: no section for %r; sections without an alert: %r" % (
        sorted(names - sections), sorted(sections - names))
    for part in ("**Check**", "**Fix**"):
        for name in names:
            body = doc.split("### " + name + "\n", 1)[1].split("\n### ", 1)[0]
            assert part in body, "docs/operations.md, %s: no %s" % (name, part)


# ---- compose ----

def test_compose_stack_is_consistent():
    stack = load_yaml(COMPOSE)["services"]
    base = os.path.dirname(COMPOSE)
    keel = stack["keel"]
    assert keel["image"] == "keel:0.1.0" and os.path.normpath(os.path.join(base, keel["build"]["context"])) == ROOT
    if not os.path.exists(os.path.join(ROOT, keel["build"]["dockerfile"])):
        print("     (%s is not in this tree yet: the deploy-image branch adds it)" % keel["build"]["dockerfile"])
    known = {env_name(k) for k in flatten(load_yaml(EXAMPLE))} | {"KEEL_ADMIN_LISTEN", "KEEL_SECURITY_USER",
                                                                 "KEEL_SECURITY_SECCOMP"}
    unknown = sorted(set(keel["environment"]) - known)
    assert not unknown, "compose sets %r, which are no keel settings" % unknown
    published = {int(p.split(":")[-1]) for p in keel["ports"]}
    cfg = flatten(load_yaml(CONFIG))
    assert published == {port_of(cfg[k]) for k in LISTENERS.values()}, published
    assert "/var/lib/keel" in [v.split(":")[1] for v in keel["volumes"]]
    for svc in stack.values():  # every bind mount's source exists
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert os.path.exists(os.path.join(base, src)), "compose mounts %s, which does not exist" % src
    prom = load_yaml(os.path.join(base, "prometheus", "prometheus.yml"))
    targets = [v.split(":")[1] for v in stack["prometheus"]["volumes"] if v.startswith("../prometheus/alerts.yaml")]
    assert prom["rule_files"] == targets, "Prometheus loads %r, the alerts are mounted at %r" % (prom["rule_files"], targets)
    jobs = [j for j in prom["scrape_configs"] if re.fullmatch("keel.*", j["job_name"])]
    assert jobs and jobs[0]["static_configs"][0]["targets"] == ["keel:%d" % port_of(cfg["listen"])]
    assert "KRaft" in open(COMPOSE).read() and "broker,controller" in stack["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]


if __name__ == "__main__":
    Suite().run(globals())
