/* load.c - keel-load: open-loop HTTP/1.1 load generator, coordinated-omission corrected. */
#include "hist.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

/*
 * The model. Request k of the run (k = 0, 1, ...) is due at start + k * 1e9 / RATE ns and belongs
 * to connection k % C; thread t owns connections t, t+T, t+2T... and walks only their share of the
 * schedule, so threads never talk to each other. A connection counts its requests: `sched` have
 * come due, `sent` were written, `done` were answered (or lost with the socket). When a request
 * comes due while the previous one is still in flight it simply waits (sched > sent): nothing is
 * stored, because request j of connection c was due at a time computable from j and c, and that
 * time - not the send time - is what its latency is measured from. A generator that measured from
 * the send would hide a server stall: only the one request per connection in flight would see it.
 *
 * -r 0 is closed loop: each connection keeps --pipeline requests in flight and the "due" time of a
 * request is its send time, so both histograms agree.
 *
 * Requests due before start + warm-up are sent but not measured; scheduling stops at the end of
 * the measured window, then the loop drains the measured requests still due (at most --timeout).
 */

enum { E_CONNECT, E_READ, E_WRITE, E_TIMEOUT, E_PARSE, E_CLOSED, E_KINDS };
static const char *const error_names[E_KINDS] = {"connect", "read",  "write",
                                                 "timeout", "parse", "closed"};

#define MAX_HEADERS 64
#define RBUF_SIZE (64 * 1024)
#define MAX_EVENTS 256
#define SCAN_NS UINT64_C(10000000)            /* timeouts and reconnects are checked every 10 ms */
#define CONNECT_BACKOFF_NS UINT64_C(50000000) /* so an unreachable server is not hammered */
#define NS_PER_S 1000000000.0

/* ---- configuration (read-only once the threads start) --------------------------------------- */

typedef struct config {
  const char *url;
  char host[256];
  char port[8];
  const char *path;
  size_t path_len;
  struct sockaddr_storage addr;
  socklen_t addr_len;
  const char *method;
  const char *headers[MAX_HEADERS];
  unsigned nheaders;
  const char *body;
  char *body_buf; /* --body-file contents (body points here) */
  size_t body_len;
  bool has_body;
  unsigned conns, threads, pipeline;
  double rate; /* 0 = closed loop */
  double duration_s, warmup_s;
  uint64_t timeout_ns;
  uint64_t spin_ns; /* busy-poll this long before a due time instead of trusting the timer */
  bool json;
  bool head;   /* HEAD answers carry no body whatever their headers say */
  bool closed; /* rate == 0 */
  double interval_ns;
  char *req; /* the request bytes, built once */
  size_t req_len;
  char *rep; /* pipeline + 1 copies of them, so queued requests go out in one write */
  size_t rep_len;
  uint64_t start, ws, we; /* schedule start, measured window [ws, we) */
} config;

static config g;
static atomic_int g_stop;

static uint64_t clock_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}

/* When request k of the whole run is due. Doubles keep the arithmetic exact to well under a
 * nanosecond for any run length that fits the histogram. */
static uint64_t due_at(uint64_t k) {
  return g.start + (uint64_t)((double)k * g.interval_ns);
}

/* ---- response parser --------------------------------------------------------------------------
 * A streaming parser that never needs the whole head in memory: it keeps the current line (up to
 * LINE_CAP bytes, enough for every header it looks at) and skips body bytes by counting, so a
 * connection costs ~200 bytes and responses split anywhere across reads cost nothing extra. */

enum { P_STATUS, P_HEADER, P_BODY, P_BODY_EOF, P_CHUNK_SIZE, P_CHUNK_DATA, P_CHUNK_END, P_TRAILER };
#define LINE_CAP 160
#define LINE_MAX_BYTES (16 * 1024)
#define HEAD_MAX_BYTES (64 * 1024)

typedef struct rparse {
  uint8_t phase;
  bool truncated; /* the current line was longer than LINE_CAP */
  bool has_cl, te, chunked, conn_close, conn_keep, http10;
  uint16_t status;
  uint16_t line_len;
  uint32_t line_bytes, head_bytes;
  uint64_t remaining; /* body or chunk bytes still to skip */
  uint64_t cl;
  char line[LINE_CAP];
} rparse;

static void rp_reset(rparse *p) {
  memset(p, 0, offsetof(rparse, line));
}

static bool rp_idle(const rparse *p) {
  return p->phase == P_STATUS && p->line_bytes == 0;
}

static bool rp_keepalive(const rparse *p) {
  if (p->phase == P_BODY_EOF || p->conn_close) return false;
  return !p->http10 || p->conn_keep;
}

static int lower(int ch) {
  return ch >= 'A' && ch <= 'Z' ? ch + 32 : ch;
}

static bool name_is(const char *s, size_t n, const char *lit) {
  size_t m = strlen(lit);
  if (n != m) return false;
  for (size_t i = 0; i < n; i++)
    if (lower((unsigned char)s[i]) != lit[i]) return false;
  return true;
}

/* Connection is a comma-separated token list: "close" or "keep-alive" anywhere in it counts. */
static void parse_connection(rparse *p, const char *v, size_t n) {
  size_t i = 0;
  while (i < n) {
    while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
      i++;
    size_t s = i;
    while (i < n && v[i] != ',' && v[i] != ' ' && v[i] != '\t')
      i++;
    if (name_is(v + s, i - s, "close")) p->conn_close = true;
    if (name_is(v + s, i - s, "keep-alive")) p->conn_keep = true;
  }
}

/* The end of the head decides the framing (RFC 9112 section 6.3). Returns 1 when the response is
 * complete already, 0 when a body follows, -1 for a response this client cannot frame. */
static int rp_head_done(rparse *p, bool head_req) {
  if (p->status < 200) {
    if (p->status == 101) return -1; /* never asked for an upgrade */
    rp_reset(p);                     /* interim response: the real one follows */
    return 0;
  }
  if (head_req || p->status == 204 || p->status == 304) return 1;
  if (p->te) {
    p->phase = p->chunked ? P_CHUNK_SIZE : P_BODY_EOF;
    return 0;
  }
  if (p->has_cl) {
    if (p->cl == 0) return 1;
    p->remaining = p->cl;
    p->phase = P_BODY;
    return 0;
  }
  p->phase = P_BODY_EOF;
  return 0;
}

