/* test_cache.c - unit tests for the response cache: storability, Cache-Control, Vary, LRU, coalescing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <stdatomic.h>

#include <cmocka.h>

/* The module itself, to reach its hash (which keys share a shard) and its shards. */
#include "gateway/cache.c"

/* ---- helpers ---- */

typedef struct treq {
  char buf[4096];
  size_t used;
  kl_header hdrs[16];
  kl_cache_req r;
} treq;

/* A request: NULL-terminated "Name: value" header strings after the query. */
static kl_cache_req *mkreq(treq *q, const char *method, const char *path, const char *query, ...) {
  memset(q, 0, sizeof *q);
  q->r.method = method;
  q->r.method_len = strlen(method);
  q->r.host = "Example.COM";
  q->r.host_len = strlen(q->r.host);
  q->r.path = path;
  q->r.path_len = strlen(path);
  q->r.query = query ? query : "";
  q->r.query_len = query ? strlen(query) : 0;
  va_list ap;
  va_start(ap, query);
  const char *h;
  while ((h = va_arg(ap, const char *)) != NULL) {
    const char *colon = strchr(h, ':');
    assert_non_null(colon);
    size_t len = strlen(h);
    assert_true(q->used + len <= sizeof q->buf && q->r.nhdrs < 16);
    memcpy(q->buf + q->used, h, len);
    kl_header *k = &q->hdrs[q->r.nhdrs++];
    k->name_off = (uint32_t)q->used;
    k->name_len = (uint32_t)(colon - h);
    size_t v = (size_t)(colon - h) + 1;
    while (h[v] == ' ') v++;
    k->value_off = (uint32_t)(q->used + v);
    k->value_len = (uint32_t)(len - v);
    q->used += len;
  }
  va_end(ap);
  q->r.hbuf = q->buf;
  q->r.hdrs = q->hdrs;
  return &q->r;
}

static kl_cache *mkcache(size_t max_bytes, size_t max_object) {
  kl_cache_conf conf = {.max_bytes = max_bytes, .max_object = max_object};
  char err[128];
  kl_cache *c = kl_cache_new(&conf, err, sizeof err);
  assert_non_null(c);
  return c;
}

/* Lookup (must be LEADER) then fill: returns the fill's result. */
static int store(kl_cache *c, const kl_cache_req *req, int status, const char *headers,
                 const char *body, uint64_t now) {
  kl_cache_entry *e;
  kl_cache_ticket *t;
  assert_int_equal(kl_cache_lookup(c, req, NULL, now, &e, &t), KL_CACHE_LEADER);
  assert_non_null(t);
  kl_cache_resp resp = {status, headers, strlen(headers), body, strlen(body)};
  return kl_cache_fill(c, t, req, &resp, now);
}

/* Looks up: returns the result; a HIT's body must equal `body` (if given) and is released. */
static int probe(kl_cache *c, const kl_cache_req *req, uint64_t now, const char *body,
                 uint64_t *age) {
  kl_cache_entry *e;
  kl_cache_ticket *t;
  int rc = kl_cache_lookup(c, req, NULL, now, &e, &t);
  if (rc == KL_CACHE_HIT) {
    kl_cache_view v;
    kl_cache_entry_view(e, now, &v);
    if (body) {
      assert_int_equal(v.body_len, strlen(body));
      assert_memory_equal(v.body, body, v.body_len);
    }
    if (age) *age = v.age;
    kl_cache_entry_release(e);
  } else if (rc == KL_CACHE_LEADER) {
    kl_cache_abandon(c, t);
  }
  return rc;
}

/* ---- Cache-Control and dates ---- */

static void test_cc_parse(void **state) {
  (void)state;
  kl_cache_cc cc;
#define CC(s) (kl_cache_cc_init(&cc), kl_cache_cc_parse(&cc, s, strlen(s)))
  CC("max-age=60, public");
  assert_int_equal(cc.max_age, 60);
  assert_int_equal(cc.flags, KL_CACHE_CC_PUBLIC);
  assert_int_equal(cc.s_maxage, -1);
  CC("MAX-AGE=5,S-MaxAge=7,No-Store");
  assert_int_equal(cc.max_age, 5);
  assert_int_equal(cc.s_maxage, 7);
  assert_true(cc.flags & KL_CACHE_CC_NO_STORE);
  CC("max-age=\"30\"");
  assert_int_equal(cc.max_age, 30);
  CC("max-age=10, max-age=20"); /* the first wins */
  assert_int_equal(cc.max_age, 10);
  CC("max-age=abc");
  assert_int_equal(cc.max_age, 0);
  CC("max-age=-5");
  assert_int_equal(cc.max_age, 0);
  CC("max-age");
  assert_int_equal(cc.max_age, 0);
  CC("max-age=");
  assert_int_equal(cc.max_age, 0);
  CC("max-age=99999999999999999999999");
  assert_int_equal(cc.max_age, INT64_C(2147483648));
  CC("max-age = 12 , private");
  assert_int_equal(cc.max_age, 12);
  assert_true(cc.flags & KL_CACHE_CC_PRIVATE);
  CC("private=\"Set-Cookie, X-Foo\", max-age=3");
  assert_true(cc.flags & KL_CACHE_CC_PRIVATE);
  assert_int_equal(cc.max_age, 3);
  CC("no-cache=\"a,b\\\"c\", s-maxage=4");
  assert_true(cc.flags & KL_CACHE_CC_NO_CACHE);
  assert_int_equal(cc.s_maxage, 4);
  CC("ext=\"quoted, with comma\", max-age=9, foo=bar");
  assert_int_equal(cc.max_age, 9);
  assert_int_equal(cc.flags, 0);
  CC(",,, ,max-age=1,,");
  assert_int_equal(cc.max_age, 1);
  CC("max-age=10 junk, no-store");
  assert_int_equal(cc.max_age, 0); /* malformed: stale */
  assert_true(cc.flags & KL_CACHE_CC_NO_STORE);
  CC("no-store garbage");          /* a restrictive directive holds even when malformed */
  assert_true(cc.flags & KL_CACHE_CC_NO_STORE);
  CC("public=yes");                /* a permissive one does not */
  assert_false(cc.flags & KL_CACHE_CC_PUBLIC);
  CC("max-age=\"7");               /* unterminated quote */
  assert_int_equal(cc.max_age, 0);
  CC("=5, @@@, max-age=8");
  assert_int_equal(cc.max_age, 8);
  CC("max-stale, min-fresh=3, must-revalidate, immutable, only-if-cached, no-transform");
  assert_int_equal(cc.max_stale, INT64_C(2147483648));
  assert_int_equal(cc.min_fresh, 3);
  assert_int_equal(cc.flags, KL_CACHE_CC_MUST_REVALIDATE | KL_CACHE_CC_IMMUTABLE |
                                 KL_CACHE_CC_ONLY_IF_CACHED | KL_CACHE_CC_NO_TRANSFORM);
  CC("");
  assert_int_equal(cc.flags, 0);
  assert_int_equal(cc.max_age, -1);
  /* two field lines accumulate */
  kl_cache_cc_init(&cc);
  kl_cache_cc_parse(&cc, "public", 6);
  kl_cache_cc_parse(&cc, "max-age=4", 9);
  assert_int_equal(cc.max_age, 4);
  assert_true(cc.flags & KL_CACHE_CC_PUBLIC);
  /* the length bounds the parse: no NUL needed */
  CC("max-age=123");
  kl_cache_cc_init(&cc);
  kl_cache_cc_parse(&cc, "max-age=123", 9);
  assert_int_equal(cc.max_age, 1);
#undef CC
}

