/* main.c - the keel binary: parse arguments, load config, add the service routes, serve. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "keel/json.h"
#include "keel/keel.h"

#ifndef KEEL_GIT
#define KEEL_GIT "unknown"
#endif

#ifdef __OPTIMIZE__
static const char build_kind[] = "optimized";
#else
static const char build_kind[] = "debug";
#endif

static const char usage[] =
    "usage: keel serve [-c FILE] [--listen HOST:PORT] [--workers N]\n"
    "       keel check-config -c FILE\n"
    "       keel version\n"
    "Environment KEEL_* overrides the file; flags override both (docs/configuration.md).\n";

/* GET / : the article's hello service. */
static void hello(keel_req *req, void *ud) {
  (void)ud;
  static const char msg[] = "Hello, cloud native!";
  keel_respond(req, 200, "text/plain; charset=utf-8", msg, sizeof(msg) - 1);
}

/* Is the media type application/json (parameters such as charset allowed)? */
static int is_json(keel_str ct) {
  static const char want[] = "application/json";
  size_t n = sizeof(want) - 1;
  if (!ct.ptr || ct.len < n || strncasecmp(ct.ptr, want, n) != 0) return 0;
  return ct.len == n || ct.ptr[n] == ';' || ct.ptr[n] == ' ' || ct.ptr[n] == '\t';
}

/* POST /echo : parse the JSON body fully, answer it re-serialised. */
static void echo(keel_req *req, void *ud) {
  (void)ud;
  if (!is_json(keel_req_header(req, "content-type"))) {
    keel_respond_error(req, 415, "Content-Type must be application/json");
    return;
  }
  keel_str body = keel_req_body(req);
  size_t cap = KEEL_JSON_NODES_FOR(body.len);
  keel_json_node *nodes = keel_req_alloc(req, cap * sizeof(*nodes));
  if (!nodes) {
    keel_respond_error(req, 503, "out of memory");
    return;
  }
  keel_json_error err = {0, ""};
  long n = keel_json_parse(body.ptr, body.len, nodes, cap, 128, &err);
  if (n < 0) {
    char msg[160], quoted[140];
    size_t q = keel_json_quote(err.msg, strlen(err.msg), quoted, sizeof(quoted) - 1);
    quoted[q < sizeof(quoted) ? q : 0] = '\0';
    int len = snprintf(msg, sizeof(msg), "{\"error\":%s,\"offset\":%zu}", quoted, err.offset);
    keel_respond(req, 400, "application/json", msg, (size_t)len);
    return;
  }
  char *out = keel_respond_begin(req, body.len + 1);
  if (!out) {
    keel_respond_error(req, 503, "response too large for the output buffer");
    return;
  }
  size_t len = keel_json_write(body.ptr, nodes, (size_t)n, out, body.len + 1);
  keel_respond_end(req, 200, "application/json", len);
}

static int load_config(keel_config *cfg, const char *file, const char *listen,
                       const char *workers) {
  char err[512];
  keel_config_init(cfg);
  if ((file && keel_config_load_file(cfg, file, err, sizeof(err))) ||
      keel_config_apply_env(cfg, err, sizeof(err)) ||
      (listen && keel_config_set(cfg, "listen", listen, err, sizeof(err))) ||
      (workers && keel_config_set(cfg, "workers", workers, err, sizeof(err))) ||
      keel_config_validate(cfg, err, sizeof(err))) {
    fprintf(stderr, "keel: %s\n", err);
    return -1;
  }
  return 0;
}

int main(int argc, char **argv) {
  const char *cmd = argc > 1 ? argv[1] : "serve";
  const char *file = NULL, *listen = NULL, *workers = NULL;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    const char **dst = !strcmp(a, "-c") || !strcmp(a, "--config") ? &file
                       : !strcmp(a, "--listen")                   ? &listen
                       : !strcmp(a, "--workers")                  ? &workers
                                                                  : NULL;
    if (!dst || i + 1 >= argc) {
      fprintf(stderr, "keel: unknown or incomplete argument '%s'\n%s", a, usage);
      return 2;
    }
    *dst = argv[++i];
  }
  if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
    printf("keel %s (git %s, %s, %s build)\n", KEEL_VERSION, KEEL_GIT, __VERSION__, build_kind);
    return 0;
  }
  if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
    fputs(usage, stdout);
    return 0;
  }
  keel_config cfg;
  if (!strcmp(cmd, "check-config")) {
    if (!file) {
      fprintf(stderr, "keel: check-config needs -c FILE\n");
      return 2;
    }
    if (load_config(&cfg, file, listen, workers)) return 1;
    static const char *const handlers[] = {"hello", "echo", "otlp_logs", "otlp_traces",
                                           "otlp_metrics", NULL};
    char err[512];
    int routes = keel_gateway_check(file, handlers, err, sizeof(err));
    if (routes < 0) {
      fprintf(stderr, "keel: %s\n", err);
      return 1;
    }
    printf("%s: ok (%d gateway route%s)\n", file, routes, routes == 1 ? "" : "s");
    return 0;
  }
  if (strcmp(cmd, "serve") != 0) {
    fprintf(stderr, "keel: unknown command '%s'\n%s", cmd, usage);
    return 2;
  }
  if (load_config(&cfg, file, listen, workers)) return 1;
  if (cfg.pipeline_enabled && cfg.kafka_brokers[0]) keel_malloc_tune_reexec(argv);
  char err[512];
  keel_server *srv = keel_server_new(&cfg, err, sizeof(err));
  if (!srv) {
    fprintf(stderr, "keel: %s\n", err);
    return 1;
  }
  keel_handler_register(srv, "hello", hello, NULL);
  keel_handler_register(srv, "echo", echo, NULL);
  int routes = file ? keel_server_gateway(srv, file, err, sizeof(err)) : 0;
  if (routes < 0) {
    fprintf(stderr, "keel: %s\n", err);
    keel_server_free(srv);
    return 1;
  }
  if (routes == 0) { /* no gateway routes: the article's service */
    keel_route(srv, "GET", "/", hello, NULL);
    keel_route(srv, "POST", "/echo", echo, NULL);
  }
  int rc = keel_server_run(srv);
  keel_server_free(srv);
  return rc == 0 ? 0 : 1;
}
