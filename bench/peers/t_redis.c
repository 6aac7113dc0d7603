/* SPDX-License-Identifier: MIT */
/*
 * bench_redis - the benchmark driver over Redis pub/sub: a redis-server
 * listening only on <dir>/redis.sock, with persistence off and no output
 * buffer limit for subscribers (a slow subscriber is buffered for, not
 * disconnected: lossless; the driver's in-flight window bounds the buffer).
 *
 * A client uses hiredis 0.14 on two non-blocking connections, each opened
 * when first needed: a connection in subscribe mode cannot publish.
 *
 * - subscribe() sends SUBSCRIBE and returns on its confirmation: Redis
 *   handles commands one at a time, so a PUBLISH it handles afterwards
 *   reaches this connection.
 * - publish() pipelines PUBLISH commands into hiredis's output buffer and
 *   writes it out once it is large; it reads the integer replies only as
 *   they happen to be there when it writes, and waits for them only when
 *   too many are outstanding. flush() writes the buffer out.
 * - pump() parses the pushed ["message", channel, payload] arrays and hands
 *   the payload to the channel's callback.
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
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis.h>

#include "driver.h"

/* How long the server may take to start and to stop. */
#define START_MS 10000
#define STOP_MS 5000
/* How long subscribe() may wait for its confirmation. */
#define READY_MS 10000
/* How long publish() may block for back-pressure before giving up. */
#define BLOCK_MS 60000
/* publish() writes the output buffer out once it holds this much, or
 * this many events: the driver's in-flight window waits for events to be
 * received without flushing, so a window of more than WRITE_EVERY events
 * never waits for what is still here. */
#define WRITE_AT ((size_t)64 * 1024)
#define WRITE_EVERY 256
/* publish() waits for PUBLISH replies while more are outstanding. */
#define MAX_OUTSTANDING ((size_t)64 * 1024)
/* Events delivered per pump() call at most, so the driver keeps control. */
#define PUMP_BATCH 4096
/* Bytes read from the subscribe connection at once. */
#define READ_CHUNK (64 * 1024)

#define PATH_MAX_UN sizeof(((struct sockaddr_un *)0)->sun_path)

struct rsub {
	char *topic;
	size_t len;
	bt_recv_fn fn;
	void *ud;
};

struct bt_conn {
	char path[PATH_MAX_UN];
	redisContext *pc;   /* publishes */
	redisContext *sc;   /* subscribed */
	size_t outstanding; /* PUBLISH commands whose reply is not read */
	size_t unwritten;   /* PUBLISH commands still in pc->obuf, at most */

	struct rsub *subs;
	size_t nsubs;

	/* Messages read while subscribe() waited for its confirmation,
	 * delivered first by the next pump(). */
	redisReply **pending;
	size_t pending_head, npending, pending_cap;
};

/* ---- the server ---------------------------------------------------------- */

/* Finds @name in $PATH; returns 0 and the path in @buf, or -ENOENT. */
static int find_in_path(const char *name, char *buf, size_t size)
{
	const char *p = getenv("PATH");

	if (!p || !*p)
		p = "/usr/local/bin:/usr/bin:/bin";
	while (*p) {
		const char *end = strchrnul(p, ':');
		int dlen = (int)(end - p);
		int n;

		/* An empty entry means the current directory. */
		if (dlen == 0)
			n = snprintf(buf, size, "./%s", name);
		else
			n = snprintf(buf, size, "%.*s/%s", dlen, p, name);
		if (n > 0 && (size_t)n < size && access(buf, X_OK) == 0)
			return 0;
		p = *end ? end + 1 : end;
	}
	return -ENOENT;
}

static void file_path(char *buf, size_t size, const char *dir, const char *name)
{
	(void)snprintf(buf, size, "%s/%s", dir, name);
}

static void remove_files(const char *dir)
{
	static const char *const names[] = { "redis.sock", "redis.log",
					     "dump.rdb" };
	char path[sizeof(((struct bt_server *)0)->dir) + 16];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		file_path(path, sizeof(path), dir, names[i]);
		(void)unlink(path);
	}
}

/* In the child: become redis-server. */
static void exec_server(const char *exe, const char *dir, const char *sock,
			const char *log, pid_t parent)
{
	/* clang-format off */
	const char *argv[] = {
		"redis-server",
		"--port", "0",
		"--unixsocket", sock,
		"--unixsocketperm", "700",
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		/* Lossless: a slow subscriber is never disconnected. */
		"--client-output-buffer-limit", "pubsub", "0", "0", "0",
		"--dir", dir,
		"--logfile", log,
		NULL,
	};
	/* clang-format on */
	int fd;

	/* Never outlive the driver, whatever happens to it (kept across
	 * execve for an ordinary binary). */
	if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
		_exit(127);
	fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (fd < 0 || dup2(fd, STDIN_FILENO) < 0 || dup2(fd, STDOUT_FILENO) < 0)
		_exit(127);
	/* stderr stays: a fatal configuration error shows there. */
	(void)close_range(3, ~0u, 0);
	execv(exe, (char *const *)argv);
	_exit(127);
}

