/* test_log.c - unit tests for the JSON-lines logger: line format, escaping, rings, drops, drain. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "obs/log.h"

/* ---- helpers: a strict validator for our flat JSON objects ------------------ */

static size_t utf8_ok(const unsigned char *s, size_t n) {
  unsigned c = s[0], lo = 0x80, hi = 0xbf;
  size_t len;
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    lo = c == 0xe0 ? 0xa0 : lo;
    hi = c == 0xed ? 0x9f : hi;
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    lo = c == 0xf0 ? 0x90 : lo;
    hi = c == 0xf4 ? 0x8f : hi;
  } else {
    return 0;
  }
  if (n < len || s[1] < lo || s[1] > hi) return 0;
  for (size_t i = 2; i < len; i++)
    if (s[i] < 0x80 || s[i] > 0xbf) return 0;
  return len;
}

static bool js_string(const char *s, size_t n, size_t *i) {
  if (*i >= n || s[*i] != '"') return false;
  (*i)++;
  while (*i < n) {
    unsigned char c = (unsigned char)s[*i];
    if (c == '"') {
      (*i)++;
      return true;
    }
    if (c < 0x20) return false;
    if (c == '\\') {
      if (++*i >= n) return false;
      char e = s[*i];
      if (e == 'u') {
        for (int k = 1; k <= 4; k++)
          if (*i + (size_t)k >= n || !strchr("0123456789abcdefABCDEF", s[*i + (size_t)k]) ||
              s[*i + (size_t)k] == '\0')
            return false;
        *i += 5;
      } else if (e && strchr("\"\\/bfnrt", e)) {
        (*i)++;
      } else {
        return false;
      }
      continue;
    }
    if (c >= 0x80) {
      size_t l = utf8_ok((const unsigned char *)s + *i, n - *i);
      if (!l) return false;
      *i += l;
      continue;
    }
    (*i)++;
  }
  return false;
}

static bool digit(char c) {
  return c >= '0' && c <= '9';
}

static bool js_number(const char *s, size_t n, size_t *i) {
  if (*i < n && s[*i] == '-') (*i)++;
  if (*i >= n || !digit(s[*i])) return false;
  if (s[*i] == '0') {
    (*i)++;
  } else {
    while (*i < n && digit(s[*i])) (*i)++;
  }
  if (*i < n && s[*i] == '.') {
    (*i)++;
    if (*i >= n || !digit(s[*i])) return false;
    while (*i < n && digit(s[*i])) (*i)++;
  }
  if (*i < n && (s[*i] == 'e' || s[*i] == 'E')) {
    (*i)++;
    if (*i < n && (s[*i] == '+' || s[*i] == '-')) (*i)++;
    if (*i >= n || !digit(s[*i])) return false;
    while (*i < n && digit(s[*i])) (*i)++;
  }
  return true;
}

/* One line `{"k":v,...}\n` with string/number/null values, starting with a ts. */
static bool json_line_ok(const char *s, size_t n) {
  if (n < 3 || s[n - 1] != '\n' || s[0] != '{') return false;
  if (n < 7 || memcmp(s, "{\"ts\":\"", 7) != 0) return false;
  n--; /* the '\n' */
  size_t i = 1;
  for (;;) {
    if (!js_string(s, n, &i)) return false;
    if (i >= n || s[i++] != ':') return false;
    if (i < n && s[i] == '"') {
      if (!js_string(s, n, &i)) return false;
    } else if (i + 4 <= n && memcmp(s + i, "null", 4) == 0) {
      i += 4;
    } else if (!js_number(s, n, &i)) {
      return false;
    }
    if (i >= n) return false;
    if (s[i] == '}') return i + 1 == n;
    if (s[i++] != ',') return false;
  }
}

/* "YYYY-MM-DDTHH:MM:SS.mmmZ" right after {"ts":", within a few seconds of now. */
static bool ts_ok(const char *line) {
  static const char pat[] = "dddd-dd-ddTdd:dd:dd.dddZ\"";
  const char *t = line + 7;
  for (size_t k = 0; k < sizeof pat - 1; k++) {
    if (pat[k] == 'd' ? !digit(t[k]) : t[k] != pat[k]) return false;
  }
  struct tm tm = {0};
  tm.tm_year = (t[0] - '0') * 1000 + (t[1] - '0') * 100 + (t[2] - '0') * 10 + (t[3] - '0') - 1900;
  tm.tm_mon = (t[5] - '0') * 10 + (t[6] - '0') - 1;
  tm.tm_mday = (t[8] - '0') * 10 + (t[9] - '0');
  tm.tm_hour = (t[11] - '0') * 10 + (t[12] - '0');
  tm.tm_min = (t[14] - '0') * 10 + (t[15] - '0');
  tm.tm_sec = (t[17] - '0') * 10 + (t[18] - '0');
  if (tm.tm_mon > 11 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 ||
      tm.tm_sec > 60)
    return false;
  long long diff = (long long)timegm(&tm) - (long long)time(NULL);
  return diff >= -5 && diff <= 5;
}

