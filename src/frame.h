/* SPDX-License-Identifier: MIT */
/*
 * Newline framing on stream sockets: a bounded, sans-I/O line reader and a
 * batched writer of shared, reference-counted chunks (writev).
 */
#ifndef USPS_FRAME_H
#define USPS_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Line reader. Bytes go in (from a fd or from memory), complete lines come
 * out. Memory is proportional to the longest line in flight, never more than
 * max_frame + one read block; a buffer grown for a large line shrinks back
 * once it is consumed.
 */
struct usps__reader {
	char *buf;
	size_t cap;
	size_t start; /* first unconsumed byte */
	size_t len;   /* bytes held, from buf[0] */
	size_t scan;  /* where the search for '\n' resumes */
	size_t max_frame;
	size_t got;   /* bytes of the last fill */
	size_t taken; /* lines and records taken since the last fill */
	bool full;    /* the last fill got all it asked for: more may wait */
};

/* Set up an empty reader for lines of at most @max_frame bytes. */
void usps__reader_init(struct usps__reader *r, size_t max_frame);
/* Free the reader's storage; it may be initialised again. */
void usps__reader_free(struct usps__reader *r);
/*
 * usps__reader_swap() - hand over the reader's buffer, the lines and
 * records already taken from it still in place, and go on in *@buf (of
 * *@cap bytes; NULL: none) with a copy of the bytes not taken yet, or in
 * a new buffer if that one is too small. On return *@buf and *@cap are the
 * old buffer, the caller's to free. 0, or -ENOMEM with nothing changed.
 */
int usps__reader_swap(struct usps__reader *r, char **buf, size_t *cap);

/*
 * usps__reader_fill() - one read(2) from @fd into the reader (EINTR retried):
 * of the whole free block, or of 16 KiB at most while the lines and records
 * taken since the last fill averaged under 1 KiB.
 * Returns bytes read (> 0), 0 on end of file, -EAGAIN if nothing is ready,
 * -ENOMEM, or another negative errno from read(2).
 */
ssize_t usps__reader_fill(struct usps__reader *r, int fd);

/*
 * A source of bytes for usps__reader_fill_from(): up to @room bytes into
 * @buf. Returns the bytes stored (> 0), 0 at the end of the stream, or a
 * negative errno (-EAGAIN: nothing is ready).
 */
typedef ssize_t (*usps__source)(void *arg, void *buf, size_t room);
/* usps__reader_fill() from @src(@arg) instead of a fd; returns what it
 * returns. */
ssize_t usps__reader_fill_from(struct usps__reader *r, usps__source src,
			       void *arg);

/*
 * usps__reader_feed() - append @n bytes from memory (tests, fuzzing).
 * Returns 0 or -ENOMEM.
 */
int usps__reader_feed(struct usps__reader *r, const void *p, size_t n);

/*
 * usps__reader_next() - take the next complete line.
 * Returns 1 and sets *ret_line and *ret_len (without the '\n'; valid until the
 * next call on @r) if a line is complete; 0 if more bytes are needed;
 * -EMSGSIZE if a line, or the unterminated rest, is longer than max_frame
 * (the reader is then useless: drop the connection).
 * A line of exactly max_frame bytes is accepted.
 */
int usps__reader_next(struct usps__reader *r, const char **ret_line,
		      size_t *ret_len);

/*
 * Records: after a usps broker has agreed to send indexed frames (wire.h,
 * "usps.index"), the rest of its stream is records, each a little-endian
 * u32 size then that many bytes (a header, a line, its '\n').
 */
/* The little-endian u32 at @p (a record's size field, its spans). */
static inline uint32_t usps__get_le32(const void *p)
{
	const uint8_t *b = p;

	return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
	       (uint32_t)b[3] << 24;
}
/* The little-endian u16 at @p (a record's hlen, its narrow spans). */
static inline uint32_t usps__get_le16(const void *p)
{
	const uint8_t *b = p;

	return (uint32_t)b[0] | (uint32_t)b[1] << 8;
}
/* The size of the record at @rec, its size field included. */
static inline size_t usps__rec_size(const void *rec)
{
	return (size_t)usps__get_le32(rec) + 4;
}
/* Most header bytes a record holds around a line of at most max_frame. */
#define USPS__REC_OVERHEAD ((size_t)128)
/*
 * usps__reader_next_record() - take the next complete record.
 * Returns 1 and sets *ret_rec and *ret_len to the whole record, size field
 * included (valid until the next call on @r); 0 if more bytes are needed;
 * -EMSGSIZE if the size field says more than max_frame +
 * USPS__REC_OVERHEAD (the reader is then useless: drop the connection).
 * Lines and records may follow each other in one stream: the caller knows
 * which comes next.
 */
