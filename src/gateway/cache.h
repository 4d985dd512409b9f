/* cache.h - in-memory HTTP response cache: sharded LRU bounded in bytes, Vary, request coalescing. */
#ifndef KEEL_GATEWAY_CACHE_H
#define KEEL_GATEWAY_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "http/parser.h"

/*
 * One kl_cache is shared by every worker thread of a process. It is split into KL_CACHE_SHARDS
 * shards by key hash, each with its own mutex, hash table and LRU list; the byte cap is divided
 * evenly between shards (an entry never exceeds its shard's share, so the total never exceeds
 * `max_bytes`). No function reads a clock: callers pass `now_ms`, a monotonic time in
 * milliseconds (kl_loop's cached clock), so tests inject time.
 *
 * Semantics (RFC 9111, shared cache, simplified; user docs in docs/gateway.md):
 * - Key: host (case-insensitive), path, query. Only GET responses are stored; HEAD is answered
 *   from GET entries (a HEAD miss is a BYPASS: HEAD responses have no body to store). Other
 *   methods are BYPASS.
 * - Stored only when: status is one of 200 203 204 300 301 308 404 405 410 414 501; the response
 *   has explicit freshness (s-maxage, else max-age, else Expires minus Date) > 0 (keel never uses
 *   heuristic freshness); no `no-store`, `private` or `no-cache` (keel does not revalidate, so a
 *   response that must be revalidated is not stored); no `Vary: *`; at most KL_CACHE_VARY_MAX
 *   Vary names; headers + body <= max_object; a request carrying Authorization only when the
 *   response says `public`, `s-maxage` or `must-revalidate` (RFC 9111 3.5), and such an entry
 *   is the only kind served to requests with Authorization.
 * - Stored header block: the response's lines minus Age, Date, Connection, Keep-Alive,
 *   Proxy-Connection, Transfer-Encoding, Content-Length and Set-Cookie (a cookie is for one
 *   client, never for everyone who gets the cached copy). The caller writes its own Date, Age,
 *   Content-Length and X-Cache.
 * - Freshness: current age = Age sent by the upstream + whole seconds resident; an entry is
 *   served while current age < lifetime. A stale entry is dropped at the next lookup that sees it
 *   (no conditional revalidation). Expires is read only as IMF-fixdate and only with a Date
 *   (an invalid Expires means already expired).
 * - Request Cache-Control: no-store -> BYPASS; no-cache or max-age=0 (or Pragma: no-cache
 *   without Cache-Control) -> the stored entry is not used, the caller becomes an uncoalesced
 *   LEADER and the new response replaces it; max-age=N -> entries older than N are not used.
 *   min-fresh, max-stale and only-if-cached are ignored.
 */

/** Shards, waiters per fill, variants per key, Vary names per response, key bytes: caps. */
#define KL_CACHE_SHARDS 16
#define KL_CACHE_WAITERS_MAX 4096
#define KL_CACHE_VARIANTS_MAX 64
#define KL_CACHE_VARY_MAX 16
#define KL_CACHE_VARY_VALUE_MAX 1024
#define KL_CACHE_KEY_MAX 8192
/** Fills in flight per shard: a miss beyond it is a BYPASS. */
#define KL_CACHE_PENDING_MAX 1024
/**
 * Bytes charged per entry beyond its allocation (the struct with key, Vary data, headers and
 * body, rounded up to malloc's 16): hash-table slots (load 0.5..1) and malloc's chunk header.
 */
#define KL_CACHE_ENTRY_OVERHEAD 32

typedef struct kl_cache kl_cache;
/** A stored response: immutable, reference-counted. */
typedef struct kl_cache_entry kl_cache_entry;
/** A leader's right and duty to fill one key: kl_cache_fill or kl_cache_abandon, exactly once. */
typedef struct kl_cache_ticket kl_cache_ticket;