static int rp_header(rparse *p, const char *l, size_t n) {
  const char *colon = memchr(l, ':', n);
  if (!colon || colon == l) return -1;
  size_t nlen = (size_t)(colon - l);
  const char *v = colon + 1;
  size_t vlen = n - nlen - 1;
  while (vlen && (*v == ' ' || *v == '\t'))
    v++, vlen--;
  while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
    vlen--;
  bool cl = name_is(l, nlen, "content-length");
  bool te = name_is(l, nlen, "transfer-encoding");
  bool co = name_is(l, nlen, "connection");
  if (!cl && !te && !co) return 0;
  if (p->truncated) return -1; /* a framing header longer than LINE_CAP is not a real one */
  if (cl) {
    if (vlen == 0 || vlen > 18) return -1;
    uint64_t x = 0;
    for (size_t i = 0; i < vlen; i++) {
      if (v[i] < '0' || v[i] > '9') return -1;
      x = x * 10 + (uint64_t)(v[i] - '0');
    }
    if (p->has_cl && p->cl != x) return -1;
    p->has_cl = true;
    p->cl = x;
  } else if (te) {
    /* Only a final "chunked" frames the body; any other coding runs to the close. */
    p->te = true;
    p->chunked = vlen >= 7 && name_is(v + vlen - 7, 7, "chunked") &&
                 (vlen == 7 || v[vlen - 8] == ',' || v[vlen - 8] == ' ' || v[vlen - 8] == '\t');
  } else {
    parse_connection(p, v, vlen);
  }
  return 0;
}

/* One complete line (CR stripped): 1 response complete, 0 go on, -1 malformed. */
static int rp_line(rparse *p, bool head_req) {
  const char *l = p->line;
  size_t n = p->line_len;
  switch (p->phase) {
  case P_STATUS:
    if (n < 12 || memcmp(l, "HTTP/1.", 7) != 0 || (l[7] != '0' && l[7] != '1') || l[8] != ' ')
      return -1;
    for (int i = 9; i < 12; i++)
      if (l[i] < '0' || l[i] > '9') return -1;
    if (n > 12 && l[12] != ' ') return -1;
    p->status = (uint16_t)((l[9] - '0') * 100 + (l[10] - '0') * 10 + (l[11] - '0'));
    if (p->status < 100 || p->status > 599) return -1;
    p->http10 = l[7] == '0';
    p->phase = P_HEADER;
    return 0;
  case P_HEADER:
    if (n == 0) return rp_head_done(p, head_req);
    return rp_header(p, l, n);
  case P_CHUNK_SIZE: {
    uint64_t x = 0;
    size_t i = 0;
    for (; i < n; i++) {
      int c = lower((unsigned char)l[i]), d;
      if (c >= '0' && c <= '9')
        d = c - '0';
      else if (c >= 'a' && c <= 'f')
        d = c - 'a' + 10;
      else
        break;
      if (x >> 59) return -1;
      x = x * 16 + (uint64_t)d;
    }
    if (i == 0 || (i < n && l[i] != ';' && l[i] != ' ' && l[i] != '\t')) return -1;
    if (p->truncated && i == n) return -1;
    if (x == 0) {
      p->phase = P_TRAILER;
    } else {
      p->remaining = x;
      p->phase = P_CHUNK_DATA;
    }
    return 0;
  }
  case P_CHUNK_END:
    if (n != 0) return -1;
    p->phase = P_CHUNK_SIZE;
    return 0;
  case P_TRAILER: return n == 0 ? 1 : 0;
  default: return -1;
  }
}

/* Consumes bytes of `buf` until a response completes (1, *used = bytes consumed), the bytes run out
 * (0, *used = len) or the response is malformed (-1). */
static int rp_feed(rparse *p, bool head_req, const char *buf, size_t len, size_t *used) {
  size_t i = 0;
  while (i < len) {
    if (p->phase == P_BODY || p->phase == P_CHUNK_DATA) {
      uint64_t n = len - i < p->remaining ? len - i : p->remaining;
      i += n;
      p->remaining -= n;
      if (p->remaining) break;
      if (p->phase == P_BODY) {
        *used = i;
        return 1;
      }
      p->phase = P_CHUNK_END;
      continue;
    }
    if (p->phase == P_BODY_EOF) {
      i = len; /* the close ends it */
      break;
    }
    const char *nl = memchr(buf + i, '\n', len - i);
    size_t n = nl ? (size_t)(nl - (buf + i)) : len - i;
    p->line_bytes += (uint32_t)(n > LINE_MAX_BYTES ? LINE_MAX_BYTES + 1 : n);
    if (p->phase == P_STATUS || p->phase == P_HEADER || p->phase == P_TRAILER)
      p->head_bytes += (uint32_t)(n > HEAD_MAX_BYTES ? HEAD_MAX_BYTES + 1 : n) + 1;
    if (p->line_bytes > LINE_MAX_BYTES || p->head_bytes > HEAD_MAX_BYTES) return -1;
    size_t room = LINE_CAP - p->line_len, take = n < room ? n : room;
    memcpy(p->line + p->line_len, buf + i, take);
    p->line_len = (uint16_t)(p->line_len + take);
    if (take < n) p->truncated = true;
    i += n;
    if (!nl) break;
    i++;
    if (!p->truncated && p->line_len && p->line[p->line_len - 1] == '\r') p->line_len--;
    int r = rp_line(p, head_req);
    p->line_len = 0;
    p->line_bytes = 0;
    p->truncated = false;
    if (r < 0) return -1;
    if (r == 1) {
      *used = i;
      return 1;
    }
  }
  *used = len;
  return 0;
}

/* ---- connections and worker threads --------------------------------------------------------- */

enum { C_DOWN, C_CONNECTING, C_UP };

