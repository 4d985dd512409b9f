/* test_http_resp.c - unit tests for the strict HTTP/1.1 response head parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http/parser.h"

#define MAXH 128
#define ANY ((size_t)-1) /* an error at any offset inside the input */

static const kl_http_limits LIM = {8192, 32768, 100}; /* the configuration defaults */

/* One parse: its answer, the head and the fields. */
typedef struct res {
  int rc;
  kl_http_resp r;
  kl_http_error e;
  kl_header hdrs[MAXH];
} res;

/*
 * Parses s[0, n) in calls that see the first cuts[0], cuts[1], ... bytes and then all n, each
 * time in an allocation of exactly that many bytes (ASan flags any read past what arrived),
 * carrying the *scanned hint along; stops at the first call that does not return 0.
 */
static void parse_cuts(const char *s, size_t n, const size_t *cuts, size_t ncuts,
                       const kl_http_limits *lim, res *out) {
  memset(out, 0, sizeof(*out));
  size_t sc = 0;
  for (size_t i = 0; i <= ncuts; i++) {
    size_t have = i < ncuts ? cuts[i] : n;
    char *buf = malloc(have ? have : 1);
    assert_non_null(buf);
    memcpy(buf, s, have);
    size_t before = sc;
    out->rc = kl_http_parse_response(buf, have, &sc, lim, out->hdrs, &out->r, &out->e);
    free(buf);
    if (out->rc != 0) {
      if (out->rc == 1) assert_int_equal(sc, 0); /* reset for the next head */
      return;
    }
    /* The hint only moves forward, to the start of the line being received. */
    assert_true(sc >= before && sc <= have);
    assert_true(sc == 0 || s[sc - 1] == '\n');
  }
}

static void assert_same(const res *a, const res *b) {
  assert_int_equal(a->rc, b->rc);
  if (a->rc == 1) {
    assert_memory_equal(&a->r, &b->r, sizeof(a->r)); /* memset first: padding compares too */
    assert_memory_equal(a->hdrs, b->hdrs, a->r.nheaders * sizeof(kl_header));
  } else if (a->rc < 0) {
    assert_int_equal(a->e.status, b->e.status);
    assert_string_equal(a->e.msg, b->e.msg);
    assert_int_equal(a->e.offset, b->e.offset);
    assert_int_equal(a->e.framing, b->e.framing);
  }
}

/* Parses at once, split in two at every point, and byte by byte: all must agree. */
static void parse_all_ways(const char *s, size_t n, const kl_http_limits *lim, res *whole) {
  parse_cuts(s, n, NULL, 0, lim, whole);
  res *o = malloc(sizeof(*o));
  size_t *cuts = malloc((n + 1) * sizeof(*cuts));
  assert_non_null(o);
  assert_non_null(cuts);
  for (size_t k = 0; k < n; k++) {
    parse_cuts(s, n, &k, 1, lim, o);
    assert_same(whole, o);
    cuts[k] = k;
  }
  parse_cuts(s, n, cuts, n, lim, o);
  assert_same(whole, o);
  free(cuts);
  free(o);
}

/* The view off/len in s equals `want`. */
static void view_at(const char *s, uint32_t off, uint32_t len, const char *want, int line) {
  if (len != strlen(want) || memcmp(s + off, want, len) != 0) {
    print_error("line %d: want \"%s\", got \"%.*s\"\n", line, want, (int)len, s + off);
    _fail(__FILE__, line);
  }
}
#define VIEW(s, off, len, want) view_at((s), (off), (len), (want), __LINE__)

/* ---- valid heads (table) ------------------------------------------------------ */

typedef struct ok_case {
  const char *in;  /* a head, maybe followed by a body */
  size_t head_len; /* 0: all of `in` */
  uint16_t status;
  uint8_t minor, keep_alive, chunked, has_length, close_delimited;
  uint64_t length;
  uint32_t nheaders;
  const char *reason;
} ok_case;

