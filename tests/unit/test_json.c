/* test_json.c - unit tests for keel's JSON parser, writer, unescape, quote; plus JSONTestSuite. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "keel/json.h"

#define NODES 256
#define LIM KEEL_JSON_DEPTH_LIMIT

/* ---- helpers --------------------------------------------------------------- */

static long parse_n(const char *src, size_t len, keel_json_node *nodes, size_t cap,
                    keel_json_error *err) {
  return keel_json_parse(src, len, nodes, cap, LIM, err);
}

/* Parses a string literal (may contain NULs: the length comes from sizeof). */
#define PARSE(lit, nodes, err) parse_n((lit), sizeof(lit) - 1, (nodes), NODES, (err))

static void expect_err_at(const char *src, size_t len, size_t off, const char *msg, int line) {
  keel_json_node nodes[NODES];
  keel_json_error e = {(size_t)-1, NULL};
  long rc = parse_n(src, len, nodes, NODES, &e);
  if (rc != -EINVAL || e.offset != off || !e.msg || strcmp(e.msg, msg) != 0) {
    print_error(
        "line %d: input of %zu bytes: want -EINVAL at %zu \"%s\", got rc %ld at %zu \"%s\"\n", line,
        len, off, msg, rc, e.offset, e.msg ? e.msg : "(null)");
    _fail(__FILE__, line);
  }
  /* A NULL err must be fine too. */
  assert_int_equal(parse_n(src, len, nodes, NODES, NULL), -EINVAL);
}
#define EXPECT_ERR(lit, off, msg) expect_err_at((lit), sizeof(lit) - 1, (off), (msg), __LINE__)
#define EXPECT_ERR_N(src, len, off, msg) expect_err_at((src), (len), (off), (msg), __LINE__)

static void expect_ok_at(const char *src, size_t len, long want_nodes, int line) {
  keel_json_node nodes[NODES];
  keel_json_error e = {0, NULL};
  long rc = parse_n(src, len, nodes, NODES, &e);
  if (rc != want_nodes) {
    print_error("line %d: want %ld nodes, got %ld (%s at %zu)\n", line, want_nodes, rc,
                e.msg ? e.msg : "-", e.offset);
    _fail(__FILE__, line);
  }
}
#define EXPECT_OK(lit, n) expect_ok_at((lit), sizeof(lit) - 1, (n), __LINE__)
#define EXPECT_OK_N(src, len, n) expect_ok_at((src), (len), (n), __LINE__)

static void expect_node(const keel_json_node *nd, uint32_t type, uint32_t off, uint32_t len,
                        uint32_t next, int line) {
  if (nd->type != type || nd->off != off || nd->len != len || nd->next != next) {
    print_error("line %d: want {type %u off %u len %u next %u}, got {%u %u %u %u}\n", line, type,
                off, len, next, nd->type, nd->off, nd->len, nd->next);
    _fail(__FILE__, line);
  }
}
#define EXPECT_NODE(nd, type, off, len, next)                                                      \
  expect_node((nd), (type), (off), (len), (next), __LINE__)

/* A container's offset is not part of the contract: check the rest. */
static void expect_container(const keel_json_node *nd, uint32_t type, uint32_t len, uint32_t next,
                             int line) {
  if (nd->type != type || nd->len != len || nd->next != next) {
    print_error("line %d: want {type %u len %u next %u}, got {%u %u %u}\n", line, type, len, next,
                nd->type, nd->len, nd->next);
    _fail(__FILE__, line);
  }
}
#define EXPECT_CONT(nd, type, len, next) expect_container((nd), (type), (len), (next), __LINE__)

/* Same structure and scalar texts in two parses (of possibly different sources). */
static int same_nodes(const char *a_src, const keel_json_node *a, long an, const char *b_src,
                      const keel_json_node *b, long bn) {
  if (an != bn) return 0;
  for (long i = 0; i < an; i++) {
    if (a[i].type != b[i].type || a[i].len != b[i].len || a[i].next != b[i].next) return 0;
    if (a[i].type == KEEL_JSON_NUMBER || a[i].type == KEEL_JSON_STRING) {
      if (memcmp(a_src + a[i].off, b_src + b[i].off, a[i].len) != 0) return 0;
    }
  }
  return 1;
}

/* ---- scalars, containers ---------------------------------------------------- */

static void test_scalars(void **state) {
  (void)state;
  keel_json_node n[NODES];
  keel_json_error e;
  assert_int_equal(PARSE("null", n, &e), 1);
  EXPECT_NODE(&n[0], KEEL_JSON_NULL, 0, 4, 1);
  assert_int_equal(PARSE(" true ", n, &e), 1);
  EXPECT_NODE(&n[0], KEEL_JSON_TRUE, 1, 4, 1);
  assert_int_equal(PARSE("\tfalse\n", n, &e), 1);
  EXPECT_NODE(&n[0], KEEL_JSON_FALSE, 1, 5, 1);
  assert_int_equal(PARSE("  -12.5e+3\r\n", n, &e), 1);
  EXPECT_NODE(&n[0], KEEL_JSON_NUMBER, 2, 8, 1);
  assert_int_equal(PARSE("0", n, &e), 1);
  EXPECT_NODE(&n[0], KEEL_JSON_NUMBER, 0, 1, 1);
  assert_int_equal(PARSE("\"hello\"", n, &e), 1);
  EXPECT_NODE(&n[0], KEEL_JSON_STRING, 1, 5, 1);
  assert_int_equal(PARSE(" \"\" ", n, &e), 1);
  EXPECT_NODE(&n[0], KEEL_JSON_STRING, 2, 0, 1);
  assert_int_equal(PARSE("\"a\\\"b\"", n, &e), 1); /* escapes stay as they are */
  EXPECT_NODE(&n[0], KEEL_JSON_STRING, 1, 4, 1);
  assert_int_equal(PARSE("[]", n, &e), 1);
  EXPECT_NODE(&n[0], KEEL_JSON_ARRAY, 0, 0, 1);
  assert_int_equal(PARSE(" { } ", n, &e), 1);
  EXPECT_NODE(&n[0], KEEL_JSON_OBJECT, 1, 0, 1);
}

