/* fuzz_http_resp.c - libFuzzer harness: upstream response streams through the response parser. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/parser.h"

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_http_resp: check failed at line %d: %s\n", __LINE__, #cond);           \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

#define MAXH 128
#define MAX_RESPS 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Small limits, so that the fuzzer reaches them, and the configuration defaults. */
static const kl_http_limits LIMS[] = {{48, 160, 5}, {8192, 32768, 100}};

typedef struct res {
  int rc;
  kl_http_resp r;
  kl_http_error e;
  kl_header hdrs[MAXH];
} res;

static void same(const res *a, const res *b) {
  CHECK(a->rc == b->rc);
  if (a->rc == 1) {
    CHECK(memcmp(&a->r, &b->r, sizeof(a->r)) == 0);
    CHECK(memcmp(a->hdrs, b->hdrs, a->r.nheaders * sizeof(kl_header)) == 0);
  } else if (a->rc < 0) {
    CHECK(a->e.status == b->e.status && strcmp(a->e.msg, b->e.msg) == 0);
    CHECK(a->e.offset == b->e.offset && a->e.framing == b->e.framing);
  }
}

/* One call on the first `k` bytes in an allocation of exactly k bytes, then one on all. */
static void parse_split(const char *buf, size_t len, size_t k, const kl_http_limits *lim, res *o) {
  memset(o, 0, sizeof(*o));
  char *pre = malloc(k ? k : 1);
  CHECK(pre);
  if (k) memcpy(pre, buf, k);
  size_t sc = 0;
  o->rc = kl_http_parse_response(pre, k, &sc, lim, o->hdrs, &o->r, &o->e);
  free(pre);
  if (o->rc != 0 || k == len) return;
  CHECK(sc <= k && (sc == 0 || buf[sc - 1] == '\n'));
  o->rc = kl_http_parse_response(buf, len, &sc, lim, o->hdrs, &o->r, &o->e);
}

/* One byte more per call, the hint carried along. */
static void parse_bytewise(const char *buf, size_t len, const kl_http_limits *lim, res *o) {
  memset(o, 0, sizeof(*o));
  size_t sc = 0;
  for (size_t have = 1; have <= len; have++) {
    size_t before = sc;
    o->rc = kl_http_parse_response(buf, have, &sc, lim, o->hdrs, &o->r, &o->e);
    if (o->rc != 0) {
      if (o->rc == 1) CHECK(sc == 0 && o->r.head_len == have); /* complete at its last byte */
      return;
    }
    CHECK(sc >= before && sc <= have);
  }
}

/* ---- what an accepted head must satisfy, checked with code of its own ------------------- */

static int ctl(unsigned char c) { /* not a field-vchar, SP or HTAB (RFC 9110 5.5) */
  return (c < 0x20 && c != '\t') || c == 0x7f;
}

static int token_char(unsigned char c) {
  return c > 0x20 && c < 0x7f && !strchr("\"(),/:;<=>?@[\\]{}", c);
}

static int same_ci(const char *a, size_t n, const char *b) {
  if (strlen(b) != n) return 0;
  for (size_t i = 0; i < n; i++)
    if (a[i] != b[i] && !(a[i] >= 'A' && a[i] <= 'Z' && a[i] + 32 == b[i])) return 0;
  return 1;
}

/* Elements of the list v[0, n), trimmed; calls fn(ctx, element) for each, empty ones too. */
static void elements(const char *v, size_t n, void (*fn)(void *, const char *, size_t), void *ctx) {
  size_t s = 0;
  for (size_t i = 0; i <= n; i++) {
    if (i < n && v[i] != ',') continue;
    size_t a = s, b = i;
    while (a < b && (v[a] == ' ' || v[a] == '\t'))
      a++;
    while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t'))
      b--;
    fn(ctx, v + a, b - a);
    s = i + 1;
  }
}

typedef struct facts {
  int lengths, bad_length, codings, bad_coding, close, keep;
  uint64_t length;
} facts;

