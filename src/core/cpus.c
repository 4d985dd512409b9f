/* cpus.c - how many CPUs this process may use: affinity and the cgroup CPU limit. */
#include "core/cpus.h"

#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Reads two numbers from DIR/NAME1 (and DIR/NAME2 when given); "max" reads as 0. */
static int read_nums(const char *dir, const char *name1, const char *name2, unsigned long *a,
                     unsigned long *b) {
  char path[PATH_MAX], word[32];
  int n = snprintf(path, sizeof path, "%s/%s", dir, name1);
  if (n < 0 || (size_t)n >= sizeof path) return -1;
  FILE *f = fopen(path, "re");
  if (!f) return -1;
  /* The kernel writes these files: decimal numbers (or "max"), no conversion errors to report. */
  /* NOLINTNEXTLINE(cert-err34-c) */
  int got = name2 ? fscanf(f, "%31s", word) : fscanf(f, "%31s %lu", word, b);
  fclose(f);
  if (got != (name2 ? 1 : 2)) return -1;
  *a = strcmp(word, "max") == 0 || word[0] == '-' ? 0 : strtoul(word, NULL, 10);
  if (!name2) return 0;
  n = snprintf(path, sizeof path, "%s/%s", dir, name2);
  if (n < 0 || (size_t)n >= sizeof path || !(f = fopen(path, "re"))) return -1;
  got = fscanf(f, "%lu", b); /* NOLINT(cert-err34-c): a kernel-written number, as above */
  fclose(f);
  return got == 1 ? 0 : -1;
}

/*
 * The smallest limit in DIR + PATH and each of its parents, down to DIR itself (where a
 * container without a cgroup namespace finds its own cgroup: PATH is then the host's); 0 for
 * none. v1 names the quota and period files, v2 reads both from cpu.max.
 */
static unsigned walk(const char *dir, const char *path, int v1) {
  char p[PATH_MAX];
  int n = snprintf(p, sizeof p, "%s%s", dir, strcmp(path, "/") ? path : "");
  if (n < 0 || (size_t)n >= sizeof p) return 0;
  size_t root = strlen(dir);
  unsigned best = 0;
  for (;;) {
    unsigned long quota = 0, period = 0;
    int rc = v1 ? read_nums(p, "cpu.cfs_quota_us", "cpu.cfs_period_us", &quota, &period)
                : read_nums(p, "cpu.max", NULL, &quota, &period);
    if (rc == 0 && quota && period) {
      unsigned long lim = (quota + period - 1) / period;
      if (lim < UINT_MAX && (!best || lim < best)) best = (unsigned)lim;
    }
    char *slash = strrchr(p + root, '/');
    if (!slash) break;
    *slash = '\0';
  }
  return best;
}

unsigned kl_cgroup_cpu_limit(const char *proc_cgroup, const char *fs_root) {
  FILE *f = fopen(proc_cgroup, "re");
  if (!f) return 0;
  char line[PATH_MAX + 64], dir[PATH_MAX];
  unsigned best = 0;
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = '\0';
    char *ctl = strchr(line, ':');
    char *path = ctl ? strchr(ctl + 1, ':') : NULL;
    if (!path || path[1] != '/') continue;
    *path++ = '\0';
    ctl++;
    unsigned lim = 0;
    if (!*ctl) { /* cgroup v2: "0::/path" */
      lim = walk(fs_root, path, 0);
    } else { /* cgroup v1: "N:cpu,cpuacct:/path", mounted as cpu or cpu,cpuacct */
      int has_cpu = 0;
      for (char *save = NULL, *t = strtok_r(ctl, ",", &save); t; t = strtok_r(NULL, ",", &save))
        has_cpu |= strcmp(t, "cpu") == 0;
      if (!has_cpu) continue;
      static const char *const mounts[] = {"cpu", "cpu,cpuacct", "cpuacct,cpu"};
      for (size_t i = 0; i < sizeof mounts / sizeof mounts[0] && !lim; i++) {
        int n = snprintf(dir, sizeof dir, "%s/%s", fs_root, mounts[i]);
        if (n > 0 && (size_t)n < sizeof dir) lim = walk(dir, path, 1);
      }
    }
    if (lim && (!best || lim < best)) best = lim;
  }
  fclose(f);
  return best;
}

unsigned kl_cpus_usable(void) {
  cpu_set_t set;
  long n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set)
                                                        : sysconf(_SC_NPROCESSORS_ONLN);
  unsigned lim = kl_cgroup_cpu_limit("/proc/self/cgroup", "/sys/fs/cgroup");
  if (lim && (long)lim < n) n = lim;
  return n > 0 ? (unsigned)n : 1;
}
