/* SPDX-License-Identifier: MIT */
/*
 * bench_zmq - the benchmark driver over ZeroMQ: an XSUB/XPUB proxy process
 * bound at ipc://<dir>/zin (publishers connect) and ipc://<dir>/zout
 * (subscribers connect), the usual ZeroMQ broker shape.
 *
 * Lossless: every socket has ZMQ_SNDHWM = ZMQ_RCVHWM = 0 (unlimited), so
 * nothing is dropped for a full queue; the driver's in-flight window keeps
 * the queues bounded.
 *
 * An event is a two-frame message [key][payload], the key being 'D', the
 * topic and a NUL (the NUL keeps ZeroMQ's prefix matching from routing
 * topic "ab" to a subscriber of "a"). The receive callback gets only the
 * payload.
 *
 * ZeroMQ subscriptions travel asynchronously (SUB -> proxy XPUB -> proxy
 * XSUB -> every publisher), and a publishing socket drops what nobody it
 * knows of subscribed to. Two things make the driver's guarantees hold:
 *
 * - subscribe() adds the topic's subscription and then one to a marker key
 *   unique to the call ('P', pid, counter), on the same SUB socket, and
 *   waits for the proxy's acknowledgement: a message on the marker key. The
 *   proxy's XPUB takes one connection's subscriptions in order and adds
 *   each to its routing table before the proxy reads it, so when the proxy
 *   reads the marker the topic is already routed to this connection; the
 *   proxy then publishes the acknowledgement instead of forwarding the
 *   marker upstream. (Were the SUB connection still being set up, the SUB
 *   replays its subscriptions in byte order, and 'D' < 'P', so the order
 *   holds then too.) The callback never sees a marker message.
 *
 * - A client publishes from an XPUB socket rather than a PUB, so that it
 *   can read the subscriptions the proxy forwards to it. publish() on a
 *   topic it has not yet seen a subscription for waits for one (the
 *   proxy's XSUB replays every subscription it holds to a publisher that
 *   connects, so a late publisher learns them too).
 *
 * So a subscribing client has one connection to the proxy, a publishing
 * one another, each opened when first needed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/un.h>
#include <unistd.h>

#include <zmq.h>

#include "driver.h"

/* A key: a tag byte, the topic, a NUL. */
#define KEY_MAX 256
#define TAG_DATA 'D'
#define TAG_MARK 'P'
/* How long subscribe() and a first publish() wait for the proxy. */
#define READY_MS 10000
/* How long the server may take to start and to stop. */
#define START_MS 10000
#define STOP_MS 5000
/* How long closing a connection may take to send what is still queued. */
#define LINGER_MS 10000
/* Events delivered per pump() call at most, so the driver keeps control. */
#define PUMP_BATCH 4096
/* Messages the proxy forwards in one direction before looking again. */
#define PROXY_BATCH 1024
/* "ipc://" + bt_server.addr (the directory) + "/zout". */
#define URL_MAX (sizeof("ipc://") + sizeof(((struct bt_server *)0)->addr) + 8)

struct zsub {
	char key[KEY_MAX];
	size_t len;
	bt_recv_fn fn;
	void *ud;
};

/* A received event: its key frame and its payload frame. */
struct zmsg {
	zmq_msg_t key;
	zmq_msg_t body;
};

struct bt_conn {
	char in_url[URL_MAX];
	char out_url[URL_MAX];
	void *up;   /* XPUB connected to the proxy's XSUB; created lazily */
	void *down; /* SUB connected to the proxy's XPUB; created lazily */

	struct zsub *subs;
	size_t nsubs;

	/* Data keys some subscription was seen for (never removed: once a
	 * topic had a subscriber, publishing on it needs no more waiting). */
	char **known;
	size_t *known_len;
	size_t nknown;
	/* The key of the last publish(), known to be subscribed. */
	char last[KEY_MAX];
	size_t last_len;

