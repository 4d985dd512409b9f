/* test_hist.c - unit tests for keel-load's histogram: precision, percentiles, clamping, merging. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hist.h"

/* A histogram is ~220 KB: too big to put several on a test's stack. */
static hist *new_hist(void) {
  hist *h = malloc(sizeof *h);
  assert_non_null(h);
  hist_reset(h);
  return h;
}

/* xorshift64*: deterministic values spread over every decade. */
static uint64_t rng_state = 0x9E3779B97F4A7C15u;
static uint64_t rng(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545F4914F6CDD1Du;
}

/* A value between 1 us and 60 s, log-uniform so that every bucket is exercised. */
static uint64_t log_uniform(void) {
  unsigned shift = (unsigned)(rng() % 26); /* 2^10 .. 2^35 ns */
  uint64_t v = (UINT64_C(1) << (10 + shift)) + rng() % (UINT64_C(1) << (10 + shift));
  return v > HIST_MAX_NS ? HIST_MAX_NS : v;
}

static void test_empty(void **state) {
  (void)state;
  hist *h = new_hist();
  assert_int_equal(hist_percentile(h, 50), 0);
  assert_int_equal(hist_percentile(h, 100), 0);
  assert_true(hist_mean(h) == 0.0);
  assert_int_equal(h->total, 0);
  free(h);
}

/* Below 2048 ns every value has its own counter, so percentiles are exact. */
static void test_small_values_exact(void **state) {
  (void)state;
  hist *h = new_hist();
  for (uint64_t v = 1; v <= 1000; v++)
    hist_record(h, v);
  assert_int_equal(hist_percentile(h, 50), 500);
  assert_int_equal(hist_percentile(h, 99), 990);
  assert_int_equal(hist_percentile(h, 100), 1000);
  assert_int_equal(hist_percentile(h, 0), 1);
  assert_int_equal(h->min, 1);
  assert_int_equal(h->max, 1000);
  assert_true(hist_mean(h) == 500.5);
  free(h);
}

/* 3 significant digits: the values sharing a counter span at most 1/1024 of the value. */
static void test_precision(void **state) {
  (void)state;
  for (int i = 0; i < 200000; i++) {
    uint64_t v = log_uniform();
    uint64_t lo = hist_lowest_equivalent(v), hi = hist_highest_equivalent(v);
    assert_true(lo <= v && v <= hi);
    assert_true((hi - lo + 1) * 1024 <= v || hi == lo);
    /* counters tile the range: the next value starts the next counter */
    if (hi < HIST_MAX_NS) assert_int_equal(hist_lowest_equivalent(hi + 1), hi + 1);
    assert_int_equal(hist_lowest_equivalent(lo), lo);
  }
  /* the first bucket boundaries */
  assert_int_equal(hist_highest_equivalent(2047), 2047);
  assert_int_equal(hist_lowest_equivalent(2049), 2048);
  assert_int_equal(hist_highest_equivalent(2048), 2049);
  assert_int_equal(hist_lowest_equivalent(1000), 1000);
}

/* 1 us .. 1 s in 1 us steps: every percentile within 0.1% of the true one. */
static void test_percentiles_uniform(void **state) {
  (void)state;
  hist *h = new_hist();
  for (uint64_t us = 1; us <= 1000000; us++)
    hist_record(h, us * 1000);
  static const double ps[] = {1, 10, 50, 90, 99, 99.9, 99.99};
  for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
    double want = ps[i] / 100 * 1e9;
    double got = (double)hist_percentile(h, ps[i]);
    assert_true(got >= want * 0.999 && got <= want * 1.001);
  }
  assert_int_equal(hist_percentile(h, 100), UINT64_C(1000000000));
  assert_true(hist_mean(h) == 500000500.0);
  free(h);
}

