/* ratelimit.c - GCRA token buckets: a sharded LRU table per process, a Lua script in Redis. */
#include "gateway/ratelimit.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define INC(x) atomic_store_explicit(&(x), atomic_load_explicit(&(x), memory_order_relaxed) + 1, \
                                     memory_order_relaxed)

#define NS_PER_MS 1000000ull

/*
 * The global decision. Time is Redis's (TIME), in microseconds since 2023-11-14 (an offset
 * keeps the numbers far below 2^53, where Lua's doubles stay exact to well under 1 us).
 * Returns {allowed, remaining, retry_after_ms, reset_ms}; the key expires when the bucket
 * would be full again (a missing key is a full bucket).
 */
const char kl_rl_gcra_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])\n"
    "local T = tonumber(ARGV[1])\n"
    "local tau = T * tonumber(ARGV[2])\n"
    "local tat = tonumber(redis.call('GET', KEYS[1]))\n"
    "if not tat or tat < now then tat = now end\n"
    "local new_tat = tat + T * tonumber(ARGV[3])\n"
    "if new_tat > now + tau then\n"
    "  return {0, 0, math.ceil((new_tat - tau - now) / 1000), math.ceil((tat - now) / 1000)}\n"
    "end\n"
    "local ttl = math.ceil((new_tat - now) / 1000)\n"
    "redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', ttl)\n"
    "return {1, math.floor((now + tau - new_tat) / T + 1e-6), 0, ttl}\n";

/* ---- limits ---------------------------------------------------------------------- */

int kl_rl_parse_rate(const char *s, uint32_t *count, uint32_t *period_ms) {
  char *end;
  errno = 0;
  if (*s < '0' || *s > '9') return -EINVAL;
  unsigned long n = strtoul(s, &end, 10);
  if (errno || n == 0 || n > UINT32_MAX || *end != '/') return -EINVAL;
  static const struct {
    const char *unit;
    uint32_t ms;
  } units[] = {{"s", 1000}, {"second", 1000}, {"m", 60000}, {"min", 60000},
               {"minute", 60000}, {"h", 3600000}, {"hour", 3600000}};
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
    if (strcmp(end + 1, units[i].unit) == 0) {
      *count = (uint32_t)n;
      *period_ms = units[i].ms;
      return 0;
    }
  }
  return -EINVAL;
}

int kl_rl_limit_init(kl_rl_limit *l, const char *name, uint32_t id, uint32_t count,
                     uint32_t period_ms, uint32_t burst, int scope, int on_error,
                     uint32_t replicas, char *err, size_t errlen) {
  memset(l, 0, sizeof *l);
  size_t n = strlen(name);
  if (n == 0 || n >= sizeof l->name || strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN"
                                                    "OPQRSTUVWXYZ0123456789_.-") != n) {
    snprintf(err, errlen, "rate_limit: name \"%s\": 1..63 of [A-Za-z0-9_.-]", name);
    return -EINVAL;
  }
  if (count == 0 || period_ms == 0 || burst == 0) {
    snprintf(err, errlen, "rate_limit %s: rate and burst must be at least 1", name);
    return -EINVAL;
  }
  if (scope != KL_RL_LOCAL && scope != KL_RL_GLOBAL) {
    snprintf(err, errlen, "rate_limit %s: scope must be local or global", name);
    return -EINVAL;
  }
  if (on_error != KL_RL_FAIL_OPEN && on_error != KL_RL_FAIL_CLOSED && on_error != KL_RL_FAIL_LOCAL) {
    snprintf(err, errlen, "rate_limit %s: on_redis_error must be open, closed or local", name);
    return -EINVAL;
  }
  if (replicas == 0) replicas = 1;
  memcpy(l->name, name, n + 1);
  l->id = id;
  l->count = count;
  l->period_ms = period_ms;
  l->burst = burst;
  l->scope = (uint8_t)scope;
  l->on_error = (uint8_t)on_error;
  l->replicas = replicas;
  l->t_ns = (uint64_t)period_ms * NS_PER_MS / count;
  if (l->t_ns == 0) l->t_ns = 1;
  l->fb_t_ns = l->t_ns * replicas;
  l->fb_count = count / replicas ? count / replicas : 1;
  l->fb_burst = burst / replicas ? burst / replicas : 1;
  /* Keep T * burst (the tolerance, ns) far from overflowing 64 bits. */
  if ((double)l->fb_t_ns * (double)burst > 4e18 || (double)l->t_ns * (double)burst > 4e18) {
    snprintf(err, errlen, "rate_limit %s: burst x period too large", name);
    return -EINVAL;
  }
  snprintf(l->t_us, sizeof l->t_us, "%.3f", (double)period_ms * 1000.0 / count);
  return 0;
}

