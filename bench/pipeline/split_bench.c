/* split_bench.c - microbenchmark of kl_otlp_split (decode, check, split, re-encode to a null sink). */
/*
 * The input is an OTLP export request: by default two built in memory, an
 * ExportLogsServiceRequest of 100 log records (~600-byte bodies, a few attributes, trace and
 * span ids) and an ExportTraceServiceRequest of 100 spans (~10 attributes each), each under one
 * resource (5 attributes, service.name among them) and one scope; with --input FILE, the
 * Export{Logs,Trace}ServiceRequest in FILE (--signal says which; logs by default), such as the
 * pipeline peers' otlp-logs-100.pb (bench/peers/otlp_gen.py), so that keel and the Go and Rust
 * peers split the same bytes.
 *
 * Each of --threads T threads (default 1) splits the request over and over, `--iterations`
 * times, or with --seconds S until S seconds have passed (the clock read once per request, as
 * the peers do), into its own null sink: an emit callback that gathers every message's iovecs
 * into a buffer (the copy a writer would make; the peers encode into a buffer) and counts the
 * records and bytes. The default output is a line per signal with records/s and a checksum (so
 * the work cannot be optimised away, and so that a change to the splitter's output shows);
 * --json prints the peers' line instead:
 *   {"records": N, "seconds": S, "records_per_s": R, "bytes_out": B, "max_rss_kb": K}
 * (max_rss_kb: VmHWM of /proc/self/status). For instruction counts run it under callgrind with
 * few iterations; for wall-clock numbers pin it (taskset -c 1).
 *
 * usage: split_bench [--iterations N | --seconds S] [--threads T] [--signal logs|traces|both]
 *                    [--input FILE] [--json]
 */
#include <errno.h>
#include <pthread.h>
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
  uint8_t *buf;
  size_t cap;
  uint64_t records, bytes_out, sum;
} sink;

static int gather(void *arg, const kl_otlp_record *rec) {
  sink *k = arg;
  if (rec->len > k->cap) {
    free(k->buf);
    k->cap = rec->len * 2;
    k->buf = malloc(k->cap);
    if (!k->buf) return -ENOMEM;
  }
  size_t n = 0;
  for (size_t i = 0; i < rec->niov; i++) {
    memcpy(k->buf + n, rec->iov[i].iov_base, rec->iov[i].iov_len);
    n += rec->iov[i].iov_len;
  }
  k->records++;
  k->bytes_out += n;
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

/* ---- the runs ---- */

typedef struct job {
  _Alignas(128) kl_signal sig; /* one thread's job per cache-line pair: no false sharing */
  const uint8_t *req;
  size_t len;
  uint64_t per_req;  /* records one split must emit */
  long iterations;   /* when deadline is 0 */
  double deadline;   /* CLOCK_MONOTONIC seconds, or 0 */
  sink k;
  int failed;
  kl_otlp_result res;
} job;

static const kl_otlp_opts OPTS = {.key_attr = "service.name", .key_attr_len = sizeof "service.name" - 1};

static void *work(void *arg) {
  job *j = arg;
  for (long i = 0;; i++) {
    if (j->deadline > 0 ? i > 0 && now() >= j->deadline : i >= j->iterations) break;
    int rc = kl_otlp_split(j->sig, j->req, j->len, &OPTS, gather, &j->k, &j->res);
    if (rc || j->res.accepted != j->per_req || j->res.rejected) {
      j->failed = rc ? rc : -1;
      break;
    }
  }
  return NULL;
}

static long vm_hwm_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kb = 0;
  if (!f) return 0;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "VmHWM:", 6) == 0) {
      kb = strtol(line + 6, NULL, 10);
      break;
    }
  fclose(f);
  return kb;
}

typedef struct cfg {
  long iterations;
  double seconds;
  int threads;
  int json;
} cfg;

