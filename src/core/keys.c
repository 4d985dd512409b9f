/* keys.c - API keys from files, kept only as SHA-256 digests and compared in constant time. */
#include "core/keys.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <dlfcn.h>
#include <openssl/evp.h>

#include "core/dl.h"

#define DIGEST 32
#define FILE_MAX (4u << 20) /* a key file larger than this is a mistake */

#define TENANT_LEN 64

struct kl_keyring {
  size_t n;
  unsigned char (*d)[DIGEST];
  uint16_t *tenant;            /* per key: index into names */
  char (*names)[TENANT_LEN];   /* tenant names; [0] is "default" */
  size_t ntenants;
};

/* The index of tenant `name` (`len` bytes), added if new: >= 0, or -1 when over the cap. */
static int tenant_of(kl_keyring *k, const char *name, size_t len) {
  if (len == 0 || len >= TENANT_LEN) return len == 0 ? 0 : -1;
  for (size_t i = 0; i < k->ntenants; i++)
    if (strlen(k->names[i]) == len && memcmp(k->names[i], name, len) == 0) return (int)i;
  if (k->ntenants == KL_KEYS_MAX) return -1;
  memcpy(k->names[k->ntenants], name, len);
  k->names[k->ntenants][len] = '\0';
  return (int)k->ntenants++;
}

/*
 * OpenSSL's libcrypto is opened only when a keyring is loaded: mapping it costs about 1.5 MB
 * of resident memory, most of keel's idle footprint, and only API keys need it here.
 * Process-wide on purpose: a library is mapped once per process.
 */
static struct {
  __typeof__(&EVP_Digest) digest;
  __typeof__(&EVP_sha256) sha256;
} crypto;
static const char *const crypto_names[] = {"EVP_Digest", "EVP_sha256"}; /* crypto's order */

static void *crypto_open(void) { return dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL); }

static kl_dl_lib crypto_lib = {.soname = "libcrypto.so.3", .package = "libssl3",
                               .open = crypto_open, .names = crypto_names, .n = 2,
                               .table = &crypto};

static int sha256(const void *p, size_t n, unsigned char out[DIGEST]) {
  unsigned int len = 0;
  if (kl_dl_load(&crypto_lib, NULL, 0)) return -EIO;
  return crypto.digest(p, n, out, &len, crypto.sha256(), NULL) == 1 && len == DIGEST ? 0 : -EIO;
}

/* Equal or not, in a time that depends only on n. */
static int same(const unsigned char *a, const unsigned char *b, size_t n) {
  unsigned char d = 0;
  for (size_t i = 0; i < n; i++) d |= (unsigned char)(a[i] ^ b[i]);
  return d == 0;
}

/* Adds every key of one file's bytes; `tenant` is the file's (a directory's file name). */
static int add_lines(kl_keyring *k, char *buf, size_t n, const char *path, int tenant,
                     char *err, size_t errlen) {
  size_t i = 0, line = 0;
  while (i < n) {
    size_t e = i;
    while (e < n && buf[e] != '\n') e++;
    line++;
    size_t a = i, b = e;
    while (a < b && (buf[a] == ' ' || buf[a] == '\t' || buf[a] == '\r')) a++;
    while (b > a && (buf[b - 1] == ' ' || buf[b - 1] == '\t' || buf[b - 1] == '\r')) b--;
    i = e + 1;
    if (a == b || buf[a] == '#') continue;
    /* "TENANT KEY": a tenant name, blanks, the key; a line without blanks is just a key. */
    int t = tenant;
    size_t sp = a;
    while (sp < b && buf[sp] != ' ' && buf[sp] != '\t') sp++;
    if (sp < b) {
      t = tenant_of(k, buf + a, sp - a);
      if (t < 0) {
        snprintf(err, errlen, "%s:%zu: tenant name longer than %d bytes", path, line,
                 TENANT_LEN - 1);
        return -EINVAL;
      }
      a = sp;
      while (a < b && (buf[a] == ' ' || buf[a] == '\t')) a++;
    }
    if (b - a > KL_KEY_LEN_MAX) {
      snprintf(err, errlen, "%s:%zu: key longer than %d bytes", path, line, KL_KEY_LEN_MAX);
      return -EINVAL;
    }
    if (k->n == KL_KEYS_MAX) {
      snprintf(err, errlen, "%s: more than %d keys", path, KL_KEYS_MAX);
      return -EINVAL;
    }
    if (sha256(buf + a, b - a, k->d[k->n]) != 0) {
      snprintf(err, errlen, "%s: cannot hash", path);
      return -EIO;
    }
    k->tenant[k->n] = (uint16_t)t;
    k->n++;
  }
  return 0;
}

