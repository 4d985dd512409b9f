/* server.c - keel_server: routes, probes, SO_REUSEPORT listeners, worker threads, signals, drain. */
#include <errno.h>
#include <linux/filter.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "core/cpus.h"
#include "core/keys.h"
#include "core/sandbox.h"
#include "http/otlp_http.h"
#include "gateway/gw.h"
#include "gateway/health.h"
#include "gateway/proxy.h"
#include "http/server_internal.h"
#include "http/tls.h"
#include "pipeline/grpc.h"
#include "pipeline/pipeline.h"

#define KL_LISTEN_BACKLOG 4096
/** Between refusing new handshakes and closing a listener at drain: well above any in-cluster
 *  round trip, so every handshake under way completes and is served, not reset by the close. */
#define KL_LISTEN_QUIESCE_MS 100

/* ---- routes ------------------------------------------------------------- */

int keel_route(keel_server *srv, const char *method, const char *path, keel_handler handler,
               void *userdata) {
  return kl_route_add(srv, 0, method, path, handler, userdata, 0);
}

int kl_route_add(keel_server *srv, unsigned listener, const char *method, const char *path,
                 keel_handler handler, void *userdata, unsigned flags) {
  if (!srv || !method || !path || !handler || path[0] != '/' || !method[0] ||
      listener >= srv->nlisteners)
    return -EINVAL;
  for (const char *m = method; *m; m++)
    if (*m < 'A' || *m > 'Z') return -EINVAL;
  for (size_t i = 0; i < srv->nroutes; i++)
    if (srv->routes[i].listener == listener && strcmp(srv->routes[i].method, method) == 0 &&
        strcmp(srv->routes[i].path, path) == 0)
      return -EEXIST;
  if (srv->nroutes == srv->cap_routes) {
    size_t cap = srv->cap_routes ? srv->cap_routes * 2 : 16;
    kl_route *r = realloc(srv->routes, cap * sizeof(*r));
    if (!r) return -ENOMEM;
    srv->routes = r;
    srv->cap_routes = cap;
  }
  kl_route *r = &srv->routes[srv->nroutes];
  memset(r, 0, sizeof(*r));
  r->method = strdup(method);
  r->path = strdup(path);
  if (!r->method || !r->path) {
    free(r->method);
    free(r->path);
    return -ENOMEM;
  }
  r->method_len = strlen(method);
  r->path_len = strlen(path);
  r->handler = handler;
  r->userdata = userdata;
  r->listener = (uint8_t)listener;
  r->flags = (uint8_t)flags;
  srv->nroutes++;
  return 0;
}

const kl_route *kl_route_find(const keel_server *srv, unsigned listener, const char *method,
                              size_t mlen, const char *path, size_t plen, char *allow,
                              size_t allowlen) {
  if (plen == 0) { /* absolute-form target without a path */
    path = "/";
    plen = 1;
  }
  int head = mlen == 4 && memcmp(method, "HEAD", 4) == 0;
  size_t an = 0;
  allow[0] = '\0';
  for (size_t i = 0; i < srv->nroutes; i++) {
    const kl_route *r = &srv->routes[i];
    if (r->listener != listener || r->path_len != plen || memcmp(r->path, path, plen) != 0) continue;
    if ((r->method_len == mlen && memcmp(r->method, method, mlen) == 0) ||
        (head && strcmp(r->method, "GET") == 0))
      return r;
    int n = snprintf(allow + an, allowlen - an, "%s%s%s", an ? ", " : "", r->method,
                     strcmp(r->method, "GET") == 0 ? ", HEAD" : "");
    if (n > 0 && (size_t)n < allowlen - an) an += (size_t)n;
  }
  return NULL;
}

/* ---- application metrics -------------------------------------------------- */

int keel_metric_counter(keel_server *srv, const char *name, const char *help,
                        const char *const *labels, keel_metric **out) {
  if (!srv || !out) return -EINVAL;
  return kl_metrics_add(srv->metrics, name, help, KL_M_COUNTER, labels, NULL, 0, out);
}

int keel_metric_gauge(keel_server *srv, const char *name, const char *help,
                      const char *const *labels, keel_metric **out) {
  if (!srv || !out) return -EINVAL;
  return kl_metrics_add_value_gauge(srv->metrics, name, help, labels, out);
}

int keel_metric_histogram(keel_server *srv, const char *name, const char *help,
                          const char *const *labels, const double *bounds, size_t nbounds,
                          keel_metric **out) {
  if (!srv || !out || nbounds > 64) return -EINVAL;
  return kl_metrics_add(srv->metrics, name, help, KL_M_HISTOGRAM, labels, bounds,
                        (uint32_t)nbounds, out);
}

/* ---- probes ------------------------------------------------------------- */

static void probe_live(keel_req *req, void *ud) {
  (void)ud;
  static const char ok[] = "{\"status\":\"ok\"}";
  keel_respond(req, 200, "application/json", ok, sizeof(ok) - 1);
}

static void probe_ready(keel_req *req, void *ud) {
  keel_server *srv = ud;
  static const char ready[] = "{\"status\":\"ready\"}";
  static const char draining[] = "{\"status\":\"draining\"}";
  if (atomic_load_explicit(&srv->draining, memory_order_relaxed))
    keel_respond(req, 503, "application/json", draining, sizeof(draining) - 1);
  else
    keel_respond(req, 200, "application/json", ready, sizeof(ready) - 1);
}

/* ---- logging ------------------------------------------------------------ */

void keel_log(keel_server *srv, keel_log_level level, const char *msg, ...) {
  if (!srv || !srv->log || !kl_log_enabled(srv->log, level)) return;
  kl_line l;
  kl_line_begin(&l, level, msg);
  va_list ap;
  va_start(ap, msg);
  for (;;) {
    const char *k = va_arg(ap, const char *);
    if (!k) break;
    const char *v = va_arg(ap, const char *);
    kl_line_cstr(&l, k, v ? v : "");
  }
  va_end(ap);
  kl_line_end(&l, kl_log_queue(srv->log));
}

