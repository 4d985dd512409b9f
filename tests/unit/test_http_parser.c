/* test_http_parser.c - unit tests for the strict HTTP/1.1 head parser and the chunked decoder. */
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
#define LIT(s) (s), (sizeof(s) - 1)
#define NOOFF ((size_t)-1) /* "any plausible offset" */

static const kl_http_limits DEF = {8192, 32768, 100}; /* the configuration defaults */
static const uint64_t BODY_DEF = 1024 * 1024;
static const uint32_t TRAILER_DEF = 32768;

/* ---- helpers: parsing heads ------------------------------------------------ */

/* A copy of `n` bytes in an allocation of exactly `n` bytes, so ASan flags reads past the end. */
static char *exact_copy(const char *s, size_t n) {
  char *p = malloc(n ? n : 1);
  assert_non_null(p);
  if (n) memcpy(p, s, n);
  return p;
}

typedef struct parsed {
  int rc;
  size_t scanned;  /* *scanned after the call that returned rc */
  size_t consumed; /* bytes given to the call that returned rc */
  kl_http_head h;
  kl_http_error e;
  kl_header hdrs[MAXH];
} parsed;

static void parse_whole(const char *s, size_t n, const kl_http_limits *lim, parsed *r) {
  assert_true(lim->header_count_max <= MAXH);
  memset(r, 0, sizeof(*r));
  char *buf = exact_copy(s, n);
  size_t sc = 0;
  r->rc = kl_http_parse_head(buf, n, &sc, lim, r->hdrs, &r->h, &r->e);
  r->scanned = sc;
  r->consumed = n;
  free(buf);
}

/*
 * Feeds `s` one byte at a time into a buffer that grows to exactly the bytes received, passing
 * the *scanned hint along; stops at the first call that does not return 0.
 */
static void parse_bytewise(const char *s, size_t n, const kl_http_limits *lim, parsed *r) {
  memset(r, 0, sizeof(*r));
  char *buf = NULL;
  size_t sc = 0;
  for (size_t i = 1; i <= n; i++) {
    char *nb = realloc(buf, i);
    assert_non_null(nb);
    buf = nb;
    buf[i - 1] = s[i - 1];
    r->rc = kl_http_parse_head(buf, i, &sc, lim, r->hdrs, &r->h, &r->e);
    r->consumed = i;
    r->scanned = sc;
    if (r->rc != 0) break;
    /* The hint is the start of the first incomplete line. */
    assert_true(sc <= i);
    assert_true(sc == 0 || buf[sc - 1] == '\n');
  }
  free(buf);
}

static void assert_same_head(const kl_http_head *a, const kl_http_head *b) {
  assert_int_equal(a->method_off, b->method_off);
  assert_int_equal(a->method_len, b->method_len);
  assert_int_equal(a->target_off, b->target_off);
  assert_int_equal(a->target_len, b->target_len);
  assert_int_equal(a->path_off, b->path_off);
  assert_int_equal(a->path_len, b->path_len);
  assert_int_equal(a->query_off, b->query_off);
  assert_int_equal(a->query_len, b->query_len);
  assert_int_equal(a->head_len, b->head_len);
  assert_int_equal(a->minor, b->minor);
  assert_int_equal(a->keep_alive, b->keep_alive);
  assert_int_equal(a->chunked, b->chunked);
  assert_int_equal(a->has_length, b->has_length);
  assert_int_equal(a->expect_continue, b->expect_continue);
  assert_int_equal(a->is_head, b->is_head);
  assert_true(a->content_length == b->content_length);
  assert_int_equal(a->nheaders, b->nheaders);
}

static void assert_same_result(const parsed *a, const parsed *b) {
  assert_int_equal(a->rc, b->rc);
  if (a->rc == 1) {
    assert_same_head(&a->h, &b->h);
    for (uint32_t i = 0; i < a->h.nheaders; i++) {
      assert_int_equal(a->hdrs[i].name_off, b->hdrs[i].name_off);
      assert_int_equal(a->hdrs[i].name_len, b->hdrs[i].name_len);
      assert_int_equal(a->hdrs[i].value_off, b->hdrs[i].value_off);
      assert_int_equal(a->hdrs[i].value_len, b->hdrs[i].value_len);
    }
  } else if (a->rc < 0) {
    assert_int_equal(a->e.status, b->e.status);
    assert_string_equal(a->e.msg, b->e.msg);
    assert_int_equal(a->e.offset, b->e.offset);
  }
}

/* Parses whole and byte by byte; both must agree. Returns the whole-buffer result in `r`. */
static void parse_both(const char *s, size_t n, const kl_http_limits *lim, parsed *r) {
  parsed *inc = malloc(sizeof(*inc));
  assert_non_null(inc);
  parse_whole(s, n, lim, r);
  parse_bytewise(s, n, lim, inc);
  assert_same_result(r, inc);
  if (r->rc == 1) {
    assert_int_equal(inc->consumed, r->h.head_len); /* complete exactly at the blank line */
    assert_int_equal(r->scanned, 0);                /* reset for the next request */
    assert_int_equal(inc->scanned, 0);
  }
  free(inc);
}

/* A valid head occupying all of `s`. */
static void parse_ok_at(const char *s, size_t n, parsed *r, int line) {
  parse_both(s, n, &DEF, r);
  if (r->rc != 1 || r->h.head_len != n) {
    print_error("line %d: want a %zu-byte head, got rc %d head_len %u (%s at %zu)\n", line, n,
                r->rc, r->h.head_len, r->rc < 0 && r->e.msg ? r->e.msg : "-",
                r->rc < 0 ? r->e.offset : 0);
    _fail(__FILE__, line);
  }
}
#define PARSE_OK(lit, r) parse_ok_at((lit), sizeof(lit) - 1, (r), __LINE__)

static void assert_view_at(const char *s, uint32_t off, uint32_t len, const char *want, int line) {
  size_t wl = strlen(want);
  if (len != wl || (wl && memcmp(s + off, want, wl) != 0)) {
    print_error("line %d: want view \"%s\", got \"%.*s\" (off %u len %u)\n", line, want, (int)len,
                s + off, off, len);
    _fail(__FILE__, line);
  }
}
#define VIEW(s, off, len, want) assert_view_at((s), (off), (len), (want), __LINE__)

/* The first header named `lname` (lowercase), or NULL. */
static const kl_header *hdr(const char *s, const parsed *r, const char *lname) {
  for (uint32_t i = 0; i < r->h.nheaders; i++)
    if (kl_http_name_eq(s + r->hdrs[i].name_off, r->hdrs[i].name_len, lname)) return &r->hdrs[i];
  return NULL;
}

/* Offset of `needle` in s[0, n) plus `delta`. */
static size_t at(const char *s, size_t n, const char *needle, size_t delta) {
  const char *p = memmem(s, n, needle, strlen(needle));
  assert_non_null(p);
  return (size_t)(p - s) + delta;
}

/*
 * `s` must fail with `status` and `msg` (NULL: any message) at `off` (NOOFF: anywhere in s),
 * the same whole and byte by byte. Prints what differs and returns 0 when it does not.
 */
static int err_case_ok(const kl_http_limits *lim, const char *s, size_t n, int status,
                       const char *msg, size_t off, int line, int idx) {
  parsed *r = malloc(sizeof(*r)), *inc = malloc(sizeof(*inc));
  assert_non_null(r);
  assert_non_null(inc);
  parse_whole(s, n, lim, r);
  int ok = r->rc == -1 && r->e.status == status && r->e.msg &&
           (!msg || strcmp(r->e.msg, msg) == 0) &&
           (off == NOOFF ? r->e.offset <= n : r->e.offset == off);
  if (!ok) {
    print_error("line %d case %d: want %d \"%s\" at %lld, got rc %d: %d \"%s\" at %zu\n", line, idx,
                status, msg ? msg : "*", off == NOOFF ? -1LL : (long long)off, r->rc,
                r->rc < 0 ? r->e.status : 0, r->rc < 0 && r->e.msg ? r->e.msg : "-",
                r->rc < 0 ? r->e.offset : 0);
  } else {
    /* Byte by byte the same error comes out. */
    parse_bytewise(s, n, lim, inc);
    ok = inc->rc == -1 && inc->e.status == r->e.status && strcmp(inc->e.msg, r->e.msg) == 0 &&
         inc->e.offset == r->e.offset;
    if (!ok)
      print_error("line %d case %d: byte by byte: rc %d: %d \"%s\" at %zu (whole: %d \"%s\" at "
                  "%zu)\n",
                  line, idx, inc->rc, inc->rc < 0 ? inc->e.status : 0,
                  inc->rc < 0 && inc->e.msg ? inc->e.msg : "-", inc->rc < 0 ? inc->e.offset : 0,
                  r->e.status, r->e.msg, r->e.offset);
  }
  free(r);
  free(inc);
  return ok;
}

