/* SPDX-License-Identifier: MIT */
/*
 * bench_nats: the benchmark workloads over NATS on loopback TCP.
 *
 * The server is a nats-server child listening on 127.0.0.1 only, on a port
 * it picks itself and reports in its ports file. Its configuration makes
 * it lossless for the benchmark: a slow consumer may have up to 1 GiB
 * pending in the server and a minute to drain it before the server cuts it
 * off. Clients use cnats with reconnection off, so nothing is replayed or
 * silently skipped, and each subscription queues what it receives without
 * a limit. Should a client still be cut off or report a slow consumer, the
 * error is printed on stderr and the driver counts the missing events as
 * lost.
 *
 * Delivery runs on cnats's own threads (one per subscription); pump() only
 * waits. Each connection also has an I/O thread of ours, plugged in through
 * cnats's external event loop interface: cnats's own flusher thread waits
 * 1 ms before each write to gather more (2 ms on every ping-pong round
 * trip), whereas this thread writes as soon as there is something to write
 * and gathers whatever is published while it writes, much as Go's NATS
 * client does. publish() appends to the connection's buffer, wakes the
 * thread if it was idle, and waits while PENDING_MAX bytes are unwritten.
 * flush() writes what is buffered from the calling thread, then makes a
 * PING/PONG round trip, so that the server has processed everything
 * published before it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

#include "driver.h"

/* How long the server may take to start listening. */
#define START_MS 10000
/* How long it may take to exit after SIGTERM before it gets SIGKILL. */
#define STOP_MS 5000
/* How long close() waits for a subscription's last callback. */
#define UNSUB_MS 5000
/* How long open() waits for the connection. */
#define CONNECT_MS 5000
/* How long publish() waits for the server to take what is buffered. */
#define BACKPRESSURE_MS 60000
/* cnats's socket buffers (its default is 32 KiB). */
#define IO_BUF_SIZE (256 * 1024)
/*
 * publish() waits while this much is buffered and not yet written. With an
 * external event loop cnats's buffer has no limit of its own, and moves
 * what a short write left over to its start.
 */
#define PENDING_MAX (1024 * 1024)

/* What server_start() made, in the parent. */
struct server {
	char conf[512];
	char log[512];
	char ports[512];
};

struct sub {
	natsSubscription *ns;
	bt_recv_fn fn;
	void *ud;
	struct bt_conn *conn;
	bool done; /* the library will not call on_msg() for it again */
	struct sub *next;
};

struct bt_conn {
	natsConnection *nc;
	struct sub *subs;
	/* Guards sub.done; cond is signalled when one becomes true. */
	pthread_mutex_t lock;
	pthread_cond_t cond;

	/* The I/O thread; cnats calls the ev_*() callbacks to steer it. */
	pthread_t io;
	bool io_started;
	int wake;		       /* eventfd: look at the flags again */
	natsConnection *_Atomic io_nc; /* set by ev_attach() */
	atomic_int io_fd;	       /* the socket, or -1 */
	atomic_bool want_read;
	atomic_bool want_write;
	atomic_bool stop;
	/*
	 * write_lock serializes our natsConnection_ProcessWriteEvent() calls
	 * (the I/O thread's and flush()'s: cnats takes a write of nothing
	 * for a closed socket), and guards the publishers that wait for the
	 * buffer to drain below PENDING_MAX: drained is signalled after each
	 * write while drain_waiters > 0. cnats's threads never take it, so
	 * it may be held while calling into cnats.
	 */
	pthread_mutex_t write_lock;
	pthread_cond_t drained;
	atomic_int drain_waiters;
};