static void length_element(void *ctx, const char *e, size_t n) {
  facts *f = ctx;
  uint64_t x = 0;
  if (n == 0 || n > 18) f->bad_length = 1;
  for (size_t i = 0; i < n; i++) {
    if (e[i] < '0' || e[i] > '9') f->bad_length = 1;
    x = x * 10 + (uint64_t)(unsigned char)(e[i] - '0');
  }
  if (f->lengths++ && x != f->length) f->bad_length = 1;
  f->length = x;
}

/* Transfer-Encoding: empty elements aside, the only coding keel takes is one "chunked". */
static void coding_element(void *ctx, const char *e, size_t n) {
  facts *f = ctx;
  if (n == 0) return;
  f->codings++;
  if (!same_ci(e, n, "chunked")) f->bad_coding = 1;
}

static void connection_element(void *ctx, const char *e, size_t n) {
  facts *f = ctx;
  f->close |= same_ci(e, n, "close");
  f->keep |= same_ci(e, n, "keep-alive");
}

static void check_head(const char *buf, size_t len, const kl_http_limits *lim, const res *o) {
  if (o->rc < 0) {
    CHECK(o->e.status == 502 && o->e.msg && o->e.msg[0] && o->e.offset <= len);
    return;
  }
  if (o->rc == 0) {
    CHECK(len < lim->header_bytes_max && !memmem(buf, len, "\r\n\r\n", 4));
    return;
  }
  const kl_http_resp *r = &o->r;
  size_t hl = r->head_len;
  CHECK(hl >= 16 && hl <= len && hl <= lim->header_bytes_max);
  CHECK(memmem(buf, hl, "\r\n\r\n", 4) == buf + hl - 4);
  for (size_t i = 0; i < hl; i++) { /* every CR and LF is part of a CRLF */
    if (buf[i] == '\r') CHECK(buf[i + 1] == '\n');
    if (buf[i] == '\n') CHECK(i > 0 && buf[i - 1] == '\r');
  }
  /* Status line. */
  CHECK(memcmp(buf, "HTTP/1.", 7) == 0 && (buf[7] == '0' || buf[7] == '1') && buf[8] == ' ');
  CHECK(r->minor == buf[7] - '0');
  CHECK(r->status >= 100 && r->status <= 599);
  char st[4];
  snprintf(st, sizeof(st), "%03u", (unsigned)r->status);
  CHECK(memcmp(buf + 9, st, 3) == 0);
  CHECK(r->reason_off == (buf[12] == ' ' ? 13u : 12u));
  for (uint32_t i = 0; i < r->reason_len; i++)
    CHECK(!ctl((unsigned char)buf[r->reason_off + i]));
  size_t p = (size_t)r->reason_off + r->reason_len;
  CHECK(buf[p] == '\r' && buf[p + 1] == '\n');
  p += 2;
  /* Fields, one per line, and their framing meaning. */
  CHECK(r->nheaders <= lim->header_count_max);
  facts f;
  memset(&f, 0, sizeof(f));
  for (uint32_t i = 0; i < r->nheaders; i++) {
    const kl_header *h = &o->hdrs[i];
    CHECK(h->name_off == p && h->name_len >= 1);
    for (uint32_t j = 0; j < h->name_len; j++)
      CHECK(token_char((unsigned char)buf[h->name_off + j]));
    CHECK(buf[h->name_off + h->name_len] == ':');
    for (size_t j = h->name_off + h->name_len + 1; j < h->value_off; j++)
      CHECK(buf[j] == ' ' || buf[j] == '\t');
    const char *v = buf + h->value_off;
    if (h->value_len) CHECK(v[0] != ' ' && v[0] != '\t' && v[h->value_len - 1] != ' ');
    p = h->value_off;
    while (buf[p] != '\r')
      CHECK(!ctl((unsigned char)buf[p++]));
    CHECK(p - h->value_off >= h->value_len);
    p += 2;
    const char *name = buf + h->name_off;
    if (same_ci(name, h->name_len, "content-length")) elements(v, h->value_len, length_element, &f);
    if (same_ci(name, h->name_len, "transfer-encoding"))
      elements(v, h->value_len, coding_element, &f);
    if (same_ci(name, h->name_len, "connection")) elements(v, h->value_len, connection_element, &f);
  }
  CHECK(p == hl - 2);
  CHECK(!f.bad_length && r->has_length == (f.lengths > 0));
  if (f.lengths) CHECK(r->content_length == f.length);
  CHECK(r->chunked == (f.codings > 0) && f.codings <= 1 && !f.bad_coding);
  if (r->chunked) CHECK(r->minor == 1 && !r->has_length);
  CHECK(r->keep_alive == (r->minor == 1 ? !f.close : f.keep && !f.close));
  CHECK(r->close_delimited == (!r->has_length && !r->chunked && r->status >= 200 &&
                               r->status != 204 && r->status != 304));
  CHECK(kl_http_resp_has_body(r, 1) == 0);
  if (kl_http_resp_has_body(r, 0)) CHECK(r->status >= 200 && r->status != 204 && r->status != 304);
}

