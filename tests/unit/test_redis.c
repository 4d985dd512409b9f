/* test_redis.c - kl_redis and global rate limits against a real redis-server started by the test. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "gateway/ratelimit.h"
#include "gateway/redis.h"

static int port;
static pid_t redis_pid = -1;
static kl_loop loop;
static int have_redis;

/* ---- the server ---------------------------------------------------------------- */

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  close(fd);
  return ntohs(a.sin_port);
}

static int ping(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int ok = 0;
  if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 && write(fd, "PING\r\n", 6) == 6) {
    char buf[16] = "";
    ok = read(fd, buf, sizeof buf - 1) >= 5 && memcmp(buf, "+PONG", 5) == 0;
  }
  close(fd);
  return ok;
}

static void redis_start(void) {
  char p[16];
  snprintf(p, sizeof p, "%d", port);
  redis_pid = fork();
  assert_true(redis_pid >= 0);
  if (redis_pid == 0) {
    int null = open("/dev/null", O_WRONLY);
    if (null >= 0) dup2(null, 1);
    execlp("redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 500 && !ping(); i++) usleep(10000);
  assert_true(ping());
}

static void redis_stop(void) {
  if (redis_pid <= 0) return;
  kill(redis_pid, SIGCONT);
  kill(redis_pid, SIGKILL);
  waitpid(redis_pid, NULL, 0);
  redis_pid = -1;
}

static int setup(void **state) {
  (void)state;
  have_redis = system("command -v redis-server >/dev/null 2>&1") == 0;
  if (kl_loop_init(&loop, 64) != 0) return -1;
  if (!have_redis) return 0;
  port = free_port();
  redis_start();
  return 0;
}

static int teardown(void **state) {
  (void)state;
  redis_stop();
  kl_loop_free(&loop);
  return 0;
}

/* ---- driving the loop ------------------------------------------------------------ */

static int waiting; /* replies still expected */

static void on_guard(kl_timer *t) {
  (void)t;
  loop.stop = 1;
}

/* Runs the loop until `waiting` drops to 0 (callbacks stop it) or ms pass. */
static void run_for(uint64_t ms) {
  kl_timer guard = {.cb = on_guard};
  kl_loop_update_clock(&loop);
  kl_timer_set(&loop.timers, &guard, loop.now + ms);
  loop.stop = waiting == 0 && ms == 0;
  if (!loop.stop) kl_loop_run(&loop);
  kl_timer_cancel(&loop.timers, &guard);
  loop.stop = 0;
}

static void config(kl_redis_config *c) {
  char addr[32], err[128];
  kl_redis_config_init(c);
  snprintf(addr, sizeof addr, "localhost:%d", port); /* resolved here, once */
  assert_int_equal(kl_redis_config_set_address(c, addr, err, sizeof err), 0);
  c->circuit_cooldown_ms = 300;
  c->backoff_min_ms = 10;
  c->backoff_max_ms = 100;
}

typedef struct {
  int n, allowed, fallback, global;
  kl_rl_decision last;
  uint64_t t0, worst_ms;
} tally;

static void on_decision(void *arg, const kl_rl_decision *d) {
  tally *t = arg;
  t->n++;
  t->allowed += d->allowed;
  t->fallback += d->source >= KL_RL_SRC_FALLBACK_OPEN;
  t->global += d->source == KL_RL_SRC_GLOBAL;
  t->last = *d;
  uint64_t took = kl_now_ms() - t->t0;
  if (took > t->worst_ms) t->worst_ms = took;
  if (--waiting == 0) loop.stop = 1;
}

/* One decision, waited for; returns its source. */
static int decide_one(kl_rl_worker *w, const kl_rl_limit *l, const char *key, tally *t) {
  kl_rl_decision d;
  t->t0 = kl_now_ms();
  waiting = 1;
  if (kl_rl_decide(w, l, key, strlen(key), &d, on_decision, t) == 1) {
    on_decision(t, &d);
    return d.source;
  }
  run_for(2000);
  assert_int_equal(waiting, 0);
  return t->last.source;
}

static void wait_connected(kl_redis *r) {
  for (int i = 0; i < 200 && !kl_redis_stats_of(r)->connected; i++) run_for(10);
  assert_int_equal(kl_redis_stats_of(r)->connected, 1);
}

static void reply_cb(void *arg, const kl_redis_reply *rep) {
  kl_redis_reply *out = arg;
  *out = *rep;
  out->raw = NULL;
  if (--waiting == 0) loop.stop = 1;
}

/* A worker's client and decision context on `c` (which must outlive them). */
static kl_rl_worker *worker_on(const kl_redis_config *c, kl_rl_table *t, kl_redis **r) {
  char err[128];
  *r = kl_redis_new(&loop, c, err, sizeof err);
  assert_non_null(*r);
  kl_rl_worker *w = kl_rl_worker_new(t, *r, c->max_in_flight, err, sizeof err);
  assert_non_null(w);
  return w;
}

static void global_limit(kl_rl_limit *l, const char *name, uint32_t count, uint32_t period_ms,
                         uint32_t burst, int on_error, uint32_t replicas) {
  char err[128];
  assert_int_equal(kl_rl_limit_init(l, name, 1, count, period_ms, burst, KL_RL_GLOBAL, on_error,
                                    replicas, err, sizeof err), 0);
}

static void worker_done(kl_redis *r, kl_rl_worker *w) {
  kl_redis_free(r); /* runs pending callbacks, which use w */
  kl_rl_worker_free(w);
}

/* ---- tests ----------------------------------------------------------------------- */

static void test_commands(void **state) {
  (void)state;
  if (!have_redis) skip();
  kl_redis_config c;
  char err[128];
  config(&c);
  kl_redis *r = kl_redis_new(&loop, &c, err, sizeof err);
  assert_non_null(r);
  const char *argv[3] = {"SET", "k", "v1"};
  size_t lens[3] = {3, 1, 2};
  kl_redis_reply rep;
  waiting = 1;
  assert_int_equal(kl_redis_command(r, 3, argv, lens, reply_cb, &rep), 0); /* while connecting */
  run_for(2000);
  assert_int_equal(rep.err, 0);
  assert_int_equal(rep.type, KL_REDIS_STATUS);
  const char *bad[1] = {"NOSUCHCOMMAND"};
  size_t badl[1] = {13};
  waiting = 1;
  assert_int_equal(kl_redis_command(r, 1, bad, badl, reply_cb, &rep), 0);
  run_for(2000);
  assert_int_equal(rep.err, -EPROTO);
  assert_int_equal(rep.type, KL_REDIS_ERROR);
  /* the in-flight cap: beyond it, an immediate error */
  kl_redis_config small = c;
  small.max_in_flight = 2;
  kl_redis *r2 = kl_redis_new(&loop, &small, err, sizeof err);
  wait_connected(r2);
  kl_redis_reply reps[2];
  const char *pingv[1] = {"PING"};
  size_t pingl[1] = {4};
  waiting = 2;
  assert_int_equal(kl_redis_command(r2, 1, pingv, pingl, reply_cb, &reps[0]), 0);
  assert_int_equal(kl_redis_command(r2, 1, pingv, pingl, reply_cb, &reps[1]), 0);
  assert_int_equal(kl_redis_command(r2, 1, pingv, pingl, reply_cb, &rep), -ENOBUFS);
  run_for(2000);
  assert_int_equal(reps[1].type, KL_REDIS_STATUS);
  assert_int_equal(kl_redis_stats_of(r2)->rejected_inflight, 1);
  kl_redis_free(r2);
  kl_redis_free(r);
}

static void test_password(void **state) {
  (void)state;
  if (!have_redis) skip();
  kl_redis_config c;
  char err[128];
  config(&c);
  kl_redis *admin = kl_redis_new(&loop, &c, err, sizeof err);
  const char *set[4] = {"CONFIG", "SET", "requirepass", "s3cret"};
  size_t setl[4] = {6, 3, 11, 6};
  kl_redis_reply rep;
  waiting = 1;
  assert_int_equal(kl_redis_command(admin, 4, set, setl, reply_cb, &rep), 0);
  run_for(2000);
  assert_int_equal(rep.err, 0);

  char path[] = "/tmp/keel-test-redis-pw-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, "s3cret\n", 7), 7);
  close(fd);
  kl_redis_config pc = c;
  assert_int_equal(kl_redis_config_read_password(&pc, path, err, sizeof err), 0);
  unlink(path);
  assert_string_equal(pc.password, "s3cret");
  kl_redis *r = kl_redis_new(&loop, &pc, err, sizeof err);
  kl_redis *nopw = kl_redis_new(&loop, &c, err, sizeof err);
  const char *get[2] = {"GET", "k"};
  size_t getl[2] = {3, 1};
  kl_redis_reply a, b;
  waiting = 2;
  assert_int_equal(kl_redis_command(r, 2, get, getl, reply_cb, &a), 0);
  assert_int_equal(kl_redis_command(nopw, 2, get, getl, reply_cb, &b), 0);
  run_for(2000);
  assert_int_equal(a.err, 0);
  assert_int_equal(b.err, -EPROTO); /* NOAUTH */
  /* back to no password, through the authenticated client */
  const char *unset[4] = {"CONFIG", "SET", "requirepass", ""};
  size_t unsetl[4] = {6, 3, 11, 0};
  waiting = 1;
  assert_int_equal(kl_redis_command(r, 4, unset, unsetl, reply_cb, &rep), 0);
  run_for(2000);
  assert_int_equal(rep.err, 0);
  kl_redis_free(nopw);
  kl_redis_free(r);
  kl_redis_free(admin);
}

static void test_global_exact(void **state) {
  (void)state;
  if (!have_redis) skip();
  kl_redis_config c;
  config(&c);
  kl_redis *r;
  kl_rl_worker *w = worker_on(&c, NULL, &r);
  kl_rl_limit l;
  global_limit(&l, "exact", 10, 60000, 20, KL_RL_FAIL_OPEN, 1);
  wait_connected(r);
  /* one at a time: exactly the burst, remaining counting down */
  tally t = {0};
  for (int i = 0; i < 30; i++) {
    assert_int_equal(decide_one(w, &l, "seq", &t), KL_RL_SRC_GLOBAL);
    if (i < 20) {
      assert_true(t.last.allowed);
      assert_int_equal(t.last.remaining, 19 - i);
    } else {
      assert_false(t.last.allowed);
      assert_int_equal(t.last.status, 429);
      assert_true(t.last.retry_after_ms > 5000 && t.last.retry_after_ms <= 6000); /* T = 6 s */
    }
  }
  assert_int_equal(t.allowed, 20);
  /* pipelined: 30 at once, still exactly 20 */
  tally p = {0};
  waiting = 30;
  for (int i = 0; i < 30; i++) {
    kl_rl_decision d;
    assert_int_equal(kl_rl_decide(w, &l, "burst", 5, &d, on_decision, &p), 0);
  }
  run_for(2000);
  assert_int_equal(p.n, 30);
  assert_int_equal(p.allowed, 20);
  assert_int_equal(p.global, 30);
  /* the key expires by itself when the bucket would be full again */
  const char *pttl[2] = {"PTTL", "keel:rl:exact:burst"};
  size_t pttll[2] = {4, strlen(pttl[1])};
  kl_redis_reply rep;
  waiting = 1;
  assert_int_equal(kl_redis_command(r, 2, pttl, pttll, reply_cb, &rep), 0);
  run_for(2000);
  assert_int_equal(rep.type, KL_REDIS_INTEGER);
  assert_true(rep.integer > 110000 && rep.integer <= 120000); /* 20 tokens x 6 s */
  /* SCRIPT FLUSH: NOSCRIPT is answered by EVAL */
  const char *flush[2] = {"SCRIPT", "FLUSH"};
  size_t flushl[2] = {6, 5};
  waiting = 1;
  assert_int_equal(kl_redis_command(r, 2, flush, flushl, reply_cb, &rep), 0);
  run_for(2000);
  tally f = {0};
  assert_int_equal(decide_one(w, &l, "after-flush", &f), KL_RL_SRC_GLOBAL);
  assert_true(f.last.allowed);
  assert_int_equal(kl_redis_stats_of(r)->noscript, 1);
  worker_done(r, w);
}

/* Two clients (as two keel processes) keep 8 decisions each in flight on one limit. */
typedef struct {
  kl_rl_worker *w;
  const kl_rl_limit *l;
  int allowed, n;
  uint64_t until;
} driver;

static void drive(driver *dv);

static void on_driven(void *arg, const kl_rl_decision *d) {
  driver *dv = arg;
  dv->n++;
  dv->allowed += d->allowed;
  assert_int_equal(d->source, KL_RL_SRC_GLOBAL);
  waiting--;
  drive(dv);
  if (waiting == 0) loop.stop = 1;
}

static void drive(driver *dv) {
  if (kl_now_ms() >= dv->until) return;
  kl_rl_decision d;
  waiting++;
  assert_int_equal(kl_rl_decide(dv->w, dv->l, "shared", 6, &d, on_driven, dv), 0);
}

static void test_two_clients(void **state) {
  (void)state;
  if (!have_redis) skip();
  kl_redis_config c;
  config(&c);
  c.timeout_ms = 500; /* this test measures the limit, not latency */
  kl_redis *r1, *r2;
  kl_rl_worker *w1 = worker_on(&c, NULL, &r1), *w2 = worker_on(&c, NULL, &r2);
  kl_rl_limit l;
  global_limit(&l, "shared", 200, 1000, 20, KL_RL_FAIL_OPEN, 1);
  wait_connected(r1);
  wait_connected(r2);
  uint64_t t0 = kl_now_ms();
  driver a = {w1, &l, 0, 0, t0 + 1500}, b = {w2, &l, 0, 0, t0 + 1500};
  waiting = 0;
  for (int i = 0; i < 8; i++) {
    drive(&a);
    drive(&b);
  }
  run_for(5000);
  assert_int_equal(waiting, 0);
  double elapsed = (double)(kl_now_ms() - t0) / 1000.0;
  double expected = 20 + 200 * elapsed;
  int allowed = a.allowed + b.allowed;
  printf("two clients: %d + %d allowed of %d + %d in %.3f s (expected %.0f)\n", a.allowed,
         b.allowed, a.n, b.n, elapsed, expected);
  assert_true(a.n + b.n > 2 * allowed); /* the limit was actually pressed */
  assert_true(a.allowed > 0 && b.allowed > 0);
  assert_true(allowed <= expected * 1.05 && allowed >= expected * 0.95);
  worker_done(r1, w1);
  worker_done(r2, w2);
}

static void test_redis_down_and_back(void **state) {
  (void)state;
  if (!have_redis) skip();
  kl_redis_config c;
  char err[128];
  config(&c);
  c.circuit_failures = 3;
  kl_rl_table *t = kl_rl_table_new(1024, err, sizeof err);
  kl_redis *r;
  kl_rl_worker *w = worker_on(&c, t, &r);
  kl_rl_limit l;
  global_limit(&l, "down", 1, 60000, 6, KL_RL_FAIL_LOCAL, 2);
  wait_connected(r);
  tally x = {0};
  assert_int_equal(decide_one(w, &l, "k1", &x), KL_RL_SRC_GLOBAL);

  redis_stop();
  const kl_redis_stats *st = kl_redis_stats_of(r);
  /* every call gets the fallback promptly: the local share (burst 6 / 2 replicas = 3) */
  tally f = {0};
  for (int i = 0; i < 10; i++) {
    assert_true(decide_one(w, &l, "k2", &f) >= KL_RL_SRC_FALLBACK_OPEN);
    assert_int_equal(f.last.source, KL_RL_SRC_FALLBACK_LOCAL);
  }
  assert_true(f.worst_ms < 200);
  assert_int_equal(f.allowed, 3);
  assert_int_equal(st->circuit, KL_REDIS_OPEN);
  assert_true(st->circuit_opens >= 1);
  /* open: calls fail fast without touching the network */
  uint64_t calls = st->calls, rejected = st->rejected_open;
  for (int i = 0; i < 100; i++) {
    kl_rl_decision d;
    assert_int_equal(kl_rl_decide(w, &l, "k3", 2, &d, on_decision, &f), 1);
    assert_int_equal(d.source, KL_RL_SRC_FALLBACK_LOCAL);
  }
  assert_int_equal(st->calls, calls);
  assert_int_equal(st->rejected_open, rejected + 100);

  redis_start(); /* same port, empty: no scripts, no buckets */
  tally g = {0};
  for (int i = 0; i < 300 && decide_one(w, &l, "probe", &g) != KL_RL_SRC_GLOBAL; i++) run_for(10);
  assert_int_equal(g.last.source, KL_RL_SRC_GLOBAL);
  assert_int_equal(st->circuit, KL_REDIS_CLOSED);
  assert_int_equal(st->connected, 1);
  /* the global limit applies again: exactly the burst */
  tally e = {0};
  for (int i = 0; i < 8; i++) assert_int_equal(decide_one(w, &l, "again", &e), KL_RL_SRC_GLOBAL);
  assert_int_equal(e.allowed, 6);
  const kl_rl_stats *rs = kl_rl_worker_stats(w);
  assert_true(rs->fallback_local >= 110);
  assert_int_equal(rs->fallback_local, rs->redis_errors);
  worker_done(r, w);
  kl_rl_table_free(t);
}

static void test_slow_redis_times_out(void **state) {
  (void)state;
  if (!have_redis) skip();
  kl_redis_config c;
  config(&c);
  c.timeout_ms = 20;
  kl_redis *r;
  kl_rl_worker *w = worker_on(&c, NULL, &r);
  kl_rl_limit l;
  global_limit(&l, "slow", 100, 1000, 100, KL_RL_FAIL_CLOSED, 1);
  wait_connected(r);
  tally ok = {0};
  assert_int_equal(decide_one(w, &l, "k", &ok), KL_RL_SRC_GLOBAL);
  kill(redis_pid, SIGSTOP);
  tally s = {0};
  s.t0 = kl_now_ms();
  waiting = 4;
  for (int i = 0; i < 4; i++) {
    kl_rl_decision d;
    assert_int_equal(kl_rl_decide(w, &l, "k", 1, &d, on_decision, &s), 0);
  }
  run_for(2000);
  assert_int_equal(s.n, 4);
  assert_int_equal(s.fallback, 4);
  assert_int_equal(s.last.status, 503);
  assert_true(s.worst_ms >= 19 && s.worst_ms < 120);
  assert_int_equal(kl_redis_stats_of(r)->timeouts, 4);
  kill(redis_pid, SIGCONT);
  worker_done(r, w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_commands),
      cmocka_unit_test(test_password),
      cmocka_unit_test(test_global_exact),
      cmocka_unit_test(test_two_clients),
      cmocka_unit_test(test_redis_down_and_back),
      cmocka_unit_test(test_slow_redis_times_out),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
