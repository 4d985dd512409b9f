/* log.h - JSON-lines logger: per-thread lock-free rings drained to a fd by one writer thread. */
#ifndef KEEL_OBS_LOG_H
#define KEEL_OBS_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "keel/keel.h"

/*
 * Threads: each producing thread owns one kl_logq (single producer); one
 * writer thread (started by kl_log_new) is the single consumer of every queue
 * and the only writer of the fd. A producer never blocks: a full ring drops the
 * line and counts it; the writer reports drops as a warn line of its own
 * ({"msg":"log lines dropped","dropped":N}). Threads without a queue of their
 * own (kl_log_bind) share a mutex-protected fallback queue.
 */

typedef struct kl_log kl_log;
typedef struct kl_logq kl_logq;

/** Longest line a kl_line holds; longer field values are cut and marked "...". */
#define KL_LINE_MAX 4096

/** A line under construction, on the producer's stack. */
typedef struct kl_line {
  size_t len;
  int level;
  char buf[KL_LINE_MAX];
} kl_line;

/**
 * Starts the writer thread, writing to `fd` (not closed by keel). Each queue
 * gets `ring_bytes` of ring. Lines below `min_level` are discarded cheaply.
 * Returns NULL on failure (errno set).
 */
kl_log *kl_log_new(int fd, size_t ring_bytes, keel_log_level min_level);

/** Drains every queue to the fd, stops the writer thread, frees all queues. NULL ok. */
void kl_log_free(kl_log *log);

/** True when a line at `level` would be written. */
int kl_log_enabled(const kl_log *log, keel_log_level level);

/** Creates a queue for the calling thread and binds it (thread-local). NULL on ENOMEM. */
kl_logq *kl_log_bind(kl_log *log);

/** The calling thread's queue, or the shared fallback queue. */
kl_logq *kl_log_queue(kl_log *log);

/** Lines dropped so far, all queues together. */
uint64_t kl_log_dropped(const kl_log *log);

/**
 * Makes every line the calling thread starts carry "trace_id" and "span_id" (hex) until
 * called again with NULLs: set while a worker handles a traced request. The bytes must
 * stay valid meanwhile.
 */
void kl_log_set_trace(const uint8_t *trace_id, const uint8_t *span_id);

/**
 * Starts a line: {"ts":"2026-11-26T23:06:45.123Z","level":"info","severity_number":9,"msg":"..."
 * plus "trace_id" and "span_id" inside a traced request.
 */
void kl_line_begin(kl_line *l, keel_log_level level, const char *msg);
/** Adds "key":"value" (value escaped; `vlen` bytes). */
void kl_line_str(kl_line *l, const char *key, const char *val, size_t vlen);
/** Adds "key":"value" for a NUL-terminated value. */
void kl_line_cstr(kl_line *l, const char *key, const char *val);
/** Adds "key":N. */
void kl_line_int(kl_line *l, const char *key, int64_t v);
/** Adds "key":N.DDD: `v` scaled by 10^decimals, e.g. (1234, 3) -> 1.234. No printf. */
void kl_line_fixed(kl_line *l, const char *key, int64_t v, unsigned decimals);
/** Adds "key":N with up to 6 significant decimals. */
void kl_line_double(kl_line *l, const char *key, double v);
/** Closes the line and pushes it on `q`. Returns 0, or -ENOBUFS when dropped. */
int kl_line_end(kl_line *l, kl_logq *q);

#endif