static void expect_err_at(const kl_http_limits *lim, const char *s, size_t n, int status,
                          const char *msg, size_t off, int line) {
  if (!err_case_ok(lim, s, n, status, msg, off, line, 0)) _fail(__FILE__, line);
}

typedef struct err_case {
  const char *in;
  size_t len;
  int status;
  const char *msg;    /* NULL: any message */
  const char *needle; /* the offset is where this occurs, plus delta; NULL: any plausible offset */
  size_t delta;
} err_case;

#define E(lit, st, msg, needle, delta)                                                             \
  { (lit), sizeof(lit) - 1, (st), (msg), (needle), (delta) }

/* Runs every case, reporting each that fails, then fails if any did. */
static void run_err_cases(const err_case *c, size_t n, int line) {
  int failed = 0;
  for (size_t i = 0; i < n; i++) {
    size_t off = c[i].needle ? at(c[i].in, c[i].len, c[i].needle, c[i].delta) : NOOFF;
    if (!err_case_ok(&DEF, c[i].in, c[i].len, c[i].status, c[i].msg, off, line, (int)i)) failed++;
  }
  if (failed) _fail(__FILE__, line);
}
#define RUN_ERRS(arr) run_err_cases((arr), sizeof(arr) / sizeof((arr)[0]), __LINE__)

/* ---- valid heads ------------------------------------------------------------ */

static void test_simple_get(void **state) {
  (void)state;
  static const char s[] = "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
  parsed r;
  PARSE_OK(s, &r);
  VIEW(s, r.h.method_off, r.h.method_len, "GET");
  VIEW(s, r.h.target_off, r.h.target_len, "/");
  VIEW(s, r.h.path_off, r.h.path_len, "/");
  assert_int_equal(r.h.query_len, 0);
  assert_int_equal(r.h.minor, 1);
  assert_int_equal(r.h.keep_alive, 1);
  assert_int_equal(r.h.chunked, 0);
  assert_int_equal(r.h.has_length, 0);
  assert_true(r.h.content_length == 0);
  assert_int_equal(r.h.expect_continue, 0);
  assert_int_equal(r.h.is_head, 0);
  assert_int_equal(r.h.nheaders, 1);
  VIEW(s, r.hdrs[0].name_off, r.hdrs[0].name_len, "Host");
  VIEW(s, r.hdrs[0].value_off, r.hdrs[0].value_len, "example.com");
}

static void test_methods(void **state) {
  (void)state;
  static const char *const methods[] = {"GET",   "POST",    "PUT",      "DELETE",
                                        "PATCH", "OPTIONS", "TRACE",    "CONNECT_",
                                        "BREW",  "get",     "M-SEARCH", "X!#$%&'*+-.^_`|~9",
                                        "HEADX", "head",    "HEA"};
  for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
    char s[128];
    int n = snprintf(s, sizeof(s), "%s /x HTTP/1.1\r\nHost: h\r\n\r\n", methods[i]);
    parsed r;
    parse_ok_at(s, (size_t)n, &r, __LINE__);
    VIEW(s, r.h.method_off, r.h.method_len, methods[i]);
    VIEW(s, r.h.path_off, r.h.path_len, "/x");
    assert_int_equal(r.h.is_head, 0); /* methods are case-sensitive: only "HEAD" is HEAD */
  }
  static const char h[] = "HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n";
  parsed r;
  PARSE_OK(h, &r);
  VIEW(h, r.h.method_off, r.h.method_len, "HEAD");
  assert_int_equal(r.h.is_head, 1);
  static const char h10[] = "HEAD / HTTP/1.0\r\n\r\n";
  PARSE_OK(h10, &r);
  assert_int_equal(r.h.is_head, 1);
  assert_int_equal(r.h.nheaders, 0);
}

static void test_origin_form_query(void **state) {
  (void)state;
  parsed r;
  static const char a[] = "GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: h\r\n\r\n";
  PARSE_OK(a, &r);
  VIEW(a, r.h.target_off, r.h.target_len, "/a/b?x=1&y=2");
  VIEW(a, r.h.path_off, r.h.path_len, "/a/b");
  VIEW(a, r.h.query_off, r.h.query_len, "x=1&y=2");

  static const char b[] = "GET /? HTTP/1.1\r\nHost: h\r\n\r\n";
  PARSE_OK(b, &r);
  VIEW(b, r.h.path_off, r.h.path_len, "/");
  assert_int_equal(r.h.query_len, 0);

  static const char c[] = "GET /p?a?b=/c HTTP/1.1\r\nHost: h\r\n\r\n";
  PARSE_OK(c, &r);
  VIEW(c, r.h.path_off, r.h.path_len, "/p");
  VIEW(c, r.h.query_off, r.h.query_len, "a?b=/c");

  static const char d[] = "GET /%20a~b!$&'()*+,;=:@[]{}|^`\"<>\\ HTTP/1.1\r\nHost: h\r\n\r\n";
  PARSE_OK(d, &r);
  VIEW(d, r.h.path_off, r.h.path_len, "/%20a~b!$&'()*+,;=:@[]{}|^`\"<>\\");

  static const char e[] = "GET //double//slash HTTP/1.1\r\nHost: h\r\n\r\n";
  PARSE_OK(e, &r);
  VIEW(e, r.h.path_off, r.h.path_len, "//double//slash");
}

static void test_absolute_form(void **state) {
  (void)state;
  parsed r;
  static const char a[] = "GET http://example.com/p/q?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n";
  PARSE_OK(a, &r);
  VIEW(a, r.h.target_off, r.h.target_len, "http://example.com/p/q?x=1");
  VIEW(a, r.h.path_off, r.h.path_len, "/p/q");
  VIEW(a, r.h.query_off, r.h.query_len, "x=1");

  static const char b[] = "GET HTTPS://example.com:8443 HTTP/1.1\r\nHost: example.com\r\n\r\n";
  PARSE_OK(b, &r);
  assert_int_equal(r.h.path_len, 0); /* no path: means "/" */
  assert_int_equal(r.h.query_len, 0);

  static const char c[] = "GET http://h?only=query HTTP/1.1\r\nHost: h\r\n\r\n";
  PARSE_OK(c, &r);
  assert_int_equal(r.h.path_len, 0);
  VIEW(c, r.h.query_off, r.h.query_len, "only=query");

  static const char d[] = "POST hTtP://u:p@h/x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n";
  PARSE_OK(d, &r);
  VIEW(d, r.h.path_off, r.h.path_len, "/x");
}

static void test_asterisk_form(void **state) {
  (void)state;
  parsed r;
  static const char a[] = "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n";
  PARSE_OK(a, &r);
  VIEW(a, r.h.target_off, r.h.target_len, "*");
  VIEW(a, r.h.path_off, r.h.path_len, "*");
  assert_int_equal(r.h.query_len, 0);
}

typedef struct ka_case {
  const char *in;
  uint8_t minor, keep_alive;
} ka_case;

