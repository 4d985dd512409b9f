/* test_ratelimit.c - unit tests for local GCRA buckets: math, rate, burst, refill, LRU bound, threads, headers. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "gateway/ratelimit.h"

#define MS 1000000ull /* ns */

static void test_gcra_math(void **state) {
  (void)state;
  kl_rl_decision d;
  uint64_t tat = 0;
  /* burst 5, one token per 100 (unit = ms) */
  for (uint32_t i = 0; i < 5; i++) {
    kl_rl_gcra(&tat, 1000, 100, 5, 1, 1, &d);
    assert_true(d.allowed);
    assert_int_equal(d.remaining, 4 - i);
    assert_int_equal(d.reset_ms, 100 * (i + 1));
    assert_int_equal(d.status, 0);
  }
  kl_rl_gcra(&tat, 1000, 100, 5, 1, 1, &d);
  assert_false(d.allowed);
  assert_int_equal(d.status, 429);
  assert_int_equal(d.retry_after_ms, 100);
  assert_int_equal(d.reset_ms, 500);
  assert_int_equal(tat, 1500); /* a denial takes nothing */
  kl_rl_gcra(&tat, 1099, 100, 5, 1, 1, &d);
  assert_false(d.allowed);
  assert_int_equal(d.retry_after_ms, 1);
  kl_rl_gcra(&tat, 1100, 100, 5, 1, 1, &d); /* one token refilled */
  assert_true(d.allowed);
  assert_int_equal(d.remaining, 0);
  /* long idle: full again, never more than the burst */
  kl_rl_gcra(&tat, 100000, 100, 5, 1, 1, &d);
  assert_true(d.allowed);
  assert_int_equal(d.remaining, 4);
  /* a cost above the burst is never allowed */
  tat = 0;
  kl_rl_gcra(&tat, 1000, 100, 5, 6, 1, &d);
  assert_false(d.allowed);
}

static void test_parse_and_init(void **state) {
  (void)state;
  uint32_t c, p;
  assert_int_equal(kl_rl_parse_rate("100/s", &c, &p), 0);
  assert_int_equal(c, 100);
  assert_int_equal(p, 1000);
  assert_int_equal(kl_rl_parse_rate("6000/min", &c, &p), 0);
  assert_int_equal(p, 60000);
  assert_int_equal(kl_rl_parse_rate("5/h", &c, &p), 0);
  assert_int_equal(p, 3600000);
  assert_int_equal(kl_rl_parse_rate("0/s", &c, &p), -EINVAL);
  assert_int_equal(kl_rl_parse_rate("-1/s", &c, &p), -EINVAL);
  assert_int_equal(kl_rl_parse_rate("10/d", &c, &p), -EINVAL);
  assert_int_equal(kl_rl_parse_rate("10", &c, &p), -EINVAL);
  assert_int_equal(kl_rl_parse_rate("99999999999/s", &c, &p), -EINVAL);
  kl_rl_limit l;
  char err[128];
  assert_int_equal(kl_rl_limit_init(&l, "api", 1, 100, 1000, 200, KL_RL_GLOBAL, KL_RL_FAIL_LOCAL,
                                    4, err, sizeof err), 0);
  assert_int_equal(l.t_ns, 10 * MS);
  assert_int_equal(l.fb_t_ns, 40 * MS);
  assert_int_equal(l.fb_burst, 50);
  assert_int_equal(l.fb_count, 25);
  assert_string_equal(l.t_us, "10000.000");
  assert_int_equal(kl_rl_limit_init(&l, "bad name", 1, 1, 1000, 1, 0, 0, 0, err, sizeof err),
                   -EINVAL);
  assert_int_equal(kl_rl_limit_init(&l, "x", 1, 1, 1000, 0, 0, 0, 0, err, sizeof err), -EINVAL);
  assert_int_equal(kl_rl_limit_init(&l, "x", 1, 1, 3600000, 4000000, 0, 0, 0, err, sizeof err),
                   -EINVAL); /* tolerance would overflow */
}

