/* metrics.h - public API of libkeel: an application's own counters, gauges and histograms. */
#ifndef KEEL_METRICS_H
#define KEEL_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "keel/keel.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * An application registers its metrics before keel_server_run(); they appear on
 * GET /metrics beside keel's own. Updates are cheap and lock-free: on a worker
 * thread (inside a handler) they touch only that worker's cells, which a scrape
 * sums; on any other thread they are atomic adds to a shared cell.
 *
 * Names follow Prometheus rules ([a-zA-Z_:][a-zA-Z0-9_:]*; counters must end in
 * `_total`; put the unit in the name: `_seconds`, `_bytes`). `labels` is NULL or
 * a NULL-terminated list of name, value pairs: {"kind", "book", NULL}. Registering
 * the same name again with other label values adds a series to the same family
 * (same type and help text required). Keep label values few and bounded: never
 * ids, user input or raw paths.
 */

/** One registered series. Owned by the server; valid until keel_server_free(). */
typedef struct keel_metric keel_metric;

/**
 * Registers a counter. Returns 0 and sets *out, or -EINVAL (bad name, labels or
 * a type/help clash with an existing family), -EEXIST (same name and labels),
 * -EBUSY (the server is already running), -ENOMEM.
 */
KEEL_API int keel_metric_counter(keel_server *srv, const char *name, const char *help,
                                 const char *const *labels, keel_metric **out);

/** Registers a gauge (a value that goes up and down). Same returns as keel_metric_counter(). */
KEEL_API int keel_metric_gauge(keel_server *srv, const char *name, const char *help,
                               const char *const *labels, keel_metric **out);

/**
 * Registers a histogram with `nbounds` increasing upper bounds (at most 64; +Inf
 * is implied). Same returns as keel_metric_counter().
 */
KEEL_API int keel_metric_histogram(keel_server *srv, const char *name, const char *help,
                                   const char *const *labels, const double *bounds,
                                   size_t nbounds, keel_metric **out);

/** Adds `n` to a counter. */
KEEL_API void keel_counter_add(keel_metric *m, uint64_t n);

/** Sets a gauge. */
KEEL_API void keel_gauge_set(keel_metric *m, double v);

/** Adds `delta` (may be negative) to a gauge. */
KEEL_API void keel_gauge_add(keel_metric *m, double delta);

/** Records one observation in a histogram. */
KEEL_API void keel_histogram_observe(keel_metric *m, double v);

#ifdef __cplusplus
}
#endif
#endif
