/* conn.c - one HTTP/1.1 connection: read, parse, dispatch, respond (gather writes), time out, close. */
#include <errno.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "gateway/gw.h"
#include "http/server_internal.h"
#include "http/tls.h"
#include "keel/json.h"

#define KL_CONN_INBUF 4096         /* first input allocation, kept while the struct is pooled */
#define KL_CONN_KEEP (64 * 1024)   /* buffers grown past this are freed when empty */
#define KL_OUT_HIGH (256 * 1024)   /* stop parsing pipelined requests above this backlog */
#define KL_READS_PER_EVENT 4       /* fairness: one busy client cannot starve the rest */
#define KL_LINGER_MAX (64 * 1024)  /* bytes discarded before giving up on a lingering close */
#define KL_LINGER_MS 2000
#define KL_LINGER_DRAIN_MS 250
#define KL_ACCEPTS_PER_EVENT 64
#define KL_POOL_MAX 1024           /* connection structs kept for reuse per worker */
#define KL_STREAM_HIGH (64 * 1024) /* streamed response: backlog that pauses the producer */

#define CONN_OF(ptr, field) ((kl_conn *)(void *)((char *)(ptr)-offsetof(kl_conn, field)))

static void conn_process(kl_conn *c);
static void conn_compact(kl_conn *c);
static int conn_flush(kl_conn *c);
static void conn_read(kl_conn *c);
static void stream_events(kl_conn *c);

/* ---- lifecycle ---------------------------------------------------------- */

static void list_remove(kl_conn **head, kl_conn *c) {
  if (c->prev) c->prev->next = c->next;
  else *head = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = c->next = NULL;
}

static void list_push(kl_conn **head, kl_conn *c) {
  c->prev = NULL;
  c->next = *head;
  if (*head) (*head)->prev = c;
  *head = c;
}

/* The gateway when this connection's requests go through it (listener 0, some routes). */
static struct kl_gw *conn_gw(const kl_conn *c) {
  struct kl_gw *gw = kl_srv_gw(c->w->srv);
  return gw && gw->nroutes && c->listener == 0 ? gw : NULL;
}

/* The current request no longer holds a gateway route; a replaced gateway may go. */
static void gw_unref(kl_conn *c) {
  struct kl_gw *gw = c->gw_ref;
  if (!gw) return;
  c->gw_ref = NULL;
  kl_gw_ref(gw, c->w->id, -1);
  if (atomic_load_explicit(&gw->retired, memory_order_acquire))
    kl_gw_release(gw, c->w->id, kl_server_gw_unlink, c->w->srv);
}

/* Gives back what the current request charged against its listener's body budget. */
static void body_release(kl_conn *c) {
  if (!c->body_charge) return;
  atomic_fetch_sub(&c->w->srv->listeners[c->listener].body_used, c->body_charge);
  c->body_charge = 0;
}

static void conn_close(kl_conn *c) {
  if (c->closed) return;
  body_release(c);
  kl_worker *w = c->w;
  if (c->state == KL_CONN_WAIT && c->wait_cancel) {
    c->wait_cancel(c->wait_arg, c->wait_id);
    c->wait_cancel = NULL;
  }
  if (c->state == KL_CONN_STREAM && c->sops) {
    const kl_stream_ops *o = c->sops;
    c->sops = NULL;
    o->cancel(c->sarg);
  }
  kl_io_stop(&w->loop, &c->io);
  kl_tls_ssl_free(c->ssl); /* close_notify if still due, never waits */
  c->ssl = NULL;
  close(c->io.fd);
  c->io.fd = -1;
  kl_timer_cancel(&w->loop.timers, &c->timer);
  c->closed = 1;
  list_remove(&w->open, c);
  list_push(&w->closed, c);
  w->nconns--;
  kl_stats_add(w, w->srv->stats.conn_active, (uint64_t)-1);
  if (c->in_request) kl_stats_add(w, w->srv->stats.in_flight, (uint64_t)-1);
  kl_reqtrace_free(&c->req); /* a request that never got its answer: its span is dropped */
  gw_unref(c);
  if (w->draining && w->nconns == 0) w->loop.stop = 1;
}

void kl_conn_recycle(kl_worker *w) {
  while (w->closed) {
    kl_conn *c = w->closed;
    /* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): a head has prev NULL, the head moves on */
    list_remove(&w->closed, c);
    if (w->nfree >= KL_POOL_MAX) {
      kl_buf_free(&c->in);
      kl_buf_free(&c->out);
      free(c);
      continue;
    }
    c->in.len = c->out.len = 0;
    kl_buf_shrink(&c->in, KL_CONN_KEEP);
    kl_buf_shrink(&c->out, KL_CONN_KEEP);
    list_push(&w->free, c);
    w->nfree++;
  }
}

void kl_conn_free_pool(kl_worker *w) {
  kl_conn_recycle(w);
  while (w->free) {
    kl_conn *c = w->free;
    /* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): a head has prev NULL, the head moves on */
    list_remove(&w->free, c);
    kl_buf_free(&c->in);
    kl_buf_free(&c->out);
    free(c);
  }
  w->nfree = 0;
}

/* Every deadline goes through here; the heap timer only moves when the deadline comes sooner. */
static void conn_deadline(kl_conn *c, uint32_t ms) {
  c->deadline = c->w->loop.now + ms;
  if (!c->timer.slot || c->deadline < c->timer.deadline)
    kl_timer_set(&c->w->loop.timers, &c->timer, c->deadline);
}

static void conn_want(kl_conn *c, uint32_t events) {
  if (!c->closed && kl_io_modify(&c->w->loop, &c->io, events) < 0) conn_close(c);
}

/* Closes after the peer has had a chance to read our last response (no RST over unread input). */
static void conn_linger(kl_conn *c) {
  c->state = KL_CONN_LINGER;
  c->lingered = 0;
  if (c->ssl) kl_tls_ssl_shutdown(c->ssl); /* close_notify; the discarded input stays raw */
  shutdown(c->io.fd, SHUT_WR);
  conn_deadline(c, c->w->draining ? KL_LINGER_DRAIN_MS : KL_LINGER_MS); /* exit promptly */
  conn_want(c, EPOLLIN | EPOLLRDHUP);
}

/* ---- responses ---------------------------------------------------------- */

static const char *reason(int status) {
  switch (status) {
  case 100: return "Continue";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 304: return "Not Modified";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 411: return "Length Required";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 417: return "Expectation Failed";
  case 422: return "Unprocessable Content";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  default: return "Unknown";
  }
}

static char *put(char *p, const char *s, size_t n) {
  memcpy(p, s, n);
  return p + n;
}
#define PUTS(p, lit) put((p), (lit), sizeof(lit) - 1)

static char *put_uint(char *p, uint64_t v) {
  char tmp[20];
  int n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  while (n) *p++ = tmp[--n];
  return p;
}

/* Queues bytes [off, off+len) of `out`, merging with the previous segment when contiguous. */
static void seg_push(kl_conn *c, size_t off, size_t len) {
  if (len == 0) return;
  if (c->nsegs > c->seg_first) {
    uint32_t *plen = &c->segs[c->nsegs - 1].len;
    if (c->segs[c->nsegs - 1].off + *plen == off) {
      *plen += (uint32_t)len;
      return;
    }
  }
  c->segs[c->nsegs].off = (uint32_t)off;
  c->segs[c->nsegs].len = (uint32_t)len;
  c->nsegs++;
}

