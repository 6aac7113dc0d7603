/* SPDX-License-Identifier: MIT */
/*
 * Hostile peers: whatever a local process writes to the socket, the broker
 * neither crashes, stalls nor corrupts what it sends others. Each test
 * ends by proving that a well-behaved client still gets its events.
 */
#include "common.h"

#include <sys/resource.h>
#include <sys/un.h>

#include "wire.h"

/* Sanitizers' shadow memory makes RSS meaningless as a bound. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define UNDER_SANITIZER 1
#endif
#endif
#ifndef UNDER_SANITIZER
#define UNDER_SANITIZER 0
#endif

static char path[PATH_MAX];

static const char *sock(void)
{
	return harness_path(path, "bus.sock");
}

/* The bus still works: c gets a marker published by the broker. */
static void still_works(usps *b, struct col *cc, const char *marker)
{
	CHECK_EQ_INT(usps_publish(b, "t", marker, "{}", 2, 0), 0);
	CHECK(col_wait_type(cc, marker, 5000));
}

struct bus {
	usps *b, *c;
	struct col cb, cc;
	usps_sub *sb, *sc;
};

static int bus_open(struct bus *x, const usps_options *o)
{
	memset(x, 0, sizeof(*x));
	col_init(&x->cb);
	col_init(&x->cc);
	if (usps_open(&x->b, sock(), o) < 0 || usps_open(&x->c, sock(), o) < 0)
		return -1;
	if (usps_subscribe(x->b, "t", NULL, col_handler, &x->cb, &x->sb) < 0 ||
	    usps_subscribe(x->c, "t", NULL, col_handler, &x->cc, &x->sc) < 0)
		return -1;
	return 0;
}

static void bus_close(struct bus *x)
{
	usps_close(x->c);
	usps_close(x->b);
	col_free(&x->cb);
	col_free(&x->cc);
}

/* Invalid JSON, invalid UTF-8, huge numbers, bad envelopes, event frames
 * and unknown types: ignored or forwarded verbatim; the peer stays. */
TEST(garbage_lines)
{
	struct bus x;
	struct raw_reader rr = { 0 };
	char line[4096];
	int fd;
	static const char *const lines[] = {
		"{\"type\":\"publish\",\"topic\":\"t\",\"event\":{\"type\":\"a\"\n",
		"{\"type\":\"publish\",\"topic\":\"t\",\"event\":{\"type\":\"\xc3\x28\"}}\n",
		"{\"type\":\"publish\",\"topic\":\"\xed\xa0\x80\",\"event\":{}}\n",
		"\xff\xfe\xfd\n",
		"{\"type\":\"publish\",\"topic\":\"t\",\"event\":{\"type\":\"nan\",\"data\":NaN}}\n",
		"{\"type\":\"subscribe\",\"topic\":\"t\",\"group\":{\"a\":[1,2]}}\n",
		"{\"type\":\"event\",\"topic\":\"t\",\"event\":{\"type\":\"forged\"}}\n",
		"{\"type\":\"usps.whatever\"}\n",
		"{\"type\":7}\n",
		"{}\n",
	};

	REQUIRE(bus_open(&x, NULL) == 0);
	fd = raw_connect(sock());
	REQUIRE(fd >= 0);
	CHECK_EQ_INT(
		raw_sends(fd, "{\"type\":\"subscribe\",\"topic\":\"t\"}\n"), 0);
	CHECK_EQ_INT(raw_line(fd, &rr, line, sizeof(line), 2000), 1);
	for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
		CHECK_EQ_INT(raw_sends(fd, lines[i]), 0);
	CHECK_EQ_INT(raw_send(fd, "\x00\x01\x02\n", 4), 0);
	/* Valid but extreme values are forwarded verbatim. */
	CHECK_EQ_INT(
		raw_sends(fd,
			  "{\"type\":\"publish\",\"topic\":\"t\",\"event\":"
			  "{\"type\":\"huge\",\"data\":[1e999999,"
			  "-123456789012345678901234567890.5e-300,"
			  "{\"__m_codec__\":\"Date\",\"v\":\"garbage\"},"
			  "{\"__m_codec__\":\"BigInt\",\"v\":\"abc\"},"
			  "{\"__m_codec__\":\"Error\",\"v\":{\"x\":"
			  "{\"__m_codec__\":\"BigInt\",\"v\":\"1\"}}}]}}\n"),
		0);
	CHECK(col_wait_type(&x.cc, "huge", 3000));
	/* (the collector keeps the first 127 bytes) */
	CHECK(strncmp(x.cc.data[0],
		      "[1e999999,-123456789012345678901234567890.5e-300,"
		      "{\"__m_codec__\":\"Date\",\"v\":\"garbage\"},"
		      "{\"__m_codec__\":\"BigInt\",\"v\":\"abc\"},{\"__m_",
		      127) == 0);
	CHECK(!col_has(&x.cc, "forged") && !col_has(&x.cc, "a"));
	/* The garbage sender is still connected and served. */
	still_works(x.b, &x.cc, "after-garbage");
	int events = 0;

	while (raw_line(fd, &rr, line, sizeof(line), 2000) == 1)
		if (strstr(line, "after-garbage") && ++events)
			break;
	CHECK_EQ_INT(events, 1);
	CHECK_EQ_INT(usps_remote_client_count(x.b), 2);
	close(fd);
	bus_close(&x);
}