static void test_date_parse(void **state) {
  (void)state;
#define D(s) kl_cache_date_parse(s, strlen(s))
  assert_int_equal(D("Sun, 06 Nov 1994 08:49:37 GMT"), 784111777);
  assert_int_equal(D("Thu, 01 Jan 1970 00:00:00 GMT"), 0);
  assert_int_equal(D("Tue, 29 Feb 2000 12:00:00 GMT"), 951825600);
  assert_int_equal(D("Sat, 01 Jan 2050 00:00:00 GMT"), 2524608000);
  assert_int_equal(D("Sunday, 06-Nov-94 08:49:37 GMT"), -1); /* obsolete forms */
  assert_int_equal(D("Sun Nov  6 08:49:37 1994"), -1);
  assert_int_equal(D("Sun, 06 Nov 1994 08:49:37 UTC"), -1);
  assert_int_equal(D("Sun, 31 Nov 1994 08:49:37 GMT"), -1);
  assert_int_equal(D("Mon, 29 Feb 1900 08:49:37 GMT"), -1);
  assert_int_equal(D("Sun, 06 Nov 1994 24:00:00 GMT"), -1);
  assert_int_equal(D("Xyz, 06 Nov 1994 08:49:37 GMT"), -1);
  assert_int_equal(D("Sun, 06 Nox 1994 08:49:37 GMT"), -1);
  assert_int_equal(D("Sun, 0a Nov 1994 08:49:37 GMT"), -1);
  assert_int_equal(D("Wed, 31 Dec 1969 23:59:59 GMT"), -1); /* before the epoch */
  assert_int_equal(D("Sun, 06 Nov 1497 08:49:37 GMT"), -1);
  assert_int_equal(D("0"), -1);
  assert_int_equal(D(""), -1);
#undef D
}

/* ---- storability ---- */

