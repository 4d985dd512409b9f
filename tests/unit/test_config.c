/* test_config.c - unit tests of keel_config: defaults, YAML, set, environment, validation. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "keel/keel.h"

#define KIB 1024ull
#define MIB (1024ull * KIB)
#define GIB (1024ull * MIB)

/* ---- helpers ------------------------------------------------------------- */

/* Compares field by field (struct padding is not compared). */
static void assert_cfg_equal(const keel_config *a, const keel_config *b) {
  assert_string_equal(a->listen, b->listen);
  assert_int_equal(a->workers, b->workers);
  assert_int_equal(a->max_connections, b->max_connections);
  assert_int_equal(a->request_line_max, b->request_line_max);
  assert_int_equal(a->header_bytes_max, b->header_bytes_max);
  assert_int_equal(a->header_count_max, b->header_count_max);
  assert_int_equal(a->body_max, b->body_max);
  assert_int_equal(a->header_timeout_ms, b->header_timeout_ms);
  assert_int_equal(a->body_timeout_ms, b->body_timeout_ms);
  assert_int_equal(a->idle_timeout_ms, b->idle_timeout_ms);
  assert_int_equal(a->write_timeout_ms, b->write_timeout_ms);
  assert_int_equal(a->drain_delay_ms, b->drain_delay_ms);
  assert_int_equal(a->drain_timeout_ms, b->drain_timeout_ms);
  assert_string_equal(a->tls_cert, b->tls_cert);
  assert_string_equal(a->tls_key, b->tls_key);
  assert_string_equal(a->tls_client_ca, b->tls_client_ca);
  assert_int_equal(a->tls_client_auth, b->tls_client_auth);
  assert_int_equal(a->log_level, b->log_level);
  assert_true(a->access_log_sample == b->access_log_sample);
  assert_int_equal(a->log_buffer_bytes, b->log_buffer_bytes);
  assert_int_equal(a->metrics_enabled, b->metrics_enabled);
  assert_string_equal(a->metrics_path, b->metrics_path);
  assert_string_equal(a->trace_endpoint, b->trace_endpoint);
  assert_true(a->trace_sample_ratio == b->trace_sample_ratio);
  assert_string_equal(a->service_name, b->service_name);
  assert_int_equal(a->trace_gzip, b->trace_gzip);
  assert_int_equal(a->trace_response_header, b->trace_response_header);
  assert_int_equal(a->trace_batch_spans, b->trace_batch_spans);
  assert_int_equal(a->trace_batch_delay_ms, b->trace_batch_delay_ms);
  assert_int_equal(a->trace_queue_bytes, b->trace_queue_bytes);
  assert_int_equal(a->trace_export_timeout_ms, b->trace_export_timeout_ms);
  assert_int_equal(a->pipeline_enabled, b->pipeline_enabled);
  assert_string_equal(a->otlp_http_listen, b->otlp_http_listen);
  assert_string_equal(a->otlp_grpc_listen, b->otlp_grpc_listen);
  assert_int_equal(a->otlp_max_request, b->otlp_max_request);
  assert_int_equal(a->otlp_format, b->otlp_format);
  assert_int_equal(a->otlp_batch, b->otlp_batch);
  assert_string_equal(a->otlp_key_attribute, b->otlp_key_attribute);
  assert_string_equal(a->otlp_api_keys, b->otlp_api_keys);
  assert_int_equal(a->otlp_ack_delivered, b->otlp_ack_delivered);
  assert_int_equal(a->otlp_ack_timeout_ms, b->otlp_ack_timeout_ms);
  assert_string_equal(a->data_dir, b->data_dir);
  assert_int_equal(a->buffer_segment_bytes, b->buffer_segment_bytes);
  assert_int_equal(a->buffer_max_bytes, b->buffer_max_bytes);
  assert_int_equal(a->buffer_fsync_ms, b->buffer_fsync_ms);
  assert_int_equal(a->buffer_memory_bytes, b->buffer_memory_bytes);
  assert_string_equal(a->kafka_brokers, b->kafka_brokers);
  assert_string_equal(a->kafka_topic_logs, b->kafka_topic_logs);
  assert_string_equal(a->kafka_topic_traces, b->kafka_topic_traces);
  assert_string_equal(a->kafka_topic_metrics, b->kafka_topic_metrics);
  assert_int_equal(a->kafka_compression, b->kafka_compression);
  assert_int_equal(a->kafka_linger_ms, b->kafka_linger_ms);
  assert_int_equal(a->kafka_batch_messages, b->kafka_batch_messages);
  assert_int_equal(a->kafka_message_max, b->kafka_message_max);
  assert_int_equal(a->files_rotate_bytes, b->files_rotate_bytes);
  assert_int_equal(a->files_keep, b->files_keep);
  assert_int_equal(a->pipeline_flush_ms, b->pipeline_flush_ms);
  assert_string_equal(a->security_user, b->security_user);
  assert_int_equal(a->security_seccomp, b->security_seccomp);
}

typedef struct tmpfile_t {
  char path[64];
} tmpfile_t;

static void write_tmp(tmpfile_t *t, const char *content, size_t len) {
  snprintf(t->path, sizeof t->path, "/tmp/keel-test-config-XXXXXX");
  int fd = mkstemp(t->path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, content, len), (ssize_t)len);
  assert_int_equal(close(fd), 0);
}

/* Loads `yaml` from a temp file into `cfg`; returns the result, message in err. */
static int load_yaml(keel_config *cfg, const char *yaml, char *err, size_t errlen,
                     char *path_out, size_t path_len) {
  tmpfile_t t;
  write_tmp(&t, yaml, strlen(yaml));
  int rc = keel_config_load_file(cfg, t.path, err, errlen);
  if (path_out) snprintf(path_out, path_len, "%s", t.path);
  unlink(t.path);
  return rc;
}

/* Loads `yaml` expecting -EINVAL with "PATH:" + expected, and cfg untouched. */
static void expect_yaml_error(const char *yaml, const char *expected) {
  keel_config cfg, before;
  keel_config_init(&cfg);
  assert_int_equal(keel_config_set(&cfg, "workers", "7", NULL, 0), 0);
  before = cfg;
  char err[512] = "", path[64], want[640];
  int rc = load_yaml(&cfg, yaml, err, sizeof err, path, sizeof path);
  snprintf(want, sizeof want, "%s:%s", path, expected);
  if (rc != -EINVAL || strcmp(err, want) != 0)
    print_error("yaml:\n%s\nrc=%d\nerr:  %s\nwant: %s\n", yaml, rc, err, want);
  assert_int_equal(rc, -EINVAL);
  assert_string_equal(err, want);
  assert_cfg_equal(&cfg, &before);
}

static void expect_set_error(const char *key, const char *value, const char *expected) {
  keel_config cfg, before;
  keel_config_init(&cfg);
  before = cfg;
  char err[512] = "";
  int rc = keel_config_set(&cfg, key, value, err, sizeof err);
  if (rc != -EINVAL || strcmp(err, expected) != 0)
    print_error("set %s=%s: rc=%d\nerr:  %s\nwant: %s\n", key, value, rc, err, expected);
  assert_int_equal(rc, -EINVAL);
  assert_string_equal(err, expected);
  assert_cfg_equal(&cfg, &before);
}

/* A field read as unsigned, for the uint/size/duration keys. */
static uint64_t get_u(const keel_config *cfg, const char *key) {
  static const struct {
    const char *key;
    size_t off, size;
  } f[] = {
      {"workers", offsetof(keel_config, workers), 4},
      {"max_connections", offsetof(keel_config, max_connections), 4},
      {"limits.request_line", offsetof(keel_config, request_line_max), 4},
      {"limits.header_bytes", offsetof(keel_config, header_bytes_max), 4},
      {"limits.header_count", offsetof(keel_config, header_count_max), 4},
      {"limits.body", offsetof(keel_config, body_max), 8},
      {"timeouts.header", offsetof(keel_config, header_timeout_ms), 4},
      {"timeouts.body", offsetof(keel_config, body_timeout_ms), 4},
      {"timeouts.idle", offsetof(keel_config, idle_timeout_ms), 4},
      {"timeouts.write", offsetof(keel_config, write_timeout_ms), 4},
      {"shutdown.drain_delay", offsetof(keel_config, drain_delay_ms), 4},
      {"shutdown.drain_timeout", offsetof(keel_config, drain_timeout_ms), 4},
      {"log.buffer", offsetof(keel_config, log_buffer_bytes), 4},
      {"tracing.batch_spans", offsetof(keel_config, trace_batch_spans), 4},
      {"tracing.batch_delay", offsetof(keel_config, trace_batch_delay_ms), 4},
      {"tracing.queue", offsetof(keel_config, trace_queue_bytes), 4},
      {"tracing.export_timeout", offsetof(keel_config, trace_export_timeout_ms), 4},
      {"otlp.max_request", offsetof(keel_config, otlp_max_request), 8},
      {"otlp.ack_timeout", offsetof(keel_config, otlp_ack_timeout_ms), 4},
      {"buffer.segment", offsetof(keel_config, buffer_segment_bytes), 8},
      {"buffer.max", offsetof(keel_config, buffer_max_bytes), 8},
      {"buffer.fsync", offsetof(keel_config, buffer_fsync_ms), 4},
      {"buffer.memory", offsetof(keel_config, buffer_memory_bytes), 8},
      {"kafka.linger", offsetof(keel_config, kafka_linger_ms), 4},
      {"kafka.batch_messages", offsetof(keel_config, kafka_batch_messages), 4},
      {"kafka.message_max", offsetof(keel_config, kafka_message_max), 4},
      {"files.rotate", offsetof(keel_config, files_rotate_bytes), 8},
      {"files.keep", offsetof(keel_config, files_keep), 4},
      {"shutdown.flush_timeout", offsetof(keel_config, pipeline_flush_ms), 4},
  };
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
    if (strcmp(f[i].key, key) != 0) continue;
    const unsigned char *p = (const unsigned char *)cfg + f[i].off;
    if (f[i].size == 4) {
      uint32_t x;
      memcpy(&x, p, 4);
      return x;
    }
    uint64_t x;
    memcpy(&x, p, 8);
    return x;
  }
  fail_msg("no numeric field for %s", key);
  return 0;
}

/* One non-default value for every key, and how to check it. */
typedef struct kcase {
  const char *key, *env, *text;
  char type; /* 'u' unsigned, 's'/'p' string (listen, path, URL, text), 'l' level,
                'd' access sample, 'r' sample ratio, 'b' switch, 'c' choice (index in u) */
  uint64_t u;
  double d;
} kcase;

