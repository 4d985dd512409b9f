/* proxy.c - the reverse proxy: per-worker upstream connection pools, load balancing, retries. */
#include "gateway/proxy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <netinet/tcp.h>

#include "gateway/cache.h"
#include "gateway/redis.h"
#include "http/server_internal.h"
#include "http/tls.h"

#define UP_IN_EXTRA (64 * 1024) /* response bytes buffered beyond a full head */
#define UP_OUT_MAX (64 * 1024)  /* request bytes waiting for the upstream socket */
#define REQ_ID_MAX 200          /* a client's X-Request-Id longer than this is replaced */

enum { UC_CONNECTING, UC_HANDSHAKE, UC_ACTIVE, UC_IDLE };
enum { RS_HEAD, RS_BODY, RS_DONE };

typedef struct kl_proxy_req kl_proxy_req;

/* One connection to an endpoint, owned by one worker. */
typedef struct kl_upconn {
  kl_io io;
  struct kl_up_worker *uw;
  uint32_t ep;
  uint8_t state;
  uint8_t reused;         /* served a request before this one */
  kl_proxy_req *pr;       /* the request using it (UC_CONNECTING, UC_ACTIVE) */
  struct kl_upconn *next; /* idle list */
  kl_buf in;              /* response bytes */
  kl_buf out;             /* request bytes not yet written */
  size_t out_off;
  kl_tls *tls;            /* TLS to the upstream (its tls: settings); NULL: plain */
  uint32_t tls_want;      /* events TLS needs beyond the usual ones (a read that must write) */
} kl_upconn;

/* Per worker, per upstream. */
typedef struct kl_up_worker {
  kl_gw_upstream *u;
  kl_loop *loop;     /* set on first use by the worker */
  kl_upconn **idle;  /* per endpoint: idle connections, newest first */
  uint32_t *nidle;
  uint32_t rr;       /* round-robin cursor */
  uint64_t rng;
} kl_up_worker;

/* One proxied request. */
struct kl_proxy_req {
  kl_deferred d;
  kl_timer timer;
  const kl_gw_route *r;
  kl_gw_upstream *u;
  kl_up_worker *uw;
  kl_worker *w;
  kl_upconn *uc;
  int ep, last_ep;
  uint32_t attempt;
  char *head;             /* the request head for the upstream */
  size_t head_len;
  char *extra;            /* response header lines the gateway adds (rate limits) */
  size_t extra_len;
  uint8_t chunked_up;     /* the body goes to the upstream chunked */
  uint8_t has_body;       /* a body follows the head */
  uint8_t body_end;       /* the client's last body bytes were taken */
  uint8_t sent;           /* head and body are all written */
  uint8_t idempotent;
  uint8_t is_head;
  uint8_t rstate;         /* RS_* */
  uint8_t waiting_retry;  /* the backoff timer runs */
  uint8_t counted;        /* counted in u->pending / ep->active */
  uint64_t body_taken;    /* body bytes taken from the client (no retry once > 0) */
  uint64_t start_ms, first_byte_at, total_at, connect_at;
  kl_http_resp resp;
  size_t resp_scanned;
  uint8_t resp_body;      /* the response has a body */
  uint64_t resp_left;     /* Content-Length bytes still to forward */
  kl_chunked resp_chunked;
  size_t resp_rpos, resp_wpos;
  uint8_t paused;         /* the client's output is backed up: upstream reading stopped */
  /* The response cache (cache: on the route). */
  kl_cache_waiter waiter;   /* waiting for another request's fill (cache_wait) */
  uint8_t cache_wait;
  uint8_t cancelled;        /* the client left while waiting: the wake frees this */
  int wake_outcome;
  kl_cache_ticket *ticket;  /* this request fills the entry (the leader) */
  char *cache_hdrs;         /* the response's header lines, as the client got them */
  size_t cache_hdrs_len;
  kl_buf cache_body;        /* the body, up to the route's max_object */
  const char *tenant;       /* the API key's tenant (auth:): part of the cache key */
  uint8_t redis_wait;       /* asking the cache's Redis tier (cancelled: the reply frees) */
  char cache_host[320];     /* "tenant\nhost" when there is a tenant */
  /* Tracing: a CLIENT span per attempt, child of the request's SERVER span. */
  size_t tp_off;            /* where the traceparent's parent id sits in `head`; 0: none */
  kl_trace_ctx tctx;        /* the trace; span_id: the SERVER span */
  uint8_t sampled;
  kl_span *cspan;           /* the current attempt's span (sampled) */
};

static const kl_stream_ops stream_ops;
static void attempt(kl_proxy_req *pr);
static void uc_close(kl_upconn *uc);
static void client_span_end(kl_proxy_req *pr, int status, const char *error);
static void uc_event(kl_loop *loop, kl_io *io, uint32_t events);
static int on_readable(kl_proxy_req *pr);

/* ---- per-worker state ----------------------------------------------------------------- */

kl_up_worker *kl_proxy_workers_new(kl_gw_upstream *u, unsigned n) {
  kl_up_worker *a = calloc(n, sizeof *a);
  if (!a) return NULL;
  for (unsigned i = 0; i < n; i++) {
    a[i].u = u;
    a[i].idle = calloc(u->neps, sizeof *a[i].idle);
    a[i].nidle = calloc(u->neps, sizeof *a[i].nidle);
    a[i].rng = 0x9E3779B97F4A7C15ull * (i + 1);
    if (!a[i].idle || !a[i].nidle) {
      u->w = a;
      kl_proxy_workers_free(u, i + 1);
      return NULL;
    }
  }
  return a;
}

static void uc_free(kl_upconn *uc) {
  kl_buf_free(&uc->in);
  kl_buf_free(&uc->out);
  free(uc);
}

void kl_proxy_workers_free(kl_gw_upstream *u, unsigned n) {
  kl_up_worker *a = u->w;
  if (!a) return;
  for (unsigned i = 0; i < n; i++) {
    for (uint32_t e = 0; a[i].idle && e < u->neps; e++)
      while (a[i].idle[e]) {
        kl_upconn *uc = a[i].idle[e];
        a[i].idle[e] = uc->next;
        kl_tls_free(uc->tls);
        close(uc->io.fd); /* the worker's loop is gone: no kl_io_stop */
        atomic_fetch_sub(&u->conns, 1);
        uc_free(uc);
      }
    free(a[i].idle);
    free(a[i].nidle);
  }
  free(a);
  u->w = NULL;
}

void kl_proxy_worker_close(kl_gw_upstream *u, unsigned worker) {
  kl_up_worker *uw = &u->w[worker];
  for (uint32_t e = 0; e < u->neps; e++)
    while (uw->idle[e]) {
      kl_upconn *uc = uw->idle[e];
      uw->idle[e] = uc->next;
      uw->nidle[e]--;
      uc_close(uc);
    }
}

static uint64_t rnd(kl_up_worker *uw) {
  uw->rng ^= uw->rng << 13;
  uw->rng ^= uw->rng >> 7;
  uw->rng ^= uw->rng << 17;
  return uw->rng;
}

/* ---- endpoints: choice, passive health ------------------------------------------------ */

static int ep_usable(const kl_gw_endpoint *e, uint64_t now) {
  return !atomic_load_explicit(&e->down, memory_order_relaxed) &&
         atomic_load_explicit(&e->ejected_until, memory_order_relaxed) <= now;
}

