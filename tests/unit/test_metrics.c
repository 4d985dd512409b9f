/* test_metrics.c - unit tests for the metric registry: validation, per-worker sums, exposition. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "obs/metrics.h"

static const double bounds[] = {0.1, 1};

static char *render(kl_metrics *m, int om) {
  kl_buf b;
  kl_buf_init(&b, 1 << 20);
  assert_int_equal(kl_metrics_render(m, &b, om), 0);
  assert_int_equal(kl_buf_append(&b, "", 1), 0);
  return b.data;
}

static void test_registration_rules(void **state) {
  (void)state;
  kl_metrics *m = kl_metrics_new();
  kl_series *s;
  const char *kind[] = {"kind", "a", NULL};
  const char *kind_b[] = {"kind", "b", NULL};
  const char *bad_label[] = {"1x", "a", NULL};
  const char *reserved[] = {"__x", "a", NULL};
  const char *le[] = {"le", "a", NULL};
  const char *twice[] = {"k", "a", "k", "b", NULL};
  assert_int_equal(kl_metrics_add(m, "jobs", "h", KL_M_COUNTER, NULL, NULL, 0, &s), -EINVAL);
  assert_int_equal(kl_metrics_add(m, "9jobs_total", "h", KL_M_COUNTER, NULL, NULL, 0, &s), -EINVAL);
  assert_int_equal(kl_metrics_add(m, "jobs-x_total", "h", KL_M_COUNTER, NULL, NULL, 0, &s), -EINVAL);
  assert_int_equal(kl_metrics_add(m, "jobs_total", "h", KL_M_COUNTER, bad_label, NULL, 0, &s), -EINVAL);
  assert_int_equal(kl_metrics_add(m, "jobs_total", "h", KL_M_COUNTER, reserved, NULL, 0, &s), -EINVAL);
  assert_int_equal(kl_metrics_add(m, "jobs_total", "h", KL_M_COUNTER, le, NULL, 0, &s), -EINVAL);
  assert_int_equal(kl_metrics_add(m, "jobs_total", "h", KL_M_COUNTER, twice, NULL, 0, &s), -EINVAL);
  assert_int_equal(kl_metrics_add(m, "jobs_total", "h", KL_M_COUNTER, kind, NULL, 0, &s), 0);
  assert_int_equal(kl_metrics_add(m, "jobs_total", "h", KL_M_COUNTER, kind, NULL, 0, &s), -EEXIST);
  assert_int_equal(kl_metrics_add(m, "jobs_total", "other help", KL_M_COUNTER, kind_b, NULL, 0, &s),
                   -EINVAL);
  assert_int_equal(kl_metrics_add(m, "jobs_total", "h", KL_M_GAUGE, kind_b, NULL, 0, &s), -EINVAL);
  assert_int_equal(kl_metrics_add(m, "jobs_total", "h", KL_M_COUNTER, kind_b, NULL, 0, &s), 0);
  const double down[] = {1, 0.5};
  assert_int_equal(kl_metrics_add(m, "t_seconds", "h", KL_M_HISTOGRAM, NULL, down, 2, &s), -EINVAL);
  assert_int_equal(kl_metrics_add(m, "t_seconds", "h", KL_M_HISTOGRAM, NULL, bounds, 0, &s), -EINVAL);
  assert_int_equal(kl_metrics_add(m, "t_seconds", "h", KL_M_HISTOGRAM, kind, bounds, 2, &s), 0);
  assert_int_equal(kl_metrics_add(m, "t_seconds", "h", KL_M_HISTOGRAM, kind_b, bounds, 1, &s),
                   -EINVAL); /* one family, one set of buckets */
  assert_int_equal(kl_metrics_freeze(m, 1), 0);
  assert_int_equal(kl_metrics_add(m, "late_total", "h", KL_M_COUNTER, NULL, NULL, 0, &s), -EBUSY);
  assert_int_equal(kl_metrics_freeze(m, 1), -EBUSY);
  kl_metrics_free(m);
}