/* ---- server ------------------------------------------------------------- */

/* Splits "host:port" / "[v6]:port" and resolves it (numeric or name) into l->addr. */
static int resolve_listen(kl_listener *l, const char *text, char *err, size_t errlen) {
  char host[128];
  const char *colon = strrchr(text, ':'), *t = text;
  if (!colon) {
    snprintf(err, errlen, "%s: '%s' is not HOST:PORT", l->name, text);
    return -EINVAL;
  }
  size_t hl = (size_t)(colon - t);
  if (hl >= 2 && t[0] == '[' && t[hl - 1] == ']') {
    t++;
    hl -= 2;
  }
  if (hl >= sizeof(host)) hl = sizeof(host) - 1;
  memcpy(host, t, hl);
  host[hl] = '\0';
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_PASSIVE}, *res = NULL;
  int rc = getaddrinfo(hl ? host : NULL, colon + 1, &hints, &res);
  if (rc != 0 || !res) {
    snprintf(err, errlen, "%s: cannot resolve '%s': %s", l->name, text, gai_strerror(rc));
    return -EINVAL;
  }
  memcpy(&l->addr, res->ai_addr, res->ai_addrlen);
  l->addrlen = res->ai_addrlen;
  freeaddrinfo(res);
  return 0;
}

int kl_server_listen(keel_server *srv, const char *name, const char *addr, uint64_t body_max,
                     char *err, size_t errlen) {
  if (srv->nlisteners == KL_LISTENERS_MAX) return -ENOSPC;
  kl_listener *l = &srv->listeners[srv->nlisteners];
  memset(l, 0, sizeof(*l));
  snprintf(l->name, sizeof(l->name), "%s", name);
  l->body_max = body_max;
  int rc = resolve_listen(l, addr, err, errlen);
  if (rc) return rc;
  return (int)srv->nlisteners++;
}

/* POST /-/reload on the admin listener: what SIGHUP does, answered with the outcome. It runs
 * on the worker (reading the file and resolving names block it for that long). */
static void admin_reload(keel_req *req, void *arg) {
  keel_server *srv = arg;
  char err[512], body[700];
  if (!srv->config_path && !srv->tls) {
    keel_respond_error(req, 409, "keel was started without a config file: nothing to reload");
    return;
  }
  if (kl_server_reload(srv, err, sizeof err) != 0) {
    keel_log(srv, KEEL_LOG_ERROR, "reload failed: the previous configuration keeps serving",
             "error", err, NULL);
    keel_respond_error(req, 400, err);
    return;
  }
  kl_gw *gw = kl_srv_gw(srv);
  keel_log(srv, KEEL_LOG_INFO, "configuration reloaded", "file",
           srv->config_path ? srv->config_path : "", "by", "admin", NULL);
  int n = snprintf(body, sizeof body, "{\"reloaded\":true,\"routes\":%u,\"upstreams\":%u}",
                   gw ? gw->nroutes : 0, gw ? gw->nups : 0);
  keel_respond(req, 200, "application/json", body, (size_t)n);
}

keel_server *keel_server_new(const keel_config *cfg, char *err, size_t errlen) {
  keel_server *srv = calloc(1, sizeof(*srv));
  if (!srv) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  srv->cfg = *cfg;
  srv->stopfd = srv->donefd = -1;
  pthread_mutex_init(&srv->reload_lock, NULL);
  if (keel_config_validate(&srv->cfg, err, errlen) ||
      kl_server_listen(srv, "listen", cfg->listen, cfg->body_max, err, errlen) < 0)
    goto fail;
  if (cfg->pipeline_enabled && cfg->otlp_http_listen[0]) {
    int l = kl_server_listen(srv, "otlp_http", cfg->otlp_http_listen, cfg->otlp_max_request, err,
                             errlen);
    if (l < 0 || kl_otlp_http_routes(srv, (unsigned)l) != 0) {
      if (l >= 0) snprintf(err, errlen, "out of memory");
      goto fail;
    }
    srv->listeners[l].body_budget = cfg->buffer_memory_bytes;
  }
  if (cfg->pipeline_enabled && kl_otlp_http_handlers(srv) != 0) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  if (cfg->admin_listen[0]) {
    int l = kl_server_listen(srv, "admin", cfg->admin_listen, 0, err, errlen);
    if (l < 0 || kl_route_add(srv, (unsigned)l, "POST", "/-/reload", admin_reload, srv,
                              KL_ROUTE_UNTRACED) != 0) {
      if (l >= 0) snprintf(err, errlen, "out of memory");
      goto fail;
    }
  }
  if (cfg->tls_cert[0]) {
    kl_tls_server_config tc = {cfg->tls_cert, cfg->tls_key, cfg->tls_client_ca,
                               cfg->tls_client_auth};
    if (!(srv->tls = kl_tls_server_new(&tc, err, errlen))) goto fail;
  }
  srv->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  srv->donefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (srv->stopfd < 0 || srv->donefd < 0) {
    snprintf(err, errlen, "eventfd: %s", strerror(errno));
    goto fail;
  }
  srv->log = kl_log_new(STDOUT_FILENO, cfg->log_buffer_bytes, cfg->log_level);
  if (!srv->log) {
    snprintf(err, errlen, "cannot start the logger: %s", strerror(errno));
    goto fail;
  }
  kl_log_bind(srv->log);
  srv->metrics = kl_metrics_new();
  if (!srv->metrics ||
      (cfg->metrics_enabled && keel_route(srv, "GET", cfg->metrics_path, kl_stats_handler, srv)) ||
      keel_route(srv, "GET", "/livez", probe_live, srv) ||
      keel_route(srv, "GET", "/healthz", probe_live, srv) ||
      keel_route(srv, "GET", "/readyz", probe_ready, srv)) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  return srv;
fail:
  keel_server_free(srv);
  return NULL;
}