/* The integer after "key": in a line, or -1. */
static long long field_int(const char *line, size_t n, const char *key) {
  char pat[64];
  int pn = snprintf(pat, sizeof pat, "\"%s\":", key);
  if (pn <= 0 || (size_t)pn >= sizeof pat) return -1;
  for (size_t i = 0; i + (size_t)pn < n; i++) {
    if (memcmp(line + i, pat, (size_t)pn) == 0) {
      const char *p = line + i + pn;
      long long v = 0;
      if (!digit(*p)) return -1;
      while (digit(*p)) v = v * 10 + (*p++ - '0');
      return v;
    }
  }
  return -1;
}

static bool has(const char *line, size_t n, const char *needle) {
  size_t m = strlen(needle);
  for (size_t i = 0; i + m <= n; i++)
    if (memcmp(line + i, needle, m) == 0) return true;
  return false;
}

/* The text after the timestamp: `","level":...`. */
static const char *after_ts(const kl_line *l) {
  return l->buf + 7 + 24;
}

typedef struct outbuf {
  char *data;
  size_t len, cap;
} outbuf;

static void out_add(outbuf *o, const char *p, size_t n) {
  if (o->len + n > o->cap) {
    size_t c = o->cap ? o->cap : 65536;
    while (c < o->len + n) c *= 2;
    o->data = realloc(o->data, c);
    assert_non_null(o->data);
    o->cap = c;
  }
  memcpy(o->data + o->len, p, n);
  o->len += n;
}

/* Everything written to a temp file's fd. */
static void read_file_all(int fd, outbuf *o) {
  assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
  char tmp[65536];
  ssize_t r;
  while ((r = read(fd, tmp, sizeof tmp)) > 0) out_add(o, tmp, (size_t)r);
  assert_int_equal(r, 0);
}

/* Reads from a non-blocking pipe until `want` bytes arrived or EOF (want = SIZE_MAX). */
static void read_pipe(int fd, outbuf *o, size_t want) {
  char tmp[65536];
  size_t got = 0;
  while (got < want) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int pr = poll(&p, 1, 10000);
    assert_true(pr > 0); /* 10 s without data: the writer is stuck */
    size_t ask = want - got < sizeof tmp ? want - got : sizeof tmp;
    ssize_t r = read(fd, tmp, ask);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    assert_true(r >= 0);
    if (r == 0) break;
    out_add(o, tmp, (size_t)r);
    got += (size_t)r;
  }
}

typedef struct tally {
  size_t lines;          /* every line */
  size_t reports;        /* "log lines dropped" lines */
  uint64_t reported;     /* sum of their "dropped" */
  size_t msg_lines;      /* lines whose msg is `msg` */
  bool all_valid;
} tally;

/* Validates every line of out[from, len) and counts them. */
static tally check_lines(const outbuf *o, size_t from, const char *msg) {
  tally t = {.all_valid = true};
  char want[128];
  snprintf(want, sizeof want, "\"msg\":\"%s\"", msg);
  size_t i = from;
  while (i < o->len) {
    const char *nl = memchr(o->data + i, '\n', o->len - i);
    if (!nl) {
      t.all_valid = false;
      break;
    }
    const char *s = o->data + i;
    size_t n = (size_t)(nl + 1 - s);
    if (!json_line_ok(s, n) || !ts_ok(s)) {
      t.all_valid = false;
      fprintf(stderr, "bad line: %.*s", (int)n, s);
    }
    t.lines++;
    if (has(s, n, "\"msg\":\"log lines dropped\"")) {
      t.reports++;
      t.reported += (uint64_t)field_int(s, n, "dropped");
      if (!has(s, n, "\"level\":\"warn\"")) t.all_valid = false;
    } else if (has(s, n, want)) {
      t.msg_lines++;
    }
    i += n;
  }
  return t;
}

