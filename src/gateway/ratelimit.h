/* ratelimit.h - token buckets (GCRA): a sharded per-process table and a Redis-global script. */
#ifndef KEEL_GATEWAY_RATELIMIT_H
#define KEEL_GATEWAY_RATELIMIT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/redis.h"

/*
 * A limit is a token bucket {rate = count per period, burst}, computed as GCRA (the generic
 * cell rate algorithm): a bucket is one number, its theoretical arrival time (TAT). With the
 * emission interval T = period / count and tolerance tau = T * burst, a request at `now` is
 * allowed when max(TAT, now) + T <= now + tau, and then TAT becomes max(TAT, now) + T. This is
 * exactly a bucket of `burst` tokens refilled one token per T; remaining = (now + tau - TAT)/T,
 * the bucket is full again at TAT, a denied request may retry at TAT + T - tau.
 *
 * Local buckets live in a kl_rl_table shared by all workers: 2^k shards, each with a mutex, a
 * fixed array of entries and an LRU list; when a shard is full its least recently used bucket
 * is forgotten (a forgotten bucket starts full again). A bucket is identified by a 64-bit
 * SipHash of (limit id, key) under a random per-process key, so two keys share a bucket only
 * with probability ~2^-64 and an attacker cannot choose colliding keys.
 *
 * Global buckets live in Redis, one key per bucket ("keel:rl:<limit name>:<key>"), updated by
 * one Lua script per decision (atomic in Redis, Redis's clock via TIME so replicas' clocks do
 * not matter); the key expires by itself (PX) when the bucket would be full again. Keys longer
 * than KL_RL_KEY_MAX bytes are cut and suffixed with a hash of the whole key.
 */

/** Scopes and Redis failure policies (kl_rl_limit). */
enum { KL_RL_LOCAL = 0, KL_RL_GLOBAL = 1 };
enum { KL_RL_FAIL_OPEN = 0, KL_RL_FAIL_CLOSED = 1, KL_RL_FAIL_LOCAL = 2 };
/** Where a decision came from (kl_rl_decision.source). */
enum {
  KL_RL_SRC_LOCAL = 0,          /* a local limit's bucket */
  KL_RL_SRC_GLOBAL = 1,         /* Redis answered */
  KL_RL_SRC_FALLBACK_OPEN = 2,  /* Redis failed, on_redis_error: open -> allowed */
  KL_RL_SRC_FALLBACK_CLOSED = 3,/* Redis failed, on_redis_error: closed -> 503 */
  KL_RL_SRC_FALLBACK_LOCAL = 4, /* Redis failed, on_redis_error: local -> local share */
};

/** Longest key used as is in a Redis key name. */
#define KL_RL_KEY_MAX 256

/** One route's limit; immutable after kl_rl_limit_init (any thread may read it). */
typedef struct kl_rl_limit {
  char name[64];      /* names the Redis keys: unique per limit across the fleet */
  uint32_t id;        /* names the local buckets: unique per limit in the process */
  uint32_t count;     /* rate: count per period_ms */
  uint32_t period_ms;
  uint32_t burst;     /* bucket size (the most requests at once) */
  uint8_t scope;      /* KL_RL_LOCAL / KL_RL_GLOBAL */
  uint8_t on_error;   /* KL_RL_FAIL_OPEN / CLOSED / LOCAL (global only) */
  uint32_t replicas;  /* KL_RL_FAIL_LOCAL: rate and burst divided by this (>= 1) */
  /* derived */
  uint64_t t_ns;      /* emission interval */
  uint64_t fb_t_ns;   /* the local share's (t_ns * replicas) */
  uint32_t fb_count;  /* the local share's count per period (for RateLimit-Policy) */
  uint32_t fb_burst;  /* max(1, burst / replicas) */
  char t_us[32];      /* t_ns in microseconds, "%.3f", for the script */
} kl_rl_limit;

/**
 * Parses a rate "N/s", "N/m", "N/min", "N/h" (also "N/second", "N/minute", "N/hour"):
 * 0 with count and period_ms set, or -EINVAL.
 */
int kl_rl_parse_rate(const char *s, uint32_t *count, uint32_t *period_ms);

/**
 * Fills a limit. name: 1..63 bytes of [A-Za-z0-9_.-]; count, period_ms, burst >= 1;
 * replicas >= 1 (0 means 1). 0 or -EINVAL with a message in err.
 */
int kl_rl_limit_init(kl_rl_limit *l, const char *name, uint32_t id, uint32_t count,
                     uint32_t period_ms, uint32_t burst, int scope, int on_error,
                     uint32_t replicas, char *err, size_t errlen);

/** A decision. Times are milliseconds from now, rounded up. */
typedef struct kl_rl_decision {
  uint8_t allowed;          /* 1: pass the request on */
  uint8_t source;           /* KL_RL_SRC_* */
  uint8_t known;            /* 1 when limit/remaining/reset are known (not fail-open/closed) */
  uint16_t status;          /* 0 when allowed, else 429 (limited) or 503 (fail-closed) */
  uint32_t limit;           /* the bucket size in effect */
  uint32_t remaining;       /* requests allowed right now after this one */
  uint64_t reset_ms;        /* until the bucket is full again */
  uint64_t retry_after_ms;  /* denied: until a request would be allowed; 0 when allowed */
} kl_rl_decision;

