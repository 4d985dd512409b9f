/* stats.c - keel's own HTTP metrics: golden signals per route, saturation, the /metrics handler. */
#include "http/stats.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/gw.h"
#include "http/server_internal.h"

#ifndef KEEL_GIT
#define KEEL_GIT "unknown"
#endif

/** Largest exposition a scrape may produce (a cap like every buffer's). */
#define KL_METRICS_MAX (16u << 20)

/* Fine below 5 ms, where keel's latencies live; OTel's recommended buckets above. */
static const double k_duration[] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                    0.01,    0.025,  0.05,    0.075,  0.1,   0.25,   0.5,
                                    0.75,    1,      2.5,     5,      7.5,   10};
#define K_DURATION_N (sizeof(k_duration) / sizeof(k_duration[0]))

static const double k_lag[] = {0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
                               0.001,   0.0025,   0.005,   0.01,   0.025,   0.05,
                               0.1,     0.25,     0.5,     1};

static const char *const k_methods[KL_METHODS_N] = {
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER"};

static const char *const k_reasons[KL_PROTO_N] = {
    "bad_request",    "smuggling", "uri_too_long", "header_too_large",
    "body_too_large", "timeout",   "unsupported"};

const char *kl_stats_method_name(unsigned i) {
  return k_methods[i < KL_METHODS_N ? i : KL_METHODS_N - 1];
}

unsigned kl_stats_method(const char *m, size_t len) {
  for (unsigned i = 0; i + 1 < KL_METHODS_N; i++)
    if (strlen(k_methods[i]) == len && memcmp(k_methods[i], m, len) == 0) return i;
  return KL_METHODS_N - 1;
}

/* ---- values computed at scrape time ---------------------------------------------- */

static double v_one(void *a) {
  (void)a;
  return 1;
}
static double v_max_conns(void *a) {
  return ((keel_server *)a)->cfg.max_connections;
}
static double v_draining(void *a) {
  return atomic_load_explicit(&((keel_server *)a)->draining, memory_order_relaxed);
}
static double v_log_dropped(void *a) {
  return (double)kl_log_dropped(((keel_server *)a)->log);
}
static kl_trace_stats trace_stats(const keel_server *srv) {
  kl_trace_stats t = {0};
  if (srv->tracer) kl_tracer_stats(srv->tracer, &t);
  return t;
}
static double v_spans_exported(void *a) {
  return (double)trace_stats(a).exported;
}
static double v_spans_queue_full(void *a) {
  return (double)trace_stats(a).dropped_queue_full;
}
static double v_spans_export_failed(void *a) {
  return (double)trace_stats(a).dropped_export_failed;
}

/* ---- setup ------------------------------------------------------------------------ */

/* One slot: the duration histogram and the requests counter of (method, route). */
static int slot_add(kl_metrics *m, kl_stats *st, uint32_t i, const char *method,
                    const char *route) {
  const char *labels[] = {"method", method, "route", route, NULL};
  kl_series *h, *k;
  int rc = kl_metrics_add(m, "http_server_request_duration_seconds",
                          "Duration of HTTP requests, from their first byte to the response "
                          "being queued, by method and route template.",
                          KL_M_HISTOGRAM, labels, k_duration, K_DURATION_N, &h);
  if (!rc)
    rc = kl_metrics_add_keyed(m, "keel_http_requests_total",
                              "HTTP requests answered, by method, route template and status code.",
                              labels, "code", &k);
  if (rc) return rc;
  st->slot_hist[i] = kl_series_cell(h);
  st->slot_key[i] = kl_series_key(k);
  return 0;
}

static int cell_add(kl_metrics *m, const char *name, const char *help, kl_mtype type,
                    const char *const *labels, uint32_t *cell) {
  kl_series *s;
  int rc = kl_metrics_add(m, name, help, type, labels, NULL, 0, &s);
  if (!rc) *cell = kl_series_cell(s);
  return rc;
}

/* The method indexes a gateway route answers (all of them without a list; HEAD with GET). */
static unsigned gw_methods(const kl_gw_route *g, unsigned *list) {
  uint32_t mask = g->methods ? g->methods | ((g->methods & 1u) << 1) : (1u << KL_METHODS_N) - 1;
  unsigned k = 0;
  for (unsigned i = 0; i < KL_METHODS_N; i++)
    if (mask & (1u << i)) {
      if (list) list[k] = i;
      k++;
    }
  return k;
}

int kl_stats_setup(keel_server *srv, unsigned nworkers) {
  kl_metrics *m = srv->metrics;
  kl_stats *st = &srv->stats;
  uint32_t n = KL_METHODS_N;
  for (size_t i = 0; i < srv->nroutes; i++) n += strcmp(srv->routes[i].method, "GET") ? 1 : 2;
  for (uint32_t i = 0; srv->gw && i < srv->gw->nroutes; i++) n += gw_methods(&srv->gw->routes[i], NULL);
  if (srv->config_path) n += KL_METHODS_N; /* routes a reload adds */
  st->nslots = n;
  st->slot_hist = calloc(n, sizeof(uint32_t));
  st->slot_key = calloc(n, sizeof(uint32_t));
  st->lag = calloc(nworkers, sizeof(uint32_t));
  if (!st->slot_hist || !st->slot_key || !st->lag) return -ENOMEM;
  int rc = 0;
  uint32_t slot = 0;
  for (size_t i = 0; i < srv->nroutes && !rc; i++) {
    kl_route *r = &srv->routes[i];
    r->slot = slot;
    rc = slot_add(m, st, slot++, r->method, r->path);
    if (!rc && strcmp(r->method, "GET") == 0) rc = slot_add(m, st, slot++, "HEAD", r->path);
  }
  for (uint32_t i = 0; srv->gw && i < srv->gw->nroutes && !rc; i++) {
    kl_gw_route *g = &srv->gw->routes[i];
    unsigned list[KL_METHODS_N], k = gw_methods(g, list);
    g->slot = slot;
    g->nslots = k;
    for (unsigned j = 0; j < k && !rc; j++) rc = slot_add(m, st, slot++, k_methods[list[j]], g->name);
  }
  if (srv->config_path) {
    srv->reloaded_slot = slot;
    for (unsigned i = 0; i < KL_METHODS_N && !rc; i++) rc = slot_add(m, st, slot++, k_methods[i], "_reloaded");
  }
  st->unmatched = slot;
  for (unsigned i = 0; i < KL_METHODS_N && !rc; i++) rc = slot_add(m, st, slot++, k_methods[i], "");
  for (unsigned i = 0; i < KL_PROTO_N && !rc; i++) {
    const char *labels[] = {"reason", k_reasons[i], NULL};
    rc = cell_add(m, "keel_http_protocol_errors_total",
                  "Requests the HTTP layer rejected before routing (answered 4xx/5xx and closed), "
                  "by reason.",
                  KL_M_COUNTER, labels, &st->proto[i]);
  }
  const struct {
    const char *name, *help;
    kl_mtype type;
    uint32_t *cell;
  } cells[] = {
      {"keel_http_requests_in_flight", "Requests received (first byte) and not yet answered.",
       KL_M_GAUGE, &st->in_flight},
      {"keel_http_connections_active", "Open client connections.", KL_M_GAUGE, &st->conn_active},
      {"keel_http_connections_accepted_total", "Client connections accepted.", KL_M_COUNTER,
       &st->conn_accepted},
      {"keel_http_connections_rejected_total",
       "Client connections refused with 503 at max_connections.", KL_M_COUNTER,
       &st->conn_rejected},
  };
  for (size_t i = 0; i < sizeof(cells) / sizeof(cells[0]) && !rc; i++)
    rc = cell_add(m, cells[i].name, cells[i].help, cells[i].type, NULL, cells[i].cell);
  for (unsigned i = 0; i < nworkers && !rc; i++) {
    char id[16];
    snprintf(id, sizeof(id), "%u", i);
    const char *labels[] = {"worker", id, NULL};
    kl_series *s;
    rc = kl_metrics_add(m, "keel_worker_loop_lag_seconds",
                        "Per event-loop iteration: time from epoll returning to the end of "
                        "handling its events, the longest a ready event waited for its turn.",
                        KL_M_HISTOGRAM, labels, k_lag, sizeof(k_lag) / sizeof(k_lag[0]), &s);
    if (!rc) st->lag[i] = kl_series_cell(s);
  }
  const struct {
    const char *name, *help;
    kl_mtype type;
    kl_metric_fn fn;
  } fns[] = {
      {"keel_http_connections_max", "Configured cap on open client connections (max_connections).",
       KL_M_GAUGE, v_max_conns},
      {"keel_log_lines_dropped_total", "Log lines dropped because a thread's log ring was full.",
       KL_M_COUNTER, v_log_dropped},
      {"keel_draining", "1 while the server drains for shutdown.", KL_M_GAUGE, v_draining},
      {"keel_trace_spans_exported_total", "Spans the OTLP collector accepted.", KL_M_COUNTER,
       v_spans_exported},
  };
  for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]) && !rc; i++)
    rc = kl_metrics_add_fn(m, fns[i].name, fns[i].help, fns[i].type, NULL, fns[i].fn, srv);
  if (!rc && srv->gw) rc = kl_gw_metrics(srv, m);
  static const char dropped_help[] =
      "Spans dropped: queue_full (a worker's span ring was full: export too slow), export_failed "
      "(the collector refused them or stayed unreachable past the retries).";
  const char *queue_full[] = {"reason", "queue_full", NULL};
  const char *export_failed[] = {"reason", "export_failed", NULL};
  if (!rc)
    rc = kl_metrics_add_fn(m, "keel_trace_spans_dropped_total", dropped_help, KL_M_COUNTER,
                           queue_full, v_spans_queue_full, srv);
  if (!rc)
    rc = kl_metrics_add_fn(m, "keel_trace_spans_dropped_total", dropped_help, KL_M_COUNTER,
                           export_failed, v_spans_export_failed, srv);
  if (!rc) {
#if defined(__clang__)
    const char *cc = "clang " __clang_version__;
#elif defined(__GNUC__)
    const char *cc = "gcc " __VERSION__;
#else
    const char *cc = "unknown";
#endif
    const char *labels[] = {"version", KEEL_VERSION, "revision", KEEL_GIT, "compiler", cc, NULL};
    rc = kl_metrics_add_fn(m, "keel_build_info", "keel's version, source revision and compiler.",
                           KL_M_INFO, labels, v_one, NULL);
  }
  if (!rc) rc = kl_metrics_add_process(m);
  if (!rc) rc = kl_metrics_freeze(m, nworkers);
  return rc;
}

