/* SPDX-License-Identifier: MIT */
/*
 * The shared-memory ring (src/ring.h) through which a broker sends to its
 * clients of the same uid: the ring itself, with both ends in this
 * process; rings between handles, in use or declined; back-pressure
 * through a ring much smaller than the events; and a client that lies
 * about its tail, which is dropped alone.
 */
#include "common.h"

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/uio.h>

#include "ring.h"
#include "wire.h"

static char path[PATH_MAX];

static const char *sock(void)
{
	return harness_path(path, "bus.sock");
}

#define PUB(ps, topic, type) usps_publish(ps, topic, type, "{}", 2, 0)

static bool readable(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, 0) == 1;
}

/* The writer's descriptors, dup'd for a reader in this process. */
static int attach_copy(struct usps__ring *rd, const int fds[USPS__RING_FDS])
{
	int d[USPS__RING_FDS];

	for (int i = 0; i < USPS__RING_FDS; i++)
		d[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 0);
	return usps__ring_attach(rd, d);
}

/* Writer and reader of one ring: order across the wrap, fullness,
 * wake-ups both ways, and broken indices. */
TEST(ring_both_ends)
{
	struct usps__ring w, rd;
	int fds[USPS__RING_FDS];
	char out[4096], in[5000];
	struct iovec iov[2];
	size_t got = 0;

	CHECK_EQ_INT(usps__ring_create(&w, 1000, fds), -EINVAL);
	REQUIRE(usps__ring_create(&w, 4096, fds) == 0);
	REQUIRE(attach_copy(&rd, fds) == 0);
	/* Sealed: the reader cannot shrink it under the writer. */
	CHECK(ftruncate(fds[0], 0) < 0 && errno == EPERM);
	close(fds[0]);
	CHECK_EQ_INT(rd.size, 4096);

	/* Empty: the reader asks for a wake-up, and gets one on publish. */
	CHECK_EQ_INT(usps__ring_read(&rd, in, sizeof(in)), -EAGAIN);
	CHECK(!usps__ring_sleep(&rd));
	CHECK(!readable(rd.wake_fd));
	for (size_t i = 0; i < sizeof(out); i++)
		out[i] = (char)(i * 7 + 1);
	CHECK_EQ_INT(usps__ring_put(&w, out, 3000), 0);
	CHECK(!readable(rd.wake_fd)); /* not visible yet */
	usps__ring_publish(&w);
	CHECK(readable(rd.wake_fd));
	usps__ring_clear(rd.wake_fd);
	CHECK(!readable(rd.wake_fd));

	/* 3000 in, 1096 left: a put that does not fit copies nothing; a
	 * write takes what fits. */
	CHECK_EQ_INT(usps__ring_put(&w, out, 2000), -ENOSPC);
	iov[0] = (struct iovec){ .iov_base = out + 3000, .iov_len = 1000 };
	iov[1] = (struct iovec){ .iov_base = out, .iov_len = 500 };
	CHECK_EQ_INT(usps__ring_write(&w, iov, 2), 1096);
	CHECK_EQ_INT(usps__ring_write(&w, iov, 1), 0);
	CHECK(!usps__ring_wait_room(&w));

	/* The reader takes some: the waiting writer is told. */
	CHECK_EQ_INT(usps__ring_read(&rd, in, 2500), 2500);
	CHECK(readable(w.space_fd));
	usps__ring_clear(w.space_fd);
	CHECK(memcmp(in, out, 2500) == 0);
	got = 2500;
	/* Across the end of the data, in order. */
	iov[0] = (struct iovec){ .iov_base = out + 96, .iov_len = 2000 };
	CHECK_EQ_INT(usps__ring_write(&w, iov, 1), 2000);
	CHECK_EQ_INT(usps__ring_read(&rd, in, sizeof(in)), 4096 - 2500 + 2000);
	CHECK(memcmp(in, out + 2500, 1500) == 0);
	CHECK(memcmp(in + 1500, out, 96) == 0);
	CHECK(memcmp(in + 1596, out + 96, 2000) == 0);
	got += 3596;
	CHECK_EQ_INT(w.pos, got);
	CHECK(!readable(w.space_fd)); /* nobody asked */

	/* A tail behind the last one seen, or past head, is a broken reader;
	 * a head more than a ring ahead, a broken writer. */
	*(volatile uint64_t *)((char *)rd.hdr + 128) = 1;
	CHECK_EQ_INT(usps__ring_put(&w, out, 4000), -EPROTO);
	*(volatile uint64_t *)((char *)rd.hdr + 128) = got + 1;
	CHECK_EQ_INT(usps__ring_put(&w, out, 4000), -EPROTO);
	*(volatile uint64_t *)((char *)rd.hdr + 128) = got;
	CHECK_EQ_INT(usps__ring_put(&w, out, 4000), 0);
	*(volatile uint64_t *)rd.hdr = got + 8192;
	CHECK_EQ_INT(usps__ring_read(&rd, in, sizeof(in)), -EPROTO);

	usps__ring_free(&rd);
	usps__ring_free(&w);
	CHECK_EQ_INT(w.wake_fd, -1);
}

