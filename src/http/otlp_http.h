/* otlp_http.h - the OTLP/HTTP receiver: its routes and its per-worker queue of deferred answers. */
#ifndef KEEL_HTTP_OTLP_HTTP_H
#define KEEL_HTTP_OTLP_HTTP_H

#include "http/server_internal.h"

/** A worker's receiver state (w->otlp). */
typedef struct kl_otlp_worker kl_otlp_worker;

/** Adds POST /v1/logs, /v1/traces, /v1/metrics on `listener` (main thread, before run). */
int kl_otlp_http_routes(keel_server *srv, unsigned listener);

/** Names the receiver's handlers for gateway routes (`handler: otlp_logs|otlp_traces|
 *  otlp_metrics`), so OTLP can also arrive on the main listener. Pipeline on only. */
int kl_otlp_http_handlers(keel_server *srv);

/** Worker thread, at start: its eventfd, queue and scratch; registers with the pipeline. */
int kl_otlp_http_worker_init(kl_worker *w);

/** Worker thread, at exit: frees the queue and scratch (its connections are closed). */
void kl_otlp_http_worker_free(kl_worker *w);

/** Main thread, after kl_pipeline_stop (nothing writes the eventfd any more): closes it. */
void kl_otlp_http_worker_close(kl_worker *w);

#endif
