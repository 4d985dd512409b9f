/* test_pb.c - unit tests for the protobuf wire reader: every wire type, nesting, every error. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "obs/trace.h"
#include "pipeline/pb.h"

#include "pb_enc.h"


static void test_every_wire_type(void **state) {
  (void)state;
  enc inner = {0}, e = {0};
  put_key(&inner, 1, KL_PB_VARINT);
  put_varint(&inner, 150);
  put_len(&inner, 2, "hi", 2);
  put_key(&e, 1, KL_PB_VARINT);
  put_varint(&e, UINT64_MAX); /* -1 as int64: ten bytes */
  put_fixed(&e, 2, 0x0123456789abcdefull, 8);
  put_fixed(&e, 3, 0xdeadbeef, 4);
  put_len(&e, 4, inner.b, inner.n);
  put_key(&e, KL_PB_FIELD_MAX, KL_PB_VARINT);
  put_varint(&e, 1);
  put_key(&e, 5, KL_PB_VARINT);
  put_varint(&e, 3); /* sint64 -2 */
  double d = -12.75;
  uint64_t bits;
  memcpy(&bits, &d, sizeof bits);
  put_fixed(&e, 6, bits, 8);

  kl_pb r, sub;
  kl_pb_field f;
  kl_pb_init(&r, e.b, e.n);
  assert_int_equal(kl_pb_next(&r, &f, NULL), 1);
  assert_int_equal(f.num, 1);
  assert_int_equal(f.wt, KL_PB_VARINT);
  assert_int_equal(kl_pb_int64(&f), -1);
  assert_int_equal(kl_pb_next(&r, &f, NULL), 1);
  assert_true(f.num == 2 && f.wt == KL_PB_I64 && f.v == 0x0123456789abcdefull);
  assert_int_equal(kl_pb_next(&r, &f, NULL), 1);
  assert_true(f.num == 3 && f.wt == KL_PB_I32 && f.v == 0xdeadbeef);
  assert_int_equal(kl_pb_next(&r, &f, NULL), 1);
  assert_true(f.num == 4 && f.wt == KL_PB_LEN && f.len == inner.n);
  kl_pb_sub(&r, &f, &sub);
  assert_int_equal(kl_pb_next(&sub, &f, NULL), 1);
  assert_true(f.num == 1 && f.v == 150);
  assert_int_equal(kl_pb_next(&sub, &f, NULL), 1);
  assert_true(f.num == 2 && f.len == 2 && memcmp(f.data, "hi", 2) == 0);
  assert_int_equal(kl_pb_next(&sub, &f, NULL), 0);
  assert_int_equal(kl_pb_next(&r, &f, NULL), 1);
  assert_int_equal(f.num, KL_PB_FIELD_MAX);
  assert_int_equal(kl_pb_next(&r, &f, NULL), 1);
  assert_int_equal(kl_pb_sint64(&f), -2);
  assert_int_equal(kl_pb_next(&r, &f, NULL), 1);
  assert_true(kl_pb_double(&f) == -12.75);
  assert_int_equal(kl_pb_next(&r, &f, NULL), 0);
  assert_int_equal(kl_pb_next(&r, &f, NULL), 0); /* stays at the end */

  kl_pb_init(&r, NULL, 0);
  assert_int_equal(kl_pb_next(&r, &f, NULL), 0);
  /* the longest valid varint: ten bytes, the last holding bit 63 */
  kl_pb_init(&r, "\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", 11);
  assert_int_equal(kl_pb_next(&r, &f, NULL), 1);
  assert_true(f.v == UINT64_C(1) << 63);
}

/* Each bad input: the message and the offset of the error. */
static void expect_bad(const void *data, size_t n, const char *msg, size_t offset) {
  kl_pb r;
  kl_pb_field f;
  kl_pb_error err = {0, NULL};
  kl_pb_init(&r, data, n);
  int rc;
  while ((rc = kl_pb_next(&r, &f, &err)) == 1) {
  }
  assert_int_equal(rc, -EBADMSG);
  assert_string_equal(err.msg, msg);
  assert_int_equal(err.offset, offset);
}