static void test_nesting(void **state) {
  (void)state;
  keel_json_node n[NODES];
  keel_json_error e;
  static const char d[] = "{\"a\":[1,{\"b\":null}],\"c\":\"x\"}";
  assert_int_equal(PARSE(d, n, &e), 9);
  EXPECT_NODE(&n[0], KEEL_JSON_OBJECT, 0, 2, 9); /* keel puts a container's bracket in off */
  EXPECT_NODE(&n[1], KEEL_JSON_STRING, 2, 1, 2);
  EXPECT_NODE(&n[2], KEEL_JSON_ARRAY, 5, 2, 7);
  EXPECT_NODE(&n[3], KEEL_JSON_NUMBER, 6, 1, 4);
  EXPECT_NODE(&n[4], KEEL_JSON_OBJECT, 8, 1, 7);
  EXPECT_NODE(&n[5], KEEL_JSON_STRING, 10, 1, 6);
  EXPECT_NODE(&n[6], KEEL_JSON_NULL, 13, 4, 7);
  EXPECT_NODE(&n[7], KEEL_JSON_STRING, 21, 1, 8);
  EXPECT_NODE(&n[8], KEEL_JSON_STRING, 25, 1, 9);

  /* Arrays in arrays, empty containers, whitespace everywhere. */
  static const char d2[] = " [ [ 1 , [ ] ] , { } , [ [ [ \"z\" ] ] ] , 2 ] ";
  assert_int_equal(PARSE(d2, n, &e), 10);
  EXPECT_NODE(&n[0], KEEL_JSON_ARRAY, 1, 4, 10);
  EXPECT_NODE(&n[1], KEEL_JSON_ARRAY, 3, 2, 4);
  EXPECT_NODE(&n[2], KEEL_JSON_NUMBER, 5, 1, 3);
  EXPECT_NODE(&n[3], KEEL_JSON_ARRAY, 9, 0, 4);
  EXPECT_NODE(&n[4], KEEL_JSON_OBJECT, 17, 0, 5);
  EXPECT_NODE(&n[5], KEEL_JSON_ARRAY, 23, 1, 9);
  EXPECT_NODE(&n[6], KEEL_JSON_ARRAY, 25, 1, 9);
  EXPECT_NODE(&n[7], KEEL_JSON_ARRAY, 27, 1, 9);
  EXPECT_NODE(&n[8], KEEL_JSON_STRING, 30, 1, 9);
  EXPECT_NODE(&n[9], KEEL_JSON_NUMBER, 41, 1, 10);

  /* Every type as an element and as a member value. */
  static const uint32_t types[] = {KEEL_JSON_NULL,   KEEL_JSON_TRUE,   KEEL_JSON_FALSE,
                                   KEEL_JSON_NUMBER, KEEL_JSON_STRING, KEEL_JSON_ARRAY,
                                   KEEL_JSON_OBJECT};
  static const char d3[] = "[null,true,false,0,\"\",[],{}]";
  assert_int_equal(PARSE(d3, n, &e), 8);
  EXPECT_CONT(&n[0], KEEL_JSON_ARRAY, 7, 8);
  for (uint32_t i = 0; i < 7; i++) {
    assert_int_equal(n[i + 1].type, types[i]);
    assert_int_equal(n[i + 1].next, i + 2);
  }
  static const char d4[] =
      "{\"n\":null,\"t\":true,\"f\":false,\"x\":-1,\"s\":\"\",\"a\":[],\"o\":{}}";
  assert_int_equal(PARSE(d4, n, &e), 15);
  EXPECT_CONT(&n[0], KEEL_JSON_OBJECT, 7, 15);
  for (uint32_t i = 0; i < 7; i++) {
    EXPECT_NODE(&n[1 + 2 * i], KEEL_JSON_STRING, n[1 + 2 * i].off, 1, 2 + 2 * i);
    assert_int_equal(n[2 + 2 * i].type, types[i]);
    assert_int_equal(n[2 + 2 * i].next, 3 + 2 * i);
  }

  /* Keys may repeat (no duplicate check); objects in objects. */
  static const char d5[] = "{\"k\":{\"k\":{\"k\":{}}},\"k\":[{\"k\":1}]}";
  assert_int_equal(PARSE(d5, n, &e), 12);
  EXPECT_CONT(&n[0], KEEL_JSON_OBJECT, 2, 12);
  EXPECT_CONT(&n[2], KEEL_JSON_OBJECT, 1, 7);
  EXPECT_CONT(&n[4], KEEL_JSON_OBJECT, 1, 7);
  EXPECT_CONT(&n[6], KEEL_JSON_OBJECT, 0, 7);
  EXPECT_CONT(&n[8], KEEL_JSON_ARRAY, 1, 12);
  EXPECT_CONT(&n[9], KEEL_JSON_OBJECT, 1, 12);
  EXPECT_NODE(&n[11], KEEL_JSON_NUMBER, 30, 1, 12);
}

/* A long array of objects: counts and `next` links all consistent. */
static void test_large_document(void **state) {
  (void)state;
  enum { N = 5000 };
  size_t cap = (size_t)N * 64 + 16, len = 0;
  char *src = malloc(cap);
  assert_non_null(src);
  src[len++] = '[';
  for (int i = 0; i < N; i++) {
    len += (size_t)snprintf(
        src + len, cap - len,
        "%s{\"id\":%d,\"name\":\"item-%d \\u00e9\xc3\xa9\",\"tags\":[\"a\",\"b\"]}", i ? "," : "",
        i, i);
  }
  src[len++] = ']';
  size_t ncap = KEEL_JSON_NODES_FOR(len);
  keel_json_node *n = malloc(ncap * sizeof *n);
  assert_non_null(n);
  keel_json_error e;
  long rc = keel_json_parse(src, len, n, ncap, LIM, &e);
  assert_int_equal(rc, 1 + (long)N * 9);
  EXPECT_CONT(&n[0], KEEL_JSON_ARRAY, N, (uint32_t)rc);
  uint32_t i = 1;
  for (int k = 0; k < N; k++) {
    EXPECT_CONT(&n[i], KEEL_JSON_OBJECT, 3, i + 9);
    EXPECT_CONT(&n[i + 6], KEEL_JSON_ARRAY, 2, i + 9);
    i = n[i].next;
  }
  assert_int_equal(i, rc);
  /* Already compact: the writer reproduces it byte for byte. */
  char *out = malloc(len);
  assert_non_null(out);
  assert_int_equal(keel_json_write(src, n, (size_t)rc, out, len), len);
  assert_memory_equal(out, src, len);
  free(out);
  free(n);
  free(src);
}

/* ---- limits ---------------------------------------------------------------- */

/* obj: {"a":{"a":...{}...}} (depth objects); else [[...[]...]] */
static char *nested(unsigned depth, int obj) {
  char *s = malloc((size_t)depth * 6 + 1);
  assert_non_null(s);
  size_t o = 0;
  for (unsigned i = 0; i < depth; i++) {
    if (obj && i + 1 < depth) {
      memcpy(s + o, "{\"a\":", 5);
      o += 5;
    } else {
      s[o++] = obj ? '{' : '[';
    }
  }
  for (unsigned i = 0; i < depth; i++)
    s[o++] = obj ? '}' : ']';
  s[o] = 0;
  return s;
}

static void test_depth_limit(void **state) {
  (void)state;
  keel_json_error e;
  size_t cap = 4 * LIM;
  keel_json_node *n = malloc(cap * sizeof *n);
  assert_non_null(n);
  for (int obj = 0; obj < 2; obj++) {
    size_t per = obj ? 5 : 1; /* bytes from one opening bracket to the next */
    uint32_t type = obj ? KEEL_JSON_OBJECT : KEEL_JSON_ARRAY;
    /* Exactly max_depth is fine; one more fails at the bracket that exceeded it. */
    for (unsigned d = 1; d <= 40; d++) {
      char *s = nested(d, obj);
      long rc = keel_json_parse(s, strlen(s), n, cap, d, &e);
      assert_true(rc > 0);
      EXPECT_CONT(&n[0], type, d > 1 ? 1 : 0, (uint32_t)rc);
      rc = keel_json_parse(s, strlen(s), n, cap, d - 1, &e);
      assert_int_equal(rc, -EINVAL);
      assert_string_equal(e.msg, "nesting too deep");
      assert_int_equal(e.offset, (d - 1) * per);
      free(s);
    }
    /* The hard limit holds whatever max_depth asks. */
    char *s = nested(LIM, obj);
    assert_true(keel_json_parse(s, strlen(s), n, cap, LIM, &e) > 0);
    assert_true(keel_json_parse(s, strlen(s), n, cap, UINT_MAX, &e) > 0);
    free(s);
    s = nested(LIM + 1, obj);
    assert_int_equal(keel_json_parse(s, strlen(s), n, cap, UINT_MAX, &e), -EINVAL);
    assert_string_equal(e.msg, "nesting too deep");
    assert_int_equal(e.offset, LIM * per);
    free(s);
  }
  /* max_depth 0: scalars only. */
  assert_int_equal(keel_json_parse("1", 1, n, cap, 0, &e), 1);
  assert_int_equal(keel_json_parse(" []", 3, n, cap, 0, &e), -EINVAL);
  assert_int_equal(e.offset, 1);
  assert_string_equal(e.msg, "nesting too deep");
  /* Depth is nesting, not the number of containers. */
  static const char sib[] = "[[],[],[[]],{\"a\":[]}]";
  assert_true(keel_json_parse(sib, sizeof sib - 1, n, cap, 3, &e) > 0);
  assert_int_equal(keel_json_parse(sib, sizeof sib - 1, n, cap, 2, &e), -EINVAL);
  assert_int_equal(e.offset, 8);
  /* Far beyond the limit: no recursion, a clean error. */
  size_t big = 200000;
  char *deep = malloc(big);
  assert_non_null(deep);
  memset(deep, '[', big);
  assert_int_equal(keel_json_parse(deep, big, n, cap, LIM, &e), -EINVAL);
  assert_int_equal(e.offset, LIM);
  free(deep);
  free(n);
}

