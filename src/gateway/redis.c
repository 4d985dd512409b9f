/* redis.c - asynchronous Redis client on kl_loop: hiredis async API via dlopen, deadlines, breaker. */
#include "gateway/redis.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <hiredis/async.h>

#include "core/dl.h"
#include "obs/trace.h"

/*
 * hiredis is not linked: like librdkafka (pipeline/rdk.c) it is dlopen()ed on first use and
 * called through this table; only its headers (types, constants) are used at build time.
 */
#define KL_HIREDIS_FUNCS(X)                                                                    \
  X(redisAsyncConnect) X(redisAsyncSetConnectCallback) X(redisAsyncFree)                       \
  X(redisAsyncHandleRead) X(redisAsyncHandleWrite) X(redisAsyncCommandArgv)

static struct {
/* NOLINTNEXTLINE(bugprone-macro-parentheses): f is a declarator name, it cannot be parenthesised */
#define KL_HIREDIS_FIELD(f) __typeof__(&f) f;
  KL_HIREDIS_FUNCS(KL_HIREDIS_FIELD)
#undef KL_HIREDIS_FIELD
} hr;
#define KL_HIREDIS_NAME(f) #f,
static const char *const hr_names[] = {KL_HIREDIS_FUNCS(KL_HIREDIS_NAME)};
#undef KL_HIREDIS_NAME
_Static_assert(sizeof hr == sizeof hr_names / sizeof *hr_names * sizeof(void *),
               "a pointer a name");

static void *hr_open(void) { return dlopen("libhiredis.so.0.14", RTLD_NOW | RTLD_LOCAL); }

static kl_dl_lib hr_lib = {.soname = "libhiredis.so.0.14", .package = "libhiredis0.14",
                           .open = hr_open, .names = hr_names,
                           .n = sizeof hr_names / sizeof *hr_names, .table = &hr};

/* Most arguments of one command (EVALSHA + sha + nkeys + keys and args). */
#define ARGS_MAX 32

/* One outstanding command: on the pending list (issue order) or on the free list. */
typedef struct slot {
  struct slot *prev, *next;
  kl_redis *r;
  kl_redis_cb cb;
  void *arg;
  uint64_t deadline; /* loop ms */
  int probe;         /* the half-open circuit's probe */
  int script;        /* EVALSHA of this script id (NOSCRIPT retry), else -1 */
  int nkeys;
  int saved_argc;    /* keys and args of an EVALSHA, kept for the NOSCRIPT retry */
  char *saved;       /* malloc: size_t lens[argc], then the bytes */
} slot;

typedef struct script {
  kl_redis *r;
  char *text;
  char sha[41]; /* "" until SCRIPT LOAD answered */
} script;

struct kl_redis {
  kl_loop *loop;
  const kl_redis_config *cfg;
  redisAsyncContext *ac; /* NULL while disconnected (or the context is being freed) */
  kl_io io;
  uint32_t want;     /* EPOLLIN / EPOLLOUT hiredis asked for */
  int io_on;         /* io registered with epoll */
  uint64_t gen;      /* bumped when a context goes away */
  int drop_err;      /* what pending commands get when the context goes */
  int closing;       /* kl_redis_free in progress: no reconnect */
  kl_timer cmd_timer;   /* the oldest pending command's deadline */
  kl_timer retry_timer; /* reconnect */
  uint32_t backoff_ms;
  kl_trace_rng rng;
  /* circuit breaker */
  uint32_t failures;
  uint64_t open_until;
  int probe_out;
  /* commands */
  slot *slots, *free_slots, *head, *tail;
  uint32_t in_flight;
  script scripts[KL_REDIS_SCRIPTS_MAX];
  int nscripts;
  kl_redis_stats st;
  char last_err[128];
};

#define INC(x) atomic_store_explicit(&(x), atomic_load_explicit(&(x), memory_order_relaxed) + 1, \
                                     memory_order_relaxed)
#define SET(x, v) atomic_store_explicit(&(x), (v), memory_order_relaxed)