static void test_local_rate_burst_refill(void **state) {
  (void)state;
  char err[128];
  kl_rl_table *t = kl_rl_table_new(1024, err, sizeof err);
  assert_non_null(t);
  kl_rl_limit l;
  assert_int_equal(kl_rl_limit_init(&l, "r", 7, 10, 1000, 10, KL_RL_LOCAL, 0, 1, err, sizeof err), 0);
  kl_rl_decision d;
  uint64_t now = 5000 * MS;
  for (int i = 0; i < 10; i++) {
    kl_rl_local(t, &l, "alice", 5, now, &d);
    assert_true(d.allowed);
    assert_int_equal(d.remaining, 9 - i);
    assert_int_equal(d.source, KL_RL_SRC_LOCAL);
  }
  kl_rl_local(t, &l, "alice", 5, now, &d);
  assert_false(d.allowed);
  assert_int_equal(d.retry_after_ms, 100);
  assert_int_equal(d.reset_ms, 1000);
  kl_rl_local(t, &l, "bob", 3, now, &d); /* another key has its own bucket */
  assert_true(d.allowed);
  kl_rl_limit l2 = l; /* so does another limit for the same key */
  l2.id = 8;
  kl_rl_local(t, &l2, "alice", 5, now, &d);
  assert_true(d.allowed);
  kl_rl_local(t, &l, "alice", 5, now + 100 * MS, &d); /* one token after T */
  assert_true(d.allowed);
  assert_int_equal(d.remaining, 0);
  kl_rl_local(t, &l, "alice", 5, now + 100 * MS, &d);
  assert_false(d.allowed);
  /* 10 per second over 3 s of steady arrivals every 50 ms: 10 (burst) + 30 refilled */
  int allowed = 0;
  uint64_t t0 = now + 10000 * MS; /* the bucket is full again */
  for (uint64_t ms = 0; ms < 3000; ms += 50) {
    kl_rl_local(t, &l, "carol", 5, t0 + ms * MS, &d);
    allowed += d.allowed;
  }
  assert_int_equal(allowed, 10 + 29); /* tokens at 100, 200, ..., 2900 ms */
  kl_rl_table_free(t);
}

static void test_eviction_bound_lru(void **state) {
  (void)state;
  char err[128];
  kl_rl_table *t = kl_rl_table_new(16, err, sizeof err); /* one shard of 16 */
  assert_non_null(t);
  kl_rl_limit l;
  assert_int_equal(kl_rl_limit_init(&l, "e", 1, 1, 3600000, 1, KL_RL_LOCAL, 0, 1, err, sizeof err), 0);
  kl_rl_decision d;
  uint64_t now = 1000 * MS;
  char k[32];
  kl_rl_local(t, &l, "hot", 3, now, &d);
  assert_true(d.allowed);
  for (int i = 0; i < 15; i++) {
    snprintf(k, sizeof k, "k%d", i);
    kl_rl_local(t, &l, k, strlen(k), now, &d);
    assert_true(d.allowed);
  }
  assert_int_equal(kl_rl_table_count(t), 16);
  kl_rl_local(t, &l, "hot", 3, now, &d); /* used again: most recent */
  assert_false(d.allowed);
  kl_rl_local(t, &l, "new", 3, now, &d); /* evicts k0, the least recently used */
  assert_true(d.allowed);
  assert_int_equal(kl_rl_table_evictions(t), 1);
  kl_rl_local(t, &l, "hot", 3, now, &d);
  assert_false(d.allowed); /* still remembered */
  kl_rl_local(t, &l, "k0", 2, now, &d);
  assert_true(d.allowed); /* forgotten: starts full */
  /* many keys: never more than the bound */
  for (int i = 0; i < 1000; i++) {
    snprintf(k, sizeof k, "many%d", i);
    kl_rl_local(t, &l, k, strlen(k), now, &d);
  }
  assert_int_equal(kl_rl_table_count(t), 16);
  kl_rl_local(t, &l, "hot", 3, now, &d);
  assert_true(d.allowed); /* evicted by then */
  kl_rl_table_free(t);

  t = kl_rl_table_new(100000, err, sizeof err); /* 64 shards */
  assert_non_null(t);
  for (int i = 0; i < 200000; i++) {
    snprintf(k, sizeof k, "x%d", i);
    kl_rl_local(t, &l, k, strlen(k), now, &d);
  }
  assert_true(kl_rl_table_count(t) <= 100000);
  assert_true(kl_rl_table_count(t) >= 99000); /* shards fill evenly */
  kl_rl_table_free(t);
}

