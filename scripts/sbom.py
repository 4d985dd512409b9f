#!/usr/bin/env python3
"""sbom.py - a CycloneDX 1.5 JSON SBOM of the Debian packages a keel binary links and dlopen()s.

usage: scripts/sbom.py BINARY OUT.json [--src DIR] [--version V] [--revision GIT_SHA]

Components: every shared library `ldd BINARY` lists, every library keel loads with dlopen() (the
string literals passed to dlopen() under --src, default src/) and the libraries those load in
turn, each mapped to its Debian package with dpkg; then the closure of those packages' Depends
and Pre-Depends. Each has its name, version and architecture from dpkg-query, a purl
(pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12, plus upstream=SOURCE when the source
package differs: Debian's advisories are filed against source packages), the licence of its
machine-readable copyright file's `Files: *` stanza, and properties keel:load (linked, dlopen or
dependency) and keel:file (the library files keel loads from it). `dependencies` holds keel ->
the packages it loads and each package -> its Depends. keel itself is metadata.component, with
its version and git revision. Python stdlib only; needs ldd, ldconfig and dpkg-query.
"""
import datetime
import functools
import glob
import json
import os
import re
import subprocess
import sys
import urllib.parse
import uuid

DISTRO = "debian-12"


def sh(*cmd, check=True):
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(cmd), p.stderr.strip()))
    return p.stdout


def ldd(path):
    """[(soname, resolved path)] of the shared objects `path` needs (the vDSO has no file)."""
    libs = []
    for line in sh("ldd", path).splitlines():
        line = line.strip()
        m = re.match(r"(\S+) => (/\S+) \(", line) or re.match(r"((/\S+)) \(", line)
        if m:
            libs.append((os.path.basename(m.group(1)), m.group(2)))
        elif "=>" in line and "not found" in line:
            raise RuntimeError("%s: %s" % (path, line))
    return libs


def dlopen_sonames(src):
    """The library names passed as string literals to dlopen() in the C sources under `src`."""
    names = set()
    for f in sorted(glob.glob(os.path.join(src, "**", "*.c"), recursive=True)):
        with open(f, encoding="utf-8") as fh:
            names.update(re.findall(r'\bdlopen\(\s*"([^"]+)"', fh.read()))
    return sorted(names)


@functools.lru_cache(maxsize=None)
def ldconfig_cache():
    return sh("ldconfig", "-p")


def ldconfig_path(soname):
    """Where the dynamic loader finds `soname` for this machine's architecture, or None."""
    bits = "x86-64" if os.uname().machine == "x86_64" else None
    for line in ldconfig_cache().splitlines():
        m = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)", line)
        if m and m.group(1) == soname and (bits is None or bits in m.group(2)):
            return m.group(3)
    return None


def owners(paths):
    """{path: 'package:arch' (or 'package')} from dpkg, trying the merged-/usr aliases of each
    path; one dpkg-query call for all (each call reads every package's file list)."""
    cands = {}
    for p in paths:
        c = [p, os.path.realpath(p)]
        c += [x[4:] if x.startswith("/usr/") else "/usr" + x for x in list(c)]
        cands[p] = c
    every = sorted({c for cs in cands.values() for c in cs})
    found = {}
    for line in sh("dpkg-query", "-S", *every, check=False).splitlines():
        pkg, _, f = line.partition(": ")
        if "," not in pkg and not pkg.startswith("diversion by"):
            found.setdefault(f.strip(), pkg.strip())
    result = {}
    for p, cs in cands.items():
        hit = next((found[c] for c in cs if c in found), None)
        if not hit:
            raise RuntimeError("no Debian package owns %s" % p)
        result[p] = hit
    return result


FIELDS = ["Package", "Version", "Architecture", "Source", "Depends", "Pre-Depends", "Status"]


@functools.lru_cache(maxsize=None)
def query(spec):
    """dpkg-query's fields for an installed 'name' or 'name:arch', or None."""
    fmt = "\\t".join("${%s}" % f for f in FIELDS) + "\\n"
    out = sh("dpkg-query", "-W", "-f", fmt, spec, check=False)
    rows = [dict(zip(FIELDS, line.split("\t"))) for line in out.splitlines() if line]
    rows = [r for r in rows if r["Status"].endswith(" installed")]
    return rows[0] if rows else None


def resolve(name, arch):
    """The installed package a dependency `name` means for a package of `arch`."""
    if ":" in name:
        name, q = name.split(":", 1)
        if q != "any":
            arch = q
    return query("%s:%s" % (name, arch)) or query(name)


def depends(row):
    """Installed packages named by Depends and Pre-Depends (the first installed alternative)."""
    found = []
    for field in ("Pre-Depends", "Depends"):
        for clause in filter(None, (c.strip() for c in row[field].split(","))):
            for alt in clause.split("|"):
                name = re.sub(r"\s*\(.*\)|\s*\[.*\]|\s*<.*>", "", alt).strip()
                r = resolve(name, row["Architecture"]) if name else None
                if r:
                    found.append(r)
                    break
    return found


