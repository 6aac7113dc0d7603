/* SPDX-License-Identifier: MIT */
/*
 * bench_relay - the limit: a raw relay that forwards length-prefixed bytes
 * from one process through a second to a third with batched writes and no
 * parsing. Whatever a broker does beyond this costs.
 *
 * Wire format, both ways: frames of [u32 length, host order][length bytes].
 * Two lengths are reserved and carry no bytes:
 *   RELAY_SUB (0xffffffff), client -> relay: make this connection a
 *     receiver; the relay answers RELAY_ACK.
 *   RELAY_ACK (0xfffffffe), relay -> client: the connection is a receiver;
 *     every frame the relay reads from then on reaches it.
 * Topics are ignored: every receiver gets every frame but its own, which
 * is all the driver's workloads need (rtt: A and B each get the other's).
 * A connection's frames go to the callback of its first subscribe().
 *
 * The relay is one thread on epoll. For each readable connection it reads
 * one chunk (256 KiB), writes the chunk's complete frames to each receiver
 * with one write, and keeps an incomplete frame's tail for the next read.
 * Back-pressure is a blocking write to the receiver: while one receiver
 * does not read, the relay reads nothing, so publishers block in turn and
 * no frame is ever dropped. (A client that sends a lot and stops reading at
 * the same time could deadlock with it; no workload does that.)
 *
 * Client side: publish() appends the frame to a buffer and writes the
 * buffer out once it holds 64 KiB; flush() writes it all; pump() reads
 * with poll(timeout) and calls the callback for each complete frame.
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
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "driver.h"

#define RELAY_SUB 0xffffffffu
#define RELAY_ACK 0xfffffffeu
/* Largest frame payload, either way: a peer sending more is dropped. */
#define MAX_FRAME (64u << 20)
/* The relay's and a client's read chunk. */
#define CHUNK (256u << 10)
/* A client writes its buffer out once it holds this much. */
#define BATCH (64u << 10)
#define MAX_CONNS 4096

#define START_MS 10000
#define STOP_MS 5000
/* How long a full socket may block publish(), and subscribe()'s wait. */
#define PUBLISH_MS 60000
#define ACK_MS 5000

static uint32_t frame_len(const unsigned char *p)
{
	uint32_t n;

	memcpy(&n, p, sizeof(n));
	return n;
}

/* ---- the relay process ---- */

struct rconn {
	int fd;
	bool receiver, dead;
	unsigned char *buf; /* allocated on its first read */
	size_t len, cap;
};

struct relay {
	int ep, lfd, sfd;
	bool stop;
	struct rconn **conns;
	size_t n, cap;
};

/* Tags for epoll data that are not connections. */
static char tag_listen, tag_signal;

/*
 * Write all of @p to @d, waiting while its socket is full (that is the
 * back-pressure). Returns 0, -ECANCELED when a stop signal came meanwhile,
 * or the error that makes @d dead.
 */
static int relay_write(struct relay *rl, struct rconn *d, const void *p,
		       size_t n)
{
	const unsigned char *b = p;

	while (n > 0) {
		ssize_t w = send(d->fd, b, n, MSG_NOSIGNAL);
		struct pollfd pf[2] = {
			{ .fd = d->fd, .events = POLLOUT },
			{ .fd = rl->sfd, .events = POLLIN },
		};

		if (w > 0) {
			b += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno != EAGAIN)
			return -errno;
		if (poll(pf, 2, -1) < 0 && errno != EINTR)
			return -errno;
		if (pf[1].revents) {
			rl->stop = true;
			return -ECANCELED;
		}
	}
	return 0;
}

/* Send @n bytes of complete frames from @src to every other receiver. */
static int forward(struct relay *rl, const struct rconn *src,
		   const unsigned char *p, size_t n)
{
	if (n == 0)
		return 0;
	for (size_t i = 0; i < rl->n; i++) {
		struct rconn *d = rl->conns[i];
		int r;

		if (d == src || !d->receiver || d->dead)
			continue;
		r = relay_write(rl, d, p, n);
		if (r == -ECANCELED)
			return r;
		if (r < 0)
			d->dead = true;
	}
	return 0;
}