/* A ring is set up only from a sealed memfd of a bounded size. */
TEST(ring_attach_checks)
{
	struct usps__ring r;
	int fds[USPS__RING_FDS];

	fds[0] = memfd_create("not-sealed", MFD_CLOEXEC);
	REQUIRE(fds[0] >= 0);
	REQUIRE(ftruncate(fds[0], 4096 + 4096) == 0);
	fds[1] = eventfd(0, EFD_CLOEXEC);
	fds[2] = eventfd(0, EFD_CLOEXEC);
	CHECK_EQ_INT(usps__ring_attach(&r, fds), -EPROTO);
	/* The descriptors were taken over, and closed. */
	CHECK(fcntl(fds[0], F_GETFD) < 0 && errno == EBADF);
	CHECK(fcntl(fds[2], F_GETFD) < 0 && errno == EBADF);
}

/* Mappings of rings in this process. */
static int count_rings(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	int n = 0;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		n += strstr(line, "usps-ring") != NULL;
	fclose(f);
	return n;
}

struct ring_count {
	usps *ps;
	int want;
};

static bool rings_are(void *a)
{
	return count_rings() == ((struct ring_count *)a)->want;
}

/* Two handles of one uid talk through a ring, which both map; a client
 * that declines one (shm_ring_bytes 0) gets the socket, and the events
 * are the same. */
TEST(ring_between_handles)
{
	usps_options no;
	usps *b = NULL, *c = NULL, *d = NULL;
	struct col cc, cd;
	struct ring_count rc = { .want = 2 };
	usps_sub *s;
	int base = count_rings();

	col_init(&cc);
	col_init(&cd);
	usps_options_init(&no);
	no.shm_ring_bytes = 0;
	REQUIRE(open_default(&b, sock()) == 0);
	REQUIRE(open_default(&c, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, col_handler, &cc, &s), 0);
	rc.want = base + 2; /* the broker's and the client's mapping */
	CHECK(eventually(rings_are, &rc, 5000));
	REQUIRE(usps_open(&d, sock(), &no) == 0);
	CHECK_EQ_INT(usps_subscribe(d, "t", NULL, col_handler, &cd, &s), 0);
	CHECK_EQ_INT(count_rings(), base + 2);
	CHECK_EQ_INT(PUB(b, "t", "one"), 0);
	/* Two publishers: the second only once the first has arrived. */
	CHECK_EQ_INT(col_wait(&cc, 1, 5000), 1);
	CHECK_EQ_INT(col_wait(&cd, 1, 5000), 1);
	CHECK_EQ_INT(PUB(d, "t", "two"), 0);
	CHECK_EQ_INT(col_wait(&cc, 2, 5000), 2);
	CHECK_EQ_INT(col_wait(&cd, 2, 5000), 2);
	CHECK_EQ_STR(cc.type[0], "one");
	CHECK_EQ_STR(cc.type[1], "two");
	CHECK_EQ_STR(cd.type[1], "two");
	CHECK_EQ_INT(usps_close(c), 0);
	rc.want = base;
	CHECK(eventually(rings_are, &rc, 5000));
	CHECK_EQ_INT(usps_close(d), 0);
	CHECK_EQ_INT(usps_close(b), 0);
	col_free(&cc);
	col_free(&cd);
}

