/* metrics.c - metric registry: per-worker cells summed at scrape, Prometheus/OpenMetrics text. */
#include "obs/metrics.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define KL_HIST_MAX_BOUNDS 64
#define KL_MKEY_PROBES 16
#define CACHELINE 64

/* How a series keeps its value. */
enum store { S_CELLS, S_FN, S_VALUE, S_KEYED };

typedef struct kl_family {
  char *name, *help;
  kl_mtype type;
  int signed_cells; /* gauges kept in cells: workers add and subtract */
  char *key_label;  /* keyed counters */
  kl_series **series;
  size_t nseries, cap;
} kl_family;

struct keel_metric {
  kl_metrics *reg;
  kl_family *fam;
  char *labels; /* rendered: name="value",... ("" for none) */
  enum store store;
  uint32_t cell, ncells; /* S_CELLS: first cell and count */
  uint32_t id;           /* S_KEYED: 1-based index, the high bits of its keys */
  double *bounds;        /* histograms */
  uint32_t nb;
  kl_metric_fn fn; /* S_FN */
  void *arg;
  uint64_t value; /* S_VALUE: double bits, atomic */
};

/* Figures read once per render for the process_* series. */
typedef struct proc_snap {
  double cpu_s, rss, vsize, open_fds, max_fds;
} proc_snap;

struct kl_metrics {
  kl_family **fams;
  size_t nfams, cap;
  uint32_t ncells;
  uint32_t nkeyed;
  int frozen;
  unsigned nblocks; /* workers + the shared block (last) */
  kl_mblock *blocks;
  kl_series **keyed;     /* by id - 1 */
  size_t cap_keyed;
  proc_snap proc;
  double start_time;
};

static _Thread_local struct {
  const kl_metrics *reg;
  kl_mblock *block;
} tls;

/* ---- registration ----------------------------------------------------------- */

kl_metrics *kl_metrics_new(void) {
  kl_metrics *m = calloc(1, sizeof(*m));
  return m;
}

static void series_free(kl_series *s) {
  if (!s) return;
  free(s->labels);
  free(s->bounds);
  free(s);
}

void kl_metrics_free(kl_metrics *m) {
  if (!m) return;
  for (size_t i = 0; i < m->nfams; i++) {
    kl_family *f = m->fams[i];
    for (size_t j = 0; j < f->nseries; j++) series_free(f->series[j]);
    free(f->series);
    free(f->name);
    free(f->help);
    free(f->key_label);
    free(f);
  }
  free(m->fams);
  for (unsigned i = 0; i < m->nblocks; i++) {
    free(m->blocks[i].cells);
    free(m->blocks[i].keys);
  }
  free(m->blocks);
  free(m->keyed);
  free(m);
}

