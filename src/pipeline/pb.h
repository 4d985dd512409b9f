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

/*
 * kl_pb_read: kl_pb_next with its common cases inline, for hot loops (the OTLP schema check
 * and splitter read tens of fields per record, most of them small). Same contract and same
 * results as kl_pb_next, errors included: it handles a one-byte key (field numbers 1..15)
 * followed by a varint of one or two bytes, a fixed-width value, or a length of one or two
 * bytes that fits the message, and leaves everything else (longer varints, larger field
 * numbers, anything malformed) to kl_pb_next from the same position. It advances r->p only
 * when it succeeds, so the fallback reads exactly what kl_pb_next alone would have read.
 */

/* Little-endian loads, written so that compilers turn them into single loads. */
static inline uint32_t kl_pb_le32_(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t kl_pb_le64_(const uint8_t *p) {
  return (uint64_t)kl_pb_le32_(p) | (uint64_t)kl_pb_le32_(p + 4) << 32;
}

static inline int kl_pb_read(kl_pb *r, kl_pb_field *f, kl_pb_error *err) {
  const uint8_t *p = r->p;
  size_t left = (size_t)(r->end - p);
  if (left == 0) return 0;
  unsigned key = p[0];
  /* key < 8 is field number 0 (an error); key >= 0x80 is a multi-byte key; both go slow. */
  if (key >= 8 && key < 0x80 && left >= 2) {
    f->num = key >> 3;
    f->wt = (uint8_t)(key & 7);
    f->v = 0;
    f->data = NULL;
    f->len = 0;
    switch (f->wt) {
    case KL_PB_LEN: {
      size_t len = p[1], hdr = 2;
      if (len >= 0x80) { /* two-byte length (up to 16383): records, bodies */
        if (left < 3 || p[2] >= 0x80) break;
        len = (len & 0x7f) | (size_t)p[2] << 7;
        hdr = 3;
      }
      if (len > left - hdr) break; /* beyond the message: kl_pb_next reports it */
      f->data = p + hdr;
      f->len = len;
      r->p = p + hdr + len;
      return 1;
    }
    case KL_PB_VARINT:
      if (p[1] < 0x80) {
        f->v = p[1];
        r->p = p + 2;
        return 1;
      }
      if (left >= 3 && p[2] < 0x80) {
        f->v = (uint64_t)(p[1] & 0x7f) | (uint64_t)p[2] << 7;
        r->p = p + 3;
        return 1;
      }
      break;
    case KL_PB_I64:
      if (left < 9) break;
      f->v = kl_pb_le64_(p + 1);
      r->p = p + 9;
      return 1;
    case KL_PB_I32:
      if (left < 5) break;
      f->v = kl_pb_le32_(p + 1);
      r->p = p + 5;
      return 1;
    default: break;
    }
  }
  /* Through a copy, so that `*f` need not live in memory in the caller's loop. */
  kl_pb_field slow;
  int rc = kl_pb_next(r, &slow, err);
  *f = slow;
  return rc;
}

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