int keel_handler_register(keel_server *srv, const char *name, keel_handler fn, void *ud) {
  if (!srv || !name || !fn || !name[0] || strlen(name) >= sizeof(srv->handlers[0].name))
    return -EINVAL;
  if (srv->nhandlers == KL_GW_HANDLERS_MAX) return -ENOSPC;
  if (!srv->handlers && !(srv->handlers = calloc(KL_GW_HANDLERS_MAX, sizeof(*srv->handlers))))
    return -ENOMEM;
  kl_gw_handler *h = &srv->handlers[srv->nhandlers++];
  snprintf(h->name, sizeof(h->name), "%s", name);
  h->fn = fn;
  h->ud = ud;
  return 0;
}

int keel_server_gateway(keel_server *srv, const char *path, char *err, size_t errlen) {
  if (!srv || !path) return -EINVAL;
  kl_gw *gw = kl_gw_load(path, srv->handlers, srv->nhandlers, err, errlen);
  if (!gw) return -EINVAL;
  char *p = strdup(path);
  if (!p) {
    kl_gw_free(gw);
    return -ENOMEM;
  }
  free(srv->config_path);
  srv->config_path = p;
  kl_gw_free(srv->gw);
  srv->gw = gw;
  return (int)gw->nroutes;
}

int keel_gateway_check(const char *path, const char *const *handlers, char *err, size_t errlen) {
  kl_gw_handler hs[KL_GW_HANDLERS_MAX];
  size_t n = 0;
  for (; handlers && handlers[n] && n < KL_GW_HANDLERS_MAX; n++) {
    memset(&hs[n], 0, sizeof(hs[n]));
    snprintf(hs[n].name, sizeof(hs[n].name), "%s", handlers[n]);
  }
  kl_gw *gw = kl_gw_load(path, hs, n, err, errlen);
  if (!gw) return -EINVAL;
  int routes = (int)gw->nroutes;
  kl_gw_free(gw);
  return routes;
}

void keel_server_free(keel_server *srv) {
  if (!srv) return;
  for (size_t i = 0; i < srv->nroutes; i++) {
    free(srv->routes[i].method);
    free(srv->routes[i].path);
  }
  free(srv->routes);
  kl_gw_free(srv->gw);
  while (srv->retired) {
    kl_gw *g = srv->retired;
    srv->retired = g->next_retired;
    kl_gw_free(g);
  }
  free(srv->config_path);
  kl_gw_metrics_free(srv);
  pthread_mutex_destroy(&srv->reload_lock);
  free(srv->handlers);
  if (srv->stopfd >= 0) close(srv->stopfd);
  if (srv->donefd >= 0) close(srv->donefd);
  kl_log_free(srv->log);
  kl_metrics_free(srv->metrics);
  kl_stats_free(&srv->stats);
  kl_tls_server_free(srv->tls);
  free(srv);
}

int keel_server_port(const keel_server *srv) { return atomic_load(&srv->listeners[0].port); }

void keel_server_stop(keel_server *srv) {
  uint64_t one = 1;
  ssize_t n = write(srv->stopfd, &one, sizeof(one));
  (void)n;
}

/* ---- workers ------------------------------------------------------------ */

static int open_listener(const kl_listener *l, int port) {
  struct sockaddr_storage addr = l->addr;
  if (addr.ss_family == AF_INET)
    ((struct sockaddr_in *)(void *)&addr)->sin_port = htons((uint16_t)port);
  else
    ((struct sockaddr_in6 *)(void *)&addr)->sin6_port = htons((uint16_t)port);
  int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (bind(fd, (struct sockaddr *)&addr, l->addrlen) < 0 || listen(fd, KL_LISTEN_BACKLOG) < 0) {
    int e = -errno;
    close(fd);
    return e;
  }
  return fd;
}

static void worker_close_listener(kl_timer *t);

struct kl_post {
  void (*fn)(void *arg);
  void *arg;
  struct kl_post *next;
};

int kl_worker_post(kl_worker *w, void (*fn)(void *arg), void *arg) {
  struct kl_post *p = malloc(sizeof(*p));
  if (!p) return -ENOMEM;
  p->fn = fn;
  p->arg = arg;
  p->next = NULL;
  pthread_mutex_lock(&w->post_lock);
  *w->posted_tail = p;
  w->posted_tail = &p->next;
  pthread_mutex_unlock(&w->post_lock);
  uint64_t one = 1;
  ssize_t n = write(w->ctl_io.fd, &one, sizeof(one));
  (void)n;
  return 0;
}

/* Runs what other threads posted to this worker. */
static void worker_run_posted(kl_worker *w) {
  pthread_mutex_lock(&w->post_lock);
  struct kl_post *p = w->posted;
  w->posted = NULL;
  w->posted_tail = &w->posted;
  pthread_mutex_unlock(&w->post_lock);
  while (p) {
    struct kl_post *next = p->next;
    p->fn(p->arg);
    free(p);
    p = next;
  }
}

int kl_server_gw_unlink(void *arg, kl_gw *gw) {
  keel_server *srv = arg;
  pthread_mutex_lock(&srv->reload_lock);
  int found = 0;
  for (kl_gw **pp = &srv->retired; *pp; pp = &(*pp)->next_retired)
    if (*pp == gw) {
      *pp = gw->next_retired;
      found = 1;
      break;
    }
  pthread_mutex_unlock(&srv->reload_lock);
  return found;
}

/* Releases the worker's part of every replaced gateway it no longer uses; `stopping`: the
 * worker exits, so it closes its part of all of them (they are freed with the server). */
