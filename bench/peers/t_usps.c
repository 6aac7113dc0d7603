/* SPDX-License-Identifier: MIT */
/*
 * bench_usps - the benchmark driver over usps itself: a process that only
 * routes (the broker, the first to open <dir>/bus.sock) and clients that
 * open the same path. Each client connection is a usps handle with its own
 * I/O and delivery threads; callbacks run on the delivery thread, so
 * pump() only waits.
 *
 * Events are published with type "bench" and the driver's payload (a JSON
 * string) as data; the callback gets the data exactly as published.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "driver.h"
#include "usps.h"

#define START_MS 20000
#define STOP_MS 10000

/* One subscribe() call: what usps calls back with. */
struct sub {
	bt_recv_fn fn;
	void *ud;
	struct sub *next;
};

struct bt_conn {
	usps *ps;
	struct sub *subs;
};

/*
 * The broker process: opens the path first, says "ready" once it is the
 * broker, then routes until SIGTERM or SIGINT. The signals are blocked
 * before usps starts its threads, so that only sigwait() sees them.
 */
static int broker_main(void *arg, int ready_fd)
{
	const struct bt_server *srv = arg;
	sigset_t set;
	usps *ps;
	int r, sig;

	(void)sigemptyset(&set);
	(void)sigaddset(&set, SIGTERM);
	(void)sigaddset(&set, SIGINT);
	r = pthread_sigmask(SIG_BLOCK, &set, NULL);
	if (r) {
		(void)dprintf(ready_fd, "pthread_sigmask: %s\n", strerror(r));
		return 1;
	}
	r = usps_open(&ps, srv->addr, NULL);
	if (r < 0) {
		(void)dprintf(ready_fd, "usps_open %s: %s\n", srv->addr,
			      strerror(-r));
		return 1;
	}
	if (!usps_is_broker(ps)) {
		(void)dprintf(ready_fd, "%s already has a broker\n", srv->addr);
		(void)usps_close(ps);
		return 1;
	}
	(void)dprintf(ready_fd, "ready\n");
	(void)close(ready_fd);
	while (sigwait(&set, &sig) != 0)
		;
	(void)usps_close(ps);
	return 0;
}

static int u_server_start(struct bt_server *srv, const char **why)
{
	struct sockaddr_un sa;
	int n;
	pid_t pid;

	*why = NULL;
	n = snprintf(srv->addr, sizeof(srv->addr), "%s/bus.sock", srv->dir);
	if (n < 0 || (size_t)n >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	pid = bt_fork_server("usps-broker", broker_main, srv, START_MS);
	if (pid < 0)
		return (int)pid;
	srv->pid = pid;
	srv->priv = NULL;
	return 0;
}

static void u_server_stop(struct bt_server *srv)
{
	if (bt_stop_server(srv->pid, STOP_MS) < 0)
		(void)fprintf(stderr, "bench_usps: the broker did not stop "
				      "cleanly\n");
	srv->pid = 0;
	/* The broker unlinks its own path; not if it was killed. */
	if (unlink(srv->addr) < 0 && errno != ENOENT)
		(void)fprintf(stderr, "bench_usps: unlink %s: %s\n", srv->addr,
			      strerror(errno));
}

static int u_open(const struct bt_server *srv, struct bt_conn **ret)
{
	struct bt_conn *c = calloc(1, sizeof(*c));
	int r;

	if (!c)
		return -ENOMEM;
	r = usps_open(&c->ps, srv->addr, NULL);
	if (r < 0) {
		free(c);
		return r;
	}
	if (usps_is_broker(c->ps)) {
		/* The broker process is gone: we would measure nothing. */
		(void)usps_close(c->ps);
		free(c);
		return -ENOTCONN;
	}
	*ret = c;
	return 0;
}

static void on_event(const usps_event *ev, usps_delivery *d, void *userdata)
{
	const struct sub *s = userdata;

	(void)d;
	s->fn(s->ud, ev->data ? ev->data : "", ev->data ? ev->data_len : 0);
}

static int u_subscribe(struct bt_conn *c, const char *topic, bt_recv_fn fn,
		       void *ud)
{
	struct sub *s = calloc(1, sizeof(*s));
	usps_sub *handle;
	int r;

	if (!s)
		return -ENOMEM;
	*s = (struct sub){ .fn = fn, .ud = ud, .next = c->subs };
	r = usps_subscribe(c->ps, topic, NULL, on_event, s, &handle);
	if (r < 0) {
		free(s);
		return r;
	}
	/* usps_close() frees the handle; we keep what it points to. */
	c->subs = s;
	return 0;
}

static int u_publish(struct bt_conn *c, const char *topic, const void *data,
		     size_t len)
{
	return usps_publish(c->ps, topic, "bench", data, len, 0);
}

static int u_flush(struct bt_conn *c, int timeout_ms)
{
	return usps_flush(c->ps, timeout_ms);
}

/* Deliveries happen on usps's own thread: only wait. */
static int u_pump(struct bt_conn *c, int timeout_ms)
{
	(void)c;
	if (poll(NULL, 0, timeout_ms) < 0 && errno != EINTR)
		return -errno;
	return 0;
}

static void u_close(struct bt_conn *c)
{
	struct sub *s, *next;

	if (!c)
		return;
	/* After this no handler runs, so the subs can go. */
	(void)usps_close(c->ps);
	for (s = c->subs; s; s = next) {
		next = s->next;
		free(s);
	}
	free(c);
}

const struct bt_transport bt_transport = {
	.name = "usps",
	.server_start = u_server_start,
	.server_stop = u_server_stop,
	.open = u_open,
	.subscribe = u_subscribe,
	.publish = u_publish,
	.flush = u_flush,
	.pump = u_pump,
	.close = u_close,
};

int main(int argc, char **argv)
{
	return bt_main(&bt_transport, argc, argv);
}