typedef struct conn {
  int fd;
  uint8_t state;
  bool want_out;     /* EPOLLOUT is armed: a write hit EAGAIN or connect() is pending */
  uint32_t gid;      /* global index: its slot in the round-robin schedule */
  uint64_t sched;    /* requests that came due on this connection */
  uint64_t sent;     /* ...that were written (started) */
  uint64_t done;     /* ...that were answered or lost with a socket */
  uint64_t out_left; /* bytes still to write */
  size_t out_pos;    /* offset of the next byte within the request */
  uint64_t since;    /* connect() started */
  uint64_t retry_at; /* DOWN: when to connect again */
  uint64_t *sent_at; /* ring of `pipeline` send times, request j at [j % pipeline] */
  rparse rp;
} conn;

typedef struct worker {
  pthread_t tid;
  unsigned idx;
  conn *conns;
  unsigned n;
  uint64_t *ring;
  int ep, tfd;
  bool pwait2;      /* epoll_pwait2 works; otherwise the timerfd carries the deadline */
  uint64_t armed;   /* deadline the timerfd is set to, 0 = none */
  uint64_t we;      /* end of scheduling for this thread (earlier after SIGINT) */
  bool started;     /* closed loop: past g.start */
  int depth;        /* conn_fail -> conn_connect nesting */
  uint64_t pending; /* requests due and neither answered nor lost */
  uint64_t round;   /* schedule cursor: round and connection index */
  unsigned next_i;
  uint64_t next_due;
  uint64_t next_scan;
  char *rbuf;
  /* results */
  hist *lat, *lat_send;
  uint64_t requests, non2xx, reconnects;
  uint64_t errors[E_KINDS];
  uint64_t status[600];
  uint64_t last_ns; /* when the last measured answer arrived */
  uint64_t max_lag; /* worst lateness of the scheduler itself (ns), to flag an overloaded run */
} worker;

static void conn_connect(worker *w, conn *c, uint64_t now);

/* Errors during the warm-up are the warm-up's; without one, every error counts, including
 * connections refused before the first request was due. */
static void count_error(worker *w, int kind, uint64_t now) {
  if (now >= g.ws || g.warmup_s == 0) w->errors[kind]++;
}

static void set_events(worker *w, conn *c, bool out) {
  struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
  epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev);
  c->want_out = out;
}

/* Closes the socket; the requests in flight on it are lost (counted by the caller's error), the
 * ones still waiting go out on the next connection and keep their due times. */
static void conn_close(worker *w, conn *c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  c->state = C_DOWN;
  w->pending -= c->sent - c->done;
  c->done = c->sent;
  c->out_left = 0;
  c->out_pos = 0;
  c->want_out = false;
  rp_reset(&c->rp);
}

static void conn_fail(worker *w, conn *c, int kind, uint64_t now) {
  count_error(w, kind, now);
  conn_close(w, c);
  if (kind == E_CONNECT) {
    c->retry_at = now + CONNECT_BACKOFF_NS;
  } else if (w->depth < 2) {
    /* connect -> send -> fail -> connect... could recurse against a server that resets at once */
    w->depth++;
    w->reconnects++;
    conn_connect(w, c, now);
    w->depth--;
  } else {
    c->retry_at = now; /* the next scan reconnects */
  }
}

/* Writes what is queued; 0, or -1 when the connection failed (and was replaced). */
static int conn_flush(worker *w, conn *c) {
  while (c->out_left) {
    size_t avail = g.rep_len - c->out_pos;
    size_t len = c->out_left < avail ? (size_t)c->out_left : avail;
    ssize_t r = send(c->fd, g.rep + c->out_pos, len, MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (!c->want_out) set_events(w, c, true);
        return 0;
      }
      conn_fail(w, c, errno == EPIPE || errno == ECONNRESET ? E_CLOSED : E_WRITE, clock_ns());
      return -1;
    }
    c->out_left -= (uint64_t)r;
    c->out_pos = (c->out_pos + (size_t)r) % g.req_len;
  }
  if (c->want_out) set_events(w, c, false);
  return 0;
}

/* Starts every waiting request the pipeline depth allows, in one write. */
static int conn_pump(worker *w, conn *c) {
  if (c->state != C_UP) return 0;
  uint64_t room = g.pipeline - (c->sent - c->done);
  uint64_t waiting = c->sched - c->sent;
  uint64_t n = waiting < room ? waiting : room;
  if (n == 0) return 0;
  uint64_t now = clock_ns();
  for (uint64_t i = 0; i < n; i++)
    c->sent_at[c->sent++ % g.pipeline] = now;
  c->out_left += n * g.req_len;
  return c->want_out ? 0 : conn_flush(w, c);
}

/* Closed loop keeps `pipeline` requests due on every open connection until the window ends. */
static void closed_refill(worker *w, conn *c, uint64_t now) {
  if (!g.closed || !w->started || now >= w->we || c->state != C_UP) return;
  uint64_t want = c->done + g.pipeline;
  if (c->sched < want) {
    w->pending += want - c->sched;
    c->sched = want;
  }
}

static void conn_up(worker *w, conn *c, uint64_t now) {
  c->state = C_UP;
  set_events(w, c, false);
  closed_refill(w, c, now);
  conn_pump(w, c);
}

static void conn_connect(worker *w, conn *c, uint64_t now) {
  int fd = socket(g.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    conn_fail(w, c, E_CONNECT, now);
    return;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->fd = fd;
  c->since = now;
  int r = connect(fd, (const struct sockaddr *)&g.addr, g.addr_len);
  if (r < 0 && errno != EINPROGRESS) {
    conn_fail(w, c, E_CONNECT, now);
    return;
  }
  struct epoll_event ev = {.events = EPOLLIN | (r < 0 ? EPOLLOUT : 0), .data.ptr = c};
  if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
    conn_fail(w, c, E_CONNECT, now);
    return;
  }
  c->state = C_CONNECTING;
  c->want_out = r < 0;
  if (r == 0) conn_up(w, c, now);
}

