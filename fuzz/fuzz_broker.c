/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the broker's frame handling: a broker state (no
 * threads) with two clients on socketpairs; a well-behaved one subscribed
 * to "t" (fan-out and group "g"), and a hostile one that sends the input.
 * Whatever the input, the broker must not crash, and every line it writes
 * to either client must be one valid JSON object. The good client asks for
 * indexed frames: each record it gets must hold such a line, and its index
 * must be what a parse of the line finds. Both are of the broker's uid, so
 * the hostile one may send records too ("usps.records"), which the broker
 * forwards on trust (wire.h): once it has, what the others get must still
 * be whole lines and records with their spans in them, but not valid JSON.
 * The good client reads through a ring, as usps clients do; the hostile
 * one may ask for one too. The broker itself is subscribed too, so its own
 * deliveries are exercised. Also replayed over fuzz/corpus/broker/ as an
 * ordinary test in every build.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char good_subs[] =
	"{\"type\":\"usps.index\"}\n"
	"{\"type\":\"usps.ring\"}\n"
	"{\"type\":\"subscribe\",\"topic\":\"t\"}\n"
	"{\"type\":\"subscribe\",\"topic\":\"t\",\"group\":\"g\"}\n";

static usps *broker_new(void)
{
	usps *ps = aligned_alloc(alignof(usps), sizeof(*ps));

	if (!ps)
		abort();
	memset(ps, 0, sizeof(*ps));
	usps_options_init(&ps->opt);
	ps->opt.max_inbound_frame_bytes = 1u << 16;
	ps->opt.max_client_queued_bytes = 1u << 20;
	ps->opt.max_memberships_per_client = 64;
	ps->uid = geteuid();
	ps->role = ROLE_BROKER;
	ps->self.fd = -1;
	ps->hash_seed = 7;
	ps->epfd = epoll_create1(EPOLL_CLOEXEC);
	pthread_mutex_init(&ps->dq_lock, NULL);
	pthread_cond_init(&ps->dq_cond, NULL);
	if (usps__uuidgen_init(&ps->uuid) < 0)
		abort();
	if (ps->epfd < 0)
		abort();
	return ps;
}

static void broker_free(usps *ps)
{
	usps__broker_reset(ps);
	usps__dl_commit(ps);
	usps__dl_stop(ps); /* no thread: frees what was queued */
	usps__registry_free(ps);
	usps__hmap_free(&ps->topics);
	usps__buf_free(&ps->scratch);
	pthread_mutex_destroy(&ps->dq_lock);
	pthread_cond_destroy(&ps->dq_cond);
	close(ps->epfd);
	free(ps);
}

static void never_called(const usps_event *ev, usps_delivery *d, void *ud)
{
	(void)ev;
	(void)d;
	(void)ud;
}

/* The broker's own subscription to "t", as usps_subscribe() makes it. */
static void self_subscribe(usps *ps)
{
	struct key *k = usps__key_get(ps, "t", 1, NULL, 0);
	struct usps_sub *s = calloc(1, sizeof(*s));

	if (!k || !s)
		abort();
	s->ps = ps;
	s->key = k;
	s->fn = never_called;
	s->active = true;
	atomic_init(&s->refs, 1);
	k->subs = s;
	k->nsubs = 1;
	if (usps__broker_member(ps, &ps->self, true, "t", 1, NULL, 0) < 0)
		abort();
}

/* Let the broker read @p until it has nothing more, then write out. */
static void pump(usps *ps, struct peer *p)
{
	for (int i = 0; i < 64 && !p->dead; i++) {
		usps__broker_peer_io(ps, p, EPOLLIN);
		usps__broker_tick(ps);
		if (!p->has_lines && usps__reader_pending(&p->rd) == 0)
			break;
	}
	usps__broker_flush_dirty(ps);
}

static bool same(struct usps__span a, struct usps__span b)
{
	return a.n == b.n && (!a.n || a.p == b.p);
}

/* An indexed record: a JSON object line, with the spans a parse finds;
 * with @trusting, a record whose spans lie in its one line. */
static void check_record(const char *rec, size_t n, bool trusting)
{
	struct usps__frame f, g;
	const char *line;
	size_t len;
	int k = usps__rec_open(rec, n, &line, &len, &f);

	if (k < 0 || memchr(line, '\n', len))
		abort();
	if (trusting)
		return;
	if (usps__wire_parse(line, len, &g) < 0)
		abort();
	if (k == 0)
		return;
	if (g.type != USPS__F_EVENT || !same(f.topic, g.topic) ||
	    !same(f.group, g.group) || f.group_kind != g.group_kind ||
	    !same(f.event, g.event) || !g.ev_known)
		abort();
	for (int i = 0; i < 6; i++)
		if (!same((&f.ev.type)[i], (&g.ev.type)[i]))
			abort();
}

/*
 * What the broker wrote to @fd, and then to the ring whose descriptors
 * came on it, if any, into @buf (of @cap bytes). Returns the bytes, and
 * in *@ret_ring whether a ring came.
 */
