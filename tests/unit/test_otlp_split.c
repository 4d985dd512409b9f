/* test_otlp_split.c - unit tests for the OTLP splitter: records, keys, metrics, errors, batches, responses. */
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
#include "pipeline/pb.h"

#include "pb_enc.h"

static void put_msg(enc *e, uint32_t num, const enc *sub) {
  put_len(e, num, sub->b, sub->n);
}

static void put_str(enc *e, uint32_t num, const char *s) {
  put_len(e, num, s, strlen(s));
}

static void put_vint(enc *e, uint32_t num, uint64_t v) {
  put_key(e, num, KL_PB_VARINT);
  put_varint(e, v);
}

static void cat(enc *e, const enc *more) {
  memcpy(e->b + e->n, more->b, more->n);
  e->n += more->n;
}

/* KeyValue{key, AnyValue{string_value}} as field `num`. */
static void put_attr(enc *e, uint32_t num, const char *key, const char *val) {
  enc any = {0}, kv = {0};
  put_str(&any, 1, val);
  put_str(&kv, 1, key);
  put_msg(&kv, 2, &any);
  put_msg(e, num, &kv);
}

/* Resource{attributes: service.name = svc, host = h} (the message's bytes, no tag). */
static void resource(enc *e, const char *svc) {
  e->n = 0;
  put_attr(e, 1, "service.name", svc);
  put_attr(e, 1, "host", "h1");
}

static void scope(enc *e, const char *name) {
  e->n = 0;
  put_str(e, 1, name);
  put_str(e, 2, "1.0");
}

static const uint8_t TID[16] = {0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd,
                                0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c};
static const uint8_t SID[8] = {0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31};
static const char TID_HEX[] = "0af7651916cd43dd8448eb211c80319c";

static void log_record(enc *e, const char *body, const uint8_t *tid) {
  enc any = {0};
  e->n = 0;
  put_fixed(e, 1, 1700000000000000000ull, 8);
  put_vint(e, 2, 9);
  put_str(e, 3, "INFO");
  put_str(&any, 1, body);
  put_msg(e, 5, &any);
  put_attr(e, 6, "k", "v");
  if (tid) {
    put_len(e, 9, tid, 16);
    put_len(e, 10, SID, 8);
  }
}

static void span(enc *e, const uint8_t *tid, size_t tid_len, const char *name) {
  e->n = 0;
  put_len(e, 1, tid, tid_len);
  put_len(e, 2, SID, 8);
  put_str(e, 5, name);
  put_vint(e, 6, 2);
  put_fixed(e, 7, 1, 8);
  put_fixed(e, 8, 2, 8);
  put_attr(e, 9, "http.method", "GET");
}

/* ResourceX{resource, ScopeX{scope, records..., schema}, schema} as field 1 of a request. */
static void put_resource_x(enc *req, const enc *res, const enc *sc, const enc *recs, size_t nrec,
                           const char *schema) {
  enc sx = {0}, rx = {0};
  if (sc) put_msg(&sx, 1, sc);
  for (size_t i = 0; i < nrec; i++) put_msg(&sx, 2, &recs[i]);
  if (schema) put_str(&sx, 3, schema);
  if (res) put_msg(&rx, 1, res);
  put_msg(&rx, 2, &sx);
  if (schema) put_str(&rx, 3, schema);
  put_msg(req, 1, &rx);
}

/* ---- capturing what the splitter emits ---- */

#define CAP_MAX 512
typedef struct capture {
  uint8_t buf[1 << 18];
  size_t n, count;
  size_t off[CAP_MAX], len[CAP_MAX], niov[CAP_MAX];
  char key[CAP_MAX][300];
  size_t klen[CAP_MAX];
  size_t stop_at; /* return 1 at this emit (1-based), 0: never */
} capture;

static capture cap;

static int on_record(void *arg, const kl_otlp_record *rec) {
  capture *c = arg;
  assert_true(c->count < CAP_MAX);
  assert_true(rec->niov >= 1);
  size_t total = 0;
  c->off[c->count] = c->n;
  for (size_t i = 0; i < rec->niov; i++) {
    assert_true(c->n + rec->iov[i].iov_len <= sizeof c->buf);
    memcpy(c->buf + c->n, rec->iov[i].iov_base, rec->iov[i].iov_len);
    c->n += rec->iov[i].iov_len;
    total += rec->iov[i].iov_len;
  }
  assert_int_equal(total, rec->len);
  c->len[c->count] = total;
  c->niov[c->count] = rec->niov;
  assert_true(rec->key_len <= KL_REC_KEY_MAX);
  if (rec->key_len) memcpy(c->key[c->count], rec->key, rec->key_len);
  c->key[c->count][rec->key_len] = '\0';
  c->klen[c->count] = rec->key_len;
  c->count++;
  return c->stop_at && c->count == c->stop_at ? 1 : 0;
}