	/* Events subscribe() read while waiting for its acknowledgement,
	 * delivered first by the next pump(). */
	struct zmsg *pending;
	size_t pending_head, npending, pending_cap;
	unsigned mark_seq;
};

/* The client process's ZeroMQ context, shared by its connections (one
 * context per process is how ZeroMQ is meant to be used). */
static void *client_ctx;
static unsigned client_refs;

static int set_int(void *s, int opt, int v)
{
	if (zmq_setsockopt(s, opt, &v, sizeof(v)) < 0)
		return -zmq_errno();
	return 0;
}

/* A socket of @type with unlimited queues and @linger_ms. */
static int new_socket(void *ctx, int type, int linger_ms, void **ret)
{
	void *s = zmq_socket(ctx, type);
	int r;

	if (!s)
		return -zmq_errno();
	r = set_int(s, ZMQ_SNDHWM, 0);
	if (r >= 0)
		r = set_int(s, ZMQ_RCVHWM, 0);
	if (r >= 0)
		r = set_int(s, ZMQ_LINGER, linger_ms);
	if (r < 0) {
		(void)zmq_close(s);
		return r;
	}
	*ret = s;
	return 0;
}

static int make_key(char tag, const char *topic, char *buf, size_t *ret_len)
{
	size_t n;

	if (!topic)
		return -EINVAL;
	n = strlen(topic);
	if (n + 2 > KEY_MAX)
		return -EMSGSIZE;
	buf[0] = tag;
	memcpy(buf + 1, topic, n);
	buf[n + 1] = '\0';
	*ret_len = n + 2;
	return 0;
}

/* ---- the proxy process --------------------------------------------------- */

/* Moves up to PROXY_BATCH whole messages (events) from @from to @to. */
static int forward(void *from, void *to)
{
	zmq_msg_t m;
	int r = 0;

	if (zmq_msg_init(&m) < 0)
		return -zmq_errno();
	for (int i = 0; i < PROXY_BATCH; i++) {
		bool more;

		/* The parts after the first are there once the first is. */
		do {
			if (zmq_msg_recv(&m, from, ZMQ_DONTWAIT) < 0) {
				r = zmq_errno();
				r = r == EAGAIN || r == EINTR ? 0 : -r;
				goto out;
			}
			more = zmq_msg_more(&m);
			if (zmq_msg_send(&m, to, more ? ZMQ_SNDMORE : 0) < 0) {
				r = -zmq_errno();
				goto out;
			}
		} while (more);
	}
out:
	(void)zmq_msg_close(&m);
	return r;
}

/* Moves up to PROXY_BATCH subscription messages from the proxy's @xpub to
 * its @xsub, acknowledging a subscribe() marker instead of forwarding it. */
static int forward_subs(void *xpub, void *xsub)
{
	zmq_msg_t m;
	int r = 0;

	if (zmq_msg_init(&m) < 0)
		return -zmq_errno();
	for (int i = 0; i < PROXY_BATCH; i++) {
		const char *d;
		size_t n;

		if (zmq_msg_recv(&m, xpub, ZMQ_DONTWAIT) < 0) {
			r = zmq_errno();
			r = r == EAGAIN || r == EINTR ? 0 : -r;
			break;
		}
		d = zmq_msg_data(&m);
		n = zmq_msg_size(&m);
		/* 1 + key subscribes, 0 + key unsubscribes; one frame. */
		if (n < 2 || d[1] != TAG_MARK) {
			if (zmq_msg_send(&m, xsub, 0) < 0) {
				r = -zmq_errno();
				break;
			}
			continue;
		}
		if (d[0] != 1)
			continue;
		if (zmq_send(xpub, d + 1, n - 1, ZMQ_SNDMORE) < 0 ||
		    zmq_send(xpub, "", 0, 0) < 0) {
			r = -zmq_errno();
			break;
		}
	}
	(void)zmq_msg_close(&m);
	return r;
}