static size_t take_output(int fd, char *buf, size_t cap, bool *ret_ring)
{
	int fds[USPS__RING_FDS];
	struct usps__ring r;
	size_t len = 0;
	ssize_t n;

	*ret_ring = false;
	for (;;) {
		union {
			struct cmsghdr h;
			char b[CMSG_SPACE(sizeof(int) * USPS__RING_FDS)];
		} ctl;
		struct iovec iov = { .iov_base = buf + len,
				     .iov_len = cap - len };
		struct msghdr mh = { .msg_iov = &iov,
				     .msg_iovlen = 1,
				     .msg_control = ctl.b,
				     .msg_controllen = sizeof(ctl.b) };
		struct cmsghdr *c;

		n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (n <= 0)
			break;
		len += (size_t)n;
		c = CMSG_FIRSTHDR(&mh);
		if (!c || c->cmsg_type != SCM_RIGHTS)
			continue;
		/* The broker sends one ring, of three descriptors. */
		if (*ret_ring || c->cmsg_len != CMSG_LEN(sizeof(fds)))
			abort();
		memcpy(fds, CMSG_DATA(c), sizeof(fds));
		*ret_ring = true;
	}
	if (!*ret_ring)
		return len;
	if (usps__ring_attach(&r, fds) < 0)
		abort();
	while (len < cap && (n = usps__ring_read(&r, buf + len, cap - len)) > 0)
		len += (size_t)n;
	if (n == -EPROTO)
		abort();
	usps__ring_free(&r);
	return len;
}

/*
 * Everything the broker wrote to @fd (and to its ring) must be whole JSON
 * objects, then records of them after a "usps.index" line (which @indexed
 * requires, and a ring too).
 */
static void check_output(int fd, bool indexed, bool trusting)
{
	static char buf[1 << 21];
	static const char yes[] = "{\"type\":\"usps.index\"}";
	bool records = false, ring;
	size_t len = take_output(fd, buf, sizeof(buf), &ring);

	if (indexed && !ring)
		abort(); /* asked for at once: the broker had no cause to say no */
	for (size_t off = 0; off < len;) {
		char *nl;

		if (records) {
			size_t size;

			if (len - off < 4)
				break;
			size = (size_t)(uint8_t)buf[off] |
			       (size_t)(uint8_t)buf[off + 1] << 8 |
			       (size_t)(uint8_t)buf[off + 2] << 16 |
			       (size_t)(uint8_t)buf[off + 3] << 24;
			if (size > len - off - 4)
				break; /* cut by the queue cap */
			check_record(buf + off, size + 4, trusting);
			off += size + 4;
			continue;
		}
		nl = memchr(buf + off, '\n', len - off);
		if (!nl)
			break; /* a frame cut by the queue cap: not checked */
		if (!trusting &&
		    usps__json_is_object(buf + off, (size_t)(nl - buf - off)) <
			    0)
			abort();
		if ((size_t)(nl - buf - off) == sizeof(yes) - 1 &&
		    !memcmp(buf + off, yes, sizeof(yes) - 1))
			records = true;
		off = (size_t)(nl - buf) + 1;
	}
	if (indexed && !records)
		abort(); /* the broker never said yes */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int good[2], bad[2];
	struct peer *pg, *pb;
	bool trusting;
	usps *ps;

	if (size > (1u << 16) + 1024)
		return 0;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0,
		       good) < 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0,
		       bad) < 0)
		abort();
	ps = broker_new();
	self_subscribe(ps);
	pg = usps__broker_add_peer(ps, good[0], 1, ps->uid);
	pb = usps__broker_add_peer(ps, bad[0], 2, ps->uid);
	if (!pg || !pb)
		abort();
	if (send(good[1], good_subs, sizeof(good_subs) - 1, 0) < 0)
		abort();
	pump(ps, pg);
	if (size && send(bad[1], data, size, MSG_NOSIGNAL) < 0 &&
	    errno != EAGAIN)
		abort();
	pump(ps, pb);
	trusting = pb->rec_in;
	/* And a publish from the good peer, in a record as usps_publish()
	 * builds it, still goes through. */
	static const char mark[] = "{\"type\":\"usps.records\"}\n";
	struct usps__buf pub = { 0 };

	if (send(good[1], mark, sizeof(mark) - 1, 0) < 0 ||
	    usps__rec_put_publish(&pub, "t", 1, "end", 3, NULL,
				  (struct usps__span){ 0 },
				  (struct usps__span){ 0 }) < 0 ||
	    send(good[1], pub.p, pub.len, 0) < 0)
		abort();
	usps__buf_free(&pub);
	pump(ps, pg);
	usps__broker_reap(ps);
	check_output(good[1], true, trusting);
	check_output(bad[1], false, trusting);
	broker_free(ps); /* closes good[0] and bad[0] with the peers */
	close(good[1]);
	close(bad[1]);
	return 0;
}