typedef struct {
  kl_rl_table *t;
  const kl_rl_limit *l;
  int allowed;
} worker_arg;

static void *hammer(void *p) {
  worker_arg *a = p;
  kl_rl_decision d;
  char k[16];
  for (int i = 0; i < 200000; i++) {
    kl_rl_local(a->t, a->l, "shared", 6, 1000 * MS, &d);
    a->allowed += d.allowed;
    snprintf(k, sizeof k, "%d", i % 5000); /* churn other keys through the same shards */
    kl_rl_local(a->t, a->l, k, strlen(k), 1000 * MS, &d);
  }
  return NULL;
}

static void test_threads(void **state) {
  (void)state;
  char err[128];
  kl_rl_table *t = kl_rl_table_new(4096, err, sizeof err);
  assert_non_null(t);
  kl_rl_limit l;
  assert_int_equal(kl_rl_limit_init(&l, "t", 1, 1, 3600000, 1000, KL_RL_LOCAL, 0, 1, err, sizeof err), 0);
  worker_arg a = {t, &l, 0}, b = {t, &l, 0};
  pthread_t ta, tb;
  assert_int_equal(pthread_create(&ta, NULL, hammer, &a), 0);
  assert_int_equal(pthread_create(&tb, NULL, hammer, &b), 0);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  /* "shared" is the most recently used key of its shard at every step, never evicted */
  assert_int_equal(a.allowed + b.allowed, 1000);
  assert_true(kl_rl_table_count(t) <= 4096);
  kl_rl_table_free(t);
}

static const char *find(const kl_rl_header *h, int n, const char *name) {
  for (int i = 0; i < n; i++)
    if (strcmp(h[i].name, name) == 0) return h[i].value;
  return NULL;
}

static void test_headers(void **state) {
  (void)state;
  char err[128];
  kl_rl_limit l;
  assert_int_equal(kl_rl_limit_init(&l, "h", 1, 100, 1000, 200, KL_RL_GLOBAL, KL_RL_FAIL_LOCAL, 2,
                                    err, sizeof err), 0);
  kl_rl_header h[KL_RL_HEADERS_MAX];
  kl_rl_decision d = {.allowed = 1, .known = 1, .limit = 200, .remaining = 150, .reset_ms = 501,
                      .source = KL_RL_SRC_GLOBAL};
  int n = kl_rl_headers(&l, &d, h);
  assert_int_equal(n, 4);
  assert_string_equal(find(h, n, "RateLimit-Limit"), "200");
  assert_string_equal(find(h, n, "RateLimit-Remaining"), "150");
  assert_string_equal(find(h, n, "RateLimit-Reset"), "1");
  assert_string_equal(find(h, n, "RateLimit-Policy"), "100;w=1;burst=200");
  assert_null(find(h, n, "Retry-After"));
  d = (kl_rl_decision){.allowed = 0, .known = 1, .status = 429, .limit = 100, .remaining = 0,
                       .reset_ms = 2001, .retry_after_ms = 1001, .source = KL_RL_SRC_FALLBACK_LOCAL};
  n = kl_rl_headers(&l, &d, h);
  assert_int_equal(n, 5);
  assert_string_equal(find(h, n, "Retry-After"), "2");
  assert_string_equal(find(h, n, "RateLimit-Reset"), "3");
  assert_string_equal(find(h, n, "RateLimit-Policy"), "50;w=1;burst=100"); /* the local share */
  d.retry_after_ms = 3;
  n = kl_rl_headers(&l, &d, h);
  assert_string_equal(find(h, n, "Retry-After"), "1"); /* at least 1 */
  d = (kl_rl_decision){.allowed = 1, .source = KL_RL_SRC_FALLBACK_OPEN};
  assert_int_equal(kl_rl_headers(&l, &d, h), 0);
  d = (kl_rl_decision){.allowed = 0, .status = 503, .retry_after_ms = 1000,
                       .source = KL_RL_SRC_FALLBACK_CLOSED};
  n = kl_rl_headers(&l, &d, h);
  assert_int_equal(n, 1);
  assert_string_equal(find(h, n, "Retry-After"), "1");
}

