/* test_sink.c - unit tests for the sink: file backend, and Kafka against an in-process mock. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "pipeline/sink.h"

/* ---- a fake source: records in memory, positions as a log would give them ---- */

#define FAKE_MAX 4096
#define FRAME 20 /* bytes a log would spend framing each record (positions only) */

typedef struct fake_rec {
  uint64_t pos, next, time_ns;
  uint8_t *data;
  uint32_t len;
} fake_rec;

typedef struct fake_src {
  pthread_mutex_t mu;
  fake_rec recs[FAKE_MAX];
  size_t n, cursor, committed; /* committed: records committed so far */
  uint64_t committed_pos, commits, rewinds;
  uint8_t *readbuf; /* freed at the next read: ASan catches a stale pointer */
  uint64_t memory, max_len, max_held;
  int bad_commit; /* a commit that was not the next record boundary */
  /* on_delivered */
  _Atomic uint64_t delivered[KL_SIG_COUNT];
  _Atomic int first_sig;          /* signal of the first delivery, -1 before */
  _Atomic int commit_before_logs; /* a commit happened while no logs record was delivered */
} fake_src;

static void fake_init(fake_src *f) {
  memset(f, 0, sizeof *f);
  pthread_mutex_init(&f->mu, NULL);
  f->first_sig = -1;
}