/* Nesting 100k deep: refused quickly, without recursion. */
TEST(deep_nesting)
{
	struct bus x;
	size_t depth = 100000;
	char *buf = malloc(2 * depth + 128);
	int fd, n;

	REQUIRE(buf);
	REQUIRE(bus_open(&x, NULL) == 0);
	fd = raw_connect(sock());
	REQUIRE(fd >= 0);
	n = snprintf(buf, 128,
		     "{\"type\":\"publish\",\"topic\":\"t\",\"event\":"
		     "{\"type\":\"deep\",\"data\":");
	memset(buf + n, '[', depth);
	memset(buf + n + depth, ']', depth);
	memcpy(buf + n + 2 * depth, "}}\n", 3);
	CHECK_EQ_INT(raw_send(fd, buf, (size_t)n + 2 * depth + 3), 0);
	/* The same peer's next publish arrives only after the deep one was
	 * handled: the checks below then see its outcome. */
	CHECK_EQ_INT(raw_sends(fd, "{\"type\":\"publish\",\"topic\":\"t\","
				   "\"event\":{\"type\":\"after-raw\"}}\n"),
		     0);
	CHECK(col_wait_type(&x.cc, "after-raw", 5000));
	still_works(x.b, &x.cc, "after-deep");
	CHECK(!col_has(&x.cc, "deep"));
	CHECK_EQ_INT(usps_remote_client_count(x.b), 2);
	close(fd);
	bus_close(&x);
	free(buf);
}

/* A frame of limit + 1 bytes closes that peer only (64 MiB default). */
TEST(frame_over_default_limit)
{
	struct bus x;
	size_t n = (64u << 20) + 1;
	char *buf = malloc(n + 1);
	int fd;

	REQUIRE(buf);
	REQUIRE(bus_open(&x, NULL) == 0);
	fd = raw_connect(sock());
	REQUIRE(fd >= 0);
	memset(buf, ' ', n);
	buf[n] = '\n';
	CHECK_EQ_INT(raw_send(fd, buf, n + 1), 0);
	CHECK_EQ_INT(raw_wait_closed(fd, 10000), 1);
	still_works(x.b, &x.cc, "after-big");
	close(fd);
	bus_close(&x);
	free(buf);
}

/* 100k memberships from one peer: acknowledged, recorded up to the cap,
 * and the broker's routing stays correct and prompt. */
TEST(many_memberships)
{
	usps_options o;
	struct bus x;
	struct raw_reader rr = { 0 };
	char line[256];
	char *buf = malloc(64 * 1000 + 16);
	int fd, acks = 0;

	REQUIRE(buf);
	usps_options_init(&o);
	o.max_memberships_per_client = 50000;
	REQUIRE(bus_open(&x, &o) == 0);
	fd = raw_connect(sock());
	REQUIRE(fd >= 0);
	for (int batch = 0; batch < 100; batch++) {
		size_t len = 0;

		for (int i = 0; i < 1000; i++)
			len += (size_t)snprintf(
				buf + len, 64,
				"{\"type\":\"subscribe\",\"topic\":\"m%d\"}\n",
				batch * 1000 + i);
		CHECK_EQ_INT(raw_send(fd, buf, len), 0);
		/* Read the acks as they come, as a client must. */
		while (acks < (batch + 1) * 1000 &&
		       raw_line(fd, &rr, line, sizeof(line), 5000) == 1)
			acks++;
	}
	CHECK_EQ_INT(acks, 100000);
	still_works(x.b, &x.cc, "after-memberships");
	/* Within the cap, a membership works; past it, it was not kept. */
	CHECK_EQ_INT(usps_publish(x.b, "m10", "in-cap", "{}", 2, 0), 0);
	CHECK_EQ_INT(usps_publish(x.b, "m99999", "over-cap", "{}", 2, 0), 0);
	CHECK_EQ_INT(usps_flush(x.b, 5000), 0);
	bool in = false, over = false;

	CHECK_EQ_INT(raw_sends(fd,
			       "{\"type\":\"subscribe\",\"topic\":\"end\"}\n"),
		     0);
	while (raw_line(fd, &rr, line, sizeof(line), 3000) == 1) {
		in |= strstr(line, "in-cap") != NULL;
		over |= strstr(line, "over-cap") != NULL;
		if (strstr(line, "\"subscribed\",\"topic\":\"end\""))
			break;
	}
	CHECK(in);
	CHECK(!over);
	close(fd);
	/* The peer's memberships go with it. */
	CHECK(wait_clients(x.b, 1, 5000));
	still_works(x.b, &x.cc, "after-close");
	bus_close(&x);
	free(buf);
}

