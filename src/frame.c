/* SPDX-License-Identifier: MIT */
/*
 * Newline framing on stream sockets, both directions.
 *
 * In: a bounded, sans-I/O line reader. Bytes are appended in large blocks,
 * lines are cut with memchr() resuming where the last search stopped, and
 * Mastra's limit applies: a line (without its '\n') or an unterminated tail
 * longer than max_frame is an error. The buffer holds at most max_frame plus
 * one read block, grows geometrically toward that and shrinks back to one
 * block once a large line is gone, so a peer costs memory in proportion to
 * the frame it is sending.
 *
 * Out: reference-counted chunks (one event frame built once, shared by every
 * receiver) queued per fd in a ring and written with one sendmsg(2) of up to
 * WQ_IOV iovecs at a time. Small frames are copied instead into a chunk of
 * the queue's own that they fill one after another, so that a stream of
 * them costs neither a malloc() nor an iovec each; such chunks, once
 * written, are kept per thread for the next (see tail_new()). sendmsg()
 * rather than writev() so that MSG_NOSIGNAL keeps a vanished peer from
 * raising SIGPIPE.
 */
#define _GNU_SOURCE
#include "frame.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* Bytes asked of one read(2), and the size a buffer rests at. */
#define READ_BLOCK ((size_t)64 * 1024)
/*
 * While frames are small, a read(2) asks for this much only: what one read
 * brings is then still in the nearest cache when it is parsed, which paid
 * more than the extra system calls cost (bench/: 1 -> 1 and fan-out of
 * 100-byte events, about 20% and 25% more). Large frames are read a whole block
 * at a time, as the calls would cost more than they save.
 */
#define READ_SMALL ((size_t)16 * 1024)
#define SMALL_FRAME ((size_t)1024)
/* Below this much free room, make more before reading. */
#define READ_MIN (READ_BLOCK / 4)
/* A buffer larger than this is shrunk once the line that needed it is gone. */
#define SHRINK_ABOVE ((size_t)1024 * 1024)

/* First ring size of a write queue. */
#define WQ_MIN_CAP ((size_t)16)
/* The chunk a queue copies small frames into (usps__wq_put): 16 KiB with
 * its header, no more than a reader takes in one small read. */
#define WQ_TAIL ((size_t)16 * 1024 - sizeof(struct usps__chunk))

/* Bytes past which a sendmsg(2) takes no more chunks: about what a
 * socket buffer holds, so that a deep queue is not walked and its iovecs
 * copied into the kernel for a call that takes only the first few. */
#define WQ_BATCH ((size_t)256 * 1024)

/* Chunks per sendmsg(2). */
#if defined(IOV_MAX) && IOV_MAX < 1024
#define WQ_IOV IOV_MAX
#else
#define WQ_IOV 1024
#endif

static bool would_block(int e)
{
#if EWOULDBLOCK != EAGAIN
	if (e == EWOULDBLOCK)
		return true;
#endif
	return e == EAGAIN;
}

/* ---- reader ---- */

void usps__reader_init(struct usps__reader *r, size_t max_frame)
{
	*r = (struct usps__reader){ .max_frame = max_frame };
}

void usps__reader_free(struct usps__reader *r)
{
	free(r->buf);
	*r = (struct usps__reader){ .max_frame = r->max_frame };
}

int usps__reader_swap(struct usps__reader *r, char **buf, size_t *cap)
{
	size_t pending = r->len - r->start;
	size_t ncap = *cap;
	char *nb = *buf;

	if (!nb || ncap < pending || ncap < READ_BLOCK) {
		ncap = pending > READ_BLOCK ? pending : READ_BLOCK;
		nb = malloc(ncap);
		if (!nb)
			return -ENOMEM;
		free(*buf);
	}
	if (pending)
		memcpy(nb, r->buf + r->start, pending);
	*buf = r->buf;
	*cap = r->cap;
	r->buf = nb;
	r->cap = ncap;
	r->scan -= r->start;
	r->len = pending;
	r->start = 0;
	return 0;
}

