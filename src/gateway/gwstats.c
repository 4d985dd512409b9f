/* gwstats.c - the gateway's metrics: upstream traffic and health, rate limits, cache, reloads. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/cache.h"
#include "gateway/gw.h"
#include "gateway/ratelimit.h"

/*
 * Every value is read at scrape time from the counters the gateway keeps anyway (atomics of
 * upstreams and endpoints, the rate limiters' per-worker counters, the cache's): the request
 * path pays nothing for them. Series are named after the upstreams and endpoints of the
 * gateway the server started with; after a reload each series follows the upstream of that
 * name in the current gateway (0 if it is gone), and upstreams a reload adds get series at
 * the next restart.
 */

enum { M_REQUESTS, M_RETRIES, M_CONNS, M_PENDING, M_HEALTHY, M_RL_ALLOWED, M_RL_DENIED,
       M_RL_FALLBACK, M_CACHE_HITS, M_CACHE_MISSES, M_CACHE_STORES, M_CACHE_EVICTIONS,
       M_CACHE_BYTES, M_CACHE_ENTRIES, M_RELOADS_OK, M_RELOADS_FAILED };

typedef struct gw_metric {
  keel_server *srv;
  char upstream[64];
  uint32_t ep;
  int kind;
} gw_metric;

static const kl_gw_upstream *find_upstream(const kl_gw *gw, const char *name) {
  for (uint32_t i = 0; gw && i < gw->nups; i++)
    if (strcmp(gw->ups[i].name, name) == 0) return &gw->ups[i];
  return NULL;
}

static double rl_sum(const kl_gw *gw, int kind) {
  double v = 0;
  for (unsigned i = 0; gw && gw->wk && i < gw->nworkers; i++) {
    const kl_rl_worker *rw = kl_gw_worker_rl(gw, i);
    if (!rw) continue;
    const kl_rl_stats *s = kl_rl_worker_stats(rw);
    if (kind == M_RL_ALLOWED) v += (double)atomic_load_explicit(&s->allowed, memory_order_relaxed);
    else if (kind == M_RL_DENIED) v += (double)atomic_load_explicit(&s->denied, memory_order_relaxed);
    else v += (double)atomic_load_explicit(&s->redis_errors, memory_order_relaxed);
  }
  return v;
}

static double value(void *arg) {
  const gw_metric *g = arg;
  const kl_gw *gw = kl_srv_gw(g->srv);
  if (g->kind == M_RELOADS_OK) return (double)atomic_load(&g->srv->reloads_ok);
  if (g->kind == M_RELOADS_FAILED) return (double)atomic_load(&g->srv->reloads_failed);
  if (g->kind >= M_RL_ALLOWED && g->kind <= M_RL_FALLBACK) return rl_sum(gw, g->kind);
  if (g->kind >= M_CACHE_HITS) {
    kl_cache_stats cs = {0};
    if (gw && gw->cache) kl_cache_stats_get(gw->cache, &cs);
    const uint64_t v[] = {cs.hits, cs.misses, cs.stores, cs.evictions, cs.bytes, cs.entries};
    return (double)v[g->kind - M_CACHE_HITS];
  }
  const kl_gw_upstream *u = find_upstream(gw, g->upstream);
  if (!u) return 0;
  switch (g->kind) {
  case M_REQUESTS: return (double)atomic_load(&u->requests);
  case M_RETRIES: return (double)atomic_load(&u->retries);
  case M_CONNS: return (double)atomic_load(&u->conns);
  case M_PENDING: return (double)atomic_load(&u->pending);
  default: {
    if (g->ep >= u->neps) return 0;
    const kl_gw_endpoint *e = &u->eps[g->ep];
    uint64_t now = kl_now_ms();
    return !atomic_load(&e->down) && atomic_load(&e->ejected_until) <= now;
  }
  }
}

static int add(keel_server *srv, kl_metrics *m, gw_metric ***list, size_t *n, const char *name,
               const char *help, kl_mtype type, const char *upstream, const char *endpoint,
               uint32_t ep, int kind, const char *lk, const char *lv) {
  gw_metric *g = calloc(1, sizeof *g);
  if (!g) return -ENOMEM;
  gw_metric **grown = realloc(*list, (*n + 1) * sizeof **list);
  if (!grown) {
    free(g);
    return -ENOMEM;
  }
  *list = grown;
  (*list)[(*n)++] = g;
  g->srv = srv;
  g->ep = ep;
  g->kind = kind;
  if (upstream) strncpy(g->upstream, upstream, sizeof g->upstream - 1);
  const char *labels[7] = {NULL};
  size_t k = 0;
  if (upstream) {
    labels[k++] = "upstream";
    labels[k++] = upstream;
  }
  if (endpoint) {
    labels[k++] = "endpoint";
    labels[k++] = endpoint;
  }
  if (lk) {
    labels[k++] = lk;
    labels[k++] = lv;
  }
  return kl_metrics_add_fn(m, name, help, type, k ? labels : NULL, value, g);
}

