/* SPDX-License-Identifier: MIT */
/*
 * The library's behaviour with several handles in one process, and raw
 * wire peers: spec §5.1 items 1-28, §5.3 items 34-37 and the raw cases of
 * §5.10, adapted to C. Negative checks ("B got nothing") are made without
 * sleeping: a marker event published afterwards by the same publisher
 * arrives after anything published before it.
 */
#include "common.h"

#include <sys/stat.h>

static char path[PATH_MAX];

static const char *sock(void)
{
	return harness_path(path, "bus.sock");
}

#define PUB(ps, topic, type) usps_publish(ps, topic, type, "{}", 2, 0)

/* 34, 35: a solo broker; a second handle is its client. */
TEST(solo_and_client)
{
	usps *b = NULL, *c = NULL;
	struct col cb;
	usps_sub *s;

	col_init(&cb);
	REQUIRE(open_default(&b, sock()) == 0);
	CHECK(usps_is_broker(b));
	CHECK_EQ_INT(usps_remote_client_count(b), 0);
	CHECK_EQ_STR(usps_socket_path(b), sock());
	CHECK_EQ_INT(usps_broker_pid(b), getpid());
	CHECK_EQ_INT(usps_subscribe(b, "t", NULL, col_handler, &cb, &s), 0);
	CHECK_EQ_INT(PUB(b, "t", "solo"), 0);
	CHECK_EQ_INT(usps_flush(b, 2000), 0);
	CHECK_EQ_INT(col_count(&cb), 1);
	CHECK_EQ_STR(cb.type[0], "solo");
	CHECK_EQ_INT(cb.attempt[0], 1);
	CHECK_EQ_INT(strlen(cb.id[0]), 36);
	CHECK(cb.created[0] > 1700000000000ll);

	REQUIRE(open_default(&c, sock()) == 0);
	CHECK(!usps_is_broker(c));
	CHECK(wait_clients(b, 1, 2000));
	CHECK_EQ_INT(usps_remote_client_count(c), 0);
	CHECK_EQ_INT(usps_close(c), 0);
	CHECK(wait_clients(b, 0, 2000));
	CHECK_EQ_INT(usps_close(b), 0);
	col_free(&cb);
}

/* 1, 7, 36: fan-out between handles, echo to the publishing client. */
TEST(fanout_and_echo)
{
	usps *b = NULL, *c = NULL;
	struct col cb, cc;
	usps_sub *sb, *sc;

	col_init(&cb);
	col_init(&cc);
	REQUIRE(open_default(&b, sock()) == 0);
	REQUIRE(open_default(&c, sock()) == 0);
	CHECK(usps_is_broker(b) && !usps_is_broker(c));
	CHECK_EQ_INT(usps_subscribe(b, "topic-a", NULL, col_handler, &cb, &sb),
		     0);
	CHECK_EQ_INT(usps_subscribe(c, "topic-a", NULL, col_handler, &cc, &sc),
		     0);
	CHECK_EQ_INT(PUB(b, "topic-a", "hello"), 0);
	CHECK_EQ_INT(col_wait(&cb, 1, 2000), 1);
	CHECK_EQ_INT(col_wait(&cc, 1, 2000), 1);
	CHECK_EQ_STR(cc.type[0], "hello");
	CHECK_EQ_STR(cb.id[0], cc.id[0]); /* one stamp for all receivers */
	CHECK_EQ_INT(PUB(c, "topic-a", "from-client"), 0);
	CHECK_EQ_INT(col_wait(&cb, 2, 2000), 2);
	CHECK_EQ_INT(col_wait(&cc, 2, 2000), 2);
	CHECK_EQ_STR(cc.type[1], "from-client");
	CHECK_EQ_STR(cb.type[1], "from-client");
	usps_close(c);
	usps_close(b);
	col_free(&cb);
	col_free(&cc);
}

/*
 * The broker remembers the topic the last publish found: a topic that goes
 * away (its last member left) and comes back is looked up again, never
 * reached through the one it remembered.
 */
TEST(broker_topic_comes_and_goes)
{
	usps *b = NULL, *c = NULL, *d = NULL;
	struct col cc, cd;
	usps_sub *sc, *sd;

	col_init(&cc);
	col_init(&cd);
	REQUIRE(open_default(&b, sock()) == 0);
	REQUIRE(open_default(&c, sock()) == 0);
	REQUIRE(open_default(&d, sock()) == 0);
	REQUIRE(usps_is_broker(b));
	REQUIRE(usps_subscribe(c, "tc", NULL, col_handler, &cc, &sc) == 0);
	CHECK_EQ_INT(PUB(b, "tc", "one"), 0);
	CHECK_EQ_INT(PUB(b, "tc", "two"), 0);
	CHECK_EQ_INT(col_wait(&cc, 2, 2000), 2);
	/* The topic goes with its last member. */
	REQUIRE(usps_unsubscribe(c, sc) == 0);
	CHECK_EQ_INT(PUB(b, "tc", "nobody"), 0);
	/* Routed (to nobody) before the topic comes back, not after. */
	REQUIRE(usps_flush(b, 2000) == 0);
	/* And comes back with a new one. */
	REQUIRE(usps_subscribe(d, "tc", NULL, col_handler, &cd, &sd) == 0);
	CHECK_EQ_INT(PUB(b, "tc", "three"), 0);
	CHECK_EQ_INT(col_wait(&cd, 1, 2000), 1);
	CHECK_EQ_STR(cd.type[0], "three");
	REQUIRE(usps_flush(b, 2000) == 0);
	CHECK_EQ_INT(col_count(&cc), 2);
	CHECK_EQ_INT(col_count(&cd), 1);
	usps_close(d);
	usps_close(c);
	usps_close(b);
	col_free(&cc);
	col_free(&cd);
}

/* 37: a client's publish reaches the broker and every other client. */
TEST(three_handles)
{
	usps *h[3] = { 0 };
	struct col c[3];
	usps_sub *s;

	for (int i = 0; i < 3; i++) {
		col_init(&c[i]);
		REQUIRE(open_default(&h[i], sock()) == 0);
		CHECK_EQ_INT(usps_subscribe(h[i], "t", NULL, col_handler, &c[i],
					    &s),
			     0);
	}
	CHECK_EQ_INT(PUB(h[1], "t", "x"), 0);
	for (int i = 0; i < 3; i++)
		CHECK_EQ_INT(col_wait(&c[i], 1, 2000), 1);
	for (int i = 2; i >= 0; i--) {
		usps_close(h[i]);
		col_free(&c[i]);
	}
}

/* 2: two handlers of one group in one handle alternate. */
TEST(local_group_round_robin)
{
	usps *b = NULL;
	struct col w1, w2;
	usps_sub *s1, *s2;

	col_init(&w1);
	col_init(&w2);
	REQUIRE(open_default(&b, sock()) == 0);
	CHECK_EQ_INT(
		usps_subscribe(b, "jobs", "workers", col_handler, &w1, &s1), 0);
	CHECK_EQ_INT(
		usps_subscribe(b, "jobs", "workers", col_handler, &w2, &s2), 0);
	for (int i = 0; i < 4; i++)
		CHECK_EQ_INT(PUB(b, "jobs", "job"), 0);
	CHECK_EQ_INT(usps_flush(b, 2000), 0);
	CHECK_EQ_INT(col_count(&w1), 2);
	CHECK_EQ_INT(col_count(&w2), 2);
	CHECK_EQ_STR(w1.group[0], "workers");
	usps_close(b);
	col_free(&w1);
	col_free(&w2);
}