static void fake_free(fake_src *f) {
  for (size_t i = 0; i < f->n; i++)
    free(f->recs[i].data);
  free(f->readbuf);
  pthread_mutex_destroy(&f->mu);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Appends a raw payload. */
static void fake_add_raw(fake_src *f, const void *p, size_t len) {
  pthread_mutex_lock(&f->mu);
  assert_true(f->n < FAKE_MAX);
  fake_rec *r = &f->recs[f->n];
  r->pos = f->n ? f->recs[f->n - 1].next : 1000;
  r->next = r->pos + FRAME + len;
  r->time_ns = now_ns();
  r->data = malloc(len ? len : 1);
  memcpy(r->data, p, len);
  r->len = (uint32_t)len;
  if (len > f->max_len) f->max_len = len;
  f->n++;
  pthread_mutex_unlock(&f->mu);
}

/* Appends a kl_rec payload. */
static void fake_add(fake_src *f, kl_signal sig, kl_format fmt, const char *key, const void *msg,
                     size_t msg_len) {
  uint8_t buf[8192];
  size_t kl = key ? strlen(key) : 0;
  size_t h = kl_rec_head(buf, sig, fmt, key, kl);
  assert_true(h + msg_len <= sizeof buf);
  memcpy(buf + h, msg, msg_len);
  fake_add_raw(f, buf, h + msg_len);
}

static size_t fake_read(void *arg, kl_wal_rec *out, size_t max, size_t bytes) {
  fake_src *f = arg;
  pthread_mutex_lock(&f->mu);
  size_t n = 0, sum = 0;
  while (f->cursor + n < f->n && n < max) {
    size_t l = f->recs[f->cursor + n].len;
    if (n && sum + l > bytes) break;
    sum += l;
    n++;
  }
  free(f->readbuf);
  f->readbuf = malloc(sum ? sum : 1);
  size_t off = 0;
  for (size_t i = 0; i < n; i++) {
    const fake_rec *r = &f->recs[f->cursor + i];
    memcpy(f->readbuf + off, r->data, r->len);
    out[i] = (kl_wal_rec){.pos = r->pos,
                          .next = r->next,
                          .time_ns = r->time_ns,
                          .data = f->readbuf + off,
                          .len = r->len};
    off += r->len;
  }
  f->cursor += n;
  /* What the sink holds from this source: read and not committed. */
  uint64_t held = 0;
  for (size_t i = f->committed; i < f->cursor; i++)
    held += f->recs[i].len;
  if (held > f->max_held) f->max_held = held;
  pthread_mutex_unlock(&f->mu);
  return n;
}

static void fake_commit(void *arg, uint64_t pos, uint64_t nrec) {
  fake_src *f = arg;
  pthread_mutex_lock(&f->mu);
  size_t want = f->committed + nrec;
  if (nrec == 0 || want > f->cursor || f->recs[want - 1].next != pos) f->bad_commit = 1;
  f->committed = want;
  f->committed_pos = pos;
  f->commits++;
  if (atomic_load(&f->delivered[KL_SIG_LOGS]) == 0) atomic_store(&f->commit_before_logs, 1);
  pthread_mutex_unlock(&f->mu);
}

static void fake_rewind(void *arg) {
  fake_src *f = arg;
  pthread_mutex_lock(&f->mu);
  f->cursor = f->committed;
  f->rewinds++;
  pthread_mutex_unlock(&f->mu);
}

static void on_delivered(void *arg, kl_signal sig, uint64_t latency_us, uint64_t n) {
  fake_src *f = arg;
  (void)latency_us;
  int none = -1;
  atomic_compare_exchange_strong(&f->first_sig, &none, (int)sig);
  atomic_fetch_add(&f->delivered[sig], n);
}

static size_t fake_committed(fake_src *f) {
  pthread_mutex_lock(&f->mu);
  size_t c = f->committed;
  pthread_mutex_unlock(&f->mu);
  return c;
}

static kl_sink_src fake_iface(fake_src *f) {
  return (kl_sink_src){.read = fake_read, .commit = fake_commit, .rewind = fake_rewind, .arg = f};
}

/* Waits up to ms for `committed` records. */
static int wait_committed(fake_src *f, size_t want, int ms) {
  for (int i = 0; i < ms / 5; i++) {
    if (fake_committed(f) >= want) return 1;
    usleep(5000);
  }
  return fake_committed(f) >= want;
}

/* Record i of a test stream: signal, format, key and a message naming i. */
static void add_nth(fake_src *f, int i) {
  char key[32], msg[64];
  kl_signal sig = (kl_signal)(i % KL_SIG_COUNT);
  kl_format fmt = i % 2 ? KL_FMT_JSON : KL_FMT_PROTO;
  snprintf(key, sizeof key, "key-%d", i % 7);
  int n = fmt == KL_FMT_JSON ? snprintf(msg, sizeof msg, "{\"id\":%d}", i)
                             : snprintf(msg, sizeof msg, "pb-%d", i);
  fake_add(f, sig, fmt, i % 5 ? key : NULL, msg, (size_t)n);
}

/* ---- the file sink ---------------------------------------------------------- */

static size_t read_file(const char *path, char *out, size_t cap) {
  FILE *fp = fopen(path, "r");
  assert_non_null(fp);
  size_t n = fread(out, 1, cap - 1, fp);
  out[n] = '\0';
  fclose(fp);
  return n;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names in dir starting with prefix; returns how many (names malloc'ed). */
static size_t list_files(const char *dir, const char *prefix, char **names, size_t cap) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  size_t n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (!strncmp(e->d_name, prefix, strlen(prefix)) && n < cap) names[n++] = strdup(e->d_name);
  closedir(d);
  qsort(names, n, sizeof *names, cmp_str);
  return n;
}

static void rm_tree(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *e;
  char p[512];
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    unlink(p);
  }
  closedir(d);
  rmdir(dir);
}

/* One line per record, rotation at file_bytes, file_keep files kept, commits in order. */
static void test_file_sink(void **state) {
  (void)state;
  char base[] = "/tmp/keel-sink-XXXXXX";
  assert_non_null(mkdtemp(base));
  char dir[256];
  snprintf(dir, sizeof dir, "%s/out", base); /* created by the sink */
  static fake_src f;
  fake_init(&f);
  kl_sink_src src = fake_iface(&f);
  kl_sink_opts o = {.file_dir = dir,
                    .file_bytes = 120,
                    .file_keep = 2,
                    .memory_bytes = 1 << 20,
                    .on_delivered = on_delivered,
                    .arg = &f};
  char err[256] = "";
  kl_sink *s = kl_sink_start(&o, &src, err, sizeof err);
  assert_non_null(s);

  const int nlogs = 40;
  char msg[64];
  for (int i = 0; i < nlogs; i++) {
    /* A newline between tokens must not break the line. */
    int n = snprintf(msg, sizeof msg, i == 3 ? "{\"n\":\n%d}" : "{\"n\":%d}", i);
    fake_add(&f, KL_SIG_LOGS, KL_FMT_JSON, "k", msg, (size_t)n);
  }
  static const uint8_t pb_ok[] = {0x0a, 0x02, 0x0a, 0x00}; /* resource_spans { resource {} } */
  static const uint8_t pb_bad[] = {0x0a, 0x7f, 0x01};      /* length beyond the end */
  fake_add(&f, KL_SIG_TRACES, KL_FMT_PROTO, NULL, pb_ok, sizeof pb_ok);
  fake_add(&f, KL_SIG_METRICS, KL_FMT_PROTO, NULL, pb_bad, sizeof pb_bad);
  fake_add_raw(&f, "\x09garbage", 8); /* not a record at all */
  kl_sink_wake(s);
  assert_true(wait_committed(&f, (size_t)nlogs + 3, 5000));

  kl_sink_stats st;
  kl_sink_get_stats(s, &st);
  assert_int_equal(st.delivered[KL_SIG_LOGS], nlogs);
  assert_int_equal(st.delivered[KL_SIG_TRACES], 1);
  assert_int_equal(st.delivered[KL_SIG_METRICS], 0);
  assert_int_equal(st.bad_records, 2);
  assert_int_equal(st.in_flight, 0);
  assert_int_equal(kl_sink_stop(s, 1000), 0);
  assert_false(f.bad_commit);
  assert_int_equal(f.committed_pos, f.recs[f.n - 1].next);

  /* Logs: two files left, whose lines are the last records, in order, one per line. */
  char *names[64];
  size_t nf = list_files(dir, "logs-", names, 64);
  assert_int_equal(nf, 2);
  int expect = -1;
  for (size_t i = 0; i < nf; i++) {
    char path[512], buf[4096];
    assert_int_equal(strlen(names[i]), strlen("logs-") + 20 + strlen(".jsonl"));
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    read_file(path, buf, sizeof buf);
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
      int v = -1;
      assert_int_equal(sscanf(line, "{\"n\": %d}", &v), 1);
      if (expect >= 0) assert_int_equal(v, expect);
      expect = v + 1;
    }
    free(names[i]);
  }
  assert_int_equal(expect, nlogs);

  nf = list_files(dir, "traces-", names, 64);
  assert_int_equal(nf, 1);
  char path[512], buf[4096];
  snprintf(path, sizeof path, "%s/%s", dir, names[0]);
  size_t len = read_file(path, buf, sizeof buf);
  assert_true(len > 2 && buf[0] == '{' && buf[len - 1] == '\n' && !memchr(buf, '\n', len - 1));
  free(names[0]);

  nf = list_files(dir, "metrics-", names, 64);
  assert_int_equal(nf, 1);
  snprintf(path, sizeof path, "%s/%s", dir, names[0]);
  read_file(path, buf, sizeof buf);
  char want[128];
  snprintf(want, sizeof want, "{\"error\":\"undecodable record\",\"position\":%" PRIu64 "}\n",
           f.recs[nlogs + 1].pos);
  assert_string_equal(buf, want);
  free(names[0]);

  fake_free(&f);
  rm_tree(dir);
  rm_tree(base);
}