static const kl_otlp_opts OPTS = {"service.name", 12, 0, 0};

static int split(kl_signal sig, const enc *req, const kl_otlp_opts *o, kl_otlp_result *res) {
  memset(&cap, 0, offsetof(capture, off));
  cap.count = cap.n = cap.stop_at = 0;
  return kl_otlp_split(sig, req->b, req->n, o, on_record, &cap, res);
}

static const uint8_t *msg(size_t i) {
  return cap.buf + cap.off[i];
}

/* An emitted message splits again into exactly itself (one record), with the same key. */
static void assert_fixed_point(kl_signal sig, size_t i) {
  static capture saved;
  kl_otlp_result res;
  memcpy(&saved, &cap, sizeof cap);
  enc m = {0};
  memcpy(m.b, msg(i), cap.len[i]);
  m.n = cap.len[i];
  assert_int_equal(split(sig, &m, &OPTS, &res), 0);
  assert_int_equal(res.accepted, 1);
  assert_int_equal(res.rejected, 0);
  assert_int_equal(cap.count, 1);
  assert_int_equal(cap.len[0], m.n);
  assert_memory_equal(cap.buf, m.b, m.n);
  assert_string_equal(cap.key[0], saved.key[i]);
  memcpy(&cap, &saved, sizeof cap);
}

static void assert_msg(size_t i, const enc *want) {
  assert_int_equal(cap.len[i], want->n);
  assert_memory_equal(msg(i), want->b, want->n);
}

/* ---- tests ---- */

static void test_logs(void **state) {
  (void)state;
  enc res[2], sc[2], recs[3], req = {0};
  resource(&res[0], "checkout");
  resource(&res[1], "cart");
  scope(&sc[0], "lib.a");
  scope(&sc[1], "lib.b");
  log_record(&recs[0], "one", NULL);
  log_record(&recs[1], "two", TID);
  log_record(&recs[2], "three", NULL);
  for (int r = 0; r < 2; r++)
    for (int s = 0; s < 2; s++) put_resource_x(&req, &res[r], &sc[s], recs, 3, s ? "https://s" : NULL);
  kl_otlp_result out;
  assert_int_equal(split(KL_SIG_LOGS, &req, &OPTS, &out), 0);
  assert_int_equal(out.accepted, 12);
  assert_int_equal(out.rejected, 0);
  assert_int_equal(cap.count, 12);
  size_t i = 0;
  for (int r = 0; r < 2; r++)
    for (int s = 0; s < 2; s++)
      for (int k = 0; k < 3; k++, i++) {
        enc want = {0};
        put_resource_x(&want, &res[r], &sc[s], &recs[k], 1, s ? "https://s" : NULL);
        assert_msg(i, &want);
        assert_string_equal(cap.key[i], k == 1 ? TID_HEX : r ? "cart" : "checkout");
        assert_true(cap.niov[i] <= KL_OTLP_IOV_MAX);
        assert_fixed_point(KL_SIG_LOGS, i);
      }
}

static void test_traces(void **state) {
  (void)state;
  enc res, sc, recs[4], req = {0};
  resource(&res, "api");
  scope(&sc, "tracer");
  uint8_t tid2[16];
  memset(tid2, 0xab, sizeof tid2);
  span(&recs[0], TID, 16, "a");
  span(&recs[1], tid2, 16, "b");
  span(&recs[2], TID, 15, "bad id");   /* rejected alone */
  span(&recs[3], TID, 0, "no trace"); /* rejected alone: spans need ids */
  put_resource_x(&req, &res, &sc, recs, 4, NULL);
  kl_otlp_result out;
  assert_int_equal(split(KL_SIG_TRACES, &req, &OPTS, &out), 0);
  assert_int_equal(out.accepted, 2);
  assert_int_equal(out.rejected, 2);
  assert_non_null(strstr(out.error, "trace id is not 16 bytes"));
  /* the offset is the bad id's, inside the request */
  assert_true(out.error_offset > 0 && out.error_offset < req.n);
  assert_int_equal(req.b[out.error_offset - 1], 15);
  assert_string_equal(cap.key[0], TID_HEX);
  assert_string_equal(cap.key[1], "abababababababababababababababab");
  for (size_t i = 0; i < 2; i++) {
    enc want = {0};
    put_resource_x(&want, &res, &sc, &recs[i], 1, NULL);
    assert_msg(i, &want);
    assert_fixed_point(KL_SIG_TRACES, i);
  }
}

