/* test_wal.c - unit tests for the disk buffer: framing, segments, durability, commit, recovery. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "pipeline/wal.h"

#define HDR 20u

/* ---- helpers ------------------------------------------------------------------------------ */

typedef struct fixture {
  char dir[64];
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof(*f));
  if (!f) return -1;
  snprintf(f->dir, sizeof(f->dir), "/tmp/keel-test-wal-XXXXXX");
  if (!mkdtemp(f->dir)) {
    free(f);
    return -1;
  }
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  DIR *d = opendir(f->dir);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
      if (e->d_name[0] == '.') continue;
      char p[512];
      snprintf(p, sizeof(p), "%s/%s", f->dir, e->d_name);
      unlink(p);
    }
    closedir(d);
  }
  rmdir(f->dir);
  free(f);
  return 0;
}

static kl_wal_opts opts_for(const fixture *f) {
  kl_wal_opts o;
  memset(&o, 0, sizeof(o));
  o.dir = f->dir;
  o.segment_bytes = 1 << 20;
  o.max_bytes = 64 << 20;
  o.fsync_ms = 0;
  o.commit_ms = 0;
  o.record_max = 4096;
  return o;
}

static kl_wal *open_ok(const kl_wal_opts *o) {
  char err[256] = "";
  kl_wal *w = kl_wal_open(o, err, sizeof(err));
  if (!w) fail_msg("kl_wal_open: %s", err);
  return w;
}

/* Payload of record `i`: its index, then a pattern, `len` bytes in all (len >= 4). */
static void make_rec(uint8_t *p, uint32_t i, size_t len) {
  for (size_t k = 0; k < len; k++)
    p[k] = (uint8_t)(i * 31 + k * 7);
  if (len >= 4) memcpy(p, &i, 4);
}

static void check_rec(const kl_wal_rec *r, uint32_t i, size_t len) {
  uint8_t buf[8192];
  assert_true(len <= sizeof(buf));
  make_rec(buf, i, len);
  assert_int_equal(r->len, len);
  assert_int_equal(r->next, r->pos + HDR + len);
  if (memcmp(r->data, buf, len) != 0) fail_msg("record %u differs", i);
}

static size_t len_of(uint32_t i) {
  return 4 + (i * 37) % 300;
}

static int append1(kl_wal *w, uint32_t i, size_t len, uint64_t *end) {
  uint8_t buf[8192];
  make_rec(buf, i, len);
  struct iovec v = {buf, len};
  uint32_t ri[2] = {0, 1};
  return kl_wal_append(w, &v, ri, 1, end);
}

static void sleep_ms(unsigned ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void wait_durable(kl_wal *w, uint64_t pos) {
  for (int i = 0; i < 10000 && kl_wal_durable(w) < pos; i++)
    sleep_ms(1);
  assert_true(kl_wal_durable(w) >= pos);
}

/* Reads everything durable (several calls). */
static size_t read_all(kl_wal *w, kl_wal_rec *out, size_t max, uint8_t *copy, size_t copy_cap) {
  size_t n = 0, used = 0;
  for (;;) {
    kl_wal_rec r[16];
    size_t k = kl_wal_read(w, r, 16, 4096);
    if (!k) break;
    for (size_t j = 0; j < k; j++) {
      assert_true(n < max);
      assert_true(used + r[j].len <= copy_cap);
      memcpy(copy + used, r[j].data, r[j].len);
      out[n] = r[j];
      out[n].data = copy + used;
      used += r[j].len;
      n++;
    }
  }
  return n;
}

static int count_files(const char *dir, const char *suffix) {
  DIR *d = opendir(dir);
  int n = 0;
  struct dirent *e;
  while (d && (e = readdir(d)) != NULL) {
    size_t l = strlen(e->d_name), s = strlen(suffix);
    if (l >= s && strcmp(e->d_name + l - s, suffix) == 0) n++;
  }
  if (d) closedir(d);
  return n;
}

/* The newest segment's path. */
static void last_segment(const char *dir, char *out, size_t outlen) {
  DIR *d = opendir(dir);
  char best[64] = "";
  struct dirent *e;
  while (d && (e = readdir(d)) != NULL) {
    size_t l = strlen(e->d_name);
    if (l < sizeof(best) && strstr(e->d_name, ".log") && strcmp(e->d_name, best) > 0)
      memcpy(best, e->d_name, l + 1);
  }
  if (d) closedir(d);
  assert_true(best[0] != '\0');
  snprintf(out, outlen, "%s/%s", dir, best);
}

static uint64_t persisted_commit(const char *dir) {
  char p[256];
  snprintf(p, sizeof(p), "%s/committed", dir);
  uint8_t b[16];
  int fd = open(p, O_RDONLY);
  if (fd < 0) return UINT64_MAX;
  ssize_t r = read(fd, b, sizeof(b));
  close(fd);
  if (r != 16) return UINT64_MAX;
  uint64_t v = 0;
  for (int i = 11; i >= 4; i--)
    v = v << 8 | b[i];
  return v;
}

static void wait_persisted(const char *dir, uint64_t pos) {
  for (int i = 0; i < 10000 && persisted_commit(dir) != pos; i++)
    sleep_ms(1);
  assert_int_equal(persisted_commit(dir), pos);
}

static void flip_byte(const char *path, off_t off) {
  int fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  uint8_t b;
  assert_int_equal(pread(fd, &b, 1, off), 1);
  b ^= 0x5a;
  assert_int_equal(pwrite(fd, &b, 1, off), 1);
  close(fd);
}

/* ---- CRC32C ------------------------------------------------------------------------------- */

static uint32_t crc_bitwise(uint32_t crc, const uint8_t *p, size_t n) {
  crc = ~crc;
  while (n--) {
    crc ^= *p++;
    for (int k = 0; k < 8; k++)
      crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1)));
  }
  return ~crc;
}

