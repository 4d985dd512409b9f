/* test_timer.c - unit tests for the min-heap timers: order, re-arm, cancel, capacity, timeouts. */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/timer.h"

/* A timer's owner, found from the timer by offset arithmetic as the callers do. */
typedef struct owner {
  kl_timer t;
  int id;
  int runs;
  int rearm;         /* re-arms this many more times from its callback */
  uint64_t rearm_at; /* at this deadline (or `step` after the old one when 0) */
  uint64_t step;
  struct owner *cancel; /* cancels this timer from its callback */
  struct owner *arm;    /* arms this timer from its callback, at arm_at */
  uint64_t arm_at;
} owner;

#define OWNER(tp) ((owner *)(void *)((char *)(tp)-offsetof(owner, t)))

#define LOG_MAX 4096
static int run_log[LOG_MAX];
static uint64_t run_deadline[LOG_MAX];
static size_t nlog;
static kl_timers *cur; /* the heap the callbacks work on */

static void on_timer(kl_timer *t) {
  owner *o = OWNER(t);
  assert_int_equal(t->slot, 0); /* already disarmed when called */
  assert_true(nlog < LOG_MAX);
  run_log[nlog] = o->id;
  run_deadline[nlog] = t->deadline;
  nlog++;
  o->runs++;
  if (o->cancel) kl_timer_cancel(cur, &o->cancel->t);
  if (o->arm) assert_int_equal(kl_timer_set(cur, &o->arm->t, o->arm_at), 0);
  if (o->rearm > 0) {
    o->rearm--;
    uint64_t next = o->rearm_at ? o->rearm_at : t->deadline + o->step;
    assert_int_equal(kl_timer_set(cur, t, next), 0);
  }
}

static void owner_init(owner *o, int id) {
  memset(o, 0, sizeof(*o));
  o->id = id;
  o->t.cb = on_timer;
}

/* The heap property, and every armed timer knows its slot. */
static void check_heap(const kl_timers *ts) {
  assert_true(ts->n <= ts->cap);
  for (uint32_t i = 0; i < ts->n; i++) {
    assert_int_equal(ts->heap[i]->slot, i + 1);
    if (i) assert_true(ts->heap[(i - 1) / 2]->deadline <= ts->heap[i]->deadline);
  }
}

static int setup(void **state) {
  (void)state;
  nlog = 0;
  cur = NULL;
  return 0;
}

static void expect_log(const int *ids, size_t n) {
  assert_int_equal(nlog, n);
  for (size_t i = 0; i < n; i++)
    assert_int_equal(run_log[i], ids[i]);
}

/* ---- tests -------------------------------------------------------------------- */

static void test_order(void **state) {
  (void)state;
  kl_timers ts;
  assert_int_equal(kl_timers_init(&ts, 8), 0);
  cur = &ts;
  owner a, b, c;
  owner_init(&a, 1);
  owner_init(&b, 2);
  owner_init(&c, 3);
  assert_int_equal(a.t.slot, 0);
  assert_int_equal(kl_timer_set(&ts, &a.t, 30), 0);
  assert_int_equal(kl_timer_set(&ts, &b.t, 10), 0);
  assert_int_equal(kl_timer_set(&ts, &c.t, 20), 0);
  assert_int_not_equal(a.t.slot, 0);
  check_heap(&ts);
  assert_int_equal(kl_timers_run(&ts, 9), 0);
  assert_int_equal(nlog, 0);
  assert_int_equal(kl_timers_run(&ts, 20), 2); /* due exactly at the deadline */
  static const int want1[] = {2, 3};
  expect_log(want1, 2);
  assert_int_equal(b.t.slot, 0);
  assert_int_not_equal(a.t.slot, 0);
  assert_int_equal(kl_timers_run(&ts, 1000), 1);
  static const int want2[] = {2, 3, 1};
  expect_log(want2, 3);
  assert_int_equal(ts.n, 0);
  assert_int_equal(kl_timers_run(&ts, UINT64_MAX), 0);
  kl_timers_free(&ts);
  assert_null(ts.heap);
}

