/* otlp_http.c - the OTLP/HTTP receiver: POST /v1/{logs,traces,metrics}, answered once the records are durable. */
#include "http/otlp_http.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "keel/json.h"
#include "pipeline/pipeline.h"

/*
 * A request is decoded and ingested on the worker (kl_pipeline_ingest appends its records to
 * the disk buffer in one write). If the acknowledged position has not reached its records
 * yet, the request is deferred (kl_req_defer) and queued here in order; the pipeline writes
 * this worker's eventfd when the position advances and the queue's head is answered. One
 * deferred request per connection, so the queue never outgrows the worker's connections.
 */

#define PENDING_MAX 4096 /* per worker; beyond it new requests get 429 before ingest */

typedef struct pending {
  kl_deferred d;
  uint64_t wait;
  uint64_t rejected;
  uint8_t sig, json, cancelled;
  char error[160];
} pending;

struct kl_otlp_worker {
  kl_io efd;
  _Atomic int armed; /* the pipeline writes efd only while set */
  kl_ingest_scratch scratch;
  kl_buf inflated;
  pending *q;
  uint32_t cap, head, n;
};

static const kl_signal signals[KL_SIG_COUNT] = {KL_SIG_LOGS, KL_SIG_TRACES, KL_SIG_METRICS};

/* ---- answers -------------------------------------------------------------------- */

/* gRPC status codes carried in google.rpc.Status bodies (OTLP/HTTP error responses). */
enum {
  RPC_INVALID_ARGUMENT = 3,
  RPC_RESOURCE_EXHAUSTED = 8,
  RPC_UNAVAILABLE = 14,
  RPC_UNAUTHENTICATED = 16
};

/* An OTLP error answer: google.rpc.Status {code, message}, protobuf or JSON like the request. */
static void respond_status(keel_req *req, int json, int http, int code, const char *msg,
                           uint32_t retry_after) {
  char body[512];
  size_t n = 0, ml = strlen(msg);
  if (retry_after) {
    char ra[16];
    snprintf(ra, sizeof ra, "%u", retry_after);
    keel_resp_header(req, "Retry-After", ra);
  }
  if (json) {
    n = (size_t)snprintf(body, sizeof body, "{\"code\":%d,\"message\":", code);
    size_t q = keel_json_quote(msg, ml, body + n, sizeof body - n - 1);
    if (q > sizeof body - n - 1) q = keel_json_quote("error", 5, body + n, sizeof body - n - 1);
    n += q;
    body[n++] = '}';
    keel_respond(req, http, "application/json", body, n);
    return;
  }
  if (ml > sizeof body - 8) ml = sizeof body - 8;
  body[n++] = 0x08; /* code = 1, varint */
  body[n++] = (char)code;
  body[n++] = 0x12; /* message = 2, bytes */
  if (ml >= 128) {
    body[n++] = (char)(0x80 | (ml & 0x7f));
    body[n++] = (char)(ml >> 7);
  } else {
    body[n++] = (char)ml;
  }
  memcpy(body + n, msg, ml);
  n += ml;
  keel_respond(req, http, "application/x-protobuf", body, n);
}

static void respond_ok(keel_req *req, kl_signal sig, int json, uint64_t rejected,
                       const char *error) {
  kl_otlp_result res;
  memset(&res, 0, sizeof res);
  res.rejected = rejected;
  snprintf(res.error, sizeof res.error, "%s", error);
  char body[512];
  size_t n = json ? kl_otlp_response_json(sig, &res, body, sizeof body)
                  : kl_otlp_response_pb(sig, &res, (uint8_t *)body, sizeof body);
  if (n > sizeof body) n = 0; /* cannot happen: the message is capped */
  keel_respond(req, 200, json ? "application/json" : "application/x-protobuf", body, n);
}

static void respond_ingest_error(keel_req *req, int json, int rc, const kl_otlp_result *res) {
  char msg[256];
  switch (rc) {
  case KL_INGEST_BAD:
    snprintf(msg, sizeof msg, "%s (at byte %zu)", res->error[0] ? res->error : "malformed request",
             res->error_offset);
    respond_status(req, json, 400, RPC_INVALID_ARGUMENT, msg, 0);
    return;
  case KL_INGEST_BUSY:
    respond_status(req, json, 429, RPC_RESOURCE_EXHAUSTED,
                   "too much telemetry in flight: retry later", kl_pipeline_retry_after(rc));
    return;
  case KL_INGEST_FULL:
    respond_status(req, json, 503, RPC_UNAVAILABLE,
                   "the disk buffer is full (the sink is behind): retry later",
                   kl_pipeline_retry_after(rc));
    return;
  case KL_INGEST_LARGE:
    respond_status(req, json, 413, RPC_RESOURCE_EXHAUSTED,
                   "the request needs more memory than buffer.memory allows", 0);
    return;
  case KL_INGEST_DOWN:
    respond_status(req, json, 503, RPC_UNAVAILABLE, "shutting down", kl_pipeline_retry_after(rc));
    return;
  default:
    respond_status(req, json, 503, RPC_UNAVAILABLE, "the disk buffer cannot be written",
                   kl_pipeline_retry_after(rc));
    return;
  }
}