int kl_gw_metrics(keel_server *srv, kl_metrics *m) {
  const kl_gw *gw = srv->gw;
  gw_metric **list = NULL;
  size_t n = 0;
  int rc = 0;
  for (uint32_t i = 0; gw && i < gw->nups && !rc; i++) {
    const char *u = gw->ups[i].name;
    rc = add(srv, m, &list, &n, "keel_gateway_upstream_requests_total",
             "Requests proxied to the upstream (first attempts).", KL_M_COUNTER, u, NULL, 0,
             M_REQUESTS, NULL, NULL);
    if (!rc)
      rc = add(srv, m, &list, &n, "keel_gateway_upstream_retries_total",
               "Further attempts sent to the upstream (within its retry budget).", KL_M_COUNTER,
               u, NULL, 0, M_RETRIES, NULL, NULL);
    if (!rc)
      rc = add(srv, m, &list, &n, "keel_gateway_upstream_connections",
               "Open connections to the upstream, all workers.", KL_M_GAUGE, u, NULL, 0, M_CONNS,
               NULL, NULL);
    if (!rc)
      rc = add(srv, m, &list, &n, "keel_gateway_upstream_requests_in_flight",
               "Requests waiting for the upstream's answer (max_pending caps it).", KL_M_GAUGE, u,
               NULL, 0, M_PENDING, NULL, NULL);
    for (uint32_t e = 0; e < gw->ups[i].neps && !rc; e++) {
      char ep[200];
      snprintf(ep, sizeof ep, "%s#%u", gw->ups[i].eps[e].name, e);
      rc = add(srv, m, &list, &n, "keel_gateway_endpoint_up",
               "1 when the endpoint takes traffic: not down by health check, not ejected.",
               KL_M_GAUGE, u, ep, e, M_HEALTHY, NULL, NULL);
    }
  }
  static const struct {
    const char *result;
    int kind;
  } rl[] = {{"allowed", M_RL_ALLOWED}, {"denied", M_RL_DENIED}, {"redis_error", M_RL_FALLBACK}};
  for (size_t i = 0; i < 3 && !rc; i++)
    rc = add(srv, m, &list, &n, "keel_gateway_ratelimit_decisions_total",
             "Rate-limit decisions: allowed, denied (429 or fail-closed 503), and global ones "
             "Redis could not make (decided by on_redis_error).",
             KL_M_COUNTER, NULL, NULL, 0, rl[i].kind, "result", rl[i].result);
  static const struct {
    const char *name, *help;
    kl_mtype type;
    int kind;
  } cache[] = {
      {"keel_gateway_cache_hits_total", "Requests answered from the response cache.", KL_M_COUNTER, M_CACHE_HITS},
      {"keel_gateway_cache_misses_total", "Cacheable requests that went upstream.", KL_M_COUNTER, M_CACHE_MISSES},
      {"keel_gateway_cache_stores_total", "Responses stored in the cache.", KL_M_COUNTER, M_CACHE_STORES},
      {"keel_gateway_cache_evictions_total", "Entries evicted to stay under cache.memory.", KL_M_COUNTER, M_CACHE_EVICTIONS},
      {"keel_gateway_cache_bytes", "Bytes the cache holds (charged against cache.memory).", KL_M_GAUGE, M_CACHE_BYTES},
      {"keel_gateway_cache_entries", "Responses the cache holds.", KL_M_GAUGE, M_CACHE_ENTRIES},
  };
  for (size_t i = 0; i < sizeof cache / sizeof cache[0] && !rc; i++)
    rc = add(srv, m, &list, &n, cache[i].name, cache[i].help, cache[i].type, NULL, NULL, 0,
             cache[i].kind, NULL, NULL);
  if (!rc)
    rc = add(srv, m, &list, &n, "keel_config_reloads_total",
             "Configuration reloads (SIGHUP, POST /-/reload), by result.", KL_M_COUNTER, NULL,
             NULL, 0, M_RELOADS_OK, "result", "success");
  if (!rc)
    rc = add(srv, m, &list, &n, "keel_config_reloads_total",
             "Configuration reloads (SIGHUP, POST /-/reload), by result.", KL_M_COUNTER, NULL,
             NULL, 0, M_RELOADS_FAILED, "result", "failure");
  srv->gw_metrics = (void **)list;
  srv->ngw_metrics = n;
  return rc;
}

void kl_gw_metrics_free(keel_server *srv) {
  for (size_t i = 0; i < srv->ngw_metrics; i++) free(srv->gw_metrics[i]);
  free(srv->gw_metrics);
  srv->gw_metrics = NULL;
  srv->ngw_metrics = 0;
}