/* Events much larger than a 4 KiB ring, and many of them: all arrive, in
 * order, intact. */
#define SEQ_N 3000

struct seq {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int next;
	int bad;
};

static size_t seq_size(int i)
{
	return 8 + (size_t)(i * 7919) % 9000;
}

static void seq_handler(const usps_event *ev, usps_delivery *d, void *ud)
{
	struct seq *q = ud;
	int i = atoi(ev->type);
	bool ok = ev->data_len == seq_size(i) && ev->data[0] == '"' &&
		  ev->data[ev->data_len - 1] == '"' &&
		  ev->data[ev->data_len / 2] == (char)('a' + i % 26);

	(void)d;
	pthread_mutex_lock(&q->mu);
	if (i != q->next || !ok)
		q->bad++;
	q->next = i + 1;
	pthread_cond_broadcast(&q->cv);
	pthread_mutex_unlock(&q->mu);
}

TEST(ring_smaller_than_events)
{
	usps_options o;
	usps *b = NULL, *c = NULL, *p = NULL;
	struct seq q = { .next = 0 };
	struct timespec dl = deadline_ts(30000);
	size_t cap = seq_size(0);
	char *data;
	usps_sub *s;

	for (int i = 0; i < SEQ_N; i++)
		if (seq_size(i) > cap)
			cap = seq_size(i);
	data = malloc(cap);
	REQUIRE(data);
	pthread_mutex_init(&q.mu, NULL);
	pthread_cond_init(&q.cv, NULL);
	usps_options_init(&o);
	o.shm_ring_bytes = 4096;
	REQUIRE(usps_open(&b, sock(), &o) == 0);
	REQUIRE(usps_open(&c, sock(), &o) == 0);
	REQUIRE(usps_open(&p, sock(), &o) == 0);
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, seq_handler, &q, &s), 0);
	for (int i = 0; i < SEQ_N; i++) {
		size_t n = seq_size(i);
		char type[16];

		memset(data, 'a' + i % 26, n);
		data[0] = data[n - 1] = '"';
		snprintf(type, sizeof(type), "%d", i);
		if (usps_publish(p, "t", type, data, n, 0) != 0) {
			CHECK(!"publish failed");
			break;
		}
	}
	pthread_mutex_lock(&q.mu);
	while (q.next < SEQ_N &&
	       pthread_cond_timedwait(&q.cv, &q.mu, &dl) != ETIMEDOUT)
		;
	CHECK_EQ_INT(q.next, SEQ_N);
	CHECK_EQ_INT(q.bad, 0);
	pthread_mutex_unlock(&q.mu);
	CHECK_EQ_INT(usps_close(p), 0);
	CHECK_EQ_INT(usps_close(c), 0);
	CHECK_EQ_INT(usps_close(b), 0);
	pthread_mutex_destroy(&q.mu);
	pthread_cond_destroy(&q.cv);
	free(data);
}

/* Read from @fd until the ring's descriptors come: 0, or -ETIMEDOUT. */
static int take_ring_fds(int fd, int fds[USPS__RING_FDS])
{
	int64_t deadline = harness_now_ms() + 5000;

	for (;;) {
		union {
			struct cmsghdr h;
			char b[CMSG_SPACE(sizeof(int) * USPS__RING_FDS)];
		} ctl;
		char buf[4096];
		struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
		struct msghdr mh = { .msg_iov = &iov,
				     .msg_iovlen = 1,
				     .msg_control = ctl.b,
				     .msg_controllen = sizeof(ctl.b) };
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int64_t left = deadline - harness_now_ms();
		struct cmsghdr *c;

		if (left <= 0 || poll(&p, 1, (int)left) <= 0)
			return -ETIMEDOUT;
		if (recvmsg(fd, &mh, MSG_CMSG_CLOEXEC) <= 0)
			return -EPIPE;
		c = CMSG_FIRSTHDR(&mh);
		if (c && c->cmsg_type == SCM_RIGHTS) {
			memcpy(fds, CMSG_DATA(c), sizeof(int) * USPS__RING_FDS);
			return 0;
		}
	}
}

