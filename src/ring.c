/* SPDX-License-Identifier: MIT */
/*
 * The shared-memory ring of ring.h. A broker's write to a client's socket
 * costs it a system call and a copy into fresh kernel memory per batch,
 * and the client another system call and copy to read it: in fan-out, most
 * of the time of both. Through the ring each side copies once, in user
 * space, into memory that stays mapped, and a system call is left only for
 * a side that had nothing to do and went to sleep.
 */
#define _GNU_SOURCE
#include "ring.h"

#include <errno.h>
#include <fcntl.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The indices' page, before the data. */
#define HDR_BYTES ((size_t)4096)

/* Each index on a cache line of its own: each is written by one side. */
struct usps__ring_hdr {
	alignas(64) _Atomic uint64_t head;	 /* the writer's */
	alignas(64) _Atomic uint32_t sleeping;	 /* set by the reader */
	alignas(64) _Atomic uint64_t tail;	 /* the reader's */
	alignas(64) _Atomic uint32_t want_space; /* set by the writer */
};

_Static_assert(sizeof(struct usps__ring_hdr) <= HDR_BYTES,
	       "the indices fit their page");
/* Shared between processes, the atomics must not hide a lock. */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2 && ATOMIC_INT_LOCK_FREE == 2,
	       "lock-free 32- and 64-bit atomics");

#define SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

static bool size_ok(size_t size)
{
	return size >= USPS__RING_MIN && size <= USPS__RING_MAX &&
	       (size & (size - 1)) == 0;
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		(void)close(*fd);
	*fd = -1;
}

void usps__ring_kick(int fd)
{
	uint64_t one = 1;
	ssize_t w;

	/* It fails only when the count is about to overflow: the other side
	 * has a wake-up pending anyway. */
	do {
		w = write(fd, &one, sizeof(one));
	} while (w < 0 && errno == EINTR);
}

void usps__ring_clear(int fd)
{
	uint64_t v;
	ssize_t n;

	do {
		n = read(fd, &v, sizeof(v));
	} while (n < 0 && errno == EINTR);
}

void usps__ring_init(struct usps__ring *r)
{
	*r = (struct usps__ring){ .wake_fd = -1, .space_fd = -1 };
}

/* Map @size data bytes of the memfd @mfd, with their indices, into @r. */
static int map_ring(struct usps__ring *r, int mfd, size_t size)
{
	void *map = mmap(NULL, HDR_BYTES + size, PROT_READ | PROT_WRITE,
			 MAP_SHARED, mfd, 0);

	if (map == MAP_FAILED)
		return -errno;
	r->hdr = map;
	r->data = (unsigned char *)map + HDR_BYTES;
	r->size = size;
	r->map_len = HDR_BYTES + size;
	return 0;
}