static void test_storability(void **state) {
  (void)state;
  kl_cache *c = mkcache(1 << 20, 64 << 10);
  treq q;
  static const struct {
    int status;
    const char *headers;
    int stored;
  } m[] = {
      {200, "Cache-Control: max-age=60\r\n", 1},
      {203, "Cache-Control: max-age=60\r\n", 1},
      {204, "Cache-Control: max-age=60\r\n", 1},
      {300, "Cache-Control: max-age=60\r\n", 1},
      {301, "Cache-Control: max-age=60\r\n", 1},
      {308, "Cache-Control: max-age=60\r\n", 1},
      {404, "Cache-Control: max-age=60\r\n", 1},
      {405, "Cache-Control: max-age=60\r\n", 1},
      {410, "Cache-Control: max-age=60\r\n", 1},
      {414, "Cache-Control: max-age=60\r\n", 1},
      {501, "Cache-Control: max-age=60\r\n", 1},
      {201, "Cache-Control: max-age=60\r\n", 0},
      {206, "Cache-Control: max-age=60\r\n", 0},
      {302, "Cache-Control: max-age=60\r\n", 0},
      {304, "Cache-Control: max-age=60\r\n", 0},
      {500, "Cache-Control: max-age=60\r\n", 0},
      {503, "Cache-Control: max-age=60\r\n", 0},
      {200, "Content-Type: text/plain\r\n", 0}, /* no explicit freshness: no heuristics */
      {200, "Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n", 0},
      {200, "Cache-Control: max-age=0\r\n", 0},
      {200, "Cache-Control: public\r\n", 0},
      {200, "Cache-Control: max-age=60, no-store\r\n", 0},
      {200, "Cache-Control: max-age=60, private\r\n", 0},
      {200, "Cache-Control: max-age=60, private=\"X-User\"\r\n", 0},
      {200, "Cache-Control: max-age=60, no-cache\r\n", 0},
      {200, "Cache-Control: max-age=60\r\nCache-Control: no-store\r\n", 0},
      {200, "Cache-Control: s-maxage=60, max-age=0\r\n", 1}, /* s-maxage overrides */
      {200, "Cache-Control: s-maxage=0, max-age=60\r\n", 0},
      {200, "cache-control: MAX-AGE=60\r\n", 1},
      {200, "Cache-Control: max-age=60\r\nAge: 60\r\n", 0}, /* already stale */
      {200, "Cache-Control: max-age=60\r\nAge: 59\r\n", 1},
      {200, "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\nExpires: Sun, 06 Nov 1994 08:50:37 GMT\r\n", 1},
      {200, "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\nExpires: Sun, 06 Nov 1994 08:49:37 GMT\r\n", 0},
      {200, "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\nExpires: 0\r\n", 0},
      {200, "Expires: Sun, 06 Nov 2094 08:50:37 GMT\r\n", 0}, /* Expires needs Date */
      {200, "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\nExpires: Sun, 06 Nov 1994 08:40:37 GMT\r\n"
            "Cache-Control: max-age=60\r\n", 1},                /* max-age beats Expires */
      {200, "Cache-Control: max-age=60\r\nVary: *\r\n", 0},
      {200, "Cache-Control: max-age=60\r\nVary: Accept, *\r\n", 0},
      {200, "Cache-Control: max-age=60\r\nVary: a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q\r\n", 0},
      {200, "Cache-Control: max-age=60\r\nVary: a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p\r\n", 1},
  };
  for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
    char path[32];
    snprintf(path, sizeof path, "/m/%zu", i);
    mkreq(&q, "GET", path, NULL, NULL);
    int rc = store(c, &q.r, m[i].status, m[i].headers, "body", 1000);
    if (rc != m[i].stored) fail_msg("case %zu (%d %s): got %d", i, m[i].status, m[i].headers, rc);
    assert_int_equal(probe(c, &q.r, 1999, "body", NULL), m[i].stored ? KL_CACHE_HIT
                                                                       : KL_CACHE_LEADER);
  }

  /* methods: only GET stores, HEAD reads GET entries, a HEAD miss is a bypass */
  assert_int_equal(probe(c, mkreq(&q, "POST", "/m/0", NULL, NULL), 2000, NULL, NULL),
                   KL_CACHE_BYPASS);
  assert_int_equal(probe(c, mkreq(&q, "HEAD", "/m/0", NULL, NULL), 2000, "body", NULL),
                   KL_CACHE_HIT);
  assert_int_equal(probe(c, mkreq(&q, "HEAD", "/nothing", NULL, NULL), 2000, NULL, NULL),
                   KL_CACHE_BYPASS);
  assert_int_equal(probe(c, mkreq(&q, "get", "/m/0", NULL, NULL), 2000, NULL, NULL),
                   KL_CACHE_BYPASS); /* methods are case-sensitive */

  /* the key: host is case-insensitive, the query counts */
  mkreq(&q, "GET", "/m/0", NULL, NULL);
  q.r.host = "example.com";
  assert_int_equal(probe(c, &q.r, 2000, "body", NULL), KL_CACHE_HIT);
  assert_int_equal(probe(c, mkreq(&q, "GET", "/m/0", "a=1", NULL), 2000, NULL, NULL),
                   KL_CACHE_LEADER);
  assert_int_equal(probe(c, mkreq(&q, "GET", "/M/0", NULL, NULL), 2000, NULL, NULL),
                   KL_CACHE_LEADER);

  /* Authorization (RFC 9111 3.5) */
  mkreq(&q, "GET", "/auth/1", NULL, "Authorization: Bearer x", NULL);
  assert_int_equal(store(c, &q.r, 200, "Cache-Control: max-age=60\r\n", "a", 1000), 0);
  mkreq(&q, "GET", "/auth/2", NULL, "Authorization: Bearer x", NULL);
  assert_int_equal(store(c, &q.r, 200, "Cache-Control: max-age=60, public\r\n", "a", 1000), 1);
  mkreq(&q, "GET", "/auth/3", NULL, "authorization: Bearer x", NULL);
  assert_int_equal(store(c, &q.r, 200, "Cache-Control: s-maxage=60\r\n", "a", 1000), 1);
  mkreq(&q, "GET", "/auth/4", NULL, "Authorization: Bearer x", NULL);
  assert_int_equal(store(c, &q.r, 200, "Cache-Control: max-age=60, must-revalidate\r\n", "a", 1000),
                   1);
  /* an entry stored without Authorization is not served to a request carrying it */
  mkreq(&q, "GET", "/auth/5", NULL, NULL);
  assert_int_equal(store(c, &q.r, 200, "Cache-Control: max-age=60\r\n", "a", 1000), 1);
  assert_int_equal(probe(c, &q.r, 1000, "a", NULL), KL_CACHE_HIT);
  mkreq(&q, "GET", "/auth/5", NULL, "Authorization: Basic eA==", NULL);
  assert_int_equal(probe(c, &q.r, 1000, NULL, NULL), KL_CACHE_LEADER);
  mkreq(&q, "GET", "/auth/2", NULL, "Authorization: Basic other", NULL);
  assert_int_equal(probe(c, &q.r, 1000, "a", NULL), KL_CACHE_HIT);
  kl_cache_free(c);
}

static void test_stored_headers(void **state) {
  (void)state;
  kl_cache *c = mkcache(1 << 20, 64 << 10);
  treq q;
  mkreq(&q, "GET", "/h", NULL, NULL);
  const char *hdrs = "Content-Type: text/plain\r\nAge: 3\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
                     "Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nSet-Cookie: s=1\r\n"
                     "Transfer-Encoding: chunked\r\nContent-Length: 5\r\nset-cookie: t=2\r\n"
                     "Cache-Control: max-age=60\r\nETag: \"x\"\r\n";
  assert_int_equal(store(c, &q.r, 203, hdrs, "hello", 0), 1);
  kl_cache_entry *e;
  kl_cache_ticket *t;
  assert_int_equal(kl_cache_lookup(c, &q.r, NULL, 0, &e, &t), KL_CACHE_HIT);
  kl_cache_view v;
  kl_cache_entry_view(e, 2500, &v);
  assert_int_equal(v.status, 203);
  const char *want = "Content-Type: text/plain\r\nCache-Control: max-age=60\r\nETag: \"x\"\r\n";
  assert_int_equal(v.headers_len, strlen(want));
  assert_memory_equal(v.headers, want, v.headers_len);
  assert_int_equal(v.body_len, 5);
  assert_int_equal(v.age, 5); /* Age 3 + 2 whole seconds resident */
  kl_cache_entry_release(e);
  kl_cache_free(c);
}

/* ---- request directives ---- */

