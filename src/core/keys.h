/* keys.h - API keys from files, kept only as SHA-256 digests and compared in constant time. */
#ifndef KEEL_CORE_KEYS_H
#define KEEL_CORE_KEYS_H

#include <stddef.h>

/*
 * A keyring is loaded from a file holding one key per line, or "TENANT KEY" (blank lines and
 * lines starting with '#' are skipped, surrounding spaces trimmed), or from a directory whose
 * regular files (named after their tenant)
 * each hold keys that way, as Kubernetes mounts a Secret (names starting with '.' are
 * skipped: the ..data links). Only the SHA-256 of each key is kept; the file bytes are wiped
 * after reading. A check hashes the presented key and compares it with every digest without
 * stopping early, so its time does not depend on which key (if any) matched. Immutable after
 * loading: any thread may check.
 */

typedef struct kl_keyring kl_keyring;

/** Most keys in a ring, and the longest key. */
#define KL_KEYS_MAX 4096
#define KL_KEY_LEN_MAX 512

/** Loads `path`; NULL with a message in err (unreadable, no keys, too many, too long). */
kl_keyring *kl_keyring_load(const char *path, char *err, size_t errlen);

/** How many keys were loaded. */
size_t kl_keyring_count(const kl_keyring *k);

/** 1 when `key` (len bytes) is one of the ring's keys, else 0. */
int kl_keyring_check(const kl_keyring *k, const char *key, size_t len);

/**
 * The tenant of `key`, or NULL when it is not one of the ring's keys (constant time, like
 * kl_keyring_check). A line "TENANT KEY" names its tenant; in a directory, a file's name is
 * the tenant of its keys (a Kubernetes Secret's key names); otherwise "default".
 */
const char *kl_keyring_tenant(const kl_keyring *k, const char *key, size_t len);

/**
 * The key a client presented in HTTP headers or gRPC metadata: the token of
 * "Authorization: Bearer <token>" if given, else the value of "X-API-Key". Returns 1 with
 * key and len set, or 0 when neither is there.
 */
int kl_key_from_headers(const char *authorization, size_t alen, const char *x_api_key,
                        size_t xlen, const char **key, size_t *len);

/** Frees (and wipes) the ring. NULL ok. */
void kl_keyring_free(kl_keyring *k);

#endif
