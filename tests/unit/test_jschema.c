/* test_jschema.c - unit tests for the gateway's JSON Schema subset: compile, validate, error body.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gateway/jschema.h"
#include "keel/json.h"

#define NODES 512

/* ---- helpers ------------------------------------------------------------------------------- */

static kl_jschema *compile_at(const char *schema, int line) {
  kl_jschema *s = NULL;
  char err[256];
  int rc = kl_jschema_compile(schema, strlen(schema), &s, err, sizeof err);
  if (rc != 0 || !s) {
    print_error("line %d: schema %s: rc %d: %s\n", line, schema, rc, err);
    _fail(__FILE__, line);
  }
  return s;
}
#define COMPILE(schema) compile_at((schema), __LINE__)

/* The schema must not compile, and the message must contain every one of `want` (NULL-ended). */
static void compile_err_at(const char *schema, int line, ...) {
  kl_jschema *s = NULL;
  char err[256] = "";
  int rc = kl_jschema_compile(schema, strlen(schema), &s, err, sizeof err);
  if (rc != -EINVAL || s) {
    print_error("line %d: schema %s: want -EINVAL, got %d\n", line, schema, rc);
    kl_jschema_free(s);
    _fail(__FILE__, line);
  }
  va_list ap;
  va_start(ap, line);
  for (const char *w; (w = va_arg(ap, const char *));) {
    if (!strstr(err, w)) {
      print_error("line %d: schema %s: message \"%s\" lacks \"%s\"\n", line, schema, err, w);
      va_end(ap);
      _fail(__FILE__, line);
    }
  }
  va_end(ap);
}
#define COMPILE_ERR(schema, ...) compile_err_at((schema), __LINE__, __VA_ARGS__, (const char *)NULL)

static int validate_n(const kl_jschema *s, const char *doc, size_t len, kl_jschema_error *e) {
  keel_json_node nodes[NODES];
  return kl_jschema_validate(s, doc, len, nodes, NODES, 0, e);
}

static void valid_at(const kl_jschema *s, const char *doc, size_t len, int line) {
  kl_jschema_error e;
  int rc = validate_n(s, doc, len, &e);
  if (rc != 0) {
    print_error("line %d: doc %.*s: want valid, got %d %d %s %s: %s\n", line, (int)len, doc, rc,
                e.status, e.path, e.keyword ? e.keyword : "-", e.message);
    _fail(__FILE__, line);
  }
}
#define VALID(s, doc) valid_at((s), (doc), sizeof(doc) - 1, __LINE__)

static kl_jschema_error invalid_at(const kl_jschema *s, const char *doc, size_t len, int status,
                                   const char *path, const char *kw, int line) {
  kl_jschema_error e;
  int rc = validate_n(s, doc, len, &e);
  bool kw_ok = kw ? (e.keyword && strcmp(e.keyword, kw) == 0) : e.keyword == NULL;
  if (rc == 0 || e.status != status || strcmp(e.path, path) != 0 || !kw_ok) {
    print_error("line %d: doc %.*s: want %d \"%s\" %s, got rc %d %d \"%s\" %s: %s\n", line,
                (int)len, doc, status, path, kw ? kw : "-", rc, e.status, e.path,
                e.keyword ? e.keyword : "-", e.message);
    _fail(__FILE__, line);
  }
  return e;
}
#define INVALID(s, doc, path, kw)                                                                  \
  invalid_at((s), (doc), sizeof(doc) - 1, 422, (path), (kw), __LINE__)
#define BAD_JSON(s, doc) invalid_at((s), (doc), sizeof(doc) - 1, 400, "", NULL, __LINE__)

/* ---- tests --------------------------------------------------------------------------------- */

static void test_empty_and_boolean_schemas(void **state) {
  (void)state;
  const char *anything[] = {
      "{}", "[]", "1", "-1.5e3", "\"x\"", "true", "false", "null", "{\"a\":[1,{\"b\":null}]}"};
  kl_jschema *s[3] = {COMPILE("{}"), COMPILE("true"), COMPILE("false")};
  for (size_t i = 0; i < sizeof anything / sizeof *anything; i++) {
    valid_at(s[0], anything[i], strlen(anything[i]), __LINE__);
    valid_at(s[1], anything[i], strlen(anything[i]), __LINE__);
    kl_jschema_error e =
        invalid_at(s[2], anything[i], strlen(anything[i]), 422, "", "false", __LINE__);
    assert_int_equal(e.offset, 0);
  }
  /* Annotations are accepted and change nothing. */
  kl_jschema *a = COMPILE("{\"$schema\":\"https://json-schema.org/draft/2020-12/schema\","
                          "\"$id\":\"x\",\"title\":\"t\",\"description\":\"d\",\"default\":{},"
                          "\"examples\":[1,2],\"$comment\":\"c\"}");
  VALID(a, "[1,2]");
  assert_true(kl_jschema_size(a) > 0);
  kl_jschema_free(a);
  for (int i = 0; i < 3; i++)
    kl_jschema_free(s[i]);
  kl_jschema_free(NULL);
}