static int load_file(kl_keyring *k, const char *path, int tenant, char *err, size_t errlen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return -errno;
  }
  struct stat st;
  int rc = 0;
  char *buf = NULL;
  if (fstat(fd, &st) != 0 || st.st_size > (off_t)FILE_MAX) {
    snprintf(err, errlen, "%s: not a readable key file of at most 4 MiB", path);
    rc = -EINVAL;
    goto out;
  }
  buf = malloc((size_t)st.st_size + 1);
  if (!buf) {
    rc = -ENOMEM;
    snprintf(err, errlen, "out of memory");
    goto out;
  }
  size_t got = 0;
  while (got < (size_t)st.st_size) {
    ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  rc = add_lines(k, buf, got, path, tenant, err, errlen);
  explicit_bzero(buf, (size_t)st.st_size + 1);
out:
  free(buf);
  close(fd);
  return rc;
}

kl_keyring *kl_keyring_load(const char *path, char *err, size_t errlen) {
  if (kl_dl_load(&crypto_lib, err, errlen)) return NULL;
  kl_keyring *k = calloc(1, sizeof(*k));
  if (k) {
    k->d = calloc(KL_KEYS_MAX, DIGEST);
    k->tenant = calloc(KL_KEYS_MAX, sizeof(*k->tenant));
    k->names = calloc(KL_KEYS_MAX, TENANT_LEN);
  }
  if (!k || !k->d || !k->tenant || !k->names) {
    snprintf(err, errlen, "out of memory");
    kl_keyring_free(k);
    return NULL;
  }
  memcpy(k->names[0], "default", 8);
  k->ntenants = 1;
  struct stat st;
  int rc = 0;
  if (stat(path, &st) != 0) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    rc = -errno;
  } else if (S_ISDIR(st.st_mode)) {
    DIR *d = opendir(path);
    struct dirent *de;
    while (d && rc == 0 && (de = readdir(d)) != NULL) {
      if (de->d_name[0] == '.') continue; /* ., .., and a Secret's ..data / ..timestamp */
      char p[4096];
      snprintf(p, sizeof p, "%s/%s", path, de->d_name);
      struct stat fs;
      if (stat(p, &fs) != 0 || !S_ISREG(fs.st_mode)) continue;
      int t = tenant_of(k, de->d_name, strlen(de->d_name)); /* a Secret's key names the tenant */
      rc = t < 0 ? (snprintf(err, errlen, "%s: file name too long for a tenant", p), -EINVAL)
                 : load_file(k, p, t, err, errlen);
    }
    if (d) closedir(d);
  } else {
    rc = load_file(k, path, 0, err, errlen);
  }
  if (rc == 0 && k->n == 0) {
    snprintf(err, errlen, "%s: no keys", path);
    rc = -EINVAL;
  }
  if (rc) {
    kl_keyring_free(k);
    return NULL;
  }
  return k;
}

size_t kl_keyring_count(const kl_keyring *k) { return k ? k->n : 0; }

int kl_keyring_check(const kl_keyring *k, const char *key, size_t len) {
  return kl_keyring_tenant(k, key, len) != NULL;
}

const char *kl_keyring_tenant(const kl_keyring *k, const char *key, size_t len) {
  unsigned char d[DIGEST];
  if (len == 0 || len > KL_KEY_LEN_MAX || sha256(key, len, d) != 0) return NULL;
  size_t found = 0, idx = 0;
  for (size_t i = 0; i < k->n; i++) { /* every digest is compared: no early exit */
    size_t m = (size_t)0 - (size_t)same(d, k->d[i], DIGEST); /* all ones on a match */
    idx |= m & k->tenant[i];
    found |= m & 1;
  }
  return found ? k->names[idx] : NULL;
}

int kl_key_from_headers(const char *authorization, size_t alen, const char *x_api_key,
                        size_t xlen, const char **key, size_t *len) {
  if (authorization && alen > 7 && strncasecmp(authorization, "Bearer ", 7) == 0) {
    const char *p = authorization + 7, *e = authorization + alen;
    while (p < e && *p == ' ') p++;
    while (e > p && e[-1] == ' ') e--;
    *key = p;
    *len = (size_t)(e - p);
    return *len > 0;
  }
  if (x_api_key && xlen > 0) {
    *key = x_api_key;
    *len = xlen;
    return 1;
  }
  return 0;
}

void kl_keyring_free(kl_keyring *k) {
  if (!k) return;
  if (k->d) explicit_bzero(k->d, (size_t)KL_KEYS_MAX * DIGEST);
  free(k->d);
  free(k->tenant);
  free(k->names);
  free(k);
}
