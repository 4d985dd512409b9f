/* health.c - active health checks of upstream endpoints, on a thread of their own. */
#include "gateway/health.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <netinet/tcp.h>

#include "core/loop.h"
#include "http/tls.h"

struct kl_gw_health {
  kl_gw *gw;
  keel_server *srv;
  pthread_t thread;
  int stopfd;
  uint64_t *next; /* per (upstream, endpoint): when its next check is due (ms) */
  uint64_t *next_resolve; /* per (upstream, endpoint): when its name is looked up again */
};

/* Looks a DNS-named endpoint up again; a new address is used by new connections (pooled ones
 * to the old address stay until they close). Blocking: this thread only. */
static void resolve(kl_gw_health *h, const kl_gw_upstream *u, kl_gw_endpoint *e) {
  const char *colon = strrchr(e->name, ':');
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
  if (!colon || getaddrinfo(e->host, colon + 1, &hints, &res) != 0 || !res) {
    keel_log(h->srv, KEEL_LOG_WARN, "upstream endpoint not resolved: keeping its address",
             "upstream", u->name, "endpoint", e->name, NULL);
    return;
  }
  if (res->ai_addrlen != e->addrlen || memcmp(res->ai_addr, &e->addr, res->ai_addrlen) != 0) {
    atomic_fetch_add_explicit(&e->addr_seq, 1, memory_order_acq_rel); /* odd: being written */
    atomic_thread_fence(memory_order_release);
    memset(&e->addr, 0, sizeof e->addr);
    memcpy(&e->addr, res->ai_addr, res->ai_addrlen);
    e->addrlen = res->ai_addrlen;
    atomic_fetch_add_explicit(&e->addr_seq, 1, memory_order_release);
    char text[64] = "";
    getnameinfo(res->ai_addr, res->ai_addrlen, text, sizeof text, NULL, 0, NI_NUMERICHOST);
    keel_log(h->srv, KEEL_LOG_INFO, "upstream endpoint address changed", "upstream", u->name,
             "endpoint", e->name, "address", text, NULL);
  }
  freeaddrinfo(res);
}

/* Waits for `fd` to become ready for `events` until `deadline` (ms) or a stop: 1 ready, 0 not. */
static int wait_fd(kl_gw_health *h, int fd, short events, uint64_t deadline) {
  for (;;) {
    uint64_t now = kl_now_ms();
    if (now >= deadline) return 0;
    struct pollfd p[2] = {{.fd = fd, .events = events}, {.fd = h->stopfd, .events = POLLIN}};
    int n = poll(p, 2, (int)(deadline - now));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || (p[1].revents & POLLIN)) return 0;
    return (p[0].revents & (events | POLLERR | POLLHUP)) != 0;
  }
}

static int exchange(kl_gw_health *h, const kl_gw_upstream *u, const kl_gw_endpoint *e, int fd,
                    kl_tls *t, uint64_t deadline);

/* One check: GET the path; healthy means a 2xx status line within the timeout. */
static int check(kl_gw_health *h, const kl_gw_upstream *u, const kl_gw_endpoint *e) {
  uint64_t deadline = kl_now_ms() + u->hc_timeout_ms;
  struct sockaddr_storage sa;
  socklen_t salen = kl_gw_ep_addr(e, &sa); /* a consistent copy: the resolver may rewrite it */
  int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  int ok = 0;
  if (connect(fd, (const struct sockaddr *)&sa, salen) < 0 && errno != EINPROGRESS)
    goto out;
  if (!wait_fd(h, fd, POLLOUT, deadline)) goto out;
  int err = 0;
  socklen_t el = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) goto out;
  kl_tls *t = NULL;
  if (u->tls) { /* a TLS upstream is checked over TLS, with the same verification */
    char terr[200];
    uint32_t want = 0;
    if (!(t = kl_tls_client_new(u->tls, fd, u->tls_name[0] ? u->tls_name : e->host, terr,
                                sizeof terr)))
      goto out;
    int hs;
    while ((hs = kl_tls_handshake(t, &want)) == 0)
      if (!wait_fd(h, fd, want & EPOLLOUT ? POLLOUT : POLLIN, deadline)) break;
    if (hs != 1) {
      kl_tls_free(t);
      goto out;
    }
  }
  ok = exchange(h, u, e, fd, t, deadline);
  kl_tls_free(t);
out:
  close(fd);
  return ok;
}