/* An endpoint for a new attempt (not `avoid` when another is usable), or -1. */
static int pick(kl_up_worker *uw, int avoid, uint64_t now) {
  kl_gw_upstream *u = uw->u;
  uint32_t n = u->neps, usable = 0;
  for (uint32_t i = 0; i < n; i++) usable += ep_usable(&u->eps[i], now) && (int)i != avoid;
  if (usable == 0 && avoid >= 0 && ep_usable(&u->eps[avoid], now)) return avoid;
  if (usable == 0) {
    /* Panic: every endpoint is ejected or down. Passive ejections are ignored then (as in
     * Envoy's panic mode) rather than failing everything; the health check still counts. */
    for (uint32_t k = 0; k < n; k++) {
      uint32_t i = (uw->rr++) % n;
      if (!atomic_load_explicit(&u->eps[i].down, memory_order_relaxed)) return (int)i;
    }
    return -1;
  }
  if (u->balance == KL_LB_LEAST_REQUEST && usable > 1) {
    /* Power of two choices: two distinct usable endpoints at random, the less busy wins. */
    uint32_t a = (uint32_t)(rnd(uw) % usable), b = (uint32_t)(rnd(uw) % (usable - 1));
    if (b >= a) b++;
    int ia = -1, ib = -1;
    for (uint32_t i = 0, k = 0; i < n; i++) {
      if (!ep_usable(&u->eps[i], now) || (int)i == avoid) continue;
      if (k == a) ia = (int)i;
      if (k == b) ib = (int)i;
      k++;
    }
    return atomic_load(&u->eps[ib].active) < atomic_load(&u->eps[ia].active) ? ib : ia;
  }
  for (uint32_t k = 0; k < n; k++) {
    uint32_t i = (uw->rr++) % n;
    if (ep_usable(&u->eps[i], now) && (int)i != avoid) return (int)i;
  }
  return -1;
}

/* A request's outcome on endpoint `e`: consecutive failures eject it for a while. */
static void ep_outcome(kl_gw_upstream *u, kl_gw_endpoint *e, int ok, uint64_t now) {
  if (ok) {
    atomic_store_explicit(&e->fails, 0, memory_order_relaxed);
    if (atomic_load_explicit(&e->ejections, memory_order_relaxed) &&
        atomic_load_explicit(&e->ejected_until, memory_order_relaxed) + u->outlier_eject_ms < now)
      atomic_store_explicit(&e->ejections, 0, memory_order_relaxed);
    return;
  }
  if (!u->outlier_failures) return;
  if (atomic_fetch_add(&e->fails, 1) + 1 < u->outlier_failures) return;
  atomic_store(&e->fails, 0);
  uint32_t n = atomic_fetch_add(&e->ejections, 1);
  uint64_t ms = (uint64_t)u->outlier_eject_ms * (n < 3 ? (1u << n) : 10);
  atomic_store(&e->ejected_until, now + ms);
}

/* ---- the request head for the upstream ------------------------------------------------ */

static int hop_by_hop(const char *n, size_t len) {
  static const char *const names[] = {"connection", "keep-alive", "proxy-connection", "te",
                                      "trailer", "transfer-encoding", "upgrade", "content-length",
                                      "x-forwarded-proto", "proxy-authorization"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (kl_http_name_eq(n, len, names[i])) return 1;
  return 0;
}

/* Is header `n` named by a token of the Connection header value `conn`? */
static int named_by_connection(const char *n, size_t len, const char *conn, size_t clen) {
  size_t i = 0;
  while (i < clen) {
    while (i < clen && (conn[i] == ' ' || conn[i] == '\t' || conn[i] == ',')) i++;
    size_t s = i;
    while (i < clen && conn[i] != ',' && conn[i] != ' ' && conn[i] != '\t') i++;
    if (i - s == len && strncasecmp(conn + s, n, len) == 0) return 1;
  }
  return 0;
}

static char *put(char *p, const char *s, size_t n) {
  /* NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker): s points into the request, never NULL */
  memcpy(p, s, n);
  return p + n;
}
#define PUTS(p, lit) put((p), (lit), sizeof(lit) - 1)

/* A version 4 UUID from the worker's generator, for X-Request-Id. */
static void request_id(kl_worker *w, char out[37]) {
  uint8_t b[16];
  kl_trace_ids_new(&w->ids, b);
  b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
  b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
  static const char hex[] = "0123456789abcdef";
  char *p = out;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) *p++ = '-';
    *p++ = hex[b[i] >> 4];
    *p++ = hex[b[i] & 15];
  }
  *p = '\0';
}

/* Builds the upstream request head from the client's (still parsed in w->hdrs). */
static int build_head(kl_proxy_req *pr, keel_req *req) {
  kl_conn *c = req->conn;
  kl_worker *w = c->w;
  const kl_http_head *h = &c->head;
  const char *base = req->base;
  keel_str m = keel_req_method(req), path = keel_req_path(req), q = keel_req_query(req);
  const char *conn_v = NULL, *xff = NULL, *rid = NULL;
  size_t conn_l = 0, xff_l = 0;
  int has_host = 0;
  for (uint32_t i = 0; i < h->nheaders; i++) {
    const kl_header *f = &w->hdrs[i];
    const char *n = base + f->name_off;
    if (kl_http_name_eq(n, f->name_len, "connection")) {
      conn_v = base + f->value_off;
      conn_l = f->value_len;
    } else if (kl_http_name_eq(n, f->name_len, "x-forwarded-for")) {
      xff = base + f->value_off;
      xff_l = f->value_len;
    } else if (kl_http_name_eq(n, f->name_len, "host")) {
      has_host = 1;
    } else if (kl_http_name_eq(n, f->name_len, "x-request-id") && f->value_len <= REQ_ID_MAX &&
               f->value_len) {
      rid = base + f->value_off;
    }
  }
  const char *peer = kl_conn_peer(c);
  size_t cap = m.len + path.len + q.len + h->head_len + xff_l + strlen(peer) + 512;
  char *p = malloc(cap);
  if (!p) return -ENOMEM;
  pr->head = p;
  p = put(p, m.ptr, m.len);
  *p++ = ' ';
  p = put(p, path.ptr, path.len);
  if (q.len) {
    *p++ = '?';
    p = put(p, q.ptr, q.len);
  }
  p = PUTS(p, " HTTP/1.1\r\n");
  if (!has_host) { /* an HTTP/1.0 client may omit it; HTTP/1.1 requires one: the upstream's */
    const char *ep = pr->u->eps[0].name;
    p = PUTS(p, "Host: ");
    p = put(p, ep, strlen(ep));
    p = PUTS(p, "\r\n");
  }
  for (uint32_t i = 0; i < h->nheaders; i++) {
    const kl_header *f = &w->hdrs[i];
    const char *n = base + f->name_off;
    if (hop_by_hop(n, f->name_len) || kl_http_name_eq(n, f->name_len, "x-forwarded-for") ||
        (req->trace.on && kl_http_name_eq(n, f->name_len, "traceparent")) ||
        (kl_http_name_eq(n, f->name_len, "x-request-id") && rid != base + f->value_off) ||
        (conn_v && named_by_connection(n, f->name_len, conn_v, conn_l)))
      continue;
    p = put(p, n, f->name_len);
    p = PUTS(p, ": ");
    p = put(p, base + f->value_off, f->value_len);
    p = PUTS(p, "\r\n");
  }
  p = PUTS(p, "X-Forwarded-For: ");
  if (xff_l) {
    p = put(p, xff, xff_l);
    p = PUTS(p, ", ");
  }
  p = put(p, peer, strlen(peer));
  p = PUTS(p, "\r\nX-Forwarded-Proto: ");
  p = c->ssl ? PUTS(p, "https\r\n") : PUTS(p, "http\r\n");
  if (!rid) {
    char id[37];
    request_id(w, id);
    p = PUTS(p, "X-Request-Id: ");
    p = put(p, id, 36);
    p = PUTS(p, "\r\n");
  }
  if (req->trace.on) { /* traceparent: this trace, the attempt's CLIENT span as parent */
    char tp[KL_TRACEPARENT_LEN + 1];
    pr->tctx = req->trace.ctx;
    pr->sampled = req->trace.sampled;
    kl_traceparent_format(&pr->tctx, tp);
    p = PUTS(p, "traceparent: ");
    pr->tp_off = (size_t)(p - pr->head) + 36; /* "00-" + 32 hex + "-" */
    p = put(p, tp, KL_TRACEPARENT_LEN);
    p = PUTS(p, "\r\n");
  }
  if (h->chunked) {
    p = PUTS(p, "Transfer-Encoding: chunked\r\n");
    pr->chunked_up = 1;
    pr->has_body = 1;
  } else if (h->has_length) {
    p += snprintf(p, 40, "Content-Length: %llu\r\n", (unsigned long long)h->content_length);
    pr->has_body = h->content_length > 0;
  }
  p = PUTS(p, "\r\n");
  pr->head_len = (size_t)(p - pr->head);
  return 0;
}

