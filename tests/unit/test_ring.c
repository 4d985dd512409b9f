/* test_ring.c - unit tests for the SPSC byte ring (wrap-around, drops) and the waker handshake. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "core/ring.h"

static void test_size(void **state) {
  (void)state;
  assert_int_equal(kl_ring_size(0), KL_RING_MIN);
  assert_int_equal(kl_ring_size(65), 128);
  assert_int_equal(kl_ring_size(4096), 4096);
  assert_int_equal(kl_ring_size(KL_RING_MAX), KL_RING_MAX);
  assert_int_equal(kl_ring_size(KL_RING_MAX + 1), 0);
  kl_ring r;
  assert_int_equal(kl_ring_init(&r, 100), -EINVAL); /* not a power of two */
  kl_ring_destroy(&r);
  assert_int_equal(kl_ring_init(&r, 32), -EINVAL); /* below the minimum */
  kl_ring_destroy(&r);
}

/* Records of every length cross the wrap point; contents and order survive. */
static void test_wrap_and_drop(void **state) {
  (void)state;
  kl_ring r;
  assert_int_equal(kl_ring_init(&r, 64), 0);
  assert_true(kl_ring_empty(&r));
  unsigned char in[64], out[64];
  for (unsigned seq = 0; seq < 500; seq++) {
    size_t n = 1 + seq % 40;
    for (size_t i = 0; i < n; i++)
      in[i] = (unsigned char)(seq + i);
    struct iovec v[2] = {{in, n / 2}, {in + n / 2, n - n / 2}};
    assert_int_equal(kl_ring_pushv(&r, v, 2), 0);
    assert_int_equal(kl_ring_used(&r), n);
    assert_int_equal(kl_ring_readable(&r), n);
    struct iovec pv[2];
    size_t np = kl_ring_peek(&r, n, pv);
    size_t got = 0;
    for (size_t i = 0; i < np; i++) {
      memcpy(out + got, pv[i].iov_base, pv[i].iov_len);
      got += pv[i].iov_len;
    }
    assert_int_equal(got, n);
    assert_memory_equal(in, out, n);
    memset(out, 0, sizeof out);
    kl_ring_copy_out(&r, 1, out, n - 1);
    assert_memory_equal(in + 1, out, n - 1);
    kl_ring_consume(&r, n);
    assert_true(kl_ring_empty(&r));
  }
  /* Full: the push that does not fit is refused whole and counted. */
  assert_int_equal(kl_ring_push(&r, in, 40), 0);
  assert_int_equal(kl_ring_push(&r, in, 25), -ENOBUFS);
  assert_int_equal(kl_ring_push(&r, in, 24), 0);
  assert_int_equal(kl_ring_push(&r, in, 1), -ENOBUFS);
  assert_int_equal(kl_ring_dropped(&r), 2);
  assert_int_equal(kl_ring_readable(&r), 64);
  kl_ring_consume(&r, 64);
  assert_int_equal(kl_ring_push(&r, in, 64), 0);
  kl_ring_destroy(&r);
}

typedef struct wake_arg {
  kl_waker *w;
  _Atomic int *data;
} wake_arg;

static void *wake_producer(void *p) {
  wake_arg *a = p;
  atomic_store_explicit(a->data, 1, memory_order_relaxed);
  if (kl_waker_armed(a->w) == 7) kl_waker_wake(a->w);
  return NULL;
}

/* An armed consumer is woken by a producer; a disarmed one costs the producer nothing. */
static void test_waker(void **state) {
  (void)state;
  kl_waker w;
  assert_int_equal(kl_waker_init(&w), 0);
  assert_int_equal(kl_waker_armed(&w), 0);
  kl_waker_wake(&w); /* not armed: no write */
  struct pollfd p = {.fd = w.efd, .events = POLLIN};
  assert_int_equal(poll(&p, 1, 0), 0);
  for (int round = 0; round < 50; round++) {
    _Atomic int data = 0;
    kl_waker_arm(&w, 7);
    pthread_t th;
    wake_arg a = {&w, &data};
    assert_int_equal(pthread_create(&th, NULL, wake_producer, &a), 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (!atomic_load_explicit(&data, memory_order_relaxed))
      kl_waker_sleep(&w, 5000);
    else
      kl_waker_disarm(&w);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true(t1.tv_sec - t0.tv_sec < 2); /* woken, not timed out */
    assert_int_equal(atomic_load_explicit(&data, memory_order_relaxed), 1);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(kl_waker_armed(&w), 0);
    kl_waker_sleep(&w, 0); /* eat a wake that raced with the data check */
  }
  kl_waker_kick(&w);
  assert_int_equal(poll(&p, 1, 0), 1);
  kl_waker_destroy(&w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_size),
      cmocka_unit_test(test_wrap_and_drop),
      cmocka_unit_test(test_waker),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
