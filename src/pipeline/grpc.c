/* grpc.c - the OTLP/gRPC receiver: h2c connections (nghttp2) on one thread, unary Export calls into the pipeline. */
#include "pipeline/grpc.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/loop.h"
#include "keel/keel.h"

/*
 * Threads: kl_grpc_start, kl_grpc_drain and kl_grpc_stop run on the caller's thread (main) and
 * talk to the receiver thread only through two atomics and the `ctl` eventfd. Everything else
 * below runs on the receiver thread, which owns the loop, the listener, every connection and
 * nghttp2 session, the queue of calls waiting for their acknowledgement and the scratch memory.
 *
 * A call: HEADERS (validated when the header block ends) -> DATA (the 5-byte gRPC prefix, then
 * one message, buffered up to otlp.max_request) -> END_STREAM -> ingest. If the acknowledged
 * position has not reached the call's records, the call waits in `q` (FIFO: positions and
 * deadlines both grow in order) and is answered when the pipeline writes `efd`. Queue entries
 * name their stream by (connection slot, connection generation, stream id), never by pointer:
 * a call whose connection or stream went away meanwhile is simply not found and dropped.
 *
 * Memory: a stream's state is charged to `mem_used`, and so is every message byte buffered;
 * beyond `mem_cap` new calls get RESOURCE_EXHAUSTED rather than growing the process.
 */

#define CONN_MAX 1024         /* open connections; more are accepted and closed at once */
#define STREAMS_MAX 100       /* concurrent calls per connection (SETTINGS) */
#define PENDING_MAX 4096      /* calls waiting for their acknowledgement, all connections */
#define ACCEPTS_PER_WAKEUP 64 /* so a connection storm cannot starve the established ones */
#define READS_PER_WAKEUP 16   /* per connection and wakeup: 16 x 16 KiB */
#define READ_CHUNK 16384
/* Flow-control windows: per stream, a 1 MiB message needs no WINDOW_UPDATE round trip. */
#define WINDOW_STREAM (1u << 20)
#define WINDOW_CONN (16u << 20)
#define HEADER_LIST_MAX 16384 /* bytes of a call's header block (as HPACK counts them) */
/* Buffered calls, all connections together (raised to hold at least one max_request). */
#define MEM_FLOOR ((size_t)64 << 20)
#define GOAWAY_GRACE_MS 1000 /* drain: between the shutdown notice and the final GOAWAY */
#define RESP_MAX 512         /* an Export*ServiceResponse with partial_success, prefixed */

/* gRPC status codes used here. */
enum {
  GRPC_OK = 0,
  GRPC_INVALID_ARGUMENT = 3,
  GRPC_RESOURCE_EXHAUSTED = 8,
  GRPC_UNIMPLEMENTED = 12,
  GRPC_INTERNAL = 13,
  GRPC_UNAVAILABLE = 14,
  GRPC_UNAUTHENTICATED = 16,
};

/* A stream's life. */
enum {
  ST_HEADERS, /* header block being received */
  ST_RECV,    /* a valid call: its message is arriving */
  ST_PENDING, /* ingested; waits in the queue for its acknowledgement */
  ST_DONE,    /* answered (or refused): only waits for nghttp2 to close it */
};

enum { ENC_IDENTITY, ENC_GZIP, ENC_OTHER };

typedef struct gconn gconn;

typedef struct gstream {
  struct gstream *prev, *next; /* the connection's streams */
  gconn *c;
  int32_t id;
  uint8_t state;
  int8_t sig;        /* -1: not one of the Export methods */
  uint8_t post;      /* :method POST */
  uint8_t ct_ok;     /* content-type application/grpc[+proto] */
  uint8_t authed;    /* an authorization / x-api-key entry held a valid key */
  uint8_t enc;       /* grpc-encoding */
  uint8_t rst_after; /* answered early: reset the stream once the answer is sent */
  uint8_t hdr_got;   /* bytes of the 5-byte message prefix received */
  uint8_t hdr[5];
  uint32_t mlen;  /* the message's length from the prefix */
  size_t hbytes;  /* header block bytes so far */
  kl_buf msg;     /* the message, capped at mlen */
  size_t charged; /* bytes of mem_used this stream holds besides its struct */
  size_t resp_len, resp_off;
  uint8_t resp[RESP_MAX];
} gstream;

struct gconn {
  kl_io io;
  kl_timer timer;
  kl_grpc *g;
  nghttp2_session *h2;
  gstream *streams;
  uint32_t slot, gen;
  uint32_t nstreams; /* gstreams allocated */
  uint32_t nrecv;    /* of which in ST_HEADERS or ST_RECV */
  uint64_t last_read, last_active, blocked_since;
  uint8_t used, dead, dirty, would_block, goaway, closing;
};

/* A call waiting for kl_pipeline_acked() to reach `wait`. */
typedef struct pend {
  uint32_t slot, gen;
  int32_t sid;
  uint64_t wait;
  uint64_t deadline; /* ms: otlp.ack_timeout after ingest */
} pend;

struct kl_grpc {
  keel_config cfg;
  keel_server *srv;
  kl_pipeline *p;
  pthread_t thread;
  int started, port;
  kl_loop loop;
  kl_io lis, efd, ctl;
  _Atomic int armed;     /* the pipeline writes efd only while set */
  _Atomic int drain_req; /* set by kl_grpc_drain / kl_grpc_stop, then ctl is written */
  _Atomic int stop_req;
  _Atomic uint32_t stop_ms;
  int watching, draining, stopping;
  kl_timer ack_timer, drain_timer, stop_timer;
  gconn *conns;
  uint32_t *free_slots, nfree, nconns;
  uint32_t *dirty, ndirty; /* connections to flush before sleeping */
  pend *q;
  uint32_t qhead, qn;
  size_t mem_used, mem_cap;
  size_t max_msg;
  kl_ingest_scratch scratch;
  kl_buf inflated;
  nghttp2_session_callbacks *cbs;
  nghttp2_option *opt;
};