static void test_crc32c_vectors(void **state) {
  (void)state;
  uint8_t zeros[32] = {0}, ones[32];
  memset(ones, 0xff, sizeof(ones));
  assert_int_equal(kl_crc32c(0, "123456789", 9), 0xE3069283u);
  assert_int_equal(kl_crc32c_portable(0, "123456789", 9), 0xE3069283u);
  assert_int_equal(kl_crc32c(0, zeros, 32), 0x8A9136AAu);
  assert_int_equal(kl_crc32c_portable(0, zeros, 32), 0x8A9136AAu);
  assert_int_equal(kl_crc32c(0, ones, 32), 0x62A8AB43u);
  assert_int_equal(kl_crc32c(0, "", 0), 0);
  /* Every length and alignment, chained at every split, both implementations. */
  uint8_t buf[300];
  for (size_t i = 0; i < sizeof(buf); i++)
    buf[i] = (uint8_t)(i * 131 + 7);
  for (size_t off = 0; off < 9; off++)
    for (size_t len = 0; len + off <= sizeof(buf); len += 7) {
      uint32_t want = crc_bitwise(0, buf + off, len);
      assert_int_equal(kl_crc32c(0, buf + off, len), want);
      assert_int_equal(kl_crc32c_portable(0, buf + off, len), want);
      size_t cut = len / 3;
      assert_int_equal(kl_crc32c(kl_crc32c(0, buf + off, cut), buf + off + cut, len - cut), want);
    }
}

/* ---- append and read ---------------------------------------------------------------------- */

static void test_round_trip_segments(void **state) {
  fixture *f = *state;
  kl_wal_opts o = opts_for(f);
  o.segment_bytes = 2000;
  kl_wal *w = open_ok(&o);
  enum { N = 300 };
  uint64_t end = 0, prev = 0;
  /* Batches of 1..5 records, each record from 1..3 iovecs. */
  uint32_t i = 0;
  while (i < N) {
    uint8_t bufs[5][400];
    struct iovec v[15];
    uint32_t ri[6];
    size_t n = 1 + i % 5, nv = 0;
    if (i + n > N) n = N - i;
    for (size_t r = 0; r < n; r++) {
      size_t len = len_of(i + (uint32_t)r);
      make_rec(bufs[r], i + (uint32_t)r, len);
      ri[r] = (uint32_t)nv;
      size_t parts = 1 + r % 3, done = 0;
      for (size_t p = 0; p < parts; p++) {
        size_t l = p + 1 == parts ? len - done : len / parts;
        v[nv].iov_base = bufs[r] + done;
        v[nv++].iov_len = l;
        done += l;
      }
    }
    ri[n] = (uint32_t)nv;
    assert_int_equal(kl_wal_append(w, v, ri, n, &end), 0);
    assert_true(end > prev);
    prev = end;
    i += (uint32_t)n;
  }
  wait_durable(w, end);
  static kl_wal_rec recs[N];
  static uint8_t copy[N * 400];
  size_t got = read_all(w, recs, N, copy, sizeof(copy));
  assert_int_equal(got, N);
  for (uint32_t k = 0; k < N; k++) {
    check_rec(&recs[k], k, len_of(k));
    if (k) assert_int_equal(recs[k].pos, recs[k - 1].next);
  }
  assert_int_equal(recs[0].pos, 0);
  assert_int_equal(recs[N - 1].next, end);
  kl_wal_stats st;
  kl_wal_get_stats(w, &st);
  assert_true(st.segments >= 10);
  assert_int_equal(st.written, end);
  assert_int_equal(st.bytes, end);
  assert_int_equal(st.records_pending, N);
  assert_int_equal(st.corrupt_records, 0);
  assert_int_equal(count_files(f->dir, ".log"), (int)st.segments);
  /* Per-call byte cap: at least one record, then no more than `bytes` of payload. */
  kl_wal_rewind(w);
  kl_wal_rec r[64];
  size_t k = kl_wal_read(w, r, 64, 1);
  assert_int_equal(k, 1);
  k = kl_wal_read(w, r, 64, 500);
  size_t sum = 0;
  for (size_t j = 0; j < k; j++)
    sum += r[j].len;
  assert_true(k >= 1 && sum <= 500);
  kl_wal_close(w);
}