/* ---- request lifetime --------------------------------------------------------------- */

#define PR_OF(t) ((kl_proxy_req *)(void *)((char *)(t)-offsetof(kl_proxy_req, timer)))

static void uc_close(kl_upconn *uc) {
  kl_loop *loop = uc->uw->loop;
  kl_tls_free(uc->tls);
  uc->tls = NULL;
  kl_io_stop(loop, &uc->io);
  close(uc->io.fd);
  atomic_fetch_sub(&uc->uw->u->conns, 1);
  uc_free(uc);
}

/* Stops counting the request against its endpoint and upstream. */
static void pr_uncount(kl_proxy_req *pr) {
  if (!pr->counted) return;
  pr->counted = 0;
  atomic_fetch_sub(&pr->u->pending, 1);
  if (pr->ep >= 0) atomic_fetch_sub(&pr->u->eps[pr->ep].active, 1);
}

static void pr_free(kl_proxy_req *pr) {
  kl_timer_cancel(&pr->w->loop.timers, &pr->timer);
  client_span_end(pr, pr->rstate == RS_HEAD ? 0 : pr->resp.status, "aborted");
  pr_uncount(pr);
  if (pr->ticket) kl_cache_abandon(pr->r->gw->cache, pr->ticket); /* waiters go upstream */
  free(pr->cache_hdrs);
  kl_buf_free(&pr->cache_body);
  if (pr->uc) {
    pr->uc->pr = NULL;
    uc_close(pr->uc); /* mid-request: never reusable */
    pr->uc = NULL;
  }
  free(pr->head);
  free(pr->extra);
  free(pr);
}

/* Answers the client with an error (nothing was sent to it yet) and ends the request. */
static void pr_fail(kl_proxy_req *pr, int status, const char *msg) {
  keel_req *req = kl_deferred_req(&pr->d);
  if (req) {
    if (status == 503) keel_resp_header(req, "Retry-After", "1");
    keel_respond_error(req, status, msg);
    kl_deferred_finish(&pr->d);
  } else {
    kl_stream_abort(&pr->d); /* the response had begun: the client sees it cut */
  }
  pr_free(pr);
}

/* Arms the request's timer for the earliest of its deadlines. */
static void pr_timer(kl_proxy_req *pr) {
  uint64_t t = UINT64_MAX;
  if (pr->connect_at && pr->connect_at < t) t = pr->connect_at;
  if (pr->rstate == RS_HEAD && pr->first_byte_at && pr->first_byte_at < t) t = pr->first_byte_at;
  if (pr->total_at && pr->total_at < t) t = pr->total_at;
  if (t == UINT64_MAX) kl_timer_cancel(&pr->w->loop.timers, &pr->timer);
  else kl_timer_set(&pr->w->loop.timers, &pr->timer, t);
}

