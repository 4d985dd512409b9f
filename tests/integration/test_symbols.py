"""test_symbols.py - libkeel's ABI surface: libkeel.so exports only keel_* names, every KEEL_API
declaration in include/keel/*.h is exported, and all of them link from libkeel.a."""
import glob
import os
import re
import shutil
import subprocess
import tempfile

from harness import ROOT, Suite

LIB = os.environ.get("KEEL_LIB", os.path.join(ROOT, "build", "libkeel.so"))
STATIC = os.path.join(os.path.dirname(LIB), "libkeel.a")
INCLUDE = os.path.join(ROOT, "include")

# Symbols the toolchain defines in every shared object.
LINKER = {"_init", "_fini", "__bss_start", "_edata", "_end", "__end__", "_etext", "__etext",
          "_DYNAMIC", "_GLOBAL_OFFSET_TABLE_", "__dso_handle", "__data_start", "data_start",
          "_IO_stdin_used", "__TMC_END__", "__init_array_start", "__init_array_end"}


def exported():
    """{name: nm type letter} of the dynamic symbols libkeel.so defines."""
    assert os.path.exists(LIB), "not built: %s" % LIB
    out = subprocess.run(["nm", "-D", "--defined-only", LIB], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    syms = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        kind, name = parts[-2], parts[-1].split("@")[0]
        if name in LINKER or kind in ("A",):  # absolute symbols: version nodes and the like
            continue
        syms[name] = kind
    return syms


def declared():
    """{name: header} for every `KEEL_API <type> <name>(` in include/keel/*.h."""
    found = {}
    headers = sorted(glob.glob(os.path.join(INCLUDE, "keel", "*.h")))
    assert headers, "no headers under %s" % INCLUDE
    for h in headers:
        with open(h) as f:
            text = f.read()
        text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
        text = re.sub(r"//[^\n]*", " ", text)
        text = re.sub(r"^\s*#.*?(?<!\\)$", " ", text, flags=re.M | re.S)  # directives
        for m in re.finditer(r"\bKEEL_API\b([^;{]*?)\b([A-Za-z_]\w*)\s*\(", text):
            found[m.group(2)] = os.path.relpath(h, ROOT)
    assert len(found) >= 20, "suspiciously few KEEL_API declarations: %r" % found
    return found


def test_only_keel_symbols_exported():
    syms = exported()
    assert syms, "libkeel.so exports nothing"
    bad = sorted("%s (%s)" % (n, k) for n, k in syms.items() if not n.startswith("keel_"))
    assert not bad, "exported symbols outside the keel_ namespace: %s" % ", ".join(bad)
    objs = sorted(n for n, k in syms.items() if k not in ("T", "W", "i"))
    print("  %d symbols exported (%d functions, data: %r)" % (len(syms), len(syms) - len(objs),
                                                                objs))


def test_every_declaration_exported():
    syms = exported()
    decl = declared()
    missing = sorted("%s (%s)" % (n, h) for n, h in decl.items() if n not in syms)
    assert not missing, "KEEL_API declared but not exported: %s" % ", ".join(missing)
    not_func = sorted(n for n in decl if syms[n] not in ("T", "W", "i"))
    assert not not_func, "declared as functions but exported as data: %r" % not_func


def test_every_export_declared():
    # An exported name no public header declares is a visibility leak (internal code missing
    # its hidden attribute): callers cannot use it, but it becomes ABI nonetheless.
    undeclared = sorted(set(exported()) - set(declared()))
    assert not undeclared, "exported but in no public header: %r" % undeclared


def test_exports_link_from_static_library():
    assert os.path.exists(STATIC), "not built: %s" % STATIC
    syms = exported()
    decl = declared()
    funcs = sorted(n for n, k in syms.items() if k in ("T", "W", "i"))
    data = sorted(n for n in syms if n not in funcs)
    lines = ["#include <stdio.h>"] + ["#include <keel/%s>" % h for h in
                                      sorted(os.listdir(os.path.join(INCLUDE, "keel")))] + [""]
    for n in funcs:
        if n not in decl:
            lines.append("void %s(void);" % n)
    for n in data:
        lines.append("extern char %s[];" % n)
    lines.append("typedef void (*fn)(void);")
    lines.append("static fn volatile funcs[] = {")
    lines += ["  (fn)%s," % n for n in funcs]
    lines.append("};")
    lines.append("static const void *volatile objs[] = {")
    lines += ["  (const void *)%s," % n for n in data] or ["  0,"]
    lines.append("};")
    lines.append("int main(void) {")
    lines.append("  size_t n = 0;")
    lines.append("  for (size_t i = 0; i < sizeof funcs / sizeof funcs[0]; i++) n += funcs[i] != 0;")
    lines.append("  for (size_t i = 0; i < sizeof objs / sizeof objs[0]; i++) n += objs[i] != 0;")
    lines.append('  printf("%zu\\n", n);')
    lines.append("  keel_config cfg;")
    lines.append("  keel_config_init(&cfg);")
    lines.append('  return cfg.max_connections == 10000 && cfg.listen[0] ? 0 : 3;')
    lines.append("}")
    src = "\n".join(lines) + "\n"

    tmp = tempfile.mkdtemp(prefix="keel-sym-")
    try:
        c = os.path.join(tmp, "uses_all.c")
        exe = os.path.join(tmp, "uses_all")
        with open(c, "w") as f:
            f.write(src)
        # The compiler and sanitizer flags libkeel.a was built with (set by CMake for ctest).
        cc = os.environ.get("KEEL_CC", "cc")
        extra = os.environ.get("KEEL_LINK_FLAGS", "").split()
        cmd = [cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-I" + INCLUDE, c, STATIC,
               "-lyaml", "-lz", "-lnghttp2", "-lpthread", "-o", exe] + extra
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, "link failed:\n%s\n%s" % (" ".join(cmd), p.stderr[-3000:])
        p = subprocess.run([exe], capture_output=True, text=True, timeout=10)
        assert p.returncode == 0, "program exited %d: %s" % (p.returncode, p.stderr)
        want = len(funcs) + len(data)
        assert p.stdout.strip() == str(want), "took %s addresses, want %d" % (p.stdout, want)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_headers_compile_as_cxx():
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        print("  no C++ compiler: skipped")
        return
    src = "#include <keel/keel.h>\n#include <keel/json.h>\nint main() { keel_config c; " \
          "keel_config_init(&c); return 0; }\n"
    p = subprocess.run([cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                        "-I" + INCLUDE, "-x", "c++", "-"], input=src, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, "public headers do not compile as C++:\n%s" % p.stderr[-3000:]


if __name__ == "__main__":
    Suite().run(globals())
