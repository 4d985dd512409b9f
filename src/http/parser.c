/* parser.c - strict HTTP/1.1 request and response heads and chunked bodies, zero-copy. */
#include "http/parser.h"

#include <string.h>

/* Character classes (RFC 9110 5.6.2 tchar, 5.5 field-vchar, RFC 3986 visible target bytes). */
enum { C_TCHAR = 1, C_VALUE = 2, C_TARGET = 4, C_HEX = 8 };

static const unsigned char cls[256] = {
#define T (C_TCHAR | C_VALUE | C_TARGET)
#define V (C_VALUE | C_TARGET)
    ['\t'] = C_VALUE, [' '] = C_VALUE,
    ['!'] = T, ['"'] = V, ['#'] = T, ['$'] = T, ['%'] = T, ['&'] = T, ['\''] = T, ['('] = V,
    [')'] = V, ['*'] = T, ['+'] = T, [','] = V, ['-'] = T, ['.'] = T, ['/'] = V,
    ['0'] = T | C_HEX, ['1'] = T | C_HEX, ['2'] = T | C_HEX, ['3'] = T | C_HEX,
    ['4'] = T | C_HEX, ['5'] = T | C_HEX, ['6'] = T | C_HEX, ['7'] = T | C_HEX,
    ['8'] = T | C_HEX, ['9'] = T | C_HEX,
    [':'] = V, [';'] = V, ['<'] = V, ['='] = V, ['>'] = V, ['?'] = V, ['@'] = V,
    ['A'] = T | C_HEX, ['B'] = T | C_HEX, ['C'] = T | C_HEX, ['D'] = T | C_HEX,
    ['E'] = T | C_HEX, ['F'] = T | C_HEX, ['G'] = T, ['H'] = T, ['I'] = T, ['J'] = T,
    ['K'] = T, ['L'] = T, ['M'] = T, ['N'] = T, ['O'] = T, ['P'] = T, ['Q'] = T, ['R'] = T,
    ['S'] = T, ['T'] = T, ['U'] = T, ['V'] = T, ['W'] = T, ['X'] = T, ['Y'] = T, ['Z'] = T,
    ['['] = V, ['\\'] = V, [']'] = V, ['^'] = T, ['_'] = T, ['`'] = T,
    ['a'] = T | C_HEX, ['b'] = T | C_HEX, ['c'] = T | C_HEX, ['d'] = T | C_HEX,
    ['e'] = T | C_HEX, ['f'] = T | C_HEX, ['g'] = T, ['h'] = T, ['i'] = T, ['j'] = T,
    ['k'] = T, ['l'] = T, ['m'] = T, ['n'] = T, ['o'] = T, ['p'] = T, ['q'] = T, ['r'] = T,
    ['s'] = T, ['t'] = T, ['u'] = T, ['v'] = T, ['w'] = T, ['x'] = T, ['y'] = T, ['z'] = T,
    ['{'] = V, ['|'] = T, ['}'] = V, ['~'] = T,
#undef T
#undef V
    /* obs-text (0x80-0xff) is allowed in field values, not in names or targets. */
#define O8 C_VALUE, C_VALUE, C_VALUE, C_VALUE, C_VALUE, C_VALUE, C_VALUE, C_VALUE
#define O64 O8, O8, O8, O8, O8, O8, O8, O8
    [0x80] = O64, O64,
#undef O64
#undef O8
};

#define IS(c, k) (cls[(unsigned char)(c)] & (k))

/* For the code requests and responses share: each parser gets its own copy, so that the request
 * parser runs as it did before the response parser shared it (nothing called per field). */
#define SHARED_INLINE __attribute__((always_inline)) static inline

static int fail(kl_http_error *err, int status, const char *msg, size_t offset) {
  err->status = status;
  err->msg = msg;
  err->offset = offset;
  err->framing = 0;
  return -1;
}

