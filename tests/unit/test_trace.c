/* test_trace.c - unit tests for trace context, ids, sampling, OTLP span encoding and the exporter.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <zlib.h>

#include "obs/trace.h"

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(unsigned ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* ---- a tiny protobuf reader ------------------------------------------------- */

typedef struct pbf {
  unsigned field, wt;
  uint64_t v;       /* varint, fixed64, fixed32 */
  const uint8_t *p; /* length-delimited */
  size_t n;
} pbf;

static bool pb_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
  *v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*p >= end) return false;
    uint8_t b = *(*p)++;
    *v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}

/* The next field of [*p, end), or false at the end. Fails the test on malformed input. */
static bool pb_next(const uint8_t **p, const uint8_t *end, pbf *f) {
  if (*p >= end) return false;
  uint64_t key;
  assert_true(pb_varint(p, end, &key));
  f->field = (unsigned)(key >> 3);
  f->wt = (unsigned)(key & 7);
  assert_true(f->field > 0);
  switch (f->wt) {
  case 0: assert_true(pb_varint(p, end, &f->v)); break;
  case 1:
  case 5: {
    size_t n = f->wt == 1 ? 8 : 4;
    assert_true((size_t)(end - *p) >= n);
    f->v = 0;
    for (size_t i = 0; i < n; i++)
      f->v |= (uint64_t)(*p)[i] << (8 * i);
    *p += n;
    break;
  }
  case 2: {
    uint64_t n;
    assert_true(pb_varint(p, end, &n));
    assert_true(n <= (uint64_t)(end - *p));
    f->p = *p;
    f->n = (size_t)n;
    *p += n;
    break;
  }
  default: fail_msg("wire type %u", f->wt);
  }
  return true;
}

static void want_wt(const pbf *f, unsigned wt) {
  if (f->wt != wt) fail_msg("field %u: wire type %u, want %u", f->field, f->wt, wt);
}

typedef struct dattr {
  char key[64];
  int type; /* AnyValue field: 1 string, 2 bool, 3 int, 4 double */
  char s[256]; /* the value, cut to 255 bytes */
  size_t slen; /* its whole length */
  int64_t i;
  double d;
} dattr;

typedef struct dspan {
  uint8_t tid[16], sid[8], parent[8];
  bool has_parent;
  char tracestate[600];
  char name[300];
  int kind;
  uint64_t start, end;
  uint32_t flags, dropped;
  bool has_status;
  int status_code;
  char status_msg[200];
  int nattrs;
  dattr attrs[40];
} dspan;

static void copy_str(char *dst, size_t cap, const pbf *f) {
  want_wt(f, 2);
  assert_true(f->n < cap);
  memcpy(dst, f->p, f->n);
  dst[f->n] = '\0';
}

static void decode_kv(const uint8_t *p, size_t n, dattr *a) {
  const uint8_t *end = p + n;
  pbf f;
  memset(a, 0, sizeof *a);
  while (pb_next(&p, end, &f)) {
    if (f.field == 1) {
      copy_str(a->key, sizeof a->key, &f);
    } else if (f.field == 2) {
      want_wt(&f, 2);
      const uint8_t *q = f.p, *qe = f.p + f.n;
      pbf g;
      int members = 0;
      while (pb_next(&q, qe, &g)) {
        members++;
        a->type = (int)g.field;
        switch (g.field) {
        case 1:
          want_wt(&g, 2);
          a->slen = g.n;
          memcpy(a->s, g.p, g.n < sizeof a->s ? g.n : sizeof a->s - 1);
          break;
        case 2:
        case 3:
          want_wt(&g, 0);
          a->i = (int64_t)g.v;
          break;
        case 4:
          want_wt(&g, 1);
          memcpy(&a->d, &g.v, sizeof a->d);
          break;
        default: fail_msg("AnyValue field %u", g.field);
        }
      }
      assert_int_equal(members, 1);
    } else {
      fail_msg("KeyValue field %u", f.field);
    }
  }
}

static void decode_span(const uint8_t *p, size_t n, dspan *s) {
  const uint8_t *end = p + n;
  pbf f;
  memset(s, 0, sizeof *s);
  while (pb_next(&p, end, &f)) {
    switch (f.field) {
    case 1:
      want_wt(&f, 2);
      assert_int_equal(f.n, 16);
      memcpy(s->tid, f.p, 16);
      break;
    case 2:
      want_wt(&f, 2);
      assert_int_equal(f.n, 8);
      memcpy(s->sid, f.p, 8);
      break;
    case 3: copy_str(s->tracestate, sizeof s->tracestate, &f); break;
    case 4:
      want_wt(&f, 2);
      assert_int_equal(f.n, 8);
      memcpy(s->parent, f.p, 8);
      s->has_parent = true;
      break;
    case 5: copy_str(s->name, sizeof s->name, &f); break;
    case 6:
      want_wt(&f, 0);
      s->kind = (int)f.v;
      break;
    case 7:
      want_wt(&f, 1);
      s->start = f.v;
      break;
    case 8:
      want_wt(&f, 1);
      s->end = f.v;
      break;
    case 9:
      want_wt(&f, 2);
      assert_true(s->nattrs < 40);
      decode_kv(f.p, f.n, &s->attrs[s->nattrs++]);
      break;
    case 10:
      want_wt(&f, 0);
      s->dropped = (uint32_t)f.v;
      break;
    case 15: {
      want_wt(&f, 2);
      s->has_status = true;
      const uint8_t *q = f.p, *qe = f.p + f.n;
      pbf g;
      while (pb_next(&q, qe, &g)) {
        if (g.field == 2) {
          copy_str(s->status_msg, sizeof s->status_msg, &g);
        } else if (g.field == 3) {
          want_wt(&g, 0);
          s->status_code = (int)g.v;
        } else {
          fail_msg("Status field %u", g.field);
        }
      }
      break;
    }
    case 16:
      want_wt(&f, 5);
      s->flags = (uint32_t)f.v;
      break;
    default: fail_msg("Span field %u", f.field);
    }
  }
}

/* The attribute named `key`; fails the test when there is none. */
static const dattr *find_attr(const dattr *a, int n, const char *key) {
  for (int i = 0; i < n; i++)
    if (strcmp(a[i].key, key) == 0) return &a[i];
  fail_msg("no attribute %s", key);
  return a;
}

/* A decoded ExportTraceServiceRequest: its resource, scope and spans. */
typedef struct dreq {
  int nres;
  dattr res[8];
  char scope_name[64], scope_version[64];
  int nspans, cap;
  dspan *spans; /* malloc'd */
} dreq;

