/* test_otlp_schema.c - unit tests for the OTLP descriptor tables and kl_otlp_check. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "pipeline/otlp_schema.h"

#include "pb_enc.h"


/* A logs request holding one record with the given (already encoded) body. */
static void logs_request(enc *out, const enc *rec) {
  enc sl = {0}, rl = {0};
  put_len(&sl, 2, rec->b, rec->n);
  put_len(&rl, 2, sl.b, sl.n);
  out->n = 0;
  put_len(out, 1, rl.b, rl.n);
}

static const kl_otlp_desc *const all[] = {
    &kl_otlp_logs_request,
    &kl_otlp_trace_request,
    &kl_otlp_metrics_request,
    &kl_otlp_logs_response,
    &kl_otlp_trace_response,
    &kl_otlp_metrics_response,
    &kl_otlp_resource_logs,
    &kl_otlp_resource_spans,
    &kl_otlp_resource_metrics,
    &kl_otlp_scope_logs,
    &kl_otlp_scope_spans,
    &kl_otlp_scope_metrics,
    &kl_otlp_resource,
    &kl_otlp_scope,
    &kl_otlp_any_value,
    &kl_otlp_key_value,
    &kl_otlp_array_value,
    &kl_otlp_kvlist,
    &kl_otlp_log_record,
    &kl_otlp_span,
    &kl_otlp_span_event,
    &kl_otlp_span_link,
    &kl_otlp_status,
    &kl_otlp_metric,
    &kl_otlp_gauge,
    &kl_otlp_sum,
    &kl_otlp_histogram,
    &kl_otlp_exp_histogram,
    &kl_otlp_summary,
    &kl_otlp_number_point,
    &kl_otlp_histogram_point,
    &kl_otlp_exp_histogram_point,
    &kl_otlp_summary_point,
    &kl_otlp_exp_buckets,
    &kl_otlp_quantile,
    &kl_otlp_exemplar,
    &kl_otlp_logs_partial,
    &kl_otlp_trace_partial,
    &kl_otlp_metrics_partial,
};

static void test_tables_consistent(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
    const kl_otlp_desc *d = all[i];
    assert_true(d->nfields >= 1 && d->nfields <= KL_OTLP_FIELDS_MAX);
    for (uint32_t k = 0; k < d->nfields; k++) {
      const kl_otlp_field *f = &d->fields[k];
      if (k) assert_true(f->num > d->fields[k - 1].num); /* number order */
      assert_non_null(f->json);
      assert_non_null(f->name);
      assert_true((f->kind == KL_OTLP_MESSAGE) == (f->msg != NULL));
      assert_true((f->kind == KL_OTLP_ID) == (f->id_len == 16 || f->id_len == 8));
      if (f->flags & KL_OTLP_PACKED) assert_true(kl_otlp_wire_type(f->kind) != KL_PB_LEN);
      assert_ptr_equal(kl_otlp_field_find(d, f->num), f);
    }
    /* numbers not in the table are unknown, through the index and beyond it */
    for (uint32_t num = 0; num < 2 * KL_OTLP_INDEX_LEN; num++) {
      int known = 0;
      for (uint32_t k = 0; k < d->nfields; k++) known |= d->fields[k].num == num;
      if (!known) assert_null(kl_otlp_field_find(d, num));
    }
    assert_null(kl_otlp_field_find(d, KL_PB_FIELD_MAX));
  }
  assert_ptr_equal(kl_otlp_request_desc(KL_SIG_TRACES), &kl_otlp_trace_request);
  assert_ptr_equal(kl_otlp_response_desc(KL_SIG_METRICS), &kl_otlp_metrics_response);
  assert_null(kl_otlp_request_desc(KL_SIG_COUNT));
  /* spot checks against opentelemetry-proto */
  assert_int_equal(kl_otlp_field_find(&kl_otlp_log_record, 12)->kind, KL_OTLP_STRING);
  assert_int_equal(kl_otlp_field_find(&kl_otlp_span, 16)->kind, KL_OTLP_FIXED32);
  assert_int_equal(kl_otlp_field_find(&kl_otlp_number_point, 6)->kind, KL_OTLP_SFIXED64);
  assert_int_equal(kl_otlp_field_find(&kl_otlp_exp_histogram_point, 6)->kind, KL_OTLP_SINT32);
  assert_string_equal(kl_otlp_field_find(&kl_otlp_metric, 10)->json, "exponentialHistogram");
  assert_null(kl_otlp_field_find(&kl_otlp_resource, 3)); /* entity_refs: unknown */
}