static void on_response(worker *w, conn *c, uint64_t now) {
  uint64_t j = c->done++;
  w->pending--;
  uint64_t sent = c->sent_at[j % g.pipeline];
  uint64_t due = g.closed ? sent : due_at(j * g.conns + c->gid);
  if (due < g.ws) return; /* warm-up */
  hist_record(w->lat, now > due ? now - due : 0);
  hist_record(w->lat_send, now > sent ? now - sent : 0);
  w->requests++;
  unsigned st = c->rp.status;
  w->status[st]++;
  if (st < 200 || st > 299) w->non2xx++;
  w->last_ns = now;
}

/* Reads and parses what arrived; 0, or -1 when the socket was closed (and maybe replaced). */
static int conn_read(worker *w, conn *c, uint64_t now) {
  for (int rounds = 0; rounds < 4; rounds++) {
    ssize_t r = recv(c->fd, w->rbuf, RBUF_SIZE, 0);
    if (r > 0) {
      size_t off = 0;
      while (off < (size_t)r) {
        if (rp_idle(&c->rp) && c->sent == c->done) { /* an answer nobody asked for */
          conn_fail(w, c, E_PARSE, now);
          return -1;
        }
        size_t used;
        int pr = rp_feed(&c->rp, g.head, w->rbuf + off, (size_t)r - off, &used);
        off += used;
        if (pr < 0) {
          conn_fail(w, c, E_PARSE, now);
          return -1;
        }
        if (pr == 0) break;
        bool keep = rp_keepalive(&c->rp);
        on_response(w, c, now);
        rp_reset(&c->rp);
        if (!keep) {
          /* The server said it closes: not an error unless it drops requests it was sent. */
          if (c->sent > c->done) count_error(w, E_CLOSED, now);
          conn_close(w, c);
          w->reconnects++;
          conn_connect(w, c, now);
          return -1;
        }
      }
      /* Once per read, not per answer: pipelined answers arriving together cost one write. */
      closed_refill(w, c, now);
      if (conn_pump(w, c) < 0) return -1;
      if ((size_t)r < RBUF_SIZE) return 0;
      continue;
    }
    if (r == 0) {
      if (c->rp.phase == P_BODY_EOF) { /* the close was the body's end */
        on_response(w, c, now);
        rp_reset(&c->rp);
      }
      if (c->sent > c->done || !rp_idle(&c->rp)) {
        conn_fail(w, c, E_CLOSED, now);
      } else { /* an idle keep-alive connection the server let go: just reconnect */
        conn_close(w, c);
        w->reconnects++;
        if (now < w->we || c->sched > c->sent) conn_connect(w, c, now);
      }
      return -1;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    if (errno == EINTR) continue;
    conn_fail(w, c, errno == ECONNRESET ? E_CLOSED : E_READ, now);
    return -1;
  }
  return 0;
}

static void conn_event(worker *w, conn *c, uint32_t events, uint64_t now) {
  if (c->state == C_CONNECTING) {
    if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    if (err || (events & (EPOLLERR | EPOLLHUP)))
      conn_fail(w, c, E_CONNECT, now);
    else
      conn_up(w, c, now);
    return;
  }
  if (c->state != C_UP) return;
  if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && conn_read(w, c, now) < 0) return;
  if ((events & EPOLLOUT) && c->state == C_UP && c->want_out) conn_flush(w, c);
}

/* Timeouts and reconnects; cheap enough at 10 ms intervals for thousands of connections. */
static void scan(worker *w, uint64_t now) {
  for (unsigned i = 0; i < w->n; i++) {
    conn *c = &w->conns[i];
    switch (c->state) {
    case C_DOWN:
      if (now >= c->retry_at && (now < w->we || c->sched > c->sent)) {
        w->reconnects++;
        conn_connect(w, c, now);
      }
      break;
    case C_CONNECTING:
      if (now > c->since && now - c->since >= g.timeout_ns) conn_fail(w, c, E_CONNECT, now);
      break;
    default:
      /* A send stamped after `now` was taken is in the future here, not 584 years old. */
      if (c->sent > c->done && now > c->sent_at[c->done % g.pipeline] &&
          now - c->sent_at[c->done % g.pipeline] >= g.timeout_ns)
        conn_fail(w, c, E_TIMEOUT, now);
      break;
    }
  }
}

/* Hands every request due by `now` to its connection (open loop). */
static void schedule_due(worker *w, uint64_t now) {
  while (w->next_due <= now && w->next_due < w->we) {
    if (w->next_due >= g.ws && now - w->next_due > w->max_lag) w->max_lag = now - w->next_due;
    conn *c = &w->conns[w->next_i];
    c->sched++;
    w->pending++;
    conn_pump(w, c);
    if (++w->next_i == w->n) {
      w->next_i = 0;
      w->round++;
    }
    w->next_due = due_at(w->round * g.conns + w->conns[w->next_i].gid);
  }
}

/* Sleeps until an event or `wake` - `spin`. epoll_pwait2 takes a nanosecond timeout; kernels
 * without it (or sandboxes refusing it) fall back to an absolute timerfd, which has no timer slack
 * either. Wake-ups still come tens of microseconds late (more in VMs), so for a due time the loop
 * wakes `spin` early and then polls without sleeping. */
static int wait_events(worker *w, struct epoll_event *evs, uint64_t now, uint64_t wake,
                       uint64_t spin) {
  /* While spinning, give the CPU to whatever else is runnable on it: often the server under
   * test, which a loopback wake-up tends to put on this CPU, and which would otherwise wait for
   * the spin to end - making the generator delay the very answers it is timing. */
  if (spin && wake > now && wake - now <= spin) sched_yield();
  wake = wake > spin ? wake - spin : 0;
  uint64_t d = wake > now ? wake - now : 0;
  if (w->pwait2) {
    struct timespec ts = {.tv_sec = (time_t)(d / 1000000000u), .tv_nsec = (long)(d % 1000000000u)};
    int n = epoll_pwait2(w->ep, evs, MAX_EVENTS, &ts, NULL);
    if (n >= 0 || (errno != ENOSYS && errno != EPERM)) return n;
    w->pwait2 = false;
  }
  if (d == 0) return epoll_wait(w->ep, evs, MAX_EVENTS, 0);
  if (w->armed != wake) {
    struct itimerspec its = {.it_value = {.tv_sec = (time_t)(wake / 1000000000u),
                                          .tv_nsec = (long)(wake % 1000000000u)}};
    timerfd_settime(w->tfd, TFD_TIMER_ABSTIME, &its, NULL);
    w->armed = wake;
  }
  return epoll_wait(w->ep, evs, MAX_EVENTS, -1);
}