/* "HTTP/1.1 STATUS REASON\r\nDate: ..." (without the Date line's CRLF) at p. */
static char *put_status_date(const kl_conn *c, char *p, int status) {
  const char *r = reason(status);
  p = PUTS(p, "HTTP/1.1 ");
  p = put_uint(p, (uint64_t)status);
  *p++ = ' ';
  p = put(p, r, strlen(r));
  p = PUTS(p, "\r\nDate: ");
  return put(p, c->w->loop.date, KL_DATE_LEN);
}

/* Will the connection stay open after this response? */
static int conn_keeps(const kl_conn *c) {
  return c->head.keep_alive && !c->closing && !c->w->draining;
}

/*
 * Appends the status line and headers to `out` and queues them. `body_len` is
 * the Content-Length; `keep` says whether the connection stays open.
 */
static int write_head(kl_conn *c, int status, const char *ctype, size_t body_len, int keep,
                      const kl_buf *extra) {
  size_t ctlen = ctype ? strlen(ctype) : 0;
  size_t need = 128 + KL_DATE_LEN + ctlen + (extra ? extra->len : 0);
  int rc = kl_buf_reserve(&c->out, need);
  if (rc) return rc;
  char *start = c->out.data + c->out.len, *p = put_status_date(c, start, status);
  if (status != 204 && status >= 200) {
    p = PUTS(p, "\r\nContent-Length: ");
    p = put_uint(p, body_len);
  }
  if (ctype) {
    p = PUTS(p, "\r\nContent-Type: ");
    p = put(p, ctype, ctlen);
  }
  p = PUTS(p, "\r\n");
  if (extra && extra->len) p = put(p, extra->data, extra->len);
  if (!keep) p = PUTS(p, "Connection: close\r\n");
  else if (c->head.minor == 0) p = PUTS(p, "Connection: keep-alive\r\n");
  p = PUTS(p, "\r\n");
  size_t n = (size_t)(p - start);
  seg_push(c, c->out.len, n);
  c->out.len += n;
  return 0;
}

/* The protocol-error reason of a status the HTTP layer answers itself. */
static kl_proto_reason proto_reason(int status, int framing) {
  switch (status) {
  case 400: return framing ? KL_PROTO_SMUGGLING : KL_PROTO_BAD_REQUEST;
  case 408: return KL_PROTO_TIMEOUT;
  case 413: return KL_PROTO_BODY_TOO_LARGE;
  case 414: return KL_PROTO_URI_TOO_LONG;
  case 431: return KL_PROTO_HEADER_TOO_LARGE;
  default: return KL_PROTO_UNSUPPORTED; /* 417, 501, 505 */
  }
}

/*
 * A JSON error answer outside any handler (parse errors, timeouts); the connection closes.
 * `framing` marks a smuggling-class parse error; -1 means not a protocol error (out of memory).
 */
static void respond_error_close(kl_conn *c, int status, const char *msg, long offset,
                                int framing) {
  if (framing >= 0) kl_stats_proto(c->w, proto_reason(status, framing));
  char body[256];
  size_t n = 0;
  body[n++] = '{';
  n += (size_t)snprintf(body + n, sizeof(body) - n, "\"error\":");
  n += keel_json_quote(msg, strlen(msg), body + n, sizeof(body) - n - 40);
  if (offset >= 0) n += (size_t)snprintf(body + n, sizeof(body) - n, ",\"offset\":%ld", offset);
  body[n++] = '}';
  c->closing = 1;
  c->head.minor = 1;
  if (write_head(c, status, "application/json", n, 0, NULL) == 0 &&
      kl_buf_reserve(&c->out, n) == 0) {
    memcpy(c->out.data + c->out.len, body, n);
    seg_push(c, c->out.len, n);
    c->out.len += n;
  }
  conn_flush(c);
}

/* ---- output ------------------------------------------------------------- */

/* Sends iovecs to the socket or through TLS: bytes, or -1 with errno; EAGAIN sets *want to
 * the events to wait for (TLS may need the socket readable). */
static ssize_t conn_send_iov(kl_conn *c, struct iovec *iov, int n, uint32_t *want) {
  *want = EPOLLOUT;
  if (c->ssl) {
    ssize_t r = kl_tls_ssl_writev(c->ssl, iov, n, want);
    if (r < 0) errno = (int)-r;
    return r < 0 ? -1 : r;
  }
  /* send/sendmsg rather than write/writev: the socket calls skip the VFS file-position lock. */
  struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
  return n == 1 ? send(c->io.fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL)
                : sendmsg(c->io.fd, &msg, MSG_NOSIGNAL);
}

/* Writes what is queued; 0 when all is out (or the conn closed), 1 when the socket is full. */
static int conn_flush(kl_conn *c) {
  while (c->seg_first < c->nsegs) {
    struct iovec iov[64];
    int n = 0;
    for (uint32_t i = c->seg_first; i < c->nsegs && n < 64; i++, n++) {
      iov[n].iov_base = c->out.data + c->segs[i].off;
      iov[n].iov_len = c->segs[i].len;
    }
    uint32_t want;
    ssize_t wr = conn_send_iov(c, iov, n, &want);
    if (wr < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        conn_deadline(c, c->w->srv->cfg.write_timeout_ms);
        conn_want(c, want | EPOLLRDHUP);
        c->reading = 0;
        return 1;
      }
      conn_close(c);
      return 0;
    }
    size_t left = (size_t)wr;
    while (left && c->seg_first < c->nsegs) {
      uint32_t *len = &c->segs[c->seg_first].len;
      if (left >= *len) {
        left -= *len;
        c->seg_first++;
      } else {
        c->segs[c->seg_first].off += (uint32_t)left;
        *len -= (uint32_t)left;
        left = 0;
      }
    }
  }
  c->nsegs = c->seg_first = 0;
  c->out.len = 0;
  int idle = c->state == KL_CONN_HEAD && c->in.len == c->in_start;
  if ((c->closing || (c->w->draining && idle)) && c->state != KL_CONN_LINGER) {
    conn_linger(c);
    return 0;
  }
  if (c->state == KL_CONN_STREAM && !c->closed) {
    stream_events(c);
    return 0;
  }
  if (!c->reading && !c->closed && c->state != KL_CONN_LINGER && c->state != KL_CONN_WAIT) {
    c->reading = 1;
    conn_want(c, EPOLLIN | EPOLLRDHUP);
  }
  return 0;
}

static void respond_busy_close(kl_conn *c);

/* Raises the current request's charge against its listener's body budget to `total` bytes:
 * 0, or -1 after answering 429 (the budget is spent). */
static int body_charge(kl_conn *c, uint64_t total) {
  kl_listener *li = &c->w->srv->listeners[c->listener];
  if (!li->body_budget || total <= c->body_charge) return 0;
  uint64_t more = total - c->body_charge;
  if (atomic_fetch_add(&li->body_used, more) + more > li->body_budget) {
    atomic_fetch_sub(&li->body_used, more);
    respond_busy_close(c);
    return -1;
  }
  c->body_charge = total;
  return 0;
}

/* 429 + Retry-After, then a lingering close: too many bodies in flight on this listener. */
static void respond_busy_close(kl_conn *c) {
  static const char body[] = "{\"error\":\"too many request bodies in flight: retry later\"}";
  kl_buf *h = &c->w->hdrbuf;
  h->len = 0;
  kl_buf_append(h, "Retry-After: 1\r\n", 15);
  c->closing = 1;
  if (write_head(c, 429, "application/json", sizeof(body) - 1, 0, h) == 0 &&
      kl_buf_reserve(&c->out, sizeof(body) - 1) == 0) {
    memcpy(c->out.data + c->out.len, body, sizeof(body) - 1);
    seg_push(c, c->out.len, sizeof(body) - 1);
    c->out.len += sizeof(body) - 1;
  }
  h->len = 0;
  conn_flush(c);
}

/* ---- the public request API -------------------------------------------- */