static int temp_fd(void) {
  FILE *f = tmpfile();
  assert_non_null(f);
  int fd = dup(fileno(f));
  fclose(f);
  assert_true(fd >= 0);
  return fd;
}

/* ---- line building ------------------------------------------------------- */

static void test_line_format(void **state) {
  (void)state;
  kl_line l;
  kl_line_begin(&l, KEEL_LOG_INFO, "hello");
  kl_line_cstr(&l, "path", "/x");
  kl_line_str(&l, "m", "GETX", 3);
  kl_line_int(&l, "status", 200);
  kl_line_int(&l, "neg", INT64_MIN);
  kl_line_int(&l, "max", INT64_MAX);
  kl_line_int(&l, "zero", 0);
  kl_line_double(&l, "ms", 1.5);
  assert_int_equal(kl_line_end(&l, NULL), -ENOBUFS); /* no queue: closed but dropped */
  assert_true(json_line_ok(l.buf, l.len));
  assert_true(ts_ok(l.buf));
  const char *want = "\",\"level\":\"info\",\"severity_number\":9,\"msg\":\"hello\",\"path\":\"/x\",\"m\":\"GET\","
                     "\"status\":200,\"neg\":-9223372036854775808,\"max\":9223372036854775807,"
                     "\"zero\":0,\"ms\":1.5}\n";
  assert_int_equal(l.len, 31 + strlen(want));
  assert_memory_equal(after_ts(&l), want, strlen(want));

  static const char *const names[] = {"debug", "info", "warn", "error"};
  static const int numbers[] = {5, 9, 13, 17}; /* OpenTelemetry SeverityNumber */
  for (int lv = KEEL_LOG_DEBUG; lv <= KEEL_LOG_ERROR; lv++) {
    kl_line_begin(&l, (keel_log_level)lv, "x");
    char exp[96];
    snprintf(exp, sizeof exp, "\",\"level\":\"%s\",\"severity_number\":%d,\"msg\":\"x\"",
             names[lv], numbers[lv]);
    assert_memory_equal(after_ts(&l), exp, strlen(exp));
    assert_int_equal(l.level, lv);
  }
}

static void test_trace_ids(void **state) {
  (void)state;
  static const uint8_t trace[16] = {0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd,
                                    0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c};
  static const uint8_t span[8] = {0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31};
  kl_line l;
  kl_log_set_trace(trace, span);
  kl_line_begin(&l, KEEL_LOG_INFO, "in");
  kl_line_int(&l, "n", 1);
  kl_line_end(&l, NULL);
  const char *want = "\",\"level\":\"info\",\"severity_number\":9,\"msg\":\"in\","
                     "\"trace_id\":\"0af7651916cd43dd8448eb211c80319c\",\"span_id\":\"b7ad6b7169203331\","
                     "\"n\":1}\n";
  assert_memory_equal(after_ts(&l), want, strlen(want));
  kl_log_set_trace(NULL, NULL);
  kl_line_begin(&l, KEEL_LOG_INFO, "out");
  kl_line_end(&l, NULL);
  assert_null(strstr(l.buf, "trace_id"));
}

static void test_double(void **state) {
  (void)state;
  static const struct {
    double v;
    const char *text;
  } cases[] = {
      {1.5, "1.5"},         {0.1, "0.1"},          {-2.25, "-2.25"},  {1e6, "1e+06"},
      {1234567.0, "1.23457e+06"}, {0.000123, "0.000123"}, {-0.0, "-0"}, {42.0, "42"},
  };
  kl_line l;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    kl_line_begin(&l, KEEL_LOG_INFO, "d");
    kl_line_double(&l, "v", cases[i].v);
    kl_line_end(&l, NULL);
    char exp[64];
    snprintf(exp, sizeof exp, ",\"v\":%s}\n", cases[i].text);
    assert_int_equal(l.len, 31 + strlen("\",\"level\":\"info\",\"severity_number\":9,\"msg\":\"d\"") + strlen(exp));
    assert_memory_equal(l.buf + l.len - strlen(exp), exp, strlen(exp));
    assert_true(json_line_ok(l.buf, l.len));
  }
  kl_line_begin(&l, KEEL_LOG_INFO, "d");
  kl_line_double(&l, "a", NAN);
  kl_line_double(&l, "b", INFINITY);
  kl_line_double(&l, "c", -INFINITY);
  kl_line_end(&l, NULL);
  const char *exp = ",\"a\":null,\"b\":null,\"c\":null}\n";
  assert_memory_equal(l.buf + l.len - strlen(exp), exp, strlen(exp));
  assert_true(json_line_ok(l.buf, l.len));
}