static void test_valid_and_unknown(void **state) {
  (void)state;
  enc rec = {0}, req = {0}, body = {0};
  put_fixed(&rec, 1, 1700000000000000000ull, 8);
  put_key(&rec, 2, KL_PB_VARINT);
  put_varint(&rec, 9);
  put_len(&body, 1, "h\xc3\xa9llo", 6);
  put_len(&rec, 5, body.b, body.n);
  put_fixed(&rec, 8, 1, 4);
  put_len(&rec, 9, "0123456789abcdef", 16);
  put_len(&rec, 10, "", 0);        /* empty id: allowed */
  put_key(&rec, 99, KL_PB_VARINT); /* unknown: skipped whatever its type */
  put_varint(&rec, 5);
  put_len(&rec, 12, "ev", 2);
  logs_request(&req, &rec);
  kl_pb_error err = {0, NULL};
  assert_int_equal(kl_otlp_check(&kl_otlp_logs_request, req.b, req.n, 1, &err), 0);
  assert_int_equal(kl_otlp_check(&kl_otlp_log_record, rec.b, rec.n, 4, &err), 0);
  assert_int_equal(kl_otlp_check(&kl_otlp_logs_request, NULL, 0, 1, &err), 0);
}

static void expect_bad(const kl_otlp_desc *d, const enc *e, const char *msg) {
  kl_pb_error err = {0, NULL};
  assert_int_equal(kl_otlp_check(d, e->b, e->n, 1, &err), -EBADMSG);
  assert_non_null(err.msg);
  assert_string_equal(err.msg, msg);
  assert_true(err.offset <= e->n);
}

static void test_errors(void **state) {
  (void)state;
  enc rec = {0}, req = {0};
  put_key(&rec, 1, KL_PB_VARINT); /* time_unix_nano is fixed64 */
  put_varint(&rec, 1);
  logs_request(&req, &rec);
  expect_bad(&kl_otlp_logs_request, &req, "wrong wire type for a known field");

  rec.n = 0;
  put_len(&rec, 9, "short", 5);
  logs_request(&req, &rec);
  expect_bad(&kl_otlp_logs_request, &req, "trace id is not 16 bytes");

  rec.n = 0;
  put_len(&rec, 10, "0123456789", 10);
  logs_request(&req, &rec);
  expect_bad(&kl_otlp_logs_request, &req, "span id is not 8 bytes");

  rec.n = 0;
  put_len(&rec, 3, "\xc0\x80", 2); /* overlong */
  logs_request(&req, &rec);
  expect_bad(&kl_otlp_logs_request, &req, "string is not UTF-8");

  /* strings checked a word at a time: a bad byte anywhere in a long ASCII run is found,
   * and multi-byte sequences anywhere are accepted */
  for (size_t len = 1; len <= 40; len++) {
    for (size_t at = 0; at < len; at++) {
      char str[48];
      memset(str, 'a', len);
      str[at] = (char)0xff;
      rec.n = 0;
      put_len(&rec, 3, str, len);
      logs_request(&req, &rec);
      expect_bad(&kl_otlp_logs_request, &req, "string is not UTF-8");
      if (at + 2 > len) continue;
      str[at] = (char)0xc3, str[at + 1] = (char)0xa9; /* é */
      rec.n = 0;
      put_len(&rec, 3, str, len);
      logs_request(&req, &rec);
      assert_int_equal(kl_otlp_check(&kl_otlp_logs_request, req.b, req.n, 1, NULL), 0);
    }
  }

  rec.n = 0;
  put_len(&rec, 2, "\x01", 1); /* severity_number is not repeated: no packed form */
  logs_request(&req, &rec);
  expect_bad(&kl_otlp_logs_request, &req, "wrong wire type for a known field");

  rec.n = 0;
  put_len(&rec, 5, "\x0a\x05", 2); /* body: a string running past its message */
  logs_request(&req, &rec);
  expect_bad(&kl_otlp_logs_request, &req, "length beyond the message");

  /* the offset is where the bad field's key starts */
  rec.n = 0;
  put_fixed(&rec, 1, 0, 8);
  put_fixed(&rec, 2, 0, 4);
  kl_pb_error err = {0, NULL};
  assert_int_equal(kl_otlp_check(&kl_otlp_log_record, rec.b, rec.n, 4, &err), -EBADMSG);
  assert_int_equal(err.offset, 9);
}

