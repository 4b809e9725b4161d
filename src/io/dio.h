/* dio.h — files written with O_DIRECT at arbitrary offsets, behind a queue.
 *
 * A buffered write copies into the page cache, which must first find a
 * free page for every 4 KiB: on a VM whose host takes back guest memory
 * that has been free for a few seconds, each such page costs a fault on
 * the host (here 1 GiB took 6-14 s against 0.23 s into recycled pages),
 * and two threads writing one file wait on its inode lock meanwhile. With
 * O_DIRECT the device reads the data from a few reused buffers instead.
 *
 * O_DIRECT needs whole aligned blocks (DIO_BLOCK) from aligned memory, and
 * callers write tensors piece by piece at any offset. So each write is
 * split: its whole blocks are copied into a slot of a small aligned ring
 * and queued for a writer thread (the caller goes on at once, and waits
 * only while every slot is in flight); its partial blocks at either end are
 * gathered in memory, per block, until all of a block's bytes have come,
 * and then queued like the rest. Every byte of the file must be written
 * exactly once (more is an error); the last block, short at the end of the
 * file, goes out padded when the file is closed, and the file is then cut
 * to its size. A filesystem that refuses O_DIRECT (tmpfs, some FUSE) makes
 * dio_open fail with errno EINVAL, and one that refuses a write makes the
 * writer send that write and all after it through an ordinary descriptor:
 * callers fall back to buffered writes, never to an error. */
#ifndef ALLOY_IO_DIO_H
#define ALLOY_IO_DIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alloy.h"

#define DIO_BLOCK ((uint64_t)4096)      /* the alignment of offsets, lengths and memory */
#define DIO_SLOT ((size_t)2 << 20)      /* bytes per queued write at most */
/* Slots in the ring: DIO_SLOTS x DIO_SLOT bytes in flight or waiting. A
 * two-lane merge (merge/exec.c) makes its output in bursts: while one lane
 * is in a tensor's first pass only the other writes, and when both are in
 * their merge passes they make more than the disk takes (the bench's ties:
 * about 3 GB/s against 2.5, for the 0.15 s of the embedding's pass). With
 * runs filling whole slots (dio.c: run_start), 32 slots let the bench's
 * ties merge threads wait for a slot in none of 4 runs but one (1 ms);
 * while each run held half a slot, 16 made them wait 40-80 ms per run and
 * it took 64. A merge faster than the disk (linear) waits on any ring: it
 * is bound by the writes. The slots are handed out last-freed first, so a
 * merge that never fills the ring touches only the pages it needs (on a
 * VM, a fresh page can cost ~1 ms per MB: a ring of 128 MiB cost ties
 * about 0.1 s of CPU). */
#define DIO_SLOTS 32
#define DIO_WRITERS 4                   /* writer threads: writes in flight at once */

typedef struct dio_pool dio_pool;
typedef struct dio_file dio_file;

/* The ring and its writer threads, shared by the files opened on it; NULL
 * with err set when memory or threads are short. */
dio_pool *dio_pool_new(alloy_err *err);

/* The writes the ring's threads have made so far (each from one slot) and
 * their bytes. */
void dio_pool_stats(dio_pool *p, uint64_t *writes, uint64_t *bytes);

/* Waits for every queued write, stops the threads; the files must be closed
 * or aborted first. */
void dio_pool_free(dio_pool *p);

/* Create (truncate) path for a file of exactly size bytes written through
 * p. NULL when it cannot: errno EINVAL when the filesystem refuses O_DIRECT
 * (err untouched: the caller writes it the ordinary way), else err set. */
dio_file *dio_open(dio_pool *p, const char *path, uint64_t size, alloy_err *err);

/* Write len bytes of data at off (any alignment; safe from several threads
 * at once, on disjoint ranges). data may be reused when this returns. 0,
 * or -1 with err set naming the file: a range past the size, a byte written
 * twice, or an earlier write that failed (its errno). */
int dio_write(dio_file *f, const void *data, size_t len, uint64_t off, alloy_err *err);

/* A stream: one caller's bytes of a file, made in the ring itself instead
 * of copied there (a merge kernel stores its results straight into the
 * slot that the device then reads). dio_stream_room gives the place for
 * the next n bytes; pieces that continue the last one follow it in the same
 * slot, and a full slot goes out whole, the block the stream has reached
 * carried to the front of the next. Only where a stretch starts and ends do
 * partial blocks remain, and they go through the file's partial blocks
 * like dio_write's. One thread per stream; the caller fills each piece
 * before it asks for the next or ends the stream, and ends every stream
 * before closing its file. A stream holds one slot of the ring. */
#define DIO_STREAM_MAX (DIO_SLOT / 2) /* bytes per dio_stream_room at most */
typedef struct dio_stream {
    dio_file *f;
    int slot;      /* -1: between stretches */
    uint64_t fb;   /* the file offset of the slot's first byte (block aligned) */
    uint64_t own;  /* the first byte of this stretch in the slot */
    uint64_t end;  /* the byte after the last piece */
    bool refused;  /* the last call found no slot free and none in flight */
} dio_stream;

void dio_stream_init(dio_stream *s, dio_file *f);

/* Where to put bytes [x, x + n) (n <= DIO_STREAM_MAX) of the file: a new
 * stretch unless x continues the last piece. NULL with err set on an error
 * (a range past the size, an earlier failed write), or with s->refused and
 * err untouched when no slot is to be had: then the caller writes these
 * bytes with dio_write (what the stream made before is out already). */
char *dio_stream_room(dio_stream *s, uint64_t x, size_t n, alloy_err *err);

/* The stretch out: 0, or -1 with err set. */
int dio_stream_end(dio_stream *s, alloy_err *err);

/* The slot back unwritten (an error path). */
void dio_stream_abandon(dio_stream *s);

/* Queue the file's open runs now (no write adjacent to them is coming:
 * the caller finished a stretch of the file), so that they do not hold
 * slots of the ring that other files need. */
void dio_flush(dio_file *f);

/* Send what is left (the last block, and any block with bytes never
 * written, zeros there), wait for the file's writes, cut it to its size,
 * fsync and close it; f is freed. 0, or -1 with err set. */
int dio_close(dio_file *f, alloy_err *err);

/* Wait for the file's queued writes and close it without completing it
 * (an error path: the caller removes it); f is freed. */
void dio_abort(dio_file *f);

#endif
