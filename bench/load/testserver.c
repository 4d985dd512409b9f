/* testserver.c - keel-load test target: epoll HTTP/1.1 server with a fixed delay and stalls. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

/*
 * keel-load-testserver PORT DELAY_US [STALL_EVERY_MS STALL_MS]
 *
 * Every request is answered DELAY_US after it was read. The delay is a deadline on a timerfd,
 * not a sleep, so any number of connections wait at once; because the delay is the same for
 * every request, deadlines come due in arrival order and one FIFO is the whole timer queue.
 * With stall arguments the process sleeps in its loop for STALL_MS once every STALL_EVERY_MS,
 * answering nothing - the server hiccup that coordinated omission would hide.
 *
 * The path picks the answer, so the tests can exercise keel-load's response parser:
 *   /chunked  200, chunked body          /close  200 with Connection: close, then closes
 *   /404      404                        /eof    200 without length, body ends at the close
 *   /big      200 with a 100000-byte body          /bad    a malformed Content-Length
 *   anything else: 200 "ok"
 */

#define IN_CAP 16384
#define SPIN_NS 100000 /* timer wake-ups come tens of us late: poll for the last 100 us */
#define BIG_LEN 100000

enum { A_OK, A_CHUNKED, A_CLOSE, A_404, A_EOF, A_BIG, A_BAD };

typedef struct conn {
  bool open;
  bool closing; /* close once the output is written */
  uint32_t gen; /* bumps on close, so queued answers for an old connection are dropped */
  char *in;
  size_t in_len;
  size_t body_left; /* request body bytes still to discard */
  char *out;
  size_t out_len, out_off, out_cap;
  bool want_out;
} conn;

typedef struct pending {
  int fd;
  uint32_t gen;
  uint8_t kind;
  uint64_t due;
} pending;

static conn *conns;
static size_t nconns;
static pending *q;
static size_t q_cap, q_head, q_len;
static int ep;
static char big_body[BIG_LEN];

static uint64_t clock_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
  perror(what);
  exit(1);
}

static conn *conn_of(int fd) {
  if ((size_t)fd >= nconns) {
    size_t n = nconns ? nconns : 64;
    while (n <= (size_t)fd)
      n *= 2;
    conn *c = realloc(conns, n * sizeof *c);
    if (!c) die("realloc");
    memset(c + nconns, 0, (n - nconns) * sizeof *c);
    conns = c;
    nconns = n;
  }
  return &conns[fd];
}

static void conn_close(int fd) {
  conn *c = &conns[fd];
  close(fd);
  free(c->in);
  free(c->out);
  uint32_t gen = c->gen + 1;
  memset(c, 0, sizeof *c);
  c->gen = gen;
}

static void out_append(conn *c, const void *p, size_t n) {
  if (c->out_len + n > c->out_cap) {
    size_t cap = c->out_cap ? c->out_cap : 4096;
    while (cap < c->out_len + n)
      cap *= 2;
    char *o = realloc(c->out, cap);
    if (!o) die("realloc");
    c->out = o;
    c->out_cap = cap;
  }
  memcpy(c->out + c->out_len, p, n);
  c->out_len += n;
}

static void set_out(int fd, conn *c, bool on) {
  if (c->want_out == on) return;
  struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.fd = fd};
  epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
  c->want_out = on;
}

static void flush(int fd) {
  conn *c = &conns[fd];
  while (c->out_off < c->out_len) {
    ssize_t r = send(fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        set_out(fd, c, true);
        return;
      }
      conn_close(fd);
      return;
    }
    c->out_off += (size_t)r;
  }
  c->out_off = c->out_len = 0;
  set_out(fd, c, false);
  if (c->closing) conn_close(fd);
}