/** Settings; zero fields take the defaults in brackets. */
typedef struct kl_cache_conf {
  size_t max_bytes;         /**< total bytes charged for resident entries [64 MiB] */
  size_t max_object;        /**< largest headers + body stored [1 MiB or max_bytes / SHARDS if
                                 smaller]; <= max_bytes / KL_CACHE_SHARDS */
  unsigned max_variants;    /**< Vary variants kept per key [8], <= KL_CACHE_VARIANTS_MAX */
  unsigned max_waiters;     /**< requests coalesced on one fill [256], <= KL_CACHE_WAITERS_MAX */
  uint64_t fill_timeout_ms; /**< a fill older than this is taken over by the next miss [30000] */
} kl_cache_conf;

/**
 * A request as the cache sees it. Views, not copied, valid during the call. Headers are the
 * parser's: `hdrs[i]` are offsets into `hbuf`, values without surrounding whitespace.
 */
typedef struct kl_cache_req {
  const char *method;
  size_t method_len;
  const char *host; /**< Host header value (or authority), compared case-insensitively */
  size_t host_len;
  const char *path; /**< normalised path */
  size_t path_len;
  const char *query; /**< after '?', length 0 when absent */
  size_t query_len;
  const char *hbuf;
  const kl_header *hdrs;
  size_t nhdrs;
} kl_cache_req;

/** An upstream response to store. The header block is "Name: value\r\n" lines. */
typedef struct kl_cache_resp {
  int status;
  const char *headers;
  size_t headers_len;
  const char *body;
  size_t body_len;
} kl_cache_resp;

/** What a served entry holds: views valid until kl_cache_entry_release. */
typedef struct kl_cache_view {
  int status;
  const char *headers; /**< "Name: value\r\n" lines, filtered (see above) */
  size_t headers_len;
  const char *body;
  size_t body_len;
  uint64_t age; /**< seconds: the Age header to send */
} kl_cache_view;

/** How a waiter's fill ended. */
enum {
  KL_CACHE_FILLED = 1,    /**< a response was stored: look up again (it may still miss) */
  KL_CACHE_ABANDONED = 0, /**< nothing was stored: go upstream yourself, no coalescing */
};

/**
 * A request waiting for another caller's fill. Caller-owned (embed it in the request's state):
 * set `wake` and `arg`; the rest is the cache's. `wake(arg, outcome)` is called exactly once
 * unless kl_cache_unwait returns 1. It runs on the leader's thread, outside every cache lock
 * (it may call any kl_cache function); making it thread-safe is the caller's job (post to the
 * waiter's worker). The cache stops touching the struct before calling wake, so the struct may
 * be freed inside wake or after kl_cache_unwait returns, whatever it returned.
 */
typedef struct kl_cache_waiter {
  void (*wake)(void *arg, int outcome);
  void *arg;
  /* private */
  struct kl_cache_waiter *next, *prev;
  kl_cache_ticket *on; /* the fill waited on; NULL once detached (protected by the shard lock) */
  unsigned shard;
} kl_cache_waiter;

/** kl_cache_lookup's answers. */
typedef enum kl_cache_result {
  KL_CACHE_BYPASS = 0, /**< go upstream, do not store (not cacheable, HEAD miss, caps reached) */
  KL_CACHE_HIT = 1,    /**< *entry is set: serve it, then kl_cache_entry_release */
  KL_CACHE_LEADER = 2, /**< *ticket is set: fetch, then kl_cache_fill or kl_cache_abandon */
  KL_CACHE_WAIT = 3,   /**< `w` is registered: wait for its wake (or kl_cache_unwait) */
} kl_cache_result;

/** Atomic counters, readable at any time (kl_cache_stats_get). */
typedef struct kl_cache_stats {
  uint64_t hits, misses, stores, evictions; /* evictions: dropped for space, staleness or
                                               replacement */
  uint64_t bytes, entries;                  /* resident now */
  uint64_t coalesced;                       /* lookups that became waiters */
} kl_cache_stats;

/** Creates a cache. NULL with a message in err on bad settings or out of memory. */
kl_cache *kl_cache_new(const kl_cache_conf *conf, char *err, size_t errlen);

/**
 * Frees the cache. No ticket may be outstanding and no waiter registered. Entries still held
 * by readers stay valid until their kl_cache_entry_release. NULL ok.
 */
void kl_cache_free(kl_cache *c);