static const char *const paths[KL_SIG_COUNT] = {
    "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
};

#define OWNER(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

static void conn_close(gconn *c);

/* ---- connections: bookkeeping -------------------------------------------------- */

static void mark_dirty(gconn *c) {
  if (c->dirty || !c->used) return;
  c->dirty = 1;
  c->g->dirty[c->g->ndirty++] = c->slot;
}

static void stream_free(gstream *s) {
  gconn *c = s->c;
  kl_grpc *g = c->g;
  if (s->state <= ST_RECV) c->nrecv--;
  if (s->prev)
    s->prev->next = s->next;
  else
    c->streams = s->next;
  if (s->next) s->next->prev = s->prev;
  c->nstreams--;
  kl_buf_free(&s->msg);
  g->mem_used -= s->charged + sizeof(*s);
  free(s);
}

/* Leaves ST_RECV/ST_HEADERS; the message buffer is no longer needed. */
static void stream_set_state(gstream *s, uint8_t st) {
  if (s->state <= ST_RECV && st > ST_RECV) {
    s->c->nrecv--;
    kl_buf_free(&s->msg);
    s->c->g->mem_used -= s->charged;
    s->charged = 0;
  }
  s->state = st;
}

static gstream *find_stream(kl_grpc *g, uint32_t slot, uint32_t gen, int32_t sid) {
  gconn *c = &g->conns[slot];
  if (!c->used || c->gen != gen || c->closing) return NULL;
  for (gstream *s = c->streams; s; s = s->next)
    if (s->id == sid) return s;
  return NULL;
}

/* ---- answers ------------------------------------------------------------------------ */

/* grpc-message is percent-encoded: bytes outside printable ASCII, and '%' itself. */
static size_t pct_encode(const char *in, char *out, size_t cap) {
  static const char hex[] = "0123456789ABCDEF";
  size_t n = 0;
  for (; *in && n + 4 <= cap; in++) {
    unsigned char ch = (unsigned char)*in;
    if (ch >= 0x20 && ch <= 0x7e && ch != '%') {
      out[n++] = (char)ch;
    } else {
      out[n++] = '%';
      out[n++] = hex[ch >> 4];
      out[n++] = hex[ch & 15];
    }
  }
  out[n] = '\0';
  return n;
}

#define NV(name, value)                                                                            \
  {                                                                                                \
    (uint8_t *)(uintptr_t)(name), (uint8_t *)(uintptr_t)(value), sizeof(name) - 1, strlen(value),  \
        NGHTTP2_NV_FLAG_NONE                                                                       \
  }

/*
 * A trailers-only answer (one HEADERS frame with END_STREAM). If the client is still sending,
 * RST_STREAM(NO_ERROR) tells it to stop, the answer being complete (RFC 9113 8.1); it goes
 * once the HEADERS frame is out (cb_frame_send): a gRPC client that sees the reset first
 * reports the call as failed with INTERNAL instead of reading the status.
 */
static void respond_status(gconn *c, int32_t sid, gstream *s, const char *http, int code,
                           const char *msg) {
  char st[8], enc[400];
  snprintf(st, sizeof st, "%d", code);
  pct_encode(msg, enc, sizeof enc);
  nghttp2_nv nva[] = {NV(":status", http), NV("content-type", "application/grpc"),
                      NV("grpc-accept-encoding", "identity,gzip"), NV("grpc-status", st),
                      NV("grpc-message", enc)};
  if (s) {
    stream_set_state(s, ST_DONE);
    s->rst_after = 1;
  }
  if (nghttp2_submit_response(c->h2, sid, nva, sizeof nva / sizeof nva[0], NULL) != 0)
    nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, sid, NGHTTP2_INTERNAL_ERROR);
  mark_dirty(c);
}

