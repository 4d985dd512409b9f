/* pipeline.h - the telemetry pipeline: OTLP in, split into records, disk buffer, sink out. */
#ifndef KEEL_PIPELINE_PIPELINE_H
#define KEEL_PIPELINE_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/keys.h"
#include "pipeline/otlp.h"
#include "pipeline/record.h"

struct keel_server;
struct kl_metrics;
struct keel_config;

/*
 * Receivers (OTLP/HTTP on the workers, OTLP/gRPC on its own thread) hand each decoded
 * request body to kl_pipeline_ingest(), which splits it into records and appends them to
 * the disk buffer in one write, then tell the client only once kl_pipeline_acked() has
 * reached the position ingest returned: durable per the fsync policy, or delivered when
 * `ack: delivered`. Waiters register an eventfd (kl_pipeline_watch) that is written when
 * the acknowledged position advances.
 */

typedef struct kl_pipeline kl_pipeline;

/** A caller thread's working memory for ingest (inflated body, transcoded body, records). */
typedef struct kl_ingest_scratch {
  kl_buf body; /* inflated or transcoded request */
  kl_buf recs; /* record payloads, back to back */
  kl_buf iov;  /* struct iovec per record, then the rec_iov index */
} kl_ingest_scratch;

/** Sets up empty scratch buffers capped for requests of `max_request` bytes. */
void kl_ingest_scratch_init(kl_ingest_scratch *s, size_t max_request);
/** Frees them. */
void kl_ingest_scratch_free(kl_ingest_scratch *s);

/**
 * Opens the disk buffer under cfg->data_dir, starts the sink (Kafka, or files when no brokers
 * are configured) and registers the pipeline's metrics in `m` (before it is frozen). `srv`
 * is for logging. NULL with a message in err.
 */
kl_pipeline *kl_pipeline_start(const struct keel_config *cfg, struct keel_server *srv,
                               struct kl_metrics *m, char *err, size_t errlen);

/**
 * Stops: refuses further ingest (KL_INGEST_DOWN), delivers what it can within the configured
 * flush timeout, closes the buffer (what is left stays on disk for the next start), frees.
 */
void kl_pipeline_stop(kl_pipeline *p);

/** Outcome of an ingest (besides 0). */
enum {
  KL_INGEST_BAD = -1,  /**< undecodable request: 400 / INVALID_ARGUMENT, not retried */
  KL_INGEST_FULL = -2, /**< disk buffer at its cap: 503 / UNAVAILABLE + Retry-After */
  KL_INGEST_BUSY = -3, /**< memory cap for requests in flight: 429 / RESOURCE_EXHAUSTED */
  KL_INGEST_IO = -4,   /**< the buffer cannot be written: 503 / UNAVAILABLE */
  KL_INGEST_DOWN = -5, /**< shutting down: 503 / UNAVAILABLE */
  KL_INGEST_LARGE = -6, /**< can never fit the memory cap: 413 / RESOURCE_EXHAUSTED */
};

/**
 * Splits one Export*ServiceRequest body (already decompressed; protobuf or OTLP/JSON) into
 * records and appends them. On 0, *wait is the position to wait for (kl_pipeline_acked),
 * and res says accepted/rejected counts for the response. Any thread.
 */
int kl_pipeline_ingest(kl_pipeline *p, kl_signal sig, kl_format fmt, const uint8_t *body,
                       size_t len, kl_ingest_scratch *scratch, kl_otlp_result *res,
                       uint64_t *wait);

/** The acknowledged position: requests whose *wait is at or below it may be answered. */
uint64_t kl_pipeline_acked(const kl_pipeline *p);

/**
 * Registers an eventfd that gets written (value 1) whenever the acknowledged position
 * advances while *armed is non-zero; the waiter sets *armed before checking acked() and
 * clears it when nothing waits. Returns 0, or -ENOSPC beyond KL_PIPELINE_WATCH_MAX.
 */
int kl_pipeline_watch(kl_pipeline *p, int efd, _Atomic int *armed);

/**
 * Removes the watcher registered with `efd`, whose owner is about to close it and free its
 * `armed`: once this returns the pipeline touches neither. Any thread but a notifying one.
 */
void kl_pipeline_unwatch(kl_pipeline *p, int efd);

/** Most watchers (workers plus the gRPC thread). */
#define KL_PIPELINE_WATCH_MAX 256

/**
 * Whether a client may send: 1 when no otlp.api_keys are configured, or when the token of
 * `Authorization: Bearer TOKEN` or the `X-API-Key` value (either may be NULL) is one of the
 * keys (constant time). Any thread.
 */
int kl_pipeline_auth(kl_pipeline *p, const char *authorization, size_t alen,
                     const char *x_api_key, size_t xlen);

/**
 * Replaces the otlp.api_keys ring (NULL = no check) and frees the old one once no check uses
 * it; takes `keys`. A reload calls it after loading the file. Any thread.
 */
void kl_pipeline_set_keys(kl_pipeline *p, kl_keyring *keys);

/** Seconds a client should wait before retrying after an ingest error (Retry-After). */
uint32_t kl_pipeline_retry_after(int ingest_error);

/** Counts a request refused before ingest (reason: "too_large", "bad_encoding", "timeout"...). */
void kl_pipeline_count_refused(kl_pipeline *p, kl_signal sig, const char *reason);

/**
 * Inflates a gzip body into out (at most cap bytes): its length, or -EBADMSG (not gzip,
 * corrupt) or -EMSGSIZE (it inflates beyond cap: a bomb is refused, not allocated).
 */
long kl_gunzip(const uint8_t *in, size_t len, uint8_t *out, size_t cap);

#endif