/* A directory that cannot be created fails the start with a message. */
static void test_bad_options(void **state) {
  (void)state;
  static fake_src f;
  fake_init(&f);
  kl_sink_src src = fake_iface(&f);
  char err[256] = "";
  kl_sink_opts o = {.file_dir = "/proc/keel-sink-cannot-exist/x"};
  assert_null(kl_sink_start(&o, &src, err, sizeof err));
  assert_true(strlen(err) > 0);
  static const char *const props[] = {"no.such.property=1", NULL};
  kl_sink_opts k = {.brokers = "127.0.0.1:1", .props = props};
  err[0] = '\0';
  assert_null(kl_sink_start(&k, &src, err, sizeof err));
  assert_non_null(strstr(err, "no.such.property"));
  fake_free(&f);
}

/* ---- Kafka against the mock cluster ---------------------------------------- */

typedef struct mock {
  rd_kafka_t *rk;
  rd_kafka_mock_cluster_t *mc;
  const char *boot;
} mock;

static const char *const topics[KL_SIG_COUNT] = {"t_logs", "t_traces", "t_metrics"};

static void mock_start(mock *m, int brokers, int partitions) {
  char e[256];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "log_level", "4", e, sizeof e);
  m->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, e, sizeof e);
  assert_non_null(m->rk);
  m->mc = rd_kafka_mock_cluster_new(m->rk, brokers);
  assert_non_null(m->mc);
  m->boot = rd_kafka_mock_cluster_bootstraps(m->mc);
  for (int i = 0; i < KL_SIG_COUNT; i++)
    assert_int_equal(rd_kafka_mock_topic_create(m->mc, topics[i], partitions, 1), 0);
}