static void test_rearm_earlier_later(void **state) {
  (void)state;
  kl_timers ts;
  assert_int_equal(kl_timers_init(&ts, 8), 0);
  cur = &ts;
  owner o[5];
  for (int i = 0; i < 5; i++) {
    owner_init(&o[i], i);
    assert_int_equal(kl_timer_set(&ts, &o[i].t, (uint64_t)(100 + 10 * i)), 0);
  }
  check_heap(&ts);
  assert_int_equal(kl_timer_set(&ts, &o[4].t, 50), 0); /* earlier: becomes first */
  check_heap(&ts);
  assert_ptr_equal(ts.heap[0], &o[4].t);
  assert_int_equal(kl_timer_set(&ts, &o[0].t, 500), 0); /* later: becomes last */
  check_heap(&ts);
  assert_int_equal(kl_timer_set(&ts, &o[2].t, 120), 0); /* same deadline: no change */
  check_heap(&ts);
  assert_int_equal(ts.n, 5); /* re-arming never adds a second entry */
  assert_int_equal(kl_timers_timeout(&ts, 0), 50);
  assert_int_equal(kl_timers_run(&ts, UINT64_MAX), 5);
  static const int want[] = {4, 1, 2, 3, 0};
  expect_log(want, 5);
  for (int i = 0; i < 5; i++)
    assert_int_equal(o[i].runs, 1);
  kl_timers_free(&ts);
}

static void test_cancel(void **state) {
  (void)state;
  kl_timers ts;
  assert_int_equal(kl_timers_init(&ts, 16), 0);
  cur = &ts;
  owner o[10];
  for (int i = 0; i < 10; i++) {
    owner_init(&o[i], i);
    assert_int_equal(kl_timer_set(&ts, &o[i].t, (uint64_t)(10 * (10 - i))), 0);
  }
  kl_timer_cancel(&ts, &o[9].t); /* the earliest (root) */
  check_heap(&ts);
  kl_timer_cancel(&ts, &o[0].t); /* the latest (a leaf) */
  check_heap(&ts);
  kl_timer_cancel(&ts, &o[5].t); /* one in the middle */
  check_heap(&ts);
  assert_int_equal(o[5].t.slot, 0);
  kl_timer_cancel(&ts, &o[5].t); /* twice: no-op */
  check_heap(&ts);
  owner never;
  owner_init(&never, 99);
  kl_timer_cancel(&ts, &never.t); /* never armed: no-op */
  assert_int_equal(ts.n, 7);
  assert_int_equal(kl_timers_run(&ts, UINT64_MAX), 7);
  static const int want[] = {8, 7, 6, 4, 3, 2, 1};
  expect_log(want, 7);
  assert_int_equal(o[0].runs + o[5].runs + o[9].runs, 0);
  /* A cancelled timer can be armed again. */
  assert_int_equal(kl_timer_set(&ts, &o[5].t, 1), 0);
  assert_int_equal(kl_timers_run(&ts, 1), 1);
  assert_int_equal(o[5].runs, 1);
  kl_timers_free(&ts);
}