static void worker_release_gws(kl_worker *w, int stopping) {
  keel_server *srv = w->srv;
  kl_gw *list[16];
  size_t n = 0;
  pthread_mutex_lock(&srv->reload_lock);
  for (kl_gw *g = srv->retired; g && n < 16; g = g->next_retired) list[n++] = g;
  pthread_mutex_unlock(&srv->reload_lock);
  for (size_t i = 0; i < n; i++) {
    if (!stopping) {
      kl_gw_release(list[i], w->id, kl_server_gw_unlink, srv); /* may free list[i] */
    } else if (!list[i]->released[w->id]) {
      list[i]->released[w->id] = 1;
      for (uint32_t u = 0; u < list[i]->nups; u++) kl_proxy_worker_close(&list[i]->ups[u], w->id);
      kl_gw_worker_close(list[i], w->id);
    }
  }
}

static void worker_ctl(kl_loop *loop, kl_io *io, uint32_t events) {
  (void)events;
  kl_worker *w = (kl_worker *)(void *)((char *)io - offsetof(kl_worker, ctl_io));
  uint64_t v;
  ssize_t n = read(io->fd, &v, sizeof(v));
  (void)n;
  worker_run_posted(w);
  if (atomic_exchange(&w->gw_retire, 0)) worker_release_gws(w, 0);
  int cmd = atomic_exchange(&w->cmd, KL_CMD_NONE);
  if (cmd == KL_CMD_FORCE) {
    kl_conn_close_all(w);
    return;
  }
  if (cmd == KL_CMD_DRAIN && !w->draining) {
    /* Closing a listener resets whatever waits in its accept queue, and connections keep
     * landing there until it is closed. So first stop new handshakes: a socket filter drops
     * segments without ACK (new SYNs; their clients retry, then find the port closed: refused,
     * nothing sent). Handshakes already under way still complete and are accepted as usual;
     * after the quiesce we take what is queued and close. */
    static const struct sock_filter syn_drop[] = {
        BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 13), /* TCP flags (data starts at the TCP header) */
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 0x10, 0, 1), /* ACK set? */
        BPF_STMT(BPF_RET | BPF_K, 0xffffffffu),           /* keep */
        BPF_STMT(BPF_RET | BPF_K, 0),                     /* drop */
    };
    const struct sock_fprog prog = {4, (struct sock_filter *)(uintptr_t)syn_drop};
    for (unsigned i = 0; i < w->srv->nlisteners; i++)
      if (w->listen_io[i].fd >= 0)
        setsockopt(w->listen_io[i].fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog));
    if (kl_timer_set(&loop->timers, &w->close_timer, loop->now + KL_LISTEN_QUIESCE_MS) < 0)
      worker_close_listener(&w->close_timer);
  }
}

static void worker_close_listener(kl_timer *t) {
  kl_worker *w = (kl_worker *)(void *)((char *)t - offsetof(kl_worker, close_timer));
  if (w->draining) return;
  w->draining = 1; /* also lifts kl_conn_accept's per-event cap: take the whole queue */
  for (unsigned i = 0; i < w->srv->nlisteners; i++) {
    kl_io *io = &w->listen_io[i];
    if (io->fd < 0) continue;
    kl_conn_accept(&w->loop, io, EPOLLIN);
    kl_io_stop(&w->loop, io);
    close(io->fd);
    io->fd = -1;
  }
  kl_conn_drain_all(w);
}

static void worker_accept_resume(kl_timer *t) {
  kl_worker *w = (kl_worker *)(void *)((char *)t - offsetof(kl_worker, accept_timer));
  for (unsigned i = 0; i < w->srv->nlisteners; i++)
    if (w->listen_io[i].fd >= 0) kl_io_modify(&w->loop, &w->listen_io[i], EPOLLIN);
}

static void worker_before_sleep(kl_loop *loop) {
  kl_worker *w = (kl_worker *)(void *)((char *)loop - offsetof(kl_worker, loop));
  kl_conn_recycle(w);
  if (w->mb && loop->nevents) kl_stats_lag(w, kl_now_us() - loop->woke_us);
}

static void *worker_main(void *arg) {
  kl_worker *w = arg;
  w->logq = kl_log_bind(w->srv->log);
  if (w->mb) kl_metrics_bind(w->srv->metrics, w->id);
  if (w->srv->tracer && !(w->traceq = kl_tracer_bind(w->srv->tracer)))
    keel_log(w->srv, KEEL_LOG_ERROR, "tracing off on a worker: no span queue", "error",
             strerror(errno), NULL); /* its requests are traced, their spans dropped */
  int rc = 0;
  if (w->srv->pipeline && w->srv->nlisteners > 1 && (rc = kl_otlp_http_worker_init(w)) != 0)
    keel_log(w->srv, KEEL_LOG_ERROR, "OTLP/HTTP receiver off on a worker: cannot set up",
             "error", strerror(-rc), NULL);
  kl_loop_run(&w->loop);
  kl_conn_close_all(w);
  kl_otlp_http_worker_free(w);
  kl_conn_free_pool(w);
  uint64_t one = 1;
  ssize_t n = write(w->srv->donefd, &one, sizeof(one));
  (void)n;
  return NULL;
}