static void test_worker_without_redis(void **state) {
  (void)state;
  char err[128];
  kl_rl_table *t = kl_rl_table_new(1024, err, sizeof err);
  kl_rl_worker *w = kl_rl_worker_new(t, NULL, 0, err, sizeof err);
  assert_non_null(w);
  kl_rl_limit lo, gopen, gclosed, glocal;
  assert_int_equal(kl_rl_limit_init(&lo, "lo", 1, 1, 60000, 2, KL_RL_LOCAL, 0, 1, err, sizeof err), 0);
  assert_int_equal(kl_rl_limit_init(&gopen, "go", 2, 1, 60000, 2, KL_RL_GLOBAL, KL_RL_FAIL_OPEN, 1,
                                    err, sizeof err), 0);
  assert_int_equal(kl_rl_limit_init(&gclosed, "gc", 3, 1, 60000, 2, KL_RL_GLOBAL,
                                    KL_RL_FAIL_CLOSED, 1, err, sizeof err), 0);
  assert_int_equal(kl_rl_limit_init(&glocal, "gl", 4, 1, 60000, 4, KL_RL_GLOBAL, KL_RL_FAIL_LOCAL,
                                    2, err, sizeof err), 0);
  kl_rl_decision d;
  for (int i = 0; i < 3; i++) {
    assert_int_equal(kl_rl_decide(w, &lo, "k", 1, &d, NULL, NULL), 1);
    assert_int_equal(d.allowed, i < 2);
    assert_int_equal(kl_rl_decide(w, &gopen, "k", 1, &d, NULL, NULL), 1);
    assert_true(d.allowed);
    assert_int_equal(d.source, KL_RL_SRC_FALLBACK_OPEN);
    assert_int_equal(kl_rl_decide(w, &gclosed, "k", 1, &d, NULL, NULL), 1);
    assert_false(d.allowed);
    assert_int_equal(d.status, 503);
    assert_int_equal(kl_rl_decide(w, &glocal, "k", 1, &d, NULL, NULL), 1);
    assert_int_equal(d.source, KL_RL_SRC_FALLBACK_LOCAL);
    assert_int_equal(d.allowed, i < 2); /* burst 4 over 2 replicas */
    assert_int_equal(d.limit, 2);
  }
  const kl_rl_stats *st = kl_rl_worker_stats(w);
  assert_int_equal(st->local, 3);
  assert_int_equal(st->redis_errors, 9);
  assert_int_equal(st->fallback_open, 3);
  assert_int_equal(st->fallback_closed, 3);
  assert_int_equal(st->fallback_local, 3);
  assert_int_equal(st->allowed, 2 + 3 + 2);
  assert_int_equal(st->denied, 1 + 3 + 1);
  kl_rl_worker_free(w);
  kl_rl_table_free(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gcra_math),
      cmocka_unit_test(test_parse_and_init),
      cmocka_unit_test(test_local_rate_burst_refill),
      cmocka_unit_test(test_eviction_bound_lru),
      cmocka_unit_test(test_threads),
      cmocka_unit_test(test_headers),
      cmocka_unit_test(test_worker_without_redis),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