/* 3: fan-out plus exactly one process per group. */
TEST(fanout_plus_groups)
{
	usps *b = NULL, *ca = NULL, *cb = NULL;
	struct col fb, fa, wb, wa, wc;
	usps_sub *s;

	col_init(&fb);
	col_init(&fa);
	col_init(&wb);
	col_init(&wa);
	col_init(&wc);
	REQUIRE(open_default(&b, sock()) == 0);
	REQUIRE(open_default(&ca, sock()) == 0);
	REQUIRE(open_default(&cb, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(b, "t", NULL, col_handler, &fb, &s), 0);
	CHECK_EQ_INT(usps_subscribe(ca, "t", NULL, col_handler, &fa, &s), 0);
	CHECK_EQ_INT(usps_subscribe(b, "t", "workers", col_handler, &wb, &s),
		     0);
	CHECK_EQ_INT(usps_subscribe(ca, "t", "workers", col_handler, &wa, &s),
		     0);
	CHECK_EQ_INT(usps_subscribe(cb, "t", "workers", col_handler, &wc, &s),
		     0);
	for (int i = 0; i < 6; i++)
		CHECK_EQ_INT(PUB(b, "t", "e"), 0);
	CHECK_EQ_INT(col_wait(&fb, 6, 2000), 6);
	CHECK_EQ_INT(col_wait(&fa, 6, 2000), 6);
	CHECK_EQ_INT(col_wait(&wb, 2, 2000), 2);
	CHECK_EQ_INT(col_wait(&wa, 2, 2000), 2);
	CHECK_EQ_INT(col_wait(&wc, 2, 2000), 2);
	CHECK_EQ_INT(usps_flush(b, 2000), 0);
	CHECK_EQ_INT(usps_flush(ca, 2000), 0);
	CHECK_EQ_INT(usps_flush(cb, 2000), 0);
	CHECK_EQ_INT(col_count(&wb) + col_count(&wa) + col_count(&wc), 6);
	usps_close(cb);
	usps_close(ca);
	usps_close(b);
	col_free(&fb);
	col_free(&fa);
	col_free(&wb);
	col_free(&wa);
	col_free(&wc);
}

/* 4: independent groups each get every event once. */
TEST(independent_groups)
{
	usps *b = NULL, *c = NULL;
	struct col w, a;
	usps_sub *s;

	col_init(&w);
	col_init(&a);
	REQUIRE(open_default(&b, sock()) == 0);
	REQUIRE(open_default(&c, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(b, "t", "workers", col_handler, &w, &s), 0);
	CHECK_EQ_INT(usps_subscribe(c, "t", "auditors", col_handler, &a, &s),
		     0);
	CHECK_EQ_INT(PUB(b, "t", "e"), 0);
	CHECK_EQ_INT(col_wait(&w, 1, 2000), 1);
	CHECK_EQ_INT(col_wait(&a, 1, 2000), 1);
	CHECK_EQ_STR(a.group[0], "auditors");
	usps_close(c);
	usps_close(b);
	col_free(&w);
	col_free(&a);
}

/* 5: a process's group membership ends only with its last member. */
TEST(remote_group_last_member)
{
	usps *b = NULL, *c = NULL;
	struct col w1, w2, marker;
	usps_sub *s1, *s2, *sm;

	col_init(&w1);
	col_init(&w2);
	col_init(&marker);
	REQUIRE(open_default(&b, sock()) == 0);
	REQUIRE(open_default(&c, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(c, "t", "workers", col_handler, &w1, &s1),
		     0);
	CHECK_EQ_INT(usps_subscribe(c, "t", "workers", col_handler, &w2, &s2),
		     0);
	CHECK_EQ_INT(usps_subscribe(c, "m", NULL, col_handler, &marker, &sm),
		     0);
	CHECK_EQ_INT(usps_unsubscribe(c, s1), 0);
	CHECK_EQ_INT(PUB(b, "t", "one"), 0);
	CHECK_EQ_INT(col_wait(&w2, 1, 2000), 1);
	CHECK_EQ_INT(usps_unsubscribe(c, s2), 0);
	CHECK_EQ_INT(PUB(b, "t", "two"), 0);
	CHECK_EQ_INT(PUB(b, "m", "marker"), 0);
	CHECK_EQ_INT(col_wait(&marker, 1, 2000), 1);
	CHECK_EQ_INT(col_count(&w2), 1);
	CHECK_EQ_INT(col_count(&w1), 0);
	usps_close(c);
	usps_close(b);
	col_free(&w1);
	col_free(&w2);
	col_free(&marker);
}

/* 6, 8, 9: localOnly publishes, with groups, never leave the handle. */
TEST(local_only_stays_local)
{
	usps *b = NULL, *ca = NULL, *cb = NULL;
	struct col fb, fa, fc, wb, wa;
	usps_sub *s;

	col_init(&fb);
	col_init(&fa);
	col_init(&fc);
	col_init(&wb);
	col_init(&wa);
	REQUIRE(open_default(&b, sock()) == 0);
	REQUIRE(open_default(&ca, sock()) == 0);
	REQUIRE(open_default(&cb, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(b, "t", NULL, col_handler, &fb, &s), 0);
	CHECK_EQ_INT(usps_subscribe(ca, "t", NULL, col_handler, &fa, &s), 0);
	CHECK_EQ_INT(usps_subscribe(cb, "t", NULL, col_handler, &fc, &s), 0);
	CHECK_EQ_INT(usps_subscribe(b, "t", "workers", col_handler, &wb, &s),
		     0);
	CHECK_EQ_INT(usps_subscribe(ca, "t", "workers", col_handler, &wa, &s),
		     0);

	/* From a client: only that client's fan-out and group member. */
	CHECK_EQ_INT(usps_publish(ca, "t", "local", "{}", 2, USPS_LOCAL_ONLY),
		     0);
	CHECK_EQ_INT(usps_flush(ca, 2000), 0);
	CHECK_EQ_INT(col_count(&fa), 1);
	CHECK_EQ_INT(col_count(&wa), 1);
	CHECK_EQ_STR(fa.type[0], "local");
	CHECK_EQ_INT(strlen(fa.id[0]), 36); /* stamped locally */
	/* From the broker: likewise. */
	CHECK_EQ_INT(usps_publish(b, "t", "blocal", "{}", 2, USPS_LOCAL_ONLY),
		     0);
	CHECK_EQ_INT(usps_flush(b, 2000), 0);
	CHECK_EQ_INT(col_count(&fb), 1);
	CHECK_EQ_INT(col_count(&wb), 1);
	/* A marker through the broker proves nothing else arrived. */
	CHECK_EQ_INT(PUB(ca, "t", "marker"), 0);
	CHECK(col_wait_type(&fc, "marker", 2000));
	CHECK(col_wait_type(&fb, "marker", 2000));
	CHECK(col_wait_type(&fa, "marker", 2000));
	CHECK(!col_has(&fc, "local") && !col_has(&fc, "blocal"));
	CHECK(!col_has(&fb, "local"));
	CHECK(!col_has(&fa, "blocal"));
	CHECK(!col_has(&wb, "local"));
	CHECK(!col_has(&wa, "blocal"));
	usps_close(cb);
	usps_close(ca);
	usps_close(b);
	col_free(&fb);
	col_free(&fa);
	col_free(&fc);
	col_free(&wb);
	col_free(&wa);
}

/* 10: 2 MiB payloads, localOnly and through the broker. */
TEST(large_payloads)
{
	usps *b = NULL, *ca = NULL, *cb = NULL;
	struct col fb, fa, fc;
	size_t n = 2u << 20;
	char *big = malloc(n + 16);
	usps_sub *s;

	REQUIRE(big);
	col_init(&fb);
	col_init(&fa);
	col_init(&fc);
	big[0] = '"';
	memset(big + 1, 'x', n);
	big[n + 1] = '"';
	REQUIRE(open_default(&b, sock()) == 0);
	REQUIRE(open_default(&ca, sock()) == 0);
	REQUIRE(open_default(&cb, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(b, "t", NULL, col_handler, &fb, &s), 0);
	CHECK_EQ_INT(usps_subscribe(ca, "t", NULL, col_handler, &fa, &s), 0);
	CHECK_EQ_INT(usps_subscribe(cb, "t", NULL, col_handler, &fc, &s), 0);
	CHECK_EQ_INT(usps_publish(ca, "t", "big-local", big, n + 2,
				  USPS_LOCAL_ONLY),
		     0);
	CHECK_EQ_INT(usps_publish(ca, "t", "big", big, n + 2, 0), 0);
	CHECK(col_wait_type(&fc, "big", 5000));
	CHECK(col_wait_type(&fb, "big", 5000));
	CHECK_EQ_INT(col_wait(&fa, 2, 5000), 2);
	CHECK_EQ_INT(col_count(&fc), 1);
	CHECK_EQ_INT(col_count(&fb), 1);
	usps_close(cb);
	usps_close(ca);
	usps_close(b);
	free(big);
	col_free(&fb);
	col_free(&fa);
	col_free(&fc);
}

/* 12: a raw client that pauses below the cap catches up and stays. */
TEST(backpressured_client_catches_up)
{
	usps_options o;
	usps *b = NULL;
	struct col cb;
	struct raw_reader rr = { 0 };
	char line[1 << 16];
	char *payload = malloc(16 * 1024 + 3);
	usps_sub *s;
	int fd, got = 0;

	REQUIRE(payload);
	col_init(&cb);
	usps_options_init(&o);
	o.max_client_queued_bytes = 1u << 20;
	REQUIRE(usps_open(&b, sock(), &o) == 0);
	CHECK_EQ_INT(usps_subscribe(b, "topic-a", NULL, col_handler, &cb, &s),
		     0);
	fd = raw_connect(sock());
	REQUIRE(fd >= 0);
	CHECK_EQ_INT(
		raw_sends(fd,
			  "{\"type\":\"subscribe\",\"topic\":\"topic-a\"}\n"),
		0);
	CHECK_EQ_INT(raw_line(fd, &rr, line, sizeof(line), 2000), 1);
	CHECK_EQ_STR(line, "{\"type\":\"subscribed\",\"topic\":\"topic-a\"}");
	/* Not reading now. */
	payload[0] = '"';
	memset(payload + 1, 'p', 16 * 1024);
	payload[16 * 1024 + 1] = '"';
	for (int i = 0; i < 4; i++) {
		char type[16];

		snprintf(type, sizeof(type), "recover-%d", i);
		CHECK_EQ_INT(usps_publish(b, "topic-a", type, payload,
					  16 * 1024 + 2, 0),
			     0);
	}
	CHECK_EQ_INT(usps_flush(b, 2000), 0);
	CHECK_EQ_INT(col_count(&cb), 4);
	CHECK_EQ_INT(usps_remote_client_count(b), 1);
	while (got < 4 && raw_line(fd, &rr, line, sizeof(line), 2000) == 1)
		got += strstr(line, "\"type\":\"event\"") != NULL;
	CHECK_EQ_INT(got, 4);
	CHECK(strstr(line, "recover-3") != NULL);
	CHECK_EQ_INT(usps_remote_client_count(b), 1);
	close(fd);
	usps_close(b);
	free(payload);
	col_free(&cb);
}

/* 13: a client that stopped reading is dropped at the cap; the broker and
 * a healthy client carry on. */
TEST(stuck_client_dropped)
{
	usps_options o;
	usps *b = NULL, *c = NULL;
	struct col cb, cc;
	struct raw_reader rr = { 0 };
	char line[256];
	size_t n = 32 * 1024;
	char *payload = malloc(n + 2);
	usps_sub *s;
	int fd;

	REQUIRE(payload);
	col_init(&cb);
	col_init(&cc);
	usps_options_init(&o);
	o.max_client_queued_bytes = 256 * 1024;
	REQUIRE(usps_open(&b, sock(), &o) == 0);
	REQUIRE(usps_open(&c, sock(), &o) == 0);
	CHECK_EQ_INT(usps_subscribe(b, "t", NULL, col_handler, &cb, &s), 0);
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, col_handler, &cc, &s), 0);
	fd = raw_connect(sock());
	REQUIRE(fd >= 0);
	/* A small receive buffer so that the broker's queue fills. */
	int small = 4096;

	(void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
	CHECK_EQ_INT(
		raw_sends(fd, "{\"type\":\"subscribe\",\"topic\":\"t\"}\n"), 0);
	CHECK_EQ_INT(raw_line(fd, &rr, line, sizeof(line), 2000), 1);
	CHECK(wait_clients(b, 2, 2000));
	payload[0] = '"';
	memset(payload + 1, 'q', n - 2);
	payload[n - 1] = '"';
	for (int i = 0; i < 20; i++) {
		char type[16];

		snprintf(type, sizeof(type), "large-%d", i);
		CHECK_EQ_INT(usps_publish(b, "t", type, payload, n, 0), 0);
	}
	CHECK(col_wait_type(&cc, "large-19", 5000));
	CHECK_EQ_INT(col_wait(&cb, 20, 2000), 20);
	CHECK(wait_clients(b, 1, 5000));
	close(fd);
	usps_close(c);
	usps_close(b);
	free(payload);
	col_free(&cb);
	col_free(&cc);
}

/* 14: a slow handler in one process does not delay another process. */
TEST(slow_handler_isolated)
{
	pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;
	usps *b = NULL, *c = NULL;
	struct col slow, fast;
	usps_sub *s;

	col_init(&slow);
	col_init(&fast);
	slow.block = &gate;
	REQUIRE(open_default(&b, sock()) == 0);
	REQUIRE(open_default(&c, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(b, "t", NULL, col_handler, &slow, &s), 0);
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, col_handler, &fast, &s), 0);
	pthread_mutex_lock(&gate);
	for (int i = 0; i < 10; i++)
		CHECK_EQ_INT(PUB(b, "t", "e"), 0);
	CHECK_EQ_INT(col_wait(&fast, 10, 2000), 10);
	CHECK_EQ_INT(col_count(&slow), 0);
	pthread_mutex_unlock(&gate);
	CHECK_EQ_INT(col_wait(&slow, 10, 2000), 10);
	usps_close(c);
	usps_close(b);
	col_free(&slow);
	col_free(&fast);
}

/* The second event blocks its handler until released. */
struct stuck {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool entered, release;
	int n;
};

static void stuck_handler(const usps_event *ev, usps_delivery *d, void *ud)
{
	struct stuck *st = ud;

	(void)ev;
	(void)d;
	pthread_mutex_lock(&st->mu);
	if (++st->n == 2) {
		st->entered = true;
		pthread_cond_broadcast(&st->cv);
		while (!st->release)
			pthread_cond_wait(&st->cv, &st->mu);
	}
	pthread_cond_broadcast(&st->cv);
	pthread_mutex_unlock(&st->mu);
}

/* Wait until @st has run @n handlers (or, n == 0, one is blocked). */
static bool stuck_wait(struct stuck *st, int n, int timeout_ms)
{
	struct timespec ts = deadline_ts(timeout_ms);
	bool ok;

	pthread_mutex_lock(&st->mu);
	while (!(n ? st->n >= n : st->entered))
		if (pthread_cond_timedwait(&st->cv, &st->mu, &ts) == ETIMEDOUT)
			break;
	ok = n ? st->n >= n : st->entered;
	pthread_mutex_unlock(&st->mu);
	return ok;
}

/*
 * A client whose handler blocks keeps reading from the broker: its
 * delivery thread polls the connection while idle, and the I/O thread
 * takes polling back when a handler runs long. A subscribe needs the
 * broker's ack, and the broker's flush completes only once the client
 * has read more than the sockets can hold.
 */
TEST(blocked_handler_keeps_reading)
{
	struct stuck st = { .mu = PTHREAD_MUTEX_INITIALIZER,
			    .cv = PTHREAD_COND_INITIALIZER };
	enum {
		N = 1000,
		SIZE = 4000
	};
	usps *b = NULL, *c = NULL;
	usps_sub *s, *su;
	struct col cu;
	char *data;

	col_init(&cu);
	data = malloc(SIZE);
	REQUIRE(data);
	memset(data, 'x', SIZE);
	data[0] = data[SIZE - 1] = '"';
	REQUIRE(open_default(&b, sock()) == 0);
	REQUIRE(open_default(&c, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, stuck_handler, &st, &s), 0);
	/* After the first, the idle delivery thread polls; the second
	 * blocks it. */
	CHECK_EQ_INT(PUB(b, "t", "first"), 0);
	CHECK(stuck_wait(&st, 1, 5000));
	CHECK_EQ_INT(PUB(b, "t", "second"), 0);
	CHECK(stuck_wait(&st, 0, 5000));
	CHECK_EQ_INT(usps_subscribe(c, "u", NULL, col_handler, &cu, &su), 0);
	for (int i = 0; i < N; i++)
		CHECK_EQ_INT(usps_publish(b, "t", "e", data, SIZE, 0), 0);
	CHECK_EQ_INT(usps_flush(b, 10000), 0);
	pthread_mutex_lock(&st.mu);
	st.release = true;
	pthread_cond_broadcast(&st.cv);
	pthread_mutex_unlock(&st.mu);
	CHECK(stuck_wait(&st, N + 2, 10000));
	usps_close(c);
	usps_close(b);
	col_free(&cu);
	free(data);
}

/* 15: options and arguments are checked. */
TEST(options_and_arguments)
{
	usps_options o;
	usps *b = NULL;
	usps_sub *s = NULL;
	char longp[200];

	usps_options_init(&o);
	o.max_inbound_frame_bytes = 0;
	CHECK_EQ_INT(usps_open(&b, sock(), &o), -EINVAL);
	usps_options_init(&o);
	o.membership_ack_timeout_ms = 0;
	CHECK_EQ_INT(usps_open(&b, sock(), &o), -EINVAL);
	usps_options_init(&o);
	o.max_client_queued_bytes = 1ull << 60;
	CHECK_EQ_INT(usps_open(&b, sock(), &o), -EINVAL);
	usps_options_init(&o);
	o.allow_gid = -2;
	CHECK_EQ_INT(usps_open(&b, sock(), &o), -EINVAL);
	CHECK_EQ_INT(usps_open(NULL, sock(), NULL), -EINVAL);
	CHECK_EQ_INT(usps_open(&b, NULL, NULL), -EINVAL);
	CHECK_EQ_INT(usps_open(&b, "", NULL), -EINVAL);
	snprintf(longp, sizeof(longp), "%s/%0120d.sock", harness_tmpdir(), 0);
	CHECK_EQ_INT(usps_open(&b, longp, NULL), -ENAMETOOLONG);
	CHECK(b == NULL);

	REQUIRE(open_default(&b, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(b, "", NULL, col_handler, NULL, &s),
		     -EINVAL);
	CHECK_EQ_INT(usps_subscribe(b, NULL, NULL, col_handler, NULL, &s),
		     -EINVAL);
	CHECK_EQ_INT(usps_subscribe(b, "t", "", col_handler, NULL, &s),
		     -EINVAL);
	CHECK_EQ_INT(usps_subscribe(b, "\xff", NULL, col_handler, NULL, &s),
		     -EINVAL);
	CHECK_EQ_INT(usps_subscribe(b, "t", NULL, NULL, NULL, &s), -EINVAL);
	CHECK_EQ_INT(usps_publish(b, "t", "x", "{bad", 4, 0), -EINVAL);
	CHECK_EQ_INT(usps_publish(b, "t", "x", "{} {}", 5, 0), -EINVAL);
	CHECK_EQ_INT(usps_publish(b, "", "x", "{}", 2, 0), -EINVAL);
	CHECK_EQ_INT(usps_publish(b, NULL, "x", "{}", 2, 0), -EINVAL);
	CHECK_EQ_INT(usps_publish(b, "t", NULL, "{}", 2, 0), -EINVAL);
	CHECK_EQ_INT(usps_publish(b, "t", "x", "{}", 2, 1u << 7), -EINVAL);
	CHECK_EQ_INT(usps_publish_ex(b, "t", "x", "{}", 2, NULL, "[1]", 3, 0),
		     -EINVAL);
	CHECK_EQ_INT(usps_publish_ex(b, "t", "x", "{}", 2, NULL, "{\"type\":1}",
				     10, 0),
		     -EINVAL);
	CHECK_EQ_INT(usps_unsubscribe(b, NULL), -EINVAL);
	CHECK_EQ_INT(usps_nack(NULL), -EINVAL);
	CHECK_EQ_INT(usps_flush(NULL, 0), -EINVAL);
	CHECK(!usps_is_broker(NULL));
	CHECK_EQ_INT(usps_remote_client_count(NULL), 0);
	CHECK(usps_socket_path(NULL) == NULL);
	CHECK_EQ_INT(usps_close(NULL), 0);
	usps_close(b);
}

/* A publish frame over the size limit is refused before it is sent. */
TEST(publish_too_large)
{
	usps_options o;
	usps *b = NULL;
	char data[2048];

	usps_options_init(&o);
	o.max_inbound_frame_bytes = 1024;
	REQUIRE(usps_open(&b, sock(), &o) == 0);
	data[0] = '"';
	memset(data + 1, 'z', sizeof(data) - 2);
	data[sizeof(data) - 1] = '"';
	CHECK_EQ_INT(usps_publish(b, "t", "x", data, sizeof(data), 0),
		     -EMSGSIZE);
	CHECK_EQ_INT(usps_publish(b, "t", "x", data, 200, 0), -EINVAL);
	usps_close(b);
}

/* 16, 17, 82: frame limits at N and N+1, terminated or not. */
TEST(inbound_frame_limits)
{
	usps_options o;
	usps *b = NULL, *c = NULL;
	struct col cb, cc;
	usps_sub *s;
	char *buf = malloc(70000);
	int fd;

	REQUIRE(buf);
	col_init(&cb);
	col_init(&cc);
	usps_options_init(&o);
	o.max_inbound_frame_bytes = 64 * 1024;
	REQUIRE(usps_open(&b, sock(), &o) == 0);
	REQUIRE(usps_open(&c, sock(), &o) == 0);
	CHECK_EQ_INT(usps_subscribe(b, "t", NULL, col_handler, &cb, &s), 0);
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, col_handler, &cc, &s), 0);

	/* 65536 unterminated bytes are held; one more closes. */
	fd = raw_connect(sock());
	REQUIRE(fd >= 0);
	CHECK(wait_clients(b, 2, 2000));
	memset(buf, 'x', 65537);
	CHECK_EQ_INT(raw_send(fd, buf, 65536), 0);
	CHECK_EQ_INT(PUB(b, "t", "probe"), 0);
	CHECK(col_wait_type(&cc, "probe", 2000));
	CHECK_EQ_INT(usps_remote_client_count(b), 2);
	CHECK_EQ_INT(raw_send(fd, buf, 1), 0);
	CHECK_EQ_INT(raw_wait_closed(fd, 2000), 1);
	close(fd);
	CHECK(wait_clients(b, 1, 2000));
	CHECK_EQ_INT(PUB(b, "t", "after"), 0);
	CHECK(col_wait_type(&cc, "after", 2000));
	CHECK(!usps_is_broker(c));

	/* A terminated publish of 64 KiB + 1 closes; nothing delivered. */
	fd = raw_connect(sock());
	REQUIRE(fd >= 0);
	int n = snprintf(buf, 200,
			 "{\"type\":\"publish\",\"topic\":\"t\",\"event\":"
			 "{\"type\":\"huge\",\"data\":\"");
	int fill = 65537 - n - 3; /* the line is 65537 bytes */

	memset(buf + n, 'y', (size_t)fill);
	memcpy(buf + n + fill, "\"}}\n", 4);
	CHECK_EQ_INT(raw_send(fd, buf, 65537 + 1), 0);
	CHECK_EQ_INT(raw_wait_closed(fd, 2000), 1);
	close(fd);

	/* Exactly 64 KiB is accepted and delivered. */
	fd = raw_connect(sock());
	REQUIRE(fd >= 0);
	n = snprintf(buf, 200,
		     "{\"type\":\"publish\",\"topic\":\"t\",\"event\":"
		     "{\"type\":\"exact\",\"data\":\"");
	fill = 65536 - n - 3;
	memset(buf + n, 'y', (size_t)fill);
	memcpy(buf + n + fill, "\"}}\n", 4);
	/* The stamped event frame is larger than 64 KiB: the client's own
	 * limit drops it, but the broker delivers it locally. */
	CHECK_EQ_INT(raw_send(fd, buf, 65536 + 1), 0);
	CHECK(col_wait_type(&cb, "exact", 2000));
	CHECK(!col_has(&cb, "huge"));
	close(fd);
	usps_close(c);
	usps_close(b);
	free(buf);
	col_free(&cb);
	col_free(&cc);
}

/* 18, 79, 80: acks byte for byte; 1-byte writes; junk lines ignored. */
TEST(raw_acks_and_junk)
{
	usps *b = NULL;
	struct raw_reader rr = { 0 };
	char line[512];
	const char *sub =
		"{\"type\":\"subscribe\",\"topic\":\"topic-\xc3\xa9\"}\n";
	int fd;

	REQUIRE(open_default(&b, sock()) == 0);
	fd = raw_connect(sock());
	REQUIRE(fd >= 0);
	for (const char *p = sub; *p; p++)
		CHECK_EQ_INT(raw_send(fd, p, 1), 0);
	CHECK_EQ_INT(raw_line(fd, &rr, line, sizeof(line), 2000), 1);
	CHECK_EQ_STR(line,
		     "{\"type\":\"subscribed\",\"topic\":\"topic-\xc3\xa9\"}");
	CHECK(wait_clients(b, 1, 2000));

	const char *junk[] = {
		"not json\n",
		"\n",
		"   \r\n",
		"null\n",
		"42\n",
		"[]\n",
		"\"str\"\n",
		"{\"topic\":\"x\"}\n",
		"{\"type\":\"ack\"}\n",
		"{\"type\":\"nack\",\"id\":\"x\"}\n",
		"{\"type\":\"wat\"}\n",
		"{\"type\":\"event\",\"topic\":\"t\",\"event\":{}}\n",
		"{\"type\":\"subscribe\",\"topic\":\"\xff\"}\n",
		"{\"type\":\"publish\",\"topic\":\"t\",\"event\":{\"a\":[1,}}\n",
	};
	for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++)
		CHECK_EQ_INT(raw_sends(fd, junk[i]), 0);

	struct {
		const char *req, *ack;
	} acks[] = {
		{ "{\"type\":\"subscribe\",\"topic\":\"t\",\"group\":null}\r\n",
		  "{\"type\":\"subscribed\",\"topic\":\"t\",\"group\":null}" },
		{ "{\"type\":\"subscribe\",\"topic\":\"t\",\"group\":{\"__m_codec__\":\"Undefined\"}}\n",
		  "{\"type\":\"subscribed\",\"topic\":\"t\"}" },
		{ "{\"type\":\"subscribe\",\"topic\":\"jobs\",\"group\":\"workers\"}\n",
		  "{\"type\":\"subscribed\",\"topic\":\"jobs\",\"group\":\"workers\"}" },
		{ "{\"type\":\"unsubscribe\",\"topic\":\"never\"}\n",
		  "{\"type\":\"unsubscribed\",\"topic\":\"never\"}" },
		{ "{\"type\":\"unsubscribe\",\"topic\":\"jobs\",\"group\":\"workers\"}\n",
		  "{\"type\":\"unsubscribed\",\"topic\":\"jobs\",\"group\":\"workers\"}" },
		{ "{\"type\":\"subscribe\"}\n",
		  "{\"type\":\"subscribed\",\"topic\":{\"__m_codec__\":\"Undefined\"}}" },
	};
	for (size_t i = 0; i < sizeof(acks) / sizeof(acks[0]); i++) {
		CHECK_EQ_INT(raw_sends(fd, acks[i].req), 0);
		CHECK_EQ_INT(raw_line(fd, &rr, line, sizeof(line), 2000), 1);
		CHECK_EQ_STR(line, acks[i].ack);
	}
	CHECK_EQ_INT(usps_remote_client_count(b), 1);
	close(fd);
	usps_close(b);
}

/* The usps.status extension: a C broker says who it is. */
TEST(raw_status_query)
{
	usps *b = NULL, *c = NULL;
	struct raw_reader rr = { 0 };
	char line[512], want[128];
	int fd;

	REQUIRE(open_default(&b, sock()) == 0);
	REQUIRE(open_default(&c, sock()) == 0);
	fd = raw_connect(sock());
	REQUIRE(fd >= 0);
	CHECK_EQ_INT(raw_sends(fd, "{\"type\":\"usps.status\"}\n"), 0);
	CHECK_EQ_INT(raw_line(fd, &rr, line, sizeof(line), 2000), 1);
	snprintf(want, sizeof(want),
		 "{\"type\":\"usps.status\",\"pid\":%ld,\"uid\":%lu,"
		 "\"clients\":1,",
		 (long)getpid(), (unsigned long)geteuid());
	CHECK(strncmp(line, want, strlen(want)) == 0);
	CHECK(strstr(line, "\"version\":\"" USPS_VERSION_STRING "\"}") != NULL);
	close(fd);
	usps_close(c);
	usps_close(b);
}

/* 79, 83: duplicate subscribes keep one membership; grouped and ungrouped
 * subscriptions of one connection get two frames; event frames are
 * stamped as a Node broker stamps them. */
TEST(raw_event_frames)
{
	usps *b = NULL;
	struct raw_reader rr = { 0 };
	char line[1024];
	int fd, events = 0, grouped = 0;

	REQUIRE(open_default(&b, sock()) == 0);
	fd = raw_connect(sock());
	REQUIRE(fd >= 0);
	CHECK_EQ_INT(
		raw_sends(
			fd,
			"{\"type\":\"subscribe\",\"topic\":\"t\"}\n"
			"{\"type\":\"subscribe\",\"topic\":\"t\"}\n"
			"{\"type\":\"subscribe\",\"topic\":\"t\",\"group\":\"g\"}\n"),
		0);
	for (int i = 0; i < 3; i++)
		CHECK_EQ_INT(raw_line(fd, &rr, line, sizeof(line), 2000), 1);
	CHECK_EQ_INT(usps_publish_ex(b, "t", "hello", "{\"msg\":\"hi\"}", 12,
				     "run-1", "{\"index\":3,\"id\":\"mine\"}",
				     23, 0),
		     0);
	CHECK_EQ_INT(raw_sends(fd, "{\"type\":\"publish\",\"topic\":\"t\","
				   "\"event\":{\"type\":\"second\"}}\n"),
		     0);
	while (raw_line(fd, &rr, line, sizeof(line), 1000) == 1) {
		if (!strstr(line, "\"type\":\"event\""))
			continue;
		events++;
		grouped += strstr(line, ",\"group\":\"g\"}") != NULL;
		/* Order across publishers is not defined: match by type. */
		if (strstr(line, "\"hello\"") && !strstr(line, "\"group\"")) {
			/* {"type":"event","topic":"t","event":{"type":"hello",
			 * "runId":"run-1","data":{"msg":"hi"},"index":3,
			 * "id":"<uuid>","createdAt":{...},"deliveryAttempt":1}} */
			const char *pre =
				"{\"type\":\"event\",\"topic\":\"t\",\"event\":"
				"{\"type\":\"hello\",\"runId\":\"run-1\","
				"\"data\":{\"msg\":\"hi\"},\"index\":3,\"id\":\"";
			CHECK(strncmp(line, pre, strlen(pre)) == 0);
			const char *ca = strstr(
				line,
				"\",\"createdAt\":{\"__m_codec__\":\"Date\",\"v\":\"");
			CHECK(ca && ca - line == (long)strlen(pre) + 36);
			CHECK(strstr(line, "Z\"},\"deliveryAttempt\":1}}") !=
			      NULL);
		}
		if (events == 4)
			break;
	}
	CHECK_EQ_INT(events, 4);
	CHECK_EQ_INT(grouped, 2);
	close(fd);
	usps_close(b);
}

/* 84: a legacy localOnly publish from a client reaches the broker's own
 * fan-out and the sender, nobody else, and no group. */
TEST(raw_legacy_local_only)
{
	usps *b = NULL, *c = NULL;
	struct col fb, wb, fc;
	struct raw_reader rr = { 0 };
	char line[1024];
	usps_sub *s;
	int fd, echoes = 0;

	col_init(&fb);
	col_init(&wb);
	col_init(&fc);
	REQUIRE(open_default(&b, sock()) == 0);
	REQUIRE(open_default(&c, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(b, "t", NULL, col_handler, &fb, &s), 0);
	CHECK_EQ_INT(usps_subscribe(b, "t", "g", col_handler, &wb, &s), 0);
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, col_handler, &fc, &s), 0);
	fd = raw_connect(sock());
	REQUIRE(fd >= 0);
	CHECK_EQ_INT(
		raw_sends(fd, "{\"type\":\"subscribe\",\"topic\":\"t\"}\n"), 0);
	CHECK_EQ_INT(raw_line(fd, &rr, line, sizeof(line), 2000), 1);
	CHECK_EQ_INT(
		raw_sends(fd, "{\"type\":\"publish\",\"topic\":\"t\",\"event\":"
			      "{\"type\":\"legacy\"},\"localOnly\":true}\n"
			      "{\"type\":\"publish\",\"topic\":\"t\",\"event\":"
			      "{\"type\":\"marker\"}}\n"),
		0);
	CHECK(col_wait_type(&fc, "marker", 2000));
	CHECK(col_wait_type(&fb, "marker", 2000));
	CHECK(col_has(&fb, "legacy"));
	CHECK(!col_has(&fc, "legacy"));
	CHECK(!col_has(&wb, "legacy"));
	while (raw_line(fd, &rr, line, sizeof(line), 1000) == 1) {
		echoes += strstr(line, "legacy") != NULL;
		if (strstr(line, "marker"))
			break;
	}
	CHECK_EQ_INT(echoes, 1);
	close(fd);
	usps_close(c);
	usps_close(b);
	col_free(&fb);
	col_free(&wb);
	col_free(&fc);
}

