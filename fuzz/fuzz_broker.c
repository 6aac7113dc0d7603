/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the broker's frame handling: a broker state (no
 * threads) with two clients on socketpairs; a well-behaved one subscribed
 * to "t" (fan-out and group "g"), and a hostile one that sends the input.
 * Whatever the input, the broker must not crash, and every line it writes
 * to either client must be one valid JSON object. The broker itself is
 * subscribed too, so its own deliveries are exercised. Also replayed over
 * fuzz/corpus/broker/ as an ordinary test in every build.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char good_subs[] =
	"{\"type\":\"subscribe\",\"topic\":\"t\"}\n"
	"{\"type\":\"subscribe\",\"topic\":\"t\",\"group\":\"g\"}\n";

static usps *broker_new(void)
{
	usps *ps = calloc(1, sizeof(*ps));

	if (!ps)
		abort();
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
	usps__uuidgen_init(&ps->uuid);
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

/* Everything the broker wrote to @fd must be whole JSON objects. */
static void check_output(int fd)
{
	static char buf[1 << 21];
	size_t len = 0;
	ssize_t n;

	while ((n = recv(fd, buf + len, sizeof(buf) - len, MSG_DONTWAIT)) > 0)
		len += (size_t)n;
	for (size_t off = 0; off < len;) {
		char *nl = memchr(buf + off, '\n', len - off);

		if (!nl)
			break; /* a frame cut by the queue cap: not checked */
		if (usps__json_is_object(buf + off, (size_t)(nl - buf - off)) <
		    0)
			abort();
		off = (size_t)(nl - buf) + 1;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int good[2], bad[2];
	struct peer *pg, *pb;
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
	/* And a publish from the good peer still goes through. */
	static const char pub[] =
		"{\"type\":\"publish\",\"topic\":\"t\",\"event\":{}}\n";
	if (send(good[1], pub, sizeof(pub) - 1, 0) < 0)
		abort();
	pump(ps, pg);
	usps__broker_reap(ps);
	check_output(good[1]);
	check_output(bad[1]);
	broker_free(ps); /* closes good[0] and bad[0] with the peers */
	close(good[1]);
	close(bad[1]);
	return 0;
}