keel_str keel_req_method(const keel_req *req) {
  return (keel_str){req->base + req->conn->head.method_off, req->conn->head.method_len};
}

keel_str keel_req_path(const keel_req *req) {
  const kl_http_head *h = &req->conn->head;
  if (h->path_len == 0) return (keel_str){"/", 1};
  return (keel_str){req->base + h->path_off, h->path_len};
}

keel_str keel_req_query(const keel_req *req) {
  const kl_http_head *h = &req->conn->head;
  return (keel_str){req->base + h->query_off, h->query_len};
}

keel_str keel_req_header(const keel_req *req, const char *name) {
  const kl_conn *c = req->conn;
  if (c->w->hdrs_conn != c || c->w->hdrs_gen != c->gen) return (keel_str){NULL, 0}; /* deferred */
  size_t n = strlen(name);
  for (uint32_t i = 0; i < c->head.nheaders; i++) {
    const kl_header *h = &c->w->hdrs[i];
    if (h->name_len == n && strncasecmp(req->base + h->name_off, name, n) == 0)
      return (keel_str){req->base + h->value_off, h->value_len};
  }
  return (keel_str){NULL, 0};
}

keel_str keel_req_body(const keel_req *req) { return (keel_str){req->body, req->body_len}; }

void *keel_req_alloc(keel_req *req, size_t n) { return kl_arena_alloc(&req->conn->w->arena, n); }

int keel_resp_header(keel_req *req, const char *name, const char *value) {
  if (req->responded) return -EALREADY;
  size_t nl = strlen(name), vl = strlen(value);
  if (nl == 0) return -EINVAL;
  for (size_t i = 0; i < nl; i++)
    if ((unsigned char)name[i] <= ' ' || name[i] == ':' || name[i] == 0x7f) return -EINVAL;
  for (size_t i = 0; i < vl; i++)
    if (value[i] == '\r' || value[i] == '\n') return -EINVAL;
  kl_buf *b = &req->conn->w->hdrbuf;
  int rc = kl_buf_reserve(b, nl + vl + 4);
  if (rc) return rc;
  char *p = b->data + b->len;
  p = put(p, name, nl);
  p = PUTS(p, ": ");
  p = put(p, value, vl);
  p = PUTS(p, "\r\n");
  b->len = (size_t)(p - b->data);
  return 0;
}

static int check_status(keel_req *req, int status) {
  if (req->responded) return -EALREADY;
  if (status < 200 || status > 599) return -EINVAL;
  return 0;
}

int keel_respond(keel_req *req, int status, const char *content_type, const void *body,
                 size_t len) {
  int rc = check_status(req, status);
  if (rc) return rc;
  kl_conn *c = req->conn;
  int send_body = !c->head.is_head && status != 204 && status != 304;
  rc = kl_buf_reserve(&c->out, len + 256 + c->w->hdrbuf.len + (content_type ? strlen(content_type) : 0));
  if (rc) return -ENOBUFS;
  rc = write_head(c, status, content_type, status == 204 ? 0 : len, conn_keeps(c), &c->w->hdrbuf);
  if (rc) return -ENOBUFS;
  if (send_body && len) {
    memcpy(c->out.data + c->out.len, body, len);
    seg_push(c, c->out.len, len);
    c->out.len += len;
  }
  req->responded = 1;
  req->status = status;
  req->resp_body_len = len;
  return 0;
}

int keel_respond_error(keel_req *req, int status, const char *msg) {
  char buf[512];
  size_t n = 0;
  n += (size_t)snprintf(buf, sizeof(buf), "{\"error\":");
  size_t q = keel_json_quote(msg, strlen(msg), buf + n, sizeof(buf) - n - 1);
  if (q > sizeof(buf) - n - 1) return -EINVAL;
  n += q;
  buf[n++] = '}';
  return keel_respond(req, status, "application/json", buf, n);
}

char *keel_respond_begin(keel_req *req, size_t max_len) {
  kl_conn *c = req->conn;
  if (req->responded || req->begun) return NULL;
  if (kl_buf_reserve(&c->out, max_len) != 0) return NULL;
  req->begun = 1;
  req->begin_off = c->out.len;
  return c->out.data + c->out.len;
}

int keel_respond_end(keel_req *req, int status, const char *content_type, size_t len) {
  if (!req->begun) return -EINVAL;
  int rc = check_status(req, status);
  if (rc) return rc;
  kl_conn *c = req->conn;
  if (c->out.len != req->begin_off || len > c->out.cap - c->out.len) return -EINVAL;
  size_t body_off = c->out.len;
  int send_body = !c->head.is_head && status != 204 && status != 304;
  c->out.len += len; /* the body stays where the handler wrote it; the head goes after it */
  rc = write_head(c, status, content_type, status == 204 ? 0 : len, conn_keeps(c), &c->w->hdrbuf);
  if (rc) {
    c->out.len = body_off;
    return -ENOBUFS;
  }
  if (send_body) seg_push(c, body_off, len);
  req->responded = 1;
  req->status = status;
  req->resp_body_len = len;
  return 0;
}

/* ---- dispatch ----------------------------------------------------------- */

/* Formats the peer address once per connection (glibc's inet_ntop costs a sprintf per call). */
static void peer_format(kl_conn *c) {
  if (c->peer.ss_family == AF_INET) {
    const struct sockaddr_in *sin = (const struct sockaddr_in *)(const void *)&c->peer;
    const unsigned char *b = (const unsigned char *)&sin->sin_addr;
    char *p = c->peer_text;
    for (int i = 0; i < 4; i++) {
      if (b[i] >= 100) *p++ = (char)('0' + b[i] / 100);
      if (b[i] >= 10) *p++ = (char)('0' + b[i] / 10 % 10);
      *p++ = (char)('0' + b[i] % 10);
      *p++ = i < 3 ? '.' : '\0';
    }
    c->peer_port = ntohs(sin->sin_port);
  } else if (c->peer.ss_family == AF_INET6) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)&c->peer;
    inet_ntop(AF_INET6, &s6->sin6_addr, c->peer_text, sizeof(c->peer_text));
    c->peer_port = ntohs(s6->sin6_port);
  } else {
    memcpy(c->peer_text, "unix", 5);
  }
}

const char *kl_conn_peer(kl_conn *c) {
  if (!c->peer_text[0]) peer_format(c);
  return c->peer_text;
}

static void access_log(kl_conn *c, keel_req *req, const kl_route *r, uint64_t us) {
  kl_worker *w = c->w;
  double sample = w->srv->cfg.access_log_sample;
  if (sample <= 0 || !kl_log_enabled(w->srv->log, KEEL_LOG_INFO)) return;
  if (sample < 1) {
    w->rng ^= w->rng << 13;
    w->rng ^= w->rng >> 7;
    w->rng ^= w->rng << 17;
    if ((double)(w->rng >> 11) * 0x1.0p-53 >= sample) return;
  }
  kl_line l;
  kl_line_begin(&l, KEEL_LOG_INFO, "request");
  keel_str m = keel_req_method(req), p = keel_req_path(req);
  kl_line_str(&l, "http.request.method", m.ptr, m.len);
  kl_line_str(&l, "url.path", p.ptr, p.len);
  if (r) kl_line_str(&l, "http.route", r->path, r->path_len);
  kl_line_int(&l, "http.response.status_code", req->status);
  kl_line_int(&l, "http.response.body.size", (int64_t)req->resp_body_len);
  kl_line_fixed(&l, "duration_ms", (int64_t)us, 3);
  kl_line_cstr(&l, "client.address", kl_conn_peer(c));
  kl_line_int(&l, "client.port", c->peer_port);
  kl_line_end(&l, w->logq);
}