/* Connections over max_clients are closed at once; the others stay. */
TEST(too_many_connections)
{
	usps_options o;
	struct bus x;
	int fds[2000], n = 0;
	struct rlimit rl;

	(void)getrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur < 4200 && rl.rlim_max >= 4200) {
		rl.rlim_cur = 4200;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
	usps_options_init(&o);
	o.max_clients = 100;
	REQUIRE(bus_open(&x, &o) == 0);
	for (int i = 0; i < 2000; i++) {
		fds[i] = raw_connect(sock());
		if (fds[i] >= 0)
			n++;
	}
	CHECK(n > 100);
	CHECK(wait_clients(x.b, 100, 5000));
	CHECK_EQ_INT(usps_remote_client_count(x.b), 100);
	still_works(x.b, &x.cc, "after-flood");
	for (int i = 0; i < 2000; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	CHECK(wait_clients(x.b, 1, 5000));
	/* A newcomer is served again. */
	usps *late = NULL;
	struct col cl;
	usps_sub *s;

	col_init(&cl);
	REQUIRE(usps_open(&late, sock(), &o) == 0);
	CHECK_EQ_INT(usps_subscribe(late, "t", NULL, col_handler, &cl, &s), 0);
	still_works(x.b, &cl, "late");
	usps_close(late);
	col_free(&cl);
	bus_close(&x);
}

/* Child: on "go", a real client that subscribes and reports "ready"; it
 * reports "got TYPE N" when the event "load-end" or "after-stop" arrives.
 * Then it waits for a line (or EOF) and leaves. */
struct counting {
	pthread_mutex_t mu;
	int n;
	int out_fd;
};

static void count_handler(const usps_event *ev, usps_delivery *d, void *ud)
{
	struct counting *c = ud;

	(void)d;
	pthread_mutex_lock(&c->mu);
	c->n++;
	if (!strcmp(ev->type, "load-end") || !strcmp(ev->type, "after-stop"))
		harness_say(c->out_fd, "got %s %d", ev->type, c->n);
	pthread_mutex_unlock(&c->mu);
}

static int client_child(void *arg, int in_fd, int out_fd)
{
	struct counting c = { PTHREAD_MUTEX_INITIALIZER, 0, out_fd };
	usps *ps = NULL;
	usps_sub *s;
	char line[64], buf[256];
	size_t len = 0;

	(void)arg;
	if (harness_read_line(in_fd, buf, &len, sizeof(buf), line, sizeof(line),
			      20000) != 1)
		return 1;
	if (usps_open(&ps, sock(), NULL) < 0 ||
	    usps_subscribe(ps, "t", NULL, count_handler, &c, &s) < 0) {
		harness_say(out_fd, "error");
		return 1;
	}
	harness_say(out_fd, "ready");
	(void)harness_read_line(in_fd, buf, &len, sizeof(buf), line,
				sizeof(line), 60000);
	usps_close(ps);
	return 0;
}

static long rss_kib(void)
{
	char buf[4096];
	FILE *f = fopen("/proc/self/status", "r");
	long v = -1;

	if (!f)
		return -1;
	while (fgets(buf, sizeof(buf), f))
		if (sscanf(buf, "VmRSS: %ld kB", &v) == 1)
			break;
	fclose(f);
	return v;
}

/* A subscriber stopped with SIGSTOP is dropped at the cap; the broker's
 * memory stays bounded and a healthy subscriber gets everything. This
 * process is the broker alone, so its RSS is the broker's. */
TEST(sigstopped_subscriber)
{
	struct harness_child stopped, healthy;
	usps_options o;
	usps *b = NULL;
	char line[64];
	char *data = malloc(64 * 1024 + 2);
	long rss0, rss1;
	int got = 0;

	REQUIRE(data);
	/* Forked before this process starts any thread. */
	REQUIRE(harness_spawn(&stopped, client_child, NULL) == 0);
	if (harness_spawn(&healthy, client_child, NULL) < 0) {
		(void)harness_child_finish(&stopped, 5000);
		REQUIRE(false);
	}
	usps_options_init(&o);
	o.max_client_queued_bytes = 8u << 20;
	o.max_outbox_bytes = 4u << 20;
	if (usps_open(&b, sock(), &o) < 0)
		goto out;
	CHECK(usps_is_broker(b));
	harness_tell(&stopped, "go");
	harness_tell(&healthy, "go");
	CHECK_EQ_INT(harness_child_expect(&stopped, "ready", line, sizeof(line),
					  10000),
		     1);
	CHECK_EQ_INT(harness_child_expect(&healthy, "ready", line, sizeof(line),
					  10000),
		     1);
	CHECK(wait_clients(b, 2, 5000));
	CHECK_EQ_INT(kill(stopped.pid, SIGSTOP), 0);
	data[0] = '"';
	memset(data + 1, 'z', 64 * 1024 - 2);
	data[64 * 1024 - 1] = '"';
	rss0 = rss_kib();
	/* 64 MiB through the bus: 8 times the stopped client's cap. */
	for (int i = 0; i < 1024; i++)
		CHECK_EQ_INT(usps_publish(b, "t", "load", data, 64 * 1024, 0),
			     0);
	CHECK_EQ_INT(usps_publish(b, "t", "load-end", "{}", 2, 0), 0);
	CHECK_EQ_INT(harness_child_expect(&healthy, "got load-end", line,
					  sizeof(line), 30000),
		     1);
	CHECK(sscanf(line, "got load-end %d", &got) == 1 && got == 1025);
	CHECK(wait_clients(b, 1, 10000));
	rss1 = rss_kib();
	printf("info broker rss before %ld KiB, after %ld KiB\n", rss0, rss1);
	/* Bounded by the cap and the outbox, not by the traffic. */
	CHECK(UNDER_SANITIZER || rss1 - rss0 < 32 * 1024);
	CHECK_EQ_INT(usps_publish(b, "t", "after-stop", "{}", 2, 0), 0);
	CHECK_EQ_INT(harness_child_expect(&healthy, "got after-stop", line,
					  sizeof(line), 5000),
		     1);
out:
	(void)kill(stopped.pid, SIGCONT);
	CHECK(harness_exited_ok(harness_child_finish(&healthy, 10000)));
	CHECK(harness_exited_ok(harness_child_finish(&stopped, 10000)));
	usps_close(b);
	free(data);
}

/*
 * Next record from @fd (after "usps.index") into @out, whole, size field
 * included, within @timeout_ms: its length, 0 on EOF, -ETIMEDOUT.
 */
static ssize_t raw_record(int fd, struct raw_reader *r, char *out, size_t cap,
			  int timeout_ms)
{
	int64_t deadline = harness_now_ms() + timeout_ms;

	for (;;) {
		if (r->len >= 4) {
			size_t n = 4 + ((size_t)(uint8_t)r->buf[0] |
					(size_t)(uint8_t)r->buf[1] << 8 |
					(size_t)(uint8_t)r->buf[2] << 16 |
					(size_t)(uint8_t)r->buf[3] << 24);

			if (n > cap || n > sizeof(r->buf))
				return -EMSGSIZE;
			if (r->len >= n) {
				memcpy(out, r->buf, n);
				memmove(r->buf, r->buf + n, r->len - n);
				r->len -= n;
				return (ssize_t)n;
			}
		}
		int64_t left = deadline - harness_now_ms();
		struct pollfd p = { .fd = fd, .events = POLLIN };

		if (left <= 0 || poll(&p, 1, (int)left) == 0)
			return -ETIMEDOUT;
		ssize_t got = recv(fd, r->buf + r->len, sizeof(r->buf) - r->len,
				   MSG_DONTWAIT);

		if (got == 0)
			return 0;
		if (got > 0)
			r->len += (size_t)got;
	}
}

static bool same_span(struct usps__span a, struct usps__span b)
{
	return a.n == b.n && (!a.n || !memcmp(a.p, b.p, a.n));
}

/*
 * Raw peers on "t": @ia asks for indexed frames and is told yes; @pb does
 * not, and its ack is left in @line.
 */
static void join_indexed(int ia, struct raw_reader *ra, int pb,
			 struct raw_reader *rb, char *line, size_t cap)
{
	CHECK_EQ_INT(raw_sends(ia,
			       "{\"type\":\"usps.index\"}\n"
			       "{\"type\":\"subscribe\",\"topic\":\"t\"}\n"),
		     0);
	CHECK_EQ_INT(
		raw_sends(pb, "{\"type\":\"subscribe\",\"topic\":\"t\"}\n"), 0);
	CHECK_EQ_INT(raw_line(ia, ra, line, cap, 5000), 1);
	CHECK_EQ_STR(line, "{\"type\":\"usps.index\"}");
	CHECK_EQ_INT(raw_line(pb, rb, line, cap, 5000), 1);
	CHECK_EQ_STR(line, "{\"type\":\"subscribed\",\"topic\":\"t\"}");
}

/*
 * A peer of our uid that asks for indexed frames ("usps.index") is told
 * yes and then gets records: acks as plain records, events with an index
 * that matches a parse of the very line a peer without them gets.
 */
TEST(indexed_frames)
{
	struct raw_reader ra = { 0 }, rb = { 0 };
	char line[4096], rec[4096], want[4096];
	struct usps__frame f, g;
	const char *l;
	size_t n;
	usps *b;
	int ia, pb;

	REQUIRE(usps_open(&b, sock(), NULL) == 0);
	ia = raw_connect(sock());
	pb = raw_connect(sock());
	REQUIRE(ia >= 0 && pb >= 0);
	join_indexed(ia, &ra, pb, &rb, line, sizeof(line));
	/* The offer to take records ("usps.records"), then the ack, as
	 * plain records. */
	ssize_t k = raw_record(ia, &ra, rec, sizeof(rec), 5000);

	REQUIRE(k > 0);
	CHECK_EQ_INT(usps__rec_open(rec, (size_t)k, &l, &n, &f), 0);
	CHECK(n == 23 && !memcmp(l, "{\"type\":\"usps.records\"}", n));
	k = raw_record(ia, &ra, rec, sizeof(rec), 5000);
	REQUIRE(k > 0);
	CHECK_EQ_INT(usps__rec_open(rec, (size_t)k, &l, &n, &f), 0);
	CHECK(n == strlen(line) && !memcmp(l, line, n));

	CHECK_EQ_INT(usps_publish_ex(b, "t", "ix", "{\"k\":[1,2]}", 11, "r1",
				     "{\"n\":3}", 7, 0),
		     0);
	CHECK_EQ_INT(raw_line(pb, &rb, want, sizeof(want), 5000), 1);
	k = raw_record(ia, &ra, rec, sizeof(rec), 5000);
	REQUIRE(k > 0);
	REQUIRE(usps__rec_open(rec, (size_t)k, &l, &n, &f) == 1);
	CHECK(n == strlen(want) && !memcmp(l, want, n));
	REQUIRE(usps__wire_parse(l, n, &g) == 0);
	CHECK(same_span(f.topic, g.topic) && same_span(f.event, g.event));
	CHECK(f.ev_known && g.ev_known);
	for (int i = 0; i < 6; i++)
		CHECK(same_span((&f.ev.type)[i], (&g.ev.type)[i]));
	CHECK(f.ev.data.n == 11 && !memcmp(f.ev.data.p, "{\"k\":[1,2]}", 11));
	close(ia);
	close(pb);
	usps_close(b);
}

/* A fake broker: a socket listening at sock(). The fd, or -errno. */
static int fake_broker_listen(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (lfd < 0)
		return -errno;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock());
	if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(lfd, 8) < 0) {
		int e = -errno;

		close(lfd);
		return e;
	}
	return lfd;
}