/* A cnats status as a negative errno, after printing cnats's account. */
static int nats_err(const char *what, natsStatus s)
{
	if (s == NATS_OK)
		return 0;
	(void)fprintf(stderr, "bench_nats: %s: %s (%s)\n", what,
		      natsStatus_GetText(s), nats_GetLastError(NULL));
	switch (s) {
	case NATS_NO_MEMORY:
		return -ENOMEM;
	case NATS_TIMEOUT:
		return -ETIMEDOUT;
	case NATS_INVALID_ARG:
	case NATS_INVALID_SUBJECT:
	case NATS_INVALID_TIMEOUT:
		return -EINVAL;
	case NATS_MAX_PAYLOAD:
		return -EMSGSIZE;
	case NATS_CONNECTION_CLOSED:
	case NATS_CONNECTION_DISCONNECTED:
	case NATS_STALE_CONNECTION:
		return -ENOTCONN;
	case NATS_NO_SERVER:
		return -ECONNREFUSED;
	case NATS_SLOW_CONSUMER:
		return -ENOBUFS;
	default:
		return -EIO;
	}
}

/* ---- the server (in the parent) ------------------------------------------ */

static bool executable(const char *path)
{
	return access(path, X_OK) == 0;
}

/* The first nats-server in $PATH, else /usr/sbin's. */
static int find_server(char *buf, size_t size)
{
	const char *p = getenv("PATH");

	while (p && *p) {
		size_t n = strcspn(p, ":");
		int len;

		/* An empty entry would mean the current directory: skip. */
		if (n > 0) {
			len = snprintf(buf, size, "%.*s/nats-server", (int)n,
				       p);
			if (len > 0 && (size_t)len < size && executable(buf))
				return 0;
		}
		p += n;
		if (*p == ':')
			p++;
	}
	if (snprintf(buf, size, "/usr/sbin/nats-server") >= (int)size)
		return -ENAMETOOLONG;
	return executable(buf) ? 0 : -ENOENT;
}

/*
 * The configuration: loopback only, a port of the server's choosing, and
 * limits high enough that a subscriber the driver keeps within its
 * in-flight window is never cut off as a slow consumer.
 */
static int write_conf(const struct bt_server *srv, const struct server *s)
{
	char text[2048];
	int fd, r, len;

	len = snprintf(text, sizeof(text),
		       "# bench_nats: written for one benchmark run\n"
		       "host: \"127.0.0.1\"\n"
		       "port: -1\n"
		       "max_payload: 1MB\n"
		       "max_pending: 1GB\n"
		       "write_deadline: \"60s\"\n"
		       "ports_file_dir: \"%s\"\n"
		       "log_file: \"%s\"\n",
		       srv->dir, s->log);
	if (len < 0 || (size_t)len >= sizeof(text))
		return -ENAMETOOLONG;
	/* The directory is private to this run: a stale file is an error. */
	fd = open(s->conf, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	r = bt_write_all(fd, text, (size_t)len);
	if (close(fd) < 0 && r == 0)
		r = -errno;
	return r;
}

/* In the forked child: become nats-server, or exit 127. */
static void exec_server(char *exe, char *conf, pid_t parent)
{
	char arg0[] = "nats-server", arg1[] = "-c";
	char *argv[] = { arg0, arg1, conf, NULL };
	sigset_t none;
	int fd;

	/* The driver's dispositions (SIGPIPE ignored) and mask are not its. */
	if (signal(SIGPIPE, SIG_DFL) == SIG_ERR ||
	    signal(SIGINT, SIG_DFL) == SIG_ERR ||
	    signal(SIGTERM, SIG_DFL) == SIG_ERR || sigemptyset(&none) < 0 ||
	    sigprocmask(SIG_SETMASK, &none, NULL) < 0)
		_exit(127);
	/* Do not outlive the driver, even if it is killed. */
	if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
		_exit(127);
	/* Its stdout is the driver's report; it logs to its file. */
	fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (fd < 0 || dup2(fd, STDIN_FILENO) < 0 || dup2(fd, STDOUT_FILENO) < 0)
		_exit(127);
	/* Only stdin, stdout and stderr: no pipe of the driver's. */
	if (close_range(3, ~0u, 0) < 0) {
		for (int i = 3; i < 1024; i++)
			(void)close(i);
	}
	execv(exe, argv);
	_exit(127);
}

/* The port in the ports file, once the server has written it; else 0. */
static int read_port(const char *path)
{
	char buf[1024];
	const char *p;
	ssize_t n;
	long port;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	do
		n = read(fd, buf, sizeof(buf) - 1);
	while (n < 0 && errno == EINTR);
	(void)close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	/* {"nats":["nats://127.0.0.1:PORT"]}: the file may be partial. */
	p = strstr(buf, "nats://127.0.0.1:");
	if (!p)
		return 0;
	p += strlen("nats://127.0.0.1:");
	port = strtol(p, NULL, 10);
	return port > 0 && port < 65536 ? (int)port : 0;
}

/* 0 once 127.0.0.1:@port accepts a connection, else -errno. */
static int try_connect(int port, int timeout_ms)
{
	struct sockaddr_in sa = {
		.sin_family = AF_INET,
		.sin_port = htons((uint16_t)port),
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK),
	};
	socklen_t len = sizeof(int);
	int fd, r, err = 0;

	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	if (r < 0 && errno != EINPROGRESS) {
		r = -errno;
		goto out;
	}
	if (r < 0) {
		r = bt_wait_fd(fd, POLLOUT, timeout_ms);
		if (r <= 0) {
			r = r < 0 ? r : -ETIMEDOUT;
			goto out;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
			err = errno;
		r = -err;
	}
out:
	(void)close(fd);
	return r;
}

static void remove_files(const struct server *s)
{
	const char *files[] = { s->conf, s->log, s->ports };

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		if (files[i][0] && unlink(files[i]) < 0 && errno != ENOENT)
			(void)fprintf(stderr, "bench_nats: unlink %s: %s\n",
				      files[i], strerror(errno));
	}
}