static void mock_stop(mock *m) {
  rd_kafka_mock_cluster_destroy(m->mc);
  rd_kafka_destroy(m->rk);
}

/* Test-friendly producer settings: reconnect fast after a broker comes back. */
static const char *const test_props[] = {"reconnect.backoff.ms=20", "reconnect.backoff.max.ms=200",
                                         "retry.backoff.ms=20", "log_level=3", NULL};

static kl_sink *kafka_sink(mock *m, fake_src *f, uint64_t memory, const char *const *props) {
  kl_sink_src src = fake_iface(f);
  kl_sink_opts o = {.brokers = m->boot,
                    .compression = "lz4",
                    .linger_ms = 2,
                    .batch_messages = 1000,
                    .message_max = 1000000,
                    .memory_bytes = memory,
                    .props = props ? props : test_props,
                    .on_delivered = on_delivered,
                    .arg = f};
  for (int i = 0; i < KL_SIG_COUNT; i++)
    o.topic[i] = topics[i];
  char err[256] = "";
  kl_sink *s = kl_sink_start(&o, &src, err, sizeof err);
  if (!s) fail_msg("kl_sink_start: %s", err);
  return s;
}

typedef struct got_msg {
  int sig_topic; /* which of topics[] it came from */
  char key[32], value[64], sig[16], schema[96], ctype[32];
} got_msg;

static void header(const rd_kafka_message_t *m, const char *name, char *out, size_t cap) {
  rd_kafka_headers_t *h = NULL;
  const void *v = NULL;
  size_t n = 0;
  out[0] = '\0';
  if (rd_kafka_message_headers(m, &h) || rd_kafka_header_get_last(h, name, &v, &n)) return;
  if (n >= cap) n = cap - 1;
  memcpy(out, v, n);
  out[n] = '\0';
}

/* Reads the three topics from the beginning until `want` messages came (then 150 ms more,
 * to see duplicates); returns how many were read into out. */
static size_t consume(mock *m, int partitions, size_t want, got_msg *out, size_t cap) {
  char e[256];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", m->boot, e, sizeof e);
  rd_kafka_conf_set(conf, "group.id", "test_sink", e, sizeof e);
  rd_kafka_conf_set(conf, "enable.auto.commit", "false", e, sizeof e);
  rd_kafka_conf_set(conf, "fetch.wait.max.ms", "10", e, sizeof e);
  rd_kafka_conf_set(conf, "log_level", "3", e, sizeof e);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, e, sizeof e);
  assert_non_null(rk);
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(partitions * 3);
  for (int t = 0; t < KL_SIG_COUNT; t++)
    for (int p = 0; p < partitions; p++)
      rd_kafka_topic_partition_list_add(l, topics[t], p)->offset = RD_KAFKA_OFFSET_BEGINNING;
  assert_int_equal(rd_kafka_assign(rk, l), 0);
  rd_kafka_topic_partition_list_destroy(l);
  size_t n = 0;
  uint64_t until = 0, give_up = now_ns() + 10000000000u;
  while (now_ns() < give_up && !(until && now_ns() > until)) {
    rd_kafka_message_t *msg = rd_kafka_consumer_poll(rk, 20);
    if (msg && !msg->err && n < cap) {
      got_msg *g = &out[n++];
      memset(g, 0, sizeof *g);
      const char *tn = rd_kafka_topic_name(msg->rkt);
      for (int t = 0; t < KL_SIG_COUNT; t++)
        if (!strcmp(tn, topics[t])) g->sig_topic = t;
      if (msg->key && msg->key_len < sizeof g->key) memcpy(g->key, msg->key, msg->key_len);
      if (msg->payload && msg->len < sizeof g->value) memcpy(g->value, msg->payload, msg->len);
      header(msg, "keel.signal", g->sig, sizeof g->sig);
      header(msg, "keel.schema", g->schema, sizeof g->schema);
      header(msg, "content-type", g->ctype, sizeof g->ctype);
    }
    if (msg) rd_kafka_message_destroy(msg);
    if (n >= want && !until) until = now_ns() + 150000000u;
  }
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  return n;
}