static int proxy_loop(void *xsub, void *xpub, int sfd)
{
	for (;;) {
		zmq_pollitem_t items[] = {
			{ .socket = xsub, .events = ZMQ_POLLIN },
			{ .socket = xpub, .events = ZMQ_POLLIN },
			{ .fd = sfd, .events = ZMQ_POLLIN },
		};
		int r = zmq_poll(items, 3, -1);

		if (r < 0) {
			if (zmq_errno() == EINTR)
				continue;
			return -zmq_errno();
		}
		if (items[2].revents)
			return 0; /* SIGTERM or SIGINT: stop */
		if (items[0].revents) {
			r = forward(xsub, xpub);
			if (r < 0)
				return r;
		}
		if (items[1].revents) {
			r = forward_subs(xpub, xsub);
			if (r < 0)
				return r;
		}
	}
}

static void report(int fd, int status)
{
	ssize_t n;

	do
		n = write(fd, &status, sizeof(status));
	while (n < 0 && errno == EINTR);
}

static void remove_files(const char *dir)
{
	char path[sizeof(((struct bt_server *)0)->dir) + sizeof("/zout")];

	(void)snprintf(path, sizeof(path), "%s/zin", dir);
	(void)unlink(path);
	(void)snprintf(path, sizeof(path), "%s/zout", dir);
	(void)unlink(path);
}

/* The proxy process's body; reports 0 or an errno on @ready_fd once bound. */
static int proxy_main(const char *dir, pid_t parent, int ready_fd)
{
	char in_url[URL_MAX];
	char out_url[URL_MAX];
	void *ctx, *xsub = NULL, *xpub = NULL;
	sigset_t set;
	int sfd, r;

	/* Never outlive the driver, whatever happens to it. */
	if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
		return EXIT_FAILURE;
	/* The driver's descriptors are none of the proxy's business. */
	if (ready_fd > 3)
		(void)close_range(3, (unsigned)ready_fd - 1, 0);
	(void)close_range(ready_fd < 3 ? 3u : (unsigned)ready_fd + 1, ~0u, 0);

	/* Blocked before ZeroMQ starts its threads, so only the signalfd
	 * sees the stop signals, between two messages; not ignored, or they
	 * would not reach it either. */
	(void)signal(SIGTERM, SIG_DFL);
	(void)signal(SIGINT, SIG_DFL);
	(void)sigemptyset(&set);
	(void)sigaddset(&set, SIGTERM);
	(void)sigaddset(&set, SIGINT);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0) {
		report(ready_fd, errno);
		return EXIT_FAILURE;
	}
	sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0) {
		report(ready_fd, errno);
		return EXIT_FAILURE;
	}

	(void)snprintf(in_url, sizeof(in_url), "ipc://%s/zin", dir);
	(void)snprintf(out_url, sizeof(out_url), "ipc://%s/zout", dir);
	ctx = zmq_ctx_new();
	if (!ctx) {
		r = -zmq_errno();
		goto close_sfd;
	}
	r = new_socket(ctx, ZMQ_XSUB, 0, &xsub);
	if (r < 0)
		goto term_ctx;
	r = new_socket(ctx, ZMQ_XPUB, 0, &xpub);
	if (r < 0)
		goto close_sockets;
	if (zmq_bind(xsub, in_url) < 0 || zmq_bind(xpub, out_url) < 0) {
		r = -zmq_errno();
		goto close_sockets;
	}
	report(ready_fd, 0);
	(void)close(ready_fd);
	ready_fd = -1;

	r = proxy_loop(xsub, xpub, sfd);

close_sockets:
	if (xpub)
		(void)zmq_close(xpub);
	if (xsub)
		(void)zmq_close(xsub);
term_ctx:
	while (zmq_ctx_term(ctx) < 0 && zmq_errno() == EINTR)
		;
	/* libzmq leaves the socket files behind. */
	remove_files(dir);
close_sfd:
	(void)close(sfd);
	if (ready_fd >= 0)
		report(ready_fd, -r);
	return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}

