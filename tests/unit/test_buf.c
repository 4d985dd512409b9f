/* test_buf.c - unit tests for the capped growable buffer and the request arena. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/buf.h"

#if defined(__SANITIZE_ADDRESS__)
#define ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ASAN 1
#endif
#endif
#ifndef ASAN
#define ASAN 0
#endif

/* Byte i of a recognisable pattern. */
static char pat(size_t i) {
  return (char)('a' + (i * 7 + i / 251) % 26);
}

static void fill(char *p, size_t n, size_t from) {
  for (size_t i = 0; i < n; i++)
    p[i] = pat(from + i);
}

static void assert_pattern(const char *p, size_t n, size_t from) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != pat(from + i)) fail_msg("byte %zu differs", from + i);
}

/* ---- kl_buf ---------------------------------------------------------------- */

static void test_buf_init(void **state) {
  (void)state;
  kl_buf b;
  kl_buf_init(&b, 100);
  assert_null(b.data);
  assert_int_equal(b.len, 0);
  assert_int_equal(b.cap, 0);
  assert_int_equal(b.max, 100);
  assert_int_equal(kl_buf_reserve(&b, 0), 0);
  assert_int_equal(kl_buf_append(&b, NULL, 0), 0); /* nothing to copy */
  assert_int_equal(b.len, 0);
  kl_buf_free(&b);
  kl_buf_free(&b); /* twice is fine */
}

static void test_buf_append_to_max(void **state) {
  (void)state;
  const size_t max = 3000;
  char src[4096];
  fill(src, sizeof(src), 0);
  kl_buf b;
  kl_buf_init(&b, max);
  /* Appends of varied sizes up to exactly max; contents survive every growth. */
  size_t len = 0, step = 1;
  while (len < max) {
    size_t n = step < max - len ? step : max - len;
    assert_int_equal(kl_buf_append(&b, src + len, n), 0);
    len += n;
    step = step * 3 + 1;
    assert_int_equal(b.len, len);
    assert_true(b.cap >= b.len && b.cap <= max);
    assert_pattern(b.data, b.len, 0);
  }
  assert_int_equal(b.len, max);
  assert_int_equal(b.cap, max); /* growth is capped at max, never past it */
  /* One more byte is refused and nothing changes. */
  char *before = b.data;
  assert_int_equal(kl_buf_append(&b, "x", 1), -ENOBUFS);
  assert_int_equal(kl_buf_reserve(&b, 1), -ENOBUFS);
  assert_int_equal(b.len, max);
  assert_ptr_equal(b.data, before);
  assert_pattern(b.data, b.len, 0);
  assert_int_equal(kl_buf_append(&b, "x", 0), 0); /* zero bytes still fit */
  assert_int_equal(kl_buf_reserve(&b, 0), 0);
  kl_buf_free(&b);
  assert_null(b.data);
  assert_int_equal(b.len, 0);
  assert_int_equal(b.cap, 0);
  assert_int_equal(b.max, max);
}

static void test_buf_reserve(void **state) {
  (void)state;
  kl_buf b;
  kl_buf_init(&b, 10000);
  assert_int_equal(kl_buf_reserve(&b, 10001), -ENOBUFS);
  assert_null(b.data);
  assert_int_equal(kl_buf_reserve(&b, SIZE_MAX), -ENOBUFS); /* no overflow */
  assert_int_equal(kl_buf_reserve(&b, 10000), 0);
  assert_true(b.cap >= 10000 && b.cap <= 10000);
  assert_int_equal(b.len, 0); /* reserve does not use */
  memset(b.data, 'r', b.cap); /* the room is really there (ASan) */
  char big[6000];
  fill(big, sizeof(big), 0);
  assert_int_equal(kl_buf_append(&b, big, sizeof(big)), 0);
  assert_int_equal(kl_buf_reserve(&b, 4000), 0);
  assert_int_equal(kl_buf_reserve(&b, 4001), -ENOBUFS);
  assert_int_equal(kl_buf_reserve(&b, SIZE_MAX - 100), -ENOBUFS);
  assert_int_equal(kl_buf_append(&b, big, 4001), -ENOBUFS);
  assert_int_equal(b.len, 6000);
  assert_int_equal(kl_buf_append(&b, big, 4000), 0);
  assert_int_equal(b.len, 10000);
  assert_pattern(b.data, 6000, 0);
  assert_pattern(b.data + 6000, 4000, 0);
  kl_buf_free(&b);

  /* Reserve then write at data + len, as readers do. */
  kl_buf r;
  kl_buf_init(&r, 1 << 20);
  size_t total = 0;
  for (int i = 0; i < 50; i++) {
    assert_int_equal(kl_buf_reserve(&r, 7000), 0);
    assert_true(r.cap - r.len >= 7000);
    fill(r.data + r.len, 7000, total);
    r.len += 7000;
    total += 7000;
  }
  assert_pattern(r.data, total, 0);
  kl_buf_free(&r);
}

