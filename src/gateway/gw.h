/* gw.h - the API gateway: routes to upstreams, proxying and per-route policies (issue 6). */
#ifndef KEEL_GATEWAY_GW_H
#define KEEL_GATEWAY_GW_H

/* Modules of src/gateway/ each have their own header; this one ties them to the server. */

#endif