static int idempotent(keel_str m) {
  static const char *const ok[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"};
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
    if (strlen(ok[i]) == m.len && memcmp(ok[i], m.ptr, m.len) == 0) return 1;
  return 0;
}

/* May this request try again? Within its attempts and the upstream's retry budget. */
static int may_retry(kl_proxy_req *pr, int never_sent) {
  if (pr->attempt > pr->r->retries || pr->body_taken > 0) return 0;
  if (!never_sent && !pr->idempotent) return 0;
  kl_gw_upstream *u = pr->u;
  uint64_t now = pr->w->loop.now, win = atomic_load(&u->budget_window);
  if (now / 1000 != win) { /* a new one-second window */
    atomic_store(&u->budget_window, now / 1000);
    atomic_store(&u->win_requests, 0);
    atomic_store(&u->win_retries, 0);
  }
  uint64_t allowed = atomic_load(&u->win_requests) * u->retry_budget_pct / 100;
  if (allowed < u->retry_min_per_s) allowed = u->retry_min_per_s;
  if (atomic_load(&u->win_retries) >= allowed) return 0;
  atomic_fetch_add(&u->win_retries, 1);
  atomic_fetch_add(&u->retries, 1);
  return 1;
}

/* Ends the current attempt: a failure for its endpoint, its connection closed. */
static void attempt_drop(kl_proxy_req *pr) {
  kl_gw_upstream *u = pr->u;
  client_span_end(pr, pr->rstate == RS_HEAD ? 0 : pr->resp.status, pr->rstate == RS_HEAD ? "connection" : NULL);
  if (pr->ep >= 0) ep_outcome(u, &u->eps[pr->ep], 0, pr->w->loop.now);
  if (pr->uc) {
    pr->uc->pr = NULL;
    uc_close(pr->uc);
    pr->uc = NULL;
  }
  if (pr->counted && pr->ep >= 0) atomic_fetch_sub(&u->eps[pr->ep].active, 1);
  pr->last_ep = pr->ep;
  pr->ep = -1;
  pr->connect_at = 0;
}

static void retry_later(kl_proxy_req *pr);

/* This attempt failed before anything reached the client: retry after a backoff, or answer. */
static void attempt_failed(kl_proxy_req *pr, int never_sent, int status, const char *msg) {
  attempt_drop(pr);
  if (!may_retry(pr, never_sent)) {
    pr_fail(pr, status, msg);
    return;
  }
  retry_later(pr);
}

static void retry_later(kl_proxy_req *pr) {
  /* Jittered exponential backoff: base * 2^(n-1), times a random factor in [0.5, 1.5). */
  uint64_t base = (uint64_t)pr->r->retry_backoff_ms << (pr->attempt - 1 < 6 ? pr->attempt - 1 : 6);
  uint64_t wait = base / 2 + (base ? rnd(pr->uw) % base : 0);
  pr->waiting_retry = 1;
  kl_timer_set(&pr->w->loop.timers, &pr->timer, pr->w->loop.now + wait);
}

static void pr_timer_cb(kl_timer *t) {
  kl_proxy_req *pr = PR_OF(t);
  uint64_t now = pr->w->loop.now;
  if (pr->waiting_retry) {
    pr->waiting_retry = 0;
    attempt(pr);
    return;
  }
  if (pr->total_at && now >= pr->total_at) {
    if (pr->ep >= 0) ep_outcome(pr->u, &pr->u->eps[pr->ep], 0, now);
    pr_fail(pr, 504, "the upstream did not answer in time");
  } else if (pr->connect_at && now >= pr->connect_at) {
    int tls = pr->uc && pr->uc->state == UC_HANDSHAKE;
    attempt_failed(pr, 1, 504, tls ? "timed out in the TLS handshake with the upstream"
                                   : "timed out connecting to the upstream");
  } else if (pr->rstate == RS_HEAD && pr->first_byte_at && now >= pr->first_byte_at) {
    if (pr->ep >= 0) ep_outcome(pr->u, &pr->u->eps[pr->ep], 0, now);
    pr_fail(pr, 504, "the upstream did not answer in time");
  } else {
    pr_timer(pr);
  }
}

/* ---- writing to the upstream ---------------------------------------------------------- */

/* Socket or TLS reads and writes: bytes, 0 at the end (reads), -EAGAIN, or -errno. */
static ssize_t uc_read(kl_upconn *uc, char *p, size_t n) {
  if (uc->tls) {
    uint32_t want = 0;
    ssize_t r = kl_tls_read(uc->tls, p, n, &want);
    uc->tls_want = r == -EAGAIN ? want & EPOLLOUT : 0;
    return r;
  }
  for (;;) {
    ssize_t r = recv(uc->io.fd, p, n, 0);
    if (r >= 0) return r;
    if (errno != EINTR) return -errno;
  }
}

static ssize_t uc_write(kl_upconn *uc, const char *p, size_t n, int more) {
  if (uc->tls) {
    uint32_t want = 0;
    ssize_t r = kl_tls_write(uc->tls, p, n, &want);
    uc->tls_want = r == -EAGAIN ? want & EPOLLIN : 0;
    return r;
  }
  for (;;) {
    ssize_t r = send(uc->io.fd, p, n, MSG_NOSIGNAL | (more ? MSG_MORE : 0));
    if (r >= 0) return r;
    if (errno != EINTR) return -errno;
  }
}

static void uc_want(kl_upconn *uc) {
  uint32_t ev = EPOLLIN | EPOLLRDHUP;
  if (uc->out.len > uc->out_off || uc->state == UC_CONNECTING) ev |= EPOLLOUT;
  ev |= uc->tls_want;
  if (uc->pr && uc->pr->paused) ev &= ~(uint32_t)(EPOLLIN | EPOLLRDHUP);
  kl_io_modify(uc->uw->loop, &uc->io, ev);
}

/* Writes what is queued: 0 (all or some written), -1 on a socket error. `more`: the request's
 * body follows at once (MSG_MORE: head and body leave in one segment). */
static int uc_flush_more(kl_upconn *uc, int more) {
  while (uc->out_off < uc->out.len) {
    ssize_t n = uc_write(uc, uc->out.data + uc->out_off, uc->out.len - uc->out_off, more);
    if (n == -EAGAIN) break;
    if (n < 0) return -1;
    uc->out_off += (size_t)n;
  }
  if (uc->out_off == uc->out.len) uc->out.len = uc->out_off = 0;
  uc_want(uc);
  return 0;
}

static int uc_flush(kl_upconn *uc) { return uc_flush_more(uc, 0); }

/* The request is all written once its head is out and the client's body has ended. */
static void check_sent(kl_proxy_req *pr) {
  kl_upconn *uc = pr->uc;
  if (!pr->sent && uc && uc->out.len == 0 && (!pr->has_body || pr->body_end)) pr->sent = 1;
}

/* Stream ops: body bytes from the client, copied to the upstream's output (bounded) and
 * written at once. Takes fewer only while the socket is full, so EPOLLOUT resumes the body. */
static size_t on_body(void *arg, const char *p, size_t len, int end) {
  kl_proxy_req *pr = arg;
  kl_upconn *uc = pr->uc;
  size_t total = 0;
  if (!uc || uc->state != UC_ACTIVE) return 0; /* not connected yet: uc_ready resumes */
  while (total < len || (end && !pr->body_end)) {
    size_t pending = uc->out.len - uc->out_off;
    if (pending >= UP_OUT_MAX) break; /* the upstream is slow: the client waits */
    size_t room = UP_OUT_MAX - pending, take = len - total < room ? len - total : room;
    if (kl_buf_reserve(&uc->out, take + 32) != 0) break;
    if (pr->chunked_up && take) {
      int l = snprintf(uc->out.data + uc->out.len, 24, "%zx\r\n", take);
      uc->out.len += (size_t)l;
    }
    memcpy(uc->out.data + uc->out.len, p + total, take);
    uc->out.len += take;
    if (pr->chunked_up && take) {
      memcpy(uc->out.data + uc->out.len, "\r\n", 2);
      uc->out.len += 2;
    }
    total += take;
    pr->body_taken += take;
    if (end && total == len) {
      pr->body_end = 1;
      if (pr->chunked_up) kl_buf_append(&uc->out, "0\r\n\r\n", 5);
    }
    if (uc_flush(uc) != 0) {
      attempt_failed(pr, 0, 502, "the upstream connection failed while sending the request");
      return total; /* answered: a body was taken, so it is not retried */
    }
    if (uc->out.len != 0) break; /* the socket is full: EPOLLOUT resumes the body */
  }
  check_sent(pr);
  return total;
}

static void on_drained(void *arg) {
  kl_proxy_req *pr = arg;
  if (!pr->paused || !pr->uc) return;
  pr->paused = 0;
  uc_want(pr->uc);
  if (on_readable(pr)) uc_event(pr->uw->loop, &pr->uc->io, EPOLLIN); /* and in the socket */
}

static void on_cancel(void *arg) {
  kl_proxy_req *pr = arg;
  if (pr->redis_wait) {
    pr->cancelled = 1; /* the Redis reply comes within its timeout and frees it */
    return;
  }
  if (pr->cache_wait && !kl_cache_unwait(pr->r->gw->cache, &pr->waiter)) {
    pr->cancelled = 1; /* the wake is under way: cache_woken frees it */
    return;
  }
  pr_free(pr);
}

static const kl_stream_ops stream_ops = {on_body, on_drained, on_cancel};

/* ---- connecting ----------------------------------------------------------------------- */

static kl_upconn *uc_connect(kl_up_worker *uw, int ep) {
  kl_gw_upstream *u = uw->u;
  const kl_gw_endpoint *e = &u->eps[ep];
  struct sockaddr_storage sa;
  socklen_t salen = kl_gw_ep_addr(e, &sa); /* a consistent copy: the resolver may rewrite it */
  int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return NULL;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, (const struct sockaddr *)&sa, salen) < 0 && errno != EINPROGRESS) {
    close(fd);
    return NULL;
  }
  kl_upconn *uc = calloc(1, sizeof *uc);
  if (!uc) {
    close(fd);
    return NULL;
  }
  uc->io.fd = fd;
  uc->io.cb = uc_event;
  uc->uw = uw;
  uc->ep = (uint32_t)ep;
  uc->state = UC_CONNECTING;
  kl_buf_init(&uc->in, 0);
  kl_buf_init(&uc->out, UP_OUT_MAX + 64 * 1024);
  if (kl_io_start(uw->loop, &uc->io, EPOLLOUT | EPOLLIN | EPOLLRDHUP) < 0) {
    close(fd);
    uc_free(uc);
    return NULL;
  }
  atomic_fetch_add(&u->conns, 1);
  return uc;
}

/* The connection is usable: queue the head and let the body flow. */
static void uc_ready(kl_proxy_req *pr) {
  kl_upconn *uc = pr->uc;
  uc->state = UC_ACTIVE;
  pr->connect_at = 0;
  uc->out.len = uc->out_off = 0;
  int more = pr->has_body && !pr->body_end; /* the body the client already sent follows */
  if (kl_buf_append(&uc->out, pr->head, pr->head_len) != 0 || uc_flush_more(uc, more) != 0) {
    attempt_failed(pr, !uc->reused, 502, "cannot send the request to the upstream");
    return;
  }
  pr_timer(pr);
  check_sent(pr);
  if (pr->has_body && !pr->body_end) kl_stream_resume(&pr->d);
}

