/* parser.c - strict HTTP/1.1 request heads and chunked bodies, zero-copy over the read buffer. */
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
  unsigned hosts, lengths;
  unsigned te_seen, te_chunked, te_last_chunked, te_other;
  unsigned conn_close, conn_keep_alive, expect_other;
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

/* Applies the meaning of one header field; returns -1 with err on a framing error. */
static int field_semantics(const char *buf, const kl_header *h, kl_http_head *out, fields *f,
                           kl_http_error *err) {
  const char *name = buf + h->name_off, *v = buf + h->value_off;
  switch (h->name_len) {
  case 4:
    if (kl_http_name_eq(name, 4, "host")) f->hosts++;
    break;
  case 6:
    if (kl_http_name_eq(name, 6, "expect")) {
      if (kl_http_name_eq(v, h->value_len, "100-continue")) out->expect_continue = 1;
      else f->expect_other = 1;
    }
    break;
  case 10:
    if (kl_http_name_eq(name, 10, "connection")) each_token(v, h->value_len, conn_token, f);
    break;
  case 14:
    if (kl_http_name_eq(name, 14, "content-length")) {
      if (++f->lengths > 1) return fail_framing(err, "duplicate Content-Length", h->name_off);
      if (h->value_len == 0 || h->value_len > 18)
        return fail_framing(err, "invalid Content-Length", h->value_off);
      uint64_t n = 0;
      for (uint32_t i = 0; i < h->value_len; i++) {
        if (v[i] < '0' || v[i] > '9')
          return fail_framing(err, "invalid Content-Length", h->value_off + i);
        n = n * 10 + (uint64_t)(v[i] - '0');
      }
      out->has_length = 1;
      out->content_length = n;
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

/* "HTTP/d.d" then CR; stops at the first mismatch, so it never reads past a line's CR. */
static int is_version(const char *v) {
  for (int i = 0; i < 5; i++)
    if (v[i] != "HTTP/"[i]) return 0;
  return v[5] >= '0' && v[5] <= '9' && v[6] == '.' && v[7] >= '0' && v[7] <= '9' && v[8] == '\r';
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
  if (!is_version(v)) {
    /* "GET /a b HTTP/1.1": when a valid version follows the last space, the space before it
     * belongs to the target. */
    size_t last = 0;
    for (size_t q = p; buf[q] != '\r' && buf[q] != '\n'; q++)
      if (buf[q] == ' ') last = q;
    if (last && is_version(buf + last + 1))
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
    if (field_semantics(buf, h, out, &f, err)) return -1;
    p += 2;
  }
  out->nheaders = nh;

  if (f.hosts > 1) return fail(err, 400, "duplicate Host header", 0);
  if (out->minor == 1 && f.hosts == 0) return fail(err, 400, "missing Host header", p);
  if (f.te_seen) {
    if (out->minor == 0)
      return fail_framing(err, "Transfer-Encoding in an HTTP/1.0 request", 0);
    if (out->has_length)
      return fail_framing(err, "both Content-Length and Transfer-Encoding", 0);
    if (!f.te_last_chunked) return fail_framing(err, "chunked is not the final transfer coding", 0);
    if (f.te_chunked > 1) return fail_framing(err, "chunked applied more than once", 0);
    if (f.te_other) return fail(err, 501, "unsupported transfer coding", 0);
    out->chunked = 1;
  }
  if (f.expect_other && out->minor == 1) return fail(err, 417, "unsupported expectation", 0);
  if (out->minor == 0) out->expect_continue = 0;
  out->keep_alive = out->minor == 1 ? !f.conn_close : (f.conn_keep_alive && !f.conn_close);
  return 1;
}

int kl_http_parse_head(const char *buf, size_t len, size_t *scanned, const kl_http_limits *limits,
                       kl_header *hdrs, kl_http_head *out, kl_http_error *err) {
  size_t pos = *scanned; /* start of the first line not yet seen complete */
  while (pos < len) {
    const char *nl = memchr(buf + pos, '\n', len - pos);
    if (!nl) break;
    size_t end = (size_t)(nl - buf); /* index of '\n' */
    /* Limits first, so that the answer does not depend on how the bytes were split. */
    if (pos == 0 && end > (size_t)limits->request_line_max + 1)
      return fail(err, 414, "request line too long", limits->request_line_max);
    if (end + 1 > limits->header_bytes_max)
      return fail(err, 431, "request header too large", limits->header_bytes_max);
    if (end == pos || buf[end - 1] != '\r')
      return fail_framing(err, "line not terminated by CRLF", end);
    if (pos > 0 && end == pos + 1) { /* empty line: the head is complete */
      *scanned = 0;
      return parse_complete(buf, end + 1, limits, hdrs, out, err);
    }
    pos = end + 1;
  }
  *scanned = pos;
  if (pos == 0 && len > (size_t)limits->request_line_max + 1)
    return fail(err, 414, "request line too long", limits->request_line_max);
  if (len >= limits->header_bytes_max)
    return fail(err, 431, "request header too large", limits->header_bytes_max);
  return 0;
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