/* The last lines of the server's log, to say why it did not start. */
static void print_log_tail(const char *path)
{
	char buf[2048];
	ssize_t n;
	off_t end;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	end = lseek(fd, 0, SEEK_END);
	if (end > (off_t)sizeof(buf) - 1)
		(void)lseek(fd, end - (off_t)sizeof(buf) + 1, SEEK_SET);
	else
		(void)lseek(fd, 0, SEEK_SET);
	n = read(fd, buf, sizeof(buf) - 1);
	(void)close(fd);
	if (n > 0) {
		buf[n] = '\0';
		(void)fprintf(stderr, "bench_nats: nats-server log:\n%s", buf);
	}
}

static int server_start(struct bt_server *srv, const char **why)
{
	char exe[PATH_MAX];
	struct server *s;
	int64_t deadline;
	int r, port = 0;
	pid_t pid, parent;

	srv->pid = 0;
	srv->priv = NULL;
	if (find_server(exe, sizeof(exe)) < 0) {
		*why = "nats-server not found";
		return 1;
	}
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	if (snprintf(s->conf, sizeof(s->conf), "%s/nats.conf", srv->dir) >=
		    (int)sizeof(s->conf) ||
	    snprintf(s->log, sizeof(s->log), "%s/nats.log", srv->dir) >=
		    (int)sizeof(s->log)) {
		r = -ENAMETOOLONG;
		goto free_s;
	}
	r = write_conf(srv, s);
	if (r < 0) {
		(void)fprintf(stderr, "bench_nats: %s: %s\n", s->conf,
			      strerror(-r));
		goto remove;
	}

	(void)fflush(NULL);
	parent = getpid();
	pid = fork();
	if (pid < 0) {
		r = -errno;
		goto remove;
	}
	if (pid == 0)
		exec_server(exe, s->conf, parent);
	srv->pid = pid;
	/* nats-server names it after its argv[0] and pid. */
	if (snprintf(s->ports, sizeof(s->ports), "%s/nats-server_%d.ports",
		     srv->dir, (int)pid) >= (int)sizeof(s->ports)) {
		r = -ENAMETOOLONG;
		goto stop;
	}

	/* Poll for the port, then for the listener: no fixed sleep. */
	deadline = bt_now_ms() + START_MS;
	for (;;) {
		if (waitpid(pid, NULL, WNOHANG) == pid) {
			(void)fprintf(stderr,
				      "bench_nats: %s exited at start\n", exe);
			print_log_tail(s->log);
			srv->pid = 0;
			r = -EIO;
			goto remove;
		}
		if (!port)
			port = read_port(s->ports);
		if (port && try_connect(port, 100) == 0)
			break;
		if (bt_now_ms() >= deadline) {
			(void)fprintf(stderr,
				      "bench_nats: nats-server did not "
				      "accept connections in %d ms\n",
				      START_MS);
			print_log_tail(s->log);
			r = -ETIMEDOUT;
			goto stop;
		}
		bt_sleep_ms(5);
	}
	(void)snprintf(srv->addr, sizeof(srv->addr), "nats://127.0.0.1:%d",
		       port);
	srv->priv = s;
	return 0;

stop:
	(void)bt_stop_server(pid, STOP_MS);
	srv->pid = 0;
remove:
	remove_files(s);
free_s:
	free(s);
	return r;
}