static int worker_init(keel_server *srv, kl_worker *w, unsigned id, const int *listen_fds) {
  const keel_config *cfg = &srv->cfg;
  memset(w, 0, sizeof(*w));
  w->srv = srv;
  w->id = id;
  pthread_mutex_init(&w->post_lock, NULL);
  w->posted_tail = &w->posted;
  for (unsigned i = 0; i < KL_LISTENERS_MAX; i++) {
    /* NOLINTNEXTLINE(clang-analyzer-core.uninitialized.Assign): open_listeners set them */
    w->listen_io[i].fd = i < srv->nlisteners ? listen_fds[i] : -1;
    w->listen_io[i].cb = kl_conn_accept;
  }
  w->ctl_io.fd = -1;
  w->max_conns = (cfg->max_connections + srv->nworkers - 1) / srv->nworkers;
  w->limits.request_line_max = cfg->request_line_max;
  w->limits.header_bytes_max = cfg->header_bytes_max;
  w->limits.header_count_max = cfg->header_count_max;
  w->rng = 0x9E3779B97F4A7C15ull ^ ((uint64_t)id << 32) ^ (uint64_t)kl_now_us();
  kl_arena_init(&w->arena, 64 * 1024, 64u * 1024 * 1024 + cfg->body_max * 10);
  kl_buf_init(&w->hdrbuf, 16 * 1024);
  w->accept_timer.cb = worker_accept_resume;
  w->close_timer.cb = worker_close_listener;
  kl_trace_rng_init(&w->ids); /* getrandom; a clock-seeded fallback still gives usable ids */
  w->hdrs = calloc(cfg->header_count_max, sizeof(*w->hdrs));
  if (!w->hdrs) return -ENOMEM;
  /* A proxied request arms a timer of its own beside its connection's. */
  int rc = kl_loop_init(&w->loop, w->max_conns * (srv->gw ? 2 : 1) + 8);
  if (rc) return rc;
  w->loop.before_sleep = worker_before_sleep;
  w->ctl_io.fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (w->ctl_io.fd < 0) return -errno;
  w->ctl_io.cb = worker_ctl;
  if ((rc = kl_io_start(&w->loop, &w->ctl_io, EPOLLIN))) return rc;
  for (unsigned i = 0; i < srv->nlisteners; i++)
    if ((rc = kl_io_start(&w->loop, &w->listen_io[i], EPOLLIN))) return rc;
  return 0;
}

static void worker_cleanup(kl_worker *w) {
  kl_otlp_http_worker_close(w);
  kl_gw_worker_close(w->srv->gw, w->id);
  worker_release_gws(w, 1);
  for (unsigned i = 0; i < KL_LISTENERS_MAX; i++)
    if (w->listen_io[i].fd >= 0) close(w->listen_io[i].fd);
  if (w->ctl_io.fd >= 0) close(w->ctl_io.fd);
  kl_loop_free(&w->loop);
  kl_arena_free(&w->arena);
  kl_buf_free(&w->hdrbuf);
  worker_run_posted(w); /* what arrived while stopping: its waiters are cancelled by now */
  free(w->hdrs);
}

static void worker_command(kl_worker *w, int cmd) {
  atomic_store(&w->cmd, cmd);
  uint64_t one = 1;
  ssize_t n = write(w->ctl_io.fd, &one, sizeof(one));
  (void)n;
}

/* ---- run ---------------------------------------------------------------- */

static const char *addr_text(const kl_listener *l, char *buf, size_t n) {
  char host[64] = "?";
  getnameinfo((const struct sockaddr *)&l->addr, l->addrlen, host, sizeof(host), NULL, 0,
              NI_NUMERICHOST);
  snprintf(buf, n, l->addr.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", host,
           atomic_load(&l->port));
  return buf;
}

static int sa_port(const struct sockaddr_storage *a) {
  /* The kernel (getsockname) or the address parser filled *a: the analyzer cannot see it. */
  /* NOLINTNEXTLINE(clang-analyzer-core.CallAndMessage,clang-analyzer-core.UndefinedBinaryOperatorResult) */
  return ntohs(a->ss_family == AF_INET ? ((const struct sockaddr_in *)(const void *)a)->sin_port
                                       : ((const struct sockaddr_in6 *)(const void *)a)->sin6_port);
}

/* Opens a worker's socket on every listener into fds (the caller closes them, also on failure);
 * the first bind of port 0 picks the port. */
static int open_listeners(keel_server *srv, int *fds) {
  for (unsigned l = 0; l < srv->nlisteners; l++) {
    kl_listener *li = &srv->listeners[l];
    int port = atomic_load(&li->port);
    if (port == 0) port = sa_port(&li->addr);
    int fd = open_listener(li, port);
    if (fd < 0) {
      char buf[160];
      keel_log(srv, KEEL_LOG_ERROR, "cannot listen", "listener", li->name, "address",
               addr_text(li, buf, sizeof(buf)), "error", strerror(-fd), NULL);
      return fd;
    }
    fds[l] = fd;
    if (port == 0) {
      struct sockaddr_storage a;
      socklen_t alen = sizeof(a);
      if (getsockname(fd, (struct sockaddr *)&a, &alen) != 0) return -errno;
      port = sa_port(&a);
    }
    atomic_store(&li->port, port);
  }
  return 0;
}

/* Starts the OTLP exporter for tracing.endpoint: a base URL gets /v1/traces appended. */
static int tracer_start(keel_server *srv) {
  const keel_config *cfg = &srv->cfg;
  char url[sizeof(cfg->trace_endpoint) + 16], err[256];
  size_t n = strlen(cfg->trace_endpoint);
  static const char suffix[] = "/v1/traces";
  if (n >= sizeof(suffix) - 1 && strcmp(cfg->trace_endpoint + n - (sizeof(suffix) - 1), suffix) == 0)
    snprintf(url, sizeof(url), "%s", cfg->trace_endpoint);
  else
    snprintf(url, sizeof(url), "%.*s%s", (int)(n && cfg->trace_endpoint[n - 1] == '/' ? n - 1 : n),
             cfg->trace_endpoint, suffix);
  kl_trace_config tc = {
      .endpoint = url,
      .service_name = cfg->service_name,
      .service_version = KEEL_VERSION,
      .compression = cfg->trace_gzip ? KL_TRACE_COMPRESS_GZIP : KL_TRACE_COMPRESS_NONE,
      .batch_max_spans = cfg->trace_batch_spans,
      .batch_delay_ms = cfg->trace_batch_delay_ms,
      .export_timeout_ms = cfg->trace_export_timeout_ms,
      .queue_bytes = cfg->trace_queue_bytes,
  };
  srv->tracer = kl_tracer_new(&tc, err, sizeof(err));
  if (!srv->tracer) {
    int rc = errno ? -errno : -EINVAL;
    keel_log(srv, KEEL_LOG_ERROR, "cannot start tracing", "endpoint", url, "error", err, NULL);
    return rc;
  }
  char ratio[32];
  snprintf(ratio, sizeof(ratio), "%g", cfg->trace_sample_ratio);
  keel_log(srv, KEEL_LOG_INFO, "tracing", "endpoint", url, "sample_ratio", ratio, NULL);
  return 0;
}