static void test_request_directives(void **state) {
  (void)state;
  kl_cache *c = mkcache(1 << 20, 64 << 10);
  treq q;
  mkreq(&q, "GET", "/r", NULL, NULL);
  assert_int_equal(store(c, &q.r, 200, "Cache-Control: max-age=100\r\n", "v1", 0), 1);
  /* no-store: bypass, nothing taken or stored */
  mkreq(&q, "GET", "/r", NULL, "Cache-Control: no-store", NULL);
  assert_int_equal(probe(c, &q.r, 0, NULL, NULL), KL_CACHE_BYPASS);
  /* max-age=N: older entries are not used (the entry stays) */
  mkreq(&q, "GET", "/r", NULL, "Cache-Control: max-age=5", NULL);
  assert_int_equal(probe(c, &q.r, 5000, "v1", NULL), KL_CACHE_HIT);
  assert_int_equal(probe(c, &q.r, 6000, NULL, NULL), KL_CACHE_LEADER);
  mkreq(&q, "GET", "/r", NULL, NULL);
  assert_int_equal(probe(c, &q.r, 6000, "v1", NULL), KL_CACHE_HIT);
  /* no-cache / max-age=0 / Pragma: the entry is skipped, the new response replaces it, and such
   * a leader is not coalesced with (nor blocks) others */
  const char *reload[] = {"Cache-Control: no-cache", "Cache-Control: max-age=0",
                          "Pragma: no-cache"};
  char prev[8] = "v1";
  for (int i = 0; i < 3; i++) {
    char body[8];
    snprintf(body, sizeof body, "v%d", i + 2);
    mkreq(&q, "GET", "/r", NULL, reload[i], NULL);
    kl_cache_entry *e;
    kl_cache_ticket *t;
    assert_int_equal(kl_cache_lookup(c, &q.r, NULL, 7000, &e, &t), KL_CACHE_LEADER);
    treq q2;
    mkreq(&q2, "GET", "/r", NULL, NULL);
    assert_int_equal(probe(c, &q2.r, 7000, prev, NULL), KL_CACHE_HIT); /* others still hit */
    kl_cache_resp resp = {200, "Cache-Control: max-age=100\r\n", 28, body, 2};
    assert_int_equal(kl_cache_fill(c, t, &q.r, &resp, 7000), 1);
    assert_int_equal(probe(c, &q2.r, 7000, body, NULL), KL_CACHE_HIT);
    kl_cache_stats st;
    kl_cache_stats_get(c, &st);
    assert_int_equal(st.entries, 1); /* replaced, not added */
    memcpy(prev, body, sizeof prev);
  }
  mkreq(&q, "GET", "/r", NULL, "Cache-Control: max-age=0", "Pragma: no-cache", NULL);
  assert_int_equal(probe(c, &q.r, 7000, NULL, NULL), KL_CACHE_LEADER);
  mkreq(&q, "GET", "/r", NULL, "Cache-Control: max-age=50", "Pragma: no-cache", NULL);
  assert_int_equal(probe(c, &q.r, 7000, NULL, NULL), KL_CACHE_HIT); /* Cache-Control wins */
  kl_cache_free(c);
}

/* ---- Vary ---- */

static void test_vary(void **state) {
  (void)state;
  kl_cache *c = mkcache(1 << 20, 64 << 10);
  treq q;
  const char *h = "Cache-Control: max-age=60\r\nVary: Accept-Encoding, accept-language\r\n";
  mkreq(&q, "GET", "/v", NULL, "Accept-Encoding: gzip", "Accept-Language: en", NULL);
  assert_int_equal(store(c, &q.r, 200, h, "gzip-en", 0), 1);
  mkreq(&q, "GET", "/v", NULL, "Accept-Encoding: br", "Accept-Language: en", NULL);
  assert_int_equal(store(c, &q.r, 200, h, "br-en", 0), 1);
  mkreq(&q, "GET", "/v", NULL, "Accept-Language: en", NULL); /* no Accept-Encoding */
  assert_int_equal(store(c, &q.r, 200, h, "none-en", 0), 1);

  mkreq(&q, "GET", "/v", NULL, "accept-language:   en  ", "ACCEPT-ENCODING: gzip", NULL);
  assert_int_equal(probe(c, &q.r, 0, "gzip-en", NULL), KL_CACHE_HIT);
  mkreq(&q, "GET", "/v", NULL, "Accept-Encoding: br", "Accept-Language: en", NULL);
  assert_int_equal(probe(c, &q.r, 0, "br-en", NULL), KL_CACHE_HIT);
  mkreq(&q, "GET", "/v", NULL, "Accept-Language: en", NULL);
  assert_int_equal(probe(c, &q.r, 0, "none-en", NULL), KL_CACHE_HIT);
  mkreq(&q, "GET", "/v", NULL, "Accept-Encoding: ", "Accept-Language: en", NULL);
  assert_int_equal(probe(c, &q.r, 0, NULL, NULL), KL_CACHE_LEADER); /* empty is not absent */
  mkreq(&q, "GET", "/v", NULL, "Accept-Encoding: GZIP", "Accept-Language: en", NULL);
  assert_int_equal(probe(c, &q.r, 0, NULL, NULL), KL_CACHE_LEADER); /* values are exact */
  mkreq(&q, "GET", "/v", NULL, "Accept-Encoding: gzip", NULL);
  assert_int_equal(probe(c, &q.r, 0, NULL, NULL), KL_CACHE_LEADER);
  /* several field lines are one combined value */
  mkreq(&q, "GET", "/v2", NULL, "X-A: 1", "X-A: 2", NULL);
  assert_int_equal(store(c, &q.r, 200, "Cache-Control: max-age=60\r\nVary: X-A\r\n", "12", 0), 1);
  mkreq(&q, "GET", "/v2", NULL, "X-A: 1,2", NULL);
  assert_int_equal(probe(c, &q.r, 0, "12", NULL), KL_CACHE_HIT);
  mkreq(&q, "GET", "/v2", NULL, "X-A: 1", NULL);
  assert_int_equal(probe(c, &q.r, 0, NULL, NULL), KL_CACHE_LEADER);
  /* the same variant replaces itself */
  mkreq(&q, "GET", "/v", NULL, "Accept-Encoding: br", "Accept-Language: en",
        "Cache-Control: no-cache", NULL);
  assert_int_equal(store(c, &q.r, 200, h, "br-en-2", 0), 1);
  mkreq(&q, "GET", "/v", NULL, "Accept-Encoding: br", "Accept-Language: en", NULL);
  assert_int_equal(probe(c, &q.r, 0, "br-en-2", NULL), KL_CACHE_HIT);
  kl_cache_stats st;
  kl_cache_stats_get(c, &st);
  assert_int_equal(st.entries, 4);

  /* at most max_variants (8) per key: the least recently used variant goes */
  for (int i = 0; i < 10; i++) {
    char v[16];
    snprintf(v, sizeof v, "X-V: %d", i);
    mkreq(&q, "GET", "/many", NULL, v, NULL);
    assert_int_equal(store(c, &q.r, 200, "Cache-Control: max-age=60\r\nVary: x-v\r\n", v, 0), 1);
    if (i == 7) { /* touch variant 0 so that 1 and 2 are the oldest */
      mkreq(&q, "GET", "/many", NULL, "X-V: 0", NULL);
      assert_int_equal(probe(c, &q.r, 0, "X-V: 0", NULL), KL_CACHE_HIT);
    }
  }
  for (int i = 0; i < 10; i++) {
    char v[16];
    snprintf(v, sizeof v, "X-V: %d", i);
    mkreq(&q, "GET", "/many", NULL, v, NULL);
    assert_int_equal(probe(c, &q.r, 0, v, NULL),
                     i == 1 || i == 2 ? KL_CACHE_LEADER : KL_CACHE_HIT);
  }
  /* a value longer than the cap is never stored nor matched */
  char big[1100] = "X-A: ";
  memset(big + 5, 'x', 1050);
  big[1055] = 0;
  mkreq(&q, "GET", "/v3", NULL, big, NULL);
  assert_int_equal(store(c, &q.r, 200, "Cache-Control: max-age=60\r\nVary: X-A\r\n", "b", 0), 0);
  kl_cache_free(c);
}

