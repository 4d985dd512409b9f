/* cpus.h - how many CPUs this process may use: affinity and the cgroup CPU limit. */
#ifndef KEEL_CORE_CPUS_H
#define KEEL_CORE_CPUS_H

/**
 * Any thread. The CPU limit of the process's cgroups, rounded up (a quota of 150ms per 100ms
 * is 2), or 0 when none is set. `proc_cgroup` is a /proc/PID/cgroup file, `fs_root` where the
 * cgroup filesystems are mounted ("/sys/fs/cgroup"): cgroup v2 `cpu.max` and v1
 * `cpu.cfs_quota_us` / `cpu.cfs_period_us`, in the process's own cgroup and each parent (the
 * smallest wins), or at the mount's root when the path is not visible (a container without
 * a cgroup namespace).
 */
unsigned kl_cgroup_cpu_limit(const char *proc_cgroup, const char *fs_root);

/**
 * Any thread. CPUs the process may run on (its affinity mask), lowered to its cgroup CPU
 * limit; at least 1. keel's default worker count.
 */
unsigned kl_cpus_usable(void);

#endif