/* A fake broker for the client-side tests: accepts, and runs @fn. */
struct fake {
	int lfd;
	pthread_t th;
	int mode; /* 0: count subscribes, ack; 1: oversize reply;
			 * 2: close on first data, then stop listening;
			 * 3: never ack; on a publish of type "send",
			 * send two odd event frames */
	int subscribes;
	int done;
};

static void *fake_main(void *arg)
{
	struct fake *f = arg;
	struct raw_reader rr = { 0 };
	char line[512];
	int fd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);

	if (fd < 0)
		return NULL;
	if (f->mode == 2) {
		(void)raw_line(fd, &rr, line, sizeof(line), 5000);
		close(f->lfd);
		f->lfd = -1;
		close(fd);
		return NULL;
	}
	while (raw_line(fd, &rr, line, sizeof(line), 3000) == 1) {
		if (f->mode == 1) {
			char *big = malloc(65537);

			memset(big, 'x', 65537);
			(void)raw_send(fd, big, 65537);
			free(big);
			(void)raw_wait_closed(fd, 3000);
			break;
		}
		if (f->mode == 3) {
			if (strstr(line, "\"type\":\"subscribe\""))
				f->subscribes++;
			if (strstr(line, "\"type\":\"send\""))
				(void)raw_sends(
					fd,
					"{\"type\":\"event\",\"topic\":\"t\","
					"\"event\":{\"type\":\"nobody\"},"
					"\"group\":null}\n"
					"{\"type\":\"event\",\"topic\":\"t\","
					"\"event\":{\"type\":\"plain\",\"id\":\"x\","
					"\"createdAt\":\"2024-06-15T12:34:56."
					"789Z\"}}\n");
			if (strstr(line, "\"stop\""))
				break;
			continue;
		}
		if (strstr(line, "\"type\":\"subscribe\"")) {
			f->subscribes++;
			(void)raw_sends(
				fd,
				"{\"type\":\"subscribed\",\"topic\":\"t\"}\n");
		}
		if (strstr(line, "\"stop\""))
			break;
	}
	close(fd);
	return NULL;
}