/* ---- LRU, byte cap, object size ---- */

static void test_lru_cap(void **state) {
  (void)state;
  const size_t cap = 16 * 8192; /* 8 KiB per shard */
  kl_cache *c = mkcache(cap, 4096);
  treq q;
  char body[2001];
  memset(body, 'b', 2000);
  body[2000] = 0;
  kl_cache_stats st;
  for (int i = 0; i < 400; i++) {
    char path[32];
    snprintf(path, sizeof path, "/lru/%d", i);
    mkreq(&q, "GET", path, NULL, NULL);
    assert_int_equal(store(c, &q.r, 200, "Cache-Control: max-age=60\r\n", body, 0), 1);
    kl_cache_stats_get(c, &st);
    assert_true(st.bytes <= cap);
    if (i == 0) assert_true(st.bytes > 2000 + 28 + 11); /* key, headers, body, overhead */
  }
  assert_true(st.evictions > 0);
  assert_true(st.entries < 400 && st.entries >= 16); /* 3 entries of ~2.2 KiB fit in 8 KiB */
  assert_int_equal(st.stores, 400);
  /* the newest is there, the oldest long gone */
  mkreq(&q, "GET", "/lru/399", NULL, NULL);
  assert_int_equal(probe(c, &q.r, 0, body, NULL), KL_CACHE_HIT);
  mkreq(&q, "GET", "/lru/0", NULL, NULL);
  assert_int_equal(probe(c, &q.r, 0, NULL, NULL), KL_CACHE_LEADER);
  kl_cache_free(c);

  /* max_object: headers + body */
  c = mkcache(cap, 4096);
  char large[4100];
  memset(large, 'L', sizeof large - 1);
  large[sizeof large - 1] = 0;
  mkreq(&q, "GET", "/big", NULL, NULL);
  assert_int_equal(store(c, &q.r, 200, "Cache-Control: max-age=60\r\n", large, 0), 0);
  large[4096 - 28] = 0; /* exactly max_object with the 28-byte header block */
  assert_int_equal(store(c, &q.r, 200, "Cache-Control: max-age=60\r\n", large, 0), 1);
  kl_cache_free(c);

  char err[128];
  kl_cache_conf bad = {.max_bytes = 1 << 20, .max_object = 1 << 20};
  assert_null(kl_cache_new(&bad, err, sizeof err));
  assert_non_null(strstr(err, "max_object"));
  bad = (kl_cache_conf){.max_variants = 1000};
  assert_null(kl_cache_new(&bad, err, sizeof err));
  bad = (kl_cache_conf){.max_waiters = KL_CACHE_WAITERS_MAX + 1};
  assert_null(kl_cache_new(&bad, err, sizeof err));
  bad = (kl_cache_conf){.max_bytes = 1 << 20}; /* the default max_object shrinks to fit */
  c = kl_cache_new(&bad, err, sizeof err);
  assert_non_null(c);
  kl_cache_free(c);
  kl_cache_free(NULL);
}

/* LRU order inside a shard: keys chosen (with the cache's own seeded hash) to share one. */
static void test_lru_order(void **state) {
  (void)state;
  treq q;
  char body[3001];
  memset(body, 'b', 3000);
  body[3000] = 0;
  kl_cache *c = mkcache(16 * 8192, 4096); /* 8 KiB per shard: two ~3.2 KiB entries, not three */
  char keys[4][16];
  int found = 0;
  unsigned want = 99;
  for (int i = 0; found < 4; i++) {
    char path[16];
    snprintf(path, sizeof path, "/s%d", i);
    mkreq(&q, "GET", path, NULL, NULL);
    char key[64];
    size_t klen = make_key(&q.r, key, sizeof key);
    unsigned si = (unsigned)(hash(c->seed, key, klen) >> 60);
    if (want == 99) want = si;
    if (si == want) memcpy(keys[found++], path, sizeof path);
  }
  for (int i = 0; i < 2; i++) {
    mkreq(&q, "GET", keys[i], NULL, NULL);
    assert_int_equal(store(c, &q.r, 200, "Cache-Control: max-age=60\r\n", body, 0), 1);
  }
  mkreq(&q, "GET", keys[0], NULL, NULL); /* keys[0] becomes the most recent */
  assert_int_equal(probe(c, &q.r, 0, body, NULL), KL_CACHE_HIT);
  mkreq(&q, "GET", keys[2], NULL, NULL);
  assert_int_equal(store(c, &q.r, 200, "Cache-Control: max-age=60\r\n", body, 0), 1);
  assert_int_equal(probe(c, mkreq(&q, "GET", keys[1], NULL, NULL), 0, NULL, NULL),
                   KL_CACHE_LEADER);
  assert_int_equal(probe(c, mkreq(&q, "GET", keys[0], NULL, NULL), 0, body, NULL), KL_CACHE_HIT);
  assert_int_equal(probe(c, mkreq(&q, "GET", keys[2], NULL, NULL), 0, body, NULL), KL_CACHE_HIT);
  mkreq(&q, "GET", keys[3], NULL, NULL); /* now keys[0] is the older: it goes */
  assert_int_equal(store(c, &q.r, 200, "Cache-Control: max-age=60\r\n", body, 0), 1);
  assert_int_equal(probe(c, mkreq(&q, "GET", keys[0], NULL, NULL), 0, NULL, NULL),
                   KL_CACHE_LEADER);
  kl_cache_stats st;
  kl_cache_stats_get(c, &st);
  assert_int_equal(st.entries, 2);
  assert_int_equal(st.evictions, 2);
  assert_true(c->shards[want].bytes <= c->shard_cap);
  kl_cache_free(c);
}

