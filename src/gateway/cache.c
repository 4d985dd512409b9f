/* cache.c - in-memory HTTP response cache: sharded LRU bounded in bytes, Vary, request coalescing. */
#include "gateway/cache.h"

#include <errno.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/*
 * Locking: each shard's mutex protects its table, LRU list, byte count, pending fills and the
 * waiters linked on them (kl_cache_waiter.on/next/prev). Entries are immutable once linked; their
 * reference count is atomic: the shard holds one while the entry is indexed, each reader one.
 * Nothing is freed and no wake is called while a shard lock is held.
 */

#define SHARD_BUCKETS_MIN 64u
#define SHARD_BUCKETS_MAX (1u << 24)
#define WAKE_BATCH 32
#define DELTA_MAX INT64_C(2147483648) /* RFC 9111 1.2.2 */
#define VARY_NAME_MAX 256

struct kl_cache_entry {
  atomic_uint refs;
  kl_cache_entry *hnext;        /* hash chain */
  kl_cache_entry *lprev, *lnext; /* LRU: head is the most recently used */
  uint64_t hash;
  uint64_t tick; /* shard's use counter at the last store or hit: the oldest variant goes first */
  uint64_t received_ms;
  uint64_t initial_age, lifetime; /* seconds */
  size_t charge;
  int status;
  bool auth_ok; /* may answer a request carrying Authorization (RFC 9111 3.5) */
  uint32_t key_len, vary_len, nvary;
  size_t headers_len, body_len;
  const char *key, *vary, *headers, *body; /* into data */
  char data[];
};

struct kl_cache_ticket {
  kl_cache_ticket *next, *prev; /* the shard's pending list, while indexed */
  kl_cache_waiter *waiters;     /* doubly linked, NULL-terminated */
  unsigned nwaiters;
  unsigned shard;
  bool indexed;
  uint64_t hash, deadline_ms;
  size_t key_len;
  char key[];
};

typedef struct shard {
  alignas(64) pthread_mutex_t mu;
  kl_cache_entry **buckets;
  size_t nbuckets, n, bytes;
  uint64_t tick;
  kl_cache_entry *lru_head, *lru_tail;
  kl_cache_ticket *pending;
  unsigned npending;
} shard;

struct kl_cache {
  kl_cache_conf conf;
  size_t shard_cap;
  uint64_t seed;
  shard shards[KL_CACHE_SHARDS];
  atomic_uint_fast64_t hits, misses, stores, evictions, bytes, entries, coalesced;
};

static void add(atomic_uint_fast64_t *a, int64_t v) {
  atomic_fetch_add_explicit(a, (uint_fast64_t)v, memory_order_relaxed);
}

/* ---- small text helpers ---- */

static int lower(int ch) {
  return ch >= 'A' && ch <= 'Z' ? ch + 32 : ch;
}

static bool ieq(const char *a, size_t alen, const char *b, size_t blen) {
  if (alen != blen) return false;
  for (size_t i = 0; i < alen; i++)
    if (lower((unsigned char)a[i]) != lower((unsigned char)b[i])) return false;
  return true;
}

static bool ows(char ch) {
  return ch == ' ' || ch == '\t';
}

static void trim(const char **p, size_t *len) {
  while (*len && ows(**p)) (*p)++, (*len)--;
  while (*len && ows((*p)[*len - 1])) (*len)--;
}