/* SIGHUP / POST /-/reload: the config file is checked whole, then the gateway, the TLS
 * certificates (new connections get them; open ones keep theirs) and otlp.api_keys are read
 * again and swapped in together; anything failing leaves all of them as they were. The rest
 * of the configuration needs a restart. Main thread or the admin worker. */
int kl_server_reload(keel_server *srv, char *err, size_t errlen) {
  pthread_mutex_lock(&srv->reload_lock);
  int rc = 0;
  kl_gw *gw = NULL, *old = srv->gw;
  kl_gw_health *health = NULL;
  kl_keyring *keys = NULL;
  keel_config tmp;
  keel_config_init(&tmp);
  if (srv->config_path && (keel_config_load_file(&tmp, srv->config_path, err, errlen) ||
                           keel_config_apply_env(&tmp, err, errlen) ||
                           keel_config_validate(&tmp, err, errlen))) {
    rc = -EINVAL; /* the whole file must be valid, even what only a restart applies */
    goto out;
  }
  if (srv->config_path) {
    if (!(gw = kl_gw_load(srv->config_path, srv->handlers, srv->nhandlers, err, errlen))) {
      rc = -EINVAL;
      goto out;
    }
    char herr[160] = "";
    if (kl_gw_bind(gw, srv->nworkers) != 0 ||
        (!(health = kl_gw_health_start(gw, srv, herr, sizeof herr)) && herr[0])) {
      snprintf(err, errlen, "%s", herr[0] ? herr : "out of memory");
      rc = -ENOMEM;
      goto out;
    }
    kl_gw_adopt_slots(gw, old, srv->reloaded_slot);
  }
  /* otlp.api_keys: read again with the file (rotated keys take effect without a restart). */
  const char *key_path = srv->config_path ? tmp.otlp_api_keys : srv->cfg.otlp_api_keys;
  int set_keys = srv->pipeline != NULL;
  char ke[320];
  if (set_keys && key_path[0] && !(keys = kl_keyring_load(key_path, ke, sizeof ke))) {
    snprintf(err, errlen, "otlp.api_keys: %s", ke);
    rc = -EINVAL;
    goto out;
  }
  if (srv->tls) {
    kl_tls_server_config tc = {tmp.tls_cert, tmp.tls_key, tmp.tls_client_ca,
                               tmp.tls_client_auth};
    if (!srv->config_path) tc = (kl_tls_server_config){srv->cfg.tls_cert, srv->cfg.tls_key,
                                                       srv->cfg.tls_client_ca, srv->cfg.tls_client_auth};
    if (kl_tls_reload(srv->tls, &tc, err, errlen) != 0) {
      rc = -EINVAL;
      goto out;
    }
  }
  if (set_keys) {
    kl_pipeline_set_keys(srv->pipeline, keys);
    keys = NULL;
  }
  if (gw) { /* swap: new requests take the new routes; the old gateway retires */
    __atomic_store_n(&srv->gw, gw, __ATOMIC_RELEASE);
    kl_gw_health_stop(srv->health);
    srv->health = health;
    health = NULL;
    if (old) {
      atomic_store(&old->retire_left, srv->nworkers);
      old->next_retired = srv->retired;
      srv->retired = old;
      atomic_store_explicit(&old->retired, 1, memory_order_release);
      for (unsigned i = 0; i < srv->nworkers; i++) {
        atomic_store(&srv->workers[i].gw_retire, 1);
        uint64_t one = 1;
        ssize_t w = write(srv->workers[i].ctl_io.fd, &one, sizeof(one));
        (void)w;
      }
    }
    gw = NULL;
  }
out:
  kl_keyring_free(keys);
  kl_gw_health_stop(health);
  kl_gw_free(gw);
  atomic_fetch_add(rc ? &srv->reloads_failed : &srv->reloads_ok, 1);
  pthread_mutex_unlock(&srv->reload_lock);
  return rc;
}

static void sighup(keel_server *srv) {
  char err[512];
  if (!srv->config_path && !srv->tls && !srv->cfg.otlp_api_keys[0]) {
    keel_log(srv, KEEL_LOG_WARN, "SIGHUP ignored: no config file, TLS or API keys to reload", NULL);
    return;
  }
  if (kl_server_reload(srv, err, sizeof err) == 0)
    keel_log(srv, KEEL_LOG_INFO, "configuration reloaded", "file",
             srv->config_path ? srv->config_path : "", "routes",
             srv->gw ? (srv->gw->nroutes ? "yes" : "none") : "none", NULL);
  else
    keel_log(srv, KEEL_LOG_ERROR, "reload failed: the previous configuration keeps serving",
             "error", err, NULL);
}

/*
 * Raises the soft open-files limit to the hard one (container runtimes often start processes
 * at 1024) and warns when max_connections cannot fit in it.
 */
static void raise_nofile(keel_server *srv) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) getrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur != RLIM_INFINITY && srv->cfg.max_connections + 64u > rl.rlim_cur) {
    char lim[24];
    snprintf(lim, sizeof lim, "%llu", (unsigned long long)rl.rlim_cur);
    keel_log(srv, KEEL_LOG_WARN, "max_connections is above the open-files limit: accepting "
             "pauses while descriptors run out", "limit", lim, NULL);
  }
}