static void test_buf_max_zero(void **state) {
  (void)state;
  kl_buf b;
  kl_buf_init(&b, 0);
  assert_int_equal(kl_buf_reserve(&b, 0), 0);
  assert_int_equal(kl_buf_append(&b, "", 0), 0);
  assert_int_equal(kl_buf_append(&b, "x", 1), -ENOBUFS);
  assert_int_equal(kl_buf_reserve(&b, 1), -ENOBUFS);
  assert_null(b.data);
  kl_buf_free(&b);
}

static void test_buf_shrink(void **state) {
  (void)state;
  char src[5000];
  fill(src, sizeof(src), 0);
  kl_buf b;
  kl_buf_init(&b, 1 << 20);
  assert_int_equal(kl_buf_append(&b, src, sizeof(src)), 0);
  size_t cap = b.cap;
  assert_true(cap >= sizeof(src));
  kl_buf_shrink(&b, 16); /* not empty: kept */
  assert_int_equal(b.cap, cap);
  assert_int_equal(b.len, sizeof(src));
  assert_pattern(b.data, b.len, 0);
  b.len = 0;              /* consumed */
  kl_buf_shrink(&b, cap); /* not past `keep`: kept */
  assert_int_equal(b.cap, cap);
  assert_non_null(b.data);
  kl_buf_shrink(&b, cap - 1); /* past `keep` and empty: dropped */
  assert_null(b.data);
  assert_int_equal(b.cap, 0);
  assert_int_equal(b.len, 0);
  assert_int_equal(b.max, 1 << 20);
  kl_buf_shrink(&b, 0); /* nothing allocated: nothing to do */
  assert_null(b.data);
  /* Usable again afterwards. */
  assert_int_equal(kl_buf_append(&b, src, 100), 0);
  assert_pattern(b.data, 100, 0);
  b.len = 0;
  kl_buf_shrink(&b, 1 << 20);
  assert_non_null(b.data);
  kl_buf_free(&b);
}

/* ---- kl_arena ----------------------------------------------------------------- */

static int aligned16(const void *p) {
  return ((uintptr_t)p & 15) == 0;
}

static void test_arena_alignment(void **state) {
  (void)state;
  kl_arena a;
  kl_arena_init(&a, 1024, 1 << 20);
  char *ptrs[200];
  size_t sizes[200];
  for (size_t i = 0; i < 200; i++) {
    sizes[i] = 1 + (i * 37) % 300;
    ptrs[i] = kl_arena_alloc(&a, sizes[i]);
    assert_non_null(ptrs[i]);
    assert_true(aligned16(ptrs[i]));
    fill(ptrs[i], sizes[i], i * 1000);
  }
  /* Nothing overlaps and nothing moved. */
  for (size_t i = 0; i < 200; i++)
    assert_pattern(ptrs[i], sizes[i], i * 1000);
  /* A _Alignas(16) object can live there. */
  long double *ld = kl_arena_alloc(&a, sizeof(*ld));
  assert_non_null(ld);
  assert_true(aligned16(ld));
  *ld = 1.5L;
  assert_true(*ld == 1.5L);
  kl_arena_free(&a);
}

static void test_arena_cap(void **state) {
  (void)state;
  kl_arena a;
  kl_arena_init(&a, 64, 256);
  for (int i = 0; i < 16; i++)
    assert_non_null(kl_arena_alloc(&a, 16));
  assert_int_equal(a.used, 256);
  assert_null(kl_arena_alloc(&a, 1)); /* cap reached */
  kl_arena_reset(&a);
  assert_int_equal(a.used, 0);
  assert_non_null(kl_arena_alloc(&a, 256)); /* all of it at once, after a reset */
  assert_null(kl_arena_alloc(&a, 1));
  kl_arena_reset(&a);
  assert_null(kl_arena_alloc(&a, 257));      /* more than the cap at once */
  assert_null(kl_arena_alloc(&a, SIZE_MAX)); /* no overflow when rounding up */
  assert_null(kl_arena_alloc(&a, SIZE_MAX - 14));
  kl_arena_free(&a);
  /* Rounding to 16 counts against the cap. */
  kl_arena_init(&a, 64, 32);
  assert_non_null(kl_arena_alloc(&a, 17));
  assert_int_equal(a.used, 32);
  assert_null(kl_arena_alloc(&a, 1));
  kl_arena_free(&a);
  kl_arena_free(&a); /* twice is fine */
}