static void test_type(void **state) {
  (void)state;
  kl_jschema *s = COMPILE("{\"type\":\"string\"}");
  VALID(s, "\"\"");
  kl_jschema_error e = INVALID(s, "12", "", "type");
  assert_non_null(strstr(e.message, "expected string, got number"));
  INVALID(s, "null", "", "type");
  kl_jschema_free(s);

  static const struct {
    const char *type;
    const char *ok[4];
    const char *bad[4];
  } cases[] = {
      {"object", {"{}", "{\"a\":1}"}, {"[]", "1", "\"{}\""}},
      {"array", {"[]", "[[1]]"}, {"{}", "null"}},
      {"number", {"0", "-1.5", "1e300", "3"}, {"\"3\"", "true"}},
      {"integer", {"1", "1.0", "1e3", "10.50e1"}, {"1.5", "1e-3", "\"1\"", "1e-1000"}},
      {"boolean", {"true", "false"}, {"0", "null", "\"true\""}},
      {"null", {"null"}, {"0", "false", "{}"}},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    char schema[64];
    snprintf(schema, sizeof schema, "{\"type\":\"%s\"}", cases[i].type);
    kl_jschema *t = COMPILE(schema);
    for (int j = 0; j < 4 && cases[i].ok[j]; j++)
      valid_at(t, cases[i].ok[j], strlen(cases[i].ok[j]), __LINE__);
    for (int j = 0; j < 4 && cases[i].bad[j]; j++)
      invalid_at(t, cases[i].bad[j], strlen(cases[i].bad[j]), 422, "", "type", __LINE__);
    kl_jschema_free(t);
  }
  /* More integers: zero in every spelling, big exponents, long fractions. */
  kl_jschema *in = COMPILE("{\"type\":\"integer\"}");
  VALID(in, "-0");
  VALID(in, "0.000e-7");
  VALID(in, "1.5e400");
  VALID(in, "123456789012345678901234567890");
  VALID(in, "1.2300000000000000000000000000000000000000000000000000000000000000000000000000e2");
  INVALID(in, "1.2300000000000000000000000000000000000000000000000000000000000000000000000001e2",
          "", "type");
  e = INVALID(in, "2.5", "", "type");
  assert_non_null(strstr(e.message, "expected integer, got number"));
  kl_jschema_free(in);

  kl_jschema *u = COMPILE("{\"type\":[\"string\",\"null\"]}");
  VALID(u, "null");
  VALID(u, "\"a\"");
  e = INVALID(u, "{}", "", "type");
  assert_non_null(strstr(e.message, "string or null"));
  kl_jschema_free(u);
}

static void test_required_and_properties(void **state) {
  (void)state;
  kl_jschema *s = COMPILE("{\"type\":\"object\",\"required\":[\"name\",\"id\"],"
                          "\"properties\":{\"name\":{\"type\":\"string\"},"
                          "\"id\":{\"type\":\"integer\"},\"tags\":{\"type\":\"array\"}}}");
  VALID(s, "{\"id\":1,\"name\":\"x\"}");
  VALID(s, "{\"id\":1,\"name\":\"x\",\"other\":[]}"); /* additionalProperties defaults to true */
  VALID(s, "{\"i\\u0064\":1,\"n\\u0061me\":\"x\"}");  /* escaped keys match */
  kl_jschema_error e = INVALID(s, "{\"name\":\"x\"}", "", "required");
  assert_non_null(strstr(e.message, "\"id\""));
  assert_int_equal(e.offset, 0);
  INVALID(s, "{\"id\":1,\"name\":2}", "/name", "type");
  e = INVALID(s, "{\"id\":1,\"name\":\"x\",\"tags\":{}}", "/tags", "type");
  assert_int_equal(e.offset, 26);
  VALID(s, "{\"id\":1,\"name\":\"\"}");
  kl_jschema_free(s);

  kl_jschema *r = COMPILE("{\"required\":[\"a\",\"a\"]}");
  VALID(r, "[]"); /* not an object: required does not apply */
  VALID(r, "{\"a\":null}");
  INVALID(r, "{\"b\":null}", "", "required");
  kl_jschema_free(r);

  /* A nested required failure names the object. */
  kl_jschema *n = COMPILE("{\"properties\":{\"items\":{\"items\":{\"required\":[\"name\"]}}}}");
  e = INVALID(n, "{\"items\":[{\"name\":1},{}]}", "/items/1", "required");
  assert_int_equal(e.offset, 21);
  kl_jschema_free(n);
}

