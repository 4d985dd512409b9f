/* gw.h - the API gateway's configuration: upstreams, routes and their policies (immutable). */
#ifndef KEEL_GATEWAY_GW_H
#define KEEL_GATEWAY_GW_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <stdint.h>
#include <sys/socket.h>

#include "http/server_internal.h"
#include "obs/metrics.h"
#include "keel/keel.h"

/*
 * A gateway (kl_gw) is built from the `upstreams:` and `routes:` sections of the config file
 * and never changes afterwards: a reload builds a new one. What changes while serving (the
 * health of an endpoint, its passive failure count) lives in atomics of the endpoints; what
 * belongs to one worker (connection pools, counters) is in per-worker arrays indexed by
 * worker id, allocated when the server starts (kl_gw_bind).
 */

/** Caps of a gateway: bounded config, bounded tables. */
#define KL_GW_UPSTREAMS_MAX 64
#define KL_GW_ENDPOINTS_MAX 64 /* per upstream, after DNS resolution */
#define KL_GW_ROUTES_MAX 256
#define KL_GW_HANDLERS_MAX 16

/** Load-balancing policies. */
enum { KL_LB_ROUND_ROBIN, KL_LB_LEAST_REQUEST };

/** One address of an upstream. */
typedef struct kl_gw_endpoint {
  char name[160];                 /* "host:port" as configured, for logs and metrics */
  char host[160];                 /* its host: TLS server name and certificate check */
  struct sockaddr_storage addr;   /* written by the resolver under addr_seq (kl_gw_ep_addr) */
  socklen_t addrlen;
  _Atomic uint32_t addr_seq;      /* odd while the resolver rewrites addr */
  uint8_t is_name;                /* configured as a DNS name (re-resolved), not an address */
  _Atomic uint8_t down;           /* the active health check says unhealthy */
  _Atomic uint32_t fails;         /* consecutive failures seen by requests (outlier detection) */
  _Atomic uint64_t ejected_until; /* ms (monotonic): not chosen before this */
  _Atomic uint32_t ejections;     /* times ejected in a row (the ejection time grows with it) */
  _Atomic uint32_t active;        /* requests in progress on it, all workers */
  uint32_t hc_ok, hc_bad;         /* health checker's consecutive results (its thread only) */
} kl_gw_endpoint;

/** A consistent copy of an endpoint's address (the resolver may be rewriting it). */
static inline socklen_t kl_gw_ep_addr(const kl_gw_endpoint *e, struct sockaddr_storage *out) {
  for (;;) {
    uint32_t a = atomic_load_explicit(&e->addr_seq, memory_order_acquire);
    if (a & 1) continue;
    socklen_t n = e->addrlen;
    memcpy(out, &e->addr, sizeof(*out));
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&e->addr_seq, memory_order_relaxed) == a) return n;
  }
}

/** An upstream: a named set of endpoints and how to use them. */
typedef struct kl_gw_upstream {
  char name[64];
  kl_gw_endpoint *eps;
  uint32_t neps;
  uint8_t balance;               /* KL_LB_* */
  uint32_t keepalive;            /* idle connections kept per endpoint per worker */
  uint32_t max_connections;      /* open connections to the upstream, all workers (circuit) */
  uint32_t max_pending;          /* requests waiting for a connection, all workers (circuit) */
  char hc_path[128];             /* active health check: GET this path; "" = off */
  uint32_t hc_interval_ms, hc_timeout_ms, hc_healthy, hc_unhealthy;
  uint32_t outlier_failures;     /* consecutive failures that eject an endpoint; 0 = off */
  uint32_t outlier_eject_ms;     /* first ejection's length (doubles per repeat, max 10x) */
  uint32_t resolve_ms;           /* re-resolve DNS names this often; 0 = only at (re)load */
  struct kl_tls_client_ctx *tls; /* tls: the upstream speaks TLS; NULL: plain */
  char tls_name[160];            /* tls.server_name: SNI and the name checked; "" = the host */
  uint32_t retry_budget_pct;     /* retries at most this % of requests (plus retry_min/s) */
  uint32_t retry_min_per_s;
  _Atomic uint32_t conns;        /* open connections, all workers */
  _Atomic uint32_t pending;      /* requests waiting for a connection, all workers */
  _Atomic uint64_t requests, retries; /* for the retry budget: totals (windowed by readers) */
  _Atomic uint64_t budget_window;     /* ms of the current window */
  _Atomic uint64_t win_requests, win_retries;
  struct kl_up_worker *w;        /* per worker (kl_gw_bind) */
} kl_gw_upstream;