static void decode_request(const uint8_t *p, size_t n, dreq *r) {
  memset(r, 0, sizeof *r);
  const uint8_t *end = p + n;
  pbf f;
  int nrs = 0;
  while (pb_next(&p, end, &f)) {
    assert_int_equal(f.field, 1); /* resource_spans */
    want_wt(&f, 2);
    nrs++;
    const uint8_t *q = f.p, *qe = f.p + f.n;
    pbf g;
    while (pb_next(&q, qe, &g)) {
      want_wt(&g, 2);
      if (g.field == 1) { /* Resource */
        const uint8_t *a = g.p, *ae = g.p + g.n;
        pbf h;
        while (pb_next(&a, ae, &h)) {
          assert_int_equal(h.field, 1);
          want_wt(&h, 2);
          assert_true(r->nres < 8);
          decode_kv(h.p, h.n, &r->res[r->nres++]);
        }
      } else if (g.field == 2) { /* ScopeSpans */
        const uint8_t *a = g.p, *ae = g.p + g.n;
        pbf h;
        while (pb_next(&a, ae, &h)) {
          want_wt(&h, 2);
          if (h.field == 1) {
            const uint8_t *b = h.p, *be = h.p + h.n;
            pbf k;
            while (pb_next(&b, be, &k)) {
              if (k.field == 1)
                copy_str(r->scope_name, sizeof r->scope_name, &k);
              else if (k.field == 2)
                copy_str(r->scope_version, sizeof r->scope_version, &k);
              else
                fail_msg("InstrumentationScope field %u", k.field);
            }
          } else if (h.field == 2) {
            if (r->nspans == r->cap) {
              r->cap = r->cap ? 2 * r->cap : 16;
              r->spans = realloc(r->spans, (size_t)r->cap * sizeof *r->spans);
              assert_non_null(r->spans);
            }
            decode_span(h.p, h.n, &r->spans[r->nspans++]);
          } else {
            fail_msg("ScopeSpans field %u", h.field);
          }
        }
      } else {
        fail_msg("ResourceSpans field %u", g.field);
      }
    }
  }
  assert_int_equal(nrs, 1);
}

/* ---- W3C Trace Context --------------------------------------------------------- */