static const kcase cases[] = {
    {"listen", "KEEL_LISTEN", "0.0.0.0:9090", 's', 0, 0},
    {"workers", "KEEL_WORKERS", "8", 'u', 8, 0},
    {"max_connections", "KEEL_MAX_CONNECTIONS", "500", 'u', 500, 0},
    {"limits.request_line", "KEEL_LIMITS_REQUEST_LINE", "16KiB", 'u', 16 * KIB, 0},
    {"limits.header_bytes", "KEEL_LIMITS_HEADER_BYTES", "64KiB", 'u', 64 * KIB, 0},
    {"limits.header_count", "KEEL_LIMITS_HEADER_COUNT", "50", 'u', 50, 0},
    {"limits.body", "KEEL_LIMITS_BODY", "10MiB", 'u', 10 * MIB, 0},
    {"timeouts.header", "KEEL_TIMEOUTS_HEADER", "5s", 'u', 5000, 0},
    {"timeouts.body", "KEEL_TIMEOUTS_BODY", "2m", 'u', 120000, 0},
    {"timeouts.idle", "KEEL_TIMEOUTS_IDLE", "250ms", 'u', 250, 0},
    {"timeouts.write", "KEEL_TIMEOUTS_WRITE", "1h", 'u', 3600000, 0},
    {"shutdown.drain_delay", "KEEL_SHUTDOWN_DRAIN_DELAY", "5s", 'u', 5000, 0},
    {"shutdown.drain_timeout", "KEEL_SHUTDOWN_DRAIN_TIMEOUT", "20s", 'u', 20000, 0},
    {"tls.cert", "KEEL_TLS_CERT", "/etc/keel/tls.crt", 'p', 0, 0},
    {"tls.key", "KEEL_TLS_KEY", "/etc/keel/tls.key", 'p', 0, 0},
    {"tls.client_ca", "KEEL_TLS_CLIENT_CA", "/etc/keel/clients-ca.crt", 'p', 0, 0},
    {"tls.client_auth", "KEEL_TLS_CLIENT_AUTH", "optional", 'c', 1, 0},
    {"log.level", "KEEL_LOG_LEVEL", "debug", 'l', KEEL_LOG_DEBUG, 0},
    {"log.access", "KEEL_LOG_ACCESS", "off", 'd', 0, 0.0},
    {"log.access_sample", "KEEL_LOG_ACCESS_SAMPLE", "0.25", 'd', 0, 0.25},
    {"log.buffer", "KEEL_LOG_BUFFER", "4MiB", 'u', 4 * MIB, 0},
    {"metrics.enabled", "KEEL_METRICS_ENABLED", "off", 'b', 0, 0},
    {"metrics.path", "KEEL_METRICS_PATH", "/internal/metrics", 'p', 0, 0},
    {"tracing.endpoint", "KEEL_TRACING_ENDPOINT", "http://otel:4318", 'p', 0, 0},
    {"tracing.sample_ratio", "KEEL_TRACING_SAMPLE_RATIO", "0.1", 'r', 0, 0.1},
    {"tracing.service_name", "KEEL_TRACING_SERVICE_NAME", "checkout api", 'p', 0, 0},
    {"tracing.gzip", "KEEL_TRACING_GZIP", "on", 'b', 1, 0},
    {"tracing.response_header", "KEEL_TRACING_RESPONSE_HEADER", "true", 'b', 1, 0},
    {"tracing.batch_spans", "KEEL_TRACING_BATCH_SPANS", "100", 'u', 100, 0},
    {"tracing.batch_delay", "KEEL_TRACING_BATCH_DELAY", "200ms", 'u', 200, 0},
    {"tracing.queue", "KEEL_TRACING_QUEUE", "64KiB", 'u', 64 * KIB, 0},
    {"tracing.export_timeout", "KEEL_TRACING_EXPORT_TIMEOUT", "2s", 'u', 2000, 0},
    {"pipeline.enabled", "KEEL_PIPELINE_ENABLED", "off", 'b', 0, 0},
    {"otlp.http_listen", "KEEL_OTLP_HTTP_LISTEN", "0.0.0.0:14318", 's', 0, 0},
    {"otlp.grpc_listen", "KEEL_OTLP_GRPC_LISTEN", "[::]:14317", 's', 0, 0},
    {"otlp.max_request", "KEEL_OTLP_MAX_REQUEST", "4MiB", 'u', 4 * MIB, 0},
    {"otlp.format", "KEEL_OTLP_FORMAT", "json", 'c', 1, 0},
    {"otlp.mode", "KEEL_OTLP_MODE", "batch", 'c', 1, 0},
    {"otlp.key_attribute", "KEEL_OTLP_KEY_ATTRIBUTE", "k8s.pod.name", 'p', 0, 0},
    {"otlp.api_keys", "KEEL_OTLP_API_KEYS", "/etc/keel/otlp-keys", 'p', 0, 0},
    {"otlp.ack", "KEEL_OTLP_ACK", "delivered", 'c', 1, 0},
    {"otlp.ack_timeout", "KEEL_OTLP_ACK_TIMEOUT", "10s", 'u', 10000, 0},
    {"data_dir", "KEEL_DATA_DIR", "/var/lib/keel", 'p', 0, 0},
    {"buffer.segment", "KEEL_BUFFER_SEGMENT", "16MiB", 'u', 16 * MIB, 0},
    {"buffer.max", "KEEL_BUFFER_MAX", "8GiB", 'u', 8 * GIB, 0},
    {"buffer.fsync", "KEEL_BUFFER_FSYNC", "10ms", 'u', 10, 0},
    {"buffer.memory", "KEEL_BUFFER_MEMORY", "128MiB", 'u', 128 * MIB, 0},
    {"kafka.brokers", "KEEL_KAFKA_BROKERS", "kafka-0:9092,kafka-1:9092", 'p', 0, 0},
    {"kafka.topics.logs", "KEEL_KAFKA_TOPICS_LOGS", "logs", 'p', 0, 0},
    {"kafka.topics.traces", "KEEL_KAFKA_TOPICS_TRACES", "spans", 'p', 0, 0},
    {"kafka.topics.metrics", "KEEL_KAFKA_TOPICS_METRICS", "metrics", 'p', 0, 0},
    {"kafka.compression", "KEEL_KAFKA_COMPRESSION", "zstd", 'c', 4, 0},
    {"kafka.linger", "KEEL_KAFKA_LINGER", "20ms", 'u', 20, 0},
    {"kafka.batch_messages", "KEEL_KAFKA_BATCH_MESSAGES", "5000", 'u', 5000, 0},
    {"kafka.message_max", "KEEL_KAFKA_MESSAGE_MAX", "2MiB", 'u', 2 * MIB, 0},
    {"files.rotate", "KEEL_FILES_ROTATE", "1GiB", 'u', GIB, 0},
    {"files.keep", "KEEL_FILES_KEEP", "3", 'u', 3, 0},
    {"shutdown.flush_timeout", "KEEL_SHUTDOWN_FLUSH_TIMEOUT", "30s", 'u', 30000, 0},
    {"security.user", "KEEL_SECURITY_USER", "65532:65532", 'p', 0, 0},
    {"security.seccomp", "KEEL_SECURITY_SECCOMP", "on", 'c', 1, 0},
};

/* The string (listen, path, URL, text), switch and choice fields, by key. */
static const char *str_field(const keel_config *cfg, const char *key) {
  static const struct {
    const char *key;
    size_t off;
  } f[] = {
      {"listen", offsetof(keel_config, listen)},
      {"tls.cert", offsetof(keel_config, tls_cert)},
      {"tls.key", offsetof(keel_config, tls_key)},
      {"tls.client_ca", offsetof(keel_config, tls_client_ca)},
      {"metrics.path", offsetof(keel_config, metrics_path)},
      {"tracing.endpoint", offsetof(keel_config, trace_endpoint)},
      {"tracing.service_name", offsetof(keel_config, service_name)},
      {"otlp.http_listen", offsetof(keel_config, otlp_http_listen)},
      {"otlp.grpc_listen", offsetof(keel_config, otlp_grpc_listen)},
      {"otlp.key_attribute", offsetof(keel_config, otlp_key_attribute)},
      {"otlp.api_keys", offsetof(keel_config, otlp_api_keys)},
      {"data_dir", offsetof(keel_config, data_dir)},
      {"kafka.brokers", offsetof(keel_config, kafka_brokers)},
      {"kafka.topics.logs", offsetof(keel_config, kafka_topic_logs)},
      {"kafka.topics.traces", offsetof(keel_config, kafka_topic_traces)},
      {"kafka.topics.metrics", offsetof(keel_config, kafka_topic_metrics)},
      {"security.user", offsetof(keel_config, security_user)},
  };
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
    if (strcmp(f[i].key, key) == 0) return (const char *)cfg + f[i].off;
  fail_msg("no string field for %s", key);
  return "";
}

static unsigned switch_field(const keel_config *cfg, const char *key) {
  if (strcmp(key, "metrics.enabled") == 0) return cfg->metrics_enabled;
  if (strcmp(key, "tracing.gzip") == 0) return cfg->trace_gzip;
  if (strcmp(key, "tracing.response_header") == 0) return cfg->trace_response_header;
  if (strcmp(key, "pipeline.enabled") == 0) return cfg->pipeline_enabled;
  fail_msg("no switch field for %s", key);
  return 0;
}

static uint8_t *choice_ptr(keel_config *cfg, const char *key) {
  if (strcmp(key, "otlp.format") == 0) return &cfg->otlp_format;
  if (strcmp(key, "tls.client_auth") == 0) return &cfg->tls_client_auth;
  if (strcmp(key, "otlp.mode") == 0) return &cfg->otlp_batch;
  if (strcmp(key, "otlp.ack") == 0) return &cfg->otlp_ack_delivered;
  if (strcmp(key, "kafka.compression") == 0) return &cfg->kafka_compression;
  if (strcmp(key, "security.seccomp") == 0) return &cfg->security_seccomp;
  fail_msg("no choice field for %s", key);
  return NULL;
}

static unsigned choice_field(const keel_config *cfg, const char *key) {
  keel_config copy = *cfg;
  return *choice_ptr(&copy, key);
}
#define NCASES (sizeof cases / sizeof cases[0])

static void check_case(const keel_config *cfg, const kcase *c) {
  switch (c->type) {
  case 's':
  case 'p':
    assert_string_equal(str_field(cfg, c->key), c->text);
    break;
  case 'c':
    assert_int_equal(choice_field(cfg, c->key), c->u);
    break;
  case 'l':
    assert_int_equal(cfg->log_level, (int)c->u);
    break;
  case 'd':
    assert_true(cfg->access_log_sample == c->d);
    break;
  case 'b':
    assert_int_equal(switch_field(cfg, c->key), c->u);
    break;
  case 'r':
    assert_true(cfg->trace_sample_ratio == c->d);
    break;
  default:
    assert_int_equal(get_u(cfg, c->key), c->u);
  }
}

/* Sets `c` in `want` by hand, so the rest of the struct can be compared to it. */
static void apply_case(keel_config *want, const kcase *c) {
  assert_int_equal(keel_config_set(want, c->key, c->text, NULL, 0), 0);
}

static void clear_env(void) {
  for (size_t i = 0; i < NCASES; i++) unsetenv(cases[i].env);
}

static int group_setup(void **state) {
  (void)state;
  clear_env();
  return 0;
}

static int test_setup(void **state) {
  (void)state;
  clear_env();
  return 0;
}

/* ---- defaults ------------------------------------------------------------ */

static void test_defaults(void **state) {
  (void)state;
  keel_config c;
  memset(&c, 0xa5, sizeof c);
  keel_config_init(&c);
  assert_string_equal(c.listen, "127.0.0.1:8080");
  assert_int_equal(c.workers, 0);
  assert_int_equal(c.max_connections, 10000);
  assert_int_equal(c.request_line_max, 8 * KIB);
  assert_int_equal(c.header_bytes_max, 32 * KIB);
  assert_int_equal(c.header_count_max, 100);
  assert_int_equal(c.body_max, 1 * MIB);
  assert_int_equal(c.header_timeout_ms, 10000);
  assert_int_equal(c.body_timeout_ms, 30000);
  assert_int_equal(c.idle_timeout_ms, 60000);
  assert_int_equal(c.write_timeout_ms, 30000);
  assert_int_equal(c.drain_delay_ms, 0);
  assert_int_equal(c.drain_timeout_ms, 10000);
  assert_int_equal(c.log_level, KEEL_LOG_INFO);
  assert_true(c.access_log_sample == 1.0);
  assert_int_equal(c.log_buffer_bytes, 1 * MIB);
  assert_int_equal(c.metrics_enabled, 1);
  assert_string_equal(c.metrics_path, "/metrics");
  assert_string_equal(c.trace_endpoint, "");
  assert_true(c.trace_sample_ratio == 1.0);
  assert_string_equal(c.service_name, "keel");
  assert_int_equal(c.trace_gzip, 0);
  assert_int_equal(c.trace_response_header, 0);
  assert_int_equal(c.trace_batch_spans, 512);
  assert_int_equal(c.trace_batch_delay_ms, 1000);
  assert_int_equal(c.trace_queue_bytes, 1 * MIB);
  assert_int_equal(c.trace_export_timeout_ms, 10000);
  assert_int_equal(c.pipeline_enabled, 1);
  assert_string_equal(c.otlp_http_listen, "127.0.0.1:4318");
  assert_string_equal(c.otlp_grpc_listen, "127.0.0.1:4317");
  assert_int_equal(c.otlp_max_request, 16 * MIB);
  assert_int_equal(c.otlp_format, 0);
  assert_int_equal(c.otlp_batch, 0);
  assert_string_equal(c.otlp_key_attribute, "service.name");
  assert_int_equal(c.otlp_ack_delivered, 0);
  assert_int_equal(c.otlp_ack_timeout_ms, 30000);
  assert_string_equal(c.data_dir, "./var/keel");
  assert_int_equal(c.buffer_segment_bytes, 64 * MIB);
  assert_int_equal(c.buffer_max_bytes, 1 * GIB);
  assert_int_equal(c.buffer_fsync_ms, 0);
  assert_int_equal(c.buffer_memory_bytes, 64 * MIB);
  assert_string_equal(c.kafka_brokers, "");
  assert_string_equal(c.kafka_topic_logs, "otlp_logs");
  assert_string_equal(c.kafka_topic_traces, "otlp_spans");
  assert_string_equal(c.kafka_topic_metrics, "otlp_metrics");
  assert_int_equal(c.kafka_compression, 3);
  assert_int_equal(c.kafka_linger_ms, 5);
  assert_int_equal(c.kafka_batch_messages, 10000);
  assert_int_equal(c.kafka_message_max, 1000000);
  assert_int_equal(c.files_rotate_bytes, 64 * MIB);
  assert_int_equal(c.files_keep, 10);
  assert_int_equal(c.pipeline_flush_ms, 5000);
  assert_string_equal(c.security_user, "");
  assert_int_equal(c.security_seccomp, 0);
  /* the rest of the listen field is zeroed */
  for (size_t i = strlen(c.listen); i < sizeof c.listen; i++) assert_int_equal(c.listen[i], 0);
  char err[256] = "";
  assert_int_equal(keel_config_validate(&c, err, sizeof err), 0);
  assert_string_equal(err, "");
}

