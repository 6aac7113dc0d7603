/* SPDX-License-Identifier: MIT */
/*
 * A shared-memory byte ring from a broker to one client of its own uid
 * (wire.h, "usps.ring"): the bytes the socket would carry, in the same
 * order, without a system call and two kernel copies for each batch.
 */
#ifndef USPS_RING_H
#define USPS_RING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

/*
 * One writer (the broker) and one reader (the client), each in its own
 * process, map one sealed memfd: a page of indices, then the data, a power
 * of two in bytes. head and tail count the bytes ever written and read; the
 * reader may take [tail, head), the writer fill [head, tail + size).
 *
 * Wake-ups go through two eventfds, and only when the other side asked for
 * one: the reader sets `sleeping` before it waits for bytes, the writer
 * sets `want_space` before it waits for room. Each side stores its flag and
 * then reads the other's index again, and each side stores its index and
 * then reads the other's flag, all sequentially consistent: one of the two
 * sees the other, so no wake-up is lost.
 *
 * Trust: the writer reads nothing in the mapping but tail, and a tail that
 * moves backwards or past head is a broken reader (-EPROTO). The memfd is
 * sealed against shrinking, so a reader cannot make the writer's stores
 * fault. The reader takes the writer's bytes on trust, as it takes the
 * socket's from a broker of its uid, but checks head, so that a broken
 * writer cannot make it read outside the mapping.
 */
struct usps__ring_hdr;

struct usps__ring {
	struct usps__ring_hdr *hdr; /* NULL: no ring */
	unsigned char *data;
	size_t size;	/* data bytes, a power of two */
	size_t map_len; /* the whole mapping */
	uint64_t pos;	/* writer: head; reader: tail */
	uint64_t seen;	/* writer: the last tail read (checked) */
	int wake_fd;	/* eventfd: the writer wakes the reader */
	int space_fd;	/* eventfd: the reader tells the writer of room */
};

/* The descriptors that go to the reader, in this order: memfd, wake_fd,
 * space_fd. */
#define USPS__RING_FDS 3
/* Bounds of a ring's data size. */
#define USPS__RING_MIN ((size_t)4096)
#define USPS__RING_MAX ((size_t)64 << 20)

/* A ring that holds nothing: every descriptor -1. */
void usps__ring_init(struct usps__ring *r);

/*
 * usps__ring_create() - the writer's side: a new ring of @size data bytes
 * (a power of two within the bounds above) and its eventfds. Stores in
 * @ret_fds the descriptors to send to the reader; the memfd among them is
 * the caller's to close once sent, the eventfds stay the ring's. 0,
 * -EINVAL (@size), or a negative errno from memfd_create(), ftruncate(),
 * fcntl(), mmap() or eventfd(), with nothing left open.
 */
int usps__ring_create(struct usps__ring *r, size_t size,
		      int ret_fds[USPS__RING_FDS]);

/*
 * usps__ring_attach() - the reader's side, from the descriptors a writer
 * sent (@fds, in the order above), which it takes over: on success the
 * memfd is closed and the eventfds kept; on failure all three are closed.
 * 0, -EPROTO (not a ring: size out of bounds, not sealed), or a negative
 * errno from fstat(), fcntl() or mmap().
 */
int usps__ring_attach(struct usps__ring *r, const int fds[USPS__RING_FDS]);

/* Unmap and close what the ring holds (either side); it is then empty. The
 * caller removes its eventfd from any epoll set first: the other process
 * holds the same file open, so closing does not. */
void usps__ring_free(struct usps__ring *r);

/*
 * usps__ring_put() - the writer copies @p[0..n) in whole, to be made
 * visible by the next usps__ring_publish() or usps__ring_write(). Returns
 * 0, -ENOSPC (it does not fit now: nothing copied), or -EPROTO (the
 * reader's tail is broken: drop it).
 */
int usps__ring_put(struct usps__ring *r, const void *p, size_t n);

/* The writer makes what it put visible, and wakes the reader if it
 * sleeps. */
void usps__ring_publish(struct usps__ring *r);

/*
 * usps__ring_write() - the writer copies the first bytes of @iov[0..n) that
 * fit, makes them visible, and wakes the reader if it sleeps. Returns the
 * bytes copied (0: the ring is full), -EPROTO (the reader's tail is
 * broken: drop it), or a negative errno from the wake-up's write().
 */
ssize_t usps__ring_write(struct usps__ring *r, const struct iovec *iov, int n);

/*
 * usps__ring_wait_room() - the writer found the ring full: ask the reader
 * for a wake-up on space_fd when it takes bytes. Returns true if room
 * appeared meanwhile (write again instead of waiting).
 */
bool usps__ring_wait_room(struct usps__ring *r);

/*
 * usps__ring_read() - the reader takes up to @room (> 0) bytes into @buf
 * and tells a waiting writer of the room. Returns the bytes taken (> 0),
 * -EAGAIN when the ring is empty, or -EPROTO if head is broken.
 */
ssize_t usps__ring_read(struct usps__ring *r, void *buf, size_t room);

/*
 * usps__ring_sleep() - the reader found the ring empty: ask the writer for
 * a wake-up on wake_fd when it writes. Reset wake_fd before, not after, or
 * a wake-up may be lost. Returns true if bytes came meanwhile (read again
 * instead of waiting).
 */
bool usps__ring_sleep(struct usps__ring *r);

/* Reset @fd, an eventfd of the ring that epoll reported readable. */
void usps__ring_clear(int fd);
/* Make @fd, an eventfd of the ring, readable (a wake-up to oneself). */
void usps__ring_kick(int fd);

#endif /* USPS_RING_H */
