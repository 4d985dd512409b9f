/* gwconf.c - loads the gateway's `upstreams:` and `routes:` from the YAML config file. */
#include <errno.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config/config.h"
#include "config/yml.h"
#include "core/keys.h"
#include "gateway/cache.h"
#include "gateway/jschema.h"
#include "gateway/ratelimit.h"
#include "gateway/redis.h"
#include "gateway/gw.h"
#include "gateway/proxy.h"
#include "keel/json.h"
#include "http/stats.h"
#include "http/tls.h"

#define STRINGS_MAX (256 * 1024) /* route hosts and paths, all routes together */

typedef struct gwl {
  const char *path;
  yaml_document_t doc;
  kl_gw *gw;
  const kl_gw_handler *handlers;
  size_t nhandlers;
  size_t strings_used;
  char *err;
  size_t errlen;
} gwl;

__attribute__((format(printf, 3, 4))) static int gerr(gwl *L, const yaml_node_t *n,
                                                     const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = kl_conf_verr(L->err, L->errlen, L->path, n ? n->start_mark.line : 0, fmt, ap);
  va_end(ap);
  return rc;
}

static const yaml_node_t *node(gwl *L, int id) { return yaml_document_get_node(&L->doc, id); }

/* The scalar text of `n`, or NULL after an error naming `what`. */
static const char *scalar(gwl *L, const yaml_node_t *n, const char *what) {
  if (n->type != YAML_SCALAR_NODE) {
    gerr(L, n, "%s: expected a single value", what);
    return NULL;
  }
  const char *s = (const char *)n->data.scalar.value;
  if (strlen(s) != n->data.scalar.length) {
    gerr(L, n, "%s: the value contains a NUL byte", what);
    return NULL;
  }
  return s;
}

static char *strings_dup(gwl *L, const char *s, size_t n) {
  if (L->strings_used + n + 1 > STRINGS_MAX) return NULL;
  char *p = L->gw->strings + L->strings_used;
  memcpy(p, s, n);
  p[n] = '\0';
  L->strings_used += n + 1;
  return p;
}

/* Iterates the pairs of mapping `m`: for each key calls fn(L, name, value node, arg). */
typedef int (*pair_fn)(gwl *L, const char *key, const yaml_node_t *v, void *arg);
static int each_pair(gwl *L, const yaml_node_t *m, const char *what, pair_fn fn, void *arg) {
  if (m->type != YAML_MAPPING_NODE) return gerr(L, m, "%s: expected a mapping", what);
  for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
    const yaml_node_t *k = node(L, p->key), *v = node(L, p->value);
    if (!k || !v) return gerr(L, m, "%s: malformed mapping", what);
    const char *name = scalar(L, k, what);
    if (!name) return -EINVAL;
    for (yaml_node_pair_t *q = m->data.mapping.pairs.start; q < p; q++) {
      const yaml_node_t *k2 = node(L, q->key);
      if (k2 && k2->type == YAML_SCALAR_NODE && strcmp((const char *)k2->data.scalar.value, name) == 0)
        return gerr(L, k, "%s: duplicate key '%s'", what, name);
    }
    int rc = fn(L, name, v, arg);
    if (rc) return rc;
  }
  return 0;
}

static int get_ms(gwl *L, const yaml_node_t *v, const char *what, uint32_t *out) {
  const char *s = scalar(L, v, what);
  uint64_t ms;
  char msg[200];
  if (!s) return -EINVAL;
  if (kl_conf_duration(s, &ms, msg, sizeof msg)) return gerr(L, v, "%s: %s", what, msg);
  if (ms > UINT32_MAX) return gerr(L, v, "%s: too long", what);
  *out = (uint32_t)ms;
  return 0;
}

static int get_uint(gwl *L, const yaml_node_t *v, const char *what, uint64_t min, uint64_t max,
                    uint32_t *out) {
  const char *s = scalar(L, v, what);
  uint64_t u;
  char msg[200];
  if (!s) return -EINVAL;
  if (kl_conf_uint(s, min, max, &u, msg, sizeof msg)) return gerr(L, v, "%s: %s", what, msg);
  *out = (uint32_t)u;
  return 0;
}

static int get_percent(gwl *L, const yaml_node_t *v, const char *what, uint32_t *out) {
  const char *s = scalar(L, v, what);
  if (!s) return -EINVAL;
  size_t n = strlen(s);
  char num[16];
  uint64_t u;
  if (n < 2 || n >= sizeof num || s[n - 1] != '%')
    return gerr(L, v, "%s: '%s' is not a percentage (e.g. 20%%)", what, s);
  memcpy(num, s, n - 1);
  num[n - 1] = '\0';
  if (kl_conf_uint(num, 0, 1000, &u, NULL, 0))
    return gerr(L, v, "%s: '%s' is not a percentage in 0%%..1000%%", what, s);
  *out = (uint32_t)u;
  return 0;
}

/* ---- upstreams ------------------------------------------------------------------------ */