/* ---- configuration --------------------------------------------------------- */

void kl_redis_config_init(kl_redis_config *c) {
  memset(c, 0, sizeof *c);
  c->timeout_ms = 20;
  c->max_in_flight = 1024;
  c->circuit_failures = 5;
  c->circuit_cooldown_ms = 2000;
  c->backoff_min_ms = 50;
  c->backoff_max_ms = 1000;
}

int kl_redis_config_set_address(kl_redis_config *c, const char *address, char *err,
                                size_t errlen) {
  char host[256];
  const char *colon = strrchr(address, ':');
  const char *h = address;
  size_t hl = colon ? (size_t)(colon - address) : 0;
  if (hl && address[0] == '[' && address[hl - 1] == ']') {
    h++;
    hl -= 2;
  }
  char *end;
  errno = 0;
  unsigned long port = colon ? strtoul(colon + 1, &end, 10) : 0;
  if (!colon || hl == 0 || hl >= sizeof host || errno || *end || colon[1] == '\0' || port == 0 ||
      port > 65535) {
    snprintf(err, errlen, "redis.address: want host:port, got \"%s\"", address);
    return -EINVAL;
  }
  memcpy(host, h, hl);
  host[hl] = '\0';
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
  int rc = getaddrinfo(host, NULL, &hints, &res);
  if (rc != 0 || !res) {
    snprintf(err, errlen, "redis.address: cannot resolve \"%s\": %s", host, gai_strerror(rc));
    return -EINVAL;
  }
  const void *a = res->ai_family == AF_INET6
                      ? (const void *)&((struct sockaddr_in6 *)(void *)res->ai_addr)->sin6_addr
                      : (const void *)&((struct sockaddr_in *)(void *)res->ai_addr)->sin_addr;
  const char *ok = inet_ntop(res->ai_family, a, c->host, sizeof c->host);
  freeaddrinfo(res);
  if (!ok) {
    snprintf(err, errlen, "redis.address: \"%s\": %s", host, strerror(errno));
    return -EINVAL;
  }
  c->port = (int)port;
  return 0;
}

int kl_redis_config_read_password(kl_redis_config *c, const char *path, char *err,
                                  size_t errlen) {
  c->password[0] = '\0';
  if (!path || !*path) return 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    snprintf(err, errlen, "redis.password_file: %s: %s", path, strerror(e));
    return -e;
  }
  size_t n = 0;
  for (;;) {
    ssize_t got = read(fd, c->password + n, sizeof c->password - n);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    n += (size_t)got;
    if (n == sizeof c->password) break;
  }
  close(fd);
  if (n > KL_REDIS_PASSWORD_MAX) {
    memset(c->password, 0, sizeof c->password);
    snprintf(err, errlen, "redis.password_file: %s: longer than %d bytes", path,
             KL_REDIS_PASSWORD_MAX);
    return -EINVAL;
  }
  while (n && (c->password[n - 1] == '\n' || c->password[n - 1] == '\r')) n--;
  c->password[n] = '\0';
  if (n == 0 || memchr(c->password, '\0', n)) {
    snprintf(err, errlen, "redis.password_file: %s: empty or binary", path);
    return -EINVAL;
  }
  return 0;
}

/* ---- replies ---------------------------------------------------------------- */

static void to_reply(const redisReply *x, kl_redis_reply *out) {
  memset(out, 0, sizeof *out);
  out->type = x->type;
  out->raw = x;
  switch (x->type) {
  case REDIS_REPLY_INTEGER: out->integer = x->integer; break;
  case REDIS_REPLY_ARRAY: out->elements = x->elements; break;
  case REDIS_REPLY_ERROR:
  case REDIS_REPLY_STRING:
  case REDIS_REPLY_STATUS:
    out->str = x->str;
    out->len = x->len;
    break;
  default: break;
  }
  if (x->type == REDIS_REPLY_ERROR) out->err = -EPROTO;
}