/* RFC 9110 tchar */
static bool tchar(unsigned char ch) {
  if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')) return true;
  return ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* ---- Cache-Control ---- */

void kl_cache_cc_init(kl_cache_cc *cc) {
  cc->flags = 0;
  cc->max_age = cc->s_maxage = cc->max_stale = cc->min_fresh = -1;
}

/* delta-seconds, optionally quoted (recipients accept both forms: RFC 9111 5.2); invalid -> 0 */
static int64_t delta(const char *v, size_t len, bool bad) {
  if (bad || len == 0) return 0;
  int64_t n = 0;
  for (size_t i = 0; i < len; i++) {
    if (v[i] < '0' || v[i] > '9') return 0;
    if (n < DELTA_MAX) n = n * 10 + (v[i] - '0');
  }
  return n > DELTA_MAX ? DELTA_MAX : n;
}

static void cc_apply(kl_cache_cc *cc, const char *name, size_t nlen, const char *val, size_t vlen,
                     bool has_val, bool bad) {
  static const struct {
    const char *name;
    unsigned flag;
    bool restrictive; /* honoured even when malformed: the safe reading */
  } flags[] = {
      {"no-store", KL_CACHE_CC_NO_STORE, true},
      {"no-cache", KL_CACHE_CC_NO_CACHE, true},
      {"private", KL_CACHE_CC_PRIVATE, true},
      {"must-revalidate", KL_CACHE_CC_MUST_REVALIDATE, true},
      {"proxy-revalidate", KL_CACHE_CC_PROXY_REVALIDATE, true},
      {"public", KL_CACHE_CC_PUBLIC, false},
      {"no-transform", KL_CACHE_CC_NO_TRANSFORM, false},
      {"only-if-cached", KL_CACHE_CC_ONLY_IF_CACHED, false},
      {"immutable", KL_CACHE_CC_IMMUTABLE, false},
  };
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
    if (!ieq(name, nlen, flags[i].name, strlen(flags[i].name))) continue;
    if (flags[i].restrictive || (!bad && !has_val)) cc->flags |= flags[i].flag;
    return;
  }
  int64_t *d = NULL;
  if (ieq(name, nlen, "max-age", 7)) d = &cc->max_age;
  else if (ieq(name, nlen, "s-maxage", 8)) d = &cc->s_maxage;
  else if (ieq(name, nlen, "max-stale", 9)) d = &cc->max_stale;
  else if (ieq(name, nlen, "min-fresh", 9)) d = &cc->min_fresh;
  if (!d || *d >= 0) return; /* unknown, or not the first occurrence */
  if (!has_val && d == &cc->max_stale) *d = DELTA_MAX; /* max-stale alone: any staleness */
  else *d = delta(val, vlen, bad || !has_val);
}

void kl_cache_cc_parse(kl_cache_cc *cc, const char *v, size_t len) {
  size_t i = 0;
  while (i < len) {
    while (i < len && (ows(v[i]) || v[i] == ',')) i++;
    if (i >= len) break;
    size_t ns = i;
    while (i < len && tchar((unsigned char)v[i])) i++;
    size_t nlen = i - ns;
    const char *val = NULL;
    size_t vlen = 0;
    bool has_val = false, bad = nlen == 0;
    while (i < len && ows(v[i])) i++;
    if (!bad && i < len && v[i] == '=') {
      has_val = true;
      i++;
      while (i < len && ows(v[i])) i++;
      if (i < len && v[i] == '"') {
        size_t vs = ++i;
        while (i < len && v[i] != '"') {
          if (v[i] == '\\') bad = true, i++; /* escapes never occur in values keel reads */
          i++;
        }
        if (i >= len) bad = true, i = len; /* unterminated */
        val = v + vs, vlen = i - vs;
        if (i < len) i++;
      } else {
        size_t vs = i;
        while (i < len && tchar((unsigned char)v[i])) i++;
        val = v + vs, vlen = i - vs;
      }
      while (i < len && ows(v[i])) i++;
    }
    if (i < len && v[i] != ',') {
      bad = true; /* junk up to the next comma outside quotes */
      bool q = false;
      for (; i < len && (q || v[i] != ','); i++) {
        if (v[i] == '\\' && q) i++;
        else if (v[i] == '"') q = !q;
      }
      if (i > len) i = len;
    }
    if (nlen) cc_apply(cc, v + ns, nlen, val, vlen, has_val, bad);
  }
}

/* ---- IMF-fixdate ---- */

static int num(const char *p, int n) {
  int v = 0;
  for (int i = 0; i < n; i++) {
    if (p[i] < '0' || p[i] > '9') return -1;
    v = v * 10 + (p[i] - '0');
  }
  return v;
}

/* days since 1970-01-01 of a proleptic Gregorian date (the era-based civil calendar formula) */
static int64_t days_from_civil(int64_t y, int m, int d) {
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  int64_t yoe = y - era * 400;
  int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

int64_t kl_cache_date_parse(const char *v, size_t len) {
  static const char days[] = "MonTueWedThuFriSatSun";
  static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
  /* "Sun, 06 Nov 1994 08:49:37 GMT" */
  if (len != 29 || v[3] != ',' || v[4] != ' ' || v[7] != ' ' || v[11] != ' ' || v[16] != ' ' ||
      v[19] != ':' || v[22] != ':' || memcmp(v + 25, " GMT", 4) != 0)
    return -1;
  bool dayok = false;
  for (int i = 0; i < 7; i++) dayok |= memcmp(v, days + 3 * i, 3) == 0;
  int mon = 0;
  for (int i = 0; i < 12; i++)
    if (memcmp(v + 8, months + 3 * i, 3) == 0) mon = i + 1;
  int d = num(v + 5, 2), y = num(v + 12, 4), h = num(v + 17, 2), mi = num(v + 20, 2),
      s = num(v + 23, 2);
  if (!dayok || !mon || d < 1 || y < 1970 || h < 0 || h > 23 || mi < 0 || mi > 59 || s < 0 || s > 60)
    return -1;
  static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (d > mdays[mon - 1] || (mon == 2 && d == 29 && !leap)) return -1;
  return days_from_civil(y, mon, d) * 86400 + h * 3600 + mi * 60 + s;
}

/* ---- keys and hashing ---- */

static uint64_t mix(uint64_t h) {
  h ^= h >> 33;
  h *= UINT64_C(0xff51afd7ed558ccd);
  h ^= h >> 33;
  h *= UINT64_C(0xc4ceb9fe1a85ec53);
  return h ^ (h >> 33);
}

/* Seeded so that colliding paths cannot be precomputed; not a cryptographic MAC. */
static uint64_t hash(uint64_t seed, const char *p, size_t len) {
  uint64_t h = seed ^ (len * UINT64_C(0x9e3779b97f4a7c15));
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    h = mix(h ^ w) + UINT64_C(0x9e3779b97f4a7c15);
  }
  uint64_t w = 0;
  memcpy(&w, p + i, len - i);
  return mix(h ^ w ^ (uint64_t)(len - i) << 56);
}