static void server_stop(struct bt_server *srv)
{
	struct server *s = srv->priv;

	/* nats-server exits with status 1 after SIGTERM, by its design. */
	(void)bt_stop_server(srv->pid, STOP_MS);
	srv->pid = 0;
	if (s)
		remove_files(s);
	free(s);
	srv->priv = NULL;
}

/* ---- a client (in a client process) ------------------------------------- */

static void close_library(void)
{
	nats_Close();
}

/*
 * Slow consumers, protocol errors, a server that cut us off: reported on
 * cnats's callback thread. Printed so that lost events have an explanation;
 * the driver counts them.
 */
static void on_async_error(natsConnection *nc, natsSubscription *ns,
			   natsStatus err, void *closure)
{
	static atomic_uint count;
	const char *last = NULL;

	(void)closure;
	if (atomic_fetch_add(&count, 1) >= 10)
		return;
	(void)natsConnection_GetLastError(nc, &last);
	(void)fprintf(stderr, "bench_nats: async error%s%s: %s (%s)\n",
		      ns ? " on " : "",
		      ns ? natsSubscription_GetSubject(ns) : "",
		      natsStatus_GetText(err), last ? last : "");
}

/* ---- the I/O thread ----------------------------------------------------- */

static void wake_io(struct bt_conn *c)
{
	uint64_t one = 1;
	ssize_t n;

	/* Only fails if the counter would overflow: it is awake anyway. */
	do
		n = write(c->wake, &one, sizeof(one));
	while (n < 0 && errno == EINTR);
}

/* In natsConnection_Connect(), once connected. */
static natsStatus ev_attach(void **user, void *loop, natsConnection *nc,
			    natsSock fd)
{
	struct bt_conn *c = loop;

	*user = c;
	atomic_store(&c->io_nc, nc);
	/* Reading starts now, as with cnats's own adapters. */
	atomic_store(&c->want_read, true);
	atomic_store(&c->io_fd, fd);
	wake_io(c);
	return NATS_OK;
}

static natsStatus ev_read(void *user, bool add)
{
	struct bt_conn *c = user;

	if (atomic_exchange(&c->want_read, add) != add)
		wake_io(c);
	return NATS_OK;
}

/*
 * With the connection's lock held, by whichever thread appended to an
 * empty buffer (add), or by the I/O thread once it has written it all.
 */
static natsStatus ev_write(void *user, bool add)
{
	struct bt_conn *c = user;

	if (atomic_exchange(&c->want_write, add) != add && add)
		wake_io(c);
	return NATS_OK;
}

/* The connection is closed: stop polling its socket. */
static natsStatus ev_detach(void *user)
{
	struct bt_conn *c = user;

	atomic_store(&c->io_fd, -1);
	wake_io(c);
	return NATS_OK;
}

/* Write what is buffered, as far as the socket takes it. */
static void write_out(struct bt_conn *c, natsConnection *nc)
{
	(void)pthread_mutex_lock(&c->write_lock);
	/* Only this takes from the buffer: not empty now, not empty then. */
	if (natsConnection_Buffered(nc) > 0)
		natsConnection_ProcessWriteEvent(nc);
	if (atomic_load(&c->drain_waiters) > 0)
		(void)pthread_cond_broadcast(&c->drained);
	(void)pthread_mutex_unlock(&c->write_lock);
}