/* ---- the queue of deferred requests ---------------------------------------------- */

static void answer_ready(kl_otlp_worker *o, kl_pipeline *p) {
  uint64_t acked = kl_pipeline_acked(p);
  while (o->n) {
    pending *e = &o->q[o->head];
    if (!e->cancelled && e->wait > acked) break;
    o->head = (o->head + 1) % o->cap;
    o->n--;
    if (e->cancelled) continue;
    keel_req *req = kl_deferred_req(&e->d);
    if (!req) continue;
    respond_ok(req, (kl_signal)e->sig, e->json, e->rejected, e->error);
    kl_deferred_finish(&e->d);
  }
  atomic_store(&o->armed, o->n > 0);
  /* A position published between the check and disarming would be missed: look again. */
  if (o->n && o->q[o->head].wait <= kl_pipeline_acked(p)) answer_ready(o, p);
}

static void on_efd(kl_loop *loop, kl_io *io, uint32_t events) {
  (void)events;
  kl_worker *w = (kl_worker *)(void *)((char *)loop - offsetof(kl_worker, loop));
  kl_otlp_worker *o = w->otlp;
  uint64_t v;
  ssize_t r = read(io->fd, &v, sizeof v);
  (void)r;
  answer_ready(o, w->srv->pipeline);
}

static void on_cancel(void *arg, uint64_t id) {
  kl_otlp_worker *o = arg;
  for (uint32_t i = 0; i < o->n; i++) {
    pending *e = &o->q[(o->head + i) % o->cap];
    if (e->d.id == id) e->cancelled = 1;
  }
}

/* ---- the handler -------------------------------------------------------------------- */

static int media_is(keel_str v, const char *type) {
  size_t n = strlen(type);
  if (v.len < n || strncasecmp(v.ptr, type, n) != 0) return 0;
  if (v.len == n) return 1;
  const char *rest = v.ptr + n;
  while (rest < v.ptr + v.len && (*rest == ' ' || *rest == '\t')) rest++;
  return rest == v.ptr + v.len || *rest == ';';
}

static void otlp_handler(keel_req *req, void *ud) {
  kl_signal sig = *(const kl_signal *)ud;
  kl_worker *w = req->conn->w;
  kl_pipeline *p = w->srv->pipeline;
  kl_otlp_worker *o = w->otlp;
  keel_str ct = keel_req_header(req, "Content-Type");
  int json = media_is(ct, "application/json");
  keel_str az = keel_req_header(req, "Authorization"), xk = keel_req_header(req, "X-API-Key");
  if (!kl_pipeline_auth(p, az.ptr, az.len, xk.ptr, xk.len)) {
    kl_pipeline_count_refused(p, sig, "unauthorized");
    keel_resp_header(req, "WWW-Authenticate", "Bearer realm=\"otlp\"");
    respond_status(req, json, 401, RPC_UNAUTHENTICATED,
                   "an API key is required: Authorization: Bearer KEY (or X-API-Key)", 0);
    return;
  }
  if (!json && !media_is(ct, "application/x-protobuf")) {
    kl_pipeline_count_refused(p, sig, "unsupported_media_type");
    keel_respond_error(req, 415,
                       "Content-Type must be application/x-protobuf or application/json");
    return;
  }
  keel_str body = keel_req_body(req);
  keel_str ce = keel_req_header(req, "Content-Encoding");
  if (ce.len && !(ce.len == 8 && strncasecmp(ce.ptr, "identity", 8) == 0)) {
    if (!(ce.len == 4 && strncasecmp(ce.ptr, "gzip", 4) == 0)) {
      kl_pipeline_count_refused(p, sig, "unsupported_media_type");
      respond_status(req, json, 415, RPC_INVALID_ARGUMENT,
                     "Content-Encoding must be gzip or identity", 0);
      return;
    }
    size_t cap = w->srv->cfg.otlp_max_request;
    o->inflated.len = 0;
    if (kl_buf_reserve(&o->inflated, cap) != 0) {
      kl_pipeline_count_refused(p, sig, "memory");
      respond_ingest_error(req, json, KL_INGEST_BUSY, NULL);
      return;
    }
    long n = kl_gunzip((const uint8_t *)body.ptr, body.len, (uint8_t *)o->inflated.data, cap);
    if (n == -EMSGSIZE) {
      kl_pipeline_count_refused(p, sig, "too_large");
      respond_status(req, json, 413, RPC_INVALID_ARGUMENT,
                     "the request inflates beyond otlp.max_request", 0);
      return;
    }
    if (n < 0) {
      kl_pipeline_count_refused(p, sig, "bad_request");
      respond_status(req, json, 400, RPC_INVALID_ARGUMENT, "the body is not valid gzip", 0);
      return;
    }
    body.ptr = o->inflated.data;
    body.len = (size_t)n;
  }
  if (o->n == o->cap) {
    kl_pipeline_count_refused(p, sig, "memory");
    respond_ingest_error(req, json, KL_INGEST_BUSY, NULL);
    return;
  }
  kl_otlp_result res;
  uint64_t wait = 0;
  int rc = kl_pipeline_ingest(p, sig, json ? KL_FMT_JSON : KL_FMT_PROTO,
                              (const uint8_t *)body.ptr, body.len, &o->scratch, &res, &wait);
  if (o->inflated.cap > (1u << 20)) kl_buf_free(&o->inflated);
  if (rc) {
    respond_ingest_error(req, json, rc, &res);
    return;
  }
  if (wait <= kl_pipeline_acked(p)) {
    respond_ok(req, sig, json, res.rejected, res.error);
    return;
  }
  pending *e = &o->q[(o->head + o->n) % o->cap];
  o->n++;
  e->wait = wait;
  e->rejected = res.rejected;
  e->sig = (uint8_t)sig;
  e->json = (uint8_t)json;
  e->cancelled = 0;
  snprintf(e->error, sizeof e->error, "%s", res.error);
  kl_req_defer(req, &e->d, w->srv->cfg.otlp_ack_timeout_ms, on_cancel, o);
  atomic_store(&o->armed, 1);
  if (wait <= kl_pipeline_acked(p)) {
    /* Durable already (between the check above and arming): the eventfd may never come. */
    uint64_t one = 1;
    ssize_t r = write(o->efd.fd, &one, sizeof one);
    (void)r;
  }
}