/* Connects and PINGs once; 0 on PONG. */
static int ping(const char *sock)
{
	struct timeval tv = { .tv_sec = 1 };
	redisContext *c = redisConnectUnixWithTimeout(sock, tv);
	redisReply *rep;
	int r = -ECONNREFUSED;

	if (!c)
		return -ENOMEM;
	if (c->err || redisSetTimeout(c, tv) != REDIS_OK)
		goto free_ctx;
	rep = redisCommand(c, "PING");
	if (rep) {
		if (rep->type == REDIS_REPLY_STATUS &&
		    !strcmp(rep->str, "PONG"))
			r = 0;
		freeReplyObject(rep);
	}
free_ctx:
	redisFree(c);
	return r;
}

static int r_server_start(struct bt_server *srv, const char **why)
{
	char exe[4096];
	char sock[PATH_MAX_UN];
	char log[sizeof(srv->dir) + 16];
	pid_t parent = getpid(), pid;
	int64_t deadline;
	int st, r;

	*why = NULL;
	if (find_in_path("redis-server", exe, sizeof(exe)) < 0) {
		*why = "redis-server not found";
		return 1;
	}
	if (strlen(srv->dir) + sizeof("/redis.sock") > sizeof(sock))
		return -ENAMETOOLONG;
	file_path(sock, sizeof(sock), srv->dir, "redis.sock");
	file_path(log, sizeof(log), srv->dir, "redis.log");

	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0)
		exec_server(exe, srv->dir, sock, log, parent);

	/* Ready once it answers; its exit meanwhile is a failure. */
	deadline = bt_now_ms() + START_MS;
	for (;;) {
		pid_t w = waitpid(pid, &st, WNOHANG);

		if (w == pid) {
			pid = 0;
			r = -EIO;
			goto fail;
		}
		if (w < 0 && errno != EINTR) {
			r = -errno;
			goto fail;
		}
		if (ping(sock) == 0)
			break;
		if (bt_now_ms() >= deadline) {
			r = -ETIMEDOUT;
			goto fail;
		}
		bt_sleep_ms(5);
	}
	srv->pid = pid;
	srv->priv = NULL;
	(void)snprintf(srv->addr, sizeof(srv->addr), "%s", sock);
	return 0;

fail:
	(void)bt_stop_server(pid, STOP_MS);
	remove_files(srv->dir);
	return r;
}

static void r_server_stop(struct bt_server *srv)
{
	(void)bt_stop_server(srv->pid, STOP_MS);
	srv->pid = 0;
	remove_files(srv->dir);
}

/* ---- clients ------------------------------------------------------------- */

static int r_open(const struct bt_server *srv, struct bt_conn **ret)
{
	struct bt_conn *c;

	if (strlen(srv->addr) >= PATH_MAX_UN)
		return -ENAMETOOLONG;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	memcpy(c->path, srv->addr, strlen(srv->addr) + 1);
	*ret = c;
	return 0;
}

/* A non-blocking connection. A Unix socket connects at once or fails. */
static int connect_nb(const char *path, redisContext **ret)
{
	redisContext *c = redisConnectUnixNonBlock(path);

	if (!c)
		return -ENOMEM;
	if (c->err) {
		redisFree(c);
		return -ECONNREFUSED;
	}
	*ret = c;
	return 0;
}

static int ctx_error(const redisContext *c)
{
	switch (c->err) {
	case REDIS_ERR_OOM:
		return -ENOMEM;
	case REDIS_ERR_EOF:
		return -ECONNRESET;
	case REDIS_ERR_PROTOCOL:
		return -EPROTO;
	default:
		return -EIO;
	}
}

/* Parses the next complete reply of @c, if any, into *ret (NULL if none). */
static int next_reply(redisContext *c, redisReply **ret)
{
	void *rep = NULL;

	if (redisReaderGetReply(c->reader, &rep) != REDIS_OK)
		return -EPROTO;
	*ret = rep;
	return 0;
}

/* One read(2) of what @c has received, fed to its reader; returns the
 * bytes read, 0 if none were there, or -errno. */
static int read_some(redisContext *c)
{
	char buf[READ_CHUNK];
	ssize_t n;

	do
		n = read(c->fd, buf, sizeof(buf));
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EAGAIN ? 0 : -errno;
	if (n == 0)
		return -ECONNRESET;
	if (redisReaderFeed(c->reader, buf, (size_t)n) != REDIS_OK)
		return -ENOMEM;
	return (int)n;
}