/* A 400 for input that proxies may frame differently: the stuff of request smuggling. */
static int fail_framing(kl_http_error *err, const char *msg, size_t offset) {
  fail(err, 400, msg, offset);
  err->framing = 1;
  return -1;
}

int kl_http_name_eq(const char *a, size_t n, const char *lower) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)a[i];
    if (c >= 'A' && c <= 'Z') c = (unsigned char)(c + 32);
    if (lower[i] == '\0' || c != (unsigned char)lower[i]) return 0;
  }
  return lower[n] == '\0';
}

static unsigned char lower(unsigned char c) {
  return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/* Framing state gathered while walking the header fields. */
typedef struct fields {
  unsigned response; /* parsing a response head (set by the caller, read only) */
  unsigned hosts, lengths;
  unsigned te_seen, te_chunked, te_last_chunked, te_other;
  unsigned conn_close, conn_keep_alive, expect_continue, expect_other;
  uint64_t content_length;
} fields;

/* Walks a comma-separated list (RFC 9110 5.6.1), calling `fn` for each non-empty element. */
static void each_token(const char *v, size_t n, void (*fn)(fields *, const char *, size_t),
                       fields *f) {
  size_t i = 0;
  while (i < n) {
    while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
    size_t s = i;
    while (i < n && v[i] != ',') i++;
    size_t e = i;
    while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
    if (e > s) fn(f, v + s, e - s);
  }
}

static void te_token(fields *f, const char *t, size_t n) {
  f->te_seen = 1;
  if (kl_http_name_eq(t, n, "chunked")) {
    f->te_chunked++;
    f->te_last_chunked = 1;
  } else {
    f->te_other = 1;
    f->te_last_chunked = 0;
  }
}

static void conn_token(fields *f, const char *t, size_t n) {
  if (kl_http_name_eq(t, n, "close")) f->conn_close = 1;
  else if (kl_http_name_eq(t, n, "keep-alive")) f->conn_keep_alive = 1;
}

/* Digits only, 1 to 18 of them (no sign, no spaces, no overflow): v[0, n) found at `off`. */
static int parse_length(const char *v, size_t n, size_t off, uint64_t *out, kl_http_error *err) {
  if (n == 0 || n > 18) return fail_framing(err, "invalid Content-Length", off);
  uint64_t x = 0;
  for (size_t i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9') return fail_framing(err, "invalid Content-Length", off + i);
    x = x * 10 + (uint64_t)(v[i] - '0');
  }
  *out = x;
  return 0;
}

/*
 * A response's Content-Length: a list of equal values, also over repeated fields (RFC 9110
 * 8.6 lets a recipient take "42, 42" as 42). Empty elements and differing values are refused.
 */
static int response_length(const char *buf, const kl_header *h, fields *f, kl_http_error *err) {
  const char *v = buf + h->value_off;
  size_t n = h->value_len, i = 0;
  do {
    size_t s = i;
    while (i < n && v[i] != ',') i++;
    size_t e = i;
    while (s < e && (v[s] == ' ' || v[s] == '\t')) s++;
    while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
    uint64_t x;
    if (parse_length(v + s, e - s, h->value_off + s, &x, err)) return -1;
    if (f->lengths++ && x != f->content_length)
      return fail_framing(err, "differing Content-Length values", h->value_off + s);
    f->content_length = x;
  } while (i++ < n);
  return 0;
}

/* Applies the meaning of one header field; returns -1 with err on a framing error. */
SHARED_INLINE int field_semantics(const char *buf, const kl_header *h, fields *f,
                                  kl_http_error *err) {
  const char *name = buf + h->name_off, *v = buf + h->value_off;
  switch (h->name_len) {
  case 4:
    if (kl_http_name_eq(name, 4, "host")) f->hosts++;
    break;
  case 6:
    if (kl_http_name_eq(name, 6, "expect")) {
      if (kl_http_name_eq(v, h->value_len, "100-continue")) f->expect_continue = 1;
      else f->expect_other = 1;
    }
    break;
  case 10:
    if (kl_http_name_eq(name, 10, "connection")) each_token(v, h->value_len, conn_token, f);
    break;
  case 14:
    if (kl_http_name_eq(name, 14, "content-length")) {
      if (f->response) return response_length(buf, h, f, err);
      if (++f->lengths > 1) return fail_framing(err, "duplicate Content-Length", h->name_off);
      return parse_length(v, h->value_len, h->value_off, &f->content_length, err);
    }
    break;
  case 17:
    if (kl_http_name_eq(name, 17, "transfer-encoding")) {
      f->te_seen = 1; /* even empty: a framing header nobody agrees on is refused */
      each_token(v, h->value_len, te_token, f);
    }
    break;
  default:
    break;
  }
  return 0;
}

/* Splits the request target into path and query; accepts origin-form, absolute-form and "*". */
static int parse_target(const char *buf, kl_http_head *out, kl_http_error *err) {
  const char *t = buf + out->target_off;
  uint32_t n = out->target_len, i = 0;
  if (t[0] != '/') {
    uint32_t skip = 0;
    if (n >= 7 && kl_http_name_eq(t, 7, "http://")) skip = 7;
    else if (n >= 8 && kl_http_name_eq(t, 8, "https://")) skip = 8;
    else if (n == 1 && t[0] == '*' && out->method_len == 7 &&
             memcmp(buf + out->method_off, "OPTIONS", 7) == 0) {
      out->path_off = out->target_off;
      out->path_len = 1;
      return 0;
    } else {
      return fail(err, 400, "invalid request target", out->target_off);
    }
    i = skip;
    while (i < n && t[i] != '/' && t[i] != '?') i++;
    if (i == skip) return fail(err, 400, "invalid request target", out->target_off + i);
  }
  uint32_t p = i;
  while (i < n && t[i] != '?') i++;
  out->path_off = out->target_off + p;
  out->path_len = i - p; /* 0 means "/" (absolute-form without a path) */
  if (i < n) {
    out->query_off = out->target_off + i + 1;
    out->query_len = n - i - 1;
  }
  return 0;
}

/* "HTTP/d.d" then `end`; stops at the first mismatch, so it never reads past a line's CR. */
static int is_version(const char *v, char end) {
  for (int i = 0; i < 5; i++)
    if (v[i] != "HTTP/"[i]) return 0;
  return v[5] >= '0' && v[5] <= '9' && v[6] == '.' && v[7] >= '0' && v[7] <= '9' && v[8] == end;
}

/*
 * The header fields from `*pos` up to the empty line that ends a complete head: syntax,
 * header_count_max, and their framing meaning gathered in `f`. `*pos` ends at the empty line.
 */
SHARED_INLINE int parse_fields(const char *buf, size_t *pos, const kl_http_limits *limits,
                               kl_header *hdrs, uint32_t *nheaders, fields *f, kl_http_error *err) {
  size_t p = *pos;
  uint32_t nh = 0;
  while (buf[p] != '\r' || buf[p + 1] != '\n') { /* a CR alone here is a bad name byte */
    size_t ns = p;
    while (IS(buf[p], C_TCHAR)) p++;
    if (buf[p] != ':' || p == ns) {
      if (p == ns && (buf[p] == ' ' || buf[p] == '\t'))
        return fail_framing(err, "obsolete line folding is not allowed", p);
      if (buf[p] == ' ' || buf[p] == '\t')
        return fail_framing(err, "whitespace before colon in header", p);
      return fail(err, 400, "invalid character in header name", p);
    }
    if (nh == limits->header_count_max) return fail(err, 431, "too many header fields", ns);
    kl_header *h = &hdrs[nh++];
    h->name_off = (uint32_t)ns;
    h->name_len = (uint32_t)(p - ns);
    p++;
    while (buf[p] == ' ' || buf[p] == '\t') p++;
    size_t vs = p;
    while (IS(buf[p], C_VALUE)) p++;
    if (buf[p] != '\r' || buf[p + 1] != '\n') {
      if (buf[p] == '\r') return fail_framing(err, "bare CR in header value", p);
      return fail(err, 400, "invalid character in header value", p);
    }
    size_t ve = p;
    while (ve > vs && (buf[ve - 1] == ' ' || buf[ve - 1] == '\t')) ve--;
    h->value_off = (uint32_t)vs;
    h->value_len = (uint32_t)(ve - vs);
    if (field_semantics(buf, h, f, err)) return -1;
    p += 2;
  }
  *pos = p;
  *nheaders = nh;
  return 0;
}

/* RFC 9112 6.1, 6.3: Transfer-Encoding is only "chunked", once, last, alone, on HTTP/1.1. */
static int te_framing(const fields *f, unsigned minor, kl_http_error *err) {
  if (!f->te_seen) return 0;
  if (minor == 0)
    return fail_framing(err,
                        f->response ? "Transfer-Encoding in an HTTP/1.0 response"
                                    : "Transfer-Encoding in an HTTP/1.0 request",
                        0);
  if (f->lengths) return fail_framing(err, "both Content-Length and Transfer-Encoding", 0);
  if (!f->te_last_chunked) return fail_framing(err, "chunked is not the final transfer coding", 0);
  if (f->te_chunked > 1) return fail_framing(err, "chunked applied more than once", 0);
  if (f->te_other) return fail(err, 501, "unsupported transfer coding", 0);
  return 0;
}

/* Persistence after this message (RFC 9112 9.3): 1.1 unless "close", 1.0 only with "keep-alive". */
static uint8_t keep_alive(const fields *f, unsigned minor) {
  return minor == 1 ? !f->conn_close : (f->conn_keep_alive && !f->conn_close);
}

/* Parses a complete head (it ends in an empty line at head_len). */
static int parse_complete(const char *buf, size_t head_len, const kl_http_limits *limits,
                          kl_header *hdrs, kl_http_head *out, kl_http_error *err) {
  size_t p = 0;
  memset(out, 0, sizeof(*out));
  out->head_len = (uint32_t)head_len;

  while (IS(buf[p], C_TCHAR)) p++;
  if (p == 0 || buf[p] != ' ') return fail(err, 400, "invalid character in method", p);
  out->method_len = (uint32_t)p;
  out->is_head = p == 4 && memcmp(buf, "HEAD", 4) == 0;
  size_t t = ++p;
  while (IS(buf[p], C_TARGET)) p++;
  if (p == t || buf[p] != ' ') return fail(err, 400, "invalid character in request target", p);
  out->target_off = (uint32_t)t;
  out->target_len = (uint32_t)(p - t);
  p++;
  const char *v = buf + p;
  /* Byte by byte: the line's CR stops the comparison before it can run past the head. */
  if (!is_version(v, '\r')) {
    /* "GET /a b HTTP/1.1": when a valid version follows the last space, the space before it
     * belongs to the target. */
    size_t last = 0;
    for (size_t q = p; buf[q] != '\r' && buf[q] != '\n'; q++)
      if (buf[q] == ' ') last = q;
    if (last && is_version(buf + last + 1, '\r'))
      return fail(err, 400, "invalid character in request target", p - 1);
    return fail(err, 400, "invalid HTTP version", p);
  }
  if (v[9] != '\n') return fail_framing(err, "bare CR in request line", p + 8);
  if (v[5] != '1') return fail(err, 505, "HTTP version not supported", p);
  out->minor = v[7] == '0' ? 0 : 1;
  p += 10;
  if (parse_target(buf, out, err)) return -1;

  fields f;
  memset(&f, 0, sizeof(f));
  if (parse_fields(buf, &p, limits, hdrs, &out->nheaders, &f, err)) return -1;
  out->has_length = f.lengths > 0;
  out->content_length = f.content_length;

  if (f.hosts > 1) return fail(err, 400, "duplicate Host header", 0);
  if (out->minor == 1 && f.hosts == 0) return fail(err, 400, "missing Host header", p);
  if (te_framing(&f, out->minor, err)) return -1;
  out->chunked = f.te_seen;
  if (f.expect_other && out->minor == 1) return fail(err, 417, "unsupported expectation", 0);
  out->expect_continue = out->minor == 1 && f.expect_continue;
  out->keep_alive = keep_alive(&f, out->minor);
  return 1;
}

/* A head's caps and the answer to one that exceeds them. */
typedef struct head_caps {
  size_t line_max; /* index of the first line's LF may be at most this; SIZE_MAX: no cap */
  size_t head_max; /* bytes of the whole head */
  const char *line_msg, *head_msg;
  int line_status, head_status;
} head_caps;

/*
 * Finds the empty line that ends a head, resuming at *scanned (the start of the first line not
 * yet seen complete). Returns 1 with the head's length in *head_len (and *scanned reset to 0),
 * 0 when more bytes are needed, -1 on a bare LF or a head over its caps.
 */
SHARED_INLINE int find_head_end(const char *buf, size_t len, size_t *scanned, const head_caps *caps,
                                size_t *head_len, kl_http_error *err) {
  size_t pos = *scanned;
  while (pos < len) {
    const char *nl = memchr(buf + pos, '\n', len - pos);
    if (!nl) break;
    size_t end = (size_t)(nl - buf); /* index of '\n' */
    /* Limits first, so that the answer does not depend on how the bytes were split. */
    if (pos == 0 && end > caps->line_max)
      return fail(err, caps->line_status, caps->line_msg, caps->line_max - 1);
    if (end + 1 > caps->head_max)
      return fail(err, caps->head_status, caps->head_msg, caps->head_max);
    if (end == pos || buf[end - 1] != '\r')
      return fail_framing(err, "line not terminated by CRLF", end);
    if (pos > 0 && end == pos + 1) { /* empty line: the head is complete */
      *scanned = 0;
      *head_len = end + 1;
      return 1;
    }
    pos = end + 1;
  }
  *scanned = pos;
  if (pos == 0 && len > caps->line_max)
    return fail(err, caps->line_status, caps->line_msg, caps->line_max - 1);
  if (len >= caps->head_max) return fail(err, caps->head_status, caps->head_msg, caps->head_max);
  return 0;
}

int kl_http_parse_head(const char *buf, size_t len, size_t *scanned, const kl_http_limits *limits,
                       kl_header *hdrs, kl_http_head *out, kl_http_error *err) {
  const head_caps caps = {(size_t)limits->request_line_max + 1, limits->header_bytes_max,
                          "request line too long", "request header too large", 414, 431};
  size_t head_len;
  int rc = find_head_end(buf, len, scanned, &caps, &head_len, err);
  if (rc != 1) return rc;
  return parse_complete(buf, head_len, limits, hdrs, out, err);
}

/* Parses a complete response head (it ends in an empty line at head_len). */
static int parse_response_complete(const char *buf, size_t head_len, const kl_http_limits *limits,
                                   kl_header *hdrs, kl_http_resp *out, kl_http_error *err) {
  memset(out, 0, sizeof(*out));
  out->head_len = (uint32_t)head_len;
  /* "HTTP/1.x" SP 3DIGIT [SP reason] CRLF; each test stops at the line's CR. */
  if (!is_version(buf, ' ')) return fail(err, 400, "invalid HTTP version", 0);
  if (buf[5] != '1' || (buf[7] != '0' && buf[7] != '1'))
    return fail(err, 505, "HTTP version not supported", 0);
  out->minor = (uint8_t)(buf[7] - '0');
  for (size_t i = 9; i < 12; i++)
    if (buf[i] < '0' || buf[i] > '9') return fail(err, 400, "invalid status code", i);
  if (buf[9] < '1' || buf[9] > '5') return fail(err, 400, "invalid status code", 9);
  out->status = (uint16_t)((buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0'));
  size_t p = 12;
  /* "HTTP/1.1 200" CRLF is taken: the SP before an empty reason may be missing. */
  if (buf[p] == ' ') p++;
  else if (buf[p] != '\r') return fail(err, 400, "invalid status code", p);
  out->reason_off = (uint32_t)p;
  while (IS(buf[p], C_VALUE)) p++;
  if (buf[p] != '\r') return fail(err, 400, "invalid character in reason phrase", p);
  if (buf[p + 1] != '\n') return fail_framing(err, "bare CR in status line", p);
  out->reason_len = (uint32_t)(p - out->reason_off);
  p += 2;

  fields f;
  memset(&f, 0, sizeof(f));
  f.response = 1;
  if (parse_fields(buf, &p, limits, hdrs, &out->nheaders, &f, err)) return -1;
  if (te_framing(&f, out->minor, err)) return -1;
  out->has_length = f.lengths > 0;
  out->content_length = f.content_length;
  out->chunked = f.te_seen;
  out->close_delimited = !out->has_length && !out->chunked && out->status >= 200 &&
                         out->status != 204 && out->status != 304;
  out->keep_alive = keep_alive(&f, out->minor);
  return 1;
}

int kl_http_parse_response(const char *buf, size_t len, size_t *scanned,
                           const kl_http_limits *limits, kl_header *hdrs, kl_http_resp *out,
                           kl_http_error *err) {
  /* No cap of its own on the status line: it counts against the head's. */
  const head_caps caps = {SIZE_MAX, limits->header_bytes_max, NULL, "response header too large",
                          0, 431};
  size_t head_len;
  int rc = find_head_end(buf, len, scanned, &caps, &head_len, err);
  if (rc == 1) rc = parse_response_complete(buf, head_len, limits, hdrs, out, err);
  if (rc < 0) err->status = 502; /* whatever the fault, the client gets a bad gateway */
  return rc;
}

int kl_http_resp_has_body(const kl_http_resp *r, int request_was_head) {
  return !request_was_head && r->status >= 200 && r->status != 204 && r->status != 304;
}

enum {
  CH_SIZE,
  CH_SIZE_MORE,
  CH_BWS,
  CH_EXT,
  CH_SIZE_LF,
  CH_DATA,
  CH_DATA_CR,
  CH_DATA_LF,
  CH_TRAILER,
  CH_TRAILER_NAME,
  CH_TRAILER_LINE,
  CH_TRAILER_LF,
  CH_END_LF,
  CH_DONE
};

#define CH_EXT_MAX 4096

void kl_chunked_init(kl_chunked *c) { memset(c, 0, sizeof(*c)); }

static int hexval(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = lower(c);
  return c - 'a' + 10;
}

int kl_chunked_decode(kl_chunked *c, char *buf, size_t len, size_t *rpos, size_t *wpos,
                      uint64_t body_max, uint32_t trailer_max, kl_http_error *err) {
  size_t r = *rpos, w = *wpos;
  int rc = 0;
  while (r < len && rc == 0) {
    unsigned char ch = (unsigned char)buf[r];
    switch (c->state) {
    case CH_SIZE:
      if (!IS(ch, C_HEX)) goto bad_size;
      c->remaining = (uint64_t)hexval(ch);
      c->digits = 1;
      c->state = CH_SIZE_MORE;
      r++;
      break;
    case CH_SIZE_MORE:
      if (IS(ch, C_HEX)) {
        if (c->remaining >> 56) { /* one more digit would reach 2^60 */
          rc = fail_framing(err, "chunk size too large", r);
          break;
        }
        c->remaining = c->remaining * 16 + (uint64_t)hexval(ch);
        r++;
        break;
      }
      if (c->remaining > body_max - c->total) {
        rc = fail(err, 413, "request body too large", r);
        break;
      }
      if (ch == '\n') {
        rc = fail_framing(err, "line not terminated by CRLF", r);
        break;
      }
      if (ch == '\r') c->state = CH_SIZE_LF;
      else if (ch == ';') c->state = CH_EXT;
      else if (ch == ' ' || ch == '\t') c->state = CH_BWS;
      else goto bad_size;
      c->line_len = 0;
      r++;
      break;
    case CH_BWS:
      if (ch == ';') c->state = CH_EXT;
      else if (ch != ' ' && ch != '\t') goto bad_size;
      r++;
      break;
    case CH_EXT:
      if (ch == '\n') {
        rc = fail_framing(err, "line not terminated by CRLF", r);
        break;
      }
      if (ch == '\r') c->state = CH_SIZE_LF;
      else if (!IS(ch, C_VALUE)) {
        rc = fail(err, 400, "invalid character in chunk extension", r);
        break;
      } else if (++c->line_len > CH_EXT_MAX) {
        rc = fail(err, 400, "chunk extension too long", r);
        break;
      }
      r++;
      break;
    case CH_SIZE_LF:
      if (ch != '\n') {
        rc = fail_framing(err, "bare CR in chunk size line", r);
        break;
      }
      r++;
      c->state = c->remaining ? CH_DATA : CH_TRAILER;
      c->line_len = 0;
      break;
    case CH_DATA: {
      size_t n = len - r;
      if (n > c->remaining) n = (size_t)c->remaining;
      if (w != r) memmove(buf + w, buf + r, n);
      r += n;
      w += n;
      c->remaining -= n;
      c->total += n;
      if (c->remaining == 0) c->state = CH_DATA_CR;
      break;
    }
    case CH_DATA_CR:
    case CH_DATA_LF:
      if (ch != (c->state == CH_DATA_CR ? '\r' : '\n')) {
        rc = fail_framing(err, "chunk data not followed by CRLF", r);
        break;
      }
      c->state = c->state == CH_DATA_CR ? CH_DATA_LF : CH_SIZE;
      r++;
      break;
    case CH_TRAILER:
      if (ch == '\r') {
        c->state = CH_END_LF;
        r++;
        break;
      }
      if (!IS(ch, C_TCHAR)) {
        rc = fail(err, 400, ch == '\n' ? "line not terminated by CRLF" : "invalid trailer field", r);
        break;
      }
      c->state = CH_TRAILER_NAME;
      break;
    case CH_TRAILER_NAME: /* token ':' */
    case CH_TRAILER_LINE: /* field value up to CR */
      if (c->state == CH_TRAILER_NAME && ch == ':') c->state = CH_TRAILER_LINE;
      else if (c->state == CH_TRAILER_LINE && ch == '\r') c->state = CH_TRAILER_LF;
      else if (!IS(ch, c->state == CH_TRAILER_NAME ? C_TCHAR : C_VALUE)) {
        rc = fail(err, 400, ch == '\n' ? "line not terminated by CRLF" : "invalid trailer field", r);
        break;
      }
      if (++c->trailers > trailer_max) {
        rc = fail(err, 431, "trailer section too large", r);
        break;
      }
      r++;
      break;
    case CH_TRAILER_LF:
    case CH_END_LF:
      if (ch != '\n') {
        rc = fail_framing(err, "bare CR in trailer section", r);
        break;
      }
      r++;
      if (c->state == CH_END_LF) {
        c->state = CH_DONE;
        rc = 1;
      } else {
        c->state = CH_TRAILER;
      }
      break;
    default:
      rc = 1;
      break;
    }
    continue;
  bad_size:
    rc = fail_framing(err, "invalid chunk size", r);
  }
  *rpos = r;
  *wpos = w;
  return rc;
}