/* ---- every key, three ways ----------------------------------------------- */

static void test_set_every_key(void **state) {
  (void)state;
  for (size_t i = 0; i < NCASES; i++) {
    keel_config cfg, want;
    keel_config_init(&cfg);
    keel_config_init(&want);
    char err[256] = "";
    assert_int_equal(keel_config_set(&cfg, cases[i].key, cases[i].text, err, sizeof err), 0);
    assert_string_equal(err, "");
    check_case(&cfg, &cases[i]);
    apply_case(&want, &cases[i]);
    assert_cfg_equal(&cfg, &want);
    /* the TLS files do not exist here (tests/integration/test_tls.py checks them) */
    if (strncmp(cases[i].key, "tls.", 4) != 0 || strcmp(cases[i].key, "tls.client_auth") == 0)
      assert_int_equal(keel_config_validate(&cfg, err, sizeof err), 0);
  }
}

static void test_env_every_key(void **state) {
  (void)state;
  for (size_t i = 0; i < NCASES; i++) {
    keel_config cfg, want;
    keel_config_init(&cfg);
    keel_config_init(&want);
    apply_case(&want, &cases[i]);
    assert_int_equal(setenv(cases[i].env, cases[i].text, 1), 0);
    char err[256] = "";
    assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), 0);
    unsetenv(cases[i].env);
    check_case(&cfg, &cases[i]);
    assert_cfg_equal(&cfg, &want);
  }
}

static void test_env_all_at_once(void **state) {
  (void)state;
  keel_config cfg, want;
  keel_config_init(&cfg);
  keel_config_init(&want);
  for (size_t i = 0; i < NCASES; i++) {
    if (strcmp(cases[i].key, "log.access") == 0) continue; /* conflicts with access_sample */
    assert_int_equal(setenv(cases[i].env, cases[i].text, 1), 0);
    apply_case(&want, &cases[i]);
  }
  char err[256] = "";
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), 0);
  assert_cfg_equal(&cfg, &want);
  clear_env();
}

static const char every_key_yaml[] = "# every key, nested\n"
                                     "listen: 0.0.0.0:9090\n"
                                     "workers: 8\n"
                                     "max_connections: 500\n"
                                     "limits:\n"
                                     "  request_line: 16KiB\n"
                                     "  header_bytes: 64KiB\n"
                                     "  header_count: 50\n"
                                     "  body: 10MiB\n"
                                     "timeouts:\n"
                                     "  header: 5s\n"
                                     "  body: 2m\n"
                                     "  idle: 250ms\n"
                                     "  write: 1h\n"
                                     "shutdown:\n"
                                     "  drain_delay: 5s\n"
                                     "  drain_timeout: 20s\n"
                                     "  flush_timeout: 30s\n"
                                     "tls:\n"
                                     "  cert: /etc/keel/tls.crt\n"
                                     "  key: /etc/keel/tls.key\n"
                                     "  client_ca: /etc/keel/clients-ca.crt\n"
                                     "  client_auth: optional\n"
                                     "log:\n"
                                     "  level: debug\n"
                                     "  access_sample: 0.25\n"
                                     "  buffer: 4MiB\n"
                                     "metrics:\n"
                                     "  enabled: off\n"
                                     "  path: /internal/metrics\n"
                                     "tracing:\n"
                                     "  endpoint: http://otel:4318\n"
                                     "  sample_ratio: 0.1\n"
                                     "  service_name: checkout api\n"
                                     "  gzip: on\n"
                                     "  response_header: true\n"
                                     "  batch_spans: 100\n"
                                     "  batch_delay: 200ms\n"
                                     "  queue: 64KiB\n"
                                     "  export_timeout: 2s\n"
                                     "pipeline:\n"
                                     "  enabled: off\n"
                                     "otlp:\n"
                                     "  http_listen: 0.0.0.0:14318\n"
                                     "  grpc_listen: '[::]:14317'\n"
                                     "  max_request: 4MiB\n"
                                     "  format: json\n"
                                     "  mode: batch\n"
                                     "  key_attribute: k8s.pod.name\n"
                                     "  api_keys: /etc/keel/otlp-keys\n"
                                     "  ack: delivered\n"
                                     "  ack_timeout: 10s\n"
                                     "data_dir: /var/lib/keel\n"
                                     "buffer:\n"
                                     "  segment: 16MiB\n"
                                     "  max: 8GiB\n"
                                     "  fsync: 10ms\n"
                                     "  memory: 128MiB\n"
                                     "kafka:\n"
                                     "  brokers: kafka-0:9092,kafka-1:9092\n"
                                     "  topics:\n"
                                     "    logs: logs\n"
                                     "    traces: spans\n"
                                     "    metrics: metrics\n"
                                     "  compression: zstd\n"
                                     "  linger: 20ms\n"
                                     "  batch_messages: 5000\n"
                                     "  message_max: 2MiB\n"
                                     "files:\n"
                                     "  rotate: 1GiB\n"
                                     "  keep: 3\n"
                                     "security:\n"
                                     "  user: 65532:65532\n"
                                     "  seccomp: on\n";

static void test_yaml_every_key(void **state) {
  (void)state;
  keel_config cfg, want;
  keel_config_init(&cfg);
  keel_config_init(&want);
  for (size_t i = 0; i < NCASES; i++)
    if (strcmp(cases[i].key, "log.access") != 0) apply_case(&want, &cases[i]);
  char err[256] = "";
  assert_int_equal(load_yaml(&cfg, every_key_yaml, err, sizeof err, NULL, 0), 0);
  assert_string_equal(err, "");
  assert_cfg_equal(&cfg, &want);
  for (size_t i = 0; i < NCASES; i++)
    if (strcmp(cases[i].key, "log.access") != 0) check_case(&cfg, &cases[i]);

  /* log.access on its own */
  keel_config_init(&cfg);
  assert_int_equal(load_yaml(&cfg, "log:\n  access: off\n", err, sizeof err, NULL, 0), 0);
  assert_true(cfg.access_log_sample == 0.0);
  assert_int_equal(load_yaml(&cfg, "log: {access: on}\n", err, sizeof err, NULL, 0), 0);
  assert_true(cfg.access_log_sample == 1.0);
}

static void test_yaml_forms(void **state) {
  (void)state;
  keel_config cfg;
  char err[256] = "";
  /* flow mappings, quoted scalars, dotted keys at the top level, comments, explicit document */
  keel_config_init(&cfg);
  assert_int_equal(load_yaml(&cfg,
                             "---\n"
                             "timeouts: {idle: 5s, write: \"7s\"}\n"
                             "limits.body: '2MiB'  # dotted form\n"
                             "\"workers\": 3\n"
                             "...\n",
                             err, sizeof err, NULL, 0),
                   0);
  assert_int_equal(cfg.idle_timeout_ms, 5000);
  assert_int_equal(cfg.write_timeout_ms, 7000);
  assert_int_equal(cfg.body_max, 2 * MIB);
  assert_int_equal(cfg.workers, 3);

  /* a dotted section name at the top level, and nested sections in flow style */
  keel_config_init(&cfg);
  assert_int_equal(load_yaml(&cfg,
                             "kafka.topics: {traces: t}\n"
                             "kafka: {compression: GZIP, topics.metrics: m}\n"
                             "buffer.fsync: Always\n",
                             err, sizeof err, NULL, 0),
                   0);
  assert_string_equal(cfg.kafka_topic_logs, "otlp_logs");
  assert_string_equal(cfg.kafka_topic_traces, "t");
  assert_string_equal(cfg.kafka_topic_metrics, "m");
  assert_int_equal(cfg.kafka_compression, 1);
  assert_int_equal(cfg.buffer_fsync_ms, 0);

  /* a file applies on top of what is there */
  keel_config_init(&cfg);
  assert_int_equal(keel_config_set(&cfg, "max_connections", "42", NULL, 0), 0);
  assert_int_equal(load_yaml(&cfg, "workers: 2\n", err, sizeof err, NULL, 0), 0);
  assert_int_equal(cfg.max_connections, 42);
  assert_int_equal(cfg.workers, 2);
}

static void test_yaml_empty(void **state) {
  (void)state;
  static const char *const empties[] = {
      "",           "\n\n",          "# only a comment\n", "---\n", "--- ~\n",
      "limits:\n",  "log: ~\n",      "limits: null\n# limits:\n#   body: 1MiB\n",
  };
  for (size_t i = 0; i < sizeof empties / sizeof empties[0]; i++) {
    keel_config cfg, want;
    keel_config_init(&cfg);
    keel_config_init(&want);
    char err[256] = "";
    int rc = load_yaml(&cfg, empties[i], err, sizeof err, NULL, 0);
    if (rc != 0) print_error("%s -> %s\n", empties[i], err);
    assert_int_equal(rc, 0);
    assert_cfg_equal(&cfg, &want);
  }
}

/* ---- precedence ---------------------------------------------------------- */

static void test_precedence(void **state) {
  (void)state;
  keel_config cfg;
  char err[256] = "";
  keel_config_init(&cfg); /* defaults */
  assert_int_equal(load_yaml(&cfg,
                             "workers: 2\n"
                             "timeouts:\n  idle: 5s\n  write: 6s\n"
                             "limits:\n  body: 2MiB\n",
                             err, sizeof err, NULL, 0),
                   0); /* file */
  setenv("KEEL_TIMEOUTS_IDLE", "7s", 1);
  setenv("KEEL_LIMITS_BODY", "3MiB", 1);
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), 0); /* environment */
  clear_env();
  assert_int_equal(keel_config_set(&cfg, "limits.body", "4MiB", err, sizeof err), 0); /* flags */

  assert_int_equal(cfg.max_connections, 10000); /* default */
  assert_int_equal(cfg.workers, 2);             /* file */
  assert_int_equal(cfg.write_timeout_ms, 6000); /* file */
  assert_int_equal(cfg.idle_timeout_ms, 7000);  /* env over file */
  assert_int_equal(cfg.body_max, 4 * MIB);      /* flag over env over file */
  assert_int_equal(keel_config_validate(&cfg, err, sizeof err), 0);
}

/* ---- YAML errors --------------------------------------------------------- */