/* Resolves "host:port" into one or more endpoints (every address DNS gives, up to the cap). */
static int add_endpoints(gwl *L, kl_gw_upstream *u, const yaml_node_t *v) {
  const char *s = scalar(L, v, "endpoints");
  char msg[256];
  if (!s) return -EINVAL;
  if (kl_conf_hostport(s, msg, sizeof msg)) return gerr(L, v, "endpoints: %s", msg);
  char host[160];
  const char *colon = strrchr(s, ':');
  size_t hl = (size_t)(colon - s);
  if (s[0] == '[') {
    memcpy(host, s + 1, hl - 2);
    host[hl - 2] = '\0';
  } else {
    memcpy(host, s, hl);
    host[hl] = '\0';
  }
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
  int rc = getaddrinfo(host, colon + 1, &hints, &res);
  if (rc) return gerr(L, v, "endpoints: cannot resolve '%s': %s", s, gai_strerror(rc));
  for (struct addrinfo *a = res; a; a = a->ai_next) {
    if (u->neps >= KL_GW_ENDPOINTS_MAX) {
      freeaddrinfo(res);
      return gerr(L, v, "endpoints: more than %d addresses", KL_GW_ENDPOINTS_MAX);
    }
    kl_gw_endpoint *e = &u->eps[u->neps++];
    snprintf(e->name, sizeof e->name, "%s", s);
    snprintf(e->host, sizeof e->host, "%s", host);
    struct in6_addr probe;
    e->is_name = inet_pton(AF_INET, host, &probe) != 1 && inet_pton(AF_INET6, host, &probe) != 1;
    memcpy(&e->addr, a->ai_addr, a->ai_addrlen);
    e->addrlen = a->ai_addrlen;
    break; /* the first address per name (re-resolved every `resolve`, health.c) */
  }
  freeaddrinfo(res);
  return 0;
}

static int health_pair(gwl *L, const char *k, const yaml_node_t *v, void *arg) {
  kl_gw_upstream *u = arg;
  if (!strcmp(k, "path")) {
    const char *s = scalar(L, v, "health_check.path");
    if (!s) return -EINVAL;
    if (s[0] != '/' || strlen(s) >= sizeof u->hc_path || strpbrk(s, " \r\n\t"))
      return gerr(L, v, "health_check.path: '%s' must be a path starting with '/'", s);
    snprintf(u->hc_path, sizeof u->hc_path, "%s", s);
    return 0;
  }
  if (!strcmp(k, "interval")) return get_ms(L, v, "health_check.interval", &u->hc_interval_ms);
  if (!strcmp(k, "timeout")) return get_ms(L, v, "health_check.timeout", &u->hc_timeout_ms);
  if (!strcmp(k, "healthy")) return get_uint(L, v, "health_check.healthy", 1, 100, &u->hc_healthy);
  if (!strcmp(k, "unhealthy"))
    return get_uint(L, v, "health_check.unhealthy", 1, 100, &u->hc_unhealthy);
  return gerr(L, v, "health_check: unknown key '%s' (path, interval, timeout, healthy, unhealthy)", k);
}

static int outlier_pair(gwl *L, const char *k, const yaml_node_t *v, void *arg) {
  kl_gw_upstream *u = arg;
  if (!strcmp(k, "failures")) return get_uint(L, v, "outlier.failures", 0, 1000, &u->outlier_failures);
  if (!strcmp(k, "ejection")) return get_ms(L, v, "outlier.ejection", &u->outlier_eject_ms);
  return gerr(L, v, "outlier: unknown key '%s' (failures, ejection)", k);
}

static int budget_pair(gwl *L, const char *k, const yaml_node_t *v, void *arg) {
  kl_gw_upstream *u = arg;
  if (!strcmp(k, "percent")) return get_percent(L, v, "retry_budget.percent", &u->retry_budget_pct);
  if (!strcmp(k, "min_per_second"))
    return get_uint(L, v, "retry_budget.min_per_second", 0, 100000, &u->retry_min_per_s);
  return gerr(L, v, "retry_budget: unknown key '%s' (percent, min_per_second)", k);
}

typedef struct tls_ctx {
  const char *ca;
  int verify;
  bool on;
} tls_ctx;

static int tls_pair(gwl *L, const char *k, const yaml_node_t *v, void *arg) {
  void **a = arg;
  kl_gw_upstream *u = a[0];
  tls_ctx *t = a[1];
  const char *s = scalar(L, v, "tls");
  if (!s) return -EINVAL;
  if (!strcmp(k, "ca")) t->ca = s;
  else if (!strcmp(k, "server_name")) {
    if (!s[0] || strlen(s) >= sizeof u->tls_name) return gerr(L, v, "tls.server_name: 1..159 characters");
    snprintf(u->tls_name, sizeof u->tls_name, "%s", s);
  } else if (!strcmp(k, "verify")) {
    if (!strcmp(s, "true") || !strcmp(s, "on")) t->verify = 1;
    else if (!strcmp(s, "false") || !strcmp(s, "off")) t->verify = 0;
    else return gerr(L, v, "tls.verify: '%s' is not true or false", s);
  } else {
    return gerr(L, v, "tls: unknown key '%s' (ca, verify, server_name)", k);
  }
  return 0;
}

static int load_upstream_tls(gwl *L, kl_gw_upstream *u, const yaml_node_t *v) {
  tls_ctx t = {.verify = 1, .on = true};
  if (v->type == YAML_SCALAR_NODE) {
    const char *s = scalar(L, v, "tls");
    if (!s) return -EINVAL;
    if (!strcmp(s, "false") || !strcmp(s, "off")) return 0;
    if (strcmp(s, "true") != 0 && strcmp(s, "on") != 0) return gerr(L, v, "tls: true, false or a mapping");
  } else {
    void *a[2] = {u, &t};
    int rc = each_pair(L, v, "tls", tls_pair, a);
    if (rc) return rc;
  }
  char err[300];
  if (!(u->tls = kl_tls_client_ctx_new(t.ca, t.verify, err, sizeof err)))
    return gerr(L, v, "tls: %s", err);
  return 0;
}