static int run(const char *name, kl_signal sig, const uint8_t *req, size_t len, const cfg *c) {
  /* one split first: how many records a request holds (all must be accepted) */
  kl_otlp_result res;
  int rc = kl_otlp_split(sig, req, len, &OPTS, NULL, NULL, &res);
  if (rc || !res.accepted || res.rejected) {
    fprintf(stderr, "split_bench: %s: rc %d, %llu accepted, %llu rejected: %s\n", name, rc,
            (unsigned long long)res.accepted, (unsigned long long)res.rejected, res.error);
    return 1;
  }
  job *jobs = aligned_alloc(_Alignof(job), (size_t)c->threads * sizeof *jobs);
  pthread_t *tids = calloc((size_t)c->threads, sizeof *tids);
  if (!jobs || !tids) {
    fprintf(stderr, "split_bench: out of memory\n");
    exit(1);
  }
  double t0 = now();
  int started = 0;
  for (int t = 0; t < c->threads; t++) {
    jobs[t] = (job){.sig = sig, .req = req, .len = len, .per_req = res.accepted,
                    .iterations = c->iterations, .deadline = c->seconds > 0 ? t0 + c->seconds : 0};
    if (c->threads == 1) {
      work(&jobs[t]);
    } else if ((rc = pthread_create(&tids[t], NULL, work, &jobs[t])) != 0) {
      fprintf(stderr, "split_bench: pthread_create: %s\n", strerror(rc));
      exit(1);
    } else {
      started++;
    }
  }
  for (int t = 0; t < started; t++) pthread_join(tids[t], NULL);
  double dt = now() - t0;
  sink tot = {0};
  int failed = 0;
  for (int t = 0; t < c->threads; t++) {
    const job *j = &jobs[t];
    if (j->failed && !failed++)
      fprintf(stderr, "split_bench: %s: rc %d, %llu accepted, %llu rejected: %s\n", name, j->failed,
              (unsigned long long)j->res.accepted, (unsigned long long)j->res.rejected, j->res.error);
    tot.records += j->k.records;
    tot.bytes_out += j->k.bytes_out;
    tot.sum ^= j->k.sum;
    free(j->k.buf);
  }
  free(jobs);
  free(tids);
  if (failed) return 1;
  double recs = (double)tot.records;
  if (c->json) {
    printf("{\"records\": %llu, \"seconds\": %.6f, \"records_per_s\": %.1f, \"bytes_out\": %llu, "
           "\"max_rss_kb\": %ld}\n",
           (unsigned long long)tot.records, dt, dt > 0 ? recs / dt : 0.0,
           (unsigned long long)tot.bytes_out, vm_hwm_kb());
  } else {
    printf("%-7s request %zu bytes, %llu records, %.0f iterations", name, len,
           (unsigned long long)res.accepted, recs / (double)res.accepted);
    if (c->threads > 1) printf(" (%d threads)", c->threads);
    printf(": %.3f s, %.0f records/s, %.1f ns/record, %.0f bytes/record, checksum %016llx\n", dt,
           dt > 0 ? recs / dt : 0.0, recs > 0 ? dt * 1e9 / recs : 0.0,
           recs > 0 ? (double)tot.bytes_out / recs : 0.0, (unsigned long long)tot.sum);
  }
  return 0;
}

static uint8_t *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "split_bench: %s: %s\n", path, strerror(errno));
    return NULL;
  }
  uint8_t *b = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (n == cap) {
      cap = cap ? 2 * cap : 1 << 16;
      uint8_t *nb = realloc(b, cap);
      if (!nb) {
        fprintf(stderr, "split_bench: out of memory\n");
        exit(1);
      }
      b = nb;
    }
    size_t got = fread(b + n, 1, cap - n, f);
    n += got;
    if (got == 0) break;
  }
  int bad = ferror(f);
  fclose(f);
  if (bad || n == 0) {
    fprintf(stderr, "split_bench: %s: %s\n", path, bad ? "read error" : "empty");
    free(b);
    return NULL;
  }
  *len = n;
  return b;
}

static int usage(const char *argv0) {
  fprintf(stderr,
          "usage: %s [--iterations N | --seconds S] [--threads T] [--signal logs|traces|both] "
          "[--input FILE] [--json]\n",
          argv0);
  return 2;
}

int main(int argc, char **argv) {
  cfg c = {.iterations = 20000, .threads = 1};
  const char *signal = NULL, *input = NULL;
  for (int i = 1; i < argc; i++) {
    char *end = NULL;
    if (strcmp(argv[i], "--iterations") == 0 && i + 1 < argc) {
      c.iterations = strtol(argv[++i], &end, 10);
    } else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
      c.seconds = strtod(argv[++i], &end);
      if (!(c.seconds > 0)) return usage(argv[0]);
    } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
      long t = strtol(argv[++i], &end, 10);
      if (t < 1 || t > 1024) return usage(argv[0]);
      c.threads = (int)t;
    } else if (strcmp(argv[i], "--signal") == 0 && i + 1 < argc) {
      signal = argv[++i];
    } else if (strcmp(argv[i], "--input") == 0 && i + 1 < argc) {
      input = argv[++i];
    } else if (strcmp(argv[i], "--json") == 0) {
      c.json = 1;
    } else {
      return usage(argv[0]);
    }
    if (end && *end) return usage(argv[0]);
  }
  if (c.iterations < 1) c.iterations = 1;
  if (!signal) signal = input || c.json ? "logs" : "both";
  int logs = strcmp(signal, "logs") == 0, traces = strcmp(signal, "traces") == 0;
  if (strcmp(signal, "both") == 0 && !input && !c.json) logs = traces = 1;
  if (!logs && !traces) {
    fprintf(stderr, "split_bench: --signal logs, traces or both (both: without --input or --json)\n");
    return 2;
  }
  int rc = 0;
  if (input) {
    size_t len = 0;
    uint8_t *req = read_file(input, &len);
    if (!req) return 1;
    rc = run(logs ? "logs" : "traces", logs ? KL_SIG_LOGS : KL_SIG_TRACES, req, len, &c);
    free(req);
    return rc;
  }
  enc req = {0};
  if (logs) {
    build_logs(&req);
    rc |= run("logs", KL_SIG_LOGS, req.b, req.n, &c);
    req.n = 0;
  }
  if (traces) {
    build_traces(&req);
    rc |= run("traces", KL_SIG_TRACES, req.b, req.n, &c);
  }
  free(req.b);
  return rc;
}