static void test_yaml_errors(void **state) {
  (void)state;
  static const struct {
    const char *yaml, *want;
  } t[] = {
      {"workers: 2\nlimits:\n  bodyy: 1\n", "3: unknown key 'limits.bodyy'"},
      {"# c\n\nfoo: 1\n", "3: unknown key 'foo'"},
      {"limits.bodyy: 1\n", "1: unknown key 'limits.bodyy'"},
      {"log:\n  level: info\n  nope:\n    deeper: 1\n", "3: unknown key 'log.nope'"},
      {"workers: 1\n\n\ntimeouts:\n  idle: 10x\n",
       "5: timeouts.idle: '10x' is not a duration (use e.g. 250ms, 10s, 2m)"},
      {"\nworkers: 5000\n", "2: workers: 5000 is out of range 0..1024"},
      {"timeouts:\n  header: 2h\n", "2: timeouts.header: 2h is out of range 1ms..1h"},
      {"timeouts:\n  idle: 10\n", "2: timeouts.idle: '10' needs a unit: ms, s, m or h"},
      {"limits:\n  body: 1MB\n",
       "2: limits.body: '1MB' is not a size (use bytes, or KiB, MiB or GiB: e.g. 65536, 64KiB, "
       "1MiB)"},
      {"log:\n  level: verbose\n",
       "2: log.level: 'verbose' is not one of debug, info, warn, error"},
      {"log:\n  access: maybe\n", "2: log.access: 'maybe' is not one of on, off, true, false"},
      {"metrics:\n  path: metrics\n", "2: metrics.path: 'metrics' does not start with '/'"},
      {"metrics:\n  path: /m?x=1\n", "2: metrics.path: '/m?x=1': byte 2 is not allowed in a path"},
      {"metrics:\n  enabled: 2\n", "2: metrics.enabled: '2' is not one of on, off, true, false"},
      {"tracing:\n  endpoint: https://c:4318\n",
       "2: tracing.endpoint: 'https://c:4318': https is not supported yet (use http:// to a local "
       "collector)"},
      {"tracing:\n  endpoint: otel:4318\n",
       "2: tracing.endpoint: 'otel:4318' is not http://HOST[:PORT][/PATH]"},
      {"tracing:\n  endpoint: http://otel:0\n", "2: tracing.endpoint: 'http://otel:0': bad port"},
      {"tracing:\n  sample_ratio: 2\n", "2: tracing.sample_ratio: 2 is out of range 0..1"},
      {"log:\n  access_sample: 1.5\n", "2: log.access_sample: 1.5 is out of range 0..1"},
      {"listen: 10.0.0.1\n",
       "1: listen: '10.0.0.1' is not HOST:PORT (e.g. 127.0.0.1:8080, [::1]:8080, "
       "localhost:8080)"},
      {"workers:\n", "1: workers: empty value"},
      {"workers: ''\n", "1: workers: empty value"},
      {"listen: \"a\\0b:80\"\n", "1: listen: the value contains a NUL byte"},
      /* syntax */
      {"workers: 1\nlisten: \"abc\n",
       "3: syntax error: found unexpected end of stream (while scanning a quoted scalar on line "
       "2)"},
      {"workers: 1\nlimits:\n  body: 1\n bad: 2\n",
       "4: syntax error: did not find expected key (while parsing a block mapping on line 1)"},
      {"workers: 1\nlisten: a: b\n",
       "2: syntax error: mapping values are not allowed in this context"},
      {"workers: 1x\nlog: {level: info\n",
       "3: syntax error: did not find expected ',' or '}' (while parsing a flow mapping on line "
       "2)"},
      {"workers: 1\nlog:\n  level: \xff\n", "3: syntax error: invalid leading UTF-8 octet"},
      {"workers: 1\n\tlisten: x\n",
       "2: syntax error: found a tab character that violates indentation (while scanning a plain "
       "scalar on line 1)"},
      /* shapes */
      {"- workers: 1\n", "1: expected a mapping at the top level"},
      {"\n\njust words\n", "3: expected a mapping at the top level"},
      {"workers: [1]\n", "1: workers: expected a single value, not a list"},
      {"listen:\n  host: x\n", "2: listen: expected a single value, not a mapping"},
      {"limits:\n  body:\n    x: 1\n", "3: limits.body: expected a single value, not a mapping"},
      {"limits: 5\n", "1: limits: expected a mapping of keys, e.g. limits: {request_line: 8KiB}"},
      {"log:\n  - level\n", "2: log: expected a mapping of keys, e.g. log: {level: info}"},
      {"? [a]\n: 1\n", "1: expected a key name, not a list"},
      {"workers: &w 2000\nmax_connections: *w\n", "1: workers: 2000 is out of range 0..1024"},
      {"limits: &l {header_count: 5}\ntimeouts: *l\n", "1: unknown key 'timeouts.header_count'"},
      {"limits: &l\n  limits: *l\n", "2: unknown key 'limits.limits'"},
      {"workers: 1\n---\nworkers: 2\n", "2: only one YAML document is allowed"},
      {"kafka: 1\n", "1: kafka: expected a mapping of keys, e.g. kafka: {brokers: \"\"}"},
      {"kafka:\n  topics: logs\n",
       "2: kafka.topics: expected a mapping of keys, e.g. kafka.topics: {logs: otlp_logs}"},
      {"kafka:\n  topics:\n    spans: x\n", "3: unknown key 'kafka.topics.spans'"},
      {"kafka:\n  topic:\n    logs: x\n", "2: unknown key 'kafka.topic'"},
      {"pipeline: on\n", "1: pipeline: expected a mapping of keys, e.g. pipeline: {enabled: on}"},
      {"data_dir:\n  path: /x\n", "2: data_dir: expected a single value, not a mapping"},
      {"otlp:\n  ack: durable\notlp:\n  mode: batch\n", "3: duplicate key 'otlp'"},
      /* duplicates and conflicts */
      {"workers: 1\nworkers: 2\n", "2: duplicate key 'workers'"},
      {"log:\n  level: info\nlog:\n  level: warn\n", "3: duplicate key 'log'"},
      {"timeouts:\n  idle: 1s\ntimeouts.idle: 2s\n", "3: duplicate key 'timeouts.idle'"},
      {"kafka.topics.logs: a\nkafka:\n  topics:\n    logs: b\n",
       "4: duplicate key 'kafka.topics.logs'"},
      {"kafka:\n  topics: {logs: a}\nkafka.topics:\n  traces: b\n",
       "3: duplicate key 'kafka.topics'"},
      {"log:\n  access: off\n  access_sample: 0.5\n",
       "3: log.access_sample: conflicts with log.access (set only one)"},
      {"log:\n  access_sample: 0.5\n  access: on\n",
       "3: log.access: conflicts with log.access_sample (set only one)"},
  };
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) expect_yaml_error(t[i].yaml, t[i].want);
}

static void test_yaml_unchanged_on_error(void **state) {
  (void)state;
  keel_config cfg, before;
  keel_config_init(&cfg);
  before = cfg;
  char err[256] = "";
  /* good keys first, the bad one last: none of them may stick */
  int rc = load_yaml(&cfg,
                     "listen: 0.0.0.0:1\nworkers: 3\nlimits:\n  body: 5MiB\n"
                     "timeouts:\n  idle: 1s\n  write: soon\n",
                     err, sizeof err, NULL, 0);
  assert_int_equal(rc, -EINVAL);
  assert_non_null(strstr(err, ":7: timeouts.write: 'soon' is not a duration"));
  assert_cfg_equal(&cfg, &before);
}

static void test_yaml_limits(void **state) {
  (void)state;
  /* deep nesting is refused quickly (libyaml's scanner is quadratic in the depth) */
  size_t n = 200000;
  char *deep = malloc(2 * n + 16);
  assert_non_null(deep);
  memcpy(deep, "workers: ", 9);
  memset(deep + 9, '[', n);
  memset(deep + 9 + n, ']', n);
  deep[9 + 2 * n] = '\0';
  expect_yaml_error(deep, "1: nested more than 32 levels deep");
  free(deep);
  /* 32 levels are fine for the parser; the key then gets the usual message */
  char ok[128];
  snprintf(ok, sizeof ok, "workers: %.31s%.31s\n",
           "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]");
  expect_yaml_error(ok, "1: workers: expected a single value, not a list");

  /* at most 1 MiB of file; exactly 1 MiB of comments is fine */
  size_t big = 1024 * 1024;
  char *text = malloc(big + 2);
  assert_non_null(text);
  memset(text, '#', big + 1);
  for (size_t i = 99; i < big + 1; i += 100) text[i] = '\n';
  tmpfile_t t;
  keel_config cfg, before;
  keel_config_init(&cfg);
  before = cfg;
  char err[256] = "", want[256];
  write_tmp(&t, text, big);
  assert_int_equal(keel_config_load_file(&cfg, t.path, err, sizeof err), 0);
  unlink(t.path);
  write_tmp(&t, text, big + 1);
  assert_int_equal(keel_config_load_file(&cfg, t.path, err, sizeof err), -EFBIG);
  snprintf(want, sizeof want, "%s: larger than 1MiB, too large for a configuration file", t.path);
  assert_string_equal(err, want);
  unlink(t.path);
  free(text);
  assert_cfg_equal(&cfg, &before);
}

static void test_file_errors(void **state) {
  (void)state;
  keel_config cfg, before;
  keel_config_init(&cfg);
  before = cfg;
  char err[256] = "";
  assert_int_equal(keel_config_load_file(&cfg, "/nonexistent/keel.yaml", err, sizeof err),
                   -ENOENT);
  assert_string_equal(err, "/nonexistent/keel.yaml: No such file or directory");
  assert_int_equal(keel_config_load_file(&cfg, "/tmp", err, sizeof err), -EISDIR);
  assert_string_equal(err, "/tmp: Is a directory");
  assert_int_equal(keel_config_load_file(&cfg, NULL, err, sizeof err), -EINVAL);
  assert_cfg_equal(&cfg, &before);
}

/* ---- keel_config_set errors ---------------------------------------------- */

static void test_set_errors(void **state) {
  (void)state;
  expect_set_error("x", "1", "unknown key 'x'");
  expect_set_error("limits", "1", "unknown key 'limits'");
  expect_set_error("limits.bodyy", "1", "unknown key 'limits.bodyy'");
  expect_set_error("LISTEN", "127.0.0.1:1", "unknown key 'LISTEN'");
  expect_set_error("", "1", "unknown key ''");
  expect_set_error("timeouts.idle", "10x",
                   "timeouts.idle: '10x' is not a duration (use e.g. 250ms, 10s, 2m)");
  expect_set_error("workers", "5000", "workers: 5000 is out of range 0..1024");
  expect_set_error("workers", "", "workers: empty value");
  expect_set_error("workers", NULL, "workers: no value");
  expect_set_error("security.user", "65532", "security.user: '65532' is not UID:GID (two numbers)");
  expect_set_error("security.user", "1:x", "security.user: '1:x' is not UID:GID (two numbers)");
  expect_set_error("security.user", "-x", "security.user: '-x' is neither a user name nor UID:GID");
  expect_set_error("security.seccomp", "strict", "security.seccomp: 'strict' is not one of off|on|log");
  char err[64] = "";
  keel_config cfg;
  keel_config_init(&cfg);
  assert_int_equal(keel_config_set(&cfg, NULL, "1", err, sizeof err), -EINVAL);
}

/* ---- environment --------------------------------------------------------- */

static void test_env_errors(void **state) {
  (void)state;
  keel_config cfg, before;
  keel_config_init(&cfg);
  before = cfg;
  char err[256] = "";

  setenv("KEEL_WORKERS", "3", 1); /* valid, applied before the bad one: must not stick */
  setenv("KEEL_TIMEOUTS_IDLE", "10x", 1);
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), -EINVAL);
  assert_string_equal(err, "KEEL_TIMEOUTS_IDLE: '10x' is not a duration (use e.g. 250ms, 10s, 2m)");
  assert_cfg_equal(&cfg, &before);
  clear_env();

  setenv("KEEL_MAX_CONNECTIONS", "0", 1);
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), -EINVAL);
  assert_string_equal(err, "KEEL_MAX_CONNECTIONS: 0 is out of range 1..1000000");
  clear_env();

  setenv("KEEL_LISTEN", "", 1);
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), -EINVAL);
  assert_string_equal(err, "KEEL_LISTEN: empty value");
  clear_env();

  setenv("KEEL_LOG_ACCESS", "off", 1);
  setenv("KEEL_LOG_ACCESS_SAMPLE", "0.5", 1);
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), -EINVAL);
  assert_string_equal(err, "KEEL_LOG_ACCESS_SAMPLE: conflicts with KEEL_LOG_ACCESS (set only one)");
  clear_env();
  assert_cfg_equal(&cfg, &before);
}

