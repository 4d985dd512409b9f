/* yml.c - libyaml, loaded on first use (dlopen): a keel without a config file never maps it. */
#define KL_YAML_IMPL
#include "config/yml.h"

#include <dlfcn.h>

#include "core/dl.h"

#define KL_YAML_NAME(f) #f,
static const char *const names[] = {KL_YAML_FUNCS(KL_YAML_NAME)};
#undef KL_YAML_NAME
static kl_yaml_table table;
_Static_assert(sizeof table == sizeof names / sizeof *names * sizeof(void *), "a pointer a name");

static void *open_lib(void) { return dlopen("libyaml-0.so.2", RTLD_NOW | RTLD_LOCAL); }

/* Process-wide on purpose: a shared library is mapped once per process whatever uses it. */
static kl_dl_lib lib = {.soname = "libyaml-0.so.2", .package = "libyaml-0-2", .open = open_lib,
                        .names = names, .n = sizeof names / sizeof *names, .table = &table};

int kl_yaml_load(char *err, size_t errlen) { return kl_dl_load(&lib, err, errlen); }

const kl_yaml_table *kl_yaml(void) { return &table; }