int usps__ring_create(struct usps__ring *r, size_t size,
		      int ret_fds[USPS__RING_FDS])
{
	int mfd, ret;

	usps__ring_init(r);
	if (!size_ok(size))
		return -EINVAL;
	mfd = memfd_create("usps-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (mfd < 0)
		return -errno;
	/* Sealed, the reader cannot shrink it under our stores (SIGBUS). */
	if (ftruncate(mfd, (off_t)(HDR_BYTES + size)) < 0 ||
	    fcntl(mfd, F_ADD_SEALS, SEALS) < 0) {
		ret = -errno;
		goto close_memfd;
	}
	ret = map_ring(r, mfd, size);
	if (ret < 0)
		goto close_memfd;
	r->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	r->space_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (r->wake_fd < 0 || r->space_fd < 0) {
		ret = -errno;
		usps__ring_free(r);
		goto close_memfd;
	}
	ret_fds[0] = mfd;
	ret_fds[1] = r->wake_fd;
	ret_fds[2] = r->space_fd;
	return 0;

close_memfd:
	(void)close(mfd);
	return ret;
}

int usps__ring_attach(struct usps__ring *r, const int fds[USPS__RING_FDS])
{
	int mfd = fds[0], seals, ret;
	struct stat st;
	size_t size;

	usps__ring_init(r);
	if (fstat(mfd, &st) < 0) {
		ret = -errno;
		goto close_all;
	}
	seals = fcntl(mfd, F_GET_SEALS);
	if (seals < 0 || (seals & SEALS) != SEALS ||
	    (uint64_t)st.st_size < HDR_BYTES) {
		ret = -EPROTO;
		goto close_all;
	}
	size = (size_t)st.st_size - HDR_BYTES;
	if (!size_ok(size)) {
		ret = -EPROTO;
		goto close_all;
	}
	ret = map_ring(r, mfd, size);
	if (ret < 0)
		goto close_all;
	(void)close(mfd);
	r->pos = atomic_load_explicit(&r->hdr->tail, memory_order_acquire);
	r->wake_fd = fds[1];
	r->space_fd = fds[2];
	return 0;

close_all:
	for (int i = 0; i < USPS__RING_FDS; i++)
		if (fds[i] >= 0)
			(void)close(fds[i]);
	return ret;
}

void usps__ring_free(struct usps__ring *r)
{
	if (r->hdr)
		(void)munmap(r->hdr, r->map_len);
	close_fd(&r->wake_fd);
	close_fd(&r->space_fd);
	usps__ring_init(r);
}

/* Room for the writer, at least @want bytes of it if there is, as far as
 * a look at tail shows (only when needed: its line is the reader's). */
static int64_t room_for(struct usps__ring *r, size_t want)
{
	uint64_t room = r->size - (r->pos - r->seen);
	uint64_t t;

	if (room >= want && room)
		return (int64_t)room;
	t = atomic_load_explicit(&r->hdr->tail, memory_order_acquire);
	/* Untrusted: never back, never past what we wrote. */
	if (t < r->seen || t > r->pos)
		return -EPROTO;
	r->seen = t;
	return (int64_t)(r->size - (r->pos - t));
}

static void copy_in(struct usps__ring *r, const void *p, size_t len)
{
	size_t off = r->pos & (r->size - 1);
	size_t first = r->size - off < len ? r->size - off : len;

	memcpy(r->data + off, p, first);
	memcpy(r->data, (const char *)p + first, len - first);
	r->pos += len;
}

int usps__ring_put(struct usps__ring *r, const void *p, size_t n)
{
	int64_t room = room_for(r, n);

	if (room < 0)
		return (int)room;
	if ((uint64_t)room < n)
		return -ENOSPC;
	copy_in(r, p, n);
	return 0;
}

void usps__ring_publish(struct usps__ring *r)
{
	struct usps__ring_hdr *h = r->hdr;

	if (atomic_load_explicit(&h->head, memory_order_relaxed) == r->pos)
		return;
	atomic_store_explicit(&h->head, r->pos, memory_order_seq_cst);
	if (atomic_load_explicit(&h->sleeping, memory_order_seq_cst) &&
	    atomic_exchange_explicit(&h->sleeping, 0, memory_order_seq_cst))
		usps__ring_kick(r->wake_fd);
}

ssize_t usps__ring_write(struct usps__ring *r, const struct iovec *iov, int n)
{
	size_t want = 0, total = 0;
	int64_t room;

	for (int i = 0; i < n && want < SIZE_MAX / 2; i++)
		want += iov[i].iov_len;
	room = room_for(r, want);
	if (room < 0)
		return room;
	for (int i = 0; i < n && room; i++) {
		size_t len = iov[i].iov_len < (uint64_t)room ? iov[i].iov_len
							     : (size_t)room;

		copy_in(r, iov[i].iov_base, len);
		room -= (int64_t)len;
		total += len;
	}
	usps__ring_publish(r);
	return (ssize_t)total;
}

bool usps__ring_wait_room(struct usps__ring *r)
{
	struct usps__ring_hdr *h = r->hdr;

	atomic_store_explicit(&h->want_space, 1, memory_order_seq_cst);
	return atomic_load_explicit(&h->tail, memory_order_seq_cst) != r->seen;
}

ssize_t usps__ring_read(struct usps__ring *r, void *buf, size_t room)
{
	struct usps__ring_hdr *h = r->hdr;
	size_t mask = r->size - 1, off, first;
	uint64_t avail;

	avail = atomic_load_explicit(&h->head, memory_order_acquire) - r->pos;
	if (avail == 0)
		return -EAGAIN;
	if (avail > r->size)
		return -EPROTO;
	if (room > avail)
		room = (size_t)avail;
	off = r->pos & mask;
	first = r->size - off < room ? r->size - off : room;
	memcpy(buf, r->data + off, first);
	memcpy((char *)buf + first, r->data, room - first);
	r->pos += room;
	atomic_store_explicit(&h->tail, r->pos, memory_order_seq_cst);
	if (atomic_load_explicit(&h->want_space, memory_order_seq_cst) &&
	    atomic_exchange_explicit(&h->want_space, 0, memory_order_seq_cst))
		usps__ring_kick(r->space_fd);
	return (ssize_t)room;
}

bool usps__ring_sleep(struct usps__ring *r)
{
	struct usps__ring_hdr *h = r->hdr;

	atomic_store_explicit(&h->sleeping, 1, memory_order_seq_cst);
	if (atomic_load_explicit(&h->head, memory_order_seq_cst) == r->pos)
		return false;
	/* Bytes came after all: no wake-up needed for them. */
	atomic_store_explicit(&h->sleeping, 0, memory_order_relaxed);
	return true;
}