/* Accept one connection on @lfd within @timeout_ms: the fd or -errno. */
static int accept_within(int lfd, int timeout_ms)
{
	struct pollfd p = { .fd = lfd, .events = POLLIN };

	if (poll(&p, 1, timeout_ms) <= 0)
		return -ETIMEDOUT;
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

	return fd < 0 ? -errno : fd;
}

/* The next client of the fake broker @lfd, which asks for indexed frames
 * first: its fd (@rr emptied for it), or -errno. */
static int accept_asked(int lfd, struct raw_reader *rr, char *line, size_t cap)
{
	int fd = accept_within(lfd, 5000);

	rr->len = 0;
	if (fd >= 0) {
		CHECK_EQ_INT(raw_line(fd, rr, line, cap, 5000), 1);
		CHECK_EQ_STR(line, "{\"type\":\"usps.index\"}");
		/* And a ring, which this broker never answers. */
		CHECK_EQ_INT(raw_line(fd, rr, line, cap, 5000), 1);
		CHECK_EQ_STR(line, "{\"type\":\"usps.ring\"}");
	}
	return fd;
}

/*
 * A broker (here a fake one, of our uid) that says yes to "usps.index" and
 * then sends a record that lies about its spans: the client hangs up, as
 * on any broken stream, asks again on the next connection, and takes good
 * records there.
 */
