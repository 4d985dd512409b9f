/* trace.h - W3C trace context, span ids, sampling, OTLP span encoding and the OTLP/HTTP exporter.
 */
#ifndef KEEL_OBS_TRACE_H
#define KEEL_OBS_TRACE_H

#include <stddef.h>
#include <stdint.h>

/*
 * Threads: a producing thread (an HTTP worker) parses the incoming context,
 * makes ids, samples, and builds each finished span into OTLP protobuf bytes
 * on its own stack (kl_span), then pushes them into its own ring (kl_traceq,
 * from kl_tracer_bind). It never blocks, never allocates: a full ring drops
 * the span and counts it. One exporter thread per kl_tracer drains every
 * ring, wraps the span bytes into ExportTraceServiceRequests without
 * re-encoding them, and POSTs them over HTTP/1.1 with retries.
 *
 * Errors: functions return 0 or a negative errno.
 */

typedef struct kl_tracer kl_tracer;
typedef struct kl_traceq kl_traceq;

/* ---- W3C Trace Context ---------------------------------------------------- */

/** traceparent flag: the caller may have recorded this trace. */
#define KL_TRACE_FLAG_SAMPLED 0x01u
/** Longest tracestate value kept (the W3C limit); a longer one is ignored. */
#define KL_TRACESTATE_MAX 512
/** Length of a version-00 traceparent value. */
#define KL_TRACEPARENT_LEN 55

/** A span context: the trace, one span of it, and the trace flags. */
typedef struct kl_trace_ctx {
  uint8_t trace_id[16];
  uint8_t span_id[8];
  uint8_t flags;
} kl_trace_ctx;

/**
 * Any thread. Parses a traceparent header value (`len` bytes, no NUL needed)
 * into `out`: 0, or -EINVAL when it is not valid (version ff, uppercase hex,
 * all-zero ids, wrong layout; version 00 must be exactly 55 chars, a higher
 * version at least 55 with a '-' after the flags when longer). `out` is only
 * written on success.
 */
int kl_traceparent_parse(const char *s, size_t len, kl_trace_ctx *out);

/** Any thread. Writes "00-<trace>-<span>-<flags>" and a NUL into `out`; returns 55. */
size_t kl_traceparent_format(const kl_trace_ctx *c, char out[KL_TRACEPARENT_LEN + 1]);

/**
 * Any thread. 1 when `s` may be passed on as a tracestate value: at most
 * KL_TRACESTATE_MAX bytes of printable ASCII or tabs. The value is otherwise
 * opaque to keel; an invalid one is to be ignored (not forwarded).
 */
int kl_tracestate_valid(const char *s, size_t len);

/* ---- ids and sampling ----------------------------------------------------- */

/** A per-thread id generator (xoshiro256**). Not shared between threads; kl_trace_rng_init first.
 */
typedef struct kl_trace_rng {
  uint64_t s[4];
} kl_trace_rng;

/**
 * The owning thread. Seeds `r` from getrandom(). 0, or a negative errno when
 * getrandom failed: `r` is then seeded from clocks and addresses, still usable.
 */
int kl_trace_rng_init(kl_trace_rng *r);

/** The owning thread. A new random trace id, never all zero. */
void kl_trace_ids_new(kl_trace_rng *r, uint8_t trace_id[16]);

/** The owning thread. A new random span id, never all zero. */
void kl_trace_span_id_new(kl_trace_rng *r, uint8_t span_id[8]);

/**
 * Any thread. The parent-based sampling decision: 1 to record and sample, 0
 * not to. With a (valid) parent, its sampled flag decides. Without one,
 * TraceIdRatioBased as the OpenTelemetry SDK specification defines it: the
 * trace id's rightmost 56 bits R against the rejection threshold
 * T = 2^56 - round(ratio * 2^56); sampled when R >= T. ratio <= 0 (or NaN)
 * never samples, ratio >= 1 always does.
 */
int kl_trace_sample(double ratio, const kl_trace_ctx *parent, const uint8_t trace_id[16]);

/** Any thread. Wall-clock time in Unix nanoseconds, for span timestamps. */
uint64_t kl_trace_now_ns(void);

/* ---- spans ---------------------------------------------------------------- */

/** Capacity of one encoded span; attributes that do not fit are dropped and counted. */
#define KL_SPAN_MAX 2048
/** Longest span name kept (longer ones are cut at a UTF-8 boundary). */
#define KL_SPAN_NAME_MAX 256
/** Longest status message kept (longer ones are cut at a UTF-8 boundary). */
#define KL_SPAN_STATUS_MSG_MAX 128

/** Span kinds (opentelemetry.proto.trace.v1.Span.SpanKind). */
enum { KL_SPAN_INTERNAL = 1, KL_SPAN_SERVER = 2, KL_SPAN_CLIENT = 3 };
/** Status codes (opentelemetry.proto.trace.v1.Status.StatusCode). */
enum { KL_STATUS_UNSET = 0, KL_STATUS_OK = 1, KL_STATUS_ERROR = 2 };

/**
 * A span under construction, on the producer's stack: its OTLP `Span` message
 * bytes are written as it goes. Strings are copied in (invalid UTF-8 becomes
 * U+FFFD, as protobuf strings must be UTF-8), so callers' buffers may go away.
 */