static void test_nested_paths_and_escaping(void **state) {
  (void)state;
  kl_jschema *s =
      COMPILE("{\"properties\":{\"items\":{\"type\":\"array\",\"items\":{\"type\":\"object\","
              "\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":3}}}}}}");
  VALID(s, "{\"items\":[{\"name\":\"abc\"}]}");
  const char doc[] = "{\"items\":[{},{\"name\":\"a\"},{\"name\":\"ab\"},{\"name\":\"abcd\"}]}";
  kl_jschema_error e = INVALID(s, doc, "/items/3/name", "maxLength");
  assert_int_equal(e.offset, (long)(strstr(doc, "\"abcd\"") - doc));
  kl_jschema_free(s);

  /* "~" and "/" in keys: ~0 and ~1, also when the document escapes them. */
  kl_jschema *p = COMPILE("{\"properties\":{\"a/b~c\":{\"properties\":{\"x\":false}}}}");
  INVALID(p, "{\"a/b~c\":{\"x\":1}}", "/a~1b~0c/x", "properties");
  INVALID(p, "{\"a\\/b\\u007ec\":{\"x\":1}}", "/a~1b~0c/x", "properties");
  kl_jschema_free(p);

  /* Keys the schema does not know still appear in paths (additionalProperties), unescaped. */
  kl_jschema *q = COMPILE("{\"additionalProperties\":{\"type\":\"integer\"}}");
  INVALID(q, "{\"caf\\u00e9\\n\":\"x\"}", "/caf\xc3\xa9\n", "type");
  INVALID(q, "{\"nul\\u0000\":\"x\"}", "/nul\xef\xbf\xbd", "type");
  INVALID(q, "{\"\\ud83d\\ude00~\":\"x\"}", "/\xf0\x9f\x98\x80~0", "type");
  INVALID(q, "{\"\\ud800/\":\"x\"}", "/\xef\xbf\xbd~1", "type");
  INVALID(q, "{\"\\\"\\\\\":\"x\"}", "/\"\\", "type");
  kl_jschema_free(q);

  /* Long keys: the path is cut at a character boundary, never overflows. */
  kl_jschema *l = COMPILE("{\"additionalProperties\":{\"additionalProperties\":false}}");
  char big[700];
  size_t o = 0;
  o += (size_t)snprintf(big + o, sizeof big - o, "{\"");
  for (int i = 0; i < 200; i++)
    o += (size_t)snprintf(big + o, sizeof big - o, "\xc3\xa9");
  o += (size_t)snprintf(big + o, sizeof big - o, "\":{\"k\":1}}");
  kl_jschema_error e2;
  assert_int_equal(validate_n(l, big, o, &e2), -EINVAL);
  assert_int_equal(e2.status, 422);
  size_t plen = strlen(e2.path);
  assert_true(plen < sizeof e2.path && plen >= 250);
  assert_int_equal((plen - 1) % 2, 0); /* "/" then whole two-byte characters */
  kl_jschema_free(l);
}

static void test_additional_properties(void **state) {
  (void)state;
  kl_jschema *s = COMPILE("{\"properties\":{\"a\":{}},\"required\":[\"b\"],"
                          "\"additionalProperties\":false}");
  /* The object's own "required" fails before its members are looked at. */
  const char doc[] = "{\"a\":1,\"zz\":2}";
  kl_jschema_error e = INVALID(s, doc, "", "required");
  /* "b" is required but not in properties: additionalProperties still forbids it. */
  e = INVALID(s, "{\"b\":1}", "/b", "additionalProperties");
  assert_int_equal(e.offset, 1);
  assert_non_null(strstr(e.message, "\"b\""));
  kl_jschema_free(s);

  kl_jschema *t = COMPILE("{\"properties\":{\"a\":{}},\"additionalProperties\":false}");
  e = INVALID(t, doc, "/zz", "additionalProperties");
  assert_int_equal(e.offset, 7);
  VALID(t, "{\"a\":1,\"a\":2}");
  kl_jschema_free(t);

  kl_jschema *u =
      COMPILE("{\"properties\":{\"a\":{}},\"additionalProperties\":{\"type\":\"string\"}}");
  VALID(u, "{\"a\":1,\"b\":\"x\"}");
  INVALID(u, "{\"a\":1,\"b\":\"x\",\"c\":3}", "/c", "type");
  kl_jschema_free(u);
}

