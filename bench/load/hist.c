/* hist.c - log-linear latency histogram: recording, merging and percentiles (see hist.h). */
#include "hist.h"

#include <string.h>

/* Bucket 0 holds 0..2047 one per counter; bucket b >= 1 holds [1024 << b, 2048 << b) in counters
 * of width 1 << b, and only its upper half needs counters because its lower half is bucket b-1. */
static unsigned bucket_of(uint64_t v) {
  return (unsigned)(64 - __builtin_clzll(v | ((UINT64_C(1) << HIST_SUB_BITS) - 1))) - HIST_SUB_BITS;
}

static unsigned index_of(uint64_t v) {
  unsigned b = bucket_of(v);
  unsigned sub = (unsigned)(v >> b);
  return ((b + 1) << (HIST_SUB_BITS - 1)) + (sub - HIST_HALF);
}

static uint64_t value_of(unsigned i) {
  int b = (int)(i >> (HIST_SUB_BITS - 1)) - 1;
  uint64_t sub = (i & (HIST_HALF - 1)) + HIST_HALF;
  if (b < 0) {
    sub -= HIST_HALF;
    b = 0;
  }
  return sub << b;
}

uint64_t hist_lowest_equivalent(uint64_t ns) {
  if (ns > HIST_MAX_NS) ns = HIST_MAX_NS;
  return value_of(index_of(ns));
}

uint64_t hist_highest_equivalent(uint64_t ns) {
  if (ns > HIST_MAX_NS) ns = HIST_MAX_NS;
  return hist_lowest_equivalent(ns) + (UINT64_C(1) << bucket_of(ns)) - 1;
}

void hist_reset(hist *h) {
  memset(h, 0, sizeof *h);
  h->min = UINT64_MAX;
}

void hist_record_n(hist *h, uint64_t ns, uint64_t n) {
  if (n == 0) return;
  if (ns > HIST_MAX_NS) {
    ns = HIST_MAX_NS;
    h->clamped += n;
  }
  h->counts[index_of(ns)] += n;
  h->total += n;
  h->sum += ns * n;
  if (ns < h->min) h->min = ns;
  if (ns > h->max) h->max = ns;
}

void hist_record(hist *h, uint64_t ns) {
  hist_record_n(h, ns, 1);
}

void hist_merge(hist *dst, const hist *src) {
  if (src->total == 0) return;
  for (unsigned i = 0; i < HIST_COUNTS; i++)
    dst->counts[i] += src->counts[i];
  dst->total += src->total;
  dst->clamped += src->clamped;
  dst->sum += src->sum;
  if (src->min < dst->min) dst->min = src->min;
  if (src->max > dst->max) dst->max = src->max;
}

uint64_t hist_percentile(const hist *h, double p) {
  if (h->total == 0) return 0;
  if (p <= 0) return h->min;
  if (p > 100) p = 100;
  /* The rank rounds to nearest like HdrHistogram, so p50 of {1,2} is 1 and p100 is the max. */
  uint64_t rank = (uint64_t)(p / 100.0 * (double)h->total + 0.5);
  if (rank < 1) rank = 1;
  if (rank > h->total) rank = h->total;
  uint64_t seen = 0;
  for (unsigned i = 0; i < HIST_COUNTS; i++) {
    seen += h->counts[i];
    if (seen >= rank) {
      uint64_t v = hist_highest_equivalent(value_of(i));
      return v > h->max ? h->max : v;
    }
  }
  return h->max;
}

double hist_mean(const hist *h) {
  return h->total ? (double)h->sum / (double)h->total : 0.0;
}
