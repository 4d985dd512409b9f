/* dl.h - shared libraries loaded on first use (dlopen): the loader they share. */
#ifndef KEEL_CORE_DL_H
#define KEEL_CORE_DL_H

#include <stdatomic.h>
#include <stddef.h>

/*
 * A library keel maps only when a feature needs it is called through a table of function
 * pointers, one per function, typed with __typeof__ and listed by an X-macro (zl.h, yml.h
 * show the shape). Its module describes it with a kl_dl_lib whose `open` calls dlopen() with
 * the soname as a literal (scripts/sbom.py and deploy/rootfs.sh find the libraries keel loads
 * by those literals) and calls kl_dl_load() before using the table.
 */

/** One library loaded on demand; a static object, zero-initialised apart from the first six. */
typedef struct kl_dl_lib {
  const char *soname;       /**< "libz.so.1" (for messages) */
  const char *package;      /**< the Debian package that has it (for messages) */
  void *(*open)(void);      /**< dlopen(soname, RTLD_NOW | RTLD_LOCAL) */
  const char *const *names; /**< the functions, in the table's order */
  size_t n;                 /**< how many */
  void *table;              /**< a struct of n function pointers, filled by kl_dl_load */
  _Atomic int state;        /**< 0 not tried yet, 1 loaded, < 0 failed (an errno) */
  char err[256];            /**< why it failed */
} kl_dl_lib;

/**
 * Loads the library and fills its table the first time; later calls only read the state.
 * Thread-safe. 0, or -ENOENT with "cannot load SONAME (install PACKAGE): why" or
 * "SONAME lacks NAME" in err (NULL allowed); after a failure the table must not be used.
 */
int kl_dl_load(kl_dl_lib *lib, char *err, size_t errlen);

#endif