/* The message, then trailers with grpc-status 0 (submitted as the data ends). */
static ssize_t resp_read(nghttp2_session *h2, int32_t sid, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud) {
  (void)ud;
  gstream *s = src->ptr;
  size_t n = s->resp_len - s->resp_off;
  if (n > length) n = length;
  memcpy(buf, s->resp + s->resp_off, n);
  s->resp_off += n;
  if (s->resp_off == s->resp_len) {
    *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    nghttp2_nv tr[] = {NV("grpc-status", "0")};
    if (nghttp2_submit_trailer(h2, sid, tr, 1) != 0) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  return (ssize_t)n;
}

static void respond_ok(gstream *s) {
  nghttp2_nv nva[] = {NV(":status", "200"), NV("content-type", "application/grpc"),
                      NV("grpc-accept-encoding", "identity,gzip")};
  nghttp2_data_provider dp = {.source.ptr = s, .read_callback = resp_read};
  stream_set_state(s, ST_DONE);
  s->resp_off = 0;
  if (nghttp2_submit_response(s->c->h2, s->id, nva, 3, &dp) != 0)
    nghttp2_submit_rst_stream(s->c->h2, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
  mark_dirty(s->c);
}

/* Encodes the prefixed Export*ServiceResponse into s->resp now, so the queue holds no text. */
static void prepare_ok(gstream *s, const kl_otlp_result *res) {
  size_t n = kl_otlp_response_pb((kl_signal)s->sig, res, s->resp + 5, sizeof s->resp - 5);
  if (n > sizeof s->resp - 5) {
    /* Cannot happen (the error text is capped); an empty response is still a valid one. */
    n = 0;
  }
  s->resp[0] = 0;
  s->resp[1] = (uint8_t)(n >> 24);
  s->resp[2] = (uint8_t)(n >> 16);
  s->resp[3] = (uint8_t)(n >> 8);
  s->resp[4] = (uint8_t)n;
  s->resp_len = n + 5;
}

static void respond_ingest_error(gstream *s, int rc, const kl_otlp_result *res) {
  char msg[256];
  gconn *c = s->c;
  switch (rc) {
  case KL_INGEST_BAD:
    snprintf(msg, sizeof msg, "%s (at byte %zu)",
             res && res->error[0] ? res->error : "malformed request", res ? res->error_offset : 0);
    respond_status(c, s->id, s, "200", GRPC_INVALID_ARGUMENT, msg);
    return;
  case KL_INGEST_BUSY:
    respond_status(c, s->id, s, "200", GRPC_RESOURCE_EXHAUSTED,
                   "too much telemetry in flight: retry later");
    return;
  case KL_INGEST_LARGE:
    respond_status(c, s->id, s, "200", GRPC_RESOURCE_EXHAUSTED,
                   "the request needs more memory than buffer.memory allows");
    return;
  case KL_INGEST_FULL:
    respond_status(c, s->id, s, "200", GRPC_UNAVAILABLE,
                   "the disk buffer is full (the sink is behind): retry later");
    return;
  case KL_INGEST_DOWN:
    respond_status(c, s->id, s, "200", GRPC_UNAVAILABLE, "shutting down");
    return;
  default:
    respond_status(c, s->id, s, "200", GRPC_UNAVAILABLE, "the disk buffer cannot be written");
    return;
  }
}

/* ---- the queue of calls waiting for their acknowledgement ---------------------------- */

static void ack_timer_arm(kl_grpc *g) {
  if (g->qn)
    kl_timer_set(&g->loop.timers, &g->ack_timer, g->q[g->qhead].deadline);
  else
    kl_timer_cancel(&g->loop.timers, &g->ack_timer);
}

/* Answers the queue's head while acknowledged (or timed out, or `fail`: shutting down). */
static void answer_ready(kl_grpc *g, int fail) {
  uint64_t acked = kl_pipeline_acked(g->p);
  uint64_t now = g->loop.now;
  while (g->qn) {
    pend *e = &g->q[g->qhead];
    gstream *s = find_stream(g, e->slot, e->gen, e->sid);
    if (s && s->state == ST_PENDING && e->wait > acked && e->deadline > now && !fail) break;
    g->qhead = (g->qhead + 1) % PENDING_MAX;
    g->qn--;
    if (!s || s->state != ST_PENDING) continue; /* the client went away meanwhile */
    if (e->wait <= acked) {
      respond_ok(s);
    } else if (fail) {
      respond_status(s->c, s->id, s, "200", GRPC_UNAVAILABLE, "shutting down");
    } else {
      kl_pipeline_count_refused(g->p, (kl_signal)s->sig, "timeout");
      respond_status(s->c, s->id, s, "200", GRPC_UNAVAILABLE,
                     "the records were not acknowledged within otlp.ack_timeout: retry later");
    }
  }
  atomic_store(&g->armed, g->qn > 0);
  /* A position published between the check and disarming would be missed: look again. */
  if (g->qn && g->q[g->qhead].wait <= kl_pipeline_acked(g->p)) {
    answer_ready(g, fail);
    return;
  }
  ack_timer_arm(g);
}

static void on_efd(kl_loop *loop, kl_io *io, uint32_t events) {
  (void)events;
  kl_grpc *g = OWNER(loop, kl_grpc, loop);
  uint64_t v;
  ssize_t r = read(io->fd, &v, sizeof v);
  (void)r;
  answer_ready(g, 0);
}

static void on_ack_timer(kl_timer *t) {
  kl_grpc *g = OWNER(t, kl_grpc, ack_timer);
  answer_ready(g, 0);
}

/* ---- a complete call: decode and ingest ----------------------------------------------- */

static void process_call(gstream *s) {
  gconn *c = s->c;
  kl_grpc *g = c->g;
  kl_signal sig = (kl_signal)s->sig;
  if (s->hdr_got == 0) {
    respond_status(c, s->id, s, "200", GRPC_INTERNAL, "the call carried no request message");
    return;
  }
  if (s->hdr_got < 5 || s->msg.len < s->mlen) {
    kl_pipeline_count_refused(g->p, sig, "bad_request");
    respond_status(c, s->id, s, "200", GRPC_INTERNAL, "the request message is truncated");
    return;
  }
  const uint8_t *body = s->msg.data ? (const uint8_t *)s->msg.data : s->hdr; /* empty message */
  size_t len = s->msg.len;
  if (s->hdr[0]) {
    /* gRPC: a compressed message in an encoding the server lacks is UNIMPLEMENTED; one
     * flagged compressed without any encoding is a protocol error (INTERNAL). */
    if (s->enc == ENC_OTHER) {
      kl_pipeline_count_refused(g->p, sig, "unsupported_media_type");
      respond_status(c, s->id, s, "200", GRPC_UNIMPLEMENTED,
                     "grpc-encoding not supported: use gzip or identity");
      return;
    }
    if (s->enc != ENC_GZIP) {
      kl_pipeline_count_refused(g->p, sig, "bad_request");
      respond_status(c, s->id, s, "200", GRPC_INTERNAL,
                     "the message is flagged compressed but grpc-encoding names none");
      return;
    }
    size_t cap = g->cfg.otlp_max_request;
    g->inflated.len = 0;
    if (kl_buf_reserve(&g->inflated, cap) != 0) {
      kl_pipeline_count_refused(g->p, sig, "memory");
      respond_ingest_error(s, KL_INGEST_BUSY, NULL);
      return;
    }
    long n = kl_gunzip(body, len, (uint8_t *)g->inflated.data, cap);
    if (n == -EMSGSIZE) {
      kl_pipeline_count_refused(g->p, sig, "too_large");
      respond_status(c, s->id, s, "200", GRPC_RESOURCE_EXHAUSTED,
                     "the message inflates beyond otlp.max_request");
      return;
    }
    if (n < 0) {
      kl_pipeline_count_refused(g->p, sig, "bad_request");
      respond_status(c, s->id, s, "200", GRPC_INTERNAL, "the message is not valid gzip");
      return;
    }
    body = (const uint8_t *)g->inflated.data;
    len = (size_t)n;
  }
  if (g->qn == PENDING_MAX) {
    kl_pipeline_count_refused(g->p, sig, "memory");
    respond_ingest_error(s, KL_INGEST_BUSY, NULL);
    return;
  }
  kl_otlp_result res;
  uint64_t wait = 0;
  int rc = kl_pipeline_ingest(g->p, sig, KL_FMT_PROTO, body, len, &g->scratch, &res, &wait);
  if (g->inflated.cap > (1u << 20)) kl_buf_free(&g->inflated);
  if (rc) {
    respond_ingest_error(s, rc, &res);
    return;
  }
  prepare_ok(s, &res);
  if (wait <= kl_pipeline_acked(g->p)) {
    respond_ok(s);
    return;
  }
  stream_set_state(s, ST_PENDING);
  pend *e = &g->q[(g->qhead + g->qn) % PENDING_MAX];
  e->slot = c->slot;
  e->gen = c->gen;
  e->sid = s->id;
  e->wait = wait;
  e->deadline = g->loop.now + g->cfg.otlp_ack_timeout_ms;
  if (g->qn++ == 0) ack_timer_arm(g);
  atomic_store(&g->armed, 1);
  if (wait <= kl_pipeline_acked(g->p)) {
    /* Durable already (between the check above and arming): the eventfd may never come. */
    uint64_t one = 1;
    ssize_t r = write(g->efd.fd, &one, sizeof one);
    (void)r;
  }
}

/* ---- nghttp2 callbacks (inside nghttp2_session_mem_recv / _send) ----------------------- */

static ssize_t cb_send(nghttp2_session *h2, const uint8_t *data, size_t len, int flags, void *ud) {
  (void)h2;
  (void)flags;
  gconn *c = ud;
  for (;;) {
    ssize_t n = send(c->io.fd, data, len, MSG_NOSIGNAL);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      c->would_block = 1;
      return NGHTTP2_ERR_WOULDBLOCK;
    }
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  }
}

static int cb_begin_headers(nghttp2_session *h2, const nghttp2_frame *f, void *ud) {
  gconn *c = ud;
  kl_grpc *g = c->g;
  if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  /* Without state the call is refused with RESOURCE_EXHAUSTED when its headers end. */
  if (g->mem_used + sizeof(gstream) > g->mem_cap || g->stopping) return 0;
  gstream *s = calloc(1, sizeof(*s));
  if (!s) return 0;
  s->c = c;
  s->id = f->hd.stream_id;
  s->sig = -1;
  s->state = ST_HEADERS;
  kl_buf_init(&s->msg, 0);
  s->next = c->streams;
  if (c->streams) c->streams->prev = s;
  c->streams = s;
  c->nstreams++;
  c->nrecv++;
  g->mem_used += sizeof(*s);
  nghttp2_session_set_stream_user_data(h2, s->id, s);
  return 0;
}

static int name_is(const uint8_t *n, size_t len, const char *lit) {
  return len == strlen(lit) && memcmp(n, lit, len) == 0;
}

/* application/grpc, application/grpc+proto, optionally with ;parameters. */
static int grpc_media(const uint8_t *v, size_t len) {
  static const char base[] = "application/grpc";
  size_t b = sizeof base - 1;
  if (len < b || strncasecmp((const char *)v, base, b) != 0) return 0;
  size_t rest = len - b;
  const char *r = (const char *)v + b;
  if (rest >= 6 && strncasecmp(r, "+proto", 6) == 0) {
    r += 6;
    rest -= 6;
  }
  return rest == 0 || *r == ';';
}

static int cb_header(nghttp2_session *h2, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud) {
  (void)flags;
  gconn *c = ud;
  if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  gstream *s = nghttp2_session_get_stream_user_data(h2, f->hd.stream_id);
  if (!s) return 0;
  s->hbytes += nlen + vlen + 32; /* as SETTINGS_MAX_HEADER_LIST_SIZE counts */
  if (s->hbytes > HEADER_LIST_MAX) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* RST */
  if (name_is(name, nlen, ":method")) {
    s->post = vlen == 4 && memcmp(value, "POST", 4) == 0;
  } else if (name_is(name, nlen, ":path")) {
    for (int i = 0; i < KL_SIG_COUNT; i++)
      if (name_is(value, vlen, paths[i])) s->sig = (int8_t)i;
  } else if (name_is(name, nlen, "content-type")) {
    s->ct_ok = (uint8_t)grpc_media(value, vlen);
  } else if (name_is(name, nlen, "authorization")) {
    s->authed |= (uint8_t)kl_pipeline_auth(c->g->p, (const char *)value, vlen, NULL, 0);
  } else if (name_is(name, nlen, "x-api-key")) {
    s->authed |= (uint8_t)kl_pipeline_auth(c->g->p, NULL, 0, (const char *)value, vlen);
  } else if (name_is(name, nlen, "grpc-encoding")) {
    s->enc = name_is(value, vlen, "identity") ? ENC_IDENTITY
             : name_is(value, vlen, "gzip")   ? ENC_GZIP
                                              : ENC_OTHER;
  }
  return 0;
}

/* The header block ended: is this a call we serve? */
static void headers_done(gconn *c, int32_t sid, gstream *s) {
  if (!s) {
    respond_status(c, sid, NULL, "200", c->g->stopping ? GRPC_UNAVAILABLE : GRPC_RESOURCE_EXHAUSTED,
                   c->g->stopping ? "shutting down" : "too many calls in flight: retry later");
    return;
  }
  if (!s->post || s->sig < 0) {
    respond_status(c, sid, s, "200", GRPC_UNIMPLEMENTED,
                   "unknown method: this server implements the OTLP Logs, Trace and Metrics "
                   "Export methods");
    return;
  }
  if (!s->authed && !kl_pipeline_auth(c->g->p, NULL, 0, NULL, 0)) {
    kl_pipeline_count_refused(c->g->p, (kl_signal)s->sig, "unauthorized");
    respond_status(c, sid, s, "200", GRPC_UNAUTHENTICATED,
                   "an API key is required: authorization: Bearer KEY (or x-api-key)");
    return;
  }
  if (!s->ct_ok) {
    /* gRPC asks for HTTP 415 here: the peer may not be a gRPC client at all. */
    kl_pipeline_count_refused(c->g->p, (kl_signal)s->sig, "unsupported_media_type");
    respond_status(c, sid, s, "415", GRPC_INTERNAL, "content-type must be application/grpc");
    return;
  }
  s->state = ST_RECV;
}

static int cb_frame_recv(nghttp2_session *h2, const nghttp2_frame *f, void *ud) {
  gconn *c = ud;
  if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) return 0;
  gstream *s = nghttp2_session_get_stream_user_data(h2, f->hd.stream_id);
  if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST)
    headers_done(c, f->hd.stream_id, s);
  if ((f->hd.flags & NGHTTP2_FLAG_END_STREAM) && s && s->state == ST_RECV) process_call(s);
  return 0;
}