/* "host\npath?query" into buf; 0 when it does not fit */
static size_t make_key(const kl_cache_req *r, char *buf, size_t cap) {
  size_t n = r->host_len + 1 + r->path_len + 1 + r->query_len;
  if (n > cap) return 0;
  for (size_t i = 0; i < r->host_len; i++) buf[i] = (char)lower((unsigned char)r->host[i]);
  size_t o = r->host_len;
  buf[o++] = '\n';
  if (r->path_len) memcpy(buf + o, r->path, r->path_len);
  o += r->path_len;
  buf[o++] = '?';
  if (r->query_len) memcpy(buf + o, r->query, r->query_len);
  return n;
}

/* ---- request headers ---- */

static bool req_has(const kl_cache_req *r, const char *name) {
  for (size_t i = 0; i < r->nhdrs; i++)
    if (ieq(r->hbuf + r->hdrs[i].name_off, r->hdrs[i].name_len, name, strlen(name))) return true;
  return false;
}

/*
 * The request's value of `name`: field lines joined with "," (RFC 9110 5.3), each trimmed.
 * Returns the length, -1 when absent, -2 when longer than KL_CACHE_VARY_VALUE_MAX. out may be
 * NULL (length only).
 */
static long req_value(const kl_cache_req *r, const char *name, size_t nlen, char *out) {
  long n = -1;
  for (size_t i = 0; i < r->nhdrs; i++) {
    const kl_header *h = &r->hdrs[i];
    if (!ieq(r->hbuf + h->name_off, h->name_len, name, nlen)) continue;
    const char *v = r->hbuf + h->value_off;
    size_t vlen = h->value_len;
    trim(&v, &vlen);
    size_t o = n < 0 ? 0 : (size_t)n + 1;
    if (o + vlen > KL_CACHE_VARY_VALUE_MAX) return -2;
    if (out && n >= 0) out[n] = ',';
    if (out && vlen) memcpy(out + o, v, vlen);
    n = (long)(o + vlen);
  }
  return n;
}

/*
 * Vary data: per name, [name length: 1 byte][lowercased name][value length: 2 bytes, 0xffff
 * when the request lacked the header][value]. Encodes into out (NULL: length only); -1 if a
 * value is too long.
 */
typedef struct strv {
  const char *p;
  size_t len;
} strv;

static long vary_encode(const kl_cache_req *r, const strv *names, size_t n, char *out) {
  size_t o = 0;
  char val[KL_CACHE_VARY_VALUE_MAX];
  for (size_t i = 0; i < n; i++) {
    if (out) {
      out[o] = (char)names[i].len;
      for (size_t j = 0; j < names[i].len; j++)
        out[o + 1 + j] = (char)lower((unsigned char)names[i].p[j]);
    }
    o += 1 + names[i].len;
    /* cppcheck-suppress legacyUninitvar ; val is req_value's output buffer */
    long vl = req_value(r, names[i].p, names[i].len, out ? val : NULL);
    if (vl == -2) return -1;
    uint16_t enc = vl < 0 ? 0xffff : (uint16_t)vl;
    if (out) memcpy(out + o, &enc, 2);
    o += 2;
    if (vl > 0) {
      if (out) memcpy(out + o, val, (size_t)vl);
      o += (size_t)vl;
    }
  }
  return (long)o;
}