/**
 * Looks a request up. Any thread. On a miss the caller becomes the LEADER (one per key), or a
 * waiter when another leader is fetching the same key and `w` is given (not NULL) and the
 * waiter cap allows; otherwise BYPASS. A fill older than fill_timeout_ms is taken over: this
 * caller becomes the leader and inherits the old fill's waiters (the old leader may still
 * fill; it then stores but wakes nobody). Returns a kl_cache_result, or -ENOMEM.
 */
int kl_cache_lookup(kl_cache *c, const kl_cache_req *req, kl_cache_waiter *w, uint64_t now_ms,
                    kl_cache_entry **entry, kl_cache_ticket **ticket);

/**
 * Completes a leader's fetch: stores `resp` if storable (see above; `req` must describe the same
 * request as the lookup: its headers give Vary values and Authorization), then wakes the
 * waiters (FILLED if stored, else ABANDONED) on this thread. Consumes the ticket. Returns 1
 * stored, 0 not storable, -ENOMEM (not stored; waiters told ABANDONED).
 */
int kl_cache_fill(kl_cache *c, kl_cache_ticket *t, const kl_cache_req *req,
                  const kl_cache_resp *resp, uint64_t now_ms);

/** Gives up a leader's fetch (upstream failed, client gone, too large): waiters get ABANDONED. */
void kl_cache_abandon(kl_cache *c, kl_cache_ticket *t);

/**
 * Cancels a waiter (its client went away). Returns 1 when it was removed (wake will never be
 * called), 0 when its wake has been called or is being called on another thread (exactly once;
 * `arg` must stay valid for it). Either way the waiter struct is free to reuse on return.
 */
int kl_cache_unwait(kl_cache *c, kl_cache_waiter *w);

/** The entry's contents and its Age at now_ms. */
void kl_cache_entry_view(const kl_cache_entry *e, uint64_t now_ms, kl_cache_view *out);

/** Drops a reference from kl_cache_lookup; the last one frees an evicted entry. Any thread. */
void kl_cache_entry_release(kl_cache_entry *e);

/** Reads the counters. */
void kl_cache_stats_get(const kl_cache *c, kl_cache_stats *out);

/* ---- parsers, exposed for tests and for the proxy ---- */

/** Cache-Control directives keel understands. */
enum {
  KL_CACHE_CC_NO_STORE = 1u << 0,
  KL_CACHE_CC_NO_CACHE = 1u << 1, /* also the qualified form no-cache="field" */
  KL_CACHE_CC_PRIVATE = 1u << 2,  /* also private="field" */
  KL_CACHE_CC_PUBLIC = 1u << 3,
  KL_CACHE_CC_MUST_REVALIDATE = 1u << 4,
  KL_CACHE_CC_PROXY_REVALIDATE = 1u << 5,
  KL_CACHE_CC_NO_TRANSFORM = 1u << 6,
  KL_CACHE_CC_ONLY_IF_CACHED = 1u << 7,
  KL_CACHE_CC_IMMUTABLE = 1u << 8,
};

/** Parsed Cache-Control. Deltas are seconds, -1 when absent, capped at 2^31 (RFC 9111 1.2.2). */
typedef struct kl_cache_cc {
  unsigned flags;
  int64_t max_age, s_maxage, max_stale, min_fresh;
} kl_cache_cc;

/** Sets every field of `cc` to "absent". */
void kl_cache_cc_init(kl_cache_cc *cc);

/**
 * Adds the directives of one Cache-Control value (call again for each field line). Names are
 * case-insensitive; values are tokens or quoted strings; unknown directives and junk up to the
 * next comma (outside quotes) are skipped. The first occurrence of a delta directive wins; an
 * invalid delta (not digits) counts as 0, so the response is stale (RFC 9111 4.2.1).
 */
void kl_cache_cc_parse(kl_cache_cc *cc, const char *v, size_t len);

/**
 * Parses an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") into Unix seconds; -1 if invalid
 * (other formats, impossible dates, years before 1970). The day name is not checked against
 * the date.
 */
int64_t kl_cache_date_parse(const char *v, size_t len);

#endif
