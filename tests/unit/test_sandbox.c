/* test_sandbox.c - kl_sandbox: user forms, the user drop, and the seccomp filter (SIGSYS on a forbidden call). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/sandbox.h"

/* The sanitizer build's filter also allows LeakSanitizer's ptrace and tracer clone (sandbox.c). */
#if defined(__SANITIZE_ADDRESS__)
#define ASAN_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ASAN_BUILD 1
#endif
#endif

/* Runs fn in a child process; returns its wait status. */
static int in_child(int (*fn)(void)) {
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) _exit(fn());
  int st = 0;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  return st;
}

static void assert_exit0(int st) {
  if (!WIFEXITED(st)) print_error("child died of signal %d\n", WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
}

static void assert_sigsys(int st) {
  if (!WIFSIGNALED(st))
    print_error("child exited %d instead of dying\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  assert_true(WIFSIGNALED(st));
  assert_int_equal(WTERMSIG(st), SIGSYS);
}

static void test_user_forms(void **state) {
  (void)state;
  char err[128];
  assert_int_equal(kl_sandbox_user_check("", err, sizeof err), 0);
  assert_int_equal(kl_sandbox_user_check("nobody", err, sizeof err), 0);
  assert_int_equal(kl_sandbox_user_check("keel-svc_1.x", err, sizeof err), 0);
  assert_int_equal(kl_sandbox_user_check("65532:65532", err, sizeof err), 0);
  assert_int_equal(kl_sandbox_user_check("0:0", err, sizeof err), 0);
  static const char *const bad[] = {"65532", "1:", ":1", "1:x", "x:1", "-x", "a b", "a/b",
                                    "99999999999:1", "1:2:3"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err[0] = '\0';
    assert_int_equal(kl_sandbox_user_check(bad[i], err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, bad[i]));
  }
}

static void test_user_resolve(void **state) {
  (void)state;
  kl_sandbox_user u;
  char err[128];
  assert_int_equal(kl_sandbox_user_resolve("root", &u, err, sizeof err), 0);
  assert_int_equal(u.uid, 0);
  assert_int_equal(u.gid, 0);
  assert_string_equal(u.name, "root");
  assert_int_equal(kl_sandbox_user_resolve("65532:65533", &u, err, sizeof err), 0);
  assert_int_equal(u.uid, 65532);
  assert_int_equal(u.gid, 65533);
  assert_string_equal(u.name, "");
  assert_int_equal(kl_sandbox_user_resolve("no-such-user-keel", &u, err, sizeof err), -ENOENT);
  assert_string_equal(err, "user 'no-such-user-keel' not found");
  assert_int_equal(kl_sandbox_user_resolve("", &u, err, sizeof err), -EINVAL);
}

static int drop_child(void) {
  kl_sandbox_user u = {.uid = 65534, .gid = 65534};
  char err[128];
  if (kl_sandbox_drop(&u, err, sizeof err) != 0) return 1;
  if (getuid() != 65534 || geteuid() != 65534 || getgid() != 65534 || getegid() != 65534) return 2;
  if (getgroups(0, NULL) != 0) return 3; /* UID:GID keeps no supplementary groups */
  if (setuid(0) == 0) return 4;
  return kl_sandbox_drop(&u, err, sizeof err) == 0 ? 0 : 5; /* already that user: fine */
}

static int drop_fails_child(void) {
  kl_sandbox_user u = {.uid = getuid() + 1, .gid = getgid() + 1};
  char err[128] = "";
  return kl_sandbox_drop(&u, err, sizeof err) == -EPERM && err[0] ? 0 : 1;
}

static void test_drop(void **state) {
  (void)state;
  if (geteuid() != 0) {
    assert_exit0(in_child(drop_fails_child)); /* not root: the drop fails, loudly */
    skip();
  }
  assert_exit0(in_child(drop_child));
}

/* ---- seccomp ------------------------------------------------------------- */

static void *thread_main(void *arg) {
  int *fds = arg;
  char c = 'x';
  return write(fds[1], &c, 1) == 1 ? NULL : arg;
}

/* What keel does after the filter: files, threads, sockets, time, memory. */
static int allowed_work(void) {
  char path[] = "/tmp/keel-sandbox-XXXXXX";
  int fd = mkstemp(path); /* before the filter: mkstemp is not what keel does */
  if (fd < 0) return 10;
  close(fd);
  char err[160];
  if (kl_sandbox_seccomp(KL_SECCOMP_ON, err, sizeof err) != 0) return 11;
  fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0 || pwrite(fd, "abc", 3, 0) != 3 || fdatasync(fd) != 0 || fsync(fd) != 0) return 12;
  close(fd);
  char moved[sizeof path + 4];
  snprintf(moved, sizeof moved, "%s.old", path);
  if (rename(path, moved) != 0 || unlink(moved) != 0) return 13;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return 14;
  pthread_t t;
  void *res = fds;
  if (pthread_create(&t, NULL, thread_main, fds) != 0 || pthread_join(t, &res) != 0 || res)
    return 15;
  char c = 0;
  if (read(fds[0], &c, 1) != 1 || c != 'x') return 16;
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return 17;
  close(s);
  void *p = malloc(8 << 20); /* mmap */
  if (!p) return 18;
  free(p);
  return 0;
}

static int forbidden_execve(void) {
  char err[160];
  if (kl_sandbox_seccomp(KL_SECCOMP_ON, err, sizeof err) != 0) return 1;
  char *const argv[] = {(char *)"/bin/true", NULL};
  execve("/bin/true", argv, NULL);
  return 2; /* not reached: the kernel kills the process */
}

#ifndef ASAN_BUILD
static int forbidden_ptrace(void) {
  char err[160];
  if (kl_sandbox_seccomp(KL_SECCOMP_ON, err, sizeof err) != 0) return 1;
  ptrace(PTRACE_TRACEME, 0, NULL, NULL);
  return 2;
}
#endif

static int forbidden_listen(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  char err[160];
  if (s < 0 || kl_sandbox_seccomp(KL_SECCOMP_ON, err, sizeof err) != 0) return 1;
  listen(s, 1);
  return 2;
}

static int forbidden_packet_socket(void) {
  char err[160];
  if (kl_sandbox_seccomp(KL_SECCOMP_ON, err, sizeof err) != 0) return 1;
  socket(AF_PACKET, SOCK_RAW, 0);
  return 2;
}

#ifndef ASAN_BUILD
static int forbidden_fork(void) {
  char err[160];
  if (kl_sandbox_seccomp(KL_SECCOMP_ON, err, sizeof err) != 0) return 1;
  pid_t pid = fork(); /* clone without CLONE_THREAD */
  if (pid == 0) _exit(0);
  return 2;
}
#endif

/* A thread that already runs when the filter goes in is covered too (TSYNC). */
static void *late_exec(void *arg) {
  int *fds = arg;
  char c;
  if (read(fds[0], &c, 1) != 1) return NULL;
  char *const argv[] = {(char *)"/bin/true", NULL};
  execve("/bin/true", argv, NULL);
  return NULL;
}

static int forbidden_other_thread(void) {
  int fds[2];
  pthread_t t;
  if (pipe(fds) != 0 || pthread_create(&t, NULL, late_exec, fds) != 0) return 1;
  char err[160];
  if (kl_sandbox_seccomp(KL_SECCOMP_ON, err, sizeof err) != 0) return 2;
  if (write(fds[1], "x", 1) != 1) return 3;
  pthread_join(t, NULL);
  return 4;
}

/* log mode: a call outside the list is allowed (and logged), the process goes on. */
static int log_mode(void) {
  char err[160];
  if (kl_sandbox_seccomp(KL_SECCOMP_LOG, err, sizeof err) != 0) return 1;
  return personality(0xffffffff) >= 0 ? 0 : 2;
}

/* 0 when this platform loads a seccomp filter at all (qemu-user refuses every one: EINVAL). */
static int trivial_filter(void) {
  struct sock_filter allow[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
  struct sock_fprog prog = {1, allow};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 1;
  return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0 ? 0 : 1;
}

static void skip_without_seccomp(void) {
  int st = in_child(trivial_filter);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    print_message("skip: this platform loads no seccomp filter (qemu-user)\n");
    skip();
  }
}

static void test_seccomp_allows_keels_work(void **state) {
  (void)state;
  skip_without_seccomp();
  assert_exit0(in_child(allowed_work));
  assert_exit0(in_child(log_mode));
  char err[16];
  assert_int_equal(kl_sandbox_seccomp(KL_SECCOMP_OFF, err, sizeof err), 0); /* no-op */
}

static void test_seccomp_kills_forbidden_calls(void **state) {
  (void)state;
  skip_without_seccomp();
  assert_sigsys(in_child(forbidden_execve));
#ifndef ASAN_BUILD
  assert_sigsys(in_child(forbidden_ptrace));
  assert_sigsys(in_child(forbidden_fork));
#endif
  assert_sigsys(in_child(forbidden_listen));
  assert_sigsys(in_child(forbidden_packet_socket));
  assert_sigsys(in_child(forbidden_other_thread));
}

static void test_syscall_table(void **state) {
  (void)state;
  const char *const *names = NULL;
  size_t n = kl_sandbox_syscalls(&names);
  assert_true(n > 50);
  for (size_t i = 0; i < n; i++) { /* none of the dangerous ones slipped in */
    static const char *const never[] = {"execve", "execveat", "ptrace", "fork", "vfork",
                                        "setuid", "mount", "bpf", "kexec_load", "init_module",
                                        "listen", "socket"};
    for (size_t j = 0; j < sizeof never / sizeof never[0]; j++)
      assert_string_not_equal(names[i], never[j]);
    for (size_t j = 0; j < i; j++) assert_string_not_equal(names[i], names[j]); /* no duplicate */
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_user_forms),
      cmocka_unit_test(test_user_resolve),
      cmocka_unit_test(test_drop),
      cmocka_unit_test(test_seccomp_allows_keels_work),
      cmocka_unit_test(test_seccomp_kills_forbidden_calls),
      cmocka_unit_test(test_syscall_table),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
