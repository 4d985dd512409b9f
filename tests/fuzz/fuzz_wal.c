/* fuzz_wal.c - libFuzzer harness: arbitrary segment files and commit records open, read and append
 * safely. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pipeline/wal.h"

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_wal: check failed at line %d: %s\n", __LINE__, #cond);                 \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

#define HDR 20u
#define RECORD_MAX 1024u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * Input: flags (u8) | split (u8) | [committed position (u64 LE) if flags & 1] | log bytes.
 * flags & 2: the log bytes make two segments, cut at split/256 of them; flags & 4: the second
 * segment's base leaves a gap of flags >> 4 bytes (the first file is "short"); flags & 8: the
 * first segment's base is 1000 rather than 0.
 */

static char g_dir[64];

typedef struct segf {
  uint64_t base;
  const uint8_t *p;
  size_t len;
} segf;

static uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

static void put_file(const char *name, const uint8_t *p, size_t len) {
  char path[128];
  snprintf(path, sizeof(path), "%s/%s", g_dir, name);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  CHECK(fd >= 0);
  CHECK(len == 0 || write(fd, p, len) == (ssize_t)len);
  close(fd);
}

static void put_segment(uint64_t base, const uint8_t *p, size_t len) {
  char name[32];
  snprintf(name, sizeof(name), "%020llu.log", (unsigned long long)base);
  put_file(name, p, len);
}

static void clean_dir(void) {
  char path[128];
  snprintf(path, sizeof(path), "%s/committed", g_dir);
  unlink(path);
  snprintf(path, sizeof(path), "%s/committed.tmp", g_dir);
  unlink(path);
}

static void remove_segments(const segf *s, size_t ns, uint64_t extra_base) {
  char path[128];
  for (size_t i = 0; i < ns; i++) {
    snprintf(path, sizeof(path), "%s/%020llu.log", g_dir, (unsigned long long)s[i].base);
    unlink(path);
  }
  snprintf(path, sizeof(path), "%s/%020llu.log", g_dir, (unsigned long long)extra_base);
  unlink(path);
}

/* The original bytes at a position, if a segment of the input holds [pos, pos + len). */
static const uint8_t *orig_at(const segf *s, size_t ns, uint64_t pos, uint64_t len) {
  for (size_t i = 0; i < ns; i++)
    if (pos >= s[i].base && pos - s[i].base + len <= s[i].len) return s[i].p + (pos - s[i].base);
  return NULL;
}

static void remove_dir(void) {
  rmdir(g_dir);
}