static const ok_case OK_CASES[] = {
    {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 38, 200, 1, 1, 0, 1, 0, 5, 1, "OK"},
    {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0, 200, 1, 1, 1, 0, 0, 0, 1, "OK"},
    {"HTTP/1.1 200 OK\r\ntransfer-encoding:  Chunked \r\n\r\n", 0, 200, 1, 1, 1, 0, 0, 0, 1, "OK"},
    {"HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n", 0, 204, 1, 1, 0, 0, 0, 0, 1, "No Content"},
    {"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: \"a\"\r\n\r\n", 0, 304, 1, 1, 0, 1,
     0, 1234, 2, "Not Modified"},
    {"HTTP/1.1 304 Not Modified\r\n\r\n", 0, 304, 1, 1, 0, 0, 0, 0, 0, "Not Modified"},
    {"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nbody until close", 32, 200, 0, 0, 0, 0, 1, 0, 1, "OK"},
    {"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", 0, 200, 0, 1, 0, 1,
     0, 0, 2, "OK"},
    {"HTTP/1.0 200 OK\r\nConnection: Keep-Alive, close\r\nContent-Length: 0\r\n\r\n", 0, 200, 0, 0,
     0, 1, 0, 0, 2, "OK"},
    {"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", 0, 200, 1, 0, 0, 0, 1, 0, 1, "OK"},
    {"HTTP/1.1 200 OK\r\nConnection: upgrade,  CLOSE\r\nContent-Length: 2\r\n\r\n", 0, 200, 1, 0, 0,
     1, 0, 2, 2, "OK"},
    {"HTTP/1.1 500 Internal Server Error\r\n\r\n", 0, 500, 1, 1, 0, 0, 1, 0, 0,
     "Internal Server Error"},
    {"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", 25, 100, 1, 1, 0, 0, 0, 0, 0,
     "Continue"},
    {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", 0, 101, 1, 1, 0, 0, 0, 0, 1,
     "Switching Protocols"},
    {"HTTP/1.1 599 \r\n\r\n", 0, 599, 1, 1, 0, 0, 1, 0, 0, ""},
    /* Tolerated: no SP before an empty reason (the line still ends unambiguously at CRLF). */
    {"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", 0, 200, 1, 1, 0, 1, 0, 0, 1, ""},
    {"HTTP/1.1 404 Not  Found \t\r\n\r\n", 0, 404, 1, 1, 0, 0, 1, 0, 0, "Not  Found \t"},
    {"HTTP/1.1 200 caf\xc3\xa9 \xff\r\n\r\n", 0, 200, 1, 1, 0, 0, 1, 0, 0, "caf\xc3\xa9 \xff"},
    {"HTTP/1.1 200 a:b/c;d\"e\r\n\r\n", 0, 200, 1, 1, 0, 0, 1, 0, 0, "a:b/c;d\"e"},
    /* Equal Content-Length values fold into one (RFC 9110 8.6). */
    {"HTTP/1.1 200 OK\r\nContent-Length: 7\r\ncontent-length: 7\r\n\r\n", 0, 200, 1, 1, 0, 1, 0, 7,
     2, "OK"},
    {"HTTP/1.1 200 OK\r\nContent-Length: 7, 7,7\r\n\r\n", 0, 200, 1, 1, 0, 1, 0, 7, 1, "OK"},
    {"HTTP/1.1 200 OK\r\nContent-Length: 007\r\nContent-Length: 7 \r\n\r\n", 0, 200, 1, 1, 0, 1, 0,
     7, 2, "OK"},
    {"HTTP/1.1 200 OK\r\nContent-Length: 999999999999999999\r\n\r\n", 0, 200, 1, 1, 0, 1, 0,
     999999999999999999ULL, 1, "OK"},
    {"HTTP/1.0 404 Not Found\r\nContent-Length: 3\r\n\r\nabc", 45, 404, 0, 0, 0, 1, 0, 3, 1,
     "Not Found"},
};