static void test_nobufs(void **state) {
  (void)state;
  keel_json_node n[NODES];
  keel_json_error e;
  static const char d[] = "[1, 2, 3]";
  assert_int_equal(keel_json_parse(d, sizeof d - 1, n, 4, LIM, &e), 4);
  assert_int_equal(keel_json_parse(d, sizeof d - 1, n, 3, LIM, &e), -ENOBUFS);
  assert_int_equal(e.offset, 7);
  assert_string_equal(e.msg, "too many values");
  assert_int_equal(keel_json_parse(d, sizeof d - 1, n, 0, LIM, &e), -ENOBUFS);
  assert_int_equal(e.offset, 0);
  assert_int_equal(keel_json_parse(d, sizeof d - 1, NULL, 0, LIM, &e), -ENOBUFS);
  assert_int_equal(keel_json_parse(d, sizeof d - 1, NULL, 100, LIM, NULL), -ENOBUFS);
  /* Invalid input is -EINVAL however few the nodes: parsing goes on without storing. */
  static const char bad[] = "[[[[[[t[[";
  assert_int_equal(
      keel_json_parse(bad, sizeof bad - 1, n, KEEL_JSON_NODES_FOR(sizeof bad - 1), LIM, &e),
      -EINVAL);
  assert_int_equal(e.offset, 7);
  assert_string_equal(e.msg, "invalid literal");
  assert_int_equal(keel_json_parse("[1,2,3", 6, n, 1, LIM, &e), -EINVAL);
  assert_string_equal(e.msg, "unexpected end of input");
  assert_int_equal(keel_json_parse("{\"a\":[1],\"b\":{\"c\":2}} 3", 23, NULL, 0, LIM, &e), -EINVAL);
  assert_int_equal(e.offset, 22);
  assert_int_equal(keel_json_parse("[[1],[2],[3]]", 13, n, 2, LIM, &e), -ENOBUFS);
  assert_int_equal(e.offset, 2);
  assert_string_equal(e.msg, "too many values");
  /* Keys take nodes too. */
  static const char o[] = "{\"a\":1,\"b\":2}";
  assert_int_equal(keel_json_parse(o, sizeof o - 1, n, 5, LIM, &e), 5);
  assert_int_equal(keel_json_parse(o, sizeof o - 1, n, 4, LIM, &e), -ENOBUFS);
  assert_int_equal(e.offset, 11);
  assert_int_equal(keel_json_parse(o, sizeof o - 1, n, 3, LIM, &e), -ENOBUFS);
  assert_int_equal(e.offset, 7);
  /* KEEL_JSON_NODES_FOR() suffices for the densest documents. */
  static const char *dense[] = {
      "0",          "[]",           "[0]",         "[0,0,0,0,0,0,0]",
      "[[],[],[]]", "[[[[[[]]]]]]", "{\"\":0}",    "{\"\":0,\"\":0,\"\":[]}",
      "[{},{},{}]", "\"\"",         "[\"\",\"\"]", "{\"\":{\"\":{}}}"};
  for (size_t i = 0; i < sizeof dense / sizeof *dense; i++) {
    size_t len = strlen(dense[i]);
    long rc = keel_json_parse(dense[i], len, n, KEEL_JSON_NODES_FOR(len), LIM, &e);
    assert_true(rc > 0);
    assert_true((size_t)rc <= KEEL_JSON_NODES_FOR(len));
    /* One node fewer than needed fails cleanly. */
    assert_int_equal(keel_json_parse(dense[i], len, n, (size_t)rc - 1, LIM, &e), -ENOBUFS);
  }
}

static void test_too_big(void **state) {
  (void)state;
  keel_json_node n[4];
  keel_json_error e = {0, NULL};
#if SIZE_MAX > UINT32_MAX
  /* Never read: the length alone is refused. */
  assert_int_equal(keel_json_parse("[]", (size_t)UINT32_MAX + 1, n, 4, LIM, &e), -E2BIG);
  assert_non_null(e.msg);
  assert_int_equal(keel_json_parse("[]", SIZE_MAX, n, 4, LIM, NULL), -E2BIG);
#endif
  /* A NULL source with no bytes is just empty input. */
  assert_int_equal(keel_json_parse(NULL, 0, n, 4, LIM, &e), -EINVAL);
  assert_string_equal(e.msg, "unexpected end of input");
  assert_int_equal(e.offset, 0);
}

/* ---- errors ------------------------------------------------------------------ */

static void test_error_offsets(void **state) {
  (void)state;
  EXPECT_ERR("", 0, "unexpected end of input");
  EXPECT_ERR("  \n", 3, "unexpected end of input");
  EXPECT_ERR("[", 1, "unexpected end of input");
  EXPECT_ERR("[1", 2, "unexpected end of input");
  EXPECT_ERR("[1,", 3, "unexpected end of input");
  EXPECT_ERR("[1, ", 4, "unexpected end of input");
  EXPECT_ERR("{", 1, "unexpected end of input");
  EXPECT_ERR("{\"a\"", 4, "unexpected end of input");
  EXPECT_ERR("{\"a\":", 5, "unexpected end of input");
  EXPECT_ERR("{\"a\":1", 6, "unexpected end of input");
  EXPECT_ERR("{\"a\":1,", 7, "unexpected end of input");
  EXPECT_ERR("\"abc", 4, "unexpected end of input");
  EXPECT_ERR("[\"a\\", 4, "unexpected end of input");
  EXPECT_ERR("\"\\u12", 5, "unexpected end of input");
  EXPECT_ERR("tru", 3, "unexpected end of input");
  EXPECT_ERR("[nul", 4, "unexpected end of input");
  EXPECT_ERR("[1 2]", 3, "expected ',' or ']'");
  EXPECT_ERR("[1:2]", 2, "expected ',' or ']'");
  EXPECT_ERR("[1}", 2, "expected ',' or ']'");
  EXPECT_ERR("[\"a\" \"b\"]", 5, "expected ',' or ']'");
  EXPECT_ERR("{\"a\":1]", 6, "expected ',' or '}'");
  EXPECT_ERR("{\"a\":1 \"b\":2}", 7, "expected ',' or '}'");
  EXPECT_ERR("{\"a\" 1}", 5, "expected ':'");
  EXPECT_ERR("{\"a\",1}", 4, "expected ':'");
  EXPECT_ERR("{\"a\"=1}", 4, "expected ':'");
  EXPECT_ERR("{1:2}", 1, "expected string key");
  EXPECT_ERR("{\"a\":1,}", 7, "expected string key");
  EXPECT_ERR("{ 'a':1}", 2, "expected string key");
  EXPECT_ERR("{,}", 1, "expected string key");
  EXPECT_ERR("{a:1}", 1, "expected string key");
  EXPECT_ERR("[1,]", 3, "unexpected character");
  EXPECT_ERR("[,1]", 1, "unexpected character");
  EXPECT_ERR("{\"a\":}", 5, "unexpected character");
  EXPECT_ERR("]", 0, "unexpected character");
  EXPECT_ERR("'a'", 0, "unexpected character");
  EXPECT_ERR("[True]", 1, "unexpected character");
  EXPECT_ERR("\x00", 0, "unexpected character");
  EXPECT_ERR("trUe", 2, "invalid literal");
  EXPECT_ERR("[nulL]", 4, "invalid literal");
  EXPECT_ERR("fals3", 4, "invalid literal");
  EXPECT_ERR("1 2", 2, "trailing data after value");
  EXPECT_ERR("{} x", 3, "trailing data after value");
  EXPECT_ERR("[1]]", 3, "trailing data after value");
  EXPECT_ERR("truex", 4, "trailing data after value");
  EXPECT_ERR("\"abc\"def", 5, "trailing data after value");
  EXPECT_ERR("\"a\x01\"", 2, "control character in string");
  EXPECT_ERR("\"\\x\"", 2, "invalid string escape");
  EXPECT_ERR("\"\xff\"", 1, "invalid UTF-8");
  EXPECT_ERR("01", 1, "invalid number");
  /* The first problem wins: an error inside a nested value. */
  EXPECT_ERR("{\"a\":[{\"b\":[1,2,{\"c\":\"\\q\"}]}]}", 23, "invalid string escape");
}