static void test_keys(void **state) {
  (void)state;
  enc sc, rec, req = {0}, res = {0}, any = {0}, kv = {0};
  scope(&sc, "s");
  log_record(&rec, "x", NULL);
  /* int, bool, double, bytes (not a key), absent */
  const char *want[] = {"-42", "true", "0.5", "", ""};
  for (int c = 0; c < 5; c++) {
    any.n = kv.n = res.n = req.n = 0;
    if (c == 0) put_vint(&any, 3, (uint64_t)-42);
    if (c == 1) put_vint(&any, 2, 1);
    if (c == 2) {
      double d = 0.5;
      uint64_t bits;
      memcpy(&bits, &d, sizeof bits);
      put_fixed(&any, 4, bits, 8);
    }
    if (c == 3) put_len(&any, 7, "ab", 2);
    put_str(&kv, 1, c == 4 ? "other" : "service.name");
    put_msg(&kv, 2, &any);
    put_msg(&res, 1, &kv);
    put_resource_x(&req, &res, &sc, &rec, 1, NULL);
    kl_otlp_result out;
    assert_int_equal(split(KL_SIG_LOGS, &req, &OPTS, &out), 0);
    assert_int_equal(cap.count, 1);
    assert_string_equal(cap.key[0], want[c]);
  }
  /* no key attribute configured, and no resource at all */
  req.n = 0;
  put_resource_x(&req, NULL, &sc, &rec, 1, NULL);
  kl_otlp_result out;
  assert_int_equal(split(KL_SIG_LOGS, &req, NULL, &out), 0);
  assert_int_equal(cap.count, 1);
  assert_int_equal(cap.klen[0], 0);
  /* a key longer than a record header holds is cut */
  char longv[400];
  memset(longv, 'x', sizeof longv - 1);
  longv[sizeof longv - 1] = '\0';
  res.n = req.n = 0;
  put_attr(&res, 1, "service.name", longv);
  put_resource_x(&req, &res, &sc, &rec, 1, NULL);
  assert_int_equal(split(KL_SIG_LOGS, &req, &OPTS, &out), 0);
  assert_int_equal(cap.klen[0], KL_REC_KEY_MAX);
}

/* A metric of data kind `kind` with 3 points and its type fields, and what each split holds. */
static void number_point(enc *e, int i) {
  e->n = 0;
  put_fixed(e, 3, 1000 + (uint64_t)i, 8);
  put_fixed(e, 6, (uint64_t)i, 8); /* as_int */
  put_attr(e, 7, "pt", i ? "b" : "a");
}

static void histogram_point(enc *e, int i) {
  enc packed = {0};
  e->n = 0;
  put_fixed(e, 3, 1000 + (uint64_t)i, 8);
  put_fixed(e, 4, 3, 8);
  for (int k = 0; k < 3; k++)
    for (int b = 0; b < 8; b++) packed.b[packed.n++] = (uint8_t)(b ? 0 : k + i);
  put_msg(e, 6, &packed);
  put_attr(e, 9, "pt", "x");
}

static void exp_point(enc *e, int i) {
  enc buckets = {0}, packed = {0};
  e->n = 0;
  put_attr(e, 1, "pt", "x");
  put_fixed(e, 4, 3, 8);
  put_vint(e, 6, 3); /* scale -2, zigzag */
  packed.b[packed.n++] = 1;
  packed.b[packed.n++] = (uint8_t)(2 + i);
  put_vint(&buckets, 1, 2);
  put_msg(&buckets, 2, &packed);
  put_msg(e, 8, &buckets);
}

static void summary_point(enc *e, int i) {
  enc q = {0};
  e->n = 0;
  put_fixed(e, 4, 10 + (uint64_t)i, 8);
  put_fixed(&q, 1, 0, 8);
  put_fixed(&q, 2, 0, 8);
  put_msg(e, 6, &q);
  put_attr(e, 7, "pt", "x");
}