static void *worker_main(void *arg) {
  worker *w = arg;
  struct epoll_event evs[MAX_EVENTS];
  prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL); /* default 50 us slack would smear the schedule */
  uint64_t now = clock_ns();
  for (unsigned i = 0; i < w->n; i++)
    conn_connect(w, &w->conns[i], now);
  w->next_scan = now + SCAN_NS;
  w->next_due = g.closed ? UINT64_MAX : due_at(w->conns[0].gid);
  for (;;) {
    now = clock_ns();
    if (atomic_load_explicit(&g_stop, memory_order_relaxed) && w->we > now) w->we = now;
    if (g.closed && !w->started && now >= g.start) {
      w->started = true;
      for (unsigned i = 0; i < w->n; i++) {
        closed_refill(w, &w->conns[i], now);
        conn_pump(w, &w->conns[i]);
      }
    }
    if (!g.closed) schedule_due(w, now);
    if (now >= w->next_scan) {
      scan(w, now);
      w->next_scan = now + SCAN_NS;
    }
    uint64_t wake = w->next_scan;
    if (now >= w->we) {
      if (w->pending == 0) break;
      if (now >= w->we + g.timeout_ns) { /* drained as long as we wait: the rest never came */
        if (now >= g.ws || g.warmup_s == 0) w->errors[E_TIMEOUT] += w->pending;
        break;
      }
      if (w->we + g.timeout_ns < wake) wake = w->we + g.timeout_ns;
    } else if (w->we < wake) {
      wake = w->we;
    }
    uint64_t spin = 0;
    if (w->next_due <= wake && w->next_due < w->we) {
      wake = w->next_due;
      spin = g.spin_ns;
    }
    if (g.closed && !w->started && g.start < wake) wake = g.start;
    int n = wait_events(w, evs, now, wake, spin);
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("keel-load: epoll_wait");
      break;
    }
    now = clock_ns();
    for (int i = 0; i < n; i++) {
      conn *c = evs[i].data.ptr;
      if (!c) { /* the timerfd: only waking up mattered */
        uint64_t ticks;
        if (read(w->tfd, &ticks, sizeof ticks) < 0) ticks = 0;
        w->armed = 0;
        continue;
      }
      conn_event(w, c, evs[i].events, now);
    }
  }
  for (unsigned i = 0; i < w->n; i++)
    if (w->conns[i].fd >= 0) close(w->conns[i].fd);
  return NULL;
}

/* ---- command line ------------------------------------------------------------------------------
 */

static void usage(FILE *f) {
  fprintf(
      f,
      "usage: keel-load URL [-m METHOD] [-H 'Name: value']... [--body STRING | --body-file FILE]\n"
      "                 [-c CONNECTIONS] [-r RATE] [-d DURATION_S] [-w WARMUP_S] [-t THREADS]\n"
      "                 [--pipeline N] [--timeout MS] [--spin US] [--json]\n"
      "URL is http://HOST[:PORT][/path]. Requests are sent at RATE per second on a fixed schedule\n"
      "(open loop) and latency is measured from each request's scheduled time; -r 0 is closed\n"
      "loop (every connection keeps --pipeline requests in flight). Defaults: -m GET -c 64\n"
      "-r 1000 -d 10 -w 2 -t 1 --pipeline 1 --timeout 5000 --spin 100 (busy-poll this many\n"
      "microseconds before each due time, because timer wake-ups are late; 0 = never).\n"
      "Exit status: 0 ok, 1 no answer was measured or connections failed, 2 usage.\n");
}

static int bad(const char *opt, const char *val) {
  fprintf(stderr, "keel-load: invalid value for %s: '%s'\n", opt, val);
  return -1;
}

static int parse_uint(const char *opt, const char *s, unsigned long long lo, unsigned long long hi,
                      unsigned long long *out) {
  char *end;
  errno = 0;
  if (!s || *s < '0' || *s > '9') return bad(opt, s ? s : "");
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end || v < lo || v > hi) return bad(opt, s);
  *out = v;
  return 0;
}

static int parse_num(const char *opt, const char *s, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  if (!s || !*s) return bad(opt, "");
  double v = strtod(s, &end);
  if (errno || *end || !isfinite(v) || v < lo || v > hi) return bad(opt, s);
  *out = v;
  return 0;
}

static int read_file(const char *path, char **out, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "keel-load: %s: %s\n", path, strerror(errno));
    return -1;
  }
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  for (;;) {
    if (!buf) break;
    n += fread(buf + n, 1, cap - n, f);
    if (n < cap) break;
    char *nb = cap > SIZE_MAX / 2 ? NULL : realloc(buf, cap * 2);
    if (!nb) {
      free(buf);
      buf = NULL;
      break;
    }
    buf = nb;
    cap *= 2;
  }
  bool err = ferror(f);
  fclose(f);
  if (!buf || err) {
    free(buf);
    fprintf(stderr, "keel-load: %s: read failed\n", path);
    return -1;
  }
  *out = buf;
  *len = n;
  return 0;
}