/* ---- Age ---- */

static void test_age(void **state) {
  (void)state;
  kl_cache *c = mkcache(1 << 20, 64 << 10);
  treq q;
  uint64_t age;
  mkreq(&q, "GET", "/age", NULL, NULL);
  uint64_t t0 = 1000000;
  assert_int_equal(store(c, &q.r, 200, "Cache-Control: max-age=10\r\nAge: 4\r\n", "x", t0), 1);
  assert_int_equal(probe(c, &q.r, t0, "x", &age), KL_CACHE_HIT);
  assert_int_equal(age, 4);
  assert_int_equal(probe(c, &q.r, t0 + 999, "x", &age), KL_CACHE_HIT);
  assert_int_equal(age, 4); /* whole seconds */
  assert_int_equal(probe(c, &q.r, t0 + 1000, "x", &age), KL_CACHE_HIT);
  assert_int_equal(age, 5);
  assert_int_equal(probe(c, &q.r, t0 + 5999, "x", &age), KL_CACHE_HIT);
  assert_int_equal(age, 9);
  assert_int_equal(probe(c, &q.r, t0 - 5000, "x", &age), KL_CACHE_HIT); /* clock went back */
  assert_int_equal(age, 4);
  /* age 10 = lifetime: stale, dropped */
  assert_int_equal(probe(c, &q.r, t0 + 6000, NULL, NULL), KL_CACHE_LEADER);
  kl_cache_stats st;
  kl_cache_stats_get(c, &st);
  assert_int_equal(st.entries, 0);
  assert_int_equal(st.bytes, 0);
  /* s-maxage governs; invalid Age counts as 0 */
  assert_int_equal(store(c, &q.r, 200, "Cache-Control: max-age=1, s-maxage=3\r\nAge: x\r\n", "y",
                         t0),
                   1);
  assert_int_equal(probe(c, &q.r, t0 + 2500, "y", &age), KL_CACHE_HIT);
  assert_int_equal(age, 2);
  assert_int_equal(probe(c, &q.r, t0 + 3000, NULL, NULL), KL_CACHE_LEADER);
  /* Expires - Date */
  assert_int_equal(store(c, &q.r, 200,
                         "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
                         "Expires: Sun, 06 Nov 1994 08:49:39 GMT\r\n",
                         "z", t0),
                   1);
  assert_int_equal(probe(c, &q.r, t0 + 1999, "z", NULL), KL_CACHE_HIT);
  assert_int_equal(probe(c, &q.r, t0 + 2000, NULL, NULL), KL_CACHE_LEADER);
  kl_cache_free(c);
}

/* ---- refcounts ---- */

static void test_refcount_evicted(void **state) {
  (void)state;
  kl_cache *c = mkcache(16 * 8192, 4096);
  treq q;
  char body[3001];
  memset(body, 'r', 3000);
  body[3000] = 0;
  mkreq(&q, "GET", "/held", NULL, NULL);
  assert_int_equal(store(c, &q.r, 200, "Cache-Control: max-age=60\r\n", body, 0), 1);
  kl_cache_entry *held;
  kl_cache_ticket *t;
  assert_int_equal(kl_cache_lookup(c, &q.r, NULL, 0, &held, &t), KL_CACHE_HIT);
  /* replace it, then flood the cache: the held entry is evicted twice over */
  assert_int_equal(store(c, mkreq(&q, "GET", "/held", NULL, "Cache-Control: no-cache", NULL),
                         200, "Cache-Control: max-age=60\r\n", "new", 0),
                   1);
  for (int i = 0; i < 200; i++) {
    char path[32];
    snprintf(path, sizeof path, "/flood/%d", i);
    mkreq(&q, "GET", path, NULL, NULL);
    assert_int_equal(store(c, &q.r, 200, "Cache-Control: max-age=60\r\n", body, 0), 1);
  }
  kl_cache_view v;
  kl_cache_entry_view(held, 3000, &v); /* ASan: still valid */
  assert_int_equal(v.body_len, 3000);
  assert_memory_equal(v.body, body, 3000);
  assert_int_equal(v.age, 3);
  /* the cache may go first: readers keep their entries */
  kl_cache_entry *e2;
  mkreq(&q, "GET", "/flood/199", NULL, NULL);
  assert_int_equal(kl_cache_lookup(c, &q.r, NULL, 0, &e2, &t), KL_CACHE_HIT);
  kl_cache_free(c);
  kl_cache_entry_view(e2, 0, &v);
  assert_int_equal(v.body_len, 3000);
  kl_cache_entry_release(e2);
  kl_cache_entry_release(held);
  kl_cache_entry_release(NULL);
}

/* ---- coalescing ---- */

typedef struct wake_rec {
  int calls;
  int outcome;
} wake_rec;

static void on_wake(void *arg, int outcome) {
  wake_rec *r = arg;
  r->calls++;
  r->outcome = outcome;
}

