/* grpc.h - the OTLP/gRPC receiver: HTTP/2 cleartext (nghttp2) on its own thread, into the pipeline. */
#ifndef KEEL_PIPELINE_GRPC_H
#define KEEL_PIPELINE_GRPC_H

#include "pipeline/pipeline.h"

struct keel_server;
struct keel_config;

/*
 * One thread with its own event loop accepts h2c connections (prior knowledge, as gRPC
 * clients connect) on otlp.grpc_listen and serves the three unary Export methods:
 *   /opentelemetry.proto.collector.logs.v1.LogsService/Export
 *   /opentelemetry.proto.collector.trace.v1.TraceService/Export
 *   /opentelemetry.proto.collector.metrics.v1.MetricsService/Export
 * A call's message (5-byte gRPC prefix; grpc-encoding gzip allowed) is ingested like an
 * OTLP/HTTP protobuf body; the answer (Export*ServiceResponse, grpc-status 0) is sent once
 * kl_pipeline_acked() reaches its records. Errors: INVALID_ARGUMENT (3) for undecodable data,
 * RESOURCE_EXHAUSTED (8) over otlp.max_request or the memory cap, UNAVAILABLE (14) when the
 * buffer is full or keel is shutting down; unknown methods UNIMPLEMENTED (12).
 */

typedef struct kl_grpc kl_grpc;

/**
 * Binds otlp.grpc_listen "HOST:PORT" ("[v6]:PORT"; port 0 picks one) and listens (main thread,
 * before the user drop): the listening fd, or a negative errno with a message in err.
 */
int kl_grpc_listen(const char *addr, char *err, size_t errlen);

/**
 * Starts the receiver on `lfd` (from kl_grpc_listen; owned from here on, closed on failure too)
 * and its thread (main thread, after the pipeline started). NULL with a message in err. The
 * bound address is logged ("otlp_grpc").
 */
kl_grpc *kl_grpc_start(const struct keel_config *cfg, struct keel_server *srv, kl_pipeline *p,
                       int lfd, char *err, size_t errlen);

/** The bound port (useful when the config said port 0). */
int kl_grpc_port(const kl_grpc *g);

/**
 * Begins the drain (any thread, returns at once): stop accepting, send GOAWAY so clients open
 * no new streams; calls in progress still get their answers.
 */
void kl_grpc_drain(kl_grpc *g);

/**
 * Stops accepting, answers calls whose records become acknowledged within deadline_ms
 * (others get UNAVAILABLE), closes connections with GOAWAY, joins the thread, frees.
 */
void kl_grpc_stop(kl_grpc *g, uint32_t deadline_ms);

#endif