/*
 * A client of our uid that takes a ring and then writes a tail it cannot
 * have (past what the broker wrote) is dropped once the broker looks at
 * the tail; another client's events go on.
 */
TEST(ring_lying_tail_drops_reader)
{
	usps_options o;
	usps *b = NULL, *c = NULL;
	struct col cc;
	struct usps__ring r;
	int fds[USPS__RING_FDS];
	char data[1002];
	usps_sub *s;
	int fd;

	col_init(&cc);
	usps_options_init(&o);
	o.shm_ring_bytes = 4096;
	REQUIRE(usps_open(&b, sock(), &o) == 0);
	REQUIRE(open_default(&c, sock()) == 0);
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, col_handler, &cc, &s), 0);
	fd = raw_connect(sock());
	REQUIRE(fd >= 0);
	CHECK_EQ_INT(raw_sends(fd,
			       "{\"type\":\"usps.index\"}\n"
			       "{\"type\":\"usps.ring\"}\n"
			       "{\"type\":\"subscribe\",\"topic\":\"t\"}\n"),
		     0);
	REQUIRE(take_ring_fds(fd, fds) == 0);
	REQUIRE(usps__ring_attach(&r, fds) == 0);
	CHECK(wait_clients(b, 2, 5000));
	*(volatile uint64_t *)((char *)r.hdr + 128) = UINT64_C(1) << 40;
	memset(data, 'x', sizeof(data));
	data[0] = data[sizeof(data) - 1] = '"';
	for (int i = 0; i < 8; i++)
		CHECK_EQ_INT(usps_publish(b, "t", "big", data, sizeof(data), 0),
			     0);
	CHECK_EQ_INT(raw_wait_closed(fd, 5000), 1);
	CHECK(wait_clients(b, 1, 5000));
	CHECK_EQ_INT(col_wait(&cc, 8, 5000), 8);
	usps__ring_free(&r);
	close(fd);
	CHECK_EQ_INT(usps_close(c), 0);
	CHECK_EQ_INT(usps_close(b), 0);
	col_free(&cc);
}

/* A fake broker of our uid, on its own thread: it answers one client's
 * "usps.index" and "usps.ring", acknowledges its subscription through the
 * ring, then (told to through @go) puts three events in the ring, with no
 * wake-up, and is gone. */
struct fake {
	int lfd;
	int go[2];
	pthread_t th;
	int ok;
};

static int put_rec(struct usps__ring *r, const char *line)
{
	uint8_t head[USPS__REC_WIDE];
	size_t n = strlen(line);
	size_t hlen = usps__rec_head(head, n, NULL);

	if (usps__ring_put(r, head, hlen) < 0 || usps__ring_put(r, line, n) < 0)
		return -ENOSPC;
	return usps__ring_put(r, "\n", 1);
}