static void test_coalesce(void **state) {
  (void)state;
  kl_cache_conf conf = {.max_bytes = 1 << 20, .max_object = 4096, .max_waiters = 3,
                        .fill_timeout_ms = 5000};
  char err[128];
  kl_cache *c = kl_cache_new(&conf, err, sizeof err);
  assert_non_null(c);
  treq q;
  mkreq(&q, "GET", "/co", NULL, NULL);
  kl_cache_entry *e;
  kl_cache_ticket *lead, *t;
  wake_rec rec[5] = {{0}};
  kl_cache_waiter w[5];

  /* fill: every waiter woken once with FILLED, then hits */
  assert_int_equal(kl_cache_lookup(c, &q.r, NULL, 0, &e, &lead), KL_CACHE_LEADER);
  for (int i = 0; i < 3; i++) {
    w[i] = (kl_cache_waiter){.wake = on_wake, .arg = &rec[i]};
    assert_int_equal(kl_cache_lookup(c, &q.r, &w[i], 10, &e, &t), KL_CACHE_WAIT);
  }
  /* over the cap, or without a waiter: bypass */
  w[3] = (kl_cache_waiter){.wake = on_wake, .arg = &rec[3]};
  assert_int_equal(kl_cache_lookup(c, &q.r, &w[3], 10, &e, &t), KL_CACHE_BYPASS);
  assert_int_equal(kl_cache_lookup(c, &q.r, NULL, 10, &e, &t), KL_CACHE_BYPASS);
  assert_int_equal(kl_cache_unwait(c, &w[3]), 0); /* never registered */
  /* a different key is independent */
  treq q2;
  mkreq(&q2, "GET", "/other", NULL, NULL);
  assert_int_equal(kl_cache_lookup(c, &q2.r, &w[4], 10, &e, &t), KL_CACHE_LEADER);
  kl_cache_abandon(c, t);
  /* one waiter cancels */
  assert_int_equal(kl_cache_unwait(c, &w[1]), 1);
  assert_int_equal(kl_cache_unwait(c, &w[1]), 0);
  assert_int_equal(rec[0].calls + rec[1].calls + rec[2].calls, 0);
  kl_cache_resp resp = {200, "Cache-Control: max-age=60\r\n", 28, "co", 2};
  assert_int_equal(kl_cache_fill(c, lead, &q.r, &resp, 20), 1);
  assert_int_equal(rec[0].calls, 1);
  assert_int_equal(rec[0].outcome, KL_CACHE_FILLED);
  assert_int_equal(rec[1].calls, 0);
  assert_int_equal(rec[2].calls, 1);
  assert_int_equal(rec[2].outcome, KL_CACHE_FILLED);
  assert_int_equal(rec[3].calls, 0);
  assert_int_equal(kl_cache_unwait(c, &w[0]), 0); /* already woken */
  assert_int_equal(probe(c, &q.r, 30, "co", NULL), KL_CACHE_HIT);
  kl_cache_stats st;
  kl_cache_stats_get(c, &st);
  assert_int_equal(st.coalesced, 3);

  /* abandon and a non-storable fill: ABANDONED */
  memset(rec, 0, sizeof rec);
  mkreq(&q, "GET", "/co2", NULL, NULL);
  assert_int_equal(kl_cache_lookup(c, &q.r, NULL, 0, &e, &lead), KL_CACHE_LEADER);
  for (int i = 0; i < 2; i++) {
    w[i] = (kl_cache_waiter){.wake = on_wake, .arg = &rec[i]};
    assert_int_equal(kl_cache_lookup(c, &q.r, &w[i], 0, &e, &t), KL_CACHE_WAIT);
  }
  kl_cache_abandon(c, lead);
  assert_int_equal(rec[0].calls, 1);
  assert_int_equal(rec[0].outcome, KL_CACHE_ABANDONED);
  assert_int_equal(rec[1].calls, 1);
  assert_int_equal(rec[1].outcome, KL_CACHE_ABANDONED);
  assert_int_equal(kl_cache_lookup(c, &q.r, &w[0], 0, &e, &lead), KL_CACHE_LEADER); /* free again */
  w[1] = (kl_cache_waiter){.wake = on_wake, .arg = &rec[1]};
  assert_int_equal(kl_cache_lookup(c, &q.r, &w[1], 0, &e, &t), KL_CACHE_WAIT);
  kl_cache_resp nostore = {200, "Cache-Control: no-store\r\n", 25, "x", 1};
  assert_int_equal(kl_cache_fill(c, lead, &q.r, &nostore, 0), 0);
  assert_int_equal(rec[1].calls, 2);
  assert_int_equal(rec[1].outcome, KL_CACHE_ABANDONED);

  /* leader timeout: the next miss after the deadline takes over with the waiters */
  memset(rec, 0, sizeof rec);
  mkreq(&q, "GET", "/slow", NULL, NULL);
  kl_cache_ticket *old, *fresh;
  assert_int_equal(kl_cache_lookup(c, &q.r, NULL, 1000, &e, &old), KL_CACHE_LEADER);
  w[0] = (kl_cache_waiter){.wake = on_wake, .arg = &rec[0]};
  assert_int_equal(kl_cache_lookup(c, &q.r, &w[0], 5999, &e, &t), KL_CACHE_WAIT);
  w[1] = (kl_cache_waiter){.wake = on_wake, .arg = &rec[1]};
  assert_int_equal(kl_cache_lookup(c, &q.r, &w[1], 6000, &e, &fresh), KL_CACHE_LEADER);
  w[2] = (kl_cache_waiter){.wake = on_wake, .arg = &rec[2]};
  assert_int_equal(kl_cache_lookup(c, &q.r, &w[2], 6001, &e, &t), KL_CACHE_WAIT);
  /* the old leader finishes late: it stores but wakes nobody */
  assert_int_equal(kl_cache_fill(c, old, &q.r, &resp, 7000), 1);
  assert_int_equal(rec[0].calls + rec[2].calls, 0);
  kl_cache_abandon(c, fresh);
  assert_int_equal(rec[0].calls, 1);
  assert_int_equal(rec[2].calls, 1);
  assert_int_equal(rec[1].calls, 0);
  assert_int_equal(probe(c, &q.r, 7000, "co", NULL), KL_CACHE_HIT);

  /* a waiter cancelled after takeover is found on the new fill */
  memset(rec, 0, sizeof rec);
  mkreq(&q, "GET", "/slow2", NULL, NULL);
  assert_int_equal(kl_cache_lookup(c, &q.r, NULL, 0, &e, &old), KL_CACHE_LEADER);
  w[0] = (kl_cache_waiter){.wake = on_wake, .arg = &rec[0]};
  assert_int_equal(kl_cache_lookup(c, &q.r, &w[0], 0, &e, &t), KL_CACHE_WAIT);
  assert_int_equal(kl_cache_lookup(c, &q.r, NULL, 9000, &e, &fresh), KL_CACHE_LEADER);
  assert_int_equal(kl_cache_unwait(c, &w[0]), 1);
  kl_cache_abandon(c, old);
  kl_cache_abandon(c, fresh);
  assert_int_equal(rec[0].calls, 0);
  kl_cache_free(c);
}