/** What a route does. */
enum { KL_GW_PROXY, KL_GW_HANDLER };

/** One route: a match and an action, with its timeouts and retries. */
typedef struct kl_gw_route {
  kl_route rt;            /* what the HTTP layer sees: handler, flags, the name as its path */
  struct kl_gw *gw;       /* the gateway it belongs to */
  char name[128];         /* metrics label: `name:` or the path ("/api/..." for a prefix) */
  char *host;             /* exact host, "*.example.com" for a suffix, NULL = any */
  char *path;             /* normalised; matched exactly or as a prefix */
  size_t path_len;
  uint8_t prefix;
  uint32_t methods;       /* bit i = kl_stats_method index i; 0 = any method */
  uint8_t action;         /* KL_GW_* */
  int upstream;           /* index into gw->ups (KL_GW_PROXY) */
  keel_handler handler;   /* KL_GW_HANDLER */
  void *handler_ud;
  char handler_name[32];
  uint32_t connect_ms, first_byte_ms, total_ms; /* 0 = none */
  uint32_t retries;       /* further attempts after the first */
  uint32_t retry_backoff_ms;
  uint64_t max_body;      /* 0 = no limit (proxied bodies stream) */
  uint32_t slot;          /* first metrics slot; see kl_gw_slot */
  uint32_t nslots;
  /* Policies, in the order they apply (policy.c). */
  struct kl_keyring *keys; /* auth.api_keys: 401 without one of them */
  struct kl_rl_limit *rl;  /* rate_limit */
  uint8_t rl_by;           /* KL_RL_BY_* */
  char rl_header[64];      /* KL_RL_BY_HEADER: its name */
  uint32_t v_methods;      /* validate.methods (kl_stats_method bits); 0 = any */
  char *v_ctypes[8];       /* validate.content_types (media types, lowercase) */
  uint32_t v_nctypes;
  char *v_headers[8];      /* validate.require_headers */
  uint32_t v_nheaders;
  struct kl_jschema *schema; /* validate.schema: JSON bodies checked (buffered first) */
  uint8_t policies;        /* any of the above: the policy handler runs first */
  uint8_t cache_on;        /* cache: {enabled: true}: GET/HEAD answered from gw->cache */
  uint64_t cache_max_object;
} kl_gw_route;

/** What a rate limit counts by. */
enum { KL_RL_BY_CLIENT, KL_RL_BY_KEY, KL_RL_BY_TENANT, KL_RL_BY_ROUTE, KL_RL_BY_HEADER };

/** A named built-in handler a route may use (`handler: echo`). */
typedef struct kl_gw_handler {
  char name[32];
  keel_handler fn;
  void *ud;
} kl_gw_handler;

/** The gateway. */
typedef struct kl_gw {
  struct kl_redis_config *redis; /* `redis:`; NULL = none (global limits take their fallback) */
  struct kl_rl_table *rl_table;  /* local buckets of every limit */
  struct kl_gw_worker *wk;       /* per worker: Redis client, rate-limit context (policy.c) */
  struct kl_cache *cache;        /* responses of routes with cache: {enabled: true} */
  uint64_t cache_memory;         /* top-level cache.memory */
  uint8_t cache_redis;           /* cache.redis: a shared second tier in `redis:` */
  kl_gw_upstream *ups;
  uint32_t nups;
  kl_gw_route *routes;
  uint32_t nroutes;
  unsigned nworkers;  /* per-worker arrays have this many entries (0 before kl_gw_bind) */
  char *strings;      /* route strings live here */
  /* Reload (kl_server_reload): a replaced gateway is freed once every worker is done with it. */
  struct kl_gw_inflight *inflight; /* per worker: requests holding a route of this gateway */
  uint8_t *released;  /* per worker: it closed its part (pools, Redis) of a retired gateway */
  _Atomic uint8_t retired;
  _Atomic unsigned retire_left; /* workers still to release it */
  struct kl_gw *next_retired;
} kl_gw;