/* Starts the attempt's CLIENT span and points the upstream's traceparent at it. */
static void client_span_begin(kl_proxy_req *pr) {
  if (!pr->tp_off) return;
  kl_trace_ctx c = pr->tctx;
  kl_trace_span_id_new(&pr->w->ids, c.span_id);
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < 8; i++) {
    pr->head[pr->tp_off + 2 * i] = hex[c.span_id[i] >> 4];
    pr->head[pr->tp_off + 2 * i + 1] = hex[c.span_id[i] & 15];
  }
  if (!pr->sampled || !(pr->cspan = malloc(sizeof *pr->cspan))) return;
  const char *m = pr->head;
  size_t ml = (size_t)((const char *)memchr(pr->head, ' ', pr->head_len) - pr->head);
  kl_span_begin(pr->cspan, &c, pr->tctx.span_id, NULL, 0, m, ml, KL_SPAN_CLIENT,
                kl_trace_now_ns());
  const kl_gw_endpoint *e = &pr->u->eps[pr->ep];
  kl_span_attr_str(pr->cspan, "http.request.method", m, ml);
  kl_span_attr_str(pr->cspan, "server.address", e->host, strlen(e->host));
  const char *colon = strrchr(e->name, ':');
  if (colon) kl_span_attr_int(pr->cspan, "server.port", strtol(colon + 1, NULL, 10));
  kl_span_attr_str(pr->cspan, "keel.upstream", pr->u->name, strlen(pr->u->name));
  if (pr->attempt > 1) kl_span_attr_int(pr->cspan, "http.request.resend_count", pr->attempt - 1);
}

/* Ends the attempt's CLIENT span: `status` from the upstream, or 0 with `error` (why). */
static void client_span_end(kl_proxy_req *pr, int status, const char *error) {
  kl_span *s = pr->cspan;
  if (!s) return;
  pr->cspan = NULL;
  if (status) kl_span_attr_int(s, "http.response.status_code", status);
  if (error || status >= 500) {
    char code[8];
    if (!error) snprintf(code, sizeof code, "%d", status);
    kl_span_attr_str(s, "error.type", error ? error : code, strlen(error ? error : code));
    kl_span_set_status(s, KL_STATUS_ERROR, NULL, 0);
  }
  kl_span_end(s, kl_trace_now_ns(), pr->w->traceq);
  free(s);
}

/* One attempt: an endpoint, a connection (pooled or new), the head. */
static void attempt(kl_proxy_req *pr) {
  kl_gw_upstream *u = pr->u;
  kl_up_worker *uw = pr->uw;
  uint64_t now = pr->w->loop.now;
  pr->attempt++;
  pr->rstate = RS_HEAD;
  pr->resp_scanned = 0;
  int ep = pick(uw, pr->last_ep, now);
  if (ep < 0) {
    pr_fail(pr, 503, "no healthy upstream endpoint");
    return;
  }
  pr->ep = ep;
  client_span_begin(pr);
  if (pr->counted) atomic_fetch_add(&u->eps[ep].active, 1);
  kl_upconn *uc = uw->idle[ep];
  if (uc) {
    uw->idle[ep] = uc->next;
    uw->nidle[ep]--;
    uc->next = NULL;
    uc->pr = pr;
    uc->reused = 1;
    pr->uc = uc;
    uc_ready(pr);
    return;
  }
  if (atomic_load(&u->conns) >= u->max_connections) {
    pr_fail(pr, 503, "the upstream's connection limit is reached");
    return;
  }
  uc = uc_connect(uw, ep);
  if (!uc) {
    attempt_failed(pr, 1, 502, "cannot connect to the upstream");
    return;
  }
  uc->pr = pr;
  pr->uc = uc;
  pr->connect_at = pr->r->connect_ms ? now + pr->r->connect_ms : 0;
  pr_timer(pr);
}

/* ---- the response --------------------------------------------------------------------- */

/* ---- the response cache --------------------------------------------------------------- */

/* The cache's view of a request (its header views must be current). On a route with API
 * keys the tenant is part of the key: tenants never share entries. */
static void cache_req_of(kl_proxy_req *pr, keel_req *req, kl_cache_req *cr) {
  const kl_conn *c = req->conn;
  keel_str m = keel_req_method(req), p = keel_req_path(req), q = keel_req_query(req),
           h = keel_req_header(req, "host");
  *cr = (kl_cache_req){.method = m.ptr, .method_len = m.len, .host = h.ptr ? h.ptr : "",
                       .host_len = h.len, .path = p.ptr, .path_len = p.len, .query = q.ptr,
                       .query_len = q.len, .hbuf = req->base, .hdrs = c->w->hdrs,
                       .nhdrs = c->head.nheaders};
  if (pr->tenant) {
    int n = snprintf(pr->cache_host, sizeof pr->cache_host, "%s\n%.*s", pr->tenant,
                     (int)cr->host_len, cr->host);
    cr->host = pr->cache_host;
    cr->host_len = n > 0 && (size_t)n < sizeof pr->cache_host ? (size_t)n : 0;
  }
}

/* The leader keeps a copy of the body it forwards, up to the route's max_object. */
static void cache_keep(kl_proxy_req *pr, const char *p, size_t n) {
  if (!pr->ticket || n == 0) return;
  if (kl_buf_append(&pr->cache_body, p, n) != 0) { /* too large to store: waiters go upstream */
    kl_cache_abandon(pr->r->gw->cache, pr->ticket);
    pr->ticket = NULL;
    kl_buf_free(&pr->cache_body);
  }
}

/* Answers from a stored response and ends the request. */
static void serve_entry(kl_proxy_req *pr, kl_cache_entry *e) {
  kl_cache_view v;
  kl_cache_entry_view(e, pr->w->loop.now, &v);
  size_t cap = v.headers_len + pr->extra_len + 64;
  char *h = malloc(cap);
  kl_deferred d = pr->d;
  if (!h) {
    kl_cache_entry_release(e);
    pr_free(pr);
    kl_stream_abort(&d);
    return;
  }
  memcpy(h, v.headers, v.headers_len);
  size_t n = v.headers_len;
  n += (size_t)snprintf(h + n, cap - n, "Age: %llu\r\nX-Cache: HIT\r\n", (unsigned long long)v.age);
  if (pr->extra_len) memcpy(h + n, pr->extra, pr->extra_len);
  n += pr->extra_len;
  int bodiless = v.status == 204 || v.status == 304;
  int rc = kl_stream_head(&d, v.status, h, n, bodiless ? -1 : (int64_t)v.body_len, bodiless);
  free(h);
  if (rc == 0 && !pr->is_head && !bodiless) rc = kl_stream_write(&d, v.body, v.body_len) < 0;
  kl_cache_entry_release(e);
  pr_free(pr);
  if (rc == 0) kl_stream_end(&d);
  else kl_stream_abort(&d);
}

static void go_upstream(kl_proxy_req *pr);
static void cache_woken(void *arg);
static int rcache_get(kl_proxy_req *pr, const kl_cache_req *cr);
static void rcache_put(kl_proxy_req *pr, const kl_cache_req *cr);

/* The cache's wake, on the leader's thread: the waiter's own worker takes it from there. */
static void cache_wake(void *arg, int outcome) {
  kl_proxy_req *pr = arg;
  pr->wake_outcome = outcome;
  if (kl_worker_post(pr->w, cache_woken, pr) != 0) cache_woken(pr); /* no memory: best effort */
}

/* The answer will come from the upstream: it says so. */
static void add_miss(kl_proxy_req *pr) {
  static const char miss[] = "X-Cache: MISS\r\n";
  char *x = realloc(pr->extra, pr->extra_len + sizeof(miss));
  if (x) {
    memcpy(x + pr->extra_len, miss, sizeof(miss) - 1);
    pr->extra = x;
    pr->extra_len += sizeof(miss) - 1;
  }
}

/* Looks the request up: 1 when it is answered or waits (for another's fill, or for Redis), 0
 * to go upstream (as the leader that fills the entry, or past the cache). `may_wait` 1: may
 * wait for another request's fill; 0: not; -1: not, nor ask Redis. */