int kl_redis_reply_element(const kl_redis_reply *rep, size_t i, kl_redis_reply *out) {
  const redisReply *x = rep->raw;
  if (!x || x->type != REDIS_REPLY_ARRAY || i >= x->elements) return -ERANGE;
  to_reply(x->element[i], out);
  return 0;
}

const char *kl_redis_strerror(int err) {
  switch (err) {
  case 0: return "ok";
  case -EPROTO: return "error reply";
  case -ETIMEDOUT: return "timed out";
  case -ECONNRESET: return "connection lost";
  case -ENOTCONN: return "not connected";
  case -EAGAIN: return "circuit open";
  case -ENOBUFS: return "too many commands in flight";
  case -ECANCELED: return "client closed";
  default: return strerror(-err);
  }
}

/* ---- circuit breaker ----------------------------------------------------------- */

static void circuit_set(kl_redis *r, uint32_t state) {
  if (state == KL_REDIS_OPEN) {
    r->open_until = r->loop->now + r->cfg->circuit_cooldown_ms;
    INC(r->st.circuit_opens);
  }
  SET(r->st.circuit, state);
}

static void circuit_failure(kl_redis *r) {
  r->failures++;
  uint32_t s = atomic_load_explicit(&r->st.circuit, memory_order_relaxed);
  if (s == KL_REDIS_HALF_OPEN || (s == KL_REDIS_CLOSED && r->failures >= r->cfg->circuit_failures))
    circuit_set(r, KL_REDIS_OPEN);
}

static void circuit_success(kl_redis *r, int probe) {
  r->failures = 0;
  if (probe && atomic_load_explicit(&r->st.circuit, memory_order_relaxed) == KL_REDIS_HALF_OPEN)
    circuit_set(r, KL_REDIS_CLOSED);
}

/* ---- the fd watcher (hiredis's event hooks) ---------------------------------------- */

static void io_update(kl_redis *r) {
  if (r->io.fd < 0) return;
  if (!r->io_on) {
    if (kl_io_start(r->loop, &r->io, r->want) == 0) r->io_on = 1;
  } else {
    kl_io_modify(r->loop, &r->io, r->want);
  }
}

static void ev_add_read(void *p) {
  kl_redis *r = p;
  r->want |= EPOLLIN;
  io_update(r);
}
static void ev_del_read(void *p) {
  kl_redis *r = p;
  r->want &= ~(uint32_t)EPOLLIN;
  io_update(r);
}
static void ev_add_write(void *p) {
  kl_redis *r = p;
  r->want |= EPOLLOUT;
  io_update(r);
}
static void ev_del_write(void *p) {
  kl_redis *r = p;
  r->want &= ~(uint32_t)EPOLLOUT;
  io_update(r);
}

static uint64_t jitter(kl_redis *r, uint32_t d) {
  uint8_t b[8];
  uint64_t x;
  kl_trace_span_id_new(&r->rng, b);
  memcpy(&x, b, sizeof x);
  return d / 2 + (d ? x % (d / 2 + 1) : 0); /* uniform in [d/2, d] */
}

/* The context is going away (hiredis calls this before closing its fd): forget the fd and
 * schedule the reconnect. */
static void ev_cleanup(void *p) {
  kl_redis *r = p;
  if (r->io.fd < 0) return; /* idempotent */
  if (r->io_on) kl_io_stop(r->loop, &r->io);
  r->io_on = 0;
  r->io.fd = -1;
  r->want = 0;
  r->ac = NULL;
  r->gen++;
  SET(r->st.connected, 0);
  if (r->closing) return;
  kl_timer_set(&r->loop->timers, &r->retry_timer, r->loop->now + jitter(r, r->backoff_ms));
  r->backoff_ms = r->backoff_ms * 2 > r->cfg->backoff_max_ms ? r->cfg->backoff_max_ms
                                                              : r->backoff_ms * 2;
}