static int cb_data_chunk(nghttp2_session *h2, uint8_t flags, int32_t sid, const uint8_t *data,
                         size_t len, void *ud) {
  (void)flags;
  gconn *c = ud;
  kl_grpc *g = c->g;
  gstream *s = nghttp2_session_get_stream_user_data(h2, sid);
  if (!s || s->state != ST_RECV) return 0; /* answered already: discard */
  while (len && s->hdr_got < 5) {
    s->hdr[s->hdr_got++] = *data++;
    len--;
    if (s->hdr_got < 5) continue;
    s->mlen = (uint32_t)s->hdr[1] << 24 | (uint32_t)s->hdr[2] << 16 | (uint32_t)s->hdr[3] << 8 |
              s->hdr[4];
    if (s->hdr[0] > 1) {
      kl_pipeline_count_refused(g->p, (kl_signal)s->sig, "bad_request");
      respond_status(c, sid, s, "200", GRPC_INTERNAL, "bad message prefix (compressed flag)");
      return 0;
    }
    if (s->mlen > g->max_msg) {
      char msg[160];
      snprintf(msg, sizeof msg, "the message (%u bytes) is larger than otlp.max_request (%zu)",
               s->mlen, g->max_msg);
      kl_pipeline_count_refused(g->p, (kl_signal)s->sig, "too_large");
      respond_status(c, sid, s, "200", GRPC_RESOURCE_EXHAUSTED, msg);
      return 0;
    }
    s->msg.max = s->mlen;
  }
  if (!len) return 0;
  if (s->msg.len + len > s->mlen) {
    kl_pipeline_count_refused(g->p, (kl_signal)s->sig, "bad_request");
    respond_status(c, sid, s, "200", GRPC_INTERNAL,
                   "more than one request message in a unary call");
    return 0;
  }
  size_t before = s->msg.cap;
  if (g->mem_used + len > g->mem_cap || kl_buf_append(&s->msg, data, len) != 0) {
    kl_pipeline_count_refused(g->p, (kl_signal)s->sig, "memory");
    respond_status(c, sid, s, "200", GRPC_RESOURCE_EXHAUSTED,
                   "too much telemetry in flight: retry later");
    return 0;
  }
  /* Charge what the buffer holds (its growth), so the cap bounds real memory. */
  g->mem_used += s->msg.cap - before;
  s->charged += s->msg.cap - before;
  return 0;
}