static int valid_name(const char *s, int colons) {
  if (!s || !*s) return 0;
  for (const char *p = s; *p; p++) {
    char c = *p;
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
             (colons && c == ':') || (p != s && c >= '0' && c <= '9');
    if (!ok) return 0;
  }
  return 1;
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/* Appends `s` escaped for a label value (\\, \", \n) or, with `help`, for HELP text. */
static int put_escaped(kl_buf *b, const char *s, int help) {
  for (; *s; s++) {
    const char *e = NULL;
    if (*s == '\\') e = "\\\\";
    else if (*s == '\n') e = "\\n";
    else if (*s == '"' && !help) e = "\\\"";
    int rc = e ? kl_buf_append(b, e, 2) : kl_buf_append(b, s, 1);
    if (rc) return rc;
  }
  return 0;
}

/* Renders labels (validated) into a new string: name="value",... */
static int render_labels(const char *const *labels, const char *reserved, char **out) {
  kl_buf b;
  kl_buf_init(&b, 64 * 1024);
  int rc = kl_buf_reserve(&b, 1);
  for (size_t i = 0; rc == 0 && labels && labels[i]; i += 2) {
    const char *k = labels[i], *v = labels[i + 1];
    if (!v || !valid_name(k, 0) || strncmp(k, "__", 2) == 0 ||
        (reserved && strcmp(k, reserved) == 0) || strcmp(k, "le") == 0) {
      rc = -EINVAL;
      break;
    }
    for (size_t j = 0; j < i; j += 2)
      if (strcmp(labels[j], k) == 0) rc = -EINVAL;
    if (rc == 0 && i) rc = kl_buf_append(&b, ",", 1);
    if (rc == 0) rc = kl_buf_append(&b, k, strlen(k));
    if (rc == 0) rc = kl_buf_append(&b, "=\"", 2);
    if (rc == 0) rc = put_escaped(&b, v, 0);
    if (rc == 0) rc = kl_buf_append(&b, "\"", 1);
  }
  if (rc == 0) rc = kl_buf_append(&b, "", 1);
  if (rc) {
    kl_buf_free(&b);
    return rc == -EINVAL ? -EINVAL : -ENOMEM;
  }
  *out = b.data;
  return 0;
}

static kl_family *family_find(kl_metrics *m, const char *name) {
  for (size_t i = 0; i < m->nfams; i++)
    if (strcmp(m->fams[i]->name, name) == 0) return m->fams[i];
  return NULL;
}

/* Creates the series `name{labels}` of `type`, with its family if new. */
static int series_new(kl_metrics *m, const char *name, const char *help, kl_mtype type,
                      int signed_cells, const char *const *labels, const char *key_label,
                      kl_series **out) {
  if (m->frozen) return -EBUSY;
  if (!valid_name(name, 1) || !help || (type == KL_M_COUNTER && !ends_with(name, "_total")) ||
      (type == KL_M_INFO && !ends_with(name, "_info")) || (key_label && !valid_name(key_label, 0)))
    return -EINVAL;
  /* Names the exposition derives from another family's must not be taken twice. */
  kl_family *f = family_find(m, name);
  if (f && (f->type != type || strcmp(f->help, help) != 0 || f->signed_cells != signed_cells ||
            (f->key_label == NULL) != (key_label == NULL) ||
            (key_label && strcmp(f->key_label, key_label) != 0)))
    return -EINVAL;
  char *rendered;
  int rc = render_labels(labels, key_label, &rendered);
  if (rc) return rc;
  if (f)
    for (size_t i = 0; i < f->nseries; i++)
      if (strcmp(f->series[i]->labels, rendered) == 0) {
        free(rendered);
        return -EEXIST;
      }
  kl_series *s = calloc(1, sizeof(*s));
  if (!s) goto nomem;
  s->labels = rendered;
  rendered = NULL;
  if (!f) {
    if (m->nfams == m->cap) {
      size_t cap = m->cap ? m->cap * 2 : 32;
      kl_family **n = realloc(m->fams, cap * sizeof(*n));
      if (!n) goto nomem;
      m->fams = n;
      m->cap = cap;
    }
    f = calloc(1, sizeof(*f));
    if (!f) goto nomem;
    f->name = strdup(name);
    f->help = strdup(help);
    f->key_label = key_label ? strdup(key_label) : NULL;
    f->type = type;
    f->signed_cells = signed_cells;
    if (!f->name || !f->help || (key_label && !f->key_label)) {
      free(f->name);
      free(f->help);
      free(f->key_label);
      free(f);
      goto nomem;
    }
    m->fams[m->nfams++] = f;
  }
  if (f->nseries == f->cap) {
    size_t cap = f->cap ? f->cap * 2 : 4;
    kl_series **n = realloc(f->series, cap * sizeof(*n));
    if (!n) goto nomem;
    f->series = n;
    f->cap = cap;
  }
  s->reg = m;
  s->fam = f;
  f->series[f->nseries++] = s;
  *out = s;
  return 0;
nomem:
  free(rendered);
  series_free(s);
  return -ENOMEM;
}

int kl_metrics_add(kl_metrics *m, const char *name, const char *help, kl_mtype type,
                   const char *const *labels, const double *bounds, uint32_t nb, kl_series **out) {
  if (type == KL_M_INFO) return -EINVAL;
  if (type == KL_M_HISTOGRAM) {
    if (!bounds || nb == 0 || nb > KL_HIST_MAX_BOUNDS) return -EINVAL;
    for (uint32_t i = 0; i < nb; i++)
      if (!isfinite(bounds[i]) || (i && bounds[i] <= bounds[i - 1])) return -EINVAL;
    kl_family *f = family_find(m, name); /* one family, one set of buckets */
    if (f && f->nseries && (f->series[0]->nb != nb ||
                            memcmp(f->series[0]->bounds, bounds, nb * sizeof(double)) != 0))
      return -EINVAL;
  } else {
    nb = 0;
  }
  double *copy = NULL;
  if (nb && !(copy = malloc(nb * sizeof(double)))) return -ENOMEM;
  if (nb) memcpy(copy, bounds, nb * sizeof(double));
  kl_series *s;
  int rc = series_new(m, name, help, type, type == KL_M_GAUGE, labels, NULL, &s);
  if (rc) {
    free(copy);
    return rc;
  }
  s->store = S_CELLS;
  s->cell = m->ncells;
  s->ncells = type == KL_M_HISTOGRAM ? nb + 2 : 1;
  s->bounds = copy;
  s->nb = nb;
  m->ncells += s->ncells;
  if (out) *out = s;
  return 0;
}

int kl_metrics_add_fn(kl_metrics *m, const char *name, const char *help, kl_mtype type,
                      const char *const *labels, kl_metric_fn fn, void *arg) {
  if (type == KL_M_HISTOGRAM || !fn) return -EINVAL;
  kl_series *s;
  int rc = series_new(m, name, help, type, 0, labels, NULL, &s);
  if (rc) return rc;
  s->store = S_FN;
  s->fn = fn;
  s->arg = arg;
  return 0;
}

int kl_metrics_add_keyed(kl_metrics *m, const char *name, const char *help,
                         const char *const *labels, const char *key_label, kl_series **out) {
  if (!key_label) return -EINVAL;
  if (m->nkeyed == m->cap_keyed) {
    size_t cap = m->cap_keyed ? m->cap_keyed * 2 : 16;
    if (cap > (UINT32_MAX >> 10)) return -ENOSPC;
    kl_series **n = realloc(m->keyed, cap * sizeof(*n));
    if (!n) return -ENOMEM;
    m->keyed = n;
    m->cap_keyed = cap;
  }
  kl_series *s;
  int rc = series_new(m, name, help, KL_M_COUNTER, 0, labels, key_label, &s);
  if (rc) return rc;
  s->store = S_KEYED;
  m->keyed[m->nkeyed++] = s;
  s->id = m->nkeyed;
  if (out) *out = s;
  return 0;
}

uint32_t kl_series_cell(const kl_series *s) {
  return s->cell;
}

uint32_t kl_series_key(const kl_series *s) {
  return s->id << 10;
}

/* ---- process metrics -------------------------------------------------------- */

static double proc_cpu(void *a) {
  return ((kl_metrics *)a)->proc.cpu_s;
}
static double proc_rss(void *a) {
  return ((kl_metrics *)a)->proc.rss;
}
static double proc_vsize(void *a) {
  return ((kl_metrics *)a)->proc.vsize;
}
static double proc_fds(void *a) {
  return ((kl_metrics *)a)->proc.open_fds;
}
static double proc_max_fds(void *a) {
  return ((kl_metrics *)a)->proc.max_fds;
}
static double proc_start(void *a) {
  return ((kl_metrics *)a)->start_time;
}

/* Process start, seconds since the epoch: boot time + start ticks (/proc/self/stat field 22). */
static double process_start_time(void) {
  char buf[1024];
  double start = 0;
  FILE *f = fopen("/proc/self/stat", "re");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char *p = strrchr(buf, ')'); /* the command name may contain spaces */
  unsigned long long ticks = 0;
  /* After ")": the space before field 3 (state), then one space per field up to starttime (22). */
  for (int field = 3; p && field <= 22; field++) {
    p = strchr(p + 1, ' ');
    if (p && field == 22) ticks = strtoull(p + 1, NULL, 10);
  }
  f = fopen("/proc/stat", "re");
  if (!f) return 0;
  while (fgets(buf, sizeof(buf), f))
    if (strncmp(buf, "btime ", 6) == 0) start = (double)strtoull(buf + 6, NULL, 10);
  fclose(f);
  long hz = sysconf(_SC_CLK_TCK);
  return start + (double)ticks / (double)(hz > 0 ? hz : 100);
}

static void proc_read(proc_snap *s) {
  struct rusage ru;
  memset(s, 0, sizeof(*s));
  if (getrusage(RUSAGE_SELF, &ru) == 0)
    s->cpu_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
               (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
  FILE *f = fopen("/proc/self/statm", "re");
  if (f) {
    unsigned long long size = 0, rss = 0;
    /* NOLINTNEXTLINE(cert-err34-c): the kernel writes /proc/self/statm, two decimal numbers */
    if (fscanf(f, "%llu %llu", &size, &rss) == 2) {
      long page = sysconf(_SC_PAGESIZE);
      s->vsize = (double)size * (double)page;
      s->rss = (double)rss * (double)page;
    }
    fclose(f);
  }
  DIR *d = opendir("/proc/self/fd");
  if (d) {
    unsigned long n = 0;
    for (struct dirent *e; (e = readdir(d));)
      if (e->d_name[0] != '.') n++;
    closedir(d);
    s->open_fds = (double)(n ? n - 1 : 0); /* not counting the directory's own fd */
  }
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
    s->max_fds = rl.rlim_cur == RLIM_INFINITY ? INFINITY : (double)rl.rlim_cur;
}

int kl_metrics_add_process(kl_metrics *m) {
  static const struct {
    const char *name, *help;
    kl_mtype type;
    kl_metric_fn fn;
  } defs[] = {
      {"process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
       KL_M_COUNTER, proc_cpu},
      {"process_resident_memory_bytes", "Resident memory size in bytes.", KL_M_GAUGE, proc_rss},
      {"process_virtual_memory_bytes", "Virtual memory size in bytes.", KL_M_GAUGE, proc_vsize},
      {"process_open_fds", "Number of open file descriptors.", KL_M_GAUGE, proc_fds},
      {"process_max_fds", "Maximum number of open file descriptors.", KL_M_GAUGE, proc_max_fds},
      {"process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
       KL_M_GAUGE, proc_start},
  };
  m->start_time = process_start_time();
  for (size_t i = 0; i < sizeof(defs) / sizeof(defs[0]); i++) {
    int rc = kl_metrics_add_fn(m, defs[i].name, defs[i].help, defs[i].type, NULL, defs[i].fn, m);
    if (rc) return rc;
  }
  return 0;
}

/* ---- blocks ----------------------------------------------------------------- */

int kl_metrics_freeze(kl_metrics *m, unsigned nworkers) {
  if (m->frozen) return -EBUSY;
  kl_series *overflow = NULL;
  if (m->nkeyed) {
    int rc = kl_metrics_add(m, "keel_metrics_overflow_total",
                            "Counter increments lost because a worker's series table was full.",
                            KL_M_COUNTER, NULL, NULL, 0, &overflow);
    if (rc) return rc;
  }
  m->nblocks = nworkers + 1;
  m->blocks = calloc(m->nblocks, sizeof(*m->blocks));
  if (!m->blocks) return -ENOMEM;
  /* Whole cache lines per block, so no two workers ever write the same line. */
  size_t bytes = ((size_t)m->ncells * sizeof(uint64_t) + CACHELINE - 1) / CACHELINE * CACHELINE;
  for (unsigned i = 0; i < m->nblocks; i++) {
    kl_mblock *b = &m->blocks[i];
    b->cells = aligned_alloc(CACHELINE, bytes);
    if (!b->cells) return -ENOMEM;
    memset(b->cells, 0, bytes);
    b->overflow_cell = overflow ? overflow->cell : 0;
    if (i < nworkers && m->nkeyed) {
      b->keys = aligned_alloc(CACHELINE, KL_MKEY_CAP * sizeof(*b->keys));
      if (!b->keys) return -ENOMEM;
      memset(b->keys, 0, KL_MKEY_CAP * sizeof(*b->keys));
    }
  }
  m->frozen = 1;
  return 0;
}

kl_mblock *kl_metrics_block(kl_metrics *m, unsigned i) {
  return &m->blocks[i];
}

void kl_metrics_bind(kl_metrics *m, unsigned i) {
  tls.reg = m;
  tls.block = &m->blocks[i];
}

void kl_mkey_add(kl_mblock *b, uint32_t key) {
  uint32_t h = (key * 2654435761u) >> 22; /* 10 bits: KL_MKEY_CAP */
  for (uint32_t i = 0; i < KL_MKEY_PROBES; i++) {
    struct kl_mkey *e = &b->keys[(h + i) & (KL_MKEY_CAP - 1)];
    uint32_t k = __atomic_load_n(&e->key, __ATOMIC_RELAXED);
    if (k == key) {
      __atomic_store_n(&e->count, __atomic_load_n(&e->count, __ATOMIC_RELAXED) + 1,
                       __ATOMIC_RELAXED);
      return;
    }
    if (k == 0) {
      __atomic_store_n(&e->count, 1, __ATOMIC_RELAXED);
      __atomic_store_n(&e->key, key, __ATOMIC_RELEASE); /* count first, then visible */
      return;
    }
  }
  kl_mcell_add(b->cells, b->overflow_cell, 1); /* the neighbourhood is full: the loss shows */
}

/* ---- the public update API -------------------------------------------------- */

/* The block the calling thread writes, or NULL for the shared block (atomic adds). */
static inline uint64_t *own_cells(const kl_series *s) {
  return tls.reg == s->reg ? tls.block->cells : NULL;
}

void keel_counter_add(keel_metric *s, uint64_t n) {
  if (!s || s->store != S_CELLS || s->fam->type != KL_M_COUNTER || !s->reg->frozen) return;
  uint64_t *c = own_cells(s);
  if (c)
    kl_mcell_add(c, s->cell, n);
  else
    __atomic_fetch_add(&s->reg->blocks[s->reg->nblocks - 1].cells[s->cell], n, __ATOMIC_RELAXED);
}

void keel_gauge_set(keel_metric *s, double v) {
  if (!s || s->store != S_VALUE) return;
  uint64_t bits;
  memcpy(&bits, &v, sizeof bits);
  __atomic_store_n(&s->value, bits, __ATOMIC_RELAXED);
}

void keel_gauge_add(keel_metric *s, double delta) {
  if (!s || s->store != S_VALUE) return;
  uint64_t old = __atomic_load_n(&s->value, __ATOMIC_RELAXED), nv;
  do {
    double d;
    memcpy(&d, &old, sizeof d);
    d += delta;
    memcpy(&nv, &d, sizeof nv);
  } while (!__atomic_compare_exchange_n(&s->value, &old, nv, 1, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED));
}

void kl_histogram_observe_n(keel_metric *s, double v, uint64_t n) {
  if (!s || !n || s->store != S_CELLS || s->fam->type != KL_M_HISTOGRAM || !s->reg->frozen)
    return;
  uint64_t *c = own_cells(s);
  if (c && n == 1) {
    kl_mcell_observe(c, s->cell, s->bounds, s->nb, v);
    return;
  }
  uint32_t k = 0;
  while (k < s->nb && v > s->bounds[k]) k++;
  if (c) {
    kl_mcell_add(c, s->cell + k, n);
    uint64_t *sum = &c[s->cell + s->nb + 1], bits = __atomic_load_n(sum, __ATOMIC_RELAXED);
    double d;
    memcpy(&d, &bits, sizeof d);
    d += v * (double)n;
    memcpy(&bits, &d, sizeof d);
    __atomic_store_n(sum, bits, __ATOMIC_RELAXED);
    return;
  }
  c = s->reg->blocks[s->reg->nblocks - 1].cells;
  __atomic_fetch_add(&c[s->cell + k], n, __ATOMIC_RELAXED);
  uint64_t *sum = &c[s->cell + s->nb + 1], old = __atomic_load_n(sum, __ATOMIC_RELAXED), nv;
  do {
    double d;
    memcpy(&d, &old, sizeof d);
    d += v * (double)n;
    memcpy(&nv, &d, sizeof nv);
  } while (!__atomic_compare_exchange_n(sum, &old, nv, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
}

void keel_histogram_observe(keel_metric *s, double v) {
  kl_histogram_observe_n(s, v, 1);
}

int kl_metrics_add_value_gauge(kl_metrics *m, const char *name, const char *help,
                               const char *const *labels, kl_series **out) {
  kl_series *s;
  int rc = series_new(m, name, help, KL_M_GAUGE, 0, labels, NULL, &s);
  if (rc) return rc;
  s->store = S_VALUE;
  *out = s;
  return 0;
}

/* ---- rendering ---------------------------------------------------------------- */

static uint64_t sum_cell(const kl_metrics *m, uint32_t i) {
  uint64_t t = 0;
  for (unsigned b = 0; b < m->nblocks; b++)
    t += __atomic_load_n(&m->blocks[b].cells[i], __ATOMIC_RELAXED);
  return t;
}

static double sum_double(const kl_metrics *m, uint32_t i) {
  double t = 0;
  for (unsigned b = 0; b < m->nblocks; b++) {
    uint64_t bits = __atomic_load_n(&m->blocks[b].cells[i], __ATOMIC_RELAXED);
    double d;
    memcpy(&d, &bits, sizeof d);
    t += d;
  }
  return t;
}

/* Short text that reads back as `v` (Prometheus accepts any float syntax). Returns its length. */
static size_t fmt_double(char t[40], double v) {
  int n;
  if (isnan(v)) n = snprintf(t, 40, "NaN");
  else if (isinf(v)) n = snprintf(t, 40, v > 0 ? "+Inf" : "-Inf");
  else if (fabs(v) < 9007199254740992.0 && v == (double)(int64_t)v)
    n = snprintf(t, 40, "%" PRId64, (int64_t)v);
  else {
    n = snprintf(t, 40, "%.15g", v);
    if (strtod(t, NULL) != v) n = snprintf(t, 40, "%.17g", v);
  }
  return (size_t)n;
}

static int put_double(kl_buf *b, double v) {
  char t[40];
  return kl_buf_append(b, t, fmt_double(t, v));
}

static int put_u64(kl_buf *b, uint64_t v) {
  char t[24];
  int n = snprintf(t, sizeof(t), "%" PRIu64, v);
  return kl_buf_append(b, t, (size_t)n);
}

static int put_str(kl_buf *b, const char *s) {
  return kl_buf_append(b, s, strlen(s));
}

/* name{labels[,extra]} or name{extra} or name, then a space. */
static int put_sample(kl_buf *b, const char *name, const char *suffix, const char *labels,
                      const char *extra) {
  int rc = put_str(b, name);
  if (!rc && suffix) rc = put_str(b, suffix);
  int any = labels[0] || (extra && extra[0]);
  if (!rc && any) rc = kl_buf_append(b, "{", 1);
  if (!rc) rc = put_str(b, labels);
  if (!rc && labels[0] && extra && extra[0]) rc = kl_buf_append(b, ",", 1);
  if (!rc && extra) rc = put_str(b, extra);
  if (!rc && any) rc = kl_buf_append(b, "}", 1);
  if (!rc) rc = kl_buf_append(b, " ", 1);
  return rc;
}

static int render_histogram(const kl_metrics *m, const kl_series *s, kl_buf *b) {
  const char *name = s->fam->name;
  uint64_t cum = 0;
  int rc = 0;
  char le[64];
  for (uint32_t k = 0; k <= s->nb && !rc; k++) {
    cum += sum_cell(m, s->cell + k);
    char v[40];
    if (k < s->nb) v[fmt_double(v, s->bounds[k])] = '\0';
    snprintf(le, sizeof(le), "le=\"%s\"", k < s->nb ? v : "+Inf");
    if (!rc) rc = put_sample(b, name, "_bucket", s->labels, le);
    if (!rc) rc = put_u64(b, cum);
    if (!rc) rc = kl_buf_append(b, "\n", 1);
  }
  if (!rc) rc = put_sample(b, name, "_sum", s->labels, NULL);
  if (!rc) rc = put_double(b, sum_double(m, s->cell + s->nb + 1));
  if (!rc) rc = kl_buf_append(b, "\n", 1);
  if (!rc) rc = put_sample(b, name, "_count", s->labels, NULL);
  if (!rc) rc = put_u64(b, cum);
  if (!rc) rc = kl_buf_append(b, "\n", 1);
  return rc;
}

typedef struct key_count {
  uint32_t key;
  uint64_t count;
} key_count;

static int key_cmp(const void *a, const void *b) {
  uint32_t x = ((const key_count *)a)->key, y = ((const key_count *)b)->key;
  return x < y ? -1 : x > y;
}

/* Every keyed family's non-zero counts, summed over workers and sorted by key. */
static key_count *collect_keys(const kl_metrics *m, size_t *n) {
  size_t cap = (size_t)(m->nblocks - 1) * KL_MKEY_CAP, k = 0;
  key_count *v = malloc((cap ? cap : 1) * sizeof(*v));
  if (!v) return NULL;
  for (unsigned b = 0; b + 1 < m->nblocks; b++) {
    const struct kl_mkey *e = m->blocks[b].keys;
    for (size_t i = 0; e && i < KL_MKEY_CAP; i++) {
      uint32_t key = __atomic_load_n(&e[i].key, __ATOMIC_ACQUIRE);
      if (key) v[k++] = (key_count){key, __atomic_load_n(&e[i].count, __ATOMIC_RELAXED)};
    }
  }
  qsort(v, k, sizeof(*v), key_cmp);
  size_t out = 0;
  for (size_t i = 0; i < k; i++) {
    if (out && v[out - 1].key == v[i].key)
      v[out - 1].count += v[i].count;
    else
      v[out++] = v[i];
  }
  *n = out;
  return v;
}

int kl_metrics_render(kl_metrics *m, kl_buf *b, int om) {
  if (!m->frozen) return -EINVAL;
  proc_read(&m->proc);
  size_t nkeys = 0;
  key_count *keys = m->nkeyed ? collect_keys(m, &nkeys) : NULL;
  if (m->nkeyed && !keys) return -ENOMEM;
  int rc = 0;
  for (size_t fi = 0; fi < m->nfams && !rc; fi++) {
    const kl_family *f = m->fams[fi];
    /* OpenMetrics names a counter family without _total and an info family without _info. */
    char fname[256];
    size_t nl = strlen(f->name);
    if (om && f->type == KL_M_COUNTER) nl -= 6;
    if (om && f->type == KL_M_INFO) nl -= 5;
    if (nl >= sizeof(fname)) nl = sizeof(fname) - 1;
    memcpy(fname, f->name, nl);
    fname[nl] = '\0';
    static const char *const types[] = {"counter", "gauge", "histogram", "info"};
    const char *type = f->type == KL_M_INFO && !om ? "gauge" : types[f->type];
    rc = put_str(b, "# HELP ");
    if (!rc) rc = put_str(b, fname);
    if (!rc) rc = kl_buf_append(b, " ", 1);
    if (!rc) rc = put_escaped(b, f->help, 1);
    if (!rc) rc = put_str(b, "\n# TYPE ");
    if (!rc) rc = put_str(b, fname);
    if (!rc) rc = kl_buf_append(b, " ", 1);
    if (!rc) rc = put_str(b, type);
    if (!rc) rc = kl_buf_append(b, "\n", 1);
    for (size_t si = 0; si < f->nseries && !rc; si++) {
      const kl_series *s = f->series[si];
      switch (s->store) {
      case S_CELLS:
        if (f->type == KL_M_HISTOGRAM) {
          rc = render_histogram(m, s, b);
          continue;
        }
        rc = put_sample(b, f->name, NULL, s->labels, NULL);
        if (!rc) {
          uint64_t v = sum_cell(m, s->cell);
          rc = f->signed_cells ? put_double(b, (double)(int64_t)v) : put_u64(b, v);
        }
        break;
      case S_FN:
        rc = put_sample(b, f->name, NULL, s->labels, NULL);
        if (!rc) rc = put_double(b, s->fn(s->arg));
        break;
      case S_VALUE: {
        rc = put_sample(b, f->name, NULL, s->labels, NULL);
        uint64_t bits = __atomic_load_n(&s->value, __ATOMIC_RELAXED);
        double d;
        memcpy(&d, &bits, sizeof d);
        if (!rc) rc = put_double(b, d);
        break;
      }
      case S_KEYED: {
        /* keys are (id << 10 | key), sorted: this series' run is contiguous. */
        for (size_t i = 0; i < nkeys && !rc; i++) {
          if (keys[i].key >> 10 != s->id) continue;
          char extra[80];
          snprintf(extra, sizeof(extra), "%s=\"%u\"", f->key_label, keys[i].key & 1023u);
          rc = put_sample(b, f->name, NULL, s->labels, extra);
          if (!rc) rc = put_u64(b, keys[i].count);
          if (!rc) rc = kl_buf_append(b, "\n", 1);
        }
        continue;
      }
      }
      if (!rc) rc = kl_buf_append(b, "\n", 1);
    }
  }
  if (!rc && om) rc = put_str(b, "# EOF\n");
  free(keys);
  return rc;
}
