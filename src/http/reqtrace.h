/* reqtrace.h - a request's trace: W3C context in, SERVER span out, handler spans, traceparent. */
#ifndef KEEL_HTTP_REQTRACE_H
#define KEEL_HTTP_REQTRACE_H

#include <stddef.h>
#include <stdint.h>

#include "obs/trace.h"

typedef struct kl_worker kl_worker;
typedef struct kl_route kl_route;
typedef struct keel_req keel_req;
struct keel_span;

/** The trace state of one request (part of keel_req, zeroed for each request). */
typedef struct kl_reqtrace {
  kl_trace_ctx ctx;        /* trace id, this request's SERVER span id, flags */
  uint8_t parent[8];       /* the caller's span id (has_parent) */
  uint8_t has_parent;      /* a valid traceparent came in */
  uint8_t on;              /* tracing is on: ctx is valid */
  uint8_t sampled;         /* the SERVER span is being recorded in the worker's span */
  const char *tracestate;  /* the valid incoming tracestate (a view into the request) */
  size_t tslen;
  uint64_t start_ns;       /* Unix ns of the request's first byte */
  struct keel_span *open;  /* child spans not ended yet */
  struct kl_span *span;    /* the SERVER span once it left the worker's buffer (a deferred
                              or streamed request, kl_reqtrace_detach); NULL: w->span */
} kl_reqtrace;

/**
 * Worker, before the handler: continues or starts the trace, decides sampling,
 * starts the SERVER span, adds the traceparent response header if configured and
 * tags the thread's log lines. `r` is the matched route or NULL.
 */
void kl_reqtrace_begin(kl_worker *w, keel_req *req, const kl_route *r);

/**
 * Worker, after the response (and its access-log line): ends open child spans,
 * adds the response attributes and queues the SERVER span. `us`: microseconds
 * from the request's first byte.
 */
void kl_reqtrace_end(kl_worker *w, keel_req *req, const kl_route *r, uint64_t us);

/**
 * Worker, when a request will be answered after its handler returns: its SERVER span moves
 * out of the worker's one span buffer (other requests use it meanwhile) into its own memory.
 */
void kl_reqtrace_detach(kl_worker *w, keel_req *req);

/** Worker, when a request ends without an answer (its connection closed): frees its span. */
void kl_reqtrace_free(keel_req *req);

/** The request's SERVER span (sampled requests). */
struct kl_span *kl_reqtrace_span(keel_req *req);

#endif
