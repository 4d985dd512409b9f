/* route.c - the gateway's route table: path normalisation, first-match lookup, lifetime. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gateway/gw.h"
#include "core/keys.h"
#include "gateway/cache.h"
#include "gateway/jschema.h"
#include "gateway/proxy.h"
#include "gateway/ratelimit.h"
#include "http/stats.h"
#include "http/tls.h"

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int unreserved(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

long kl_gw_normalize(const char *path, size_t len, char *out, const char **why) {
  static const char hex[] = "0123456789ABCDEF";
  size_t o = 0;
  if (len == 0 || path[0] != '/') {
    *why = "the path must start with '/'";
    return -1;
  }
  for (size_t i = 0; i < len; i++) {
    char c = path[i];
    if (c == '%') {
      int hi = i + 2 < len ? hexval(path[i + 1]) : -1, lo = i + 2 < len ? hexval(path[i + 2]) : -1;
      if (hi < 0 || lo < 0) {
        *why = "malformed percent-encoding in the path";
        return -1;
      }
      unsigned char d = (unsigned char)(hi * 16 + lo);
      if (d == '/' || d == '\\' || d == 0) {
        *why = "an encoded '/', '\\' or NUL in the path is ambiguous";
        return -1;
      }
      i += 2;
      if (unreserved(d)) {
        c = (char)d;
      } else {
        out[o++] = '%';
        out[o++] = hex[d >> 4];
        out[o++] = hex[d & 15];
        continue;
      }
    } else if (c == '\\') {
      *why = "'\\' in the path is ambiguous";
      return -1;
    }
    if (c == '/' && o > 0 && out[o - 1] == '/') continue; /* repeated slashes */
    out[o++] = c;
    /* Dot segments end at the next '/' or the end: "/./" and "/../" are handled when the
     * segment is complete, below. */
    if (c == '/' || i + 1 == len) {
      size_t end = c == '/' ? o - 1 : o; /* the segment is out[start, end) */
      size_t start = end;
      while (start > 0 && out[start - 1] != '/') start--;
      size_t seg = end - start;
      if (seg == 1 && out[start] == '.') {
        o = start; /* "/./" -> "/" (keep the slash before the segment) */
      } else if (seg == 2 && out[start] == '.' && out[start + 1] == '.') {
        if (start <= 1) {
          *why = "'..' in the path goes above the root";
          return -1;
        }
        size_t prev = start - 1; /* the slash before "..": drop the segment before it */
        while (prev > 0 && out[prev - 1] != '/') prev--;
        o = prev;
      }
    }
  }
  if (o == 0) out[o++] = '/';
  return (long)o; /* not NUL-terminated: it may be written over the request in place */
}

static int host_match(const char *want, const char *host, size_t hlen) {
  /* The Host header may carry a port; matching ignores it. */
  const char *colon = memchr(host, ':', hlen);
  if (host[0] != '[' && colon) hlen = (size_t)(colon - host);
  if (want[0] == '*' && want[1] == '.') {
    size_t sl = strlen(want + 1); /* ".example.com" */
    return hlen > sl && strncasecmp(host + hlen - sl, want + 1, sl) == 0;
  }
  return strlen(want) == hlen && strncasecmp(host, want, hlen) == 0;
}

static int path_match(const kl_gw_route *r, const char *path, size_t plen) {
  if (!r->prefix) return plen == r->path_len && memcmp(path, r->path, plen) == 0;
  if (plen < r->path_len || memcmp(path, r->path, r->path_len) != 0) return 0;
  /* "/api" matches "/api" and "/api/x" but not "/apix"; "/api/" matches below it. */
  return plen == r->path_len || r->path[r->path_len - 1] == '/' || path[r->path_len] == '/';
}