static int parse_url(const char *url) {
  static const char scheme[] = "http://";
  if (strncmp(url, scheme, sizeof scheme - 1) != 0) {
    fprintf(stderr, "keel-load: URL must start with http:// (got '%s')\n", url);
    return -1;
  }
  const char *h = url + sizeof scheme - 1, *hend, *p;
  if (*h == '[') { /* [v6 literal] */
    hend = strchr(h, ']');
    if (!hend) return bad("URL", url);
    h++;
    p = hend + 1;
  } else {
    hend = h + strcspn(h, ":/?#");
    p = hend;
  }
  size_t hl = (size_t)(hend - h);
  if (hl == 0 || hl >= sizeof g.host) return bad("URL", url);
  memcpy(g.host, h, hl);
  g.host[hl] = 0;
  if (*p == ':') {
    p++;
    size_t pl = strcspn(p, "/?#");
    unsigned long long port;
    char tmp[8];
    if (pl == 0 || pl >= sizeof tmp) return bad("URL port", url);
    memcpy(tmp, p, pl);
    tmp[pl] = 0;
    if (parse_uint("URL port", tmp, 1, 65535, &port)) return -1;
    snprintf(g.port, sizeof g.port, "%llu", port);
    p += pl;
  } else {
    snprintf(g.port, sizeof g.port, "80");
  }
  if (*p != '/' && *p != '?' && *p != '#' && *p) return bad("URL", url);
  size_t tl = strcspn(p, "#");
  g.path = *p == '/' ? p : "/";
  g.path_len = *p == '/' ? tl : 1;
  for (size_t i = 0; i < g.path_len; i++)
    if ((unsigned char)g.path[i] <= ' ' || g.path[i] == 0x7f)
      return bad("URL (unencoded byte)", url);
  return 0;
}