static void test_metrics_every_kind(void **state) {
  (void)state;
  const uint32_t kinds[] = {5, 7, 9, 10, 11};
  for (size_t k = 0; k < 5; k++) {
    uint32_t kind = kinds[k];
    enc pts[3], data = {0}, metric = {0}, res, sc, req = {0}, meta = {0};
    for (int i = 0; i < 3; i++) {
      if (kind == 5 || kind == 7) number_point(&pts[i], i);
      if (kind == 9) histogram_point(&pts[i], i);
      if (kind == 10) exp_point(&pts[i], i);
      if (kind == 11) summary_point(&pts[i], i);
      put_msg(&data, 1, &pts[i]);
    }
    enc tail = {0}; /* the type's other fields */
    if (kind == 7 || kind == 9 || kind == 10) put_vint(&tail, 2, 2);
    if (kind == 7) put_vint(&tail, 3, 1);
    cat(&data, &tail);
    put_attr(&meta, 12, "m", "1");
    put_attr(&meta, 12, "n", "2");
    put_str(&metric, 1, "http.server.duration");
    put_str(&metric, 2, "how long");
    put_str(&metric, 3, "ms");
    put_msg(&metric, kind, &data);
    cat(&metric, &meta);
    resource(&res, "svc");
    scope(&sc, "meter");
    put_resource_x(&req, &res, &sc, &metric, 1, "https://schema");
    /* a second metric in the same scope with no data field: nothing */
    kl_otlp_result out;
    assert_int_equal(split(KL_SIG_METRICS, &req, &OPTS, &out), 0);
    assert_int_equal(out.accepted, 3);
    assert_int_equal(out.rejected, 0);
    assert_int_equal(cap.count, 3);
    for (int i = 0; i < 3; i++) {
      enc d1 = {0}, m1 = {0}, want = {0};
      put_msg(&d1, 1, &pts[i]);
      cat(&d1, &tail);
      put_str(&m1, 1, "http.server.duration");
      put_str(&m1, 2, "how long");
      put_str(&m1, 3, "ms");
      put_msg(&m1, kind, &d1);
      cat(&m1, &meta);
      put_resource_x(&want, &res, &sc, &m1, 1, "https://schema");
      assert_msg((size_t)i, &want);
      assert_string_equal(cap.key[i], "svc");
      assert_fixed_point(KL_SIG_METRICS, (size_t)i);
    }
  }
}

/* Fields at the envelope levels that keel does not know are skipped, not carried. */
static void test_unknown_fields_skipped(void **state) {
  (void)state;
  enc res, sc, rec, req = {0}, rx = {0}, sx = {0};
  resource(&res, "svc");
  scope(&sc, "s");
  log_record(&rec, "body", NULL);
  put_vint(&rec, 99, 7); /* unknown inside the record: kept, it is the record's bytes */
  put_vint(&sx, 77, 1);
  put_msg(&sx, 2, &rec);
  put_msg(&sx, 1, &sc); /* out of order: the output puts it first */
  put_fixed(&sx, 1000, 5, 4);
  put_msg(&rx, 2, &sx);
  put_str(&rx, 9, "unknown string");
  put_msg(&rx, 1, &res);
  put_vint(&req, 5, 1);
  put_msg(&req, 1, &rx);
  put_str(&req, 2, "x");
  kl_otlp_result out;
  assert_int_equal(split(KL_SIG_LOGS, &req, &OPTS, &out), 0);
  assert_int_equal(cap.count, 1);
  enc want = {0};
  put_resource_x(&want, &res, &sc, &rec, 1, NULL);
  assert_msg(0, &want);

  /* the same for metrics: Metric and Sum levels */
  enc pt, data = {0}, metric = {0};
  number_point(&pt, 0);
  put_vint(&data, 3, 1);
  put_msg(&data, 1, &pt);
  put_vint(&data, 9, 1); /* unknown */
  put_vint(&data, 2, 1);
  put_str(&metric, 3, "ms");
  put_msg(&metric, 7, &data);
  put_str(&metric, 1, "name");
  put_vint(&metric, 4, 1); /* unknown (the old int_gauge number) */
  req.n = 0;
  put_resource_x(&req, &res, &sc, &metric, 1, NULL);
  assert_int_equal(split(KL_SIG_METRICS, &req, &OPTS, &out), 0);
  assert_int_equal(cap.count, 1);
  enc d1 = {0}, m1 = {0};
  put_msg(&d1, 1, &pt);
  put_vint(&d1, 2, 1);
  put_vint(&d1, 3, 1);
  put_str(&m1, 1, "name");
  put_str(&m1, 3, "ms");
  put_msg(&m1, 7, &d1);
  want.n = 0;
  put_resource_x(&want, &res, &sc, &m1, 1, NULL);
  assert_msg(0, &want);
}