static void *io_main(void *arg)
{
	struct bt_conn *c = arg;
	struct pollfd pfd[2];
	uint64_t count;

	while (!atomic_load(&c->stop)) {
		int fd = atomic_load(&c->io_fd);
		nfds_t n = 1;
		int r;

		pfd[0] = (struct pollfd){ .fd = c->wake, .events = POLLIN };
		if (fd >= 0) {
			pfd[1] = (struct pollfd){
				.fd = fd,
				.events = (atomic_load(&c->want_read) ? POLLIN
								      : 0) |
					  (atomic_load(&c->want_write) ? POLLOUT
								       : 0),
			};
			n = 2;
		}
		r = poll(pfd, n, -1);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			(void)fprintf(stderr, "bench_nats: poll: %s\n",
				      strerror(errno));
			break;
		}
		if (pfd[0].revents & POLLIN) {
			/* Reset the counter; the flags say what to do. */
			if (read(c->wake, &count, sizeof(count)) < 0 &&
			    errno != EAGAIN && errno != EINTR)
				break;
		}
		if (n < 2 || atomic_load(&c->io_fd) != fd)
			continue;
		/* cnats checks that the connection is still attached. */
		if (pfd[1].revents & (POLLIN | POLLHUP | POLLERR))
			natsConnection_ProcessReadEvent(atomic_load(&c->io_nc));
		if ((pfd[1].revents & POLLOUT) && atomic_load(&c->io_fd) == fd)
			write_out(c, atomic_load(&c->io_nc));
	}
	return NULL;
}

static void stop_io(struct bt_conn *c)
{
	if (!c->io_started)
		return;
	atomic_store(&c->stop, true);
	wake_io(c);
	(void)pthread_join(c->io, NULL);
	c->io_started = false;
}

/* ---- the connection ------------------------------------------------------ */