/* ---- GCRA -------------------------------------------------------------------------- */

static uint64_t up_div(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

void kl_rl_gcra(uint64_t *tat, uint64_t now, uint64_t t, uint32_t burst, uint32_t cost,
                uint64_t unit_per_ms, kl_rl_decision *d) {
  uint64_t tau = t * burst;
  uint64_t t0 = *tat > now ? *tat : now;
  uint64_t new_tat = t0 + t * cost;
  d->known = 1;
  d->limit = burst;
  if (new_tat > now + tau) {
    d->allowed = 0;
    d->status = 429;
    d->remaining = 0;
    d->retry_after_ms = up_div(new_tat - tau - now, unit_per_ms);
    d->reset_ms = up_div(t0 - now, unit_per_ms);
    return;
  }
  *tat = new_tat;
  d->allowed = 1;
  d->status = 0;
  d->remaining = (uint32_t)((now + tau - new_tat) / t);
  d->retry_after_ms = 0;
  d->reset_ms = up_div(new_tat - now, unit_per_ms);
}

/* ---- the local table ------------------------------------------------------------------ */

#define NIL UINT32_MAX
#define SHARDS_MAX 64

typedef struct entry {
  uint64_t h, tat;
  uint32_t hnext, prev, next; /* hash chain; LRU list (prev towards most recent) */
} entry;

typedef struct shard {
  _Alignas(64) pthread_mutex_t mu; /* one cache line (or more) per shard */
  entry *e;
  uint32_t *heads;
  uint32_t mask, n, cap;
  uint32_t mru, lru;
  _Atomic uint64_t evictions;
} shard;

struct kl_rl_table {
  uint32_t nshards;
  uint64_t k0, k1; /* SipHash key, random per process */
  shard *shards;
};

/* SipHash-2-4 (Aumasson and Bernstein), written from the paper. */
#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                               \
  do {                                                                                         \
    v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                                  \
    v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                                     \
    v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                                     \
    v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                                  \
  } while (0)

static uint64_t siphash(uint64_t k0, uint64_t k1, const void *data, size_t len) {
  const unsigned char *p = data;
  uint64_t v0 = k0 ^ 0x736f6d6570736575ull, v1 = k1 ^ 0x646f72616e646f6dull;
  uint64_t v2 = k0 ^ 0x6c7967656e657261ull, v3 = k1 ^ 0x7465646279746573ull;
  size_t full = len & ~(size_t)7;
  for (size_t i = 0; i < full; i += 8) {
    uint64_t m = 0;
    for (int j = 7; j >= 0; j--) m = m << 8 | p[i + (size_t)j];
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
  }
  uint64_t b = (uint64_t)len << 56;
  for (size_t j = 0; j < (len & 7); j++) b |= (uint64_t)p[full + j] << (8 * j);
  v3 ^= b;
  SIPROUND;
  SIPROUND;
  v0 ^= b;
  v2 ^= 0xff;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}

static uint64_t key_hash(const kl_rl_table *t, uint32_t id, const void *key, size_t len) {
  return siphash(t->k0 ^ ((uint64_t)id * 0x9e3779b97f4a7c15ull), t->k1, key, len);
}

kl_rl_table *kl_rl_table_new(uint32_t max_keys, char *err, size_t errlen) {
  if (max_keys == 0) {
    snprintf(err, errlen, "rate limit table: max_keys must be at least 1");
    return NULL;
  }
  uint32_t ns = SHARDS_MAX;
  while (ns > 1 && max_keys / ns < 16) ns /= 2;
  uint32_t cap = max_keys / ns;
  kl_rl_table *t = calloc(1, sizeof *t);
  if (!t) goto oom;
  t->nshards = ns;
  t->shards = aligned_alloc(64, sizeof(shard) * ns);
  if (!t->shards) goto oom;
  memset(t->shards, 0, sizeof(shard) * ns);
  uint64_t k[2];
  if (getrandom(k, sizeof k, 0) != (ssize_t)sizeof k) {
    k[0] = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)t;
    k[1] = (uint64_t)clock() ^ 0x5bd1e995u;
  }
  t->k0 = k[0];
  t->k1 = k[1];
  uint32_t nb = 1;
  while (nb < cap) nb *= 2;
  for (uint32_t i = 0; i < ns; i++) {
    shard *s = &t->shards[i];
    pthread_mutex_init(&s->mu, NULL);
    s->cap = cap;
    s->mask = nb - 1;
    s->mru = s->lru = NIL;
    s->e = calloc(cap, sizeof *s->e);
    s->heads = malloc(sizeof *s->heads * nb);
    if (!s->e || !s->heads) {
      t->nshards = i + 1;
      kl_rl_table_free(t);
      t = NULL;
      goto oom;
    }
    memset(s->heads, 0xff, sizeof *s->heads * nb);
  }
  return t;
oom:
  if (t) {
    free(t->shards);
    free(t);
  }
  snprintf(err, errlen, "rate limit table: out of memory");
  return NULL;
}

