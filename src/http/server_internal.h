/* server_internal.h - structures shared by server.c (workers, routes, drain) and conn.c (HTTP/1.1). */
#ifndef KEEL_HTTP_SERVER_INTERNAL_H
#define KEEL_HTTP_SERVER_INTERNAL_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>

#include "core/buf.h"
#include "core/loop.h"
#include "http/parser.h"
#include "http/reqtrace.h"
#include "http/stats.h"
#include "keel/keel.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "obs/trace.h"

typedef struct kl_worker kl_worker;
typedef struct kl_conn kl_conn;

/** Most listeners per server: the main one plus what modules add (the OTLP/HTTP receiver). */
#define KL_LISTENERS_MAX 4

/** A listening address; every worker opens its own socket on it (SO_REUSEPORT). */
typedef struct kl_listener {
  char name[32];                 /* for logs: "http", "otlp_http" */
  struct sockaddr_storage addr;
  socklen_t addrlen;
  _Atomic int port;              /* the bound port (chosen by the kernel for port 0) */
  uint64_t body_max;             /* request body cap on this listener (413 beyond) */
  uint64_t body_budget;          /* bodies buffered at once, all connections; 0 = no cap */
  _Atomic uint64_t body_used;    /* charged against body_budget (429 beyond) */
} kl_listener;

/** Route flags. */
enum {
  KL_ROUTE_UNTRACED = 1, /* no SERVER span (receivers: keel's own spans may come back) */
  KL_ROUTE_STREAM = 2,   /* dispatched once the head is in; the body streams (kl_req_stream) */
};

/** A route: exact method and path, on one listener (gateway routes: any method, their name). */
typedef struct kl_route {
  char *method;
  size_t method_len;
  char *path;
  size_t path_len;
  keel_handler handler;
  void *userdata;
  uint32_t slot; /* metrics slot of (method, path); GET routes: +1 for HEAD */
  uint8_t listener;
  uint8_t flags;  /* KL_ROUTE_* */
  const struct kl_gw_route *gw; /* a gateway route (its slots depend on the method) */
  uint64_t body_max; /* KL_ROUTE_STREAM: request body cap; 0 = none */
} kl_route;

/** Output segments queued for one writev (offsets into the connection's out buffer). */
#define KL_SEGS_MAX 128

/** Connection states (see conn_set_state in conn.c). */
enum { KL_CONN_HEAD, KL_CONN_BODY, KL_CONN_WAIT, KL_CONN_STREAM, KL_CONN_LINGER };

struct keel_req {
  kl_conn *conn;
  const char *base; /* the request's first byte in the connection's input buffer */
  const char *body;
  size_t body_len;
  uint8_t responded;
  int status;
  size_t resp_body_len;
  size_t begin_off; /* keel_respond_begin: where the body is being written */
  uint8_t begun;
  uint8_t deferred; /* kl_req_defer: the answer comes later (KL_CONN_WAIT) */
  kl_reqtrace trace;
};

struct kl_conn {
  kl_io io;
  kl_timer timer;
  kl_worker *w;
  kl_conn *prev, *next; /* worker's open list, or free/closed lists */
  uint64_t wait_id;     /* KL_CONN_WAIT: the deferral's id (kl_deferred) */
  const kl_route *wait_route;
  void (*wait_cancel)(void *arg, uint64_t id); /* told when the wait ends without the waiter */
  void *wait_arg;
  uint32_t wait_slot;
  size_t wait_end;      /* the deferred request's end in `in`, relative to in_start */
  uint64_t body_charge; /* bytes of its listener's body_budget the current request holds */
  const kl_route *route; /* chosen when the head arrived (gateway on), else at dispatch */
  struct kl_gw *gw_ref;  /* the gateway whose route the current request holds (kl_gw_ref) */
  const struct kl_stream_ops *sops; /* KL_CONN_STREAM: the handler's side */
  void *sarg;
  uint64_t stream_left;  /* Content-Length body bytes not yet handed to sops->body */
  uint8_t stream_done;   /* the whole request body was handed over */
  uint8_t stream_head;   /* the response head is queued */
  uint8_t stream_chunked; /* the response body goes out chunked */
  uint8_t stream_drain;  /* tell sops->drained when the output is flushed */
  uint8_t stream_paused; /* the handler took fewer body bytes than offered */
  uint8_t busy;          /* in a handler callback: finishing must not recurse into parsing */
  uint8_t stream_pre;    /* the body was read whole before the stream began (stream_left) */
  uint8_t state;
  uint8_t closing;      /* close once the output is flushed */
  uint8_t closed;       /* fd closed; waiting for the worker to recycle the struct */
  uint8_t reading;      /* EPOLLIN wanted (cleared while output backs up) */
  uint8_t sent_continue;
  uint8_t in_request;   /* the current request's first byte has arrived */
  uint8_t listener;     /* index into srv->listeners */
  uint32_t gen;         /* requests started on this connection */
  uint64_t deadline;    /* ms; the timer may be armed earlier, see conn_timer_cb */
  uint64_t req_start;   /* us when the current request's first byte arrived */
  kl_buf in;
  size_t in_start;      /* current request's first byte in `in` */
  size_t scanned;       /* parser resume hint, relative to in_start */
  size_t raw_pos, body_pos; /* chunked: raw read position / decoded end, relative */
  kl_http_head head;
  kl_chunked chunked;
  kl_buf out;
  struct {
    uint32_t off, len;
  } segs[KL_SEGS_MAX];
  uint32_t nsegs, seg_first;
  size_t lingered;
  struct sockaddr_storage peer;
  char peer_text[INET6_ADDRSTRLEN]; /* formatted on first use; "" until then */
  uint16_t peer_port;
  keel_req req;
  struct ssl_st *ssl;   /* TLS on this connection (http/tls.h); NULL: plain */
};