static const char TP[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

static void test_traceparent_valid(void **state) {
  (void)state;
  static const uint8_t tid[16] = {0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6,
                                  0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36};
  static const uint8_t sid[8] = {0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7};
  static const struct {
    const char *s;
    uint8_t flags;
  } ok[] = {
      {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", 0x01},
      {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", 0x00},
      {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09", 0x09}, /* unknown bits kept */
      /* A later version: read as 00 would be, and what follows the flags after a '-' ignored. */
      {"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", 0x01},
      {"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like",
       0x01},
      {"fe-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-", 0x00},
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    kl_trace_ctx c;
    memset(&c, 0xee, sizeof c);
    assert_int_equal(kl_traceparent_parse(ok[i].s, strlen(ok[i].s), &c), 0);
    assert_memory_equal(c.trace_id, tid, 16);
    assert_memory_equal(c.span_id, sid, 8);
    assert_int_equal(c.flags, ok[i].flags);
  }
}

static void test_traceparent_invalid(void **state) {
  (void)state;
  static const char *const bad[] = {
      "",
      "00",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",   /* 54 chars */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", /* 00 with more */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ", /* trailing space */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz",
      "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", /* version ff */
      "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", /* uppercase version */
      "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", /* uppercase trace id */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01", /* uppercase parent id */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A", /* uppercase flags */
      "00-00000000000000000000000000000000-00f067aa0ba902b7-01", /* zero trace id */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", /* zero parent id */
      "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", /* not hex */
      "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", /* separators */
      "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
      "00-4bf92f3577b34da6a3ce929d0e0e47-3600f067aa0ba902b7-01",      /* dash misplaced */
      "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",      /* short version */
      "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.what", /* future: no '-' */
      "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",       /* future: too short */
      " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",     /* leading space */
  };
  kl_trace_ctx c, before;
  memset(&c, 0x5a, sizeof c);
  before = c;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    if (kl_traceparent_parse(bad[i], strlen(bad[i]), &c) != -EINVAL)
      fail_msg("accepted: \"%s\"", bad[i]);
    assert_memory_equal(&c, &before, sizeof c); /* untouched */
  }
  assert_int_equal(kl_traceparent_parse(NULL, 55, &c), -EINVAL);
  /* The length is what counts, not a NUL: a valid value inside a longer buffer. */
  char buf[80];
  snprintf(buf, sizeof buf, "%sXYZ", TP);
  assert_int_equal(kl_traceparent_parse(buf, 55, &c), 0);
  assert_int_equal(kl_traceparent_parse(buf, 58, &c), -EINVAL);
}

static void test_traceparent_format(void **state) {
  (void)state;
  kl_trace_ctx c;
  assert_int_equal(kl_traceparent_parse(TP, strlen(TP), &c), 0);
  char out[KL_TRACEPARENT_LEN + 1];
  memset(out, 'x', sizeof out);
  assert_int_equal(kl_traceparent_format(&c, out), 55);
  assert_string_equal(out, TP);
  /* Round trip of random contexts. */
  kl_trace_rng r;
  kl_trace_rng_init(&r);
  for (int i = 0; i < 1000; i++) {
    kl_trace_ctx a, b;
    kl_trace_ids_new(&r, a.trace_id);
    kl_trace_span_id_new(&r, a.span_id);
    a.flags = (uint8_t)i;
    kl_traceparent_format(&a, out);
    assert_int_equal(strlen(out), 55);
    assert_int_equal(kl_traceparent_parse(out, 55, &b), 0);
    assert_memory_equal(&a, &b, sizeof a);
  }
  /* A later version is passed on as 00. */
  const char *v1 = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
  assert_int_equal(kl_traceparent_parse(v1, strlen(v1), &c), 0);
  kl_traceparent_format(&c, out);
  assert_string_equal(out, TP);
}

static void test_tracestate(void **state) {
  (void)state;
  assert_true(kl_tracestate_valid("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", 39));
  assert_true(kl_tracestate_valid("a=1 ,\tb=2", 9));
  assert_true(kl_tracestate_valid("", 0));
  assert_true(kl_tracestate_valid(NULL, 0));
  assert_false(kl_tracestate_valid(NULL, 3));
  assert_false(kl_tracestate_valid("a=\n", 3));
  assert_false(kl_tracestate_valid("a=\x7f", 3));
  assert_false(kl_tracestate_valid("a=\xc3\xa9", 4));
  char big[600];
  memset(big, 'a', sizeof big);
  assert_true(kl_tracestate_valid(big, 512));
  assert_false(kl_tracestate_valid(big, 513));
}

/* ---- ids and sampling ------------------------------------------------------------ */

static int cmp16(const void *a, const void *b) {
  return memcmp(a, b, 16);
}

static void test_ids(void **state) {
  (void)state;
  kl_trace_rng r, r2;
  assert_int_equal(kl_trace_rng_init(&r), 0);
  assert_int_equal(kl_trace_rng_init(&r2), 0);
  enum { N = 20000 };
  uint8_t(*ids)[16] = malloc(sizeof(*ids) * 2 * N);
  assert_non_null(ids);
  static const uint8_t zero[16];
  for (int i = 0; i < N; i++) {
    kl_trace_ids_new(i % 2 ? &r : &r2, ids[i]);
    assert_memory_not_equal(ids[i], zero, 16);
    memset(ids[N + i], 0, 16);
    kl_trace_span_id_new(&r, ids[N + i]);
    assert_memory_not_equal(ids[N + i], zero, 8);
  }
  qsort(ids, 2 * N, 16, cmp16);
  for (int i = 1; i < 2 * N; i++)
    assert_memory_not_equal(ids[i - 1], ids[i], 16);
  /* Each bit of the trace ids is set about half the time. */
  int ones[128] = {0};
  for (int i = 0; i < 4000; i++) {
    uint8_t t[16];
    kl_trace_ids_new(&r, t);
    for (int b = 0; b < 128; b++)
      ones[b] += t[b / 8] >> (b % 8) & 1;
  }
  for (int b = 0; b < 128; b++)
    assert_true(ones[b] > 1700 && ones[b] < 2300);
  free(ids);
}

static void test_sampler(void **state) {
  (void)state;
  kl_trace_rng r;
  kl_trace_rng_init(&r);
  uint8_t tid[16];
  kl_trace_ids_new(&r, tid);
  kl_trace_ctx sampled = {.flags = 1}, unsampled = {.flags = 0}, other = {.flags = 0x02};
  /* A parent decides, whatever the ratio. */
  assert_int_equal(kl_trace_sample(0.0, &sampled, tid), 1);
  assert_int_equal(kl_trace_sample(1.0, &unsampled, tid), 0);
  assert_int_equal(kl_trace_sample(1.0, &other, tid), 0);
  assert_int_equal(kl_trace_sample(0.0, &(kl_trace_ctx){.flags = 0x03}, tid), 1);
  /* No parent: 0 never, 1 always, nonsense never. */
  static const uint8_t ones[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                   0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  static const uint8_t low[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                  0xff, 0,    0,    0,    0,    0,    0,    1};
  assert_int_equal(kl_trace_sample(0.0, NULL, ones), 0);
  assert_int_equal(kl_trace_sample(-1.0, NULL, ones), 0);
  assert_int_equal(kl_trace_sample(NAN, NULL, ones), 0);
  assert_int_equal(kl_trace_sample(1.0, NULL, low), 1);
  assert_int_equal(kl_trace_sample(2.0, NULL, low), 1);
  assert_int_equal(kl_trace_sample(1e-30, NULL, ones), 0); /* below 2^-56 */
  /* The rightmost 56 bits against T = 2^56 - round(ratio * 2^56): 0.5 -> T = 0x80000000000000. */
  uint8_t edge[16] = {0};
  edge[9] = 0x80; /* R == T: sampled */
  assert_int_equal(kl_trace_sample(0.5, NULL, edge), 1);
  edge[9] = 0x7f;
  memset(edge + 10, 0xff, 6); /* R == T - 1: not */
  assert_int_equal(kl_trace_sample(0.5, NULL, edge), 0);
  edge[8] = 0xff; /* byte 8 is not part of R */
  assert_int_equal(kl_trace_sample(0.5, NULL, edge), 0);
  /* About `ratio` of random ids; a lower ratio's sample is a subset of a higher one's. */
  enum { N = 200000 };
  int n10 = 0, n25 = 0;
  for (int i = 0; i < N; i++) {
    kl_trace_ids_new(&r, tid);
    int a = kl_trace_sample(0.10, NULL, tid), b = kl_trace_sample(0.25, NULL, tid);
    assert_true(!a || b);
    assert_int_equal(kl_trace_sample(0.10, NULL, tid), a); /* deterministic */
    n10 += a;
    n25 += b;
  }
  assert_true(fabs((double)n10 / N - 0.10) < 0.005);
  assert_true(fabs((double)n25 / N - 0.25) < 0.005);
}

/* ---- span encoding --------------------------------------------------------------- */

static void make_ctx(kl_trace_ctx *c, uint8_t seq) {
  memset(c, 0, sizeof *c);
  for (int i = 0; i < 16; i++)
    c->trace_id[i] = (uint8_t)(0xa0 + i);
  for (int i = 0; i < 8; i++)
    c->span_id[i] = (uint8_t)(i + 1);
  c->span_id[7] = seq;
  c->flags = 1;
}

static void test_span_encoding(void **state) {
  (void)state;
  kl_trace_ctx c;
  make_ctx(&c, 9);
  static const uint8_t parent[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  kl_span s;
  const char *ts = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
  kl_span_begin(&s, &c, parent, ts, strlen(ts), "GET /users/{id}", 15, KL_SPAN_SERVER,
                1700000000123456789u);
  kl_span_attr_str(&s, "http.request.method", "GET", 3);
  kl_span_attr_int(&s, "http.response.status_code", 503);
  kl_span_attr_int(&s, "neg", -5);
  kl_span_attr_int(&s, "min", INT64_MIN);
  kl_span_attr_bool(&s, "yes", 1);
  kl_span_attr_bool(&s, "no", 0);
  kl_span_attr_double(&s, "ratio", 0.25);
  kl_span_attr_double(&s, "zero", 0.0);
  kl_span_attr_str(&s, "bad.utf8",
                   "a\xff"
                   "b\xc3",
                   4);
  kl_span_attr_str(&s, "empty", NULL, 9);
  kl_span_set_status(&s, KL_STATUS_ERROR, "upstream down", 13);
  assert_int_equal(kl_span_end(&s, 1700000000223456789u, NULL), -EINVAL); /* no queue */
  dspan d;
  decode_span(s.buf, s.len, &d);
  assert_memory_equal(d.tid, c.trace_id, 16);
  assert_memory_equal(d.sid, c.span_id, 8);
  assert_true(d.has_parent);
  assert_memory_equal(d.parent, parent, 8);
  assert_string_equal(d.tracestate, ts);
  assert_string_equal(d.name, "GET /users/{id}");
  assert_int_equal(d.kind, 2);
  assert_int_equal(d.start, 1700000000123456789u);
  assert_int_equal(d.end, 1700000000223456789u);
  assert_int_equal(d.flags, 1);
  assert_int_equal(d.dropped, 0);
  assert_true(d.has_status);
  assert_int_equal(d.status_code, 2);
  assert_string_equal(d.status_msg, "upstream down");
  assert_int_equal(d.nattrs, 10);
  const dattr *a = find_attr(d.attrs, d.nattrs, "http.request.method");
  assert_non_null(a);
  assert_int_equal(a->type, 1);
  assert_string_equal(a->s, "GET");
  a = find_attr(d.attrs, d.nattrs, "http.response.status_code");
  assert_int_equal(a->type, 3);
  assert_int_equal(a->i, 503);
  assert_int_equal(find_attr(d.attrs, d.nattrs, "neg")->i, -5);
  assert_int_equal(find_attr(d.attrs, d.nattrs, "min")->i, INT64_MIN);
  a = find_attr(d.attrs, d.nattrs, "yes");
  assert_int_equal(a->type, 2);
  assert_int_equal(a->i, 1);
  a = find_attr(d.attrs, d.nattrs, "no"); /* a oneof member is written even when false */
  assert_int_equal(a->type, 2);
  assert_int_equal(a->i, 0);
  a = find_attr(d.attrs, d.nattrs, "ratio");
  assert_int_equal(a->type, 4);
  assert_true(a->d == 0.25);
  assert_int_equal(find_attr(d.attrs, d.nattrs, "zero")->type, 4);
  a = find_attr(d.attrs, d.nattrs, "bad.utf8");
  assert_string_equal(a->s, "a\xef\xbf\xbd"
                            "b\xef\xbf\xbd");
  a = find_attr(d.attrs, d.nattrs, "empty");
  assert_int_equal(a->type, 1);
  assert_int_equal(a->slen, 0);

  /* Root span, no tracestate, OK status: no parent field, status without message. */
  kl_span_begin(&s, &c, NULL, "bad\ntracestate", 14, "x", 1, KL_SPAN_INTERNAL, 1);
  kl_span_set_status(&s, KL_STATUS_OK, "ignored with OK", 15);
  kl_span_end(&s, 2, NULL);
  decode_span(s.buf, s.len, &d);
  assert_false(d.has_parent);
  assert_string_equal(d.tracestate, "");
  assert_int_equal(d.kind, 1);
  assert_int_equal(d.status_code, 1);
  assert_string_equal(d.status_msg, "");
  /* Unset status: no Status message at all. */
  kl_span_begin(&s, &c, NULL, NULL, 0, "x", 1, KL_SPAN_CLIENT, 1);
  kl_span_set_status(&s, KL_STATUS_ERROR, "first", 5);
  kl_span_set_status(&s, KL_STATUS_UNSET, NULL, 0); /* last call wins */
  kl_span_end(&s, 2, NULL);
  decode_span(s.buf, s.len, &d);
  assert_false(d.has_status);
  assert_int_equal(d.kind, 3);
}

/* Attributes past the capacity are dropped and counted; names and messages are cut. */
static void test_span_limits(void **state) {
  (void)state;
  kl_trace_ctx c;
  make_ctx(&c, 1);
  char big[3000];
  memset(big, 'n', sizeof big);
  big[KL_SPAN_NAME_MAX - 1] = '\xc3'; /* a 2-byte sequence across the cut */
  big[KL_SPAN_NAME_MAX] = '\xa9';
  kl_span s;
  kl_span_begin(&s, &c, NULL, NULL, 0, big, sizeof big, KL_SPAN_SERVER, 1);
  char val[100];
  memset(val, 'v', sizeof val);
  int added = 0;
  for (int i = 0; i < 100; i++) {
    char key[16];
    snprintf(key, sizeof key, "k%d", i);
    kl_span_attr_str(&s, key, val, sizeof val);
    if (s.dropped_attrs == 0) added++;
  }
  kl_span_attr_str(&s, "huge", big, sizeof big); /* bigger than the whole span */
  kl_span_attr_int(&s, "small", 1);              /* may still fit, or be dropped: counted */
  kl_span_set_status(&s, KL_STATUS_ERROR, big, sizeof big);
  kl_span_end(&s, 2, NULL);
  assert_true(s.len <= KL_SPAN_MAX);
  assert_true(s.dropped_attrs >= 100 - (uint32_t)added + 1);
  dspan d;
  decode_span(s.buf, s.len, &d);
  assert_int_equal(d.dropped, s.dropped_attrs);
  assert_int_equal((uint32_t)d.nattrs + d.dropped, 102);
  assert_true(s.len > KL_SPAN_MAX - 300);                 /* filled, not abandoned early */
  assert_int_equal(strlen(d.name), KL_SPAN_NAME_MAX - 1); /* cut before the split sequence */
  assert_int_equal(strlen(d.status_msg), KL_SPAN_STATUS_MSG_MAX);
}

/* ---- an in-process OTLP/HTTP collector -------------------------------------------- */

typedef struct reply {
  int status;
  int retry_after; /* -1: none */
  bool close;      /* Connection: close, then close */
  bool chunked;    /* body as chunks */
  bool http10;     /* HTTP/1.0 and no length: delimited by close */
} reply;

typedef struct req {
  char head[2048];
  uint8_t *body;
  size_t len;
  uint64_t at_ms;
  int conn;
} req;

typedef struct srv {
  int lfd;
  uint16_t port;
  pthread_t th;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  reply script[32];
  int nscript, next;
  bool hold; /* answer nothing until cleared */
  req reqs[256];
  int nreqs;
  int conns;
  bool stop;
  char err[128];
} srv;

static bool srv_stopped(srv *s) {
  pthread_mutex_lock(&s->mu);
  bool st = s->stop;
  pthread_mutex_unlock(&s->mu);
  return st;
}

/* Reads one request from fd. 1, 0 on EOF or stop, -1 on error. */
static int srv_read_req(srv *s, int fd, req *r) {
  char buf[65536];
  size_t len = 0;
  char *eoh = NULL;
  uint8_t *body = NULL;
  size_t clen = 0, have = 0;
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int pr = poll(&p, 1, 50);
    if (pr == 0) {
      if (srv_stopped(s)) goto eof;
      continue;
    }
    if (!eoh) {
      ssize_t n = recv(fd, buf + len, sizeof buf - len - 1, 0);
      if (n <= 0) goto eof;
      len += (size_t)n;
      buf[len] = '\0';
      eoh = strstr(buf, "\r\n\r\n");
      if (!eoh) continue;
      size_t hl = (size_t)(eoh + 4 - buf);
      if (hl >= sizeof r->head) return -1;
      memcpy(r->head, buf, hl);
      r->head[hl] = '\0';
      const char *cl = strcasestr(r->head, "\r\nContent-Length:");
      if (!cl) return -1;
      clen = strtoul(cl + 17, NULL, 10);
      body = malloc(clen ? clen : 1);
      have = len - hl < clen ? len - hl : clen;
      memcpy(body, buf + hl, have);
    } else {
      ssize_t n = recv(fd, body + have, clen - have, 0);
      if (n <= 0) {
        free(body);
        return -1;
      }
      have += (size_t)n;
    }
    if (have == clen) {
      r->body = body;
      r->len = clen;
      r->at_ms = now_ms();
      return 1;
    }
  }
eof:
  free(body);
  return 0;
}

static void srv_answer(int fd, const reply *a) {
  char out[512];
  int n;
  if (a->status == 204) {
    n = snprintf(out, sizeof out, "HTTP/1.1 204 No Content\r\n\r\n");
  } else if (a->http10) {
    n = snprintf(out, sizeof out, "HTTP/1.0 %d X\r\nContent-Type: text/plain\r\n\r\nsome body",
                 a->status);
  } else if (a->chunked) {
    n = snprintf(out, sizeof out,
                 "HTTP/1.1 %d X\r\nTransfer-Encoding: chunked\r\n%s\r\n"
                 "3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\n",
                 a->status, a->close ? "Connection: close\r\n" : "");
  } else {
    char ra[64] = "";
    if (a->retry_after >= 0) snprintf(ra, sizeof ra, "Retry-After: %d\r\n", a->retry_after);
    n = snprintf(out, sizeof out,
                 "HTTP/1.1 100 Continue\r\n\r\n"
                 "HTTP/1.1 %d Whatever\r\ncontent-type: application/x-protobuf\r\n%s%s"
                 "content-length: 2\r\n\r\n",
                 a->status, ra, a->close ? "Connection: close\r\n" : "");
    memcpy(out + n, "\x0a\x00", 2); /* partial_success {}: a body to skip */
    n += 2;
  }
  ssize_t w = send(fd, out, (size_t)n, MSG_NOSIGNAL);
  (void)w;
}

static void *srv_main(void *p) {
  srv *s = p;
  while (!srv_stopped(s)) {
    struct pollfd lp = {.fd = s->lfd, .events = POLLIN};
    if (poll(&lp, 1, 50) <= 0) continue;
    int fd = accept(s->lfd, NULL, NULL);
    if (fd < 0) continue;
    pthread_mutex_lock(&s->mu);
    int conn = ++s->conns;
    pthread_mutex_unlock(&s->mu);
    for (;;) {
      req r = {0};
      int rc = srv_read_req(s, fd, &r);
      if (rc <= 0) {
        if (rc < 0) snprintf(s->err, sizeof s->err, "bad request");
        break;
      }
      r.conn = conn;
      pthread_mutex_lock(&s->mu);
      if (s->nreqs < 256)
        s->reqs[s->nreqs++] = r;
      else
        free(r.body);
      pthread_cond_broadcast(&s->cv);
      while (s->hold && !s->stop)
        pthread_cond_wait(&s->cv, &s->mu);
      reply a = {.status = 200, .retry_after = -1};
      if (s->next < s->nscript) a = s->script[s->next++];
      pthread_mutex_unlock(&s->mu);
      srv_answer(fd, &a);
      if (a.close || a.http10) break;
    }
    close(fd);
  }
  return NULL;
}

static srv *srv_start(void) {
  srv *s = calloc(1, sizeof *s);
  assert_non_null(s);
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(s->lfd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(s->lfd, 16), 0);
  socklen_t al = sizeof a;
  assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&a, &al), 0);
  s->port = ntohs(a.sin_port);
  assert_int_equal(pthread_create(&s->th, NULL, srv_main, s), 0);
  return s;
}

static void srv_script(srv *s, reply r) {
  pthread_mutex_lock(&s->mu);
  s->script[s->nscript++] = r;
  pthread_mutex_unlock(&s->mu);
}

static void srv_hold(srv *s, bool hold) {
  pthread_mutex_lock(&s->mu);
  s->hold = hold;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

/* Waits until the server has `n` requests (5 s at most); returns how many it has. */
static int srv_wait(srv *s, int n, unsigned timeout_ms) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += timeout_ms / 1000;
  until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&s->mu);
  while (s->nreqs < n && pthread_cond_timedwait(&s->cv, &s->mu, &until) == 0) {
  }
  int got = s->nreqs;
  pthread_mutex_unlock(&s->mu);
  return got;
}

static void srv_stop(srv *s) {
  pthread_mutex_lock(&s->mu);
  s->stop = true;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  pthread_join(s->th, NULL);
  close(s->lfd);
  assert_string_equal(s->err, "");
  for (int i = 0; i < s->nreqs; i++)
    free(s->reqs[i].body);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  free(s);
}

static kl_trace_config base_cfg(srv *s, char *url, size_t ulen) {
  snprintf(url, ulen, "http://127.0.0.1:%u/v1/traces", s ? s->port : 1);
  kl_trace_config c = {
      .endpoint = url,
      .service_name = "keel-test",
      .service_version = "9.9.9",
      .host_name = "box",
      .batch_delay_ms = 50,
      .export_timeout_ms = 2000,
      .retry_initial_ms = 40,
      .retry_max_ms = 200,
      .retry_max_elapsed_ms = 3000,
  };
  return c;
}

/* Ends one small span with id `seq` on q. */
static int push_span(kl_traceq *q, uint32_t seq, size_t pad) {
  kl_trace_ctx c;
  make_ctx(&c, 0);
  c.span_id[4] = (uint8_t)(seq >> 24);
  c.span_id[5] = (uint8_t)(seq >> 16);
  c.span_id[6] = (uint8_t)(seq >> 8);
  c.span_id[7] = (uint8_t)seq;
  kl_span s;
  uint64_t t0 = kl_trace_now_ns();
  kl_span_begin(&s, &c, NULL, NULL, 0, "GET /x", 6, KL_SPAN_SERVER, t0);
  kl_span_attr_int(&s, "seq", seq);
  if (pad) {
    static char p[1500];
    memset(p, 'p', sizeof p);
    kl_span_attr_str(&s, "pad", p, pad < sizeof p ? pad : sizeof p);
  }
  return kl_span_end(&s, t0 + 1000, q);
}

static uint32_t span_seq(const dspan *d) {
  return (uint32_t)d->sid[4] << 24 | (uint32_t)d->sid[5] << 16 | (uint32_t)d->sid[6] << 8 |
         d->sid[7];
}

static bool head_has(const req *r, const char *needle) {
  return strcasestr(r->head, needle) != NULL;
}

/* Inflates a gzip body. */
static uint8_t *gunzip(const uint8_t *p, size_t n, size_t *out_len) {
  size_t cap = 8 << 20;
  uint8_t *out = malloc(cap);
  assert_non_null(out);
  z_stream z = {0};
  assert_int_equal(inflateInit2(&z, 15 + 16), Z_OK);
  z.next_in = (Bytef *)(uintptr_t)p;
  z.avail_in = (uInt)n;
  z.next_out = out;
  z.avail_out = (uInt)cap;
  assert_int_equal(inflate(&z, Z_FINISH), Z_STREAM_END);
  *out_len = cap - z.avail_out;
  inflateEnd(&z);
  return out;
}

/* Decodes request i (inflating it when gzip) and checks resource and scope. */
static void check_req(srv *s, int i, bool gzip, dreq *d) {
  req *r = &s->reqs[i];
  assert_true(strncmp(r->head, "POST /v1/traces HTTP/1.1\r\n", 26) == 0);
  assert_true(head_has(r, "\r\nContent-Type: application/x-protobuf\r\n"));
  char host[64];
  snprintf(host, sizeof host, "\r\nHost: 127.0.0.1:%u\r\n", s->port);
  assert_true(head_has(r, host));
  assert_int_equal(head_has(r, "\r\nContent-Encoding: gzip\r\n"), gzip);
  if (gzip) {
    size_t n;
    uint8_t *raw = gunzip(r->body, r->len, &n);
    decode_request(raw, n, d);
    free(raw);
  } else {
    decode_request(r->body, r->len, d);
  }
  assert_string_equal(d->scope_name, "keel");
  assert_true(d->scope_version[0] != '\0');
  assert_int_equal(d->nres, 3);
  assert_string_equal(find_attr(d->res, d->nres, "service.name")->s, "keel-test");
  assert_string_equal(find_attr(d->res, d->nres, "service.version")->s, "9.9.9");
  assert_string_equal(find_attr(d->res, d->nres, "host.name")->s, "box");
}

/* Checks that requests [from, to) together carry spans 0..n-1 exactly once. */
static void check_all_spans(srv *s, int from, int to, uint32_t n, bool gzip) {
  uint8_t *seen = calloc(n, 1);
  assert_non_null(seen);
  uint32_t total = 0;
  for (int i = from; i < to; i++) {
    dreq d;
    check_req(s, i, gzip, &d);
    for (int k = 0; k < d.nspans; k++) {
      uint32_t seq = span_seq(&d.spans[k]);
      assert_true(seq < n);
      assert_int_equal(seen[seq], 0);
      seen[seq] = 1;
      assert_int_equal(find_attr(d.spans[k].attrs, d.spans[k].nattrs, "seq")->i, seq);
      assert_string_equal(d.spans[k].name, "GET /x");
      total++;
    }
    free(d.spans);
  }
  assert_int_equal(total, n);
  free(seen);
}

/* ---- exporter tests -------------------------------------------------------------- */

/* A tracer against the test server (or against a closed port when there is none). */
typedef struct fx {
  srv *s;
  char url[96];
  kl_trace_config c; /* adjust between fx_init and fx_run */
  kl_tracer *t;
  kl_traceq *q;
} fx;

static void fx_init(fx *f, bool with_server) {
  memset(f, 0, sizeof *f);
  f->s = with_server ? srv_start() : NULL;
  f->c = base_cfg(f->s, f->url, sizeof f->url);
}

/* Starts the tracer, binds this thread and ends `n` spans (ids 0..n-1) with `pad` bytes each. */
static void fx_run(fx *f, uint32_t n, size_t pad) {
  char err[128];
  f->t = kl_tracer_new(&f->c, err, sizeof err);
  if (!f->t) fail_msg("kl_tracer_new: %s", err);
  f->q = kl_tracer_bind(f->t);
  assert_non_null(f->q);
  assert_ptr_equal(kl_tracer_bind(f->t), f->q);
  for (uint32_t i = 0; i < n; i++)
    assert_int_equal(push_span(f->q, i, pad), 0);
}

/* Stops the tracer: what it still held has been sent (or counted) when this returns. */
static void fx_flush(fx *f) {
  kl_tracer_free(f->t);
  f->t = NULL;
}

static void fx_done(fx *f) {
  fx_flush(f);
  if (f->s) srv_stop(f->s);
}

/* The counters once `done` spans are settled (exported or dropped), 3 s at most: the
 * exporter counts after the answer, a moment after the server saw the request. */
static kl_trace_stats settled(kl_tracer *t, uint64_t done) {
  kl_trace_stats st;
  uint64_t t0 = now_ms();
  do {
    kl_tracer_stats(t, &st);
    if (st.exported + st.dropped_export_failed >= done) break;
    sleep_ms(5);
  } while (now_ms() - t0 < 3000);
  return st;
}

static void want_stats(const kl_trace_stats *st, uint64_t requests, uint64_t failures,
                       uint64_t exported, uint64_t failed) {
  assert_int_equal(st->export_requests, requests);
  assert_int_equal(st->export_failures, failures);
  assert_int_equal(st->exported, exported);
  assert_int_equal(st->dropped_export_failed, failed);
}

static void test_tracer_config_errors(void **state) {
  (void)state;
  char err[160];
  kl_trace_config c = {0};
  static const struct {
    const char *url;
    const char *msg;
  } bad[] = {
      {NULL, "required"},
      {"", "required"},
      {"https://collector:4318/v1/traces", "https is not supported yet"},
      {"HTTPS://collector/v1/traces", "https is not supported yet"},
      {"grpc://collector:4317", "must start with http://"},
      {"http://:4318/v1/traces", "bad host or port"},
      {"http://collector:0/v1/traces", "bad host or port"},
      {"http://collector:99999/v1/traces", "bad host or port"},
      {"http://collector:43x8/v1/traces", "bad host or port"},
      {"http://user@collector/v1/traces", "bad host or port"},
      {"http://[::1/v1/traces", "bad host or port"},
      {"http://collector/v1 traces", "spaces"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    c.endpoint = bad[i].url;
    errno = 0;
    assert_null(kl_tracer_new(&c, err, sizeof err));
    assert_int_equal(errno, EINVAL);
    if (!strstr(err, bad[i].msg)) fail_msg("%s: \"%s\"", bad[i].url ? bad[i].url : "NULL", err);
  }
  c.endpoint = "http://127.0.0.1:1/v1/traces";
  c.compression = 7;
  assert_null(kl_tracer_new(&c, err, sizeof err));
  assert_non_null(strstr(err, "compression"));
  c.compression = 0;
  c.max_request_bytes = (size_t)1 << 40;
  assert_null(kl_tracer_new(&c, err, sizeof err));
  assert_non_null(strstr(err, "max_request_bytes"));
  assert_null(kl_tracer_new(NULL, err, sizeof err));
  /* Good ones start and stop at once (nothing queued, nothing sent). */
  static const char *const good[] = {"http://127.0.0.1:1/v1/traces", "http://[::1]:1/v1/traces",
                                     "http://localhost", "http://collector.example:4318/"};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    kl_trace_config g = {.endpoint = good[i]};
    kl_tracer *t = kl_tracer_new(&g, err, sizeof err);
    assert_non_null(t);
    assert_string_equal(err, "");
    kl_trace_stats st;
    kl_tracer_stats(t, &st);
    want_stats(&st, 0, 0, 0, 0);
    kl_tracer_free(t);
  }
  kl_tracer_free(NULL);
  assert_null(kl_tracer_bind(NULL));
}

/* Spans reach the collector by the batch delay; the connection is kept alive. */
static void test_export_basic(void **state) {
  (void)state;
  fx f;
  fx_init(&f, true);
  f.c.batch_delay_ms = 150;
  uint64_t t0 = now_ms();
  fx_run(&f, 3, 0);
  assert_int_equal(srv_wait(f.s, 1, 3000), 1);
  uint64_t waited = f.s->reqs[0].at_ms - t0;
  assert_true(waited >= 140); /* held for the batch delay, not sent per span */
  assert_true(waited < 1000);
  check_all_spans(f.s, 0, 1, 3, false);
  /* A second batch goes over the same connection. */
  for (uint32_t i = 0; i < 2; i++)
    assert_int_equal(push_span(f.q, i, 0), 0);
  assert_int_equal(srv_wait(f.s, 2, 3000), 2);
  check_all_spans(f.s, 1, 2, 2, false);
  assert_int_equal(f.s->reqs[1].conn, f.s->reqs[0].conn);
  kl_trace_stats st = settled(f.t, 5);
  want_stats(&st, 2, 0, 5, 0);
  assert_int_equal(st.dropped_queue_full, 0);
  fx_done(&f);
}

/* gzip: the header is set and the body inflates to the same request. */
static void test_export_gzip(void **state) {
  (void)state;
  fx f;
  fx_init(&f, true);
  f.c.compression = KL_TRACE_COMPRESS_GZIP;
  fx_run(&f, 50, 200);
  fx_flush(&f);
  assert_true(f.s->nreqs >= 1);
  check_all_spans(f.s, 0, f.s->nreqs, 50, true);
  assert_true(f.s->reqs[0].len < 50 * 200); /* the padding compressed */
  fx_done(&f);
}

/* A batch is sent as soon as it is full (not after the delay); the rest at shutdown. */
static void test_export_batch_size(void **state) {
  (void)state;
  fx f;
  fx_init(&f, true);
  f.c.batch_max_spans = 5;
  f.c.batch_delay_ms = 60000;
  uint64_t t0 = now_ms();
  fx_run(&f, 3, 0);
  sleep_ms(30); /* let the exporter go to sleep on a partial batch */
  for (uint32_t i = 3; i < 12; i++)
    assert_int_equal(push_span(f.q, i, 0), 0);
  assert_int_equal(srv_wait(f.s, 2, 3000), 2);
  assert_true(now_ms() - t0 < 2000);
  sleep_ms(100);
  assert_int_equal(f.s->nreqs, 2); /* the last 2 wait for the delay */
  fx_flush(&f);
  assert_int_equal(f.s->nreqs, 3);
  for (int i = 0; i < 3; i++) {
    dreq d;
    check_req(f.s, i, false, &d);
    assert_int_equal(d.nspans, i < 2 ? 5 : 2);
    free(d.spans);
  }
  check_all_spans(f.s, 0, 3, 12, false);
  fx_done(&f);
}

/* Requests stay under max_request_bytes; spans beyond go to the next request. */
static void test_export_request_cap(void **state) {
  (void)state;
  fx f;
  fx_init(&f, true);
  f.c.max_request_bytes = 64 * 1024;
  f.c.batch_delay_ms = 60000;
  fx_run(&f, 120, 1400);
  assert_true(srv_wait(f.s, 2, 3000) >= 2); /* full by bytes: sent without the delay */
  fx_flush(&f);
  assert_true(f.s->nreqs >= 3);
  for (int i = 0; i < f.s->nreqs; i++)
    assert_true(f.s->reqs[i].len <= 64 * 1024);
  check_all_spans(f.s, 0, f.s->nreqs, 120, false);
  fx_done(&f);
}

/* 503 with Retry-After: the same batch again after that many seconds. */
static void test_export_retry_after(void **state) {
  (void)state;
  fx f;
  fx_init(&f, true);
  srv_script(f.s, (reply){.status = 503, .retry_after = 1});
  fx_run(&f, 4, 0);
  assert_int_equal(srv_wait(f.s, 2, 4000), 2);
  req *r = f.s->reqs;
  uint64_t gap = r[1].at_ms - r[0].at_ms;
  assert_true(gap >= 950 && gap < 2500);
  assert_int_equal(r[0].len, r[1].len);
  assert_memory_equal(r[0].body, r[1].body, r[0].len);
  check_all_spans(f.s, 1, 2, 4, false);
  kl_trace_stats st = settled(f.t, 4);
  want_stats(&st, 2, 1, 4, 0);
  fx_done(&f);
}

/* Retryable statuses without Retry-After back off exponentially, then succeed. */
static void test_export_backoff(void **state) {
  (void)state;
  fx f;
  fx_init(&f, true);
  srv_script(f.s, (reply){.status = 503, .retry_after = -1});
  srv_script(f.s, (reply){.status = 429, .retry_after = -1});
  srv_script(f.s, (reply){.status = 502, .retry_after = -1, .close = true});
  srv_script(f.s, (reply){.status = 504, .retry_after = -1});
  f.c.retry_initial_ms = 60;
  f.c.retry_max_ms = 150;
  fx_run(&f, 3, 0);
  assert_int_equal(srv_wait(f.s, 5, 4000), 5);
  /* Delays in [b/2, b] for b = 60, 120, 150, 150 (jitter), give or take scheduling. */
  static const unsigned lo[4] = {25, 55, 70, 70}, hi[4] = {400, 500, 600, 600};
  req *r = f.s->reqs;
  for (int i = 0; i < 4; i++) {
    uint64_t gap = r[i + 1].at_ms - r[i].at_ms;
    if (gap < lo[i] || gap > hi[i]) fail_msg("retry %d after %llu ms", i, (unsigned long long)gap);
  }
  assert_int_not_equal(r[3].conn, r[2].conn); /* after Connection: close */
  check_all_spans(f.s, 4, 5, 3, false);
  kl_trace_stats st = settled(f.t, 3);
  want_stats(&st, 5, 4, 3, 0);
  fx_done(&f);
}

/* 400: dropped and counted at once, never retried. */
static void test_export_bad_request(void **state) {
  (void)state;
  fx f;
  fx_init(&f, true);
  srv_script(f.s, (reply){.status = 400, .retry_after = 1});
  fx_run(&f, 7, 0);
  assert_int_equal(srv_wait(f.s, 1, 3000), 1);
  sleep_ms(300);
  assert_int_equal(f.s->nreqs, 1);
  kl_trace_stats st = settled(f.t, 7);
  want_stats(&st, 1, 1, 0, 7);
  /* The next batch is unaffected. */
  assert_int_equal(push_span(f.q, 0, 0), 0);
  assert_int_equal(srv_wait(f.s, 2, 3000), 2);
  fx_done(&f);
}

/* Retries stop after retry_max_elapsed_ms: the batch is dropped and counted. */
static void test_export_retry_exhausted(void **state) {
  (void)state;
  fx f;
  fx_init(&f, false); /* nobody listens on loopback port 1: refused, an I/O error, retried */
  f.c.retry_initial_ms = 20;
  f.c.retry_max_ms = 40;
  f.c.retry_max_elapsed_ms = 250;
  fx_run(&f, 5, 0);
  kl_trace_stats st = settled(f.t, 5);
  assert_int_equal(st.dropped_export_failed, 5);
  assert_true(st.export_requests >= 4); /* 10-20, 20-40, 20-40, ... ms apart within 250 ms */
  want_stats(&st, st.export_requests, st.export_requests, 0, 5);
  fx_done(&f);
}

/* Producers never wait: while the exporter is stuck, a full ring drops and counts. */
static void test_queue_full(void **state) {
  (void)state;
  fx f;
  fx_init(&f, true);
  srv_hold(f.s, true);
  f.c.queue_bytes = 4096;
  f.c.batch_max_spans = 1;
  fx_run(&f, 1, 0);
  assert_int_equal(srv_wait(f.s, 1, 3000), 1); /* the exporter now waits for the answer */
  uint32_t ok = 1, dropped = 0;
  uint64_t t0 = now_ms();
  for (uint32_t i = 1; i < 200; i++) {
    int rc = push_span(f.q, i, 0);
    if (rc == 0)
      ok++;
    else if (rc == -ENOBUFS)
      dropped++;
    else
      fail_msg("push: %d", rc);
  }
  assert_true(now_ms() - t0 < 500); /* nothing blocked */
  assert_true(dropped > 100);
  kl_trace_stats st;
  kl_tracer_stats(f.t, &st);
  assert_int_equal(st.dropped_queue_full, dropped);
  srv_hold(f.s, false);
  assert_int_equal(srv_wait(f.s, (int)ok, 3000), (int)ok); /* one span a request */
  fx_flush(&f);
  assert_int_equal(f.s->nreqs, (int)ok);
  check_all_spans(f.s, 0, f.s->nreqs, ok, false); /* the ring took 0..ok-1, then refused all */
  fx_done(&f);
}

/* Shutdown flushes what is queued, with keep-alive, chunked and HTTP/1.0 answers on the way. */
static void test_export_flush_and_framing(void **state) {
  (void)state;
  fx f;
  fx_init(&f, true);
  srv_script(f.s, (reply){.status = 200, .chunked = true});
  srv_script(f.s, (reply){.status = 200, .http10 = true});
  srv_script(f.s, (reply){.status = 204, .retry_after = -1});
  f.c.batch_max_spans = 10;
  f.c.batch_delay_ms = 60000;
  fx_run(&f, 35, 0);
  fx_flush(&f);
  req *r = f.s->reqs;
  assert_int_equal(f.s->nreqs, 4);
  assert_int_equal(r[1].conn, r[0].conn);     /* chunked body read: connection kept */
  assert_int_not_equal(r[2].conn, r[1].conn); /* HTTP/1.0: closed after it */
  assert_int_equal(r[3].conn, r[2].conn);     /* 204: no body, kept */
  check_all_spans(f.s, 0, 4, 35, false);
  fx_done(&f);
}

typedef struct prod {
  kl_tracer *t;
  uint32_t base, n, ok;
} prod;

static void *producer(void *p) {
  prod *a = p;
  kl_traceq *q = kl_tracer_bind(a->t);
  if (!q) return NULL;
  for (uint32_t i = 0; i < a->n; i++) {
    if (push_span(q, a->base + i, 0) == 0) a->ok++;
    if (i % 64 == 0) sleep_ms(1);
  }
  return NULL;
}

/* Several threads, each with its own ring: every span arrives exactly once. */
static void test_export_threads(void **state) {
  (void)state;
  fx f;
  fx_init(&f, true);
  f.c.batch_max_spans = 100;
  fx_run(&f, 0, 0);
  enum { T = 4, N = 300 };
  pthread_t th[T];
  prod a[T];
  for (int i = 0; i < T; i++) {
    a[i] = (prod){.t = f.t, .base = (uint32_t)i * N, .n = N};
    assert_int_equal(pthread_create(&th[i], NULL, producer, &a[i]), 0);
  }
  for (int i = 0; i < T; i++) {
    pthread_join(th[i], NULL);
    assert_int_equal(a[i].ok, N);
  }
  fx_flush(&f);
  check_all_spans(f.s, 0, f.s->nreqs, T * N, false);
  fx_done(&f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_traceparent_valid),
      cmocka_unit_test(test_traceparent_invalid),
      cmocka_unit_test(test_traceparent_format),
      cmocka_unit_test(test_tracestate),
      cmocka_unit_test(test_ids),
      cmocka_unit_test(test_sampler),
      cmocka_unit_test(test_span_encoding),
      cmocka_unit_test(test_span_limits),
      cmocka_unit_test(test_tracer_config_errors),
      cmocka_unit_test(test_export_basic),
      cmocka_unit_test(test_export_gzip),
      cmocka_unit_test(test_export_batch_size),
      cmocka_unit_test(test_export_request_cap),
      cmocka_unit_test(test_export_retry_after),
      cmocka_unit_test(test_export_backoff),
      cmocka_unit_test(test_export_bad_request),
      cmocka_unit_test(test_export_retry_exhausted),
      cmocka_unit_test(test_queue_full),
      cmocka_unit_test(test_export_flush_and_framing),
      cmocka_unit_test(test_export_threads),
  };
  /* KL_TEST_FILTER=test_queue_full runs only the tests matching that pattern. */
  const char *filter = getenv("KL_TEST_FILTER");
  if (filter) cmocka_set_test_filter(filter);
  return cmocka_run_group_tests(tests, NULL, NULL);
}