/* Bad records are rejected alone, counted, and the first reason is kept. */
static void test_rejected_records(void **state) {
  (void)state;
  enc res, sc, recs[4], req = {0};
  resource(&res, "svc");
  scope(&sc, "s");
  log_record(&recs[0], "ok", NULL);
  recs[1].n = 0;
  put_vint(&recs[1], 3, 1); /* severity_text as a varint */
  log_record(&recs[2], "\xff bad utf-8", NULL);
  log_record(&recs[3], "ok too", NULL);
  put_resource_x(&req, &res, &sc, recs, 4, NULL);
  kl_otlp_result out;
  assert_int_equal(split(KL_SIG_LOGS, &req, &OPTS, &out), 0);
  assert_int_equal(out.accepted, 2);
  assert_int_equal(out.rejected, 2);
  assert_int_equal(cap.count, 2);
  assert_non_null(strstr(out.error, "LogRecord"));
  assert_non_null(strstr(out.error, "wrong wire type"));
  assert_int_equal(req.b[out.error_offset], (3 << 3) | KL_PB_VARINT);

  uint8_t pb[256];
  size_t n = kl_otlp_response_pb(KL_SIG_LOGS, &out, pb, sizeof pb);
  size_t elen = strlen(out.error);
  assert_int_equal(n, 2 + 2 + 2 + elen);
  static const uint8_t head[] = {0x0a, 0, 0x08, 0x02, 0x12};
  assert_int_equal(pb[0], head[0]);
  assert_int_equal(pb[1], n - 2);
  assert_memory_equal(pb + 2, head + 2, 3);
  assert_int_equal(pb[5], elen);
  assert_memory_equal(pb + 6, out.error, elen);
}

/* A request whose envelope is bad is refused whole: nothing is emitted. */
static void expect_refused(kl_signal sig, const enc *req, const char *why, size_t offset) {
  kl_otlp_result out;
  assert_int_equal(split(sig, req, &OPTS, &out), -EBADMSG);
  assert_int_equal(cap.count, 0);
  assert_int_equal(out.accepted, 0);
  if (!strstr(out.error, why)) fail_msg("error '%s' lacks '%s'", out.error, why);
  if (offset != SIZE_MAX) assert_int_equal(out.error_offset, offset);
}

static void test_envelope_errors(void **state) {
  (void)state;
  enc res, sc, rec, good = {0}, req;
  resource(&res, "svc");
  scope(&sc, "s");
  log_record(&rec, "x", NULL);
  put_resource_x(&good, &res, &sc, &rec, 1, NULL); /* valid records come first */

  req = good;
  put_vint(&req, 1, 5); /* resource_logs as a varint */
  expect_refused(KL_SIG_LOGS, &req, "ExportLogsServiceRequest: field 1 has the wrong wire type",
                 good.n);

  req = good;
  req.b[req.n++] = 0x0a;
  req.b[req.n++] = 0x05; /* length beyond the message */
  expect_refused(KL_SIG_LOGS, &req, "length beyond the message", good.n + 1);

  { /* resource twice */
    enc rx = {0}, sx = {0};
    put_msg(&sx, 2, &rec);
    put_msg(&rx, 1, &res);
    put_msg(&rx, 1, &res);
    put_msg(&rx, 2, &sx);
    req = good;
    put_msg(&req, 1, &rx);
    expect_refused(KL_SIG_LOGS, &req, "resource appears twice", SIZE_MAX);
  }
  { /* a resource attribute with a wrong wire type: the whole request */
    enc bad = {0}, rx = {0}, sx = {0};
    put_vint(&bad, 1, 3);
    put_msg(&sx, 2, &rec);
    put_msg(&rx, 1, &bad);
    put_msg(&rx, 2, &sx);
    req = good;
    put_msg(&req, 1, &rx);
    expect_refused(KL_SIG_LOGS, &req, "Resource: wrong wire type", SIZE_MAX);
  }
  { /* a scope name that is not UTF-8 */
    enc bad = {0};
    put_str(&bad, 1, "\xc3\x28");
    req = good;
    put_resource_x(&req, &res, &bad, &rec, 1, NULL);
    expect_refused(KL_SIG_LOGS, &req, "InstrumentationScope: string is not UTF-8", SIZE_MAX);
  }
  { /* schema_url not UTF-8 */
    req = good;
    put_resource_x(&req, &res, &sc, &rec, 1, "\x80");
    expect_refused(KL_SIG_LOGS, &req, "not UTF-8", SIZE_MAX);
  }
  { /* a span field of a scope as fixed32 */
    enc rx = {0}, sx = {0};
    put_fixed(&sx, 2, 1, 4);
    put_msg(&rx, 2, &sx);
    req.n = 0;
    put_msg(&req, 1, &rx);
    expect_refused(KL_SIG_TRACES, &req, "ScopeSpans: field 2 has the wrong wire type", 4);
  }
  { /* metrics: two data fields, wrong type field, metadata as a varint */
    enc pt, data = {0}, metric = {0};
    number_point(&pt, 0);
    put_msg(&data, 1, &pt);
    put_msg(&metric, 5, &data);
    put_msg(&metric, 7, &data);
    req.n = 0;
    put_resource_x(&req, &res, &sc, &metric, 1, NULL);
    expect_refused(KL_SIG_METRICS, &req, "Metric: more than one data field", SIZE_MAX);
    metric.n = 0;
    put_msg(&data, 2, &pt);
    put_msg(&metric, 7, &data);
    req.n = 0;
    put_resource_x(&req, &res, &sc, &metric, 1, NULL);
    expect_refused(KL_SIG_METRICS, &req, "Sum: field 2 has the wrong wire type", SIZE_MAX);
    metric.n = 0;
    put_str(&metric, 1, "m");
    put_vint(&metric, 12, 1);
    req.n = 0;
    put_resource_x(&req, &res, &sc, &metric, 1, NULL);
    expect_refused(KL_SIG_METRICS, &req, "Metric: field 12 has the wrong wire type", SIZE_MAX);
  }
  /* an unknown signal */
  kl_otlp_result out;
  assert_int_equal(kl_otlp_split(KL_SIG_COUNT, good.b, good.n, NULL, NULL, NULL, &out), -EINVAL);
}

