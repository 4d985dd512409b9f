/* health.h - active health checks of upstream endpoints, on a thread of their own. */
#ifndef KEEL_GATEWAY_HEALTH_H
#define KEEL_GATEWAY_HEALTH_H

#include <stddef.h>

#include "gateway/gw.h"

/*
 * One thread checks every endpoint of every upstream that has `health_check.path`: a GET with
 * a timeout, healthy when a 2xx status line comes back. `unhealthy` failures in a row mark the
 * endpoint down (workers stop choosing it); `healthy` successes in a row bring it back and
 * end a passive ejection. Checks are sequential: an endpoint that times out delays the others
 * by at most its timeout. Transitions are logged. The same thread looks endpoints configured
 * by DNS name up again every `resolve` (default 30 s): one address per configured name.
 */
typedef struct kl_gw_health kl_gw_health;

/** Starts checking; NULL when there is nothing to check or resolve (or on failure, with err). */
kl_gw_health *kl_gw_health_start(kl_gw *gw, keel_server *srv, char *err, size_t errlen);

/** Stops the thread (it notices at once, even in the middle of a check) and frees. NULL ok. */
void kl_gw_health_stop(kl_gw_health *h);

#endif