static void test_trailing(void **state) {
  (void)state;
  EXPECT_ERR("[] []", 3, "trailing data after value");
  EXPECT_ERR("1,", 1, "trailing data after value");
  EXPECT_ERR("{}}", 2, "trailing data after value");
  EXPECT_ERR("\"a\"\"b\"", 3, "trailing data after value");
  EXPECT_ERR("null null", 5, "trailing data after value");
  EXPECT_ERR("[]\x00", 2, "trailing data after value");
  EXPECT_ERR("0 \n x", 4, "trailing data after value");
  EXPECT_ERR("[]/* */", 2, "trailing data after value");
  EXPECT_OK("[] \t\r\n ", 1);
}

static void test_whitespace(void **state) {
  (void)state;
  EXPECT_OK(" \t\n\r[ \t\n\r1 \t\n\r, \t\n\r{ \t\n\r\"k\" \t\n\r: \t\n\r2 \t\n\r} \t\n\r] \t\n\r",
            5);
  /* Anything else is not whitespace: form feed, vertical tab, NUL, NBSP, U+2028. */
  static const char *const not_ws[] = {"\f", "\v", "\x1f", "\xa0", "\xc2\xa0", "\xe2\x80\xa8"};
  char buf[32];
  for (size_t i = 0; i < sizeof not_ws / sizeof *not_ws; i++) {
    size_t w = strlen(not_ws[i]);
    int m = snprintf(buf, sizeof buf, "%s[1]", not_ws[i]);
    EXPECT_ERR_N(buf, (size_t)m, 0, "unexpected character");
    m = snprintf(buf, sizeof buf, "[1,%s2]", not_ws[i]);
    EXPECT_ERR_N(buf, (size_t)m, 3, "unexpected character");
    m = snprintf(buf, sizeof buf, "[1%s]", not_ws[i]);
    EXPECT_ERR_N(buf, (size_t)m, 2, "expected ',' or ']'");
    m = snprintf(buf, sizeof buf, "{%s\"a\":1}", not_ws[i]);
    EXPECT_ERR_N(buf, (size_t)m, 1, "expected string key");
    m = snprintf(buf, sizeof buf, "{\"a\"%s:1}", not_ws[i]);
    EXPECT_ERR_N(buf, (size_t)m, 4, "expected ':'");
    m = snprintf(buf, sizeof buf, "[1]%s", not_ws[i]);
    EXPECT_ERR_N(buf, (size_t)m, 3, "trailing data after value");
    (void)w;
  }
  EXPECT_ERR("\x00[1]", 0, "unexpected character");
  EXPECT_ERR("[1]\x00", 3, "trailing data after value");
}

/* ---- numbers ----------------------------------------------------------------- */

static void test_numbers(void **state) {
  (void)state;
  // clang-format off
  static const char *const ok[] = {
      "0", "-0", "1", "-1", "10", "1234567890", "1e5", "1E5", "1E+2", "1e-2", "1e+0", "-0.0e-0",
      "0.5", "123.456", "-0.001", "0e0", "0E-00", "1.0E+100", "9007199254740993", "1e999",
      "-1e-999", "123456789012345678901234567890", "0.000000000000000000000000000001"};
  // clang-format on
  keel_json_node n[NODES];
  keel_json_error e;
  for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
    size_t len = strlen(ok[i]);
    if (parse_n(ok[i], len, n, NODES, &e) != 1) fail_msg("%s: %s at %zu", ok[i], e.msg, e.offset);
    EXPECT_NODE(&n[0], KEEL_JSON_NUMBER, 0, (uint32_t)len, 1);
    /* The same inside an array, before ',', ' ' and ']', and as a member value before '}'. */
    char buf[160];
    int m = snprintf(buf, sizeof buf, "[%s,%s ,%s]", ok[i], ok[i], ok[i]);
    assert_int_equal(parse_n(buf, (size_t)m, n, NODES, &e), 4);
    EXPECT_NODE(&n[1], KEEL_JSON_NUMBER, 1, (uint32_t)len, 2);
    EXPECT_NODE(&n[2], KEEL_JSON_NUMBER, (uint32_t)len + 2, (uint32_t)len, 3);
    EXPECT_NODE(&n[3], KEEL_JSON_NUMBER, 2 * (uint32_t)len + 4, (uint32_t)len, 4);
    m = snprintf(buf, sizeof buf, "{\"a\":%s}", ok[i]);
    assert_int_equal(parse_n(buf, (size_t)m, n, NODES, &e), 3);
    EXPECT_NODE(&n[2], KEEL_JSON_NUMBER, 5, (uint32_t)len, 3);
  }
  EXPECT_ERR("01", 1, "invalid number");
  EXPECT_ERR("-01", 2, "invalid number");
  EXPECT_ERR("00", 1, "invalid number");
  EXPECT_ERR("[01]", 2, "invalid number");
  EXPECT_ERR("-00.5", 2, "invalid number");
  EXPECT_ERR("1.", 2, "invalid number");
  EXPECT_ERR("[1.]", 3, "invalid number");
  EXPECT_ERR("1.e5", 2, "invalid number");
  EXPECT_ERR(".5", 0, "unexpected character");
  EXPECT_ERR("[.5]", 1, "unexpected character");
  EXPECT_ERR("-", 1, "invalid number");
  EXPECT_ERR("[-]", 2, "invalid number");
  EXPECT_ERR("-.5", 1, "invalid number");
  EXPECT_ERR("-a", 1, "invalid number");
  EXPECT_ERR("- 1", 1, "invalid number");
  EXPECT_ERR("--1", 1, "invalid number");
  EXPECT_ERR("+1", 0, "unexpected character");
  EXPECT_ERR("1e", 2, "invalid number");
  EXPECT_ERR("1E+", 3, "invalid number");
  EXPECT_ERR("1e-x", 3, "invalid number");
  EXPECT_ERR("1ee5", 2, "invalid number");
  EXPECT_ERR("1e+-5", 3, "invalid number");
  EXPECT_ERR("-Infinity", 1, "invalid number");
  EXPECT_ERR("Infinity", 0, "unexpected character");
  EXPECT_ERR("NaN", 0, "unexpected character");
  EXPECT_ERR("0x1", 1, "trailing data after value");
  EXPECT_ERR("1.5.2", 3, "trailing data after value");
  EXPECT_ERR("1e5.5", 3, "trailing data after value");
  EXPECT_ERR("1e5e5", 3, "trailing data after value");
  EXPECT_ERR("[1e5e]", 4, "expected ',' or ']'");
  EXPECT_ERR("[0x]", 2, "expected ',' or ']'");
}