static void test_versions_keep_alive(void **state) {
  (void)state;
  static const ka_case cases[] = {
      {"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 1, 1},
      {"GET / HTTP/1.0\r\n\r\n", 0, 0},
      {"GET / HTTP/1.0\r\nHost: h\r\n\r\n", 0, 0},
      {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 0, 1},
      {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", 0, 1},
      {"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", 0, 0},
      {"GET / HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n", 0, 0},
      {"GET / HTTP/1.0\r\nConnection: foo,KEEP-ALIVE\r\n\r\n", 0, 1},
      {"GET / HTTP/1.0\r\nConnection: keep-alives\r\n\r\n", 0, 0},
      {"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", 1, 0},
      {"GET / HTTP/1.1\r\nHost: h\r\nConnection: CLOSE\r\n\r\n", 1, 0},
      {"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade, close\r\n\r\n", 1, 0},
      {"GET / HTTP/1.1\r\nHost: h\r\nConnection: ,, ,close ,\t,\r\n\r\n", 1, 0},
      {"GET / HTTP/1.1\r\nHost: h\r\nConnection: x\r\nConnection: close\r\n\r\n", 1, 0},
      {"GET / HTTP/1.1\r\nHost: h\r\nconnection: close\r\n\r\n", 1, 0},
      {"GET / HTTP/1.1\r\nHost: h\r\nConnection: closed\r\n\r\n", 1, 1},
      {"GET / HTTP/1.1\r\nHost: h\r\nConnection: clo se\r\n\r\n", 1, 1},
      {"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n", 1, 1},
      {"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n\r\n", 1, 1},
      {"GET / HTTP/1.1\r\nHost: h\r\nConnection:\r\n\r\n", 1, 1},
      {"GET / HTTP/1.1\r\nHost: h\r\nX-Connection: close\r\n\r\n", 1, 1},
      {"GET / HTTP/1.9\r\nHost: h\r\n\r\n", 1, 1}, /* a higher 1.x minor is served as 1.1 */
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    parsed r;
    parse_ok_at(cases[i].in, strlen(cases[i].in), &r, (int)(__LINE__ * 1000 + i));
    if (r.h.minor != cases[i].minor || r.h.keep_alive != cases[i].keep_alive) {
      print_error("case %zu: %s: want minor %u keep_alive %u, got %u %u\n", i, cases[i].in,
                  cases[i].minor, cases[i].keep_alive, r.h.minor, r.h.keep_alive);
      fail();
    }
  }
}

static void test_expect(void **state) {
  (void)state;
  parsed r;
  static const char a[] = "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
                          "Content-Length: 5\r\n\r\n";
  PARSE_OK(a, &r);
  assert_int_equal(r.h.expect_continue, 1);
  static const char b[] = "POST / HTTP/1.1\r\nHost: h\r\nexpect:  100-Continue \r\n"
                          "Content-Length: 5\r\n\r\n";
  PARSE_OK(b, &r);
  assert_int_equal(r.h.expect_continue, 1);
  /* HTTP/1.0 peers cannot take a 100 Continue: ignored, as is an unknown expectation. */
  static const char c[] = "POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
  PARSE_OK(c, &r);
  assert_int_equal(r.h.expect_continue, 0);
  static const char d[] = "POST / HTTP/1.0\r\nExpect: something\r\nContent-Length: 5\r\n\r\n";
  PARSE_OK(d, &r);
  assert_int_equal(r.h.expect_continue, 0);
  static const char e[] = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
  PARSE_OK(e, &r);
  assert_int_equal(r.h.expect_continue, 0);
}

static void test_content_length(void **state) {
  (void)state;
  parsed r;
  static const char a[] = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 42\r\n\r\n";
  PARSE_OK(a, &r);
  assert_int_equal(r.h.has_length, 1);
  assert_true(r.h.content_length == 42);
  assert_int_equal(r.h.chunked, 0);
  static const char b[] = "POST / HTTP/1.1\r\nHost: h\r\ncontent-length: 0\r\n\r\n";
  PARSE_OK(b, &r);
  assert_int_equal(r.h.has_length, 1);
  assert_true(r.h.content_length == 0);
  static const char c[] = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \t 007 \t\r\n\r\n";
  PARSE_OK(c, &r);
  assert_true(r.h.content_length == 7);
  static const char d[] =
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 999999999999999999\r\n\r\n";
  PARSE_OK(d, &r);
  assert_true(r.h.content_length == 999999999999999999ULL); /* 18 digits: the maximum */
  static const char e[] = "POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\n";
  PARSE_OK(e, &r);
  assert_true(r.h.content_length == 3);
}

static void test_chunked_head(void **state) {
  (void)state;
  parsed r;
  static const char a[] = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
  PARSE_OK(a, &r);
  assert_int_equal(r.h.chunked, 1);
  assert_int_equal(r.h.has_length, 0);
  static const char b[] = "POST / HTTP/1.1\r\nHost: h\r\ntransfer-encoding: ChUnKeD \r\n\r\n";
  PARSE_OK(b, &r);
  assert_int_equal(r.h.chunked, 1);
  static const char c[] = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: , chunked ,\r\n\r\n";
  PARSE_OK(c, &r);
  assert_int_equal(r.h.chunked, 1);
}

static void test_header_views(void **state) {
  (void)state;
  parsed r;
  static const char s[] = "GET / HTTP/1.1\r\n"
                          "Host:h\r\n"
                          "X-Spaces:   inner  spaces  \t \r\n"
                          "X-Tab:\tv\t\r\n"
                          "X-Empty:\r\n"
                          "X-Blank: \t \r\n"
                          "x-lower: a:b,c;d=\"e\"\r\n"
                          "X-Obs: caf\xc3\xa9 \xff\r\n"
                          "\r\n";
  PARSE_OK(s, &r);
  assert_int_equal(r.h.nheaders, 7);
  static const char *const names[] = {"Host",    "X-Spaces", "X-Tab", "X-Empty",
                                      "X-Blank", "x-lower",  "X-Obs"};
  static const char *const values[] = {
      "h", "inner  spaces", "v", "", "", "a:b,c;d=\"e\"", "caf\xc3\xa9 \xff"};
  for (uint32_t i = 0; i < 7; i++) {
    VIEW(s, r.hdrs[i].name_off, r.hdrs[i].name_len, names[i]);
    VIEW(s, r.hdrs[i].value_off, r.hdrs[i].value_len, values[i]);
    assert_true(r.hdrs[i].value_off + r.hdrs[i].value_len <= r.h.head_len);
    assert_true(r.hdrs[i].value_off > r.hdrs[i].name_off + r.hdrs[i].name_len);
    if (i) assert_true(r.hdrs[i].name_off > r.hdrs[i - 1].value_off);
  }
  const kl_header *h = hdr(s, &r, "x-lower");
  assert_non_null(h);
  assert_ptr_equal(h, &r.hdrs[5]);
  assert_null(hdr(s, &r, "x-missing"));
}

static void test_name_eq(void **state) {
  (void)state;
  assert_true(kl_http_name_eq("Content-Length", 14, "content-length"));
  assert_true(kl_http_name_eq("HOST", 4, "host"));
  assert_true(kl_http_name_eq("", 0, ""));
  assert_false(kl_http_name_eq("Hos", 3, "host"));
  assert_false(kl_http_name_eq("Hostx", 5, "host"));
  assert_false(kl_http_name_eq("Ho-t", 4, "host"));
  assert_false(kl_http_name_eq("[", 1, "{")); /* only letters fold */
  assert_false(kl_http_name_eq("@", 1, "`"));
}

static void test_head_followed_by_data(void **state) {
  (void)state;
  /* A body and a pipelined request after the head are not part of it. */
  static const char s[] = "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
                          "GET /b HTTP/1.1\r\nHost: h\r\n\r\n";
  parsed r;
  parse_both(s, sizeof(s) - 1, &DEF, &r);
  assert_int_equal(r.rc, 1);
  size_t first = at(s, sizeof(s) - 1, "abc", 0);
  assert_int_equal(r.h.head_len, first);
  assert_true(r.h.content_length == 3);
  size_t second = first + 3;
  parse_both(s + second, sizeof(s) - 1 - second, &DEF, &r);
  assert_int_equal(r.rc, 1);
  assert_int_equal(r.h.head_len, sizeof(s) - 1 - second);
  VIEW(s + second, r.h.path_off, r.h.path_len, "/b");

  /* Two heads back to back. */
  static const char p[] = "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n";
  parse_both(p, sizeof(p) - 1, &DEF, &r);
  assert_int_equal(r.rc, 1);
  assert_int_equal(r.h.head_len, (sizeof(p) - 1) / 2);
}

/* ---- incremental parsing ---------------------------------------------------- */

static void test_incremental_scanned_hint(void **state) {
  (void)state;
  static const char s[] = "GET /x HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n";
  const size_t n = sizeof(s) - 1;
  kl_header hdrs[MAXH];
  kl_http_head h;
  kl_http_error e;
  size_t sc = 0;
  char *buf = NULL;
  int rc = 0;
  for (size_t i = 1; i <= n; i++) {
    char *nb = realloc(buf, i);
    assert_non_null(nb);
    buf = nb;
    buf[i - 1] = s[i - 1];
    rc = kl_http_parse_head(buf, i, &sc, &DEF, hdrs, &h, &e);
    if (i < n) {
      assert_int_equal(rc, 0);
      /* The hint is the start of the line being received. */
      size_t want = 0;
      for (size_t j = 0; j < i; j++)
        if (s[j] == '\n') want = j + 1;
      assert_int_equal(sc, want);
    }
  }
  assert_int_equal(rc, 1);
  assert_int_equal(sc, 0);
  assert_int_equal(h.head_len, n);
  assert_int_equal(h.nheaders, 2);
  free(buf);

  /* Chunks of other sizes, using the hint across calls, give the same head as a single call. */
  parsed whole;
  parse_whole(s, n, &DEF, &whole);
  for (size_t step = 2; step < n; step++) {
    parsed r;
    memset(&r, 0, sizeof(r));
    sc = 0;
    for (size_t len = step;; len += step) {
      if (len > n) len = n;
      char *b = exact_copy(s, len);
      r.rc = kl_http_parse_head(b, len, &sc, &DEF, r.hdrs, &r.h, &r.e);
      free(b);
      if (r.rc != 0 || len == n) break;
    }
    assert_same_result(&whole, &r);
  }
}

static void test_incremental_many(void **state) {
  (void)state;
  static const char *const heads[] = {
      "GET / HTTP/1.1\r\nHost: h\r\n\r\n",
      "POST /echo?x HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
      "Content-Length: 10\r\nExpect: 100-continue\r\n\r\n",
      "PUT http://h/p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
      "Connection: close\r\n\r\n",
      "OPTIONS * HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
      "HEAD /\xff HTTP/1.1\r\nHost: h\r\n\r\n", /* error: non-ASCII in target */
      "GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
      "GET / HTTP/1.1\r\nX: y\r\n\r\n",
  };
  for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); i++) {
    parsed r; /* parse_both compares whole and byte by byte */
    parse_both(heads[i], strlen(heads[i]), &DEF, &r);
    assert_int_not_equal(r.rc, 0);
  }
}