typedef struct kl_span {
  size_t len;             /* bytes of buf used */
  uint32_t dropped_attrs; /* attributes that did not fit */
  int status_code;        /* KL_STATUS_* */
  size_t status_len;      /* bytes of status_msg */
  char status_msg[KL_SPAN_STATUS_MSG_MAX];
  uint8_t buf[KL_SPAN_MAX];
} kl_span;

/**
 * The producer. Starts a span: `ctx` holds the trace id, this span's own id
 * and the trace flags; `parent_span_id` is NULL for a root span; `tracestate`
 * (`tslen` bytes) is written only when non-empty and kl_tracestate_valid;
 * `name` is cut to KL_SPAN_NAME_MAX; `kind` is KL_SPAN_*.
 */
void kl_span_begin(kl_span *s, const kl_trace_ctx *ctx, const uint8_t *parent_span_id,
                   const char *tracestate, size_t tslen, const char *name, size_t nlen, int kind,
                   uint64_t start_unix_ns);

/** The producer. Adds a string attribute (`vlen` bytes); dropped and counted when it does not fit.
 */
void kl_span_attr_str(kl_span *s, const char *key, const char *val, size_t vlen);
/** The producer. Adds an integer attribute; dropped and counted when it does not fit. */
void kl_span_attr_int(kl_span *s, const char *key, int64_t val);
/** The producer. Adds a boolean attribute; dropped and counted when it does not fit. */
void kl_span_attr_bool(kl_span *s, const char *key, int val);
/** The producer. Adds a double attribute; dropped and counted when it does not fit. */
void kl_span_attr_double(kl_span *s, const char *key, double val);

/** The producer. Sets the status (KL_STATUS_*); `msg` (NULL ok) is kept only with ERROR. Last call
 * wins. */
void kl_span_set_status(kl_span *s, int code, const char *msg, size_t mlen);

/**
 * The producer. Finishes the span (end time, dropped attribute count, status)
 * and pushes it on `q` (the calling thread's queue from kl_tracer_bind). Never
 * blocks. 0; -ENOBUFS when the queue is full (the span is dropped and counted
 * as dropped_queue_full); -EINVAL when `q` is NULL (dropped, uncounted).
 * The finished bytes stay in s->buf[0, s->len) either way.
 */
int kl_span_end(kl_span *s, uint64_t end_unix_ns, kl_traceq *q);

/* ---- the tracer: queues and the exporter thread ----------------------------- */

/** Request body compression. */
enum { KL_TRACE_COMPRESS_NONE = 0, KL_TRACE_COMPRESS_GZIP = 1 };

/** Exporter settings. A zero or NULL field takes its default. Strings are copied. */
typedef struct kl_trace_config {
  const char *endpoint;          /* required: "http://host[:port]/v1/traces" (https: not yet) */
  const char *service_name;      /* resource service.name; default "keel" */
  const char *service_version;   /* resource service.version; default KEEL_VERSION */
  const char *host_name;         /* resource host.name; default gethostname() */
  int compression;               /* KL_TRACE_COMPRESS_*; default none */
  uint32_t batch_max_spans;      /* spans per request; default 512 */
  uint32_t batch_delay_ms;       /* export this long after a batch's first span; default 1000 */
  uint32_t export_timeout_ms;    /* one request, and the flush in kl_tracer_free; default 10000 */
  size_t queue_bytes;            /* ring per producing thread; default 1 MiB */
  size_t max_request_bytes;      /* uncompressed body cap; default 4 MiB (min 64 KiB) */
  uint32_t retry_initial_ms;     /* first backoff; default 100, doubling */
  uint32_t retry_max_ms;         /* backoff cap; default 5000 */
  uint32_t retry_max_elapsed_ms; /* give a batch up after retrying this long; default 30000 */
} kl_trace_config;

/** Counters, all monotonic. */
typedef struct kl_trace_stats {
  uint64_t exported;              /* spans accepted by the collector (2xx) */
  uint64_t dropped_queue_full;    /* spans a full ring refused */
  uint64_t dropped_export_failed; /* spans given up: 4xx, retries exhausted, shutdown timeout */
  uint64_t export_requests;       /* HTTP requests attempted (retries included) */
  uint64_t export_failures;       /* attempts that did not end in 2xx */
} kl_trace_stats;

/**
 * Any thread. Validates `cfg`, starts the exporter thread (it connects lazily).
 * NULL on failure, with a message in `err` (`errlen` bytes, NUL-terminated)
 * and errno set. Free with kl_tracer_free.
 */
kl_tracer *kl_tracer_new(const kl_trace_config *cfg, char *err, size_t errlen);

/**
 * Any thread, once every producer is done with its queue. Exports what is
 * queued (for at most export_timeout_ms; what is left then counts as
 * dropped_export_failed), stops the exporter, frees every queue. NULL ok.
 * Every socket wait is bounded; resolving a host name (getaddrinfo) is not,
 * so give a numeric address where a stuck DNS must not delay shutdown.
 */
void kl_tracer_free(kl_tracer *t);

/**
 * The producing thread. Its own queue (created on the first call, the same
 * queue afterwards). NULL with errno ENOSPC when the tracer has 256 queues
 * already, ENOMEM, or EINVAL for a NULL tracer. Freed by kl_tracer_free.
 */
kl_traceq *kl_tracer_bind(kl_tracer *t);

/** Any thread. A snapshot of the counters. */
void kl_tracer_stats(const kl_tracer *t, kl_trace_stats *out);

#endif
