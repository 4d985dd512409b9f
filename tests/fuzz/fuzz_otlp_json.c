/* fuzz_otlp_json.c - libFuzzer harness: OTLP/JSON transcoding round-trips canonically; any bytes as
 * protobuf are safe. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/otlp.h"
#include "pipeline/otlp_schema.h"

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_otlp_json: check failed at line %d: %s\n", __LINE__, #cond);           \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* JSON -> pb1 -> JSON -> pb2: pb2 == pb1, and pb1 passes the schema check. */
static void json_roundtrip(kl_signal sig, const char *json, size_t size, uint8_t *pb1, uint8_t *pb2,
                           char *js, size_t cap) {
  char err[160];
  size_t off = 0;
  long n = kl_otlp_from_json(sig, json, size, pb1, cap, err, sizeof err, &off);
  CHECK(n >= 0 || n == -EBADMSG || n == -ENOBUFS);
  if (n == -EBADMSG) CHECK(off <= size && memchr(err, '\0', sizeof err));
  if (n < 0) return;
  kl_pb_error perr = {0, NULL};
  CHECK(kl_otlp_check(kl_otlp_request_desc(sig), pb1, (size_t)n, 1, &perr) == 0);
  long j = kl_otlp_to_json(sig, pb1, (size_t)n, js, cap * 4);
  if (j == -ENOBUFS) return; /* bytes fields grow by 4/3, ids double, escapes sextuple */
  CHECK(j > 0);
  long m = kl_otlp_from_json(sig, js, (size_t)j, pb2, cap, err, sizeof err, &off);
  if (m < 0) fprintf(stderr, "second from_json: %ld %s at %zu: %.*s\n", m, err, off, (int)j, js);
  CHECK(m == n && memcmp(pb1, pb2, (size_t)n) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 1 << 16) return 0;
  /* JSON shrinks to protobuf, except a few cases (empty strings that are oneof members...) */
  size_t cap = 2 * size + 64;
  uint8_t *pb1 = malloc(cap), *pb2 = malloc(cap);
  char *js = malloc(cap * 4);
  CHECK(pb1 && pb2 && js);
  for (int s = 0; s < KL_SIG_COUNT; s++)
    json_roundtrip((kl_signal)s, (const char *)data, size, pb1, pb2, js, cap);
  /* The same bytes as protobuf: the check never fails badly, to_json never overruns. */
  for (int s = 0; s < KL_SIG_COUNT; s++) {
    kl_pb_error perr = {0, NULL};
    int rc = kl_otlp_check(kl_otlp_request_desc((kl_signal)s), data, size, 1, &perr);
    CHECK(rc == 0 || (rc == -EBADMSG && perr.msg && perr.offset <= size));
    size_t jcap = 8 * size + 64;
    char *out = malloc(jcap);
    CHECK(out);
    long j = kl_otlp_to_json((kl_signal)s, data, size, out, jcap);
    CHECK(j == -EBADMSG || j == -ENOBUFS || (j > 0 && (size_t)j <= jcap));
    if (rc) CHECK(j == -EBADMSG);
    free(out);
  }
  free(pb1);
  free(pb2);
  free(js);
  return 0;
}