static int cb_frame_send(nghttp2_session *h2, const nghttp2_frame *f, void *ud) {
  (void)ud;
  if (f->hd.type != NGHTTP2_HEADERS || !(f->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;
  gstream *s = nghttp2_session_get_stream_user_data(h2, f->hd.stream_id);
  if (s && s->rst_after && !nghttp2_session_get_stream_remote_close(h2, f->hd.stream_id))
    nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_NO_ERROR);
  return 0;
}

static int cb_stream_close(nghttp2_session *h2, int32_t sid, uint32_t err, void *ud) {
  (void)err;
  gconn *c = ud;
  gstream *s = nghttp2_session_get_stream_user_data(h2, sid);
  if (s) {
    nghttp2_session_set_stream_user_data(h2, sid, NULL);
    stream_free(s);
  }
  c->last_active = c->g->loop.now;
  return 0;
}

/* ---- connections: I/O ----------------------------------------------------------------- */

static void conn_timer_arm(gconn *c) {
  kl_grpc *g = c->g;
  uint64_t d = 0; /* a zero timeout in the config means none */
  if (c->would_block) {
    if (g->cfg.write_timeout_ms) d = c->blocked_since + g->cfg.write_timeout_ms;
  } else if (c->nrecv) {
    if (g->cfg.body_timeout_ms) d = c->last_read + g->cfg.body_timeout_ms;
  } else if (!c->nstreams && g->cfg.idle_timeout_ms) {
    d = c->last_active + g->cfg.idle_timeout_ms;
  }
  if (d)
    kl_timer_set(&g->loop.timers, &c->timer, d);
  else
    kl_timer_cancel(&g->loop.timers, &c->timer);
}

/* Sends what nghttp2 has queued; closes the connection when it is done or broken. */
static void conn_flush(gconn *c) {
  kl_grpc *g = c->g;
  c->dirty = 0;
  if (!c->dead) {
    int was_blocked = c->would_block;
    c->would_block = 0;
    if (nghttp2_session_send(c->h2) != 0) c->dead = 1;
    if (c->would_block && !was_blocked) c->blocked_since = g->loop.now;
  }
  if (!c->dead && !nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2))
    c->dead = 1;
  if (c->dead) {
    conn_close(c);
    return;
  }
  /* A client that does not read its answers is not read from either (backpressure). */
  kl_io_modify(&g->loop, &c->io, c->would_block ? EPOLLOUT : EPOLLIN);
  conn_timer_arm(c);
}