/** Commands from the main thread to a worker (kl_worker.cmd). */
enum { KL_CMD_NONE = 0, KL_CMD_DRAIN = 1, KL_CMD_FORCE = 2 };

struct kl_worker {
  keel_server *srv;
  unsigned id;
  pthread_t thread;
  kl_loop loop;
  kl_io listen_io[KL_LISTENERS_MAX]; /* one per srv->listeners; fd -1 once closed */
  kl_io ctl_io;    /* eventfd: a command is waiting in `cmd` */
  _Atomic int cmd;
  int draining;
  kl_conn *open;   /* open connections, newest first */
  kl_conn *free;   /* recycled structs with their small buffers */
  kl_conn *closed; /* closed during this batch; recycled before sleeping */
  uint32_t nconns, max_conns, nfree;
  kl_timer accept_timer; /* resumes accepting after EMFILE */
  kl_timer close_timer;  /* closes the listener at drain, after the quiesce */
  kl_logq *logq;
  kl_arena arena;    /* request-scoped memory, reset after every response */
  kl_buf hdrbuf;     /* extra response headers of the current request */
  kl_header *hdrs;   /* parsed header fields of the current request */
  kl_conn *hdrs_conn;
  uint32_t hdrs_gen;
  uint64_t rng;
  kl_http_limits limits;
  kl_mblock *mb; /* this worker's metric cells; NULL with metrics off */
  kl_traceq *traceq; /* this worker's span ring (tracing on) */
  kl_trace_rng ids;  /* trace and span ids */
  kl_span span;      /* the SERVER span of the request being handled */
  uint64_t wait_seq; /* last deferral id given out */
  void *otlp;        /* the OTLP/HTTP receiver's per-worker state (otlp_http.c) */
  _Atomic int gw_retire; /* a gateway was replaced: release it when done (kl_gw_release) */
  pthread_mutex_t post_lock; /* kl_worker_post: calls other threads ask this worker to make */
  struct kl_post *posted, **posted_tail;
};

struct keel_server {
  keel_config cfg;
  struct kl_gw *gw;       /* gateway routes and upstreams (keel_server_gateway); NULL = none */
  struct kl_gw_handler *handlers; /* built-in handlers routes may name (keel_handler_register) */
  size_t nhandlers;
  struct kl_gw_health *health; /* the gateway's active health checks; NULL when none */
  char *config_path;      /* the file the gateway came from: reloads read it again */
  pthread_mutex_t reload_lock;
  struct kl_gw *retired;  /* replaced gateways still used by some worker (reload_lock) */
  uint32_t reloaded_slot; /* metrics slots of routes added by a reload ("_reloaded") */
  _Atomic uint64_t reloads_ok, reloads_failed;
  void **gw_metrics;      /* the gateway's scrape-time series arguments (gwstats.c) */
  size_t ngw_metrics;
  kl_log *log;
  kl_route *routes;
  size_t nroutes, cap_routes;
  kl_listener listeners[KL_LISTENERS_MAX]; /* [0]: cfg.listen */
  unsigned nlisteners;
  kl_worker *workers;
  unsigned nworkers;
  _Atomic int draining; /* /readyz answers 503 */
  int stopfd;           /* eventfd for keel_server_stop */
  int donefd;           /* eventfd counting workers that finished */
  kl_metrics *metrics;  /* keel's and the application's series */
  kl_stats stats;       /* cell indexes of keel's own series */
  kl_tracer *tracer;    /* OTLP span export; NULL with tracing off */
  struct kl_pipeline *pipeline; /* OTLP in, disk buffer, Kafka out; NULL when off */
  struct kl_grpc *grpc;         /* the OTLP/gRPC receiver thread; NULL when off */
  struct kl_tls_server *tls;    /* TLS of listener 0 (tls.cert); NULL: plain HTTP */
};

/** The current gateway (replaced by kl_server_reload); NULL when none. Any thread. */
static inline struct kl_gw *kl_srv_gw(const keel_server *srv) {
  return __atomic_load_n(&srv->gw, __ATOMIC_ACQUIRE);
}

/**
 * Reloads the config file: checks all of it, then swaps in a new gateway (routes, upstreams,
 * policies, API keys) and TLS certificates; requests in flight finish on the old gateway.
 * 0, or -EINVAL with err (the old config keeps serving). Any thread; serialised.
 */
int kl_server_reload(keel_server *srv, char *err, size_t errlen);