static void test_enum_and_const(void **state) {
  (void)state;
  kl_jschema *s = COMPILE("{\"enum\":[\"caf\\u00e9\",1,null,[1,\"a\"],{\"x\":1,\"y\":[true]},"
                          "\"tab\\t\",\"\\ud83d\\ude00\"]}");
  VALID(s, "\"caf\xc3\xa9\"");
  VALID(s, "\"caf\\u00E9\"");
  VALID(s, "1");
  VALID(s, "1.0");
  VALID(s, "10e-1");
  VALID(s, "null");
  VALID(s, "[1.00,\"\\u0061\"]");
  VALID(s, "{\"y\":[true],\"x\":1}");
  VALID(s, "\"tab\\u0009\"");
  VALID(s, "\"\xf0\x9f\x98\x80\"");
  kl_jschema_error e = INVALID(s, "\"1\"", "", "enum");
  assert_non_null(strstr(e.message, "7"));
  INVALID(s, "\"cafe\"", "", "enum");
  kl_jschema *ls = COMPILE("{\"enum\":[\"\\ud800\"]}");
  VALID(ls, "\"\\uD800\"");
  INVALID(ls, "\"\\ud801\"", "", "enum");
  INVALID(ls, "\"\xef\xbf\xbd\"", "", "enum");
  INVALID(ls, "\"\\ud800\\ud800\"", "", "enum");
  kl_jschema_free(ls);
  INVALID(s, "2", "", "enum");
  INVALID(s, "false", "", "enum");
  INVALID(s, "[1]", "", "enum");
  INVALID(s, "[\"a\",1]", "", "enum");
  INVALID(s, "{\"x\":1}", "", "enum");
  INVALID(s, "{\"x\":1,\"y\":[true],\"z\":0}", "", "enum");
  INVALID(s, "{\"x\":1,\"x\":1}", "", "enum");
  INVALID(s, "{\"x\":1,\"y\":[false]}", "", "enum");
  kl_jschema_free(s);

  kl_jschema *c = COMPILE("{\"properties\":{\"v\":{\"const\":{\"a\":[1,2]}}}}");
  VALID(c, "{\"v\":{\"a\":[1,2.0]}}");
  INVALID(c, "{\"v\":{\"a\":[2,1]}}", "/v", "const");
  INVALID(c, "{\"v\":null}", "/v", "const");
  kl_jschema_free(c);

  kl_jschema *empty = COMPILE("{\"enum\":[]}");
  INVALID(empty, "1", "", "enum");
  kl_jschema_free(empty);
}

static void test_numbers(void **state) {
  (void)state;
  kl_jschema *s = COMPILE("{\"minimum\":1,\"maximum\":10.5}");
  VALID(s, "1");
  VALID(s, "10.5");
  VALID(s, "\"not a number: ignored\"");
  kl_jschema_error e = INVALID(s, "0.999", "", "minimum");
  assert_non_null(strstr(e.message, "0.999 is less than the minimum 1"));
  VALID(s, "1050e-2");
  INVALID(s, "1051e-2", "", "maximum");
  INVALID(s, "1e400", "", "maximum");
  kl_jschema_free(s);

  kl_jschema *x = COMPILE("{\"exclusiveMinimum\":0,\"exclusiveMaximum\":0.1}");
  VALID(x, "0.05");
  INVALID(x, "0", "", "exclusiveMinimum");
  INVALID(x, "-0.0", "", "exclusiveMinimum");
  e = INVALID(x, "0.1", "", "exclusiveMaximum");
  assert_non_null(strstr(e.message, "not less than 0.1"));
  kl_jschema_free(x);

  /* Texts longer than strtod's buffer: cut to significant digits, exponent kept. */
  kl_jschema *b = COMPILE("{\"maximum\":1e100}");
  char big[200];
  big[0] = '1';
  memset(big + 1, '0', 100); /* 10^100 */
  valid_at(b, big, 101, __LINE__);
  memset(big + 1, '0', 101); /* 10^101 */
  invalid_at(b, big, 102, 422, "", "maximum", __LINE__);
  memcpy(big, "0.", 2); /* 0.000...01e102 = 10^0.. */
  memset(big + 2, '0', 150);
  memcpy(big + 152, "1e152", 5);
  valid_at(b, big, 157, __LINE__); /* 10^1 */
  memcpy(big + 152, "1e252", 5);
  invalid_at(b, big, 157, 422, "", "maximum", __LINE__); /* 10^101 */
  kl_jschema_free(b);
}