static void *fake_main(void *arg)
{
	static const char yes[] = "{\"type\":\"usps.index\"}\n";
	struct fake *f = arg;
	struct raw_reader rr = { 0 };
	struct usps__ring r;
	char line[512], b;
	int fds[USPS__RING_FDS];
	struct pollfd p = { .fd = f->lfd, .events = POLLIN };
	int fd;

	if (poll(&p, 1, 5000) != 1)
		return NULL;
	fd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return NULL;
	if (raw_line(fd, &rr, line, sizeof(line), 5000) != 1 ||
	    raw_line(fd, &rr, line, sizeof(line), 5000) != 1 ||
	    strcmp(line, "{\"type\":\"usps.ring\"}") != 0 ||
	    raw_sends(fd, yes) < 0 || usps__ring_create(&r, 4096, fds) < 0)
		goto close_fd;
	{
		union {
			struct cmsghdr h;
			char b[CMSG_SPACE(sizeof(fds))];
		} ctl = { 0 };
		uint8_t head[USPS__REC_WIDE];
		char rec[64];
		size_t hlen = usps__rec_head(head, 20, NULL);
		struct iovec iov = { .iov_base = rec, .iov_len = hlen + 21 };
		struct msghdr mh = { .msg_iov = &iov,
				     .msg_iovlen = 1,
				     .msg_control = ctl.b,
				     .msg_controllen = sizeof(ctl.b) };
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);

		memcpy(rec, head, hlen);
		memcpy(rec + hlen, "{\"type\":\"usps.ring\"}\n", 21);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(fds));
		memcpy(CMSG_DATA(c), fds, sizeof(fds));
		ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL);

		close(fds[0]);
		if (w != (ssize_t)iov.iov_len)
			goto free_ring;
	}
	if (raw_line(fd, &rr, line, sizeof(line), 5000) != 1 ||
	    strcmp(line, "{\"type\":\"subscribe\",\"topic\":\"t\"}") != 0 ||
	    put_rec(&r, "{\"type\":\"subscribed\",\"topic\":\"t\"}") < 0)
		goto free_ring;
	usps__ring_publish(&r);
	/* Told to go on: three events, and nobody told of them. */
	if (read(f->go[0], &b, 1) != 1)
		goto free_ring;
	*(volatile uint32_t *)((char *)r.hdr + 64) = 0;
	for (int i = 0; i < 3; i++) {
		char ev[128];

		snprintf(ev, sizeof(ev),
			 "{\"type\":\"event\",\"topic\":\"t\",\"event\":"
			 "{\"type\":\"last-%d\",\"data\":1}}",
			 i);
		if (put_rec(&r, ev) < 0)
			goto free_ring;
	}
	usps__ring_publish(&r);
	f->ok = 1;
free_ring:
	usps__ring_free(&r);
close_fd:
	close(fd);
	return NULL;
}

/*
 * A broker that goes leaves what it put in the ring, as it would leave
 * bytes in a socket: the client reads them before it looks for another.
 */
TEST(ring_outlives_its_broker)
{
	struct fake f = { .ok = 0 };
	usps_options o;
	struct col cc;
	usps_sub *s;
	usps *c;

	col_init(&cc);
	usps_options_init(&o);
	o.open_timeout_ms = 5000;
	REQUIRE(pipe2(f.go, O_CLOEXEC) == 0);
	f.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	REQUIRE(f.lfd >= 0);
	{
		struct sockaddr_un sa = { .sun_family = AF_UNIX };

		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock());
		REQUIRE(bind(f.lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
		REQUIRE(listen(f.lfd, 8) == 0);
	}
	REQUIRE(pthread_create(&f.th, NULL, fake_main, &f) == 0);
	REQUIRE(usps_open(&c, sock(), &o) == 0);
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, col_handler, &cc, &s), 0);
	/* No broker left once it is gone: the client will elect itself. */
	close(f.lfd);
	CHECK(write(f.go[1], "g", 1) == 1);
	pthread_join(f.th, NULL);
	CHECK_EQ_INT(f.ok, 1);
	CHECK_EQ_INT(col_wait(&cc, 3, 5000), 3);
	CHECK_EQ_STR(cc.type[0], "last-0");
	CHECK_EQ_STR(cc.type[2], "last-2");
	CHECK_EQ_INT(usps_close(c), 0);
	close(f.go[0]);
	close(f.go[1]);
	col_free(&cc);
}

int main(void)
{
	RUN(ring_both_ends);
	RUN(ring_attach_checks);
	RUN(ring_between_handles);
	RUN(ring_smaller_than_events);
	RUN(ring_lying_tail_drops_reader);
	RUN(ring_outlives_its_broker);
	return harness_end();
}