static void test_fixed(void **state) {
  (void)state;
  static const struct {
    int64_t v;
    unsigned dec;
    const char *text;
  } cases[] = {
      {1234, 3, "1.234"}, {5, 3, "0.005"}, {-1500, 3, "-1.500"}, {7, 0, "7"},
      {0, 2, "0.00"},     {INT64_MIN, 0, "-9223372036854775808"},
  };
  kl_line l;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    kl_line_begin(&l, KEEL_LOG_INFO, "d");
    kl_line_fixed(&l, "v", cases[i].v, cases[i].dec);
    kl_line_end(&l, NULL);
    char exp[64];
    snprintf(exp, sizeof exp, ",\"v\":%s}\n", cases[i].text);
    assert_memory_equal(l.buf + l.len - strlen(exp), exp, strlen(exp));
    assert_true(json_line_ok(l.buf, l.len));
  }
}

static void test_escaping(void **state) {
  (void)state;
  kl_line l;
  kl_line_begin(&l, KEEL_LOG_WARN, "say \"hi\"\\\n\t\r\b\f\x01\x1f\x7f/");
  static const char val[] = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9d\x84\x9e|\xff|\xc0\xaf|\xed\xa0\x80|"
                            "\xe2\x82|\x00|\xc3";
  kl_line_str(&l, "v", val, sizeof val - 1);
  kl_line_cstr(&l, "k\"ey\n", "x");
  kl_line_cstr(&l, "null", NULL);
  kl_line_end(&l, NULL);
  const char *want =
      "\",\"level\":\"warn\",\"severity_number\":13,\"msg\":\"say \\\"hi\\\"\\\\\\n\\t\\r\\b\\f\\u0001\\u001f\x7f/\","
      "\"v\":\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9d\x84\x9e|\\ufffd|\\ufffd\\ufffd|"
      "\\ufffd\\ufffd\\ufffd|\\ufffd\\ufffd|\\u0000|\\ufffd\","
      "\"k\\\"ey\\n\":\"x\",\"null\":\"\"}\n";
  assert_int_equal(l.len, 31 + strlen(want));
  assert_memory_equal(after_ts(&l), want, strlen(want));
  assert_true(json_line_ok(l.buf, l.len));
}

/* Fills a field with `reps` copies of `unit` and checks the cut. */
static void trunc_case(const char *unit, size_t ulen, bool as_msg) {
  static char big[20000];
  size_t n = 0;
  while (n + ulen <= sizeof big) {
    memcpy(big + n, unit, ulen);
    n += ulen;
  }
  kl_line l;
  if (as_msg) {
    char *m = malloc(n + 1);
    assert_non_null(m);
    memcpy(m, big, n);
    m[n] = '\0';
    kl_line_begin(&l, KEEL_LOG_INFO, m);
    free(m);
  } else {
    kl_line_begin(&l, KEEL_LOG_INFO, "t");
    kl_line_str(&l, "big", big, n);
  }
  size_t before = l.len;
  assert_true(before <= KL_LINE_MAX - 2);
  kl_line_int(&l, "after", 7); /* no room left: omitted, line still valid */
  kl_line_cstr(&l, "s", "");
  kl_line_end(&l, NULL);
  assert_true(l.len <= KL_LINE_MAX);
  assert_true(l.len > KL_LINE_MAX - 10); /* cut late, not early */
  assert_memory_equal(l.buf + l.len - 6, "...\"}\n", 6);
  assert_true(json_line_ok(l.buf, l.len));
}