static void test_strings(void **state) {
  (void)state;
  kl_jschema *s = COMPILE("{\"minLength\":2,\"maxLength\":3}");
  VALID(s, "\"ab\"");
  VALID(s, "\"\xc3\xa9\xc3\xa9\xc3\xa9\"");            /* 3 code points, 6 bytes */
  VALID(s, "\"\xf0\x9f\x98\x80\xf0\x9f\x98\x80\"");    /* 2 code points, 8 bytes */
  VALID(s, "\"\\ud83d\\ude00\\ud83d\\ude00\\u00e9\""); /* 3 code points, escaped */
  VALID(s, "\"\\n\\t\"");
  VALID(s, "\"\\ud800x\""); /* a lone surrogate counts as one */
  VALID(s, "5");            /* not a string: lengths do not apply */
  kl_jschema_error e = INVALID(s, "\"\xf0\x9f\x98\x80\"", "", "minLength");
  assert_non_null(strstr(e.message, "1 characters"));
  INVALID(s, "\"\\\\\"", "", "minLength");
  INVALID(s, "\"abcd\"", "", "maxLength");
  INVALID(s, "\"\\u00e9\\u00e9\\u00e9\\u00e9\"", "", "maxLength");
  kl_jschema_free(s);

  kl_jschema *z = COMPILE("{\"maxLength\":0}");
  VALID(z, "\"\"");
  INVALID(z, "\"\\u0000\"", "", "maxLength");
  kl_jschema_free(z);
}

static void test_arrays(void **state) {
  (void)state;
  kl_jschema *s = COMPILE("{\"minItems\":1,\"maxItems\":3,\"items\":{\"type\":\"integer\"}}");
  VALID(s, "[1]");
  VALID(s, "[1,2,3.0]");
  VALID(s, "{}");
  kl_jschema_error e = INVALID(s, "[]", "", "minItems");
  INVALID(s, "[1,2,3,4]", "", "maxItems");
  e = INVALID(s, "[1,\"2\",3]", "/1", "type");
  assert_int_equal(e.offset, 3);
  kl_jschema_free(s);

  kl_jschema *f = COMPILE("{\"items\":false}");
  VALID(f, "[]");
  INVALID(f, "[0]", "/0", "items");
  kl_jschema_free(f);

  kl_jschema *n = COMPILE("{\"items\":{\"items\":{\"items\":{\"enum\":[1]}}}}");
  INVALID(n, "[[],[[1],[1,2]]]", "/1/1/1", "enum");
  kl_jschema_free(n);
}

static void test_document_order(void **state) {
  (void)state;
  /* The first failure in the document wins, whatever the order of the schema. */
  kl_jschema *s =
      COMPILE("{\"properties\":{\"b\":{\"type\":\"string\"},\"a\":{\"type\":\"string\"}},"
              "\"additionalProperties\":false}");
  INVALID(s, "{\"a\":1,\"b\":2}", "/a", "type");
  INVALID(s, "{\"b\":2,\"a\":1}", "/b", "type");
  INVALID(s, "{\"x\":0,\"b\":2}", "/x", "additionalProperties");
  kl_jschema_free(s);
  /* A container's own keywords before its members. */
  kl_jschema *t = COMPILE("{\"maxItems\":1,\"items\":{\"type\":\"string\"}}");
  INVALID(t, "[1,2]", "", "maxItems");
  kl_jschema_free(t);
}