size_t usps__reader_pending(const struct usps__reader *r)
{
	return r->len - r->start;
}

/* The most the reader may hold: one over-long line is caught within it. */
static size_t reader_limit(const struct usps__reader *r)
{
	if (r->max_frame > SIZE_MAX - READ_BLOCK)
		return SIZE_MAX;
	return r->max_frame + READ_BLOCK;
}

/* Move the unconsumed bytes to the front of the buffer. */
static void slide(struct usps__reader *r)
{
	size_t pending = r->len - r->start;

	if (r->start == 0)
		return;
	if (pending)
		memmove(r->buf, r->buf + r->start, pending);
	r->scan -= r->start;
	r->len = pending;
	r->start = 0;
}

/*
 * Called on entry to every operation, when the line handed out last is no
 * longer promised to stay put: rewind an empty buffer, and give back a
 * large one once what is left of it fits in a resting block.
 */
static void settle(struct usps__reader *r)
{
	size_t pending = r->len - r->start;
	char *nb;

	if (pending == 0)
		r->start = r->len = r->scan = 0;
	if (r->cap <= SHRINK_ABOVE || pending > READ_BLOCK / 2)
		return;
	slide(r);
	nb = realloc(r->buf, READ_BLOCK);
	/* A failed shrink leaves the large buffer, still valid, in place. */
	if (nb) {
		r->buf = nb;
		r->cap = READ_BLOCK;
	}
}

/* Make at least @want bytes free after r->len. 0 or -ENOMEM. */
static int make_room(struct usps__reader *r, size_t want)
{
	size_t pending = r->len - r->start;
	size_t limit = reader_limit(r);
	size_t need, ncap;
	char *nb;

	if (r->cap - r->len >= want)
		return 0;
	if (want > SIZE_MAX - pending)
		return -ENOMEM;
	need = pending + want;
	/*
	 * Sliding costs the bytes moved. It is cheap when it moves no more
	 * than was consumed since the last slide (amortised O(1) a byte), and
	 * it is the only way once the buffer is as large as it may get.
	 * Otherwise grow, which also moves only the unconsumed bytes.
	 */
	if (r->start > 0 && r->cap >= need &&
	    (r->start >= pending || r->cap >= limit)) {
		slide(r);
		return 0;
	}
	if (r->cap < READ_BLOCK)
		ncap = READ_BLOCK;
	else if (r->cap > SIZE_MAX / 2)
		ncap = SIZE_MAX;
	else
		ncap = r->cap * 2;
	if (ncap > limit)
		ncap = limit;
	/* Only feed() of a large span can ask for more than the limit. */
	if (ncap < need)
		ncap = need;

	if (r->start == 0) {
		/* realloc() may remap a large buffer instead of copying it. */
		nb = realloc(r->buf, ncap);
		if (!nb)
			return -ENOMEM;
	} else {
		nb = malloc(ncap);
		if (!nb)
			return -ENOMEM;
		if (pending)
			memcpy(nb, r->buf + r->start, pending);
		free(r->buf);
		r->scan -= r->start;
		r->len = pending;
		r->start = 0;
	}
	r->buf = nb;
	r->cap = ncap;
	return 0;
}