static void conn_read(gconn *c) {
  uint8_t buf[READ_CHUNK];
  for (int i = 0; i < READS_PER_WAKEUP && !c->dead; i++) {
    ssize_t n = read(c->io.fd, buf, sizeof buf);
    if (n > 0) {
      c->last_read = c->last_active = c->g->loop.now;
      if (nghttp2_session_mem_recv(c->h2, buf, (size_t)n) < 0) c->dead = 1;
      if ((size_t)n < sizeof buf) break;
    } else if (n == 0) {
      c->dead = 1; /* the client closed: nothing more can be answered */
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      break;
    } else if (errno != EINTR) {
      c->dead = 1;
    }
  }
}

static void on_conn(kl_loop *loop, kl_io *io, uint32_t events) {
  (void)loop;
  gconn *c = OWNER(io, gconn, io);
  if (!c->used) return;
  if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) conn_read(c);
  mark_dirty(c); /* EPOLLOUT, or whatever the read queued: flushed before sleeping */
}

static void on_conn_timer(kl_timer *t) {
  gconn *c = OWNER(t, gconn, timer);
  if (!c->would_block && !c->nrecv && !c->nstreams) {
    /* Idle: a GOAWAY first, so the client knows to reconnect rather than fail a call. */
    nghttp2_session_terminate_session(c->h2, NGHTTP2_NO_ERROR);
  } else {
    for (gstream *s = c->streams; s; s = s->next)
      if (s->state == ST_RECV) kl_pipeline_count_refused(c->g->p, (kl_signal)s->sig, "timeout");
    c->dead = 1;
  }
  mark_dirty(c);
}

static void conn_close(gconn *c) {
  kl_grpc *g = c->g;
  kl_timer_cancel(&g->loop.timers, &c->timer);
  kl_io_stop(&g->loop, &c->io);
  close(c->io.fd);
  /* nghttp2 may call cb_stream_close while deleting the session; either way every stream
   * is freed exactly once (cb_stream_close unlinks it). */
  c->closing = 1;
  nghttp2_session_del(c->h2);
  c->h2 = NULL;
  while (c->streams)
    /* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): stream_free unlinks the head */
    stream_free(c->streams);
  c->used = 0;
  c->dirty = 0;
  c->gen++;
  g->free_slots[g->nfree++] = c->slot;
  g->nconns--;
}

static int conn_open(kl_grpc *g, int fd) {
  gconn *c = &g->conns[g->free_slots[g->nfree - 1]];
  if (nghttp2_session_server_new2(&c->h2, g->cbs, c, g->opt) != 0) return -ENOMEM;
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, STREAMS_MAX},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, WINDOW_STREAM},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, HEADER_LIST_MAX},
  };
  if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]) != 0 ||
      nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0, WINDOW_CONN) != 0) {
    nghttp2_session_del(c->h2);
    c->h2 = NULL;
    return -ENOMEM;
  }
  c->io.fd = fd;
  c->io.cb = on_conn;
  if (kl_io_start(&g->loop, &c->io, EPOLLIN) != 0) {
    nghttp2_session_del(c->h2);
    c->h2 = NULL;
    return -ENOMEM;
  }
  g->nfree--;
  g->nconns++;
  c->g = g;
  c->timer.cb = on_conn_timer;
  c->streams = NULL;
  c->nstreams = c->nrecv = 0;
  c->last_read = c->last_active = g->loop.now;
  c->used = 1;
  c->dead = c->dirty = c->would_block = c->goaway = c->closing = 0;
  if (g->draining) nghttp2_submit_shutdown_notice(c->h2);
  mark_dirty(c); /* the server SETTINGS */
  return 0;
}