const kl_gw_route *kl_gw_match(const kl_gw *gw, const char *host, size_t hlen, const char *m,
                               size_t mlen, const char *path, size_t plen, char *allow,
                               size_t allowlen) {
  unsigned mi = kl_stats_method(m, mlen);
  uint32_t want = 1u << mi, other = 0;
  if (mi == 1) want |= 1u; /* HEAD: a GET route answers it too */
  for (uint32_t i = 0; i < gw->nroutes; i++) {
    const kl_gw_route *r = &gw->routes[i];
    if (r->host && (!host || !host_match(r->host, host, hlen))) continue;
    if (!path_match(r, path, plen)) continue;
    if (!r->methods || (r->methods & want)) return r;
    other |= r->methods;
  }
  if (allow && allowlen) {
    allow[0] = '\0';
    size_t n = 0;
    for (unsigned i = 0; i < KL_METHODS_N - 1 && other; i++) {
      if (!(other & (1u << i))) continue;
      const char *name = kl_stats_method_name(i);
      size_t l = strlen(name);
      if (n + l + 3 >= allowlen) break;
      if (n) {
        memcpy(allow + n, ", ", 2);
        n += 2;
      }
      memcpy(allow + n, name, l + 1);
      n += l;
    }
  }
  return NULL;
}

uint32_t kl_gw_slot(const kl_gw_route *r, unsigned mi) {
  if (!r->methods) return r->slot + (mi < KL_METHODS_N ? mi : KL_METHODS_N - 1);
  /* Slots of the route's own methods in index order; HEAD is among them when GET is. */
  uint32_t s = r->slot;
  uint32_t methods = r->methods | ((r->methods & 1u) << 1);
  for (unsigned i = 0; i < mi; i++) s += (methods >> i) & 1u;
  return s;
}

int kl_gw_bind(kl_gw *gw, unsigned nworkers) {
  gw->inflight = calloc(nworkers, sizeof *gw->inflight);
  gw->released = calloc(nworkers, 1);
  if (!gw->inflight || !gw->released || kl_gw_workers_new(gw, nworkers) != 0) return -ENOMEM;
  for (uint32_t i = 0; i < gw->nups; i++) {
    gw->ups[i].w = kl_proxy_workers_new(&gw->ups[i], nworkers);
    if (!gw->ups[i].w) return -ENOMEM;
  }
  gw->nworkers = nworkers;
  return 0;
}

void kl_gw_free(kl_gw *gw) {
  if (!gw) return;
  for (uint32_t i = 0; gw->ups && i < gw->nups; i++) {
    kl_proxy_workers_free(&gw->ups[i], gw->nworkers);
    kl_tls_client_ctx_free(gw->ups[i].tls);
    free(gw->ups[i].eps);
  }
  free(gw->ups);
  for (uint32_t i = 0; gw->routes && i < gw->nroutes; i++) {
    kl_keyring_free(gw->routes[i].keys);
    free(gw->routes[i].rl);
    kl_jschema_free(gw->routes[i].schema);
  }
  free(gw->wk);
  free(gw->inflight);
  free(gw->released);
  kl_rl_table_free(gw->rl_table);
  kl_cache_free(gw->cache);
  free(gw->redis);
  free(gw->routes);
  free(gw->strings);
  free(gw);
}

void kl_gw_adopt_slots(kl_gw *gw, const kl_gw *old, uint32_t fallback) {
  for (uint32_t i = 0; i < gw->nroutes; i++) {
    kl_gw_route *r = &gw->routes[i];
    r->slot = fallback;
    r->nslots = KL_METHODS_N;
    for (uint32_t j = 0; old && j < old->nroutes; j++) {
      const kl_gw_route *o = &old->routes[j];
      if (o->methods == r->methods && strcmp(o->name, r->name) == 0) {
        r->slot = o->slot;
        r->nslots = o->nslots;
        break;
      }
    }
  }
}

void kl_gw_ref(kl_gw *gw, unsigned worker, int delta) {
  _Atomic uint64_t *n = &gw->inflight[worker].n;
  atomic_store_explicit(n, atomic_load_explicit(n, memory_order_relaxed) + (uint64_t)(int64_t)delta,
                        memory_order_relaxed);
}

int kl_gw_release(kl_gw *gw, unsigned worker, int (*unlink)(void *arg, kl_gw *gw), void *arg) {
  if (!atomic_load(&gw->retired) || gw->released[worker] ||
      atomic_load_explicit(&gw->inflight[worker].n, memory_order_relaxed) != 0)
    return 0;
  gw->released[worker] = 1;
  for (uint32_t i = 0; i < gw->nups; i++) kl_proxy_worker_close(&gw->ups[i], worker);
  kl_gw_worker_close(gw, worker);
  if (atomic_fetch_sub(&gw->retire_left, 1) == 1 && unlink(arg, gw)) kl_gw_free(gw);
  return 1;
}