static ssize_t read_fd(void *arg, void *buf, size_t room)
{
	ssize_t n;

	do {
		n = read(*(int *)arg, buf, room);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return would_block(errno) ? -EAGAIN : -errno;
	return n;
}

ssize_t usps__reader_fill(struct usps__reader *r, int fd)
{
	return usps__reader_fill_from(r, read_fd, &fd);
}

/*
 * Reads at most what keeps the buffer within max_frame + READ_BLOCK. Used
 * as meant (next() until it returns 0 between fills), the bytes held before
 * a fill are a partial line of at most max_frame, so there is always room
 * for a block. A caller that fills again without taking its lines can run
 * into the bound: -ENOBUFS then, rather than unbounded growth.
 */
ssize_t usps__reader_fill_from(struct usps__reader *r, usps__source src,
			       void *arg)
{
	size_t limit = reader_limit(r);
	size_t pending, room;
	ssize_t n;
	int ret;

	settle(r);
	pending = r->len - r->start;
	if (pending >= limit)
		return -ENOBUFS;
	room = limit - pending;
	ret = make_room(r, room < READ_MIN ? room : READ_MIN);
	if (ret < 0)
		return ret;
	/* Take whatever free space there is, within the bound, in one go;
	 * less while the frames are small. */
	if (room > r->cap - r->len)
		room = r->cap - r->len;
	if (r->taken && r->got / r->taken < SMALL_FRAME && room > READ_SMALL)
		room = READ_SMALL;
	if (room > SSIZE_MAX)
		room = SSIZE_MAX;

	n = src(arg, r->buf + r->len, room);
	if (n < 0)
		return n;
	r->len += (size_t)n;
	r->got = (size_t)n;
	r->full = (size_t)n == room;
	r->taken = 0;
	return n;
}

int usps__reader_feed(struct usps__reader *r, const void *p, size_t n)
{
	int ret;

	if (n == 0)
		return 0;
	settle(r);
	ret = make_room(r, n);
	if (ret < 0)
		return ret;
	memcpy(r->buf + r->len, p, n);
	r->len += n;
	return 0;
}

int usps__reader_next(struct usps__reader *r, const char **ret_line,
		      size_t *ret_len)
{
	char *nl = NULL;
	size_t end;

	settle(r);
	end = r->len;
	/*
	 * Look no further than the longest allowed line could reach: the
	 * search is bounded, and a line that is too long is reported as soon
	 * as max_frame + 1 bytes of it are in, terminated or not.
	 */
	if (r->len - r->start > r->max_frame)
		end = r->start + r->max_frame + 1;
	if (r->scan < end)
		nl = memchr(r->buf + r->scan, '\n', end - r->scan);
	if (!nl) {
		/* Every byte up to end has been searched: never again. */
		r->scan = end;
		return r->len - r->start > r->max_frame ? -EMSGSIZE : 0;
	}
	*ret_line = r->buf + r->start;
	*ret_len = (size_t)(nl - (r->buf + r->start));
	r->start += *ret_len + 1;
	r->scan = r->start;
	r->taken++;
	return 1;
}

int usps__reader_next_record(struct usps__reader *r, const char **ret_rec,
			     size_t *ret_len)
{
	size_t have, size;

	settle(r);
	have = r->len - r->start;
	if (have < 4)
		return 0;
	size = usps__get_le32(r->buf + r->start);
	if (size > USPS__REC_OVERHEAD &&
	    size - USPS__REC_OVERHEAD > r->max_frame)
		return -EMSGSIZE;
	if (have - 4 < size)
		return 0;
	*ret_rec = r->buf + r->start;
	*ret_len = 4 + size;
	r->start += 4 + size;
	r->scan = r->start;
	r->taken++;
	return 1;
}

/* ---- chunks ---- */

struct usps__chunk *usps__chunk_new(const void *p, size_t n)
{
	struct usps__chunk *c;

	if (n > SIZE_MAX - sizeof(*c))
		return NULL;
	c = malloc(sizeof(*c) + n);
	if (!c)
		return NULL;
	c->refs = 1;
	c->len = c->cap = n;
	if (n)
		memcpy(c->data, p, n);
	return c;
}

struct usps__chunk *usps__chunk_ref(struct usps__chunk *c)
{
	c->refs++;
	return c;
}

/*
 * Written queue-tail chunks kept for reuse, per thread (chunks are the
 * I/O thread's alone), up to TAIL_KEEP of them. A broker's queues take
 * and drop several every turn; freed, they sit at the heap top, which
 * glibc hands back to the kernel, so that the next ones fault their pages
 * in again: in fan-out that cost the broker up to an eighth of its time,
 * in about half the runs (bench/: 4.4 to 5.5 M deliveries/s against 5.6 to
 * 5.7 M with the cache). The list is freed when its thread exits.
 */
#define TAIL_KEEP 64u

struct tail_cache {
	struct usps__chunk *head; /* linked through data[] */
	unsigned n;
	bool registered; /* with tail_key, for the exit */
};

static _Thread_local struct tail_cache tails;
static pthread_key_t tail_key;
static bool tail_key_ok;
static pthread_once_t tail_once = PTHREAD_ONCE_INIT;

static void tail_cache_free(void *arg)
{
	struct tail_cache *tc = arg;

	while (tc->head) {
		struct usps__chunk *c = tc->head;

		memcpy(&tc->head, c->data, sizeof(tc->head));
		free(c);
	}
	tc->n = 0;
	tc->registered = false;
}

static void tail_key_init(void)
{
	tail_key_ok = pthread_key_create(&tail_key, tail_cache_free) == 0;
}

/* Keep @c (a written tail chunk) for reuse; false if there is no room. */
static bool tail_keep(struct usps__chunk *c)
{
	if (tails.n == TAIL_KEEP)
		return false;
	if (!tails.registered) {
		(void)pthread_once(&tail_once, tail_key_init);
		if (!tail_key_ok || pthread_setspecific(tail_key, &tails) != 0)
			return false;
		tails.registered = true;
	}
	memcpy(c->data, &tails.head, sizeof(tails.head));
	tails.head = c;
	tails.n++;
	return true;
}

/* An empty chunk with room for WQ_TAIL bytes, the queue's alone. */
static struct usps__chunk *tail_new(void)
{
	struct usps__chunk *c = tails.head;

	if (c) {
		memcpy(&tails.head, c->data, sizeof(tails.head));
		tails.n--;
	} else {
		c = malloc(sizeof(*c) + WQ_TAIL);
		if (!c)
			return NULL;
	}
	*c = (struct usps__chunk){ .refs = 0, .len = 0, .cap = WQ_TAIL };
	return c;
}

void usps__chunk_unref(struct usps__chunk *c)
{
	if (c && --c->refs == 0 && (c->cap != WQ_TAIL || !tail_keep(c)))
		free(c);
}

/* ---- write queue ---- */

void usps__wq_init(struct usps__wq *q)
{
	*q = (struct usps__wq){ 0 };
}

void usps__wq_free(struct usps__wq *q)
{
	size_t mask = q->cap - 1;

	for (size_t i = 0; i < q->count; i++)
		usps__chunk_unref(q->ents[(q->head + i) & mask].c);
	free(q->ents);
	usps__wq_init(q);
}

/* Double a full ring, keeping its entries in order. 0 or -ENOMEM. */
static int wq_grow(struct usps__wq *q)
{
	struct usps__wq_ent *ne;
	size_t ncap;

	if (q->cap == 0)
		ncap = WQ_MIN_CAP;
	else if (q->cap > SIZE_MAX / 2 / sizeof(*ne))
		return -ENOMEM;
	else
		ncap = q->cap * 2;
	ne = realloc(q->ents, ncap * sizeof(*ne));
	if (!ne)
		return -ENOMEM;
	/*
	 * The full ring held [head, cap) then [0, head): move the wrapped part
	 * after the old end so the entries run on without a break.
	 */
	if (q->head > 0)
		memcpy(ne + q->cap, ne, q->head * sizeof(*ne));
	q->ents = ne;
	q->cap = ncap;
	return 0;
}

int usps__wq_push_at(struct usps__wq *q, struct usps__chunk *c, size_t off)
{
	if (q->count == q->cap && wq_grow(q) < 0)
		return -ENOMEM;
	q->ents[(q->head + q->count) & (q->cap - 1)] = (struct usps__wq_ent){
		.c = usps__chunk_ref(c),
		.off = off,
	};
	q->count++;
	q->queued_bytes += c->len - off;
	q->pushed_total += c->len - off;
	return 0;
}

int usps__wq_push(struct usps__wq *q, struct usps__chunk *c)
{
	return usps__wq_push_at(q, c, 0);
}

int usps__wq_put(struct usps__wq *q, const void *p, size_t n)
{
	struct usps__chunk *t = NULL;

	if (!n)
		return 0;
	if (q->count)
		t = q->ents[(q->head + q->count - 1) & (q->cap - 1)].c;
	/* Only a chunk no other queue shares may grow. */
	if (!t || t->refs != 1 || t->cap - t->len < n) {
		int r;

		if (n <= WQ_TAIL) {
			t = tail_new();
		} else {
			if (n > SIZE_MAX - sizeof(*t))
				return -ENOMEM;
			t = malloc(sizeof(*t) + n);
			if (t)
				*t = (struct usps__chunk){ .cap = n };
		}
		if (!t)
			return -ENOMEM;
		r = usps__wq_push(q, t); /* the queue's is the only ref */
		if (r < 0) {
			t->refs = 1;
			usps__chunk_unref(t);
			return r;
		}
	}
	memcpy(t->data + t->len, p, n);
	t->len += n;
	q->queued_bytes += n;
	q->pushed_total += n;
	return 0;
}

/*
 * Account for @w bytes written from the head of @q: advance offsets across
 * chunk boundaries and drop the chunks written in full (and any empty ones
 * reached on the way).
 */
static void wq_consume(struct usps__wq *q, size_t w)
{
	size_t mask = q->cap - 1;

	q->written_total += w;
	q->queued_bytes -= w;
	while (q->count) {
		struct usps__wq_ent *e = &q->ents[q->head];
		size_t left = e->c->len - e->off;

		if (w < left) {
			e->off += w;
			break;
		}
		w -= left;
		usps__chunk_unref(e->c);
		e->c = NULL;
		q->head = (q->head + 1) & mask;
		q->count--;
	}
}

static ssize_t send_fd(void *arg, const struct iovec *iov, int n)
{
	struct msghdr mh = { .msg_iov = (struct iovec *)iov,
			     .msg_iovlen = (size_t)n };
	ssize_t w;

	do {
		w = sendmsg(*(int *)arg, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
	} while (w < 0 && errno == EINTR);
	if (w < 0)
		return would_block(errno) ? -EAGAIN : -errno;
	return w;
}

int usps__wq_flush(struct usps__wq *q, int fd)
{
	return usps__wq_drain(q, send_fd, &fd);
}

int usps__wq_drain(struct usps__wq *q, usps__sink sink, void *arg)
{
	struct iovec iov[WQ_IOV];
	size_t mask = q->cap - 1;

	for (;;) {
		size_t n = 0, total = 0;
		ssize_t w;

		/* Empty chunks at the head need no system call. */
		wq_consume(q, 0);
		if (q->count == 0)
			return 0;
		for (size_t i = 0; i < q->count && n < WQ_IOV; i++) {
			struct usps__wq_ent *e = &q->ents[(q->head + i) & mask];
			size_t left = e->c->len - e->off;

			if (left == 0)
				continue;
			/* One call moves at most SSIZE_MAX bytes. */
			if (left > (size_t)SSIZE_MAX - total)
				left = (size_t)SSIZE_MAX - total;
			iov[n].iov_base = e->c->data + e->off;
			iov[n].iov_len = left;
			n++;
			total += left;
			if (total >= WQ_BATCH)
				break;
		}
		w = sink(arg, iov, (int)n);
		if (w < 0)
			return (int)w;
		/* No progress on a non-empty batch: wait for EPOLLOUT. */
		if (w == 0)
			return -EAGAIN;
		wq_consume(q, (size_t)w);
	}
}