static int upstream_pair(gwl *L, const char *k, const yaml_node_t *v, void *arg) {
  kl_gw_upstream *u = arg;
  if (!strcmp(k, "tls")) return load_upstream_tls(L, u, v);
  if (!strcmp(k, "endpoints")) {
    if (v->type == YAML_SCALAR_NODE) return add_endpoints(L, u, v);
    if (v->type != YAML_SEQUENCE_NODE) return gerr(L, v, "endpoints: expected a list of HOST:PORT");
    for (yaml_node_item_t *i = v->data.sequence.items.start; i < v->data.sequence.items.top; i++) {
      int rc = add_endpoints(L, u, node(L, *i));
      if (rc) return rc;
    }
    return 0;
  }
  if (!strcmp(k, "balance")) {
    const char *s = scalar(L, v, "balance");
    if (!s) return -EINVAL;
    if (!strcmp(s, "round_robin")) u->balance = KL_LB_ROUND_ROBIN;
    else if (!strcmp(s, "least_request")) u->balance = KL_LB_LEAST_REQUEST;
    else return gerr(L, v, "balance: '%s' is not one of round_robin|least_request", s);
    return 0;
  }
  if (!strcmp(k, "keepalive")) return get_uint(L, v, "keepalive", 0, 10000, &u->keepalive);
  if (!strcmp(k, "resolve")) return get_ms(L, v, "resolve", &u->resolve_ms);
  if (!strcmp(k, "max_connections"))
    return get_uint(L, v, "max_connections", 1, 1000000, &u->max_connections);
  if (!strcmp(k, "max_pending")) return get_uint(L, v, "max_pending", 0, 1000000, &u->max_pending);
  if (!strcmp(k, "health_check")) return each_pair(L, v, "health_check", health_pair, u);
  if (!strcmp(k, "outlier")) return each_pair(L, v, "outlier", outlier_pair, u);
  if (!strcmp(k, "retry_budget")) return each_pair(L, v, "retry_budget", budget_pair, u);
  return gerr(L, v,
              "upstream '%s': unknown key '%s' (endpoints, balance, keepalive, max_connections, "
              "max_pending, health_check, outlier, retry_budget, tls, resolve)",
              u->name, k);
}

static int upstreams_pair(gwl *L, const char *name, const yaml_node_t *v, void *arg) {
  (void)arg;
  kl_gw *gw = L->gw;
  if (gw->nups >= KL_GW_UPSTREAMS_MAX) return gerr(L, v, "more than %d upstreams", KL_GW_UPSTREAMS_MAX);
  if (!name[0] || strlen(name) >= sizeof gw->ups[0].name)
    return gerr(L, v, "upstreams: '%s' is not a usable name", name);
  kl_gw_upstream *u = &gw->ups[gw->nups];
  memset(u, 0, sizeof *u);
  snprintf(u->name, sizeof u->name, "%s", name);
  u->eps = calloc(KL_GW_ENDPOINTS_MAX, sizeof *u->eps);
  if (!u->eps) return gerr(L, v, "out of memory");
  gw->nups++;
  u->keepalive = 32;
  u->resolve_ms = 30000;
  u->max_connections = 10000;
  u->max_pending = 10000;
  u->hc_interval_ms = 5000;
  u->hc_timeout_ms = 1000;
  u->hc_healthy = 2;
  u->hc_unhealthy = 3;
  u->outlier_failures = 5;
  u->outlier_eject_ms = 10000;
  u->retry_budget_pct = 20;
  u->retry_min_per_s = 3;
  int rc = each_pair(L, v, name, upstream_pair, u);
  if (rc) return rc;
  if (u->neps == 0) return gerr(L, v, "upstream '%s' has no endpoints", name);
  return 0;
}

/* ---- routes --------------------------------------------------------------------------- */

static int route_methods(gwl *L, kl_gw_route *r, const yaml_node_t *v) {
  if (v->type != YAML_SEQUENCE_NODE) return gerr(L, v, "methods: expected a list, e.g. [GET, POST]");
  for (yaml_node_item_t *i = v->data.sequence.items.start; i < v->data.sequence.items.top; i++) {
    const yaml_node_t *n = node(L, *i);
    const char *s = n ? scalar(L, n, "methods") : NULL;
    if (!s) return -EINVAL;
    unsigned mi = kl_stats_method(s, strlen(s));
    if (mi == KL_METHODS_N - 1)
      return gerr(L, n, "methods: '%s' is not one of GET, HEAD, POST, PUT, DELETE, CONNECT, "
                        "OPTIONS, TRACE, PATCH", s);
    r->methods |= 1u << mi;
  }
  return 0;
}

static int timeouts_pair(gwl *L, const char *k, const yaml_node_t *v, void *arg) {
  kl_gw_route *r = arg;
  if (!strcmp(k, "connect")) return get_ms(L, v, "timeouts.connect", &r->connect_ms);
  if (!strcmp(k, "first_byte")) return get_ms(L, v, "timeouts.first_byte", &r->first_byte_ms);
  if (!strcmp(k, "total")) return get_ms(L, v, "timeouts.total", &r->total_ms);
  return gerr(L, v, "timeouts: unknown key '%s' (connect, first_byte, total)", k);
}

static int retries_pair(gwl *L, const char *k, const yaml_node_t *v, void *arg) {
  kl_gw_route *r = arg;
  if (!strcmp(k, "attempts")) return get_uint(L, v, "retries.attempts", 0, 10, &r->retries);
  if (!strcmp(k, "backoff")) return get_ms(L, v, "retries.backoff", &r->retry_backoff_ms);
  return gerr(L, v, "retries: unknown key '%s' (attempts, backoff)", k);
}

