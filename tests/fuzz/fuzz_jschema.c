/* fuzz_jschema.c - libFuzzer harness: schema NUL document -> kl_jschema compile, validate, error
 * body. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/jschema.h"
#include "keel/json.h"

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_jschema: check failed at line %d: %s\n", __LINE__, #cond);             \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The error is well formed and its JSON body parses. */
static void check_error(const kl_jschema_error *e, int rc, size_t len) {
  CHECK(e->status == 400 || e->status == 422);
  CHECK((e->status == 422) == (e->keyword != NULL));
  CHECK(rc == -EINVAL || (rc == -ENOBUFS && e->status == 400));
  CHECK(memchr(e->path, '\0', sizeof e->path) != NULL);
  CHECK(memchr(e->message, '\0', sizeof e->message) != NULL);
  CHECK(e->status == 400 || e->path[0] == '\0' || e->path[0] == '/');
  CHECK(e->offset >= 0 && (size_t)e->offset <= len);
  size_t need = kl_jschema_error_json(e, NULL, 0);
  char *body = malloc(need + 1);
  CHECK(body);
  CHECK(kl_jschema_error_json(e, body, need + 1) == need && strlen(body) == need);
  keel_json_node nodes[16];
  CHECK(keel_json_parse(body, need, nodes, 16, 2, NULL) > 0);
  /* A cut body is a prefix, NUL-terminated. */
  char small[24];
  CHECK(kl_jschema_error_json(e, small, sizeof small) == need);
  CHECK(strlen(small) == (need < sizeof small ? need : sizeof small - 1));
  CHECK(memcmp(small, body, strlen(small)) == 0);
  free(body);
}

static void run(const kl_jschema *s, const char *doc, size_t len, unsigned knob) {
  size_t cap = KEEL_JSON_NODES_FOR(len);
  keel_json_node *nodes = malloc(cap * sizeof *nodes);
  CHECK(nodes);
  kl_jschema_error e, e2;
  int rc = kl_jschema_validate(s, doc, len, nodes, cap, KEEL_JSON_DEPTH_LIMIT, &e);
  CHECK(rc == 0 || rc == -EINVAL);
  if (rc) check_error(&e, rc, len);
  /* Deterministic. */
  int rc2 = kl_jschema_validate(s, doc, len, nodes, cap, KEEL_JSON_DEPTH_LIMIT, &e2);
  CHECK(rc2 == rc);
  if (rc) {
    CHECK(e2.status == e.status && e2.offset == e.offset && e2.keyword == e.keyword);
    CHECK(strcmp(e2.path, e.path) == 0 && strcmp(e2.message, e.message) == 0);
  }
  /* Small caps: a document that still fits gets the same answer. */
  size_t small = (knob & 15) + 1;
  unsigned depth = (knob >> 4 & 7) + 1;
  rc2 = kl_jschema_validate(s, doc, len, nodes, small < cap ? small : cap, depth, &e2);
  CHECK(rc2 == 0 || rc2 == -EINVAL || rc2 == -ENOBUFS);
  if (rc2) check_error(&e2, rc2, len);
  if (rc2 == 0) CHECK(rc == 0);
  if (rc2 == -EINVAL && e2.status == 422) CHECK(rc == -EINVAL && e.status == 422);
  free(nodes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *in = (const char *)data;
  const char *nul = memchr(in, '\0', size);
  size_t slen = nul ? (size_t)(nul - in) : size;
  const char *doc = nul ? nul + 1 : in;
  size_t dlen = nul ? size - slen - 1 : size;
  unsigned knob = size ? data[size - 1] : 0;

  kl_jschema *s = NULL;
  char err[160];
  memset(err, 'x', sizeof err);
  int rc = kl_jschema_compile(in, slen, &s, err, sizeof err);
  CHECK(rc == 0 || rc == -EINVAL);
  CHECK(memchr(err, '\0', sizeof err) != NULL);
  if (rc) {
    CHECK(s == NULL && err[0] != '\0');
    return 0;
  }
  CHECK(s && kl_jschema_size(s) > 0);
  run(s, doc, dlen, knob);
  if (nul) run(s, in, slen, knob); /* the schema text as a document too */
  kl_jschema_free(s);
  return 0;
}