static bool vary_match(const kl_cache_entry *e, const kl_cache_req *r) {
  char val[KL_CACHE_VARY_VALUE_MAX];
  size_t o = 0;
  for (uint32_t i = 0; i < e->nvary; i++) {
    size_t nlen = (unsigned char)e->vary[o];
    const char *name = e->vary + o + 1;
    o += 1 + nlen;
    uint16_t enc;
    memcpy(&enc, e->vary + o, 2);
    o += 2;
    long vl = req_value(r, name, nlen, val);
    if (vl == -2) return false;
    if (enc == 0xffff) {
      if (vl != -1) return false;
      continue;
    }
    if (vl != (long)enc || memcmp(val, e->vary + o, enc) != 0) return false;
    o += enc;
  }
  return true;
}

/* ---- entries in a shard (lock held) ---- */

static void entry_unref(kl_cache_entry *e, kl_cache_entry **dead) {
  if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1) {
    e->hnext = *dead;
    *dead = e;
  }
}

static void free_dead(kl_cache_entry *dead) {
  while (dead) {
    kl_cache_entry *n = dead->hnext;
    free(dead);
    dead = n;
  }
}

static void lru_unlink(shard *s, kl_cache_entry *e) {
  if (e->lprev) e->lprev->lnext = e->lnext;
  else s->lru_head = e->lnext;
  if (e->lnext) e->lnext->lprev = e->lprev;
  else s->lru_tail = e->lprev;
  e->lprev = e->lnext = NULL;
}

static void lru_push(shard *s, kl_cache_entry *e) {
  e->lprev = NULL;
  e->lnext = s->lru_head;
  if (s->lru_head) s->lru_head->lprev = e;
  else s->lru_tail = e;
  s->lru_head = e;
  e->tick = ++s->tick;
}

/* Unlinks e from the table and the LRU list and drops the shard's reference. */
static void drop(kl_cache *c, shard *s, kl_cache_entry *e, kl_cache_entry **dead) {
  kl_cache_entry **pp = &s->buckets[e->hash & (s->nbuckets - 1)];
  while (*pp != e) pp = &(*pp)->hnext;
  *pp = e->hnext;
  lru_unlink(s, e);
  s->n--;
  s->bytes -= e->charge;
  add(&c->bytes, -(int64_t)e->charge);
  add(&c->entries, -1);
  add(&c->evictions, 1);
  entry_unref(e, dead);
}

static void grow(shard *s) {
  if (s->n <= s->nbuckets || s->nbuckets >= SHARD_BUCKETS_MAX) return;
  size_t nb = s->nbuckets * 2;
  kl_cache_entry **b = calloc(nb, sizeof *b);
  if (!b) return; /* longer chains, still correct */
  for (size_t i = 0; i < s->nbuckets; i++) {
    kl_cache_entry *e = s->buckets[i];
    while (e) {
      kl_cache_entry *n = e->hnext;
      e->hnext = b[e->hash & (nb - 1)];
      b[e->hash & (nb - 1)] = e;
      e = n;
    }
  }
  free(s->buckets);
  s->buckets = b;
  s->nbuckets = nb;
}

static bool same_key(const kl_cache_entry *e, uint64_t h, const char *key, size_t klen) {
  return e->hash == h && e->key_len == klen && memcmp(e->key, key, klen) == 0;
}

static uint64_t current_age(const kl_cache_entry *e, uint64_t now_ms) {
  uint64_t resident = now_ms > e->received_ms ? (now_ms - e->received_ms) / 1000 : 0;
  return e->initial_age + resident;
}

/* Links a new entry: replaces its own variant, keeps max_variants per key, evicts to the cap. */
static void insert(kl_cache *c, shard *s, kl_cache_entry *e, kl_cache_entry **dead) {
  size_t bi = e->hash & (s->nbuckets - 1);
  unsigned nvar = 0;
  kl_cache_entry *oldest = NULL;
  for (kl_cache_entry *x = s->buckets[bi], *next; x; x = next) {
    next = x->hnext;
    if (!same_key(x, e->hash, e->key, e->key_len)) continue;
    if (x->nvary == e->nvary && x->vary_len == e->vary_len &&
        memcmp(x->vary, e->vary, e->vary_len) == 0) {
      drop(c, s, x, dead);
      continue;
    }
    nvar++;
    if (!oldest || x->tick < oldest->tick) oldest = x;
  }
  if (nvar >= c->conf.max_variants && oldest) drop(c, s, oldest, dead);
  e->hnext = s->buckets[bi];
  s->buckets[bi] = e;
  lru_push(s, e);
  s->n++;
  s->bytes += e->charge;
  add(&c->bytes, (int64_t)e->charge);
  add(&c->entries, 1);
  add(&c->stores, 1);
  while (s->bytes > c->shard_cap && s->lru_tail && s->lru_tail != e) drop(c, s, s->lru_tail, dead);
  grow(s);
}

/* ---- creation ---- */