/* Distinct values among msgs. */
static size_t distinct(got_msg *msgs, size_t n) {
  size_t d = 0;
  for (size_t i = 0; i < n; i++) {
    size_t j = 0;
    while (j < i && strcmp(msgs[i].value, msgs[j].value))
      j++;
    d += j == i;
  }
  return d;
}

/* Every record arrives once in its signal's topic, with key, value and headers. */
static void test_kafka_delivers(void **state) {
  (void)state;
  mock m;
  mock_start(&m, 3, 3);
  static fake_src f;
  fake_init(&f);
  kl_sink *s = kafka_sink(&m, &f, 1 << 20, NULL);
  const int n = 60;
  for (int i = 0; i < n; i++)
    add_nth(&f, i);
  fake_add_raw(&f, "\x07nope", 5); /* a bad payload is committed past */
  kl_sink_wake(s);
  assert_true(wait_committed(&f, (size_t)n + 1, 10000));
  kl_sink_stats st;
  kl_sink_get_stats(s, &st);
  assert_int_equal(st.bad_records, 1);
  assert_int_equal(st.in_flight, 0);
  assert_int_equal(st.in_flight_bytes, 0);
  for (int i = 0; i < KL_SIG_COUNT; i++)
    assert_int_equal(st.delivered[i], n / KL_SIG_COUNT);
  assert_int_equal(kl_sink_stop(s, 2000), 0);
  assert_false(f.bad_commit);

  static const char *const schema[KL_SIG_COUNT] = {
      "opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest",
      "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest",
      "opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest"};
  static got_msg msgs[256];
  size_t got = consume(&m, 3, (size_t)n, msgs, 256);
  assert_int_equal(got, n); /* idempotent, no failures: exactly once */
  assert_int_equal(distinct(msgs, got), got);
  for (size_t k = 0; k < got; k++) {
    int id, sig = msgs[k].sig_topic;
    int json = msgs[k].value[0] == '{';
    assert_int_equal(sscanf(msgs[k].value, json ? "{\"id\":%d}" : "pb-%d", &id), 1);
    assert_int_equal(id % KL_SIG_COUNT, sig);
    assert_int_equal(json, id % 2);
    char key[32] = "";
    if (id % 5) snprintf(key, sizeof key, "key-%d", id % 7);
    assert_string_equal(msgs[k].key, key);
    assert_string_equal(msgs[k].sig, kl_signal_name((kl_signal)sig));
    assert_string_equal(msgs[k].schema, schema[sig]);
    assert_string_equal(msgs[k].ctype, json ? "application/json" : "application/x-protobuf");
  }
  fake_free(&f);
  mock_stop(&m);
}

/* Logs go to a slow broker, traces to a fast one: traces are delivered first, but the
 * commit waits for the logs record before it. */