static int fake_start(struct fake *f, const char *p, int mode)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	memset(f, 0, sizeof(*f));
	f->mode = mode;
	f->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", p);
	if (bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(f->lfd, 8) < 0)
		return -errno;
	return -pthread_create(&f->th, NULL, fake_main, f);
}

static void fake_stop(struct fake *f, const char *p)
{
	pthread_join(f->th, NULL);
	if (f->lfd >= 0)
		close(f->lfd);
	(void)unlink(p);
}

/* 22: one subscribe frame for the same topic subscribed twice. */
TEST(client_no_duplicate_subscribe)
{
	struct fake f;
	usps *c = NULL;
	struct col cc;
	usps_sub *s1, *s2;

	col_init(&cc);
	REQUIRE(fake_start(&f, sock(), 0) == 0);
	REQUIRE(open_default(&c, sock()) == 0);
	CHECK(!usps_is_broker(c));
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, col_handler, &cc, &s1), 0);
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, col_handler, &cc, &s2), 0);
	CHECK_EQ_INT(usps_publish(c, "stop", "stop", "{}", 2, 0), 0);
	CHECK_EQ_INT(usps_flush(c, 2000), 0);
	fake_stop(&f, sock());
	CHECK_EQ_INT(f.subscribes, 1);
	/* The fake is gone: c takes over and delivers to itself. */
	CHECK(wait_broker(c, 3000));
	CHECK_EQ_INT(PUB(c, "t", "after"), 0);
	CHECK_EQ_INT(col_wait(&cc, 2, 2000), 2);
	usps_close(c);
	col_free(&cc);
}