static const char *const otel_vars[] = {
    "OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_COMPRESSION", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"};

static void test_env_otel(void **state) {
  (void)state;
  keel_config cfg;
  char err[256] = "";
  keel_config_init(&cfg);
  setenv("OTEL_SERVICE_NAME", "orders", 1);
  setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318", 1);
  setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip", 1);
  setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio", 1);
  setenv("OTEL_TRACES_SAMPLER_ARG", "0.25", 1);
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), 0);
  assert_string_equal(cfg.service_name, "orders");
  assert_string_equal(cfg.trace_endpoint, "http://base:4318");
  assert_int_equal(cfg.trace_gzip, 1);
  assert_true(cfg.trace_sample_ratio == 0.25);
  /* the traces-specific endpoint beats the generic one; KEEL_* beats OTEL_* */
  setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/v1/traces", 1);
  setenv("KEEL_TRACING_SERVICE_NAME", "keel-orders", 1);
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), 0);
  assert_string_equal(cfg.trace_endpoint, "http://traces:4318/v1/traces");
  assert_string_equal(cfg.service_name, "keel-orders");
  setenv("OTEL_TRACES_SAMPLER", "always_off", 1);
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), 0);
  assert_true(cfg.trace_sample_ratio == 0.0);
  setenv("OTEL_TRACES_SAMPLER", "jaeger_remote", 1);
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), -EINVAL);
  assert_string_equal(err, "OTEL_TRACES_SAMPLER: 'jaeger_remote' is not supported (always_on, "
                           "always_off, traceidratio and their parentbased_ forms are)");
  setenv("OTEL_TRACES_SAMPLER", "traceidratio", 1);
  setenv("OTEL_TRACES_SAMPLER_ARG", "3", 1);
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), -EINVAL);
  assert_string_equal(err, "OTEL_TRACES_SAMPLER_ARG: 3 is out of range 0..1");
  unsetenv("OTEL_TRACES_SAMPLER");
  setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", 1);
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), -EINVAL);
  assert_string_equal(err, "OTEL_EXPORTER_OTLP_COMPRESSION: 'zstd' is not gzip or none");
  for (size_t i = 0; i < sizeof otel_vars / sizeof otel_vars[0]; i++) unsetenv(otel_vars[i]);
  clear_env();
}

static void test_env_ignores_others(void **state) {
  (void)state;
  /* what Kubernetes injects for a Service named "keel", and other tools' variables */
  static const char *const vars[][2] = {
      {"KEEL_SERVICE_HOST", "10.0.0.1"},
      {"KEEL_SERVICE_PORT", "8080"},
      {"KEEL_SERVICE_PORT_HTTP", "8080"},
      {"KEEL_PORT", "tcp://10.0.0.1:8080"},
      {"KEEL_PORT_8080_TCP", "tcp://10.0.0.1:8080"},
      {"KEEL_PORT_8080_TCP_ADDR", "10.0.0.1"},
      {"KEEL_PORT_8080_TCP_PORT", "8080"},
      {"KEEL_PORT_8080_TCP_PROTO", "tcp"},
      {"KEEL_BIN", "/usr/bin/keel"},
      {"KEEL_LIMITS", "junk"},
      {"KEEL_TIMEOUTS_IDLEX", "junk"},
      {"KEEL_workers", "junk"},
      {"KEEL_", "junk"},
      {"keel_workers", "junk"},
  };
  size_t n = sizeof vars / sizeof vars[0];
  for (size_t i = 0; i < n; i++) assert_int_equal(setenv(vars[i][0], vars[i][1], 1), 0);
  keel_config cfg, want;
  keel_config_init(&cfg);
  keel_config_init(&want);
  char err[256] = "";
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), 0);
  assert_cfg_equal(&cfg, &want);
  /* a real key among them still applies */
  setenv("KEEL_WORKERS", "4", 1);
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), 0);
  assert_int_equal(cfg.workers, 4);
  for (size_t i = 0; i < n; i++) unsetenv(vars[i][0]);
  clear_env();
}

/* ---- value syntax -------------------------------------------------------- */

typedef struct vcase {
  const char *key, *text;
  uint64_t want; /* when msg is NULL */
  const char *msg;
} vcase;

static void run_vcases(const vcase *t, size_t n) {
  for (size_t i = 0; i < n; i++) {
    keel_config cfg;
    keel_config_init(&cfg);
    char err[512] = "";
    int rc = keel_config_set(&cfg, t[i].key, t[i].text, err, sizeof err);
    if (!t[i].msg) {
      if (rc != 0) print_error("%s=%s: %s\n", t[i].key, t[i].text, err);
      assert_int_equal(rc, 0);
      assert_int_equal(get_u(&cfg, t[i].key), t[i].want);
    } else {
      char want[512];
      snprintf(want, sizeof want, "%s: %s", t[i].key, t[i].msg);
      if (rc != -EINVAL || strcmp(err, want) != 0)
        print_error("%s=%s: rc=%d\nerr:  %s\nwant: %s\n", t[i].key, t[i].text, rc, err, want);
      assert_int_equal(rc, -EINVAL);
      assert_string_equal(err, want);
    }
  }
}

#define NOTDUR(s) "'" s "' is not a duration (use e.g. 250ms, 10s, 2m)"
#define NOTSIZE(s) "'" s "' is not a size (use bytes, or KiB, MiB or GiB: e.g. 65536, 64KiB, 1MiB)"
#define NOTNUM(s) "'" s "' is not a number (use plain digits)"

static void test_durations(void **state) {
  (void)state;
  static const vcase t[] = {
      {"timeouts.idle", "250ms", 250, NULL},
      {"timeouts.idle", "1ms", 1, NULL},
      {"timeouts.idle", "10s", 10000, NULL},
      {"timeouts.idle", "2m", 120000, NULL},
      {"timeouts.idle", "1h", 3600000, NULL},
      {"timeouts.idle", "60m", 3600000, NULL},
      {"timeouts.idle", "3600s", 3600000, NULL},
      {"timeouts.idle", "3600000ms", 3600000, NULL},
      {"timeouts.idle", "007s", 7000, NULL},
      {"shutdown.drain_delay", "0", 0, NULL},
      {"shutdown.drain_delay", "000", 0, NULL},
      {"shutdown.drain_delay", "0s", 0, NULL},
      {"shutdown.drain_delay", "0ms", 0, NULL},
      {"shutdown.drain_delay", "0h", 0, NULL},
      {"shutdown.drain_delay", "10m", 600000, NULL},
      {"shutdown.drain_delay", "11m", 0, "11m is out of range 0..10m"},
      {"shutdown.drain_timeout", "0", 0, "0 is out of range 1ms..10m"},
      {"timeouts.idle", "0", 0, "0 is out of range 1ms..1h"},
      {"timeouts.idle", "0s", 0, "0s is out of range 1ms..1h"},
      {"timeouts.idle", "2h", 0, "2h is out of range 1ms..1h"},
      {"timeouts.idle", "3600001ms", 0, "3600001ms is out of range 1ms..1h"},
      {"timeouts.idle", "99999999999999999999s", 0,
       "99999999999999999999s is out of range 1ms..1h"},
      {"timeouts.idle", "18446744073709551615ms", 0,
       "18446744073709551615ms is out of range 1ms..1h"},
      {"timeouts.idle", "18446744073709551615h", 0,
       "18446744073709551615h is out of range 1ms..1h"},
      {"timeouts.idle", "5124095576030432h", 0, "5124095576030432h is out of range 1ms..1h"},
      {"timeouts.idle", "10", 0, "'10' needs a unit: ms, s, m or h"},
      {"timeouts.idle", "99999999999999999999", 0, "'99999999999999999999' needs a unit: ms, s, "
                                                   "m or h"},
      {"timeouts.idle", "10x", 0, NOTDUR("10x")},
      {"timeouts.idle", "-1s", 0, NOTDUR("-1s")},
      {"timeouts.idle", "+1s", 0, NOTDUR("+1s")},
      {"timeouts.idle", " 1s", 0, NOTDUR(" 1s")},
      {"timeouts.idle", "1s ", 0, NOTDUR("1s ")},
      {"timeouts.idle", "1 s", 0, NOTDUR("1 s")},
      {"timeouts.idle", "1.5s", 0, NOTDUR("1.5s")},
      {"timeouts.idle", "1S", 0, NOTDUR("1S")},
      {"timeouts.idle", "1sec", 0, NOTDUR("1sec")},
      {"timeouts.idle", "1us", 0, NOTDUR("1us")},
      {"timeouts.idle", "1d", 0, NOTDUR("1d")},
      {"timeouts.idle", "1m30s", 0, NOTDUR("1m30s")},
      {"timeouts.idle", "s", 0, NOTDUR("s")},
      {"timeouts.idle", "0x10s", 0, NOTDUR("0x10s")},
      {"timeouts.idle", "", 0, "empty value"},
  };
  run_vcases(t, sizeof t / sizeof t[0]);
}

static void test_sizes(void **state) {
  (void)state;
  static const vcase t[] = {
      {"limits.body", "0", 0, NULL},
      {"limits.body", "1", 1, NULL},
      {"limits.body", "1KiB", KIB, NULL},
      {"limits.body", "64KiB", 64 * KIB, NULL},
      {"limits.body", "1MiB", MIB, NULL},
      {"limits.body", "1024MiB", GIB, NULL},
      {"limits.body", "1GiB", GIB, NULL},
      {"limits.body", "1073741824", GIB, NULL},
      {"limits.body", "0GiB", 0, NULL},
      {"limits.body", "1073741825", 0, "1073741825 is out of range 0..1GiB"},
      {"limits.body", "2GiB", 0, "2GiB is out of range 0..1GiB"},
      {"limits.body", "99999999999999999999", 0, "99999999999999999999 is out of range 0..1GiB"},
      {"limits.body", "17179869184GiB", 0, "17179869184GiB is out of range 0..1GiB"},
      {"limits.body", "1KB", 0, NOTSIZE("1KB")},
      {"limits.body", "1kB", 0, NOTSIZE("1kB")},
      {"limits.body", "1k", 0, NOTSIZE("1k")},
      {"limits.body", "1K", 0, NOTSIZE("1K")},
      {"limits.body", "1kib", 0, NOTSIZE("1kib")},
      {"limits.body", "1MB", 0, NOTSIZE("1MB")},
      {"limits.body", "1M", 0, NOTSIZE("1M")},
      {"limits.body", "1TiB", 0, NOTSIZE("1TiB")},
      {"limits.body", "1 KiB", 0, NOTSIZE("1 KiB")},
      {"limits.body", "1.5MiB", 0, NOTSIZE("1.5MiB")},
      {"limits.body", "-1", 0, NOTSIZE("-1")},
      {"limits.body", "+1", 0, NOTSIZE("+1")},
      {"limits.body", "0x10", 0, NOTSIZE("0x10")},
      {"limits.body", "KiB", 0, NOTSIZE("KiB")},
      {"limits.body", "1e6", 0, NOTSIZE("1e6")},
      {"limits.request_line", "64", 64, NULL},
      {"limits.request_line", "1MiB", MIB, NULL},
      {"limits.request_line", "63", 0, "63 is out of range 64..1MiB"},
      {"limits.request_line", "1025KiB", 0, "1025KiB is out of range 64..1MiB"},
      {"limits.header_bytes", "255", 0, "255 is out of range 256..1MiB"},
      {"log.buffer", "4KiB", 4 * KIB, NULL},
      {"log.buffer", "64MiB", 64 * MIB, NULL},
      {"log.buffer", "4095", 0, "4095 is out of range 4KiB..64MiB"},
      {"log.buffer", "65MiB", 0, "65MiB is out of range 4KiB..64MiB"},
  };
  run_vcases(t, sizeof t / sizeof t[0]);
}

static void test_uints(void **state) {
  (void)state;
  static const vcase t[] = {
      {"workers", "0", 0, NULL},
      {"workers", "1024", 1024, NULL},
      {"workers", "0001", 1, NULL},
      {"workers", "1025", 0, "1025 is out of range 0..1024"},
      {"workers", "18446744073709551615", 0, "18446744073709551615 is out of range 0..1024"},
      {"workers", "18446744073709551616", 0, "18446744073709551616 is out of range 0..1024"},
      {"workers", "-1", 0, NOTNUM("-1")},
      {"workers", "+1", 0, NOTNUM("+1")},
      {"workers", "1e3", 0, NOTNUM("1e3")},
      {"workers", "0x10", 0, NOTNUM("0x10")},
      {"workers", "4 ", 0, NOTNUM("4 ")},
      {"workers", "four", 0, NOTNUM("four")},
      {"max_connections", "1", 1, NULL},
      {"max_connections", "1000000", 1000000, NULL},
      {"max_connections", "0", 0, "0 is out of range 1..1000000"},
      {"max_connections", "1000001", 0, "1000001 is out of range 1..1000000"},
      {"limits.header_count", "1", 1, NULL},
      {"limits.header_count", "10000", 10000, NULL},
      {"limits.header_count", "0", 0, "0 is out of range 1..10000"},
      {"limits.header_count", "10001", 0, "10001 is out of range 1..10000"},
  };
  run_vcases(t, sizeof t / sizeof t[0]);
}

