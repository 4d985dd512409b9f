/* split_bench.c - microbenchmark of kl_otlp_split (decode, check, split, re-encode to a null sink). */
/*
 * Builds two realistic requests in memory: an ExportLogsServiceRequest of 100 log records
 * (~600-byte bodies, a few attributes, trace and span ids) and an ExportTraceServiceRequest
 * of 100 spans (~10 attributes each), each under one resource (5 attributes, service.name
 * among them) and one scope. Then splits each one `--iterations` times with an emit callback
 * that gathers every message's iovecs into a buffer, as writing it to a null sink would.
 * Prints records/s per signal and a checksum (so the work cannot be optimised away, and so
 * that a change to the splitter's output shows). For instruction counts run it under
 * callgrind with few iterations; for wall-clock numbers pin it (taskset -c 1).
 *
 * usage: split_bench [--iterations N] [--signal logs|traces|both]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pipeline/otlp.h"
#include "pipeline/pb.h"

#define RECORDS 100

/* ---- a tiny protobuf encoder: sub-messages are built into their own buffers first ---- */

typedef struct enc {
  uint8_t *b;
  size_t n, cap;
} enc;

static void need(enc *e, size_t more) {
  if (e->n + more <= e->cap) return;
  e->cap = 2 * (e->n + more) + 256;
  e->b = realloc(e->b, e->cap);
  if (!e->b) {
    fprintf(stderr, "split_bench: out of memory\n");
    exit(1);
  }
}

static void put_varint(enc *e, uint64_t v) {
  need(e, 10);
  do {
    uint8_t c = v & 0x7f;
    v >>= 7;
    e->b[e->n++] = (uint8_t)(c | (v ? 0x80 : 0));
  } while (v);
}

static void put_key(enc *e, uint32_t num, unsigned wt) {
  put_varint(e, (uint64_t)num << 3 | wt);
}

static void put_len(enc *e, uint32_t num, const void *p, size_t n) {
  put_key(e, num, KL_PB_LEN);
  put_varint(e, n);
  need(e, n);
  if (n) memcpy(e->b + e->n, p, n);
  e->n += n;
}

static void put_msg(enc *e, uint32_t num, enc *sub) {
  put_len(e, num, sub->b, sub->n);
  sub->n = 0;
}

static void put_str(enc *e, uint32_t num, const char *s) {
  put_len(e, num, s, strlen(s));
}

static void put_vint(enc *e, uint32_t num, uint64_t v) {
  put_key(e, num, KL_PB_VARINT);
  put_varint(e, v);
}

static void put_fixed(enc *e, uint32_t num, uint64_t v, unsigned bytes) {
  put_key(e, num, bytes == 8 ? KL_PB_I64 : KL_PB_I32);
  need(e, bytes);
  for (unsigned i = 0; i < bytes; i++) e->b[e->n++] = (uint8_t)(v >> (8 * i));
}

/* KeyValue{key, AnyValue{string_value}} as field `num` of e. */
static void put_attr_str(enc *e, uint32_t num, const char *key, const char *val) {
  enc any = {0}, kv = {0};
  put_str(&any, 1, val);
  put_str(&kv, 1, key);
  put_msg(&kv, 2, &any);
  put_msg(e, num, &kv);
  free(any.b);
  free(kv.b);
}

/* KeyValue{key, AnyValue{int_value}} as field `num` of e. */
static void put_attr_int(enc *e, uint32_t num, const char *key, int64_t val) {
  enc any = {0}, kv = {0};
  put_vint(&any, 3, (uint64_t)val);
  put_str(&kv, 1, key);
  put_msg(&kv, 2, &any);
  put_msg(e, num, &kv);
  free(any.b);
  free(kv.b);
}

static void ids(uint8_t *tid, uint8_t *sid, unsigned i) {
  for (unsigned k = 0; k < 16; k++) tid[k] = (uint8_t)(i * 31 + k * 7 + 1);
  for (unsigned k = 0; k < 8; k++) sid[k] = (uint8_t)(i * 17 + k * 5 + 3);
}