static int z_server_start(struct bt_server *srv, const char **why)
{
	struct sockaddr_un sa;
	pid_t parent = getpid(), pid;
	int fds[2], status, r;
	int64_t deadline;
	ssize_t n;

	*why = NULL;
	if (strlen(srv->dir) + sizeof("/zout") > sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	if (pipe2(fds, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0) {
		r = -errno;
		(void)close(fds[0]);
		(void)close(fds[1]);
		return r;
	}
	if (pid == 0) {
		(void)close(fds[0]);
		_exit(proxy_main(srv->dir, parent, fds[1]));
	}
	(void)close(fds[1]);

	/* Wait for the proxy to report its sockets bound. */
	deadline = bt_now_ms() + START_MS;
	for (;;) {
		struct pollfd p = { .fd = fds[0], .events = POLLIN };

		r = poll(&p, 1, bt_left_ms(deadline));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			r = -errno;
			goto fail;
		}
		if (r == 0) {
			r = -ETIMEDOUT;
			goto fail;
		}
		n = read(fds[0], &status, sizeof(status));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			goto fail;
		}
		if (n != (ssize_t)sizeof(status)) {
			r = -EIO; /* the proxy died before reporting */
			goto fail;
		}
		if (status != 0) {
			r = -status;
			goto fail;
		}
		break;
	}
	(void)close(fds[0]);
	srv->pid = pid;
	srv->priv = NULL;
	(void)snprintf(srv->addr, sizeof(srv->addr), "%s", srv->dir);
	return 0;

fail:
	(void)close(fds[0]);
	(void)bt_stop_server(pid, STOP_MS);
	remove_files(srv->dir);
	return r;
}

static void z_server_stop(struct bt_server *srv)
{
	(void)bt_stop_server(srv->pid, STOP_MS);
	srv->pid = 0;
	remove_files(srv->dir);
}

/* ---- clients ------------------------------------------------------------- */

static int z_open(const struct bt_server *srv, struct bt_conn **ret)
{
	struct bt_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return -ENOMEM;
	(void)snprintf(c->in_url, sizeof(c->in_url), "ipc://%s/zin", srv->addr);
	(void)snprintf(c->out_url, sizeof(c->out_url), "ipc://%s/zout",
		       srv->addr);
	if (!client_refs) {
		client_ctx = zmq_ctx_new();
		if (!client_ctx) {
			int r = -zmq_errno();

			free(c);
			return r;
		}
	}
	client_refs++;
	*ret = c;
	return 0;
}

static int open_up(struct bt_conn *c)
{
	void *s = NULL;
	int r;

	if (c->up)
		return 0;
	/* The linger lets close() still send what is queued. */
	r = new_socket(client_ctx, ZMQ_XPUB, LINGER_MS, &s);
	if (r < 0)
		return r;
	if (zmq_connect(s, c->in_url) < 0) {
		r = -zmq_errno();
		(void)zmq_close(s);
		return r;
	}
	c->up = s;
	return 0;
}

static int open_down(struct bt_conn *c)
{
	void *s = NULL;
	int r;

	if (c->down)
		return 0;
	r = new_socket(client_ctx, ZMQ_SUB, 0, &s);
	if (r < 0)
		return r;
	if (zmq_connect(s, c->out_url) < 0) {
		r = -zmq_errno();
		(void)zmq_close(s);
		return r;
	}
	c->down = s;
	return 0;
}

static bool is_known(const struct bt_conn *c, const char *key, size_t len)
{
	for (size_t i = 0; i < c->nknown; i++)
		if (c->known_len[i] == len && !memcmp(c->known[i], key, len))
			return true;
	return false;
}

