/* rdk.c - librdkafka, loaded on first use (dlopen): a keel without Kafka never maps it. */
#define KL_RDK_IMPL
#include "pipeline/rdk.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>

/* Process-wide on purpose: a shared library is mapped once per process whatever uses it. */
static kl_rdk_table table;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static char load_err[256];
static int load_rc;

static void load(void) {
  void *h = dlopen("librdkafka.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    snprintf(load_err, sizeof load_err, "cannot load librdkafka.so.1 (install librdkafka1): %s",
             dlerror());
    load_rc = -ENOENT;
    return;
  }
#define KL_RDK_SYM(f)                                                                          \
  if (!(*(void **)(void *)&table.f = dlsym(h, #f))) {                                          \
    snprintf(load_err, sizeof load_err, "librdkafka.so.1 lacks %s", #f);                       \
    load_rc = -ENOENT;                                                                         \
    return;                                                                                    \
  }
  KL_RDK_FUNCS(KL_RDK_SYM)
#undef KL_RDK_SYM
}

int kl_rdk_load(char *err, size_t errlen) {
  pthread_once(&once, load);
  if (load_rc && err && errlen) snprintf(err, errlen, "%s", load_err);
  return load_rc;
}

const kl_rdk_table *kl_rdk(void) { return &table; }