static void on_io(kl_loop *loop, kl_io *io, uint32_t events) {
  (void)loop;
  kl_redis *r = (kl_redis *)(void *)((char *)io - offsetof(kl_redis, io));
  redisAsyncContext *ac = r->ac;
  if (!ac) return;
  uint64_t gen = r->gen;
  int bad = (events & (EPOLLERR | EPOLLHUP)) != 0;
  if ((events & EPOLLOUT) || (bad && (r->want & EPOLLOUT))) hr.redisAsyncHandleWrite(ac);
  if (r->gen != gen || r->ac != ac) return; /* freed by the write */
  if ((events & EPOLLIN) || bad) hr.redisAsyncHandleRead(ac);
}

/* ---- commands ------------------------------------------------------------------ */

static void pending_unlink(kl_redis *r, slot *s) {
  if (s->prev) s->prev->next = s->next;
  else r->head = s->next;
  if (s->next) s->next->prev = s->prev;
  else r->tail = s->prev;
  s->prev = s->next = NULL;
}

static void pending_append(kl_redis *r, slot *s) {
  s->deadline = kl_now_ms() + r->cfg->timeout_ms; /* loop->now may lag a busy batch */
  s->next = NULL;
  s->prev = r->tail;
  if (r->tail) r->tail->next = s;
  else r->head = s;
  r->tail = s;
  if (!r->cmd_timer.slot) kl_timer_set(&r->loop->timers, &r->cmd_timer, s->deadline);
}

/* Ends a command: releases its slot, updates the breaker and counters, runs the callback. */
/* Takes a command off the pending list and returns its slot. */
static void release(kl_redis *r, slot *s) {
  pending_unlink(r, s);
  free(s->saved);
  s->saved = NULL;
  if (s->probe) r->probe_out = 0;
  s->next = r->free_slots;
  r->free_slots = s;
  r->in_flight--;
  SET(r->st.in_flight, r->in_flight);
}

static void complete(kl_redis *r, slot *s, const kl_redis_reply *rep) {
  kl_redis_cb cb = s->cb;
  void *arg = s->arg;
  int probe = s->probe;
  release(r, s);
  switch (rep->err) {
  case -ETIMEDOUT:
    INC(r->st.timeouts);
    circuit_failure(r);
    break;
  case -ECONNRESET:
    INC(r->st.conn_errors);
    circuit_failure(r);
    break;
  case -ECANCELED: break;
  default:
    INC(r->st.replies);
    if (rep->err == -EPROTO) INC(r->st.error_replies);
    circuit_success(r, probe);
    break;
  }
  cb(arg, rep);
}

/* Drops the connection (not from inside hiredis unless it is a reply callback): every
 * pending command completes with `err`. */
static void drop(kl_redis *r, int err) {
  redisAsyncContext *ac = r->ac;
  if (!ac) return;
  r->ac = NULL;
  r->drop_err = err;
  hr.redisAsyncFree(ac);
}

static int send_eval(kl_redis *r, slot *s, const script *sc, int use_sha, int nkeys, int argc,
                     const char *const *argv, const size_t *argvlen);

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  slot *s = privdata;
  kl_redis *r = s->r;
  kl_redis_reply rep;
  if (!reply) { /* the context is being freed */
    if (r->ac == ac) {
      r->ac = NULL; /* hiredis dropped it: nothing more may be sent on it */
      r->drop_err = -ECONNRESET;
    }
    memset(&rep, 0, sizeof rep);
    rep.err = r->drop_err;
    complete(r, s, &rep);
    return;
  }
  const redisReply *x = reply;
  if (x->type == REDIS_REPLY_ERROR && s->script >= 0 && s->saved && r->ac == ac &&
      x->len >= 8 && memcmp(x->str, "NOSCRIPT", 8) == 0) {
    /* The script cache was flushed: run the text once (EVAL also caches it again). */
    INC(r->st.noscript);
    const size_t *lens = (const size_t *)(void *)s->saved;
    const char *argv[ARGS_MAX];
    const char *p = s->saved + sizeof(size_t) * (size_t)s->saved_argc;
    for (int i = 0; i < s->saved_argc; i++) {
      argv[i] = p;
      p += lens[i];
    }
    char *saved = s->saved;
    s->saved = NULL;
    pending_unlink(r, s);
    pending_append(r, s); /* a new round trip, a new deadline */
    int rc = send_eval(r, s, &r->scripts[s->script], 0, s->nkeys, s->saved_argc, argv, lens);
    free(saved);
    if (rc == 0) return;
    to_reply(x, &rep);
    complete(r, s, &rep);
    return;
  }
  to_reply(x, &rep);
  complete(r, s, &rep);
}

