/* pb_enc.h - a tiny protobuf encoder for the unit tests (sub-messages are built inside out). */
#ifndef KEEL_TESTS_PB_ENC_H
#define KEEL_TESTS_PB_ENC_H

/* Include after <cmocka.h> and "pipeline/pb.h". Written for the tests, so that what keel's
 * reader decodes is not produced by keel's own code. */

/** A message being written: at most 8 KiB. */
typedef struct enc {
  uint8_t b[8192];
  size_t n;
} enc;

static inline void put_varint(enc *e, uint64_t v) {
  do {
    uint8_t c = v & 0x7f;
    v >>= 7;
    e->b[e->n++] = (uint8_t)(c | (v ? 0x80 : 0));
  } while (v);
}

static inline void put_key(enc *e, uint32_t num, unsigned wt) {
  put_varint(e, (uint64_t)num << 3 | wt);
}

static inline void put_len(enc *e, uint32_t num, const void *p, size_t n) {
  assert_true(e->n + n + 16 <= sizeof e->b);
  put_key(e, num, KL_PB_LEN);
  put_varint(e, n);
  if (n) memcpy(e->b + e->n, p, n);
  e->n += n;
}

static inline void put_fixed(enc *e, uint32_t num, uint64_t v, unsigned bytes) {
  put_key(e, num, bytes == 8 ? KL_PB_I64 : KL_PB_I32);
  for (unsigned i = 0; i < bytes; i++) e->b[e->n++] = (uint8_t)(v >> (8 * i));
}

#endif