static void test_workers_summed_and_rendered(void **state) {
  (void)state;
  kl_metrics *m = kl_metrics_new();
  kl_series *c, *g, *h, *k;
  const char *esc[] = {"path", "a\"b\\c\nd", NULL};
  const char *route[] = {"route", "/x", NULL};
  assert_int_equal(kl_metrics_add(m, "req_total", "Requests\nserved \\ here.", KL_M_COUNTER, esc,
                                  NULL, 0, &c), 0);
  assert_int_equal(kl_metrics_add(m, "open", "Open.", KL_M_GAUGE, NULL, NULL, 0, &g), 0);
  assert_int_equal(kl_metrics_add(m, "lat_seconds", "Latency.", KL_M_HISTOGRAM, NULL, bounds, 2,
                                  &h), 0);
  assert_int_equal(kl_metrics_add_keyed(m, "codes_total", "By code.", route, "code", &k), 0);
  assert_int_equal(kl_metrics_freeze(m, 2), 0);
  kl_mblock *w0 = kl_metrics_block(m, 0), *w1 = kl_metrics_block(m, 1);
  kl_mcell_add(w0->cells, kl_series_cell(c), 2);
  kl_mcell_add(w1->cells, kl_series_cell(c), 3);
  kl_mcell_add(w0->cells, kl_series_cell(g), 1);
  kl_mcell_add(w1->cells, kl_series_cell(g), (uint64_t)-3); /* gauges sum signed */
  kl_mcell_observe(w0->cells, kl_series_cell(h), bounds, 2, 0.05);
  kl_mcell_observe(w1->cells, kl_series_cell(h), bounds, 2, 0.5);
  kl_mcell_observe(w1->cells, kl_series_cell(h), bounds, 2, 7);
  kl_mkey_add(w1, kl_series_key(k) | 503);
  kl_mkey_add(w0, kl_series_key(k) | 200);
  kl_mkey_add(w1, kl_series_key(k) | 200);
  char *text = render(m, 0);
  const char *want =
      "# HELP req_total Requests\\nserved \\\\ here.\n"
      "# TYPE req_total counter\n"
      "req_total{path=\"a\\\"b\\\\c\\nd\"} 5\n"
      "# HELP open Open.\n# TYPE open gauge\nopen -2\n"
      "# HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\n"
      "lat_seconds_bucket{le=\"0.1\"} 1\nlat_seconds_bucket{le=\"1\"} 2\n"
      "lat_seconds_bucket{le=\"+Inf\"} 3\nlat_seconds_sum 7.55\nlat_seconds_count 3\n"
      "# HELP codes_total By code.\n# TYPE codes_total counter\n"
      "codes_total{route=\"/x\",code=\"200\"} 2\ncodes_total{route=\"/x\",code=\"503\"} 1\n"
      "# HELP keel_metrics_overflow_total Counter increments lost because a worker's series "
      "table was full.\n# TYPE keel_metrics_overflow_total counter\nkeel_metrics_overflow_total 0\n";
  assert_string_equal(text, want);
  free(text);
  text = render(m, 1);
  assert_non_null(strstr(text, "# TYPE req counter\nreq_total{"));
  assert_non_null(strstr(text, "# TYPE codes counter\n"));
  size_t n = strlen(text);
  assert_true(n > 6 && strcmp(text + n - 6, "# EOF\n") == 0);
  free(text);
  kl_metrics_free(m);
}

static void test_key_table_overflow_counted(void **state) {
  (void)state;
  kl_metrics *m = kl_metrics_new();
  kl_series *k[40];
  for (int i = 0; i < 40; i++) {
    char v[8];
    snprintf(v, sizeof v, "%d", i);
    const char *labels[] = {"i", v, NULL};
    assert_int_equal(kl_metrics_add_keyed(m, "x_total", "X.", labels, "code", &k[i]), 0);
  }
  assert_int_equal(kl_metrics_freeze(m, 1), 0);
  kl_mblock *b = kl_metrics_block(m, 0);
  uint64_t added = 0;
  for (int i = 0; i < 40; i++)
    for (uint32_t code = 100; code < 140; code++, added++) kl_mkey_add(b, kl_series_key(k[i]) | code);
  char *text = render(m, 0);
  /* Every increment is either in a series or in the overflow counter. */
  uint64_t seen = 0;
  for (const char *p = text; (p = strstr(p, "x_total{")); p++) seen += strtoull(strchr(p, ' '), NULL, 10);
  const char *o = strstr(text, "\nkeel_metrics_overflow_total ");
  assert_non_null(o);
  uint64_t overflow = strtoull(o + strlen("\nkeel_metrics_overflow_total "), NULL, 10);
  assert_true(overflow > 0); /* 1600 keys do not fit in 1024 entries */
  assert_int_equal(seen + overflow, added);
  free(text);
  kl_metrics_free(m);
}