static int add_known(struct bt_conn *c, const char *key, size_t len)
{
	char **k;
	size_t *kl;
	char *copy;

	if (is_known(c, key, len))
		return 0;
	k = realloc(c->known, (c->nknown + 1) * sizeof(*k));
	if (!k)
		return -ENOMEM;
	c->known = k;
	kl = realloc(c->known_len, (c->nknown + 1) * sizeof(*kl));
	if (!kl)
		return -ENOMEM;
	c->known_len = kl;
	copy = malloc(len);
	if (!copy)
		return -ENOMEM;
	memcpy(copy, key, len);
	c->known[c->nknown] = copy;
	c->known_len[c->nknown] = len;
	c->nknown++;
	return 0;
}

/* Reads the subscription messages the proxy forwarded to c->up, waiting up
 * to @timeout_ms for the first, and notes their keys. */
static int hear(struct bt_conn *c, int timeout_ms)
{
	zmq_msg_t m;
	int r = 0;

	if (timeout_ms > 0) {
		zmq_pollitem_t item = { .socket = c->up, .events = ZMQ_POLLIN };

		if (zmq_poll(&item, 1, timeout_ms) < 0 && zmq_errno() != EINTR)
			return -zmq_errno();
	}
	if (zmq_msg_init(&m) < 0)
		return -zmq_errno();
	for (;;) {
		const char *d;
		size_t n;

		if (zmq_msg_recv(&m, c->up, ZMQ_DONTWAIT) < 0) {
			r = zmq_errno();
			r = r == EAGAIN || r == EINTR ? 0 : -r;
			break;
		}
		d = zmq_msg_data(&m);
		n = zmq_msg_size(&m);
		/* 1 + key subscribes, 0 + key unsubscribes. */
		if (n >= 2 && d[0] == 1 && d[1] == TAG_DATA) {
			r = add_known(c, d + 1, n - 1);
			if (r < 0)
				break;
		}
	}
	(void)zmq_msg_close(&m);
	return r;
}

/* Waits until some subscription for @key is known to c->up. */
static int wait_known(struct bt_conn *c, const char *key, size_t len)
{
	int64_t deadline = bt_now_ms() + READY_MS;
	int r = hear(c, 0);

	while (r >= 0 && !is_known(c, key, len)) {
		if (bt_now_ms() >= deadline)
			return -ETIMEDOUT;
		r = hear(c, bt_left_ms(deadline));
	}
	return r < 0 ? r : 0;
}

static void close_zmsg(struct zmsg *m)
{
	(void)zmq_msg_close(&m->key);
	(void)zmq_msg_close(&m->body);
}

/* Receives one two-frame message from c->down into @m (initialised),
 * waiting up to @timeout_ms (0: not at all) for something to arrive.
 * Returns 1, 0 if there was none, or -errno. A message of another shape
 * is skipped. */
static int recv_zmsg(struct bt_conn *c, struct zmsg *m, int timeout_ms)
{
	bool more;

	if (timeout_ms > 0) {
		zmq_pollitem_t item = { .socket = c->down,
					.events = ZMQ_POLLIN };
		int r = zmq_poll(&item, 1, timeout_ms);

		if (r < 0)
			return zmq_errno() == EINTR ? 0 : -zmq_errno();
		if (r == 0)
			return 0;
	}
	for (;;) {
		if (zmq_msg_recv(&m->key, c->down, ZMQ_DONTWAIT) < 0) {
			int e = zmq_errno();

			return e == EAGAIN || e == EINTR ? 0 : -e;
		}
		/* The parts after the first are there once the first is. */
		more = zmq_msg_more(&m->key);
		if (!more)
			continue;
		if (zmq_msg_recv(&m->body, c->down, 0) < 0)
			return -zmq_errno();
		more = zmq_msg_more(&m->body);
		if (!more)
			return 1;
		while (more) {
			zmq_msg_t extra;

			if (zmq_msg_init(&extra) < 0)
				return -zmq_errno();
			if (zmq_msg_recv(&extra, c->down, 0) < 0) {
				int e = zmq_errno();

				(void)zmq_msg_close(&extra);
				return -e;
			}
			more = zmq_msg_more(&extra);
			(void)zmq_msg_close(&extra);
		}
	}
}