static void test_truncation(void **state) {
  (void)state;
  trunc_case("a", 1, false);
  trunc_case("\"", 1, false);
  trunc_case("\x01", 1, false);
  trunc_case("\xc3\xa9", 2, false);
  trunc_case("\xe2\x82\xac", 3, false);
  trunc_case("\xf0\x9d\x84\x9e", 4, false);
  trunc_case("ab\n", 3, false);
  trunc_case("x", 1, true);
  trunc_case("\\", 1, true);

  /* A value that fills the line exactly is kept whole, with no "...". */
  kl_line l;
  kl_line_begin(&l, KEEL_LOG_INFO, "t");
  size_t room = KL_LINE_MAX - 2 - l.len - strlen(",\"k\":\"\"");
  char *v = malloc(room + 1);
  assert_non_null(v);
  memset(v, 'z', room + 1);
  kl_line_str(&l, "k", v, room);
  kl_line_end(&l, NULL);
  assert_int_equal(l.len, KL_LINE_MAX);
  assert_memory_equal(l.buf + l.len - 5, "zz\"}\n", 5);
  assert_true(json_line_ok(l.buf, l.len));
  /* One byte more and it is cut. */
  kl_line_begin(&l, KEEL_LOG_INFO, "t");
  kl_line_str(&l, "k", v, room + 1);
  kl_line_end(&l, NULL);
  assert_int_equal(l.len, KL_LINE_MAX);
  assert_memory_equal(l.buf + l.len - 6, "...\"}\n", 6);
  free(v);

  /* A key too long for the line leaves the field out entirely. */
  char *key = malloc(5001);
  assert_non_null(key);
  memset(key, 'k', 5000);
  key[5000] = '\0';
  kl_line_begin(&l, KEEL_LOG_INFO, "t");
  kl_line_cstr(&l, key, "v");
  kl_line_int(&l, key, 1);
  kl_line_double(&l, key, 1.0);
  kl_line_int(&l, "ok", 1);
  kl_line_end(&l, NULL);
  free(key);
  const char *want = "\",\"level\":\"info\",\"severity_number\":9,\"msg\":\"t\",\"ok\":1}\n";
  assert_int_equal(l.len, 31 + strlen(want));
  assert_memory_equal(after_ts(&l), want, strlen(want));

  /* Many fields: the line stops growing but stays valid. */
  kl_line_begin(&l, KEEL_LOG_INFO, "many");
  for (int i = 0; i < 2000; i++) {
    kl_line_int(&l, "n", i);
    kl_line_cstr(&l, "s", "abc");
    kl_line_double(&l, "d", 0.5);
  }
  kl_line_end(&l, NULL);
  assert_true(l.len <= KL_LINE_MAX);
  assert_true(json_line_ok(l.buf, l.len));
}

/* ---- the log ----------------------------------------------------------- */

static void test_new_free_enabled(void **state) {
  (void)state;
  kl_log_free(NULL);
  errno = 0;
  assert_null(kl_log_new(-1, 4096, KEEL_LOG_INFO));
  assert_int_equal(errno, EINVAL);
  assert_int_equal(kl_log_enabled(NULL, KEEL_LOG_ERROR), 0);
  assert_null(kl_log_queue(NULL));
  assert_int_equal(kl_log_dropped(NULL), 0);

  int fd = temp_fd();
  kl_log *log = kl_log_new(fd, 0, KEEL_LOG_WARN);
  assert_non_null(log);
  assert_false(kl_log_enabled(log, KEEL_LOG_DEBUG));
  assert_false(kl_log_enabled(log, KEEL_LOG_INFO));
  assert_true(kl_log_enabled(log, KEEL_LOG_WARN));
  assert_true(kl_log_enabled(log, KEEL_LOG_ERROR));
  assert_int_equal(kl_log_dropped(log), 0);
  kl_log_free(log); /* nothing written */
  outbuf o = {0};
  read_file_all(fd, &o);
  assert_int_equal(o.len, 0);
  free(o.data);
  close(fd);
}

/* Lines pushed right before kl_log_free all reach the fd. */
static void test_drain_on_free(void **state) {
  (void)state;
  int fd = temp_fd();
  kl_log *log = kl_log_new(fd, 1 << 20, KEEL_LOG_DEBUG);
  assert_non_null(log);
  kl_logq *q = kl_log_bind(log);
  assert_non_null(q);
  assert_ptr_equal(kl_log_bind(log), q); /* binding twice gives the same queue */
  assert_ptr_equal(kl_log_queue(log), q);
  kl_line l;
  for (int i = 0; i < 3000; i++) {
    kl_line_begin(&l, KEEL_LOG_DEBUG, "drain");
    kl_line_int(&l, "seq", i);
    assert_int_equal(kl_line_end(&l, q), 0);
  }
  kl_log_free(log);
  outbuf o = {0};
  read_file_all(fd, &o);
  tally t = check_lines(&o, 0, "drain");
  assert_true(t.all_valid);
  assert_int_equal(t.msg_lines, 3000);
  assert_int_equal(t.lines, 3000);
  /* In order: one producer's lines are FIFO. */
  size_t i = 0;
  for (long long want = 0; i < o.len; want++) {
    const char *nl = memchr(o.data + i, '\n', o.len - i);
    assert_int_equal(field_int(o.data + i, (size_t)(nl - o.data) - i, "seq"), want);
    i = (size_t)(nl - o.data) + 1;
  }
  free(o.data);
  close(fd);
}

