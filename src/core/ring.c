/* ring.c - single-producer/single-consumer byte ring and the consumer's sleep/wake handshake. */
#include "core/ring.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

size_t kl_ring_size(size_t want) {
  if (want > KL_RING_MAX) return 0;
  size_t n = KL_RING_MIN;
  while (n < want)
    n <<= 1;
  return n;
}

int kl_ring_init(kl_ring *r, size_t bytes) {
  memset(r, 0, sizeof *r);
  atomic_init(&r->head, 0);
  atomic_init(&r->tail, 0);
  atomic_init(&r->dropped, 0);
  if (bytes < KL_RING_MIN || bytes > KL_RING_MAX || (bytes & (bytes - 1)) != 0) return -EINVAL;
  r->buf = malloc(bytes);
  if (!r->buf) return -ENOMEM;
  r->mask = bytes - 1;
  return 0;
}

void kl_ring_destroy(kl_ring *r) {
  free(r->buf);
  r->buf = NULL;
}

int kl_ring_pushv(kl_ring *r, const struct iovec *v, size_t n) {
  size_t total = 0;
  for (size_t i = 0; i < n; i++)
    total += v[i].iov_len;
  size_t cap = r->mask + 1;
  size_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
  if (cap - (head - r->tail_cache) < total) {
    r->tail_cache = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (cap - (head - r->tail_cache) < total) {
      /* Only the producer writes `dropped`: no read-modify-write needed. */
      uint64_t d = atomic_load_explicit(&r->dropped, memory_order_relaxed);
      atomic_store_explicit(&r->dropped, d + 1, memory_order_relaxed);
      return -ENOBUFS;
    }
  }
  size_t pos = head;
  for (size_t i = 0; i < n; i++) {
    const char *p = v[i].iov_base;
    size_t len = v[i].iov_len, off = pos & r->mask;
    size_t first = cap - off < len ? cap - off : len;
    memcpy(r->buf + off, p, first);
    if (len > first) memcpy(r->buf, p + first, len - first);
    pos += len;
  }
  atomic_store_explicit(&r->head, head + total, memory_order_release);
  return 0;
}

int kl_ring_push(kl_ring *r, const void *p, size_t n) {
  struct iovec v = {.iov_base = (void *)(uintptr_t)p, .iov_len = n};
  return kl_ring_pushv(r, &v, 1);
}

size_t kl_ring_used(kl_ring *r) {
  size_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
  return head - atomic_load_explicit(&r->tail, memory_order_relaxed);
}

size_t kl_ring_readable(const kl_ring *r) {
  size_t head = atomic_load_explicit(&r->head, memory_order_acquire);
  return head - atomic_load_explicit(&r->tail, memory_order_relaxed);
}

size_t kl_ring_peek(const kl_ring *r, size_t n, struct iovec v[2]) {
  if (n == 0) return 0;
  size_t cap = r->mask + 1;
  size_t off = atomic_load_explicit(&r->tail, memory_order_relaxed) & r->mask;
  size_t first = cap - off < n ? cap - off : n;
  v[0] = (struct iovec){.iov_base = r->buf + off, .iov_len = first};
  if (n == first) return 1;
  v[1] = (struct iovec){.iov_base = r->buf, .iov_len = n - first};
  return 2;
}

void kl_ring_copy_out(const kl_ring *r, size_t off, void *dst, size_t n) {
  size_t cap = r->mask + 1;
  size_t at = (atomic_load_explicit(&r->tail, memory_order_relaxed) + off) & r->mask;
  size_t first = cap - at < n ? cap - at : n;
  memcpy(dst, r->buf + at, first);
  if (n > first) memcpy((char *)dst + first, r->buf, n - first);
}

void kl_ring_consume(kl_ring *r, size_t n) {
  size_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
  atomic_store_explicit(&r->tail, t + n, memory_order_release);
}

int kl_ring_empty(const kl_ring *r) {
  return atomic_load_explicit(&r->head, memory_order_relaxed) ==
         atomic_load_explicit(&r->tail, memory_order_relaxed);
}

uint64_t kl_ring_dropped(const kl_ring *r) {
  return atomic_load_explicit(&r->dropped, memory_order_relaxed);
}

/* ---- the wake handshake ------------------------------------------------- */

int kl_waker_init(kl_waker *w) {
  atomic_init(&w->mode, 0);
  w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  return w->efd < 0 ? -errno : 0;
}

void kl_waker_destroy(kl_waker *w) {
  if (w->efd >= 0) close(w->efd);
  w->efd = -1;
}

int kl_waker_armed(kl_waker *w) {
  atomic_thread_fence(memory_order_seq_cst);
  return atomic_load_explicit(&w->mode, memory_order_relaxed);
}

void kl_waker_kick(kl_waker *w) {
  uint64_t one = 1;
  ssize_t r = write(w->efd, &one, sizeof one);
  (void)r; /* EAGAIN: the counter is already non-zero, the consumer will wake */
}

void kl_waker_wake(kl_waker *w) {
  if (atomic_exchange_explicit(&w->mode, 0, memory_order_relaxed) != 0) kl_waker_kick(w);
}

void kl_waker_arm(kl_waker *w, int mode) {
  atomic_store_explicit(&w->mode, mode, memory_order_relaxed);
  atomic_thread_fence(memory_order_seq_cst);
}

void kl_waker_disarm(kl_waker *w) {
  atomic_store_explicit(&w->mode, 0, memory_order_relaxed);
}

void kl_waker_sleep(kl_waker *w, int timeout_ms) {
  struct pollfd p = {.fd = w->efd, .events = POLLIN};
  if (poll(&p, 1, timeout_ms) > 0) {
    uint64_t v;
    ssize_t r = read(w->efd, &v, sizeof v);
    (void)r;
  }
  kl_waker_disarm(w);
}
