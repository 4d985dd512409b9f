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

/** A route: exact method and path. */
typedef struct kl_route {
  char *method;
  size_t method_len;
  char *path;
  size_t path_len;
  keel_handler handler;
  void *userdata;
  uint32_t slot; /* metrics slot of (method, path); GET routes: +1 for HEAD */
} kl_route;

/** Output segments queued for one writev (offsets into the connection's out buffer). */
#define KL_SEGS_MAX 128

/** Connection states (see conn_set_state in conn.c). */
enum { KL_CONN_HEAD, KL_CONN_BODY, KL_CONN_LINGER };

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
  kl_reqtrace trace;
};

struct kl_conn {
  kl_io io;
  kl_timer timer;
  kl_worker *w;
  kl_conn *prev, *next; /* worker's open list, or free/closed lists */
  uint8_t state;
  uint8_t closing;      /* close once the output is flushed */
  uint8_t closed;       /* fd closed; waiting for the worker to recycle the struct */
  uint8_t reading;      /* EPOLLIN wanted (cleared while output backs up) */
  uint8_t sent_continue;
  uint8_t in_request;   /* the current request's first byte has arrived */
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
};

/** Commands from the main thread to a worker (kl_worker.cmd). */
enum { KL_CMD_NONE = 0, KL_CMD_DRAIN = 1, KL_CMD_FORCE = 2 };

struct kl_worker {
  keel_server *srv;
  unsigned id;
  pthread_t thread;
  kl_loop loop;
  kl_io listen_io; /* fd -1 once closed */
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
};

struct keel_server {
  keel_config cfg;
  kl_log *log;
  kl_route *routes;
  size_t nroutes, cap_routes;
  struct sockaddr_storage addr;
  socklen_t addrlen;
  _Atomic int port;
  kl_worker *workers;
  unsigned nworkers;
  _Atomic int draining; /* /readyz answers 503 */
  int stopfd;           /* eventfd for keel_server_stop */
  int donefd;           /* eventfd counting workers that finished */
  kl_metrics *metrics;  /* keel's and the application's series */
  kl_stats stats;       /* cell indexes of keel's own series */
  kl_tracer *tracer;    /* OTLP span export; NULL with tracing off */
};

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
/** Finds the route for the request; sets *allow to a 405 Allow list when the path exists. */
const kl_route *kl_route_find(const keel_server *srv, const char *method, size_t mlen,
                              const char *path, size_t plen, char *allow, size_t allowlen);

#endif