static void test_percentiles_monotonic(void **state) {
  (void)state;
  hist *h = new_hist();
  for (int i = 0; i < 100000; i++)
    hist_record(h, log_uniform());
  uint64_t prev = 0;
  for (double p = 0; p <= 100; p += 0.25) {
    uint64_t v = hist_percentile(h, p);
    assert_true(v >= prev);
    assert_true(v >= h->min && v <= h->max);
    prev = v;
  }
  assert_int_equal(hist_percentile(h, 100), h->max);
  free(h);
}

/* A bimodal distribution: the tail percentiles land on the slow mode. */
static void test_tail(void **state) {
  (void)state;
  hist *h = new_hist();
  hist_record_n(h, 2000000, 9900);  /* 2 ms */
  hist_record_n(h, 100000000, 100); /* 100 ms: 1% */
  uint64_t p50 = hist_percentile(h, 50), p99 = hist_percentile(h, 99),
           p999 = hist_percentile(h, 99.9);
  assert_true(p50 >= 2000000 && p50 <= 2002000);
  assert_true(p99 >= 2000000 && p99 <= 2002000); /* rank 9900 is still the fast mode */
  assert_true(p999 >= 100000000 && p999 <= 100100000);
  assert_int_equal(h->total, 10000);
  free(h);
}

static void test_clamp(void **state) {
  (void)state;
  hist *h = new_hist();
  hist_record(h, 1000);
  hist_record(h, UINT64_C(120000000000)); /* 120 s */
  hist_record(h, UINT64_MAX);
  assert_int_equal(h->total, 3);
  assert_int_equal(h->clamped, 2);
  assert_int_equal(h->max, HIST_MAX_NS);
  assert_int_equal(hist_percentile(h, 100), HIST_MAX_NS);
  assert_int_equal(hist_percentile(h, 10), 1000);
  hist_record(h, HIST_MAX_NS); /* the limit itself is in range */
  assert_int_equal(h->clamped, 2);
  free(h);
}

static void test_zero(void **state) {
  (void)state;
  hist *h = new_hist();
  hist_record(h, 0);
  assert_int_equal(h->total, 1);
  assert_int_equal(hist_percentile(h, 50), 0);
  assert_int_equal(h->min, 0);
  free(h);
}

/* Merging per-thread histograms gives exactly the histogram of all values. */
static void test_merge(void **state) {
  (void)state;
  hist *a = new_hist(), *b = new_hist(), *all = new_hist(), *empty = new_hist();
  for (int i = 0; i < 50000; i++) {
    uint64_t v = log_uniform();
    hist_record(i % 3 ? a : b, v);
    hist_record(all, v);
  }
  hist_record(b, UINT64_C(90000000000));
  hist_record(all, UINT64_C(90000000000));
  hist_merge(a, b);
  hist_merge(a, empty);
  assert_int_equal(a->total, all->total);
  assert_int_equal(a->clamped, all->clamped);
  assert_int_equal(a->min, all->min);
  assert_int_equal(a->max, all->max);
  assert_int_equal(a->sum, all->sum);
  assert_memory_equal(a->counts, all->counts, sizeof a->counts);
  for (double p = 1; p < 100; p += 7.5)
    assert_int_equal(hist_percentile(a, p), hist_percentile(all, p));
  /* into an empty one: min must come from the source */
  hist_merge(empty, all);
  assert_int_equal(empty->min, all->min);
  free(a);
  free(b);
  free(all);
  free(empty);
}

static void test_record_n(void **state) {
  (void)state;
  hist *a = new_hist(), *b = new_hist();
  hist_record_n(a, 123456, 1000);
  hist_record_n(a, 5, 0); /* no-op */
  for (int i = 0; i < 1000; i++)
    hist_record(b, 123456);
  assert_memory_equal(a, b, sizeof *a);
  free(a);
  free(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_empty),
      cmocka_unit_test(test_small_values_exact),
      cmocka_unit_test(test_precision),
      cmocka_unit_test(test_percentiles_uniform),
      cmocka_unit_test(test_percentiles_monotonic),
      cmocka_unit_test(test_tail),
      cmocka_unit_test(test_clamp),
      cmocka_unit_test(test_zero),
      cmocka_unit_test(test_merge),
      cmocka_unit_test(test_record_n),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