/* Read one chunk from @c and pass on its complete frames. */
static void relay_read(struct relay *rl, struct rconn *c)
{
	static const uint32_t ack = RELAY_ACK;
	size_t pos = 0, from = 0;
	ssize_t got;

	if (!c->buf) {
		c->buf = malloc(CHUNK);
		if (!c->buf) {
			c->dead = true;
			return;
		}
		c->cap = CHUNK;
	}
	do
		got = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
	while (got < 0 && errno == EINTR);
	if (got < 0 && errno == EAGAIN)
		return;
	if (got <= 0) {
		c->dead = true;
		return;
	}
	c->len += (size_t)got;

	while (c->len - pos >= 4) {
		uint32_t n = frame_len(c->buf + pos);

		if (n == RELAY_SUB) {
			if (forward(rl, c, c->buf + from, pos - from) < 0)
				return;
			pos += 4;
			from = pos;
			c->receiver = true;
			if (relay_write(rl, c, &ack, sizeof(ack)) < 0)
				c->dead = true;
			continue;
		}
		if (n > MAX_FRAME) {
			c->dead = true;
			return;
		}
		if (c->len - pos - 4 < n)
			break;
		pos += 4 + (size_t)n;
	}
	if (forward(rl, c, c->buf + from, pos - from) < 0)
		return;
	c->len -= pos;
	memmove(c->buf, c->buf + pos, c->len);

	/* Room for a frame larger than a chunk; back to a chunk after it. */
	if (c->len >= 4) {
		size_t need = 4 + (size_t)frame_len(c->buf);

		if (need > c->cap) {
			unsigned char *b = realloc(c->buf, need);

			if (!b) {
				c->dead = true;
				return;
			}
			c->buf = b;
			c->cap = need;
		}
	} else if (c->cap > CHUNK) {
		unsigned char *b = realloc(c->buf, CHUNK);

		if (b) {
			c->buf = b;
			c->cap = CHUNK;
		}
	}
}