kl_cache *kl_cache_new(const kl_cache_conf *conf, char *err, size_t errlen) {
  kl_cache_conf cf = conf ? *conf : (kl_cache_conf){0};
  if (!cf.max_bytes) cf.max_bytes = (size_t)64 << 20;
  size_t shard_cap = cf.max_bytes / KL_CACHE_SHARDS;
  if (!cf.max_object) cf.max_object = shard_cap < ((size_t)1 << 20) ? shard_cap : (size_t)1 << 20;
  if (!cf.max_variants) cf.max_variants = 8;
  if (!cf.max_waiters) cf.max_waiters = 256;
  if (!cf.fill_timeout_ms) cf.fill_timeout_ms = 30000;
  if (cf.max_object > shard_cap) {
    snprintf(err, errlen, "cache: max_object (%zu) exceeds memory / %d (%zu)", cf.max_object,
             KL_CACHE_SHARDS, shard_cap);
    return NULL;
  }
  if (cf.max_variants > KL_CACHE_VARIANTS_MAX || cf.max_waiters > KL_CACHE_WAITERS_MAX) {
    snprintf(err, errlen, "cache: max_variants (<= %d) or max_waiters (<= %d) too large",
             KL_CACHE_VARIANTS_MAX, KL_CACHE_WAITERS_MAX);
    return NULL;
  }
  kl_cache *c = aligned_alloc(64, (sizeof *c + 63) & ~(size_t)63);
  if (!c) goto oom;
  memset(c, 0, sizeof *c);
  c->conf = cf;
  c->shard_cap = shard_cap;
  if (getrandom(&c->seed, sizeof c->seed, GRND_NONBLOCK) != (ssize_t)sizeof c->seed) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    c->seed = mix((uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec << 30 ^ (uintptr_t)c);
  }
  int i = 0;
  for (; i < KL_CACHE_SHARDS; i++) {
    shard *s = &c->shards[i];
    s->nbuckets = SHARD_BUCKETS_MIN;
    s->buckets = calloc(s->nbuckets, sizeof *s->buckets);
    if (!s->buckets || pthread_mutex_init(&s->mu, NULL) != 0) {
      free(s->buckets);
      break;
    }
  }
  if (i == KL_CACHE_SHARDS) return c;
  while (i-- > 0) {
    pthread_mutex_destroy(&c->shards[i].mu);
    free(c->shards[i].buckets);
  }
  free(c);
oom:
  snprintf(err, errlen, "cache: out of memory");
  return NULL;
}

void kl_cache_free(kl_cache *c) {
  if (!c) return;
  for (int i = 0; i < KL_CACHE_SHARDS; i++) {
    shard *s = &c->shards[i];
    kl_cache_entry *dead = NULL;
    while (s->lru_tail) drop(c, s, s->lru_tail, &dead);
    free_dead(dead);
    free(s->buckets);
    pthread_mutex_destroy(&s->mu);
  }
  free(c);
}

/* ---- lookups, fills, waiters ---- */

static kl_cache_ticket *ticket_new(uint64_t h, unsigned si, const char *key, size_t klen,
                                   uint64_t deadline) {
  kl_cache_ticket *t = malloc(sizeof *t + klen);
  if (!t) return NULL;
  memset(t, 0, sizeof *t);
  t->hash = h;
  t->shard = si;
  t->deadline_ms = deadline;
  t->key_len = klen;
  memcpy(t->key, key, klen);
  return t;
}

static void pending_link(shard *s, kl_cache_ticket *t) {
  t->prev = NULL;
  t->next = s->pending;
  if (s->pending) s->pending->prev = t;
  s->pending = t;
  t->indexed = true;
  s->npending++;
}

static void pending_unlink(shard *s, kl_cache_ticket *t) {
  if (!t->indexed) return;
  if (t->prev) t->prev->next = t->next;
  else s->pending = t->next;
  if (t->next) t->next->prev = t->prev;
  t->indexed = false;
  s->npending--;
}

static void waiter_unlink(kl_cache_waiter *w) {
  kl_cache_ticket *t = w->on;
  if (w->prev) w->prev->next = w->next;
  /* NOLINTNEXTLINE(clang-analyzer-core.NullDereference): a linked waiter has `on` set */
  else t->waiters = w->next;
  if (w->next) w->next->prev = w->prev;
  t->nwaiters--;
  w->on = NULL;
  w->next = w->prev = NULL;
}