static void on_cmd_timer(kl_timer *t) {
  kl_redis *r = (kl_redis *)(void *)((char *)t - offsetof(kl_redis, cmd_timer));
  if (!r->head) return;
  if (r->head->deadline > r->loop->now) {
    kl_timer_set(&r->loop->timers, &r->cmd_timer, r->head->deadline);
    return;
  }
  snprintf(r->last_err, sizeof r->last_err, "no reply within %u ms", r->cfg->timeout_ms);
  drop(r, -ETIMEDOUT);
}

/* Admission: the breaker, the connection, the cap. 0 with *probe set, or a negative errno. */
static int admit(kl_redis *r, int *probe) {
  *probe = 0;
  uint32_t s = atomic_load_explicit(&r->st.circuit, memory_order_relaxed);
  if (s == KL_REDIS_OPEN) {
    if (r->loop->now < r->open_until) {
      INC(r->st.rejected_open);
      return -EAGAIN;
    }
    circuit_set(r, KL_REDIS_HALF_OPEN);
    s = KL_REDIS_HALF_OPEN;
  }
  if (s == KL_REDIS_HALF_OPEN && r->probe_out) {
    INC(r->st.rejected_open);
    return -EAGAIN;
  }
  if (r->in_flight >= r->cfg->max_in_flight || !r->free_slots) {
    INC(r->st.rejected_inflight);
    return -ENOBUFS;
  }
  if (!r->ac) {
    INC(r->st.conn_errors);
    circuit_failure(r);
    return -ENOTCONN;
  }
  *probe = s == KL_REDIS_HALF_OPEN;
  return 0;
}

static slot *take_slot(kl_redis *r, kl_redis_cb cb, void *arg, int probe) {
  slot *s = r->free_slots;
  r->free_slots = s->next;
  memset(s, 0, sizeof *s);
  s->r = r;
  s->cb = cb;
  s->arg = arg;
  s->probe = probe;
  s->script = -1;
  if (probe) r->probe_out = 1;
  r->in_flight++;
  SET(r->st.in_flight, r->in_flight);
  INC(r->st.calls);
  pending_append(r, s);
  return s;
}

int kl_redis_command(kl_redis *r, int argc, const char *const *argv, const size_t *argvlen,
                     kl_redis_cb cb, void *arg) {
  if (argc < 1 || argc > ARGS_MAX) return -E2BIG;
  int probe;
  int rc = admit(r, &probe);
  if (rc) return rc;
  slot *s = take_slot(r, cb, arg, probe);
  if (hr.redisAsyncCommandArgv(r->ac, on_reply, s, argc, (const char **)(uintptr_t)argv,
                               argvlen) != REDIS_OK) {
    release(r, s);
    return -ENOMEM;
  }
  return 0;
}

/* EVALSHA sha / EVAL text, nkeys, keys and args. */
static int send_eval(kl_redis *r, slot *s, const script *sc, int use_sha, int nkeys, int argc,
                     const char *const *argv, const size_t *argvlen) {
  const char *v[ARGS_MAX + 3];
  size_t l[ARGS_MAX + 3];
  char nk[16];
  v[0] = use_sha ? "EVALSHA" : "EVAL";
  v[1] = use_sha ? sc->sha : sc->text;
  v[2] = nk;
  l[0] = strlen(v[0]);
  l[1] = strlen(v[1]);
  l[2] = (size_t)snprintf(nk, sizeof nk, "%d", nkeys);
  for (int i = 0; i < argc; i++) {
    v[3 + i] = argv[i];
    l[3 + i] = argvlen[i];
  }
  if (!r->ac) return -ENOTCONN;
  return hr.redisAsyncCommandArgv(r->ac, on_reply, s, argc + 3, v, l) == REDIS_OK ? 0 : -ENOMEM;
}