/* After the answer: metrics, access log, span, and on to the next request. */
static void conn_finish(kl_conn *c, const kl_route *r, uint32_t slot, size_t req_end) {
  kl_worker *w = c->w;
  keel_req *req = &c->req;
  body_release(c);
  if (!req->responded) { /* the output cap refused even the error: give up on this peer */
    c->closing = 1;
  }
  uint64_t us = kl_now_us() - c->req_start;
  if (req->responded) kl_stats_request(w, slot, req->status, us);
  kl_stats_add(w, w->srv->stats.in_flight, (uint64_t)-1);
  access_log(c, req, r, us);
  kl_reqtrace_end(w, req, r, us);
  kl_arena_reset(&w->arena);
  gw_unref(c);
  if (!conn_keeps(c)) c->closing = 1;
  c->in_start += req_end;
  c->in_request = 0;
  conn_deadline(c, w->srv->cfg.idle_timeout_ms);
  c->state = KL_CONN_HEAD;
  c->scanned = 0;
  c->sent_continue = 0;
  c->gen++;
}

/* The current request's Host header value (NULL when absent). */
static const char *conn_host(const kl_conn *c, size_t *len) {
  const char *base = c->in.data + c->in_start;
  for (uint32_t i = 0; i < c->head.nheaders; i++) {
    const kl_header *h = &c->w->hdrs[i];
    if (kl_http_name_eq(base + h->name_off, h->name_len, "host")) {
      *len = h->value_len;
      return base + h->value_off;
    }
  }
  return NULL;
}

/*
 * Gateway routes match the normalised path (gw/route.c). It is written over the original in
 * place (never longer), right-aligned with '/' padding in front, so that a second parse of
 * the same head (conn_dispatch) finds a path that normalises to the same: 0, or -1 when the
 * path is ambiguous (400 answered).
 */
static int conn_normalize(kl_conn *c) {
  if (c->head.path_len == 0) return 0;
  char *p = c->in.data + c->in_start + c->head.path_off;
  size_t len = c->head.path_len;
  const char *why = NULL;
  long n = kl_gw_normalize(p, len, p, &why);
  if (n < 0) {
    respond_error_close(c, 400, why, (long)c->head.path_off, 0);
    return -1;
  }
  memmove(p + len - (size_t)n, p, (size_t)n);
  memset(p, '/', len - (size_t)n);
  c->head.path_off += (uint32_t)(len - (size_t)n);
  c->head.path_len = (uint32_t)n;
  return 0;
}

/* The route of the request in c->head: keel's own exact routes, then the gateway's. */
static const kl_route *conn_find_route(kl_conn *c, char *allow, size_t allowlen) {
  kl_worker *w = c->w;
  const char *base = c->in.data + c->in_start;
  const char *m = base + c->head.method_off, *path = base + c->head.path_off;
  const kl_route *r = kl_route_find(w->srv, c->listener, m, c->head.method_len, path,
                                    c->head.path_len, allow, allowlen);
  struct kl_gw *gw = kl_srv_gw(w->srv);
  if (r || allow[0] || !gw || c->listener != 0) return r;
  size_t hlen = 0;
  const char *host = conn_host(c, &hlen);
  const kl_gw_route *g = kl_gw_match(gw, host, hlen, m, c->head.method_len,
                                     c->head.path_len ? path : "/", c->head.path_len ? c->head.path_len : 1,
                                     allow, allowlen);
  if (g && !c->gw_ref) { /* held until the request ends: a reload cannot free it meanwhile */
    c->gw_ref = gw;
    kl_gw_ref(gw, w->id, 1);
  }
  return g ? &g->rt : NULL;
}

/* The metrics slot of a request on route `r` (NULL: unmatched). */
static uint32_t conn_slot(const kl_conn *c, const kl_route *r, const char *base) {
  if (r && !r->gw) return r->slot + (c->head.is_head && r->method[0] == 'G'); /* HEAD on GET */
  unsigned mi = kl_stats_method(base + c->head.method_off, c->head.method_len);
  return r ? kl_gw_slot(r->gw, mi) : c->w->srv->stats.unmatched + mi;
}

/* Makes the worker's header array describe this connection's current request again. */
static void conn_reparse(kl_conn *c) {
  kl_worker *w = c->w;
  if (w->hdrs_conn == c && w->hdrs_gen == c->gen) return;
  /* Another connection parsed since: parse this (valid) head again for its header views. */
  size_t scanned = 0;
  kl_http_error err;
  uint8_t expect = c->head.expect_continue;
  uint64_t cl = c->head.content_length;
  kl_http_parse_head(c->in.data + c->in_start, c->head.head_len, &scanned, &w->limits, w->hdrs,
                     &c->head, &err);
  c->head.expect_continue = expect;
  c->head.content_length = cl;
  w->hdrs_conn = c;
  w->hdrs_gen = c->gen;
  if (conn_gw(c)) conn_normalize(c); /* as at head time: cannot fail */
}

/* Runs the handler for the complete request in `in` and moves to the next one. */
static void conn_dispatch(kl_conn *c, size_t req_end) {
  kl_worker *w = c->w;
  keel_req *req = &c->req;
  const char *base = c->in.data + c->in_start;
  conn_reparse(c);
  memset(req, 0, sizeof(*req));
  req->conn = c;
  req->base = base;
  req->body = base + c->head.head_len;
  req->body_len = c->head.chunked ? c->body_pos - c->head.head_len : c->head.content_length;
  w->hdrbuf.len = 0;

  char allow[128];
  allow[0] = '\0';
  const kl_route *r = c->route ? c->route : conn_find_route(c, allow, sizeof(allow));
  c->route = NULL;
  uint32_t slot = conn_slot(c, r, base);
  if (!r || !(r->flags & KL_ROUTE_UNTRACED)) kl_reqtrace_begin(w, req, r);
  if (r) {
    uint32_t gen = c->gen;
    c->busy++;
    r->handler(req, r->userdata);
    c->busy--;
    if (c->closed || c->gen != gen) return; /* answered and finished inside the handler */
    if (req->deferred && !req->responded) {
      c->wait_route = r;
      c->wait_slot = slot;
      c->wait_end = req_end;
      kl_arena_reset(&w->arena);
      return;
    }
    if (!req->responded) {
      w->hdrbuf.len = 0;
      if (req->begun) req->begun = 0;
      keel_respond_error(req, 500, "handler did not respond");
    }
  } else if (allow[0]) {
    keel_resp_header(req, "Allow", allow);
    char body[200];
    int n = snprintf(body, sizeof(body), "{\"error\":\"method not allowed\",\"allow\":\"%s\"}",
                     allow);
    keel_respond(req, 405, "application/json", body, (size_t)n);
  } else {
    keel_str p = keel_req_path(req);
    size_t cap = 64 + p.len * 6;
    char *body = kl_arena_alloc(&w->arena, cap);
    size_t n = 0;
    if (body) {
      n = (size_t)snprintf(body, cap, "{\"error\":\"not found\",\"path\":");
      n += keel_json_quote(p.ptr, p.len, body + n, cap - n - 1);
      body[n++] = '}';
    }
    keel_respond(req, 404, "application/json", body, n);
  }
  conn_finish(c, r, slot, req_end);
}

/* ---- deferred answers ----------------------------------------------------- */

