/* test_tls.c - the TLS client API (kl_tls_*) against keel's own TLS listener, and server reload. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "http/server_internal.h"
#include "http/tls.h"

/* Certificates are made here with the openssl command line; no key is committed. */
static char dir[64];
static keel_server *srv;
static pthread_t runner;
static int port;

static const char *file(const char *name) {
  static char buf[8][256];
  static int n;
  char *p = buf[n++ % 8];
  snprintf(p, 256, "%s/%s", dir, name);
  return p;
}

__attribute__((format(printf, 1, 2))) static void sh(const char *fmt, ...) {
  char cmd[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  if (system(cmd) != 0) fail_msg("failed: %s", cmd);
}

/* NAME.key + NAME.pem for CN/SAN, signed by `ca` (self-signed when NULL), valid `days`. */
static void make_cert(const char *name, const char *ca, const char *san, int days) {
  const char *ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
  if (!ca) {
    sh("cd %s && openssl req -x509 %s -keyout %s.key -out %s.pem -days %d -subj /CN=%s "
       ">/dev/null 2>&1",
       dir, ec, name, name, days, name);
    return;
  }
  sh("cd %s && printf 'subjectAltName=%s\\n' > %s.ext && openssl req %s -keyout %s.key -out "
     "%s.csr -subj /CN=%s >/dev/null 2>&1 && openssl x509 -req -in %s.csr -CA %s.pem -CAkey "
     "%s.key -CAcreateserial -days %d -extfile %s.ext -out %s.pem >/dev/null 2>&1",
     dir, san, name, ec, name, name, name, name, ca, ca, days, name, name);
}

static void hello(keel_req *req, void *ud) {
  (void)ud;
  keel_respond(req, 200, "text/plain", "hello", 5);
}

/* Answers the body's length: proves a large request arrived whole. */
static void length(keel_req *req, void *ud) {
  (void)ud;
  char b[32];
  int n = snprintf(b, sizeof b, "%zu", keel_req_body(req).len);
  keel_respond(req, 200, "text/plain", b, (size_t)n);
}

static void *run(void *arg) {
  (void)arg;
  keel_server_run(srv);
  return NULL;
}

static kl_tls_server_config server_files(const char *cert, const char *key) {
  return (kl_tls_server_config){cert, key, NULL, KL_TLS_AUTH_NONE};
}

static int group_setup(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "/tmp/keel-tls-unit-XXXXXX");
  if (!mkdtemp(dir)) return -1;
  const char *local = "DNS:localhost,IP:127.0.0.1";
  make_cert("root", NULL, NULL, 2);
  make_cert("server", "root", local, 2);
  make_cert("expired", "root", local, -1);
  make_cert("other", "root", "DNS:other.example", 2);
  make_cert("evilca", NULL, NULL, 2);
  keel_config cfg;
  keel_config_init(&cfg);
  char err[512];
  if (keel_config_set(&cfg, "listen", "127.0.0.1:0", err, sizeof err) ||
      keel_config_set(&cfg, "workers", "1", err, sizeof err) ||
      keel_config_set(&cfg, "pipeline.enabled", "off", err, sizeof err) ||
      keel_config_set(&cfg, "log.level", "error", err, sizeof err) ||
      keel_config_set(&cfg, "limits.body", "4MiB", err, sizeof err) ||
      keel_config_set(&cfg, "tls.cert", file("server.pem"), err, sizeof err) ||
      keel_config_set(&cfg, "tls.key", file("server.key"), err, sizeof err)) {
    fprintf(stderr, "%s\n", err);
    return -1;
  }
  srv = keel_server_new(&cfg, err, sizeof err);
  if (!srv) {
    fprintf(stderr, "%s\n", err);
    return -1;
  }
  keel_route(srv, "GET", "/", hello, NULL);
  keel_route(srv, "POST", "/len", length, NULL);
  pthread_create(&runner, NULL, run, NULL);
  for (int i = 0; i < 500 && !(port = keel_server_port(srv)); i++) usleep(10000);
  return port ? 0 : -1;
}

static int group_teardown(void **state) {
  (void)state;
  keel_server_stop(srv);
  pthread_join(runner, NULL);
  keel_server_free(srv);
  sh("rm -rf %s", dir);
  return 0;
}

