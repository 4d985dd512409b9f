/* sandbox.c - least privilege: drop to an unprivileged user, seccomp allowlist of keel's system calls. */
#include "core/sandbox.h"

#include <dlfcn.h>
#include <errno.h>
#include <grp.h>
#include <malloc.h>
#include <pwd.h>
#include <sched.h>
#include <seccomp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

/*
 * The allowlist: every system call keel makes once its listeners are bound, found with
 * `strace -f` over the integration tests (HTTP, TLS, the gateway and its Redis client, the
 * pipeline with its disk buffer, Kafka through librdkafka and the file sink, the OTLP/gRPC
 * receiver, the trace exporter, SIGHUP reload, drain, logging), plus what glibc, the dynamic
 * loader (dlopen of libssl, librdkafka, hiredis) and the resolver use on those paths.
 * scripts/seccomp_audit.py repeats that audit. Names the running architecture lacks (open,
 * stat, poll, epoll_wait on aarch64) are skipped. Not here on purpose: execve/execveat,
 * fork/vfork (clone only with CLONE_THREAD, see kl_sandbox_seccomp), ptrace, mount, bpf, kexec,
 * setuid and friends (the user switch happens before the filter), chmod/chown, module loading,
 * personality, keyctl, io_uring, unshare/setns, and listen (every listener is bound before the
 * filter: code that took over the process cannot open a port of its own).
 */
static const char *const allowed[] = {
    /* memory */
    "brk", "mmap", "munmap", "mprotect", "mremap", "madvise",
    /* threads (clone: see kl_sandbox_seccomp), signals, time (vDSO fallbacks), limits */
    "exit", "exit_group", "futex", "set_robust_list", "rseq", "set_tid_address", "gettid",
    "getpid", "tgkill", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
    "restart_syscall", "sched_yield", "sched_getaffinity", "nanosleep", "clock_nanosleep",
    "clock_gettime", "clock_getres", "gettimeofday", "time", "getrandom", "prlimit64",
    "getrlimit", "getrusage", "uname", "sysinfo", "getuid", "geteuid", "getgid", "getegid",
    /* files: config and key files, certificates, dlopen, the disk buffer, the file sink */
    "read", "write", "readv", "writev", "pread64", "pwrite64", "pwritev", "open", "openat",
    "close", "lseek", "fstat", "stat", "lstat", "newfstatat", "statx", "access", "faccessat",
    "faccessat2", "getdents64", "fcntl", "dup", "fsync", "fdatasync", "ftruncate", "unlink",
    "unlinkat", "rename", "renameat", "renameat2", "mkdir", "mkdirat",
    /* event loops (epoll_pwait, ppoll: what aarch64 has instead of epoll_wait, poll) */
    "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "eventfd2", "signalfd4", "poll",
    "ppoll", "pipe", "pipe2",
    /* sockets: clients, upstreams, Kafka, Redis, the resolver, the trace exporter */
    /* (socket: only some families, see kl_sandbox_seccomp; bind: glibc's getaddrinfo binds a
     * netlink socket to list the interface addresses) */
    "connect", "accept4", "bind", "shutdown", "sendto", "recvfrom",
    "sendmsg", "recvmsg", "sendmmsg", "getsockname", "setsockopt", "getsockopt", "ioctl",
};

#define NALLOWED (sizeof allowed / sizeof allowed[0])

/*
 * AddressSanitizer's runtime reads /proc/self/maps, sizes its shadow and reports with a few calls
 * keel itself never makes, and LeakSanitizer's exit-time check stops the world from a tracer
 * task (clone without CLONE_THREAD, ptrace, wait4): a sanitizer build, never shipped, allows
 * them too so its leak check keeps working under the filter.
 */
#if defined(__SANITIZE_ADDRESS__)
#define KL_SANDBOX_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KL_SANDBOX_ASAN 1
#endif
#endif
#ifdef KL_SANDBOX_ASAN
static const char *const asan_extra[] = {"sched_getparam", "sched_getscheduler", "getppid",
                                         "mincore", "prctl", "clone", "ptrace", "wait4",
                                         "process_vm_readv", "getdents"};
#endif

size_t kl_sandbox_syscalls(const char *const **names) {
  *names = allowed;
  return NALLOWED;
}