TEST(broken_record_from_broker)
{
	struct raw_reader rr = { 0 };
	struct usps__ix ix = { 0 };
	struct usps__frame f;
	struct col cc;
	char line[4096], rec[512];
	const char *ev = "{\"type\":\"event\",\"topic\":\"t\",\"event\":"
			 "{\"type\":\"good\",\"data\":1}}";
	uint8_t head[USPS__REC_WIDE];
	usps_options o;
	size_t hlen;
	usps_sub *sub;
	usps *c;
	int lfd, fd;

	col_init(&cc);
	usps_options_init(&o);
	o.membership_ack_timeout_ms = 100; /* nobody acks here */
	lfd = fake_broker_listen();
	REQUIRE(lfd >= 0);
	REQUIRE(usps_open(&c, sock(), &o) == 0);
	CHECK(!usps_is_broker(c));
	CHECK_EQ_INT(usps_subscribe(c, "t", NULL, col_handler, &cc, &sub), 0);
	fd = accept_asked(lfd, &rr, line, sizeof(line));
	REQUIRE(fd >= 0);
	CHECK_EQ_INT(raw_sends(fd, "{\"type\":\"usps.index\"}\n"), 0);
	/* The topic's span runs past the line. */
	ix.off[USPS__IX_TOPIC] = 24;
	ix.len[USPS__IX_TOPIC] = 4000;
	ix.off[USPS__IX_EVENT] = 36;
	ix.len[USPS__IX_EVENT] = 2;
	ix.flags = USPS__IXF_EV_KNOWN;
	hlen = usps__rec_head(head, strlen(ev), &ix);
	memcpy(rec, head, hlen);
	memcpy(rec + hlen, ev, strlen(ev));
	rec[hlen + strlen(ev)] = '\n';
	CHECK_EQ_INT(raw_send(fd, rec, hlen + strlen(ev) + 1), 0);
	CHECK_EQ_INT(raw_wait_closed(fd, 5000), 1);
	close(fd);

	/* It comes back, asks again, and reads a good record. */
	fd = accept_asked(lfd, &rr, line, sizeof(line));
	REQUIRE(fd >= 0);
	CHECK_EQ_INT(raw_line(fd, &rr, line, sizeof(line), 5000), 1);
	CHECK_EQ_STR(line, "{\"type\":\"subscribe\",\"topic\":\"t\"}");
	CHECK_EQ_INT(raw_sends(fd, "{\"type\":\"usps.index\"}\n"), 0);
	REQUIRE(usps__wire_parse(ev, strlen(ev), &f) == 0);
	usps__ix_from_frame(&ix, &f, ev);
	hlen = usps__rec_head(head, strlen(ev), &ix);
	memcpy(rec, head, hlen);
	memcpy(rec + hlen, ev, strlen(ev));
	rec[hlen + strlen(ev)] = '\n';
	CHECK_EQ_INT(raw_send(fd, rec, hlen + strlen(ev) + 1), 0);
	CHECK_EQ_INT(col_wait(&cc, 1, 5000), 1);
	CHECK(col_has(&cc, "good"));
	close(fd);
	close(lfd);
	usps_close(c);
	col_free(&cc);
}