int kl_cache_lookup(kl_cache *c, const kl_cache_req *req, kl_cache_waiter *w, uint64_t now_ms,
                    kl_cache_entry **entry, kl_cache_ticket **ticket) {
  *entry = NULL;
  *ticket = NULL;
  if (w) w->on = NULL, w->next = w->prev = NULL;
  bool head = ieq(req->method, req->method_len, "HEAD", 4);
  if (!head && !(req->method_len == 3 && memcmp(req->method, "GET", 3) == 0))
    return KL_CACHE_BYPASS;
  kl_cache_cc cc;
  kl_cache_cc_init(&cc);
  bool has_cc = false, pragma_no_cache = false;
  for (size_t i = 0; i < req->nhdrs; i++) {
    const kl_header *h = &req->hdrs[i];
    const char *n = req->hbuf + h->name_off, *v = req->hbuf + h->value_off;
    if (ieq(n, h->name_len, "cache-control", 13)) {
      has_cc = true;
      kl_cache_cc_parse(&cc, v, h->value_len);
    } else if (ieq(n, h->name_len, "pragma", 6)) {
      kl_cache_cc pc;
      kl_cache_cc_init(&pc);
      kl_cache_cc_parse(&pc, v, h->value_len);
      pragma_no_cache |= (pc.flags & KL_CACHE_CC_NO_CACHE) != 0;
    }
  }
  if (cc.flags & KL_CACHE_CC_NO_STORE) return KL_CACHE_BYPASS;
  bool reload = (cc.flags & KL_CACHE_CC_NO_CACHE) || cc.max_age == 0 ||
                (!has_cc && pragma_no_cache);
  bool auth = req_has(req, "authorization");
  char key[KL_CACHE_KEY_MAX];
  size_t klen = make_key(req, key, sizeof key);
  if (!klen) return KL_CACHE_BYPASS;
  uint64_t h = hash(c->seed, key, klen);
  unsigned si = (unsigned)(h >> 60) % KL_CACHE_SHARDS;
  shard *s = &c->shards[si];
  kl_cache_entry *dead = NULL;
  int rc = KL_CACHE_BYPASS;

  pthread_mutex_lock(&s->mu);
  if (!reload) {
    for (kl_cache_entry *e = s->buckets[h & (s->nbuckets - 1)], *next; e; e = next) {
      next = e->hnext;
      if (!same_key(e, h, key, klen)) continue;
      uint64_t age = current_age(e, now_ms);
      if (age >= e->lifetime) {
        drop(c, s, e, &dead); /* stale, and keel does not revalidate */
        continue;
      }
      if ((auth && !e->auth_ok) || (cc.max_age > 0 && age > (uint64_t)cc.max_age) ||
          !vary_match(e, req))
        continue;
      atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
      lru_unlink(s, e);
      lru_push(s, e);
      *entry = e;
      rc = KL_CACHE_HIT;
      goto out;
    }
  }
  if (head) goto out; /* a HEAD response has no body to store */
  kl_cache_ticket *p = NULL;
  if (!reload)
    for (p = s->pending; p; p = p->next)
      if (p->hash == h && p->key_len == klen && memcmp(p->key, key, klen) == 0) break;
  if (p && now_ms < p->deadline_ms) {
    if (w && p->nwaiters < c->conf.max_waiters) {
      w->shard = si;
      w->on = p;
      w->prev = NULL;
      w->next = p->waiters;
      if (p->waiters) p->waiters->prev = w;
      p->waiters = w;
      p->nwaiters++;
      add(&c->coalesced, 1);
      rc = KL_CACHE_WAIT;
    }
    goto out;
  }
  if (!p && !reload && s->npending >= KL_CACHE_PENDING_MAX) goto out;
  kl_cache_ticket *t = ticket_new(h, si, key, klen, now_ms + c->conf.fill_timeout_ms);
  if (!t) {
    rc = -ENOMEM;
    goto out;
  }
  if (p) { /* a fill past its deadline: take it over with its waiters */
    pending_unlink(s, p);
    t->waiters = p->waiters;
    t->nwaiters = p->nwaiters;
    for (kl_cache_waiter *x = t->waiters; x; x = x->next) x->on = t;
    p->waiters = NULL;
    p->nwaiters = 0;
  }
  if (!reload) pending_link(s, t);
  *ticket = t;
  rc = KL_CACHE_LEADER;
out:
  pthread_mutex_unlock(&s->mu);
  free_dead(dead);
  add(rc == KL_CACHE_HIT ? &c->hits : &c->misses, 1);
  return rc;
}

int kl_cache_unwait(kl_cache *c, kl_cache_waiter *w) {
  shard *s = &c->shards[w->shard % KL_CACHE_SHARDS];
  pthread_mutex_lock(&s->mu);
  int removed = w->on != NULL;
  if (removed) waiter_unlink(w);
  pthread_mutex_unlock(&s->mu);
  return removed;
}