/* ---- setup ---------------------------------------------------------------------------- */

int kl_otlp_http_routes(keel_server *srv, unsigned listener) {
  static const char *const paths[KL_SIG_COUNT] = {"/v1/logs", "/v1/traces", "/v1/metrics"};
  for (int s = 0; s < KL_SIG_COUNT; s++) {
    int rc = kl_route_add(srv, listener, "POST", paths[s], otlp_handler,
                          (void *)(uintptr_t)&signals[s], KL_ROUTE_UNTRACED);
    if (rc) return rc;
  }
  return 0;
}

int kl_otlp_http_handlers(keel_server *srv) {
  static const char *const names[KL_SIG_COUNT] = {"otlp_logs", "otlp_traces", "otlp_metrics"};
  for (int s = 0; s < KL_SIG_COUNT; s++) {
    int rc = keel_handler_register(srv, names[s], otlp_handler, (void *)(uintptr_t)&signals[s]);
    if (rc) return rc;
  }
  return 0;
}

int kl_otlp_http_worker_init(kl_worker *w) {
  kl_otlp_worker *o = calloc(1, sizeof(*o));
  if (!o) return -ENOMEM;
  o->cap = w->max_conns < PENDING_MAX ? w->max_conns + 1 : PENDING_MAX;
  o->q = calloc(o->cap, sizeof(*o->q));
  o->efd.fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  o->efd.cb = on_efd;
  kl_ingest_scratch_init(&o->scratch, w->srv->cfg.otlp_max_request);
  kl_buf_init(&o->inflated, w->srv->cfg.otlp_max_request);
  w->otlp = o;
  int rc = !o->q || o->efd.fd < 0 ? -ENOMEM : kl_io_start(&w->loop, &o->efd, EPOLLIN);
  if (!rc) rc = kl_pipeline_watch(w->srv->pipeline, o->efd.fd, &o->armed);
  return rc;
}

void kl_otlp_http_worker_free(kl_worker *w) {
  kl_otlp_worker *o = w->otlp;
  if (!o) return;
  /* The eventfd stays open: the pipeline may still write it until it stops (harmless). */
  kl_ingest_scratch_free(&o->scratch);
  kl_buf_free(&o->inflated);
  atomic_store(&o->armed, 0);
  free(o->q);
  o->q = NULL;
  o->n = 0;
}

void kl_otlp_http_worker_close(kl_worker *w) {
  kl_otlp_worker *o = w->otlp;
  if (!o) return;
  if (o->efd.fd >= 0) close(o->efd.fd);
  free(o);
  w->otlp = NULL;
}
