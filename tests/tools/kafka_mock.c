/* kafka_mock.c - a Kafka-protocol test cluster (librdkafka's mock) driven by stdin commands. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

/*
 * Usage: kafka_mock [--brokers N] [--partitions P] [--topics a,b,c]
 * Prints "BOOTSTRAP host:port,..." first, then answers one line per command on stdin:
 *   down ID | up ID              broker ID (-1: all) refuses / accepts connections
 *   rtt ID MS                    delays broker ID's responses
 *   errors [TOPIC] API COUNT CODE   the next COUNT requests of API (produce, fetch,
 *                                metadata, initproducerid or a number) fail with CODE
 *                                (a name such as NOT_LEADER_FOR_PARTITION or a number);
 *                                TOPIC is accepted for readability, the mock's error
 *                                stack is per API, not per topic
 *   quit
 * with "OK" or "ERR reason". Exits on quit or end of input.
 */

#define KAFKA_MOCK_LINE 1024
#define KAFKA_MOCK_TOPICS 64

static int parse_long(const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

static int api_key(const char *s) {
  static const struct {
    const char *name;
    int key;
  } apis[] = {
      {"produce", 0}, {"fetch", 1}, {"listoffsets", 2}, {"metadata", 3}, {"initproducerid", 22}};
  for (size_t i = 0; i < sizeof apis / sizeof apis[0]; i++)
    if (!strcasecmp(s, apis[i].name)) return apis[i].key;
  long v;
  return parse_long(s, 0, 1000, &v) == 0 ? (int)v : -1;
}

/* A Kafka protocol error by its name (as librdkafka spells it, without the prefix) or number. */
static int error_code(const char *s, rd_kafka_resp_err_t *out) {
  long v;
  if (parse_long(s, -200, 1000, &v) == 0) {
    *out = (rd_kafka_resp_err_t)v;
    return 0;
  }
  const struct rd_kafka_err_desc *d;
  size_t n;
  rd_kafka_get_err_descs(&d, &n);
  for (size_t i = 0; i < n; i++)
    if (d[i].name && !strcasecmp(d[i].name, s)) {
      *out = d[i].code;
      return 0;
    }
  return -1;
}

static void usage(void) {
  fprintf(stderr, "usage: kafka_mock [--brokers N] [--partitions P] [--topics a,b,c]\n");
}

int main(int argc, char **argv) {
  long brokers = 1, partitions = 1;
  const char *topics = "";
  for (int i = 1; i < argc; i++) {
    if (i + 1 < argc && !strcmp(argv[i], "--brokers")) {
      if (parse_long(argv[++i], 1, 64, &brokers)) return usage(), 2;
    } else if (i + 1 < argc && !strcmp(argv[i], "--partitions")) {
      if (parse_long(argv[++i], 1, 10000, &partitions)) return usage(), 2;
    } else if (i + 1 < argc && !strcmp(argv[i], "--topics")) {
      topics = argv[++i];
    } else {
      return usage(), 2;
    }
  }

  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  /* The handle only owns the cluster: it never connects anywhere (and need not say so). */
  if (rd_kafka_conf_set(conf, "log_level", "4", errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
    fprintf(stderr, "kafka_mock: %s\n", errstr);
    return 1;
  }
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
  if (!rk) {
    fprintf(stderr, "kafka_mock: %s\n", errstr);
    return 1;
  }
  rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, (int)brokers);
  if (!mc) {
    fprintf(stderr, "kafka_mock: cannot create the mock cluster\n");
    rd_kafka_destroy(rk);
    return 1;
  }
  char list[KAFKA_MOCK_LINE];
  size_t tl = strlen(topics);
  if (tl >= sizeof list) {
    fprintf(stderr, "kafka_mock: --topics too long\n");
    return 2;
  }
  memcpy(list, topics, tl + 1);
  int ntopics = 0;
  for (char *t = list, *next; t && *t && ntopics < KAFKA_MOCK_TOPICS; t = next, ntopics++) {
    next = strchr(t, ',');
    if (next) *next++ = '\0';
    if (!*t) continue;
    rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(mc, t, (int)partitions, (int)brokers);
    if (e) {
      fprintf(stderr, "kafka_mock: topic %s: %s\n", t, rd_kafka_err2str(e));
      return 1;
    }
  }
  printf("BOOTSTRAP %s\n", rd_kafka_mock_cluster_bootstraps(mc));
  fflush(stdout);

  char line[KAFKA_MOCK_LINE];
  while (fgets(line, sizeof line, stdin)) {
    char *w[6];
    int n = 0;
    char *save = NULL;
    for (char *t = strtok_r(line, " \t\r\n", &save); t && n < 6;
         t = strtok_r(NULL, " \t\r\n", &save))
      w[n++] = t;
    if (n == 0) continue;
    long id, v;
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
    const char *bad = NULL;
    if (!strcmp(w[0], "quit")) {
      puts("OK");
      break;
    } else if ((!strcmp(w[0], "down") || !strcmp(w[0], "up")) && n == 2) {
      if (parse_long(w[1], -1, 64, &id))
        bad = "bad broker id";
      else
        e = w[0][0] == 'd' ? rd_kafka_mock_broker_set_down(mc, (int32_t)id)
                           : rd_kafka_mock_broker_set_up(mc, (int32_t)id);
    } else if (!strcmp(w[0], "rtt") && n == 3) {
      if (parse_long(w[1], -1, 64, &id) || parse_long(w[2], 0, 3600000, &v))
        bad = "usage: rtt ID MS";
      else
        e = rd_kafka_mock_broker_set_rtt(mc, (int32_t)id, (int)v);
    } else if (!strcmp(w[0], "errors") && (n == 4 || n == 5)) {
      int a = n - 3; /* the API name is third from the end; a topic may precede it */
      int key = api_key(w[a]);
      rd_kafka_resp_err_t code;
      if (key < 0)
        bad = "unknown API";
      else if (parse_long(w[a + 1], 1, 100000, &v))
        bad = "bad count";
      else if (error_code(w[a + 2], &code))
        bad = "unknown error code";
      else {
        rd_kafka_resp_err_t *errs = malloc((size_t)v * sizeof *errs);
        if (!errs) {
          bad = "out of memory";
        } else {
          for (long i = 0; i < v; i++)
            errs[i] = code;
          rd_kafka_mock_push_request_errors_array(mc, (int16_t)key, (size_t)v, errs);
          free(errs);
        }
      }
    } else {
      bad = "unknown command (down ID, up ID, rtt ID MS, errors [TOPIC] API COUNT CODE, quit)";
    }
    if (bad)
      printf("ERR %s\n", bad);
    else if (e)
      printf("ERR %s\n", rd_kafka_err2str(e));
    else
      puts("OK");
    fflush(stdout);
  }
  rd_kafka_mock_cluster_destroy(mc);
  rd_kafka_destroy(rk);
  return 0;
}