void kl_rl_table_free(kl_rl_table *t) {
  if (!t) return;
  for (uint32_t i = 0; i < t->nshards; i++) {
    pthread_mutex_destroy(&t->shards[i].mu);
    free(t->shards[i].e);
    free(t->shards[i].heads);
  }
  free(t->shards);
  free(t);
}

uint32_t kl_rl_table_count(kl_rl_table *t) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < t->nshards; i++) {
    pthread_mutex_lock(&t->shards[i].mu);
    n += t->shards[i].n;
    pthread_mutex_unlock(&t->shards[i].mu);
  }
  return n;
}

uint64_t kl_rl_table_evictions(const kl_rl_table *t) {
  uint64_t n = 0;
  for (uint32_t i = 0; i < t->nshards; i++)
    n += atomic_load_explicit(&t->shards[i].evictions, memory_order_relaxed);
  return n;
}

static void lru_unlink(shard *s, uint32_t i) {
  entry *e = &s->e[i];
  if (e->prev != NIL) s->e[e->prev].next = e->next;
  else s->mru = e->next;
  if (e->next != NIL) s->e[e->next].prev = e->prev;
  else s->lru = e->prev;
}

static void lru_front(shard *s, uint32_t i) {
  entry *e = &s->e[i];
  e->prev = NIL;
  e->next = s->mru;
  if (s->mru != NIL) s->e[s->mru].prev = i;
  s->mru = i;
  if (s->lru == NIL) s->lru = i;
}

/* The bucket of hash h (inserted full, evicting the least recently used, if absent). */
static entry *bucket(shard *s, uint64_t h) {
  uint32_t b = (uint32_t)(h >> 32) & s->mask;
  for (uint32_t i = s->heads[b]; i != NIL; i = s->e[i].hnext) {
    if (s->e[i].h == h) {
      if (s->mru != i) {
        lru_unlink(s, i);
        lru_front(s, i);
      }
      return &s->e[i];
    }
  }
  uint32_t i;
  if (s->n < s->cap) {
    i = s->n++;
  } else { /* forget the least recently used bucket */
    i = s->lru;
    lru_unlink(s, i);
    uint32_t *pp = &s->heads[(uint32_t)(s->e[i].h >> 32) & s->mask];
    while (*pp != i) pp = &s->e[*pp].hnext;
    *pp = s->e[i].hnext;
    INC(s->evictions);
  }
  entry *e = &s->e[i];
  e->h = h;
  e->tat = 0; /* full */
  e->hnext = s->heads[b];
  s->heads[b] = i;
  lru_front(s, i);
  return e;
}

static void take(kl_rl_table *t, uint64_t h, uint64_t tns, uint32_t burst, uint64_t now_ns,
                 kl_rl_decision *d) {
  shard *s = &t->shards[h & (t->nshards - 1)];
  pthread_mutex_lock(&s->mu);
  kl_rl_gcra(&bucket(s, h)->tat, now_ns, tns, burst, 1, NS_PER_MS, d);
  pthread_mutex_unlock(&s->mu);
}