/**
 * The GCRA step on one bucket, in any time unit (keel uses ns): `*tat` is the bucket (0 =
 * full), `t` the emission interval, `burst` the size, `cost` tokens taken. Updates *tat
 * when allowed. Fills allowed, remaining, reset_ms, retry_after_ms (converted from the unit
 * with `unit_per_ms`, rounding up), status (0/429), known = 1.
 */
void kl_rl_gcra(uint64_t *tat, uint64_t now, uint64_t t, uint32_t burst, uint32_t cost,
                uint64_t unit_per_ms, kl_rl_decision *d);

/* ---- the local table ---------------------------------------------------------- */

typedef struct kl_rl_table kl_rl_table;

/**
 * A table for at most `max_keys` buckets (>= 1; split over up to 64 shards, so the bound
 * rounds down to a multiple of the shard count, at least one per shard). NULL with a message.
 */
kl_rl_table *kl_rl_table_new(uint32_t max_keys, char *err, size_t errlen);
/** Frees the table. NULL ok. No decision may be running. */
void kl_rl_table_free(kl_rl_table *t);
/** Any thread. Buckets currently held. */
uint32_t kl_rl_table_count(kl_rl_table *t);
/** Any thread. Buckets forgotten to make room (relaxed read). */
uint64_t kl_rl_table_evictions(const kl_rl_table *t);

/**
 * Any thread (takes one shard's mutex). A local decision for `key` under `l` at `now_ns`
 * (CLOCK_MONOTONIC nanoseconds). Fills d (source KL_RL_SRC_LOCAL).
 */
void kl_rl_local(kl_rl_table *t, const kl_rl_limit *l, const void *key, size_t keylen,
                 uint64_t now_ns, kl_rl_decision *d);

/* ---- per worker: local and global decisions ------------------------------------ */

/**
 * Decision counters of one worker: written only by it (relaxed stores), read by any thread.
 */
typedef struct kl_rl_stats {
  _Atomic uint64_t allowed;
  _Atomic uint64_t denied;          /* 429 and 503 */
  _Atomic uint64_t local;           /* decisions of local limits */
  _Atomic uint64_t global;          /* decisions Redis made */
  _Atomic uint64_t redis_errors;    /* global decisions Redis could not make (any reason) */
  _Atomic uint64_t fallback_open;   /* ... then allowed by on_redis_error: open */
  _Atomic uint64_t fallback_closed; /* ... then denied by on_redis_error: closed */
  _Atomic uint64_t fallback_local;  /* ... then decided by the local share */
} kl_rl_stats;

typedef struct kl_rl_worker kl_rl_worker;

/** Receives an asynchronous decision (on the worker's loop); d is valid during the call. */
typedef void (*kl_rl_cb)(void *arg, const kl_rl_decision *d);

/**
 * The owning worker. Its decision context over the shared `table` and the worker's own
 * Redis client (NULL when no Redis is configured: global limits then always take their
 * fallback). Registers the GCRA script on `redis`. At most `max_pending` global decisions
 * wait at once (use the client's max_in_flight); beyond, the fallback decides. NULL + err.
 */
kl_rl_worker *kl_rl_worker_new(kl_rl_table *table, kl_redis *redis, uint32_t max_pending,
                               char *err, size_t errlen);

/**
 * The owning worker, before kl_redis_free of its client (pending decisions' callbacks run
 * when the client is freed, so free the client first, then this). NULL ok.
 */
void kl_rl_worker_free(kl_rl_worker *w);

/** The worker's counters. */
const kl_rl_stats *kl_rl_worker_stats(const kl_rl_worker *w);

/**
 * The owning worker. Decides one request for `key` under `l`.
 * Returns 1 when decided now (*out filled; cb not called): local limits, and global ones
 * whose Redis call failed at once (no connection, circuit open, too many in flight) and so
 * took the fallback. Returns 0 when Redis was asked: cb(arg, decision) runs later on this
 * loop, exactly once, within about the client's timeout (a late, failed or malformed answer
 * gives the fallback decision). Never fails otherwise.
 */
int kl_rl_decide(kl_rl_worker *w, const kl_rl_limit *l, const void *key, size_t keylen,
                 kl_rl_decision *out, kl_rl_cb cb, void *arg);

/* ---- response headers ------------------------------------------------------------ */

/** Most headers kl_rl_headers writes. */
#define KL_RL_HEADERS_MAX 5

/** One response header. */
typedef struct kl_rl_header {
  const char *name;
  char value[48];
} kl_rl_header;

/**
 * The headers a response carries for decision `d` under `l` (draft-ietf-httpapi-ratelimit-
 * headers, the RateLimit-Limit/-Remaining/-Reset form): when d->known, RateLimit-Limit
 * (bucket size), RateLimit-Remaining, RateLimit-Reset (seconds until full, rounded up) and
 * RateLimit-Policy ("<count>;w=<period s>;burst=<burst>"); when denied, Retry-After (whole
 * seconds rounded up, at least 1). Fail-open decisions get none, fail-closed only
 * Retry-After. Returns how many were written to out[].
 */
int kl_rl_headers(const kl_rl_limit *l, const kl_rl_decision *d,
                  kl_rl_header out[KL_RL_HEADERS_MAX]);

/** The Lua text of the global decision (KEYS[1]; ARGV: T in us, burst, cost). For tests. */
extern const char kl_rl_gcra_lua[];

#endif