def licences(pkg):
    """The `Files: *` licence of a DEP-5 copyright file (the package's main licence), or []."""
    path = "/usr/share/doc/%s/copyright" % pkg
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    if not text.startswith("Format:"):
        return []
    for stanza in re.split(r"\n\s*\n", text):
        if re.search(r"^Files:\s*\*\s*$", stanza, re.M):
            m = re.search(r"^License:\s*(\S.*)$", stanza, re.M)
            if m:
                return [{"license": {"name": m.group(1).strip()}}]
    return []


def purl(row):
    q = {"arch": row["Architecture"], "distro": DISTRO}
    src = row["Source"].strip()
    if src:
        m = re.match(r"(\S+)(?: \((\S+)\))?", src)
        if m.group(1) != row["Package"] or m.group(2):
            q["upstream"] = m.group(1) + ("@" + m.group(2) if m.group(2) else "")
    qs = "&".join("%s=%s" % (k, urllib.parse.quote(v, safe="")) for k, v in q.items())
    return "pkg:deb/debian/%s@%s?%s" % (row["Package"], urllib.parse.quote(row["Version"], safe=":~"), qs)


def build(binary, src, version, revision):
    files = {}  # package spec -> (load kind, set of files)
    order = []

    def add(spec, kind, f):
        if spec not in files:
            files[spec] = [kind, set()]
            order.append(spec)
        files[spec][1].add(f)

    loads = [("linked", path, path) for _, path in ldd(binary)]
    for soname in dlopen_sonames(src):
        path = ldconfig_path(soname)
        if not path:
            raise RuntimeError("dlopen(\"%s\") in %s: the loader does not find it" % (soname, src))
        loads.append(("dlopen", path, soname))
        # What the dlopen()ed library loads in turn.
        loads += [("dlopen", dep, dep) for _, dep in ldd(path)]
    owner = owners([path for _, path, _ in loads])
    for kind, path, name in loads:
        spec = owner[path]
        add(spec, files[spec][0] if spec in files else kind, name)

    rows = {}  # "name:arch" -> dpkg row
    direct = []
    for spec in order:
        r = query(spec)
        if not r:
            raise RuntimeError("dpkg-query does not know %s" % spec)
        key = "%s:%s" % (r["Package"], r["Architecture"])
        rows[key] = r
        direct.append(key)
    edges = {}
    todo = list(direct)
    while todo:
        key = todo.pop()
        if key in edges:
            continue
        edges[key] = []
        for d in depends(rows[key]):
            dk = "%s:%s" % (d["Package"], d["Architecture"])
            rows.setdefault(dk, d)
            if dk != key and dk not in edges[key]:
                edges[key].append(dk)
            todo.append(dk)

    refs = {k: purl(r) for k, r in rows.items()}
    by_spec = {}
    for spec in order:
        r = query(spec)
        by_spec["%s:%s" % (r["Package"], r["Architecture"])] = files[spec]
    components = []
    for key in sorted(rows):
        r = rows[key]
        kind, fs = by_spec.get(key, ["dependency", set()])
        props = [{"name": "keel:load", "value": kind}]
        props += [{"name": "keel:file", "value": f} for f in sorted(fs)]
        c = {"type": "library", "bom-ref": refs[key], "name": r["Package"],
             "version": r["Version"], "purl": refs[key]}
        lic = licences(r["Package"])
        if lic:
            c["licenses"] = lic
        c["properties"] = props
        components.append(c)
    keel_ref = "keel@%s" % version
    deps = [{"ref": keel_ref, "dependsOn": sorted({refs[k] for k in direct})}]
    deps += [{"ref": refs[k], "dependsOn": sorted(refs[d] for d in edges[k])} for k in sorted(edges)]
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": "urn:uuid:%s" % uuid.uuid4(),
        "version": 1,
        "metadata": {
            "timestamp": now.isoformat().replace("+00:00", "Z"),
            "tools": {"components": [{"type": "application", "name": "keel scripts/sbom.py"}]},
            "component": {
                "type": "application", "bom-ref": keel_ref, "name": "keel", "version": version,
                "description": "HTTP server, API gateway and telemetry pipeline",
                "properties": [{"name": "git:revision", "value": revision},
                               {"name": "keel:binary", "value": os.path.abspath(binary)}],
            },
        },
        "components": components,
        "dependencies": deps,
    }


def main(argv):
    opts = {"--src": None, "--version": None, "--revision": None}
    args = []
    it = iter(argv)
    for a in it:
        if a in opts:
            opts[a] = next(it, None)
        else:
            args.append(a)
    if len(args) != 2:
        print("usage: sbom.py BINARY OUT.json [--src DIR] [--version V] [--revision GIT_SHA]",
              file=sys.stderr)
        return 2
    binary, out = args
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = opts["--src"] or os.path.join(root, "src")
    version = opts["--version"]
    if not version:  # `keel version` prints "keel 0.1.0 (abc1234)"
        m = re.search(r"(\d+\.\d+\.\d+)", sh(binary, "version"))
        version = m.group(1) if m else "unknown"
    revision = opts["--revision"] or sh("git", "-C", root, "rev-parse", "HEAD", check=False).strip() \
        or "unknown"
    bom = build(binary, src, version, revision)
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(bom, f, indent=2)
        f.write("\n")
    os.replace(tmp, out)
    print("sbom: %s: %d Debian packages (%s)" % (out, len(bom["components"]), ", ".join(
        "%s %s" % (c["name"], c["version"]) for c in bom["components"]
        if c["properties"][0]["value"] != "dependency")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