static int resolve(void) {
  /* IPv4 first: "localhost" may list ::1 first while the server listens on 127.0.0.1. */
  static const int families[] = {AF_INET, AF_INET6};
  int rc = 0;
  for (size_t i = 0; i < 2; i++) {
    struct addrinfo hints = {.ai_family = families[i], .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    rc = getaddrinfo(g.host, g.port, &hints, &res);
    if (rc == 0 && res) {
      memcpy(&g.addr, res->ai_addr, res->ai_addrlen);
      g.addr_len = res->ai_addrlen;
      freeaddrinfo(res);
      return 0;
    }
  }
  fprintf(stderr, "keel-load: cannot resolve %s: %s\n", g.host, gai_strerror(rc));
  return -1;
}

static bool has_header(const char *name) {
  size_t n = strlen(name);
  for (unsigned i = 0; i < g.nheaders; i++)
    if (strncasecmp(g.headers[i], name, n) == 0 && g.headers[i][n] == ':') return true;
  return false;
}

/* The request is built once; every send writes these same bytes. */
static int build_request(void) {
  size_t cap = 256 + g.path_len + strlen(g.method) + strlen(g.host) + g.body_len;
  for (unsigned i = 0; i < g.nheaders; i++)
    cap += strlen(g.headers[i]) + 2;
  char *r = malloc(cap);
  if (!r) return -1;
  int n = snprintf(r, cap, "%s %.*s HTTP/1.1\r\n", g.method, (int)g.path_len, g.path);
  size_t len = (size_t)n;
  if (!has_header("host")) {
    bool v6 = strchr(g.host, ':') != NULL, dflt = strcmp(g.port, "80") == 0;
    len += (size_t)snprintf(r + len, cap - len, "Host: %s%s%s%s%s\r\n", v6 ? "[" : "", g.host,
                            v6 ? "]" : "", dflt ? "" : ":", dflt ? "" : g.port);
  }
  for (unsigned i = 0; i < g.nheaders; i++)
    len += (size_t)snprintf(r + len, cap - len, "%s\r\n", g.headers[i]);
  if (g.has_body && !has_header("content-length") && !has_header("transfer-encoding"))
    len += (size_t)snprintf(r + len, cap - len, "Content-Length: %zu\r\n", g.body_len);
  len += (size_t)snprintf(r + len, cap - len, "\r\n");
  if (g.body_len) memcpy(r + len, g.body, g.body_len);
  len += g.body_len;
  g.req = r;
  g.req_len = len;
  g.rep_len = len * (g.pipeline + 1);
  g.rep = malloc(g.rep_len);
  if (!g.rep) return -1;
  for (unsigned i = 0; i <= g.pipeline; i++)
    memcpy(g.rep + i * len, r, len);
  return 0;
}

static bool token_ok(const char *s) {
  if (!*s) return false;
  for (; *s; s++)
    if (!strchr("!#$%&'*+-.^_`|~", *s) &&
        !((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z')))
      return false;
  return true;
}

static int parse_args(int argc, char **argv) {
  unsigned long long u;
  g.method = "GET";
  g.conns = 64;
  g.threads = 1;
  g.pipeline = 1;
  g.rate = 1000;
  g.duration_s = 10;
  g.warmup_s = 2;
  g.timeout_ns = UINT64_C(5000) * 1000000u;
  g.spin_ns = 100000;
  const char *body_file = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(s, l) (strcmp(a, s) == 0 || strcmp(a, l) == 0)
#define LONG(l) (strcmp(a, l) == 0)
#define NEED()                                                                                     \
  do {                                                                                             \
    if (!v) {                                                                                      \
      fprintf(stderr, "keel-load: %s needs a value\n", a);                                         \
      return -1;                                                                                   \
    }                                                                                              \
    i++;                                                                                           \
  } while (0)
    if (OPT("-h", "--help")) {
      usage(stdout);
      exit(0);
    } else if (OPT("-m", "--method")) {
      NEED();
      if (!token_ok(v)) return bad(a, v);
      g.method = v;
    } else if (OPT("-H", "--header")) {
      NEED();
      const char *colon = strchr(v, ':');
      if (!colon || colon == v || strpbrk(v, "\r\n")) return bad(a, v);
      if (g.nheaders == MAX_HEADERS) return bad(a, "(too many headers)");
      g.headers[g.nheaders++] = v;
    } else if (LONG("--body")) {
      NEED();
      g.body = v;
      g.body_len = strlen(v);
      g.has_body = true;
    } else if (LONG("--body-file")) {
      NEED();
      body_file = v;
    } else if (OPT("-c", "--connections")) {
      NEED();
      if (parse_uint(a, v, 1, 1000000, &u)) return -1;
      g.conns = (unsigned)u;
    } else if (OPT("-r", "--rate")) {
      NEED();
      if (parse_num(a, v, 0, 1e8, &g.rate)) return -1;
    } else if (OPT("-d", "--duration")) {
      NEED();
      if (parse_num(a, v, 0.001, 86400, &g.duration_s)) return -1;
    } else if (OPT("-w", "--warmup")) {
      NEED();
      if (parse_num(a, v, 0, 86400, &g.warmup_s)) return -1;
    } else if (OPT("-t", "--threads")) {
      NEED();
      if (parse_uint(a, v, 1, 1024, &u)) return -1;
      g.threads = (unsigned)u;
    } else if (LONG("--pipeline")) {
      NEED();
      if (parse_uint(a, v, 1, 1024, &u)) return -1;
      g.pipeline = (unsigned)u;
    } else if (LONG("--timeout")) {
      NEED();
      if (parse_uint(a, v, 1, 3600000, &u)) return -1;
      g.timeout_ns = (uint64_t)u * 1000000u;
    } else if (LONG("--spin")) {
      NEED();
      if (parse_uint(a, v, 0, 1000000, &u)) return -1;
      g.spin_ns = (uint64_t)u * 1000u;
    } else if (LONG("--json")) {
      g.json = true;
    } else if (a[0] == '-' && a[1]) {
      fprintf(stderr, "keel-load: unknown option %s\n", a);
      return -1;
    } else if (!g.url) {
      g.url = a;
    } else {
      fprintf(stderr, "keel-load: more than one URL ('%s')\n", a);
      return -1;
    }
#undef OPT
#undef LONG
#undef NEED
  }
  if (!g.url) {
    usage(stderr);
    return -1;
  }
  if (body_file && g.has_body) {
    fprintf(stderr, "keel-load: --body and --body-file are exclusive\n");
    return -1;
  }
  if (body_file) {
    if (read_file(body_file, &g.body_buf, &g.body_len)) return -1;
    g.body = g.body_buf;
    g.has_body = true;
  }
  if (g.rate > 0 && g.rate < 1e-3) return bad("-r", "(below 0.001/s)");
  if (g.threads > g.conns) g.threads = g.conns;
  g.closed = g.rate == 0;
  g.interval_ns = g.closed ? 0 : NS_PER_S / g.rate;
  g.head = strcmp(g.method, "HEAD") == 0;
  if (parse_url(g.url) || resolve() || build_request()) return -1;
  return 0;
}

/* ---- results -----------------------------------------------------------------------------------
 */

static void json_string(const char *s) {
  putchar('"');
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      printf("\\%c", c);
    else if (c < 0x20)
      printf("\\u%04x", c);
    else
      putchar(c);
  }
  putchar('"');
}

static void json_latency(const char *name, const hist *h) {
  static const double ps[] = {50, 90, 99, 99.9, 99.99};
  static const char *const pn[] = {"p50", "p90", "p99", "p999", "p9999"};
  printf("\"%s\":{", name);
  for (int i = 0; i < 5; i++)
    printf("\"%s\":%.3f,", pn[i], (double)hist_percentile(h, ps[i]) / 1e3);
  printf("\"max\":%.3f,\"mean\":%.3f,\"clamped\":%llu}", (double)h->max / 1e3, hist_mean(h) / 1e3,
         (unsigned long long)h->clamped);
}

/* 1234 ns -> "1.23ms" style, 3 significant digits like the histogram. */
static const char *fmt_dur(char *buf, size_t n, uint64_t ns) {
  double v = (double)ns;
  if (ns < 1000)
    snprintf(buf, n, "%.0fns", v);
  else if (ns < 1000000)
    snprintf(buf, n, "%.*fus", v < 1e4 ? 2 : v < 1e5 ? 1 : 0, v / 1e3);
  else if (ns < 1000000000)
    snprintf(buf, n, "%.*fms", v < 1e7 ? 2 : v < 1e8 ? 1 : 0, v / 1e6);
  else
    snprintf(buf, n, "%.2fs", v / 1e9);
  return buf;
}

static void text_latency(const char *title, const hist *h) {
  static const double ps[] = {50, 90, 99, 99.9, 99.99};
  static const char *const pn[] = {"p50", "p90", "p99", "p99.9", "p99.99"};
  char b[32];
  printf("%s\n ", title);
  for (int i = 0; i < 5; i++)
    printf(" %s %s", pn[i], fmt_dur(b, sizeof b, hist_percentile(h, ps[i])));
  printf("  max %s", fmt_dur(b, sizeof b, h->max));
  printf("  mean %s\n", fmt_dur(b, sizeof b, (uint64_t)hist_mean(h)));
  if (h->clamped)
    printf("  (%llu values above 60 s counted as 60 s)\n", (unsigned long long)h->clamped);
}

typedef struct totals {
  hist *lat, *lat_send;
  uint64_t requests, non2xx, reconnects, errors[E_KINDS], status[600], max_lag;
  double window_s, achieved;
} totals;

static void report(const totals *t) {
  if (g.json) {
    printf("{\"url\":");
    json_string(g.url);
    printf(",\"connections\":%u,\"threads\":%u,\"pipeline\":%u,\"target_rate\":%.15g,"
           "\"duration_s\":%.15g,\"warmup_s\":%.15g,\"requests\":%llu,\"achieved_rate\":%.3f,",
           g.conns, g.threads, g.pipeline, g.rate, t->window_s, g.warmup_s,
           (unsigned long long)t->requests, t->achieved);
    json_latency("latency_us", t->lat);
    putchar(',');
    json_latency("latency_from_send_us", t->lat_send);
    printf(",\"errors\":{");
    for (int k = 0; k < E_KINDS; k++)
      printf("%s\"%s\":%llu", k ? "," : "", error_names[k], (unsigned long long)t->errors[k]);
    printf("},\"non2xx\":%llu,\"status\":{", (unsigned long long)t->non2xx);
    bool first = true;
    for (unsigned s = 100; s < 600; s++) {
      if (!t->status[s]) continue;
      printf("%s\"%u\":%llu", first ? "" : ",", s, (unsigned long long)t->status[s]);
      first = false;
    }
    printf("},\"reconnects\":%llu,\"max_schedule_lag_us\":%.3f}\n",
           (unsigned long long)t->reconnects, (double)t->max_lag / 1e3);
    return;
  }
  if (g.closed)
    printf("keel-load %s: closed loop, %u connections (pipeline %u), %u thread%s, %.4gs + %.4gs "
           "warm-up\n",
           g.url, g.conns, g.pipeline, g.threads, g.threads == 1 ? "" : "s", t->window_s,
           g.warmup_s);
  else
    printf("keel-load %s: open loop at %.15g req/s, %u connections, %u thread%s, %.4gs + %.4gs "
           "warm-up\n",
           g.url, g.rate, g.conns, g.threads, g.threads == 1 ? "" : "s", t->window_s, g.warmup_s);
  printf("requests %llu, %.1f req/s achieved\n", (unsigned long long)t->requests, t->achieved);
  text_latency(g.closed ? "latency"
                        : "latency from scheduled time (coordinated omission corrected)",
               t->lat);
  if (!g.closed) text_latency("latency from actual send", t->lat_send);
  printf("errors:");
  for (int k = 0; k < E_KINDS; k++)
    printf(" %s %llu%s", error_names[k], (unsigned long long)t->errors[k],
           k + 1 < E_KINDS ? "," : "\n");
  printf("status:");
  for (unsigned s = 100; s < 600; s++)
    if (t->status[s]) printf(" %u=%llu", s, (unsigned long long)t->status[s]);
  printf("%s  (non-2xx %llu, reconnects %llu)\n", t->requests ? "" : " none",
         (unsigned long long)t->non2xx, (unsigned long long)t->reconnects);
  char b[32];
  if (!g.closed && t->max_lag > UINT64_C(1000000))
    printf("warning: the generator fell up to %s behind its schedule; it may be the bottleneck\n",
           fmt_dur(b, sizeof b, t->max_lag));
}

static void on_signal(int sig) {
  (void)sig;
  atomic_store(&g_stop, 1);
}

static void raise_fd_limit(unsigned need) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= need) return;
  rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < need)
    fprintf(stderr, "keel-load: warning: only %llu file descriptors for %u connections\n",
            (unsigned long long)rl.rlim_cur, g.conns);
}

