/* trace.h - public API of libkeel: attributes and child spans on a request's trace, propagation. */
#ifndef KEEL_TRACE_H
#define KEEL_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "keel/keel.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * With tracing on (tracing.endpoint, docs/observability.md) keel continues the
 * W3C trace context of every request (or starts a trace), records a SERVER span
 * for the sampled ones and exports it over OTLP/HTTP. Handlers may add
 * attributes to that span and record child spans; everything here is a cheap
 * no-op when tracing is off or the request is not sampled. Call these only from
 * the handler, on the worker thread, before the request is answered (a child
 * span may end later in the same handler call; spans still open when the
 * request ends are ended then).
 */

/** A child span of a request's span. Lives in the request's arena: no free. */
typedef struct keel_span keel_span;

/** What a child span stands for. */
typedef enum keel_span_kind {
  KEEL_SPAN_INTERNAL = 1, /**< work inside keel: parsing, a cache lookup */
  KEEL_SPAN_CLIENT = 3,   /**< a call to another service (pass keel_req_traceparent() on) */
} keel_span_kind;

/** 1 when the request's span is recorded (sampled), 0 otherwise. */
KEEL_API int keel_req_sampled(const keel_req *req);

/** Adds a string attribute to the request's SERVER span (copied; cut if it does not fit). */
KEEL_API void keel_req_attr(keel_req *req, const char *key, const char *value);

/** Adds an integer attribute to the request's SERVER span. */
KEEL_API void keel_req_attr_int(keel_req *req, const char *key, int64_t value);

/**
 * Starts a child span of the request's span, named `name`. NULL (and every
 * keel_span_* call on NULL is a no-op) when the request is not sampled or the
 * arena is full.
 */
KEEL_API keel_span *keel_span_start(keel_req *req, const char *name, keel_span_kind kind);

/** Adds a string attribute to a child span. */
KEEL_API void keel_span_attr(keel_span *s, const char *key, const char *value);

/** Adds an integer attribute to a child span. */
KEEL_API void keel_span_attr_int(keel_span *s, const char *key, int64_t value);

/** Marks a child span failed (status Error) with a short message. */
KEEL_API void keel_span_error(keel_span *s, const char *msg);

/** Ends a child span and queues it for export. Ending twice does nothing. */
KEEL_API void keel_span_end(keel_span *s);

/**
 * Writes the traceparent header value to send on an outgoing call made for this
 * request, with `parent` (NULL: the request's own span) as the caller: 55
 * characters and a NUL. Returns 55, or 0 when tracing is off.
 */
KEEL_API size_t keel_req_traceparent(const keel_req *req, const keel_span *parent, char out[56]);

/** The request's valid tracestate header, to pass on unchanged (empty when none). */
KEEL_API keel_str keel_req_tracestate(const keel_req *req);

#ifdef __cplusplus
}
#endif
#endif