static void on_listen(kl_loop *loop, kl_io *io, uint32_t events) {
  (void)events;
  kl_grpc *g = OWNER(loop, kl_grpc, loop);
  for (int i = 0; i < ACCEPTS_PER_WAKEUP; i++) {
    int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) break; /* EAGAIN; EMFILE and friends: the next wakeup retries */
    if (!g->nfree) {
      close(fd); /* at the cap: a quick failure beats a queue the client cannot see */
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (conn_open(g, fd) != 0) close(fd);
  }
}

/* ---- drain and stop ------------------------------------------------------------------ */

/* The final GOAWAY: streams up to the last one seen are served, later ones refused. */
static void final_goaway(kl_grpc *g) {
  kl_timer_cancel(&g->loop.timers, &g->drain_timer);
  for (uint32_t i = 0; i < CONN_MAX; i++) {
    gconn *c = &g->conns[i];
    if (!c->used || c->goaway) continue;
    c->goaway = 1;
    nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(c->h2),
                          NGHTTP2_NO_ERROR, NULL, 0);
    mark_dirty(c);
  }
}

static void on_drain_timer(kl_timer *t) {
  final_goaway(OWNER(t, kl_grpc, drain_timer));
}

static void start_drain(kl_grpc *g) {
  g->draining = 1;
  if (g->lis.fd >= 0) {
    kl_io_stop(&g->loop, &g->lis);
    close(g->lis.fd);
    g->lis.fd = -1;
  }
  /* A GOAWAY announcing no limit yet: clients stop opening streams here, and streams already
   * in flight toward us are still served; the real last stream id follows a grace period. */
  for (uint32_t i = 0; i < CONN_MAX; i++) {
    gconn *c = &g->conns[i];
    if (!c->used) continue;
    nghttp2_submit_shutdown_notice(c->h2);
    mark_dirty(c);
  }
  kl_timer_set(&g->loop.timers, &g->drain_timer, g->loop.now + GOAWAY_GRACE_MS);
}

/* The stop deadline: calls still unacknowledged get UNAVAILABLE, then everything closes. */
static void on_stop_timer(kl_timer *t) {
  kl_grpc *g = OWNER(t, kl_grpc, stop_timer);
  answer_ready(g, 1);
  for (uint32_t i = 0; i < CONN_MAX; i++) {
    gconn *c = &g->conns[i];
    if (!c->used) continue;
    /* One last try to send the answers just queued; a client that is not reading loses them. */
    if (!c->dead) nghttp2_session_send(c->h2);
    conn_close(c);
  }
  g->ndirty = 0;
  g->loop.stop = 1;
}

static void on_ctl(kl_loop *loop, kl_io *io, uint32_t events) {
  (void)events;
  kl_grpc *g = OWNER(loop, kl_grpc, loop);
  uint64_t v;
  ssize_t r = read(io->fd, &v, sizeof v);
  (void)r;
  if (atomic_load(&g->drain_req) && !g->draining) start_drain(g);
  if (atomic_load(&g->stop_req) && !g->stopping) {
    g->stopping = 1;
    final_goaway(g);
    kl_timer_set(&g->loop.timers, &g->stop_timer, g->loop.now + atomic_load(&g->stop_ms));
  }
}

static void before_sleep(kl_loop *loop) {
  kl_grpc *g = OWNER(loop, kl_grpc, loop);
  /* Flushing can close a connection, never dirty another one: the list only shrinks here. */
  for (uint32_t i = 0; i < g->ndirty; i++) {
    gconn *c = &g->conns[g->dirty[i]];
    if (c->used && c->dirty) conn_flush(c);
  }
  g->ndirty = 0;
  if (g->stopping && g->nconns == 0) loop->stop = 1;
}

static void *grpc_main(void *arg) {
  kl_grpc *g = arg;
  kl_loop_update_clock(&g->loop);
  kl_loop_run(&g->loop);
  return NULL;
}

/* ---- start / stop (main thread) -------------------------------------------------------- */

static void grpc_free(kl_grpc *g) {
  if (g->conns)
    for (uint32_t i = 0; i < CONN_MAX; i++)
      if (g->conns[i].used) conn_close(&g->conns[i]);
  if (g->watching) kl_pipeline_unwatch(g->p, g->efd.fd);
  if (g->lis.fd >= 0) close(g->lis.fd);
  if (g->efd.fd >= 0) close(g->efd.fd);
  if (g->ctl.fd >= 0) close(g->ctl.fd);
  kl_loop_free(&g->loop);
  if (g->cbs) nghttp2_session_callbacks_del(g->cbs);
  if (g->opt) nghttp2_option_del(g->opt);
  kl_ingest_scratch_free(&g->scratch);
  kl_buf_free(&g->inflated);
  free(g->conns);
  free(g->free_slots);
  free(g->dirty);
  free(g->q);
  free(g);
}

int kl_grpc_listen(const char *text, char *err, size_t errlen) {
  char host[128];
  const char *colon = strrchr(text, ':'), *t = text;
  if (!colon) {
    snprintf(err, errlen, "otlp.grpc_listen: '%s' is not HOST:PORT", text);
    return -EINVAL;
  }
  size_t hl = (size_t)(colon - t);
  if (hl >= 2 && t[0] == '[' && t[hl - 1] == ']') {
    t++;
    hl -= 2;
  }
  if (hl >= sizeof host) hl = sizeof host - 1;
  memcpy(host, t, hl);
  host[hl] = '\0';
  struct addrinfo hints = {.ai_family = AF_UNSPEC,
                           .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_PASSIVE},
                  *res = NULL;
  int rc = getaddrinfo(hl ? host : NULL, colon + 1, &hints, &res);
  if (rc != 0 || !res) {
    snprintf(err, errlen, "otlp.grpc_listen: cannot resolve '%s': %s", text, gai_strerror(rc));
    return -EINVAL;
  }
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
    int e = errno;
    snprintf(err, errlen, "otlp.grpc_listen: cannot listen on %s: %s", text, strerror(e));
    if (fd >= 0) close(fd);
    freeaddrinfo(res);
    return -e;
  }
  freeaddrinfo(res);
  return fd;
}

