/* pipeline.h - the telemetry pipeline: OTLP in, split into records, disk buffer, sink out. */
#ifndef KEEL_PIPELINE_PIPELINE_H
#define KEEL_PIPELINE_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

#include "pipeline/otlp.h"
#include "pipeline/record.h"

/*
 * Receivers (OTLP/HTTP on the workers, OTLP/gRPC on its own thread) hand each decoded
 * request body to kl_pipeline_ingest(), which splits it into records and appends them to
 * the disk buffer in one write, then tell the client only once kl_pipeline_acked() has
 * reached the position ingest returned: durable per the fsync policy, or delivered when
 * `ack: delivered`. Waiters register an eventfd (kl_pipeline_watch) that is written when
 * the acknowledged position advances.
 */

typedef struct kl_pipeline kl_pipeline;

/** Outcome of an ingest (besides 0). */
enum {
  KL_INGEST_BAD = -1,  /**< undecodable request: 400 / INVALID_ARGUMENT, not retried */
  KL_INGEST_FULL = -2, /**< disk buffer at its cap: 503 / UNAVAILABLE + Retry-After */
  KL_INGEST_BUSY = -3, /**< memory cap for requests in flight: 429 / RESOURCE_EXHAUSTED */
  KL_INGEST_IO = -4,   /**< the buffer cannot be written: 503 / UNAVAILABLE */
  KL_INGEST_DOWN = -5, /**< shutting down: 503 / UNAVAILABLE */
};

/**
 * Splits one Export*ServiceRequest body (already decompressed; protobuf or OTLP/JSON) into
 * records and appends them. On 0, *wait is the position to wait for (kl_pipeline_acked),
 * and res says accepted/rejected counts for the response. Any thread.
 */
int kl_pipeline_ingest(kl_pipeline *p, kl_signal sig, kl_format fmt, const uint8_t *body,
                       size_t len, kl_otlp_result *res, uint64_t *wait);

/** The acknowledged position: requests whose *wait is at or below it may be answered. */
uint64_t kl_pipeline_acked(const kl_pipeline *p);

/**
 * Registers an eventfd that gets written (value 1) whenever the acknowledged position
 * advances while *armed is non-zero; the waiter sets *armed before checking acked() and
 * clears it when nothing waits. Returns 0, or -ENOSPC beyond KL_PIPELINE_WATCH_MAX.
 */
int kl_pipeline_watch(kl_pipeline *p, int efd, _Atomic int *armed);

/** Most watchers (workers plus the gRPC thread). */
#define KL_PIPELINE_WATCH_MAX 256

/**
 * Reserves `n` bytes of the memory cap for a request body being received or decoded;
 * 0, or -1 when the cap would be exceeded (answer 429). Release with the same n.
 */
int kl_pipeline_reserve(kl_pipeline *p, size_t n);
/** Gives back what kl_pipeline_reserve took. */
void kl_pipeline_release(kl_pipeline *p, size_t n);

/** Seconds a client should wait before retrying after FULL/BUSY/IO (Retry-After). */
uint32_t kl_pipeline_retry_after(const kl_pipeline *p);

/**
 * Inflates a gzip body into out (at most cap bytes): its length, or -EBADMSG (not gzip,
 * corrupt) or -EMSGSIZE (it inflates beyond cap: a bomb is refused, not allocated).
 */
long kl_gunzip(const uint8_t *in, size_t len, uint8_t *out, size_t cap);

#endif