/* Reads the PUBLISH replies that are there, without waiting. */
static int read_replies(struct bt_conn *c)
{
	redisReply *rep;
	int r;

	r = read_some(c->pc);
	if (r <= 0)
		return r;
	for (;;) {
		bool bad;

		r = next_reply(c->pc, &rep);
		if (r < 0)
			return r;
		if (!rep)
			return 0;
		bad = rep->type != REDIS_REPLY_INTEGER;
		freeReplyObject(rep);
		if (c->outstanding > 0)
			c->outstanding--;
		if (bad)
			return -EPROTO;
	}
}

/* Writes the publish connection's output buffer out by @deadline, reading
 * replies meanwhile. */
static int write_out(struct bt_conn *c, int64_t deadline)
{
	for (;;) {
		int done, r;

		if (redisBufferWrite(c->pc, &done) != REDIS_OK)
			return ctx_error(c->pc);
		if (done) {
			c->unwritten = 0;
			return 0;
		}
		r = bt_wait_fd(c->pc->fd, POLLOUT | POLLIN,
			       bt_left_ms(deadline));
		if (r < 0)
			return r;
		if (r == 0)
			return -ETIMEDOUT;
		if (r & POLLIN) {
			r = read_replies(c);
			if (r < 0)
				return r;
		}
	}
}

/* Reads replies until at most @max are outstanding, by @deadline. */
static int wait_replies(struct bt_conn *c, size_t max, int64_t deadline)
{
	int r = write_out(c, deadline);

	while (r >= 0 && c->outstanding > max) {
		r = bt_wait_fd(c->pc->fd, POLLIN, bt_left_ms(deadline));
		if (r == 0)
			return -ETIMEDOUT;
		if (r > 0)
			r = read_replies(c);
	}
	return r < 0 ? r : 0;
}

static int r_publish(struct bt_conn *c, const char *topic, const void *data,
		     size_t len)
{
	int r;

	if (!topic || (!data && len))
		return -EINVAL;
	if (!c->pc) {
		r = connect_nb(c->path, &c->pc);
		if (r < 0)
			return r;
	}
	if (redisAppendCommand(c->pc, "PUBLISH %s %b", topic, data, len) !=
	    REDIS_OK)
		return ctx_error(c->pc);
	c->outstanding++;
	if (++c->unwritten < WRITE_EVERY && sdslen(c->pc->obuf) < WRITE_AT)
		return 0;

	r = write_out(c, bt_now_ms() + BLOCK_MS);
	if (r < 0)
		return r;
	if (c->outstanding > MAX_OUTSTANDING)
		return wait_replies(c, MAX_OUTSTANDING / 2,
				    bt_now_ms() + BLOCK_MS);
	if (bt_wait_fd(c->pc->fd, POLLIN, 0) > 0)
		return read_replies(c);
	return 0;
}

static int r_flush(struct bt_conn *c, int timeout_ms)
{
	int r;

	if (!c->pc)
		return 0;
	r = write_out(c, bt_now_ms() + (timeout_ms > 0 ? timeout_ms : 0));
	if (r < 0)
		return r;
	if (bt_wait_fd(c->pc->fd, POLLIN, 0) > 0)
		return read_replies(c);
	return 0;
}

static bool is_message(const redisReply *rep)
{
	return rep->type == REDIS_REPLY_ARRAY && rep->elements == 3 &&
	       rep->element[0]->type == REDIS_REPLY_STRING &&
	       rep->element[1]->type == REDIS_REPLY_STRING &&
	       rep->element[2]->type == REDIS_REPLY_STRING &&
	       rep->element[0]->len == 7 &&
	       !memcmp(rep->element[0]->str, "message", 7);
}

static int push_pending(struct bt_conn *c, redisReply *rep)
{
	redisReply **p = bt_queue_room(c->pending, sizeof(*p), &c->pending_head,
				       c->npending, &c->pending_cap);

	if (!p)
		return -ENOMEM;
	c->pending = p;
	c->pending[c->pending_head + c->npending++] = rep;
	return 0;
}