/* Ends a ticket: unindexes it, links `e` (may be NULL), wakes the waiters, frees the ticket. */
static void finish(kl_cache *c, kl_cache_ticket *t, kl_cache_entry *e) {
  shard *s = &c->shards[t->shard];
  int outcome = e ? KL_CACHE_FILLED : KL_CACHE_ABANDONED;
  kl_cache_entry *dead = NULL;
  pthread_mutex_lock(&s->mu);
  pending_unlink(s, t);
  if (e) insert(c, s, e, &dead);
  /* Waiters leave in batches: each is detached under the lock (its struct is not touched after),
   * then woken without it; kl_cache_unwait meanwhile finds the rest still linked. */
  for (;;) {
    struct {
      void (*wake)(void *, int);
      void *arg;
    } batch[WAKE_BATCH];
    int n = 0;
    while (t->waiters && n < WAKE_BATCH) {
      kl_cache_waiter *w = t->waiters;
      batch[n].wake = w->wake;
      batch[n].arg = w->arg;
      n++;
      waiter_unlink(w);
    }
    pthread_mutex_unlock(&s->mu);
    free_dead(dead);
    dead = NULL;
    for (int i = 0; i < n; i++) batch[i].wake(batch[i].arg, outcome);
    if (n < WAKE_BATCH) break;
    pthread_mutex_lock(&s->mu);
  }
  free(t);
}

void kl_cache_abandon(kl_cache *c, kl_cache_ticket *t) {
  if (t) finish(c, t, NULL);
}

/* Response header names that are never stored (the caller writes its own or they are per hop /
 * per client). */