/* ---- strings --------------------------------------------------------------- */

static void test_utf8(void **state) {
  (void)state;
  EXPECT_OK("\"\xc2\x80\"", 1);         /* U+0080 */
  EXPECT_OK("\"\xc3\xa9\"", 1);         /* U+00E9 */
  EXPECT_OK("\"\xdf\xbf\"", 1);         /* U+07FF */
  EXPECT_OK("\"\xe0\xa0\x80\"", 1);     /* U+0800 */
  EXPECT_OK("\"\xe2\x82\xac\"", 1);     /* U+20AC */
  EXPECT_OK("\"\xed\x9f\xbf\"", 1);     /* U+D7FF */
  EXPECT_OK("\"\xee\x80\x80\"", 1);     /* U+E000 */
  EXPECT_OK("\"\xef\xbf\xbf\"", 1);     /* U+FFFF */
  EXPECT_OK("\"\xf0\x90\x80\x80\"", 1); /* U+10000 */
  EXPECT_OK("\"\xf0\x9d\x84\x9e\"", 1); /* U+1D11E */
  EXPECT_OK("\"\xf4\x8f\xbf\xbf\"", 1); /* U+10FFFF */
  EXPECT_OK("{\"\xc3\xa9\":\"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e and more ASCII text\"}", 3);
  EXPECT_OK("\"\x7f\"", 1); /* DEL is not a control character for JSON */

  EXPECT_ERR("\"\x80\"", 1, "invalid UTF-8"); /* stray continuation */
  EXPECT_ERR("\"\xbf\"", 1, "invalid UTF-8");
  EXPECT_ERR("\"a\xc3\xa9\x80\"", 4, "invalid UTF-8"); /* one continuation too many */
  EXPECT_ERR("\"\xc0\x80\"", 1, "invalid UTF-8");      /* overlong NUL */
  EXPECT_ERR("\"\xc1\xbf\"", 1, "invalid UTF-8");      /* overlong 2-byte */
  EXPECT_ERR("\"\xe0\x80\x80\"", 2, "invalid UTF-8");  /* overlong 3-byte */
  EXPECT_ERR("\"\xe0\x9f\xbf\"", 2, "invalid UTF-8");
  EXPECT_ERR("\"\xf0\x80\x80\x80\"", 2, "invalid UTF-8"); /* overlong 4-byte */
  EXPECT_ERR("\"\xf0\x8f\xbf\xbf\"", 2, "invalid UTF-8");
  EXPECT_ERR("\"\xed\xa0\x80\"", 2, "invalid UTF-8");             /* U+D800 encoded directly */
  EXPECT_ERR("\"\xed\xbf\xbf\"", 2, "invalid UTF-8");             /* U+DFFF encoded directly */
  EXPECT_ERR("\"\xed\xa0\xbd\xed\xb2\xa9\"", 2, "invalid UTF-8"); /* CESU-8 pair */
  EXPECT_ERR("\"\xf4\x90\x80\x80\"", 2, "invalid UTF-8");         /* U+110000 */
  EXPECT_ERR("\"\xf5\x80\x80\x80\"", 1, "invalid UTF-8");
  EXPECT_ERR("\"\xf7\xbf\xbf\xbf\"", 1, "invalid UTF-8");
  EXPECT_ERR("\"\xf8\x88\x80\x80\x80\"", 1, "invalid UTF-8"); /* 5-byte form */
  EXPECT_ERR("\"\xfe\"", 1, "invalid UTF-8");
  EXPECT_ERR("\"\xff\"", 1, "invalid UTF-8");
  EXPECT_ERR("\"\xe2\x82\"", 3, "invalid UTF-8"); /* truncated, then the quote */
  EXPECT_ERR("\"\xf0\x9d\x84\"", 4, "invalid UTF-8");
  EXPECT_ERR("\"\xf0\x9d\x84x\"", 4, "invalid UTF-8");
  EXPECT_ERR("\"\xc3\x28\"", 2, "invalid UTF-8");
  EXPECT_ERR("\"\xc3\xc3\xa9\"", 2, "invalid UTF-8");
  EXPECT_ERR("\"\xc3", 2, "unexpected end of input"); /* truncated by the end */
  EXPECT_ERR("\"\xf0\x9d\x84", 4, "unexpected end of input");
  EXPECT_ERR("\xef\xbb\xbf[]", 0, "unexpected character"); /* no BOM */
  EXPECT_ERR("[\xc3\xa9]", 1, "unexpected character");
  EXPECT_ERR("{\"\xed\xa0\x80\":1}", 3, "invalid UTF-8"); /* keys too */
}

/* Every length and every position of the interesting byte: exercises the 8-byte scan. */
static void test_string_scan_positions(void **state) {
  (void)state;
  keel_json_node n[NODES];
  keel_json_error e;
  char buf[128];
  static const unsigned char bad[] = {0x00, 0x01, 0x0a, 0x1f, 0x80, 0xbf, 0xc0, 0xf8, 0xff};
  for (size_t len = 0; len < 40; len++) {
    for (size_t pad = 0; pad < 3; pad++) {
      /* pad leading '[' so the string starts at varied offsets */
      size_t o = 0;
      for (size_t i = 0; i < pad; i++)
        buf[o++] = '[';
      buf[o++] = '"';
      size_t body = o;
      for (size_t i = 0; i < len; i++)
        buf[o++] = (char)('a' + i % 26);
      buf[o++] = '"';
      for (size_t i = 0; i < pad; i++)
        buf[o++] = ']';
      assert_int_equal(parse_n(buf, o, n, NODES, &e), (long)pad + 1);
      EXPECT_NODE(&n[pad], KEEL_JSON_STRING, (uint32_t)body, (uint32_t)len, (uint32_t)pad + 1);
      for (size_t at = 0; at < len; at++) {
        char save = buf[body + at];
        for (size_t b = 0; b < sizeof bad; b++) {
          buf[body + at] = (char)bad[b];
          const char *want = bad[b] < 0x20 ? "control character in string" : "invalid UTF-8";
          EXPECT_ERR_N(buf, o, body + at, want);
        }
        if (at + 1 < len) {
          /* An escaped quote, a 2-byte sequence: the string keeps its length. */
          char save2 = buf[body + at + 1];
          buf[body + at] = '\\';
          buf[body + at + 1] = '"';
          assert_int_equal(parse_n(buf, o, n, NODES, &e), (long)pad + 1);
          assert_int_equal(n[pad].len, len);
          buf[body + at] = (char)0xc3;
          buf[body + at + 1] = (char)0xa9;
          assert_int_equal(parse_n(buf, o, n, NODES, &e), (long)pad + 1);
          assert_int_equal(n[pad].len, len);
          /* A 2-byte lead followed by ASCII. */
          buf[body + at + 1] = 'x';
          EXPECT_ERR_N(buf, o, body + at + 1, "invalid UTF-8");
          buf[body + at + 1] = save2;
        }
        /* A quote here ends the string early. */
        buf[body + at] = '"';
        assert_true(parse_n(buf, o, n, NODES, &e) == -EINVAL);
        assert_int_equal(e.offset, body + at + 1);
        buf[body + at] = save;
      }
      /* Cut before the closing quote. */
      EXPECT_ERR_N(buf, body + len, body + len, "unexpected end of input");
    }
  }
}