static void test_ok_table(void **state) {
  (void)state;
  int failed = 0;
  for (size_t i = 0; i < sizeof(OK_CASES) / sizeof(OK_CASES[0]); i++) {
    const ok_case *c = &OK_CASES[i];
    size_t n = strlen(c->in), hl = c->head_len ? c->head_len : n;
    res w;
    parse_all_ways(c->in, n, &LIM, &w);
    const kl_http_resp *r = &w.r;
    if (w.rc != 1 || r->head_len != hl || r->status != c->status || r->minor != c->minor ||
        r->keep_alive != c->keep_alive || r->chunked != c->chunked ||
        r->has_length != c->has_length || r->close_delimited != c->close_delimited ||
        r->content_length != c->length || r->nheaders != c->nheaders ||
        r->reason_len != strlen(c->reason) ||
        memcmp(c->in + r->reason_off, c->reason, r->reason_len) != 0) {
      print_error("case %zu: rc %d (%s at %zu) head_len %u status %u minor %u ka %u chunked %u "
                  "has_length %u close %u length %llu nheaders %u reason \"%.*s\"\n",
                  i, w.rc, w.rc < 0 ? w.e.msg : "-", w.rc < 0 ? w.e.offset : 0, r->head_len,
                  r->status, r->minor, r->keep_alive, r->chunked, r->has_length, r->close_delimited,
                  (unsigned long long)r->content_length, r->nheaders, (int)r->reason_len,
                  c->in + r->reason_off);
      failed++;
    }
  }
  if (failed) fail();
}

static void test_header_views(void **state) {
  (void)state;
  static const char s[] = "HTTP/1.1 200 OK\r\n"
                          "Server:keel\r\n"
                          "X-Spaces:   inner  spaces  \t \r\n"
                          "X-Empty:\r\n"
                          "Set-Cookie: a=b; Path=/\r\n"
                          "\r\n";
  res w;
  parse_all_ways(s, sizeof(s) - 1, &LIM, &w);
  assert_int_equal(w.rc, 1);
  assert_int_equal(w.r.nheaders, 4);
  static const char *const names[] = {"Server", "X-Spaces", "X-Empty", "Set-Cookie"};
  static const char *const values[] = {"keel", "inner  spaces", "", "a=b; Path=/"};
  for (uint32_t i = 0; i < 4; i++) {
    VIEW(s, w.hdrs[i].name_off, w.hdrs[i].name_len, names[i]);
    VIEW(s, w.hdrs[i].value_off, w.hdrs[i].value_len, values[i]);
  }
}

static void test_many_headers(void **state) {
  (void)state;
  char s[4096];
  size_t n = (size_t)snprintf(s, sizeof(s), "HTTP/1.1 200 OK\r\n");
  for (int i = 0; i < 99; i++)
    n += (size_t)snprintf(s + n, sizeof(s) - n, "X-H%d: v%d\r\n", i, i);
  n += (size_t)snprintf(s + n, sizeof(s) - n, "Content-Length: 0\r\n\r\n");
  res w;
  parse_all_ways(s, n, &LIM, &w);
  assert_int_equal(w.rc, 1);
  assert_int_equal(w.r.nheaders, 100); /* exactly header_count_max */
  assert_int_equal(w.r.head_len, n);
  VIEW(s, w.hdrs[42].name_off, w.hdrs[42].name_len, "X-H42");
  VIEW(s, w.hdrs[42].value_off, w.hdrs[42].value_len, "v42");
  /* One more is refused. */
  memcpy(s + n - 2, "X: y\r\n\r\n", 8);
  parse_all_ways(s, n + 6, &LIM, &w);
  assert_int_equal(w.rc, -1);
  assert_int_equal(w.e.status, 502);
  assert_string_equal(w.e.msg, "too many header fields");
  assert_int_equal(w.e.offset, n - 2);
}