static int conn_open(const struct bt_server *srv, struct bt_conn **ret)
{
	static bool registered;
	natsOptions *opts = NULL;
	struct bt_conn *c;
	natsStatus s;
	int r;

	if (!registered) {
		/* Frees cnats's globals (threads, pools) at exit. */
		if (atexit(close_library) != 0)
			return -ENOMEM;
		registered = true;
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	atomic_init(&c->io_nc, NULL);
	atomic_init(&c->io_fd, -1);
	atomic_init(&c->want_read, false);
	atomic_init(&c->want_write, false);
	atomic_init(&c->stop, false);
	atomic_init(&c->drain_waiters, 0);
	r = -pthread_mutex_init(&c->lock, NULL);
	if (r < 0)
		goto free_c;
	r = -pthread_cond_init(&c->cond, NULL);
	if (r < 0)
		goto destroy_lock;
	r = -pthread_mutex_init(&c->write_lock, NULL);
	if (r < 0)
		goto destroy_cond;
	r = -pthread_cond_init(&c->drained, NULL);
	if (r < 0)
		goto destroy_write_lock;
	c->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (c->wake < 0) {
		r = -errno;
		goto destroy_drained;
	}
	r = -pthread_create(&c->io, NULL, io_main, c);
	if (r < 0)
		goto close_wake;
	c->io_started = true;

	s = natsOptions_Create(&opts);
	if (s == NATS_OK)
		s = natsOptions_SetURL(opts, srv->addr);
	/* One server, one try: a lost connection is an error, not a pause. */
	if (s == NATS_OK)
		s = natsOptions_SetAllowReconnect(opts, false);
	if (s == NATS_OK)
		s = natsOptions_SetIgnoreDiscoveredServers(opts, true);
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(opts, CONNECT_MS);
	if (s == NATS_OK)
		s = natsOptions_SetIOBufSize(opts, IO_BUF_SIZE);
	/* Hand each write to the I/O thread at once, without the 1 ms. */
	if (s == NATS_OK)
		s = natsOptions_SetSendAsap(opts, true);
	if (s == NATS_OK)
		s = natsOptions_SetEventLoop(opts, c, ev_attach, ev_read,
					     ev_write, ev_detach);
	if (s == NATS_OK)
		s = natsOptions_SetErrorHandler(opts, on_async_error, NULL);
	if (s != NATS_OK) {
		r = nats_err("natsOptions", s);
		goto destroy_opts;
	}
	s = natsConnection_Connect(&c->nc, opts);
	if (s != NATS_OK) {
		r = nats_err("natsConnection_Connect", s);
		goto destroy_opts;
	}
	/* The connection keeps its own copy. */
	natsOptions_Destroy(opts);
	*ret = c;
	return 0;

destroy_opts:
	natsOptions_Destroy(opts);
	stop_io(c);
close_wake:
	(void)close(c->wake);
destroy_drained:
	(void)pthread_cond_destroy(&c->drained);
destroy_write_lock:
	(void)pthread_mutex_destroy(&c->write_lock);
destroy_cond:
	(void)pthread_cond_destroy(&c->cond);
destroy_lock:
	(void)pthread_mutex_destroy(&c->lock);
free_c:
	free(c);
	return r;
}

/* On the subscription's delivery thread. */
static void on_msg(natsConnection *nc, natsSubscription *ns, natsMsg *msg,
		   void *closure)
{
	struct sub *sub = closure;
	int len = natsMsg_GetDataLength(msg);

	(void)nc;
	(void)ns;
	sub->fn(sub->ud, natsMsg_GetData(msg), len > 0 ? (size_t)len : 0);
	natsMsg_Destroy(msg);
}

/* On the delivery thread, after the last on_msg() for the subscription. */
static void on_sub_complete(void *closure)
{
	struct sub *sub = closure;
	struct bt_conn *c = sub->conn;

	(void)pthread_mutex_lock(&c->lock);
	sub->done = true;
	(void)pthread_cond_broadcast(&c->cond);
	(void)pthread_mutex_unlock(&c->lock);
}

static int conn_subscribe(struct bt_conn *c, const char *topic, bt_recv_fn fn,
			  void *ud)
{
	struct sub *sub;
	natsStatus s;
	int r;

	sub = calloc(1, sizeof(*sub));
	if (!sub)
		return -ENOMEM;
	*sub = (struct sub){ .fn = fn, .ud = ud, .conn = c };
	s = natsConnection_Subscribe(&sub->ns, c->nc, topic, on_msg, sub);
	if (s != NATS_OK) {
		r = nats_err("natsConnection_Subscribe", s);
		free(sub);
		return r;
	}
	/* Linked first, so that close() unsubscribes it on every path. */
	sub->next = c->subs;
	c->subs = sub;
	s = natsSubscription_SetOnCompleteCB(sub->ns, on_sub_complete, sub);
	if (s != NATS_OK)
		return nats_err("natsSubscription_SetOnCompleteCB", s);
	/* No client-side limit: cnats would drop what exceeds it. */
	s = natsSubscription_SetPendingLimits(sub->ns, -1, -1);
	if (s != NATS_OK)
		return nats_err("natsSubscription_SetPendingLimits", s);
	/* The server has processed SUB once it answers our PING. */
	s = natsConnection_FlushTimeout(c->nc, CONNECT_MS);
	if (s != NATS_OK)
		return nats_err("natsConnection_FlushTimeout", s);
	return 0;
}

/* Back-pressure: wait while PENDING_MAX bytes are not yet written. */
static int wait_drained(struct bt_conn *c)
{
	int64_t deadline = bt_now_ms() + BACKPRESSURE_MS;
	struct timespec dl;
	int r = 0;

	if (natsConnection_Buffered(c->nc) < PENDING_MAX)
		return 0;
	(void)pthread_mutex_lock(&c->write_lock);
	/* Counted before the test, so that the I/O thread signals. */
	atomic_fetch_add(&c->drain_waiters, 1);
	while (natsConnection_Buffered(c->nc) >= PENDING_MAX / 2) {
		if (natsConnection_IsClosed(c->nc)) {
			r = -ENOTCONN;
			break;
		}
		if (bt_now_ms() >= deadline) {
			r = -ETIMEDOUT;
			break;
		}
		(void)clock_gettime(CLOCK_REALTIME, &dl);
		dl.tv_nsec += 10000000; /* 10 ms: a bound, not the wakeup */
		if (dl.tv_nsec >= 1000000000) {
			dl.tv_sec++;
			dl.tv_nsec -= 1000000000;
		}
		(void)pthread_cond_timedwait(&c->drained, &c->write_lock, &dl);
	}
	atomic_fetch_sub(&c->drain_waiters, 1);
	(void)pthread_mutex_unlock(&c->write_lock);
	return r;
}

static int conn_publish(struct bt_conn *c, const char *topic, const void *data,
			size_t len)
{
	natsStatus s;
	int r;

	if (len > INT_MAX)
		return -EMSGSIZE;
	r = wait_drained(c);
	if (r < 0) {
		(void)fprintf(stderr, "bench_nats: publish: %s\n",
			      strerror(-r));
		return r;
	}
	s = natsConnection_Publish(c->nc, topic, data, (int)len);
	return s == NATS_OK ? 0 : nats_err("natsConnection_Publish", s);
}

/*
 * Write what is buffered from this thread, now, rather than wake the I/O
 * thread for it (a ping-pong round trip would pay for two such wakeups),
 * then make the round trip that says the server has processed it.
 */
static int conn_flush(struct bt_conn *c, int timeout_ms)
{
	natsStatus s;

	write_out(c, c->nc);
	s = natsConnection_FlushTimeout(c->nc, timeout_ms > 0 ? timeout_ms : 1);
	return s == NATS_OK ? 0 : nats_err("natsConnection_FlushTimeout", s);
}

/* Delivery is on cnats's threads: wait, and say if the connection died. */
static int conn_pump(struct bt_conn *c, int timeout_ms)
{
	int64_t deadline = bt_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);

	for (;;) {
		int64_t left = deadline - bt_now_ms();

		if (natsConnection_IsClosed(c->nc))
			return -ENOTCONN;
		if (left <= 0)
			return 0;
		/* In slices, to notice a closed connection soon enough. */
		bt_sleep_ms(left < 50 ? (int)left : 50);
	}
}