static void relay_accept(struct relay *rl)
{
	for (;;) {
		int fd = accept4(rl->lfd, NULL, NULL,
				 SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct epoll_event ev = { .events = EPOLLIN };
		struct rconn *c;

		if (fd < 0 && errno == EINTR)
			continue;
		if (fd < 0)
			return; /* EAGAIN, or out of descriptors for now */
		if (rl->n >= MAX_CONNS) {
			(void)close(fd);
			continue;
		}
		if (rl->n == rl->cap) {
			size_t cap = rl->cap ? rl->cap * 2 : 16;
			struct rconn **cs =
				reallocarray(rl->conns, cap, sizeof(*cs));

			if (!cs) {
				(void)close(fd);
				continue;
			}
			rl->conns = cs;
			rl->cap = cap;
		}
		c = calloc(1, sizeof(*c));
		if (!c) {
			(void)close(fd);
			continue;
		}
		c->fd = fd;
		ev.data.ptr = c;
		if (epoll_ctl(rl->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
			(void)close(fd);
			free(c);
			continue;
		}
		rl->conns[rl->n++] = c;
	}
}

static void drop(struct rconn *c)
{
	/* Closing the descriptor also takes it out of the epoll set. */
	(void)close(c->fd);
	free(c->buf);
	free(c);
}

/* Drop the dead connections, after a batch of events that may name them. */
static void sweep(struct relay *rl)
{
	for (size_t i = 0; i < rl->n;) {
		if (rl->conns[i]->dead) {
			drop(rl->conns[i]);
			rl->conns[i] = rl->conns[--rl->n];
		} else {
			i++;
		}
	}
}

static int relay_loop(struct relay *rl)
{
	struct epoll_event evs[64];

	while (!rl->stop) {
		int n = epoll_wait(rl->ep, evs, 64, -1);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		for (int i = 0; i < n && !rl->stop; i++) {
			void *p = evs[i].data.ptr;

			if (p == &tag_listen)
				relay_accept(rl);
			else if (p == &tag_signal)
				rl->stop = true;
			else if (!((struct rconn *)p)->dead)
				relay_read(rl, p);
		}
		sweep(rl);
	}
	return 0;
}

static int listen_on(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, r;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(fd, SOMAXCONN) < 0) {
		r = -errno;
		(void)close(fd);
		return r;
	}
	return fd;
}

static int relay_main(void *arg, int ready_fd)
{
	const struct bt_server *srv = arg;
	struct relay rl = { .ep = -1, .lfd = -1, .sfd = -1 };
	struct epoll_event ev = { .events = EPOLLIN };
	const char *what;
	sigset_t set;
	int r;

	(void)sigemptyset(&set);
	(void)sigaddset(&set, SIGTERM);
	(void)sigaddset(&set, SIGINT);
	what = "sigprocmask";
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		goto fail_errno;
	what = "signalfd";
	rl.sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (rl.sfd < 0)
		goto fail_errno;
	what = "epoll_create1";
	rl.ep = epoll_create1(EPOLL_CLOEXEC);
	if (rl.ep < 0)
		goto fail_errno;
	what = "listen";
	rl.lfd = listen_on(srv->addr);
	if (rl.lfd < 0) {
		errno = -rl.lfd;
		goto fail_errno;
	}
	what = "epoll_ctl";
	ev.data.ptr = &tag_listen;
	if (epoll_ctl(rl.ep, EPOLL_CTL_ADD, rl.lfd, &ev) < 0)
		goto fail_errno;
	ev.data.ptr = &tag_signal;
	if (epoll_ctl(rl.ep, EPOLL_CTL_ADD, rl.sfd, &ev) < 0)
		goto fail_errno;
	(void)dprintf(ready_fd, "ready\n");
	(void)close(ready_fd);

	r = relay_loop(&rl);
	if (r < 0)
		(void)fprintf(stderr, "bench_relay: relay: epoll_wait: %s\n",
			      strerror(-r));
	goto out;

fail_errno:
	r = -errno;
	(void)dprintf(ready_fd, "%s %s: %s\n", what, srv->addr, strerror(-r));
out:
	for (size_t i = 0; i < rl.n; i++)
		drop(rl.conns[i]);
	free(rl.conns);
	if (rl.lfd >= 0) {
		(void)close(rl.lfd);
		(void)unlink(srv->addr);
	}
	if (rl.ep >= 0)
		(void)close(rl.ep);
	if (rl.sfd >= 0)
		(void)close(rl.sfd);
	return r < 0 ? 1 : 0;
}

static int x_server_start(struct bt_server *srv, const char **why)
{
	struct sockaddr_un sa;
	int n;
	pid_t pid;

	*why = NULL;
	n = snprintf(srv->addr, sizeof(srv->addr), "%s/relay.sock", srv->dir);
	if (n < 0 || (size_t)n >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	pid = bt_fork_server("relay", relay_main, srv, START_MS);
	if (pid < 0)
		return (int)pid;
	srv->pid = pid;
	srv->priv = NULL;
	return 0;
}

static void x_server_stop(struct bt_server *srv)
{
	if (bt_stop_server(srv->pid, STOP_MS) < 0)
		(void)fprintf(stderr, "bench_relay: the relay did not stop "
				      "cleanly\n");
	srv->pid = 0;
	if (unlink(srv->addr) < 0 && errno != ENOENT)
		(void)fprintf(stderr, "bench_relay: unlink %s: %s\n", srv->addr,
			      strerror(errno));
}

/* ---- clients ---- */

struct bt_conn {
	int fd;
	int err; /* sticky: the connection is unusable */
	bt_recv_fn fn;
	void *ud;
	unsigned acks;
	unsigned char *rbuf;
	size_t rlen, rcap;
	unsigned char *wbuf;
	size_t woff, wlen, wcap;
};

static int x_open(const struct bt_server *srv, struct bt_conn **ret)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct bt_conn *c;
	int r;

	if (strlen(srv->addr) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, srv->addr, strlen(srv->addr) + 1);
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->rcap = CHUNK;
	c->wcap = (size_t)2 * BATCH;
	c->rbuf = malloc(c->rcap);
	c->wbuf = malloc(c->wcap);
	if (!c->rbuf || !c->wbuf) {
		r = -ENOMEM;
		goto free_conn;
	}
	/* Blocking for connect(), non-blocking from then on. */
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		r = -errno;
		goto free_conn;
	}
	if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		r = -errno;
		goto close_fd;
	}
	if (fcntl(c->fd, F_SETFL, O_NONBLOCK) < 0) {
		r = -errno;
		goto close_fd;
	}
	*ret = c;
	return 0;

close_fd:
	(void)close(c->fd);
free_conn:
	free(c->rbuf);
	free(c->wbuf);
	free(c);
	return r;
}

/* Write out wbuf[woff..wlen) by @deadline (ms; INT64_MAX: no limit). */
static int push(struct bt_conn *c, int64_t deadline)
{
	while (c->woff < c->wlen) {
		ssize_t w = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff,
				 MSG_NOSIGNAL);
		struct pollfd pf = { .fd = c->fd, .events = POLLOUT };
		int r;

		if (w > 0) {
			c->woff += (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno != EAGAIN) {
			c->err = -errno;
			return c->err;
		}
		r = poll(&pf, 1, bt_left_ms(deadline));
		if (r < 0 && errno != EINTR) {
			c->err = -errno;
			return c->err;
		}
		if (r == 0)
			return -ETIMEDOUT;
	}
	c->woff = c->wlen = 0;
	return 0;
}