/* A record for the line @line (no '\n'), indexed by @ix or plain. */
static size_t make_record(char *out, const char *line,
			  const struct usps__ix *ix)
{
	uint8_t head[USPS__REC_WIDE];
	size_t hlen = usps__rec_head(head, strlen(line), ix);

	memcpy(out, head, hlen);
	memcpy(out + hlen, line, strlen(line));
	out[hlen + strlen(line)] = '\n';
	return hlen + strlen(line) + 1;
}

/*
 * A peer of our uid that took the offer ("usps.records") sends records: a
 * publish by its index reaches a line peer as the line a parse would have
 * routed, and itself as a record; a plain record is parsed. A record that
 * lies about its spans gets the peer dropped, and the bus goes on. A peer
 * that was never offered records sends lines even after the marker.
 */
TEST(records_from_peer)
{
	struct raw_reader ra = { 0 }, rb = { 0 };
	struct usps__buf pub = { 0 };
	char line[4096], rec[4096];
	struct usps__frame f, g;
	struct usps__ix ix = { 0 };
	const char *l;
	size_t n;
	ssize_t k;
	usps *b;
	int ia, pb, ic;

	REQUIRE(usps_open(&b, sock(), NULL) == 0);
	ia = raw_connect(sock());
	pb = raw_connect(sock());
	ic = raw_connect(sock());
	REQUIRE(ia >= 0 && pb >= 0 && ic >= 0);
	join_indexed(ia, &ra, pb, &rb, line, sizeof(line));
	k = raw_record(ia, &ra, rec, sizeof(rec), 5000); /* the offer */
	REQUIRE(k > 0);
	k = raw_record(ia, &ra, rec, sizeof(rec), 5000); /* the ack */
	REQUIRE(k > 0);

	/* Records from here on: a publish as usps_publish() builds it. */
	CHECK_EQ_INT(raw_sends(ia, "{\"type\":\"usps.records\"}\n"), 0);
	REQUIRE(usps__rec_put_publish(&pub, "t", 1, "rx", 2, "r9",
				      (struct usps__span){ "{\"k\":[1]}", 9 },
				      (struct usps__span){ 0 }) == 0);
	CHECK_EQ_INT(raw_send(ia, pub.p, pub.len), 0);
	CHECK_EQ_INT(raw_line(pb, &rb, line, sizeof(line), 5000), 1);
	REQUIRE(usps__wire_parse(line, strlen(line), &g) == 0);
	CHECK(g.type == USPS__F_EVENT && g.ev_known);
	CHECK(g.ev.type.n == 4 && !memcmp(g.ev.type.p, "\"rx\"", 4));
	CHECK(g.ev.run_id.n == 4 && !memcmp(g.ev.run_id.p, "\"r9\"", 4));
	CHECK(g.ev.data.n == 9 && !memcmp(g.ev.data.p, "{\"k\":[1]}", 9));
	CHECK(g.ev.id.n == 38 && g.ev.created_at.n > 0);
	k = raw_record(ia, &ra, rec, sizeof(rec), 5000);
	REQUIRE(k > 0);
	REQUIRE(usps__rec_open(rec, (size_t)k, &l, &n, &f) == 1);
	CHECK(f.type == USPS__F_EVENT);
	CHECK(n == strlen(line) && !memcmp(l, line, n));

	/* A plain record is parsed: a subscribe, acknowledged. */
	n = make_record(rec, "{\"type\":\"subscribe\",\"topic\":\"u\"}", NULL);
	CHECK_EQ_INT(raw_send(ia, rec, n), 0);
	k = raw_record(ia, &ra, rec, sizeof(rec), 5000);
	REQUIRE(k > 0);
	CHECK_EQ_INT(usps__rec_open(rec, (size_t)k, &l, &n, &f), 0);
	CHECK(n == 33 &&
	      !memcmp(l, "{\"type\":\"subscribed\",\"topic\":\"u\"}", n));

	/* A peer never offered records: the marker is ignored. */
	CHECK_EQ_INT(raw_sends(ic, "{\"type\":\"usps.records\"}\n"
				   "{\"type\":\"publish\",\"topic\":\"t\","
				   "\"event\":{\"type\":\"plain\"}}\n"),
		     0);
	CHECK_EQ_INT(raw_line(pb, &rb, line, sizeof(line), 5000), 1);
	CHECK(strstr(line, "\"type\":\"plain\"") != NULL);

	/* A record whose topic runs past its line: that peer is dropped. */
	ix.off[USPS__IX_TOPIC] = 26;
	ix.len[USPS__IX_TOPIC] = 4000;
	ix.off[USPS__IX_EVENT] = 39;
	ix.len[USPS__IX_EVENT] = 2;
	ix.flags = USPS__IXF_EV_KNOWN | USPS__IXF_PUBLISH;
	n = make_record(rec,
			"{\"type\":\"publish\",\"topic\":\"t\",\"event\":{}}",
			&ix);
	CHECK_EQ_INT(raw_send(ia, rec, n), 0);
	CHECK_EQ_INT(raw_wait_closed(ia, 5000), 1);
	CHECK_EQ_INT(usps_publish(b, "t", "after", "{}", 2, 0), 0);
	CHECK_EQ_INT(raw_line(pb, &rb, line, sizeof(line), 5000), 1);
	CHECK(strstr(line, "\"type\":\"after\"") != NULL);
	usps__buf_free(&pub);
	close(ia);
	close(pb);
	close(ic);
	usps_close(b);
}