/* A non-blocking TCP connection to keel. */
static int dial(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int rc = connect(fd, (struct sockaddr *)&a, sizeof a);
  assert_true(rc == 0 || errno == EINPROGRESS);
  struct pollfd p = {fd, POLLOUT, 0};
  assert_int_equal(poll(&p, 1, 5000), 1);
  return fd;
}

static void wait_for(int fd, uint32_t want) {
  struct pollfd p = {fd, (short)(want == EPOLLOUT ? POLLOUT : POLLIN), 0};
  assert_int_equal(poll(&p, 1, 5000), 1);
}

/* Runs the handshake to its end: 1 or -1. */
static int handshake(kl_tls *t, int fd) {
  for (;;) {
    uint32_t want = 0;
    int rc = kl_tls_handshake(t, &want);
    if (rc != 0) return rc;
    assert_true(want == EPOLLIN || want == EPOLLOUT);
    wait_for(fd, want);
  }
}

static void write_all(kl_tls *t, int fd, const char *p, size_t n) {
  while (n) {
    uint32_t want = 0;
    ssize_t w = kl_tls_write(t, p, n, &want);
    if (w == -EAGAIN) {
      wait_for(fd, want);
      continue;
    }
    assert_true(w > 0);
    p += w;
    n -= (size_t)w;
  }
}

/* Reads until `needle` shows up in what arrived; returns the bytes read. */
static size_t read_until(kl_tls *t, int fd, char *buf, size_t cap, const char *needle) {
  size_t got = 0;
  buf[0] = '\0';
  while (!strstr(buf, needle)) {
    uint32_t want = 0;
    ssize_t r = kl_tls_read(t, buf + got, cap - 1 - got, &want);
    if (r == -EAGAIN) {
      wait_for(fd, want);
      continue;
    }
    if (r <= 0) fail_msg("read: %zd (%s), so far: %.200s", r, kl_tls_error(t), buf);
    got += (size_t)r;
    buf[got] = '\0';
  }
  return got;
}

/* Connects with `ctx` to `host`: the handshake's result, and its error text in err. */
static int try_host(kl_tls_client_ctx *ctx, const char *host, char *err, size_t errlen) {
  int fd = dial();
  char e[256];
  kl_tls *t = kl_tls_client_new(ctx, fd, host, e, sizeof e);
  assert_non_null(t);
  int rc = handshake(t, fd);
  snprintf(err, errlen, "%s", kl_tls_error(t));
  kl_tls_free(t);
  close(fd);
  return rc;
}

static kl_tls_client_ctx *ctx_for(const char *ca, int verify) {
  char err[256];
  kl_tls_client_ctx *ctx = kl_tls_client_ctx_new(ca ? file(ca) : NULL, verify, err, sizeof err);
  if (!ctx) fail_msg("%s", err);
  return ctx;
}