/** Any thread: runs fn(arg) on worker `w`'s thread soon, in posting order. 0 or -ENOMEM. */
int kl_worker_post(kl_worker *w, void (*fn)(void *arg), void *arg);

/** Worker-side: takes a replaced gateway off the server's list (1: the caller frees it). */
int kl_server_gw_unlink(void *srv, struct kl_gw *gw);

/** Worker-side: the peer's address as text (formatted on first use). */
const char *kl_conn_peer(kl_conn *c);
/** Worker-side: a listener became readable. */
void kl_conn_accept(kl_loop *loop, kl_io *io, uint32_t events);
/** Worker-side: begin draining (close idle connections, mark the others). */
void kl_conn_drain_all(kl_worker *w);
/** Worker-side: close every connection now. */
void kl_conn_close_all(kl_worker *w);
/** Worker-side: return closed connection structs to the free list (safe point). */
void kl_conn_recycle(kl_worker *w);
/** Worker-side: free every pooled struct. */
void kl_conn_free_pool(kl_worker *w);
/** Finds the route on `listener`; sets *allow to a 405 Allow list when the path exists there. */
const kl_route *kl_route_find(const keel_server *srv, unsigned listener, const char *method,
                              size_t mlen, const char *path, size_t plen, char *allow,
                              size_t allowlen);

/**
 * Adds a listener on "HOST:PORT" (main thread, before keel_server_run) with its own body
 * cap; returns its index, or -EINVAL (bad address, message in err) / -ENOSPC.
 */
int kl_server_listen(keel_server *srv, const char *name, const char *addr, uint64_t body_max,
                     char *err, size_t errlen);

/** keel_route on a given listener, with KL_ROUTE_* flags. */
int kl_route_add(keel_server *srv, unsigned listener, const char *method, const char *path,
                 keel_handler handler, void *userdata, unsigned flags);

/** A deferred request: the handler answers later, from an event on the same worker. */
typedef struct kl_deferred {
  kl_conn *conn;
  uint64_t id;
} kl_deferred;

/**
 * Handler-side: the answer to `req` comes later. The connection stops reading; the request
 * stays in flight (drain waits for it) until kl_deferred_finish, or until timeout_ms passes,
 * when keel answers 503 + Retry-After itself. If the wait ends that way or the connection
 * closes, `cancel(arg, d->id)` is called first, so the waiter can forget `d` (its conn may be
 * freed after). Arena memory and header views of the request are not valid after the
 * handler returns: copy what the answer needs. Worker thread.
 */
void kl_req_defer(keel_req *req, kl_deferred *d, uint32_t timeout_ms,
                  void (*cancel)(void *arg, uint64_t id), void *arg);

/** The deferred request, ready for keel_resp_header/keel_respond; NULL if it is gone (timed
 *  out, connection closed). Worker thread. */
keel_req *kl_deferred_req(const kl_deferred *d);

/** After answering with keel_respond*: completes the request and resumes the connection. */
void kl_deferred_finish(const kl_deferred *d);

/** A streamed request's handler side (KL_ROUTE_STREAM routes). Calls come on the worker. */
typedef struct kl_stream_ops {
  /** Body bytes, de-chunked, as they arrive; returns how many it took. The rest stays
   *  buffered and reading pauses until kl_stream_resume. `end`: these are the last bytes. */
  size_t (*body)(void *arg, const char *p, size_t len, int end);
  /** The response output is flushed, after kl_stream_write returned 1. */
  void (*drained)(void *arg);
  /** The client is gone (closed, timed out): no further calls; forget the handle. */
  void (*cancel)(void *arg);
} kl_stream_ops;

/**
 * Handler-side, on a KL_ROUTE_STREAM route: the request body and the answer stream. `d`
 * becomes the request's handle. The handler may still answer in one piece later with
 * kl_deferred_req + keel_respond + kl_deferred_finish (then an unread body closes the
 * connection after the answer). Worker thread.
 */
void kl_req_stream(keel_req *req, kl_deferred *d, const kl_stream_ops *ops, void *arg);
/** The handler takes body bytes again (after it took fewer than offered). */
void kl_stream_resume(const kl_deferred *d);
/**
 * Queues the response head: status line, Date, then `headers` ("Name: value\r\n" lines,
 * already filtered), framing (Content-Length when `length` >= 0, else chunked, or nothing
 * for a response that has no body) and Connection. 0, or -1 if the request is gone.
 */
int kl_stream_head(const kl_deferred *d, int status, const char *headers, size_t hlen,
                   int64_t length, int bodiless);
/** Queues body bytes: 0, 1 when the output backlog is high (wait for ops->drained), -1 gone. */
int kl_stream_write(const kl_deferred *d, const char *p, size_t n);
/** A streamed request that is still going (its response may have begun), header views
 *  valid again; NULL when it is over. Worker thread. */
keel_req *kl_stream_req(const kl_deferred *d);

/** The response is complete: finishes the request; the connection goes on. */
void kl_stream_end(const kl_deferred *d);
/** The response cannot be completed: closes the client connection (no ops->cancel). */
void kl_stream_abort(const kl_deferred *d);

#endif
