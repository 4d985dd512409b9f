/* test_otlp_json.c - unit tests for OTLP/JSON <-> protobuf transcoding (kl_otlp_from/to_json). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pipeline/otlp.h"
#include "pipeline/otlp_schema.h"

static uint8_t pb[65536], pb2[65536];
static char js[65536];

/* JSON -> pb -> JSON must give `want` (NULL: the input itself); pb must survive a second trip. */
static void roundtrip(kl_signal sig, const char *in, const char *want) {
  char err[200];
  size_t off = 0;
  long n = kl_otlp_from_json(sig, in, strlen(in), pb, sizeof pb, err, sizeof err, &off);
  if (n < 0) fail_msg("from_json: %ld %s at %zu", n, err, off);
  kl_pb_error perr = {0, NULL};
  assert_int_equal(kl_otlp_check(kl_otlp_request_desc(sig), pb, (size_t)n, 1, &perr), 0);
  long j = kl_otlp_to_json(sig, pb, (size_t)n, js, sizeof js - 1);
  assert_true(j > 0);
  js[j] = '\0';
  assert_string_equal(js, want ? want : in);
  long m = kl_otlp_from_json(sig, js, (size_t)j, pb2, sizeof pb2, err, sizeof err, &off);
  assert_int_equal(m, n);
  assert_memory_equal(pb, pb2, (size_t)n);
}

static void expect_error(kl_signal sig, const char *in, const char *msg, size_t offset) {
  char err[200];
  size_t off = 0;
  long n = kl_otlp_from_json(sig, in, strlen(in), pb, sizeof pb, err, sizeof err, &off);
  assert_int_equal(n, -EBADMSG);
  assert_string_equal(err, msg);
  if (offset != (size_t)-1) assert_int_equal(off, offset);
}

static const char logs_json[] =
    "{\"resourceLogs\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\",\"value\":{"
    "\"stringValue\":\"checkout\"}}],\"droppedAttributesCount\":1},\"scopeLogs\":[{\"scope\":{"
    "\"name\":\"lib\",\"version\":\"1.2\"},\"logRecords\":[{\"timeUnixNano\":"
    "\"1700000000000000001\",\"severityNumber\":9,\"severityText\":\"INFO\",\"body\":{"
    "\"stringValue\":\"h\xc3\xa9llo \\\"w\\\"\\n\"},\"attributes\":[{\"key\":\"n\",\"value\":{"
    "\"intValue\":\"-42\"}}],\"flags\":1,\"traceId\":\"5b8efff798038103d269b633813fc60c\","
    "\"spanId\":\"eee19b7ec3c1b174\",\"observedTimeUnixNano\":\"18446744073709551615\","
    "\"eventName\":\"app.start\"}],\"schemaUrl\":\"https://opentelemetry.io/schemas/1.21.0\"}],"
    "\"schemaUrl\":\"s\"}]}";

