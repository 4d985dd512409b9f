/* policy.c - a gateway route's policies: API keys, rate limits, request validation. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/keys.h"
#include "gateway/gw.h"
#include "gateway/jschema.h"
#include "gateway/proxy.h"
#include "gateway/ratelimit.h"
#include "gateway/redis.h"

/* Per worker: what global rate limits need (created on the worker's first decision). */
typedef struct kl_gw_worker {
  kl_redis *redis;
  kl_rl_worker *rl;
  uint8_t failed; /* creating them failed once: decide locally from then on */
} kl_gw_worker;

/* A request waiting for Redis's decision. */
typedef struct hold {
  kl_deferred d;
  const kl_gw_route *r;
  const char *tenant; /* the keyring's, which lives as long as the route */
  uint8_t cancelled; /* the client went away: the decision only frees this */
  uint8_t waiting;   /* the decision is still to come */
} hold;

static kl_gw_worker *gw_worker(kl_gw *gw, kl_worker *w) {
  return gw->wk ? &gw->wk[w->id] : NULL; /* allocated by kl_gw_bind */
}

int kl_gw_workers_new(kl_gw *gw, unsigned n) {
  gw->wk = calloc(n, sizeof *gw->wk);
  return gw->wk ? 0 : -ENOMEM;
}

const kl_rl_worker *kl_gw_worker_rl(const kl_gw *gw, unsigned i) {
  return gw->wk ? __atomic_load_n(&gw->wk[i].rl, __ATOMIC_ACQUIRE) : NULL;
}

void kl_gw_worker_close(kl_gw *gw, unsigned worker) {
  if (!gw || !gw->wk || worker >= gw->nworkers) return;
  kl_gw_worker *g = &gw->wk[worker];
  kl_redis_free(g->redis); /* pending decisions are answered (fallback) first */
  kl_rl_worker_free(g->rl);
  g->redis = NULL;
  g->rl = NULL;
}

struct kl_redis *kl_gw_redis(kl_gw *gw, kl_worker *w) {
  kl_gw_worker *g = gw_worker(gw, w);
  char err[256];
  if (!g || !gw->redis || g->failed) return g ? g->redis : NULL;
  if (!g->redis && !(g->redis = kl_redis_new(&w->loop, gw->redis, err, sizeof err))) {
    g->failed = 1;
    keel_log(w->srv, KEEL_LOG_ERROR,
             "redis client unavailable: global limits use their fallback, the cache stays local",
             "error", err, NULL);
  }
  return g->redis;
}

/* The worker's decision context; NULL only when out of memory. */
static kl_rl_worker *rl_worker(kl_gw *gw, kl_worker *w) {
  kl_gw_worker *g = gw_worker(gw, w);
  if (!g) return NULL;
  if (g->rl) return g->rl;
  char err[256];
  kl_rl_worker *rw = kl_rl_worker_new(gw->rl_table, kl_gw_redis(gw, w),
                                      gw->redis ? gw->redis->max_in_flight : 1, err, sizeof err);
  __atomic_store_n(&g->rl, rw, __ATOMIC_RELEASE); /* scrapes read it (gwstats.c) */
  return rw;
}

/* ---- answers ------------------------------------------------------------------------- */

static void add_rl_headers(keel_req *req, const kl_gw_route *r, const kl_rl_decision *d) {
  kl_rl_header h[KL_RL_HEADERS_MAX];
  int n = kl_rl_headers(r->rl, d, h);
  for (int i = 0; i < n; i++) keel_resp_header(req, h[i].name, h[i].value);
}

static void deny(keel_req *req, const kl_gw_route *r, const kl_rl_decision *d) {
  add_rl_headers(req, r, d);
  keel_respond_error(req, d->status ? d->status : 429,
                     d->status == 503 ? "the rate limit cannot be checked now: retry later"
                                      : "rate limit exceeded");
}

/* The route's action, once every policy passed; an allowed rate-limit decision's headers
 * go on the answer. */