static void test_many_iovecs(void **state) {
  fixture *f = *state;
  kl_wal_opts o = opts_for(f);
  kl_wal *w = open_ok(&o);
  /* More iovecs than IOV_MAX in one append: written in chunks. */
  enum { N = 1500 };
  static uint8_t bufs[N][8];
  static struct iovec v[N];
  static uint32_t ri[N + 1];
  for (uint32_t i = 0; i < N; i++) {
    make_rec(bufs[i], i, 8);
    v[i].iov_base = bufs[i];
    v[i].iov_len = 8;
    ri[i] = i;
  }
  ri[N] = N;
  uint64_t end;
  assert_int_equal(kl_wal_append(w, v, ri, N, &end), 0);
  assert_int_equal(end, (uint64_t)N * (HDR + 8));
  wait_durable(w, end);
  static kl_wal_rec recs[N];
  static uint8_t copy[N * 8];
  assert_int_equal(read_all(w, recs, N, copy, sizeof(copy)), N);
  for (uint32_t i = 0; i < N; i++)
    check_rec(&recs[i], i, 8);
  /* An empty batch changes nothing. */
  uint64_t e2 = 0;
  assert_int_equal(kl_wal_append(w, v, ri, 0, &e2), 0);
  assert_int_equal(e2, end);
  kl_wal_close(w);
}

/* ---- durability --------------------------------------------------------------------------- */

typedef struct dur_seen {
  _Atomic uint64_t last;
  _Atomic int calls;
} dur_seen;

static void on_durable(void *arg, uint64_t d) {
  dur_seen *s = arg;
  uint64_t prev = atomic_load(&s->last);
  if (d <= prev) abort(); /* only ever advances */
  atomic_store(&s->last, d);
  atomic_fetch_add(&s->calls, 1);
}

static void durable_case(fixture *f, uint32_t fsync_ms) {
  kl_wal_opts o = opts_for(f);
  o.fsync_ms = fsync_ms;
  o.segment_bytes = 500; /* rolls too: old segments are synced before durable passes them */
  dur_seen seen;
  atomic_init(&seen.last, 0);
  atomic_init(&seen.calls, 0);
  o.on_durable = on_durable;
  o.arg = &seen;
  kl_wal *w = open_ok(&o);
  uint64_t end = 0;
  for (uint32_t i = 0; i < 50; i++) {
    assert_int_equal(append1(w, i, 40, &end), 0);
    if (i % 10 == 9) {
      wait_durable(w, end);
      for (int k = 0; k < 5000 && atomic_load(&seen.last) < end; k++)
        sleep_ms(1);
      assert_true(atomic_load(&seen.last) >= end);
    }
  }
  assert_int_equal(kl_wal_durable(w), end);
  kl_wal_stats st;
  kl_wal_get_stats(w, &st);
  assert_int_equal(st.durable, end);
  assert_true(st.syncs >= 5);
  assert_true(atomic_load(&seen.calls) >= 5);
  kl_wal_close(w);
}

static void test_durable_group_commit(void **state) {
  durable_case(*state, 0);
}

static void test_durable_periodic(void **state) {
  durable_case(*state, 10);
}

static void test_read_only_durable(void **state) {
  fixture *f = *state;
  kl_wal_opts o = opts_for(f);
  o.fsync_ms = 600000; /* no periodic sync during the test */
  kl_wal *w = open_ok(&o);
  uint64_t end;
  for (uint32_t i = 0; i < 5; i++)
    assert_int_equal(append1(w, i, 50, &end), 0);
  kl_wal_rec r[8];
  sleep_ms(20);
  assert_int_equal(kl_wal_durable(w), 0);
  assert_int_equal(kl_wal_read(w, r, 8, 1 << 20), 0);
  kl_wal_sync(w);
  wait_durable(w, end);
  size_t n = kl_wal_read(w, r, 8, 1 << 20);
  assert_int_equal(n, 5);
  for (uint32_t i = 0; i < 5; i++)
    check_rec(&r[i], i, 50);
  assert_int_equal(kl_wal_read(w, r, 8, 1 << 20), 0);
  kl_wal_close(w);
}

/* ---- commit, reopen, crash ---------------------------------------------------------------- */