static void respond(int fd, int kind) {
  conn *c = &conns[fd];
  static const char ok[] =
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";
  static const char chunked[] =
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
      "3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\n";
  static const char closing[] =
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
  static const char nf[] = "HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot found";
  static const char eof[] = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end";
  static const char malformed[] = "HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok";
  char head[128];
  switch (kind) {
  case A_CHUNKED: out_append(c, chunked, sizeof chunked - 1); break;
  case A_CLOSE:
    out_append(c, closing, sizeof closing - 1);
    c->closing = true;
    break;
  case A_404: out_append(c, nf, sizeof nf - 1); break;
  case A_BAD: out_append(c, malformed, sizeof malformed - 1); break;
  case A_EOF:
    out_append(c, eof, sizeof eof - 1);
    c->closing = true;
    break;
  case A_BIG: {
    int n = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", BIG_LEN);
    out_append(c, head, (size_t)n);
    out_append(c, big_body, BIG_LEN);
    break;
  }
  default: out_append(c, ok, sizeof ok - 1); break;
  }
}

static void enqueue(int fd, int kind, uint64_t due) {
  if (q_len == q_cap) {
    size_t cap = q_cap ? q_cap * 2 : 1024;
    pending *nq = malloc(cap * sizeof *nq);
    if (!nq) die("malloc");
    for (size_t i = 0; i < q_len; i++)
      nq[i] = q[(q_head + i) % q_cap];
    free(q);
    q = nq;
    q_cap = cap;
    q_head = 0;
  }
  q[(q_head + q_len++) % q_cap] =
      (pending){.fd = fd, .gen = conns[fd].gen, .kind = (uint8_t)kind, .due = due};
}

static const char *find_header(const char *head, size_t len, const char *name) {
  size_t n = strlen(name);
  for (const char *p = head; p && p + n < head + len;) {
    const char *nl = memchr(p, '\n', (size_t)(head + len - p));
    if (!nl) break;
    p = nl + 1;
    if ((size_t)(head + len - p) > n && strncasecmp(p, name, n) == 0 && p[n] == ':')
      return p + n + 1;
  }
  return NULL;
}

/* Parses every complete request in the input; returns false when the connection was closed. */
static bool on_input(int fd, uint64_t due, uint64_t delay) {
  conn *c = &conns[fd];
  size_t off = 0;
  for (;;) {
    if (c->body_left) {
      size_t n = c->in_len - off < c->body_left ? c->in_len - off : c->body_left;
      off += n;
      c->body_left -= n;
      if (c->body_left) break;
    }
    char *start = c->in + off;
    size_t avail = c->in_len - off;
    char *end = avail >= 4 ? memmem(start, avail, "\r\n\r\n", 4) : NULL;
    if (!end) break;
    size_t hlen = (size_t)(end - start) + 4;
    int kind = A_OK;
    char *sp = memchr(start, ' ', hlen);
    if (sp) {
      const char *path = sp + 1;
      if (strncmp(path, "/chunked ", 9) == 0)
        kind = A_CHUNKED;
      else if (strncmp(path, "/close ", 7) == 0)
        kind = A_CLOSE;
      else if (strncmp(path, "/404 ", 5) == 0)
        kind = A_404;
      else if (strncmp(path, "/eof ", 5) == 0)
        kind = A_EOF;
      else if (strncmp(path, "/big ", 5) == 0)
        kind = A_BIG;
      else if (strncmp(path, "/bad ", 5) == 0)
        kind = A_BAD;
    }
    const char *cl = find_header(start, hlen, "content-length");
    if (cl) c->body_left = strtoull(cl, NULL, 10);
    off += hlen;
    if (delay == 0)
      respond(fd, kind);
    else
      enqueue(fd, kind, due);
  }
  memmove(c->in, c->in + off, c->in_len - off);
  c->in_len -= off;
  if (c->in_len == IN_CAP) { /* a head that does not fit: not a test this server runs */
    conn_close(fd);
    return false;
  }
  return true;
}

static void on_readable(int fd, uint64_t now, uint64_t delay) {
  conn *c = &conns[fd];
  for (;;) {
    size_t space = IN_CAP - c->in_len;
    ssize_t r = recv(fd, c->in + c->in_len, space, 0);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
      conn_close(fd);
      return;
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      break;
    }
    c->in_len += (size_t)r;
    if (!on_input(fd, now + delay, delay)) return;
    if ((size_t)r < space) break;
  }
  if (c->out_len && !c->want_out) flush(fd);
}