static void act(keel_req *req, const kl_gw_route *r, const kl_rl_decision *d,
                const char *tenant) {
  char extra[512];
  size_t n = 0;
  if (d) {
    kl_rl_header h[KL_RL_HEADERS_MAX];
    int k = kl_rl_headers(r->rl, d, h);
    for (int i = 0; i < k; i++) {
      if (r->action != KL_GW_PROXY) {
        keel_resp_header(req, h[i].name, h[i].value);
        continue;
      }
      int w = snprintf(extra + n, sizeof extra - n, "%s: %s\r\n", h[i].name, h[i].value);
      if (w > 0 && (size_t)w < sizeof extra - n) n += (size_t)w;
    }
  }
  if (r->action == KL_GW_PROXY) kl_proxy_start(req, r, extra, n, tenant);
  else r->handler(req, r->handler_ud);
}

/* ---- validation (everything but the schema needs only the head) ------------------------ */

static int media_type_is(keel_str ct, const char *want) {
  size_t n = strlen(want);
  if (!ct.ptr || ct.len < n || strncasecmp(ct.ptr, want, n) != 0) return 0;
  return ct.len == n || ct.ptr[n] == ';' || ct.ptr[n] == ' ' || ct.ptr[n] == '\t';
}

/* 0, or -1 after answering. */
static int validate(keel_req *req, const kl_gw_route *r) {
  keel_str m = keel_req_method(req);
  if (r->v_methods) {
    unsigned mi = kl_stats_method(m.ptr, m.len);
    if (mi == KL_METHODS_N - 1 || !(r->v_methods & (1u << mi))) {
      char allow[128] = "";
      for (unsigned i = 0; i < KL_METHODS_N - 1; i++)
        if (r->v_methods & (1u << i))
          snprintf(allow + strlen(allow), sizeof allow - strlen(allow), "%s%s",
                   allow[0] ? ", " : "", kl_stats_method_name(i));
      keel_resp_header(req, "Allow", allow);
      keel_respond_error(req, 405, "method not allowed on this route");
      return -1;
    }
  }
  if (r->v_nctypes) {
    keel_str ct = keel_req_header(req, "content-type");
    uint32_t i = 0;
    while (i < r->v_nctypes && !media_type_is(ct, r->v_ctypes[i])) i++;
    if (i == r->v_nctypes) {
      keel_respond_error(req, 415, "this Content-Type is not accepted on this route");
      return -1;
    }
  }
  for (uint32_t i = 0; i < r->v_nheaders; i++)
    if (!keel_req_header(req, r->v_headers[i]).len) { /* absent or empty */
      char msg[200];
      snprintf(msg, sizeof msg, "the request must carry the header %s", r->v_headers[i]);
      keel_respond_error(req, 400, msg);
      return -1;
    }
  if (r->schema) { /* the body is all here: the route is not streamed */
    keel_str b = keel_req_body(req);
    kl_jschema_error e;
    if (kl_jschema_validate_arena(r->schema, b.ptr, b.len, &req->conn->w->arena, 0, 0, &e) != 0) {
      char body[1024];
      size_t n = kl_jschema_error_json(&e, body, sizeof body);
      keel_respond(req, e.status, "application/json", body, n < sizeof body ? n : sizeof body - 1);
      return -1;
    }
  }
  return 0;
}

/* ---- rate limits ---------------------------------------------------------------------- */

static size_t hold_body(void *arg, const char *p, size_t len, int end) {
  (void)arg, (void)p, (void)len, (void)end;
  return 0; /* the body waits for the decision */
}
static void hold_drained(void *arg) { (void)arg; }
static void hold_cancel(void *arg) {
  hold *h = arg;
  h->cancelled = 1;
  if (!h->waiting) free(h);
}
static void hold_cancel_id(void *arg, uint64_t id) {
  (void)id;
  hold_cancel(arg);
}
static const kl_stream_ops hold_ops = {hold_body, hold_drained, hold_cancel};