enum { MT_THREADS = 8, MT_LINES = 20000 };

typedef struct mt_arg {
  kl_log *log;
  int id;
  bool bind;
  kl_logq *q;       /* the queue used */
  uint64_t ok, dropped;
} mt_arg;

static void *mt_producer(void *p) {
  mt_arg *a = p;
  if (a->bind) {
    kl_logq *b = kl_log_bind(a->log);
    if (!b || kl_log_queue(a->log) != b) return NULL;
  }
  a->q = kl_log_queue(a->log);
  kl_line l;
  for (int i = 0; i < MT_LINES; i++) {
    kl_line_begin(&l, KEEL_LOG_INFO, "mt");
    kl_line_int(&l, "t", a->id);
    kl_line_int(&l, "seq", i);
    kl_line_cstr(&l, "pad", "the quick brown fox jumps over the lazy dog");
    if (kl_line_end(&l, kl_log_queue(a->log)) == 0) {
      a->ok++;
    } else {
      a->dropped++;
    }
  }
  return NULL;
}

/* Checks per-thread seq order and counts of "mt" lines. */
static void check_mt_order(const outbuf *o, const mt_arg *args, int nthreads) {
  long long last[MT_THREADS];
  uint64_t seen[MT_THREADS] = {0};
  for (int k = 0; k < MT_THREADS; k++) last[k] = -1;
  size_t i = 0;
  while (i < o->len) {
    const char *s = o->data + i;
    const char *nl = memchr(s, '\n', o->len - i);
    assert_non_null(nl);
    size_t n = (size_t)(nl + 1 - s);
    if (has(s, n, "\"msg\":\"mt\"")) {
      long long t = field_int(s, n, "t"), seq = field_int(s, n, "seq");
      assert_true(t >= 0 && t < nthreads);
      assert_true(seq > last[t]);
      last[t] = seq;
      seen[t]++;
      assert_true(has(s, n, "\"pad\":\"the quick brown fox jumps over the lazy dog\"}\n"));
    }
    i += n;
  }
  for (int k = 0; k < nthreads; k++) assert_int_equal(seen[k], args[k].ok);
}

static void run_mt(bool bind, size_t ring) {
  int fd = temp_fd();
  kl_log *log = kl_log_new(fd, ring, KEEL_LOG_INFO);
  assert_non_null(log);
  pthread_t th[MT_THREADS];
  mt_arg args[MT_THREADS];
  for (int k = 0; k < MT_THREADS; k++) {
    args[k] = (mt_arg){.log = log, .id = k, .bind = bind};
    assert_int_equal(pthread_create(&th[k], NULL, mt_producer, &args[k]), 0);
  }
  uint64_t ok = 0, dropped = 0;
  for (int k = 0; k < MT_THREADS; k++) {
    assert_int_equal(pthread_join(th[k], NULL), 0);
    assert_non_null(args[k].q);
    assert_int_equal(args[k].ok + args[k].dropped, MT_LINES);
    ok += args[k].ok;
    dropped += args[k].dropped;
    for (int j = 0; j < k; j++) {
      if (bind) {
        assert_ptr_not_equal(args[k].q, args[j].q); /* each thread its own ring */
      } else {
        assert_ptr_equal(args[k].q, args[j].q); /* all share the fallback */
      }
    }
  }
  assert_int_equal(kl_log_dropped(log), dropped);
  kl_log_free(log);

  outbuf o = {0};
  read_file_all(fd, &o);
  tally t = check_lines(&o, 0, "mt");
  assert_true(t.all_valid);
  assert_int_equal(t.msg_lines, ok);
  assert_int_equal(t.msg_lines, (uint64_t)MT_THREADS * MT_LINES - dropped);
  assert_int_equal(t.reported, dropped);
  assert_int_equal(t.lines, t.msg_lines + t.reports);
  check_mt_order(&o, args, MT_THREADS);
  free(o.data);
  close(fd);
}

static void test_threads_bound(void **state) {
  (void)state;
  run_mt(true, 64 * 1024);
  run_mt(true, 4096); /* small rings: drops likely, accounting must still add up */
}