/* ---- errors (docs/http.md) ------------------------------------------------------ */

static void test_err_request_line(void **state) {
  (void)state;
  static const err_case cases[] = {
      E("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid character in method", "(", 0),
      E(" / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid character in method", " /", 0),
      E("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid character in method", "\t", 0),
      E("G\x80T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid character in method", "\x80", 0),
      E("GE:T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid character in method", ":", 0),
      E("GET\r\nHost: a\r\n\r\n", 400, "invalid character in method", "\r", 0),
      E("GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid character in request target",
        "\x7f", 0),
      E("GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid character in request target",
        "\xc3", 0),
      E("GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid character in request target",
        "\x01", 0),
      E("GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid character in request target", "/a",
        2),
      E("GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid character in request target", "\t",
        0),
      E("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid character in request target", "  ", 1),
      E("GET /\r\nHost: a\r\n\r\n", 400, "invalid character in request target", "\r", 0),
      E("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid character in request target", " b",
        0),
      E("GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid request target", "a/b", 0),
      E("GET ftp://h/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid request target", "ftp", 0),
      E("GET http:/h/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid request target", "http", 0),
      E("GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid request target", "*", 0),
      E("OPTIONS ** HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid request target", "**", 0),
      E("GET http:///p HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid request target", "http", 7),
      E("GET https://?q HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid request target", "http", 8),
      E("GET http:// HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid request target", "http", 7),
      E("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 400,
        "invalid request target", "example", 0),
      E("GET / HTTP/1.1x\r\nHost: a\r\n\r\n", 400, "invalid HTTP version", "HTTP", 0),
      E("GET / http/1.1\r\nHost: a\r\n\r\n", 400, "invalid HTTP version", "http", 0),
      E("GET / HTTP/1\r\nHost: a\r\n\r\n", 400, "invalid HTTP version", "HTTP", 0),
      E("GET / HTTP/1.\r\nHost: a\r\n\r\n", 400, "invalid HTTP version", "HTTP", 0),
      E("GET / HTTP/a.1\r\nHost: a\r\n\r\n", 400, "invalid HTTP version", "HTTP", 0),
      E("GET / HTTP/1.a\r\nHost: a\r\n\r\n", 400, "invalid HTTP version", "HTTP", 0),
      E("GET / HTTP/10.1\r\nHost: a\r\n\r\n", 400, "invalid HTTP version", "HTTP", 0),
      E("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400, "invalid HTTP version", "HTTP", 0),
      E("GET / HTTP/1,1\r\nHost: a\r\n\r\n", 400, "invalid HTTP version", "HTTP", 0),
      E("GET / \r\nHost: a\r\n\r\n", 400, "invalid HTTP version", "/ ", 2),
      E("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP version not supported", "HTTP", 0),
      E("GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505, "HTTP version not supported", "HTTP", 0),
      E("GET / HTTP/3.1\r\nHost: a\r\n\r\n", 505, "HTTP version not supported", "HTTP", 0),
      E("GET / HTTP/9.9\r\n\r\n", 505, "HTTP version not supported", "HTTP", 0),
  };
  RUN_ERRS(cases);
}

static void test_err_line_endings(void **state) {
  (void)state;
  static const err_case cases[] = {
      E("GET / HTTP/1.1\nHost: a\r\n\r\n", 400, "line not terminated by CRLF", "\n", 0),
      E("GET / HTTP/1.1\r\nHost: a\n\r\n", 400, "line not terminated by CRLF", "a\n", 1),
      E("GET / HTTP/1.1\r\nHost: a\r\n\n", 400, "line not terminated by CRLF", "\r\n\n", 2),
      E("\n", 400, "line not terminated by CRLF", "\n", 0),
      E("GET / HTTP/1.1\r\nHost: a\r\nX: \n\r\n", 400, "line not terminated by CRLF", " \n", 1),
      E("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400, "bare CR in header value", "\rb", 0),
      E("GET / HTTP/1.1\r\nHost: a\r\nX: a\r \r\n\r\n", 400, "bare CR in header value", "\r ", 0),
      E("GET / HTTP/1.1\r\nHost: a\r\nX: \r\r\n\r\n", 400, "bare CR in header value", "\r\r", 0),
  };
  RUN_ERRS(cases);
}

static void test_err_header_fields(void **state) {
  (void)state;
  static const err_case cases[] = {
      E("GET / HTTP/1.1\r\nHo(st: a\r\n\r\n", 400, "invalid character in header name", "(", 0),
      E("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400, "invalid character in header name",
        "NoColon", 7),
      E("GET / HTTP/1.1\r\nHost: a\r\n:a\r\n\r\n", 400, "invalid character in header name", ":a",
        0),
      E("GET / HTTP/1.1\r\nHost: a\r\nH\xc3\xa9: x\r\n\r\n", 400,
        "invalid character in header name", "\xc3", 0),
      E("GET / HTTP/1.1\r\nHost: a\r\nX@Y: z\r\n\r\n", 400, "invalid character in header name", "@",
        0),
      E("GET / HTTP/1.1\r\nHost: a\r\nX\0Y: z\r\n\r\n", 400, "invalid character in header name",
        "\r\nX", 3),
      E("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "whitespace before colon in header", " :", 0),
      E("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 400, "whitespace before colon in header", "\t:", 0),
      E("GET / HTTP/1.1\r\nHost: a\r\nX-Y z: a\r\n\r\n", 400, "whitespace before colon in header",
        " z", 0),
      E("GET / HTTP/1.1\r\nHost: a\r\n  folded\r\n\r\n", 400,
        "obsolete line folding is not allowed", "\r\n ", 2),
      E("GET / HTTP/1.1\r\n\tHost: a\r\n\r\n", 400, "obsolete line folding is not allowed", "\t",
        0),
      E("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01"
        "b\r\n\r\n",
        400, "invalid character in header value", "\x01", 0),
      E("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", 400, "invalid character in header value",
        "\x7f", 0),
      E("GET / HTTP/1.1\r\nHost: a\r\nX: \x1b[0m\r\n\r\n", 400, "invalid character in header value",
        "\x1b", 0),
      E("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", 400, "invalid character in header value",
        "X: a", 4),
      E("GET / HTTP/1.1\r\nHost: a\r\nX: a\x0b\r\n\r\n", 400, "invalid character in header value",
        "\x0b", 0),
      E("GET / HTTP/1.1\r\nX: y\r\n\r\n", 400, "missing Host header", NULL, 0),
      E("GET / HTTP/1.1\r\n\r\n", 400, "missing Host header", NULL, 0),
      E("GET / HTTP/1.1\r\nX-Host: y\r\n\r\n", 400, "missing Host header", NULL, 0),
      E("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400, "duplicate Host header", NULL, 0),
      E("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400, "duplicate Host header", NULL, 0),
      E("GET / HTTP/1.1\r\nHost: h\r\nExpect: foo\r\n\r\n", 417, "unsupported expectation", NULL,
        0),
      E("GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue, foo\r\n\r\n", 417,
        "unsupported expectation", NULL, 0),
  };
  RUN_ERRS(cases);
}

static void test_err_framing(void **state) {
  (void)state;
#define PFX "POST / HTTP/1.1\r\nHost: h\r\n"
  static const err_case cases[] = {
      E(PFX "Content-Length: 1\r\ncontent-length: 1\r\n\r\n", 400, "duplicate Content-Length",
        "content-length", 0),
      E(PFX "Content-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "duplicate Content-Length",
        "\r\nContent-Length: 2", 2),
      E(PFX "Content-Length: abc\r\n\r\n", 400, "invalid Content-Length", "abc", 0),
      E(PFX "Content-Length: 1 2\r\n\r\n", 400, "invalid Content-Length", " 2", 0),
      E(PFX "Content-Length: -1\r\n\r\n", 400, "invalid Content-Length", "-1", 0),
      E(PFX "Content-Length: +1\r\n\r\n", 400, "invalid Content-Length", "+1", 0),
      E(PFX "Content-Length: 0x10\r\n\r\n", 400, "invalid Content-Length", "x10", 0),
      E(PFX "Content-Length: 1,1\r\n\r\n", 400, "invalid Content-Length", ",1", 0),
      E(PFX "Content-Length: 1.0\r\n\r\n", 400, "invalid Content-Length", ".0", 0),
      E(PFX "Content-Length: 1234567890123456789\r\n\r\n", 400, "invalid Content-Length",
        "1234567890123456789", 0),
      E(PFX "Content-Length: \r\n\r\n", 400, "invalid Content-Length", "Length: ", 8),
      E(PFX "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
        "both Content-Length and Transfer-Encoding", NULL, 0),
      E(PFX "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400,
        "both Content-Length and Transfer-Encoding", NULL, 0),
      E("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
        "Transfer-Encoding in an HTTP/1.0 request", NULL, 0),
      E(PFX "Transfer-Encoding: chunked, gzip\r\n\r\n", 400,
        "chunked is not the final transfer coding", NULL, 0),
      E(PFX "Transfer-Encoding: gzip\r\n\r\n", 400, "chunked is not the final transfer coding",
        NULL, 0),
      E(PFX "Transfer-Encoding: identity\r\n\r\n", 400, "chunked is not the final transfer coding",
        NULL, 0),
      E(PFX "Transfer-Encoding: chunked;q=1\r\n\r\n", 400,
        "chunked is not the final transfer coding", NULL, 0),
      E(PFX "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", 400,
        "chunked is not the final transfer coding", NULL, 0),
      E(PFX "Transfer-Encoding: chunked, chunked\r\n\r\n", 400, "chunked applied more than once",
        NULL, 0),
      E(PFX "Transfer-Encoding: chunked,CHUNKED\r\n\r\n", 400, "chunked applied more than once",
        NULL, 0),
      E(PFX "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
        "chunked applied more than once", NULL, 0),
      E(PFX "Transfer-Encoding: gzip, chunked\r\n\r\n", 501, "unsupported transfer coding", NULL,
        0),
      E(PFX "Transfer-Encoding: deflate,chunked\r\n\r\n", 501, "unsupported transfer coding", NULL,
        0),
      E(PFX "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", 501,
        "unsupported transfer coding", NULL, 0),
  };
#undef PFX
  RUN_ERRS(cases);
}

/*
 * A CR that is not followed by LF must never pass: not in the request line (after the version),
 * and not at the start of a header line (where it would end the header section early and hide
 * the fields after it, e.g. a Content-Length).
 */
static void test_err_bare_cr_outside_values(void **state) {
  (void)state;
  static const err_case cases[] = {
      E("GET / HTTP/1.1\rXHost: a\r\n\r\n", 400, NULL, NULL, 0),
      E("GET / HTTP/1.1\r\r\nHost: a\r\n\r\n", 400, NULL, NULL, 0),
      E("POST / HTTP/1.1\r\nHost: a\r\n\rContent-Length: 5\r\n\r\n", 400, NULL, NULL, 0),
      E("POST / HTTP/1.1\r\nHost: a\r\n\r\r\nTransfer-Encoding: chunked\r\n\r\n", 400, NULL, NULL,
        0),
  };
  RUN_ERRS(cases);
}

/* ---- limits ----------------------------------------------------------------- */

/* "GET /aaa... HTTP/1.1" whose request line (without CRLF) is `line` bytes, then `rest`. */
static size_t build_line(char *out, size_t cap, size_t line, const char *rest) {
  size_t tlen = line - 4 - 9; /* "GET " + target + " HTTP/1.1" */
  size_t rl = strlen(rest);
  assert_true(line + 2 + rl <= cap);
  memcpy(out, "GET /", 5);
  memset(out + 5, 'a', tlen - 1);
  memcpy(out + 4 + tlen, " HTTP/1.1\r\n", 11);
  memcpy(out + line + 2, rest, rl);
  return line + 2 + rl;
}

static void test_limit_request_line(void **state) {
  (void)state;
  const kl_http_limits lim = {32, 256, 8};
  char s[512];
  parsed r;
  size_t n = build_line(s, sizeof(s), 32, "Host: h\r\n\r\n");
  parse_both(s, n, &lim, &r);
  assert_int_equal(r.rc, 1); /* exactly request_line_max is fine */
  n = build_line(s, sizeof(s), 33, "Host: h\r\n\r\n");
  expect_err_at(&lim, s, n, 414, "request line too long", 32, __LINE__);
  /* Without its end yet: refused as soon as it cannot fit. */
  n = build_line(s, sizeof(s), 60, "");
  expect_err_at(&lim, s, 40, 414, "request line too long", 32, __LINE__);
  parse_whole(s, 33, &lim, &r); /* 33 bytes may still be 32 + CR */
  assert_int_equal(r.rc, 0);
  parse_whole(s, 34, &lim, &r);
  assert_int_equal(r.rc, -1);
  assert_int_equal(r.e.status, 414);
  /* The limit is on the request line only; header lines may be longer. */
  n = build_line(s, sizeof(s), 20, "Host: h\r\nX-Long: 0123456789012345678901234567890123\r\n\r\n");
  parse_both(s, n, &lim, &r);
  assert_int_equal(r.rc, 1);
}

/* A head of exactly `total` bytes: "GET / HTTP/1.1\r\nHost: h\r\nX: ppp...\r\n\r\n". */
static size_t build_head(char *out, size_t cap, size_t total) {
  static const char pre[] = "GET / HTTP/1.1\r\nHost: h\r\nX: ";
  size_t pl = sizeof(pre) - 1;
  assert_true(total > pl + 4 && total <= cap);
  memcpy(out, pre, pl);
  memset(out + pl, 'p', total - pl - 4);
  memcpy(out + total - 4, "\r\n\r\n", 4);
  return total;
}

static void test_limit_header_bytes(void **state) {
  (void)state;
  const kl_http_limits lim = {32, 128, 8};
  char s[512];
  parsed r;
  size_t n = build_head(s, sizeof(s), 128);
  parse_both(s, n, &lim, &r);
  assert_int_equal(r.rc, 1); /* exactly header_bytes_max is fine */
  assert_int_equal(r.h.head_len, 128);
  n = build_head(s, sizeof(s), 129);
  expect_err_at(&lim, s, n, 431, "request header too large", 128, __LINE__);
  /* Incomplete heads are refused once they cannot fit any more. */
  n = build_head(s, sizeof(s), 300);
  expect_err_at(&lim, s, 200, 431, "request header too large", 128, __LINE__);
  parse_whole(s, 127, &lim, &r);
  assert_int_equal(r.rc, 0);
  parse_whole(s, 128, &lim, &r);
  assert_int_equal(r.rc, -1);
  assert_int_equal(r.e.status, 431);
  /* A body after a head that fits does not count. */
  char b[512];
  n = build_head(b, sizeof(b), 100);
  memset(b + n, 'B', 200);
  parse_both(b, n + 200, &lim, &r);
  assert_int_equal(r.rc, 1);
  assert_int_equal(r.h.head_len, 100);
}

static void test_limit_header_count(void **state) {
  (void)state;
  const kl_http_limits lim = {64, 1024, 4};
  parsed r;
  static const char four[] = "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
  parse_both(four, sizeof(four) - 1, &lim, &r);
  assert_int_equal(r.rc, 1);
  assert_int_equal(r.h.nheaders, 4);
  static const char five[] = "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
  expect_err_at(&lim, five, sizeof(five) - 1, 431, "too many header fields",
                at(five, sizeof(five) - 1, "D: 4", 0), __LINE__);
  const kl_http_limits none = {64, 1024, 0};
  static const char h10[] = "GET / HTTP/1.0\r\n\r\n";
  parse_both(h10, sizeof(h10) - 1, &none, &r);
  assert_int_equal(r.rc, 1);
  static const char one[] = "GET / HTTP/1.0\r\nA: 1\r\n\r\n";
  expect_err_at(&none, one, sizeof(one) - 1, 431, "too many header fields",
                at(one, sizeof(one) - 1, "A: 1", 0), __LINE__);
}

/*
 * A line over a limit that ends in a bare LF: byte by byte it is refused as too long before
 * its LF arrives, so a whole buffer must get the same answer; the status must not depend on
 * how the bytes were split into reads.
 */
static void test_limit_split_independent(void **state) {
  (void)state;
  const kl_http_limits lim = {32, 128, 8};
  char s[512];
  size_t n = build_line(s, sizeof(s), 40, "Host: h\r\n\r\n");
  s[40] = 'x'; /* "GET /aaa... HTTP/1.1x\nHost: h..." */
  expect_err_at(&lim, s, n, 414, "request line too long", 32, __LINE__);
  n = build_head(s, sizeof(s), 150);
  s[146] = 'x'; /* "...pppx\n\r\n" */
  expect_err_at(&lim, s, n, 431, "request header too large", 128, __LINE__);
}

/* ---- chunked decoder ---------------------------------------------------------- */

typedef struct decoded {
  int rc;
  size_t rpos, wpos;
  kl_http_error err;
  char *buf; /* the buffer after decoding (n bytes fed, or fewer when it stopped early) */
  size_t fed;
} decoded;

/*
 * Decodes s[start, n) in place, the bytes arriving in pieces that end at cuts[0..ncuts) and
 * then at n; the buffer grows (realloc) to exactly the bytes received so far.
 */
static void decode_pieces(const char *s, size_t n, size_t start, const size_t *cuts, size_t ncuts,
                          uint64_t body_max, uint32_t trailer_max, decoded *d) {
  kl_chunked c;
  kl_chunked_init(&c);
  memset(d, 0, sizeof(*d));
  d->rpos = d->wpos = start;
  size_t have = 0;
  for (size_t i = 0; i <= ncuts; i++) {
    size_t upto = i < ncuts ? cuts[i] : n;
    if (upto <= have && i < ncuts) continue;
    char *nb = realloc(d->buf, upto ? upto : 1);
    assert_non_null(nb);
    d->buf = nb;
    if (upto > have) memcpy(d->buf + have, s + have, upto - have);
    have = upto;
    d->fed = upto;
    if (have <= start) continue;
    d->rc = kl_chunked_decode(&c, d->buf, have, &d->rpos, &d->wpos, body_max, trailer_max, &d->err);
    assert_true(d->wpos <= d->rpos);
    assert_true(d->rpos <= have);
    assert_true(d->wpos >= start);
    assert_true(d->wpos - start <= body_max);
    if (d->rc == 0) assert_int_equal(d->rpos, have); /* everything available was consumed */
    if (d->rc != 0) break;
  }
}

static void assert_same_decode(const decoded *a, const decoded *b, size_t start) {
  assert_int_equal(a->rc, b->rc);
  assert_int_equal(a->rpos, b->rpos);
  assert_int_equal(a->wpos, b->wpos);
  assert_memory_equal(a->buf + start, b->buf + start, a->wpos - start);
  if (a->rc < 0) {
    assert_int_equal(a->err.status, b->err.status);
    assert_string_equal(a->err.msg, b->err.msg);
    assert_int_equal(a->err.offset, b->err.offset);
  }
}

/*
 * Decodes s[start, n) all at once, then split in two at every position, then byte by byte:
 * every way must give the same result. The all-at-once result is left in `d` (free d->buf).
 */
static void decode_check(const char *s, size_t n, size_t start, uint64_t body_max,
                         uint32_t trailer_max, decoded *d) {
  decode_pieces(s, n, start, NULL, 0, body_max, trailer_max, d);
  /* Bytes before start (the head) are never touched, nor those after the body. */
  assert_memory_equal(d->buf, s, start);
  if (d->rc == 1) assert_memory_equal(d->buf + d->rpos, s + d->rpos, n - d->rpos);
  for (size_t k = start + 1; k < n; k++) {
    decoded o;
    decode_pieces(s, n, start, &k, 1, body_max, trailer_max, &o);
    assert_same_decode(d, &o, start);
    free(o.buf);
  }
  size_t *cuts = malloc((n + 1) * sizeof(*cuts));
  assert_non_null(cuts);
  for (size_t k = 0; k < n; k++)
    cuts[k] = k + 1;
  decoded o;
  decode_pieces(s, n, start, cuts, n, body_max, trailer_max, &o);
  assert_same_decode(d, &o, start);
  free(o.buf);
  free(cuts);
}

/* Decodes a whole chunked body `s` and expects `body` and rc 1 with everything consumed. */
static void chunked_ok_at(const char *s, size_t n, const char *body, size_t blen, int line) {
  decoded d;
  decode_check(s, n, 0, BODY_DEF, TRAILER_DEF, &d);
  if (d.rc != 1 || d.rpos != n || d.wpos != blen || memcmp(d.buf, body, blen) != 0) {
    print_error("line %d: want rc 1 at %zu with %zu body bytes, got rc %d rpos %zu wpos %zu "
                "(%s)\n",
                line, n, blen, d.rc, d.rpos, d.wpos, d.rc < 0 ? d.err.msg : "-");
    free(d.buf);
    _fail(__FILE__, line);
    return;
  }
  free(d.buf);
}
#define CHUNKED_OK(lit, body) chunked_ok_at(LIT(lit), LIT(body), __LINE__)

static void chunked_err_at(const char *s, size_t n, uint64_t body_max, uint32_t trailer_max,
                           int status, const char *msg, size_t off, int line) {
  decoded d;
  decode_check(s, n, 0, body_max, trailer_max, &d);
  if (d.rc != -1 || d.err.status != status || (msg && strcmp(d.err.msg, msg) != 0) ||
      (off == NOOFF ? d.err.offset > n : d.err.offset != off)) {
    print_error("line %d: want %d \"%s\" at %lld, got rc %d: %d \"%s\" at %zu\n", line, status,
                msg ? msg : "*", off == NOOFF ? -1LL : (long long)off, d.rc,
                d.rc < 0 ? d.err.status : 0, d.rc < 0 ? d.err.msg : "-",
                d.rc < 0 ? d.err.offset : 0);
    free(d.buf);
    _fail(__FILE__, line);
    return;
  }
  free(d.buf);
}
#define CHUNKED_ERR(lit, st, msg, off)                                                             \
  chunked_err_at(LIT(lit), BODY_DEF, TRAILER_DEF, (st), (msg), (off), __LINE__)

static void test_chunked_simple(void **state) {
  (void)state;
  CHUNKED_OK("5\r\nhello\r\n0\r\n\r\n", "hello");
  CHUNKED_OK("0\r\n\r\n", "");
  CHUNKED_OK("1\r\nx\r\n0\r\n\r\n", "x");
  CHUNKED_OK("000\r\n\r\n", "");
  /* Leading zeros are not digits' worth. */
  CHUNKED_OK("00000000000000000001\r\nx\r\n0\r\n\r\n", "x");
}

static void test_chunked_multiple(void **state) {
  (void)state;
  CHUNKED_OK("5\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\n\r\n", "hello world!");
  CHUNKED_OK("a\r\n0123456789\r\nA\r\nabcdefghij\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
             "0123456789abcdefghij0123456789abcdef");
  CHUNKED_OK("2\r\n\r\n\r\n2\r\n\0\xff\r\n0\r\n\r\n", "\r\n\0\xff"); /* data is opaque */
  /* A larger body: 40 chunks of growing size. */
  size_t cap = 64 * 1024, n = 0, bl = 0;
  char *s = malloc(cap), *body = malloc(cap);
  assert_non_null(s);
  assert_non_null(body);
  for (int i = 1; i <= 40; i++) {
    n += (size_t)snprintf(s + n, cap - n, "%x\r\n", i);
    for (int j = 0; j < i; j++)
      s[n++] = body[bl++] = (char)('a' + (i + j) % 26);
    s[n++] = '\r';
    s[n++] = '\n';
  }
  memcpy(s + n, "0\r\n\r\n", 5);
  n += 5;
  decoded d;
  decode_check(s, n, 0, BODY_DEF, TRAILER_DEF, &d);
  assert_int_equal(d.rc, 1);
  assert_int_equal(d.rpos, n);
  assert_int_equal(d.wpos, bl);
  assert_memory_equal(d.buf, body, bl);
  free(d.buf);
  free(s);
  free(body);
}

static void test_chunked_extensions(void **state) {
  (void)state;
  CHUNKED_OK("5;name=value\r\nhello\r\n0;last\r\n\r\n", "hello");
  CHUNKED_OK("5 ;a=b\r\nhello\r\n0\t;x\r\n\r\n", "hello");
  CHUNKED_OK("5;a=\"quoted ; string\";b\r\nhello\r\n0\r\n\r\n", "hello");
  CHUNKED_OK("5;\xc3\xa9=\x80\r\nhello\r\n0\r\n\r\n", "hello");
  /* Extensions up to 4096 bytes are accepted, longer ones refused. */
  size_t n = 0;
  char *s = malloc(8192);
  assert_non_null(s);
  s[n++] = '1';
  s[n++] = ';';
  memset(s + n, 'e', 4095);
  n += 4095;
  memcpy(s + n, "\r\nx\r\n0\r\n\r\n", 10);
  n += 10;
  decoded d;
  decode_pieces(s, n, 0, NULL, 0, BODY_DEF, TRAILER_DEF, &d);
  assert_int_equal(d.rc, 1);
  assert_int_equal(d.wpos, 1);
  free(d.buf);
  n = 0;
  s[n++] = '1';
  s[n++] = ';';
  memset(s + n, 'e', 5000);
  n += 5000;
  memcpy(s + n, "\r\nx\r\n0\r\n\r\n", 10);
  n += 10;
  decode_pieces(s, n, 0, NULL, 0, BODY_DEF, TRAILER_DEF, &d);
  assert_int_equal(d.rc, -1);
  assert_int_equal(d.err.status, 400);
  assert_string_equal(d.err.msg, "chunk extension too long");
  assert_true(d.err.offset > 4096 && d.err.offset < 5002);
  free(d.buf);
  free(s);
}

static void test_chunked_trailers(void **state) {
  (void)state;
  CHUNKED_OK("5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n", "hello");
  CHUNKED_OK("5\r\nhello\r\n0\r\nA: 1\r\nb-b:  two words \r\nC:\r\n\r\n", "hello");
  CHUNKED_OK("0\r\nX: caf\xc3\xa9\r\n\r\n", "");
  static const char t[] = "2\r\nhi\r\n0\r\nX: y\r\n\r\n"; /* 6 trailer bytes with CRLF */
  decoded d;
  decode_check(LIT(t), 0, BODY_DEF, 6, &d);
  assert_int_equal(d.rc, 1);
  assert_int_equal(d.rpos, sizeof(t) - 1);
  free(d.buf);
  chunked_err_at(LIT(t), BODY_DEF, 3, 431, "trailer section too large", at(LIT(t), "y\r", 0),
                 __LINE__);
  static const char t2[] = "0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
  decode_check(LIT(t2), 0, BODY_DEF, 18, &d);
  assert_int_equal(d.rc, 1);
  free(d.buf);
  decode_check(LIT(t2), 0, BODY_DEF, 8, &d); /* the limit is on all trailer lines together */
  assert_int_equal(d.rc, -1);
  assert_int_equal(d.err.status, 431);
  assert_string_equal(d.err.msg, "trailer section too large");
  assert_true(d.err.offset > at(LIT(t2), "B", 0) && d.err.offset < sizeof(t2) - 1);
  free(d.buf);
}

static void test_chunked_data_after_end(void **state) {
  (void)state;
  static const char s[] = "3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
  const size_t n = sizeof(s) - 1, end = at(s, n, "GET", 0);
  decoded d;
  decode_check(s, n, 0, BODY_DEF, TRAILER_DEF, &d);
  assert_int_equal(d.rc, 1);
  assert_int_equal(d.rpos, end);
  assert_int_equal(d.wpos, 3);
  assert_memory_equal(d.buf, "abc", 3);
  assert_memory_equal(d.buf + end, s + end, n - end); /* the next request is untouched */
  /* Called again, it stays done and consumes nothing. */
  kl_chunked c;
  kl_chunked_init(&c);
  size_t rp = 0, wp = 0;
  kl_http_error e;
  char *b = exact_copy(s, n);
  assert_int_equal(kl_chunked_decode(&c, b, n, &rp, &wp, BODY_DEF, TRAILER_DEF, &e), 1);
  assert_int_equal(rp, end);
  assert_int_equal(kl_chunked_decode(&c, b, n, &rp, &wp, BODY_DEF, TRAILER_DEF, &e), 1);
  assert_int_equal(rp, end);
  assert_int_equal(wp, 3);
  /* kl_chunked_init readies it for the next body. */
  kl_chunked_init(&c);
  static const char s2[] = "2\r\nzz\r\n0\r\n\r\n";
  char *b2 = exact_copy(s2, sizeof(s2) - 1);
  rp = wp = 0;
  assert_int_equal(kl_chunked_decode(&c, b2, sizeof(s2) - 1, &rp, &wp, BODY_DEF, TRAILER_DEF, &e),
                   1);
  assert_int_equal(wp, 2);
  free(b2);
  free(b);
  free(d.buf);

  /* A body after a head: decoded in place right after the head, which is left alone. */
  static const char r[] = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\nT: 1\r\n\r\nNEXT";
  const size_t rn = sizeof(r) - 1, head = at(r, rn, "4;x", 0);
  decode_check(r, rn, head, BODY_DEF, TRAILER_DEF, &d);
  assert_int_equal(d.rc, 1);
  assert_int_equal(d.rpos, rn - 4);
  assert_int_equal(d.wpos, head + 9);
  assert_memory_equal(d.buf + head, "Wikipedia", 9);
  assert_memory_equal(d.buf + rn - 4, "NEXT", 4);
  free(d.buf);
}

static void test_chunked_incomplete(void **state) {
  (void)state;
  static const char s[] = "5\r\nhel";
  decoded d;
  decode_pieces(LIT(s), 0, NULL, 0, BODY_DEF, TRAILER_DEF, &d);
  assert_int_equal(d.rc, 0);
  assert_int_equal(d.rpos, 6);
  assert_int_equal(d.wpos, 3);
  assert_memory_equal(d.buf, "hel", 3);
  free(d.buf);
  static const char *const partial[] = {
      "5",     "5\r",           "5\r\nhello", "5\r\nhello\r", "5\r\nhello\r\n0",
      "0\r\n", "0\r\nX: y\r\n", "0\r\n\r",    "5;ext"};
  for (size_t i = 0; i < sizeof(partial) / sizeof(partial[0]); i++) {
    decode_check(partial[i], strlen(partial[i]), 0, BODY_DEF, TRAILER_DEF, &d);
    assert_int_equal(d.rc, 0);
    free(d.buf);
  }
}

static void test_chunked_errors(void **state) {
  (void)state;
  CHUNKED_ERR("g\r\nx\r\n0\r\n\r\n", 400, "invalid chunk size", 0);
  CHUNKED_ERR("\r\n", 400, "invalid chunk size", 0);
  CHUNKED_ERR(" 5\r\n", 400, "invalid chunk size", 0);
  CHUNKED_ERR("-1\r\n", 400, "invalid chunk size", 0);
  CHUNKED_ERR("5x\r\nhello\r\n0\r\n\r\n", 400, "invalid chunk size", 1);
  CHUNKED_ERR("0x5\r\nhello\r\n", 400, "invalid chunk size", 1);
  CHUNKED_ERR("5 \r\nhello\r\n", 400, "invalid chunk size", 2);
  CHUNKED_ERR("5 x\r\n", 400, "invalid chunk size", 2);
  CHUNKED_ERR("5\n", 400, "line not terminated by CRLF", 1);
  CHUNKED_ERR("5 \n", 400, NULL, 2); /* junk after the size, or a bare LF: 400 either way */
}

static void test_chunked_size_too_many_digits(void **state) {
  (void)state;
  /* 17 digits: over 2^60 whatever body_max allows. */
  chunked_err_at(LIT("10000000000000000\r\n"), UINT64_MAX, TRAILER_DEF, 400, "chunk size too large",
                 NOOFF, __LINE__);
  chunked_err_at(LIT("FFFFFFFFFFFFFFFFF\r\n"), UINT64_MAX, TRAILER_DEF, 400, "chunk size too large",
                 NOOFF, __LINE__);
  chunked_err_at(LIT("1234567890abcdef0123\r\n"), BODY_DEF, TRAILER_DEF, 400,
                 "chunk size too large", NOOFF, __LINE__);
  /* 2^60 - 1 (15 hex digits) is a size; waiting for its data. */
  decoded d;
  decode_pieces(LIT("FFFFFFFFFFFFFFF\r\nab"), 0, NULL, 0, UINT64_MAX, TRAILER_DEF, &d);
  assert_int_equal(d.rc, 0);
  assert_int_equal(d.wpos, 2);
  free(d.buf);
}

/* docs/http.md: a chunk size over 15 hex digits' worth (2^60) is "chunk size too large". */
static void test_chunked_size_over_2_60(void **state) {
  (void)state;
  chunked_err_at(LIT("1000000000000000\r\n"), UINT64_MAX, TRAILER_DEF, 400, "chunk size too large",
                 NOOFF, __LINE__);
  chunked_err_at(LIT("1000000000000000\r\n"), BODY_DEF, TRAILER_DEF, 400, "chunk size too large",
                 NOOFF, __LINE__);
  chunked_err_at(LIT("FFFFFFFFFFFFFFFF\r\n"), BODY_DEF, TRAILER_DEF, 400, "chunk size too large",
                 NOOFF, __LINE__);
}

static void test_chunked_body_max(void **state) {
  (void)state;
  static const char s[] = "5\r\nhello\r\n0\r\n\r\n";
  decoded d;
  decode_check(LIT(s), 0, 5, TRAILER_DEF, &d); /* exactly body_max */
  assert_int_equal(d.rc, 1);
  assert_int_equal(d.wpos, 5);
  free(d.buf);
  chunked_err_at(LIT(s), 4, TRAILER_DEF, 413, "request body too large", 1, __LINE__);
  static const char m[] = "3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n";
  decode_check(LIT(m), 0, 6, TRAILER_DEF, &d);
  assert_int_equal(d.rc, 1);
  free(d.buf);
  chunked_err_at(LIT(m), 5, TRAILER_DEF, 413, "request body too large", at(LIT(m), "3\r\nd", 1),
                 __LINE__);
  decode_check(LIT("0\r\n\r\n"), 0, 0, TRAILER_DEF, &d);
  assert_int_equal(d.rc, 1);
  free(d.buf);
  chunked_err_at(LIT("1\r\nx\r\n0\r\n\r\n"), 0, TRAILER_DEF, 413, "request body too large", 1,
                 __LINE__);
}

static void test_chunked_framing_errors(void **state) {
  (void)state;
  CHUNKED_ERR("5\r\nhelloX\r\n0\r\n\r\n", 400, "chunk data not followed by CRLF", 8);
  CHUNKED_ERR("5\r\nhello\rX\r\n0\r\n\r\n", 400, "chunk data not followed by CRLF", 9);
  CHUNKED_ERR("5\r\nhello\n0\r\n\r\n", 400, "chunk data not followed by CRLF", 8);
  CHUNKED_ERR("5\r\nhello0\r\n\r\n", 400, "chunk data not followed by CRLF", 8);
  CHUNKED_ERR("5\rX", 400, "bare CR in chunk size line", 2);
  CHUNKED_ERR("5;a\rX", 400, "bare CR in chunk size line", 4);
  CHUNKED_ERR("5;a\x01\r\n", 400, "invalid character in chunk extension", 3);
  CHUNKED_ERR("5;a\n", 400, "line not terminated by CRLF", 3);
  CHUNKED_ERR("5;a=b\nhello\r\n", 400, "line not terminated by CRLF", 5);
  CHUNKED_ERR("5;a\x7f\r\n", 400, "invalid character in chunk extension", 3);
  CHUNKED_ERR("0\r\n:x\r\n\r\n", 400, "invalid trailer field", 3);
  CHUNKED_ERR("0\r\n x\r\n\r\n", 400, "invalid trailer field", 3);
  CHUNKED_ERR("0\r\n\n", 400, "line not terminated by CRLF", 3);
  CHUNKED_ERR("0\r\nX: y\n\r\n", 400, "line not terminated by CRLF", 7);
  CHUNKED_ERR("0\r\nX\x01\r\n\r\n", 400, "invalid trailer field", 4);
  CHUNKED_ERR("0\r\n\rZ", 400, "bare CR in trailer section", 4);
  CHUNKED_ERR("0\r\nX: y\rZ", 400, "bare CR in trailer section", 8);
}

/* docs/http.md: a trailer field that is not `name: value` is "invalid trailer field". */
static void test_chunked_trailer_not_name_value(void **state) {
  (void)state;
  CHUNKED_ERR("0\r\nNoColon\r\n\r\n", 400, "invalid trailer field", NOOFF);
  CHUNKED_ERR("0\r\nX y: z\r\n\r\n", 400, "invalid trailer field", NOOFF);
  CHUNKED_ERR("0\r\nA: 1\r\nB\r\n\r\n", 400, "invalid trailer field", NOOFF);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_simple_get),
      cmocka_unit_test(test_methods),
      cmocka_unit_test(test_origin_form_query),
      cmocka_unit_test(test_absolute_form),
      cmocka_unit_test(test_asterisk_form),
      cmocka_unit_test(test_versions_keep_alive),
      cmocka_unit_test(test_expect),
      cmocka_unit_test(test_content_length),
      cmocka_unit_test(test_chunked_head),
      cmocka_unit_test(test_header_views),
      cmocka_unit_test(test_name_eq),
      cmocka_unit_test(test_head_followed_by_data),
      cmocka_unit_test(test_incremental_scanned_hint),
      cmocka_unit_test(test_incremental_many),
      cmocka_unit_test(test_err_request_line),
      cmocka_unit_test(test_err_line_endings),
      cmocka_unit_test(test_err_header_fields),
      cmocka_unit_test(test_err_framing),
      cmocka_unit_test(test_err_bare_cr_outside_values),
      cmocka_unit_test(test_limit_request_line),
      cmocka_unit_test(test_limit_header_bytes),
      cmocka_unit_test(test_limit_header_count),
      cmocka_unit_test(test_limit_split_independent),
      cmocka_unit_test(test_chunked_simple),
      cmocka_unit_test(test_chunked_multiple),
      cmocka_unit_test(test_chunked_extensions),
      cmocka_unit_test(test_chunked_trailers),
      cmocka_unit_test(test_chunked_data_after_end),
      cmocka_unit_test(test_chunked_incomplete),
      cmocka_unit_test(test_chunked_errors),
      cmocka_unit_test(test_chunked_size_too_many_digits),
      cmocka_unit_test(test_chunked_size_over_2_60),
      cmocka_unit_test(test_chunked_body_max),
      cmocka_unit_test(test_chunked_framing_errors),
      cmocka_unit_test(test_chunked_trailer_not_name_value),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