static void test_logs_roundtrip(void **state) {
  (void)state;
  roundtrip(KL_SIG_LOGS, logs_json, NULL);
  roundtrip(KL_SIG_LOGS, "{}", NULL);
  roundtrip(KL_SIG_LOGS, "{\"resourceLogs\":[{}]}", NULL);
  /* the protobuf bytes of a small record, field by field */
  char err[100];
  size_t off;
  static const char small[] = "{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":[{"
                              "\"severityNumber\":9,\"timeUnixNano\":\"1\"}]}]}]}";
  long n =
      kl_otlp_from_json(KL_SIG_LOGS, small, strlen(small), pb, sizeof pb, err, sizeof err, &off);
  static const uint8_t want[] = {0x0a, 0x0f, 0x12, 0x0d, 0x12, 0x0b, 0x09, 1, 0,
                                 0,    0,    0,    0,    0,    0,    0x10, 9};
  assert_int_equal(n, sizeof want);
  assert_memory_equal(pb, want, sizeof want);
}

static void test_anyvalue_kinds(void **state) {
  (void)state;
  roundtrip(
      KL_SIG_LOGS,
      "{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":[{\"body\":{\"kvlistValue\":{"
      "\"values\":[{\"key\":\"s\",\"value\":{\"stringValue\":\"\"}},{\"key\":\"b\",\"value\":"
      "{\"boolValue\":false}},{\"key\":\"t\",\"value\":{\"boolValue\":true}},{\"key\":\"i\","
      "\"value\":{\"intValue\":\"0\"}},{\"key\":\"d\",\"value\":{\"doubleValue\":0}},{\"key\":"
      "\"d2\",\"value\":{\"doubleValue\":-1.5e-300}},{\"key\":\"nan\",\"value\":{"
      "\"doubleValue\":\"NaN\"}},{\"key\":\"inf\",\"value\":{\"doubleValue\":\"-Infinity\"}},"
      "{\"key\":\"by\",\"value\":{\"bytesValue\":\"AAEC/w==\"}},{\"key\":\"a\",\"value\":{"
      "\"arrayValue\":{\"values\":[{\"intValue\":\"1\"},{\"arrayValue\":{\"values\":[{"
      "\"kvlistValue\":{\"values\":[{\"key\":\"deep\",\"value\":{\"doubleValue\":0.1}}]}}]}},"
      "{}]}}},{\"key\":\"e\",\"value\":{\"kvlistValue\":{}}},{\"key\":\"none\"}]}}}]}]}]}",
      NULL);
  /* numbers as numbers, URL-safe and unpadded base64, null as absent */
  roundtrip(KL_SIG_LOGS,
            "{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":[{\"timeUnixNano\":12,"
            "\"body\":{\"bytesValue\":\"-_8\"},\"attributes\":[{\"key\":\"x\",\"value\":{"
            "\"intValue\":-7,\"stringValue\":null}}],\"traceId\":null}]}]}]}",
            "{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":[{\"timeUnixNano\":\"12\","
            "\"body\":{\"bytesValue\":\"+/8=\"},\"attributes\":[{\"key\":\"x\",\"value\":{"
            "\"intValue\":\"-7\"}}]}]}]}]}");
}

static void test_snake_case_and_defaults(void **state) {
  (void)state;
  roundtrip(KL_SIG_LOGS,
            "{\"resource_logs\":[{\"scope_logs\":[{\"log_records\":[{\"time_unix_nano\":\"5\","
            "\"severity_number\":\"SEVERITY_NUMBER_WARN\",\"severity_text\":\"\","
            "\"dropped_attributes_count\":0,\"trace_id\":\"\",\"span_id\":\"EEE19B7EC3C1B174\","
            "\"unknownKey\":{\"deep\":[1,2,{\"x\":null}]},\"flags\":0}],\"schema_url\":\"\"}]}]}",
            "{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":[{\"timeUnixNano\":\"5\","
            "\"severityNumber\":13,\"spanId\":\"eee19b7ec3c1b174\"}]}]}]}");
}

static const char trace_json[] =
    "{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\",\"value\":{"
    "\"stringValue\":\"api\"}}]},\"scopeSpans\":[{\"scope\":{\"name\":\"keel\"},\"spans\":[{"
    "\"traceId\":\"5b8efff798038103d269b633813fc60c\",\"spanId\":\"eee19b7ec3c1b174\","
    "\"traceState\":\"a=b\",\"parentSpanId\":\"0102030405060708\",\"name\":\"GET /\",\"kind\":2,"
    "\"startTimeUnixNano\":\"1544712660000000000\",\"endTimeUnixNano\":\"1544712661000000000\","
    "\"attributes\":[{\"key\":\"http.status_code\",\"value\":{\"intValue\":\"200\"}}],"
    "\"droppedAttributesCount\":1,\"events\":[{\"timeUnixNano\":\"1544712660500000000\",\"name\":"
    "\"ev\",\"attributes\":[{\"key\":\"k\",\"value\":{\"boolValue\":true}}]}],"
    "\"droppedEventsCount\":2,\"links\":[{\"traceId\":\"00000000000000000000000000000001\","
    "\"spanId\":\"0000000000000002\",\"traceState\":\"x=y\",\"droppedAttributesCount\":3,"
    "\"flags\":256}],\"droppedLinksCount\":4,\"status\":{\"message\":\"boom\",\"code\":2},"
    "\"flags\":769}],\"schemaUrl\":\"u\"}]}]}";

static void test_trace_roundtrip(void **state) {
  (void)state;
  roundtrip(KL_SIG_TRACES, trace_json, NULL);
  roundtrip(KL_SIG_TRACES,
            "{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"kind\":\"SPAN_KIND_CLIENT\","
            "\"status\":{\"code\":\"STATUS_CODE_OK\"}}]}]}]}",
            "{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"kind\":3,"
            "\"status\":{\"code\":1}}]}]}]}");
}

static const char metrics_json[] =
    "{\"resourceMetrics\":[{\"resource\":{},\"scopeMetrics\":[{\"metrics\":["
    "{\"name\":\"g\",\"description\":\"a gauge\",\"unit\":\"1\",\"gauge\":{\"dataPoints\":[{"
    "\"startTimeUnixNano\":\"1\",\"timeUnixNano\":\"2\",\"asDouble\":0.5,\"exemplars\":[{"
    "\"timeUnixNano\":\"3\",\"spanId\":\"0000000000000002\",\"traceId\":"
    "\"00000000000000000000000000000001\",\"asInt\":\"-4\",\"filteredAttributes\":[{\"key\":\"f\","
    "\"value\":{"
    "\"stringValue\":\"v\"}}]}],\"attributes\":[{\"key\":\"host\",\"value\":{\"stringValue\":"
    "\"h\"}}],\"flags\":1},{\"asInt\":\"0\"}]},\"metadata\":[{\"key\":\"m\",\"value\":{"
    "\"stringValue\":\"x\"}}]},"
    "{\"name\":\"s\",\"sum\":{\"dataPoints\":[{\"asInt\":\"9223372036854775807\"}],"
    "\"aggregationTemporality\":2,\"isMonotonic\":true}},"
    "{\"name\":\"h\",\"histogram\":{\"dataPoints\":[{\"count\":\"6\",\"sum\":0,"
    "\"bucketCounts\":[\"1\",\"0\",\"5\"],\"explicitBounds\":[0.5,10],\"exemplars\":[{"
    "\"asDouble\":\"Infinity\"}],\"min\":-1,\"max\":12.25}],\"aggregationTemporality\":1}},"
    "{\"name\":\"e\",\"exponentialHistogram\":{\"dataPoints\":[{\"count\":\"3\",\"sum\":1.5,"
    "\"scale\":-3,\"zeroCount\":\"1\",\"positive\":{\"offset\":-2,\"bucketCounts\":[\"1\","
    "\"18446744073709551615\"]},\"negative\":{},\"zeroThreshold\":1e-09}],"
    "\"aggregationTemporality\":2}},"
    "{\"name\":\"q\",\"summary\":{\"dataPoints\":[{\"count\":\"10\",\"sum\":55,"
    "\"quantileValues\":[{\"quantile\":0.5,\"value\":5},{\"value\":1},{\"quantile\":1,"
    "\"value\":10}]}]}}]}]}]}";

static void test_metrics_roundtrip(void **state) {
  (void)state;
  roundtrip(KL_SIG_METRICS, metrics_json, NULL);
  /* 64-bit integers as JSON numbers, integral doubles for integers */
  roundtrip(KL_SIG_METRICS,
            "{\"resourceMetrics\":[{\"scopeMetrics\":[{\"metrics\":[{\"histogram\":{"
            "\"dataPoints\":[{\"count\":1e2,\"bucketCounts\":[18446744073709551615,2.0],"
            "\"explicitBounds\":[\"1.5\",\"NaN\"]}]}}]}]}]}",
            "{\"resourceMetrics\":[{\"scopeMetrics\":[{\"metrics\":[{\"histogram\":{"
            "\"dataPoints\":[{\"count\":\"100\",\"bucketCounts\":[\"18446744073709551615\",\"2\"],"
            "\"explicitBounds\":[1.5,\"NaN\"]}]}}]}]}]}");
}

static void test_errors_with_paths(void **state) {
  (void)state;
  expect_error(KL_SIG_LOGS,
               "{\"resourceLogs\":[{\"scopeLogs\":[{},{\"logRecords\":[{},{},{},{\"timeUnixNano\":"
               "true}]}]}]}",
               "resourceLogs[0].scopeLogs[1].logRecords[3].timeUnixNano: expected an integer",
               (size_t)-1);
  expect_error(KL_SIG_LOGS, "{\"resourceLogs\":{}}", "resourceLogs: expected an array", 16);
  expect_error(KL_SIG_LOGS, "[]", "expected an object", 0);
  expect_error(KL_SIG_LOGS, "{\"resourceLogs\":[1]}", "resourceLogs[0]: expected an object", 17);
  expect_error(KL_SIG_LOGS, "{\"resourceLogs\":[null]}", "resourceLogs[0]: expected an object", 17);
  expect_error(KL_SIG_LOGS, "{\"resourceLogs\":[{\"schemaUrl\":5}]}",
               "resourceLogs[0].schemaUrl: expected a string", 30);
  expect_error(KL_SIG_TRACES,
               "{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"kind\":1.5}]}]}]}",
               "resourceSpans[0].scopeSpans[0].spans[0].kind: expected an integer", (size_t)-1);
  expect_error(
      KL_SIG_TRACES,
      "{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"kind\":\"SPAN_KIND_NOPE\"}]}]}]}",
      "resourceSpans[0].scopeSpans[0].spans[0].kind: expected an integer", (size_t)-1);
  expect_error(
      KL_SIG_TRACES,
      "{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"droppedAttributesCount\":-1}]}]}"
      "]}",
      "resourceSpans[0].scopeSpans[0].spans[0].droppedAttributesCount: integer out of "
      "range",
      (size_t)-1);
  expect_error(KL_SIG_TRACES,
               "{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"kind\":2147483648}]}]}]}",
               "resourceSpans[0].scopeSpans[0].spans[0].kind: integer out of range", (size_t)-1);
  expect_error(KL_SIG_METRICS,
               "{\"resourceMetrics\":[{\"scopeMetrics\":[{\"metrics\":[{\"histogram\":{"
               "\"dataPoints\":[{\"explicitBounds\":[1,\"x\"]}]}}]}]}]}",
               "resourceMetrics[0].scopeMetrics[0].metrics[0].histogram.dataPoints[0]."
               "explicitBounds[1]: expected a number",
               (size_t)-1);
  expect_error(KL_SIG_METRICS,
               "{\"resourceMetrics\":[{\"scopeMetrics\":[{\"metrics\":[{\"sum\":{"
               "\"dataPoints\":[{\"asInt\":\"18446744073709551616\"}]}}]}]}]}",
               "resourceMetrics[0].scopeMetrics[0].metrics[0].sum.dataPoints[0].asInt: integer "
               "out of range",
               (size_t)-1);
  expect_error(KL_SIG_METRICS,
               "{\"resourceMetrics\":[{\"scopeMetrics\":[{\"metrics\":[{\"sum\":{},\"gauge\":{}}]}"
               "]}]}",
               "resourceMetrics[0].scopeMetrics[0].metrics[0].gauge: more than one field of a "
               "oneof",
               (size_t)-1);
  expect_error(KL_SIG_LOGS, "{\"resourceLogs\":[],\"resource_logs\":[]}",
               "resourceLogs: duplicate field", 20);
  expect_error(KL_SIG_LOGS,
               "{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":[{\"body\":{\"bytesValue\":"
               "\"a\"}}]}]}]}",
               "resourceLogs[0].scopeLogs[0].logRecords[0].body.bytesValue: invalid base64",
               (size_t)-1);
  expect_error(KL_SIG_LOGS,
               "{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":[{\"body\":{\"doubleValue\":"
               "1e999}}]}]}]}",
               "resourceLogs[0].scopeLogs[0].logRecords[0].body.doubleValue: number out of range",
               (size_t)-1);
  expect_error(KL_SIG_LOGS,
               "{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":[{\"body\":{\"stringValue\":"
               "\"\\ud800\"}}]}]}]}",
               "resourceLogs[0].scopeLogs[0].logRecords[0].body.stringValue: invalid escape in "
               "string",
               (size_t)-1);
  char err[100];
  size_t off = 0;
  assert_int_equal(
      kl_otlp_from_json(KL_SIG_LOGS, "{\"a\":", 5, pb, sizeof pb, err, sizeof err, &off), -EBADMSG);
  assert_true(strncmp(err, "invalid JSON: ", 14) == 0);
  /* a short error buffer is cut, still terminated */
  assert_int_equal(
      kl_otlp_from_json(KL_SIG_LOGS, "{\"resourceLogs\":5}", 18, pb, sizeof pb, err, 8, &off),
      -EBADMSG);
  assert_string_equal(err, "resourc");
}

static void test_ids(void **state) {
  (void)state;
  const char *p = "resourceSpans[0].scopeSpans[0].spans[0].";
  char want[200];
  snprintf(want, sizeof want, "%straceId: expected 32 hex digits", p);
  expect_error(KL_SIG_TRACES,
               "{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"traceId\":\"0102\"}]}]}]}",
               want, (size_t)-1);
  expect_error(KL_SIG_TRACES,
               "{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"traceId\":"
               "\"5b8efff798038103d269b633813fc60g\"}]}]}]}",
               want, (size_t)-1);
  /* base64 is what a protobuf JSON mapping without OTLP's rule would write: refused */
  expect_error(KL_SIG_TRACES,
               "{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"traceId\":"
               "\"W47/95gDgQPSabYzgT/GDA==\"}]}]}]}",
               want, (size_t)-1);
  snprintf(want, sizeof want, "%sparentSpanId: expected 16 hex digits", p);
  expect_error(KL_SIG_TRACES,
               "{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"parentSpanId\":"
               "\"5b8efff798038103d269b633813fc60c\"}]}]}]}",
               want, (size_t)-1);
  snprintf(want, sizeof want, "%sspanId: expected a hex string", p);
  expect_error(KL_SIG_TRACES,
               "{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"spanId\":7}]}]}]}", want,
               (size_t)-1);
}

/* n levels of arrayValue around a string, as a log body. */
static size_t nested_body(char *out, size_t cap, int levels) {
  size_t o =
      (size_t)snprintf(out, cap, "{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":[{\"body\":");
  for (int i = 0; i < levels; i++)
    o += (size_t)snprintf(out + o, cap - o, "{\"arrayValue\":{\"values\":[");
  o += (size_t)snprintf(out + o, cap - o, "{\"stringValue\":\"x\"}");
  for (int i = 0; i < levels; i++)
    o += (size_t)snprintf(out + o, cap - o, "]}}");
  o += (size_t)snprintf(out + o, cap - o, "}]}]}]}");
  return o;
}

static void test_depth_limit(void **state) {
  (void)state;
  static char in[8192];
  char err[400];
  size_t off;
  /* request 1, ResourceLogs 2, ScopeLogs 3, LogRecord 4, body 5: each level adds two */
  int ok = (KL_OTLP_DEPTH_MAX - 5) / 2;
  size_t n = nested_body(in, sizeof in, ok);
  long len = kl_otlp_from_json(KL_SIG_LOGS, in, n, pb, sizeof pb, err, sizeof err, &off);
  assert_true(len > 0);
  kl_pb_error perr;
  assert_int_equal(kl_otlp_check(&kl_otlp_logs_request, pb, (size_t)len, 1, &perr), 0);
  assert_true(kl_otlp_to_json(KL_SIG_LOGS, pb, (size_t)len, js, sizeof js) > 0);
  n = nested_body(in, sizeof in, ok + 1);
  assert_int_equal(kl_otlp_from_json(KL_SIG_LOGS, in, n, pb, sizeof pb, err, sizeof err, &off),
                   -EBADMSG);
  assert_non_null(strstr(err, "messages nested too deep"));
  n = nested_body(in, sizeof in, 200); /* deeper than the JSON parser is asked to go */
  assert_int_equal(kl_otlp_from_json(KL_SIG_LOGS, in, n, pb, sizeof pb, err, sizeof err, &off),
                   -EBADMSG);
}

static void test_buffers(void **state) {
  (void)state;
  char err[100];
  size_t off;
  long n = kl_otlp_from_json(KL_SIG_TRACES, trace_json, strlen(trace_json), pb, sizeof pb, err,
                             sizeof err, &off);
  assert_true(n > 0);
  for (size_t cap = 0; cap < (size_t)n; cap++)
    assert_int_equal(kl_otlp_from_json(KL_SIG_TRACES, trace_json, strlen(trace_json), pb2, cap, err,
                                       sizeof err, &off),
                     -ENOBUFS);
  long j = kl_otlp_to_json(KL_SIG_TRACES, pb, (size_t)n, js, sizeof js);
  assert_int_equal(j, (long)strlen(trace_json));
  for (size_t cap = 0; cap < (size_t)j; cap++)
    assert_int_equal(kl_otlp_to_json(KL_SIG_TRACES, pb, (size_t)n, js, cap), -ENOBUFS);
  /* a body longer than 127 bytes: its length prefix grows to two bytes */
  static char big[4096];
  snprintf(big, sizeof big,
           "{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":[{\"body\":{\"stringValue\":"
           "\"%0300d\"}}]}]}]}",
           7);
  roundtrip(KL_SIG_LOGS, big, NULL);
}

static void test_to_json_wire_forms(void **state) {
  (void)state;
  /* unpacked repeated scalars, a packed run, duplicate singular scalars and oneof members:
   * written as protobuf would read them (the last one wins) */
  static const uint8_t point[] = {
      0x31, 1,    0, 0, 0, 0, 0, 0, 0,                            /* bucket_counts 1 (unpacked) */
      0x32, 16,   2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, /* packed 2, 3 */
      0x21, 5,    0, 0, 0, 0, 0, 0, 0,                            /* count 5 */
      0x21, 6,    0, 0, 0, 0, 0, 0, 0,                            /* count 6: wins */
      0x50, 0,                                                    /* flags 0, present on the wire */
      0xa0, 0x06, 1,                                              /* unknown field 100 */
  };
  uint8_t req[128];
  size_t n = 0;
  /* request{rm{sm{metric{histogram{point}}}}}: build the envelope around it */
  uint8_t h[64], m[64], sm[80], rm[96];
  size_t hn = 0, mn = 0, smn = 0, rmn = 0;
  h[hn++] = 0x0a, h[hn++] = sizeof point;
  memcpy(h + hn, point, sizeof point), hn += sizeof point;
  m[mn++] = 0x4a, m[mn++] = (uint8_t)hn;
  memcpy(m + mn, h, hn), mn += hn;
  sm[smn++] = 0x12, sm[smn++] = (uint8_t)mn;
  memcpy(sm + smn, m, mn), smn += mn;
  rm[rmn++] = 0x12, rm[rmn++] = (uint8_t)smn;
  memcpy(rm + rmn, sm, smn), rmn += smn;
  req[n++] = 0x0a, req[n++] = (uint8_t)rmn;
  memcpy(req + n, rm, rmn), n += rmn;
  long j = kl_otlp_to_json(KL_SIG_METRICS, req, n, js, sizeof js - 1);
  assert_true(j > 0);
  js[j] = '\0';
  assert_string_equal(js, "{\"resourceMetrics\":[{\"scopeMetrics\":[{\"metrics\":[{\"histogram\":{"
                          "\"dataPoints\":[{\"count\":\"6\",\"bucketCounts\":[\"1\",\"2\",\"3\"],"
                          "\"flags\":0}]}}]}]}]}");
  /* not protobuf: -EBADMSG */
  assert_int_equal(kl_otlp_to_json(KL_SIG_LOGS, (const uint8_t *)"\x0a\x05", 2, js, sizeof js),
                   -EBADMSG);
  assert_int_equal(kl_otlp_to_json(KL_SIG_LOGS, (const uint8_t *)"\x08\x01", 2, js, sizeof js),
                   -EBADMSG);
}

static void test_oneof_last_wins(void **state) {
  (void)state;
  /* logs request > resource_logs > scope_logs > log_record{body{string "a", int 7, bool 1}} */
  static const uint8_t req2[] = {0x0a, 0x0d, 0x12, 0x0b, 0x12, 0x09, 0x2a, 0x07,
                                 0x0a, 0x01, 'a',  0x18, 0x07, 0x10, 0x01};
  long j = kl_otlp_to_json(KL_SIG_LOGS, req2, sizeof req2, js, sizeof js - 1);
  assert_true(j > 0);
  js[j] = '\0';
  assert_string_equal(js, "{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":[{\"body\":{"
                          "\"boolValue\":true}}]}]}]}");
}

static void test_bad_signal(void **state) {
  (void)state;
  assert_int_equal(kl_otlp_from_json(KL_SIG_COUNT, "{}", 2, pb, sizeof pb, NULL, 0, NULL), -EINVAL);
  assert_int_equal(kl_otlp_to_json(KL_SIG_COUNT, pb, 0, js, sizeof js), -EINVAL);
  assert_int_equal(kl_otlp_from_json(KL_SIG_LOGS, "{}", 2, NULL, 0, NULL, 0, NULL), 0);
  assert_int_equal(kl_otlp_to_json(KL_SIG_LOGS, NULL, 0, js, sizeof js), 2);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_logs_roundtrip),
      cmocka_unit_test(test_anyvalue_kinds),
      cmocka_unit_test(test_snake_case_and_defaults),
      cmocka_unit_test(test_trace_roundtrip),
      cmocka_unit_test(test_metrics_roundtrip),
      cmocka_unit_test(test_errors_with_paths),
      cmocka_unit_test(test_ids),
      cmocka_unit_test(test_depth_limit),
      cmocka_unit_test(test_buffers),
      cmocka_unit_test(test_to_json_wire_forms),
      cmocka_unit_test(test_oneof_last_wins),
      cmocka_unit_test(test_bad_signal),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
