"""test_sbom.py - scripts/sbom.py's CycloneDX SBOM of build/keel: CycloneDX 1.5 shape, keel as the
metadata component, and every library ldd lists and every soname src/ dlopen()s covered by a
component whose version is the one dpkg reports and whose package holds that file."""
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile

from harness import KEEL, ROOT, Suite

SBOM = os.path.join(ROOT, "scripts", "sbom.py")
_cache = {}


def sbom():
    """The SBOM of KEEL, generated once into a temporary directory."""
    if "bom" not in _cache:
        tmp = tempfile.mkdtemp(prefix="keel-sbom-")
        try:
            out = os.path.join(tmp, "keel.cdx.json")
            p = subprocess.run(["python3", SBOM, KEEL, out], capture_output=True, text=True,
                               timeout=300)
            assert p.returncode == 0, "sbom.py failed:\n%s%s" % (p.stdout, p.stderr)
            with open(out, encoding="utf-8") as f:
                _cache["bom"] = json.load(f)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _cache["bom"]


def run(*cmd):
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=120).stdout


def aliases(path):
    """A file's names with and without the merged /usr prefix, and its real path."""
    names = {path, os.path.realpath(path)}
    return names | {n[4:] if n.startswith("/usr/") else "/usr" + n for n in names}


def component_for(bom, name):
    """The component whose keel:file properties list `name` (a path or a soname)."""
    for c in bom["components"]:
        if any(p["name"] == "keel:file" and p["value"] == name for p in c["properties"]):
            return c
    raise AssertionError("no component lists %s as keel:file" % name)


def check_package(c, file_names):
    """c's version is what dpkg reports for it, and its package holds one of file_names."""
    arch = re.search(r"[?&]arch=([^&]+)", c["purl"]).group(1)
    spec = "%s:%s" % (c["name"], arch)
    version = run("dpkg-query", "-W", "-f", "${Version}", spec) or \
        run("dpkg-query", "-W", "-f", "${Version}", c["name"])
    assert version and c["version"] == version, \
        "%s: SBOM version %r, dpkg %r" % (spec, c["version"], version)
    listed = set(run("dpkg-query", "-L", spec).split()) or set(run("dpkg-query", "-L", c["name"]).split())
    assert any(n in listed for n in file_names), \
        "package %s does not hold any of %s" % (spec, sorted(file_names))


def test_cyclonedx_shape():
    bom = sbom()
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.5", bom.get("specVersion")
    assert re.match(r"^urn:uuid:[0-9a-f-]{36}$", bom["serialNumber"]), bom["serialNumber"]
    assert bom["version"] == 1
    refs = set()
    for c in bom["components"]:
        for k in ("type", "bom-ref", "name", "version", "purl"):
            assert c.get(k), "component without %s: %s" % (k, c)
        assert re.match(r"^pkg:deb/debian/%s@[^?@]+\?arch=[a-z0-9]+&distro=debian-12(&upstream=.+)?$"
                        % re.escape(c["name"]), c["purl"]), c["purl"]
        assert "+" not in c["purl"], "purl not percent-encoded: " + c["purl"]
        assert c["bom-ref"] not in refs, "duplicate bom-ref " + c["bom-ref"]
        refs.add(c["bom-ref"])
        for lic in c.get("licenses", []):
            assert lic["license"]["name"], c
    top = bom["metadata"]["component"]
    refs.add(top["bom-ref"])
    for d in bom["dependencies"]:
        assert d["ref"] in refs, "dependency of an unknown ref " + d["ref"]
        for r in d["dependsOn"]:
            assert r in refs, "%s depends on an unknown ref %s" % (d["ref"], r)
    keel_deps = [d for d in bom["dependencies"] if d["ref"] == top["bom-ref"]]
    assert keel_deps and keel_deps[0]["dependsOn"], "keel's own dependencies are missing"


def test_keel_is_the_metadata_component():
    top = sbom()["metadata"]["component"]
    assert top["name"] == "keel" and top["type"] == "application", top
    version = re.search(r"\d+\.\d+\.\d+", run(KEEL, "version")).group(0)
    assert top["version"] == version, (top["version"], version)
    props = {p["name"]: p["value"] for p in top["properties"]}
    head = run("git", "-C", ROOT, "rev-parse", "HEAD").strip()
    if head:
        assert props.get("git:revision") == head, (props, head)


def test_every_linked_library_is_covered():
    bom = sbom()
    libs = re.findall(r"(?:=> )?(/\S+) \(0x", run("ldd", KEEL))
    assert len(libs) >= 3, "ldd listed too little: %s" % libs
    for path in libs:
        c = component_for(bom, path)
        check_package(c, aliases(path))


def test_every_dlopened_library_is_covered():
    bom = sbom()
    sonames = set()
    for f in glob.glob(os.path.join(ROOT, "src", "**", "*.c"), recursive=True):
        with open(f, encoding="utf-8") as fh:
            sonames.update(re.findall(r'dlopen\("([^"]+)"', fh.read()))
    assert {"librdkafka.so.1", "libssl.so.3", "libcrypto.so.3"} <= sonames, sonames
    for so in sorted(sonames):
        c = component_for(bom, so)
        assert any(p["name"] == "keel:load" and p["value"] == "dlopen" for p in c["properties"]), c
        dirs = ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
                "/usr/lib/aarch64-linux-gnu", "/lib", "/usr/lib"]
        check_package(c, {os.path.join(d, so) for d in dirs})


if __name__ == "__main__":
    Suite().run(globals())