static void test_listen(void **state) {
  (void)state;
  static const char *const good[] = {
      "0.0.0.0:0",   "127.0.0.1:65535", "[::1]:8080", "[::]:80",        "[2001:db8::1]:443",
      "localhost:8080", "my-host.example.com:443", "a:1", "keel.default.svc.cluster.local:80",
      "[::ffff:10.0.0.1]:80", "1.2.3.4:00080",
  };
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    keel_config cfg;
    keel_config_init(&cfg);
    char err[256] = "";
    int rc = keel_config_set(&cfg, "listen", good[i], err, sizeof err);
    if (rc) print_error("%s: %s\n", good[i], err);
    assert_int_equal(rc, 0);
    assert_string_equal(cfg.listen, good[i]);
    assert_int_equal(keel_config_validate(&cfg, err, sizeof err), 0);
  }
#define EG "(e.g. 127.0.0.1:8080, [::1]:8080, localhost:8080)"
  static const struct {
    const char *text, *msg;
  } bad[] = {
      {"127.0.0.1", "listen: '127.0.0.1' is not HOST:PORT " EG},
      {"localhost", "listen: 'localhost' is not HOST:PORT " EG},
      {":8080", "listen: ':8080' has no host (use 0.0.0.0 or [::] for every interface)"},
      {"127.0.0.1:", "listen: '127.0.0.1:': port must be a number in 0..65535"},
      {"127.0.0.1:65536", "listen: '127.0.0.1:65536': port must be a number in 0..65535"},
      {"127.0.0.1:-1", "listen: '127.0.0.1:-1': port must be a number in 0..65535"},
      {"127.0.0.1:+80", "listen: '127.0.0.1:+80': port must be a number in 0..65535"},
      {"127.0.0.1:http", "listen: '127.0.0.1:http': port must be a number in 0..65535"},
      {"127.0.0.1:99999999999999999999",
       "listen: '127.0.0.1:99999999999999999999': port must be a number in 0..65535"},
      {"::1:8080", "listen: '::1:8080': an IPv6 address needs brackets, e.g. [::1]:8080"},
      {"[::1]8080", "listen: '[::1]8080' is not [IPV6]:PORT " EG},
      {"[::1", "listen: '[::1' is not [IPV6]:PORT " EG},
      {"[zz]:80", "listen: '[zz]:80': 'zz' is not an IPv6 address"},
      {"[]:80", "listen: '[]:80': '' is not an IPv6 address"},
      {"[::1]:", "listen: '[::1]:': port must be a number in 0..65535"},
      {"256.1.1.1:80", "listen: '256.1.1.1:80': '256.1.1.1' is not an IPv4 address"},
      {"1.2.3:80", "listen: '1.2.3:80': '1.2.3' is not an IPv4 address"},
      {"host_name:80", "listen: 'host_name:80': 'host_name' is not a valid host name"},
      {"-host:80", "listen: '-host:80': '-host' is not a valid host name"},
      {"host-:80", "listen: 'host-:80': 'host-' is not a valid host name"},
      {"a..b:80", "listen: 'a..b:80': 'a..b' is not a valid host name"},
      {"*:80", "listen: '*:80': '*' is not a valid host name"},
      {" localhost:80", "listen: ' localhost:80': ' localhost' is not a valid host name"},
      {"", "listen: empty value"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    expect_set_error("listen", bad[i].text, bad[i].msg);

  /* 127 bytes fit the field; 128 do not */
  char host[160], text[200];
  memset(host, 'a', sizeof host);
  /* 60 + '.' + 60 = 121 host bytes + ":8080" = 126, one more label char -> 127 */
  memcpy(host + 60, ".", 1);
  host[122] = '\0';
  snprintf(text, sizeof text, "%s:8080", host);
  assert_int_equal(strlen(text), 127);
  keel_config cfg;
  keel_config_init(&cfg);
  char err[512] = "";
  assert_int_equal(keel_config_set(&cfg, "listen", text, err, sizeof err), 0);
  assert_string_equal(cfg.listen, text);
  snprintf(text, sizeof text, "%s:80801", host);
  assert_int_equal(strlen(text), 128);
  assert_int_equal(keel_config_set(&cfg, "listen", text, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "' is too long (at most 127 bytes)"));
  /* labels longer than 63 are not host names */
  memset(host, 'b', 64);
  snprintf(text, sizeof text, "%.64s:80", host);
  assert_int_equal(keel_config_set(&cfg, "listen", text, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "is not a valid host name"));
}

static void test_level_and_access(void **state) {
  (void)state;
  static const struct {
    const char *text;
    keel_log_level want;
  } lv[] = {{"debug", KEEL_LOG_DEBUG}, {"info", KEEL_LOG_INFO}, {"warn", KEEL_LOG_WARN},
            {"error", KEEL_LOG_ERROR}, {"WARN", KEEL_LOG_WARN}, {"Error", KEEL_LOG_ERROR}};
  for (size_t i = 0; i < sizeof lv / sizeof lv[0]; i++) {
    keel_config cfg;
    keel_config_init(&cfg);
    assert_int_equal(keel_config_set(&cfg, "log.level", lv[i].text, NULL, 0), 0);
    assert_int_equal(cfg.log_level, lv[i].want);
  }
  expect_set_error("log.level", "warning",
                   "log.level: 'warning' is not one of debug, info, warn, error");
  expect_set_error("log.level", "2", "log.level: '2' is not one of debug, info, warn, error");

  static const struct {
    const char *text;
    double want;
  } acc[] = {{"on", 1.0}, {"off", 0.0}, {"true", 1.0}, {"false", 0.0}, {"ON", 1.0}, {"False", 0.0}};
  for (size_t i = 0; i < sizeof acc / sizeof acc[0]; i++) {
    keel_config cfg;
    keel_config_init(&cfg);
    assert_int_equal(keel_config_set(&cfg, "log.access_sample", "0.5", NULL, 0), 0);
    assert_int_equal(keel_config_set(&cfg, "log.access", acc[i].text, NULL, 0), 0);
    assert_true(cfg.access_log_sample == acc[i].want);
  }
  expect_set_error("log.access", "yes", "log.access: 'yes' is not one of on, off, true, false");
  expect_set_error("log.access", "1", "log.access: '1' is not one of on, off, true, false");

  static const struct {
    const char *text;
    double want;
  } fr[] = {{"0", 0.0},   {"1", 1.0},      {"1.0", 1.0},   {"0.5", 0.5},
            {"0.125", 0.125}, {"0.01", 0.01}, {"00.25", 0.25}, {"1.000000000000000000000", 1.0},
            {"0.0000000000000000000001", 0.0}};
  for (size_t i = 0; i < sizeof fr / sizeof fr[0]; i++) {
    keel_config cfg;
    keel_config_init(&cfg);
    char err[256] = "";
    int rc = keel_config_set(&cfg, "log.access_sample", fr[i].text, err, sizeof err);
    if (rc) print_error("%s: %s\n", fr[i].text, err);
    assert_int_equal(rc, 0);
    assert_true(fabs(cfg.access_log_sample - fr[i].want) < 1e-15);
    assert_int_equal(keel_config_validate(&cfg, err, sizeof err), 0);
  }
#define NOTFRAC(s) "log.access_sample: '" s "' is not a fraction (use e.g. 0, 0.25, 1)"
  expect_set_error("log.access_sample", "1.5", "log.access_sample: 1.5 is out of range 0..1");
  expect_set_error("log.access_sample", "2", "log.access_sample: 2 is out of range 0..1");
  expect_set_error("log.access_sample", "1.0000000000000000000001",
                   "log.access_sample: 1.0000000000000000000001 is out of range 0..1");
  expect_set_error("log.access_sample", "99999999999999999999",
                   "log.access_sample: 99999999999999999999 is out of range 0..1");
  expect_set_error("log.access_sample", ".5", NOTFRAC(".5"));
  expect_set_error("log.access_sample", "5.", NOTFRAC("5."));
  expect_set_error("log.access_sample", "-0.5", NOTFRAC("-0.5"));
  expect_set_error("log.access_sample", "+0.5", NOTFRAC("+0.5"));
  expect_set_error("log.access_sample", "1e-1", NOTFRAC("1e-1"));
  expect_set_error("log.access_sample", "0,5", NOTFRAC("0,5"));
  expect_set_error("log.access_sample", "nan", NOTFRAC("nan"));
  expect_set_error("log.access_sample", "50%", NOTFRAC("50%"));
}

/* ---- validate ------------------------------------------------------------ */

static void expect_invalid(const keel_config *cfg, const char *want) {
  char err[512] = "";
  int rc = keel_config_validate(cfg, err, sizeof err);
  if (rc != -EINVAL || strcmp(err, want) != 0)
    print_error("rc=%d\nerr:  %s\nwant: %s\n", rc, err, want);
  assert_int_equal(rc, -EINVAL);
  assert_string_equal(err, want);
}

static void test_validate(void **state) {
  (void)state;
  keel_config cfg;

  keel_config_init(&cfg);
  assert_int_equal(keel_config_set(&cfg, "limits.request_line", "64KiB", NULL, 0), 0);
  expect_invalid(&cfg, "limits.request_line (64KiB) must not exceed limits.header_bytes (32KiB)");
  assert_int_equal(keel_config_set(&cfg, "limits.header_bytes", "64KiB", NULL, 0), 0);
  assert_int_equal(keel_config_validate(&cfg, NULL, 0), 0);

  /* TLS: the pairs; the files themselves are checked in tests/unit/test_tls.c */
  keel_config_init(&cfg);
  assert_int_equal(keel_config_set(&cfg, "tls.cert", "/nonexistent/tls.crt", NULL, 0), 0);
  expect_invalid(&cfg, "tls.cert and tls.key go together: set both or neither");
  keel_config_init(&cfg);
  assert_int_equal(keel_config_set(&cfg, "tls.key", "/nonexistent/tls.key", NULL, 0), 0);
  expect_invalid(&cfg, "tls.cert and tls.key go together: set both or neither");
  keel_config_init(&cfg);
  assert_int_equal(keel_config_set(&cfg, "tls.client_ca", "/nonexistent/ca.pem", NULL, 0), 0);
  expect_invalid(&cfg, "tls.client_ca needs tls.cert and tls.key");
  assert_int_equal(keel_config_set(&cfg, "tls.cert", "/nonexistent/tls.crt", NULL, 0), 0);
  assert_int_equal(keel_config_set(&cfg, "tls.key", "/nonexistent/tls.key", NULL, 0), 0);
  expect_invalid(&cfg, "tls.cert /nonexistent/tls.crt: No such file or directory");

  keel_config_init(&cfg);
  cfg.workers = 8;
  cfg.max_connections = 4;
  expect_invalid(&cfg, "workers (8) must not exceed max_connections (4)");

  /* fields set by hand are range-checked like text */
  keel_config_init(&cfg);
  cfg.workers = 5000;
  expect_invalid(&cfg, "workers: 5000 is out of range 0..1024");
  keel_config_init(&cfg);
  cfg.idle_timeout_ms = 0;
  expect_invalid(&cfg, "timeouts.idle: 0 is out of range 1ms..1h");
  keel_config_init(&cfg);
  cfg.drain_delay_ms = 600001;
  expect_invalid(&cfg, "shutdown.drain_delay: 600001ms is out of range 0..10m");
  keel_config_init(&cfg);
  cfg.body_max = 2 * GIB;
  expect_invalid(&cfg, "limits.body: 2GiB is out of range 0..1GiB");
  keel_config_init(&cfg);
  cfg.log_buffer_bytes = 100;
  expect_invalid(&cfg, "log.buffer: 100 is out of range 4KiB..64MiB");
  keel_config_init(&cfg);
  cfg.log_level = (keel_log_level)7;
  expect_invalid(&cfg, "log.level: 7 is not one of debug, info, warn, error");
  keel_config_init(&cfg);
  cfg.access_log_sample = 1.5;
  expect_invalid(&cfg, "log.access_sample: 1.5 is out of range 0..1");
  keel_config_init(&cfg);
  cfg.access_log_sample = -0.0;
  assert_int_equal(keel_config_validate(&cfg, NULL, 0), 0);
  cfg.access_log_sample = NAN;
  expect_invalid(&cfg, "log.access_sample: nan is out of range 0..1");
  keel_config_init(&cfg);
  snprintf(cfg.listen, sizeof cfg.listen, "nope");
  expect_invalid(&cfg, "listen: 'nope' is not HOST:PORT " EG);
  keel_config_init(&cfg);
  memset(cfg.listen, 'a', sizeof cfg.listen);
  expect_invalid(&cfg, "listen: not NUL-terminated");
}

/* ---- pipeline keys ------------------------------------------------------ */

static void test_choices(void **state) {
  (void)state;
  static const struct {
    const char *key, *text;
    unsigned want;
  } good[] = {
      {"otlp.format", "proto", 0},       {"otlp.format", "json", 1},
      {"otlp.format", "JSON", 1},        {"otlp.format", "Proto", 0},
      {"otlp.mode", "record", 0},        {"otlp.mode", "batch", 1},
      {"otlp.mode", "BATCH", 1},         {"otlp.ack", "durable", 0},
      {"otlp.ack", "delivered", 1},      {"otlp.ack", "Delivered", 1},
      {"kafka.compression", "none", 0},  {"kafka.compression", "gzip", 1},
      {"kafka.compression", "snappy", 2}, {"kafka.compression", "lz4", 3},
      {"kafka.compression", "zstd", 4},  {"kafka.compression", "LZ4", 3},
      {"kafka.compression", "ZStd", 4},
  };
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    keel_config cfg;
    keel_config_init(&cfg);
    *choice_ptr(&cfg, good[i].key) = good[i].want ? 0 : 1; /* so a no-op cannot pass */
    char err[256] = "";
    int rc = keel_config_set(&cfg, good[i].key, good[i].text, err, sizeof err);
    if (rc) print_error("%s=%s: %s\n", good[i].key, good[i].text, err);
    assert_int_equal(rc, 0);
    assert_int_equal(choice_field(&cfg, good[i].key), good[i].want);
    assert_int_equal(keel_config_validate(&cfg, err, sizeof err), 0);
  }
#define NOTFMT(s) "otlp.format: '" s "' is not one of proto|json"
  expect_set_error("otlp.format", "xml", NOTFMT("xml"));
  expect_set_error("otlp.format", "protobuf", NOTFMT("protobuf"));
  expect_set_error("otlp.format", "pro", NOTFMT("pro"));
  expect_set_error("otlp.format", "proto|json", NOTFMT("proto|json"));
  expect_set_error("otlp.format", "proto ", NOTFMT("proto "));
  expect_set_error("otlp.format", "1", NOTFMT("1"));
  expect_set_error("otlp.format", "", "otlp.format: empty value");
  expect_set_error("otlp.mode", "records", "otlp.mode: 'records' is not one of record|batch");
  expect_set_error("otlp.ack", "sync", "otlp.ack: 'sync' is not one of durable|delivered");
  expect_set_error("kafka.compression", "brotli",
                   "kafka.compression: 'brotli' is not one of none|gzip|snappy|lz4|zstd");
  expect_set_error("kafka.compression", "off",
                   "kafka.compression: 'off' is not one of none|gzip|snappy|lz4|zstd");
  expect_yaml_error("otlp:\n  format: yaml\n", "2: otlp.format: 'yaml' is not one of proto|json");

  keel_config cfg, before;
  keel_config_init(&cfg);
  before = cfg;
  char err[256] = "";
  setenv("KEEL_KAFKA_COMPRESSION", "Snappy", 1);
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), 0);
  assert_int_equal(cfg.kafka_compression, 2);
  setenv("KEEL_KAFKA_COMPRESSION", "lzo", 1);
  cfg = before;
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), -EINVAL);
  assert_string_equal(err, "KEEL_KAFKA_COMPRESSION: 'lzo' is not one of none|gzip|snappy|lz4|zstd");
  assert_cfg_equal(&cfg, &before);
  clear_env();

  /* indexes set by hand are checked against the number of choices */
  keel_config_init(&cfg);
  cfg.otlp_format = 2;
  expect_invalid(&cfg, "otlp.format: 2 is not one of proto|json");
  keel_config_init(&cfg);
  cfg.otlp_batch = 255;
  expect_invalid(&cfg, "otlp.mode: 255 is not one of record|batch");
  keel_config_init(&cfg);
  cfg.otlp_ack_delivered = 2;
  expect_invalid(&cfg, "otlp.ack: 2 is not one of durable|delivered");
  keel_config_init(&cfg);
  cfg.kafka_compression = 4;
  assert_int_equal(keel_config_validate(&cfg, NULL, 0), 0);
  cfg.kafka_compression = 5;
  expect_invalid(&cfg, "kafka.compression: 5 is not one of none|gzip|snappy|lz4|zstd");
  keel_config_init(&cfg);
  cfg.pipeline_enabled = 2;
  expect_invalid(&cfg, "pipeline.enabled: 2 is not 0 or 1");
}