/* security.user and security.seccomp, once every listener is bound and before data_dir is touched
 * or the pipeline's, tracer's and workers' threads start (the log writer already runs: setuid
 * and the filter's TSYNC cover it). Refuses to run (nonzero) when either fails. Main thread. */
static int sandbox_enter(keel_server *srv) {
  const keel_config *cfg = &srv->cfg;
  char err[320], ids[48];
  if (cfg->security_user[0]) {
    kl_sandbox_user u;
    int rc = kl_sandbox_user_resolve(cfg->security_user, &u, err, sizeof err);
    if (rc == 0) rc = kl_sandbox_drop(&u, err, sizeof err);
    if (rc != 0) {
      keel_log(srv, KEEL_LOG_ERROR, "cannot switch user: refusing to run", "user",
               cfg->security_user, "error", err, NULL);
      return rc;
    }
    if (cfg->pipeline_enabled && access(cfg->data_dir, W_OK | X_OK) != 0 && errno != ENOENT) {
      keel_log(srv, KEEL_LOG_ERROR, "data_dir is not writable by security.user", "user",
               cfg->security_user, "data_dir", cfg->data_dir, "error", strerror(errno), NULL);
      return -EACCES;
    }
    snprintf(ids, sizeof ids, "%u:%u", (unsigned)u.uid, (unsigned)u.gid);
    keel_log(srv, KEEL_LOG_INFO, "switched user", "user", cfg->security_user, "ids", ids, NULL);
  }
  if (cfg->security_seccomp != KL_SECCOMP_OFF) {
    int rc = kl_sandbox_seccomp(cfg->security_seccomp, err, sizeof err);
    if (rc != 0) {
      keel_log(srv, KEEL_LOG_ERROR, "cannot install the seccomp filter: refusing to run", "error",
               err, NULL);
      return rc;
    }
    keel_log(srv, KEEL_LOG_INFO, "seccomp filter installed", "mode",
             cfg->security_seccomp == KL_SECCOMP_LOG ? "log" : "on", NULL);
  }
  return 0;
}

/* Drain phases of the main thread. */
enum { PH_RUN, PH_DELAY, PH_DRAIN, PH_DONE };

