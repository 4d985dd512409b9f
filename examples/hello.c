/* hello.c - the article's "Hello, Cloud-Native" service on libkeel: one route, JSON access log,
 * probes, Prometheus metrics with one of its own, OpenTelemetry tracing with a child span,
 * graceful shutdown on SIGTERM.
 * Build: make; run: build/examples/hello */
#include <stdio.h>
#include <keel/keel.h>
#include <keel/metrics.h>
#include <keel/trace.h>

static void hello(keel_req *req, void *greetings) {
  keel_counter_add(greetings, 1); /* lock-free: this worker's own cell */
  /* With KEEL_TRACING_ENDPOINT set, this shows as a child of the request's span; otherwise
   * (or when the request is not sampled) these calls cost next to nothing. */
  keel_span *span = keel_span_start(req, "compose greeting", KEEL_SPAN_INTERNAL);
  keel_span_attr(span, "greeting.language", "en");
  keel_span_end(span);
  keel_req_attr(req, "greeting.kind", "hello");
  keel_respond(req, 200, "text/plain", "Hello, cloud native!", 20);
}

int main(void) {
  keel_config cfg;
  char err[256];
  keel_config_init(&cfg); /* 127.0.0.1:8080, then KEEL_* from the environment */
  cfg.pipeline_enabled = 0; /* a service, not a telemetry pipeline (KEEL_PIPELINE_ENABLED=on) */
  if (keel_config_apply_env(&cfg, err, sizeof err)) return fprintf(stderr, "%s\n", err), 1;
  keel_server *srv = keel_server_new(&cfg, err, sizeof err);
  if (!srv) return fprintf(stderr, "%s\n", err), 1;
  keel_metric *greetings; /* on GET /metrics beside keel's own series */
  if (keel_metric_counter(srv, "hello_greetings_total", "Greetings sent.", NULL, &greetings) ||
      keel_route(srv, "GET", "/", hello, greetings))
    return fprintf(stderr, "cannot set up the service\n"), 1;
  int rc = keel_server_run(srv); /* serves until SIGTERM/SIGINT, then drains */
  keel_server_free(srv);
  return rc ? 1 : 0;
}