/* A log body nesting ArrayValues: `levels` AnyValues deep from the body down. */
static void nested_body(enc *rec, int levels) {
  enc a = {0}, b = {0};
  put_str(&a, 1, "leaf");
  for (int i = 1; i < levels; i++) {
    b.n = 0;
    enc arr = {0};
    put_msg(&arr, 1, &a); /* ArrayValue.values */
    put_msg(&b, 5, &arr); /* AnyValue.array_value */
    a = b;
  }
  rec->n = 0;
  put_msg(rec, 5, &a);
}

static void test_depth_limit(void **state) {
  (void)state;
  enc res, sc, recs[2], req = {0};
  resource(&res, "svc");
  scope(&sc, "s");
  /* LogRecord is at 4, the body 5: AnyValue/ArrayValue alternate, so the deepest AnyValue of
   * `levels` is at 5 + 2 * (levels - 1). */
  int ok_levels = (KL_OTLP_DEPTH_MAX - 5) / 2 + 1;
  nested_body(&recs[0], ok_levels);
  nested_body(&recs[1], ok_levels + 1);
  put_resource_x(&req, &res, &sc, recs, 2, NULL);
  kl_otlp_result out;
  assert_int_equal(split(KL_SIG_LOGS, &req, &OPTS, &out), 0);
  assert_int_equal(out.accepted, 1);
  assert_int_equal(out.rejected, 1);
  assert_non_null(strstr(out.error, "nested too deep"));
  /* in a resource attribute the whole request is refused */
  enc deep = {0}, kv = {0}, rdeep = {0};
  nested_body(&deep, 20); /* field 5 of ... reuse the AnyValue inside */
  kl_pb r;
  kl_pb_field f;
  kl_pb_init(&r, deep.b, deep.n);
  assert_int_equal(kl_pb_next(&r, &f, NULL), 1);
  put_str(&kv, 1, "service.name");
  put_len(&kv, 2, f.data, f.len);
  put_msg(&rdeep, 1, &kv);
  req.n = 0;
  put_resource_x(&req, &rdeep, &sc, recs, 1, NULL);
  expect_refused(KL_SIG_LOGS, &req, "nested too deep", SIZE_MAX);
}

static void test_empty(void **state) {
  (void)state;
  kl_otlp_result out;
  enc req = {0};
  for (int sig = 0; sig < KL_SIG_COUNT; sig++) {
    assert_int_equal(split((kl_signal)sig, &req, &OPTS, &out), 0);
    assert_int_equal(out.accepted + out.rejected + cap.count, 0);
  }
  assert_int_equal(kl_otlp_split(KL_SIG_LOGS, NULL, 0, NULL, on_record, &cap, &out), 0);
  /* resources and scopes without records */
  enc res, sc;
  resource(&res, "svc");
  scope(&sc, "s");
  put_resource_x(&req, &res, &sc, NULL, 0, "u");
  put_resource_x(&req, NULL, NULL, NULL, 0, NULL);
  assert_int_equal(split(KL_SIG_TRACES, &req, &OPTS, &out), 0);
  assert_int_equal(cap.count, 0);
  /* no emit callback: counts only */
  enc rec;
  log_record(&rec, "x", NULL);
  req.n = 0;
  put_resource_x(&req, &res, &sc, &rec, 1, NULL);
  assert_int_equal(kl_otlp_split(KL_SIG_LOGS, req.b, req.n, &OPTS, NULL, NULL, &out), 0);
  assert_int_equal(out.accepted, 1);
}

