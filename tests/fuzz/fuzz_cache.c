/* fuzz_cache.c - libFuzzer harness: Cache-Control and date parsers, and storing arbitrary response header blocks. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/cache.h"

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_cache: check failed at line %d: %s\n", __LINE__, #cond);               \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static kl_cache *cache;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *s = (const char *)data;
  kl_cache_cc cc;
  kl_cache_cc_init(&cc);
  kl_cache_cc_parse(&cc, s, size);
  CHECK(cc.max_age >= -1 && cc.max_age <= INT64_C(2147483648));
  CHECK(cc.s_maxage >= -1 && cc.s_maxage <= INT64_C(2147483648));
  int64_t t = kl_cache_date_parse(s, size);
  CHECK(t >= -1 && t < INT64_C(253402300800)); /* before year 10000 */

  if (!cache) {
    char err[128];
    kl_cache_conf conf = {.max_bytes = 16 * 4096, .max_object = 2048};
    cache = kl_cache_new(&conf, err, sizeof err);
    CHECK(cache != NULL);
  }
  /* the input is the response header block. The request varies on X-A (and whatever the input
   * names) with a value from the input's first bytes; its no-cache makes every lookup a leader
   * (the new response replaces the old), and the same request without it must then hit. */
  char hb[96];
  size_t hl = size < 40 ? size : 40;
  memcpy(hb, "X-A:", 4);
  memcpy(hb + 4, s, hl);
  memcpy(hb + 4 + hl, "Cache-Control:no-cache", 22);
  kl_header h[2] = {{0, 3, 4, (uint32_t)hl}, {(uint32_t)(4 + hl), 13, (uint32_t)(4 + hl + 14), 8}};
  kl_cache_req req = {"GET", 3, "h", 1, "/", 1, "", 0, hb, h, 2};
  kl_cache_entry *e;
  kl_cache_ticket *tk;
  int rc = kl_cache_lookup(cache, &req, NULL, 0, &e, &tk);
  CHECK(rc == KL_CACHE_LEADER);
  req.nhdrs = 1;
  if (rc == KL_CACHE_LEADER) {
    kl_cache_resp resp = {200, s, size, "body", 4};
    rc = kl_cache_fill(cache, tk, &req, &resp, 0);
    CHECK(rc == 0 || rc == 1);
    kl_cache_stats st;
    kl_cache_stats_get(cache, &st);
    CHECK(st.bytes <= 16 * 4096);
    if (rc == 1 && kl_cache_lookup(cache, &req, NULL, 0, &e, &tk) == KL_CACHE_HIT) {
      kl_cache_view v;
      kl_cache_entry_view(e, 0, &v);
      CHECK(v.headers_len <= size && v.body_len == 4);
      kl_cache_entry_release(e);
    }
  }
  return 0;
}