/* ---- policies --------------------------------------------------------------------------- */

static int auth_pair(gwl *L, const char *k, const yaml_node_t *v, void *arg) {
  kl_gw_route *r = arg;
  if (!strcmp(k, "api_keys")) {
    const char *s = scalar(L, v, "auth.api_keys");
    char msg[300];
    if (!s) return -EINVAL;
    kl_keyring *ring = kl_keyring_load(s, msg, sizeof msg);
    if (!ring) return gerr(L, v, "auth.api_keys: %s", msg);
    r->keys = ring;
    return 0;
  }
  return gerr(L, v, "auth: unknown key '%s' (api_keys)", k);
}

typedef struct rl_ctx {
  kl_gw_route *r;
  uint32_t count, period_ms, burst, replicas;
  int scope, on_error;
  bool has_rate;
} rl_ctx;

static int rl_pair(gwl *L, const char *k, const yaml_node_t *v, void *arg) {
  rl_ctx *c = arg;
  const char *s = scalar(L, v, "rate_limit");
  if (!s) return -EINVAL;
  if (!strcmp(k, "rate")) {
    if (kl_rl_parse_rate(s, &c->count, &c->period_ms) != 0)
      return gerr(L, v, "rate_limit.rate: '%s' is not N/s, N/min or N/h", s);
    c->has_rate = true;
    return 0;
  }
  if (!strcmp(k, "burst")) return get_uint(L, v, "rate_limit.burst", 1, 100000000, &c->burst);
  if (!strcmp(k, "replicas")) return get_uint(L, v, "rate_limit.replicas", 1, 10000, &c->replicas);
  if (!strcmp(k, "by")) {
    static const char *const by[] = {"client", "key", "tenant", "route"};
    for (unsigned i = 0; i < 4; i++)
      if (!strcmp(s, by[i])) {
        c->r->rl_by = (uint8_t)i;
        return 0;
      }
    if (!strncmp(s, "header:", 7) && s[7] && strlen(s + 7) < sizeof c->r->rl_header) {
      c->r->rl_by = KL_RL_BY_HEADER;
      snprintf(c->r->rl_header, sizeof c->r->rl_header, "%s", s + 7);
      return 0;
    }
    return gerr(L, v, "rate_limit.by: '%s' is not one of client|key|tenant|route|header:NAME", s);
  }
  if (!strcmp(k, "scope")) {
    if (!strcmp(s, "local")) c->scope = KL_RL_LOCAL;
    else if (!strcmp(s, "global")) c->scope = KL_RL_GLOBAL;
    else return gerr(L, v, "rate_limit.scope: '%s' is not one of local|global", s);
    return 0;
  }
  if (!strcmp(k, "on_redis_error")) {
    if (!strcmp(s, "open")) c->on_error = KL_RL_FAIL_OPEN;
    else if (!strcmp(s, "closed")) c->on_error = KL_RL_FAIL_CLOSED;
    else if (!strcmp(s, "local")) c->on_error = KL_RL_FAIL_LOCAL;
    else return gerr(L, v, "rate_limit.on_redis_error: '%s' is not one of open|closed|local", s);
    return 0;
  }
  return gerr(L, v, "rate_limit: unknown key '%s' (rate, burst, by, scope, on_redis_error, replicas)", k);
}

/* Parses rate_limit: into c; the limit is built once the whole route is known (finish_rate_limit). */
static int load_rate_limit(gwl *L, rl_ctx *c, const yaml_node_t *v) {
  int e = each_pair(L, v, "rate_limit", rl_pair, c);
  if (e) return e;
  if (!c->has_rate) return gerr(L, v, "rate_limit: needs rate: (e.g. 100/s)");
  if (!c->burst) c->burst = c->count;
  return 0;
}