static void test_emit_stops(void **state) {
  (void)state;
  enc res, sc, recs[3], req = {0};
  resource(&res, "svc");
  scope(&sc, "s");
  for (int i = 0; i < 3; i++) log_record(&recs[i], "x", NULL);
  put_resource_x(&req, &res, &sc, recs, 3, NULL);
  memset(&cap, 0, offsetof(capture, off));
  cap.stop_at = 2;
  kl_otlp_result out;
  assert_int_equal(kl_otlp_split(KL_SIG_LOGS, req.b, req.n, &OPTS, on_record, &cap, &out), 1);
  assert_int_equal(cap.count, 2);
  assert_int_equal(out.accepted, 1);
}

/* Batch mode: messages up to batch_max, each splitting back into the same single records. */
static void test_batch(void **state) {
  (void)state;
  static capture single;
  enc res[2], sc[2], recs[5], req = {0};
  resource(&res[0], "first");
  resource(&res[1], "second");
  scope(&sc[0], "a");
  scope(&sc[1], "b");
  for (int i = 0; i < 5; i++) log_record(&recs[i], i == 2 ? "a longer body for the third record" : "x", i == 3 ? TID : NULL);
  for (int r = 0; r < 2; r++)
    for (int s = 0; s < 2; s++) put_resource_x(&req, &res[r], &sc[s], recs, 5, NULL);
  kl_otlp_result out;
  assert_int_equal(split(KL_SIG_LOGS, &req, &OPTS, &out), 0);
  assert_int_equal(out.accepted, 20);
  memcpy(&single, &cap, sizeof cap);

  /* no limit: one message, the first record's key */
  kl_otlp_opts o = OPTS;
  o.batch = 1;
  assert_int_equal(split(KL_SIG_LOGS, &req, &o, &out), 0);
  assert_int_equal(out.accepted, 20);
  assert_int_equal(cap.count, 1);
  assert_string_equal(cap.key[0], "first");
  assert_int_equal(cap.len[0], req.n); /* the same grouping as the request: its own bytes */
  assert_memory_equal(msg(0), req.b, req.n);

  for (size_t max = 200; max < req.n; max += 97) {
    o.batch_max = max;
    assert_int_equal(split(KL_SIG_LOGS, &req, &o, &out), 0);
    assert_int_equal(out.accepted, 20);
    assert_int_equal(out.rejected, 0);
    assert_true(cap.count > 1);
    static capture batches;
    memcpy(&batches, &cap, sizeof cap);
    size_t k = 0; /* the single records, in order */
    for (size_t i = 0; i < batches.count; i++) {
      assert_true(batches.len[i] <= max);
      assert_true(batches.niov[i] <= KL_OTLP_BATCH_IOV_MAX);
      enc m = {0};
      memcpy(m.b, batches.buf + batches.off[i], batches.len[i]);
      m.n = batches.len[i];
      kl_otlp_result o2;
      assert_int_equal(split(KL_SIG_LOGS, &m, &OPTS, &o2), 0);
      assert_string_equal(batches.key[i], single.key[k]);
      for (size_t j = 0; j < cap.count; j++, k++) {
        assert_int_equal(cap.len[j], single.len[k]);
        assert_memory_equal(cap.buf + cap.off[j], single.buf + single.off[k], cap.len[j]);
      }
    }
    assert_int_equal(k, 20);
  }

  /* a record bigger than the limit alone is rejected alone */
  o.batch_max = single.len[2] - 1;
  assert_int_equal(split(KL_SIG_LOGS, &req, &o, &out), 0);
  assert_int_equal(out.rejected, 4);
  assert_int_equal(out.accepted, 16);
  assert_non_null(strstr(out.error, "exceeds the message limit"));
  for (size_t i = 0; i < cap.count; i++) assert_true(cap.len[i] <= o.batch_max);
}

/* Batch mode for metrics: points of one metric share its headers. */
static void test_batch_metrics(void **state) {
  (void)state;
  enc pts[4], data = {0}, metric = {0}, res, sc, req = {0};
  for (int i = 0; i < 4; i++) {
    number_point(&pts[i], i);
    put_msg(&data, 1, &pts[i]);
  }
  put_vint(&data, 2, 1);
  put_vint(&data, 3, 1);
  put_str(&metric, 1, "requests");
  put_msg(&metric, 7, &data);
  resource(&res, "svc");
  scope(&sc, "m");
  put_resource_x(&req, &res, &sc, &metric, 1, NULL);
  kl_otlp_opts o = OPTS;
  o.batch = 1;
  kl_otlp_result out;
  assert_int_equal(split(KL_SIG_METRICS, &req, &o, &out), 0);
  assert_int_equal(out.accepted, 4);
  assert_int_equal(cap.count, 1);
  assert_int_equal(cap.len[0], req.n); /* nothing unknown: the request itself */
  assert_memory_equal(msg(0), req.b, req.n);
}

