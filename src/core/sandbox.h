/* sandbox.h - least privilege: drop to an unprivileged user, seccomp allowlist of keel's system calls. */
#ifndef KEEL_CORE_SANDBOX_H
#define KEEL_CORE_SANDBOX_H

#include <stddef.h>
#include <sys/types.h>

/** security.seccomp: the filter's modes (the config's K_CHOICE index). */
enum kl_seccomp_mode {
  KL_SECCOMP_OFF = 0, /**< no filter */
  KL_SECCOMP_ON = 1,  /**< calls outside the allowlist kill the process (SIGSYS) */
  KL_SECCOMP_LOG = 2, /**< calls outside the allowlist are allowed and logged by the kernel */
};

/** The user keel runs as after the drop. */
typedef struct kl_sandbox_user {
  uid_t uid;      /**< target user id */
  gid_t gid;      /**< target primary group id */
  char name[64];  /**< user name ("" when given as UID:GID): supplementary groups come from it */
} kl_sandbox_user;

/**
 * Checks the text form of security.user: "" (no change), a user name, or "UID:GID" (digits).
 * Does not look the name up. 0 or -EINVAL with a message in err.
 */
int kl_sandbox_user_check(const char *text, char *err, size_t errlen);

/**
 * Resolves security.user (a name through the passwd database, or "UID:GID") into `u`.
 * 0, or -ENOENT / -EINVAL with a message in err. `text` must not be "".
 */
int kl_sandbox_user_resolve(const char *text, kl_sandbox_user *u, char *err, size_t errlen);

/**
 * Switches every thread of the process to `u` (setgroups, setgid, setuid; glibc applies them to
 * all threads) and checks that root cannot be regained. Already running as `u` is fine. 0 or a
 * negative errno with a message in err: the caller must then refuse to run.
 */
int kl_sandbox_drop(const kl_sandbox_user *u, char *err, size_t errlen);

/**
 * Installs the seccomp filter (mode KL_SECCOMP_ON or KL_SECCOMP_LOG) on every thread of the
 * process (SCMP_FLTATR_CTL_TSYNC) with no_new_privs set. KL_SECCOMP_OFF does nothing.
 * 0 or a negative errno with a message in err.
 */
int kl_sandbox_seccomp(int mode, char *err, size_t errlen);

/** The allowlist's system call names (for tests and docs); returns how many, *names set. */
size_t kl_sandbox_syscalls(const char *const **names);

#endif