static int finish_rate_limit(gwl *L, kl_gw_route *r, rl_ctx c, const yaml_node_t *v) {
  r->rl = calloc(1, sizeof *r->rl);
  if (!r->rl) return gerr(L, v, "out of memory");
  /* The Redis key names the limit: the route's name, made of safe characters. */
  char name[64];
  size_t n = 0;
  for (const char *p = r->name[0] ? r->name : r->path; *p && n < sizeof name - 1; p++)
    name[n++] = (char)(((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                        (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_')
                           ? *p : '_');
  name[n] = '\0';
  char msg[200];
  if (kl_rl_limit_init(r->rl, name[0] ? name : "route", L->gw->nroutes, c.count, c.period_ms,
                       c.burst, c.scope, c.on_error, c.replicas, msg, sizeof msg) != 0)
    return gerr(L, v, "rate_limit: %s", msg);
  return 0;
}

/* Writes YAML node `n` as JSON text (a schema written inline): plain scalars that read as
 * numbers, true, false or null stay bare, everything else becomes a string. */
static int yaml_json(gwl *L, const yaml_node_t *n, char *out, size_t cap, size_t *len, int depth) {
  if (depth > 64) return gerr(L, n, "validate.schema: nested too deep");
#define EMIT(s, l)                                                                             \
  do {                                                                                         \
    if (*len + (l) >= cap) return gerr(L, n, "validate.schema: too large");                   \
    memcpy(out + *len, (s), (l));                                                              \
    *len += (l);                                                                               \
  } while (0)
  if (n->type == YAML_SCALAR_NODE) {
    const char *s = (const char *)n->data.scalar.value;
    size_t l = n->data.scalar.length;
    char *end = NULL;
    int bare = n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
               (!strcmp(s, "true") || !strcmp(s, "false") || !strcmp(s, "null") ||
                (l && (strtod(s, &end), end == s + l) && strspn(s, "0123456789+-.eE") == l));
    if (bare) {
      EMIT(s, l);
      return 0;
    }
    if (*len + l * 6 + 3 >= cap) return gerr(L, n, "validate.schema: too large");
    *len += keel_json_quote(s, l, out + *len, cap - *len);
    return 0;
  }
  if (n->type == YAML_SEQUENCE_NODE) {
    EMIT("[", 1);
    for (yaml_node_item_t *i = n->data.sequence.items.start; i < n->data.sequence.items.top; i++) {
      if (i != n->data.sequence.items.start) EMIT(",", 1);
      if (yaml_json(L, node(L, *i), out, cap, len, depth + 1)) return -EINVAL;
    }
    EMIT("]", 1);
    return 0;
  }
  EMIT("{", 1);
  for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
    if (p != n->data.mapping.pairs.start) EMIT(",", 1);
    const yaml_node_t *k = node(L, p->key);
    if (k->type != YAML_SCALAR_NODE) return gerr(L, k, "validate.schema: keys must be strings");
    if (*len + k->data.scalar.length * 6 + 4 >= cap) return gerr(L, n, "validate.schema: too large");
    *len += keel_json_quote((const char *)k->data.scalar.value, k->data.scalar.length,
                            out + *len, cap - *len);
    EMIT(":", 1);
    if (yaml_json(L, node(L, p->value), out, cap, len, depth + 1)) return -EINVAL;
  }
  EMIT("}", 1);
  return 0;
#undef EMIT
}

static int load_schema(gwl *L, kl_gw_route *r, const yaml_node_t *v) {
  size_t cap = 1 << 20, len = 0;
  char *text = malloc(cap), msg[300];
  if (!text) return gerr(L, v, "out of memory");
  int rc = 0;
  if (v->type == YAML_SCALAR_NODE) { /* a file */
    const char *path = scalar(L, v, "validate.schema");
    FILE *f = path ? fopen(path, "rbe") : NULL;
    if (!f) rc = path ? gerr(L, v, "validate.schema: %s: %s", path, strerror(errno)) : -EINVAL;
    else {
      len = fread(text, 1, cap, f);
      if (len == cap) rc = gerr(L, v, "validate.schema: %s: larger than 1 MiB", path);
      fclose(f);
    }
  } else {
    rc = yaml_json(L, v, text, cap, &len, 0);
  }
  if (!rc && kl_jschema_compile(text, len, &r->schema, msg, sizeof msg) != 0)
    rc = gerr(L, v, "validate.schema: %s", msg);
  free(text);
  return rc;
}

/* A list of words (methods, media types, header names) into `out` (at most 8). */
static int word_list(gwl *L, const yaml_node_t *v, const char *what, char **out, uint32_t *n,
                     int lower) {
  if (v->type != YAML_SEQUENCE_NODE) return gerr(L, v, "%s: expected a list", what);
  for (yaml_node_item_t *i = v->data.sequence.items.start; i < v->data.sequence.items.top; i++) {
    const yaml_node_t *e = node(L, *i);
    const char *s = e ? scalar(L, e, what) : NULL;
    if (!s) return -EINVAL;
    if (*n == 8) return gerr(L, e, "%s: at most 8", what);
    if (!s[0] || strlen(s) > 127 || strpbrk(s, " \t\r\n,;"))
      return gerr(L, e, "%s: '%s' is not a single token", what, s);
    char *d = strings_dup(L, s, strlen(s));
    if (!d) return gerr(L, e, "routes: too much text");
    for (char *p = d; lower && *p; p++)
      if (*p >= 'A' && *p <= 'Z') *p = (char)(*p - 'A' + 'a');
    out[(*n)++] = d;
  }
  return 0;
}

static int validate_pair(gwl *L, const char *k, const yaml_node_t *v, void *arg) {
  kl_gw_route *r = arg;
  if (!strcmp(k, "methods")) {
    uint32_t save = r->methods;
    r->methods = 0;
    int e = route_methods(L, r, v);
    r->v_methods = r->methods;
    r->methods = save;
    return e;
  }
  if (!strcmp(k, "content_types")) return word_list(L, v, "validate.content_types", r->v_ctypes, &r->v_nctypes, 1);
  if (!strcmp(k, "require_headers"))
    return word_list(L, v, "validate.require_headers", r->v_headers, &r->v_nheaders, 0);
  if (!strcmp(k, "max_body")) {
    const char *s = scalar(L, v, "validate.max_body");
    char msg[200];
    uint64_t b;
    if (!s) return -EINVAL;
    if (kl_conf_size(s, &b, msg, sizeof msg)) return gerr(L, v, "validate.max_body: %s", msg);
    if (!r->max_body || b < r->max_body) r->max_body = b;
    return 0;
  }
  if (!strcmp(k, "schema")) return load_schema(L, r, v);
  return gerr(L, v, "validate: unknown key '%s' (methods, content_types, max_body, require_headers, schema)", k);
}

static int cache_pair(gwl *L, const char *k, const yaml_node_t *v, void *arg) {
  kl_gw_route *r = arg;
  const char *s = scalar(L, v, "cache");
  char msg[200];
  if (!s) return -EINVAL;
  if (!strcmp(k, "enabled")) {
    if (!strcmp(s, "true") || !strcmp(s, "on")) r->cache_on = 1;
    else if (!strcmp(s, "false") || !strcmp(s, "off")) r->cache_on = 0;
    else return gerr(L, v, "cache.enabled: '%s' is not true or false", s);
    return 0;
  }
  if (!strcmp(k, "max_object"))
    return kl_conf_size(s, &r->cache_max_object, msg, sizeof msg) ? gerr(L, v, "cache.max_object: %s", msg) : 0;
  return gerr(L, v, "cache: unknown key '%s' (enabled, max_object)", k);
}

typedef struct route_ctx {
  kl_gw_route *r;
  rl_ctx rl;                   /* rate_limit:, built at the end of the route */
  const yaml_node_t *rl_node;
  const yaml_node_t *upstream; /* resolved after all upstreams are known */
  bool has_path;
} route_ctx;

static int set_path(gwl *L, route_ctx *rc, const yaml_node_t *v, int prefix) {
  kl_gw_route *r = rc->r;
  const char *s = scalar(L, v, prefix ? "prefix" : "path");
  if (!s) return -EINVAL;
  if (rc->has_path) return gerr(L, v, "a route has either path: or prefix:, once");
  size_t n = strlen(s);
  if (n == 0 || s[0] != '/' || n > 1024)
    return gerr(L, v, "%s: '%s' must start with '/'", prefix ? "prefix" : "path", s);
  char *norm = malloc(n + 1);
  const char *why = NULL;
  long nl = norm ? kl_gw_normalize(s, n, norm, &why) : -1;
  if (nl < 0) {
    free(norm);
    return gerr(L, v, "%s: '%s': %s", prefix ? "prefix" : "path", s, why ? why : "out of memory");
  }
  if ((size_t)nl != n || memcmp(norm, s, n) != 0) {
    int e = gerr(L, v, "%s: '%s' is not normalised (write '%.*s')", prefix ? "prefix" : "path", s,
                 (int)nl, norm);
    free(norm);
    return e;
  }
  free(norm);
  r->path = strings_dup(L, s, n);
  if (!r->path) return gerr(L, v, "routes: too much text");
  r->path_len = n;
  r->prefix = (uint8_t)prefix;
  rc->has_path = true;
  return 0;
}

static int route_pair(gwl *L, const char *k, const yaml_node_t *v, void *arg) {
  route_ctx *rc = arg;
  kl_gw_route *r = rc->r;
  if (!strcmp(k, "path")) return set_path(L, rc, v, 0);
  if (!strcmp(k, "prefix")) return set_path(L, rc, v, 1);
  if (!strcmp(k, "name")) {
    const char *s = scalar(L, v, "name");
    if (!s) return -EINVAL;
    if (!s[0] || strlen(s) >= sizeof r->name) return gerr(L, v, "name: 1 to %zu characters", sizeof r->name - 1);
    snprintf(r->name, sizeof r->name, "%s", s);
    return 0;
  }
  if (!strcmp(k, "host")) {
    const char *s = scalar(L, v, "host");
    if (!s) return -EINVAL;
    size_t n = strlen(s);
    if (n == 0 || n > 253 || strpbrk(s, " /\r\n\t:"))
      return gerr(L, v, "host: '%s' is not a host name (or *.suffix)", s);
    r->host = strings_dup(L, s, n);
    if (!r->host) return gerr(L, v, "routes: too much text");
    for (char *p = r->host; *p; p++)
      if (*p >= 'A' && *p <= 'Z') *p = (char)(*p - 'A' + 'a');
    return 0;
  }
  if (!strcmp(k, "methods")) return route_methods(L, r, v);
  if (!strcmp(k, "upstream")) {
    if (r->action == KL_GW_HANDLER) return gerr(L, v, "a route has either upstream: or handler:");
    r->action = KL_GW_PROXY;
    rc->upstream = v;
    return 0;
  }
  if (!strcmp(k, "handler")) {
    if (rc->upstream) return gerr(L, v, "a route has either upstream: or handler:");
    const char *s = scalar(L, v, "handler");
    if (!s) return -EINVAL;
    for (size_t i = 0; i < L->nhandlers; i++)
      if (!strcmp(L->handlers[i].name, s)) {
        r->action = KL_GW_HANDLER;
        r->handler = L->handlers[i].fn;
        r->handler_ud = L->handlers[i].ud;
        snprintf(r->handler_name, sizeof r->handler_name, "%s", s);
        return 0;
      }
    char names[256] = "";
    for (size_t i = 0; i < L->nhandlers; i++)
      snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "",
               L->handlers[i].name);
    return gerr(L, v, "handler: '%s' is not a built-in handler (%s)", s, names);
  }
  if (!strcmp(k, "timeouts")) return each_pair(L, v, "timeouts", timeouts_pair, r);
  if (!strcmp(k, "auth")) return each_pair(L, v, "auth", auth_pair, r);
  if (!strcmp(k, "rate_limit")) {
    rc->rl = (rl_ctx){.r = r, .replicas = 1, .scope = KL_RL_LOCAL, .on_error = KL_RL_FAIL_LOCAL};
    rc->rl_node = v;
    return load_rate_limit(L, &rc->rl, v);
  }
  if (!strcmp(k, "validate")) return each_pair(L, v, "validate", validate_pair, r);
  if (!strcmp(k, "cache")) {
    r->cache_on = 1; /* a cache: mapping turns it on unless it says enabled: false */
    return each_pair(L, v, "cache", cache_pair, r);
  }
  if (!strcmp(k, "retries")) return each_pair(L, v, "retries", retries_pair, r);
  if (!strcmp(k, "max_body")) {
    const char *s = scalar(L, v, "max_body");
    char msg[200];
    if (!s) return -EINVAL;
    if (kl_conf_size(s, &r->max_body, msg, sizeof msg)) return gerr(L, v, "max_body: %s", msg);
    return 0;
  }
  return gerr(L, v,
              "route: unknown key '%s' (name, host, path, prefix, methods, upstream, handler, "
              "timeouts, retries, max_body, auth, rate_limit, validate, cache)",
              k);
}

static int load_route(gwl *L, const yaml_node_t *v) {
  kl_gw *gw = L->gw;
  if (gw->nroutes >= KL_GW_ROUTES_MAX) return gerr(L, v, "more than %d routes", KL_GW_ROUTES_MAX);
  kl_gw_route *r = &gw->routes[gw->nroutes++];
  memset(r, 0, sizeof *r);
  r->action = 255;
  r->upstream = -1;
  r->connect_ms = 2000;
  r->first_byte_ms = 30000;
  r->total_ms = 0;
  r->retries = 1;
  r->retry_backoff_ms = 25;
  route_ctx rc = {.r = r};
  int e = each_pair(L, v, "route", route_pair, &rc);
  if (e) return e;
  if (!rc.has_path) return gerr(L, v, "route: needs path: (exact) or prefix:");
  if (r->action == 255) return gerr(L, v, "route: needs upstream: or handler:");
  if (rc.upstream) {
    const char *s = scalar(L, rc.upstream, "upstream");
    if (!s) return -EINVAL;
    for (uint32_t i = 0; i < gw->nups; i++)
      if (!strcmp(gw->ups[i].name, s)) r->upstream = (int)i;
    if (r->upstream < 0) return gerr(L, rc.upstream, "upstream: no upstream named '%s'", s);
  }
  if (!r->name[0]) snprintf(r->name, sizeof r->name, "%s%s", r->path, r->prefix ? "*" : "");
  if (rc.rl_node && (e = finish_rate_limit(L, r, rc.rl, rc.rl_node)) != 0) return e;
  if (r->cache_on && r->action != KL_GW_PROXY)
    return gerr(L, v, "cache: only routes with an upstream are cached");
  if (!r->cache_max_object) r->cache_max_object = 1 << 20;
  if (r->rl && r->rl->scope == KL_RL_GLOBAL && !gw->redis)
    return gerr(L, v, "rate_limit: scope: global needs a top-level redis: {address: ...}");
  if (r->rl && (r->rl_by == KL_RL_BY_KEY || r->rl_by == KL_RL_BY_TENANT) && !r->keys)
    return gerr(L, v, "rate_limit: by: key and by: tenant need auth: {api_keys: ...}");
  r->policies = r->keys || r->rl || r->v_methods || r->v_nctypes || r->v_nheaders || r->schema;
  r->gw = gw;
  kl_route *rt = &r->rt; /* what the HTTP layer dispatches */
  rt->method = (char *)"*";
  rt->method_len = 1;
  rt->path = r->name;
  rt->path_len = strlen(r->name);
  rt->gw = r;
  if (r->action == KL_GW_PROXY) {
    rt->handler = kl_proxy_handler;
    rt->userdata = r;
    /* Streamed, unless a schema must see the whole body first. */
    rt->flags = (uint8_t)(r->schema ? 0 : KL_ROUTE_STREAM);
  } else {
    rt->handler = r->handler;
    rt->userdata = r->handler_ud;
  }
  rt->body_max = r->max_body; /* streamed: its only cap; buffered: under limits.body */
  if (r->policies) {
    rt->handler = kl_gw_policy_handler;
    rt->userdata = r;
  }
  return 0;
}

static int circuit_pair(gwl *L, const char *k, const yaml_node_t *v, void *arg) {
  kl_redis_config *c = arg;
  if (!strcmp(k, "failures")) return get_uint(L, v, "redis.circuit.failures", 1, 1000, &c->circuit_failures);
  if (!strcmp(k, "cooldown")) return get_ms(L, v, "redis.circuit.cooldown", &c->circuit_cooldown_ms);
  return gerr(L, v, "redis.circuit: unknown key '%s' (failures, cooldown)", k);
}

static int redis_pair(gwl *L, const char *k, const yaml_node_t *v, void *arg) {
  kl_redis_config *c = arg;
  char msg[300];
  if (!strcmp(k, "circuit")) return each_pair(L, v, "redis.circuit", circuit_pair, c);
  const char *s = scalar(L, v, "redis");
  if (!s) return -EINVAL;
  if (!strcmp(k, "address"))
    return kl_redis_config_set_address(c, s, msg, sizeof msg) ? gerr(L, v, "redis.address: %s", msg) : 0;
  if (!strcmp(k, "password_file"))
    return kl_redis_config_read_password(c, s, msg, sizeof msg) ? gerr(L, v, "redis.password_file: %s", msg) : 0;
  if (!strcmp(k, "timeout")) return get_ms(L, v, "redis.timeout", &c->timeout_ms);
  if (!strcmp(k, "max_in_flight")) return get_uint(L, v, "redis.max_in_flight", 1, 100000, &c->max_in_flight);
  return gerr(L, v, "redis: unknown key '%s' (address, password_file, timeout, max_in_flight, circuit)", k);
}

static int top_cache_pair(gwl *L, const char *k, const yaml_node_t *v, void *arg) {
  kl_gw *gw = arg;
  const char *s = scalar(L, v, "cache");
  char msg[200];
  if (!s) return -EINVAL;
  if (!strcmp(k, "memory"))
    return kl_conf_size(s, &gw->cache_memory, msg, sizeof msg) ? gerr(L, v, "cache.memory: %s", msg) : 0;
  if (!strcmp(k, "redis")) {
    if (!strcmp(s, "true") || !strcmp(s, "on")) gw->cache_redis = 1;
    else if (strcmp(s, "false") != 0 && strcmp(s, "off") != 0) return gerr(L, v, "cache.redis: '%s' is not true or false", s);
    return 0;
  }
  return gerr(L, v, "cache: unknown key '%s' (memory, redis)", k);
}

static int top_pair(gwl *L, const char *k, const yaml_node_t *v, void *arg) {
  (void)arg;
  if (!strcmp(k, "cache")) return each_pair(L, v, "cache", top_cache_pair, L->gw);
  if (!strcmp(k, "redis")) {
    kl_gw *gw = L->gw;
    if (!(gw->redis = calloc(1, sizeof *gw->redis))) return gerr(L, v, "out of memory");
    kl_redis_config_init(gw->redis);
    int rc = each_pair(L, v, "redis", redis_pair, gw->redis);
    if (!rc && !gw->redis->port) return gerr(L, v, "redis: needs address: HOST:PORT");
    return rc;
  }
  if (!strcmp(k, "upstreams")) {
    if (v->type == YAML_SCALAR_NODE && v->data.scalar.length == 0) return 0;
    return each_pair(L, v, "upstreams", upstreams_pair, NULL);
  }
  return 0; /* keel_config's keys and `routes` (after the upstreams they name) */
}

static int load_doc(gwl *L) {
  const yaml_node_t *root = yaml_document_get_root_node(&L->doc);
  if (!root || root->type != YAML_MAPPING_NODE) return 0; /* keel_config reported it */
  int rc = each_pair(L, root, "config", top_pair, NULL);
  if (rc) return rc;
  for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
    const yaml_node_t *k = node(L, p->key), *v = node(L, p->value);
    if (strcmp((const char *)k->data.scalar.value, "routes") != 0) continue;
    if (v->type == YAML_SCALAR_NODE && v->data.scalar.length == 0) continue;
    if (v->type != YAML_SEQUENCE_NODE) return gerr(L, v, "routes: expected a list of routes");
    for (yaml_node_item_t *i = v->data.sequence.items.start; i < v->data.sequence.items.top; i++)
      if ((rc = load_route(L, node(L, *i))) != 0) return rc;
  }
  return 0;
}