/* The bound address of `fd` as "HOST:PORT" ("[v6]:PORT") and its port (0 if unknown). */
static int bound_addr(int fd, char *addr, size_t addrlen) {
  struct sockaddr_storage a = {0};
  socklen_t alen = sizeof a;
  char h[64] = "?", p[16] = "0";
  if (getsockname(fd, (struct sockaddr *)&a, &alen) == 0)
    getnameinfo((struct sockaddr *)&a, alen, h, sizeof h, p, sizeof p,
                NI_NUMERICHOST | NI_NUMERICSERV);
  snprintf(addr, addrlen, a.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", h, p);
  return (int)strtol(p, NULL, 10);
}

kl_grpc *kl_grpc_start(const keel_config *cfg, keel_server *srv, kl_pipeline *p, int lfd,
                       char *err, size_t errlen) {
  kl_grpc *g = calloc(1, sizeof(*g));
  if (!g) {
    snprintf(err, errlen, "out of memory");
    close(lfd);
    return NULL;
  }
  g->cfg = *cfg;
  g->srv = srv;
  g->p = p;
  g->lis.fd = g->efd.fd = g->ctl.fd = -1;
  g->loop.epfd = -1;
  g->max_msg = cfg->otlp_max_request;
  g->mem_cap = cfg->otlp_max_request + 4096 > MEM_FLOOR ? cfg->otlp_max_request + 4096 : MEM_FLOOR;
  kl_ingest_scratch_init(&g->scratch, cfg->otlp_max_request);
  kl_buf_init(&g->inflated, cfg->otlp_max_request);
  char addr[96];
  g->lis.fd = lfd;
  g->port = bound_addr(lfd, addr, sizeof addr);
  g->lis.cb = on_listen;
  g->conns = calloc(CONN_MAX, sizeof(*g->conns));
  g->free_slots = calloc(CONN_MAX, sizeof(*g->free_slots));
  g->dirty = calloc(CONN_MAX, sizeof(*g->dirty));
  g->q = calloc(PENDING_MAX, sizeof(*g->q));
  g->efd.fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  g->ctl.fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  g->efd.cb = on_efd;
  g->ctl.cb = on_ctl;
  if (!g->conns || !g->free_slots || !g->dirty || !g->q || g->efd.fd < 0 || g->ctl.fd < 0 ||
      nghttp2_session_callbacks_new(&g->cbs) != 0 || nghttp2_option_new(&g->opt) != 0 ||
      kl_loop_init(&g->loop, CONN_MAX + 8) != 0) {
    snprintf(err, errlen, "otlp_grpc: out of memory or file descriptors");
    goto fail;
  }
  for (uint32_t i = 0; i < CONN_MAX; i++) {
    g->conns[i].slot = i;
    g->conns[i].io.fd = -1;
    g->free_slots[i] = CONN_MAX - 1 - i;
  }
  g->nfree = CONN_MAX;
  g->ack_timer.cb = on_ack_timer;
  g->drain_timer.cb = on_drain_timer;
  g->stop_timer.cb = on_stop_timer;
  g->loop.before_sleep = before_sleep;
  nghttp2_session_callbacks_set_send_callback(g->cbs, cb_send);
  nghttp2_session_callbacks_set_on_begin_headers_callback(g->cbs, cb_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(g->cbs, cb_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(g->cbs, cb_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(g->cbs, cb_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(g->cbs, cb_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(g->cbs, cb_frame_send);
  if (kl_io_start(&g->loop, &g->lis, EPOLLIN) != 0 || kl_io_start(&g->loop, &g->efd, EPOLLIN) ||
      kl_io_start(&g->loop, &g->ctl, EPOLLIN) != 0) {
    snprintf(err, errlen, "otlp_grpc: cannot watch its sockets");
    goto fail;
  }
  if (kl_pipeline_watch(p, g->efd.fd, &g->armed) != 0) {
    snprintf(err, errlen, "otlp_grpc: too many pipeline watchers");
    goto fail;
  }
  g->watching = 1;
  if (pthread_create(&g->thread, NULL, grpc_main, g) != 0) {
    snprintf(err, errlen, "otlp_grpc: cannot start its thread");
    goto fail;
  }
  g->started = 1;
  keel_log(srv, KEEL_LOG_INFO, "otlp_grpc listening", "address", addr, NULL);
  return g;
fail:
  grpc_free(g);
  return NULL;
}

int kl_grpc_port(const kl_grpc *g) {
  return g->port;
}

void kl_grpc_drain(kl_grpc *g) {
  if (!g) return;
  atomic_store(&g->drain_req, 1);
  uint64_t one = 1;
  ssize_t r = write(g->ctl.fd, &one, sizeof one);
  (void)r;
}

void kl_grpc_stop(kl_grpc *g, uint32_t deadline_ms) {
  if (!g) return;
  atomic_store(&g->stop_ms, deadline_ms);
  atomic_store(&g->drain_req, 1);
  atomic_store(&g->stop_req, 1);
  uint64_t one = 1;
  ssize_t r = write(g->ctl.fd, &one, sizeof one);
  (void)r;
  if (g->started) pthread_join(g->thread, NULL);
  grpc_free(g);
}
