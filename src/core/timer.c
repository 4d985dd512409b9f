/* timer.c - binary min-heap of kl_timer, each knowing its slot for O(log n) re-arm/cancel. */
#include "core/timer.h"

#include <errno.h>
#include <stdlib.h>

int kl_timers_init(kl_timers *ts, uint32_t cap) {
  ts->n = 0;
  ts->cap = cap;
  ts->heap = calloc(cap ? cap : 1, sizeof(*ts->heap));
  return ts->heap ? 0 : -ENOMEM;
}

void kl_timers_free(kl_timers *ts) {
  free(ts->heap);
  ts->heap = NULL;
  ts->n = ts->cap = 0;
}

static void place(kl_timers *ts, uint32_t i, kl_timer *t) {
  ts->heap[i] = t;
  t->slot = i + 1;
}

static void sift_up(kl_timers *ts, uint32_t i) {
  kl_timer *t = ts->heap[i];
  while (i > 0) {
    uint32_t parent = (i - 1) / 2;
    if (ts->heap[parent]->deadline <= t->deadline) break;
    place(ts, i, ts->heap[parent]);
    i = parent;
  }
  place(ts, i, t);
}

static void sift_down(kl_timers *ts, uint32_t i) {
  kl_timer *t = ts->heap[i];
  for (;;) {
    uint32_t c = 2 * i + 1;
    if (c >= ts->n) break;
    if (c + 1 < ts->n && ts->heap[c + 1]->deadline < ts->heap[c]->deadline) c++;
    if (ts->heap[c]->deadline >= t->deadline) break;
    place(ts, i, ts->heap[c]);
    i = c;
  }
  place(ts, i, t);
}

int kl_timer_set(kl_timers *ts, kl_timer *t, uint64_t deadline) {
  if (t->slot) {
    uint64_t old = t->deadline;
    t->deadline = deadline;
    if (deadline < old)
      sift_up(ts, t->slot - 1);
    else if (deadline > old)
      sift_down(ts, t->slot - 1);
    return 0;
  }
  if (ts->n == ts->cap) return -ENOBUFS;
  t->deadline = deadline;
  place(ts, ts->n++, t);
  sift_up(ts, ts->n - 1);
  return 0;
}

void kl_timer_cancel(kl_timers *ts, kl_timer *t) {
  if (!t->slot) return;
  uint32_t i = t->slot - 1;
  t->slot = 0;
  kl_timer *last = ts->heap[--ts->n];
  if (i == ts->n) return;
  place(ts, i, last);
  if (i > 0 && ts->heap[(i - 1) / 2]->deadline > last->deadline)
    sift_up(ts, i);
  else
    sift_down(ts, i);
}

int kl_timers_timeout(const kl_timers *ts, uint64_t now) {
  if (ts->n == 0) return -1;
  uint64_t d = ts->heap[0]->deadline;
  if (d <= now) return 0;
  uint64_t ms = d - now;
  return ms > 60000 ? 60000 : (int)ms;
}

unsigned kl_timers_run(kl_timers *ts, uint64_t now) {
  unsigned ran = 0;
  while (ts->n && ts->heap[0]->deadline <= now) {
    kl_timer *t = ts->heap[0];
    kl_timer_cancel(ts, t);
    ran++;
    t->cb(t);
  }
  return ran;
}