int kl_redis_evalsha(kl_redis *r, int id, int nkeys, int argc, const char *const *argv,
                     const size_t *argvlen, kl_redis_cb cb, void *arg) {
  if (id < 0 || id >= r->nscripts || nkeys < 0 || nkeys > argc || argc > ARGS_MAX) return -EINVAL;
  int probe;
  int rc = admit(r, &probe);
  if (rc) return rc;
  const script *sc = &r->scripts[id];
  int use_sha = sc->sha[0] != '\0';
  slot *s = take_slot(r, cb, arg, probe);
  if (use_sha) { /* keep the arguments for a NOSCRIPT retry */
    size_t total = sizeof(size_t) * (size_t)argc;
    for (int i = 0; i < argc; i++) total += argvlen[i];
    s->saved = malloc(total ? total : 1);
    if (!s->saved) {
      release(r, s);
      return -ENOMEM;
    }
    char *p = s->saved + sizeof(size_t) * (size_t)argc;
    for (int i = 0; i < argc; i++) {
      memcpy(s->saved + sizeof(size_t) * (size_t)i, &argvlen[i], sizeof(size_t));
      if (argvlen[i]) memcpy(p, argv[i], argvlen[i]);
      p += argvlen[i];
    }
    s->saved_argc = argc;
    s->script = id;
    s->nkeys = nkeys;
  }
  rc = send_eval(r, s, sc, use_sha, nkeys, argc, argv, argvlen);
  if (rc) release(r, s);
  return rc;
}

/* ---- connection ------------------------------------------------------------------ */

static void on_connect(const redisAsyncContext *ac, int status) {
  kl_redis *r = ac->data;
  if (status == REDIS_OK) {
    INC(r->st.connects);
    SET(r->st.connected, 1);
    r->backoff_ms = r->cfg->backoff_min_ms;
  } else {
    INC(r->st.connect_failures);
    snprintf(r->last_err, sizeof r->last_err, "connect: %s", ac->errstr ? ac->errstr : "?");
  }
}

static void on_auth(redisAsyncContext *ac, void *reply, void *privdata) {
  kl_redis *r = privdata;
  const redisReply *x = reply;
  if (!x || x->type != REDIS_REPLY_ERROR || r->ac != ac) return;
  snprintf(r->last_err, sizeof r->last_err, "AUTH: %s", x->str);
  INC(r->st.connect_failures);
  drop(r, -ECONNRESET); /* deferred by hiredis until this callback returns */
}

static void on_script_load(redisAsyncContext *ac, void *reply, void *privdata) {
  (void)ac;
  script *sc = privdata;
  const redisReply *x = reply;
  if (x && x->type == REDIS_REPLY_STRING && x->len == 40) memcpy(sc->sha, x->str, 41);
}