int usps__reader_next_record(struct usps__reader *r, const char **ret_rec,
			     size_t *ret_len);

/* Bytes buffered and not yet returned as lines. */
size_t usps__reader_pending(const struct usps__reader *r);

/*
 * A chunk: bytes shared by every queue it is pushed to (one event frame
 * built once for all receivers). Created with one reference.
 */
struct usps__chunk {
	uint32_t refs; /* touched only by the I/O thread */
	size_t len;
	size_t cap; /* bytes data[] holds: > len only in a queue's own tail */
	char data[];
};

/* A new chunk holding a copy of @p[0..n). NULL on ENOMEM. */
struct usps__chunk *usps__chunk_new(const void *p, size_t n);
struct usps__chunk *usps__chunk_ref(struct usps__chunk *c);
void usps__chunk_unref(struct usps__chunk *c);

/* A FIFO of chunks to one fd, written with writev(2). */
struct usps__wq {
	struct usps__wq_ent {
		struct usps__chunk *c;
		size_t off; /* bytes of c already written */
	} * ents;
	size_t cap;		/* ring capacity, a power of two (or 0) */
	size_t head;		/* index of the first entry */
	size_t count;		/* entries queued */
	uint64_t queued_bytes;	/* unwritten bytes in the queue */
	uint64_t pushed_total;	/* bytes ever pushed */
	uint64_t written_total; /* bytes ever written */
};

void usps__wq_init(struct usps__wq *q);
/* Drop every queued chunk reference and free the ring. */
void usps__wq_free(struct usps__wq *q);
/* Queue @c, taking a new reference to it. 0 or -ENOMEM (no ref taken). */
int usps__wq_push(struct usps__wq *q, struct usps__chunk *c);
/* Queue @c from byte @off on (off <= c->len), as usps__wq_push(). */
int usps__wq_push_at(struct usps__wq *q, struct usps__chunk *c, size_t off);
/*
 * Frames up to this size are cheaper copied than shared: a copy into the
 * queue's own tail chunk (usps__wq_put) costs less than a chunk's malloc,
 * and the queue then goes out in a few large iovecs instead of one per
 * frame.
 */
#define USPS__WQ_COPY_MAX ((size_t)1024)
/*
 * usps__wq_put() - queue a copy of @p[0..n), appended to the queue's last
 * chunk if that one is the queue's own and has room, else in a new one of
 * 16 KiB (or @n bytes if larger). 0 or -ENOMEM (nothing queued).
 */
int usps__wq_put(struct usps__wq *q, const void *p, size_t n);
static inline bool usps__wq_empty(const struct usps__wq *q)
{
	return q->count == 0;
}
/*
 * usps__wq_flush() - write as much as @fd takes, up to IOV_MAX chunks per
 * writev(2), looping until the queue is empty or the socket is full.
 * Returns 0 if the queue is now empty, -EAGAIN if bytes remain (wait for
 * EPOLLOUT), or another negative errno (-EPIPE, -ECONNRESET...: the peer is
 * gone). Uses MSG_NOSIGNAL semantics: never raises SIGPIPE.
 */
int usps__wq_flush(struct usps__wq *q, int fd);
/*
 * Where usps__wq_drain() writes: the first bytes of @iov[0..n) it takes.
 * Returns the bytes taken (0: no room now), or a negative errno (-EAGAIN:
 * no room now).
 */
struct iovec;
typedef ssize_t (*usps__sink)(void *arg, const struct iovec *iov, int n);
/* usps__wq_flush() into @sink(@arg) instead of a fd; returns what it
 * returns. */
int usps__wq_drain(struct usps__wq *q, usps__sink sink, void *arg);

#endif /* USPS_FRAME_H */