static void test_commit_deletes_and_persists(void **state) {
  fixture *f = *state;
  kl_wal_opts o = opts_for(f);
  o.segment_bytes = 600;
  kl_wal *w = open_ok(&o);
  uint64_t end;
  for (uint32_t i = 0; i < 60; i++)
    assert_int_equal(append1(w, i, 80, &end), 0);
  wait_durable(w, end);
  kl_wal_stats st;
  kl_wal_get_stats(w, &st);
  uint64_t segs = st.segments;
  assert_true(segs >= 8);
  kl_wal_rec r[64];
  size_t n = kl_wal_read(w, r, 30, 1 << 20);
  assert_int_equal(n, 30);
  kl_wal_commit(w, r[29].next, 30);
  kl_wal_get_stats(w, &st);
  assert_int_equal(st.committed, r[29].next);
  assert_int_equal(st.records_pending, 30);
  assert_true(st.segments < segs && st.segments > 1);
  assert_int_equal(st.bytes, end - 30 * 100); /* 6 frames a segment: the commit is a base */
  assert_int_equal(count_files(f->dir, ".log"), (int)st.segments);
  assert_true(st.oldest_ns != 0);
  wait_persisted(f->dir, r[29].next);
  /* The rest: everything but the active segment goes. */
  n = kl_wal_read(w, r, 64, 1 << 20);
  assert_int_equal(n, 30);
  check_rec(&r[0], 30, 80);
  kl_wal_commit(w, r[29].next, 30);
  kl_wal_get_stats(w, &st);
  assert_int_equal(st.segments, 1);
  assert_int_equal(st.records_pending, 0);
  assert_int_equal(st.oldest_ns, 0);
  assert_int_equal(count_files(f->dir, ".log"), 1);
  wait_persisted(f->dir, end);
  /* A commit going back is ignored. */
  kl_wal_commit(w, 0, 0);
  kl_wal_get_stats(w, &st);
  assert_int_equal(st.committed, end);
  kl_wal_close(w);
}

static void test_reopen_resumes(void **state) {
  fixture *f = *state;
  kl_wal_opts o = opts_for(f);
  o.segment_bytes = 300;
  o.commit_ms = 60000; /* persisted only by close */
  kl_wal *w = open_ok(&o);
  uint64_t end;
  for (uint32_t i = 0; i < 10; i++) {
    assert_int_equal(append1(w, i, 60, &end), 0);
    sleep_ms(1); /* distinct append times */
  }
  wait_durable(w, end);
  kl_wal_rec r[16];
  assert_int_equal(kl_wal_read(w, r, 4, 1 << 20), 4);
  uint64_t cpos = r[3].next;
  kl_wal_commit(w, cpos, 4);
  /* The time of record 4, for oldest_ns after the reopen. */
  assert_int_equal(kl_wal_read(w, r, 1, 1 << 20), 1);
  uint64_t t4 = r[0].time_ns;
  kl_wal_stats st;
  kl_wal_get_stats(w, &st);
  assert_int_equal(st.oldest_ns, t4);
  kl_wal_close(w);
  assert_int_equal(persisted_commit(f->dir), cpos);

  w = open_ok(&o);
  kl_wal_get_stats(w, &st);
  assert_int_equal(st.committed, cpos);
  assert_int_equal(st.written, end);
  assert_int_equal(st.durable, end);
  assert_int_equal(st.records_pending, 6);
  assert_int_equal(st.oldest_ns, t4);
  assert_int_equal(st.corrupt_records, 0);
  assert_int_equal(kl_wal_read(w, r, 16, 1 << 20), 6);
  for (uint32_t i = 0; i < 6; i++)
    check_rec(&r[i], 4 + i, 60);
  assert_int_equal(r[0].pos, cpos);
  assert_int_equal(r[0].time_ns, t4);
  /* Appends continue at the old end. */
  uint64_t e2;
  assert_int_equal(append1(w, 10, 60, &e2), 0);
  assert_int_equal(e2, end + HDR + 60);
  kl_wal_commit(w, r[5].next, 6);
  wait_durable(w, e2);
  assert_int_equal(kl_wal_read(w, r, 16, 1 << 20), 1);
  check_rec(&r[0], 10, 60);
  kl_wal_commit(w, r[0].next, 1);
  kl_wal_close(w);

  /* Everything committed: reopen has nothing pending. */
  w = open_ok(&o);
  kl_wal_get_stats(w, &st);
  assert_int_equal(st.committed, e2);
  assert_int_equal(st.records_pending, 0);
  assert_int_equal(st.oldest_ns, 0);
  assert_int_equal(kl_wal_read(w, r, 16, 1 << 20), 0);
  kl_wal_close(w);
}