static uint64_t arg_u64(const char *s, const char *what) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end || !*s || *s == '-') {
    fprintf(stderr, "keel-load-testserver: bad %s '%s'\n", what, s);
    exit(2);
  }
  return v;
}

int main(int argc, char **argv) {
  if (argc != 3 && argc != 5) {
    fprintf(stderr, "usage: keel-load-testserver PORT DELAY_US [STALL_EVERY_MS STALL_MS]\n");
    return 2;
  }
  uint64_t port = arg_u64(argv[1], "port");
  uint64_t delay = arg_u64(argv[2], "delay") * 1000u;
  uint64_t stall_every = argc == 5 ? arg_u64(argv[3], "stall interval") * 1000000u : 0;
  uint64_t stall = argc == 5 ? arg_u64(argv[4], "stall length") * 1000000u : 0;
  if (port > 65535) return 2;
  memset(big_body, 'x', sizeof big_body);

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (lfd < 0) die("socket");
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port = htons((uint16_t)port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
  if (listen(lfd, 4096) < 0) die("listen");
  socklen_t sl = sizeof sa;
  getsockname(lfd, (struct sockaddr *)&sa, &sl);

  ep = epoll_create1(EPOLL_CLOEXEC);
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (ep < 0 || tfd < 0) die("epoll/timerfd");
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  ev.data.fd = tfd;
  epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
  printf("listening %u\n", (unsigned)ntohs(sa.sin_port));
  fflush(stdout);

  uint64_t next_stall = stall_every ? clock_ns() + stall_every : UINT64_MAX;
  uint64_t armed = 0;
  struct epoll_event evs[256];
  for (;;) {
    uint64_t now = clock_ns();
    if (now >= next_stall) {
      struct timespec ts = {.tv_sec = (time_t)(stall / 1000000000u),
                            .tv_nsec = (long)(stall % 1000000000u)};
      while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
      }
      while (next_stall <= clock_ns())
        next_stall += stall_every;
      continue;
    }
    while (q_len && q[q_head].due <= now) {
      pending p = q[q_head];
      q_head = (q_head + 1) % q_cap;
      q_len--;
      if ((size_t)p.fd < nconns && conns[p.fd].open && conns[p.fd].gen == p.gen) {
        respond(p.fd, p.kind);
        /* Answers due together go out in one write per connection. */
        if (!(q_len && q[q_head].due <= now && q[q_head].fd == p.fd) && !conns[p.fd].want_out)
          flush(p.fd);
      }
    }
    uint64_t wake = q_len ? q[q_head].due - (q[q_head].due > SPIN_NS ? SPIN_NS : 0) : UINT64_MAX;
    if (next_stall < wake) wake = next_stall;
    int timeout = -1;
    if (wake <= clock_ns()) {
      timeout = 0;
      sched_yield(); /* spinning: let the client run if it shares this CPU */
    } else if (wake != UINT64_MAX && wake != armed) {
      struct itimerspec its = {.it_value = {.tv_sec = (time_t)(wake / 1000000000u),
                                            .tv_nsec = (long)(wake % 1000000000u)}};
      timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
      armed = wake;
    }
    int n = epoll_wait(ep, evs, 256, timeout);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    now = clock_ns();
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == tfd) {
        uint64_t ticks;
        if (read(tfd, &ticks, sizeof ticks) < 0) ticks = 0;
        armed = 0;
      } else if (fd == lfd) {
        for (;;) {
          int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (cfd < 0) break;
          setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          conn *c = conn_of(cfd);
          c->open = true;
          c->in = malloc(IN_CAP);
          if (!c->in) die("malloc");
          struct epoll_event cev = {.events = EPOLLIN, .data.fd = cfd};
          epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
        }
      } else if ((size_t)fd < nconns && conns[fd].open) {
        if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(fd, now, delay);
        if (conns[fd].open && (evs[i].events & EPOLLOUT)) flush(fd);
      }
    }
  }
}