kl_gw *kl_gw_load(const char *path, const kl_gw_handler *handlers, size_t nhandlers, char *err,
                  size_t errlen) {
  gwl L = {.path = path, .handlers = handlers, .nhandlers = nhandlers, .err = err, .errlen = errlen};
  if (kl_yaml_load(err, errlen)) return NULL;
  FILE *f = fopen(path, "rbe");
  if (!f) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return NULL;
  }
  kl_gw *gw = calloc(1, sizeof *gw);
  yaml_parser_t p;
  if (!gw || !yaml_parser_initialize(&p)) {
    fclose(f);
    free(gw);
    snprintf(err, errlen, "%s: out of memory", path);
    return NULL;
  }
  L.gw = gw;
  gw->ups = calloc(KL_GW_UPSTREAMS_MAX, sizeof *gw->ups);
  gw->routes = calloc(KL_GW_ROUTES_MAX, sizeof *gw->routes);
  gw->strings = malloc(STRINGS_MAX);
  yaml_parser_set_input_file(&p, f);
  int rc = -EINVAL;
  if (!gw->ups || !gw->routes || !gw->strings) {
    snprintf(err, errlen, "%s: out of memory", path);
  } else if (!yaml_parser_load(&p, &L.doc)) {
    snprintf(err, errlen, "%s:%zu: syntax error: %s", path, p.problem_mark.line + 1,
             p.problem ? p.problem : "malformed YAML"); /* keel_config_load_file says it first */
  } else {
    rc = load_doc(&L);
    yaml_document_delete(&L.doc);
    for (uint32_t i = 0; rc == 0 && i < gw->nroutes && !gw->rl_table; i++)
      if (gw->routes[i].rl && !(gw->rl_table = kl_rl_table_new(100000, err, errlen))) rc = -ENOMEM;
    size_t max_object = 0;
    for (uint32_t i = 0; rc == 0 && i < gw->nroutes; i++)
      if (gw->routes[i].cache_on && gw->routes[i].cache_max_object > max_object)
        max_object = gw->routes[i].cache_max_object;
    if (rc == 0 && gw->cache_redis && !gw->redis) {
      snprintf(err, errlen, "%s: cache.redis needs a top-level redis: {address: ...}", path);
      rc = -EINVAL;
    }
    if (rc == 0 && max_object) {
      kl_cache_conf cc = {.max_bytes = gw->cache_memory ? gw->cache_memory : 64u << 20,
                          .max_object = max_object};
      char cerr[200];
      if (cc.max_object > cc.max_bytes / KL_CACHE_SHARDS) cc.max_object = cc.max_bytes / KL_CACHE_SHARDS;
      if (!(gw->cache = kl_cache_new(&cc, cerr, sizeof cerr))) {
        snprintf(err, errlen, "%s: cache: %s", path, cerr);
        rc = -EINVAL;
      }
    }
  }
  yaml_parser_delete(&p);
  fclose(f);
  if (rc) {
    kl_gw_free(gw);
    return NULL;
  }
  return gw;
}