static void test_crash_replays_from_commit(void **state) {
  fixture *f = *state;
  kl_wal_opts o = opts_for(f);
  o.segment_bytes = 400;
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    /* The child appends, commits some, waits for both to be on disk, and dies without close. */
    char err[256];
    kl_wal *w = kl_wal_open(&o, err, sizeof(err));
    if (!w) _exit(10);
    uint64_t end = 0;
    for (uint32_t i = 0; i < 20; i++)
      if (append1(w, i, 50, &end) != 0) _exit(11);
    for (int k = 0; k < 10000 && kl_wal_durable(w) < end; k++)
      sleep_ms(1);
    kl_wal_rec r[8];
    if (kl_wal_read(w, r, 7, 1 << 20) != 7) _exit(12);
    kl_wal_commit(w, r[6].next, 7);
    for (int k = 0; k < 10000 && persisted_commit(o.dir) != r[6].next; k++)
      sleep_ms(1);
    if (persisted_commit(o.dir) != r[6].next) _exit(13);
    /* Delivered but not persisted: replayed after the crash (at least once). */
    if (kl_wal_read(w, r, 2, 1 << 20) != 2) _exit(14);
    _exit(0);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);

  kl_wal *w = open_ok(&o);
  kl_wal_stats st;
  kl_wal_get_stats(w, &st);
  assert_int_equal(st.committed, 7 * (HDR + 50));
  assert_int_equal(st.records_pending, 13);
  assert_int_equal(st.written, 20 * (HDR + 50));
  kl_wal_rec r[32];
  assert_int_equal(kl_wal_read(w, r, 32, 1 << 20), 13);
  for (uint32_t i = 0; i < 13; i++)
    check_rec(&r[i], 7 + i, 50);
  kl_wal_close(w);
}

/* ---- damage ------------------------------------------------------------------------------- */

static void test_torn_tail(void **state) {
  fixture *f = *state;
  kl_wal_opts o = opts_for(f);
  kl_wal *w = open_ok(&o);
  uint64_t end;
  for (uint32_t i = 0; i < 5; i++)
    assert_int_equal(append1(w, i, 100, &end), 0);
  kl_wal_close(w);
  /* A crash mid-write: the last record is cut in its payload, then half a frame of garbage. */
  char seg[256];
  last_segment(f->dir, seg, sizeof(seg));
  uint64_t cut = end - 30;
  assert_int_equal(truncate(seg, (off_t)cut), 0);
  int fd = open(seg, O_WRONLY | O_APPEND);
  assert_true(fd >= 0);
  uint8_t junk[11] = {0x4b, 0x57, 0x4c, 0x31, 9, 9, 9, 9, 9, 9, 9};
  assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
  close(fd);

  w = open_ok(&o);
  kl_wal_stats st;
  kl_wal_get_stats(w, &st);
  uint64_t good = 4 * (HDR + 100);
  assert_int_equal(st.written, good);
  assert_int_equal(st.corrupt_records, 1);
  assert_int_equal(st.corrupt_bytes, cut + sizeof(junk) - good);
  assert_int_equal(st.records_pending, 4);
  struct stat sb;
  assert_int_equal(stat(seg, &sb), 0);
  assert_int_equal((uint64_t)sb.st_size, good);
  kl_wal_rec r[8];
  assert_int_equal(kl_wal_read(w, r, 8, 1 << 20), 4);
  for (uint32_t i = 0; i < 4; i++)
    check_rec(&r[i], i, 100);
  /* New appends land right after the good records and read back. */
  assert_int_equal(append1(w, 77, 33, &end), 0);
  assert_int_equal(end, good + HDR + 33);
  wait_durable(w, end);
  assert_int_equal(kl_wal_read(w, r, 8, 1 << 20), 1);
  check_rec(&r[0], 77, 33);
  kl_wal_get_stats(w, &st);
  assert_int_equal(st.corrupt_records, 1);
  kl_wal_close(w);
}

static void test_short_tail_header(void **state) {
  fixture *f = *state;
  kl_wal_opts o = opts_for(f);
  kl_wal *w = open_ok(&o);
  uint64_t end;
  for (uint32_t i = 0; i < 3; i++)
    assert_int_equal(append1(w, i, 10, &end), 0);
  kl_wal_close(w);
  char seg[256];
  last_segment(f->dir, seg, sizeof(seg));
  assert_int_equal(truncate(seg, (off_t)(end - 20)), 0); /* only 10 bytes of the last header */
  w = open_ok(&o);
  kl_wal_stats st;
  kl_wal_get_stats(w, &st);
  assert_int_equal(st.written, 2 * (HDR + 10));
  assert_int_equal(st.corrupt_records, 1);
  assert_int_equal(st.corrupt_bytes, 10);
  kl_wal_close(w);
}