static void test_kafka_commit_order(void **state) {
  (void)state;
  mock m;
  mock_start(&m, 2, 1);
  rd_kafka_mock_partition_set_leader(m.mc, topics[KL_SIG_LOGS], 0, 1);
  rd_kafka_mock_partition_set_leader(m.mc, topics[KL_SIG_TRACES], 0, 2);
  rd_kafka_mock_broker_set_rtt(m.mc, 1, 250);
  static fake_src f;
  fake_init(&f);
  fake_add(&f, KL_SIG_LOGS, KL_FMT_JSON, NULL, "{\"a\":0}", 7);
  for (int i = 1; i < 10; i++)
    fake_add(&f, KL_SIG_TRACES, KL_FMT_JSON, NULL, "{\"a\":1}", 7);
  kl_sink *s = kafka_sink(&m, &f, 1 << 20, NULL);
  assert_true(wait_committed(&f, 10, 10000));
  assert_int_equal(atomic_load(&f.first_sig), KL_SIG_TRACES); /* out of order really happened */
  assert_false(atomic_load(&f.commit_before_logs));           /* ... and was not committed */
  assert_false(f.bad_commit);
  assert_int_equal(f.committed_pos, f.recs[9].next);
  assert_int_equal(kl_sink_stop(s, 2000), 0);
  fake_free(&f);
  mock_stop(&m);
}

/* All brokers down for 2 s in the middle: everything arrives afterwards, nothing lost. */
static void test_kafka_broker_down(void **state) {
  (void)state;
  mock m;
  mock_start(&m, 1, 2);
  static fake_src f;
  fake_init(&f);
  kl_sink *s = kafka_sink(&m, &f, 1 << 20, NULL);
  for (int i = 0; i < 30; i++)
    add_nth(&f, i);
  kl_sink_wake(s);
  assert_true(wait_committed(&f, 30, 10000));
  rd_kafka_mock_broker_set_down(m.mc, -1);
  for (int i = 30; i < 60; i++)
    add_nth(&f, i);
  kl_sink_wake(s);
  usleep(2000000);
  assert_int_equal(fake_committed(&f), 30);
  kl_sink_stats st;
  kl_sink_get_stats(s, &st);
  assert_int_equal(st.in_flight, 30);
  assert_true(st.oldest_ns > 0);
  rd_kafka_mock_broker_set_up(m.mc, -1);
  assert_true(wait_committed(&f, 60, 15000));
  assert_int_equal(kl_sink_stop(s, 2000), 0);
  static got_msg msgs[512];
  size_t total = consume(&m, 2, 60, msgs, 512);
  assert_int_equal(distinct(msgs, total), 60); /* at least once: duplicates allowed, losses not */
  fake_free(&f);
  mock_stop(&m);
}

/* Injected Produce errors: retriable ones are retried by librdkafka; permanent ones come
 * back in delivery reports and the sink produces the record again. */
static void test_kafka_produce_errors(void **state) {
  (void)state;
  mock m;
  mock_start(&m, 1, 1);
  rd_kafka_mock_push_request_errors(
      m.mc, 0 /* Produce */, 4, RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
      RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
      RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED);
  static fake_src f;
  fake_init(&f);
  kl_sink *s = kafka_sink(&m, &f, 1 << 20, NULL);
  for (int i = 0; i < 30; i++)
    add_nth(&f, i);
  kl_sink_wake(s);
  assert_true(wait_committed(&f, 30, 15000));
  kl_sink_stats st;
  kl_sink_get_stats(s, &st);
  assert_true(st.failed > 0);
  assert_true(st.retried > 0);
  assert_int_equal(kl_sink_stop(s, 2000), 0);
  static got_msg msgs[512];
  assert_int_equal(distinct(msgs, consume(&m, 1, 30, msgs, 512)), 30);
  fake_free(&f);
  mock_stop(&m);
}