void kl_req_defer(keel_req *req, kl_deferred *d, uint32_t timeout_ms,
                  void (*cancel)(void *arg, uint64_t id), void *arg) {
  kl_conn *c = req->conn;
  kl_reqtrace_detach(c->w, req);
  c->wait_cancel = cancel;
  c->wait_arg = arg;
  req->deferred = 1;
  c->state = KL_CONN_WAIT;
  c->wait_id = ++c->w->wait_seq;
  c->reading = 0;
  /* Input stays registered: only if some arrives while we wait is it turned off (conn_event),
   * which saves two epoll_ctl calls per deferred request. TLS turns it off at once. */
  if (c->ssl) conn_want(c, 0);
  c->deadline = c->w->loop.now + timeout_ms;
  kl_timer_set(&c->w->loop.timers, &c->timer, c->deadline);
  d->conn = c;
  d->id = c->wait_id;
}

/* After a request finished outside the parser: requests pipelined behind it, then output. */
static void conn_continue(kl_conn *c) {
  if (c->closed || c->busy) return; /* the parser's caller goes on by itself */
  conn_process(c);
  if (!c->closed) conn_flush(c);
  if (c->ssl && !c->closed && !c->closing && c->reading && kl_tls_ssl_pending(c->ssl))
    conn_read(c); /* TLS: bytes decrypted before the pause, which epoll does not report */
}

/* Is `d` still the request waiting on its connection (deferred, or streamed and unanswered)? */
static kl_conn *deferred_conn(const kl_deferred *d) {
  kl_conn *c = d->conn;
  if (c->closed || c->wait_id != d->id) return NULL;
  if (c->state == KL_CONN_WAIT || (c->state == KL_CONN_STREAM && !c->stream_head)) return c;
  return NULL;
}

keel_req *kl_deferred_req(const kl_deferred *d) {
  kl_conn *c = deferred_conn(d);
  if (!c) return NULL;
  c->w->hdrbuf.len = 0;
  conn_reparse(c); /* header views valid again while answering */
  if (c->state == KL_CONN_STREAM && !c->stream_done) c->closing = 1; /* the body stays unread */
  return &c->req;
}

void kl_deferred_finish(const kl_deferred *d) {
  kl_conn *c = deferred_conn(d);
  if (!c) return;
  if (!c->req.responded) keel_respond_error(&c->req, 500, "handler did not respond");
  c->wait_id = 0;
  c->wait_cancel = NULL;
  size_t end = c->wait_end;
  if (c->state == KL_CONN_STREAM) {
    c->sops = NULL;
    if (!c->stream_done) c->closing = 1;
    end = c->head.chunked ? c->raw_pos : c->head.head_len;
  }
  conn_finish(c, c->wait_route, c->wait_slot, end);
  conn_continue(c); /* requests pipelined behind it */
}

/* ---- streamed requests (KL_ROUTE_STREAM) ----------------------------------------------- */

static void stream_body(kl_conn *c);

/* Dispatches a streamed route's request as soon as its head is in. */
static void conn_dispatch_stream(kl_conn *c) {
  kl_worker *w = c->w;
  keel_req *req = &c->req;
  const kl_route *r = c->route;
  const char *base = c->in.data + c->in_start;
  c->route = NULL;
  memset(req, 0, sizeof(*req));
  req->conn = c;
  req->base = base;
  w->hdrbuf.len = 0;
  c->sops = NULL;
  c->stream_pre = 0;
  c->stream_left = c->head.chunked ? 0 : c->head.content_length;
  c->stream_done = !c->head.chunked && c->head.content_length == 0;
  c->stream_head = c->stream_chunked = c->stream_drain = 0;
  c->raw_pos = c->body_pos = c->head.head_len;
  kl_chunked_init(&c->chunked);
  uint32_t slot = conn_slot(c, r, base), gen = c->gen;
  c->wait_route = r;
  c->wait_slot = slot;
  if (!(r->flags & KL_ROUTE_UNTRACED)) kl_reqtrace_begin(w, req, r);
  c->state = KL_CONN_STREAM; /* the body comes as it arrives (kl_req_stream) */
  c->busy++;
  r->handler(req, r->userdata);
  c->busy--;
  if (c->closed || c->gen != gen) return; /* answered and finished inside the handler */
  if (req->deferred && !req->responded) {
    kl_arena_reset(&w->arena);
    if (c->state == KL_CONN_STREAM && !c->stream_done) conn_deadline(c, w->srv->cfg.body_timeout_ms);
    if (c->state == KL_CONN_STREAM && c->stream_done) {
      c->deadline = UINT64_MAX;
      stream_events(c);
    }
    return;
  }
  if (!req->responded) {
    w->hdrbuf.len = 0;
    keel_respond_error(req, 500, "handler did not respond");
  }
  if (!c->stream_done) c->closing = 1; /* answered before the body: it is not read */
  conn_finish(c, r, slot, c->head.head_len);
}

/* Hands the body bytes buffered so far to the handler; pauses reading when it takes fewer. */
static void stream_body(kl_conn *c) {
  while (!c->stream_done && c->sops && !c->closed) {
    char *base = c->in.data + c->in_start;
    size_t avail = c->in.len - c->in_start, hl = c->head.head_len, have;
    int end;
    if (c->stream_pre || !c->head.chunked) { /* de-chunked in place already when stream_pre */
      have = avail - hl < c->stream_left ? avail - hl : (size_t)c->stream_left;
      end = have == c->stream_left;
    } else {
      kl_http_error err;
      uint64_t max = c->wait_route && c->wait_route->body_max ? c->wait_route->body_max : UINT64_MAX;
      int rc = kl_chunked_decode(&c->chunked, base, avail, &c->raw_pos, &c->body_pos, max,
                                 c->w->srv->cfg.header_bytes_max, &err);
      if (rc < 0) {
        kl_deferred d = {c, c->wait_id};
        if (!c->stream_head) { /* the handler still waits: answer the client ourselves */
          const kl_stream_ops *o = c->sops;
          c->sops = NULL;
          o->cancel(c->sarg);
          respond_error_close(c, err.status, err.msg, (long)err.offset, err.framing);
        } else {
          kl_stream_abort(&d);
        }
        return;
      }
      have = c->body_pos - hl;
      end = rc == 1;
    }
    if (have == 0 && !end) break;
    uint32_t gen = c->gen;
    c->busy++;
    size_t took = c->sops->body(c->sarg, base + hl, have, end);
    c->busy--;
    if (c->closed || c->state != KL_CONN_STREAM || c->gen != gen) return;
    if (took > have) took = have;
    /* Taken bytes leave the buffer: what follows slides down behind the head. */
    memmove(base + hl, base + hl + took, avail - hl - took);
    c->in.len -= took;
    if (c->head.chunked) {
      c->raw_pos -= took;
      c->body_pos -= took;
    }
    if (c->stream_pre || !c->head.chunked) c->stream_left -= took;
    c->stream_paused = took < have;
    if (c->stream_paused) break; /* the handler is full: kl_stream_resume continues */
    if (end) c->stream_done = 1;
    if (have == 0) break;
  }
  if (c->closed) return;
  if (c->stream_done) c->deadline = UINT64_MAX; /* the handler's own timers run from here */
  else conn_deadline(c, c->w->srv->cfg.body_timeout_ms);
  stream_events(c);
}

/* A streamed connection reads while the body is coming and the handler keeps up, and waits
 * for output room while its response backs up. */
static void stream_events(kl_conn *c) {
  int rd = !c->stream_done && !c->stream_paused && !c->stream_pre &&
           c->in.len - c->in_start < (size_t)64 * 1024 + c->head.head_len;
  int wr = c->seg_first < c->nsegs;
  c->reading = (uint8_t)rd;
  uint32_t ev = (rd ? EPOLLIN | EPOLLRDHUP : 0) | (wr ? EPOLLOUT : 0);
  if (!rd && !c->ssl) ev |= c->io.events & (EPOLLIN | EPOLLRDHUP); /* off when input comes */
  conn_want(c, ev);
}

