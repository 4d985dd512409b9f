/* redis.h - an asynchronous Redis client on a worker's kl_loop (hiredis, loaded on first use). */
#ifndef KEEL_GATEWAY_REDIS_H
#define KEEL_GATEWAY_REDIS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"

/*
 * One kl_redis per worker thread, on that worker's loop: nothing here takes a lock, and every
 * function must be called on the owning thread. hiredis (libhiredis.so.0.14) is dlopen()ed by
 * the first kl_redis_new(), so a keel that never configures Redis never maps it.
 *
 * Calls are bounded and never wait in a queue of ours:
 * - at most `max_in_flight` commands are outstanding on the connection; beyond that a call
 *   fails at once (-ENOBUFS);
 * - every command has a deadline (`timeout_ms` after it was issued). When the oldest pending
 *   command passes it, the connection is dropped: that command and every other one pending
 *   on the connection complete with -ETIMEDOUT, and a reconnect is scheduled;
 * - a lost connection is re-opened after a jittered exponential backoff (backoff_min_ms
 *   doubling to backoff_max_ms; the delay is drawn uniformly in [d/2, d]); while there is no
 *   connection calls fail at once (-ENOTCONN). Commands issued while connecting are written
 *   once the connection is up (still under their deadline);
 * - a circuit breaker counts consecutive transport failures (timeouts, lost connections,
 *   calls made while disconnected); at `circuit_failures` it opens: for `circuit_cooldown_ms`
 *   calls fail at once with -EAGAIN without touching the network. Then it is half-open: the
 *   next call is sent as the probe (others still get -EAGAIN while it is out); its success
 *   closes the circuit, its failure opens it for another cooldown. Any successful reply
 *   resets the failure count. An error reply (-EPROTO) is an answer, not a transport failure.
 *
 * Error convention: calls return 0 when the callback will run later (exactly once, on this
 * loop, within about timeout_ms, or during kl_redis_free), or a negative errno when the call
 * failed at once (the callback is then NOT called). In the callback, reply->err is 0 for a
 * reply or a negative errno.
 */

/** Reply types (same values as hiredis's REDIS_REPLY_*). */
enum {
  KL_REDIS_STRING = 1,
  KL_REDIS_ARRAY = 2,
  KL_REDIS_INTEGER = 3,
  KL_REDIS_NIL = 4,
  KL_REDIS_STATUS = 5,
  KL_REDIS_ERROR = 6,
};

/** Circuit breaker states (kl_redis_stats.circuit). */
enum { KL_REDIS_CLOSED = 0, KL_REDIS_OPEN = 1, KL_REDIS_HALF_OPEN = 2 };

/**
 * A reply, valid only during the callback. err: 0 for a reply of `type`; -EPROTO for an
 * error reply (type KL_REDIS_ERROR, str holds the message); -ETIMEDOUT (deadline passed),
 * -ECONNRESET (connection lost), -ECANCELED (kl_redis_free) with type 0.
 */
typedef struct kl_redis_reply {
  int err;
  int type;
  long long integer;  /* KL_REDIS_INTEGER */
  const char *str;    /* KL_REDIS_STRING, STATUS, ERROR: len bytes (NUL-terminated) */
  size_t len;
  size_t elements;    /* KL_REDIS_ARRAY: kl_redis_reply_element() reads them */
  const void *raw;    /* internal */
} kl_redis_reply;

/** Receives the outcome of a call; `rep` is valid only during the call. */
typedef void (*kl_redis_cb)(void *arg, const kl_redis_reply *rep);

/** Fills `out` with element i of an array reply: 0, or -ERANGE (not an array, i too big). */
int kl_redis_reply_element(const kl_redis_reply *rep, size_t i, kl_redis_reply *out);

/** Most scripts one client registers. */
#define KL_REDIS_SCRIPTS_MAX 8
/** Longest password accepted from password_file. */
#define KL_REDIS_PASSWORD_MAX 512

/**
 * The shared configuration (config time; read-only afterwards, one for all workers).
 * kl_redis_config_init sets the defaults; kl_redis_config_set_address and
 * kl_redis_config_read_password fill the rest.
 */