static void test_incomplete(void **state) {
  (void)state;
  static const char s[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
  for (size_t k = 0; k < sizeof(s) - 1; k++) {
    res w;
    parse_cuts(s, k, NULL, 0, &LIM, &w);
    assert_int_equal(w.rc, 0);
  }
}

static void test_has_body(void **state) {
  (void)state;
  static const struct {
    uint16_t status;
    int head, want;
  } cases[] = {
      {200, 0, 1}, {200, 1, 0}, {100, 0, 0}, {101, 0, 0}, {199, 0, 0}, {201, 0, 1}, {204, 0, 0},
      {205, 0, 1}, {301, 0, 1}, {304, 0, 0}, {304, 1, 0}, {404, 1, 0}, {500, 0, 1}, {599, 0, 1},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    kl_http_resp r;
    memset(&r, 0, sizeof(r));
    r.status = cases[i].status;
    r.has_length = 1;
    r.content_length = 10; /* a length never gives a body to a response that has none */
    if (kl_http_resp_has_body(&r, cases[i].head) != cases[i].want) {
      print_error("status %u head %d: want %d\n", cases[i].status, cases[i].head, cases[i].want);
      fail();
    }
  }
}

/* A 1xx interim head, then the final one, then its chunked body decoded in place. */
static void test_interim_then_chunked_body(void **state) {
  (void)state;
  static const char s[] = "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                          "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
                          "junk after";
  const size_t n = sizeof(s) - 1;
  char *buf = malloc(n);
  assert_non_null(buf);
  memcpy(buf, s, n);
  kl_header hdrs[MAXH];
  kl_http_resp r;
  kl_http_error e;
  size_t sc = 0;
  assert_int_equal(kl_http_parse_response(buf, n, &sc, &LIM, hdrs, &r, &e), 1);
  assert_int_equal(r.status, 103);
  assert_false(kl_http_resp_has_body(&r, 0));
  size_t off = r.head_len;
  assert_int_equal(kl_http_parse_response(buf + off, n - off, &sc, &LIM, hdrs, &r, &e), 1);
  assert_int_equal(r.status, 200);
  assert_true(r.chunked);
  assert_true(kl_http_resp_has_body(&r, 0));
  off += r.head_len;
  /* The request body decoder serves responses as well: in place, trailers checked and dropped. */
  kl_chunked c;
  kl_chunked_init(&c);
  size_t rpos = off, wpos = off;
  assert_int_equal(kl_chunked_decode(&c, buf, n, &rpos, &wpos, 1 << 20, 1024, &e), 1);
  assert_int_equal(wpos - off, 11);
  assert_memory_equal(buf + off, "hello world", 11);
  assert_int_equal(n - rpos, strlen("junk after"));
  assert_memory_equal(buf + rpos, "junk after", n - rpos);
  free(buf);
}

/* ---- malformed heads (table): every one is a 502 ---------------------------------- */

typedef struct err_case {
  const char *in;
  size_t len; /* 0: strlen(in) */
  const char *msg;
  size_t offset; /* ANY: anywhere in the input */
  int framing;
} err_case;

#define CL "Content-Length: "
#define TE "Transfer-Encoding: "
#define S200 "HTTP/1.1 200 OK\r\n"

static const err_case ERR_CASES[] = {
    /* status line */
    {"HTTP/2.0 200 OK\r\n\r\n", 0, "HTTP version not supported", 0, 0},
    {"HTTP/1.2 200 OK\r\n\r\n", 0, "HTTP version not supported", 0, 0},
    {"HTTP/0.9 200 OK\r\n\r\n", 0, "HTTP version not supported", 0, 0},
    {"HTTP/1.1x200 OK\r\n\r\n", 0, "invalid HTTP version", 0, 0},
    {"HTTP/1 200 OK\r\n\r\n", 0, "invalid HTTP version", 0, 0},
    {"http/1.1 200 OK\r\n\r\n", 0, "invalid HTTP version", 0, 0},
    {"ICY 200 OK\r\n\r\n", 0, "invalid HTTP version", 0, 0},
    {"HTTP/1.1\r\n\r\n", 0, "invalid HTTP version", 0, 0},
    {"\r\nHTTP/1.1 200 OK\r\n\r\n", 0, "invalid HTTP version", 0, 0},
    {" HTTP/1.1 200 OK\r\n\r\n", 0, "invalid HTTP version", 0, 0},
    {"HTTP/1.1 20 OK\r\n\r\n", 0, "invalid status code", 11, 0},
    {"HTTP/1.1 20\r\n\r\n", 0, "invalid status code", 11, 0},
    {"HTTP/1.1 600 Nope\r\n\r\n", 0, "invalid status code", 9, 0},
    {"HTTP/1.1 099 Nope\r\n\r\n", 0, "invalid status code", 9, 0},
    {"HTTP/1.1 2000 OK\r\n\r\n", 0, "invalid status code", 12, 0},
    {"HTTP/1.1 200OK\r\n\r\n", 0, "invalid status code", 12, 0},
    {"HTTP/1.1 2x0 OK\r\n\r\n", 0, "invalid status code", 10, 0},
    {"HTTP/1.1 -200 OK\r\n\r\n", 0, "invalid status code", 9, 0},
    {"HTTP/1.1  200 OK\r\n\r\n", 0, "invalid status code", 9, 0},
    {"HTTP/1.1 200\tOK\r\n\r\n", 0, "invalid status code", 12, 0},
    {"HTTP/1.1 200 O\x01K\r\n\r\n", 0, "invalid character in reason phrase", 14, 0},
    {"HTTP/1.1 200 O\x7fK\r\n\r\n", 0, "invalid character in reason phrase", 14, 0},
    {"HTTP/1.1 200 O\0K\r\n\r\n", 20, "invalid character in reason phrase", 14, 0},
    {"HTTP/1.1 200 O\rK\r\n\r\n", 0, "bare CR in status line", 14, 1},
    {"HTTP/1.1 200 OK\r\r\n\r\n", 0, "bare CR in status line", 15, 1},
    /* line endings: a bare LF anywhere in the head */
    {"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", 0, "line not terminated by CRLF", 15, 1},
    {S200 CL "0\n\r\n", 0, "line not terminated by CRLF", 34, 1},
    {S200 CL "0\r\n\n", 0, "line not terminated by CRLF", 36, 1},
    {"HTTP/1.1 200 OK\n\n", 0, "line not terminated by CRLF", 15, 1},
    {"\n", 0, "line not terminated by CRLF", 0, 1},
    {S200 "X: a\rb\r\n\r\n", 0, "bare CR in header value", 21, 1},
    {S200 "\rContent-Length: 5\r\n\r\n", 0, "invalid character in header name", 17, 0},
    /* field syntax */
    {S200 "X-A: 1\r\n folded\r\n\r\n", 0, "obsolete line folding is not allowed", 25, 1},
    {S200 "\tX: 1\r\n\r\n", 0, "obsolete line folding is not allowed", 17, 1},
    {S200 "Content-Length : 5\r\n\r\n", 0, "whitespace before colon in header", 31, 1},
    {S200 "Transfer-Encoding\t: chunked\r\n\r\n", 0, "whitespace before colon in header", 34, 1},
    {S200 "X(Y: 1\r\n\r\n", 0, "invalid character in header name", 18, 0},
    {S200 ": 1\r\n\r\n", 0, "invalid character in header name", 17, 0},
    {S200 "NoColon\r\n\r\n", 0, "invalid character in header name", 24, 0},
    {S200 "X: a\0b\r\n\r\n", 27, "invalid character in header value", 21, 0},
    {S200 "X: a\x01\r\n\r\n", 0, "invalid character in header value", 21, 0},
    {S200 "X: \x7f\r\n\r\n", 0, "invalid character in header value", 20, 0},
    /* Content-Length */
    {S200 CL "5\r\n" CL "6\r\n\r\n", 0, "differing Content-Length values", 52, 1},
    {S200 CL "5, 6\r\n\r\n", 0, "differing Content-Length values", 36, 1},
    {S200 CL "5,5,0\r\n\r\n", 0, "differing Content-Length values", 37, 1},
    {S200 CL "+5\r\n\r\n", 0, "invalid Content-Length", 33, 1},
    {S200 CL "-5\r\n\r\n", 0, "invalid Content-Length", 33, 1},
    {S200 CL "5 5\r\n\r\n", 0, "invalid Content-Length", 34, 1},
    {S200 CL "0x5\r\n\r\n", 0, "invalid Content-Length", 34, 1},
    {S200 CL "5.0\r\n\r\n", 0, "invalid Content-Length", 34, 1},
    {S200 CL "\r\n\r\n", 0, "invalid Content-Length", 33, 1},
    {S200 CL "5,\r\n\r\n", 0, "invalid Content-Length", 35, 1},
    {S200 CL ",5\r\n\r\n", 0, "invalid Content-Length", 33, 1},
    {S200 CL "5,,5\r\n\r\n", 0, "invalid Content-Length", 35, 1},
    {S200 CL "1234567890123456789\r\n\r\n", 0, "invalid Content-Length", 33, 1},
    {S200 CL "5\r\n" CL "x\r\n\r\n", 0, "invalid Content-Length", 52, 1},
    /* Transfer-Encoding */
    {S200 CL "5\r\n" TE "chunked\r\n\r\n", 0, "both Content-Length and Transfer-Encoding", 0, 1},
    {S200 TE "chunked\r\n" CL "5\r\n\r\n", 0, "both Content-Length and Transfer-Encoding", 0, 1},
    {S200 TE "gzip\r\n\r\n", 0, "chunked is not the final transfer coding", 0, 1},
    {S200 TE "chunked, gzip\r\n\r\n", 0, "chunked is not the final transfer coding", 0, 1},
    {S200 TE "identity\r\n\r\n", 0, "chunked is not the final transfer coding", 0, 1},
    {S200 TE "\r\n\r\n", 0, "chunked is not the final transfer coding", 0, 1},
    {S200 TE "chunked\r\n" TE "gzip\r\n\r\n", 0, "chunked is not the final transfer coding", 0, 1},
    {S200 TE "chunked, chunked\r\n\r\n", 0, "chunked applied more than once", 0, 1},
    {S200 TE "chunked\r\n" TE "chunked\r\n\r\n", 0, "chunked applied more than once", 0, 1},
    {S200 TE "gzip, chunked\r\n\r\n", 0, "unsupported transfer coding", 0, 0},
    {S200 TE "gzip\r\n" TE "chunked\r\n\r\n", 0, "unsupported transfer coding", 0, 0},
    {"HTTP/1.0 200 OK\r\n" TE "chunked\r\n\r\n", 0, "Transfer-Encoding in an HTTP/1.0 response", 0,
     1},
    /* framing headers are checked on bodiless statuses too */
    {"HTTP/1.1 204 No Content\r\n" CL "0\r\n" TE "chunked\r\n\r\n", 0,
     "both Content-Length and Transfer-Encoding", 0, 1},
    {"HTTP/1.1 304 Not Modified\r\n" CL "1, 2\r\n\r\n", 0, "differing Content-Length values", 46,
     1},
};

static void test_err_table(void **state) {
  (void)state;
  int failed = 0;
  for (size_t i = 0; i < sizeof(ERR_CASES) / sizeof(ERR_CASES[0]); i++) {
    const err_case *c = &ERR_CASES[i];
    size_t n = c->len ? c->len : strlen(c->in);
    res w;
    parse_all_ways(c->in, n, &LIM, &w);
    if (w.rc != -1 || w.e.status != 502 || strcmp(w.e.msg, c->msg) != 0 ||
        (c->offset != ANY && w.e.offset != c->offset) || w.e.offset > n ||
        w.e.framing != c->framing) {
      print_error("case %zu: want \"%s\" at %zu framing %d, got rc %d: %d \"%s\" at %zu "
                  "framing %d\n",
                  i, c->msg, c->offset, c->framing, w.rc, w.rc < 0 ? w.e.status : 0,
                  w.rc < 0 ? w.e.msg : "-", w.rc < 0 ? w.e.offset : 0, w.e.framing);
      failed++;
    }
  }
  if (failed) fail();
}

/* A head of exactly `total` bytes: "HTTP/1.1 200 OK\r\nX: ppp...\r\n\r\n". */
static size_t build_head(char *out, size_t total) {
  static const char pre[] = "HTTP/1.1 200 OK\r\nX: ";
  size_t pl = sizeof(pre) - 1;
  memcpy(out, pre, pl);
  memset(out + pl, 'p', total - pl - 4);
  memcpy(out + total - 4, "\r\n\r\n", 4);
  return total;
}

static void test_head_too_large(void **state) {
  (void)state;
  const kl_http_limits lim = {16, 128, 8}; /* request_line_max does not apply to responses */
  char s[512];
  res w;
  parse_all_ways(s, build_head(s, 128), &lim, &w);
  assert_int_equal(w.rc, 1);
  assert_int_equal(w.r.head_len, 128);
  parse_all_ways(s, build_head(s, 129), &lim, &w);
  assert_int_equal(w.rc, -1);
  assert_int_equal(w.e.status, 502);
  assert_string_equal(w.e.msg, "response header too large");
  assert_int_equal(w.e.offset, 128);
  /* Incomplete: refused as soon as it cannot fit. */
  build_head(s, 300);
  parse_all_ways(s, 200, &lim, &w);
  assert_int_equal(w.rc, -1);
  assert_string_equal(w.e.msg, "response header too large");
  parse_cuts(s, 127, NULL, 0, &lim, &w);
  assert_int_equal(w.rc, 0);
  /* A body after the head does not count. */
  build_head(s, 100);
  memset(s + 100, 'B', 300);
  parse_all_ways(s, 400, &lim, &w);
  assert_int_equal(w.rc, 1);
  assert_int_equal(w.r.head_len, 100);
}

/* The request parser's answers are untouched by the shared code: a few spot checks. */
static void test_request_parser_unchanged(void **state) {
  (void)state;
  static const char s[] = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                          "Content-Length: 5\r\n\r\n";
  kl_header hdrs[MAXH];
  kl_http_head h;
  kl_http_error e;
  size_t sc = 0;
  assert_int_equal(kl_http_parse_head(s, sizeof(s) - 1, &sc, &LIM, hdrs, &h, &e), -1);
  assert_int_equal(e.status, 400); /* requests: any duplicate Content-Length is refused */
  assert_string_equal(e.msg, "duplicate Content-Length");
  static const char t[] = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
  sc = 0;
  assert_int_equal(kl_http_parse_head(t, sizeof(t) - 1, &sc, &LIM, hdrs, &h, &e), -1);
  assert_int_equal(e.status, 501);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ok_table),
      cmocka_unit_test(test_header_views),
      cmocka_unit_test(test_many_headers),
      cmocka_unit_test(test_incomplete),
      cmocka_unit_test(test_has_body),
      cmocka_unit_test(test_interim_then_chunked_body),
      cmocka_unit_test(test_err_table),
      cmocka_unit_test(test_head_too_large),
      cmocka_unit_test(test_request_parser_unchanged),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