static void test_compile_errors(void **state) {
  (void)state;
  COMPILE_ERR("{\"properties\":{\"a\":{\"format\":\"email\"}}}", "unknown keyword \"format\"",
              "/properties/a/format");
  COMPILE_ERR("{\"items\":{\"pattern\":\"x\"}}", "\"pattern\"", "/items/pattern");
  COMPILE_ERR("{\"properties\":{\"a~/\":{\"$ref\":\"#\"}}}", "$ref", "/properties/a~0~1/$ref");
  COMPILE_ERR("{\"type\":\"strng\"}", "\"type\"", "\"/type\"");
  COMPILE_ERR("{\"type\":[]}", "empty");
  COMPILE_ERR("{\"type\":[\"string\",3]}", "\"type\"");
  COMPILE_ERR("{\"minLength\":-1}", "non-negative integer", "/minLength");
  COMPILE_ERR("{\"maxItems\":1.5}", "non-negative integer", "/maxItems");
  COMPILE_ERR("{\"maxLength\":\"3\"}", "non-negative integer");
  COMPILE_ERR("{\"minimum\":\"3\"}", "must be a number", "/minimum");
  COMPILE_ERR("{\"exclusiveMinimum\":true}", "must be a number");
  COMPILE_ERR("{\"required\":\"a\"}", "array of strings", "/required");
  COMPILE_ERR("{\"required\":[1]}", "array of strings");
  COMPILE_ERR("{\"properties\":[]}", "must be an object", "/properties");
  COMPILE_ERR("{\"properties\":{\"a\":1}}", "object, true or false", "/properties/a");
  COMPILE_ERR("{\"additionalProperties\":null}", "object, true or false", "/additionalProperties");
  COMPILE_ERR("{\"enum\":{}}", "\"enum\" must be an array");
  COMPILE_ERR("{\"type\":\"string\",\"type\":\"string\"}", "duplicate keyword \"type\"");
  COMPILE_ERR("{\"properties\":{\"a\":{},\"\\u0061\":{}}}", "duplicate property", "/properties/a");
  COMPILE_ERR("{\"properties\":{\"\\ud800\":{}}}", "lone surrogate");
  COMPILE_ERR("1", "object, true or false");
  COMPILE_ERR("{\"type\":", "not valid JSON");
  COMPILE_ERR("", "not valid JSON");
  /* Keywords are matched after unescaping, and only exactly. */
  COMPILE_ERR("{\"Type\":\"string\"}", "unknown keyword");
  kl_jschema *s = COMPILE("{\"typ\\u0065\":\"string\"}");
  INVALID(s, "1", "", "type");
  kl_jschema_free(s);
  /* A NULL or zero-length error buffer is fine. */
  kl_jschema *o = NULL;
  assert_int_equal(kl_jschema_compile("{\"x\":1}", 7, &o, NULL, 0), -EINVAL);
  char one[1] = {'z'};
  assert_int_equal(kl_jschema_compile("{\"x\":1}", 7, &o, one, 1), -EINVAL);
  assert_int_equal(one[0], '\0');
  assert_null(o);
}

static void test_caps(void **state) {
  (void)state;
  /* Subschema depth: 32 levels compile, 33 do not. */
  char buf[4096];
  for (int levels = 32; levels <= 33; levels++) {
    size_t o = 0;
    for (int i = 0; i < levels; i++)
      o += (size_t)snprintf(buf + o, sizeof buf - o, "{\"items\":");
    o += (size_t)snprintf(buf + o, sizeof buf - o, "{\"type\":\"null\"}");
    for (int i = 0; i < levels; i++)
      buf[o++] = '}';
    buf[o] = '\0';
    kl_jschema *s = NULL;
    char err[256];
    int rc = kl_jschema_compile(buf, o, &s, err, sizeof err);
    if (levels == 32) {
      assert_int_equal(rc, 0);
      /* The document may be as deep as the schema (33 arrays) with max_depth 40. */
      char doc[128];
      size_t d = 0;
      for (int i = 0; i < 32; i++)
        doc[d++] = '[';
      memcpy(doc + d, "[0]", 3);
      d += 3;
      for (int i = 0; i < 32; i++)
        doc[d++] = ']';
      keel_json_node nodes[128];
      kl_jschema_error e;
      assert_int_equal(kl_jschema_validate(s, doc, d, nodes, 128, 40, &e), -EINVAL);
      assert_int_equal(e.status, 422);
      assert_string_equal(e.keyword, "type");
      assert_string_equal(e.path,
                          "/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0");
      kl_jschema_free(s);
    } else {
      assert_int_equal(rc, -EINVAL);
      assert_non_null(strstr(err, "deeper than 32"));
    }
  }
  /* Schema size. */
  size_t n = KL_JSCHEMA_MAX_SOURCE + 1;
  char *huge = malloc(n);
  assert_non_null(huge);
  memset(huge, ' ', n);
  huge[0] = '{';
  huge[n - 1] = '}';
  kl_jschema *s = NULL;
  char err[256];
  assert_int_equal(kl_jschema_compile(huge, n, &s, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "larger than"));
  free(huge);
  /* Required names. */
  size_t cap = 8 + 300 * 8, o = 0;
  char *req = malloc(cap);
  assert_non_null(req);
  o += (size_t)snprintf(req, cap, "{\"required\":[");
  for (int i = 0; i < 257; i++)
    o += (size_t)snprintf(req + o, cap - o, "%s\"%d\"", i ? "," : "", i);
  o += (size_t)snprintf(req + o, cap - o, "]}");
  assert_int_equal(kl_jschema_compile(req, o, &s, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "more than 256"));
  /* 256 compile; every one is checked. */
  o = 0;
  o += (size_t)snprintf(req, cap, "{\"required\":[");
  for (int i = 0; i < 256; i++)
    o += (size_t)snprintf(req + o, cap - o, "%s\"%d\"", i ? "," : "", i);
  o += (size_t)snprintf(req + o, cap - o, "]}");
  assert_int_equal(kl_jschema_compile(req, o, &s, err, sizeof err), 0);
  o = 0;
  o += (size_t)snprintf(req, cap, "{");
  for (int i = 0; i < 256; i++) {
    if (i != 200) o += (size_t)snprintf(req + o, cap - o, "%s\"%d\":0", o > 1 ? "," : "", i);
  }
  o += (size_t)snprintf(req + o, cap - o, "}");
  kl_jschema_error e;
  keel_json_node *nodes = malloc(1024 * sizeof *nodes);
  assert_int_equal(kl_jschema_validate(s, req, o, nodes, 1024, 0, &e), -EINVAL);
  assert_string_equal(e.keyword, "required");
  assert_non_null(strstr(e.message, "\"200\""));
  free(nodes);
  free(req);
  kl_jschema_free(s);
}