void kl_req_stream(keel_req *req, kl_deferred *d, const kl_stream_ops *ops, void *arg) {
  kl_conn *c = req->conn;
  kl_reqtrace_detach(c->w, req);
  if (c->state != KL_CONN_STREAM) { /* dispatched whole (or deferred): the body is all here */
    c->stream_pre = 1;
    c->stream_left = req->body_len;
    c->stream_done = req->body_len == 0;
    c->stream_head = c->stream_chunked = c->stream_drain = c->stream_paused = 0;
  }
  req->deferred = 1;
  c->state = KL_CONN_STREAM;
  c->wait_id = ++c->w->wait_seq;
  c->wait_cancel = NULL;
  c->sops = ops;
  c->sarg = arg;
  d->conn = c;
  d->id = c->wait_id;
}

/* The streamed connection of `d`, or NULL when that request is over. */
static kl_conn *stream_conn(const kl_deferred *d) {
  kl_conn *c = d->conn;
  if (c->closed || c->state != KL_CONN_STREAM || c->wait_id != d->id) return NULL;
  return c;
}

keel_req *kl_stream_req(const kl_deferred *d) {
  kl_conn *c = stream_conn(d);
  if (!c) return NULL;
  conn_reparse(c);
  return &c->req;
}

void kl_stream_resume(const kl_deferred *d) {
  kl_conn *c = stream_conn(d);
  if (!c) return;
  c->stream_paused = 0;
  stream_body(c);
  if (c->closed) return;
  if (c->state != KL_CONN_STREAM) conn_continue(c);
  else if (c->reading && !c->busy) conn_read(c);
}

int kl_stream_head(const kl_deferred *d, int status, const char *headers, size_t hlen,
                   int64_t length, int bodiless) {
  kl_conn *c = stream_conn(d);
  if (!c || c->stream_head) return -1;
  int keep = conn_keeps(c) && c->stream_done;
  if (kl_buf_reserve(&c->out, 160 + KL_DATE_LEN + hlen) != 0) return -1;
  char *start = c->out.data + c->out.len, *p = put_status_date(c, start, status);
  p = PUTS(p, "\r\n");
  p = put(p, headers, hlen);
  if (!bodiless && length >= 0) {
    p = PUTS(p, "Content-Length: ");
    p = put_uint(p, (uint64_t)length);
    p = PUTS(p, "\r\n");
  } else if (!bodiless) {
    if (c->head.minor == 0) keep = 0; /* an HTTP/1.0 client: the body ends at the close */
    else p = PUTS(p, "Transfer-Encoding: chunked\r\n");
    c->stream_chunked = c->head.minor != 0;
  }
  if (!keep) {
    p = PUTS(p, "Connection: close\r\n");
    c->closing = 1;
  } else if (c->head.minor == 0) {
    p = PUTS(p, "Connection: keep-alive\r\n");
  }
  p = PUTS(p, "\r\n");
  size_t n = (size_t)(p - start);
  seg_push(c, c->out.len, n);
  c->out.len += n;
  c->stream_head = 1;
  c->req.responded = 1; /* for the 500 fallback and the log; the body follows */
  c->req.status = status;
  if (c->req.conn->head.is_head || bodiless) c->stream_chunked = 0;
  return 0;
}

int kl_stream_write(const kl_deferred *d, const char *p, size_t n) {
  kl_conn *c = stream_conn(d);
  if (!c || !c->stream_head) return -1;
  if (n == 0) goto flush;
  if (kl_buf_reserve(&c->out, n + 24) != 0) return -1;
  if (c->stream_chunked) {
    char line[24];
    int l = snprintf(line, sizeof line, "%zx\r\n", n);
    memcpy(c->out.data + c->out.len, line, (size_t)l);
    seg_push(c, c->out.len, (size_t)l);
    c->out.len += (size_t)l;
  }
  memcpy(c->out.data + c->out.len, p, n);
  seg_push(c, c->out.len, n);
  c->out.len += n;
  if (c->stream_chunked) {
    memcpy(c->out.data + c->out.len, "\r\n", 2);
    seg_push(c, c->out.len, 2);
    c->out.len += 2;
  }
  c->req.resp_body_len += n;
flush: /* what the upstream sent goes on at once (one send per upstream read) */
  if (c->seg_first < c->nsegs && conn_flush(c) == 0 && c->closed) return -1;
  if (c->closed) return -1;
  if (c->seg_first < c->nsegs && (c->nsegs + 8 > KL_SEGS_MAX || c->out.len >= KL_STREAM_HIGH)) {
    c->stream_drain = 1;
    return 1;
  }
  return 0;
}

void kl_stream_end(const kl_deferred *d) {
  kl_conn *c = stream_conn(d);
  if (!c) return;
  if (!c->stream_head) {
    kl_stream_abort(d);
    return;
  }
  if (c->stream_chunked && kl_buf_append(&c->out, "0\r\n\r\n", 5) == 0)
    seg_push(c, c->out.len - 5, 5);
  c->sops = NULL;
  c->wait_id = 0;
  if (!c->stream_done) c->closing = 1;
  size_t end = c->head.chunked ? c->raw_pos : c->head.head_len;
  conn_finish(c, c->wait_route, c->wait_slot, end);
  conn_continue(c); /* requests pipelined behind it */
}

void kl_stream_abort(const kl_deferred *d) {
  kl_conn *c = stream_conn(d);
  if (!c) return;
  c->sops = NULL;
  conn_close(c);
}


/* The current request's body cap: its listener's, or its route's when lower (a gateway
 * route's validate.max_body on a buffered route). */
static uint64_t conn_body_max(const kl_conn *c) {
  uint64_t max = c->w->srv->listeners[c->listener].body_max;
  if (c->route && c->route->body_max && c->route->body_max < max) max = c->route->body_max;
  return max;
}

