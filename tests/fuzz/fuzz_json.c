/* fuzz_json.c - libFuzzer harness: JSON parse, write/re-parse round trip, unescape and quote. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/json.h"

#define LIM KEEL_JSON_DEPTH_LIMIT

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_json: check failed at line %d: %s\n", __LINE__, #cond);                \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Same structure and scalar texts in two parses of different sources. */
static int same_nodes(const char *a_src, const keel_json_node *a, const char *b_src,
                      const keel_json_node *b, long n) {
  for (long i = 0; i < n; i++) {
    if (a[i].type != b[i].type || a[i].len != b[i].len || a[i].next != b[i].next) return 0;
    if (a[i].type == KEEL_JSON_NUMBER || a[i].type == KEEL_JSON_STRING) {
      if (memcmp(a_src + a[i].off, b_src + b[i].off, a[i].len) != 0) return 0;
    }
  }
  return 1;
}

/* Quotes `s`, checks the result parses as one string; returns its decoded form's length or -1. */
static long quote_and_reparse(const char *s, size_t len, char *dec_out) {
  size_t need = keel_json_quote(s, len, NULL, 0);
  CHECK(need >= len + 2 && need <= len * 6 + 2);
  char *q = malloc(need);
  CHECK(q);
  CHECK(keel_json_quote(s, len, q, need) == need);
  keel_json_node n[2];
  keel_json_error e;
  long rc = keel_json_parse(q, need, n, 2, LIM, &e);
  CHECK(rc == 1 && n[0].type == KEEL_JSON_STRING && n[0].off == 1 && n[0].len == need - 2);
  long u = -1;
  if (dec_out) {
    u = keel_json_unescape(q + 1, need - 2, dec_out, need - 2);
    CHECK(u >= 0); /* quote never writes a lone surrogate */
  }
  free(q);
  return u;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *src = (const char *)data;
  size_t cap = KEEL_JSON_NODES_FOR(size);
  keel_json_node *a = malloc(cap * sizeof *a);
  keel_json_node *b = malloc(cap * sizeof *b);
  CHECK(a && b);
  keel_json_error e = {SIZE_MAX, NULL};

  /* Any bytes at all quote to a valid JSON string. */
  quote_and_reparse(src, size, NULL);

  long rc = keel_json_parse(src, size, a, cap, LIM, &e);
  if (rc < 0) {
    /* NODES_FOR always suffices: the only failure is invalid input, with a place and a reason. */
    CHECK(rc == -EINVAL);
    CHECK(e.msg != NULL && e.offset <= size);
    goto out;
  }
  CHECK(rc > 0 && (size_t)rc <= cap && a[0].next == (uint32_t)rc);

  /* One node too few: -ENOBUFS. */
  CHECK(keel_json_parse(src, size, b, (size_t)rc - 1, LIM, &e) == -ENOBUFS);

  /* A smaller depth limit: the same result or "nesting too deep". */
  unsigned md = (unsigned)(size & 7);
  long r3 = keel_json_parse(src, size, b, cap, md, &e);
  CHECK(r3 == rc || (r3 == -EINVAL && strcmp(e.msg, "nesting too deep") == 0));

  /* Write: never longer than the input, and it parses back to the same nodes. */
  char *out = malloc(size);
  char *out2 = malloc(size);
  CHECK(out && out2);
  size_t w = keel_json_write(src, a, (size_t)rc, out, size);
  CHECK(w > 0 && w <= size);
  CHECK(keel_json_write(src, a, (size_t)rc, out2, w - 1) == 0);
  long rc2 = keel_json_parse(out, w, b, cap, LIM, &e);
  CHECK(rc2 == rc);
  CHECK(same_nodes(src, a, out, b, rc));
  /* Compact output is a fixed point. */
  CHECK(keel_json_write(out, b, (size_t)rc2, out2, w) == w);
  CHECK(memcmp(out, out2, w) == 0);

  /* Every string: unescape (only a lone surrogate may fail), quote, parse, unescape again. */
  for (long i = 0; i < rc; i++) {
    if (a[i].type != KEEL_JSON_STRING) continue;
    size_t len = a[i].len;
    char *dec = malloc(len + 1);
    char *dec2 = malloc(len * 6 + 3);
    CHECK(dec && dec2);
    long u = keel_json_unescape(src + a[i].off, len, dec, len);
    CHECK(u == -EINVAL || (u >= 0 && (size_t)u <= len));
    if (u >= 0) {
      long u2 = quote_and_reparse(dec, (size_t)u, dec2);
      CHECK(u2 == u && memcmp(dec, dec2, (size_t)u) == 0);
    }
    free(dec2);
    free(dec);
  }
  free(out2);
  free(out);
out:
  free(b);
  free(a);
  return 0;
}