void kl_rl_local(kl_rl_table *t, const kl_rl_limit *l, const void *key, size_t keylen,
                 uint64_t now_ns, kl_rl_decision *d) {
  take(t, key_hash(t, l->id, key, keylen), l->t_ns, l->burst, now_ns, d);
  d->source = KL_RL_SRC_LOCAL;
}

/* ---- per worker ------------------------------------------------------------------------ */

typedef struct pending {
  struct pending *next;
  kl_rl_worker *w;
  const kl_rl_limit *l;
  uint64_t h; /* the local share's bucket, for on_redis_error: local */
  kl_rl_cb cb;
  void *arg;
} pending;

struct kl_rl_worker {
  kl_rl_table *table;
  kl_redis *redis;
  int script;
  pending *pool, *free;
  kl_rl_stats st;
};

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

kl_rl_worker *kl_rl_worker_new(kl_rl_table *table, kl_redis *redis, uint32_t max_pending,
                               char *err, size_t errlen) {
  kl_rl_worker *w = calloc(1, sizeof *w);
  if (w && max_pending) w->pool = calloc(max_pending, sizeof *w->pool);
  if (!w || (max_pending && !w->pool)) {
    free(w);
    snprintf(err, errlen, "rate limits: out of memory");
    return NULL;
  }
  w->table = table;
  w->redis = redis;
  w->script = -1;
  for (uint32_t i = max_pending; i-- > 0;) {
    w->pool[i].next = w->free;
    w->free = &w->pool[i];
  }
  if (redis) {
    w->script = kl_redis_script(redis, kl_rl_gcra_lua);
    if (w->script < 0) {
      snprintf(err, errlen, "rate limits: cannot register the script: %s",
               strerror(-w->script));
      free(w->pool);
      free(w);
      return NULL;
    }
  }
  return w;
}

void kl_rl_worker_free(kl_rl_worker *w) {
  if (!w) return;
  free(w->pool);
  free(w);
}

const kl_rl_stats *kl_rl_worker_stats(const kl_rl_worker *w) { return &w->st; }

static void count(kl_rl_worker *w, const kl_rl_decision *d) {
  if (d->allowed) INC(w->st.allowed);
  else INC(w->st.denied);
}

/* Redis could not decide: on_redis_error does. */
static void fallback(kl_rl_worker *w, const kl_rl_limit *l, uint64_t h, kl_rl_decision *d) {
  memset(d, 0, sizeof *d);
  INC(w->st.redis_errors);
  if (l->on_error == KL_RL_FAIL_LOCAL && w->table) {
    take(w->table, h, l->fb_t_ns, l->fb_burst, now_ns(), d);
    d->source = KL_RL_SRC_FALLBACK_LOCAL;
    INC(w->st.fallback_local);
  } else if (l->on_error == KL_RL_FAIL_CLOSED) {
    d->source = KL_RL_SRC_FALLBACK_CLOSED;
    d->status = 503;
    d->retry_after_ms = 1000;
    INC(w->st.fallback_closed);
  } else {
    d->allowed = 1;
    d->source = KL_RL_SRC_FALLBACK_OPEN;
    INC(w->st.fallback_open);
  }
  count(w, d);
}

static void on_global(void *arg, const kl_redis_reply *rep) {
  pending *p = arg;
  kl_rl_worker *w = p->w;
  const kl_rl_limit *l = p->l;
  uint64_t h = p->h;
  kl_rl_cb cb = p->cb;
  void *cbarg = p->arg;
  p->next = w->free;
  w->free = p;
  kl_rl_decision d;
  long long v[4];
  int ok = rep->err == 0 && rep->type == KL_REDIS_ARRAY && rep->elements == 4;
  for (size_t i = 0; ok && i < 4; i++) {
    kl_redis_reply e;
    ok = kl_redis_reply_element(rep, i, &e) == 0 && e.type == KL_REDIS_INTEGER && e.integer >= 0;
    v[i] = ok ? e.integer : 0;
  }
  if (!ok) {
    fallback(w, l, h, &d);
  } else {
    memset(&d, 0, sizeof d);
    d.allowed = v[0] == 1;
    d.source = KL_RL_SRC_GLOBAL;
    d.known = 1;
    d.status = d.allowed ? 0 : 429;
    d.limit = l->burst;
    d.remaining = v[1] > l->burst ? l->burst : (uint32_t)v[1];
    d.retry_after_ms = (uint64_t)v[2];
    d.reset_ms = (uint64_t)v[3];
    INC(w->st.global);
    count(w, &d);
  }
  cb(cbarg, &d);
}

