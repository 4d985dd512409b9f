/* stats.h - keel's own HTTP metrics: golden signals per route, saturation, the /metrics handler. */
#ifndef KEEL_HTTP_STATS_H
#define KEEL_HTTP_STATS_H

#include <stdint.h>

#include "obs/metrics.h"

typedef struct keel_server keel_server;
typedef struct kl_worker kl_worker;
typedef struct keel_req keel_req;

/** Why the HTTP layer rejected a request before routing (keel_http_protocol_errors_total). */
typedef enum kl_proto_reason {
  KL_PROTO_BAD_REQUEST,
  KL_PROTO_SMUGGLING,
  KL_PROTO_URI_TOO_LONG,
  KL_PROTO_HEADER_TOO_LARGE,
  KL_PROTO_BODY_TOO_LARGE,
  KL_PROTO_TIMEOUT,
  KL_PROTO_UNSUPPORTED,
  KL_PROTO_N
} kl_proto_reason;

/** Methods with their own `method` label value; anything else is "_OTHER" (OTel's rule). */
#define KL_METHODS_N 10

/** Cell indexes of keel's series, fixed once the server runs. */
typedef struct kl_stats {
  uint32_t conn_accepted, conn_rejected, conn_active, in_flight;
  uint32_t proto[KL_PROTO_N];
  uint32_t *lag;       /* per worker: its loop-lag histogram */
  uint32_t nslots;     /* (route, method) pairs + unmatched methods */
  uint32_t *slot_hist; /* per slot: its duration histogram */
  uint32_t *slot_key;  /* per slot: key prefix of its requests counter */
  uint32_t unmatched;  /* first unmatched slot; + method index */
} kl_stats;

/** Registers keel's series (routes must be final) and freezes the registry. Main thread. */
int kl_stats_setup(keel_server *srv, unsigned nworkers);
/** Frees what kl_stats_setup() allocated. */
void kl_stats_free(kl_stats *st);

/** The index of a method in the label table (KL_METHODS_N - 1 = "_OTHER"). */
unsigned kl_stats_method(const char *m, size_t len);

/** The label value of method index `i` ("GET" .. "_OTHER"). */
const char *kl_stats_method_name(unsigned i);
/** Worker: one answered request on `slot`, `status`, `us` microseconds from first byte. */
void kl_stats_request(kl_worker *w, uint32_t slot, int status, uint64_t us);
/** Worker: a request rejected by the HTTP layer. */
void kl_stats_proto(kl_worker *w, kl_proto_reason r);
/** Worker: adds `n` (two's complement for minus) to one of the kl_stats cells. */
void kl_stats_add(kl_worker *w, uint32_t cell, uint64_t n);
/** Worker: one loop iteration's handling time. */
void kl_stats_lag(kl_worker *w, uint64_t us);

/** The /metrics route handler (userdata: the server). */
void kl_stats_handler(keel_req *req, void *srv);

#endif