/* The "i" of the data {"i":N,...} of a publish line, or -1. */
static long pub_seq(const char *line)
{
	const char *d = strstr(line, "\"data\":{\"i\":");

	return d ? strtol(d + 12, NULL, 10) : -1;
}

/*
 * A client sends records to a broker that offers to take them: the marker
 * line, then its publishes indexed exactly as a parse of their lines. When
 * that broker goes away without reading, what the client had not written
 * goes to the next broker, which does not offer records: as lines, in
 * order, none of them cut, up to the last one published.
 */
TEST(records_to_broker_then_lines)
{
	struct raw_reader rr = { 0 };
	struct usps__frame f, g;
	char line[4096], rec[4096], data[300];
	const long N = 20000;
	const char *l;
	usps_options o;
	size_t n;
	ssize_t k;
	long next = -1;
	usps *c;
	int lfd, fd;

	usps_options_init(&o);
	o.membership_ack_timeout_ms = 100; /* nobody acks here */
	lfd = fake_broker_listen();
	REQUIRE(lfd >= 0);
	REQUIRE(usps_open(&c, sock(), &o) == 0);
	fd = accept_asked(lfd, &rr, line, sizeof(line));
	REQUIRE(fd >= 0);
	n = make_record(rec, "{\"type\":\"usps.records\"}", NULL);
	CHECK_EQ_INT(raw_sends(fd, "{\"type\":\"usps.index\"}\n"), 0);
	CHECK_EQ_INT(raw_send(fd, rec, n), 0);
	CHECK_EQ_INT(raw_line(fd, &rr, line, sizeof(line), 5000), 1);
	CHECK_EQ_STR(line, "{\"type\":\"usps.records\"}");

	/* One publish: a record whose index is what a parse finds. */
	CHECK_EQ_INT(usps_publish_ex(c, "t", "one", "[1,{\"a\":\"\\n\"}]", 14,
				     "run", NULL, 0, 0),
		     0);
	k = raw_record(fd, &rr, rec, sizeof(rec), 5000);
	REQUIRE(k > 0);
	REQUIRE(usps__rec_open(rec, (size_t)k, &l, &n, &f) == 1);
	CHECK(f.type == USPS__F_PUBLISH);
	REQUIRE(usps__wire_parse(l, n, &g) == 0);
	CHECK(g.type == USPS__F_PUBLISH && g.ev_known && !g.group.n);
	CHECK(same_span(f.topic, g.topic) && same_span(f.event, g.event));
	for (int i = 0; i < 6; i++)
		CHECK(same_span((&f.ev.type)[i], (&g.ev.type)[i]));

	/* Far more than the socket holds, then the broker is gone. */
	memset(data, 'x', sizeof(data));
	for (long i = 0; i < N; i++) {
		int m = snprintf(data, sizeof(data), "{\"i\":%ld,\"p\":\"", i);

		memset(data + m, 'x', 200);
		memcpy(data + m + 200, "\"}", 2);
		REQUIRE(usps_publish(c, "t", "many", data, (size_t)m + 202,
				     0) == 0);
	}
	close(fd);

	/* The next broker takes lines. */
	fd = accept_asked(lfd, &rr, line, sizeof(line));
	REQUIRE(fd >= 0);
	while (next < N - 1) {
		long i;

		if (raw_line(fd, &rr, line, sizeof(line), 5000) != 1) {
			CHECK(!"line expected");
			break;
		}
		REQUIRE(usps__wire_parse(line, strlen(line), &g) == 0);
		REQUIRE(g.type == USPS__F_PUBLISH);
		i = pub_seq(line);
		CHECK(i > 0 && (next < 0 || i == next + 1));
		next = i;
	}
	CHECK_EQ_INT(usps_flush(c, 5000), 0);
	close(fd);
	close(lfd);
	usps_close(c);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	RUN(garbage_lines);
	RUN(deep_nesting);
	RUN(frame_over_default_limit);
	RUN(many_memberships);
	RUN(too_many_connections);
	RUN(sigstopped_subscriber);
	RUN(indexed_frames);
	RUN(broken_record_from_broker);
	RUN(records_from_peer);
	RUN(records_to_broker_then_lines);
	return harness_end();
}