/* Sends the check's request over `fd` (or TLS `t`) and reads the status line: 1 for 2xx. */
static int exchange(kl_gw_health *h, const kl_gw_upstream *u, const kl_gw_endpoint *e, int fd,
                    kl_tls *t, uint64_t deadline) {
  char req[400];
  int n = snprintf(req, sizeof req,
                   "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: keel-health-check\r\n"
                   "Connection: close\r\n\r\n",
                   u->hc_path, e->name);
  size_t sent = 0;
  while (sent < (size_t)n) {
    uint32_t want = 0;
    ssize_t w = t ? kl_tls_write(t, req + sent, (size_t)n - sent, &want)
                  : send(fd, req + sent, (size_t)n - sent, MSG_NOSIGNAL);
    if (w == -EAGAIN || (w < 0 && !t && errno == EAGAIN)) {
      if (!wait_fd(h, fd, want & EPOLLIN ? POLLIN : POLLOUT, deadline)) return 0;
      continue;
    }
    if (w <= 0) return 0;
    sent += (size_t)w;
  }
  char resp[16];
  size_t got = 0;
  while (got < 12) { /* "HTTP/1.1 200" */
    uint32_t want = 0;
    ssize_t r = t ? kl_tls_read(t, resp + got, 12 - got, &want) : recv(fd, resp + got, 12 - got, 0);
    if (r == -EAGAIN || (r < 0 && !t && errno == EAGAIN)) {
      if (!wait_fd(h, fd, want & EPOLLOUT ? POLLOUT : POLLIN, deadline)) return 0;
      continue;
    }
    if (r <= 0) return 0;
    got += (size_t)r;
  }
  return memcmp(resp, "HTTP/1.", 7) == 0 && resp[8] == ' ' && resp[9] == '2';
}

static void report(kl_gw_health *h, const kl_gw_upstream *u, const kl_gw_endpoint *e, int down) {
  keel_log(h->srv, down ? KEEL_LOG_WARN : KEEL_LOG_INFO,
           down ? "upstream endpoint unhealthy" : "upstream endpoint healthy", "upstream",
           u->name, "endpoint", e->name, NULL);
}

static void *run(void *arg) {
  kl_gw_health *h = arg;
  kl_gw *gw = h->gw;
  for (;;) {
    uint64_t now = kl_now_ms(), soonest = now + 1000;
    size_t k = 0;
    for (uint32_t i = 0; i < gw->nups; i++) {
      kl_gw_upstream *u = &gw->ups[i];
      for (uint32_t j = 0; j < u->neps; j++, k++) {
        if (u->eps[j].is_name && u->resolve_ms) {
          if (!h->next_resolve[k]) h->next_resolve[k] = now + u->resolve_ms;
          if (h->next_resolve[k] <= now) {
            resolve(h, u, &u->eps[j]);
            now = kl_now_ms();
            h->next_resolve[k] = now + u->resolve_ms;
          }
          if (h->next_resolve[k] < soonest) soonest = h->next_resolve[k];
        }
        if (!u->hc_path[0]) continue;
        if (h->next[k] <= now) {
          kl_gw_endpoint *e = &u->eps[j];
          int ok = check(h, u, e);
          uint64_t v;
          if (read(h->stopfd, &v, sizeof v) == (ssize_t)sizeof v) return NULL;
          int down = atomic_load(&e->down);
          if (ok) {
            e->hc_bad = 0;
            if (down && ++e->hc_ok >= u->hc_healthy) {
              atomic_store(&e->down, 0);
              atomic_store(&e->fails, 0);
              atomic_store(&e->ejected_until, 0); /* it answers: passive ejection ends too */
              report(h, u, e, 0);
            }
          } else {
            e->hc_ok = 0;
            if (!down && ++e->hc_bad >= u->hc_unhealthy) {
              atomic_store(&e->down, 1);
              report(h, u, e, 1);
            }
          }
          now = kl_now_ms();
          h->next[k] = now + u->hc_interval_ms;
        }
        if (h->next[k] < soonest) soonest = h->next[k];
      }
    }
    now = kl_now_ms();
    struct pollfd p = {.fd = h->stopfd, .events = POLLIN};
    if (poll(&p, 1, soonest > now ? (int)(soonest - now) : 0) > 0) return NULL;
  }
}

kl_gw_health *kl_gw_health_start(kl_gw *gw, keel_server *srv, char *err, size_t errlen) {
  size_t n = 0;
  int any = 0;
  for (uint32_t i = 0; i < gw->nups; i++) {
    n += gw->ups[i].neps;
    any |= gw->ups[i].hc_path[0] != '\0';
    for (uint32_t j = 0; j < gw->ups[i].neps; j++)
      any |= gw->ups[i].eps[j].is_name && gw->ups[i].resolve_ms;
  }
  if (!any) return NULL;
  kl_gw_health *h = calloc(1, sizeof *h);
  if (!h || !(h->next = calloc(n ? n : 1, sizeof *h->next)) ||
      !(h->next_resolve = calloc(n ? n : 1, sizeof *h->next_resolve))) {
    if (h) free(h->next);
    free(h);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  h->gw = gw;
  h->srv = srv;
  h->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (h->stopfd < 0 || pthread_create(&h->thread, NULL, run, h) != 0) {
    snprintf(err, errlen, "cannot start the health checker: %s", strerror(errno));
    if (h->stopfd >= 0) close(h->stopfd);
    free(h->next);
    free(h->next_resolve);
    free(h);
    return NULL;
  }
  return h;
}

void kl_gw_health_stop(kl_gw_health *h) {
  if (!h) return;
  uint64_t one = 1;
  ssize_t w = write(h->stopfd, &one, sizeof one);
  (void)w;
  pthread_join(h->thread, NULL);
  close(h->stopfd);
  free(h->next);
  free(h->next_resolve);
  free(h);
}
