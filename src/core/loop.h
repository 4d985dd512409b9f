/* loop.h - one epoll event loop per thread: fd watchers, timers, a cached clock and Date. */
#ifndef KEEL_CORE_LOOP_H
#define KEEL_CORE_LOOP_H

#include <stdint.h>
#include <time.h>

#include "core/timer.h"

typedef struct kl_loop kl_loop;
typedef struct kl_io kl_io;
/** Called with the epoll events of `io`. */
typedef void (*kl_io_cb)(kl_loop *loop, kl_io *io, uint32_t events);

/** An fd watcher, embedded in its owner. */
struct kl_io {
  int fd;
  uint32_t events; /* currently registered */
  kl_io_cb cb;
};

/** Length of an IMF-fixdate ("Thu, 26 Nov 2026 23:06:45 GMT"). */
#define KL_DATE_LEN 29

/** The loop; owned and run by exactly one thread. */
struct kl_loop {
  int epfd;
  int stop;          /* kl_loop_run returns when set */
  uint64_t now;      /* ms, CLOCK_MONOTONIC, refreshed on every wakeup */
  uint64_t woke_us;  /* us, CLOCK_MONOTONIC, when the current batch of events arrived */
  int nevents;       /* events in the current batch */
  time_t date_epoch; /* second that `date` shows */
  char date[KL_DATE_LEN + 1];
  kl_timers timers;
  void (*before_sleep)(kl_loop *loop); /* optional: runs after each batch of events */
};

/** Creates the epoll fd and room for `max_timers` armed timers: 0 or negative errno. */
int kl_loop_init(kl_loop *loop, uint32_t max_timers);
/** Closes the epoll fd and frees the timers. */
void kl_loop_free(kl_loop *loop);
/** Watches `io->fd` for `events` (EPOLLIN, ...); 0 or negative errno. */
int kl_io_start(kl_loop *loop, kl_io *io, uint32_t events);
/** Changes the watched events (no syscall when unchanged); 0 or negative errno. */
int kl_io_modify(kl_loop *loop, kl_io *io, uint32_t events);
/** Stops watching (before close()). */
void kl_io_stop(kl_loop *loop, kl_io *io);
/** Refreshes `now` and, when the second changed, `date`. */
void kl_loop_update_clock(kl_loop *loop);
/** Waits for events and timers, dispatches them, until `stop` is set. */
void kl_loop_run(kl_loop *loop);
/** Monotonic milliseconds. */
uint64_t kl_now_ms(void);
/** Monotonic microseconds. */
uint64_t kl_now_us(void);

#endif