static void test_document_errors(void **state) {
  (void)state;
  kl_jschema *s = COMPILE("{}");
  kl_jschema_error e = BAD_JSON(s, "{\"a\":");
  assert_int_equal(e.offset, 5);
  assert_non_null(strstr(e.message, "invalid JSON"));
  e = BAD_JSON(s, "");
  e = BAD_JSON(s, "nul");
  e = BAD_JSON(s, "{} x");
  assert_int_equal(e.offset, 3);
  e = BAD_JSON(s, "\"\xff\"");

  /* Nesting beyond max_depth: 400. */
  keel_json_node nodes[16];
  assert_int_equal(kl_jschema_validate(s, "[[[1]]]", 7, nodes, 16, 2, &e), -EINVAL);
  assert_int_equal(e.status, 400);
  assert_null(e.keyword);
  assert_non_null(strstr(e.message, "deeper than 2"));
  assert_int_equal(kl_jschema_validate(s, "[[[1]]]", 7, nodes, 16, 3, &e), 0);
  /* The default depth is 64. */
  char deep[200];
  memset(deep, '[', 65);
  memset(deep + 65, ']', 65);
  assert_int_equal(kl_jschema_validate(s, deep, 130, nodes, 16, 0, &e), -EINVAL);
  assert_int_equal(e.status, 400);
  assert_non_null(strstr(e.message, "deeper than 64"));

  /* Over the node cap: -ENOBUFS, 400, even with the empty schema. */
  assert_int_equal(kl_jschema_validate(s, "[1,2,3,4]", 9, nodes, 4, 0, &e), -ENOBUFS);
  assert_int_equal(e.status, 400);
  assert_int_equal(e.offset, 7);
  assert_non_null(strstr(e.message, "more than 4 JSON values"));
  /* Invalid JSON stays invalid JSON whatever the cap. */
  assert_int_equal(kl_jschema_validate(s, "[1,2,3,4,]", 10, nodes, 4, 0, &e), -EINVAL);
  assert_int_equal(e.status, 400);
  kl_jschema_free(s);
}

static void test_arena(void **state) {
  (void)state;
  kl_jschema *s = COMPILE("{\"items\":{\"type\":\"integer\"}}");
  kl_arena a;
  kl_arena_init(&a, 4096, 8192);
  kl_jschema_error e;
  for (int i = 0; i < 100; i++) {
    assert_int_equal(kl_jschema_validate_arena(s, "[1,2,3]", 7, &a, 0, 0, &e), 0);
    assert_int_equal(kl_jschema_validate_arena(s, "[1,2,\"3\"]", 9, &a, 0, 0, &e), -EINVAL);
    assert_string_equal(e.path, "/2");
    assert_int_equal(kl_jschema_validate_arena(s, "[1,2,3]", 7, &a, 2, 0, &e), -ENOBUFS);
    kl_arena_reset(&a);
  }
  /* More nodes than the arena may give. */
  char big[4000];
  memset(big, ' ', sizeof big);
  big[0] = '[';
  big[sizeof big - 1] = ']';
  assert_int_equal(kl_jschema_validate_arena(s, big, sizeof big, &a, 100000, 0, &e), -ENOMEM);
  assert_int_equal(e.status, 500);
  kl_arena_free(&a);
  kl_jschema_free(s);
}