static void test_corrupt_middle(void **state) {
  fixture *f = *state;
  kl_wal_opts o = opts_for(f);
  o.segment_bytes = 1000;
  kl_wal *w = open_ok(&o);
  uint64_t end;
  enum { N = 30, L = 100 };
  for (uint32_t i = 0; i < N; i++)
    assert_int_equal(append1(w, i, L, &end), 0);
  kl_wal_close(w);
  /* Records 0..7 are in the first segment (8 * 120 = 960): damage the payloads of record 3
   * and of record 7 (its region ends with the segment), and in the newest segment record 26's
   * length field. */
  char seg0[256];
  snprintf(seg0, sizeof(seg0), "%s/%020d.log", f->dir, 0);
  flip_byte(seg0, 3 * (HDR + L) + HDR + 50);
  flip_byte(seg0, 7 * (HDR + L) + HDR + 99);
  char segn[256];
  last_segment(f->dir, segn, sizeof(segn));
  uint64_t nbase = 24 * (HDR + L); /* records 24.. are in the last segment */
  assert_true(strstr(segn, "00000000000000002880.log") != NULL);
  flip_byte(segn, (off_t)(26 * (HDR + L) - nbase + 5));

  w = open_ok(&o);
  kl_wal_stats st;
  kl_wal_get_stats(w, &st);
  assert_int_equal(st.written, end); /* a bad record followed by good ones is kept */
  assert_int_equal(st.corrupt_records, 0);
  static kl_wal_rec r[N];
  static uint8_t copy[N * L];
  size_t n = read_all(w, r, N, copy, sizeof(copy));
  assert_int_equal(n, N - 3);
  uint32_t want = 0;
  for (size_t k = 0; k < n; k++, want++) {
    if (want == 3 || want == 7 || want == 26) want++;
    check_rec(&r[k], want, L);
    assert_int_equal(r[k].pos, (uint64_t)want * (HDR + L));
  }
  kl_wal_get_stats(w, &st);
  assert_int_equal(st.corrupt_records, 3);
  assert_int_equal(st.corrupt_bytes, 3 * (HDR + L));
  /* Reading the same region again (rewind) does not count it twice. */
  kl_wal_rewind(w);
  assert_int_equal(read_all(w, r, N, copy, sizeof(copy)), N - 3);
  kl_wal_get_stats(w, &st);
  assert_int_equal(st.corrupt_records, 3);
  kl_wal_close(w);
}

static void test_corrupt_at_durable_edge(void **state) {
  fixture *f = *state;
  kl_wal_opts o = opts_for(f);
  kl_wal *w = open_ok(&o);
  uint64_t end;
  for (uint32_t i = 0; i < 3; i++)
    assert_int_equal(append1(w, i, 40, &end), 0);
  wait_durable(w, end);
  char seg[256];
  last_segment(f->dir, seg, sizeof(seg));
  flip_byte(seg, 2 * (HDR + 40) + HDR + 1); /* the last durable record */
  kl_wal_rec r[8];
  assert_int_equal(kl_wal_read(w, r, 8, 1 << 20), 2);
  /* No valid frame after it yet: wait, without spinning or counting. */
  assert_int_equal(kl_wal_read(w, r, 8, 1 << 20), 0);
  assert_int_equal(kl_wal_read(w, r, 8, 1 << 20), 0);
  assert_int_equal(append1(w, 3, 40, &end), 0);
  wait_durable(w, end);
  assert_int_equal(kl_wal_read(w, r, 8, 1 << 20), 1);
  check_rec(&r[0], 3, 40);
  kl_wal_stats st;
  kl_wal_get_stats(w, &st);
  assert_int_equal(st.corrupt_records, 1);
  assert_int_equal(st.corrupt_bytes, HDR + 40);
  kl_wal_close(w);
}

static void test_committed_file_damaged(void **state) {
  fixture *f = *state;
  kl_wal_opts o = opts_for(f);
  kl_wal *w = open_ok(&o);
  uint64_t end;
  for (uint32_t i = 0; i < 4; i++)
    assert_int_equal(append1(w, i, 20, &end), 0);
  wait_durable(w, end);
  kl_wal_rec r[8];
  assert_int_equal(kl_wal_read(w, r, 2, 1 << 20), 2);
  kl_wal_commit(w, r[1].next, 2);
  kl_wal_close(w);
  char p[256];
  snprintf(p, sizeof(p), "%s/committed", f->dir);
  flip_byte(p, 6);
  /* Damaged: start from the oldest segment (at least once). */
  w = open_ok(&o);
  kl_wal_stats st;
  kl_wal_get_stats(w, &st);
  assert_int_equal(st.committed, 0);
  assert_int_equal(st.records_pending, 4);
  assert_int_equal(kl_wal_read(w, r, 8, 1 << 20), 4);
  kl_wal_close(w);
}

/* ---- limits ------------------------------------------------------------------------------- */

