/* hist.h - log-linear latency histogram (HdrHistogram layout, 3 significant digits, fixed size). */
#ifndef KEEL_BENCH_HIST_H
#define KEEL_BENCH_HIST_H

#include <stdint.h>

/*
 * Values are nanoseconds. Each power-of-two bucket is split into 1024 linear sub-buckets (2048 in
 * the first), so any recorded value is known to within 1/1024 of itself: 3 significant digits from
 * 1 us (and exactly below 2048 ns) up to HIST_MAX_NS. Larger values are recorded as HIST_MAX_NS
 * and counted in `clamped`. The counts live inside the struct: recording never allocates, and two
 * histograms merge by adding their arrays.
 */
#define HIST_SUB_BITS 11                      /* 2048 sub-buckets: 3 significant digits */
#define HIST_HALF (1u << (HIST_SUB_BITS - 1)) /* 1024 */
#define HIST_BUCKETS 26                       /* 2048 << 25 ns > 60 s */
#define HIST_COUNTS ((HIST_BUCKETS + 1) * HIST_HALF)
#define HIST_MAX_NS UINT64_C(60000000000) /* 60 s */

typedef struct hist {
  uint64_t total;   /* values recorded */
  uint64_t clamped; /* of which were above HIST_MAX_NS */
  uint64_t min, max;
  uint64_t sum; /* of the (clamped) values, for the exact mean */
  uint64_t counts[HIST_COUNTS];
} hist;

/** Empties `h`. */
void hist_reset(hist *h);
/** Records one value (ns). */
void hist_record(hist *h, uint64_t ns);
/** Records `n` occurrences of a value (ns). */
void hist_record_n(hist *h, uint64_t ns, uint64_t n);
/** Adds every count of `src` to `dst`. */
void hist_merge(hist *dst, const hist *src);
/** The value at percentile `p` (0..100): the highest value equivalent to the recorded one at that
 * rank, but never above the largest recorded value; 0 when empty. */
uint64_t hist_percentile(const hist *h, double p);
/** The exact mean of the recorded (clamped) values; 0 when empty. */
double hist_mean(const hist *h);
/** Bucket geometry, exposed for tests: the smallest and largest value sharing `ns`'s counter. */
uint64_t hist_lowest_equivalent(uint64_t ns);
uint64_t hist_highest_equivalent(uint64_t ns);

#endif