static void test_empty_values(void **state) {
  (void)state;
  /* the receivers: "" turns them off, from every source */
  static const char *const off_keys[] = {"otlp.http_listen", "otlp.grpc_listen",
                                         "otlp.key_attribute", "otlp.api_keys", "kafka.brokers"};
  for (size_t i = 0; i < sizeof off_keys / sizeof off_keys[0]; i++) {
    keel_config cfg;
    keel_config_init(&cfg);
    assert_int_equal(keel_config_set(&cfg, off_keys[i], "x:1", NULL, 0), 0);
    assert_string_equal(str_field(&cfg, off_keys[i]), "x:1");
    char err[256] = "";
    assert_int_equal(keel_config_set(&cfg, off_keys[i], "", err, sizeof err), 0);
    assert_string_equal(err, "");
    assert_string_equal(str_field(&cfg, off_keys[i]), "");
    assert_int_equal(keel_config_validate(&cfg, err, sizeof err), 0);
  }
  keel_config cfg, want;
  char err[512] = "";
  keel_config_init(&cfg);
  assert_int_equal(load_yaml(&cfg,
                             "otlp:\n  http_listen: \"\"\n  grpc_listen:\n"
                             "kafka:\n  brokers: ''\n",
                             err, sizeof err, NULL, 0),
                   0);
  assert_string_equal(cfg.otlp_http_listen, "");
  assert_string_equal(cfg.otlp_grpc_listen, "");
  assert_string_equal(cfg.kafka_brokers, "");
  assert_int_equal(keel_config_validate(&cfg, err, sizeof err), 0);

  keel_config_init(&cfg);
  keel_config_init(&want);
  assert_int_equal(keel_config_set(&cfg, "kafka.brokers", "k:9092", NULL, 0), 0);
  setenv("KEEL_OTLP_HTTP_LISTEN", "", 1);
  setenv("KEEL_OTLP_GRPC_LISTEN", "", 1);
  setenv("KEEL_KAFKA_BROKERS", "", 1);
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), 0);
  clear_env();
  want.otlp_http_listen[0] = '\0';
  want.otlp_grpc_listen[0] = '\0';
  assert_cfg_equal(&cfg, &want);

  /* keys without KF_EMPTY still refuse "", including listen next to its OTLP siblings */
  expect_set_error("listen", "", "listen: empty value");
  expect_set_error("data_dir", "", "data_dir: empty value");
  expect_set_error("kafka.topics.logs", "", "kafka.topics.logs: empty value");
  expect_set_error("tracing.service_name", "", "tracing.service_name: empty value");
  expect_set_error("otlp.max_request", "", "otlp.max_request: empty value");
  expect_yaml_error("otlp:\n  http_listen: ''\nlisten: ''\n", "3: listen: empty value");
  expect_yaml_error("data_dir:\n", "1: data_dir: empty value");
  setenv("KEEL_KAFKA_TOPICS_TRACES", "", 1);
  keel_config_init(&cfg);
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), -EINVAL);
  assert_string_equal(err, "KEEL_KAFKA_TOPICS_TRACES: empty value");
  clear_env();

  /* and so does validate, for fields emptied by hand */
  keel_config_init(&cfg);
  cfg.listen[0] = '\0';
  expect_invalid(&cfg, "listen: '' is not HOST:PORT " EG);
  keel_config_init(&cfg);
  cfg.data_dir[0] = '\0';
  expect_invalid(&cfg, "data_dir: empty value");
  keel_config_init(&cfg);
  cfg.kafka_topic_metrics[0] = '\0';
  expect_invalid(&cfg, "kafka.topics.metrics: empty value");
  keel_config_init(&cfg);
  cfg.otlp_http_listen[0] = '\0';
  cfg.otlp_grpc_listen[0] = '\0';
  cfg.otlp_key_attribute[0] = '\0';
  assert_int_equal(keel_config_validate(&cfg, NULL, 0), 0);
}