int kl_sandbox_user_check(const char *text, char *err, size_t errlen) {
  size_t n = strlen(text);
  if (n == 0) return 0;
  const char *colon = strchr(text, ':');
  if (colon || strspn(text, "0123456789") == n) { /* a bare number is a UID missing its GID */
    if (!colon) colon = text + n;
    char *end = NULL;
    errno = 0;
    unsigned long u = strtoul(text, &end, 10), g = 0;
    int ok = text[0] >= '0' && text[0] <= '9' && end == colon && errno == 0 && u < UINT32_MAX;
    if (ok && *colon) {
      g = strtoul(colon + 1, &end, 10);
      ok = colon[1] >= '0' && colon[1] <= '9' && *end == '\0' && errno == 0 && g < UINT32_MAX;
    } else {
      ok = 0;
    }
    if (!ok) {
      snprintf(err, errlen, "'%s' is not UID:GID (two numbers)", text);
      return -EINVAL;
    }
    return 0;
  }
  /* POSIX portable user names: letters, digits, '.', '_', '-'; not starting with '-' */
  if (n >= sizeof(((kl_sandbox_user *)0)->name) || text[0] == '-') goto bad;
  for (const char *p = text; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          *p == '.' || *p == '_' || *p == '-'))
      goto bad;
  return 0;
bad:
  snprintf(err, errlen, "'%s' is neither a user name nor UID:GID", text);
  return -EINVAL;
}

int kl_sandbox_user_resolve(const char *text, kl_sandbox_user *u, char *err, size_t errlen) {
  int rc = kl_sandbox_user_check(text, err, errlen);
  if (rc) return rc;
  if (!text[0]) {
    snprintf(err, errlen, "no user given");
    return -EINVAL;
  }
  memset(u, 0, sizeof(*u));
  if (strchr(text, ':')) {
    u->uid = (uid_t)strtoul(text, NULL, 10);
    u->gid = (gid_t)strtoul(strchr(text, ':') + 1, NULL, 10);
    return 0;
  }
  struct passwd pw, *res = NULL;
  char buf[4096];
  rc = getpwnam_r(text, &pw, buf, sizeof buf, &res);
  if (rc != 0 || !res) {
    snprintf(err, errlen, "user '%s' not found%s%s", text, rc ? ": " : "", rc ? strerror(rc) : "");
    return -ENOENT;
  }
  u->uid = pw.pw_uid;
  u->gid = pw.pw_gid;
  snprintf(u->name, sizeof u->name, "%s", text);
  return 0;
}

int kl_sandbox_drop(const kl_sandbox_user *u, char *err, size_t errlen) {
  uid_t ruid, euid, suid;
  gid_t rgid, egid, sgid;
  if (getresuid(&ruid, &euid, &suid) || getresgid(&rgid, &egid, &sgid)) {
    snprintf(err, errlen, "getresuid: %s", strerror(errno));
    return -errno;
  }
  int already = ruid == u->uid && euid == u->uid && suid == u->uid && rgid == u->gid &&
                egid == u->gid && sgid == u->gid;
  if (!already || euid == 0) {
    /* Supplementary groups: the user's own (e.g. ssl-cert for keys), or none for UID:GID. */
    int rc = u->name[0] ? initgroups(u->name, u->gid) : setgroups(0, NULL);
    if (rc != 0 && !(already && errno == EPERM)) {
      snprintf(err, errlen, "setgroups: %s", strerror(errno));
      return -errno;
    }
    if (setresgid(u->gid, u->gid, u->gid) != 0) {
      snprintf(err, errlen, "setgid %u: %s", (unsigned)u->gid, strerror(errno));
      return -errno;
    }
    if (setresuid(u->uid, u->uid, u->uid) != 0) {
      snprintf(err, errlen, "setuid %u: %s", (unsigned)u->uid, strerror(errno));
      return -errno;
    }
  }
  if (getresuid(&ruid, &euid, &suid) || getresgid(&rgid, &egid, &sgid) || ruid != u->uid ||
      euid != u->uid || suid != u->uid || rgid != u->gid || egid != u->gid || sgid != u->gid) {
    snprintf(err, errlen, "user ids did not change to %u:%u", (unsigned)u->uid, (unsigned)u->gid);
    return -EPERM;
  }
  if (u->uid != 0 && (setuid(0) == 0 || seteuid(0) == 0)) {
    snprintf(err, errlen, "root could be regained after dropping to %u", (unsigned)u->uid);
    return -EPERM;
  }
  return 0;
}

/*
 * libseccomp is dlopen()ed, used once to build and load the filter, and closed again (like
 * libssl and librdkafka, pipeline/rdk.c): a keel without security.seccomp never maps it, and one
 * with it does not keep it mapped once the kernel holds the filter.
 */