static void test_control_chars(void **state) {
  (void)state;
  char buf[16];
  for (int c = 0; c < 0x20; c++) {
    memcpy(buf, "\"ab_\"", 5);
    buf[3] = (char)c;
    EXPECT_ERR_N(buf, 5, 3, "control character in string");
    memcpy(buf, "{\"_\":1}", 7); /* in a key too */
    buf[2] = (char)c;
    EXPECT_ERR_N(buf, 7, 2, "control character in string");
  }
  /* Every other ASCII byte is fine unescaped (except '"' and '\\'). */
  for (int c = 0x20; c < 0x80; c++) {
    if (c == '"' || c == '\\') continue;
    memcpy(buf, "\"ab_\"", 5);
    buf[3] = (char)c;
    EXPECT_OK_N(buf, 5, 1);
  }
}

static void test_escapes(void **state) {
  (void)state;
  keel_json_node n[NODES];
  keel_json_error e;
  assert_int_equal(PARSE("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", n, &e), 1);
  EXPECT_NODE(&n[0], KEEL_JSON_STRING, 1, 16, 1);
  EXPECT_OK("\"\\u0000\"", 1);
  EXPECT_OK("\"\\u0041\\u00e9\\u20AC\\uFFFF\\uaBcD\"", 1);
  EXPECT_OK("\"\\ud834\\udd1e\"", 1);
  /* Lone surrogates pass the parser (echo stays lossless); unescape refuses them. */
  EXPECT_OK("\"\\uD800\"", 1);
  EXPECT_OK("\"\\uDEAD\"", 1);
  EXPECT_OK("[\"\\uDC00\\uD800\"]", 2);
  EXPECT_OK("\"\\\\u00zz\"", 1); /* an escaped backslash, then text */

  EXPECT_ERR("\"\\x41\"", 2, "invalid string escape");
  EXPECT_ERR("\"\\U0041\"", 2, "invalid string escape");
  EXPECT_ERR("\"\\'\"", 2, "invalid string escape");
  EXPECT_ERR("\"\\ \"", 2, "invalid string escape");
  EXPECT_ERR("\"\\0\"", 2, "invalid string escape");
  EXPECT_ERR("\"\\a\"", 2, "invalid string escape");
  EXPECT_ERR("\"\\\xc3\xa9\"", 2, "invalid string escape");
  EXPECT_ERR("\"\\\n\"", 2, "invalid string escape");
  EXPECT_ERR("\"\\u00G0\"", 5, "invalid string escape");
  EXPECT_ERR("\"\\u12\"", 5, "invalid string escape");
  EXPECT_ERR("\"\\u\"", 3, "invalid string escape");
  EXPECT_ERR("\"\\u-123\"", 3, "invalid string escape");
  EXPECT_ERR("\"\\uD800\\u12\"", 11, "invalid string escape");
  EXPECT_ERR("\"\\", 2, "unexpected end of input");
  EXPECT_ERR("\"\\u", 3, "unexpected end of input");
  EXPECT_ERR("\"\\u123", 6, "unexpected end of input");
  EXPECT_ERR("\"\\u1234", 7, "unexpected end of input");
}

/* ---- writer ---------------------------------------------------------------- */

static void roundtrip(const char *src, const char *want, int line) {
  size_t len = strlen(src), wlen = strlen(want);
  keel_json_node a[NODES], b[NODES];
  keel_json_error e = {0, NULL};
  long an = parse_n(src, len, a, NODES, &e);
  if (an <= 0) {
    print_error("line %d: parse failed: %s at %zu\n", line, e.msg, e.offset);
    _fail(__FILE__, line);
  }
  char out[1024];
  size_t w = keel_json_write(src, a, (size_t)an, out, sizeof out);
  if (w != wlen || memcmp(out, want, wlen) != 0) {
    print_error("line %d: wrote \"%.*s\", want \"%s\"\n", line, (int)w, out, want);
    _fail(__FILE__, line);
  }
  assert_true(w <= len);
  long bn = parse_n(out, w, b, NODES, &e);
  assert_true(same_nodes(src, a, an, out, b, bn));
  /* Exactly enough room works; any less writes nothing useful and says 0. */
  assert_int_equal(keel_json_write(src, a, (size_t)an, out, w), w);
  for (size_t c = 0; c < w; c++)
    assert_int_equal(keel_json_write(src, a, (size_t)an, out, c), 0);
}
#define ROUNDTRIP(src, want) roundtrip((src), (want), __LINE__)

static void test_write(void **state) {
  (void)state;
  ROUNDTRIP(
      " { \"a\" : [ 1 , 2.5e3 , true , false , null , \"x\\ny\" ] , \"b\" : { } , \"c\" : [ ] } ",
      "{\"a\":[1,2.5e3,true,false,null,\"x\\ny\"],\"b\":{},\"c\":[]}");
  ROUNDTRIP("  \"s\"  ", "\"s\"");
  ROUNDTRIP("\t-0\n", "-0");
  ROUNDTRIP("null", "null");
  ROUNDTRIP(" true", "true");
  ROUNDTRIP("false ", "false");
  ROUNDTRIP("[ ]", "[]");
  ROUNDTRIP("{\n}", "{}");
  ROUNDTRIP("[[[[]]],{\"k\":{\"k\":[{}]}}]", "[[[[]]],{\"k\":{\"k\":[{}]}}]");
  ROUNDTRIP("[ \"\\u00e9\\ud834\\udd1e\\uD800\" , \"\xc3\xa9\" ]",
            "[\"\\u00e9\\ud834\\udd1e\\uD800\",\"\xc3\xa9\"]");
  ROUNDTRIP("{ \"a\" : { \"b\" : { \"c\" : [ 1 , [ 2 , [ 3 ] ] ] } } , \"d\" : 1E+2 }",
            "{\"a\":{\"b\":{\"c\":[1,[2,[3]]]}},\"d\":1E+2}");
  ROUNDTRIP("[\"a\",[],[\"b\"],{},{\"c\":[]},0]", "[\"a\",[],[\"b\"],{},{\"c\":[]},0]");
  /* Whitespace on one side of a separator only; strings that hold separators and brackets. */
  ROUNDTRIP("[\"a\" ,\"b\", \"c\" , 1 ,2]", "[\"a\",\"b\",\"c\",1,2]");
  ROUNDTRIP("{\"a\" :1,\"b\": 2 ,\"c\":[ ] ,\"d\":{ } }", "{\"a\":1,\"b\":2,\"c\":[],\"d\":{}}");
  ROUNDTRIP("[ \",\" , \":\" , \"]\" , \"}\" , \"[,]\" ]", "[\",\",\":\",\"]\",\"}\",\"[,]\"]");
  ROUNDTRIP("{\n  \"list\": [\n    true,\n    false\n  ],\n  \"n\": null\n}\n",
            "{\"list\":[true,false],\"n\":null}");
  ROUNDTRIP("[[ ],[ [ ] ],{ \"\" : [ ] }]", "[[],[[]],{\"\":[]}]");

  /* Literals and brackets are written out even when the nodes do not point at them. */
  {
    keel_json_node lit[4] = {{KEEL_JSON_ARRAY, 1, 3, 4},
                             {KEEL_JSON_TRUE, 0, 0, 2},
                             {KEEL_JSON_NULL, 0, 0, 3},
                             {KEEL_JSON_FALSE, 0, 0, 4}};
    char o2[64];
    size_t w = keel_json_write("xyz", lit, 4, o2, sizeof o2);
    assert_int_equal(w, 17);
    assert_memory_equal(o2, "[true,null,false]", 17);
  }

  /* Nonsense nodes give 0, never a crash. */
  static const char src[] = "[1,2]";
  char out[64];
  keel_json_node bad[3] = {
      {KEEL_JSON_ARRAY, 0, 2, 3}, {KEEL_JSON_NUMBER, 1, 1, 2}, {KEEL_JSON_NUMBER, 3, 1, 3}};
  assert_int_equal(keel_json_write(src, bad, 3, out, sizeof out), 5);
  assert_int_equal(keel_json_write(src, bad, 0, out, sizeof out), 0);
  assert_int_equal(keel_json_write(src, bad, 2, out, sizeof out), 0); /* next beyond count */
  assert_int_equal(keel_json_write(src, bad, 3, NULL, 0), 0);
  bad[1].type = 99;
  assert_int_equal(keel_json_write(src, bad, 3, out, sizeof out), 0);
  bad[1].type = KEEL_JSON_NUMBER;
  bad[0].next = 0;
  assert_int_equal(keel_json_write(src, bad, 3, out, sizeof out), 0);
  bad[0].next = 2; /* a second root after the first */
  assert_int_equal(keel_json_write(src, bad, 3, out, sizeof out), 0);
  keel_json_node overrun[3] = {
      {KEEL_JSON_ARRAY, 0, 1, 2}, {KEEL_JSON_ARRAY, 1, 1, 3}, {KEEL_JSON_NUMBER, 2, 1, 3}};
  assert_int_equal(keel_json_write("[[1]]", overrun, 3, out, sizeof out), 0);
}