static void test_client_requests(void **state) {
  (void)state;
  kl_tls_client_ctx *ctx = ctx_for("root.pem", 1);
  int fd = dial();
  char err[256];
  kl_tls *t = kl_tls_client_new(ctx, fd, "localhost", err, sizeof err);
  assert_non_null(t);
  kl_tls_client_ctx_free(ctx); /* the connection keeps the context alive */
  assert_int_equal(handshake(t, fd), 1);
  assert_string_equal(kl_tls_alpn(t), "http/1.1");
  static char buf[1 << 16];
  const char get[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
  write_all(t, fd, get, sizeof get - 1);
  read_until(t, fd, buf, sizeof buf, "hello");
  assert_non_null(strstr(buf, "HTTP/1.1 200 OK"));
  /* a body of many records, written with partial writes */
  size_t n = 1 << 20;
  char *body = malloc(n);
  assert_non_null(body);
  memset(body, 'b', n);
  char head[128];
  int hl = snprintf(head, sizeof head, "POST /len HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n", n);
  write_all(t, fd, head, (size_t)hl);
  write_all(t, fd, body, n);
  free(body);
  read_until(t, fd, buf, sizeof buf, "\r\n\r\n1048576");
  kl_tls_free(t);
  close(fd);
}

static void test_client_checks(void **state) {
  (void)state;
  char err[256];
  kl_tls_client_ctx *ctx = ctx_for("root.pem", 1);
  assert_int_equal(try_host(ctx, "127.0.0.1", err, sizeof err), 1); /* IP SAN */
  assert_int_equal(try_host(ctx, "other.example", err, sizeof err), -1);
  assert_string_equal(err, "hostname mismatch");
  kl_tls_client_ctx *evil = ctx_for("evilca.pem", 1);
  assert_int_equal(try_host(evil, "localhost", err, sizeof err), -1);
  assert_string_equal(err, "unable to get local issuer certificate");
  kl_tls_client_ctx_free(evil);
  kl_tls_client_ctx *sys = ctx_for(NULL, 1); /* system CAs do not know our root */
  assert_int_equal(try_host(sys, "localhost", err, sizeof err), -1);
  kl_tls_client_ctx_free(sys);
  kl_tls_client_ctx *off = ctx_for(NULL, 0);
  assert_int_equal(try_host(off, "other.example", err, sizeof err), 1);
  kl_tls_client_ctx_free(off);

  /* the server's certificate swapped for an expired one, then back */
  kl_tls_server_config expired = server_files(file("expired.pem"), file("expired.key"));
  assert_int_equal(kl_tls_reload(srv->tls, &expired, err, sizeof err), 0);
  assert_int_equal(try_host(ctx, "localhost", err, sizeof err), -1);
  assert_string_equal(err, "certificate has expired");
  kl_tls_server_config good = server_files(file("server.pem"), file("server.key"));
  assert_int_equal(kl_tls_reload(srv->tls, &good, err, sizeof err), 0);
  assert_int_equal(try_host(ctx, "localhost", err, sizeof err), 1);
  kl_tls_client_ctx_free(ctx);
}

static void test_client_errors(void **state) {
  (void)state;
  char err[256];
  assert_null(kl_tls_client_ctx_new(file("missing.pem"), 1, err, sizeof err));
  assert_non_null(strstr(err, "No such file or directory"));
  /* the server closes: the handshake reports it */
  kl_tls_client_ctx *ctx = ctx_for("root.pem", 1);
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
  kl_tls *t = kl_tls_client_new(ctx, sv[0], "localhost", err, sizeof err);
  assert_non_null(t);
  uint32_t want = 0;
  assert_int_equal(kl_tls_handshake(t, &want), 0);
  assert_int_equal(want, EPOLLIN);
  close(sv[1]);
  assert_int_equal(kl_tls_handshake(t, &want), -1);
  assert_true(kl_tls_error(t)[0] != '\0');
  kl_tls_free(t);
  close(sv[0]);
  kl_tls_client_ctx_free(ctx);
}

static void test_server_reload_errors(void **state) {
  (void)state;
  char err[512];
  kl_tls_server_config mismatch = server_files(file("server.pem"), file("other.key"));
  assert_int_equal(kl_tls_reload(srv->tls, &mismatch, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "does not belong to the certificate in tls.cert"));
  assert_int_equal(kl_tls_server_check(&mismatch, err, sizeof err), -EINVAL);
  kl_tls_server_config missing = server_files(file("nope.pem"), file("server.key"));
  assert_int_equal(kl_tls_reload(srv->tls, &missing, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "tls.cert"));
  assert_non_null(strstr(err, "No such file or directory"));
  kl_tls_server_config notcert = server_files(file("server.key"), file("server.key"));
  assert_int_equal(kl_tls_server_check(&notcert, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "not a PEM certificate chain"));
  kl_tls_server_config badca = {file("server.pem"), file("server.key"), file("server.key"),
                                KL_TLS_AUTH_REQUIRE};
  assert_int_equal(kl_tls_server_check(&badca, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "tls.client_ca"));
  /* the failed reloads kept the good context; NULL re-reads the same files */
  assert_int_equal(kl_tls_reload(srv->tls, NULL, err, sizeof err), 0);
  kl_tls_client_ctx *ctx = ctx_for("root.pem", 1);
  assert_int_equal(kl_tls_server_check(&(kl_tls_server_config){file("server.pem"),
                                                                file("server.key"), NULL, 0},
                                       err, sizeof err),
                   0);
  char e2[256];
  assert_int_equal(try_host(ctx, "localhost", e2, sizeof e2), 1);
  kl_tls_client_ctx_free(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_client_requests),
      cmocka_unit_test(test_client_checks),
      cmocka_unit_test(test_client_errors),
      cmocka_unit_test(test_server_reload_errors),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