static void test_threads_fallback(void **state) {
  (void)state;
  run_mt(false, 1 << 20);
}

/* A thread bound to one log gets the other log's fallback from kl_log_queue. */
static void test_bound_to_other_log(void **state) {
  (void)state;
  int fa = temp_fd(), fb = temp_fd();
  kl_log *a = kl_log_new(fa, 4096, KEEL_LOG_INFO);
  kl_log *b = kl_log_new(fb, 4096, KEEL_LOG_INFO);
  assert_non_null(a);
  assert_non_null(b);
  kl_logq *qa = kl_log_bind(a);
  assert_non_null(qa);
  kl_logq *fbq = kl_log_queue(b);
  assert_non_null(fbq);
  assert_ptr_not_equal(fbq, qa);
  kl_line l;
  kl_line_begin(&l, KEEL_LOG_INFO, "to-b");
  assert_int_equal(kl_line_end(&l, fbq), 0);
  kl_line_begin(&l, KEEL_LOG_INFO, "to-a");
  assert_int_equal(kl_line_end(&l, kl_log_queue(a)), 0);
  kl_log_free(a);
  kl_log_free(b);

  /* A new log (maybe at the freed address) is not confused with the freed binding. */
  int fc = temp_fd();
  kl_log *c = kl_log_new(fc, 4096, KEEL_LOG_INFO);
  assert_non_null(c);
  kl_logq *qc = kl_log_queue(c);
  kl_line_begin(&l, KEEL_LOG_INFO, "to-c");
  assert_int_equal(kl_line_end(&l, qc), 0);
  kl_log_free(c);

  outbuf o = {0};
  read_file_all(fa, &o);
  assert_int_equal(check_lines(&o, 0, "to-a").msg_lines, 1);
  assert_int_equal(check_lines(&o, 0, "to-a").lines, 1);
  o.len = 0;
  read_file_all(fb, &o);
  assert_int_equal(check_lines(&o, 0, "to-b").msg_lines, 1);
  assert_int_equal(check_lines(&o, 0, "to-b").lines, 1);
  o.len = 0;
  read_file_all(fc, &o);
  assert_int_equal(check_lines(&o, 0, "to-c").msg_lines, 1);
  assert_int_equal(check_lines(&o, 0, "to-c").lines, 1);
  free(o.data);
  close(fa);
  close(fb);
  close(fc);
}

/* A line longer than the ring can never fit: dropped, counted and reported. */
static void test_line_bigger_than_ring(void **state) {
  (void)state;
  int fd = temp_fd();
  kl_log *log = kl_log_new(fd, 64, KEEL_LOG_DEBUG);
  assert_non_null(log);
  kl_logq *q = kl_log_bind(log);
  kl_line l;
  kl_line_begin(&l, KEEL_LOG_INFO, "this line is longer than sixty-four bytes, surely");
  assert_int_equal(kl_line_end(&l, q), -ENOBUFS);
  assert_int_equal(kl_log_dropped(log), 1);
  kl_log_free(log);
  outbuf o = {0};
  read_file_all(fd, &o);
  tally t = check_lines(&o, 0, "x");
  assert_true(t.all_valid);
  assert_int_equal(t.lines, 1);
  assert_int_equal(t.reports, 1);
  assert_int_equal(t.reported, 1);
  free(o.data);
  close(fd);
}

/*
 * Nobody reads the pipe and it is full: producers keep going (no blocking),
 * lines are dropped and counted; once the reader drains the pipe the writer
 * reports the drops without waiting for kl_log_free.
 */