/* ---- unescape ----------------------------------------------------------------- */

static void expect_unescape(const char *raw, const char *want, size_t wlen, int line) {
  char out[256];
  size_t len = strlen(raw);
  long rc = keel_json_unescape(raw, len, out, sizeof out);
  if (rc != (long)wlen || memcmp(out, want, wlen) != 0) {
    print_error("line %d: unescape \"%s\": rc %ld, want %zu bytes\n", line, raw, rc, wlen);
    _fail(__FILE__, line);
  }
  assert_true((size_t)rc <= len);
  /* Exactly enough room works; one byte less is -ENOBUFS. */
  assert_int_equal(keel_json_unescape(raw, len, out, wlen), (long)wlen);
  if (wlen) assert_int_equal(keel_json_unescape(raw, len, out, wlen - 1), -ENOBUFS);
}
#define UNESCAPE(raw, want) expect_unescape((raw), (want), sizeof(want) - 1, __LINE__)

static void test_unescape(void **state) {
  (void)state;
  UNESCAPE("", "");
  UNESCAPE("abc", "abc");
  UNESCAPE("a\\nb\\t\\\"\\\\\\/\\b\\f\\r", "a\nb\t\"\\/\b\f\r");
  UNESCAPE("\\u0041", "A");
  UNESCAPE("\\u0000", "\0");
  UNESCAPE("x\\u0000y", "x\0y");
  UNESCAPE("\\u007f\\u0080", "\x7f\xc2\x80");
  UNESCAPE("\\u00e9", "\xc3\xa9");
  UNESCAPE("\\u07FF\\u0800", "\xdf\xbf\xe0\xa0\x80");
  UNESCAPE("\\u20AC", "\xe2\x82\xac");
  UNESCAPE("\\uFFFF", "\xef\xbf\xbf");
  UNESCAPE("\\uD834\\uDD1E", "\xf0\x9d\x84\x9e");
  UNESCAPE("\\ud800\\udc00", "\xf0\x90\x80\x80");
  UNESCAPE("\\uDBFF\\uDFFF", "\xf4\x8f\xbf\xbf");
  UNESCAPE("caf\xc3\xa9 \\ud83d\\ude00!", "caf\xc3\xa9 \xf0\x9f\x98\x80!");
  UNESCAPE("\\\\u0041", "\\u0041");

  char out[64];
  static const char *const lone[] = {"\\uD800",        "\\uDBFF",        "\\uDC00",
                                     "\\uDFFF",        "a\\uD800b",      "\\uD800\\u0041",
                                     "\\uD800\\uD800", "\\uDC00\\uD800", "\\uD800\\n",
                                     "\\uD800\\",      "\\uD800\\u12"};
  for (size_t i = 0; i < sizeof lone / sizeof *lone; i++) {
    assert_int_equal(keel_json_unescape(lone[i], strlen(lone[i]), out, sizeof out), -EINVAL);
  }
  static const char *const bad[] = {"\\", "a\\", "\\x", "\\u", "\\u12", "\\u12G4", "\\U0041"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    assert_int_equal(keel_json_unescape(bad[i], strlen(bad[i]), out, sizeof out), -EINVAL);
  }
  assert_int_equal(keel_json_unescape("abc", 3, NULL, 0), -ENOBUFS);
  assert_int_equal(keel_json_unescape("\\u20AC", 6, out, 2), -ENOBUFS);
  assert_int_equal(keel_json_unescape(NULL, 0, NULL, 0), 0);

  /* Straight from a parsed node. */
  keel_json_node n[NODES];
  keel_json_error e;
  static const char doc[] = "{\"k\\u00e9y\":\"v\\\\al\"}";
  assert_int_equal(PARSE(doc, n, &e), 3);
  assert_int_equal(keel_json_unescape(doc + n[1].off, n[1].len, out, sizeof out), 4);
  assert_memory_equal(out, "k\xc3\xa9y", 4);
  assert_int_equal(keel_json_unescape(doc + n[2].off, n[2].len, out, sizeof out), 4);
  assert_memory_equal(out, "v\\al", 4);
}

/* ---- quote ------------------------------------------------------------------ */

static void expect_quote(const char *s, size_t len, const char *want, size_t wlen, int line) {
  char out[512];
  size_t rc = keel_json_quote(s, len, out, sizeof out);
  if (rc != wlen || memcmp(out, want, wlen) != 0) {
    print_error("line %d: quote gave \"%.*s\", want \"%s\"\n", line, (int)rc, out, want);
    _fail(__FILE__, line);
  }
  /* Size query, and truncation that never writes past cap. */
  assert_int_equal(keel_json_quote(s, len, NULL, 0), wlen);
  for (size_t cap = 0; cap <= wlen; cap++) {
    memset(out, '#', sizeof out);
    assert_int_equal(keel_json_quote(s, len, out, cap), wlen);
    assert_memory_equal(out, want, cap);
    assert_int_equal(out[cap], '#');
  }
}
#define QUOTE(lit, want) expect_quote((lit), sizeof(lit) - 1, (want), sizeof(want) - 1, __LINE__)