/* Append a frame header @n and @data (NULL: nothing) to the buffer. */
static int append(struct bt_conn *c, uint32_t n, const void *data, size_t len)
{
	size_t need = 4 + len;

	if (c->wlen + need > c->wcap) {
		unsigned char *b = realloc(c->wbuf, c->wlen + need);

		if (!b)
			return -ENOMEM;
		c->wbuf = b;
		c->wcap = c->wlen + need;
	}
	memcpy(c->wbuf + c->wlen, &n, 4);
	if (len)
		memcpy(c->wbuf + c->wlen + 4, data, len);
	c->wlen += need;
	return 0;
}

/* Call the callback for each complete frame in rbuf; returns how many. */
static int dispatch(struct bt_conn *c)
{
	size_t pos = 0;
	int count = 0;

	while (c->rlen - pos >= 4) {
		uint32_t n = frame_len(c->rbuf + pos);

		if (n == RELAY_ACK) {
			c->acks++;
			pos += 4;
			continue;
		}
		if (n > MAX_FRAME) {
			c->err = -EPROTO;
			return c->err;
		}
		if (c->rlen - pos - 4 < n)
			break;
		if (c->fn)
			c->fn(c->ud, c->rbuf + pos + 4, n);
		count++;
		pos += 4 + (size_t)n;
	}
	c->rlen -= pos;
	memmove(c->rbuf, c->rbuf + pos, c->rlen);
	if (c->rlen >= 4 && 4 + (size_t)frame_len(c->rbuf) > c->rcap &&
	    frame_len(c->rbuf) <= MAX_FRAME) {
		size_t need = 4 + (size_t)frame_len(c->rbuf);
		unsigned char *b = realloc(c->rbuf, need);

		if (!b) {
			c->err = -ENOMEM;
			return c->err;
		}
		c->rbuf = b;
		c->rcap = need;
	}
	return count;
}

static int x_pump(struct bt_conn *c, int timeout_ms)
{
	int delivered = 0;
	bool waited = false, got = false;

	if (c->err)
		return c->err;
	/* A few chunks at most, so that the driver keeps control. */
	for (int reads = 0; reads < 16;) {
		ssize_t n =
			recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
		struct pollfd pf = { .fd = c->fd, .events = POLLIN };
		int r;

		if (n > 0) {
			c->rlen += (size_t)n;
			r = dispatch(c);
			if (r < 0)
				return r;
			delivered += r;
			got = true;
			reads++;
			continue;
		}
		if (n == 0) {
			c->err = -ECONNRESET;
			return delivered ? delivered : c->err;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN) {
			c->err = -errno;
			return delivered ? delivered : c->err;
		}
		if (got || waited)
			break;
		r = poll(&pf, 1, timeout_ms);
		if (r < 0 && errno != EINTR)
			return -errno;
		if (r <= 0)
			break;
		waited = true;
	}
	return delivered;
}

static int x_subscribe(struct bt_conn *c, const char *topic, bt_recv_fn fn,
		       void *ud)
{
	int64_t deadline = bt_now_ms() + ACK_MS;
	unsigned want = c->acks + 1;
	int r;

	(void)topic;
	if (c->err)
		return c->err;
	if (!c->fn) {
		c->fn = fn;
		c->ud = ud;
	}
	r = append(c, RELAY_SUB, NULL, 0);
	if (r == 0)
		r = push(c, deadline);
	while (r >= 0 && c->acks < want) {
		if (bt_now_ms() >= deadline)
			return -ETIMEDOUT;
		r = x_pump(c, bt_left_ms(deadline));
	}
	return r < 0 ? r : 0;
}

static int x_publish(struct bt_conn *c, const char *topic, const void *data,
		     size_t len)
{
	int r;

	(void)topic;
	if (c->err)
		return c->err;
	if (len > MAX_FRAME)
		return -EMSGSIZE;
	/* A full batch goes out first; on failure this event is not taken. */
	if (c->wlen && c->wlen + 4 + len > BATCH) {
		r = push(c, bt_now_ms() + PUBLISH_MS);
		if (r < 0)
			return r;
	}
	return append(c, (uint32_t)len, data, len);
}

static int x_flush(struct bt_conn *c, int timeout_ms)
{
	if (c->err)
		return c->err;
	return push(c, timeout_ms < 0 ? INT64_MAX : bt_now_ms() + timeout_ms);
}

static void x_close(struct bt_conn *c)
{
	if (!c)
		return;
	(void)close(c->fd);
	free(c->rbuf);
	free(c->wbuf);
	free(c);
}

const struct bt_transport bt_transport = {
	.name = "relay",
	.server_start = x_server_start,
	.server_stop = x_server_stop,
	.open = x_open,
	.subscribe = x_subscribe,
	.publish = x_publish,
	.flush = x_flush,
	.pump = x_pump,
	.close = x_close,
};

int main(int argc, char **argv)
{
	return bt_main(&bt_transport, argc, argv);
}
