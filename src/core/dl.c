/* dl.c - shared libraries loaded on first use (dlopen): the loader they share. */
#include "core/dl.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

static pthread_mutex_t load_mu = PTHREAD_MUTEX_INITIALIZER; /* first loads, one at a time */

static int fill(kl_dl_lib *lib) {
  void *h = lib->open();
  if (!h) {
    const char *why = dlerror();
    snprintf(lib->err, sizeof lib->err, "cannot load %s (install %s): %s", lib->soname,
             lib->package, why ? why : "?");
    return -ENOENT;
  }
  for (size_t i = 0; i < lib->n; i++) {
    void *f = dlsym(h, lib->names[i]);
    if (!f) {
      snprintf(lib->err, sizeof lib->err, "%s lacks %s", lib->soname, lib->names[i]);
      return -ENOENT;
    }
    memcpy((char *)lib->table + i * sizeof f, &f, sizeof f);
  }
  return 1;
}

int kl_dl_load(kl_dl_lib *lib, char *err, size_t errlen) {
  int st = atomic_load_explicit(&lib->state, memory_order_acquire);
  if (st == 0) {
    pthread_mutex_lock(&load_mu);
    st = atomic_load_explicit(&lib->state, memory_order_relaxed);
    if (st == 0) {
      st = fill(lib);
      atomic_store_explicit(&lib->state, st, memory_order_release);
    }
    pthread_mutex_unlock(&load_mu);
  }
  if (st < 0 && err && errlen) snprintf(err, errlen, "%s", lib->err);
  return st < 0 ? st : 0;
}
