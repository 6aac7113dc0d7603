/* SPDX-License-Identifier: MIT */
/*
 * The side-by-side benchmark driver: the same workloads, run the same way,
 * over every transport (bench/peers/t_<name>.c, see driver.h). Each
 * transport's executable bench_<name> is this file plus its t_<name>.c.
 *
 *   bench_<name> throughput [--size 100] [--seconds 3] [--inflight N]
 *   bench_<name> fanout [--subs 16] [--size 100] [--seconds 3] [--inflight N]
 *   bench_<name> fanin [--pubs 4] [--size 100] [--seconds 3] [--inflight N]
 *   bench_<name> rtt [--count 20000] [--warmup 1000] [--size 100]
 *   bench_<name> rss [--clients 100]
 *
 * The parent never connects to anything. It makes a private directory
 * under $TMPDIR, starts the transport's server, forks every client process
 * before any of them connects, then drives them over pipes, one text line
 * per command or report, so that each step begins only once the previous
 * one is in effect (every subscriber has subscribed before anything is
 * published). Every wait has a deadline; every process is reaped, killed by
 * its pid if it is late; the directory is removed.
 *
 * An event is a JSON string of exactly --size bytes: a quote, the
 * publisher's number (2 digits), its sequence number (12 digits), 'x'
 * padding, a quote. Subscribers check per publisher that the sequence only
 * ever grows by one: a gap counts as lost events, a duplicate or a step
 * back as an error, which fails the run.
 *
 * throughput (1 publisher, 1 subscriber), fanout (1 publisher, --subs
 * subscribers), fanin (--pubs publishers, 1 subscriber): the publishers
 * publish on topic "b" as fast as publish() accepts for --seconds, then
 * flush(). With --inflight N (0: no window; default max(1024, 64 MiB /
 * size)) a publisher waits while N of its events are not yet received by
 * every subscriber, which it reads from counters in a shared mapping made
 * before fork. Then each subscriber is told how many events to expect; it
 * gives up after 5 s without progress and counts the rest as lost. The
 * rate is what a subscriber received over the time from its first receive
 * to its last; for fanout, every delivery over the time from the first
 * receive in any subscriber to the last in any.
 *
 * rtt: A subscribes to "q", B to "p". A publishes a ping on "p"; B's
 * callback publishes it back on "q" and flushes; A's callback takes the
 * time and publishes the next ping right there, so no thread of ours sits
 * between two trips. A ping unanswered for 5 s is lost; A's main loop then
 * sends the next one.
 *
 * rss: the server's VmRSS before any client, then with --clients
 * connections open (up to 64 per client process), each subscribed to
 * "t<i>" and to "all".
 *
 * The last line is "RESULT <transport>-<workload> key=value ..." or
 * "SKIP <reason>", for bench/run.sh. Exit status: 0 if the workload ran
 * (lost events are reported, not a failure), 1 if it failed or events came
 * out of order, 2 for a usage error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "driver.h"

/* One command or report line, with its '\n'. */
#define LINE_CAP 4096
/* A child waits this long for its first command. */
#define CMD_MS 120000
/* Clients connect and subscribe within this. */
#define OPEN_MS 30000
/* A publisher's final flush. */
#define FLUSH_MS 60000
/* A subscriber gives up after this long without progress... */
#define STALL_MS 5000
/* ...or after this long draining in all. */
#define DRAIN_MS 120000
/* An unanswered ping is lost after this. */
#define PONG_MS 5000
/* Children exit within this after "quit", servers after SIGTERM. */
#define REAP_MS 10000
#define SERVER_MS 20000
/* How often a waiting client looks at its command pipe. */
#define TICK_MS 20

/* The event: "PPSSSSSSSSSSSSxx...x" with its quotes: 16 bytes at least. */
#define ID_DIGITS 2
#define SEQ_DIGITS 12
#define SEQ_AT (1 + ID_DIGITS)
#define MIN_SIZE (SEQ_AT + SEQ_DIGITS + 1)
#define MAX_SIZE (16u << 20)
#define DEFAULT_WINDOW_BYTES (64u << 20)

#define MAX_PUBS 99
#define MAX_SUBS 1000
#define MAX_CLIENTS 100000
#define CONNS_PER_PROC 64
#define MAX_TRIPS 10000000

static char prog[64] = "bench";
static volatile sig_atomic_t interrupted;