static int cache_lookup(kl_proxy_req *pr, keel_req *req, int may_wait) {
  kl_cache_req cr;
  kl_cache_entry *e = NULL;
  kl_cache_ticket *t = NULL;
  cache_req_of(pr, req, &cr);
  pr->waiter.wake = cache_wake;
  pr->waiter.arg = pr;
  int res = kl_cache_lookup(pr->r->gw->cache, &cr, may_wait > 0 ? &pr->waiter : NULL,
                            pr->w->loop.now, &e, &t);
  if (res == KL_CACHE_HIT) {
    serve_entry(pr, e);
    return 1;
  }
  if (res == KL_CACHE_WAIT) {
    pr->cache_wait = 1;
    return 1;
  }
  if (res == KL_CACHE_LEADER) pr->ticket = t;
  if (res == KL_CACHE_LEADER && may_wait >= 0 && rcache_get(pr, &cr)) return 1;
  add_miss(pr);
  return 0;
}

/* ---- the cache's Redis tier ----------------------------------------------------------- */

/*
 * With `cache: {redis: true}`, a local miss asks Redis before the upstream, and a response the
 * local cache stored is also written there (SET with PX: its remaining freshness), so every
 * keel behind one Redis shares what any of them fetched. Value: "KC1", status (2 bytes), the
 * Unix ms it was stored (8), its Age then (4), header length (4), headers, body. Responses with
 * Vary stay local. A Redis error or timeout is a miss: the upstream answers.
 */
#define RC_HDR 21