/* 87, 81: a broker that never acks (an old Mastra) lets subscribe return
 * after the ack timeout; an event with "group":null reaches nobody; a plain
 * string createdAt is read too. */
TEST(client_ack_timeout_and_odd_events)
{
	struct fake f;
	usps_options o;
	usps *c = NULL;
	struct col cc;
	usps_sub *s;
	int64_t t0, took;

	col_init(&cc);
	REQUIRE(fake_start(&f, sock(), 3) == 0);
	usps_options_init(&o);
	o.membership_ack_timeout_ms = 300;
	REQUIRE(usps_open(&c, sock(), &o) == 0);
	t0 = harness_now_ms();
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, col_handler, &cc, &s), 0);
	took = harness_now_ms() - t0;
	CHECK(took >= 290 && took < 5000);
	CHECK_EQ_INT(PUB(c, "t", "send"), 0);
	CHECK(col_wait_type(&cc, "plain", 3000));
	CHECK(!col_has(&cc, "nobody"));
	CHECK_EQ_INT(cc.created[0], 1718454896789ll);
	CHECK_EQ_INT(PUB(c, "stop", "stop"), 0);
	CHECK_EQ_INT(usps_flush(c, 2000), 0);
	fake_stop(&f, sock());
	CHECK_EQ_INT(f.subscribes, 1);
	usps_close(c);
	col_free(&cc);
}