static void test_arena_reset_reuses_first_block(void **state) {
  (void)state;
  kl_arena a;
  kl_arena_init(&a, 1024, 1 << 20);
  char *first = kl_arena_alloc(&a, 100);
  assert_non_null(first);
  /* More blocks: a big one and further small ones. */
  char *big = kl_arena_alloc(&a, 5000);
  assert_non_null(big);
  memset(big, 'B', 5000);
  for (int i = 0; i < 20; i++) {
    char *p = kl_arena_alloc(&a, 300);
    assert_non_null(p);
    memset(p, 'x', 300);
  }
  kl_arena_reset(&a);
  assert_int_equal(a.used, 0);
  char *again = kl_arena_alloc(&a, 100);
  assert_ptr_equal(again, first); /* the first block is kept and reused from its start */
  memset(again, 'y', 100);
  /* It fills the first block before asking for more. */
  char *next = kl_arena_alloc(&a, 100);
  assert_ptr_equal(next, first + 112);
  kl_arena_reset(&a);
  assert_ptr_equal(kl_arena_alloc(&a, 1), first);
  kl_arena_free(&a);
  assert_null(a.head);
  /* After free it starts over. */
  char *p = kl_arena_alloc(&a, 10);
  assert_non_null(p);
  assert_true(aligned16(p));
  kl_arena_free(&a);
}

static void test_arena_big(void **state) {
  (void)state;
  kl_arena a;
  kl_arena_init(&a, 4096, 64 << 20);
  char *small = kl_arena_alloc(&a, 32);
  assert_non_null(small);
  memset(small, 's', 32);
  char *big = kl_arena_alloc(&a, 8 << 20); /* larger than a block: its own block */
  assert_non_null(big);
  assert_true(aligned16(big));
  memset(big, 'b', 8 << 20); /* all of it is usable (ASan checks the bounds) */
  char *after = kl_arena_alloc(&a, 64);
  assert_non_null(after);
  assert_true(aligned16(after));
  memset(after, 'a', 64);
  for (size_t i = 0; i < 32; i++)
    assert_int_equal(small[i], 's');
  assert_int_equal(big[0], 'b');
  assert_int_equal(big[(8 << 20) - 1], 'b');
  /* A block exactly block_size big, and one just over. */
  assert_non_null(kl_arena_alloc(&a, 4096));
  assert_non_null(kl_arena_alloc(&a, 4097));
  kl_arena_reset(&a);
  assert_ptr_equal(kl_arena_alloc(&a, 16), small);
  kl_arena_free(&a);
}

static void test_arena_reset_after_big_first(void **state) {
  (void)state;
  kl_arena a;
  kl_arena_init(&a, 1024, 1 << 24);
  /* The very first allocation is big: reset must not keep it as "the first block". */
  char *big = kl_arena_alloc(&a, 1 << 20);
  assert_non_null(big);
  memset(big, 'b', 1 << 20);
  uintptr_t big_at = (uintptr_t)big;
  kl_arena_reset(&a);
  assert_int_equal(a.used, 0);
  /* Its block was released, not kept for reuse: the next allocation lives elsewhere. */
  char *small = kl_arena_alloc(&a, 16);
  assert_non_null(small);
#if ASAN
  /* ASan quarantines freed memory, so only a kept block could give the same address again. */
  assert_true((uintptr_t)small != big_at);
#else
  (void)big_at;
#endif
  kl_arena_reset(&a);
  for (int round = 0; round < 3; round++) {
    char *p = kl_arena_alloc(&a, 1000);
    assert_non_null(p);
    assert_true(aligned16(p));
    memset(p, 'p', 1000);
    char *q = kl_arena_alloc(&a, 2000); /* a big one again, after a small first */
    assert_non_null(q);
    memset(q, 'q', 2000);
    kl_arena_reset(&a);
    assert_ptr_equal(kl_arena_alloc(&a, 1000), p); /* the small first block is kept */
    kl_arena_reset(&a);
  }
  kl_arena_free(&a);
  /* Reset and free of an arena that never allocated. */
  kl_arena e;
  kl_arena_init(&e, 1024, 4096);
  kl_arena_reset(&e);
  kl_arena_free(&e);
  assert_null(e.head);
}

static void test_arena_zero(void **state) {
  (void)state;
  kl_arena a;
  kl_arena_init(&a, 1024, 4096);
  /* A zero-byte request gets no memory (and does not count). */
  assert_null(kl_arena_alloc(&a, 0));
  assert_int_equal(a.used, 0);
  kl_arena_free(&a);
  kl_arena z;
  kl_arena_init(&z, 1024, 0); /* a zero cap refuses everything */
  assert_null(kl_arena_alloc(&z, 1));
  kl_arena_free(&z);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_buf_init),    cmocka_unit_test(test_buf_append_to_max),
      cmocka_unit_test(test_buf_reserve), cmocka_unit_test(test_buf_max_zero),
      cmocka_unit_test(test_buf_shrink),  cmocka_unit_test(test_arena_alignment),
      cmocka_unit_test(test_arena_cap),   cmocka_unit_test(test_arena_reset_reuses_first_block),
      cmocka_unit_test(test_arena_big),   cmocka_unit_test(test_arena_reset_after_big_first),
      cmocka_unit_test(test_arena_zero),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