/* Resource (5 attributes, service.name among them) and scope, into `rs` as ResourceX fields. */
static void envelope(enc *res, enc *scope) {
  put_attr_str(res, 1, "service.name", "checkout");
  put_attr_str(res, 1, "service.version", "1.14.2");
  put_attr_str(res, 1, "deployment.environment", "production");
  put_attr_str(res, 1, "host.name", "ip-10-0-12-34.eu-west-1.compute.internal");
  put_attr_int(res, 1, "process.pid", 31337);
  put_str(scope, 1, "io.opentelemetry.contrib.slf4j");
  put_str(scope, 2, "2.3.0");
}

/* ExportLogsServiceRequest: 100 log records, a ~600-byte body each. */
static void build_logs(enc *req) {
  enc res = {0}, scope = {0}, sl = {0}, rl = {0}, lr = {0}, any = {0};
  envelope(&res, &scope);
  put_msg(&sl, 1, &scope);
  char body[640];
  static const char words[] = "GET /api/v2/orders/ 200 user=alice latency_ms=12 cache=miss "
                              "upstream=orders-svc:8080 bytes=5123 tls=1.3 é ";
  for (unsigned i = 0; i < RECORDS; i++) {
    size_t n = 0;
    n += (size_t)snprintf(body, sizeof body, "[%u] ", i);
    while (n + sizeof words < 600) {
      memcpy(body + n, words, sizeof words - 1);
      n += sizeof words - 1;
    }
    body[n] = '\0';
    uint8_t tid[16], sid[8];
    ids(tid, sid, i);
    put_fixed(&lr, 1, 1700000000000000000ull + i * 1000, 8);
    put_vint(&lr, 2, 9);
    put_str(&lr, 3, "INFO");
    put_str(&any, 1, body);
    put_msg(&lr, 5, &any);
    put_attr_str(&lr, 6, "http.method", "GET");
    put_attr_int(&lr, 6, "http.status_code", 200);
    put_attr_str(&lr, 6, "user.id", "alice");
    put_fixed(&lr, 8, 1, 4);
    put_len(&lr, 9, tid, 16);
    put_len(&lr, 10, sid, 8);
    put_fixed(&lr, 11, 1700000000000000500ull + i * 1000, 8);
    put_msg(&sl, 2, &lr);
  }
  put_str(&sl, 3, "https://opentelemetry.io/schemas/1.24.0");
  put_msg(&rl, 1, &res);
  put_msg(&rl, 2, &sl);
  put_str(&rl, 3, "https://opentelemetry.io/schemas/1.24.0");
  put_msg(req, 1, &rl);
  free(res.b), free(scope.b), free(sl.b), free(rl.b), free(lr.b), free(any.b);
}

/* ExportTraceServiceRequest: 100 spans with 10 attributes each. */
static void build_traces(enc *req) {
  enc res = {0}, scope = {0}, ss = {0}, rs = {0}, sp = {0}, st = {0};
  envelope(&res, &scope);
  put_msg(&ss, 1, &scope);
  for (unsigned i = 0; i < RECORDS; i++) {
    uint8_t tid[16], sid[8], pid[8];
    ids(tid, sid, i);
    ids(tid, pid, i + 1000);
    put_len(&sp, 1, tid, 16);
    put_len(&sp, 2, sid, 8);
    put_len(&sp, 4, pid, 8);
    put_str(&sp, 5, "HTTP GET /api/v2/orders/{id}");
    put_vint(&sp, 6, 2);
    put_fixed(&sp, 7, 1700000000000000000ull + i * 1000, 8);
    put_fixed(&sp, 8, 1700000000000900000ull + i * 1000, 8);
    put_attr_str(&sp, 9, "http.request.method", "GET");
    put_attr_str(&sp, 9, "url.path", "/api/v2/orders/4711");
    put_attr_str(&sp, 9, "url.scheme", "https");
    put_attr_int(&sp, 9, "http.response.status_code", 200);
    put_attr_str(&sp, 9, "server.address", "orders.internal.example.com");
    put_attr_int(&sp, 9, "server.port", 8443);
    put_attr_str(&sp, 9, "network.protocol.version", "2");
    put_attr_str(&sp, 9, "user_agent.original", "Mozilla/5.0 (X11; Linux x86_64) keel-bench/1.0");
    put_attr_str(&sp, 9, "client.address", "10.0.7.19");
    put_attr_int(&sp, 9, "http.request.body.size", 512 + i);
    put_vint(&st, 3, 1);
    put_msg(&sp, 15, &st);
    put_msg(&ss, 2, &sp);
  }
  put_msg(&rs, 1, &res);
  put_msg(&rs, 2, &ss);
  put_msg(req, 1, &rs);
  free(res.b), free(scope.b), free(ss.b), free(rs.b), free(sp.b), free(st.b);
}

