/* wal.h - the pipeline's durable buffer: a segmented append-only log on disk (CRC32C-framed
 * records). */
#ifndef KEEL_PIPELINE_WAL_H
#define KEEL_PIPELINE_WAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/*
 * Records are opaque byte strings. Each is framed on disk as
 *   magic (u32 LE) | length (u32 LE) | crc32c (u32 LE) | time (u64 LE, ns) | payload
 * where the CRC covers length, time and payload, and time is when it was appended
 * (CLOCK_REALTIME), so the age of the oldest pending record is known even after a restart,
 * and the magic is 0x314C574B ("KWL1" on disk). Frames are appended to the newest segment
 * file, DIR/<base position, 20 digits>.log. A position is a byte offset in the one virtual
 * stream of all segments, so a record's position is its segment's base plus its offset in
 * the file, and positions only grow (a segment ends where the next one begins).
 *
 * Writers (any thread) append under a mutex; a syncer thread fdatasync()s: at once when
 * fsync_ms is 0 (group commit: every append is durable before it is acknowledged), else
 * every fsync_ms. After each sync it publishes the durable position and calls on_durable.
 *
 * One reader (the sink thread) walks records from the committed position up to the
 * durable position with pread(): nothing is loaded into memory at start-up. A record
 * whose frame or CRC is bad is skipped by scanning forward for the next valid frame and
 * counted (corrupt_records/corrupt_bytes): a damaged byte never stops what follows.
 * kl_wal_commit() records that everything before a position was delivered; the commit
 * is persisted (DIR/committed, written to a temporary file, fsynced, renamed) at most
 * every commit_ms, and segments wholly before it are deleted. After a crash the reader
 * starts at the last persisted commit: at least once.
 *
 * Open scans the newest segment to find its end: a torn record at the tail (a crash
 * mid-write) is cut off, but a bad record followed by valid ones is kept in place for the
 * reader to skip. It also counts the records between the committed position and the end
 * by walking frame headers (sequential reads, nothing kept), for records_pending: in closed
 * segments only headers are checked, so a record with a damaged payload there still counts
 * as pending until the reader skips it (the gauge never goes below zero). Only a cut tail is
 * counted as corrupt at open; bad regions kept in place are counted when the reader skips them
 * (once, even after kl_wal_rewind()).
 *
 * DIR/committed is 16 bytes: magic 0x3143574B ("KWC1", u32 LE) | position (u64 LE) | crc32c of
 * the first 12 (u32 LE). A missing or damaged one, or one outside the log, means "from the
 * oldest segment".
 *
 * Space: `bytes` (what max_bytes caps) is written minus the oldest segment's base, i.e. the
 * segment files on disk. When everything is committed and the active segment alone would keep
 * the log full, the next append starts a new segment so that the old one can be deleted.
 *
 * If an fdatasync() or the truncation after a failed write fails, the log stops: durable no
 * longer advances and appends return -EIO (after a failed fsync the kernel may have dropped the
 * dirty pages, so retrying could report lost data as durable).
 */

typedef struct kl_wal kl_wal;

/** Options (all required but the callback). */
typedef struct kl_wal_opts {
  const char *dir;        /**< created if missing */
  uint64_t segment_bytes; /**< a segment is closed when it reaches this size */
  uint64_t max_bytes;     /**< cap on all segments together: appends beyond get -ENOSPC */
  uint32_t fsync_ms;      /**< 0: sync before every acknowledgement (group commit); else period */
  uint32_t commit_ms;     /**< persist the committed position at most this often */
  uint32_t record_max;    /**< largest payload accepted (and believed when reading) */
  /** Called on the syncer thread after the durable position advanced. */
  void (*on_durable)(void *arg, uint64_t durable);
  void *arg;
} kl_wal_opts;

/** Counters (monotonic unless said). */
typedef struct kl_wal_stats {
  uint64_t written;         /**< end position of the last append */
  uint64_t durable;         /**< everything before this is on disk */
  uint64_t committed;       /**< everything before this was delivered */
  uint64_t bytes;           /**< gauge: bytes in segments on disk */
  uint64_t segments;        /**< gauge: segment files */
  uint64_t records_pending; /**< gauge: records appended and not yet committed */
  uint64_t oldest_ns; /**< gauge: append time of the record at the committed position, 0 if none */
  uint64_t corrupt_records; /**< bad frames skipped by the reader or cut at open */
  uint64_t corrupt_bytes;
  uint64_t syncs; /**< fdatasync calls */
} kl_wal_stats;

/**
 * Opens (or creates) the log in opts->dir and starts the syncer thread. Returns NULL with a
 * message in `err` on failure (unusable directory, I/O error).
 */
kl_wal *kl_wal_open(const kl_wal_opts *opts, char *err, size_t errlen);

/**
 * Appends `n` records as one write. Each record is the
 * concatenation of iov[rec_iov[i] .. rec_iov[i+1]) for i < n (rec_iov has n + 1 entries).
 * On success returns 0 and sets *end to the position after the last record: the records
 * are durable once the durable position reaches *end. -ENOSPC: the log is at max_bytes
 * (nothing was written); -EMSGSIZE: a record exceeds record_max; -EIO on write errors.
 */
int kl_wal_append(kl_wal *w, const struct iovec *iov, const uint32_t *rec_iov, size_t n,
                  uint64_t *end);

/** The durable position (any thread; an atomic load). */
uint64_t kl_wal_durable(const kl_wal *w);

/** Asks the syncer to sync now (for shutdown, or a caller that wants an early ack). */
void kl_wal_sync(kl_wal *w);

/** One record handed to the reader. */
typedef struct kl_wal_rec {
  uint64_t pos;        /**< its position */
  uint64_t time_ns;    /**< when it was appended */
  uint64_t next;       /**< the position after it */
  const uint8_t *data; /**< payload, valid until the next kl_wal_read */
  uint32_t len;
} kl_wal_rec;

/**
 * Reader (one thread only): fills up to `max` records from the read cursor, all below the
 * durable position, into `out`, using the log's read buffer (at most `bytes` payload bytes
 * per call, at least one record). Returns how many (0: nothing durable beyond the cursor).
 * Bad frames in between are skipped and counted.
 */
size_t kl_wal_read(kl_wal *w, kl_wal_rec *out, size_t max, size_t bytes);

/** Reader: moves the read cursor back to the committed position (after a producer rebuild). */
void kl_wal_rewind(kl_wal *w);

/**
 * Everything before `pos` was delivered: `nrec` more records than at the last commit (pos
 * must be a record boundary returned by kl_wal_read and must not go back). Deletes segments
 * wholly before it; persists it per commit_ms.
 */
void kl_wal_commit(kl_wal *w, uint64_t pos, uint64_t nrec);

/** Fills `st` (any thread). */
void kl_wal_get_stats(kl_wal *w, kl_wal_stats *st);

/** Syncs, persists the commit, stops the syncer and closes the files. */
void kl_wal_close(kl_wal *w);

/**
 * CRC32C (Castagnoli), as framed above; `crc` 0 to start, or a previous result to continue
 * (kl_crc32c(kl_crc32c(0, a), b) is the CRC of a then b). Uses the CRC32C instructions when the
 * CPU has them (x86-64 SSE4.2, aarch64 HWCAP_CRC32), else kl_crc32c_portable().
 */
uint32_t kl_crc32c(uint32_t crc, const void *data, size_t len);

/** The table-driven (slicing-by-8) CRC32C behind kl_crc32c(): same results, any CPU. */
uint32_t kl_crc32c_portable(uint32_t crc, const void *data, size_t len);

#endif