static void conn_close(struct bt_conn *c)
{
	struct sub *sub, *next;
	struct timespec dl;
	natsStatus s;

	if (!c)
		return;
	for (sub = c->subs; sub; sub = sub->next) {
		s = natsSubscription_Unsubscribe(sub->ns);
		if (s != NATS_OK && s != NATS_CONNECTION_CLOSED &&
		    s != NATS_INVALID_SUBSCRIPTION)
			(void)nats_err("natsSubscription_Unsubscribe", s);
	}
	/*
	 * A callback may be running on a delivery thread: the caller's @ud
	 * must outlive it. Wait (bounded) for each one's completion.
	 */
	(void)clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += UNSUB_MS / 1000;
	(void)pthread_mutex_lock(&c->lock);
	for (sub = c->subs; sub; sub = sub->next) {
		while (!sub->done) {
			if (pthread_cond_timedwait(&c->cond, &c->lock, &dl) ==
			    ETIMEDOUT)
				break;
		}
		if (!sub->done)
			(void)fprintf(stderr,
				      "bench_nats: a subscription did not "
				      "complete in %d ms\n",
				      UNSUB_MS);
	}
	(void)pthread_mutex_unlock(&c->lock);
	/* Nothing more to send: the I/O thread goes first, then the socket. */
	stop_io(c);
	natsConnection_Destroy(c->nc);
	(void)close(c->wake);
	for (sub = c->subs; sub; sub = next) {
		next = sub->next;
		natsSubscription_Destroy(sub->ns);
		free(sub);
	}
	(void)pthread_cond_destroy(&c->drained);
	(void)pthread_mutex_destroy(&c->write_lock);
	(void)pthread_cond_destroy(&c->cond);
	(void)pthread_mutex_destroy(&c->lock);
	free(c);
}

const struct bt_transport bt_transport = {
	.name = "nats",
	.server_start = server_start,
	.server_stop = server_stop,
	.open = conn_open,
	.subscribe = conn_subscribe,
	.publish = conn_publish,
	.flush = conn_flush,
	.pump = conn_pump,
	.close = conn_close,
};

int main(int argc, char **argv)
{
	return bt_main(&bt_transport, argc, argv);
}