static void test_errors(void **state) {
  (void)state;
  expect_bad("\x08", 1, "truncated varint", 1);
  expect_bad("\x08\x80", 2, "truncated varint", 1);
  expect_bad("\x80", 1, "truncated varint", 0);
  expect_bad("\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02", 11, "varint beyond 64 bits", 1);
  expect_bad("\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", 12, "varint beyond 64 bits", 1);
  expect_bad("\x00\x01", 2, "invalid field number", 0);
  expect_bad("\x08\x01\x80\x80\x80\x80\x20\x00", 8, "invalid field number", 2); /* 2^29 */
  expect_bad("\x0b", 1, "group wire type", 0);
  expect_bad("\x0c", 1, "group wire type", 0);
  expect_bad("\x0e", 1, "invalid wire type", 0);
  expect_bad("\x0f", 1, "invalid wire type", 0);
  expect_bad("\x0a\x05" "abcd", 6, "length beyond the message", 1);
  expect_bad("\x0a\xff\xff\xff\xff\x0f", 6, "length beyond the message", 1);
  expect_bad("\x09\x01\x02\x03\x04\x05\x06\x07", 8, "truncated fixed-width field", 1);
  expect_bad("\x0d\x01\x02\x03", 4, "truncated fixed-width field", 1);
  /* inside an embedded message: offsets count from the whole input */
  static const uint8_t nested[] = {0x12, 0x03, 0x0a, 0x05, 0x61};
  kl_pb r, sub;
  kl_pb_field f;
  kl_pb_error err;
  kl_pb_init(&r, nested, sizeof nested);
  assert_int_equal(kl_pb_next(&r, &f, &err), 1);
  kl_pb_sub(&r, &f, &sub);
  assert_int_equal(kl_pb_next(&sub, &f, &err), -EBADMSG);
  assert_string_equal(err.msg, "length beyond the message");
  assert_int_equal(err.offset, 3);
}

/* keel's own OTLP span encoder (obs/trace.c) read back by this reader: the two agree. */
static void test_reads_keels_spans(void **state) {
  (void)state;
  kl_trace_ctx ctx;
  const char *tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  assert_int_equal(kl_traceparent_parse(tp, strlen(tp), &ctx), 0);
  static kl_span s;
  kl_span_begin(&s, &ctx, NULL, NULL, 0, "GET /", 5, KL_SPAN_SERVER, 1000);
  kl_span_attr_int(&s, "http.response.status_code", 200);
  kl_span_end(&s, 2000, NULL); /* no queue: dropped, but the bytes are final */
  kl_pb r, sub;
  kl_pb_field f;
  kl_pb_init(&r, s.buf, s.len);
  int seen = 0;
  while (kl_pb_next(&r, &f, NULL) == 1) {
    if (f.num == 1) assert_true(f.len == 16 && memcmp(f.data, ctx.trace_id, 16) == 0), seen |= 1;
    if (f.num == 5) assert_true(f.len == 5 && memcmp(f.data, "GET /", 5) == 0), seen |= 2;
    if (f.num == 6) assert_true(f.wt == KL_PB_VARINT && f.v == KL_SPAN_SERVER), seen |= 4;
    if (f.num == 7) assert_true(f.wt == KL_PB_I64 && f.v == 1000), seen |= 8;
    if (f.num == 8) assert_true(f.wt == KL_PB_I64 && f.v == 2000), seen |= 16;
    if (f.num == 9) {
      kl_pb_sub(&r, &f, &sub);
      assert_int_equal(kl_pb_next(&sub, &f, NULL), 1);
      assert_true(f.num == 1 && f.len == 25 && memcmp(f.data, "http.response.status_code", 25) == 0);
      seen |= 32;
    }
  }
  assert_int_equal(r.p, r.end);
  assert_int_equal(seen, 63);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_wire_type),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_reads_keels_spans),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
