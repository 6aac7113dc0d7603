/* SPDX-License-Identifier: MIT */
/*
 * The upstream split-brain scenarios (spec §5.2, items 29-33), with
 * refused connects injected as Mastra's test does by patching
 * net.createConnection. Items 31 (deleted socket file) and 30/32 (a
 * replaced broker) by a rename are in test_pubsub.c.
 */
#include "common.h"

#include "internal.h"

#include <sys/stat.h>

static char path[PATH_MAX];

static const char *sock(void)
{
	return harness_path(path, "bus.sock");
}

static int brokers(usps **h, int n)
{
	int b = 0;

	for (int i = 0; i < n; i++)
		b += h[i] && usps_is_broker(h[i]);
	return b;
}

/*
 * Does @from reach @to? Subscribe @to to a fresh topic and publish from
 * @from every 20 ms until it arrives (as the upstream expectConnected()),
 * within 3 s.
 */
static bool reaches(usps *from, usps *to)
{
	static int seq;
	char topic[32];
	struct col c;
	usps_sub *s = NULL;
	bool ok = false;

	col_init(&c);
	snprintf(topic, sizeof(topic), "probe-%d", ++seq);
	if (usps_subscribe(to, topic, NULL, col_handler, &c, &s) < 0)
		goto out;
	for (int i = 0; i < 150 && !ok; i++) {
		if (usps_publish(from, topic, "probe", "{}", 2, 0) < 0)
			break;
		ok = col_wait(&c, 1, 20) >= 1;
	}
out:
	if (s)
		(void)usps_unsubscribe(to, s);
	col_free(&c);
	return ok;
}

/* 29: a newcomer whose first two connects are refused must not take over:
 * it joins the live broker and reaches the follower. */
TEST(refused_newcomer_does_not_take_over)
{
	usps *h[3] = { 0 };

	REQUIRE(open_default(&h[0], sock()) == 0);
	REQUIRE(open_default(&h[1], sock()) == 0);
	usps__fault_refuse_connects(2);
	REQUIRE(open_default(&h[2], sock()) == 0);
	usps__fault_refuse_connects(0);
	CHECK(usps_is_broker(h[0]));
	CHECK(!usps_is_broker(h[2]));
	CHECK(reaches(h[2], h[1]));
	CHECK(reaches(h[1], h[2]));
	CHECK_EQ_INT(brokers(h, 3), 1);
	for (int i = 2; i >= 0; i--)
		usps_close(h[i]);
}

/* 30: fifty refused connects: the newcomer still does not take over, and
 * all three reach each other both ways with exactly one broker. */
TEST(many_refusals_heal)
{
	usps *h[3] = { 0 };

	REQUIRE(open_default(&h[0], sock()) == 0);
	REQUIRE(open_default(&h[1], sock()) == 0);
	usps__fault_refuse_connects(50);
	REQUIRE(open_default(&h[2], sock()) == 0);
	usps__fault_refuse_connects(0);
	for (int i = 0; i < 3; i++)
		for (int j = 0; j < 3; j++)
			if (i != j)
				CHECK(reaches(h[i], h[j]));
	CHECK_EQ_INT(brokers(h, 3), 1);
	CHECK(usps_is_broker(h[0]));
	for (int i = 2; i >= 0; i--)
		usps_close(h[i]);
}

/* A socket whose connects are refused while the kernel still lists it as
 * listening is not replaced: the newcomer waits for it (a live broker
 * that holds no usps lock, as a Node broker, is not usurped). */
TEST(listed_listener_not_replaced)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	usps_options o;
	usps *n = NULL;
	int lfd;
	int64_t t0;

	/* A foreign broker: listens, holds neither lock file. */
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	REQUIRE(lfd >= 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock());
	REQUIRE(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	REQUIRE(listen(lfd, 8) == 0);
	/* Old enough not to count as a broker still starting up. */
	struct timespec old[2];

	clock_gettime(CLOCK_REALTIME, &old[0]);
	old[0].tv_sec -= 10;
	old[1] = old[0];
	REQUIRE(utimensat(AT_FDCWD, sock(), old, 0) == 0);
	usps_options_init(&o);
	o.open_timeout_ms = 3000;
	/* Enough refusals to reach the election more than once. */
	usps__fault_refuse_connects(6);
	t0 = harness_now_ms();
	CHECK_EQ_INT(usps_open(&n, sock(), &o), 0);
	usps__fault_refuse_connects(0);
	CHECK(n && !usps_is_broker(n));
	CHECK(harness_now_ms() - t0 < 3000);
	/* Still the foreign broker's socket at the path. */
	int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

	CHECK(c >= 0);
	if (c >= 0)
		close(c);
	usps_close(n);
	close(lfd);
	(void)unlink(sock());
}

/* 33: repeated broker restarts; finally a late instance reaches every
 * stable one and there is exactly one broker. */
TEST(repeated_restarts)
{
	usps *st[3] = { 0 }, *late = NULL, *all[4];

	for (int i = 0; i < 3; i++)
		REQUIRE(open_default(&st[i], sock()) == 0);
	for (int round = 0; round < 5; round++) {
		usps *r = NULL;

		REQUIRE(open_default(&r, sock()) == 0);
		for (int i = 0; i < 3; i++) {
			if (usps_is_broker(st[i])) {
				/* The broker restarts: it closes, a
				 * replacement joins. */
				usps_close(st[i]);
				st[i] = NULL;
				REQUIRE(open_default(&st[i], sock()) == 0);
				break;
			}
		}
		usps_close(r);
	}
	REQUIRE(open_default(&late, sock()) == 0);
	for (int i = 0; i < 3; i++)
		CHECK(reaches(late, st[i]));
	for (int i = 0; i < 3; i++)
		all[i] = st[i];
	all[3] = late;
	/* Settled: exactly one broker among the survivors. */
	CHECK(reaches(st[0], late));
	CHECK_EQ_INT(brokers(all, 4), 1);
	usps_close(late);
	for (int i = 0; i < 3; i++)
		usps_close(st[i]);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	RUN(refused_newcomer_does_not_take_over);
	RUN(many_refusals_heal);
	RUN(listed_listener_not_replaced);
	RUN(repeated_restarts);
	return harness_end();
}