/** Per-worker count, on its own cache line (written by its worker only). */
typedef struct kl_gw_inflight {
  _Atomic uint64_t n;
  char pad[56];
} kl_gw_inflight;

/**
 * Loads the gateway sections of the YAML file `path` (`upstreams:` and `routes:`; other keys
 * belong to keel_config). Handler names resolve against `handlers`. Returns a gateway (with no
 * routes when the file has none) or NULL with "FILE:LINE: what" in err.
 */
kl_gw *kl_gw_load(const char *path, const kl_gw_handler *handlers, size_t nhandlers, char *err,
                  size_t errlen);

/** Frees a gateway no worker uses any more. NULL ok. */
void kl_gw_free(kl_gw *gw);

/** Allocates the per-worker state for `nworkers` workers: 0 or -ENOMEM. */
int kl_gw_bind(kl_gw *gw, unsigned nworkers);

/**
 * Normalises an origin-form path into `out` (room for len bytes; `out` may be `path`: it
 * is never longer; not NUL-terminated): percent-decodes
 * unreserved characters, upper-cases other escapes, merges repeated slashes, removes `.` and
 * `..` segments. Returns the new length, or -1 with *why set when the path is ambiguous
 * (an encoded '/', '\\' or NUL, a bad escape, or `..` above the root): answer 400.
 */
long kl_gw_normalize(const char *path, size_t len, char *out, const char **why);

/**
 * The first route matching (host, method, normalised path), or NULL. When none matches but
 * some route has this path with other methods, *allow lists them ("GET, POST").
 */
const kl_gw_route *kl_gw_match(const kl_gw *gw, const char *host, size_t hlen, const char *m,
                               size_t mlen, const char *path, size_t plen, char *allow,
                               size_t allowlen);

/**
 * Gives new routes of `gw` the metrics slots of the same route (name and methods) in `old`,
 * or `fallback` (KL_METHODS_N slots labelled "_reloaded") when it is new.
 */
void kl_gw_adopt_slots(kl_gw *gw, const kl_gw *old, uint32_t fallback);

/** Worker-side: a request took (+1) or left (-1) a route of `gw`. */
void kl_gw_ref(kl_gw *gw, unsigned worker, int delta);

/**
 * Worker-side, once the worker knows `gw` was replaced and whenever it may be done with it:
 * when none of its requests use it, closes the worker's idle upstream connections and Redis
 * client of it; the last worker to do so frees it. Returns 1 when the worker released it.
 */
int kl_gw_release(kl_gw *gw, unsigned worker, int (*unlink)(void *arg, kl_gw *gw), void *arg);

/** Worker-side: this worker's Redis client of `gw` (made on first use); NULL without `redis:`
 *  or when it could not be made. */
struct kl_redis *kl_gw_redis(kl_gw *gw, kl_worker *w);

/** kl_gw_bind: the per-worker policy state. 0 or -ENOMEM. */
int kl_gw_workers_new(kl_gw *gw, unsigned n);

/** Any thread: worker `i`'s rate-limit context of `gw` (NULL until its first decision). */
const struct kl_rl_worker *kl_gw_worker_rl(const kl_gw *gw, unsigned i);

/** Main thread, at setup: registers the gateway's series (gwstats.c). 0 or negative errno. */
int kl_gw_metrics(keel_server *srv, kl_metrics *m);
/** Frees what kl_gw_metrics allocated. */
void kl_gw_metrics_free(keel_server *srv);

/** Worker-side, as the worker stops: closes its Redis client and rate-limit context. */
void kl_gw_worker_close(kl_gw *gw, unsigned worker);

/** The handler of a gateway route with policies (userdata: the route): auth, rate limit,
 *  validation, then the route's action. */
void kl_gw_policy_handler(keel_req *req, void *route);

/** The metrics slot of a request on route `r` with method index `mi` (kl_stats_method). */
uint32_t kl_gw_slot(const kl_gw_route *r, unsigned mi);

#endif