static void test_enospc(void **state) {
  fixture *f = *state;
  kl_wal_opts o = opts_for(f);
  o.segment_bytes = 1000;
  o.max_bytes = 3000;
  kl_wal *w = open_ok(&o);
  uint64_t end = 0;
  uint32_t i = 0;
  int rc;
  while ((rc = append1(w, i, 100, &end)) == 0)
    i++;
  assert_int_equal(rc, -ENOSPC);
  assert_int_equal(i, 3000 / (HDR + 100));
  kl_wal_stats st;
  kl_wal_get_stats(w, &st);
  assert_int_equal(st.written, end);
  assert_true(st.bytes <= 3000);
  /* Commit half: the segments before it go and there is room again. */
  wait_durable(w, end);
  kl_wal_rec r[32];
  size_t n = kl_wal_read(w, r, 12, 1 << 20);
  assert_int_equal(n, 12);
  kl_wal_commit(w, r[11].next, 12);
  kl_wal_get_stats(w, &st);
  assert_true(st.bytes < 3000 - 2 * (HDR + 100));
  assert_int_equal(append1(w, i, 100, &end), 0);
  kl_wal_close(w);
}

static void test_enospc_single_segment(void **state) {
  fixture *f = *state;
  kl_wal_opts o = opts_for(f);
  o.segment_bytes = 1 << 20; /* never fills: the log is capped first */
  o.max_bytes = 1000;
  kl_wal *w = open_ok(&o);
  uint64_t end = 0;
  uint32_t i = 0;
  while (append1(w, i, 100, &end) == 0)
    i++;
  assert_int_equal(i, 1000 / (HDR + 100));
  wait_durable(w, end);
  kl_wal_rec r[16];
  size_t n = kl_wal_read(w, r, 16, 1 << 20);
  assert_int_equal(n, i);
  kl_wal_commit(w, r[n - 1].next, n);
  /* All delivered: the full active segment is replaced instead of blocking forever. */
  for (int tries = 0; tries < 1000; tries++) {
    int rc = append1(w, i, 100, &end);
    if (rc == 0) break;
    assert_int_equal(rc, -ENOSPC);
    sleep_ms(1);
  }
  wait_durable(w, end);
  n = kl_wal_read(w, r, 16, 1 << 20);
  assert_int_equal(n, 1);
  check_rec(&r[0], i, 100);
  kl_wal_stats st;
  kl_wal_get_stats(w, &st);
  assert_int_equal(st.bytes, HDR + 100);
  kl_wal_close(w);
}

static void test_emsgsize(void **state) {
  fixture *f = *state;
  kl_wal_opts o = opts_for(f);
  o.record_max = 100;
  kl_wal *w = open_ok(&o);
  uint64_t end = 0;
  assert_int_equal(append1(w, 0, 101, &end), -EMSGSIZE);
  assert_int_equal(append1(w, 0, 100, &end), 0);
  /* Two iovecs of 60 make one record of 120. */
  uint8_t a[60] = {0}, b[60] = {0};
  struct iovec v[3] = {{a, 10}, {a, 60}, {b, 60}};
  uint32_t ri[3] = {0, 1, 3};
  uint64_t e2 = 0;
  assert_int_equal(kl_wal_append(w, v, ri, 2, &e2), -EMSGSIZE);
  kl_wal_stats st;
  kl_wal_get_stats(w, &st);
  assert_int_equal(st.written, end); /* nothing of the refused batch was written */
  kl_wal_close(w);
}

static void test_bad_options(void **state) {
  fixture *f = *state;
  kl_wal_opts o = opts_for(f);
  o.segment_bytes = 0;
  char err[128] = "";
  assert_null(kl_wal_open(&o, err, sizeof(err)));
  assert_true(err[0] != '\0');
  o = opts_for(f);
  char sub[128];
  snprintf(sub, sizeof(sub), "%s/a/b", f->dir);
  o.dir = sub;
  kl_wal *w = open_ok(&o); /* created with its parents */
  kl_wal_close(w);
  char seg[256];
  snprintf(seg, sizeof(seg), "%s/%020d.log", sub, 0);
  assert_int_equal(unlink(seg), 0);
  assert_int_equal(rmdir(sub), 0);
  snprintf(sub, sizeof(sub), "%s/a", f->dir);
  assert_int_equal(rmdir(sub), 0);
}

/* ---- concurrency -------------------------------------------------------------------------- */

enum { THREADS = 4, PER_THREAD = 400 };

typedef struct app_arg {
  kl_wal *w;
  uint32_t id;
  uint64_t end;
} app_arg;

static void *appender(void *p) {
  app_arg *a = p;
  uint32_t seq = 0;
  while (seq < PER_THREAD) {
    uint32_t n = 1 + seq % 3;
    if (seq + n > PER_THREAD) n = PER_THREAD - seq;
    uint32_t recs[3][3];
    struct iovec v[3];
    uint32_t ri[4];
    for (uint32_t k = 0; k < n; k++) {
      recs[k][0] = a->id;
      recs[k][1] = seq + k;
      recs[k][2] = ~(seq + k);
      v[k].iov_base = recs[k];
      v[k].iov_len = sizeof(recs[k]);
      ri[k] = k;
    }
    ri[n] = n;
    uint64_t end;
    if (kl_wal_append(a->w, v, ri, n, &end) != 0) abort();
    if (end > a->end) a->end = end;
    seq += n;
  }
  return NULL;
}