/* 20: an oversized frame from the broker drops that connection. */
TEST(client_drops_oversized_broker_frame)
{
	struct fake f;
	usps *c = NULL;
	struct col cc;
	usps_sub *s;

	col_init(&cc);
	REQUIRE(fake_start(&f, sock(), 1) == 0);
	usps_options o;

	usps_options_init(&o);
	o.max_inbound_frame_bytes = 64 * 1024;
	o.membership_ack_timeout_ms = 3000;
	REQUIRE(usps_open(&c, sock(), &o) == 0);
	/* The subscribe frame draws the oversized reply; c drops the
	 * connection, and (the fake having stopped accepting) elects
	 * itself, so the subscription still takes effect. */
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, col_handler, &cc, &s), 0);
	fake_stop(&f, sock());
	CHECK(wait_broker(c, 3000));
	usps_close(c);
	col_free(&cc);
}

/* 21: the broker closes before the ack. Unlike Mastra (which rejects and
 * rolls back), usps keeps the subscription and announces it to the next
 * broker: here itself. */
TEST(client_broker_gone_before_ack)
{
	struct fake f;
	usps *c = NULL;
	struct col cc;
	usps_sub *s;

	col_init(&cc);
	REQUIRE(fake_start(&f, sock(), 2) == 0);
	REQUIRE(open_default(&c, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, col_handler, &cc, &s), 0);
	fake_stop(&f, sock());
	CHECK(usps_is_broker(c));
	CHECK_EQ_INT(PUB(c, "t", "x"), 0);
	CHECK_EQ_INT(col_wait(&cc, 1, 2000), 1);
	usps_close(c);
	col_free(&cc);
}

/* 23, 24: after the broker closes, a client takes over, groups intact. */
TEST(promotion_after_close)
{
	usps *b = NULL, *c = NULL;
	struct col fb, fc, wc;
	usps_sub *s;

	col_init(&fb);
	col_init(&fc);
	col_init(&wc);
	REQUIRE(open_default(&b, sock()) == 0);
	REQUIRE(open_default(&c, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(b, "t", NULL, col_handler, &fb, &s), 0);
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, col_handler, &fc, &s), 0);
	CHECK_EQ_INT(usps_subscribe(b, "t", "workers", col_handler, &fb, &s),
		     0);
	CHECK_EQ_INT(usps_subscribe(c, "t", "workers", col_handler, &wc, &s),
		     0);
	CHECK_EQ_INT(usps_close(b), 0);
	CHECK_EQ_INT(PUB(c, "t", "after"), 0);
	CHECK_EQ_INT(col_wait(&fc, 1, 3000), 1);
	CHECK_EQ_INT(col_wait(&wc, 1, 3000), 1);
	CHECK(usps_is_broker(c));
	usps_close(c);
	col_free(&fb);
	col_free(&fc);
	col_free(&wc);
}

/* 25: a regular file at the path is reclaimed. */
TEST(stale_regular_file)
{
	usps *b = NULL;
	struct col cb;
	usps_sub *s;
	FILE *f = fopen(sock(), "w");

	REQUIRE(f);
	fputs("stale", f);
	fclose(f);
	col_init(&cb);
	REQUIRE(open_default(&b, sock()) == 0);
	CHECK(usps_is_broker(b));
	CHECK_EQ_INT(usps_subscribe(b, "t", NULL, col_handler, &cb, &s), 0);
	CHECK_EQ_INT(PUB(b, "t", "x"), 0);
	CHECK_EQ_INT(usps_flush(b, 2000), 0);
	CHECK_EQ_INT(col_count(&cb), 1);
	usps_close(b);
	col_free(&cb);
}

