/* proxy.h - the reverse proxy: per-worker upstream connection pools, load balancing, retries. */
#ifndef KEEL_GATEWAY_PROXY_H
#define KEEL_GATEWAY_PROXY_H

#include "gateway/gw.h"

struct kl_up_worker;

/** Per-worker state of upstream `u` (idle pools per endpoint) for `n` workers; NULL on ENOMEM. */
struct kl_up_worker *kl_proxy_workers_new(kl_gw_upstream *u, unsigned n);

/** Worker-side: closes this worker's idle connections to `u` (a replaced gateway). */
void kl_proxy_worker_close(kl_gw_upstream *u, unsigned worker);

/** Closes the idle connections and frees the per-worker state (workers have stopped). */
void kl_proxy_workers_free(kl_gw_upstream *u, unsigned n);

/** The route handler of a proxied route (userdata: its kl_gw_route). */
void kl_proxy_handler(keel_req *req, void *route);

/**
 * Proxies `req` on route `r` (also a request already held with kl_req_stream); `extra`
 * ("Name: value\r\n" lines, copied) is added to the response the client gets; `tenant`
 * (NULL: none; must outlive the request) keeps the tenants' cache entries apart.
 */
void kl_proxy_start(keel_req *req, const kl_gw_route *r, const char *extra, size_t extra_len,
                    const char *tenant);

#endif
