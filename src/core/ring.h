/* ring.h - single-producer/single-consumer byte ring, and the consumer's sleep/wake handshake. */
#ifndef KEEL_CORE_RING_H
#define KEEL_CORE_RING_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/*
 * Threads: one producer thread pushes, one consumer thread reads; neither
 * blocks nor takes a lock. `head` and `tail` count bytes ever pushed/consumed
 * (they only grow; the offset in the buffer is the count masked by the
 * power-of-two size). A push is all or nothing, so the ring only ever holds
 * whole records; a push that does not fit is dropped and counted.
 */

#define KL_CACHELINE 64
#define KL_RING_MIN ((size_t)64)
#define KL_RING_MAX ((size_t)1 << 30)

/** A byte ring. Lives where it is embedded; the buffer is malloc'd by kl_ring_init. */
typedef struct kl_ring {
  /* Written by the producer. */
  _Alignas(KL_CACHELINE) _Atomic size_t head; /* bytes ever pushed */
  size_t tail_cache;                          /* producer's last view of tail */
  _Atomic uint64_t dropped;                   /* pushes that did not fit */
  /* Written by the consumer. */
  _Alignas(KL_CACHELINE) _Atomic size_t tail; /* bytes ever consumed */
  /* Immutable after kl_ring_init. */
  _Alignas(KL_CACHELINE) char *buf;
  size_t mask; /* size - 1 */
} kl_ring;

/** The ring size for a request of `want` bytes: a power of two >= KL_RING_MIN, or 0 when over
 * KL_RING_MAX. */
size_t kl_ring_size(size_t want);

/** Allocates a ring of `bytes` (a kl_ring_size() result). 0, -EINVAL or -ENOMEM. Any thread, before
 * use. */
int kl_ring_init(kl_ring *r, size_t bytes);

/** Frees the buffer. No thread may use the ring any more. NULL buffer ok (after a failed init). */
void kl_ring_destroy(kl_ring *r);

/** Producer: copies the `n` pieces in as one record. 0, or -ENOBUFS when it does not fit (counted).
 */
int kl_ring_pushv(kl_ring *r, const struct iovec *v, size_t n);

/** Producer: kl_ring_pushv of one piece. */
int kl_ring_push(kl_ring *r, const void *p, size_t n);

/** Producer: bytes in the ring as the producer sees them (an upper bound). */
size_t kl_ring_used(kl_ring *r);

/** Consumer: bytes ready to be read (acquire: their contents are visible). */
size_t kl_ring_readable(const kl_ring *r);

/** Consumer: the `n` readable bytes from the tail as at most two iovecs; returns how many. */
size_t kl_ring_peek(const kl_ring *r, size_t n, struct iovec v[2]);

/** Consumer: copies `n` bytes starting `off` bytes past the tail (all must be readable). */
void kl_ring_copy_out(const kl_ring *r, size_t off, void *dst, size_t n);

/** Consumer: gives `n` bytes back to the producer. */
void kl_ring_consume(kl_ring *r, size_t n);

/** Any thread: 1 when head == tail (a snapshot). */
int kl_ring_empty(const kl_ring *r);

/** Any thread: pushes dropped so far. */
uint64_t kl_ring_dropped(const kl_ring *r);

/*
 * The consumer's sleep/wake handshake (a Dekker pair, hence the seq_cst fences):
 *   producer: publish data; m = kl_waker_armed(); if m says so: kl_waker_wake()
 *   consumer: kl_waker_arm(mode); if any data is ready: kl_waker_disarm(), else kl_waker_sleep()
 * Either the producer sees the armed mode or the consumer sees the data, so
 * nothing waits for the safety-net timeout, and a busy consumer (mode 0)
 * costs producers no syscall. The mode (non-zero) tells producers when a wake
 * is worth it; its meaning is the user's.
 */
typedef struct kl_waker {
  int efd;          /* eventfd the consumer sleeps on */
  _Atomic int mode; /* 0: awake; else armed with that mode */
} kl_waker;

/** Creates the eventfd. 0 or negative errno. */
int kl_waker_init(kl_waker *w);

/** Closes the eventfd. */
void kl_waker_destroy(kl_waker *w);

/** Producer, after publishing: the armed mode (0 when the consumer is awake). */
int kl_waker_armed(kl_waker *w);

/** Producer: wakes the consumer if it is still armed (only one producer pays the write). */
void kl_waker_wake(kl_waker *w);

/** Any thread: wakes the consumer unconditionally (shutdown). */
void kl_waker_kick(kl_waker *w);

/** Consumer: announces it is about to sleep in `mode` (non-zero); check for data afterwards. */
void kl_waker_arm(kl_waker *w, int mode);

/** Consumer: gives up sleeping after kl_waker_arm (it found work). */
void kl_waker_disarm(kl_waker *w);

/** Consumer: sleeps until woken or `timeout_ms` (-1: no timeout) passed, then disarms. */
void kl_waker_sleep(kl_waker *w, int timeout_ms);

#endif