static kl_series *g_counter, *g_hist;

static void *other_thread(void *arg) {
  (void)arg;
  for (int i = 0; i < 1000; i++) {
    keel_counter_add(g_counter, 1);
    keel_histogram_observe(g_hist, 0.5);
  }
  return NULL;
}

static void *observe_n_unbound(void *arg) {
  kl_histogram_observe_n(arg, 0.05, 3);
  return NULL;
}

static void test_app_api_from_any_thread(void **state) {
  (void)state;
  kl_metrics *m = kl_metrics_new();
  kl_series *gauge;
  assert_int_equal(kl_metrics_add(m, "app_total", "A.", KL_M_COUNTER, NULL, NULL, 0, &g_counter), 0);
  assert_int_equal(kl_metrics_add(m, "app_seconds", "A.", KL_M_HISTOGRAM, NULL, bounds, 2, &g_hist), 0);
  assert_int_equal(kl_metrics_add_value_gauge(m, "app_level", "A.", NULL, &gauge), 0);
  keel_counter_add(g_counter, 100); /* before freeze: ignored, nothing to write yet */
  assert_int_equal(kl_metrics_freeze(m, 1), 0);
  kl_metrics_bind(m, 0); /* this thread plays worker 0 */
  pthread_t t[2];
  for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&t[i], NULL, other_thread, NULL), 0);
  for (int i = 0; i < 1000; i++) keel_counter_add(g_counter, 1);
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  keel_gauge_set(gauge, 2.5);
  keel_gauge_add(gauge, -1);
  char *text = render(m, 0);
  assert_non_null(strstr(text, "\napp_total 3000\n"));
  assert_non_null(strstr(text, "\napp_seconds_bucket{le=\"1\"} 2000\n"));
  assert_non_null(strstr(text, "\napp_seconds_sum 1000\n"));
  assert_non_null(strstr(text, "\napp_level 1.5\n"));
  free(text);
  kl_metrics_free(m);
}

/* kl_histogram_observe_n: n observations at once, from the owner's block and the shared one. */
static void test_histogram_observe_n(void **state) {
  (void)state;
  kl_metrics *m = kl_metrics_new();
  kl_series *h;
  assert_int_equal(kl_metrics_add(m, "n_seconds", "N.", KL_M_HISTOGRAM, NULL, bounds, 2, &h), 0);
  assert_int_equal(kl_metrics_freeze(m, 1), 0);
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, observe_n_unbound, h), 0); /* shared block */
  pthread_join(t, NULL);
  kl_metrics_bind(m, 0); /* the owner's block */
  kl_histogram_observe_n(h, 0.5, 4);
  kl_histogram_observe_n(h, 2, 1);
  kl_histogram_observe_n(h, 2, 0); /* nothing */
  char *text = render(m, 0);
  assert_non_null(strstr(text, "\nn_seconds_bucket{le=\"0.1\"} 3\n"));
  assert_non_null(strstr(text, "\nn_seconds_bucket{le=\"1\"} 7\n"));
  assert_non_null(strstr(text, "\nn_seconds_bucket{le=\"+Inf\"} 8\n"));
  assert_non_null(strstr(text, "\nn_seconds_sum 4.15\n"));
  assert_non_null(strstr(text, "\nn_seconds_count 8\n"));
  free(text);
  kl_metrics_free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_registration_rules),
      cmocka_unit_test(test_workers_summed_and_rendered),
      cmocka_unit_test(test_key_table_overflow_counted),
      cmocka_unit_test(test_app_api_from_any_thread),
      cmocka_unit_test(test_histogram_observe_n),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
