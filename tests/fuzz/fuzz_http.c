/* fuzz_http.c - libFuzzer harness: request streams through the head parser and chunked decoder. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/parser.h"

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_http: check failed at line %d: %s\n", __LINE__, #cond);                \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

#define MAXH 128
#define MAX_REQS 32

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct cfg {
  kl_http_limits lim;
  uint64_t body_max;
  uint32_t trailer_max;
} cfg;

/* Small limits, so that the fuzzer reaches them, and the configuration defaults. */
static const cfg CFGS[] = {
    {{48, 192, 6}, 64, 48},
    {{8192, 32768, 100}, 1024 * 1024, 32768},
};

typedef struct hres {
  int rc;
  kl_http_head h;
  kl_http_error e;
  kl_header hdrs[MAXH];
} hres;

/* ---- independent character classes (RFC 9110) for the invariants ------------------------- */

static int is_tchar(unsigned char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return 1;
  return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_ows(char c) {
  return c == ' ' || c == '\t';
}

/* field-vchar, SP or HTAB (RFC 9110 5.5): no other control characters, obs-text allowed. */
static int is_field_char(unsigned char c) {
  return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static int is_hex(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int hexv(unsigned char c) {
  return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

static int ieq(const char *a, size_t n, const char *lower) {
  if (strlen(lower) != n) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)a[i];
    if (c >= 'A' && c <= 'Z') c = (unsigned char)(c + 32);
    if (c != (unsigned char)lower[i]) return 0;
  }
  return 1;
}

/* Whether the comma-separated list v[0, n) has the element `lower` (case-insensitive). */
static int list_has(const char *v, size_t n, const char *lower, int *nonempty) {
  int found = 0;
  size_t i = 0;
  while (i < n) {
    size_t s = i;
    while (i < n && v[i] != ',')
      i++;
    size_t e = i;
    while (s < e && is_ows(v[s]))
      s++;
    while (e > s && is_ows(v[e - 1]))
      e--;
    if (e > s) {
      if (nonempty) *nonempty = 1;
      if (ieq(v + s, e - s, lower)) found = 1;
    }
    i++;
  }
  return found;
}

/* ---- head parsing ------------------------------------------------------------------------- */

static void parse_whole(const char *buf, size_t len, const kl_http_limits *lim, hres *r) {
  size_t sc = 0;
  r->rc = kl_http_parse_head(buf, len, &sc, lim, r->hdrs, &r->h, &r->e);
  if (r->rc == 0) CHECK(sc <= len && (sc == 0 || buf[sc - 1] == '\n'));
  if (r->rc == 1) CHECK(sc == 0);
}

/* The first `k` bytes arrive in an allocation of exactly k bytes, then all of them. */
static void parse_split(const char *buf, size_t len, size_t k, const kl_http_limits *lim, hres *r) {
  char *pre = malloc(k ? k : 1);
  CHECK(pre);
  if (k) memcpy(pre, buf, k);
  size_t sc = 0;
  r->rc = kl_http_parse_head(pre, k, &sc, lim, r->hdrs, &r->h, &r->e);
  free(pre);
  if (r->rc == 1) CHECK(r->h.head_len <= k);
  if (r->rc != 0 || k == len) return;
  CHECK(sc <= k);
  r->rc = kl_http_parse_head(buf, len, &sc, lim, r->hdrs, &r->h, &r->e);
}

/* Bytes arriving `step` at a time, the hint carried along. */
static void parse_steps(const char *buf, size_t len, size_t step, const kl_http_limits *lim,
                        hres *r) {
  size_t sc = 0, have = 0;
  r->rc = 0;
  while (have < len) {
    have = len - have < step ? len : have + step;
    size_t before = sc;
    r->rc = kl_http_parse_head(buf, have, &sc, lim, r->hdrs, &r->h, &r->e);
    if (r->rc != 0) break;
    CHECK(sc >= before && sc <= have); /* the hint only moves forward */
  }
}

static void same_result(const hres *a, const hres *b) {
  CHECK(a->rc == b->rc);
  if (a->rc == 1) {
    const kl_http_head *x = &a->h, *y = &b->h;
    CHECK(x->method_off == y->method_off && x->method_len == y->method_len);
    CHECK(x->target_off == y->target_off && x->target_len == y->target_len);
    CHECK(x->path_off == y->path_off && x->path_len == y->path_len);
    CHECK(x->query_off == y->query_off && x->query_len == y->query_len);
    CHECK(x->head_len == y->head_len && x->minor == y->minor);
    CHECK(x->keep_alive == y->keep_alive && x->chunked == y->chunked);
    CHECK(x->has_length == y->has_length && x->content_length == y->content_length);
    CHECK(x->expect_continue == y->expect_continue && x->is_head == y->is_head);
    CHECK(x->nheaders == y->nheaders);
    for (uint32_t i = 0; i < x->nheaders; i++) {
      CHECK(a->hdrs[i].name_off == b->hdrs[i].name_off);
      CHECK(a->hdrs[i].name_len == b->hdrs[i].name_len);
      CHECK(a->hdrs[i].value_off == b->hdrs[i].value_off);
      CHECK(a->hdrs[i].value_len == b->hdrs[i].value_len);
    }
  } else if (a->rc < 0) {
    CHECK(a->e.status == b->e.status);
    CHECK(strcmp(a->e.msg, b->e.msg) == 0);
    CHECK(a->e.offset == b->e.offset);
  }
}

/* What a parsed head must satisfy, checked against the bytes with code of its own. */
static void check_head(const char *buf, size_t len, const kl_http_limits *lim, const hres *r) {
  if (r->rc < 0) {
    int st = r->e.status;
    CHECK(st == 400 || st == 413 || st == 414 || st == 417 || st == 431 || st == 501 || st == 505);
    CHECK(r->e.msg && r->e.msg[0]);
    CHECK(r->e.offset <= len);
    return;
  }
  if (r->rc == 0) {
    /* Needing more bytes: no complete, well-terminated head in what is there. */
    CHECK(len < lim->header_bytes_max);
    CHECK(!memmem(buf, len, "\r\n\r\n", 4));
    for (size_t i = 0; i < len; i++)
      if (buf[i] == '\n') CHECK(i > 0 && buf[i - 1] == '\r');
    return;
  }
  CHECK(r->rc == 1);
  const kl_http_head *h = &r->h;
  size_t hl = h->head_len;
  CHECK(hl >= 4 && hl <= len && hl <= lim->header_bytes_max);
  CHECK(memcmp(buf + hl - 4, "\r\n\r\n", 4) == 0);
  /* Every CR and LF in the head belongs to a CRLF, and each line but the first two is a field. */
  size_t lines = 0, first_end = 0;
  for (size_t i = 0; i < hl; i++) {
    if (buf[i] == '\r') CHECK(i + 1 < hl && buf[i + 1] == '\n');
    if (buf[i] == '\n') {
      CHECK(i > 0 && buf[i - 1] == '\r');
      if (!lines) first_end = i - 1;
      lines++;
    }
  }
  CHECK(lines == (size_t)h->nheaders + 2);
  CHECK(first_end <= lim->request_line_max);
  CHECK(memmem(buf, hl, "\r\n\r\n", 4) == buf + hl - 4); /* the first blank line ends it */
  /* Request line: method SP target SP HTTP/1.d CRLF */
  CHECK(h->method_off == 0 && h->method_len >= 1);
  for (uint32_t i = 0; i < h->method_len; i++)
    CHECK(is_tchar((unsigned char)buf[i]));
  CHECK(buf[h->method_len] == ' ');
  CHECK(h->target_off == h->method_len + 1 && h->target_len >= 1);
  for (uint32_t i = 0; i < h->target_len; i++) {
    unsigned char c = (unsigned char)buf[h->target_off + i];
    CHECK(c > 0x20 && c < 0x7f);
  }
  size_t v = (size_t)h->target_off + h->target_len;
  CHECK(v + 11 == first_end + 2 && buf[v] == ' ');
  CHECK(memcmp(buf + v + 1, "HTTP/1.", 7) == 0);
  CHECK(buf[v + 8] >= '0' && buf[v + 8] <= '9');
  CHECK(h->minor == (buf[v + 8] == '0' ? 0 : 1));
  CHECK(h->is_head == (h->method_len == 4 && memcmp(buf, "HEAD", 4) == 0));
  /* Path and query lie inside the target. */
  uint32_t te = h->target_off + h->target_len;
  CHECK(h->path_off >= h->target_off && h->path_off + h->path_len <= te);
  if (h->path_len == 0)
    CHECK(buf[h->target_off] != '/');
  else
    CHECK(buf[h->path_off] == '/' || (h->path_len == 1 && buf[h->path_off] == '*'));
  CHECK(!memchr(buf + h->path_off, '?', h->path_len));
  if (h->query_len) {
    CHECK(h->query_off > h->target_off && h->query_off + h->query_len == te);
    CHECK(buf[h->query_off - 1] == '?');
  }
  /* Fields, and their meaning recomputed here. */
  CHECK(h->nheaders <= lim->header_count_max);
  unsigned hosts = 0, lengths = 0, close = 0, keep = 0, te_any = 0, exp_cont = 0, exp_other = 0;
  uint64_t cl = 0;
  uint32_t prev_end = (uint32_t)first_end + 2;
  for (uint32_t i = 0; i < h->nheaders; i++) {
    const kl_header *f = &r->hdrs[i];
    CHECK(f->name_off == prev_end && f->name_len >= 1);
    CHECK(f->value_off + f->value_len <= hl - 4);
    for (uint32_t j = 0; j < f->name_len; j++)
      CHECK(is_tchar((unsigned char)buf[f->name_off + j]));
    CHECK(buf[f->name_off + f->name_len] == ':');
    CHECK(f->value_off > f->name_off + f->name_len);
    for (uint32_t j = f->name_off + f->name_len + 1; j < f->value_off; j++)
      CHECK(is_ows(buf[j]));
    const char *val = buf + f->value_off;
    if (f->value_len) CHECK(!is_ows(val[0]) && !is_ows(val[f->value_len - 1]));
    for (uint32_t j = 0; j < f->value_len; j++)
      CHECK(is_field_char((unsigned char)val[j]));
    size_t end = f->value_off + f->value_len;
    while (is_ows(buf[end]))
      end++;
    CHECK(buf[end] == '\r' && buf[end + 1] == '\n');
    prev_end = (uint32_t)end + 2;
    const char *name = buf + f->name_off;
    if (ieq(name, f->name_len, "host")) hosts++;
    if (ieq(name, f->name_len, "content-length")) {
      lengths++;
      CHECK(f->value_len >= 1 && f->value_len <= 18);
      cl = 0;
      for (uint32_t j = 0; j < f->value_len; j++) {
        CHECK(val[j] >= '0' && val[j] <= '9');
        cl = cl * 10 + (uint64_t)(val[j] - '0');
      }
    }
    if (ieq(name, f->name_len, "connection")) {
      close |= (unsigned)list_has(val, f->value_len, "close", NULL);
      keep |= (unsigned)list_has(val, f->value_len, "keep-alive", NULL);
    }
    if (ieq(name, f->name_len, "transfer-encoding")) {
      int nonempty = 0;
      list_has(val, f->value_len, "chunked", &nonempty);
      te_any |= (unsigned)nonempty;
    }
    if (ieq(name, f->name_len, "expect")) {
      if (ieq(val, f->value_len, "100-continue"))
        exp_cont = 1;
      else
        exp_other = 1;
    }
  }
  CHECK(prev_end == hl - 2);
  CHECK(hosts <= 1 && lengths <= 1);
  if (h->minor == 1) CHECK(hosts == 1);
  CHECK(h->has_length == lengths && (!lengths || h->content_length == cl));
  CHECK(h->chunked == te_any);
  if (h->chunked) CHECK(h->minor == 1 && !h->has_length);
  if (h->minor == 1) {
    CHECK(!exp_other);
    CHECK(h->expect_continue == exp_cont);
    CHECK(h->keep_alive == !close);
  } else {
    CHECK(h->expect_continue == 0);
    CHECK(h->keep_alive == (keep && !close));
  }
}

/* ---- chunked bodies ----------------------------------------------------------------------- */

typedef struct dres {
  int rc;
  size_t rpos, wpos;
  kl_http_error e;
  char *buf; /* `len` bytes after decoding */
} dres;

/*
 * Decodes req[start, len) in place; with cut > start the first call sees an allocation of
 * exactly `cut` bytes, which then grows to len (realloc) for a second call.
 */
static void decode(const char *req, size_t len, size_t start, size_t cut, const cfg *c, dres *d) {
  kl_chunked ch;
  kl_chunked_init(&ch);
  d->rpos = d->wpos = start;
  d->rc = 0;
  size_t first = cut > start && cut < len ? cut : len;
  d->buf = malloc(first ? first : 1);
  CHECK(d->buf);
  memcpy(d->buf, req, first);
  d->rc =
      kl_chunked_decode(&ch, d->buf, first, &d->rpos, &d->wpos, c->body_max, c->trailer_max, &d->e);
  CHECK(d->wpos <= d->rpos && d->rpos <= first && d->wpos >= start);
  if (d->rc == 0) CHECK(d->rpos == first);
  char *nb = realloc(d->buf, len);
  CHECK(nb);
  d->buf = nb;
  memcpy(d->buf + first, req + first, len - first);
  if (d->rc == 0 && first < len) {
    d->rc =
        kl_chunked_decode(&ch, d->buf, len, &d->rpos, &d->wpos, c->body_max, c->trailer_max, &d->e);
    CHECK(d->wpos <= d->rpos && d->rpos <= len);
    if (d->rc == 0) CHECK(d->rpos == len);
  }
  CHECK(d->wpos - start <= c->body_max);
  if (d->rc < 0) {
    CHECK(d->e.status == 400 || d->e.status == 413 || d->e.status == 431);
    CHECK(d->e.msg && d->e.msg[0] && d->e.offset >= start && d->e.offset <= len);
  }
}

/*
 * A plain decoder of well-formed chunked bodies (RFC 9112 7.1), written separately: the body
 * and where it ends, or 0 when the input is not well formed. Whatever the decoder accepts must
 * be well formed by this one too, and decode the same.
 */
static size_t ref_chunked(const char *s, size_t n, size_t p, char *out, size_t *outlen) {
  *outlen = 0;
  for (;;) {
    uint64_t size = 0;
    size_t digits = 0;
    while (p < n && is_hex((unsigned char)s[p])) {
      if (size >> 60) return 0;
      size = size * 16 + (uint64_t)hexv((unsigned char)s[p]);
      p++;
      digits++;
    }
    if (!digits || size >> 60) return 0;
    if (p < n && s[p] != '\r') { /* BWS, then extensions: no control characters */
      while (p < n && is_ows(s[p]))
        p++;
      if (p >= n || s[p] != ';') return 0;
      while (p < n && s[p] != '\r') {
        if (!is_field_char((unsigned char)s[p])) return 0;
        p++;
      }
    }
    if (p + 1 >= n || s[p + 1] != '\n') return 0;
    p += 2;
    if (size == 0) break;
    if (size > n - p) return 0;
    memcpy(out + *outlen, s + p, (size_t)size);
    *outlen += (size_t)size;
    p += (size_t)size;
    if (p + 1 >= n || s[p] != '\r' || s[p + 1] != '\n') return 0;
    p += 2;
  }
  for (;;) { /* trailer fields "name: value", up to the empty line */
    if (p + 1 < n && s[p] == '\r' && s[p + 1] == '\n') return p + 2;
    size_t ns = p;
    while (p < n && is_tchar((unsigned char)s[p]))
      p++;
    if (p == ns || p >= n || s[p] != ':') return 0;
    p++;
    while (p < n && s[p] != '\r') {
      if (!is_field_char((unsigned char)s[p])) return 0;
      p++;
    }
    if (p + 1 >= n || s[p + 1] != '\n') return 0;
    p += 2;
  }
}

/* Decodes the chunked body after a head both ways; returns where the request ends, or 0. */
static size_t chunked_body(const char *req, size_t len, size_t head_len, size_t cut, const cfg *c) {
  dres a, b;
  decode(req, len, head_len, 0, c, &a);
  decode(req, len, head_len, cut, c, &b);
  CHECK(a.rc == b.rc && a.rpos == b.rpos && a.wpos == b.wpos);
  CHECK(memcmp(a.buf + head_len, b.buf + head_len, a.wpos - head_len) == 0);
  if (a.rc < 0) {
    CHECK(a.e.status == b.e.status && strcmp(a.e.msg, b.e.msg) == 0 && a.e.offset == b.e.offset);
  }
  CHECK(memcmp(a.buf, req, head_len) == 0); /* the head is left alone */
  size_t end = 0;
  if (a.rc == 1) {
    CHECK(memcmp(a.buf + a.rpos, req + a.rpos, len - a.rpos) == 0); /* and what follows */
    char *ref = malloc(len);
    CHECK(ref);
    size_t rlen = 0;
    size_t rend = ref_chunked(req, len, head_len, ref, &rlen);
    CHECK(rend == a.rpos);
    CHECK(rlen == a.wpos - head_len && memcmp(ref, a.buf + head_len, rlen) == 0);
    free(ref);
    end = a.rpos;
  }
  free(a.buf);
  free(b.buf);
  return end;
}

/* ---- the stream --------------------------------------------------------------------------- */

static void run_stream(const uint8_t *data, size_t size, const cfg *c, unsigned seed) {
  hres *w = malloc(sizeof(*w)), *s = malloc(sizeof(*s)), *t = malloc(sizeof(*t));
  CHECK(w && s && t);
  size_t off = 0;
  for (int req = 0; req < MAX_REQS && off < size; req++) {
    /* RFC 9112 2.2: empty lines before a request are skipped (as the connection does). */
    while (off + 1 < size && data[off] == '\r' && data[off + 1] == '\n')
      off += 2;
    size_t len = size - off;
    if (len == 0) break;
    /* The request and what follows, in an allocation of exactly its size. */
    char *buf = malloc(len);
    CHECK(buf);
    memcpy(buf, data + off, len);

    parse_whole(buf, len, &c->lim, w);
    check_head(buf, len, &c->lim, w);
    size_t k = (seed * 2654435761u + (unsigned)req * 40503u + (unsigned)len) % (len + 1);
    parse_split(buf, len, k, &c->lim, s);
    same_result(w, s);
    size_t step = 1 + (seed + (unsigned)req) % 16;
    if (step < len / 64) step = len / 64; /* bound the rescans of long lines */
    parse_steps(buf, len, step, &c->lim, t);
    same_result(w, t);

    size_t next = 0;
    if (w->rc == 1) {
      size_t hl = w->h.head_len;
      if (w->h.chunked) {
        size_t cut = hl + (seed * 7u + (unsigned)req * 13u) % (len - hl + 1);
        next = chunked_body(buf, len, hl, cut, c);
      } else if (w->h.has_length) {
        if (w->h.content_length <= len - hl) next = hl + (size_t)w->h.content_length;
      } else {
        next = hl;
      }
    }
    free(buf);
    if (next == 0) break; /* an error, or more bytes needed */
    off += next;
  }
  free(w);
  free(s);
  free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 1 << 16) return 0;
  unsigned seed = size ? data[0] : 0;
  for (size_t i = 0; i < sizeof(CFGS) / sizeof(CFGS[0]); i++)
    run_stream(data, size, &CFGS[i], seed);
  return 0;
}