static void test_blocked_pipe(void **state) {
  (void)state;
  int p[2];
  assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
  char chunk[4096];
  memset(chunk, 'x', sizeof chunk);
  size_t filler = 0;
  for (;;) {
    ssize_t w = write(p[1], chunk, sizeof chunk);
    if (w < 0) break;
    filler += (size_t)w;
  }
  assert_true(errno == EAGAIN);
  for (;;) {
    ssize_t w = write(p[1], chunk, 1);
    if (w < 0) break;
    filler += (size_t)w;
  }
  assert_true(filler > 0);

  kl_log *log = kl_log_new(p[1], 1024, KEEL_LOG_DEBUG);
  assert_non_null(log);
  kl_logq *q = kl_log_bind(log);
  assert_non_null(q);
  uint64_t ok = 0, dropped = 0;
  kl_line l;
  for (int i = 0; i < 5000; i++) {
    kl_line_begin(&l, KEEL_LOG_INFO, "blocked");
    kl_line_int(&l, "seq", i);
    if (kl_line_end(&l, q) == 0) {
      ok++;
    } else {
      dropped++;
    }
  }
  /* The ring holds ~1 KiB: most lines were dropped, none blocked. */
  assert_true(dropped > 4900);
  assert_int_equal(kl_log_dropped(log), dropped);

  /* Drain the pipe: first the filler, then lines until the drop report shows up. */
  outbuf o = {0};
  read_pipe(p[0], &o, filler);
  assert_int_equal(o.len, filler);
  for (size_t i = 0; i < filler; i++) assert_int_equal(o.data[i], 'x');
  for (;;) {
    size_t before = o.len;
    read_pipe(p[0], &o, 1);
    assert_true(o.len > before); /* no EOF: the write end is still open */
    if (o.data[o.len - 1] == '\n' && has(o.data + filler, o.len - filler, "log lines dropped"))
      break;
  }
  tally t = check_lines(&o, filler, "blocked");
  assert_int_equal(t.reports, 1);
  assert_int_equal(t.reported, dropped); /* all drops happened before the report */

  kl_log_free(log);
  close(p[1]);
  read_pipe(p[0], &o, SIZE_MAX);
  close(p[0]);
  t = check_lines(&o, filler, "blocked");
  assert_true(t.all_valid);
  assert_int_equal(t.msg_lines, ok);
  assert_int_equal(t.reports, 1);
  assert_int_equal(t.reported, dropped);
  assert_int_equal(t.lines, ok + 1);
  free(o.data);
}

/* Nothing pending and no producer: the writer sleeps; one line later still arrives. */
static void test_wakeup_after_idle(void **state) {
  (void)state;
  int p[2];
  assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
  kl_log *log = kl_log_new(p[1], 4096, KEEL_LOG_INFO);
  assert_non_null(log);
  kl_logq *q = kl_log_bind(log);
  outbuf o = {0};
  kl_line l;
  for (int round = 0; round < 20; round++) {
    kl_line_begin(&l, KEEL_LOG_INFO, "ping");
    kl_line_int(&l, "round", round);
    assert_int_equal(kl_line_end(&l, q), 0);
    size_t before = o.len;
    while (o.len == before || o.data[o.len - 1] != '\n') read_pipe(p[0], &o, 1);
  }
  kl_log_free(log);
  close(p[1]);
  read_pipe(p[0], &o, SIZE_MAX);
  close(p[0]);
  tally t = check_lines(&o, 0, "ping");
  assert_true(t.all_valid);
  assert_int_equal(t.msg_lines, 20);
  assert_int_equal(t.lines, 20);
  free(o.data);
}

/* A hard write error (reader gone) loses lines without hanging; they are counted. */
static void test_write_error(void **state) {
  (void)state;
  int p[2];
  assert_int_equal(pipe2(p, O_CLOEXEC), 0);
  close(p[0]);
  kl_log *log = kl_log_new(p[1], 4096, KEEL_LOG_INFO); /* the writer blocks SIGPIPE */
  assert_non_null(log);
  kl_line l;
  kl_line_begin(&l, KEEL_LOG_ERROR, "into the void");
  assert_int_equal(kl_line_end(&l, kl_log_queue(log)), 0);
  /* The writer gets EPIPE and counts the line as dropped (waits for that, 10 s at most). */
  for (int i = 0; i < 10000 && kl_log_dropped(log) == 0; i++) {
    struct timespec ms = {0, 1000000};
    nanosleep(&ms, NULL);
  }
  assert_int_equal(kl_log_dropped(log), 1);
  kl_log_free(log);
  close(p[1]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_line_format),
      cmocka_unit_test(test_trace_ids),
      cmocka_unit_test(test_double),
      cmocka_unit_test(test_fixed),
      cmocka_unit_test(test_escaping),
      cmocka_unit_test(test_truncation),
      cmocka_unit_test(test_new_free_enabled),
      cmocka_unit_test(test_drain_on_free),
      cmocka_unit_test(test_threads_bound),
      cmocka_unit_test(test_threads_fallback),
      cmocka_unit_test(test_bound_to_other_log),
      cmocka_unit_test(test_line_bigger_than_ring),
      cmocka_unit_test(test_blocked_pipe),
      cmocka_unit_test(test_wakeup_after_idle),
      cmocka_unit_test(test_write_error),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
