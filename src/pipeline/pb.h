/* pb.h - zero-copy, bounds-checked protobuf wire-format reader (keel's own, for OTLP). */
#ifndef KEEL_PIPELINE_PB_H
#define KEEL_PIPELINE_PB_H

#include <stddef.h>
#include <stdint.h>

/*
 * A reader walks one message's fields in order without copying: length-
 * delimited fields are views into the input. Every length is checked against
 * the bytes that remain, varints longer than 10 bytes or beyond 64 bits are
 * refused, and so are the deprecated group wire types (3, 4), the undefined
 * ones (6, 7) and field number 0. Schema rules (which wire type a known field
 * must have, how deep messages may nest) belong to the caller, which gets the
 * field's number and wire type and opens sub-readers with kl_pb_sub().
 * Any thread; no allocation.
 */

/** Wire types. */
enum { KL_PB_VARINT = 0, KL_PB_I64 = 1, KL_PB_LEN = 2, KL_PB_I32 = 5 };

/** The largest field number protobuf allows (2^29 - 1). */
#define KL_PB_FIELD_MAX 536870911u

/** A reader over [p, end); `base` is where the whole input starts, for error offsets. */
typedef struct kl_pb {
  const uint8_t *p, *end, *base;
} kl_pb;

/** One field. For VARINT, I64 and I32 `v` holds the value; for LEN, `data`/`len`. */
typedef struct kl_pb_field {
  uint32_t num;
  uint8_t wt;
  uint64_t v;
  const uint8_t *data;
  size_t len;
} kl_pb_field;

/** Why reading stopped (kl_pb_next returned -EBADMSG); static strings. */
typedef struct kl_pb_error {
  size_t offset;   /**< from the start of the whole input */
  const char *msg; /**< e.g. "truncated varint" */
} kl_pb_error;

/** Starts a reader over `len` bytes at `data`. */
void kl_pb_init(kl_pb *r, const void *data, size_t len);

/**
 * Reads the next field into `f`: 1, or 0 at the end of the message, or
 * -EBADMSG with `err` (may be NULL) saying what and where. After an error the
 * reader is not to be used again.
 */
int kl_pb_next(kl_pb *r, kl_pb_field *f, kl_pb_error *err);

/** A reader over a LEN field's bytes (an embedded message), sharing the input's base. */
void kl_pb_sub(const kl_pb *r, const kl_pb_field *f, kl_pb *sub);

/** A varint field's value as a signed 64-bit integer (int64 encoding, not zigzag). */
static inline int64_t kl_pb_int64(const kl_pb_field *f) {
  return (int64_t)f->v;
}

/** A zigzag-encoded (sint32/sint64) varint's value. */
static inline int64_t kl_pb_sint64(const kl_pb_field *f) {
  return (int64_t)(f->v >> 1) ^ -(int64_t)(f->v & 1);
}

/** An I64 field's value as a double. */
double kl_pb_double(const kl_pb_field *f);

#endif