static void test_error_json(void **state) {
  (void)state;
  kl_jschema *s = COMPILE("{\"properties\":{\"items\":{\"items\":{\"properties\":{\"na\\\"me\":"
                          "{\"maxLength\":1}}}}}}");
  const char doc[] = "{\"items\":[{\"na\\\"me\":\"xy\"}]}";
  kl_jschema_error e = INVALID(s, doc, "/items/0/na\"me", "maxLength");
  char out[512];
  size_t n = kl_jschema_error_json(&e, out, sizeof out);
  assert_true(n < sizeof out);
  assert_int_equal(strlen(out), n);
  char want[512];
  snprintf(want, sizeof want,
           "{\"error\":\"request body does not match the schema\",\"path\":\"/items/0/na\\\"me\","
           "\"keyword\":\"maxLength\",\"message\":\"%s\",\"offset\":%ld}",
           e.message, e.offset);
  assert_string_equal(out, want);
  assert_int_equal(e.offset, 20);
  keel_json_node nodes[32];
  assert_true(keel_json_parse(out, n, nodes, 32, 8, NULL) > 0);

  /* Too small: the full length comes back, the output is cut and NUL-terminated. */
  char small[10];
  assert_int_equal(kl_jschema_error_json(&e, small, sizeof small), n);
  assert_int_equal(strlen(small), 9);
  assert_memory_equal(small, out, 9);
  assert_int_equal(kl_jschema_error_json(&e, NULL, 0), n);

  /* A 400 has no path or keyword. */
  e = BAD_JSON(s, "[");
  n = kl_jschema_error_json(&e, out, sizeof out);
  assert_string_equal(out, "{\"error\":\"request body could not be parsed as JSON\","
                           "\"message\":\"invalid JSON: unexpected end of input\",\"offset\":1}");
  kl_jschema_free(s);
}

typedef struct thr_arg {
  const kl_jschema *s;
  int failures;
} thr_arg;

static void *thr_main(void *p) {
  thr_arg *a = p;
  const char *ok = "{\"id\":7,\"tags\":[\"a\",\"b\"]}", *bad = "{\"id\":7,\"tags\":[\"a\",3]}";
  keel_json_node nodes[64];
  kl_jschema_error e;
  for (int i = 0; i < 2000; i++) {
    if (kl_jschema_validate(a->s, ok, strlen(ok), nodes, 64, 0, &e) != 0) a->failures++;
    if (kl_jschema_validate(a->s, bad, strlen(bad), nodes, 64, 0, &e) != -EINVAL ||
        strcmp(e.path, "/tags/1") != 0)
      a->failures++;
  }
  return NULL;
}

static void test_threads(void **state) {
  (void)state;
  kl_jschema *s = COMPILE("{\"required\":[\"id\"],\"properties\":{\"id\":{\"enum\":[7,8]},"
                          "\"tags\":{\"items\":{\"type\":\"string\"}}}}");
  pthread_t t[4];
  thr_arg a[4];
  for (int i = 0; i < 4; i++) {
    a[i] = (thr_arg){s, 0};
    assert_int_equal(pthread_create(&t[i], NULL, thr_main, &a[i]), 0);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(t[i], NULL);
    assert_int_equal(a[i].failures, 0);
  }
  kl_jschema_free(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_empty_and_boolean_schemas),
      cmocka_unit_test(test_type),
      cmocka_unit_test(test_required_and_properties),
      cmocka_unit_test(test_nested_paths_and_escaping),
      cmocka_unit_test(test_additional_properties),
      cmocka_unit_test(test_enum_and_const),
      cmocka_unit_test(test_numbers),
      cmocka_unit_test(test_strings),
      cmocka_unit_test(test_arrays),
      cmocka_unit_test(test_document_order),
      cmocka_unit_test(test_compile_errors),
      cmocka_unit_test(test_caps),
      cmocka_unit_test(test_document_errors),
      cmocka_unit_test(test_arena),
      cmocka_unit_test(test_error_json),
      cmocka_unit_test(test_threads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