int main(int argc, char **argv) {
  if (parse_args(argc, argv)) return 2;
  raise_fd_limit(g.conns + 64 + 4 * g.threads);

  worker *ws = calloc(g.threads, sizeof *ws);
  if (!ws) return 1;
  for (unsigned t = 0; t < g.threads; t++) {
    worker *w = &ws[t];
    w->idx = t;
    w->n = (g.conns - t + g.threads - 1) / g.threads;
    w->conns = calloc(w->n, sizeof *w->conns);
    w->ring = calloc((size_t)w->n * g.pipeline, sizeof *w->ring);
    w->rbuf = malloc(RBUF_SIZE);
    w->lat = malloc(sizeof *w->lat);
    w->lat_send = malloc(sizeof *w->lat_send);
    w->ep = epoll_create1(EPOLL_CLOEXEC);
    w->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (!w->conns || !w->ring || !w->rbuf || !w->lat || !w->lat_send || w->ep < 0 || w->tfd < 0) {
      fprintf(stderr, "keel-load: out of memory or descriptors\n");
      return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(w->ep, EPOLL_CTL_ADD, w->tfd, &ev);
    w->pwait2 = true;
    hist_reset(w->lat);
    hist_reset(w->lat_send);
    for (unsigned i = 0; i < w->n; i++) {
      conn *c = &w->conns[i];
      c->fd = -1;
      c->gid = t + i * g.threads;
      c->sent_at = w->ring + (size_t)i * g.pipeline;
    }
  }

  /* Children block the signals; main catches them and the workers notice within SCAN_NS. */
  sigset_t set, old;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  pthread_sigmask(SIG_BLOCK, &set, &old);

  /* A short lead lets the connections open before the first request is due. */
  uint64_t lead = UINT64_C(20000000) + (uint64_t)g.conns * 20000u;
  g.start = clock_ns() + lead;
  g.ws = g.start + (uint64_t)(g.warmup_s * NS_PER_S);
  g.we = g.ws + (uint64_t)(g.duration_s * NS_PER_S);
  for (unsigned t = 0; t < g.threads; t++) {
    ws[t].we = g.we;
    if (pthread_create(&ws[t].tid, NULL, worker_main, &ws[t]) != 0) {
      fprintf(stderr, "keel-load: cannot start thread %u\n", t);
      return 1;
    }
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);

  totals tot = {.lat = ws[0].lat, .lat_send = ws[0].lat_send};
  uint64_t end = 0, last = 0;
  for (unsigned t = 0; t < g.threads; t++) {
    worker *w = &ws[t];
    pthread_join(w->tid, NULL);
    if (t) {
      hist_merge(tot.lat, w->lat);
      hist_merge(tot.lat_send, w->lat_send);
    }
    tot.requests += w->requests;
    tot.non2xx += w->non2xx;
    tot.reconnects += w->reconnects;
    for (int k = 0; k < E_KINDS; k++)
      tot.errors[k] += w->errors[k];
    for (unsigned s = 0; s < 600; s++)
      tot.status[s] += w->status[s];
    if (w->max_lag > tot.max_lag) tot.max_lag = w->max_lag;
    if (w->we > end) end = w->we;
    if (w->last_ns > last) last = w->last_ns;
  }
  /* The rate is what was answered over the window the requests were due in, stretched when the
   * last answers came later: a server that falls behind does not get credit for the backlog. */
  tot.window_s = end > g.ws ? (double)(end - g.ws) / NS_PER_S : 0;
  double span =
      (last > end ? last : end) > g.ws ? (double)((last > end ? last : end) - g.ws) / NS_PER_S : 0;
  tot.achieved = span > 0 ? (double)tot.requests / span : 0;
  report(&tot);
  fflush(stdout);
  for (unsigned t = 0; t < g.threads; t++) {
    worker *w = &ws[t];
    close(w->ep);
    close(w->tfd);
    free(w->conns);
    free(w->ring);
    free(w->rbuf);
    free(w->lat);
    free(w->lat_send);
  }
  free(ws);
  free(g.req);
  free(g.rep);
  free(g.body_buf);
  return tot.requests == 0 || tot.errors[E_CONNECT] ? 1 : 0;
}