static int64_t now_ns(void)
{
	struct timespec ts;

	(void)clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Milliseconds from now to @deadline (ns), rounded up, 0 if past. */
static int ms_until(int64_t deadline)
{
	int64_t left = deadline - now_ns();

	if (left <= 0)
		return 0;
	left = (left + 999999) / 1000000;
	return left > INT_MAX ? INT_MAX : (int)left;
}

static int64_t after_ms(int64_t ms)
{
	return now_ns() + ms * 1000000;
}

/* ---- small helpers, shared with the transports (see driver.h) ---- */

int64_t bt_now_ms(void)
{
	struct timespec ts;

	(void)clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int bt_left_ms(int64_t deadline)
{
	int64_t d;

	if (deadline == INT64_MAX)
		return -1;
	d = deadline - bt_now_ms();
	if (d <= 0)
		return 0;
	return d > INT32_MAX ? INT32_MAX : (int)d;
}

void bt_sleep_ms(int ms)
{
	struct timespec ts = {
		.tv_sec = ms / 1000,
		.tv_nsec = (long)(ms % 1000) * 1000000,
	};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

int bt_wait_fd(int fd, short events, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = events };
	int r;

	do
		r = poll(&p, 1, timeout_ms);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	return r ? p.revents : 0;
}

int bt_write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

void *bt_queue_room(void *buf, size_t size, size_t *head, size_t n, size_t *cap)
{
	if (*head > 0 && *head + n == *cap) {
		memmove(buf, (char *)buf + *head * size, n * size);
		*head = 0;
	}
	if (*head + n == *cap) {
		size_t more = *cap ? 2 * *cap : 16;
		void *p = reallocarray(buf, more, size);

		if (!p)
			return NULL;
		buf = p;
		*cap = more;
	}
	return buf;
}

__attribute__((format(printf, 1, 2))) static void warn(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	(void)fprintf(stderr, "%s: ", prog);
	(void)vfprintf(stderr, fmt, ap);
	(void)fputc('\n', stderr);
	va_end(ap);
}

static void on_stop_signal(int sig)
{
	(void)sig;
	interrupted = 1;
}

/* ---- lines over pipes ---- */

/* A buffered reader of '\n'-terminated lines. */
struct lines {
	int fd;
	size_t len;
	char buf[LINE_CAP];
};

/*
 * The next line from @in, without its '\n', NUL-terminated in @out, within
 * @timeout_ms (< 0: no limit; 0: only if one is there). Returns its length,
 * or -ETIMEDOUT, -EPIPE (end of file), -EMSGSIZE, -EINTR (the parent got
 * SIGINT or SIGTERM) or another negative errno.
 */
static int get_line(struct lines *in, char *out, size_t cap, int64_t timeout_ms)
{
	int64_t deadline = timeout_ms < 0 ? INT64_MAX : after_ms(timeout_ms);

	for (;;) {
		char *nl = memchr(in->buf, '\n', in->len);
		struct pollfd pfd = { .fd = in->fd, .events = POLLIN };
		ssize_t got;
		int r;

		if (nl) {
			size_t n = (size_t)(nl - in->buf);

			if (n >= cap)
				return -EMSGSIZE;
			memcpy(out, in->buf, n);
			out[n] = '\0';
			in->len -= n + 1;
			memmove(in->buf, nl + 1, in->len);
			return (int)n;
		}
		if (in->len == sizeof(in->buf))
			return -EMSGSIZE;
		r = poll(&pfd, 1, timeout_ms < 0 ? -1 : ms_until(deadline));
		if (r < 0 && errno != EINTR)
			return -errno;
		if (interrupted)
			return -EINTR;
		if (r < 0)
			continue;
		if (r == 0) {
			if (now_ns() >= deadline)
				return -ETIMEDOUT;
			continue;
		}
		got = read(in->fd, in->buf + in->len,
			   sizeof(in->buf) - in->len);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return -errno;
		if (got == 0)
			return -EPIPE;
		in->len += (size_t)got;
	}
}

__attribute__((format(printf, 2, 3))) static int put_line(int fd,
							  const char *fmt, ...)
{
	char buf[LINE_CAP];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(buf) - 1)
		return -EMSGSIZE;
	buf[n++] = '\n';
	return bt_write_all(fd, buf, (size_t)n);
}

/* The value after " @key=" in @line, or NULL. */
static const char *kv(const char *line, const char *key)
{
	size_t n = strlen(key);

	for (const char *p = strstr(line, key); p; p = strstr(p + 1, key)) {
		if ((p == line || p[-1] == ' ') && p[n] == '=')
			return p + n + 1;
	}
	return NULL;
}

static uint64_t kv_u64(const char *line, const char *key)
{
	const char *v = kv(line, key);

	return v ? strtoull(v, NULL, 10) : 0;
}

static int64_t kv_i64(const char *line, const char *key)
{
	const char *v = kv(line, key);

	return v ? strtoll(v, NULL, 10) : 0;
}

/* ---- processes ---- */

/*
 * Wait until @pid exits or @deadline (ns) passes; then SIGKILL it. It is
 * reaped in every case. Returns its wait status, or -1 if it had to be
 * killed or could not be waited for.
 */
static int reap_by(pid_t pid, int64_t deadline, const char *what)
{
	int pfd = pidfd_open(pid, 0);
	int st = -1;

	for (;;) {
		pid_t p = waitpid(pid, &st, WNOHANG);

		if (p == pid)
			break;
		if (p < 0 && errno != EINTR) {
			st = -1;
			break;
		}
		if (p == 0 && now_ns() >= deadline) {
			warn("%s (pid %d) did not exit in time: killed", what,
			     (int)pid);
			(void)kill(pid, SIGKILL);
			while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
				;
			st = -1;
			break;
		}
		if (p == 0) {
			/* The pidfd turns readable when it exits; without
			 * one, look again every few milliseconds. */
			struct pollfd w = { .fd = pfd, .events = POLLIN };
			int ms = ms_until(deadline);

			if (pfd >= 0)
				(void)poll(&w, 1, ms);
			else
				(void)poll(NULL, 0, ms < 5 ? ms : 5);
		}
	}
	if (pfd >= 0)
		(void)close(pfd);
	return st;
}

/* Close every descriptor from 3 up except @keep_a and @keep_b (-1: none). */
static void close_others(int keep_a, int keep_b)
{
	int lo = keep_a < keep_b ? keep_a : keep_b;
	int hi = keep_a < keep_b ? keep_b : keep_a;
	unsigned from = 3;

	for (int i = 0; i < 2; i++) {
		int keep = i == 0 ? lo : hi;

		if (keep < (int)from)
			continue;
		if ((unsigned)keep > from)
			(void)close_range(from, (unsigned)keep - 1, 0);
		from = (unsigned)keep + 1;
	}
	(void)close_range(from, ~0u, 0);
}

/*
 * What every forked process does first: default stop signals, die with the
 * parent (and not start if it is already gone), a name for ps and perf,
 * none of the parent's other descriptors.
 */
static void child_setup(const char *name, pid_t parent, int keep_a, int keep_b)
{
	(void)signal(SIGINT, SIG_DFL);
	(void)signal(SIGTERM, SIG_DFL);
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
		_exit(1);
	(void)prctl(PR_SET_NAME, name);
	close_others(keep_a, keep_b);
}

pid_t bt_fork_server(const char *name, int (*fn)(void *arg, int ready_fd),
		     void *arg, int timeout_ms)
{
	struct lines in = { .fd = -1 };
	char line[LINE_CAP];
	pid_t parent = getpid(), pid;
	int p[2], r;

	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	(void)fflush(NULL);
	pid = fork();
	if (pid < 0) {
		r = -errno;
		(void)close(p[0]);
		(void)close(p[1]);
		return r;
	}
	if (pid == 0) {
		child_setup(name, parent, p[1], -1);
		r = fn(arg, p[1]);
		(void)fflush(NULL);
		_exit(r == 0 ? 0 : 1);
	}
	(void)close(p[1]);
	in.fd = p[0];
	r = get_line(&in, line, sizeof(line), timeout_ms);
	(void)close(p[0]);
	if (r >= 0 && !strcmp(line, "ready"))
		return pid;
	if (r >= 0)
		warn("%s: %s", name, line);
	else if (r == -EPIPE)
		warn("%s exited before it was ready", name);
	else
		warn("%s: no ready line: %s", name, strerror(-r));
	(void)bt_stop_server(pid, REAP_MS);
	return r == -ETIMEDOUT || r == -EINTR ? r : -EIO;
}

int bt_stop_server(pid_t pid, int timeout_ms)
{
	int st;

	if (pid <= 0)
		return 0;
	(void)kill(pid, SIGTERM);
	st = reap_by(pid, after_ms(timeout_ms), "server");
	return st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

/* ---- a run: its directory, server, children and shared counters ---- */

struct opts {
	const char *workload;
	size_t size;
	double seconds;
	uint64_t inflight;
	unsigned subs, pubs, clients;
	uint64_t count, warmup;
};

/* A client process as the parent sees it. */
struct proc {
	const char *role;
	unsigned idx;
	pid_t pid;
	int cmd;	  /* commands to it, -1 once closed */
	struct lines rep; /* its reports */
};

struct run {
	const struct bt_transport *t;
	struct opts o;
	struct bt_server srv;
	bool dir_made, srv_up;
	struct proc *procs;
	size_t nprocs, cap;
	/*
	 * Shared counters: for subscriber s and publisher p, 1 + the last
	 * sequence number s received from p, at next[s * stride + p]. Each
	 * subscriber's row starts on its own cache line.
	 */
	_Atomic uint64_t *next;
	size_t stride, map_len;
};

/* A client process's own end. */
struct kid {
	struct run *r;
	unsigned idx;
	struct lines cmd;
	int rep;
};

typedef int (*kid_fn)(struct kid *k);

static int rm_entry(const char *path, const struct stat *sb, int flag,
		    struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	if (remove(path) < 0 && errno != ENOENT)
		warn("cannot remove %s: %s", path, strerror(errno));
	return 0;
}

static int run_begin(struct run *r)
{
	const char *base = getenv("TMPDIR");
	int n;

	if (!base || !*base)
		base = "/tmp";
	n = snprintf(r->srv.dir, sizeof(r->srv.dir), "%s/bt-XXXXXX", base);
	if (n < 0 || (size_t)n >= sizeof(r->srv.dir)) {
		warn("TMPDIR too long: %s", base);
		return -ENAMETOOLONG;
	}
	if (!mkdtemp(r->srv.dir)) {
		n = -errno;
		warn("mkdtemp in %s: %s", base, strerror(-n));
		return n;
	}
	r->dir_made = true;
	r->cap = 8;
	r->procs = calloc(r->cap, sizeof(*r->procs));
	return r->procs ? 0 : -ENOMEM;
}

static int map_counters(struct run *r, unsigned subs, unsigned pubs)
{
	void *m;

	r->stride = (pubs + 7u) & ~7u;
	r->map_len = (size_t)subs * r->stride * sizeof(*r->next);
	m = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		r->map_len = 0;
		warn("mmap: %s", strerror(errno));
		return -ENOMEM;
	}
	r->next = m;
	for (size_t i = 0; i < (size_t)subs * r->stride; i++)
		atomic_init(&r->next[i], 0);
	return 0;
}

static _Atomic uint64_t *counter(const struct run *r, unsigned sub,
				 unsigned pub)
{
	return &r->next[(size_t)sub * r->stride + pub];
}

static int spawn(struct run *r, const char *role, unsigned idx, kid_fn fn)
{
	int down[2], up[2], e;
	pid_t parent = getpid(), pid;

	if (r->nprocs == r->cap) {
		struct proc *p = reallocarray(r->procs, r->cap * 2, sizeof(*p));

		if (!p)
			return -ENOMEM;
		r->procs = p;
		r->cap *= 2;
	}
	if (pipe2(down, O_CLOEXEC) < 0)
		return -errno;
	if (pipe2(up, O_CLOEXEC) < 0) {
		e = -errno;
		goto close_down;
	}
	(void)fflush(NULL);
	pid = fork();
	if (pid < 0) {
		e = -errno;
		(void)close(up[0]);
		(void)close(up[1]);
		goto close_down;
	}
	if (pid == 0) {
		struct kid k = { .r = r,
				 .idx = idx,
				 .cmd = { .fd = down[0] },
				 .rep = up[1] };
		char name[16];

		(void)snprintf(name, sizeof(name), "bt-%s%u", role, idx);
		child_setup(name, parent, down[0], up[1]);
		e = fn(&k);
		(void)fflush(NULL);
		_exit(e == 0 ? 0 : 1);
	}
	(void)close(down[0]);
	(void)close(up[1]);
	r->procs[r->nprocs++] = (struct proc){
		.role = role,
		.idx = idx,
		.pid = pid,
		.cmd = down[1],
		.rep = { .fd = up[0] },
	};
	return 0;

close_down:
	(void)close(down[0]);
	(void)close(down[1]);
	return e;
}

static int spawn_many(struct run *r, const char *role, unsigned n, kid_fn fn)
{
	for (unsigned i = 0; i < n; i++) {
		int e = spawn(r, role, i, fn);

		if (e < 0) {
			warn("fork %s %u: %s", role, i, strerror(-e));
			return e;
		}
	}
	return 0;
}

static int tell(struct proc *p, const char *cmd)
{
	int e = put_line(p->cmd, "%s", cmd);

	if (e < 0)
		warn("%s %u: cannot send %s: %s", p->role, p->idx, cmd,
		     strerror(-e));
	return e;
}

/* A report from @p starting with @want (a word), by @deadline (ns). */
static int hear(struct proc *p, const char *want, char *out, int64_t deadline)
{
	size_t n = strlen(want);
	int e = get_line(&p->rep, out, LINE_CAP, ms_until(deadline));

	if (e < 0) {
		warn("%s %u: no %s: %s", p->role, p->idx, want,
		     e == -EPIPE ? "it exited" : strerror(-e));
		return e;
	}
	/* Its first word is @want. */
	if (strcspn(out, " ") != n || strncmp(out, want, n) != 0) {
		warn("%s %u: %s", p->role, p->idx, out);
		return -EPROTO;
	}
	return 0;
}

/* Send @cmd to procs[from..to) and wait for each one's @want. */
static int step(struct run *r, size_t from, size_t to, const char *cmd,
		const char *want, int64_t timeout_ms)
{
	char line[LINE_CAP];
	int64_t deadline = after_ms(timeout_ms);

	for (size_t i = from; i < to; i++) {
		if (tell(&r->procs[i], cmd) < 0)
			return -EPIPE;
	}
	for (size_t i = from; i < to; i++) {
		if (hear(&r->procs[i], want, line, deadline) < 0)
			return -EPROTO;
	}
	return 0;
}

/*
 * Tell every child to quit (closing its pipe says so too, to one that is
 * not reading), reap them all within REAP_MS, stop the server, remove the
 * directory and the mapping. Returns 0 if every child exited with 0.
 */
static int run_end(struct run *r)
{
	int64_t deadline = after_ms(REAP_MS);
	int bad = 0;

	for (size_t i = 0; i < r->nprocs; i++) {
		struct proc *p = &r->procs[i];

		(void)put_line(p->cmd, "quit");
		(void)close(p->cmd);
		p->cmd = -1;
	}
	for (size_t i = 0; i < r->nprocs; i++) {
		struct proc *p = &r->procs[i];
		char what[48];
		int st;

		(void)snprintf(what, sizeof(what), "%s %u", p->role, p->idx);
		st = reap_by(p->pid, deadline, what);
		if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			if (st >= 0)
				warn("%s exited with status 0x%x", what, st);
			bad = -1;
		}
		(void)close(p->rep.fd);
	}
	free(r->procs);
	r->procs = NULL;
	r->nprocs = 0;
	if (r->srv_up)
		r->t->server_stop(&r->srv);
	r->srv_up = false;
	if (r->dir_made)
		(void)nftw(r->srv.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	r->dir_made = false;
	if (r->map_len)
		(void)munmap((void *)r->next, r->map_len);
	r->map_len = 0;
	return bad;
}

/* ---- pieces the clients share ---- */

__attribute__((format(printf, 2, 3))) static int kid_fail(struct kid *k,
							  const char *fmt, ...)
{
	char msg[LINE_CAP - 16];
	va_list ap;

	va_start(ap, fmt);
	(void)vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	(void)put_line(k->rep, "error %s", msg);
	return -1;
}

/* Wait for the command @want; 1 for "quit" or a closed pipe. */
static int expect(struct kid *k, const char *want, int64_t timeout_ms)
{
	char line[LINE_CAP];
	int e = get_line(&k->cmd, line, sizeof(line), timeout_ms);

	if (e == -EPIPE || (e >= 0 && !strcmp(line, "quit")))
		return 1;
	if (e < 0)
		return e;
	return strcmp(line, want) ? -EPROTO : 0;
}

static int connect_to(struct kid *k, struct bt_conn **ret)
{
	int e = k->r->t->open(&k->r->srv, ret);

	if (e < 0)
		return kid_fail(k, "open: %s", strerror(-e));
	return 0;
}

/* Write the 2-digit @id and the 12-digit @seq into event @ev. */
static void stamp(char *ev, unsigned id, uint64_t seq)
{
	ev[1] = (char)('0' + id / 10);
	ev[2] = (char)('0' + id % 10);
	for (int i = SEQ_DIGITS - 1; i >= 0; i--, seq /= 10)
		ev[SEQ_AT + i] = (char)('0' + seq % 10);
}

/* The next sequence number in place: no division per event. */
static void bump(char *ev)
{
	for (char *d = ev + SEQ_AT + SEQ_DIGITS - 1; d >= ev + SEQ_AT; d--) {
		if (*d != '9') {
			(*d)++;
			return;
		}
		*d = '0';
	}
}

static char *new_event(size_t size, unsigned id)
{
	char *ev = malloc(size);

	if (!ev)
		return NULL;
	memset(ev, 'x', size);
	ev[0] = '"';
	ev[size - 1] = '"';
	stamp(ev, id, 0);
	return ev;
}

/* Publisher id and sequence number of an event of @size bytes. */
static bool parse_event(const void *data, size_t len, size_t size,
			unsigned *ret_id, uint64_t *ret_seq)
{
	const unsigned char *p = data;
	uint64_t seq = 0;

	if (!p || len != size || p[0] != '"' || p[len - 1] != '"')
		return false;
	for (size_t i = 1; i < SEQ_AT + SEQ_DIGITS; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		if (i >= SEQ_AT)
			seq = seq * 10 + (uint64_t)(p[i] - '0');
	}
	*ret_id = (unsigned)(p[1] - '0') * 10 + (unsigned)(p[2] - '0');
	*ret_seq = seq;
	return true;
}

/* ---- throughput, fanout, fanin ---- */

/* A subscriber's state; its callback is the only writer until close(). */
struct sub_state {
	const struct run *r;
	unsigned me;
	uint64_t next[MAX_PUBS]; /* 1 + the last sequence seen, per publisher */
	uint64_t good[MAX_PUBS]; /* events in order (after any gap) */
	uint64_t n;		 /* every event */
	uint64_t n_timed;	 /* events up to the last clock reading */
	uint64_t dup, bad;
	int64_t first_ns, last_ns;
};

static void on_stream_event(void *ud, const void *data, size_t len)
{
	struct sub_state *s = ud;
	unsigned id;
	uint64_t seq;

	/*
	 * The clock costs as much as a good part of the rest: read it for the
	 * first event and every 16th, and count the rate over the events up
	 * to the last reading.
	 */
	if ((s->n & 15) == 0) {
		s->last_ns = now_ns();
		if (s->n == 0)
			s->first_ns = s->last_ns;
		s->n_timed = s->n + 1;
	}
	s->n++;
	if (!parse_event(data, len, s->r->o.size, &id, &seq) ||
	    id >= s->r->o.pubs) {
		s->bad++;
		return;
	}
	if (seq < s->next[id]) {
		s->dup++;
		return;
	}
	s->good[id]++;
	s->next[id] = seq + 1;
	atomic_store_explicit(counter(s->r, s->me, id), seq + 1,
			      memory_order_release);
}

/* Whether the "drain" line @line is complete; fills @want per publisher. */
static bool parse_drain(const char *line, unsigned pubs, uint64_t *want)
{
	const char *p = line + strlen("drain");

	for (unsigned i = 0; i < pubs; i++) {
		char *end;

		if (*p != ' ')
			return false;
		errno = 0;
		want[i] = strtoull(p + 1, &end, 10);
		if (errno || end == p + 1)
			return false;
		p = end;
	}
	return *p == '\0';
}

static int sub_main(struct kid *k)
{
	const struct bt_transport *t = k->r->t;
	unsigned pubs = k->r->o.pubs;
	uint64_t want[MAX_PUBS], sum = 0, lost = 0, extra = 0;
	int64_t drain_start = 0, progress = 0;
	struct sub_state *s = calloc(1, sizeof(*s));
	struct bt_conn *c = NULL;
	bool draining = false, done = false, stalled = false;
	int e, pump_err = 0;

	if (!s)
		return kid_fail(k, "out of memory");
	s->r = k->r;
	s->me = k->idx;
	e = expect(k, "open", CMD_MS);
	if (e != 0)
		goto free_state;
	e = connect_to(k, &c);
	if (e < 0)
		goto free_state;
	e = t->subscribe(c, "b", on_stream_event, s);
	if (e < 0) {
		e = kid_fail(k, "subscribe: %s", strerror(-e));
		goto close_conn;
	}
	(void)put_line(k->rep, "ready");

	while (!done) {
		char line[LINE_CAP];
		uint64_t now_sum = 0;
		bool all = true;

		if (!pump_err) {
			e = t->pump(c, TICK_MS);
			if (e < 0)
				pump_err = e;
		}
		e = get_line(&k->cmd, line, sizeof(line),
			     pump_err ? TICK_MS : 0);
		if (e == -EPIPE || (e >= 0 && !strcmp(line, "quit")))
			goto close_conn; /* the parent gave up: no result */
		if (e >= 0 && !draining) {
			if (strncmp(line, "drain", 5) ||
			    !parse_drain(line, pubs, want)) {
				e = kid_fail(k, "bad command: %s", line);
				goto close_conn;
			}
			draining = true;
			drain_start = progress = now_ns();
		} else if (e >= 0) {
			e = kid_fail(k, "unexpected command: %s", line);
			goto close_conn;
		} else if (e != -ETIMEDOUT) {
			e = kid_fail(k, "command pipe: %s", strerror(-e));
			goto close_conn;
		}
		if (!draining)
			continue;
		for (unsigned i = 0; i < pubs; i++) {
			uint64_t v = atomic_load_explicit(
				counter(k->r, k->idx, i), memory_order_acquire);

			now_sum += v;
			if (v < want[i])
				all = false;
		}
		if (now_sum != sum)
			progress = now_ns();
		sum = now_sum;
		if (all || pump_err)
			done = true;
		else if (now_ns() - progress > (int64_t)STALL_MS * 1000000 ||
			 now_ns() - drain_start > (int64_t)DRAIN_MS * 1000000)
			done = stalled = true;
	}
	/* After close() no callback runs: s is ours alone. */
	t->close(c);
	c = NULL;
	for (unsigned i = 0; i < pubs; i++) {
		if (s->good[i] <= want[i])
			lost += want[i] - s->good[i];
		else
			extra += s->good[i] - want[i];
	}
	(void)put_line(k->rep,
		       "result lost=%" PRIu64 " errors=%" PRIu64 " n=%" PRIu64
		       " n_timed=%" PRIu64 " first_ns=%" PRId64
		       " last_ns=%" PRId64 " stalled=%d pump=%d",
		       lost, s->dup + s->bad + extra, s->n, s->n_timed,
		       s->first_ns, s->last_ns, stalled, pump_err);
	e = expect(k, "quit", REAP_MS) == 1 ? 0 : -1;
close_conn:
	if (c)
		t->close(c);
free_state:
	free(s);
	return e < 0 ? -1 : 0;
}

/*
 * Wait until fewer than @limit of @pub's events up to @seq are unreceived
 * by some subscriber, or until @stop (ns). Updates *low, the least counter.
 * Returns false if @stop came first.
 */
static bool wait_window(const struct run *r, unsigned pub, uint64_t seq,
			uint64_t limit, uint64_t *low, int64_t stop)
{
	for (unsigned spins = 0;; spins++) {
		uint64_t least = UINT64_MAX;

		for (unsigned s = 0; s < r->o.subs; s++) {
			uint64_t v = atomic_load_explicit(counter(r, s, pub),
							  memory_order_acquire);

			if (v < least)
				least = v;
		}
		*low = least;
		if (seq - least < limit)
			return true;
		if (now_ns() >= stop)
			return false;
		/* Two cores for many threads: yield, then step aside. */
		if (spins < 64)
			(void)sched_yield();
		else
			(void)usleep(50);
	}
}

static int pub_main(struct kid *k)
{
	const struct bt_transport *t = k->r->t;
	const struct opts *o = &k->r->o;
	uint64_t seq = 0, low = 0;
	int64_t start, stop, end;
	struct bt_conn *c = NULL;
	char *ev = new_event(o->size, k->idx);
	int e, err = 0, flushed;

	if (!ev)
		return kid_fail(k, "out of memory");
	e = expect(k, "open", CMD_MS);
	if (e != 0)
		goto free_ev;
	e = connect_to(k, &c);
	if (e < 0)
		goto free_ev;
	(void)put_line(k->rep, "ready");
	e = expect(k, "go", CMD_MS);
	if (e != 0)
		goto close_conn;

	start = now_ns();
	stop = start + (int64_t)(o->seconds * 1e9);
	for (;;) {
		/* The clock is cheap, not free: look every 64 events. */
		if ((seq & 63) == 0 && now_ns() >= stop)
			break;
		if (o->inflight && seq - low >= o->inflight &&
		    !wait_window(k->r, k->idx, seq, o->inflight, &low, stop))
			break;
		err = t->publish(c, "b", ev, o->size);
		if (err < 0)
			break;
		seq++;
		bump(ev);
	}
	end = now_ns();
	flushed = t->flush(c, FLUSH_MS);
	(void)put_line(k->rep,
		       "done published=%" PRIu64
		       " error=%d flush=%d pub_ns=%" PRId64,
		       seq, err, flushed, end - start);
	e = expect(k, "quit", DRAIN_MS + REAP_MS) == 1 ? 0 : -1;
close_conn:
	if (c)
		t->close(c);
free_ev:
	free(ev);
	return e < 0 ? -1 : 0;
}

static int run_stream(struct run *r, char *res, size_t cap)
{
	const struct opts *o = &r->o;
	const char *w = o->workload;
	uint64_t published[MAX_PUBS], total = 0, lost = 0, errors = 0;
	uint64_t timed = 0;
	int64_t first = INT64_MAX, last = INT64_MIN;
	size_t subs_at = r->nprocs, pubs_at, end;
	char line[LINE_CAP], cmd[LINE_CAP];
	bool failed = false;
	double rate, span;
	int n;

	if (map_counters(r, o->subs, o->pubs) < 0 ||
	    spawn_many(r, "sub", o->subs, sub_main) < 0)
		return -1;
	pubs_at = r->nprocs;
	if (spawn_many(r, "pub", o->pubs, pub_main) < 0)
		return -1;
	end = r->nprocs;

	/* Subscribed, then connected, then go. */
	if (step(r, subs_at, pubs_at, "open", "ready", OPEN_MS) < 0 ||
	    step(r, pubs_at, end, "open", "ready", OPEN_MS) < 0)
		return -1;
	for (size_t i = pubs_at; i < end; i++) {
		if (tell(&r->procs[i], "go") < 0)
			return -1;
	}
	n = snprintf(cmd, sizeof(cmd), "drain");
	for (size_t i = pubs_at; i < end; i++) {
		int64_t deadline = after_ms((int64_t)(o->seconds * 1000) +
					    FLUSH_MS + OPEN_MS);
		int err, fl;

		if (hear(&r->procs[i], "done", line, deadline) < 0)
			return -1;
		published[i - pubs_at] = kv_u64(line, "published");
		total += published[i - pubs_at];
		err = (int)kv_i64(line, "error");
		fl = (int)kv_i64(line, "flush");
		if (err < 0) {
			warn("pub %zu: publish failed: %s", i - pubs_at,
			     strerror(-err));
			failed = true;
		}
		if (fl < 0)
			warn("pub %zu: flush: %s", i - pubs_at, strerror(-fl));
		n += snprintf(cmd + n, sizeof(cmd) - (size_t)n, " %" PRIu64,
			      published[i - pubs_at]);
	}
	for (size_t i = subs_at; i < pubs_at; i++) {
		if (tell(&r->procs[i], cmd) < 0)
			return -1;
	}
	for (size_t i = subs_at; i < pubs_at; i++) {
		int64_t deadline = after_ms(DRAIN_MS + OPEN_MS);
		uint64_t sl, se;

		if (hear(&r->procs[i], "result", line, deadline) < 0)
			return -1;
		sl = kv_u64(line, "lost");
		se = kv_u64(line, "errors");
		lost += sl;
		errors += se;
		if (kv_i64(line, "pump"))
			warn("sub %zu: pump: %s", i - subs_at,
			     strerror((int)-kv_i64(line, "pump")));
		if (kv_i64(line, "stalled"))
			warn("sub %zu: gave up waiting (%d s without "
			     "progress, or %d s in all), %" PRIu64
			     " events missing",
			     i - subs_at, STALL_MS / 1000, DRAIN_MS / 1000, sl);
		if (se)
			warn("sub %zu: %" PRIu64 " events duplicated, out of "
			     "order or malformed",
			     i - subs_at, se);
		if (!kv_u64(line, "n"))
			continue;
		timed += kv_u64(line, "n_timed");
		if (kv_i64(line, "first_ns") < first)
			first = kv_i64(line, "first_ns");
		if (kv_i64(line, "last_ns") > last)
			last = kv_i64(line, "last_ns");
	}
	span = timed > 1 && last > first ? (double)(last - first) / 1e9 : 0;
	rate = span > 0 ? (double)(timed - 1) / span : 0;

	printf("%s %s: %u publisher%s -> server -> %u subscriber%s, "
	       "%zu-byte events, %.1f s, window %" PRIu64 "\n",
	       r->t->name, w, o->pubs, o->pubs > 1 ? "s" : "", o->subs,
	       o->subs > 1 ? "s" : "", o->size, o->seconds, o->inflight);
	printf("  published %" PRIu64 ", received in %.3f s, lost %" PRIu64
	       ", errors %" PRIu64 "\n",
	       total, span, lost, errors);
	if (!strcmp(w, "fanout"))
		n = snprintf(res, cap,
			     "RESULT %s-fanout size=%zu subs=%u "
			     "deliveries_per_s=%.0f events_per_s=%.0f "
			     "lost=%" PRIu64 " published=%" PRIu64,
			     r->t->name, o->size, o->subs, rate, rate / o->subs,
			     lost, total);
	else if (!strcmp(w, "fanin"))
		n = snprintf(res, cap,
			     "RESULT %s-fanin size=%zu pubs=%u "
			     "events_per_s=%.0f lost=%" PRIu64
			     " published=%" PRIu64,
			     r->t->name, o->size, o->pubs, rate, lost, total);
	else
		n = snprintf(res, cap,
			     "RESULT %s-throughput size=%zu events_per_s=%.0f "
			     "lost=%" PRIu64 " published=%" PRIu64,
			     r->t->name, o->size, rate, lost, total);
	if (errors && n > 0 && (size_t)n < cap)
		(void)snprintf(res + n, cap - (size_t)n, " errors=%" PRIu64,
			       errors);
	return failed || errors ? -1 : 0;
}

/* ---- rtt ---- */

/* A's state, shared by its main thread and its callback (maybe another). */
struct ping_state {
	const struct bt_transport *t;
	struct bt_conn *c;
	size_t size;
	uint64_t total, warmup;
	char *cb_ev; /* the callback's ping */
	pthread_mutex_t lock;
	/* Under lock: */
	uint64_t want; /* the ping awaited; total once all are done */
	int64_t sent_ns;
	int64_t *trips;
	size_t n;
	uint64_t lost, stale, bad, failed;
};

/* Claim the next ping under the lock: its number, or UINT64_MAX if none. */
static uint64_t next_ping(struct ping_state *ps, char *ev)
{
	ps->want++;
	if (ps->want >= ps->total)
		return UINT64_MAX;
	stamp(ev, 0, ps->want);
	ps->sent_ns = now_ns();
	return ps->want;
}

static void send_ping(struct ping_state *ps, const char *ev)
{
	int e = ps->t->publish(ps->c, "p", ev, ps->size);

	if (e == 0)
		e = ps->t->flush(ps->c, 1000);
	if (e < 0) {
		/* Unanswered now: the main loop counts it lost in time. */
		pthread_mutex_lock(&ps->lock);
		ps->failed++;
		pthread_mutex_unlock(&ps->lock);
	}
}

static void on_pong(void *ud, const void *data, size_t len)
{
	int64_t t = now_ns(); /* receipt: before anything else */
	struct ping_state *ps = ud;
	unsigned id;
	uint64_t seq, send;

	pthread_mutex_lock(&ps->lock);
	if (!parse_event(data, len, ps->size, &id, &seq) || id != 0) {
		ps->bad++;
		pthread_mutex_unlock(&ps->lock);
		return;
	}
	if (seq != ps->want) {
		ps->stale++; /* the answer to a ping already counted lost */
		pthread_mutex_unlock(&ps->lock);
		return;
	}
	if (seq >= ps->warmup)
		ps->trips[ps->n++] = t - ps->sent_ns;
	send = next_ping(ps, ps->cb_ev);
	pthread_mutex_unlock(&ps->lock);
	if (send != UINT64_MAX)
		send_ping(ps, ps->cb_ev);
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

/* Nearest rank: the smallest value with at least @pct % at or below it. */
static int64_t rank(const int64_t *sorted, size_t n, unsigned pct)
{
	size_t k = ((size_t)pct * n + 99) / 100;

	if (n == 0)
		return 0;
	return sorted[k ? k - 1 : 0];
}

static int ping_main(struct kid *k)
{
	const struct opts *o = &k->r->o;
	struct ping_state ps = {
		.t = k->r->t,
		.size = o->size,
		.total = o->warmup + o->count,
		.warmup = o->warmup,
		.want = UINT64_MAX,
	};
	char *ev = new_event(o->size, 0);
	int64_t sum = 0, deadline;
	uint64_t send;
	int e;

	ps.cb_ev = new_event(o->size, 0);
	ps.trips = calloc(o->count, sizeof(*ps.trips));
	if (!ev || !ps.cb_ev || !ps.trips) {
		e = kid_fail(k, "out of memory");
		goto free_bufs;
	}
	e = pthread_mutex_init(&ps.lock, NULL);
	if (e) {
		e = kid_fail(k, "pthread_mutex_init: %s", strerror(e));
		goto free_bufs;
	}
	e = expect(k, "open", CMD_MS);
	if (e != 0)
		goto destroy_lock;
	e = connect_to(k, &ps.c);
	if (e < 0)
		goto destroy_lock;
	e = ps.t->subscribe(ps.c, "q", on_pong, &ps);
	if (e < 0) {
		e = kid_fail(k, "subscribe: %s", strerror(-e));
		goto close_conn;
	}
	(void)put_line(k->rep, "ready");
	e = expect(k, "go", CMD_MS);
	if (e != 0)
		goto close_conn;

	/* Every trip ends within PONG_MS, answered or not. */
	deadline = after_ms((int64_t)ps.total * PONG_MS + PONG_MS);
	pthread_mutex_lock(&ps.lock);
	ps.want = UINT64_MAX; /* + 1 = 0 */
	send = next_ping(&ps, ev);
	pthread_mutex_unlock(&ps.lock);
	if (send != UINT64_MAX)
		send_ping(&ps, ev);
	for (;;) {
		char line[LINE_CAP];
		bool over;

		e = ps.t->pump(ps.c, 10);
		if (e < 0) {
			e = kid_fail(k, "pump: %s", strerror(-e));
			goto close_conn;
		}
		e = get_line(&k->cmd, line, sizeof(line), 0);
		if (e != -ETIMEDOUT)
			goto close_conn; /* quit, or the parent is gone */
		send = UINT64_MAX;
		pthread_mutex_lock(&ps.lock);
		over = ps.want >= ps.total;
		if (!over &&
		    now_ns() - ps.sent_ns > (int64_t)PONG_MS * 1000000) {
			ps.lost++;
			send = next_ping(&ps, ev);
			over = send == UINT64_MAX;
		}
		pthread_mutex_unlock(&ps.lock);
		if (over)
			break;
		if (send != UINT64_MAX)
			send_ping(&ps, ev);
		if (now_ns() > deadline) {
			e = kid_fail(k, "round trips did not end in time");
			goto close_conn;
		}
	}
	/* After close() no callback runs: ps is ours alone. */
	ps.t->close(ps.c);
	ps.c = NULL;
	qsort(ps.trips, ps.n, sizeof(*ps.trips), cmp_i64);
	for (size_t i = 0; i < ps.n; i++)
		sum += ps.trips[i];
	(void)put_line(k->rep,
		       "result n=%zu lost=%" PRIu64 " stale=%" PRIu64
		       " bad=%" PRIu64 " failed=%" PRIu64 " p50_ns=%" PRId64
		       " p99_ns=%" PRId64 " max_ns=%" PRId64
		       " mean_ns=%" PRId64,
		       ps.n, ps.lost, ps.stale, ps.bad, ps.failed,
		       rank(ps.trips, ps.n, 50), rank(ps.trips, ps.n, 99),
		       ps.n ? ps.trips[ps.n - 1] : 0,
		       ps.n ? sum / (int64_t)ps.n : 0);
	e = expect(k, "quit", REAP_MS) == 1 ? 0 : -1;
close_conn:
	if (ps.c)
		ps.t->close(ps.c);
destroy_lock:
	(void)pthread_mutex_destroy(&ps.lock);
free_bufs:
	free(ps.trips);
	free(ps.cb_ev);
	free(ev);
	return e < 0 ? -1 : 0;
}

/* B's state: its callback answers with the same payload. */
struct pong_state {
	const struct bt_transport *t;
	struct bt_conn *c;
	_Atomic uint64_t failed;
};

static void on_ping(void *ud, const void *data, size_t len)
{
	struct pong_state *ps = ud;
	int e = ps->t->publish(ps->c, "q", data, len);

	if (e == 0)
		e = ps->t->flush(ps->c, 1000);
	if (e < 0)
		atomic_fetch_add(&ps->failed, 1);
}

static int pong_main(struct kid *k)
{
	struct pong_state ps = { .t = k->r->t };
	int e;

	atomic_init(&ps.failed, 0);
	e = expect(k, "open", CMD_MS);
	if (e != 0)
		return e < 0 ? -1 : 0;
	e = connect_to(k, &ps.c);
	if (e < 0)
		return -1;
	e = ps.t->subscribe(ps.c, "p", on_ping, &ps);
	if (e < 0) {
		e = kid_fail(k, "subscribe: %s", strerror(-e));
		goto close_conn;
	}
	(void)put_line(k->rep, "ready");
	for (;;) {
		char line[LINE_CAP];

		e = ps.t->pump(ps.c, TICK_MS);
		if (e < 0) {
			e = kid_fail(k, "pump: %s", strerror(-e));
			break;
		}
		e = get_line(&k->cmd, line, sizeof(line), 0);
		if (e == -EPIPE || (e >= 0 && !strcmp(line, "quit"))) {
			e = 0;
			break;
		}
		if (e != -ETIMEDOUT) {
			e = kid_fail(k, "unexpected command");
			break;
		}
	}
close_conn:
	ps.t->close(ps.c);
	if (atomic_load(&ps.failed))
		warn("pong: %" PRIu64 " answers failed",
		     (uint64_t)atomic_load(&ps.failed));
	return e < 0 ? -1 : 0;
}

static int run_rtt(struct run *r, char *res, size_t cap)
{
	const struct opts *o = &r->o;
	char line[LINE_CAP];
	int64_t deadline;

	if (spawn(r, "ping", 0, ping_main) < 0 ||
	    spawn(r, "pong", 0, pong_main) < 0) {
		warn("fork: %s", strerror(errno));
		return -1;
	}
	if (step(r, 0, 1, "open", "ready", OPEN_MS) < 0 ||
	    step(r, 1, 2, "open", "ready", OPEN_MS) < 0 ||
	    tell(&r->procs[0], "go") < 0)
		return -1;
	deadline = after_ms((int64_t)(o->count + o->warmup + 1) * PONG_MS +
			    OPEN_MS);
	if (hear(&r->procs[0], "result", line, deadline) < 0)
		return -1;
	if (kv_u64(line, "bad"))
		warn("ping: %" PRIu64 " malformed answers",
		     kv_u64(line, "bad"));
	if (kv_u64(line, "failed"))
		warn("ping: %" PRIu64 " pings could not be sent",
		     kv_u64(line, "failed"));
	printf("%s rtt: client A -> server -> client B -> server -> A, "
	       "%zu-byte events, %" PRIu64 " trips after %" PRIu64 " warm-up\n",
	       r->t->name, o->size, o->count, o->warmup);
	printf("  p50 %.1f us, p99 %.1f us, max %.1f us, lost %" PRIu64
	       ", late answers %" PRIu64 "\n",
	       (double)kv_i64(line, "p50_ns") / 1e3,
	       (double)kv_i64(line, "p99_ns") / 1e3,
	       (double)kv_i64(line, "max_ns") / 1e3, kv_u64(line, "lost"),
	       kv_u64(line, "stale"));
	(void)snprintf(res, cap,
		       "RESULT %s-rtt size=%zu p50_us=%.1f p99_us=%.1f "
		       "mean_us=%.1f lost=%" PRIu64 " count=%" PRIu64,
		       r->t->name, o->size,
		       (double)kv_i64(line, "p50_ns") / 1e3,
		       (double)kv_i64(line, "p99_ns") / 1e3,
		       (double)kv_i64(line, "mean_ns") / 1e3,
		       kv_u64(line, "lost"), kv_u64(line, "n"));
	return kv_u64(line, "bad") ? -1 : 0;
}

/* ---- rss ---- */

static void on_idle_event(void *ud, const void *data, size_t len)
{
	(void)ud;
	(void)data;
	(void)len;
}

/* Process k->idx's share of the --clients connections: [*lo, *hi). */
static void share(const struct run *r, unsigned idx, unsigned *lo, unsigned *hi)
{
	unsigned procs = (r->o.clients + CONNS_PER_PROC - 1) / CONNS_PER_PROC;

	*lo = (unsigned)((uint64_t)r->o.clients * idx / procs);
	*hi = (unsigned)((uint64_t)r->o.clients * (idx + 1) / procs);
}

static int conns_main(struct kid *k)
{
	const struct bt_transport *t = k->r->t;
	struct bt_conn *cs[CONNS_PER_PROC] = { 0 };
	unsigned lo, hi, n = 0;
	int e;

	share(k->r, k->idx, &lo, &hi);
	e = expect(k, "open", CMD_MS);
	if (e != 0)
		return e < 0 ? -1 : 0;
	for (unsigned i = lo; i < hi; i++, n++) {
		char topic[24];

		e = t->open(&k->r->srv, &cs[n]);
		if (e < 0) {
			e = kid_fail(k, "open %u: %s", i, strerror(-e));
			goto close_all;
		}
		(void)snprintf(topic, sizeof(topic), "t%u", i);
		e = t->subscribe(cs[n], topic, on_idle_event, NULL);
		if (e == 0)
			e = t->subscribe(cs[n], "all", on_idle_event, NULL);
		if (e < 0) {
			n++;
			e = kid_fail(k, "subscribe %u: %s", i, strerror(-e));
			goto close_all;
		}
	}
	(void)put_line(k->rep, "ready");
	/* Some transports only keep a connection alive while pumped. */
	for (;;) {
		char line[LINE_CAP];

		for (unsigned i = 0; i < n; i++)
			(void)t->pump(cs[i], 0);
		e = get_line(&k->cmd, line, sizeof(line), 100);
		if (e == -EPIPE || (e >= 0 && !strcmp(line, "quit"))) {
			e = 0;
			break;
		}
		if (e != -ETIMEDOUT) {
			e = -1;
			break;
		}
	}
close_all:
	for (unsigned i = 0; i < n; i++) {
		if (cs[i])
			t->close(cs[i]);
	}
	return e < 0 ? -1 : 0;
}

/* VmRSS of @pid in KiB, or a negative errno. */
static long rss_kb(pid_t pid)
{
	char path[64], line[256];
	long kb = -ENOENT;
	FILE *f;

	(void)snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	}
	(void)fclose(f);
	return kb;
}

static int run_rss(struct run *r, char *res, size_t cap)
{
	unsigned procs = (r->o.clients + CONNS_PER_PROC - 1) / CONNS_PER_PROC;
	long idle, busy;

	if (r->srv.pid <= 0) {
		(void)snprintf(res, cap,
			       "SKIP %s: its server is not a process of ours, "
			       "no RSS to read",
			       r->t->name);
		return 0;
	}
	idle = rss_kb(r->srv.pid);
	if (idle < 0) {
		warn("VmRSS of %d: %s", (int)r->srv.pid, strerror((int)-idle));
		return -1;
	}
	if (spawn_many(r, "conns", procs, conns_main) < 0 ||
	    step(r, 0, procs, "open", "ready",
		 OPEN_MS + (int64_t)r->o.clients * 100) < 0)
		return -1;
	busy = rss_kb(r->srv.pid);
	if (busy < 0) {
		warn("VmRSS of %d: %s", (int)r->srv.pid, strerror((int)-busy));
		return -1;
	}
	printf("%s rss: server %ld KiB idle, %ld KiB with %u clients "
	       "(each subscribed to 2 topics) in %u processes\n",
	       r->t->name, idle, busy, r->o.clients, procs);
	(void)snprintf(res, cap,
		       "RESULT %s-rss server_rss_kb=%ld server_rss_idle_kb=%ld "
		       "clients=%u",
		       r->t->name, busy, idle, r->o.clients);
	return 0;
}

/* ---- the command line ---- */

enum {
	OPT_SIZE = 1u << 0,
	OPT_SECONDS = 1u << 1,
	OPT_INFLIGHT = 1u << 2,
	OPT_SUBS = 1u << 3,
	OPT_PUBS = 1u << 4,
	OPT_COUNT = 1u << 5,
	OPT_WARMUP = 1u << 6,
	OPT_CLIENTS = 1u << 7,
};

static const struct workload {
	const char *name;
	unsigned opts;
	int (*run)(struct run *r, char *res, size_t cap);
} workloads[] = {
	{ "throughput", OPT_SIZE | OPT_SECONDS | OPT_INFLIGHT, run_stream },
	{ "fanout", OPT_SUBS | OPT_SIZE | OPT_SECONDS | OPT_INFLIGHT,
	  run_stream },
	{ "fanin", OPT_PUBS | OPT_SIZE | OPT_SECONDS | OPT_INFLIGHT,
	  run_stream },
	{ "rtt", OPT_COUNT | OPT_WARMUP | OPT_SIZE, run_rtt },
	{ "rss", OPT_CLIENTS, run_rss },
};

static int usage(void)
{
	(void)fprintf(
		stderr,
		"usage: %s throughput [--size 100] [--seconds 3] [--inflight N]\n"
		"       %s fanout [--subs 16] [--size 100] [--seconds 3] "
		"[--inflight N]\n"
		"       %s fanin [--pubs 4] [--size 100] [--seconds 3] "
		"[--inflight N]\n"
		"       %s rtt [--count 20000] [--warmup 1000] [--size 100]\n"
		"       %s rss [--clients 100]\n"
		"--size is in bytes (%d..%u), --inflight 0 means no window "
		"(default max(1024, 64 MiB / size))\n",
		prog, prog, prog, prog, prog, MIN_SIZE, MAX_SIZE);
	return 2;
}

static bool num(const char *opt, const char *v, uint64_t min, uint64_t max,
		uint64_t *ret)
{
	unsigned long long x;
	char *end;

	errno = 0;
	x = v ? strtoull(v, &end, 10) : 0;
	if (!v || errno || end == v || *end || *v == '-' || x < min ||
	    x > max) {
		warn("%s: expected an integer in %" PRIu64 "..%" PRIu64
		     ", got %s",
		     opt, min, max, v ? v : "nothing");
		return false;
	}
	*ret = x;
	return true;
}

static bool parse_opt(struct opts *o, unsigned allowed, const char *opt,
		      const char *v, bool *inflight_set)
{
	static const struct {
		const char *name;
		unsigned bit;
		uint64_t min, max;
	} table[] = {
		{ "--size", OPT_SIZE, 1, MAX_SIZE },
		{ "--inflight", OPT_INFLIGHT, 0, UINT64_MAX / 2 },
		{ "--subs", OPT_SUBS, 1, MAX_SUBS },
		{ "--pubs", OPT_PUBS, 1, MAX_PUBS },
		{ "--count", OPT_COUNT, 1, MAX_TRIPS },
		{ "--warmup", OPT_WARMUP, 0, MAX_TRIPS },
		{ "--clients", OPT_CLIENTS, 1, MAX_CLIENTS },
	};
	uint64_t x;

	if (!strcmp(opt, "--seconds") && (allowed & OPT_SECONDS)) {
		char *end;

		errno = 0;
		o->seconds = v ? strtod(v, &end) : 0;
		if (!v || errno || end == v || *end || !(o->seconds > 0) ||
		    o->seconds > 3600) {
			warn("--seconds: expected 0 < S <= 3600, got %s",
			     v ? v : "nothing");
			return false;
		}
		return true;
	}
	for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
		if (strcmp(opt, table[i].name) || !(allowed & table[i].bit))
			continue;
		if (!num(opt, v, table[i].min, table[i].max, &x))
			return false;
		switch (table[i].bit) {
		case OPT_SIZE:
			if (x < MIN_SIZE) {
				warn("--size %" PRIu64 ": an event needs at "
				     "least %d bytes (quotes, 2-digit "
				     "publisher, 12-digit sequence number)",
				     x, MIN_SIZE);
				return false;
			}
			o->size = (size_t)x;
			break;
		case OPT_INFLIGHT:
			o->inflight = x;
			*inflight_set = true;
			break;
		case OPT_SUBS:
			o->subs = (unsigned)x;
			break;
		case OPT_PUBS:
			o->pubs = (unsigned)x;
			break;
		case OPT_COUNT:
			o->count = x;
			break;
		case OPT_WARMUP:
			o->warmup = x;
			break;
		default:
			o->clients = (unsigned)x;
			break;
		}
		return true;
	}
	warn("unknown option for %s: %s", o->workload, opt);
	return false;
}