static void test_concurrent_appenders(void **state) {
  fixture *f = *state;
  kl_wal_opts o = opts_for(f);
  o.segment_bytes = 4096;
  kl_wal *w = open_ok(&o);
  pthread_t t[THREADS];
  app_arg a[THREADS];
  for (uint32_t i = 0; i < THREADS; i++) {
    a[i].w = w;
    a[i].id = i;
    a[i].end = 0;
    assert_int_equal(pthread_create(&t[i], NULL, appender, &a[i]), 0);
  }
  /* The reader runs meanwhile, committing as it goes. */
  uint32_t next[THREADS] = {0};
  size_t total = 0;
  uint64_t last_next = 0;
  for (int idle = 0; total < THREADS * PER_THREAD && idle < 20000;) {
    kl_wal_rec r[32];
    size_t n = kl_wal_read(w, r, 32, 1 << 16);
    if (!n) {
      idle++;
      sleep_ms(1);
      continue;
    }
    for (size_t k = 0; k < n; k++) {
      uint32_t v[3];
      assert_int_equal(r[k].len, sizeof(v));
      assert_int_equal(r[k].pos, last_next);
      last_next = r[k].next;
      memcpy(v, r[k].data, sizeof(v));
      assert_true(v[0] < THREADS);
      assert_int_equal(v[1], next[v[0]]);
      assert_int_equal(v[2], ~v[1]);
      next[v[0]]++;
    }
    total += n;
    kl_wal_commit(w, r[n - 1].next, n);
  }
  for (uint32_t i = 0; i < THREADS; i++)
    assert_int_equal(pthread_join(t[i], NULL), 0);
  assert_int_equal(total, THREADS * PER_THREAD);
  for (uint32_t i = 0; i < THREADS; i++)
    assert_int_equal(next[i], PER_THREAD);
  kl_wal_stats st;
  kl_wal_get_stats(w, &st);
  assert_int_equal(st.records_pending, 0);
  assert_int_equal(st.committed, st.written);
  assert_int_equal(st.segments, 1);
  kl_wal_close(w);
}

static void test_rewind(void **state) {
  fixture *f = *state;
  kl_wal_opts o = opts_for(f);
  o.segment_bytes = 200;
  kl_wal *w = open_ok(&o);
  uint64_t end;
  for (uint32_t i = 0; i < 10; i++)
    assert_int_equal(append1(w, i, 30, &end), 0);
  wait_durable(w, end);
  kl_wal_rec r[16];
  assert_int_equal(kl_wal_read(w, r, 3, 1 << 20), 3);
  kl_wal_commit(w, r[2].next, 3);
  assert_int_equal(kl_wal_read(w, r, 4, 1 << 20), 4);
  check_rec(&r[3], 6, 30);
  /* The producer was rebuilt: everything after the commit again. */
  kl_wal_rewind(w);
  assert_int_equal(kl_wal_read(w, r, 16, 1 << 20), 7);
  for (uint32_t i = 0; i < 7; i++)
    check_rec(&r[i], 3 + i, 30);
  kl_wal_close(w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_crc32c_vectors),
      cmocka_unit_test_setup_teardown(test_round_trip_segments, setup, teardown),
      cmocka_unit_test_setup_teardown(test_many_iovecs, setup, teardown),
      cmocka_unit_test_setup_teardown(test_durable_group_commit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_durable_periodic, setup, teardown),
      cmocka_unit_test_setup_teardown(test_read_only_durable, setup, teardown),
      cmocka_unit_test_setup_teardown(test_commit_deletes_and_persists, setup, teardown),
      cmocka_unit_test_setup_teardown(test_reopen_resumes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_crash_replays_from_commit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_torn_tail, setup, teardown),
      cmocka_unit_test_setup_teardown(test_short_tail_header, setup, teardown),
      cmocka_unit_test_setup_teardown(test_corrupt_middle, setup, teardown),
      cmocka_unit_test_setup_teardown(test_corrupt_at_durable_edge, setup, teardown),
      cmocka_unit_test_setup_teardown(test_committed_file_damaged, setup, teardown),
      cmocka_unit_test_setup_teardown(test_enospc, setup, teardown),
      cmocka_unit_test_setup_teardown(test_enospc_single_segment, setup, teardown),
      cmocka_unit_test_setup_teardown(test_emsgsize, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_options, setup, teardown),
      cmocka_unit_test_setup_teardown(test_concurrent_appenders, setup, teardown),
      cmocka_unit_test_setup_teardown(test_rewind, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