static size_t rcache_key(const kl_cache_req *cr, char *out, size_t cap) {
  int n = snprintf(out, cap, "keel:cache:%.*s\n%.*s?%.*s", (int)cr->host_len, cr->host,
                   (int)cr->path_len, cr->path, (int)cr->query_len, cr->query ? cr->query : "");
  return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

static uint64_t unix_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void rcache_got(void *arg, const kl_redis_reply *rep) {
  kl_proxy_req *pr = arg;
  pr->redis_wait = 0;
  keel_req *req = pr->cancelled ? NULL : kl_stream_req(&pr->d);
  if (!req) {
    pr_free(pr);
    return;
  }
  const unsigned char *b = (const unsigned char *)rep->str;
  if (rep->err == 0 && rep->type == KL_REDIS_STRING && rep->len >= RC_HDR &&
      memcmp(b, "KC1", 3) == 0 && pr->ticket) {
    uint16_t status;
    uint64_t stored;
    uint32_t age0, hlen;
    memcpy(&status, b + 3, 2);
    memcpy(&stored, b + 5, 8);
    memcpy(&age0, b + 13, 4);
    memcpy(&hlen, b + 17, 4);
    if (hlen <= rep->len - RC_HDR) {
      uint64_t now = unix_ms(), age = age0 + (now > stored ? (now - stored) / 1000 : 0);
      size_t cap = hlen + 32;
      char *h = malloc(cap);
      if (h) { /* its age so far, so that the local copy expires with the shared one */
        int n = snprintf(h, cap, "Age: %llu\r\n", (unsigned long long)age);
        memcpy(h + n, b + RC_HDR, hlen);
        kl_cache_req cr;
        cache_req_of(pr, req, &cr);
        kl_cache_resp resp = {status, h, (size_t)n + hlen, (const char *)b + RC_HDR + hlen,
                              rep->len - RC_HDR - hlen};
        kl_cache_fill(pr->r->gw->cache, pr->ticket, &cr, &resp, pr->w->loop.now);
        pr->ticket = NULL;
        free(h);
        if (cache_lookup(pr, req, -1)) return; /* served from the copy just stored */
        go_upstream(pr); /* (cache_lookup said MISS) */
        return;
      }
    }
  }
  add_miss(pr);
  go_upstream(pr);
}

/* A local miss on a route whose cache has a Redis tier: 1 while Redis is asked. */
static int rcache_get(kl_proxy_req *pr, const kl_cache_req *cr) {
  kl_redis *r = pr->r->gw->cache_redis ? kl_gw_redis(pr->r->gw, pr->w) : NULL;
  char key[2048];
  size_t klen = r ? rcache_key(cr, key, sizeof key) : 0;
  if (!klen) return 0;
  const char *argv[] = {"GET", key};
  const size_t lens[] = {3, klen};
  if (kl_redis_command(r, 2, argv, lens, rcache_got, pr) != 0) return 0; /* down: upstream */
  pr->redis_wait = 1;
  return 1;
}

static void rcache_set_done(void *arg, const kl_redis_reply *rep) {
  (void)arg, (void)rep; /* best effort: a lost SET only means another miss elsewhere */
}

/* After the local cache stored a response: the shared copy, for its remaining freshness. */
static void rcache_put(kl_proxy_req *pr, const kl_cache_req *cr) {
  kl_redis *r = pr->r->gw->cache_redis ? kl_gw_redis(pr->r->gw, pr->w) : NULL;
  char key[2048];
  size_t klen = r ? rcache_key(cr, key, sizeof key) : 0;
  if (!klen) return;
  kl_cache_cc cc;
  kl_cache_cc_init(&cc);
  const char *h = pr->cache_hdrs, *end = h + pr->cache_hdrs_len;
  uint32_t age0 = 0;
  size_t keep = 0;
  char *hdrs = malloc(pr->cache_hdrs_len + 1);
  if (!hdrs) return;
  while (h < end) { /* the lines a shared copy keeps (no Age, Date, Set-Cookie) */
    const char *eol = memchr(h, '\n', (size_t)(end - h));
    size_t len = eol ? (size_t)(eol - h) + 1 : (size_t)(end - h);
    const char *colon = memchr(h, ':', len);
    size_t nl = colon ? (size_t)(colon - h) : 0;
    const char *v = colon ? colon + 1 : h;
    size_t vl = colon ? len - nl - 1 : 0;
    while (vl && (*v == ' ')) v++, vl--;
    while (vl && (v[vl - 1] == '\n' || v[vl - 1] == '\r' || v[vl - 1] == ' ')) vl--;
    if (kl_http_name_eq(h, nl, "vary")) {
      free(hdrs);
      return; /* variants stay local */
    }
    if (kl_http_name_eq(h, nl, "cache-control")) kl_cache_cc_parse(&cc, v, vl);
    if (kl_http_name_eq(h, nl, "age")) age0 = (uint32_t)strtoul(v, NULL, 10);
    if (!kl_http_name_eq(h, nl, "age") && !kl_http_name_eq(h, nl, "date") &&
        !kl_http_name_eq(h, nl, "set-cookie")) {
      memcpy(hdrs + keep, h, len);
      keep += len;
    }
    h += len;
  }
  int64_t life = cc.s_maxage >= 0 ? cc.s_maxage : cc.max_age;
  size_t vlen = RC_HDR + keep + pr->cache_body.len;
  char *val = life > (int64_t)age0 ? malloc(vlen) : NULL;
  if (val) {
    uint16_t st = (uint16_t)pr->resp.status;
    uint64_t now = unix_ms();
    uint32_t hl = (uint32_t)keep;
    memcpy(val, "KC1", 3);
    memcpy(val + 3, &st, 2);
    memcpy(val + 5, &now, 8);
    memcpy(val + 13, &age0, 4);
    memcpy(val + 17, &hl, 4);
    memcpy(val + RC_HDR, hdrs, keep);
    if (pr->cache_body.len) memcpy(val + RC_HDR + keep, pr->cache_body.data, pr->cache_body.len);
    char ttl[24];
    int tl = snprintf(ttl, sizeof ttl, "%lld", (long long)(life - (int64_t)age0) * 1000);
    const char *argv[] = {"SET", key, val, "PX", ttl};
    const size_t lens[] = {3, klen, vlen, 2, (size_t)tl};
    kl_redis_command(r, 5, argv, lens, rcache_set_done, NULL);
    free(val);
  }
  free(hdrs);
}

static void cache_woken(void *arg) {
  kl_proxy_req *pr = arg;
  pr->cache_wait = 0;
  keel_req *req = pr->cancelled ? NULL : kl_stream_req(&pr->d);
  if (!req) {
    pr_free(pr);
    return;
  }
  if (pr->wake_outcome == KL_CACHE_FILLED && cache_lookup(pr, req, 0)) return;
  go_upstream(pr);
}

/* Copies the upstream's response head to the client, without hop-by-hop fields. */
static int send_head(kl_proxy_req *pr, const char *buf, const kl_header *hdrs) {
  const kl_http_resp *r = &pr->resp;
  const char *conn_v = NULL;
  size_t conn_l = 0, cap = r->head_len + pr->extra_len + 64;
  for (uint32_t i = 0; i < r->nheaders; i++)
    if (kl_http_name_eq(buf + hdrs[i].name_off, hdrs[i].name_len, "connection")) {
      conn_v = buf + hdrs[i].value_off;
      conn_l = hdrs[i].value_len;
    }
  char *out = malloc(cap), *p = out;
  if (!out) return -1;
  for (uint32_t i = 0; i < r->nheaders; i++) {
    const char *n = buf + hdrs[i].name_off;
    size_t nl = hdrs[i].name_len;
    if (hop_by_hop(n, nl) || kl_http_name_eq(n, nl, "date") ||
        (conn_v && named_by_connection(n, nl, conn_v, conn_l)))
      continue;
    p = put(p, n, nl);
    p = PUTS(p, ": ");
    p = put(p, buf + hdrs[i].value_off, hdrs[i].value_len);
    p = PUTS(p, "\r\n");
  }
  if (pr->ticket && (pr->cache_hdrs = malloc((size_t)(p - out) + 1)) != NULL) {
    memcpy(pr->cache_hdrs, out, (size_t)(p - out));
    pr->cache_hdrs_len = (size_t)(p - out);
    kl_buf_init(&pr->cache_body, pr->r->cache_max_object);
  } else if (pr->ticket) {
    kl_cache_abandon(pr->r->gw->cache, pr->ticket);
    pr->ticket = NULL;
  }
  if (pr->extra_len) p = put(p, pr->extra, pr->extra_len);
  int64_t len = r->chunked || !r->has_length ? -1 : (int64_t)r->content_length;
  if (pr->is_head && r->has_length) len = (int64_t)r->content_length;
  int rc = kl_stream_head(&pr->d, r->status, out, (size_t)(p - out), len, !pr->resp_body && !pr->is_head);
  free(out);
  return rc;
}

/* The response is complete: the connection goes back to the pool if it can. */
static void response_done(kl_proxy_req *pr, int reusable) {
  kl_upconn *uc = pr->uc;
  kl_up_worker *uw = pr->uw;
  pr->rstate = RS_DONE;
  client_span_end(pr, pr->resp.status, NULL);
  ep_outcome(pr->u, &pr->u->eps[pr->ep], pr->resp.status < 500, pr->w->loop.now);
  pr->uc = NULL;
  uc->pr = NULL;
  if (reusable && pr->sent && pr->resp.keep_alive && uc->in.len == 0 &&
      uw->nidle[uc->ep] < pr->u->keepalive && !pr->w->draining) {
    uc->state = UC_IDLE;
    uc->next = uw->idle[uc->ep];
    uw->idle[uc->ep] = uc;
    uw->nidle[uc->ep]++;
    kl_io_modify(uw->loop, &uc->io, EPOLLIN | EPOLLRDHUP); /* notices a close while idle */
  } else {
    uc_close(uc);
  }
  kl_deferred d = pr->d;
  if (pr->ticket) { /* the leader stores what it got (if storable) and wakes the waiters */
    keel_req *req = kl_stream_req(&d);
    kl_cache_req cr;
    if (req && reusable) {
      cache_req_of(pr, req, &cr);
      kl_cache_resp resp = {pr->resp.status, pr->cache_hdrs, pr->cache_hdrs_len,
                            pr->cache_body.data, pr->cache_body.len};
      if (kl_cache_fill(pr->r->gw->cache, pr->ticket, &cr, &resp, pr->w->loop.now) == 1)
        rcache_put(pr, &cr);
    } else {
      kl_cache_abandon(pr->r->gw->cache, pr->ticket);
    }
    pr->ticket = NULL;
  }
  pr_uncount(pr);
  kl_timer_cancel(&pr->w->loop.timers, &pr->timer);
  free(pr->head);
  free(pr->extra);
  free(pr->cache_hdrs);
  kl_buf_free(&pr->cache_body);
  free(pr);
  kl_stream_end(&d);
}

/* Drops the first n bytes of what the upstream sent (handled). */
static void uc_consume(kl_upconn *uc, size_t n) {
  memmove(uc->in.data, uc->in.data + n, uc->in.len - n);
  uc->in.len -= n;
}

/* Forwards buffered body bytes; returns 1 when the response is complete. */
static int forward_body(kl_proxy_req *pr) {
  kl_upconn *uc = pr->uc;
  const kl_http_resp *r = &pr->resp;
  if (!pr->resp_body) return 1;
  if (r->chunked) {
    kl_http_error err;
    int rc = kl_chunked_decode(&pr->resp_chunked, uc->in.data, uc->in.len, &pr->resp_rpos,
                               &pr->resp_wpos, UINT64_MAX, 64 * 1024, &err);
    if (rc < 0) return -1;
    cache_keep(pr, uc->in.data, pr->resp_wpos);
    int w = kl_stream_write(&pr->d, uc->in.data, pr->resp_wpos);
    if (w < 0) return -1;
    uc_consume(uc, pr->resp_rpos);
    pr->resp_rpos = pr->resp_wpos = 0;
    if (w == 1) pr->paused = 1;
    if (rc == 1) return uc->in.len == 0 ? 1 : 2;
    return 0;
  }
  size_t n = uc->in.len;
  if (r->has_length && n > pr->resp_left) n = (size_t)pr->resp_left;
  cache_keep(pr, uc->in.data, n);
  int w = kl_stream_write(&pr->d, uc->in.data, n);
  if (w < 0) return -1;
  uc_consume(uc, n);
  if (w == 1) pr->paused = 1;
  if (r->has_length) {
    pr->resp_left -= n;
    if (pr->resp_left == 0) return uc->in.len == 0 ? 1 : 2;
  }
  return 0;
}

/* Parses and forwards what the upstream sent so far: 1 while the request goes on with the
 * same connection, 0 when it ended (pr and its connection may be freed). */
static int on_readable(kl_proxy_req *pr) {
  kl_upconn *uc = pr->uc;
  while (pr->rstate == RS_HEAD) {
    kl_worker *w = pr->w;
    kl_http_error err;
    int rc = kl_http_parse_response(uc->in.data, uc->in.len, &pr->resp_scanned, &w->limits,
                                    w->hdrs, &pr->resp, &err);
    w->hdrs_conn = NULL; /* the worker's header array now holds this response's fields */
    if (rc == 0) return 1;
    if (rc < 0) {
      ep_outcome(pr->u, &pr->u->eps[pr->ep], 0, w->loop.now);
      pr_fail(pr, 502, "the upstream sent a malformed response");
      return 0;
    }
    if (pr->resp.status < 200) {
      if (pr->resp.status == 101) {
        pr_fail(pr, 502, "the upstream switched protocols");
        return 0;
      }
      /* Interim answers (100 Continue) are the proxy's business, not the client's. */
      uc_consume(uc, pr->resp.head_len);
      pr->resp_scanned = 0;
      continue;
    }
    int st = pr->resp.status;
    if ((st == 502 || st == 503 || st == 504) && may_retry(pr, 0)) {
      attempt_drop(pr);
      retry_later(pr);
      return 0;
    }
    pr->resp_body = (uint8_t)kl_http_resp_has_body(&pr->resp, pr->is_head);
    if (send_head(pr, uc->in.data, w->hdrs) != 0) {
      kl_deferred d = pr->d;
      pr_free(pr);
      kl_stream_abort(&d);
      return 0;
    }
    uc_consume(uc, pr->resp.head_len);
    pr->resp_left = pr->resp.content_length;
    kl_chunked_init(&pr->resp_chunked);
    pr->resp_rpos = pr->resp_wpos = 0;
    pr->rstate = RS_BODY;
    pr_timer(pr);
  }
  if (pr->paused) return 1;
  int rc = forward_body(pr);
  if (rc < 0) {
    ep_outcome(pr->u, &pr->u->eps[pr->ep], 0, pr->w->loop.now);
    kl_deferred d = pr->d;
    pr_free(pr);
    kl_stream_abort(&d);
    return 0;
  }
  if (rc >= 1) {
    response_done(pr, rc == 1);
    return 0;
  }
  if (pr->paused) uc_want(uc);
  return 1;
}

static void uc_event(kl_loop *loop, kl_io *io, uint32_t events) {
  (void)loop;
  kl_upconn *uc = (kl_upconn *)(void *)io;
  kl_proxy_req *pr = uc->pr;
  if (uc->state == UC_IDLE) { /* the upstream closed (or sent junk) while idle */
    kl_up_worker *uw = uc->uw;
    for (kl_upconn **pp = &uw->idle[uc->ep]; *pp; pp = &(*pp)->next)
      if (*pp == uc) {
        *pp = uc->next;
        uw->nidle[uc->ep]--;
        break;
      }
    uc_close(uc);
    return;
  }
  if (!pr) return;
  if (uc->state == UC_CONNECTING) {
    int err = 0;
    socklen_t el = sizeof err;
    if (getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0) err = errno;
    if (err || (events & (EPOLLERR | EPOLLHUP))) {
      attempt_failed(pr, 1, 502, "cannot connect to the upstream");
      return;
    }
    if (!(events & EPOLLOUT)) return;
    if (pr->u->tls) {
      char terr[200];
      const char *host = pr->u->tls_name[0] ? pr->u->tls_name : pr->u->eps[uc->ep].host;
      if (!(uc->tls = kl_tls_client_new(pr->u->tls, io->fd, host, terr, sizeof terr))) {
        attempt_failed(pr, 1, 502, "cannot start TLS to the upstream");
        return;
      }
      uc->state = UC_HANDSHAKE;
    } else {
      uc_ready(pr);
      return;
    }
  }
  if (uc->state == UC_HANDSHAKE) {
    uint32_t want = 0;
    int h = kl_tls_handshake(uc->tls, &want);
    if (h < 0) {
      char msg[300];
      snprintf(msg, sizeof msg, "TLS to the upstream failed: %s", kl_tls_error(uc->tls));
      attempt_failed(pr, 1, 502, msg);
      return;
    }
    if (h == 0) {
      kl_io_modify(uc->uw->loop, &uc->io, want | EPOLLRDHUP);
      return;
    }
    uc_ready(pr);
    return;
  }
  if (events & EPOLLOUT) {
    if (uc_flush(uc) != 0) {
      attempt_failed(pr, 0, 502, "the upstream connection failed while sending the request");
      return;
    }
    check_sent(pr);
    if (uc->out.len == 0 && pr->has_body && !pr->body_end) {
      kl_stream_resume(&pr->d);
      if (!uc->pr) return; /* the request ended meanwhile */
    }
  }
  if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) || pr->paused) return;
  for (;;) {
    size_t head_max = pr->w->srv->cfg.header_bytes_max;
    uc->in.max = head_max + UP_IN_EXTRA;
    if (uc->in.cap - uc->in.len < 4096 && kl_buf_reserve(&uc->in, 16 * 1024) != 0 &&
        uc->in.cap == uc->in.len) {
      if (pr->rstate == RS_HEAD) pr_fail(pr, 502, "the upstream's response head is too large");
      return; /* the body forwarder makes room */
    }
    ssize_t n = uc_read(uc, uc->in.data + uc->in.len, uc->in.cap - uc->in.len);
    if (n == -EAGAIN) {
      if (uc->tls_want) uc_want(uc);
      break;
    }
    if (n <= 0) { /* the upstream closed or failed */
      if (pr->rstate == RS_BODY && pr->resp.close_delimited && n == 0) {
        if (on_readable(pr)) response_done(pr, 0);
        return;
      }
      if (pr->rstate == RS_HEAD) {
        int never = uc->reused && uc->in.len == 0 && pr->body_taken == 0;
        attempt_failed(pr, never, 502, "the upstream closed the connection before answering");
      } else {
        ep_outcome(pr->u, &pr->u->eps[pr->ep], 0, pr->w->loop.now);
        kl_deferred d = pr->d;
        pr_free(pr);
        kl_stream_abort(&d);
      }
      return;
    }
    uc->in.len += (size_t)n;
    if (!on_readable(pr) || pr->paused) return;
    if ((size_t)n < 4096 && !(uc->tls && kl_tls_pending(uc->tls))) return; /* drained */
  }
}