static const struct workload *parse_args(int argc, char **argv, struct opts *o)
{
	const struct workload *w = NULL;
	bool inflight_set = false;

	for (size_t i = 0; argc > 1 && i < sizeof(workloads) / sizeof(*w);
	     i++) {
		if (!strcmp(argv[1], workloads[i].name))
			w = &workloads[i];
	}
	if (!w)
		return NULL;
	*o = (struct opts){
		.workload = w->name,
		.size = 100,
		.seconds = 3,
		.subs = 1,
		.pubs = 1,
		.clients = 100,
		.count = 20000,
		.warmup = 1000,
	};
	if (!strcmp(w->name, "fanout"))
		o->subs = 16;
	if (!strcmp(w->name, "fanin"))
		o->pubs = 4;
	for (int i = 2; i < argc; i += 2) {
		if (!parse_opt(o, w->opts, argv[i],
			       i + 1 < argc ? argv[i + 1] : NULL,
			       &inflight_set))
			return NULL;
	}
	if (!inflight_set) {
		o->inflight = DEFAULT_WINDOW_BYTES / o->size;
		if (o->inflight < 1024)
			o->inflight = 1024;
	}
	return w;
}

int bt_main(const struct bt_transport *t, int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_stop_signal };
	struct run r = { .t = t };
	const struct workload *w;
	const char *why = NULL;
	char res[LINE_CAP] = "";
	int e, bad;

	(void)snprintf(prog, sizeof(prog), "bench_%s", t->name);
	w = parse_args(argc, argv, &r.o);
	if (!w)
		return usage();
	r.o.workload = w->name;
	/* A child that died must not take the parent with it; a stop
	 * signal ends the run through the normal cleanup. */
	(void)signal(SIGPIPE, SIG_IGN);
	(void)sigemptyset(&sa.sa_mask);
	(void)sigaction(SIGINT, &sa, NULL);
	(void)sigaction(SIGTERM, &sa, NULL);

	e = run_begin(&r);
	if (e == 0) {
		e = t->server_start(&r.srv, &why);
		if (e == 1) {
			(void)snprintf(res, sizeof(res), "SKIP %s",
				       why ? why : "server unavailable");
			e = 0;
		} else if (e < 0) {
			warn("server_start: %s%s%s", strerror(-e),
			     why ? ": " : "", why ? why : "");
		} else {
			r.srv_up = true;
			e = w->run(&r, res, sizeof(res));
		}
	}
	bad = run_end(&r);
	if (interrupted)
		warn("interrupted");
	if (bad < 0 && e == 0)
		warn("a process did not end cleanly");
	if (res[0])
		printf("%s\n", res);
	(void)fflush(stdout);
	return e == 0 && bad == 0 && !interrupted ? 0 : 1;
}