int keel_server_run(keel_server *srv) {
  const keel_config *cfg = &srv->cfg;
  char buf[160];
  sigset_t set, old;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGPIPE); /* workers see EPIPE instead; never delivered here */
  pthread_sigmask(SIG_BLOCK, &set, &old);
  sigdelset(&set, SIGPIPE);
  int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);

  raise_nofile(srv);
  srv->nworkers = cfg->workers ? cfg->workers : kl_cpus_usable();
  srv->workers = calloc(srv->nworkers, sizeof(*srv->workers));
  /* Every worker's listening sockets, bound before the sandbox; a row is -1 once a worker owns it. */
  const size_t nlfds = (size_t)srv->nworkers * KL_LISTENERS_MAX;
  int *lfds = malloc(nlfds * sizeof(int)), grpc_fd = -1;
  for (size_t i = 0; lfds && i < nlfds; i++) lfds[i] = -1;
  unsigned started = 0;
  int rc = 0;
  if (sfd < 0 || !srv->workers || !lfds) {
    rc = sfd < 0 ? -errno : -ENOMEM;
    goto out;
  }
  for (unsigned i = 0; i < srv->nworkers; i++)
    if ((rc = open_listeners(srv, lfds + (size_t)i * KL_LISTENERS_MAX)) != 0) goto out;
  if (cfg->pipeline_enabled && cfg->otlp_grpc_listen[0] &&
      (grpc_fd = kl_grpc_listen(cfg->otlp_grpc_listen, buf, sizeof buf)) < 0) {
    keel_log(srv, KEEL_LOG_ERROR, "cannot start the OTLP/gRPC receiver", "error", buf, NULL);
    rc = grpc_fd;
    goto out;
  }
  if ((rc = sandbox_enter(srv)) != 0) goto out;
  if (cfg->trace_endpoint[0] && (rc = tracer_start(srv)) != 0) goto out;
  if (cfg->pipeline_enabled) {
    char perr[320];
    if (!(srv->pipeline = kl_pipeline_start(cfg, srv, srv->metrics, perr, sizeof(perr)))) {
      keel_log(srv, KEEL_LOG_ERROR, "cannot start the pipeline", "error", perr, NULL);
      rc = -EINVAL;
      goto out;
    }
    if (grpc_fd >= 0 &&
        !(srv->grpc = kl_grpc_start(cfg, srv, srv->pipeline, grpc_fd, perr, sizeof(perr)))) {
      grpc_fd = -1; /* closed by kl_grpc_start */
      keel_log(srv, KEEL_LOG_ERROR, "cannot start the OTLP/gRPC receiver", "error", perr, NULL);
      rc = -EINVAL;
      goto out;
    }
    grpc_fd = -1;
  }
  if (srv->gw) {
    char herr[160] = "";
    if ((rc = kl_gw_bind(srv->gw, srv->nworkers)) != 0) goto out;
    srv->health = kl_gw_health_start(srv->gw, srv, herr, sizeof(herr));
    if (!srv->health && herr[0]) {
      keel_log(srv, KEEL_LOG_ERROR, "cannot start the gateway", "error", herr, NULL);
      rc = -EAGAIN;
      goto out;
    }
  }
  if (cfg->metrics_enabled && (rc = kl_stats_setup(srv, srv->nworkers)) != 0) {
    keel_log(srv, KEEL_LOG_ERROR, "cannot set up metrics", "error", strerror(-rc), NULL);
    goto out;
  }
  for (unsigned i = 0; i < srv->nworkers; i++) {
    int *fds = lfds + (size_t)i * KL_LISTENERS_MAX;
    rc = worker_init(srv, &srv->workers[i], i, fds); /* owns the sockets, even on failure */
    for (unsigned l = 0; l < KL_LISTENERS_MAX; l++) fds[l] = -1;
    if (cfg->metrics_enabled) srv->workers[i].mb = kl_metrics_block(srv->metrics, i);
    if (rc) {
      worker_cleanup(&srv->workers[i]);
      goto out;
    }
    started++;
  }
  for (unsigned i = 0; i < srv->nworkers; i++) {
    if (pthread_create(&srv->workers[i].thread, NULL, worker_main, &srv->workers[i]) != 0) {
      rc = -EAGAIN;
      for (unsigned j = 0; j < i; j++) worker_command(&srv->workers[j], KL_CMD_FORCE);
      for (unsigned j = 0; j < i; j++) pthread_join(srv->workers[j].thread, NULL);
      goto out;
    }
  }
  if (kl_log_enabled(srv->log, KEEL_LOG_INFO)) {
    kl_line l; /* "address" is the main listener; the others go by name */
    kl_line_begin(&l, KEEL_LOG_INFO, "listening");
    kl_line_cstr(&l, "address", addr_text(&srv->listeners[0], buf, sizeof(buf)));
    if (srv->tls) kl_line_cstr(&l, "tls", "on");
    for (unsigned i = 1; i < srv->nlisteners; i++)
      kl_line_cstr(&l, srv->listeners[i].name, addr_text(&srv->listeners[i], buf, sizeof(buf)));
    kl_line_int(&l, "workers", srv->nworkers);
    kl_line_cstr(&l, "version", KEEL_VERSION);
    kl_line_end(&l, kl_log_queue(srv->log));
  }

  int phase = PH_RUN;
  unsigned done = 0;
  uint64_t deadline = 0;
  while (phase != PH_DONE) {
    struct pollfd pfd[3] = {{.fd = sfd, .events = POLLIN},
                            {.fd = srv->stopfd, .events = POLLIN},
                            {.fd = srv->donefd, .events = POLLIN}};
    int timeout = -1;
    if (phase != PH_RUN) {
      uint64_t now = kl_now_ms();
      timeout = deadline > now ? (int)(deadline - now) : 0;
    }
    int n = poll(pfd, 3, timeout);
    if (n < 0 && errno != EINTR) break;
    int stop = 0;
    if (pfd[0].revents & POLLIN) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGHUP) {
          sighup(srv);
          continue;
        }
        if (phase != PH_RUN) {
          /* Second signal: the operator wants out now. */
          static const char msg[] = "{\"level\":\"warn\",\"msg\":\"second signal: exiting now\"}\n";
          ssize_t w = write(STDOUT_FILENO, msg, sizeof(msg) - 1);
          (void)w;
          _exit(128 + (int)si.ssi_signo);
        }
        stop = 1;
      }
    }
    if (pfd[1].revents & POLLIN) {
      uint64_t v;
      ssize_t r = read(srv->stopfd, &v, sizeof(v));
      (void)r;
      if (phase == PH_RUN) stop = 1;
    }
    if (pfd[2].revents & POLLIN) {
      uint64_t v;
      if (read(srv->donefd, &v, sizeof(v)) == (ssize_t)sizeof(v)) done += (unsigned)v;
      if (done >= srv->nworkers) phase = PH_DONE;
    }
    if (stop && phase == PH_RUN) {
      atomic_store(&srv->draining, 1);
      keel_log(srv, KEEL_LOG_INFO, "draining: readyz now answers 503", NULL);
      phase = PH_DELAY;
      deadline = kl_now_ms() + cfg->drain_delay_ms;
    }
    uint64_t now = kl_now_ms();
    if (phase == PH_DELAY && now >= deadline) {
      keel_log(srv, KEEL_LOG_INFO, "closing listeners; finishing in-flight requests", NULL);
      for (unsigned i = 0; i < srv->nworkers; i++) worker_command(&srv->workers[i], KL_CMD_DRAIN);
      if (srv->grpc) kl_grpc_drain(srv->grpc);
      phase = PH_DRAIN;
      deadline = now + cfg->drain_timeout_ms;
    } else if (phase == PH_DRAIN && now >= deadline) {
      keel_log(srv, KEEL_LOG_WARN, "drain timeout: closing the remaining connections", NULL);
      for (unsigned i = 0; i < srv->nworkers; i++) worker_command(&srv->workers[i], KL_CMD_FORCE);
      rc = -ETIMEDOUT;
      phase = PH_DONE;
    }
  }
  for (unsigned i = 0; i < srv->nworkers; i++) pthread_join(srv->workers[i].thread, NULL);
  keel_log(srv, rc ? KEEL_LOG_WARN : KEEL_LOG_INFO, "stopped", NULL);
out:
  kl_gw_health_stop(srv->health);
  srv->health = NULL;
  if (srv->grpc) kl_grpc_stop(srv->grpc, cfg->drain_timeout_ms);
  srv->grpc = NULL;
  kl_pipeline_stop(srv->pipeline); /* delivers for up to shutdown.flush_timeout */
  srv->pipeline = NULL;
  for (unsigned i = 0; i < started; i++) worker_cleanup(&srv->workers[i]);
  for (size_t i = 0; lfds && i < nlfds; i++)
    if (lfds[i] >= 0) close(lfds[i]);
  free(lfds);
  if (grpc_fd >= 0) close(grpc_fd);
  free(srv->workers);
  srv->workers = NULL;
  kl_tracer_free(srv->tracer); /* exports what is queued, for at most tracing.export_timeout */
  srv->tracer = NULL;
  if (sfd >= 0) close(sfd);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return rc;
}
