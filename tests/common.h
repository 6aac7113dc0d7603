/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the library's tests: an event collector that handlers
 * feed and tests wait on with a deadline, and a raw socket client that
 * speaks the wire directly.
 */
#ifndef USPS_TEST_COMMON_H
#define USPS_TEST_COMMON_H

#include "harness.h"

#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "usps.h"

#define COL_MAX 256

struct col {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int n;
	char type[COL_MAX][64];
	char data[COL_MAX][128];
	char group[COL_MAX][32];
	uint32_t attempt[COL_MAX];
	int64_t created[COL_MAX];
	int64_t at_ms[COL_MAX];
	char id[COL_MAX][40];
	int nack_until; /* nack while delivery_attempt < this */
	bool nack_always;
	usps *unsub_ps; /* unsubscribe *unsub_sub from the handler */
	usps_sub **unsub_sub;
	pthread_mutex_t *block; /* hold this while handling (slow handler) */
};

static inline void col_init(struct col *c)
{
	memset(c, 0, sizeof(*c));
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cv, NULL);
}

static inline void col_free(struct col *c)
{
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->cv);
}

static inline void col_handler(const usps_event *ev, usps_delivery *d, void *ud)
{
	struct col *c = ud;

	if (c->block) {
		pthread_mutex_lock(c->block);
		pthread_mutex_unlock(c->block);
	}
	pthread_mutex_lock(&c->mu);
	if (c->n < COL_MAX) {
		snprintf(c->type[c->n], sizeof(c->type[0]), "%s", ev->type);
		snprintf(c->data[c->n], sizeof(c->data[0]), "%s",
			 ev->data ? ev->data : "(none)");
		snprintf(c->group[c->n], sizeof(c->group[0]), "%s",
			 ev->group ? ev->group : "");
		snprintf(c->id[c->n], sizeof(c->id[0]), "%s", ev->id);
		c->attempt[c->n] = ev->delivery_attempt;
		c->created[c->n] = ev->created_at_ms;
		c->at_ms[c->n] = harness_now_ms();
	}
	c->n++;
	pthread_cond_broadcast(&c->cv);
	pthread_mutex_unlock(&c->mu);
	if (c->nack_always || ev->delivery_attempt < (uint32_t)c->nack_until)
		(void)usps_nack(d);
	if (c->unsub_ps && c->unsub_sub && *c->unsub_sub) {
		(void)usps_unsubscribe(c->unsub_ps, *c->unsub_sub);
		*c->unsub_sub = NULL;
	}
}

/* The CLOCK_REALTIME time @timeout_ms from now, for
 * pthread_cond_timedwait() on a default condition variable. */
static inline struct timespec deadline_ts(int timeout_ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += timeout_ms / 1000;
	ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	return ts;
}

/* Wait until @c has at least @n events; returns the count then. */
static inline int col_wait(struct col *c, int n, int timeout_ms)
{
	struct timespec ts = deadline_ts(timeout_ms);
	int got;

	pthread_mutex_lock(&c->mu);
	while (c->n < n)
		if (pthread_cond_timedwait(&c->cv, &c->mu, &ts) == ETIMEDOUT)
			break;
	got = c->n;
	pthread_mutex_unlock(&c->mu);
	return got;
}

static inline int col_count(struct col *c)
{
	int n;

	pthread_mutex_lock(&c->mu);
	n = c->n;
	pthread_mutex_unlock(&c->mu);
	return n;
}

/* Does @c hold an event of @type? */
static inline bool col_has(struct col *c, const char *type)
{
	bool found = false;

	pthread_mutex_lock(&c->mu);
	for (int i = 0; i < c->n && i < COL_MAX; i++)
		if (!strcmp(c->type[i], type))
			found = true;
	pthread_mutex_unlock(&c->mu);
	return found;
}

/* Wait until @c holds an event of @type. */
static inline bool col_wait_type(struct col *c, const char *type,
				 int timeout_ms)
{
	int64_t deadline = harness_now_ms() + timeout_ms;

	for (;;) {
		int n = col_count(c);

		if (col_has(c, type))
			return true;
		if (harness_now_ms() >= deadline)
			return false;
		(void)col_wait(c, n + 1, (int)(deadline - harness_now_ms()));
	}
}

static inline int open_default(usps **ps, const char *path)
{
	return usps_open(ps, path, NULL);
}

/* ---- a raw client speaking the wire ---- */

static inline int raw_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;

		close(fd);
		return -e;
	}
	return fd;
}

static inline int raw_send(int fd, const void *p, size_t n)
{
	const char *s = p;

	while (n) {
		ssize_t w = send(fd, s, n, MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		s += w;
		n -= (size_t)w;
	}
	return 0;
}

static inline int raw_sends(int fd, const char *s)
{
	return raw_send(fd, s, strlen(s));
}

struct raw_reader {
	char buf[1 << 16];
	size_t len;
};

/* Next line from @fd within @timeout_ms: 1, 0 EOF, -ETIMEDOUT, -errno. */
static inline int raw_line(int fd, struct raw_reader *r, char *out, size_t cap,
			   int timeout_ms)
{
	return harness_read_line(fd, r->buf, &r->len, sizeof(r->buf), out, cap,
				 timeout_ms);
}

/* Wait for the peer to close @fd: 1 closed, -ETIMEDOUT. Discards data. */
static inline int raw_wait_closed(int fd, int timeout_ms)
{
	int64_t deadline = harness_now_ms() + timeout_ms;
	char buf[4096];

	for (;;) {
		int64_t left = deadline - harness_now_ms();
		struct pollfd p = { .fd = fd, .events = POLLIN };

		if (left <= 0)
			return -ETIMEDOUT;
		if (poll(&p, 1, (int)left) <= 0)
			continue;
		ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
			return 1;
	}
}

/* Poll @fn(@arg) until true, for at most @timeout_ms. For state that has no
 * event to wait on (a broker's client count). */
static inline bool eventually(bool (*fn)(void *), void *arg, int timeout_ms)
{
	int64_t deadline = harness_now_ms() + timeout_ms;

	while (!fn(arg)) {
		if (harness_now_ms() >= deadline)
			return false;
		(void)poll(NULL, 0, 2);
	}
	return true;
}

struct count_arg {
	usps *ps;
	unsigned want;
};

static bool count_is(void *a)
{
	struct count_arg *c = a;

	return usps_remote_client_count(c->ps) == c->want;
}

static inline bool wait_clients(usps *ps, unsigned want, int timeout_ms)
{
	struct count_arg a = { ps, want };

	return eventually(count_is, &a, timeout_ms);
}

static bool is_broker_fn(void *a)
{
	return usps_is_broker(a);
}

static inline bool wait_broker(usps *ps, int timeout_ms)
{
	return eventually(is_broker_fn, ps, timeout_ms);
}

#endif /* USPS_TEST_COMMON_H */