static bool stripped(const char *n, size_t len) {
  static const char *const names[] = {"age",           "date",       "connection",
                                      "keep-alive",    "proxy-connection",
                                      "transfer-encoding", "content-length", "set-cookie"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (ieq(n, len, names[i], strlen(names[i]))) return true;
  return false;
}

static bool status_cacheable(int st) {
  switch (st) {
  case 200: case 203: case 204: case 300: case 301: case 308:
  case 404: case 405: case 410: case 414: case 501: return true;
  default: return false;
  }
}

/* Iterates "Name: value\r\n" lines: returns false at the end. Lines without ':' have nlen 0. */
typedef struct line_it {
  const char *p, *end;
} line_it;

static bool next_line(line_it *it, strv *line, strv *name, strv *value) {
  if (it->p >= it->end) return false;
  const char *nl = memchr(it->p, '\n', (size_t)(it->end - it->p));
  const char *stop = nl ? nl + 1 : it->end;
  line->p = it->p;
  line->len = (size_t)(stop - it->p);
  size_t len = (size_t)((nl ? nl : it->end) - it->p);
  if (len && it->p[len - 1] == '\r') len--;
  const char *colon = memchr(it->p, ':', len);
  name->p = it->p;
  name->len = colon ? (size_t)(colon - it->p) : 0;
  value->p = colon ? colon + 1 : it->p + len;
  value->len = colon ? len - name->len - 1 : 0;
  trim(&value->p, &value->len);
  it->p = stop;
  return true;
}

/* Builds the entry to store for resp, or returns 0 (not storable) / -ENOMEM. */
static int build(kl_cache *c, const kl_cache_ticket *t, const kl_cache_req *req,
                 const kl_cache_resp *resp, uint64_t now_ms, kl_cache_entry **out) {
  *out = NULL;
  if (!status_cacheable(resp->status)) return 0;
  if (resp->headers_len > c->conf.max_object ||
      resp->body_len > c->conf.max_object - resp->headers_len)
    return 0;
  kl_cache_cc cc;
  kl_cache_cc_init(&cc);
  int64_t date = -2, expires = -2, age = 0; /* -2: absent */
  bool has_age = false;
  strv vary[KL_CACHE_VARY_MAX];
  size_t nvary = 0;
  line_it it = {resp->headers, resp->headers + resp->headers_len};
  strv line, n, v;
  while (next_line(&it, &line, &n, &v)) {
    if (ieq(n.p, n.len, "cache-control", 13)) kl_cache_cc_parse(&cc, v.p, v.len);
    else if (ieq(n.p, n.len, "date", 4) && date == -2) date = kl_cache_date_parse(v.p, v.len);
    else if (ieq(n.p, n.len, "expires", 7) && expires == -2)
      expires = kl_cache_date_parse(v.p, v.len);
    else if (ieq(n.p, n.len, "age", 3) && !has_age) {
      has_age = true;
      age = delta(v.p, v.len, false); /* invalid Age: 0 */
    } else if (ieq(n.p, n.len, "vary", 4)) {
      size_t i = 0;
      while (i < v.len) { /* a comma list of field names */
        while (i < v.len && (ows(v.p[i]) || v.p[i] == ',')) i++;
        size_t s0 = i;
        while (i < v.len && v.p[i] != ',') i++;
        strv name = {v.p + s0, i - s0};
        trim(&name.p, &name.len);
        if (!name.len) continue;
        if (name.len == 1 && name.p[0] == '*') return 0; /* varies on everything */
        for (size_t k = 0; k < name.len; k++)
          if (!tchar((unsigned char)name.p[k])) return 0;
        bool dup = false;
        for (size_t k = 0; k < nvary; k++) dup |= ieq(vary[k].p, vary[k].len, name.p, name.len);
        if (dup) continue;
        if (nvary == KL_CACHE_VARY_MAX || name.len >= VARY_NAME_MAX) return 0;
        vary[nvary++] = name;
      }
    }
  }
  if (cc.flags & (KL_CACHE_CC_NO_STORE | KL_CACHE_CC_PRIVATE | KL_CACHE_CC_NO_CACHE)) return 0;
  int64_t lifetime;
  if (cc.s_maxage >= 0) lifetime = cc.s_maxage;
  else if (cc.max_age >= 0) lifetime = cc.max_age;
  else if (expires != -2) lifetime = expires >= 0 && date >= 0 ? expires - date : 0;
  else return 0; /* no explicit freshness: keel does not guess */
  if (lifetime <= age) return 0; /* already stale */
  bool auth_ok = (cc.flags & (KL_CACHE_CC_PUBLIC | KL_CACHE_CC_MUST_REVALIDATE)) ||
                 cc.s_maxage >= 0;
  if (!auth_ok && req_has(req, "authorization")) return 0;
  long vlen = vary_encode(req, vary, nvary, NULL);
  if (vlen < 0) return 0;

  size_t alloc = sizeof(kl_cache_entry) + t->key_len + (size_t)vlen + resp->headers_len +
                 resp->body_len;
  size_t charge = ((alloc + 15) & ~(size_t)15) + KL_CACHE_ENTRY_OVERHEAD;
  if (charge > c->shard_cap) return 0;
  kl_cache_entry *e = malloc(alloc);
  if (!e) return -ENOMEM;
  memset(e, 0, sizeof *e);
  atomic_init(&e->refs, 1);
  e->hash = t->hash;
  e->received_ms = now_ms;
  e->initial_age = (uint64_t)age;
  e->lifetime = (uint64_t)lifetime;
  e->charge = charge;
  e->status = resp->status;
  e->auth_ok = auth_ok;
  char *d = e->data;
  e->key = d;
  e->key_len = (uint32_t)t->key_len;
  memcpy(d, t->key, t->key_len);
  d += t->key_len;
  e->vary = d;
  e->vary_len = (uint32_t)vlen;
  e->nvary = (uint32_t)nvary;
  vary_encode(req, vary, nvary, d);
  d += vlen;
  e->headers = d;
  it = (line_it){resp->headers, resp->headers + resp->headers_len};
  while (next_line(&it, &line, &n, &v)) {
    if (!n.len || stripped(n.p, n.len)) continue;
    memcpy(d, line.p, line.len);
    d += line.len;
  }
  e->headers_len = (size_t)(d - e->headers);
  e->body = d;
  e->body_len = resp->body_len;
  if (resp->body_len) memcpy(d, resp->body, resp->body_len);
  *out = e;
  return 1;
}

int kl_cache_fill(kl_cache *c, kl_cache_ticket *t, const kl_cache_req *req,
                  const kl_cache_resp *resp, uint64_t now_ms) {
  kl_cache_entry *e = NULL;
  int rc = build(c, t, req, resp, now_ms, &e);
  finish(c, t, e);
  return rc;
}

void kl_cache_entry_view(const kl_cache_entry *e, uint64_t now_ms, kl_cache_view *out) {
  out->status = e->status;
  out->headers = e->headers;
  out->headers_len = e->headers_len;
  out->body = e->body;
  out->body_len = e->body_len;
  out->age = current_age(e, now_ms);
}

void kl_cache_entry_release(kl_cache_entry *e) {
  if (e && atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1) free(e);
}

void kl_cache_stats_get(const kl_cache *c, kl_cache_stats *out) {
  out->hits = atomic_load_explicit(&c->hits, memory_order_relaxed);
  out->misses = atomic_load_explicit(&c->misses, memory_order_relaxed);
  out->stores = atomic_load_explicit(&c->stores, memory_order_relaxed);
  out->evictions = atomic_load_explicit(&c->evictions, memory_order_relaxed);
  out->bytes = atomic_load_explicit(&c->bytes, memory_order_relaxed);
  out->entries = atomic_load_explicit(&c->entries, memory_order_relaxed);
  out->coalesced = atomic_load_explicit(&c->coalesced, memory_order_relaxed);
}