typedef struct seccomp_api {
  scmp_filter_ctx (*init)(uint32_t def_action);
  int (*attr_set)(scmp_filter_ctx ctx, enum scmp_filter_attr attr, uint32_t value);
  int (*resolve_name)(const char *name);
  int (*rule_add)(scmp_filter_ctx ctx, uint32_t action, int syscall, unsigned int arg_cnt, ...);
  int (*load)(scmp_filter_ctx ctx);
  void (*release)(scmp_filter_ctx ctx);
} seccomp_api;

static void *seccomp_open(seccomp_api *api, char *err, size_t errlen) {
  void *h = dlopen("libseccomp.so.2", RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    snprintf(err, errlen, "cannot load libseccomp.so.2 (install libseccomp2): %s", dlerror());
    return NULL;
  }
  static const char *const names[] = {"seccomp_init", "seccomp_attr_set",
                                      "seccomp_syscall_resolve_name", "seccomp_rule_add",
                                      "seccomp_load", "seccomp_release"};
  void **slots[] = {(void **)(void *)&api->init,         (void **)(void *)&api->attr_set,
                    (void **)(void *)&api->resolve_name, (void **)(void *)&api->rule_add,
                    (void **)(void *)&api->load,         (void **)(void *)&api->release};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (!(*slots[i] = dlsym(h, names[i]))) {
      snprintf(err, errlen, "libseccomp.so.2 lacks %s", names[i]);
      dlclose(h);
      return NULL;
    }
  return h;
}

/* Adds one rule by name; a name this architecture lacks is skipped. */
static int allow(const seccomp_api *api, scmp_filter_ctx ctx, const char *name) {
  int nr = api->resolve_name(name);
  if (nr == __NR_SCMP_ERROR) return 0;
  return api->rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
}

/* Builds the filter into ctx and loads it: 0 or a negative errno, *what names the failed step. */
static int seccomp_build(const seccomp_api *api, scmp_filter_ctx ctx, const char **what) {
  int rc = api->attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
  if (rc == 0) rc = api->attr_set(ctx, SCMP_FLTATR_CTL_NNP, 1);
  *what = "attributes";
  for (size_t i = 0; rc == 0 && i < NALLOWED; i++)
    if ((rc = allow(api, ctx, allowed[i])) != 0) *what = allowed[i];
#ifdef KL_SANDBOX_ASAN
  for (size_t i = 0; rc == 0 && i < sizeof asan_extra / sizeof asan_extra[0]; i++)
    if ((rc = allow(api, ctx, asan_extra[i])) != 0) *what = asan_extra[i];
#endif
  /* Threads, never a new process: clone3 keeps its flags in memory a filter cannot read, so it
   * fails with ENOSYS and glibc's pthread_create falls back to clone, allowed with CLONE_THREAD. */
  if (rc == 0) {
    *what = "clone3";
    rc = api->rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
  }
#ifndef KL_SANDBOX_ASAN
  if (rc == 0) {
    *what = "clone";
    rc = api->rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
                       SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD));
  }
#endif
  /* Sockets of the families keel uses: TCP/UDP over IPv4 and IPv6, Unix (nscd, a Redis socket),
   * netlink (getaddrinfo's interface list). Not packet, raw-protocol families or vsock. */
  static const int families[] = {AF_INET, AF_INET6, AF_UNIX, AF_NETLINK};
  for (size_t i = 0; rc == 0 && i < sizeof families / sizeof families[0]; i++) {
    *what = "socket";
    rc = api->rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1,
                       SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)families[i], 0));
  }
#ifndef KL_SANDBOX_ASAN
  /* prctl for thread names (pthread_setname_np) only. */
  if (rc == 0) {
    *what = "prctl";
    rc = api->rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prctl), 1,
                       SCMP_A0(SCMP_CMP_EQ, PR_SET_NAME, 0));
  }
#endif
  if (rc == 0) {
    *what = "seccomp_load";
    rc = api->load(ctx);
  }
  return rc < 0 ? rc : -rc;
}

int kl_sandbox_seccomp(int mode, char *err, size_t errlen) {
  if (mode == KL_SECCOMP_OFF) return 0;
  seccomp_api api;
  void *h = seccomp_open(&api, err, errlen);
  if (!h) return -ENOENT;
  scmp_filter_ctx ctx = api.init(mode == KL_SECCOMP_LOG ? SCMP_ACT_LOG : SCMP_ACT_KILL_PROCESS);
  const char *what = "seccomp_init";
  int rc = ctx ? seccomp_build(&api, ctx, &what) : -ENOMEM;
  if (ctx) api.release(ctx);
  dlclose(h);
  malloc_trim(0); /* the filter's build memory, freed above, goes back to the kernel */
  if (rc != 0) snprintf(err, errlen, "seccomp (%s): %s", what, strerror(-rc));
  return rc;
}
