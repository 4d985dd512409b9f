/* timer.h - a min-heap of deadlines (milliseconds on the monotonic clock). */
#ifndef KEEL_CORE_TIMER_H
#define KEEL_CORE_TIMER_H

#include <stdint.h>

typedef struct kl_timer kl_timer;
/** Called when a timer expires; the timer is already disarmed. */
typedef void (*kl_timer_cb)(kl_timer *t);

/** Embed in the owning object; find the owner with container_of-style arithmetic. */
struct kl_timer {
  uint64_t deadline; /* ms, CLOCK_MONOTONIC */
  uint32_t slot;     /* heap index + 1; 0 = not armed */
  kl_timer_cb cb;
};

/** The heap; capacity fixed at init, so arming never allocates. */
typedef struct kl_timers {
  kl_timer **heap;
  uint32_t n, cap;
} kl_timers;

/** Allocates room for `cap` armed timers: 0 or -ENOMEM. */
int kl_timers_init(kl_timers *ts, uint32_t cap);
/** Frees the heap (armed timers are forgotten). */
void kl_timers_free(kl_timers *ts);
/** Arms or re-arms `t` for `deadline`: 0, or -ENOBUFS when the heap is full. */
int kl_timer_set(kl_timers *ts, kl_timer *t, uint64_t deadline);
/** Disarms `t` if armed. */
void kl_timer_cancel(kl_timers *ts, kl_timer *t);
/** Milliseconds until the earliest deadline from `now` (0 if due), or -1 with none armed. */
int kl_timers_timeout(const kl_timers *ts, uint64_t now);
/** Disarms and runs every timer due at `now`; returns how many ran. */
unsigned kl_timers_run(kl_timers *ts, uint64_t now);

#endif