void kl_stats_free(kl_stats *st) {
  free(st->slot_hist);
  free(st->slot_key);
  free(st->lag);
  memset(st, 0, sizeof(*st));
}

/* ---- recording (worker threads) --------------------------------------------------- */

void kl_stats_request(kl_worker *w, uint32_t slot, int status, uint64_t us) {
  kl_mblock *b = w->mb;
  if (!b) return;
  const kl_stats *st = &w->srv->stats;
  kl_mcell_observe(b->cells, st->slot_hist[slot], k_duration, K_DURATION_N, (double)us * 1e-6);
  kl_mkey_add(b, st->slot_key[slot] | (uint32_t)status);
}

void kl_stats_proto(kl_worker *w, kl_proto_reason r) {
  if (w->mb) kl_mcell_add(w->mb->cells, w->srv->stats.proto[r], 1);
}

void kl_stats_add(kl_worker *w, uint32_t cell, uint64_t n) {
  if (w->mb) kl_mcell_add(w->mb->cells, cell, n);
}

void kl_stats_lag(kl_worker *w, uint64_t us) {
  if (w->mb)
    kl_mcell_observe(w->mb->cells, w->srv->stats.lag[w->id], k_lag,
                     sizeof(k_lag) / sizeof(k_lag[0]), (double)us * 1e-6);
}

/* ---- GET /metrics ------------------------------------------------------------------ */

void kl_stats_handler(keel_req *req, void *ud) {
  keel_server *srv = ud;
  keel_str acc = keel_req_header(req, "Accept");
  static const char om_type[] = "application/openmetrics-text";
  int om = acc.ptr && memmem(acc.ptr, acc.len, om_type, sizeof(om_type) - 1) != NULL;
  kl_buf b;
  kl_buf_init(&b, KL_METRICS_MAX);
  int rc = kl_metrics_render(srv->metrics, &b, om);
  if (rc)
    keel_respond_error(req, 500,
                       rc == -ENOBUFS ? "metrics exposition over its size cap" : "out of memory");
  else
    keel_respond(req, 200,
                 om ? "application/openmetrics-text; version=1.0.0; charset=utf-8"
                    : "text/plain; version=0.0.4; charset=utf-8",
                 b.data, b.len);
  kl_buf_free(&b);
}
