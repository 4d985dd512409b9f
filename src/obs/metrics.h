/* metrics.h - metric registry: per-worker cells summed at scrape, Prometheus/OpenMetrics text. */
#ifndef KEEL_OBS_METRICS_H
#define KEEL_OBS_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "keel/metrics.h"

/*
 * Threads: series are registered on one thread before kl_metrics_freeze(). After
 * it, worker i writes only block i, with relaxed loads and stores (one writer per
 * cell: no locked instructions, no shared cache lines), and any thread renders,
 * summing every block with relaxed loads. Threads that are not workers update the
 * shared block with atomic adds (keel_counter_add() and friends pick the block).
 */

typedef struct kl_metrics kl_metrics;
/** A series is the public keel_metric. */
typedef struct keel_metric kl_series;

/** Metric family types. INFO renders as a gauge of 1 in Prometheus text, `info` in OpenMetrics. */
typedef enum kl_mtype { KL_M_COUNTER, KL_M_GAUGE, KL_M_HISTOGRAM, KL_M_INFO } kl_mtype;

/** A value computed at render time (process figures, configured caps, state flags). */
typedef double (*kl_metric_fn)(void *arg);

/** Entries in a worker's keyed-counter table (series x small integer key, e.g. status code). */
#define KL_MKEY_CAP 1024

/** A worker's cells. */
typedef struct kl_mblock {
  uint64_t *cells; /* one per registered cell; histogram sums hold double bits */
  struct kl_mkey {
    uint32_t key; /* 0 = free; written once, with release, by the owning worker */
    uint32_t pad;
    uint64_t count;
  } *keys;               /* KL_MKEY_CAP entries, open addressing; NULL in the shared block */
  uint32_t overflow_cell; /* counts increments a full neighbourhood of `keys` refused */
} kl_mblock;

/** Creates an empty registry. NULL on ENOMEM. */
kl_metrics *kl_metrics_new(void);
/** Frees the registry, its series and blocks. NULL ok. */
void kl_metrics_free(kl_metrics *m);

/**
 * Registers a cell-backed series: a counter (1 cell), a gauge summed over workers
 * (1 cell, signed: workers add and subtract) or a histogram with `nb` bounds
 * (nb + 2 cells: buckets, +Inf, sum). Returns 0 with *out, -EINVAL, -EEXIST,
 * -EBUSY after freeze, -ENOMEM. `labels`: NULL-terminated name, value pairs.
 */
int kl_metrics_add(kl_metrics *m, const char *name, const char *help, kl_mtype type,
                   const char *const *labels, const double *bounds, uint32_t nb, kl_series **out);

/** Registers a series whose value `fn(arg)` computes at render time. Same returns. */
int kl_metrics_add_fn(kl_metrics *m, const char *name, const char *help, kl_mtype type,
                      const char *const *labels, kl_metric_fn fn, void *arg);

/**
 * Registers a counter series with one more label, `key_label`, whose value is a
 * small integer (< 1024) given at each increment (kl_mkey_add): e.g. the status
 * code of keel_http_requests_total{method,route,code}. Workers only.
 */
int kl_metrics_add_keyed(kl_metrics *m, const char *name, const char *help,
                         const char *const *labels, const char *key_label, kl_series **out);

/** Registers an application gauge: a value set or moved by any thread (keel_gauge_set/add). */
int kl_metrics_add_value_gauge(kl_metrics *m, const char *name, const char *help,
                               const char *const *labels, kl_series **out);

/** Registers process_* metrics (CPU, memory, fds, start time), read at render time. */
int kl_metrics_add_process(kl_metrics *m);

/** Allocates the blocks of `nworkers` workers plus the shared one; no registration after. */
int kl_metrics_freeze(kl_metrics *m, unsigned nworkers);

/** Worker `i`'s block (after freeze). */
kl_mblock *kl_metrics_block(kl_metrics *m, unsigned i);

/** Makes the calling (worker) thread's keel_counter_add() & co write block `i`. */
void kl_metrics_bind(kl_metrics *m, unsigned i);

/** First cell of a cell-backed series. */
uint32_t kl_series_cell(const kl_series *s);
/** The key prefix of a keyed series: pass `kl_series_key(s) | key` to kl_mkey_add(). */
uint32_t kl_series_key(const kl_series *s);

/** Adds 1 under `key` (series prefix | small key) in a worker's table. Owning worker only. */
void kl_mkey_add(kl_mblock *b, uint32_t key);

/**
 * Appends the exposition of every series, summed over all blocks, to `out`:
 * Prometheus text 0.0.4, or OpenMetrics 1.0 (ending in "# EOF") when `openmetrics`.
 * Any thread. 0, or -ENOBUFS when `out` reached its cap.
 */
int kl_metrics_render(kl_metrics *m, kl_buf *out, int openmetrics);

/**
 * Records `n` observations of the same value `v` in a histogram: keel_histogram_observe
 * n times, at the cost of one. Any thread.
 */
void kl_histogram_observe_n(kl_series *m, double v, uint64_t n);

/** Adds `n` to cell `i` of a block its owner writes (no atomic read-modify-write needed). */
static inline void kl_mcell_add(uint64_t *cells, uint32_t i, uint64_t n) {
  __atomic_store_n(&cells[i], __atomic_load_n(&cells[i], __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}

/** Records `v` in the histogram whose cells start at `i` (bounds `b[0..nb)`). Owner only. */
static inline void kl_mcell_observe(uint64_t *cells, uint32_t i, const double *b, uint32_t nb,
                                    double v) {
  uint32_t k = 0;
  while (k < nb && v > b[k]) k++;
  kl_mcell_add(cells, i + k, 1);
  uint64_t *sum = &cells[i + nb + 1];
  double d;
  uint64_t bits = __atomic_load_n(sum, __ATOMIC_RELAXED);
  __builtin_memcpy(&d, &bits, sizeof d);
  d += v;
  __builtin_memcpy(&bits, &d, sizeof d);
  __atomic_store_n(sum, bits, __ATOMIC_RELAXED);
}

#endif