/* ---- the null sink: each message gathered into one buffer, as an encoder would write it ---- */

typedef struct sink {
  uint8_t buf[1 << 16];
  uint64_t sum;
} sink;

static int gather(void *arg, const kl_otlp_record *rec) {
  sink *k = arg;
  if (rec->len > sizeof k->buf) return -1;
  size_t n = 0;
  for (size_t i = 0; i < rec->niov; i++) {
    memcpy(k->buf + n, rec->iov[i].iov_base, rec->iov[i].iov_len);
    n += rec->iov[i].iov_len;
  }
  /* cheap: length, a few bytes of the message and the key */
  k->sum = k->sum * 31 + n + k->buf[0] + k->buf[n / 2] + k->buf[n - 1];
  if (rec->key_len) k->sum += rec->key[0] + rec->key[rec->key_len - 1];
  return 0;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int run(const char *name, kl_signal sig, const enc *req, long iterations, sink *k) {
  kl_otlp_opts opts = {.key_attr = "service.name", .key_attr_len = strlen("service.name")};
  kl_otlp_result res;
  k->sum = 0;
  double t0 = now();
  for (long i = 0; i < iterations; i++) {
    int rc = kl_otlp_split(sig, req->b, req->n, &opts, gather, k, &res);
    if (rc || res.accepted != RECORDS || res.rejected) {
      fprintf(stderr, "split_bench: %s: rc %d, %llu accepted, %llu rejected: %s\n", name, rc,
              (unsigned long long)res.accepted, (unsigned long long)res.rejected, res.error);
      return 1;
    }
  }
  double dt = now() - t0;
  double recs = (double)iterations * RECORDS;
  printf("%-7s request %zu bytes, %d records, %ld iterations: %.3f s, %.0f records/s, "
         "%.1f ns/record, checksum %016llx\n",
         name, req->n, RECORDS, iterations, dt, dt > 0 ? recs / dt : 0.0, dt * 1e9 / recs,
         (unsigned long long)k->sum);
  return 0;
}

int main(int argc, char **argv) {
  long iterations = 20000;
  const char *signal = "both";
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--iterations") == 0 && i + 1 < argc) {
      iterations = strtol(argv[++i], NULL, 10);
    } else if (strcmp(argv[i], "--signal") == 0 && i + 1 < argc) {
      signal = argv[++i];
    } else {
      fprintf(stderr, "usage: %s [--iterations N] [--signal logs|traces|both]\n", argv[0]);
      return 2;
    }
  }
  if (iterations < 1) iterations = 1;
  static sink k;
  enc logs = {0}, traces = {0};
  build_logs(&logs);
  build_traces(&traces);
  int rc = 0;
  if (strcmp(signal, "traces") != 0) rc |= run("logs", KL_SIG_LOGS, &logs, iterations, &k);
  if (strcmp(signal, "logs") != 0) rc |= run("traces", KL_SIG_TRACES, &traces, iterations, &k);
  free(logs.b);
  free(traces.b);
  return rc;
}