static void test_quote(void **state) {
  (void)state;
  QUOTE("", "\"\"");
  QUOTE("abc", "\"abc\"");
  QUOTE("a\"b\\c", "\"a\\\"b\\\\c\"");
  QUOTE("/", "\"/\"");
  QUOTE("\n\r\t\b\f", "\"\\n\\r\\t\\b\\f\"");
  QUOTE("\x01", "\"\\u0001\"");
  QUOTE("\x1f", "\"\\u001f\"");
  QUOTE("a\0b", "\"a\\u0000b\"");
  QUOTE("\x0b\x0e\x1b", "\"\\u000b\\u000e\\u001b\"");
  QUOTE("\x7f", "\"\x7f\"");
  QUOTE("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
        "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
  QUOTE("a long line of plain ASCII text, longer than eight bytes",
        "\"a long line of plain ASCII text, longer than eight bytes\"");
  /* Invalid UTF-8 cannot go out as it is: each bad byte becomes U+FFFD. */
  QUOTE("\xff", "\"\\ufffd\"");
  QUOTE("a\xc3(", "\"a\\ufffd(\"");
  QUOTE("\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\"");
  QUOTE("\xe2\x82", "\"\\ufffd\\ufffd\"");

  /* Round trip: every byte 0..127, quoted, parses and unescapes back. */
  char in[128], q[1024], back[256];
  for (int i = 0; i < 128; i++)
    in[i] = (char)i;
  size_t ql = keel_json_quote(in, sizeof in, q, sizeof q);
  assert_true(ql <= sizeof q);
  keel_json_node n[4];
  keel_json_error e;
  assert_int_equal(keel_json_parse(q, ql, n, 4, LIM, &e), 1);
  assert_int_equal(n[0].type, KEEL_JSON_STRING);
  assert_int_equal(keel_json_unescape(q + n[0].off, n[0].len, back, sizeof back), 128);
  assert_memory_equal(back, in, 128);
}

/* ---- JSONTestSuite --------------------------------------------------------------- */

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  for (;;) {
    if (n == cap) {
      cap *= 2;
      char *nb = realloc(buf, cap);
      if (!nb) {
        free(buf);
        fclose(f);
        return NULL;
      }
      buf = nb;
    }
    size_t r = fread(buf + n, 1, cap - n, f);
    n += r;
    if (r == 0) break;
  }
  fclose(f);
  *len = n;
  return buf;
}

/* The suite's directory: $KEEL_JSONTESTSUITE, else ../shared/... from the repo root. */
static const char *suite_dir(char *buf, size_t cap) {
  struct stat st;
  const char *env = getenv("KEEL_JSONTESTSUITE");
  if (env && *env) return env;
  const char *rel = "../shared/testdata/JSONTestSuite/test_parsing";
  if (stat(rel, &st) == 0 && S_ISDIR(st.st_mode)) return rel;
  /* Fall back on this file's location (tests/unit/test_json.c in the repo). */
  const char *file = __FILE__;
  const char *cut = strstr(file, "tests/unit/test_json.c");
  if (cut && file[0] == '/') {
    snprintf(buf, cap, "%.*s%s", (int)(cut - file), file, rel);
    if (stat(buf, &st) == 0 && S_ISDIR(st.st_mode)) return buf;
  }
  return rel;
}

static void test_jsontestsuite(void **state) {
  (void)state;
  char pathbuf[4096];
  const char *dir = suite_dir(pathbuf, sizeof pathbuf);
  DIR *d = opendir(dir);
  if (!d)
    fail_msg("JSONTestSuite not found at %s (set KEEL_JSONTESTSUITE): %s", dir, strerror(errno));
  char **names = NULL;
  size_t count = 0, cap = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    const char *nm = de->d_name;
    if ((nm[0] != 'y' && nm[0] != 'n' && nm[0] != 'i') || nm[1] != '_') continue;
    if (count == cap) {
      cap = cap ? cap * 2 : 512;
      names = realloc(names, cap * sizeof *names);
      assert_non_null(names);
    }
    names[count++] = strdup(nm);
  }
  closedir(d);
  qsort(names, count, sizeof *names, cmp_names);

  unsigned y = 0, y_ok = 0, nn = 0, n_rej = 0, i_tot = 0, i_ok = 0, failures = 0;
  for (size_t k = 0; k < count; k++) {
    char path[4352];
    snprintf(path, sizeof path, "%s/%s", dir, names[k]);
    size_t len = 0;
    char *src = read_file(path, &len);
    if (!src) fail_msg("cannot read %s", path);
    size_t ncap = KEEL_JSON_NODES_FOR(len);
    keel_json_node *a = malloc(ncap * sizeof *a), *b = malloc(ncap * sizeof *b);
    char *out = malloc(len + 1);
    assert_true(a && b && out);
    keel_json_error e = {(size_t)-1, NULL};
    long rc = keel_json_parse(src, len, a, ncap, LIM, &e);
    char kind = names[k][0];
    if (rc < 0) {
      /* A failure always says where and why, within the input. */
      if (rc != -EINVAL || !e.msg || e.offset > len) {
        print_error("%s: bad failure: rc %ld offset %zu\n", names[k], rc, e.offset);
        failures++;
      }
    } else {
      /* Accepted: write compactly, parse again, compare. */
      size_t w = keel_json_write(src, a, (size_t)rc, out, len);
      long rc2 = w ? keel_json_parse(out, w, b, ncap, LIM, &e) : -1;
      if (w == 0 || w > len || !same_nodes(src, a, rc, out, b, rc2)) {
        print_error("%s: write/parse round trip differs (wrote %zu of %zu)\n", names[k], w, len);
        failures++;
      }
      /* Every string decodes (y_ files hold no lone surrogates). */
      for (long j = 0; j < rc; j++) {
        if (a[j].type != KEEL_JSON_STRING) continue;
        char *dec = malloc(a[j].len + 1);
        long u = keel_json_unescape(src + a[j].off, a[j].len, dec, a[j].len);
        if (u == -ENOBUFS || (kind == 'y' && u < 0)) {
          print_error("%s: unescape of node %ld gave %ld\n", names[k], j, u);
          failures++;
        }
        free(dec);
      }
    }
    if (kind == 'y') {
      y++;
      if (rc > 0)
        y_ok++;
      else {
        print_error("%s: rejected: %s at %zu\n", names[k], e.msg, e.offset);
        failures++;
      }
    } else if (kind == 'n') {
      nn++;
      if (rc < 0)
        n_rej++;
      else {
        print_error("%s: accepted\n", names[k]);
        failures++;
      }
    } else {
      i_tot++;
      if (rc > 0) i_ok++;
    }
    free(out);
    free(b);
    free(a);
    free(src);
    free(names[k]);
  }
  free(names);
  print_message(
      "JSONTestSuite: y %u/%u accepted, n %u/%u rejected, i %u (accepted %u, rejected %u)\n", y_ok,
      y, n_rej, nn, i_tot, i_ok, i_tot - i_ok);
  if (y + nn + i_tot < 300) fail_msg("JSONTestSuite at %s looks incomplete: %zu files", dir, count);
  assert_int_equal(failures, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_scalars),        cmocka_unit_test(test_nesting),
      cmocka_unit_test(test_large_document), cmocka_unit_test(test_depth_limit),
      cmocka_unit_test(test_nobufs),         cmocka_unit_test(test_too_big),
      cmocka_unit_test(test_error_offsets),  cmocka_unit_test(test_trailing),
      cmocka_unit_test(test_whitespace),     cmocka_unit_test(test_numbers),
      cmocka_unit_test(test_utf8),           cmocka_unit_test(test_string_scan_positions),
      cmocka_unit_test(test_control_chars),  cmocka_unit_test(test_escapes),
      cmocka_unit_test(test_write),          cmocka_unit_test(test_unescape),
      cmocka_unit_test(test_quote),          cmocka_unit_test(test_jsontestsuite),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
