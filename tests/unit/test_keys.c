/* test_keys.c - unit tests for API keyrings: files, Secret-style directories, checks, header parsing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/keys.h"

static char dir[64];

static void put(const char *name, const char *text) {
  char p[128];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  FILE *f = fopen(p, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static int setup(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "/tmp/keel-test-keys-XXXXXX");
  assert_non_null(mkdtemp(dir));
  return 0;
}

static int teardown(void **state) {
  (void)state;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  return system(cmd) == 0 ? 0 : -1;
}

static void test_file(void **state) {
  (void)state;
  put("keys", "# team keys\n  alpha-123  \n\nbeta\r\n#gamma\n");
  char p[128], err[256];
  snprintf(p, sizeof p, "%s/keys", dir);
  kl_keyring *k = kl_keyring_load(p, err, sizeof err);
  assert_non_null(k);
  assert_int_equal(kl_keyring_count(k), 2);
  assert_true(kl_keyring_check(k, "alpha-123", 9));
  assert_true(kl_keyring_check(k, "beta", 4));
  assert_false(kl_keyring_check(k, "gamma", 5));      /* a comment */
  assert_false(kl_keyring_check(k, "#gamma", 6));
  assert_false(kl_keyring_check(k, "alpha-12", 8));   /* prefixes are not keys */
  assert_false(kl_keyring_check(k, "alpha-1234", 10));
  assert_false(kl_keyring_check(k, "", 0));
  kl_keyring_free(k);
}

static void test_secret_directory(void **state) {
  (void)state;
  char sub[128], err[256];
  snprintf(sub, sizeof sub, "%s/secret", dir);
  assert_int_equal(mkdir(sub, 0700), 0);
  char p[160];
  snprintf(p, sizeof p, "secret/%s", "team-a");
  put(p, "key-a\n");
  put("secret/team-b", "key-b"); /* no final newline */
  put("secret/..data", "hidden\n");
  kl_keyring *k = kl_keyring_load(sub, err, sizeof err);
  assert_non_null(k);
  assert_int_equal(kl_keyring_count(k), 2);
  assert_true(kl_keyring_check(k, "key-a", 5));
  assert_true(kl_keyring_check(k, "key-b", 5));
  assert_false(kl_keyring_check(k, "hidden", 6));
  kl_keyring_free(k);
}

static void test_errors(void **state) {
  (void)state;
  char p[128], err[256] = "";
  snprintf(p, sizeof p, "%s/missing", dir);
  assert_null(kl_keyring_load(p, err, sizeof err));
  assert_non_null(strstr(err, "No such file"));
  put("empty", "# nothing\n\n");
  snprintf(p, sizeof p, "%s/empty", dir);
  assert_null(kl_keyring_load(p, err, sizeof err));
  assert_non_null(strstr(err, "no keys"));
  char *longkey = malloc(KL_KEY_LEN_MAX + 3);
  memset(longkey, 'k', KL_KEY_LEN_MAX + 1);
  longkey[KL_KEY_LEN_MAX + 1] = '\n';
  longkey[KL_KEY_LEN_MAX + 2] = '\0';
  put("long", longkey);
  free(longkey);
  snprintf(p, sizeof p, "%s/long", dir);
  assert_null(kl_keyring_load(p, err, sizeof err));
  assert_non_null(strstr(err, ":1: key longer"));
}

static void test_from_headers(void **state) {
  (void)state;
  const char *key;
  size_t len;
  assert_true(kl_key_from_headers("Bearer  tok-1 ", 14, NULL, 0, &key, &len));
  assert_int_equal(len, 5);
  assert_memory_equal(key, "tok-1", 5);
  assert_true(kl_key_from_headers("bearer x", 8, "ignored", 7, &key, &len));
  assert_memory_equal(key, "x", 1);
  assert_true(kl_key_from_headers("Basic abc", 9, "xk", 2, &key, &len)); /* falls back */
  assert_memory_equal(key, "xk", 2);
  assert_false(kl_key_from_headers("Bearer ", 7, NULL, 0, &key, &len));
  assert_false(kl_key_from_headers(NULL, 0, NULL, 0, &key, &len));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_file, setup, teardown),
      cmocka_unit_test_setup_teardown(test_secret_directory, setup, teardown),
      cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
      cmocka_unit_test(test_from_headers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