/* 26, 27, 86: nack redelivery and its cap and schedule. */
TEST(nack_redelivery)
{
	usps *b = NULL;
	struct col twice, always;
	usps_sub *s1, *s2;

	col_init(&twice);
	col_init(&always);
	twice.nack_until = 3;
	always.nack_always = true;
	REQUIRE(open_default(&b, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(b, "a", NULL, col_handler, &twice, &s1), 0);
	CHECK_EQ_INT(usps_subscribe(b, "b", NULL, col_handler, &always, &s2),
		     0);
	CHECK_EQ_INT(PUB(b, "a", "x"), 0);
	CHECK_EQ_INT(PUB(b, "b", "y"), 0);
	CHECK_EQ_INT(col_wait(&twice, 3, 3000), 3);
	CHECK_EQ_INT(twice.attempt[0], 1);
	CHECK_EQ_INT(twice.attempt[1], 2);
	CHECK_EQ_INT(twice.attempt[2], 3);
	CHECK_EQ_INT(col_wait(&always, 7, 5000), 7);
	/* 100*k ms after attempt k: 0, 100, 300, 600, 1000, 1500, 2100. */
	for (int i = 1; i < 7; i++) {
		int64_t gap = always.at_ms[i] - always.at_ms[i - 1];

		CHECK(gap >= 100 * i - 5);
		CHECK_EQ_INT(always.attempt[i], i + 1);
	}
	CHECK_EQ_STR(always.id[6], always.id[0]);
	/* The 7th attempt's nack is refused; a new event proves nothing more
	 * was scheduled: it arrives next, after a 2.2 s horizon would have
	 * put an 8th attempt first only if one existed. */
	CHECK_EQ_INT(usps_unsubscribe(b, s2), 0);
	CHECK_EQ_INT(col_count(&always), 7);
	usps_close(b);
	col_free(&twice);
	col_free(&always);
}

/* 28: no redelivery after the handler unsubscribed itself. */
TEST(no_redelivery_after_unsubscribe)
{
	usps *b = NULL;
	struct col c, marker;
	usps_sub *s, *sm;

	col_init(&c);
	col_init(&marker);
	c.nack_always = true;
	REQUIRE(open_default(&b, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(b, "t", NULL, col_handler, &c, &s), 0);
	c.unsub_ps = b;
	c.unsub_sub = &s;
	CHECK_EQ_INT(usps_subscribe(b, "m", NULL, col_handler, &marker, &sm),
		     0);
	CHECK_EQ_INT(PUB(b, "t", "x"), 0);
	CHECK_EQ_INT(col_wait(&c, 1, 2000), 1);
	/* A redelivery would come 100 ms later, before a marker published
	 * 150 ms later gets handled: wait for such a marker. */
	int64_t until = harness_now_ms() + 150;
	struct col never;

	col_init(&never);
	(void)col_wait(&never, 1, (int)(until - harness_now_ms()));
	col_free(&never);
	CHECK_EQ_INT(PUB(b, "m", "marker"), 0);
	CHECK_EQ_INT(col_wait(&marker, 1, 2000), 1);
	CHECK_EQ_INT(usps_flush(b, 2000), 0);
	CHECK_EQ_INT(col_count(&c), 1);
	usps_close(b);
	col_free(&c);
	col_free(&marker);
}

/* Unsubscribe from another thread waits for a running handler. */
TEST(unsubscribe_waits_for_handler)
{
	pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;
	usps *b = NULL;
	struct col c;
	usps_sub *s;

	col_init(&c);
	c.block = &gate;
	REQUIRE(open_default(&b, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(b, "t", NULL, col_handler, &c, &s), 0);
	pthread_mutex_lock(&gate);
	CHECK_EQ_INT(PUB(b, "t", "x"), 0);
	CHECK_EQ_INT(PUB(b, "t", "y"), 0);
	/* The handler is blocked on the gate now or soon; let it go only
	 * once the unsubscribe below is waiting for it. */
	pthread_mutex_unlock(&gate);
	CHECK_EQ_INT(usps_unsubscribe(b, s), 0);
	int n = col_count(&c);

	CHECK_EQ_INT(usps_flush(b, 2000), 0);
	CHECK_EQ_INT(col_count(&c), n);
	usps_close(b);
	col_free(&c);
}

/*
 * Let @c's delivery thread take over reading: it asks once it has run a
 * handler and found nothing more queued, and then runs handlers straight
 * from what it reads (inline delivery). The tests below hold whether or
 * not it got to; this makes it likely that they cover that path.
 */
static void warm_client(usps *b, usps *c)
{
	struct col w;
	usps_sub *s;

	col_init(&w);
	CHECK_EQ_INT(usps_subscribe(c, "warm", NULL, col_handler, &w, &s), 0);
	CHECK_EQ_INT(PUB(b, "warm", "w"), 0);
	CHECK_EQ_INT(col_wait(&w, 1, 2000), 1);
	CHECK_EQ_INT(usps_unsubscribe(c, s), 0);
	col_free(&w);
}

/* Nacks work the same for a client's inline deliveries. */
TEST(client_nack_redelivery)
{
	usps *b = NULL, *c = NULL;
	struct col twice;
	usps_sub *s;

	col_init(&twice);
	twice.nack_until = 3;
	REQUIRE(open_default(&b, sock()) == 0);
	REQUIRE(open_default(&c, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(c, "a", NULL, col_handler, &twice, &s), 0);
	warm_client(b, c);
	CHECK_EQ_INT(usps_publish(b, "a", "n", "\"payload\"", 9, 0), 0);
	CHECK_EQ_INT(col_wait(&twice, 3, 3000), 3);
	for (int i = 0; i < 3; i++) {
		CHECK_EQ_INT(twice.attempt[i], i + 1);
		CHECK_EQ_STR(twice.data[i], "\"payload\"");
		CHECK_EQ_STR(twice.id[i], twice.id[0]);
	}
	CHECK(twice.at_ms[1] - twice.at_ms[0] >= 95);
	CHECK_EQ_INT(usps_flush(c, 2000), 0);
	CHECK_EQ_INT(col_count(&twice), 3);
	usps_close(c);
	usps_close(b);
	col_free(&twice);
}

/* As unsubscribe_waits_for_handler, for a client's handler. */
TEST(client_unsubscribe_waits_for_handler)
{
	pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;
	usps *b = NULL, *c = NULL;
	struct col col;
	usps_sub *s;

	col_init(&col);
	col.block = &gate;
	REQUIRE(open_default(&b, sock()) == 0);
	REQUIRE(open_default(&c, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, col_handler, &col, &s), 0);
	warm_client(b, c);
	pthread_mutex_lock(&gate);
	for (int i = 0; i < 50; i++)
		CHECK_EQ_INT(PUB(b, "t", "x"), 0);
	pthread_mutex_unlock(&gate);
	CHECK_EQ_INT(usps_unsubscribe(c, s), 0);
	int n = col_count(&col);

	CHECK_EQ_INT(usps_flush(c, 2000), 0);
	CHECK_EQ_INT(col_count(&col), n);
	usps_close(c);
	usps_close(b);
	col_free(&col);
}

/* A client handler that sees one publisher's sequence numbers, and now
 * and then runs long enough for the I/O thread to take reading back, so
 * that events go both inline and through the queue. */
struct seq_check {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int next, errors;
};

static void seq_handler(const usps_event *ev, usps_delivery *d, void *ud)
{
	struct seq_check *sc = ud;
	int v = ev->data ? atoi(ev->data + 1) : -1;

	(void)d;
	if (v % 500 == 499) {
		/* Longer than the guard (USPS__DL_GUARD_MS, 4 ms). */
		struct timespec ts = { 0, 12 * 1000000L };

		nanosleep(&ts, NULL);
	}
	pthread_mutex_lock(&sc->mu);
	if (v != sc->next)
		sc->errors++;
	sc->next = v + 1;
	pthread_cond_broadcast(&sc->cv);
	pthread_mutex_unlock(&sc->mu);
}

TEST(client_order_inline_and_queued)
{
	enum {
		N = 5000
	};
	struct seq_check sc = { .mu = PTHREAD_MUTEX_INITIALIZER,
				.cv = PTHREAD_COND_INITIALIZER };
	struct timespec until = deadline_ts(10000);
	usps *b = NULL, *c = NULL;
	usps_sub *s;
	int r = 0;

	REQUIRE(open_default(&b, sock()) == 0);
	REQUIRE(open_default(&c, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, seq_handler, &sc, &s), 0);
	warm_client(b, c);
	for (int i = 0; i < N; i++) {
		char data[16];
		int n = snprintf(data, sizeof(data), "\"%d\"", i);

		CHECK_EQ_INT(usps_publish(b, "t", "seq", data, (size_t)n, 0),
			     0);
	}
	pthread_mutex_lock(&sc.mu);
	while (sc.next < N && r == 0)
		r = pthread_cond_timedwait(&sc.cv, &sc.mu, &until);
	pthread_mutex_unlock(&sc.mu);
	CHECK_EQ_INT(sc.next, N);
	CHECK_EQ_INT(sc.errors, 0);
	usps_close(c);
	usps_close(b);
}

/* Data is delivered verbatim but for whitespace between tokens, which is
 * dropped as JSON.stringify drops it (so pretty-printed JSON keeps to one
 * line). */
TEST(data_verbatim)
{
	usps *b = NULL, *c = NULL;
	struct col cc;
	usps_sub *s;
	const char *d =
		"{\"u\":\"\\u00e9\xc3\xa9\\n\",\"n\":12345678901234567890,"
		"\n \"deep\":[[[{\"a\":null}]]]}";

	col_init(&cc);
	REQUIRE(open_default(&b, sock()) == 0);
	REQUIRE(open_default(&c, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, col_handler, &cc, &s), 0);
	CHECK_EQ_INT(usps_publish(b, "t", "x", d, strlen(d), 0), 0);
	CHECK_EQ_INT(col_wait(&cc, 1, 2000), 1);
	CHECK_EQ_STR(cc.data[0],
		     "{\"u\":\"\\u00e9\xc3\xa9\\n\",\"n\":12345678901234567890,"
		     "\"deep\":[[[{\"a\":null}]]]}");
	usps_close(c);
	usps_close(b);
	col_free(&cc);
}

/* Closing leaves no file behind; a handle can be opened again. */
TEST(close_cleans_up)
{
	usps *b = NULL;
	struct stat st;
	char p[PATH_MAX];

	REQUIRE(open_default(&b, sock()) == 0);
	CHECK_EQ_INT(stat(sock(), &st), 0);
	CHECK_EQ_INT(st.st_mode & 0777, 0600);
	usps_close(b);
	CHECK(stat(sock(), &st) < 0);
	snprintf(p, sizeof(p), "%s.lock", sock());
	CHECK(stat(p, &st) < 0);
	snprintf(p, sizeof(p), "%s.elect", sock());
	CHECK(stat(p, &st) < 0);
	REQUIRE(open_default(&b, sock()) == 0);
	CHECK(usps_is_broker(b));
	usps_close(b);
}

/* A missing directory is created 0700; an unsafe one is refused. */
TEST(directory_checks)
{
	usps *b = NULL;
	struct stat st;
	char p[PATH_MAX], d[PATH_MAX];

	snprintf(d, sizeof(d), "%s/a/b", harness_tmpdir());
	REQUIRE(snprintf(p, sizeof(p), "%s/bus.sock", d) < (int)sizeof(p));
	REQUIRE(open_default(&b, p) == 0);
	CHECK_EQ_INT(stat(d, &st), 0);
	CHECK_EQ_INT(st.st_mode & 0777, 0700);
	usps_close(b);
	CHECK_EQ_INT(chmod(d, 0777), 0);
	CHECK_EQ_INT(usps_open(&b, p, NULL), -EPERM);
	CHECK_EQ_INT(chmod(d, 01777), 0);
	CHECK_EQ_INT(usps_open(&b, p, NULL), 0);
	usps_close(b);
	snprintf(p, sizeof(p), "%s/file/bus.sock", harness_tmpdir());
	snprintf(d, sizeof(d), "%s/file", harness_tmpdir());
	FILE *f = fopen(d, "w");

	REQUIRE(f);
	fclose(f);
	CHECK_EQ_INT(usps_open(&b, p, NULL), -ENOTDIR);
}

struct path_arg {
	const char *path;
	ino_t not_ino;
};

static bool path_back(void *a)
{
	struct path_arg *pa = a;
	struct stat st;

	return stat(pa->path, &st) == 0 && st.st_ino != pa->not_ino;
}

/* 31: the socket file deleted under a live broker is bound again; a
 * newcomer joins it rather than becoming a second broker. */
TEST(deleted_path_rebound)
{
	usps *b = NULL, *c = NULL, *d = NULL;
	struct col cc, cd;
	struct stat st;
	usps_sub *s;

	col_init(&cc);
	col_init(&cd);
	REQUIRE(open_default(&b, sock()) == 0);
	REQUIRE(open_default(&c, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, col_handler, &cc, &s), 0);
	REQUIRE(stat(sock(), &st) == 0);
	CHECK_EQ_INT(unlink(sock()), 0);
	struct path_arg pa = { sock(), st.st_ino };

	CHECK(eventually(path_back, &pa, 3000));
	REQUIRE(open_default(&d, sock()) == 0);
	CHECK(usps_is_broker(b));
	CHECK(!usps_is_broker(c) && !usps_is_broker(d));
	CHECK_EQ_INT(usps_subscribe(d, "t", NULL, col_handler, &cd, &s), 0);
	CHECK_EQ_INT(PUB(d, "t", "both"), 0);
	CHECK(col_wait_type(&cc, "both", 2000));
	CHECK(col_wait_type(&cd, "both", 2000));
	usps_close(d);
	usps_close(c);
	usps_close(b);
	col_free(&cc);
	col_free(&cd);
}

static bool not_broker_fn(void *a)
{
	return !usps_is_broker(a);
}

/* 30, 32: another broker's socket put at our path: the old broker steps
 * down and follows it, with its clients; exactly one broker remains. And
 * the old broker closing later does not remove the new one's socket. */
TEST(replaced_path_steps_down)
{
	usps *b = NULL, *c = NULL, *x = NULL, *late = NULL;
	struct col cb, cc, cx;
	char other[PATH_MAX];
	struct stat st;
	usps_sub *s;

	col_init(&cb);
	col_init(&cc);
	col_init(&cx);
	harness_path(other, "other.sock");
	REQUIRE(open_default(&b, sock()) == 0);
	REQUIRE(open_default(&c, sock()) == 0);
	REQUIRE(open_default(&x, other) == 0);
	CHECK_EQ_INT(usps_subscribe(b, "t", NULL, col_handler, &cb, &s), 0);
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, col_handler, &cc, &s), 0);
	CHECK_EQ_INT(usps_subscribe(x, "t", NULL, col_handler, &cx, &s), 0);
	/* x's socket now answers at our path (as a broker elected by a
	 * process that could not see ours would). */
	CHECK_EQ_INT(rename(other, sock()), 0);
	CHECK(eventually(not_broker_fn, b, 3000));
	CHECK(wait_clients(x, 2, 3000));
	CHECK(!usps_is_broker(c));
	CHECK_EQ_INT(PUB(c, "t", "after"), 0);
	CHECK(col_wait_type(&cb, "after", 3000));
	CHECK(col_wait_type(&cx, "after", 3000));
	CHECK(col_wait_type(&cc, "after", 3000));
	/* The old broker leaving must not remove the new broker's socket. */
	REQUIRE(stat(sock(), &st) == 0);
	usps_close(b);
	struct stat st2;

	CHECK(stat(sock(), &st2) == 0 && st2.st_ino == st.st_ino);
	REQUIRE(open_default(&late, sock()) == 0);
	CHECK(!usps_is_broker(late));
	CHECK(usps_is_broker(x));
	usps_close(late);
	usps_close(c);
	usps_close(x);
	col_free(&cb);
	col_free(&cc);
	col_free(&cx);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	RUN(solo_and_client);
	RUN(fanout_and_echo);
	RUN(broker_topic_comes_and_goes);
	RUN(three_handles);
	RUN(local_group_round_robin);
	RUN(fanout_plus_groups);
	RUN(independent_groups);
	RUN(remote_group_last_member);
	RUN(local_only_stays_local);
	RUN(large_payloads);
	RUN(backpressured_client_catches_up);
	RUN(stuck_client_dropped);
	RUN(slow_handler_isolated);
	RUN(blocked_handler_keeps_reading);
	RUN(options_and_arguments);
	RUN(publish_too_large);
	RUN(inbound_frame_limits);
	RUN(raw_acks_and_junk);
	RUN(raw_status_query);
	RUN(raw_event_frames);
	RUN(raw_legacy_local_only);
	RUN(client_no_duplicate_subscribe);
	RUN(client_ack_timeout_and_odd_events);
	RUN(client_drops_oversized_broker_frame);
	RUN(client_broker_gone_before_ack);
	RUN(promotion_after_close);
	RUN(stale_regular_file);
	RUN(nack_redelivery);
	RUN(no_redelivery_after_unsubscribe);
	RUN(unsubscribe_waits_for_handler);
	RUN(client_nack_redelivery);
	RUN(client_unsubscribe_waits_for_handler);
	RUN(client_order_inline_and_queued);
	RUN(data_verbatim);
	RUN(close_cleans_up);
	RUN(directory_checks);
	RUN(deleted_path_rebound);
	RUN(replaced_path_steps_down);
	return harness_end();
}