/* Bytes read and not committed stay under memory_bytes plus one record. */
static void test_kafka_memory_cap(void **state) {
  (void)state;
  mock m;
  mock_start(&m, 1, 1);
  rd_kafka_mock_broker_set_rtt(m.mc, -1, 5);
  static fake_src f;
  fake_init(&f);
  const uint64_t memory = 4096;
  kl_sink *s = kafka_sink(&m, &f, memory, NULL);
  char msg[300];
  for (int i = 0; i < 300; i++) {
    memset(msg, 'a' + i % 26, sizeof msg);
    int n = snprintf(msg, sizeof msg, "%d-", i);
    msg[n - 1] = '-';
    fake_add(&f, (kl_signal)(i % 3), KL_FMT_PROTO, "k", msg, 150 + (size_t)(i % 7) * 20);
  }
  kl_sink_wake(s);
  uint64_t max_seen = 0;
  for (int i = 0; i < 3000 && fake_committed(&f) < 300; i++) {
    kl_sink_stats st;
    kl_sink_get_stats(s, &st);
    if (st.in_flight_bytes > max_seen) max_seen = st.in_flight_bytes;
    usleep(2000);
  }
  assert_int_equal(fake_committed(&f), 300);
  assert_true(max_seen <= memory + f.max_len);
  assert_true(f.max_held <= memory + f.max_len);
  assert_true(f.max_held > memory / 2); /* the cap was actually reached */
  assert_int_equal(kl_sink_stop(s, 2000), 0);
  fake_free(&f);
  mock_stop(&m);
}

/* Stop with the brokers gone: returns at the deadline with the undelivered count, and the
 * commit covers only what was delivered. */
static void test_kafka_stop_deadline(void **state) {
  (void)state;
  mock m;
  mock_start(&m, 1, 1);
  static fake_src f;
  fake_init(&f);
  kl_sink *s = kafka_sink(&m, &f, 1 << 20, NULL);
  for (int i = 0; i < 12; i++)
    add_nth(&f, i);
  kl_sink_wake(s);
  assert_true(wait_committed(&f, 12, 10000));
  rd_kafka_mock_broker_set_down(m.mc, -1);
  for (int i = 12; i < 21; i++)
    add_nth(&f, i);
  kl_sink_wake(s);
  usleep(200000);
  uint64_t t0 = now_ns();
  assert_int_equal(kl_sink_stop(s, 500), 9);
  uint64_t took_ms = (now_ns() - t0) / 1000000u;
  assert_true(took_ms >= 400 && took_ms < 3000);
  assert_int_equal(fake_committed(&f), 12);
  assert_int_equal(f.committed_pos, f.recs[11].next);
  assert_false(f.bad_commit);
  fake_free(&f);
  mock_stop(&m);
}

/* A fatal producer error: the producer is rebuilt, the source rewound, and everything
 * still arrives (at least once). */
static void test_kafka_fatal_rebuild(void **state) {
  (void)state;
  mock m;
  mock_start(&m, 1, 1);
  static fake_src f;
  fake_init(&f);
  kl_sink *s = kafka_sink(&m, &f, 1 << 20, NULL);
  for (int i = 0; i < 15; i++)
    add_nth(&f, i);
  kl_sink_wake(s);
  assert_true(wait_committed(&f, 15, 10000));
  rd_kafka_mock_broker_set_rtt(m.mc, -1, 300); /* keep the next ones in flight at the error */
  for (int i = 15; i < 30; i++)
    add_nth(&f, i);
  kl_sink_wake(s);
  usleep(100000);
  kl_sink_test_fatal(s);
  rd_kafka_mock_broker_set_rtt(m.mc, -1, 0);
  assert_true(wait_committed(&f, 30, 15000));
  kl_sink_stats st;
  kl_sink_get_stats(s, &st);
  assert_int_equal(st.rebuilds, 1);
  pthread_mutex_lock(&f.mu);
  assert_int_equal(f.rewinds, 1);
  pthread_mutex_unlock(&f.mu);
  assert_int_equal(kl_sink_stop(s, 2000), 0);
  assert_false(f.bad_commit);
  static got_msg msgs[512];
  assert_int_equal(distinct(msgs, consume(&m, 1, 30, msgs, 512)), 30);
  fake_free(&f);
  mock_stop(&m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_file_sink),           cmocka_unit_test(test_bad_options),
      cmocka_unit_test(test_kafka_delivers),      cmocka_unit_test(test_kafka_commit_order),
      cmocka_unit_test(test_kafka_broker_down),   cmocka_unit_test(test_kafka_produce_errors),
      cmocka_unit_test(test_kafka_memory_cap),    cmocka_unit_test(test_kafka_stop_deadline),
      cmocka_unit_test(test_kafka_fatal_rebuild),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