/* Batch mode: a request of many small groups needs more iovecs than a message may have. */
static void test_batch_iov_limit(void **state) {
  (void)state;
  enc res = {0}, rec = {0}, req = {0};
  put_vint(&rec, 2, 9);
  for (int i = 0; i < 100; i++) {
    char svc[8];
    snprintf(svc, sizeof svc, "r%d", i);
    res.n = 0;
    put_attr(&res, 1, "service.name", svc);
    put_resource_x(&req, &res, NULL, &rec, 1, NULL);
  }
  kl_otlp_opts o = OPTS;
  o.batch = 1;
  kl_otlp_result out;
  assert_int_equal(split(KL_SIG_LOGS, &req, &o, &out), 0);
  assert_int_equal(out.accepted, 100);
  assert_true(cap.count >= 2);
  size_t total = 0;
  for (size_t i = 0; i < cap.count; i++) {
    assert_true(cap.niov[i] <= KL_OTLP_BATCH_IOV_MAX);
    total += cap.len[i];
  }
  assert_string_equal(cap.key[0], "r0");
  /* the messages are the request cut at resource boundaries */
  assert_int_equal(total, req.n);
  assert_memory_equal(cap.buf, req.b, req.n);
}

static void test_responses(void **state) {
  (void)state;
  kl_otlp_result res;
  memset(&res, 0, sizeof res);
  char js[256];
  uint8_t pb[64];
  assert_int_equal(kl_otlp_response_pb(KL_SIG_TRACES, &res, pb, sizeof pb), 0);
  assert_int_equal(kl_otlp_response_json(KL_SIG_TRACES, &res, js, sizeof js), 2);
  assert_string_equal(js, "{}");

  res.rejected = 3;
  snprintf(res.error, sizeof res.error, "Span: \"bad\"\n");
  const char *want[] = {
      "{\"partialSuccess\":{\"rejectedLogRecords\":\"3\",\"errorMessage\":\"Span: \\\"bad\\\"\\n\"}}",
      "{\"partialSuccess\":{\"rejectedSpans\":\"3\",\"errorMessage\":\"Span: \\\"bad\\\"\\n\"}}",
      "{\"partialSuccess\":{\"rejectedDataPoints\":\"3\",\"errorMessage\":\"Span: \\\"bad\\\"\\n\"}}",
  };
  for (int sig = 0; sig < KL_SIG_COUNT; sig++) {
    size_t n = kl_otlp_response_json((kl_signal)sig, &res, js, sizeof js);
    assert_int_equal(n, strlen(want[sig]));
    assert_string_equal(js, want[sig]);
    /* too small: the length needed, no overflow */
    char small[20];
    memset(small, 'z', sizeof small);
    assert_int_equal(kl_otlp_response_json((kl_signal)sig, &res, small, 10), n);
    assert_int_equal(small[10], 'z');
  }
  res.error[0] = '\0';
  res.rejected = 300;
  assert_int_equal(kl_otlp_response_json(KL_SIG_LOGS, &res, js, sizeof js),
                   strlen("{\"partialSuccess\":{\"rejectedLogRecords\":\"300\"}}"));
  assert_string_equal(js, "{\"partialSuccess\":{\"rejectedLogRecords\":\"300\"}}");
  static const uint8_t want_pb[] = {0x0a, 0x03, 0x08, 0xac, 0x02};
  assert_int_equal(kl_otlp_response_pb(KL_SIG_METRICS, &res, pb, sizeof pb), sizeof want_pb);
  assert_memory_equal(pb, want_pb, sizeof want_pb);
  assert_int_equal(kl_otlp_response_pb(KL_SIG_METRICS, &res, pb, 2), sizeof want_pb);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_logs),
      cmocka_unit_test(test_traces),
      cmocka_unit_test(test_keys),
      cmocka_unit_test(test_metrics_every_kind),
      cmocka_unit_test(test_unknown_fields_skipped),
      cmocka_unit_test(test_rejected_records),
      cmocka_unit_test(test_envelope_errors),
      cmocka_unit_test(test_depth_limit),
      cmocka_unit_test(test_empty),
      cmocka_unit_test(test_emit_stops),
      cmocka_unit_test(test_batch),
      cmocka_unit_test(test_batch_metrics),
      cmocka_unit_test(test_batch_iov_limit),
      cmocka_unit_test(test_responses),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
