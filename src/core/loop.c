/* loop.c - epoll loop with timer heap, batched events and a before-sleep step (see loop.h). */
#include "core/loop.h"

#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define KL_EVENTS_PER_WAKEUP 256

uint64_t kl_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t kl_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void format_date(kl_loop *loop, time_t t) {
  static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  struct tm tm;
  gmtime_r(&t, &tm);
  char *p = loop->date;
  int year = tm.tm_year + 1900;
  memcpy(p, days[tm.tm_wday % 7], 3);
  p[3] = ',';
  p[4] = ' ';
  p[5] = (char)('0' + tm.tm_mday / 10);
  p[6] = (char)('0' + tm.tm_mday % 10);
  p[7] = ' ';
  memcpy(p + 8, months[tm.tm_mon % 12], 3);
  p[11] = ' ';
  p[12] = (char)('0' + year / 1000 % 10);
  p[13] = (char)('0' + year / 100 % 10);
  p[14] = (char)('0' + year / 10 % 10);
  p[15] = (char)('0' + year % 10);
  p[16] = ' ';
  p[17] = (char)('0' + tm.tm_hour / 10);
  p[18] = (char)('0' + tm.tm_hour % 10);
  p[19] = ':';
  p[20] = (char)('0' + tm.tm_min / 10);
  p[21] = (char)('0' + tm.tm_min % 10);
  p[22] = ':';
  p[23] = (char)('0' + tm.tm_sec / 10);
  p[24] = (char)('0' + tm.tm_sec % 10);
  memcpy(p + 25, " GMT", 5);
  loop->date_epoch = t;
}

void kl_loop_update_clock(kl_loop *loop) {
  loop->woke_us = kl_now_us();
  loop->now = loop->woke_us / 1000;
  time_t t = time(NULL);
  if (t != loop->date_epoch) format_date(loop, t);
}

int kl_loop_init(kl_loop *loop, uint32_t max_timers) {
  loop->stop = 0;
  loop->before_sleep = NULL;
  loop->nevents = 0;
  loop->date_epoch = 0;
  loop->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (loop->epfd < 0) return -errno;
  int rc = kl_timers_init(&loop->timers, max_timers);
  if (rc) {
    close(loop->epfd);
    return rc;
  }
  kl_loop_update_clock(loop);
  return 0;
}

void kl_loop_free(kl_loop *loop) {
  if (loop->epfd >= 0) close(loop->epfd);
  loop->epfd = -1;
  kl_timers_free(&loop->timers);
}

int kl_io_start(kl_loop *loop, kl_io *io, uint32_t events) {
  struct epoll_event ev = {.events = events, .data.ptr = io};
  if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, io->fd, &ev) < 0) return -errno;
  io->events = events;
  return 0;
}

int kl_io_modify(kl_loop *loop, kl_io *io, uint32_t events) {
  if (io->events == events) return 0;
  struct epoll_event ev = {.events = events, .data.ptr = io};
  if (epoll_ctl(loop->epfd, EPOLL_CTL_MOD, io->fd, &ev) < 0) return -errno;
  io->events = events;
  return 0;
}

void kl_io_stop(kl_loop *loop, kl_io *io) {
  epoll_ctl(loop->epfd, EPOLL_CTL_DEL, io->fd, NULL);
  io->events = 0;
}

void kl_loop_run(kl_loop *loop) {
  struct epoll_event evs[KL_EVENTS_PER_WAKEUP];
  while (!loop->stop) {
    int timeout = kl_timers_timeout(&loop->timers, loop->now);
    int n = epoll_wait(loop->epfd, evs, KL_EVENTS_PER_WAKEUP, timeout);
    if (n < 0 && errno != EINTR) break;
    kl_loop_update_clock(loop);
    loop->nevents = n > 0 ? n : 0;
    for (int i = 0; i < n; i++) {
      kl_io *io = evs[i].data.ptr;
      io->cb(loop, io, evs[i].events);
    }
    kl_timers_run(&loop->timers, loop->now);
    if (loop->before_sleep) loop->before_sleep(loop);
  }
}