/* "keel:rl:<name>:<key>", a long key cut and suffixed with a hash of the whole (fixed key:
 * every keel process must name a bucket the same way). */
static size_t redis_key(char *buf, const kl_rl_limit *l, const char *key, size_t keylen) {
  size_t n = (size_t)snprintf(buf, 8 + sizeof l->name + 1, "keel:rl:%s:", l->name);
  if (keylen <= KL_RL_KEY_MAX) {
    memcpy(buf + n, key, keylen);
    return n + keylen;
  }
  memcpy(buf + n, key, KL_RL_KEY_MAX - 17);
  n += KL_RL_KEY_MAX - 17;
  n += (size_t)snprintf(buf + n, 18, "#%016llx",
                        (unsigned long long)siphash(0x6b65656c, 0x726c, key, keylen));
  return n;
}

int kl_rl_decide(kl_rl_worker *w, const kl_rl_limit *l, const void *key, size_t keylen,
                 kl_rl_decision *out, kl_rl_cb cb, void *arg) {
  if (l->scope == KL_RL_LOCAL) {
    kl_rl_local(w->table, l, key, keylen, now_ns(), out);
    INC(w->st.local);
    count(w, out);
    return 1;
  }
  uint64_t h = l->on_error == KL_RL_FAIL_LOCAL && w->table
                   ? key_hash(w->table, l->id, key, keylen)
                   : 0;
  pending *p = w->free;
  if (!w->redis || !p) {
    fallback(w, l, h, out);
    return 1;
  }
  char rkey[8 + sizeof l->name + 1 + KL_RL_KEY_MAX + 1];
  char burst[16];
  const char *argv[4] = {rkey, l->t_us, burst, "1"};
  size_t lens[4];
  lens[0] = redis_key(rkey, l, key, keylen);
  lens[1] = strlen(l->t_us);
  lens[2] = (size_t)snprintf(burst, sizeof burst, "%u", l->burst);
  lens[3] = 1;
  w->free = p->next;
  p->w = w;
  p->l = l;
  p->h = h;
  p->cb = cb;
  p->arg = arg;
  if (kl_redis_evalsha(w->redis, w->script, 1, 4, argv, lens, on_global, p) != 0) {
    p->next = w->free;
    w->free = p;
    fallback(w, l, h, out);
    return 1;
  }
  return 0;
}

/* ---- headers -------------------------------------------------------------------------- */

static void put(kl_rl_header *h, const char *name, unsigned long long v) {
  h->name = name;
  snprintf(h->value, sizeof h->value, "%llu", v);
}

int kl_rl_headers(const kl_rl_limit *l, const kl_rl_decision *d,
                  kl_rl_header out[KL_RL_HEADERS_MAX]) {
  int n = 0;
  if (d->known) {
    int share = d->source == KL_RL_SRC_FALLBACK_LOCAL;
    put(&out[n++], "RateLimit-Limit", d->limit);
    put(&out[n++], "RateLimit-Remaining", d->remaining);
    put(&out[n++], "RateLimit-Reset", up_div(d->reset_ms, 1000));
    out[n].name = "RateLimit-Policy";
    snprintf(out[n].value, sizeof out[n].value, "%u;w=%llu;burst=%u",
             share ? l->fb_count : l->count, (unsigned long long)up_div(l->period_ms, 1000), d->limit);
    n++;
  }
  if (!d->allowed && d->source != KL_RL_SRC_FALLBACK_OPEN) {
    uint64_t s = up_div(d->retry_after_ms, 1000);
    put(&out[n++], "Retry-After", s ? s : 1);
  }
  return n;
}