/* Parses and handles every complete request buffered, as far as output backpressure allows. */
static void conn_process(kl_conn *c) {
  kl_worker *w = c->w;
  const keel_config *cfg = &w->srv->cfg;
  uint64_t body_max = conn_body_max(c);
  while (!c->closing && !c->closed && c->state != KL_CONN_WAIT &&
         (c->state != KL_CONN_STREAM || !c->stream_done)) {
    if (c->nsegs + 4 > KL_SEGS_MAX || c->out.len > KL_OUT_HIGH) {
      if (conn_flush(c) || c->closed) return; /* resumes from the EPOLLOUT handler */
    }
    char *base = c->in.data + c->in_start;
    size_t avail = c->in.len - c->in_start;
    if (c->state == KL_CONN_HEAD) {
      if (c->scanned == 0) { /* RFC 9112 2.2: ignore empty lines before a request */
        size_t skip = 0;
        while (skip + 1 < avail && base[skip] == '\r' && base[skip + 1] == '\n') skip += 2;
        c->in_start += skip;
        base += skip;
        avail -= skip;
      }
      if (avail == 0) {
        c->in_start = c->in.len = 0;
        return;
      }
      if (!c->in_request) {
        /* First byte of a request: the header deadline runs from here (from accept for the
         * first request) and a trickle of further bytes never extends it. */
        c->in_request = 1;
        c->req_start = kl_now_us();
        kl_stats_add(w, w->srv->stats.in_flight, 1);
        if (c->gen) conn_deadline(c, cfg->header_timeout_ms);
      }
      kl_http_error err;
      int rc = kl_http_parse_head(base, avail, &c->scanned, &w->limits, w->hdrs, &c->head, &err);
      if (rc == 0) return;
      if (rc < 0) {
        respond_error_close(c, err.status, err.msg, (long)err.offset, err.framing);
        return;
      }
      w->hdrs_conn = c;
      w->hdrs_gen = c->gen;
      if (conn_gw(c)) {
        char allow[128];
        if (conn_normalize(c) != 0) return;
        c->route = conn_find_route(c, allow, sizeof(allow));
        if (c->route && (c->route->flags & KL_ROUTE_STREAM)) {
          uint64_t max = c->route->body_max;
          if (max && c->head.has_length && c->head.content_length > max) {
            respond_error_close(c, 413, "request body too large", (long)c->head.head_len, 0);
            return;
          }
          conn_dispatch_stream(c);
          continue;
        }
      }
      body_max = conn_body_max(c);
      if (c->head.has_length && c->head.content_length > body_max) {
        respond_error_close(c, 413, "request body too large", (long)c->head.head_len, 0);
        return;
      }
      if (!c->head.chunked && c->head.content_length == 0) {
        conn_dispatch(c, c->head.head_len);
        continue;
      }
      /* All connections' bodies together stay under the listener's budget: past it, 429
       * rather than memory that grows with the number of clients. A chunked body is charged
       * as it arrives. */
      if (!c->head.chunked && body_charge(c, c->head.content_length) != 0) return;
      c->state = KL_CONN_BODY;
      c->raw_pos = c->body_pos = c->head.head_len;
      kl_chunked_init(&c->chunked);
      conn_deadline(c, cfg->body_timeout_ms);
    }
    if (c->state == KL_CONN_STREAM) {
      stream_body(c);
      if (c->closed || c->state == KL_CONN_STREAM) return;
      continue; /* it ended inside the handler: on to the next request */
    }
    /* KL_CONN_BODY */
    if (c->head.expect_continue && !c->sent_continue && avail == c->head.head_len) {
      static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
      c->sent_continue = 1;
      if (kl_buf_append(&c->out, cont, sizeof(cont) - 1) == 0) {
        seg_push(c, c->out.len - (sizeof(cont) - 1), sizeof(cont) - 1);
        conn_flush(c);
        if (c->closed) return;
      }
    }
    if (!c->head.chunked) {
      size_t end = c->head.head_len + c->head.content_length;
      if (avail < end) {
        /* Make room for the whole body; its size was checked against body_max above. */
        conn_compact(c);
        if (kl_buf_reserve(&c->in, end - avail) != 0) {
          respond_error_close(c, 503, "out of memory", -1, -1);
          return;
        }
        return;
      }
      conn_dispatch(c, end);
      continue;
    }
    if (avail > c->head.head_len && body_charge(c, avail - c->head.head_len) != 0) return;
    kl_http_error err;
    int rc = kl_chunked_decode(&c->chunked, base, avail, &c->raw_pos, &c->body_pos, body_max,
                               cfg->header_bytes_max, &err);
    if (rc < 0) {
      respond_error_close(c, err.status, err.msg, (long)err.offset, err.framing);
      return;
    }
    if (rc == 0) {
      /* Decoded bytes are compacted, so the raw tail is all that needs room. */
      return;
    }
    conn_dispatch(c, c->raw_pos);
  }
}

/* ---- events ------------------------------------------------------------- */

/* Slides the current request to the front: every offset is relative to in_start. */
static void conn_compact(kl_conn *c) {
  if (c->in_start == 0) return;
  memmove(c->in.data, c->in.data + c->in_start, c->in.len - c->in_start);
  c->in.len -= c->in_start;
  c->in_start = 0;
}

/* Reads from the socket or through TLS: bytes, 0 at EOF, or -1 with errno. A TLS read that
 * must wait arms the events it waits for (a handshake may need the socket writable). */
static ssize_t conn_recv(kl_conn *c, void *buf, size_t len) {
  if (!c->ssl) return recv(c->io.fd, buf, len, 0);
  uint32_t want = 0;
  char err[160];
  ssize_t n = kl_tls_ssl_read(c->ssl, buf, len, &want, err, sizeof(err));
  if (n >= 0) return n;
  if (n == -EAGAIN) /* output still queued keeps its EPOLLOUT (a streamed response) */
    conn_want(c, want | EPOLLRDHUP | (c->seg_first < c->nsegs ? EPOLLOUT : 0));
  else if (n == -EPROTO) /* failed handshakes (mTLS, plain HTTP, old clients), bad records */
    keel_log(c->w->srv, KEEL_LOG_INFO, "TLS error", "error", err, "client.address",
             kl_conn_peer(c), NULL);
  errno = (int)-n;
  return -1;
}

/* TLS only: decrypted bytes wait inside the SSL, where epoll cannot see them. */
static int conn_tls_pending(kl_conn *c) { return c->ssl && kl_tls_ssl_pending(c->ssl); }

static void conn_read(kl_conn *c) {
  const keel_config *cfg = &c->w->srv->cfg;
  for (int i = 0; (i < KL_READS_PER_EVENT || conn_tls_pending(c)) && !c->closed; i++) {
    if (c->in_start > 0 && (c->in.cap - c->in.len < 1024 || c->in_start == c->in.len))
      conn_compact(c);
    if (c->in.cap - c->in.len < 1024) {
      size_t grow = c->in.cap ? c->in.cap : KL_CONN_INBUF;
      if (kl_buf_reserve(&c->in, grow) != 0 && kl_buf_reserve(&c->in, 1) != 0) {
        /* Cannot happen within the limits (413/431 come first): only on ENOMEM. */
        conn_close(c);
        return;
      }
    }
    ssize_t n = conn_recv(c, c->in.data + c->in.len, c->in.cap - c->in.len);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) conn_close(c);
      break;
    }
    if (n == 0) {
      /* Peer closed its side: answer nothing more; a half-sent request is dropped. */
      if (c->seg_first < c->nsegs) {
        c->closing = 1;
        conn_flush(c);
      } else {
        conn_close(c);
      }
      return;
    }
    c->in.len += (size_t)n;
    if (c->state == KL_CONN_BODY) conn_deadline(c, cfg->body_timeout_ms);
    conn_process(c);
    if (c->closed || c->closing || !c->reading) break;
    if ((size_t)n < 1024 && !conn_tls_pending(c)) break; /* probably drained; epoll will tell */
  }
  if (!c->closed) conn_flush(c);
}

