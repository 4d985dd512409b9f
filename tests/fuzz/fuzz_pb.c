/* fuzz_pb.c - libFuzzer harness: the protobuf reader stays in bounds, and a canonical re-encoding
 * of whatever it accepts reads back as the same fields, nested messages included. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/pb.h"

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_pb: check failed at line %d: %s\n", __LINE__, #cond);                  \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

#define MAX_DEPTH 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t put_varint(uint8_t *o, uint64_t v) {
  size_t n = 0;
  do {
    uint8_t c = v & 0x7f;
    v >>= 7;
    o[n++] = (uint8_t)(c | (v ? 0x80 : 0));
  } while (v);
  return n;
}

/* Re-encodes the message in [r) canonically into `out`; returns its length, or -1 if invalid. */
static long reencode(kl_pb *r, uint8_t *out) {
  kl_pb_field f;
  long n = 0;
  int rc;
  while ((rc = kl_pb_next(r, &f, NULL)) == 1) {
    CHECK(f.num >= 1 && f.num <= KL_PB_FIELD_MAX);
    CHECK(r->p <= r->end);
    n += (long)put_varint(out + n, (uint64_t)f.num << 3 | f.wt);
    if (f.wt == KL_PB_VARINT) {
      n += (long)put_varint(out + n, f.v);
    } else if (f.wt == KL_PB_I64 || f.wt == KL_PB_I32) {
      for (unsigned i = 0; i < (f.wt == KL_PB_I64 ? 8u : 4u); i++) out[n++] = (uint8_t)(f.v >> (8 * i));
    } else {
      CHECK(f.wt == KL_PB_LEN && f.data >= r->base && f.data + f.len <= r->end);
      n += (long)put_varint(out + n, f.len); /* bytes copied as they are: no nesting guess */
      memcpy(out + n, f.data, f.len);
      n += (long)f.len;
    }
  }
  CHECK(rc == 0 || rc == -EBADMSG);
  return rc == 0 ? n : -1;
}

/* Walks every LEN field as if it were a message (as a schema-less reader must be able to). */
static void walk(kl_pb *r, unsigned depth) {
  kl_pb_field f;
  kl_pb_error err = {0, NULL};
  int rc;
  while ((rc = kl_pb_next(r, &f, &err)) == 1) {
    if (f.wt == KL_PB_LEN && depth < MAX_DEPTH) {
      kl_pb sub;
      kl_pb_sub(r, &f, &sub);
      CHECK(sub.p >= r->base && sub.end <= r->p);
      walk(&sub, depth + 1);
    }
  }
  CHECK(rc == 0 || (rc == -EBADMSG && err.msg && err.offset <= (size_t)(r->end - r->base)));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  kl_pb r;
  kl_pb_init(&r, data, size);
  walk(&r, 0);
  /* A canonical encoding is never longer than twice the input plus a little (short varints). */
  uint8_t *a = malloc(2 * size + 16), *b = malloc(2 * size + 16);
  CHECK(a && b);
  kl_pb_init(&r, data, size);
  long n = reencode(&r, a);
  if (n >= 0) {
    kl_pb_init(&r, a, (size_t)n);
    long m = reencode(&r, b);
    CHECK(m == n && memcmp(a, b, (size_t)n) == 0); /* canonical is a fixed point */
  }
  free(a);
  free(b);
  return 0;
}