static void wait_durable(kl_wal *w, uint64_t pos) {
  for (long i = 0; i < 2000000 && kl_wal_durable(w) < pos; i++)
    sched_yield();
  CHECK(kl_wal_durable(w) >= pos);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!g_dir[0]) {
    const char *root = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(g_dir, sizeof(g_dir), "%s/keel-fuzz-wal-XXXXXX", root);
    CHECK(mkdtemp(g_dir) != NULL);
    atexit(remove_dir);
  }
  if (size < 2 || size > 1 << 16) return 0;
  uint8_t flags = data[0], split = data[1];
  data += 2;
  size -= 2;
  int have_commit = 0;
  uint64_t commit = 0;
  if ((flags & 1) && size >= 8) {
    have_commit = 1;
    commit = le64(data);
    data += 8;
    size -= 8;
  }
  segf s[2];
  size_t ns = 1;
  s[0].base = (flags & 8) ? 1000 : 0;
  s[0].p = data;
  s[0].len = size;
  if (flags & 2) {
    size_t cut = size * split / 256;
    s[0].len = cut;
    s[1].base = s[0].base + cut + ((flags & 4) ? (uint64_t)(flags >> 4) : 0);
    s[1].p = data + cut;
    s[1].len = size - cut;
    ns = 2;
  }
  for (size_t i = 0; i < ns; i++)
    put_segment(s[i].base, s[i].p, s[i].len);
  if (have_commit) {
    /* A well-formed commit record, so that the position itself is what is fuzzed. */
    uint8_t b[16];
    uint64_t total = s[ns - 1].base + s[ns - 1].len + 1;
    uint64_t pos = commit % (total + 16);
    uint32_t m = 0x3143574Bu;
    for (int i = 0; i < 4; i++)
      b[i] = (uint8_t)(m >> (8 * i));
    for (int i = 0; i < 8; i++)
      b[4 + i] = (uint8_t)(pos >> (8 * i));
    uint32_t c = kl_crc32c(0, b, 12);
    for (int i = 0; i < 4; i++)
      b[12 + i] = (uint8_t)(c >> (8 * i));
    put_file("committed", b, sizeof(b));
  }

  kl_wal_opts o;
  memset(&o, 0, sizeof(o));
  o.dir = g_dir;
  o.segment_bytes = 4096;
  o.max_bytes = 1 << 20;
  o.fsync_ms = 0;
  o.commit_ms = 0;
  o.record_max = RECORD_MAX;
  char err[256];
  kl_wal *w = kl_wal_open(&o, err, sizeof(err));
  if (!w) fprintf(stderr, "fuzz_wal: %s\n", err);
  CHECK(w != NULL);
  kl_wal_stats st0;
  kl_wal_get_stats(w, &st0);
  CHECK(st0.written <= s[ns - 1].base + s[ns - 1].len);
  CHECK(st0.durable == st0.written);
  CHECK(st0.committed <= st0.written);

  /* Read everything, in small calls. */
  uint64_t prev = st0.committed, nrec = 0;
  kl_wal_rec r[7];
  size_t k;
  while ((k = kl_wal_read(w, r, 7, 300)) > 0) {
    size_t paid = 0;
    for (size_t i = 0; i < k; i++) {
      CHECK(r[i].pos >= prev);
      CHECK(r[i].len <= RECORD_MAX);
      CHECK(r[i].next == r[i].pos + HDR + r[i].len);
      CHECK(r[i].next <= st0.written);
      const uint8_t *f = orig_at(s, ns, r[i].pos, HDR + (uint64_t)r[i].len);
      CHECK(f != NULL); /* a whole frame inside one input segment */
      CHECK(le32(f) == 0x314C574Bu && le32(f + 4) == r[i].len && le64(f + 12) == r[i].time_ns);
      uint32_t c = kl_crc32c(0, f + 4, 4);
      c = kl_crc32c(c, f + 12, 8);
      c = kl_crc32c(c, r[i].data, r[i].len);
      CHECK(c == le32(f + 8));
      CHECK(r[i].len == 0 || memcmp(r[i].data, f + HDR, r[i].len) == 0);
      CHECK(kl_crc32c_portable(0, r[i].data, r[i].len) == kl_crc32c(0, r[i].data, r[i].len));
      prev = r[i].next;
      paid += r[i].len;
    }
    CHECK(k == 1 || paid <= 300);
    nrec += k;
  }
  kl_wal_stats st;
  kl_wal_get_stats(w, &st);
  CHECK(st.corrupt_bytes >= st.corrupt_records);

  /* An append after whatever was there reads back, and a full commit empties the log. */
  uint8_t payload[40];
  memset(payload, 0xab, sizeof(payload));
  struct iovec v = {payload, sizeof(payload)};
  uint32_t ri[2] = {0, 1};
  uint64_t end = 0;
  CHECK(kl_wal_append(w, &v, ri, 1, &end) == 0);
  CHECK(end == st.written + HDR + sizeof(payload));
  wait_durable(w, end);
  k = kl_wal_read(w, r, 7, 300);
  CHECK(k == 1);
  CHECK(r[0].pos == st.written && r[0].len == sizeof(payload));
  CHECK(memcmp(r[0].data, payload, sizeof(payload)) == 0);
  kl_wal_commit(w, r[0].next, nrec + 1);
  kl_wal_get_stats(w, &st);
  CHECK(st.committed == end && st.records_pending == 0 && st.oldest_ns == 0);
  CHECK(st.segments >= 1);
  kl_wal_close(w);

  remove_segments(s, ns, st.written - st.bytes);
  clean_dir();
  return 0;
}