static void test_pipeline_numbers(void **state) {
  (void)state;
  static const vcase t[] = {
      /* buffer.fsync: "always" (any case) is 0, like "0"; else a period up to 1m */
      {"buffer.fsync", "always", 0, NULL},
      {"buffer.fsync", "ALWAYS", 0, NULL},
      {"buffer.fsync", "Always", 0, NULL},
      {"buffer.fsync", "0", 0, NULL},
      {"buffer.fsync", "0ms", 0, NULL},
      {"buffer.fsync", "10ms", 10, NULL},
      {"buffer.fsync", "1s", 1000, NULL},
      {"buffer.fsync", "1m", 60000, NULL},
      {"buffer.fsync", "60001ms", 0, "60001ms is out of range 0..1m"},
      {"buffer.fsync", "10", 0, "'10' needs a unit: ms, s, m or h"},
      {"buffer.fsync", "never", 0, NOTDUR("never")},
      {"buffer.fsync", "always ", 0, NOTDUR("always ")},
      {"buffer.fsync", "alway", 0, NOTDUR("alway")},
      {"buffer.fsync", "", 0, "empty value"},
      /* "always" is buffer.fsync's alone */
      {"timeouts.idle", "always", 0, NOTDUR("always")},
      {"shutdown.drain_delay", "always", 0, NOTDUR("always")},
      {"shutdown.flush_timeout", "always", 0, NOTDUR("always")},
      {"kafka.linger", "always", 0, NOTDUR("always")},
      {"otlp.ack_timeout", "always", 0, NOTDUR("always")},
      /* the other new durations */
      {"otlp.ack_timeout", "1ms", 1, NULL},
      {"otlp.ack_timeout", "1h", 3600000, NULL},
      {"otlp.ack_timeout", "0", 0, "0 is out of range 1ms..1h"},
      {"kafka.linger", "0", 0, NULL},
      {"kafka.linger", "10s", 10000, NULL},
      {"kafka.linger", "10001ms", 0, "10001ms is out of range 0..10s"},
      {"shutdown.flush_timeout", "0", 0, NULL},
      {"shutdown.flush_timeout", "10m", 600000, NULL},
      {"shutdown.flush_timeout", "11m", 0, "11m is out of range 0..10m"},
      /* sizes */
      {"otlp.max_request", "1KiB", KIB, NULL},
      {"otlp.max_request", "1GiB", GIB, NULL},
      {"otlp.max_request", "1023", 0, "1023 is out of range 1KiB..1GiB"},
      {"buffer.segment", "64KiB", 64 * KIB, NULL},
      {"buffer.segment", "4GiB", 4 * GIB, NULL},
      {"buffer.segment", "5GiB", 0, "5GiB is out of range 64KiB..4GiB"},
      {"buffer.max", "1MiB", MIB, NULL},
      {"buffer.max", "1048576GiB", 1ull << 50, NULL},
      {"buffer.max", "1048577GiB", 0, "1048577GiB is out of range 1MiB..1048576GiB"},
      {"buffer.max", "1MB", 0, NOTSIZE("1MB")},
      {"buffer.memory", "1MiB", MIB, NULL},
      {"buffer.memory", "64GiB", 64 * GIB, NULL},
      {"buffer.memory", "65GiB", 0, "65GiB is out of range 1MiB..64GiB"},
      {"kafka.message_max", "4KiB", 4 * KIB, NULL},
      {"kafka.message_max", "1000000000", 1000000000, NULL},
      {"kafka.message_max", "1000000001", 0, "1000000001 is out of range 4KiB..1000000000"},
      {"kafka.message_max", "1GiB", 0, "1GiB is out of range 4KiB..1000000000"},
      {"files.rotate", "64KiB", 64 * KIB, NULL},
      {"files.rotate", "64GiB", 64 * GIB, NULL},
      {"files.rotate", "65535", 0, "65535 is out of range 64KiB..64GiB"},
      /* counts */
      {"kafka.batch_messages", "1", 1, NULL},
      {"kafka.batch_messages", "1000000", 1000000, NULL},
      {"kafka.batch_messages", "0", 0, "0 is out of range 1..1000000"},
      {"files.keep", "1", 1, NULL},
      {"files.keep", "100000", 100000, NULL},
      {"files.keep", "0", 0, "0 is out of range 1..100000"},
      {"files.keep", "1e3", 0, NOTNUM("1e3")},
  };
  run_vcases(t, sizeof t / sizeof t[0]);

  /* "always" from a file and from the environment too */
  keel_config cfg;
  char err[256] = "";
  keel_config_init(&cfg);
  assert_int_equal(keel_config_set(&cfg, "buffer.fsync", "50ms", NULL, 0), 0);
  assert_int_equal(load_yaml(&cfg, "buffer:\n  fsync: always\n", err, sizeof err, NULL, 0), 0);
  assert_int_equal(cfg.buffer_fsync_ms, 0);
  setenv("KEEL_BUFFER_FSYNC", "25ms", 1);
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), 0);
  assert_int_equal(cfg.buffer_fsync_ms, 25);
  setenv("KEEL_BUFFER_FSYNC", "always", 1);
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), 0);
  assert_int_equal(cfg.buffer_fsync_ms, 0);
  clear_env();
  expect_yaml_error("shutdown:\n  flush_timeout: always\n",
                    "2: shutdown.flush_timeout: " NOTDUR("always"));

  /* hand-set numbers are range-checked by validate */
  keel_config_init(&cfg);
  cfg.buffer_fsync_ms = 60001;
  expect_invalid(&cfg, "buffer.fsync: 60001ms is out of range 0..1m");
  keel_config_init(&cfg);
  cfg.buffer_segment_bytes = 1000;
  expect_invalid(&cfg, "buffer.segment: 1000 is out of range 64KiB..4GiB");
  keel_config_init(&cfg);
  cfg.otlp_ack_timeout_ms = 0;
  expect_invalid(&cfg, "otlp.ack_timeout: 0 is out of range 1ms..1h");
  keel_config_init(&cfg);
  cfg.files_keep = 0;
  expect_invalid(&cfg, "files.keep: 0 is out of range 1..100000");
}

static void test_otlp_listen(void **state) {
  (void)state;
  static const char *const keys[] = {"otlp.http_listen", "otlp.grpc_listen"};
  static const char *const good[] = {"0.0.0.0:4318", "127.0.0.1:0", "[::1]:4317", "[::]:4318",
                                     "localhost:4318", "otel-gw.monitoring.svc:4317"};
  for (size_t k = 0; k < 2; k++) {
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
      keel_config cfg;
      keel_config_init(&cfg);
      char err[256] = "";
      int rc = keel_config_set(&cfg, keys[k], good[i], err, sizeof err);
      if (rc) print_error("%s=%s: %s\n", keys[k], good[i], err);
      assert_int_equal(rc, 0);
      assert_string_equal(str_field(&cfg, keys[k]), good[i]);
      assert_int_equal(keel_config_validate(&cfg, err, sizeof err), 0);
    }
  }
  static const struct {
    const char *text, *msg;
  } bad[] = {
      {"4318", "otlp.http_listen: '4318' is not HOST:PORT " EG},
      {"127.0.0.1", "otlp.http_listen: '127.0.0.1' is not HOST:PORT " EG},
      {":4318", "otlp.http_listen: ':4318' has no host (use 0.0.0.0 or [::] for every interface)"},
      {"127.0.0.1:65536", "otlp.http_listen: '127.0.0.1:65536': port must be a number in 0..65535"},
      {"127.0.0.1:otlp", "otlp.http_listen: '127.0.0.1:otlp': port must be a number in 0..65535"},
      {"::1:4318", "otlp.http_listen: '::1:4318': an IPv6 address needs brackets, e.g. [::1]:8080"},
      {"[zz]:4318", "otlp.http_listen: '[zz]:4318': 'zz' is not an IPv6 address"},
      {"300.0.0.1:4318", "otlp.http_listen: '300.0.0.1:4318': '300.0.0.1' is not an IPv4 address"},
      {"otel_gw:4318", "otlp.http_listen: 'otel_gw:4318': 'otel_gw' is not a valid host name"},
      {"http://127.0.0.1:4318",
       "otlp.http_listen: 'http://127.0.0.1:4318': an IPv6 address needs brackets, e.g. "
       "[::1]:8080"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    expect_set_error("otlp.http_listen", bad[i].text, bad[i].msg);
  expect_set_error("otlp.grpc_listen", "[::1]4317",
                   "otlp.grpc_listen: '[::1]4317' is not [IPV6]:PORT " EG);
  expect_yaml_error("otlp:\n  grpc_listen: 4317\n",
                    "2: otlp.grpc_listen: '4317' is not HOST:PORT " EG);
  setenv("KEEL_OTLP_HTTP_LISTEN", "0.0.0.0", 1);
  keel_config cfg;
  char err[512] = "";
  keel_config_init(&cfg);
  assert_int_equal(keel_config_apply_env(&cfg, err, sizeof err), -EINVAL);
  assert_string_equal(err, "KEEL_OTLP_HTTP_LISTEN: '0.0.0.0' is not HOST:PORT " EG);
  clear_env();

  /* 127 bytes fit the field; 128 do not */
  char text[160];
  memset(text, 'a', sizeof text);
  memcpy(text + 60, ".", 1);
  memcpy(text + 121, ":4318", 6);
  assert_int_equal(strlen(text), 126);
  assert_int_equal(keel_config_set(&cfg, "otlp.grpc_listen", text, err, sizeof err), 0);
  memcpy(text + 121, ":43180", 7);
  text[121] = 'a';
  memcpy(text + 122, ":43180", 7);
  assert_int_equal(strlen(text), 128);
  assert_int_equal(keel_config_set(&cfg, "otlp.grpc_listen", text, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "' is too long (at most 127 bytes)"));

  /* validate checks hand-set values like text */
  keel_config_init(&cfg);
  snprintf(cfg.otlp_http_listen, sizeof cfg.otlp_http_listen, "nope");
  expect_invalid(&cfg, "otlp.http_listen: 'nope' is not HOST:PORT " EG);
  keel_config_init(&cfg);
  snprintf(cfg.otlp_grpc_listen, sizeof cfg.otlp_grpc_listen, "[::1]:99999");
  expect_invalid(&cfg, "otlp.grpc_listen: '[::1]:99999': port must be a number in 0..65535");
  keel_config_init(&cfg);
  memset(cfg.otlp_grpc_listen, 'a', sizeof cfg.otlp_grpc_listen);
  expect_invalid(&cfg, "otlp.grpc_listen: not NUL-terminated");
  keel_config_init(&cfg);
  memset(cfg.data_dir, 'a', sizeof cfg.data_dir);
  expect_invalid(&cfg, "data_dir: not NUL-terminated");
}

/* ---- error buffers ------------------------------------------------------- */

static void test_err_buffer(void **state) {
  (void)state;
  keel_config cfg;
  keel_config_init(&cfg);
  char err[8];
  memset(err, 'x', sizeof err);
  assert_int_equal(keel_config_set(&cfg, "nosuchkey", "1", err, sizeof err), -EINVAL);
  assert_string_equal(err, "unknown");
  err[0] = 'x';
  assert_int_equal(keel_config_set(&cfg, "nosuchkey", "1", err, 1), -EINVAL);
  assert_int_equal(err[0], '\0');
  /* NULL / 0 buffers are allowed everywhere */
  assert_int_equal(keel_config_set(&cfg, "nosuchkey", "1", NULL, 0), -EINVAL);
  assert_int_equal(keel_config_load_file(&cfg, "/nonexistent", NULL, 0), -ENOENT);
  char e2[32];
  assert_int_equal(load_yaml(&cfg, "workers: 9999\n", NULL, 0, NULL, 0), -EINVAL);
  assert_int_equal(load_yaml(&cfg, "workers: 9999\n", e2, sizeof e2, NULL, 0), -EINVAL);
  assert_int_equal(strlen(e2), sizeof e2 - 1);
  setenv("KEEL_WORKERS", "x", 1);
  assert_int_equal(keel_config_apply_env(&cfg, NULL, 0), -EINVAL);
  clear_env();
  cfg.workers = 9999;
  assert_int_equal(keel_config_validate(&cfg, NULL, 0), -EINVAL);
}

/* ---- the shipped example ------------------------------------------------- */

static void test_example_file(void **state) {
  (void)state;
  /* ctest runs unit tests from the source root; tolerate running from tests/unit or build */
  static const char *const paths[] = {"keel.example.yaml", "../../keel.example.yaml",
                                      "../keel.example.yaml"};
  const char *path = NULL;
  for (size_t i = 0; i < sizeof paths / sizeof paths[0] && !path; i++)
    if (access(paths[i], R_OK) == 0) path = paths[i];
  if (!path) skip();
  keel_config cfg, want;
  keel_config_init(&want);
  /* start from other values so every key in the example must be present to match */
  keel_config_init(&cfg);
  for (size_t i = 0; i < NCASES; i++)
    if (strcmp(cases[i].key, "log.access") != 0) apply_case(&cfg, &cases[i]);
  char err[512] = "";
  int rc = keel_config_load_file(&cfg, path, err, sizeof err);
  if (rc) print_error("%s\n", err);
  assert_int_equal(rc, 0);
  assert_cfg_equal(&cfg, &want);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_defaults, test_setup),
      cmocka_unit_test_setup(test_set_every_key, test_setup),
      cmocka_unit_test_setup(test_env_every_key, test_setup),
      cmocka_unit_test_setup(test_env_all_at_once, test_setup),
      cmocka_unit_test_setup(test_yaml_every_key, test_setup),
      cmocka_unit_test_setup(test_yaml_forms, test_setup),
      cmocka_unit_test_setup(test_yaml_empty, test_setup),
      cmocka_unit_test_setup(test_precedence, test_setup),
      cmocka_unit_test_setup(test_yaml_errors, test_setup),
      cmocka_unit_test_setup(test_yaml_unchanged_on_error, test_setup),
      cmocka_unit_test_setup(test_yaml_limits, test_setup),
      cmocka_unit_test_setup(test_file_errors, test_setup),
      cmocka_unit_test_setup(test_set_errors, test_setup),
      cmocka_unit_test_setup(test_env_errors, test_setup),
      cmocka_unit_test_setup(test_env_ignores_others, test_setup),
      cmocka_unit_test_setup(test_env_otel, test_setup),
      cmocka_unit_test_setup(test_durations, test_setup),
      cmocka_unit_test_setup(test_sizes, test_setup),
      cmocka_unit_test_setup(test_uints, test_setup),
      cmocka_unit_test_setup(test_listen, test_setup),
      cmocka_unit_test_setup(test_level_and_access, test_setup),
      cmocka_unit_test_setup(test_validate, test_setup),
      cmocka_unit_test_setup(test_choices, test_setup),
      cmocka_unit_test_setup(test_empty_values, test_setup),
      cmocka_unit_test_setup(test_pipeline_numbers, test_setup),
      cmocka_unit_test_setup(test_otlp_listen, test_setup),
      cmocka_unit_test_setup(test_err_buffer, test_setup),
      cmocka_unit_test_setup(test_example_file, test_setup),
  };
  return cmocka_run_group_tests(tests, group_setup, NULL);
}
