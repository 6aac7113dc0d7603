/* SPDX-License-Identifier: MIT */
/*
 * The benchmark driver's transport interface.
 *
 * One driver (driver.c) runs every workload the same way for every
 * transport: it makes a private temporary directory, starts the
 * transport's server (a broker, relay or server process), forks the client
 * processes, drives them over pipes, checks every event arrives once and in
 * order, reaps every process, and prints one line
 * "RESULT <transport>-<workload> key=value ..." for bench/run.sh.
 *
 * A transport (t_<name>.c, linked with driver.c into bench_<name>) defines
 * one `const struct bt_transport bt_transport` with the operations below.
 * All of them are called in a single-threaded process, from the thread
 * that called bt_main(); the receive callback may be called from the
 * library's own thread (usps) or from inside pump() (ZeroMQ, hiredis).
 *
 * Errors are negative errno values; 0 is success.
 */
#ifndef USPS_BENCH_DRIVER_H
#define USPS_BENCH_DRIVER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Where a transport's server listens; filled in by server_start(). */
struct bt_server {
	char dir[256];	/* the run's private directory (set by the driver) */
	char addr[512]; /* transport-defined: a socket path, a URL, ... */
	pid_t pid;	/* the server process (its RSS is measured), or 0 */
	void *priv;	/* the transport's own state, in the parent */
};

/* One connection to the server, in a client process. */
struct bt_conn;

/* An event's payload, delivered to a subscriber. @data is valid only for
 * the duration of the call. */
typedef void (*bt_recv_fn)(void *ud, const void *data, size_t len);

struct bt_transport {
	const char *name; /* short id: "usps", "relay", "zmq", ... */

	/* In the parent, before any client is forked: start the server
	 * process (or processes) in srv->dir and return once it accepts
	 * clients. Returns 0, -errno, or 1 when the transport cannot run
	 * here (a tool is missing); then *why says why, for a SKIP line. */
	int (*server_start)(struct bt_server *srv, const char **why);
	/* Stop and reap what server_start started; remove its files. */
	void (*server_stop)(struct bt_server *srv);

	/* In a client process: connect. */
	int (*open)(const struct bt_server *srv, struct bt_conn **ret);
	/* Subscribe to @topic; returns once the server routes the topic to
	 * this connection (a publish made after it returns is delivered). */
	int (*subscribe)(struct bt_conn *c, const char *topic, bt_recv_fn fn,
			 void *ud);
	/* Publish one event. May block for back-pressure; must not lose the
	 * event once it returns 0. May be called from inside the receive
	 * callback (the ping-pong responder does). */
	int (*publish)(struct bt_conn *c, const char *topic, const void *data,
		       size_t len);
	/* Push out everything published so far (to the server's socket at
	 * least), waiting at most @timeout_ms. */
	int (*flush)(struct bt_conn *c, int timeout_ms);
	/* Deliver what has arrived, calling the receive callbacks on this
	 * thread; wait at most @timeout_ms for something to arrive. Returns
	 * the number of events delivered, or -errno. A transport that
	 * delivers on its own threads just waits (up to @timeout_ms) and
	 * returns 0. */
	int (*pump)(struct bt_conn *c, int timeout_ms);
	void (*close)(struct bt_conn *c);
};

extern const struct bt_transport bt_transport;

/* The driver's main: parses argv (see driver.c), runs one workload. */
int bt_main(const struct bt_transport *t, int argc, char **argv);

/*
 * Helpers a transport may use for its server process (driver.c has them
 * for its own children anyway). Added after the interface above, which
 * does not depend on them.
 */

/*
 * bt_fork_server() - fork a server process that runs @fn(@arg, ready_fd)
 * and exits with status 0 if @fn returns 0, else 1.
 *
 * The process is named @name (copied), is killed when its parent dies,
 * starts with SIGINT and SIGTERM at their defaults and with no descriptor
 * beyond 0, 1, 2 and ready_fd. @fn writes one line to ready_fd: "ready"
 * once it accepts clients, or why it cannot. Waits up to @timeout_ms for
 * that line. Returns the pid (> 0); otherwise the process is killed and
 * reaped, its line is printed on stderr, and the result is -EIO (it said
 * why not, or exited), -ETIMEDOUT, or what pipe() or fork() failed with.
 */
pid_t bt_fork_server(const char *name, int (*fn)(void *arg, int ready_fd),
		     void *arg, int timeout_ms);

/*
 * bt_stop_server() - send SIGTERM to @pid, wait up to @timeout_ms for it
 * to exit, then SIGKILL it (saying so on stderr); it is reaped in every
 * case. Returns 0 if it exited with status 0 in time, else -1. Does nothing
 * for @pid <= 0.
 */
int bt_stop_server(pid_t pid, int timeout_ms);

/*
 * Small helpers the transports share. Times are on CLOCK_MONOTONIC, in
 * milliseconds; a deadline is a bt_now_ms() value.
 */

/* bt_now_ms() - the CLOCK_MONOTONIC time now, in milliseconds. */
int64_t bt_now_ms(void);

/*
 * bt_left_ms() - the milliseconds from now to @deadline, as a poll()
 * timeout: 0 if it has passed, at most INT32_MAX, and -1 (no limit) for a
 * @deadline of INT64_MAX.
 */
int bt_left_ms(int64_t deadline);

/*
 * bt_sleep_ms() - sleep for @ms milliseconds, all of them even if a signal
 * handler runs meanwhile.
 */
void bt_sleep_ms(int ms);

/*
 * bt_wait_fd() - wait up to @timeout_ms (-1: no limit) for @events on @fd,
 * polling again (for the whole @timeout_ms) if a signal interrupts. Returns
 * the revents (> 0), 0 on timeout, or a negative errno from poll().
 */
int bt_wait_fd(int fd, short events, int timeout_ms);

/*
 * bt_write_all() - write the @n bytes at @p to @fd, carrying on after
 * short writes and signals. Returns 0, or a negative errno from write().
 */
int bt_write_all(int fd, const char *p, size_t n);

/*
 * bt_queue_room() - make room for one more element at the tail of a FIFO
 * queue of @size-byte elements: @buf has room for *@cap of them and holds
 * @n from index *@head on. When the tail has reached the end, the queued
 * elements move to the front (*@head becomes 0) or, if none is free, @buf
 * is reallocated with twice the room (16 at first; *@cap is updated).
 * Returns @buf or what replaced it, with a free slot at *@head + @n; or
 * NULL when out of memory, and then @buf is still valid and holds the same
 * elements.
 */
void *bt_queue_room(void *buf, size_t size, size_t *head, size_t n,
		    size_t *cap);

#endif