/* Redis decided (or failed and the fallback did). */
static void decided(void *arg, const kl_rl_decision *d) {
  hold *h = arg;
  h->waiting = 0;
  if (h->cancelled) {
    free(h);
    return;
  }
  kl_deferred dd = h->d;
  const kl_gw_route *r = h->r;
  const char *tenant = h->tenant;
  free(h);
  keel_req *req = kl_deferred_req(&dd);
  if (!req) return;
  if (!d->allowed || validate(req, r) != 0) {
    if (!d->allowed) deny(req, r, d);
    kl_deferred_finish(&dd);
    return;
  }
  act(req, r, d, tenant); /* a streamed request: the proxy takes it over (a new handle) */
  kl_deferred_finish(&dd); /* answered here, or a no-op once the proxy has it */
}

/* The bucket key of a request: 0 with *key set, or -1 when the limit does not apply. */
static int rl_key(keel_req *req, const kl_gw_route *r, const char *tenant, const char *apikey,
                  size_t apikey_len, const char **key, size_t *len, char *buf, size_t cap) {
  switch (r->rl_by) {
  case KL_RL_BY_CLIENT:
    *key = kl_conn_peer(req->conn);
    *len = strlen(*key);
    return 0;
  case KL_RL_BY_TENANT:
    *key = tenant;
    *len = strlen(tenant);
    return 0;
  case KL_RL_BY_KEY: { /* never the key itself (it would show in Redis): a digest of it */
    uint64_t h = 1469598103934665603ull; /* FNV-1a, then the tenant: distinct keys stay apart */
    for (size_t i = 0; i < apikey_len; i++) h = (h ^ (unsigned char)apikey[i]) * 1099511628211ull;
    snprintf(buf, cap, "%s.%016llx", tenant, (unsigned long long)h);
    *key = buf;
    *len = strlen(buf);
    return 0;
  }
  case KL_RL_BY_ROUTE:
    *key = "*";
    *len = 1;
    return 0;
  default: {
    keel_str v = keel_req_header(req, r->rl_header);
    if (!v.ptr) return -1; /* no such header: the limit does not apply (documented) */
    *key = v.ptr;
    *len = v.len;
    return 0;
  }
  }
}

void kl_gw_policy_handler(keel_req *req, void *route) {
  const kl_gw_route *r = route;
  kl_worker *w = req->conn->w;
  const char *tenant = "default", *apikey = NULL;
  size_t apikey_len = 0;
  if (r->keys) {
    keel_str a = keel_req_header(req, "authorization"), x = keel_req_header(req, "x-api-key");
    if (!kl_key_from_headers(a.ptr, a.len, x.ptr, x.len, &apikey, &apikey_len) ||
        !(tenant = kl_keyring_tenant(r->keys, apikey, apikey_len))) {
      keel_resp_header(req, "WWW-Authenticate", "Bearer realm=\"keel\"");
      keel_respond_error(req, 401, apikey ? "invalid API key" : "an API key is required "
                                                               "(Authorization: Bearer KEY or X-API-Key)");
      return;
    }
  }
  kl_rl_decision d, *dp = NULL;
  if (r->rl) {
    const char *key;
    size_t len;
    char buf[96];
    kl_rl_worker *rw = rl_worker(r->gw, w);
    if (!rw) {
      keel_respond_error(req, 503, "out of memory");
      return;
    }
    if (rl_key(req, r, tenant, apikey, apikey_len, &key, &len, buf, sizeof buf) == 0) {
      hold *h = calloc(1, sizeof *h);
      if (!h) {
        keel_respond_error(req, 503, "out of memory");
        return;
      }
      h->r = r;
      h->tenant = r->keys ? tenant : NULL;
      h->waiting = 1;
      int now = kl_rl_decide(rw, r->rl, key, len, &d, decided, h);
      if (now == 1) {
        free(h);
        if (!d.allowed) {
          deny(req, r, &d);
          return;
        }
        dp = &d;
      } else { /* Redis answers later: the request waits, its body unread */
        if (r->rt.flags & KL_ROUTE_STREAM) kl_req_stream(req, &h->d, &hold_ops, h);
        else kl_req_defer(req, &h->d, w->srv->cfg.header_timeout_ms, hold_cancel_id, h);
        return;
      }
    }
  }
  if (validate(req, r) != 0) return;
  act(req, r, dp, r->keys ? tenant : NULL);
}
