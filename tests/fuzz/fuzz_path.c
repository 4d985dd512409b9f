/* fuzz_path.c - libFuzzer harness for the gateway's path normalisation (kl_gw_normalize). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/gw.h"

#define CHECK(c)                                                                               \
  do {                                                                                         \
    if (!(c)) {                                                                                \
      fprintf(stderr, "check failed: %s\n", #c);                                               \
      abort();                                                                                 \
    }                                                                                          \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 4096) return 0;
  char *in = malloc(size + 1), *out = malloc(size + 1), *again = malloc(size + 1);
  memcpy(in, data, size);
  const char *why = NULL;
  long n = kl_gw_normalize(in, size, out, &why);
  if (n < 0) {
    CHECK(why != NULL);
  } else {
    size_t m = (size_t)n;
    CHECK(m >= 1 && m <= size && out[0] == '/');
    /* Normalised: no empty, "." or ".." segment, no escape of an unreserved character. */
    for (size_t i = 0; i < m; i++) {
      if (out[i] == '/' && i + 1 < m) {
        CHECK(out[i + 1] != '/');
        CHECK(!(out[i + 1] == '.' && (i + 2 == m || out[i + 2] == '/')));
        CHECK(!(out[i + 1] == '.' && i + 2 < m && out[i + 2] == '.' &&
                (i + 3 == m || out[i + 3] == '/')));
      }
      if (out[i] == '%') CHECK(i + 2 < m);
    }
    /* Idempotent, also in place (as conn.c uses it). */
    memcpy(again, out, m);
    long n2 = kl_gw_normalize(again, m, again, &why);
    CHECK(n2 == n && memcmp(again, out, m) == 0);
  }
  free(in);
  free(out);
  free(again);
  return 0;
}
