/* fuzz_otlp.c - libFuzzer harness: the OTLP splitter stays in bounds, every message it emits splits
 * back into exactly itself, and batch mode carries the same records as one message per record. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/otlp.h"

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_otlp: check failed at line %d: %s\n", __LINE__, #cond);                \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* What a split emitted: the messages back to back, with their lengths and keys. */
typedef struct out {
  uint8_t *buf;
  size_t n, cap;
  size_t count, *len;
  uint8_t (*key)[KL_REC_KEY_MAX + 1]; /* key bytes, then its length in the last byte */
  size_t lcap;
} out;

static int collect(void *arg, const kl_otlp_record *rec) {
  out *o = arg;
  CHECK(rec->niov >= 1 && rec->len > 0 && rec->key_len <= KL_REC_KEY_MAX);
  if (o->n + rec->len > o->cap) {
    o->cap = 2 * (o->n + rec->len);
    o->buf = realloc(o->buf, o->cap);
    CHECK(o->buf);
  }
  if (o->count == o->lcap) {
    o->lcap = o->lcap ? 2 * o->lcap : 16;
    o->len = realloc(o->len, o->lcap * sizeof *o->len);
    o->key = realloc(o->key, o->lcap * sizeof *o->key);
    CHECK(o->len && o->key);
  }
  size_t total = 0;
  for (size_t i = 0; i < rec->niov; i++) {
    CHECK(rec->iov[i].iov_len > 0);
    memcpy(o->buf + o->n + total, rec->iov[i].iov_base, rec->iov[i].iov_len);
    total += rec->iov[i].iov_len;
  }
  CHECK(total == rec->len);
  o->n += total;
  o->len[o->count] = total;
  memset(o->key[o->count], 0, sizeof o->key[0]);
  if (rec->key_len) memcpy(o->key[o->count], rec->key, rec->key_len);
  o->key[o->count][KL_REC_KEY_MAX] = (uint8_t)rec->key_len;
  o->count++;
  return 0;
}

static void reset(out *o) {
  o->n = o->count = 0;
}

static int split(kl_signal sig, const uint8_t *p, size_t n, const kl_otlp_opts *opts, out *o,
                 kl_otlp_result *res) {
  reset(o);
  int rc = kl_otlp_split(sig, p, n, opts, collect, o, res);
  CHECK(rc == 0 || rc == -EBADMSG);
  CHECK(res->error_offset <= n);
  if (rc) CHECK(o->count == 0 && res->accepted == 0 && res->error[0]);
  if (!rc && !opts->batch) CHECK(res->accepted == o->count);
  if (res->rejected) CHECK(res->error[0]);
  return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static out single, batch, again; /* grown as needed, kept across runs */
  /* a message limit from the first byte: from tight (most records alone) to none */
  size_t limit = size ? (data[0] == 0xff ? 0 : 48 + (size_t)data[0] * 8) : 0;
  kl_otlp_opts o1 = {"service.name", 12, 0, limit};
  kl_otlp_opts ob = {"service.name", 12, 1, limit};
  for (int s = 0; s < KL_SIG_COUNT; s++) {
    kl_signal sig = (kl_signal)s;
    kl_otlp_result r1, rb, ra;
    int rc = split(sig, data, size, &o1, &single, &r1);

    /* each single message is a fixed point: one record, the same bytes, the same key */
    size_t at = 0;
    for (size_t i = 0; i < single.count; i++) {
      CHECK(!limit || single.len[i] <= limit);
      CHECK(split(sig, single.buf + at, single.len[i], &o1, &again, &ra) == 0);
      CHECK(again.count == 1 && ra.rejected == 0 && again.len[0] == single.len[i]);
      CHECK(memcmp(again.buf, single.buf + at, single.len[i]) == 0);
      CHECK(memcmp(again.key[0], single.key[i], sizeof again.key[0]) == 0);
      at += single.len[i];
    }

    /* batch mode: the same verdict, the same records, in messages within the limit */
    CHECK(split(sig, data, size, &ob, &batch, &rb) == rc);
    if (rc) continue;
    CHECK(rb.accepted == r1.accepted && rb.rejected == r1.rejected);
    size_t k = 0, kat = 0, bat = 0;
    for (size_t i = 0; i < batch.count; i++) {
      CHECK(!limit || batch.len[i] <= limit);
      CHECK(split(sig, batch.buf + bat, batch.len[i], &o1, &again, &ra) == 0);
      CHECK(ra.rejected == 0 && again.count >= 1);
      CHECK(memcmp(batch.key[i], again.key[0], sizeof batch.key[0]) == 0);
      size_t aat = 0;
      for (size_t j = 0; j < again.count; j++, k++) {
        CHECK(k < single.count && again.len[j] == single.len[k]);
        CHECK(memcmp(again.buf + aat, single.buf + kat, again.len[j]) == 0);
        CHECK(memcmp(again.key[j], single.key[k], sizeof again.key[0]) == 0);
        aat += again.len[j];
        kat += single.len[k];
      }
      bat += batch.len[i];
    }
    CHECK(k == single.count);
  }
  return 0;
}