static int init_zmsg(struct zmsg *m)
{
	if (zmq_msg_init(&m->key) < 0)
		return -zmq_errno();
	if (zmq_msg_init(&m->body) < 0) {
		int e = zmq_errno();

		(void)zmq_msg_close(&m->key);
		return -e;
	}
	return 0;
}

/* Moves @m to the end of c->pending. */
static int push_pending(struct bt_conn *c, struct zmsg *m)
{
	struct zmsg *p = bt_queue_room(c->pending, sizeof(*p), &c->pending_head,
				       c->npending, &c->pending_cap);
	struct zmsg *slot;

	if (!p)
		return -ENOMEM;
	c->pending = p;
	slot = &c->pending[c->pending_head + c->npending];
	if (init_zmsg(slot) < 0)
		return -ENOMEM;
	if (zmq_msg_move(&slot->key, &m->key) < 0 ||
	    zmq_msg_move(&slot->body, &m->body) < 0) {
		close_zmsg(slot);
		return -zmq_errno();
	}
	c->npending++;
	return 0;
}

/* Waits for the proxy's acknowledgement of @mark; what comes before it is
 * kept for pump(). */
static int wait_ack(struct bt_conn *c, const char *mark, size_t mark_len)
{
	int64_t deadline = bt_now_ms() + READY_MS;
	struct zmsg m;
	int r = init_zmsg(&m);

	if (r < 0)
		return r;
	while (r >= 0) {
		int left = bt_left_ms(deadline);

		if (left == 0) {
			r = -ETIMEDOUT;
			break;
		}
		r = recv_zmsg(c, &m, left);
		if (r <= 0)
			continue;
		if (zmq_msg_size(&m.key) == mark_len &&
		    !memcmp(zmq_msg_data(&m.key), mark, mark_len)) {
			r = 0;
			break;
		}
		r = push_pending(c, &m);
	}
	close_zmsg(&m);
	return r;
}

static int z_subscribe(struct bt_conn *c, const char *topic, bt_recv_fn fn,
		       void *ud)
{
	char mark[KEY_MAX];
	size_t mark_len;
	struct zsub *s;
	int r;

	if (!fn)
		return -EINVAL;
	r = open_down(c);
	if (r < 0)
		return r;
	s = realloc(c->subs, (c->nsubs + 1) * sizeof(*s));
	if (!s)
		return -ENOMEM;
	c->subs = s;
	s = &c->subs[c->nsubs];
	*s = (struct zsub){ .fn = fn, .ud = ud };
	r = make_key(TAG_DATA, topic, s->key, &s->len);
	if (r < 0)
		return r;
	mark_len = (size_t)snprintf(mark, sizeof(mark), "%c%ld.%u", TAG_MARK,
				    (long)getpid(), c->mark_seq++) +
		   1;

	if (zmq_setsockopt(c->down, ZMQ_SUBSCRIBE, s->key, s->len) < 0)
		return -zmq_errno();
	if (zmq_setsockopt(c->down, ZMQ_SUBSCRIBE, mark, mark_len) < 0) {
		r = -zmq_errno();
		goto unsubscribe;
	}
	r = wait_ack(c, mark, mark_len);
	(void)zmq_setsockopt(c->down, ZMQ_UNSUBSCRIBE, mark, mark_len);
	if (r < 0)
		goto unsubscribe;
	c->nsubs++;
	return 0;

unsubscribe:
	(void)zmq_setsockopt(c->down, ZMQ_UNSUBSCRIBE, s->key, s->len);
	return r;
}

static int send_part(void *s, const void *data, size_t len, int flags)
{
	while (zmq_send(s, data, len, flags) < 0) {
		if (zmq_errno() != EINTR)
			return -zmq_errno();
	}
	return 0;
}