static void conn_linger_read(kl_conn *c) {
  char buf[4096];
  for (;;) {
    ssize_t n = recv(c->io.fd, buf, sizeof(buf), 0);
    if (n > 0) {
      c->lingered += (size_t)n;
      if (c->lingered > KL_LINGER_MAX) break;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    break;
  }
  conn_close(c);
}

static void conn_event(kl_loop *loop, kl_io *io, uint32_t events) {
  (void)loop;
  kl_conn *c = CONN_OF(io, io);
  if (c->closed) return;
  if (c->state == KL_CONN_LINGER) {
    conn_linger_read(c);
    return;
  }
  if (events & (EPOLLERR | EPOLLHUP)) {
    conn_close(c);
    return;
  }
  if (c->ssl && !c->reading && (events & EPOLLIN)) events |= EPOLLOUT; /* a TLS write waited */
  if (events & EPOLLOUT) {
    if (conn_flush(c) || c->closed) return;
    if (c->state == KL_CONN_STREAM && c->stream_drain && c->sops) {
      c->stream_drain = 0;
      c->busy++;
      c->sops->drained(c->sarg);
      c->busy--;
      if (c->closed) return;
      if (c->state != KL_CONN_STREAM) conn_continue(c);
      return;
    }
    if (c->reading) {
      conn_process(c); /* pipelined requests waiting behind the backlog */
      if (!c->closed) conn_flush(c);
      /* TLS: a read that waited for EPOLLOUT, or bytes decrypted before the backlog. */
      if (c->ssl && !c->closed && !c->closing && c->reading) {
        conn_read(c);
        return;
      }
    }
  }
  if ((events & (EPOLLIN | EPOLLRDHUP)) && c->reading) {
    conn_read(c);
  } else if ((events & (EPOLLIN | EPOLLRDHUP)) && !c->closed && !c->ssl) {
    /* Input while we do not read (a deferred or streamed answer is pending): stop watching
     * it, or level-triggered epoll would report it again and again. Reading resumes after. */
    conn_want(c, c->io.events & ~(uint32_t)(EPOLLIN | EPOLLRDHUP));
  }
}

static void conn_timer_cb(kl_timer *t) {
  kl_conn *c = CONN_OF(t, timer);
  if (c->closed) return;
  if (c->w->loop.now < c->deadline) { /* the deadline moved later since the timer was armed */
    kl_timer_set(&c->w->loop.timers, &c->timer, c->deadline);
    return;
  }
  if (c->state == KL_CONN_LINGER || c->seg_first < c->nsegs) {
    conn_close(c); /* linger over, or the peer stopped reading our response */
  } else if (c->state == KL_CONN_STREAM) {
    if (c->stream_done) return; /* the handler's own timers run */
    kl_deferred d = {c, c->wait_id};
    if (c->stream_head) {
      kl_stream_abort(&d);
    } else {
      const kl_stream_ops *o = c->sops;
      c->sops = NULL;
      if (o) o->cancel(c->sarg);
      respond_error_close(c, 408, "timed out reading the request body", -1, 0);
    }
  } else if (c->state == KL_CONN_WAIT) {
    /* The deferred answer is late: say so; the waiter finds the request gone. */
    kl_deferred d = {c, c->wait_id};
    if (c->wait_cancel) c->wait_cancel(c->wait_arg, c->wait_id);
    keel_req *req = kl_deferred_req(&d);
    keel_resp_header(req, "Retry-After", "1");
    keel_respond_error(req, 503, "timed out waiting for the answer");
    kl_deferred_finish(&d);
  } else if (c->state == KL_CONN_BODY || c->in.len > c->in_start) {
    respond_error_close(c, 408, c->state == KL_CONN_BODY ? "timed out reading the request body"
                                                         : "timed out reading the request head",
                        -1, 0);
  } else {
    conn_close(c); /* idle keep-alive, or a connection that never sent a byte */
  }
}

/* ---- accept ------------------------------------------------------------- */

static void refuse(kl_worker *w, int fd, int tls) {
  static const char body[] = "{\"error\":\"too many connections\",\"retry\":true}";
  char msg[320], sink[4096];
  int n = snprintf(msg, sizeof(msg),
                   "HTTP/1.1 503 Service Unavailable\r\nDate: %s\r\nRetry-After: 1\r\n"
                   "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n\r\n%s",
                   w->loop.date, sizeof(body) - 1, body);
  kl_stats_add(w, w->srv->stats.conn_rejected, 1);
  if (tls) { /* no plaintext answer to a TLS client */
    close(fd);
    return;
  }
  ssize_t ignored = read(fd, sink, sizeof(sink)); /* fewer RSTs: take what already arrived */
  (void)ignored;
  ignored = write(fd, msg, (size_t)n);
  (void)ignored;
  shutdown(fd, SHUT_WR);
  close(fd);
}

static kl_conn *conn_new(kl_worker *w, unsigned listener) {
  kl_conn *c = w->free;
  if (c) {
    list_remove(&w->free, c);
    w->nfree--;
  } else {
    c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    kl_buf_init(&c->in, 0);
    kl_buf_init(&c->out, 0);
  }
  const keel_config *cfg = &w->srv->cfg;
  kl_buf in = c->in, out = c->out;
  memset(c, 0, offsetof(kl_conn, segs));
  c->in = in;
  c->out = out;
  c->in.len = c->out.len = 0;
  /* The largest request: a full head plus a full body plus one chunk line of slack. */
  uint64_t body_max = w->srv->listeners[listener].body_max;
  c->listener = (uint8_t)listener;
  c->in.max = (size_t)cfg->header_bytes_max + (size_t)body_max + 64 * 1024;
  c->out.max = (size_t)cfg->body_max + 1024 * 1024;
  c->nsegs = c->seg_first = 0;
  c->w = w;
  c->timer.cb = conn_timer_cb;
  c->io.cb = conn_event;
  c->reading = 1;
  return c;
}

void kl_conn_accept(kl_loop *loop, kl_io *io, uint32_t events) {
  (void)events;
  kl_worker *w = (kl_worker *)(void *)((char *)loop - offsetof(kl_worker, loop));
  unsigned k = (unsigned)(io - w->listen_io); /* io is w->listen_io[k] */
  for (int i = 0; (i < KL_ACCEPTS_PER_EVENT || w->draining) && io->fd >= 0; i++) {
    struct sockaddr_storage peer;
    socklen_t plen = sizeof(peer);
    int fd = accept4(io->fd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        /* Out of descriptors: stop accepting for a moment instead of spinning. */
        kl_io_modify(loop, io, 0);
        kl_timer_set(&loop->timers, &w->accept_timer, loop->now + 100);
        keel_log(w->srv, KEEL_LOG_WARN, "accept paused", "error", strerror(errno), NULL);
      }
      return;
    }
    if (w->nconns >= w->max_conns) {
      refuse(w, fd, k == 0 && w->srv->tls);
      continue;
    }
    kl_conn *c = conn_new(w, k);
    if (!c) {
      refuse(w, fd, k == 0 && w->srv->tls);
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->io.fd = fd;
    memcpy(&c->peer, &peer, sizeof(peer));
    c->peer_text[0] = '\0';
    c->ssl = NULL;
    if (k == 0 && w->srv->tls && !(c->ssl = kl_tls_accept(w->srv->tls, fd))) {
      close(fd); /* out of memory */
      list_push(&w->free, c);
      w->nfree++;
      continue;
    }
    if (kl_io_start(loop, &c->io, EPOLLIN | EPOLLRDHUP) < 0) {
      kl_tls_ssl_free(c->ssl);
      c->ssl = NULL;
      close(fd);
      list_push(&w->free, c);
      w->nfree++;
      continue;
    }
    list_push(&w->open, c);
    w->nconns++;
    kl_stats_add(w, w->srv->stats.conn_accepted, 1);
    kl_stats_add(w, w->srv->stats.conn_active, 1);
    conn_deadline(c, w->srv->cfg.header_timeout_ms);
  }
}

void kl_conn_drain_all(kl_worker *w) {
  w->draining = 1;
  for (kl_conn *c = w->open, *next; c; c = next) {
    next = c->next;
    if (c->state != KL_CONN_HEAD || c->in.len != c->in_start || c->seg_first != c->nsegs)
      continue; /* in flight: it finishes, and its response says Connection: close */
    /* A request may already wait in the kernel (a client that just reused the connection,
     * or one queued before the listener closed): read before deciding it is idle. */
    if (c->reading) conn_read(c);
    if (c->closed || c->state != KL_CONN_HEAD || c->in.len != c->in_start ||
        c->seg_first != c->nsegs)
      continue;
    if (c->gen == 0) {
      /* Accepted but silent: its request may be on the way. A short grace, then closed. */
      uint32_t grace = w->srv->cfg.header_timeout_ms < 1000 ? w->srv->cfg.header_timeout_ms : 1000;
      conn_deadline(c, grace);
    } else {
      conn_close(c); /* like any server: a request crossing this close is retried by clients */
    }
  }
  if (w->nconns == 0) w->loop.stop = 1;
}

void kl_conn_close_all(kl_worker *w) {
  while (w->open) conn_close(w->open);
  w->loop.stop = 1;
}
