/* pb.c - zero-copy, bounds-checked protobuf wire-format reader (keel's own, for OTLP). */
#include "pipeline/pb.h"

#include <errno.h>
#include <string.h>

void kl_pb_init(kl_pb *r, const void *data, size_t len) {
  r->base = r->p = data ? (const uint8_t *)data : (const uint8_t *)"";
  r->end = r->p + (data ? len : 0);
}

void kl_pb_sub(const kl_pb *r, const kl_pb_field *f, kl_pb *sub) {
  sub->base = r->base;
  sub->p = f->data;
  sub->end = f->data + f->len;
}

static int fail(const kl_pb *r, const uint8_t *at, const char *msg, kl_pb_error *err) {
  if (err) {
    err->offset = (size_t)(at - r->base);
    err->msg = msg;
  }
  return -EBADMSG;
}

/*
 * Reads a varint at r->p: 0, or -EBADMSG when truncated or when its tenth byte holds more
 * than the 64th bit (which also refuses varints longer than ten bytes).
 */
static int varint(kl_pb *r, uint64_t *out, kl_pb_error *err) {
  /* Most varints (keys, lengths, small values) are one byte: no loop for them. */
  if (r->p != r->end && *r->p < 0x80) {
    *out = *r->p++;
    return 0;
  }
  const uint8_t *start = r->p;
  uint64_t v = 0;
  for (unsigned i = 0;; i++) {
    if (r->p == r->end) return fail(r, start, "truncated varint", err);
    uint8_t b = *r->p++;
    if (i == 9 && b > 1) return fail(r, start, "varint beyond 64 bits", err);
    v |= (uint64_t)(b & 0x7f) << (7 * i);
    if (!(b & 0x80)) {
      *out = v;
      return 0;
    }
  }
}

int kl_pb_next(kl_pb *r, kl_pb_field *f, kl_pb_error *err) {
  if (r->p == r->end) return 0;
  const uint8_t *start = r->p;
  uint64_t key;
  if (varint(r, &key, err)) return -EBADMSG;
  uint64_t num = key >> 3;
  f->wt = (uint8_t)(key & 7);
  if (num == 0 || num > KL_PB_FIELD_MAX) return fail(r, start, "invalid field number", err);
  f->num = (uint32_t)num;
  f->v = 0;
  f->data = NULL;
  f->len = 0;
  switch (f->wt) {
  case KL_PB_VARINT:
    return varint(r, &f->v, err) ? -EBADMSG : 1;
  case KL_PB_I64:
  case KL_PB_I32: {
    size_t n = f->wt == KL_PB_I64 ? 8 : 4;
    if ((size_t)(r->end - r->p) < n) return fail(r, r->p, "truncated fixed-width field", err);
    for (size_t i = 0; i < n; i++) f->v |= (uint64_t)r->p[i] << (8 * i);
    r->p += n;
    return 1;
  }
  case KL_PB_LEN: {
    const uint8_t *at = r->p;
    uint64_t len;
    if (varint(r, &len, err)) return -EBADMSG;
    if (len > (uint64_t)(r->end - r->p)) return fail(r, at, "length beyond the message", err);
    f->data = r->p;
    f->len = (size_t)len;
    r->p += len;
    return 1;
  }
  default:
    return fail(r, start, f->wt == 3 || f->wt == 4 ? "group wire type" : "invalid wire type",
                err);
  }
}

double kl_pb_double(const kl_pb_field *f) {
  double d;
  memcpy(&d, &f->v, sizeof d);
  return d;
}