static void start_connect(kl_redis *r) {
  redisAsyncContext *ac = hr.redisAsyncConnect(r->cfg->host, r->cfg->port);
  if (!ac || ac->err) {
    snprintf(r->last_err, sizeof r->last_err, "connect: %s", ac ? ac->errstr : "out of memory");
    INC(r->st.connect_failures);
    if (ac) hr.redisAsyncFree(ac);
    kl_timer_set(&r->loop->timers, &r->retry_timer, r->loop->now + jitter(r, r->backoff_ms));
    r->backoff_ms = r->backoff_ms * 2 > r->cfg->backoff_max_ms ? r->cfg->backoff_max_ms
                                                                : r->backoff_ms * 2;
    return;
  }
  r->ac = ac;
  r->drop_err = -ECONNRESET;
  r->io.fd = ac->c.fd;
  r->io_on = 0;
  r->want = 0;
  ac->data = r;
  ac->ev.data = r;
  ac->ev.addRead = ev_add_read;
  ac->ev.delRead = ev_del_read;
  ac->ev.addWrite = ev_add_write;
  ac->ev.delWrite = ev_del_write;
  ac->ev.cleanup = ev_cleanup;
  hr.redisAsyncSetConnectCallback(ac, on_connect);
  /* Sent first on the connection, so every later command finds AUTH done, scripts cached. */
  if (r->cfg->password[0]) {
    const char *v[2] = {"AUTH", r->cfg->password};
    size_t l[2] = {4, strlen(r->cfg->password)};
    hr.redisAsyncCommandArgv(ac, on_auth, r, 2, v, l);
  }
  for (int i = 0; i < r->nscripts; i++) {
    const char *v[3] = {"SCRIPT", "LOAD", r->scripts[i].text};
    size_t l[3] = {6, 4, strlen(r->scripts[i].text)};
    hr.redisAsyncCommandArgv(ac, on_script_load, &r->scripts[i], 3, v, l);
  }
  ev_add_write(r); /* the connect completes on writability */
}

static void on_retry_timer(kl_timer *t) {
  kl_redis *r = (kl_redis *)(void *)((char *)t - offsetof(kl_redis, retry_timer));
  if (!r->ac && !r->closing) start_connect(r);
}

kl_redis *kl_redis_new(kl_loop *loop, const kl_redis_config *cfg, char *err, size_t errlen) {
  if (kl_dl_load(&hr_lib, err, errlen)) return NULL;
  if (!cfg->host[0] || cfg->max_in_flight == 0 || cfg->timeout_ms == 0) {
    snprintf(err, errlen, "redis: no address, or max_in_flight/timeout 0");
    return NULL;
  }
  kl_redis *r = calloc(1, sizeof *r);
  if (r) r->slots = calloc(cfg->max_in_flight, sizeof *r->slots);
  if (!r || !r->slots) {
    if (r) free(r);
    snprintf(err, errlen, "redis: out of memory");
    return NULL;
  }
  r->loop = loop;
  r->cfg = cfg;
  r->io.fd = -1;
  r->io.cb = on_io;
  r->cmd_timer.cb = on_cmd_timer;
  r->retry_timer.cb = on_retry_timer;
  r->backoff_ms = cfg->backoff_min_ms ? cfg->backoff_min_ms : 1;
  kl_trace_rng_init(&r->rng);
  for (uint32_t i = cfg->max_in_flight; i-- > 0;) {
    r->slots[i].next = r->free_slots;
    r->free_slots = &r->slots[i];
  }
  start_connect(r);
  return r;
}

int kl_redis_script(kl_redis *r, const char *lua) {
  if (r->nscripts >= KL_REDIS_SCRIPTS_MAX) return -ENOSPC;
  script *sc = &r->scripts[r->nscripts];
  sc->text = strdup(lua);
  if (!sc->text) return -ENOMEM;
  sc->r = r;
  sc->sha[0] = '\0';
  if (r->ac) { /* already connecting: load it now too */
    const char *v[3] = {"SCRIPT", "LOAD", sc->text};
    size_t l[3] = {6, 4, strlen(sc->text)};
    hr.redisAsyncCommandArgv(r->ac, on_script_load, sc, 3, v, l);
  }
  return r->nscripts++;
}

const kl_redis_stats *kl_redis_stats_of(const kl_redis *r) { return &r->st; }

void kl_redis_free(kl_redis *r) {
  if (!r) return;
  r->closing = 1;
  kl_timer_cancel(&r->loop->timers, &r->cmd_timer);
  kl_timer_cancel(&r->loop->timers, &r->retry_timer);
  drop(r, -ECANCELED);
  for (int i = 0; i < r->nscripts; i++) free(r->scripts[i].text);
  free(r->slots);
  free(r);
}