/* A small deterministic generator (xorshift64*). */
static uint64_t rng_state = 88172645463325252ULL;
static uint64_t rnd(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 2685821657736338717ULL;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static void test_random_vs_sort(void **state) {
  (void)state;
  enum { N = 1000 };
  kl_timers ts;
  assert_int_equal(kl_timers_init(&ts, N), 0);
  cur = &ts;
  owner *o = calloc(N, sizeof(*o));
  uint64_t *want = calloc(N, sizeof(*want));
  assert_non_null(o);
  assert_non_null(want);
  for (int round = 0; round < 5; round++) {
    nlog = 0;
    for (int i = 0; i < N; i++)
      owner_init(&o[i], i);
    /* Random arms, re-arms (earlier and later, with many equal deadlines) and cancels. */
    for (int op = 0; op < 5 * N; op++) {
      owner *x = &o[rnd() % N];
      uint64_t r = rnd();
      if (r % 5 == 0) {
        kl_timer_cancel(&ts, &x->t);
      } else {
        uint64_t d = (r >> 8) % (round % 2 ? 50 : 1000000); /* odd rounds: many ties */
        assert_int_equal(kl_timer_set(&ts, &x->t, d), 0);
      }
      if (op % 97 == 0) check_heap(&ts);
    }
    check_heap(&ts);
    size_t armed = 0;
    for (int i = 0; i < N; i++)
      if (o[i].t.slot) want[armed++] = o[i].t.deadline;
    assert_int_equal(ts.n, armed);
    qsort(want, armed, sizeof(*want), cmp_u64);
    /* Run in several steps; each step runs exactly the due ones, in deadline order. */
    uint64_t now = 0;
    size_t done = 0;
    while (ts.n) {
      now += 1 + rnd() % (round % 2 ? 10 : 200000);
      size_t due = 0;
      while (done + due < armed && want[done + due] <= now)
        due++;
      int to = kl_timers_timeout(&ts, now);
      assert_true(due ? to == 0 : to > 0);
      assert_int_equal(kl_timers_run(&ts, now), due);
      done += due;
      check_heap(&ts);
    }
    assert_int_equal(nlog, armed);
    for (size_t i = 0; i < armed; i++)
      assert_true(run_deadline[i] == want[i]);
    for (int i = 0; i < N; i++)
      assert_true(o[i].runs <= 1);
  }
  free(o);
  free(want);
  kl_timers_free(&ts);
}

static void test_capacity(void **state) {
  (void)state;
  kl_timers ts;
  assert_int_equal(kl_timers_init(&ts, 4), 0);
  cur = &ts;
  owner o[6];
  for (int i = 0; i < 6; i++)
    owner_init(&o[i], i);
  for (int i = 0; i < 4; i++)
    assert_int_equal(kl_timer_set(&ts, &o[i].t, (uint64_t)i + 1), 0);
  assert_int_equal(kl_timer_set(&ts, &o[4].t, 1), -ENOBUFS);
  assert_int_equal(o[4].t.slot, 0);
  assert_int_equal(ts.n, 4);
  assert_int_equal(kl_timer_set(&ts, &o[2].t, 100), 0); /* re-arming when full is fine */
  check_heap(&ts);
  kl_timer_cancel(&ts, &o[0].t);
  assert_int_equal(kl_timer_set(&ts, &o[4].t, 1), 0);
  assert_int_equal(kl_timer_set(&ts, &o[5].t, 1), -ENOBUFS);
  check_heap(&ts);
  assert_int_equal(kl_timers_run(&ts, UINT64_MAX), 4);
  assert_int_equal(kl_timer_set(&ts, &o[5].t, 1), 0); /* room again after they ran */
  kl_timers_free(&ts);

  kl_timers z;
  assert_int_equal(kl_timers_init(&z, 0), 0);
  assert_int_equal(kl_timer_set(&z, &o[0].t, 1), -ENOBUFS);
  assert_int_equal(kl_timers_timeout(&z, 0), -1);
  assert_int_equal(kl_timers_run(&z, UINT64_MAX), 0);
  kl_timers_free(&z);
}

static void test_timeout_values(void **state) {
  (void)state;
  kl_timers ts;
  assert_int_equal(kl_timers_init(&ts, 4), 0);
  cur = &ts;
  assert_int_equal(kl_timers_timeout(&ts, 0), -1); /* none armed */
  owner a, b;
  owner_init(&a, 1);
  owner_init(&b, 2);
  assert_int_equal(kl_timer_set(&ts, &a.t, 1000), 0);
  assert_int_equal(kl_timers_timeout(&ts, 0), 1000);
  assert_int_equal(kl_timers_timeout(&ts, 999), 1);
  assert_int_equal(kl_timers_timeout(&ts, 1000), 0); /* due */
  assert_int_equal(kl_timers_timeout(&ts, 5000), 0); /* overdue */
  assert_int_equal(kl_timer_set(&ts, &b.t, 600), 0);
  assert_int_equal(kl_timers_timeout(&ts, 100), 500); /* the earliest counts */
  kl_timer_cancel(&ts, &b.t);
  assert_int_equal(kl_timers_timeout(&ts, 100), 900);
  assert_int_equal(kl_timer_set(&ts, &a.t, 1000000 + 5000), 0);
  assert_int_equal(kl_timers_timeout(&ts, 1000000), 5000);
  /* Far deadlines never overflow the int: a positive wait, at most the real one. */
  assert_int_equal(kl_timer_set(&ts, &a.t, UINT64_MAX), 0);
  int t = kl_timers_timeout(&ts, 0);
  assert_true(t > 0 && t <= INT_MAX);
  assert_int_equal(kl_timer_set(&ts, &a.t, (uint64_t)INT_MAX + 12345), 0);
  t = kl_timers_timeout(&ts, 12345);
  assert_true(t > 0);
  assert_int_equal(kl_timers_timeout(&ts, UINT64_MAX), 0);
  kl_timers_free(&ts);
  assert_int_equal(kl_timers_timeout(&ts, 0), -1); /* freed: empty */
}

static void test_callback_rearms_itself(void **state) {
  (void)state;
  kl_timers ts;
  assert_int_equal(kl_timers_init(&ts, 4), 0);
  cur = &ts;
  owner tick, other;
  owner_init(&tick, 1);
  owner_init(&other, 2);
  tick.rearm = 4; /* a periodic timer: every 100 ms, five runs in all */
  tick.step = 100;
  assert_int_equal(kl_timer_set(&ts, &tick.t, 100), 0);
  assert_int_equal(kl_timer_set(&ts, &other.t, 250), 0);
  unsigned total = 0;
  for (uint64_t now = 0; now <= 1000; now += 50) {
    unsigned ran = kl_timers_run(&ts, now);
    assert_true(ran <= 1); /* re-armed for later: not run again in the same pass */
    total += ran;
    check_heap(&ts);
  }
  assert_int_equal(total, 6);
  assert_int_equal(tick.runs, 5);
  assert_int_equal(other.runs, 1);
  static const int want[] = {1, 1, 2, 1, 1, 1};
  expect_log(want, 6);
  static const uint64_t wantd[] = {100, 200, 250, 300, 400, 500};
  for (size_t i = 0; i < 6; i++)
    assert_true(run_deadline[i] == wantd[i]);
  assert_int_equal(ts.n, 0);

  /* Re-armed for a deadline that is already due: runs again in the same pass. */
  nlog = 0;
  owner again;
  owner_init(&again, 3);
  again.rearm = 3;
  again.rearm_at = 10;
  assert_int_equal(kl_timer_set(&ts, &again.t, 10), 0);
  assert_int_equal(kl_timers_run(&ts, 10), 4);
  assert_int_equal(again.runs, 4);
  assert_int_equal(again.t.slot, 0);
  kl_timers_free(&ts);
}

static void test_callback_cancels_and_arms(void **state) {
  (void)state;
  kl_timers ts;
  assert_int_equal(kl_timers_init(&ts, 8), 0);
  cur = &ts;
  owner a, b, c, d;
  owner_init(&a, 1);
  owner_init(&b, 2);
  owner_init(&c, 3);
  owner_init(&d, 4);
  a.cancel = &b; /* b was due too, but a cancels it first */
  a.arm = &c;    /* and arms c, due in this pass */
  a.arm_at = 15;
  assert_int_equal(kl_timer_set(&ts, &a.t, 10), 0);
  assert_int_equal(kl_timer_set(&ts, &b.t, 12), 0);
  assert_int_equal(kl_timer_set(&ts, &d.t, 30), 0);
  assert_int_equal(kl_timers_run(&ts, 20), 2);
  static const int want[] = {1, 3};
  expect_log(want, 2);
  assert_int_equal(b.runs, 0);
  assert_int_equal(b.t.slot, 0);
  assert_int_equal(ts.n, 1);
  assert_int_equal(kl_timers_timeout(&ts, 20), 10);
  kl_timers_free(&ts);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_order, setup),
      cmocka_unit_test_setup(test_rearm_earlier_later, setup),
      cmocka_unit_test_setup(test_cancel, setup),
      cmocka_unit_test_setup(test_random_vs_sort, setup),
      cmocka_unit_test_setup(test_capacity, setup),
      cmocka_unit_test_setup(test_timeout_values, setup),
      cmocka_unit_test_setup(test_callback_rearms_itself, setup),
      cmocka_unit_test_setup(test_callback_cancels_and_arms, setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