static void test_packed(void **state) {
  (void)state;
  enc pt = {0}, packed = {0};
  for (int i = 0; i < 3; i++)
    for (int k = 0; k < 8; k++)
      packed.b[packed.n++] = (uint8_t)i;
  put_len(&pt, 6, packed.b, packed.n); /* bucket_counts packed */
  put_fixed(&pt, 6, 7, 8);             /* and one more unpacked */
  put_len(&pt, 7, packed.b, 16);       /* explicit_bounds packed */
  kl_pb_error err = {0, NULL};
  assert_int_equal(kl_otlp_check(&kl_otlp_histogram_point, pt.b, pt.n, 7, &err), 0);
  put_len(&pt, 7, packed.b, 12); /* not a multiple of 8 */
  assert_int_equal(kl_otlp_check(&kl_otlp_histogram_point, pt.b, pt.n, 7, &err), -EBADMSG);
  assert_string_equal(err.msg, "packed field does not hold whole values");

  enc b = {0};
  put_len(&b, 2, "\x01\x96\x01\x00", 4); /* uint64 varints 1, 150, 0 */
  put_key(&b, 1, KL_PB_VARINT);
  put_varint(&b, 3); /* sint32 -2 */
  assert_int_equal(kl_otlp_check(&kl_otlp_exp_buckets, b.b, b.n, 8, &err), 0);
  put_len(&b, 2, "\x01\x96", 2); /* a varint cut short */
  assert_int_equal(kl_otlp_check(&kl_otlp_exp_buckets, b.b, b.n, 8, &err), -EBADMSG);
}

/* AnyValue arrays nest: n levels of AnyValue{array_value{values: ...}} around a string. */
static size_t nested(enc *out, int levels) {
  enc cur = {0}, tmp;
  put_len(&cur, 1, "x", 1); /* AnyValue{string_value} */
  for (int i = 0; i < levels; i++) {
    tmp.n = 0;
    put_len(&tmp, 1, cur.b, cur.n); /* ArrayValue.values */
    cur.n = 0;
    put_len(&cur, 5, tmp.b, tmp.n); /* AnyValue.array_value */
  }
  *out = cur;
  return cur.n;
}

static void test_depth(void **state) {
  (void)state;
  enc v;
  kl_pb_error err = {0, NULL};
  /* an AnyValue at depth d with k array levels holds messages down to depth d + 2k */
  nested(&v, 10);
  assert_int_equal(kl_otlp_check(&kl_otlp_any_value, v.b, v.n, KL_OTLP_DEPTH_MAX - 20, &err), 0);
  assert_int_equal(kl_otlp_check(&kl_otlp_any_value, v.b, v.n, KL_OTLP_DEPTH_MAX - 19, &err),
                   -EBADMSG);
  assert_string_equal(err.msg, "messages nested too deep");
  assert_int_equal(kl_otlp_check(&kl_otlp_any_value, v.b, v.n, KL_OTLP_DEPTH_MAX + 1, &err),
                   -EBADMSG);
}

static void test_check_sub_offsets(void **state) {
  (void)state;
  enc rec = {0}, req = {0};
  put_len(&rec, 9, "bad", 3);
  logs_request(&req, &rec);
  /* walk down to the record as a splitter would, then check it alone */
  kl_pb r, s1, s2;
  kl_pb_field f;
  kl_pb_init(&r, req.b, req.n);
  assert_int_equal(kl_pb_next(&r, &f, NULL), 1);
  kl_pb_sub(&r, &f, &s1);
  assert_int_equal(kl_pb_next(&s1, &f, NULL), 1);
  kl_pb_sub(&s1, &f, &s2);
  assert_int_equal(kl_pb_next(&s2, &f, NULL), 1);
  kl_pb_error err = {0, NULL};
  assert_int_equal(kl_otlp_check_sub(&kl_otlp_log_record, &s2, &f, 4, &err), -EBADMSG);
  assert_int_equal(err.offset, req.n - 3); /* the id's bytes, counted from the request */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tables_consistent),
      cmocka_unit_test(test_valid_and_unknown),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_packed),
      cmocka_unit_test(test_depth),
      cmocka_unit_test(test_check_sub_offsets),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