/* ---- the handler ---------------------------------------------------------------------- */

void kl_proxy_handler(keel_req *req, void *route) { kl_proxy_start(req, route, NULL, 0, NULL); }

void kl_proxy_start(keel_req *req, const kl_gw_route *r, const char *extra, size_t extra_len,
                    const char *tenant) {
  kl_worker *w = req->conn->w;
  kl_gw_upstream *u = &r->gw->ups[r->upstream];
  kl_up_worker *uw = &u->w[w->id];
  uw->loop = &w->loop;
  if (u->max_pending && atomic_load(&u->pending) >= u->max_pending) {
    keel_resp_header(req, "Retry-After", "1");
    keel_respond_error(req, 503, "too many requests in flight to the upstream");
    return;
  }
  kl_proxy_req *pr = calloc(1, sizeof *pr);
  if (pr) pr->u = u;
  if (!pr || build_head(pr, req) != 0) {
    if (pr) free(pr->head);
    free(pr);
    keel_respond_error(req, 503, "out of memory");
    return;
  }
  if (extra_len && (pr->extra = malloc(extra_len)) != NULL) {
    memcpy(pr->extra, extra, extra_len);
    pr->extra_len = extra_len;
  }
  pr->r = r;
  pr->tenant = tenant;
  pr->uw = uw;
  pr->w = w;
  pr->ep = pr->last_ep = -1;
  pr->timer.cb = pr_timer_cb;
  keel_str m = keel_req_method(req);
  pr->idempotent = (uint8_t)idempotent(m);
  pr->is_head = req->conn->head.is_head;
  pr->start_ms = w->loop.now;
  pr->first_byte_at = r->first_byte_ms ? pr->start_ms + r->first_byte_ms : 0;
  pr->total_at = r->total_ms ? pr->start_ms + r->total_ms : 0;
  kl_req_stream(req, &pr->d, &stream_ops, pr);
  if (r->cache_on && r->gw->cache && ((m.len == 3 && memcmp(m.ptr, "GET", 3) == 0) || pr->is_head) && cache_lookup(pr, req, 1))
    return;
  go_upstream(pr);
}

static void go_upstream(kl_proxy_req *pr) {
  kl_gw_upstream *u = pr->u;
  pr->counted = 1;
  atomic_fetch_add(&u->pending, 1);
  uint64_t now = pr->w->loop.now;
  if (now / 1000 == atomic_load(&u->budget_window)) atomic_fetch_add(&u->win_requests, 1);
  atomic_fetch_add(&u->requests, 1);
  attempt(pr);
}