/* A wake that re-enters the cache (lookup again) must not deadlock: it runs outside the lock. */
typedef struct reenter {
  kl_cache *c;
  kl_cache_req *req;
  int rc;
} reenter;

static void on_wake_lookup(void *arg, int outcome) {
  reenter *r = arg;
  (void)outcome;
  kl_cache_entry *e;
  kl_cache_ticket *t;
  r->rc = kl_cache_lookup(r->c, r->req, NULL, 0, &e, &t);
  if (r->rc == KL_CACHE_HIT) kl_cache_entry_release(e);
  if (r->rc == KL_CACHE_LEADER) kl_cache_abandon(r->c, t);
}

static void test_wake_reenters(void **state) {
  (void)state;
  kl_cache_conf conf = {.max_bytes = 1 << 20, .max_object = 4096, .max_waiters = 100};
  char err[128];
  kl_cache *c = kl_cache_new(&conf, err, sizeof err);
  treq q;
  mkreq(&q, "GET", "/re", NULL, NULL);
  kl_cache_entry *e;
  kl_cache_ticket *lead, *t;
  assert_int_equal(kl_cache_lookup(c, &q.r, NULL, 0, &e, &lead), KL_CACHE_LEADER);
  reenter r[70];
  kl_cache_waiter w[70];
  for (int i = 0; i < 70; i++) { /* more than one wake batch */
    r[i] = (reenter){c, &q.r, -1};
    w[i] = (kl_cache_waiter){.wake = on_wake_lookup, .arg = &r[i]};
    assert_int_equal(kl_cache_lookup(c, &q.r, &w[i], 0, &e, &t), KL_CACHE_WAIT);
  }
  kl_cache_resp resp = {200, "Cache-Control: max-age=60\r\n", 28, "re", 2};
  assert_int_equal(kl_cache_fill(c, lead, &q.r, &resp, 0), 1);
  for (int i = 0; i < 70; i++) assert_int_equal(r[i].rc, KL_CACHE_HIT);
  kl_cache_free(c);
}

/* ---- threads ---- */

#define THREADS 4
#define ITERS 20000
#define HCAP (16 * 16384)

typedef struct hammer {
  kl_cache *c;
  unsigned seed;
  atomic_int *stop;
  int over_cap;
} hammer;

static atomic_int woken;

static void on_wake_count(void *arg, int outcome) {
  (void)outcome;
  atomic_fetch_add((atomic_int *)arg, 1);
}

static void *hammer_run(void *arg) {
  hammer *h = arg;
  treq q;
  char body[2048];
  memset(body, 'h', sizeof body);
  for (int i = 0; i < ITERS; i++) {
    h->seed = h->seed * 1103515245u + 12345u;
    unsigned k = (h->seed >> 8) % 97;
    char path[32], ae[32];
    snprintf(path, sizeof path, "/t/%u", k);
    snprintf(ae, sizeof ae, "X-V: %u", (h->seed >> 20) % 3);
    mkreq(&q, "GET", path, NULL, ae, NULL);
    kl_cache_entry *e;
    kl_cache_ticket *t;
    kl_cache_waiter *w = malloc(sizeof *w);
    assert_non_null(w);
    *w = (kl_cache_waiter){.wake = on_wake_count, .arg = &woken};
    int rc = kl_cache_lookup(h->c, &q.r, w, (uint64_t)i, &e, &t);
    if (rc == KL_CACHE_HIT) {
      kl_cache_view v;
      kl_cache_entry_view(e, (uint64_t)i, &v);
      assert_true(v.body_len > 0 && v.body[0] == 'h' && v.body[v.body_len - 1] == 'h');
      kl_cache_entry_release(e);
      free(w);
    } else if (rc == KL_CACHE_LEADER) {
      size_t blen = 100 + k * 20;
      kl_cache_resp resp = {200, "Cache-Control: max-age=1\r\nVary: X-V\r\n", 37, body, blen};
      if (k % 5 == 0) kl_cache_abandon(h->c, t);
      else kl_cache_fill(h->c, t, &q.r, &resp, (uint64_t)i);
      free(w);
    } else if (rc == KL_CACHE_WAIT) {
      /* cancel: either removed, or the wake is already done/under way (then it was counted) */
      kl_cache_unwait(h->c, w);
      free(w);
    } else {
      free(w);
    }
    kl_cache_stats st;
    kl_cache_stats_get(h->c, &st);
    if (st.bytes > HCAP) h->over_cap = 1;
  }
  return NULL;
}

static void test_threads(void **state) {
  (void)state;
  kl_cache_conf conf = {.max_bytes = HCAP, .max_object = 4096, .fill_timeout_ms = 50};
  char err[128];
  kl_cache *c = kl_cache_new(&conf, err, sizeof err);
  assert_non_null(c);
  pthread_t th[THREADS];
  hammer h[THREADS];
  atomic_int stop = 0;
  for (int i = 0; i < THREADS; i++) {
    h[i] = (hammer){c, (unsigned)i * 7919u + 1, &stop, 0};
    assert_int_equal(pthread_create(&th[i], NULL, hammer_run, &h[i]), 0);
  }
  for (int i = 0; i < THREADS; i++) {
    pthread_join(th[i], NULL);
    assert_int_equal(h[i].over_cap, 0);
  }
  kl_cache_stats st;
  kl_cache_stats_get(c, &st);
  assert_true(st.hits > 0);
  assert_true(st.stores > 0);
  assert_true(st.bytes <= HCAP);
  assert_int_equal(st.hits + st.misses, THREADS * ITERS);
  kl_cache_free(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cc_parse),          cmocka_unit_test(test_date_parse),
      cmocka_unit_test(test_storability),       cmocka_unit_test(test_stored_headers),
      cmocka_unit_test(test_request_directives), cmocka_unit_test(test_vary),
      cmocka_unit_test(test_lru_cap),           cmocka_unit_test(test_lru_order),
      cmocka_unit_test(test_age),               cmocka_unit_test(test_refcount_evicted),
      cmocka_unit_test(test_coalesce),          cmocka_unit_test(test_wake_reenters),
      cmocka_unit_test(test_threads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