typedef struct kl_redis_config {
  char host[64];          /* numeric IPv4/IPv6, resolved once at config time */
  int port;
  char password[KL_REDIS_PASSWORD_MAX + 1]; /* "" = no AUTH */
  uint32_t timeout_ms;          /* per command; default 20 */
  uint32_t max_in_flight;       /* per connection; default 1024 */
  uint32_t circuit_failures;    /* consecutive failures that open the circuit; default 5 */
  uint32_t circuit_cooldown_ms; /* default 2000 */
  uint32_t backoff_min_ms;      /* first reconnect delay; default 50 */
  uint32_t backoff_max_ms;      /* default 1000 */
} kl_redis_config;

/** Defaults (no address yet). */
void kl_redis_config_init(kl_redis_config *c);

/**
 * Config time (may block: resolves a name). "host:port" or "[v6]:port"; a name is resolved
 * once with getaddrinfo (first address). 0 or -EINVAL with a message in err.
 */
int kl_redis_config_set_address(kl_redis_config *c, const char *address, char *err,
                                size_t errlen);

/**
 * Config time. Reads the password from `path` (the whole file, a trailing CR/LF trimmed);
 * NULL or "" means no password. 0 or a negative errno with a message in err.
 */
int kl_redis_config_read_password(kl_redis_config *c, const char *path, char *err,
                                  size_t errlen);

/**
 * Counters of one client. Written only by the owning worker (relaxed stores); any thread
 * may read them (relaxed loads) to export metrics.
 */
typedef struct kl_redis_stats {
  _Atomic uint64_t calls;       /* commands sent (including probes) */
  _Atomic uint64_t replies;     /* replies received (including error replies) */
  _Atomic uint64_t error_replies;
  _Atomic uint64_t timeouts;    /* commands completed with -ETIMEDOUT */
  _Atomic uint64_t conn_errors; /* commands completed with -ECONNRESET, calls while down */
  _Atomic uint64_t rejected_open;     /* calls refused by the open circuit (-EAGAIN) */
  _Atomic uint64_t rejected_inflight; /* calls refused by max_in_flight (-ENOBUFS) */
  _Atomic uint64_t connects;          /* connections established */
  _Atomic uint64_t connect_failures;
  _Atomic uint64_t circuit_opens;     /* transitions to open */
  _Atomic uint64_t noscript;          /* EVALSHA answered NOSCRIPT, retried as EVAL */
  _Atomic uint32_t circuit;           /* KL_REDIS_CLOSED / OPEN / HALF_OPEN */
  _Atomic uint32_t connected;         /* 1 while the connection is up */
  _Atomic uint32_t in_flight;
} kl_redis_stats;

typedef struct kl_redis kl_redis;

/**
 * The owning thread. A client on `loop` (which must have room for 2 more timers); starts
 * connecting at once (non-blocking). `cfg` must outlive the client. NULL with a message in
 * err (hiredis missing: install libhiredis0.14; out of memory).
 */
kl_redis *kl_redis_new(kl_loop *loop, const kl_redis_config *cfg, char *err, size_t errlen);

/**
 * The owning thread, not from a callback. Fails pending commands (-ECANCELED, their
 * callbacks run now), closes the connection and frees. NULL ok.
 */
void kl_redis_free(kl_redis *r);

/** The client's counters. */
const kl_redis_stats *kl_redis_stats_of(const kl_redis *r);

/**
 * The owning thread. Registers a Lua script; it is SCRIPT LOADed on every (re)connection.
 * Returns its id (>= 0) for kl_redis_evalsha, or -ENOSPC / -ENOMEM. The text is copied.
 */
int kl_redis_script(kl_redis *r, const char *lua);

/**
 * The owning thread. Sends one command (argv[0] is its name; binary-safe arguments,
 * copied before returning). 0: cb will run; negative errno: failed now (see top).
 */
int kl_redis_command(kl_redis *r, int argc, const char *const *argv, const size_t *argvlen,
                     kl_redis_cb cb, void *arg);

/**
 * The owning thread. Runs script `id`: EVALSHA sha nkeys keys... args... (EVAL with the text
 * while the sha is unknown). NOSCRIPT is answered by EVAL with the text, once. argv holds the
 * nkeys keys then the arguments (argc in all). Return as kl_redis_command.
 */
int kl_redis_evalsha(kl_redis *r, int id, int nkeys, int argc, const char *const *argv,
                     const size_t *argvlen, kl_redis_cb cb, void *arg);

/** Human-readable name of a reply's err (including kl_redis's own codes). */
const char *kl_redis_strerror(int err);

#endif