static int z_publish(struct bt_conn *c, const char *topic, const void *data,
		     size_t len)
{
	char key[KEY_MAX];
	size_t klen;
	int r;

	if (!data && len)
		return -EINVAL;
	r = make_key(TAG_DATA, topic, key, &klen);
	if (r < 0)
		return r;
	r = open_up(c);
	if (r < 0)
		return r;
	if (klen != c->last_len || memcmp(key, c->last, klen)) {
		r = wait_known(c, key, klen);
		if (r < 0)
			return r;
		memcpy(c->last, key, klen);
		c->last_len = klen;
	}
	/* A two-part message is queued whole or not at all, and with no
	 * high-water mark it is always queued. */
	r = send_part(c->up, key, klen, ZMQ_SNDMORE);
	if (r >= 0)
		r = send_part(c->up, data, len, 0);
	return r;
}

static int z_flush(struct bt_conn *c, int timeout_ms)
{
	/* zmq_send() has already handed each message to the socket's I/O
	 * thread, which writes it out as soon as it can; ZeroMQ offers no
	 * way to wait for that short of closing the socket. */
	(void)c;
	(void)timeout_ms;
	return 0;
}

static void dispatch(struct bt_conn *c, struct zmsg *m)
{
	const void *key = zmq_msg_data(&m->key);
	size_t klen = zmq_msg_size(&m->key);

	/* By index: a callback may subscribe and so move c->subs. */
	for (size_t i = 0; i < c->nsubs; i++) {
		if (c->subs[i].len == klen &&
		    !memcmp(c->subs[i].key, key, klen))
			c->subs[i].fn(c->subs[i].ud, zmq_msg_data(&m->body),
				      zmq_msg_size(&m->body));
	}
}

/* Delivers, without waiting, the events subscribe() kept and then what
 * c->down has queued; waits up to @timeout_ms only if there was none. */
static int deliver(struct bt_conn *c, int timeout_ms)
{
	struct zmsg m;
	int n = 0, r;

	r = init_zmsg(&m);
	if (r < 0)
		return r;
	while (n < PUMP_BATCH) {
		if (c->npending > 0) {
			/* Taken out first: the callback may add to it. */
			struct zmsg *p = &c->pending[c->pending_head];

			if (zmq_msg_move(&m.key, &p->key) < 0 ||
			    zmq_msg_move(&m.body, &p->body) < 0) {
				r = -zmq_errno();
				break;
			}
			close_zmsg(p);
			c->pending_head++;
			if (--c->npending == 0)
				c->pending_head = 0;
			r = 1;
		} else {
			r = recv_zmsg(c, &m, n > 0 ? 0 : timeout_ms);
			if (r <= 0)
				break;
		}
		dispatch(c, &m);
		n++;
		timeout_ms = 0;
	}
	close_zmsg(&m);
	return r < 0 ? r : n;
}

static int z_pump(struct bt_conn *c, int timeout_ms)
{
	if (!c->down) {
		if (timeout_ms > 0)
			bt_sleep_ms(timeout_ms);
		return 0;
	}
	return deliver(c, timeout_ms);
}

static void z_close(struct bt_conn *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->npending; i++)
		close_zmsg(&c->pending[c->pending_head + i]);
	free(c->pending);
	if (c->down)
		(void)zmq_close(c->down);
	if (c->up)
		(void)zmq_close(c->up);
	/* Waits up to LINGER_MS for the queues of the closed c->up sockets
	 * to go out. */
	if (--client_refs == 0) {
		while (zmq_ctx_term(client_ctx) < 0 && zmq_errno() == EINTR)
			;
		client_ctx = NULL;
	}
	for (size_t i = 0; i < c->nknown; i++)
		free(c->known[i]);
	free(c->known);
	free(c->known_len);
	free(c->subs);
	free(c);
}

const struct bt_transport bt_transport = {
	.name = "zmq",
	.server_start = z_server_start,
	.server_stop = z_server_stop,
	.open = z_open,
	.subscribe = z_subscribe,
	.publish = z_publish,
	.flush = z_flush,
	.pump = z_pump,
	.close = z_close,
};

int main(int argc, char **argv)
{
	return bt_main(&bt_transport, argc, argv);
}