/* ---- bodies -------------------------------------------------------------------------------- */

/* Decodes a chunked body at `start` whole, then byte by byte: both must agree. Returns its end. */
static size_t chunked_end(const char *buf, size_t len, size_t start) {
  char *a = malloc(len), *b = malloc(len);
  CHECK(a && b);
  memcpy(a, buf, len);
  memcpy(b, buf, len);
  kl_chunked ca, cb;
  kl_chunked_init(&ca);
  kl_chunked_init(&cb);
  kl_http_error ea, eb;
  size_t ra = start, wa = start, rb = start, wb = start;
  int rca = kl_chunked_decode(&ca, a, len, &ra, &wa, 1 << 20, 256, &ea), rcb = 0;
  for (size_t have = start + 1; have <= len && rcb == 0; have++)
    rcb = kl_chunked_decode(&cb, b, have, &rb, &wb, 1 << 20, 256, &eb);
  CHECK(rca == rcb && ra == rb && wa == wb && memcmp(a, b, wa) == 0);
  if (rca < 0) CHECK(strcmp(ea.msg, eb.msg) == 0 && ea.offset == eb.offset);
  free(a);
  free(b);
  return rca == 1 ? ra : 0;
}

static void run_stream(const uint8_t *data, size_t size, const kl_http_limits *lim, unsigned seed) {
  res *w = malloc(sizeof(*w)), *s = malloc(sizeof(*s)), *t = malloc(sizeof(*t));
  CHECK(w && s && t);
  size_t off = 0;
  for (unsigned n = 0; n < MAX_RESPS && off < size; n++) {
    size_t len = size - off;
    char *buf = malloc(len); /* exactly the bytes left: ASan sees any read past them */
    CHECK(buf);
    memcpy(buf, data + off, len);
    memset(w, 0, sizeof(*w));
    size_t sc = 0;
    w->rc = kl_http_parse_response(buf, len, &sc, lim, w->hdrs, &w->r, &w->e);
    check_head(buf, len, lim, w);
    parse_split(buf, len, (seed * 2654435761u + n * 40503u) % (len + 1), lim, s);
    same(w, s);
    parse_bytewise(buf, len, lim, t);
    same(w, t);
    size_t next = 0;
    if (w->rc == 1) {
      size_t hl = w->r.head_len;
      if (!kl_http_resp_has_body(&w->r, (seed >> n) & 1 && w->r.status >= 200))
        next = hl;
      else if (w->r.chunked)
        next = chunked_end(buf, len, hl);
      else if (w->r.has_length && w->r.content_length <= len - hl)
        next = hl + (size_t)w->r.content_length;
      /* else the body runs to the end of the input, or more is needed */
    }
    free(buf);
    if (next == 0) break;
    off += next;
  }
  free(w);
  free(s);
  free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 4096) return 0; /* byte by byte is quadratic in the longest line */
  unsigned seed = size ? data[size - 1] : 0;
  for (size_t i = 0; i < sizeof(LIMS) / sizeof(LIMS[0]); i++)
    run_stream(data, size, &LIMS[i], seed);
  return 0;
}
