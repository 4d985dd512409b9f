/* test_cpus.c - unit tests for the cgroup CPU limit reader, on fake cgroup trees. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/cpus.h"

static char root[64];

/* Writes ROOT/REL (creating its directories) with the given text. */
static void put(const char *rel, const char *text) {
  char path[256];
  snprintf(path, sizeof path, "%s/%s", root, rel);
  for (char *p = path + strlen(root) + 1; (p = strchr(p, '/')); p++) {
    *p = '\0';
    mkdir(path, 0755);
    *p = '/';
  }
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static unsigned limit(void) {
  char proc[128], fs[128];
  snprintf(proc, sizeof proc, "%s/proc_cgroup", root);
  snprintf(fs, sizeof fs, "%s/fs", root);
  return kl_cgroup_cpu_limit(proc, fs);
}

static int setup(void **state) {
  (void)state;
  snprintf(root, sizeof root, "/tmp/keel-cpus-XXXXXX");
  return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  char cmd[96];
  snprintf(cmd, sizeof cmd, "rm -rf %s", root);
  return system(cmd) == 0 ? 0 : -1;
}

static void v2_quota_rounds_up(void **state) {
  (void)state;
  put("proc_cgroup", "0::/kubepods/pod1/c1\n");
  put("fs/kubepods/pod1/c1/cpu.max", "150000 100000\n");
  assert_int_equal(limit(), 2);
  put("fs/kubepods/pod1/c1/cpu.max", "50000 100000\n");
  assert_int_equal(limit(), 1);
}

static void v2_max_is_no_limit_and_parents_count(void **state) {
  (void)state;
  put("proc_cgroup", "0::/a/b\n");
  put("fs/a/b/cpu.max", "max 100000\n");
  assert_int_equal(limit(), 0);
  put("fs/a/cpu.max", "300000 100000\n"); /* a parent's limit applies to its children */
  assert_int_equal(limit(), 3);
  put("fs/a/b/cpu.max", "400000 100000\n");
  assert_int_equal(limit(), 3); /* the smallest wins */
}

static void v2_container_sees_its_cgroup_at_the_root(void **state) {
  (void)state;
  put("proc_cgroup", "0::/host/path/not/mounted\n");
  put("fs/cpu.max", "200000 100000\n");
  assert_int_equal(limit(), 2);
}

static void v1_quota_and_period(void **state) {
  (void)state;
  put("proc_cgroup", "12:memory:/x\n4:cpu,cpuacct:/docker/abc\n");
  put("fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "250000\n");
  put("fs/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
  assert_int_equal(limit(), 3);
  put("fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n"); /* no limit */
  assert_int_equal(limit(), 0);
}

static void nothing_readable_is_no_limit(void **state) {
  (void)state;
  put("proc_cgroup", "garbage\n1:cpu:relative\n0::/gone\n");
  assert_int_equal(limit(), 0);
  assert_int_equal(kl_cgroup_cpu_limit("/nonexistent/cgroup", "/nonexistent"), 0);
  assert_true(kl_cpus_usable() >= 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(v2_quota_rounds_up, setup, teardown),
      cmocka_unit_test_setup_teardown(v2_max_is_no_limit_and_parents_count, setup, teardown),
      cmocka_unit_test_setup_teardown(v2_container_sees_its_cgroup_at_the_root, setup, teardown),
      cmocka_unit_test_setup_teardown(v1_quota_and_period, setup, teardown),
      cmocka_unit_test_setup_teardown(nothing_readable_is_no_limit, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