static int r_subscribe(struct bt_conn *c, const char *topic, bt_recv_fn fn,
		       void *ud)
{
	struct rsub *s;
	int64_t deadline = bt_now_ms() + READY_MS;
	size_t len;
	int r;

	if (!topic || !fn)
		return -EINVAL;
	len = strlen(topic);
	if (!c->sc) {
		r = connect_nb(c->path, &c->sc);
		if (r < 0)
			return r;
	}
	s = realloc(c->subs, (c->nsubs + 1) * sizeof(*s));
	if (!s)
		return -ENOMEM;
	c->subs = s;
	s = &c->subs[c->nsubs];
	*s = (struct rsub){ .topic = strdup(topic),
			    .len = len,
			    .fn = fn,
			    .ud = ud };
	if (!s->topic)
		return -ENOMEM;

	if (redisAppendCommand(c->sc, "SUBSCRIBE %s", topic) != REDIS_OK) {
		r = ctx_error(c->sc);
		goto free_topic;
	}
	for (;;) {
		int done;

		if (redisBufferWrite(c->sc, &done) != REDIS_OK) {
			r = ctx_error(c->sc);
			goto free_topic;
		}
		if (done)
			break;
		r = bt_wait_fd(c->sc->fd, POLLOUT, bt_left_ms(deadline));
		if (r <= 0) {
			r = r < 0 ? r : -ETIMEDOUT;
			goto free_topic;
		}
	}

	/* Messages on earlier subscriptions may come first: kept for pump. */
	for (;;) {
		redisReply *rep;
		bool ok;

		r = next_reply(c->sc, &rep);
		if (r < 0)
			goto free_topic;
		if (!rep) {
			r = bt_wait_fd(c->sc->fd, POLLIN, bt_left_ms(deadline));
			if (r > 0)
				r = read_some(c->sc);
			else if (r == 0)
				r = -ETIMEDOUT;
			if (r < 0)
				goto free_topic;
			continue;
		}
		if (is_message(rep)) {
			r = push_pending(c, rep);
			if (r < 0) {
				freeReplyObject(rep);
				goto free_topic;
			}
			continue;
		}
		ok = rep->type == REDIS_REPLY_ARRAY && rep->elements == 3 &&
		     rep->element[0]->type == REDIS_REPLY_STRING &&
		     !strcmp(rep->element[0]->str, "subscribe") &&
		     rep->element[1]->type == REDIS_REPLY_STRING &&
		     rep->element[1]->len == len &&
		     !memcmp(rep->element[1]->str, topic, len);
		freeReplyObject(rep);
		if (!ok) {
			r = -EPROTO;
			goto free_topic;
		}
		break;
	}
	c->nsubs++;
	return 0;

free_topic:
	free(s->topic);
	return r;
}

static void dispatch(struct bt_conn *c, const redisReply *rep)
{
	const redisReply *ch = rep->element[1], *body = rep->element[2];

	/* By index: a callback may subscribe and so move c->subs. */
	for (size_t i = 0; i < c->nsubs; i++) {
		if (c->subs[i].len == ch->len &&
		    !memcmp(c->subs[i].topic, ch->str, ch->len))
			c->subs[i].fn(c->subs[i].ud, body->str, body->len);
	}
}

/* The next message in arrival order: those subscribe() put aside first. */
static int next_message(struct bt_conn *c, redisReply **ret)
{
	if (c->npending > 0) {
		*ret = c->pending[c->pending_head++];
		if (--c->npending == 0)
			c->pending_head = 0;
		return 0;
	}
	return next_reply(c->sc, ret);
}

static int r_pump(struct bt_conn *c, int timeout_ms)
{
	bool waited = false;
	int n = 0, r;

	if (!c->sc) {
		if (timeout_ms > 0)
			bt_sleep_ms(timeout_ms);
		return 0;
	}
	for (;;) {
		redisReply *rep;

		r = next_message(c, &rep);
		if (r < 0)
			return r;
		if (rep) {
			if (is_message(rep)) {
				dispatch(c, rep);
				n++;
			}
			freeReplyObject(rep);
			if (n >= PUMP_BATCH)
				return n;
			continue;
		}
		r = read_some(c->sc);
		if (r < 0)
			return r;
		if (r > 0)
			continue;
		if (n > 0 || waited || timeout_ms <= 0)
			return n;
		r = bt_wait_fd(c->sc->fd, POLLIN, timeout_ms);
		if (r <= 0)
			return r;
		waited = true;
	}
}

static void r_close(struct bt_conn *c)
{
	if (!c)
		return;
	if (c->pc) {
		/* Redis drops a client, and the commands it has not read yet,
		 * when writing a reply fails: wait for every reply so that
		 * what was published is not lost by closing. */
		(void)wait_replies(c, 0, bt_now_ms() + BLOCK_MS);
		redisFree(c->pc);
	}
	if (c->sc)
		redisFree(c->sc);
	for (size_t i = 0; i < c->npending; i++)
		freeReplyObject(c->pending[c->pending_head + i]);
	free(c->pending);
	for (size_t i = 0; i < c->nsubs; i++)
		free(c->subs[i].topic);
	free(c->subs);
	free(c);
}

const struct bt_transport bt_transport = {
	.name = "redis",
	.server_start = r_server_start,
	.server_stop = r_server_stop,
	.open = r_open,
	.subscribe = r_subscribe,
	.publish = r_publish,
	.flush = r_flush,
	.pump = r_pump,
	.close = r_close,
};

int main(int argc, char **argv)
{
	return bt_main(&bt_transport, argc, argv);
}
