/* SPDX-License-Identifier: MIT */
/*
 * bench_pubsub - usps throughput, round-trip time and failover time
 * between processes.
 *
 *   bench_pubsub throughput [--size 100] [--seconds 3] [--inflight N]
 *   bench_pubsub rtt [--count 20000] [--warmup 1000]
 *   bench_pubsub failover [--trials 50] [--clients 4] [--interval-us 100]
 *
 * Each run forks its processes before anything opens the bus (the parent
 * never does), in a private mkdtemp directory: a broker that only routes,
 * and two clients (failover: --clients, afresh for every trial). The
 * parent drives them over pipes, one text line per command or report, so
 * that each step starts only once the previous one is in effect (the
 * subscriber is subscribed before anyone publishes), and reaps them all
 * with a deadline. The last line printed is "RESULT <bench> key=value ...",
 * for bench/run.sh.
 *
 * throughput: the publisher publishes events on topic "b" as fast as
 * usps_publish() accepts them for --seconds, then usps_flush()es. Each
 * event's data is a JSON string of exactly --size bytes that starts with
 * its sequence number; the subscriber checks that they arrive in order,
 * without gaps or duplicates, and the rate is its count over the time from
 * its first to its last receive. --inflight N (default 0: no limit) makes
 * the publisher wait while N events are published and not yet received.
 *
 * rtt: client A publishes "ping" on topic "p"; client B's handler answers
 * each with "pong" on topic "q" carrying the same data; A's handler takes
 * the time of receipt and publishes the next ping itself, so that a round
 * trip holds no wake-up of A's main thread. That thread only sends the
 * first ping and gives up on a trip unanswered for 5 s (counted as lost;
 * it then sends the next). Percentiles are over --count round trips after
 * --warmup unmeasured ones.
 *
 * failover: each of --trials trials starts a broker and --clients clients:
 * one publisher, which publishes "[seq,after]" on topic "f" every
 * --interval-us (paced, not flat out: two cores must keep up with it), and
 * subscribers to "f", whose handlers record every sequence number in
 * shared memory. Once every subscriber has received FO_WARM_EVENTS, the
 * parent reads CLOCK_MONOTONIC (T0; the same clock in every process of the
 * host), sends SIGKILL to the broker by pid and, as soon as kill() has
 * returned, sets a flag in shared memory; the publisher copies the flag
 * into @after of each event as it calls usps_publish(). Once kill() has
 * returned, each thread of the broker dies on its way out of the system
 * call it is in (or at once), so it cannot both read an "after" event and
 * write it out: such an event reaches a subscriber only through a new
 * broker.
 *
 *   failover time of a trial = max over the subscribers of (when its
 *   handler is entered for the first event with after = 1) - T0
 *
 * That is the time until delivery has resumed everywhere: the kernel's
 * tear-down of the killed broker, the election, the reconnections and
 * resubscriptions and one delivery. It overstates by at most one
 * --interval-us (the publisher's next pacing tick). A trial not complete
 * within FAILOVER_MS counts as timed out and as FAILOVER_MS. Then the
 * publisher publishes FO_DRAIN_EVENTS more, flushes and reports how many
 * usps_publish() calls returned 0 (sequence numbers 0..published-1); the
 * parent waits until every subscriber has the last one, or makes no
 * progress for STALL_MS. lost counts the sequence numbers published that
 * at least one subscriber never received: events that died in the
 * broker's buffers, or were published while a subscriber had not yet
 * resubscribed, are really lost and are reported as such (per trial:
 * which ones, and which subscriber missed how many). brokers_bad counts
 * the trials after which not exactly one survivor says usps_is_broker().
 * median_ms and p99_ms are nearest-rank over the trials.
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
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "usps.h"

/* How long the parent waits for a child to open and get ready. */
#define READY_MS 15000
/* Budget for flushing or draining after the timed part. */
#define DRAIN_MS 60000
/* The subscriber gives up draining after this long without progress. */
#define STALL_MS 5000
/* A round trip that takes longer than this counts as lost. */
#define PONG_MS 5000
/* Children that do not exit this long after "quit" are killed... */
#define REAP_MS 10000
/* ...but each has at least this long after its own "quit". */
#define QUIT_MS 2000

#define LINE_MAX_LEN 512

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *fmt, ...)
	__attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	(void)fputs("bench_pubsub: ", stderr);
	(void)vfprintf(stderr, fmt, ap);
	(void)fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

/* ---- what an interrupted run must not leave behind ---- */

/*
 * The private directory and the files usps makes in it, and the children
 * forked and not yet reaped (0: a free slot), for on_signal(): a run
 * stopped by SIGINT, SIGTERM (timeout(1)) or SIGHUP still leaves nothing.
 */
#define MAX_CHILDREN 32
static char dir[PATH_MAX];
static char sock_path[PATH_MAX], lock_path[PATH_MAX], elect_path[PATH_MAX];
static volatile sig_atomic_t have_dir;
static volatile sig_atomic_t live[MAX_CHILDREN];
static sigset_t fatal_set;

static void on_signal(int sig)
{
	for (size_t i = 0; i < MAX_CHILDREN; i++) {
		pid_t p = live[i];

		if (p <= 0)
			continue;
		(void)kill(p, SIGKILL);
		while (waitpid(p, NULL, 0) < 0 && errno == EINTR)
			;
	}
	if (have_dir) {
		(void)unlink(sock_path);
		(void)unlink(lock_path);
		(void)unlink(elect_path);
		(void)rmdir(dir);
	}
	/* SA_RESETHAND: the default action, once this returns. */
	(void)raise(sig);
}

static void catch_signals(void)
{
	static const int sigs[] = { SIGINT, SIGTERM, SIGHUP };
	struct sigaction sa = { .sa_handler = on_signal,
				.sa_flags = SA_RESETHAND };

	(void)sigemptyset(&fatal_set);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		(void)sigaddset(&fatal_set, sigs[i]);
	sa.sa_mask = fatal_set;
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
		if (sigaction(sigs[i], &sa, NULL) < 0)
			die("sigaction: %s", strerror(errno));
	}
}

/* Called with fatal_set blocked. */
static bool track(pid_t pid)
{
	for (size_t i = 0; i < MAX_CHILDREN; i++) {
		if (!live[i]) {
			live[i] = pid;
			return true;
		}
	}
	return false;
}

/* Called with fatal_set blocked. */
static void untrack(pid_t pid)
{
	for (size_t i = 0; i < MAX_CHILDREN; i++) {
		if (live[i] == pid)
			live[i] = 0;
	}
}

/* ---- pipes between the parent and its children ---- */

/*
 * One line from @fd within @timeout_ms, without its '\n', NUL-terminated.
 * Byte by byte, so that nothing after the line is consumed: the few lines
 * sent make this cheap. Returns the length, -EPIPE on end of file,
 * -ETIMEDOUT, -EMSGSIZE or another negative errno.
 */
static int read_line(int fd, char *buf, size_t cap, int timeout_ms)
{
	int64_t deadline = now_ns() + (int64_t)timeout_ms * 1000000;
	size_t n = 0;

	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		int64_t left = (deadline - now_ns()) / 1000000;
		ssize_t got;
		char c;
		int r;

		if (left < 0)
			return -ETIMEDOUT;
		r = poll(&pfd, 1, (int)(left > INT_MAX ? INT_MAX : left));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
		got = read(fd, &c, 1);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return -errno;
		if (got == 0)
			return -EPIPE;
		if (c == '\n') {
			buf[n] = '\0';
			return (int)n;
		}
		if (n + 1 >= cap)
			return -EMSGSIZE;
		buf[n++] = c;
	}
}

__attribute__((format(printf, 2, 3))) static int send_line(int fd,
							   const char *fmt, ...)
{
	char buf[LINE_MAX_LEN];
	size_t off = 0;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(buf) - 1)
		return -EMSGSIZE;
	buf[n++] = '\n';
	while (off < (size_t)n) {
		ssize_t w = write(fd, buf + off, (size_t)n - off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		off += (size_t)w;
	}
	return 0;
}

/* The value of " key=" in @line, or NULL. */
static const char *field(const char *line, const char *key)
{
	size_t n = strlen(key);

	for (const char *p = line; (p = strstr(p, key)); p += n) {
		if ((p == line || p[-1] == ' ') && p[n] == '=')
			return p + n + 1;
	}
	return NULL;
}

static uint64_t field_u64(const char *line, const char *key)
{
	const char *v = field(line, key);

	return v ? strtoull(v, NULL, 10) : 0;
}

static double field_f(const char *line, const char *key)
{
	const char *v = field(line, key);

	return v ? strtod(v, NULL) : 0.0;
}

/* A child process and the two pipes to it. */
struct child {
	const char *name;
	pid_t pid;
	int cmd; /* parent writes commands */
	int rep; /* parent reads reports */
	bool reaped;
	int status;
};

/* What a child runs: commands come on @cmd, reports go to @rep. */
typedef int (*child_fn)(int cmd, int rep, void *arg);

static int spawn(struct child *c, const char *name, child_fn fn, void *arg)
{
	int to_child[2], to_parent[2];
	pid_t ppid = getpid();
	sigset_t old;

	*c = (struct child){ .name = name, .pid = -1, .cmd = -1, .rep = -1 };
	if (pipe2(to_child, O_CLOEXEC) < 0)
		return -errno;
	if (pipe2(to_parent, O_CLOEXEC) < 0) {
		int e = -errno;

		close(to_child[0]);
		close(to_child[1]);
		return e;
	}
	/* Nothing buffered in stdio may be written twice. */
	(void)fflush(NULL);
	/* on_signal() must know every child, and a child must not run it. */
	(void)sigprocmask(SIG_BLOCK, &fatal_set, &old);
	c->pid = fork();
	if (c->pid > 0 && !track(c->pid)) {
		/* More children than slots: a bug here, not a failure. */
		(void)kill(c->pid, SIGKILL);
		(void)waitpid(c->pid, NULL, 0);
		c->pid = -1;
		errno = EMFILE;
	}
	if (c->pid < 0) {
		int e = -errno;

		(void)sigprocmask(SIG_SETMASK, &old, NULL);
		close(to_child[0]);
		close(to_child[1]);
		close(to_parent[0]);
		close(to_parent[1]);
		return e;
	}
	if (c->pid == 0) {
		(void)signal(SIGINT, SIG_DFL);
		(void)signal(SIGTERM, SIG_DFL);
		(void)signal(SIGHUP, SIG_DFL);
		(void)sigprocmask(SIG_SETMASK, &old, NULL);
		/* A child must not outlive a parent that was killed. */
		(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != ppid)
			_exit(1);
		/* Threads started later inherit the name: perf --sort comm. */
		(void)prctl(PR_SET_NAME, name);
		close(to_child[1]);
		close(to_parent[0]);
		int r = fn(to_child[0], to_parent[1], arg);

		(void)fflush(NULL);
		_exit(r == 0 ? 0 : 1);
	}
	(void)sigprocmask(SIG_SETMASK, &old, NULL);
	close(to_child[0]);
	close(to_parent[1]);
	c->cmd = to_child[1];
	c->rep = to_parent[0];
	return 0;
}

/* Send @cmd to @c and wait for a report line starting with @want. */
static int ask(struct child *c, const char *cmd, const char *want, char *out,
	       int timeout_ms)
{
	int r = send_line(c->cmd, "%s", cmd);

	if (r < 0) {
		(void)fprintf(stderr, "bench_pubsub: %s: send %s: %s\n",
			      c->name, cmd, strerror(-r));
		return r;
	}
	r = read_line(c->rep, out, LINE_MAX_LEN, timeout_ms);
	if (r < 0) {
		(void)fprintf(stderr, "bench_pubsub: %s: no answer to %s: %s\n",
			      c->name, cmd, strerror(-r));
		return r;
	}
	if (strncmp(out, want, strlen(want)) != 0) {
		(void)fprintf(stderr,
			      "bench_pubsub: %s: answered %s with: %s\n",
			      c->name, cmd, out);
		return -EPROTO;
	}
	return 0;
}

/*
 * waitpid() for @c, and forget it for on_signal() in the same breath: a
 * reaped pid may be reused at once, by a process we must not kill.
 */
static pid_t wait_child(struct child *c, int flags)
{
	sigset_t old;
	pid_t p;
	int e;

	(void)sigprocmask(SIG_BLOCK, &fatal_set, &old);
	do
		p = waitpid(c->pid, &c->status, flags);
	while (p < 0 && errno == EINTR);
	e = errno;
	if (p == c->pid || (p < 0 && e == ECHILD)) {
		untrack(c->pid);
		c->reaped = true;
	}
	(void)sigprocmask(SIG_SETMASK, &old, NULL);
	errno = e;
	return p;
}

/* Reap @c by its deadline, killing it by pid then. 0 if it exited 0. */
static int reap(struct child *c, int64_t deadline)
{
	for (;;) {
		/* A child that exited in time is not late, however late we
		 * look: a slow sibling may have used up the deadline. */
		pid_t p = wait_child(c, WNOHANG);

		if (p == c->pid || p < 0) {
			c->reaped = true;
			if (p == c->pid && WIFEXITED(c->status) &&
			    WEXITSTATUS(c->status) == 0)
				return 0;
			(void)fprintf(
				stderr,
				"bench_pubsub: %s exited badly (status 0x%x)\n",
				c->name, p == c->pid ? c->status : -1);
			return -1;
		}
		if (now_ns() > deadline) {
			(void)fprintf(stderr,
				      "bench_pubsub: %s (pid %d) did not exit: "
				      "killed\n",
				      c->name, (int)c->pid);
			(void)kill(c->pid, SIGKILL);
			(void)wait_child(c, 0);
			c->reaped = true;
			return -1;
		}
		(void)usleep(2000);
	}
}

/*
 * Tell the children to quit, last forked first so that the clients are
 * gone before the broker (no failover while shutting down), and reap each
 * within REAP_MS in all, though each gets at least QUIT_MS after its own
 * "quit" (a child that hung must not get its siblings killed). Closing a
 * command pipe says "quit" too, to a child that is not reading. Returns 0
 * if every child exited with 0.
 */
static int finish(struct child *cs, size_t n)
{
	const int64_t quit_ns = (int64_t)QUIT_MS * 1000000;
	int64_t deadline = now_ns() + (int64_t)REAP_MS * 1000000;
	int bad = 0;

	for (size_t i = n; i-- > 0;) {
		struct child *c = &cs[i];
		int64_t own;

		if (c->cmd >= 0) {
			(void)send_line(c->cmd, "quit");
			close(c->cmd);
			c->cmd = -1;
		}
		own = now_ns() + quit_ns;
		if (c->pid > 0 && !c->reaped &&
		    reap(c, deadline > own ? deadline : own) < 0)
			bad = -1;
		if (c->rep >= 0)
			close(c->rep);
		c->rep = -1;
	}
	return bad;
}

/* ---- the private directory ---- */

static int rm_cb(const char *path, const struct stat *sb, int flag,
		 struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	(void)remove(path);
	return 0;
}

/* @ret (PATH_MAX bytes) = dir/@name. */
static bool path_in_dir(char *ret, const char *name)
{
	int n = snprintf(ret, PATH_MAX, "%s/%s", dir, name);

	return n >= 0 && n < PATH_MAX;
}

static void make_dir(void)
{
	const char *base = getenv("TMPDIR");
	int n = snprintf(dir, sizeof(dir), "%s/usps-bench-XXXXXX",
			 base && *base ? base : "/tmp");

	if (n < 0 || (size_t)n >= sizeof(dir) || !mkdtemp(dir))
		die("mkdtemp in %s: %s", base && *base ? base : "/tmp",
		    strerror(errno));
	have_dir = 1;
	/* usps makes P, P.lock and Mastra's P.elect. */
	if (!path_in_dir(sock_path, "bus.sock") ||
	    !path_in_dir(lock_path, "bus.sock.lock") ||
	    !path_in_dir(elect_path, "bus.sock.elect")) {
		(void)rmdir(dir);
		die("socket path too long");
	}
}

static void remove_dir(void)
{
	(void)nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	have_dir = 0;
}

/* ---- pieces every child uses ---- */

/* Wait for the command @want (anything else, or EOF, is an error). */
static int expect_cmd(int cmd, const char *want, int timeout_ms)
{
	char line[LINE_MAX_LEN];
	int r = read_line(cmd, line, sizeof(line), timeout_ms);

	if (r < 0)
		return r;
	return strcmp(line, want) == 0 ? 0 : -EPROTO;
}

static int open_bus(usps **ps, int rep, bool want_broker)
{
	int r = usps_open(ps, sock_path, NULL);

	if (r < 0) {
		(void)send_line(rep, "error usps_open: %s", strerror(-r));
		return r;
	}
	if (usps_is_broker(*ps) != want_broker) {
		(void)send_line(rep, "error expected to be %s",
				want_broker ? "the broker" : "a client");
		usps_close(*ps);
		return -EPROTO;
	}
	return 0;
}

/* This process's CPU time (all threads) and context switches so far. */
static void usage_fields(char *buf, size_t cap)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru) < 0) {
		(void)snprintf(buf, cap, "cpu_ns=0 vcsw=0 ivcsw=0");
		return;
	}
	(void)snprintf(
		buf, cap, "cpu_ns=%lld vcsw=%ld ivcsw=%ld",
		((long long)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) *
				1000000000ll +
			((long long)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) *
				1000ll,
		ru.ru_nvcsw, ru.ru_nivcsw);
}

/*
 * Answer "stats" with usage_fields() and "status" with @ps's role until
 * "quit" or the end of @cmd. Returns 0 then, or a negative errno.
 */
static int serve(int cmd, int rep, usps *ps)
{
	char line[LINE_MAX_LEN], u[128];

	for (;;) {
		int r = read_line(cmd, line, sizeof(line), INT_MAX);

		if (r == -EPIPE || (r >= 0 && !strcmp(line, "quit")))
			return 0;
		if (r < 0 && r != -ETIMEDOUT)
			return r;
		if (r >= 0 && !strcmp(line, "stats")) {
			usage_fields(u, sizeof(u));
			(void)send_line(rep, "stats %s", u);
		} else if (r >= 0 && !strcmp(line, "status")) {
			(void)send_line(rep,
					"status broker=%d clients=%u "
					"broker_pid=%d",
					usps_is_broker(ps) ? 1 : 0,
					usps_remote_client_count(ps),
					usps_broker_pid(ps));
		}
	}
}

/* The broker: open first, route until told to quit. */
static int broker_main(int cmd, int rep, void *arg)
{
	usps *ps;
	int r;

	(void)arg;
	if (expect_cmd(cmd, "open", READY_MS) < 0)
		return 1;
	if (open_bus(&ps, rep, true) < 0)
		return 1;
	(void)send_line(rep, "ready pid=%d", (int)getpid());
	r = serve(cmd, rep, ps);
	usps_close(ps);
	return r == 0 ? 0 : 1;
}

/* ---- throughput ---- */

struct tput_opts {
	size_t size;
	double seconds;
	uint64_t inflight;
};

/* Shared by the publisher and subscriber (MAP_SHARED, set before fork). */
struct tput_shared {
	_Atomic uint64_t received;
};

static struct tput_shared *shm;

#define SEQ_DIGITS 16
/* The smallest event: quotes and the sequence number. */
#define MIN_SIZE (SEQ_DIGITS + 2)

/* The subscriber's state; its handler runs on the delivery thread. */
static struct {
	uint64_t count, expect, gaps, missing, behind, bad;
	int64_t first_ns, last_ns;
} sub;

/* Add one to the SEQ_DIGITS decimal digits at @p: no division per event. */
static void inc_seq(char *p)
{
	for (int i = SEQ_DIGITS - 1; i >= 0; i--) {
		if (p[i] != '9') {
			p[i]++;
			return;
		}
		p[i] = '0';
	}
}

static bool get_seq(const char *p, size_t n, uint64_t *ret)
{
	uint64_t v = 0;

	if (n < MIN_SIZE || p[0] != '"')
		return false;
	for (int i = 1; i <= SEQ_DIGITS; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(p[i] - '0');
	}
	*ret = v;
	return true;
}

static void on_bench_event(const usps_event *ev, usps_delivery *d, void *ud)
{
	uint64_t seq;

	(void)d;
	(void)ud;
	/*
	 * The clock costs as much as a tenth of this thread's time: read it
	 * for the first event and every 16th. The last reading is then at
	 * most 15 events early, which overstates the rate by 15/count.
	 */
	if (!sub.count)
		sub.first_ns = sub.last_ns = now_ns();
	else if (!(sub.count & 15))
		sub.last_ns = now_ns();
	sub.count++;
	if (!ev->data || !get_seq(ev->data, ev->data_len, &seq)) {
		sub.bad++;
	} else if (seq == sub.expect) {
		sub.expect++;
	} else if (seq > sub.expect) {
		sub.gaps++;
		sub.missing += seq - sub.expect;
		sub.expect = seq + 1;
	} else {
		sub.behind++; /* duplicate or out of order */
	}
	atomic_store_explicit(&shm->received, sub.count, memory_order_release);
}

static int subscriber_main(int cmd, int rep, void *arg)
{
	char line[LINE_MAX_LEN], u[128];
	usps_sub *s;
	usps *ps;
	uint64_t target, seen;
	int64_t start, last_progress;
	int r;

	(void)arg;
	if (expect_cmd(cmd, "open", READY_MS) < 0)
		return 1;
	if (open_bus(&ps, rep, false) < 0)
		return 1;
	r = usps_subscribe(ps, "b", NULL, on_bench_event, NULL, &s);
	if (r < 0) {
		(void)send_line(rep, "error usps_subscribe: %s", strerror(-r));
		goto fail;
	}
	(void)send_line(rep, "ready pid=%d", (int)getpid());

	r = read_line(cmd, line, sizeof(line), INT_MAX);
	if (r < 0 || strncmp(line, "drain ", 6) != 0)
		goto fail;
	target = strtoull(line + 6, NULL, 10);
	start = last_progress = now_ns();
	seen = atomic_load(&shm->received);
	while (seen < target) {
		int64_t t = now_ns();
		uint64_t got;

		if (t - start > (int64_t)DRAIN_MS * 1000000 ||
		    t - last_progress > (int64_t)STALL_MS * 1000000)
			break;
		(void)usleep(2000);
		got = atomic_load(&shm->received);
		if (got != seen)
			last_progress = now_ns();
		seen = got;
	}
	/* The handler is done with sub once the delivery queue is empty. */
	(void)usps_flush(ps, 1000);
	(void)usps_unsubscribe(ps, s);
	usage_fields(u, sizeof(u));
	(void)send_line(rep,
			"result received=%" PRIu64 " gaps=%" PRIu64
			" missing=%" PRIu64 " behind=%" PRIu64 " bad=%" PRIu64
			" span_ns=%" PRId64 " %s",
			sub.count, sub.gaps, sub.missing, sub.behind, sub.bad,
			sub.count ? sub.last_ns - sub.first_ns : 0, u);
	r = expect_cmd(cmd, "quit", REAP_MS);
	usps_close(ps);
	return r == 0 || r == -EPIPE ? 0 : 1;
fail:
	usps_close(ps);
	return 1;
}

/* Wait until fewer than @limit events published before @seq are unread. */
static void wait_inflight(uint64_t seq, uint64_t limit)
{
	for (unsigned spins = 0;
	     seq - atomic_load_explicit(&shm->received, memory_order_acquire) >=
	     limit;
	     spins++) {
		/* Two cores for six threads: do not hog one of them. */
		if (spins < 64)
			sched_yield();
		else
			(void)usleep(20);
	}
}

static int publisher_main(int cmd, int rep, void *arg)
{
	const struct tput_opts *o = arg;
	uint64_t seq = 0, failed = 0;
	int64_t start, end, stop, flush_ns;
	char *data, u[128];
	usps *ps;
	int r, first_err = 0;

	if (expect_cmd(cmd, "open", READY_MS) < 0)
		return 1;
	data = malloc(o->size);
	if (!data)
		return 1;
	/* "0000000000000042xxxx...x" with its quotes: o->size bytes. */
	memset(data, 'x', o->size);
	memset(data + 1, '0', SEQ_DIGITS);
	data[0] = '"';
	data[o->size - 1] = '"';
	if (open_bus(&ps, rep, false) < 0) {
		free(data);
		return 1;
	}
	(void)send_line(rep, "ready pid=%d", (int)getpid());
	if (expect_cmd(cmd, "go", READY_MS) < 0)
		goto fail;

	start = now_ns();
	stop = start + (int64_t)(o->seconds * 1e9);
	for (;;) {
		/* The clock is cheap (vDSO), but not free: look every 64. */
		if ((seq & 63) == 0 && now_ns() >= stop)
			break;
		if (o->inflight)
			wait_inflight(seq, o->inflight);
		r = usps_publish(ps, "b", "bench", data, o->size, 0);
		if (r < 0) {
			/* Nothing was queued: the sequence has no gap. */
			if (!first_err)
				first_err = r;
			if (++failed >= 1000)
				break;
			continue;
		}
		seq++;
		inc_seq(data + 1);
	}
	end = now_ns();
	r = usps_flush(ps, DRAIN_MS);
	flush_ns = now_ns() - end;
	usage_fields(u, sizeof(u));
	(void)send_line(rep,
			"done published=%" PRIu64 " failed=%" PRIu64
			" pub_ns=%" PRId64 " flush_ns=%" PRId64
			" flush=%d error=%d %s",
			seq, failed, end - start, flush_ns, r, first_err, u);
	r = expect_cmd(cmd, "quit", DRAIN_MS + REAP_MS);
	usps_close(ps);
	free(data);
	return r == 0 || r == -EPIPE ? 0 : 1;
fail:
	usps_close(ps);
	free(data);
	return 1;
}

static int run_throughput(const struct tput_opts *o)
{
	enum {
		BROKER,
		SUB,
		PUB,
		NCHILD
	};
	struct child cs[NCHILD] = { 0 };
	char line[LINE_MAX_LEN], done[LINE_MAX_LEN], bstats[LINE_MAX_LEN];
	uint64_t published, received, lost, failed;
	double span_s, rate, pub_rate;
	int r = -1;

	shm = mmap(NULL, sizeof(*shm), PROT_READ | PROT_WRITE,
		   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shm == MAP_FAILED)
		die("mmap: %s", strerror(errno));
	atomic_init(&shm->received, 0);
	make_dir();
	for (size_t i = 0; i < NCHILD; i++)
		cs[i].pid = -1;
	if (spawn(&cs[BROKER], "usps-broker", broker_main, NULL) < 0 ||
	    spawn(&cs[SUB], "usps-sub", subscriber_main, NULL) < 0 ||
	    spawn(&cs[PUB], "usps-pub", publisher_main, (void *)o) < 0) {
		(void)fprintf(stderr, "bench_pubsub: fork: %s\n",
			      strerror(errno));
		goto out;
	}
	/* In order: the broker owns the path, the subscription is in
	 * effect, the publisher is connected; then go. */
	if (ask(&cs[BROKER], "open", "ready", line, READY_MS) < 0 ||
	    ask(&cs[SUB], "open", "ready", line, READY_MS) < 0 ||
	    ask(&cs[PUB], "open", "ready", line, READY_MS) < 0)
		goto out;
	if (ask(&cs[PUB], "go", "done", done,
		(int)(o->seconds * 1000) + DRAIN_MS + READY_MS) < 0)
		goto out;
	published = field_u64(done, "published");
	failed = field_u64(done, "failed");
	(void)snprintf(line, sizeof(line), "drain %" PRIu64, published);
	if (ask(&cs[SUB], line, "result", line, DRAIN_MS + READY_MS) < 0 ||
	    ask(&cs[BROKER], "stats", "stats", bstats, READY_MS) < 0)
		goto out;
	r = 0;

	received = field_u64(line, "received");
	lost = published > received ? published - received : 0;
	span_s = field_f(line, "span_ns") / 1e9;
	rate = span_s > 0 ? (double)received / span_s : 0.0;
	pub_rate = field_f(done, "pub_ns") > 0
			   ? (double)published / (field_f(done, "pub_ns") / 1e9)
			   : 0.0;
	printf("throughput: %zu-byte events, %.1f s, inflight %s\n", o->size,
	       o->seconds, o->inflight ? "limited" : "unlimited");
	printf("  published %" PRIu64 " (%.0f/s accepted by usps_publish), "
	       "%" PRIu64 " failed (first error %s), flush %.1f ms (%s)\n",
	       published, pub_rate, failed,
	       field(done, "error") && atoi(field(done, "error"))
		       ? strerror(-atoi(field(done, "error")))
		       : "none",
	       field_f(done, "flush_ns") / 1e6,
	       field(done, "flush") && atoi(field(done, "flush"))
		       ? strerror(-atoi(field(done, "flush")))
		       : "ok");
	printf("  received  %" PRIu64 " in %.3f s: %.0f events/s, "
	       "%.1f MB/s of data\n",
	       received, span_s, rate, rate * (double)o->size / 1e6);
	printf("  lost %" PRIu64 ", gaps %" PRIu64 " (%" PRIu64
	       " missing), out of order/duplicate %" PRIu64
	       ", unparsable %" PRIu64 "\n",
	       lost, field_u64(line, "gaps"), field_u64(line, "missing"),
	       field_u64(line, "behind"), field_u64(line, "bad"));
	if (lost || field_u64(line, "gaps") || field_u64(line, "behind") ||
	    field_u64(line, "bad"))
		printf("  NOT LOSSLESS\n");
	if (received) {
		double ev = (double)received;
		double cb = field_f(bstats, "cpu_ns") / ev,
		       cp = field_f(done, "cpu_ns") / ev,
		       cs_ = field_f(line, "cpu_ns") / ev;

		printf("  cpu per event: broker %.0f ns, publisher %.0f ns, "
		       "subscriber %.0f ns, total %.0f ns\n",
		       cb, cp, cs_, cb + cp + cs_);
		printf("  context switches per 1000 events (voluntary+"
		       "involuntary): broker %.1f, publisher %.1f, "
		       "subscriber %.1f\n",
		       (field_f(bstats, "vcsw") + field_f(bstats, "ivcsw")) *
			       1000 / ev,
		       (field_f(done, "vcsw") + field_f(done, "ivcsw")) * 1000 /
			       ev,
		       (field_f(line, "vcsw") + field_f(line, "ivcsw")) * 1000 /
			       ev);
	}
	printf("RESULT throughput size=%zu seconds=%.1f inflight=%" PRIu64
	       " events_per_s=%.0f published=%" PRIu64 " received=%" PRIu64
	       " lost=%" PRIu64 " gaps=%" PRIu64 " disordered=%" PRIu64
	       " publish_per_s=%.0f failed=%" PRIu64 " cpu_ns_per_event=%.0f\n",
	       o->size, o->seconds, o->inflight, rate, published, received,
	       lost, field_u64(line, "gaps"), field_u64(line, "behind"),
	       pub_rate, failed,
	       received ? (field_f(bstats, "cpu_ns") + field_f(done, "cpu_ns") +
			   field_f(line, "cpu_ns")) /
				  (double)received
			: 0.0);
out:
	if (finish(cs, NCHILD) < 0)
		r = -1;
	remove_dir();
	(void)munmap(shm, sizeof(*shm));
	return r;
}

/* ---- round-trip time ---- */

struct rtt_opts {
	uint64_t count;
	uint64_t warmup;
};

/*
 * Client A's state. Its handler takes each pong's time and sends the next
 * ping itself, so that no thread wake-up is added to a round trip; the main
 * thread sends the first ping, gives up on a trip after PONG_MS, and waits
 * for the end. @lock guards everything below it; @cond is signalled once,
 * when the last trip is over.
 */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	usps *ps;
	uint64_t total, warmup;
	uint64_t next;	 /* the seq to send next */
	uint64_t want;	 /* the seq in flight, UINT64_MAX if none */
	int64_t sent_ns; /* when @want was published */
	int64_t *rtt;	 /* total - warmup slots */
	size_t n;
	uint64_t lost, failed;
	bool done;
} ping;

static bool data_seq(const usps_event *ev, uint64_t *ret)
{
	const char *p = ev->data ? memchr(ev->data, ':', ev->data_len) : NULL;

	if (!p)
		return false;
	*ret = strtoull(p + 1, NULL, 10);
	return true;
}

static struct timespec ns_to_ts(int64_t ns)
{
	return (struct timespec){ .tv_sec = (time_t)(ns / 1000000000),
				  .tv_nsec = (long)(ns % 1000000000) };
}

/*
 * Publish the next ping, skipping those usps_publish() refuses (counted as
 * failed), or mark the run done. Called with ping.lock held, from the
 * handler or from the main thread; only the main thread waits on the lock,
 * and only when a trip timed out.
 */
static void send_next_ping(void)
{
	while (ping.next < ping.total) {
		uint64_t seq = ping.next++;
		char data[64];
		int len = snprintf(data, sizeof(data), "{\"seq\":%" PRIu64 "}",
				   seq);

		ping.want = seq;
		ping.sent_ns = now_ns();
		if (usps_publish(ping.ps, "p", "ping", data, (size_t)len, 0) ==
		    0)
			return;
		ping.failed++;
	}
	ping.want = UINT64_MAX;
	ping.done = true;
	(void)pthread_cond_signal(&ping.cond);
}

static void on_pong(const usps_event *ev, usps_delivery *d, void *ud)
{
	int64_t t = now_ns(); /* receipt: before any locking */
	uint64_t seq;

	(void)d;
	(void)ud;
	if (!data_seq(ev, &seq))
		return;
	(void)pthread_mutex_lock(&ping.lock);
	/* A pong after its trip was given up on is not this trip's. */
	if (seq == ping.want) {
		if (seq >= ping.warmup)
			ping.rtt[ping.n++] = t - ping.sent_ns;
		send_next_ping();
	}
	(void)pthread_mutex_unlock(&ping.lock);
}

/* Client B: answer each ping with a pong carrying the same data. */
static void on_ping(const usps_event *ev, usps_delivery *d, void *ud)
{
	usps *ps = ud;

	(void)d;
	if (ev->data)
		(void)usps_publish(ps, "q", "pong", ev->data, ev->data_len, 0);
}

static int ponger_main(int cmd, int rep, void *arg)
{
	usps_sub *s;
	usps *ps;
	int r;

	(void)arg;
	if (expect_cmd(cmd, "open", READY_MS) < 0)
		return 1;
	if (open_bus(&ps, rep, false) < 0)
		return 1;
	r = usps_subscribe(ps, "p", NULL, on_ping, ps, &s);
	if (r < 0) {
		(void)send_line(rep, "error usps_subscribe: %s", strerror(-r));
		usps_close(ps);
		return 1;
	}
	(void)send_line(rep, "ready pid=%d", (int)getpid());
	r = serve(cmd, rep, ps);
	(void)usps_unsubscribe(ps, s);
	usps_close(ps);
	return r == 0 ? 0 : 1;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted @v[0..n). */
static int64_t pct(const int64_t *v, size_t n, double p)
{
	size_t rank = (size_t)(p / 100.0 * (double)n + 0.999999);

	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return v[rank - 1];
}

static int pinger_main(int cmd, int rep, void *arg)
{
	const struct rtt_opts *o = arg;
	const int64_t pong_ns = (int64_t)PONG_MS * 1000000;
	pthread_condattr_t ca;
	int64_t sum = 0;
	char u[128];
	usps_sub *s;
	usps *ps;
	int r;

	if (expect_cmd(cmd, "open", READY_MS) < 0)
		return 1;
	ping.total = o->warmup + o->count;
	ping.warmup = o->warmup;
	ping.want = UINT64_MAX;
	ping.rtt = calloc(o->count ? o->count : 1, sizeof(*ping.rtt));
	if (!ping.rtt)
		return 1;
	if (pthread_mutex_init(&ping.lock, NULL) != 0)
		goto fail_free;
	if (pthread_condattr_init(&ca) != 0)
		goto fail_mutex;
	/* Deadlines are on the clock now_ns() reads. */
	r = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	if (r == 0)
		r = pthread_cond_init(&ping.cond, &ca);
	(void)pthread_condattr_destroy(&ca);
	if (r != 0)
		goto fail_mutex;
	if (open_bus(&ps, rep, false) < 0)
		goto fail_cond;
	ping.ps = ps;
	r = usps_subscribe(ps, "q", NULL, on_pong, NULL, &s);
	if (r < 0) {
		(void)send_line(rep, "error usps_subscribe: %s", strerror(-r));
		goto fail_close;
	}
	(void)send_line(rep, "ready pid=%d", (int)getpid());
	if (expect_cmd(cmd, "go", READY_MS) < 0)
		goto fail_close;

	(void)pthread_mutex_lock(&ping.lock);
	send_next_ping();
	while (!ping.done) {
		struct timespec dl = ns_to_ts(ping.sent_ns + pong_ns);

		/* Woken only at the end or when a trip may have timed out. */
		(void)pthread_cond_timedwait(&ping.cond, &ping.lock, &dl);
		if (!ping.done && now_ns() - ping.sent_ns >= pong_ns) {
			ping.lost++;
			send_next_ping();
		}
	}
	(void)pthread_mutex_unlock(&ping.lock);
	/* When it returns, on_pong() is over and will not run again. */
	(void)usps_unsubscribe(ps, s);

	usage_fields(u, sizeof(u));
	qsort(ping.rtt, ping.n, sizeof(*ping.rtt), cmp_i64);
	for (size_t i = 0; i < ping.n; i++)
		sum += ping.rtt[i];
	{
		const int64_t *v = ping.rtt;
		size_t n = ping.n;

		(void)send_line(rep,
				"result n=%zu lost=%" PRIu64 " failed=%" PRIu64
				" p50_ns=%" PRId64 " p90_ns=%" PRId64
				" p99_ns=%" PRId64 " p999_ns=%" PRId64
				" min_ns=%" PRId64 " max_ns=%" PRId64
				" mean_ns=%.0f %s",
				n, ping.lost, ping.failed,
				n ? pct(v, n, 50) : 0, n ? pct(v, n, 90) : 0,
				n ? pct(v, n, 99) : 0, n ? pct(v, n, 99.9) : 0,
				n ? v[0] : 0, n ? v[n - 1] : 0,
				n ? (double)sum / (double)n : 0.0, u);
	}
	r = expect_cmd(cmd, "quit", REAP_MS);
	(void)usps_close(ps);
	(void)pthread_cond_destroy(&ping.cond);
	(void)pthread_mutex_destroy(&ping.lock);
	free(ping.rtt);
	return r == 0 || r == -EPIPE ? 0 : 1;
fail_close:
	(void)usps_close(ps);
fail_cond:
	(void)pthread_cond_destroy(&ping.cond);
fail_mutex:
	(void)pthread_mutex_destroy(&ping.lock);
fail_free:
	free(ping.rtt);
	return 1;
}

static int run_rtt(const struct rtt_opts *o)
{
	enum {
		BROKER,
		PONG,
		PING,
		NCHILD
	};
	struct child cs[NCHILD] = { 0 };
	char line[LINE_MAX_LEN], bstats[LINE_MAX_LEN], pstats[LINE_MAX_LEN];
	double trips, budget_ms;
	int r = -1;

	make_dir();
	for (size_t i = 0; i < NCHILD; i++)
		cs[i].pid = -1;
	if (spawn(&cs[BROKER], "usps-broker", broker_main, NULL) < 0 ||
	    spawn(&cs[PONG], "usps-pong", ponger_main, NULL) < 0 ||
	    spawn(&cs[PING], "usps-ping", pinger_main, (void *)o) < 0) {
		(void)fprintf(stderr, "bench_pubsub: fork: %s\n",
			      strerror(errno));
		goto out;
	}
	if (ask(&cs[BROKER], "open", "ready", line, READY_MS) < 0 ||
	    ask(&cs[PONG], "open", "ready", line, READY_MS) < 0 ||
	    ask(&cs[PING], "open", "ready", line, READY_MS) < 0)
		goto out;
	/* Bounded: every round trip ends within PONG_MS (INT_MAX ms is
	 * 24 days, longer than any run). */
	budget_ms = ((double)o->count + (double)o->warmup) * PONG_MS + READY_MS;
	if (ask(&cs[PING], "go", "result", line,
		budget_ms < INT_MAX ? (int)budget_ms : INT_MAX) < 0 ||
	    ask(&cs[BROKER], "stats", "stats", bstats, READY_MS) < 0 ||
	    ask(&cs[PONG], "stats", "stats", pstats, READY_MS) < 0)
		goto out;
	r = 0;
	printf("rtt: %" PRIu64 " round trips (after %" PRIu64
	       " warm-up), client -> broker -> client -> broker -> client\n",
	       field_u64(line, "n"), o->warmup);
	printf("  p50 %.1f us, p90 %.1f us, p99 %.1f us, p99.9 %.1f us, "
	       "mean %.1f us, min %.1f us, max %.1f us\n",
	       field_f(line, "p50_ns") / 1e3, field_f(line, "p90_ns") / 1e3,
	       field_f(line, "p99_ns") / 1e3, field_f(line, "p999_ns") / 1e3,
	       field_f(line, "mean_ns") / 1e3, field_f(line, "min_ns") / 1e3,
	       field_f(line, "max_ns") / 1e3);
	printf("  lost %" PRIu64 ", publish failures %" PRIu64 "\n",
	       field_u64(line, "lost"), field_u64(line, "failed"));
	/* Warm-up included: the counters cover the whole run. */
	trips = (double)(o->count + o->warmup);
	printf("  per round trip: cpu broker %.1f us, ping %.1f us, "
	       "pong %.1f us; context switches broker %.1f, ping %.1f, "
	       "pong %.1f\n",
	       field_f(bstats, "cpu_ns") / trips / 1e3,
	       field_f(line, "cpu_ns") / trips / 1e3,
	       field_f(pstats, "cpu_ns") / trips / 1e3,
	       (field_f(bstats, "vcsw") + field_f(bstats, "ivcsw")) / trips,
	       (field_f(line, "vcsw") + field_f(line, "ivcsw")) / trips,
	       (field_f(pstats, "vcsw") + field_f(pstats, "ivcsw")) / trips);
	printf("RESULT rtt count=%" PRIu64 " p50_us=%.1f p90_us=%.1f "
	       "p99_us=%.1f mean_us=%.1f max_us=%.1f lost=%" PRIu64
	       " cpu_us_per_trip=%.1f csw_per_trip=%.1f\n",
	       field_u64(line, "n"), field_f(line, "p50_ns") / 1e3,
	       field_f(line, "p90_ns") / 1e3, field_f(line, "p99_ns") / 1e3,
	       field_f(line, "mean_ns") / 1e3, field_f(line, "max_ns") / 1e3,
	       field_u64(line, "lost"),
	       (field_f(bstats, "cpu_ns") + field_f(line, "cpu_ns") +
		field_f(pstats, "cpu_ns")) /
		       trips / 1e3,
	       (field_f(bstats, "vcsw") + field_f(bstats, "ivcsw") +
		field_f(line, "vcsw") + field_f(line, "ivcsw") +
		field_f(pstats, "vcsw") + field_f(pstats, "ivcsw")) /
		       trips);
out:
	if (finish(cs, NCHILD) < 0)
		r = -1;
	remove_dir();
	return r;
}

/* ---- failover ---- */

struct fo_opts {
	unsigned trials;
	unsigned clients; /* one publisher, the others subscribers */
	unsigned interval_us;
};

#define FO_MAX_CLIENTS 16
#define FO_MAX_SUBS (FO_MAX_CLIENTS - 1)
/* Sequence numbers per trial: 21 s of publishing at the fastest pace. */
#define FO_MAX_SEQ (1u << 20)
/* Every subscriber receives this many before the broker is killed. */
#define FO_WARM_EVENTS 200
/* Published after the failover, before the losses are counted. */
#define FO_DRAIN_EVENTS 200
/* A failover not complete by then is given up on (counted as timed out). */
#define FAILOVER_MS 10000
/* How often the parent looks at the subscribers' progress. */
#define FO_POLL_US 500

/* One subscriber's view of a trial; its handler is the only writer. */
struct fo_sub {
	_Atomic uint64_t count; /* deliveries, duplicates included */
	_Atomic uint64_t dups;
	_Atomic uint64_t bad; /* unparsable or out of range */
	/* When the first event marked "after" was received, 0 if not yet. */
	_Atomic int64_t first_after_ns;
	_Atomic uint64_t got[FO_MAX_SEQ / 64]; /* bit per sequence number */
};

/* Shared by the parent and every child of a trial (MAP_SHARED). */
struct fo_shared {
	/* Set by the parent as soon as kill() has returned: from then on
	 * the publisher marks its events "after". */
	_Atomic int killed;
	struct fo_sub sub[FO_MAX_SUBS];
};

static struct fo_shared *fo;

/* The data "[seq,after]": a JSON array of two numbers. */
static bool fo_parse(const usps_event *ev, uint64_t *ret_seq, bool *ret_after)
{
	const char *p = ev->data, *end = p ? p + ev->data_len : NULL;
	char *e;

	if (!p || ev->data_len < 5 || p[0] != '[' || p[1] < '0' || p[1] > '9')
		return false;
	*ret_seq = strtoull(p + 1, &e, 10);
	if (e + 2 > end || e[0] != ',')
		return false;
	*ret_after = e[1] == '1';
	return true;
}

static void on_fo_event(const usps_event *ev, usps_delivery *d, void *ud)
{
	int64_t t = now_ns(); /* receipt: first */
	struct fo_sub *s = ud;
	uint64_t seq, bit;
	bool after;

	(void)d;
	atomic_fetch_add_explicit(&s->count, 1, memory_order_relaxed);
	if (!fo_parse(ev, &seq, &after) || seq >= FO_MAX_SEQ) {
		atomic_fetch_add_explicit(&s->bad, 1, memory_order_relaxed);
		return;
	}
	bit = 1ull << (seq & 63);
	if (atomic_fetch_or_explicit(&s->got[seq / 64], bit,
				     memory_order_release) &
	    bit)
		atomic_fetch_add_explicit(&s->dups, 1, memory_order_relaxed);
	if (after &&
	    !atomic_load_explicit(&s->first_after_ns, memory_order_relaxed))
		atomic_store_explicit(&s->first_after_ns, t,
				      memory_order_release);
}

/* A subscriber: subscribe to "f", then answer "status" until "quit". */
static int fo_sub_main(int cmd, int rep, void *arg)
{
	usps_sub *s;
	usps *ps;
	int r;

	if (expect_cmd(cmd, "open", READY_MS) < 0)
		return 1;
	if (open_bus(&ps, rep, false) < 0)
		return 1;
	r = usps_subscribe(ps, "f", NULL, on_fo_event, arg, &s);
	if (r < 0) {
		(void)send_line(rep, "error usps_subscribe: %s", strerror(-r));
		(void)usps_close(ps);
		return 1;
	}
	(void)send_line(rep, "ready pid=%d", (int)getpid());
	r = serve(cmd, rep, ps);
	(void)usps_unsubscribe(ps, s);
	(void)usps_close(ps);
	return r == 0 ? 0 : 1;
}

/*
 * The publisher. On "go", publish "[seq,after]" on topic "f" every
 * --interval-us until "stop", then FO_DRAIN_EVENTS more at the same pace,
 * flush and report "done"; then answer "status" until "quit". @after is
 * fo->killed when usps_publish() is called. A refused publish does not use
 * up its sequence number, so the numbers published are 0..published-1.
 */
static int fo_pub_main(int cmd, int rep, void *arg)
{
	const struct fo_opts *o = arg;
	const int64_t interval = (int64_t)o->interval_us * 1000;
	uint64_t seq = 0, failed = 0, stop_at = UINT64_MAX;
	uint64_t first_after = UINT64_MAX;
	char line[LINE_MAX_LEN], data[64];
	bool stopping = false;
	int r, first_err = 0;
	int64_t next;
	usps *ps;

	if (expect_cmd(cmd, "open", READY_MS) < 0)
		return 1;
	if (open_bus(&ps, rep, false) < 0)
		return 1;
	(void)send_line(rep, "ready pid=%d", (int)getpid());
	if (expect_cmd(cmd, "go", READY_MS) < 0)
		goto fail;
	/* Pace to the microsecond rather than the default 50 us slack. */
	(void)prctl(PR_SET_TIMERSLACK, 1000UL);
	(void)send_line(rep, "going");

	next = now_ns();
	for (;;) {
		struct pollfd pfd = { .fd = cmd, .events = POLLIN };
		int64_t t = now_ns();
		bool full = seq >= FO_MAX_SEQ;
		struct timespec ts;
		int after, len;

		if (stopping && (seq >= stop_at || full))
			break;
		/* The pace (out of numbers: a wait for "stop"), listening
		 * for "stop" meanwhile. */
		ts = ns_to_ts(full ? (int64_t)READY_MS * 1000000
				   : (next > t ? next - t : 0));
		r = ppoll(&pfd, stopping ? 0 : 1, &ts, NULL);
		if (r < 0 && errno != EINTR)
			goto fail;
		if (r != 0) {
			if (r < 0)
				continue;
			r = read_line(cmd, line, sizeof(line), READY_MS);
			/* The parent gave up on the trial. */
			if (r == -EPIPE || (r >= 0 && !strcmp(line, "quit")))
				goto quit;
			if (r < 0 || strcmp(line, "stop") != 0)
				goto fail;
			stopping = true;
			stop_at = seq + FO_DRAIN_EVENTS;
			continue;
		}
		if (full)
			continue;
		/* A publish that blocked makes us late: no burst after it. */
		t = now_ns();
		next = (t - next >= interval ? t : next) + interval;
		after = atomic_load_explicit(&fo->killed, memory_order_acquire);
		len = snprintf(data, sizeof(data), "[%" PRIu64 ",%d]", seq,
			       after ? 1 : 0);
		r = usps_publish(ps, "f", "seq", data, (size_t)len, 0);
		if (r < 0) {
			if (!first_err)
				first_err = r;
			failed++;
			continue;
		}
		if (after && first_after == UINT64_MAX)
			first_after = seq;
		seq++;
	}
	r = usps_flush(ps, DRAIN_MS);
	(void)send_line(rep,
			"done published=%" PRIu64 " failed=%" PRIu64
			" first_after=%" PRIu64 " flush=%d error=%d",
			seq, failed,
			first_after == UINT64_MAX ? seq : first_after, r,
			first_err);
	r = serve(cmd, rep, ps);
	(void)usps_close(ps);
	return r == 0 ? 0 : 1;
quit:
	(void)usps_close(ps);
	return 0;
fail:
	(void)usps_close(ps);
	return 1;
}

/* What one trial found. */
struct fo_trial {
	int64_t failover_ns; /* FAILOVER_MS when timed out */
	int64_t gone_ns;     /* from T0 until the broker's exit was seen */
	bool timed_out;
	unsigned brokers; /* survivors that say they are broker */
	uint64_t published, failed, lost, lost_before, dups, bad;
};

/* Whether subscriber @i has received @seq (< FO_MAX_SEQ). */
static bool fo_has(unsigned i, uint64_t seq)
{
	uint64_t w = atomic_load_explicit(&fo->sub[i].got[seq / 64],
					  memory_order_acquire);

	return w & (1ull << (seq & 63));
}

/* Whether every subscriber has received @seq. */
static bool fo_all_got(unsigned nsub, uint64_t seq)
{
	for (unsigned i = 0; i < nsub; i++) {
		if (!fo_has(i, seq))
			return false;
	}
	return true;
}

/* Every subscriber's deliveries so far, summed: progress. */
static uint64_t fo_received(unsigned nsub)
{
	uint64_t n = 0;

	for (unsigned i = 0; i < nsub; i++)
		n += atomic_load_explicit(&fo->sub[i].count,
					  memory_order_acquire);
	return n;
}

/* Wait until every subscriber has @n deliveries, up to @timeout_ms. */
static bool fo_wait_count(unsigned nsub, uint64_t n, int timeout_ms)
{
	int64_t deadline = now_ns() + (int64_t)timeout_ms * 1000000;

	for (;;) {
		unsigned i = 0;

		while (i < nsub &&
		       atomic_load_explicit(&fo->sub[i].count,
					    memory_order_acquire) >= n)
			i++;
		if (i == nsub)
			return true;
		if (now_ns() > deadline)
			return false;
		(void)usleep(FO_POLL_US);
	}
}

/*
 * Kill @c (the broker) by pid, set fo->killed once kill() has returned, and
 * reap it within @timeout_ms. Stores the time just before kill() in
 * *@ret_t0, and when its exit was seen in *@ret_gone.
 */
static int fo_kill_broker(struct child *c, int timeout_ms, int64_t *ret_t0,
			  int64_t *ret_gone)
{
	struct pollfd pfd = { .events = POLLIN };
	int64_t deadline;
	pid_t p;
	int r;

	/* Readable once the process is gone, its sockets closed with it. */
	pfd.fd = (int)syscall(SYS_pidfd_open, c->pid, 0);
	if (pfd.fd < 0) {
		r = -errno;
		(void)fprintf(stderr, "bench_pubsub: pidfd_open: %s\n",
			      strerror(-r));
		return r;
	}
	*ret_t0 = now_ns();
	if (kill(c->pid, SIGKILL) < 0) {
		r = -errno;
		(void)fprintf(stderr, "bench_pubsub: kill %d: %s\n",
			      (int)c->pid, strerror(-r));
		goto out_close;
	}
	/*
	 * From here on, each of the broker's threads dies on its way out of
	 * the system call it is in, or at once: it can no longer both read
	 * an event and write it out, so an event published from now on can
	 * reach a subscriber only through a new broker.
	 */
	atomic_store_explicit(&fo->killed, 1, memory_order_release);
	deadline = now_ns() + (int64_t)timeout_ms * 1000000;
	for (;;) {
		int64_t left = (deadline - now_ns()) / 1000000;

		r = poll(&pfd, 1, left < 0 ? 0 : (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			r = -errno;
			goto out_close;
		}
		if (r == 0) {
			r = -ETIMEDOUT;
			(void)fprintf(stderr,
				      "bench_pubsub: broker %d still alive\n",
				      (int)c->pid);
			goto out_close;
		}
		break;
	}
	*ret_gone = now_ns();
	p = wait_child(c, WNOHANG);
	if (p != c->pid) {
		r = p < 0 ? -errno : -ECHILD;
		goto out_close;
	}
	r = WIFSIGNALED(c->status) && WTERMSIG(c->status) == SIGKILL ? 0
								     : -EPROTO;
out_close:
	close(pfd.fd);
	return r;
}

static int fo_run_trial(const struct fo_opts *o, unsigned k,
			struct fo_trial *res)
{
	/* The broker, then the publisher, then the subscribers. */
	struct child cs[1 + FO_MAX_CLIENTS];
	const unsigned nsub = o->clients - 1, nc = 1 + o->clients;
	char line[LINE_MAX_LEN];
	int64_t t0 = 0, t_gone = 0, last_ns = 0, deadline, stall;
	uint64_t published, seen, lo = UINT64_MAX, hi = 0, first_after;
	uint64_t missed[FO_MAX_SUBS] = { 0 };
	int new_broker = -1, r = -1;

	*res = (struct fo_trial){ 0 };
	memset(fo, 0, sizeof(*fo));
	for (size_t i = 0; i < nc; i++)
		cs[i] = (struct child){ .pid = -1, .cmd = -1, .rep = -1 };
	make_dir();
	if (spawn(&cs[0], "usps-broker", broker_main, NULL) < 0 ||
	    spawn(&cs[1], "usps-fo-pub", fo_pub_main, (void *)o) < 0) {
		(void)fprintf(stderr, "bench_pubsub: fork: %s\n",
			      strerror(errno));
		goto out;
	}
	for (unsigned i = 0; i < nsub; i++) {
		if (spawn(&cs[2 + i], "usps-fo-sub", fo_sub_main, &fo->sub[i]) <
		    0) {
			(void)fprintf(stderr, "bench_pubsub: fork: %s\n",
				      strerror(errno));
			goto out;
		}
	}
	for (unsigned i = 0; i < nc; i++) {
		if (ask(&cs[i], "open", "ready", line, READY_MS) < 0)
			goto out;
	}
	if (ask(&cs[1], "go", "going", line, READY_MS) < 0)
		goto out;
	if (!fo_wait_count(nsub, FO_WARM_EVENTS, READY_MS)) {
		(void)fprintf(stderr,
			      "bench_pubsub: trial %u: the stream did not "
			      "reach every subscriber\n",
			      k);
		goto out;
	}

	if (fo_kill_broker(&cs[0], FAILOVER_MS, &t0, &t_gone) < 0)
		goto out;
	res->gone_ns = t_gone - t0;
	deadline = t0 + (int64_t)FAILOVER_MS * 1000000;
	for (;;) {
		unsigned i;

		for (i = 0; i < nsub; i++) {
			int64_t t =
				atomic_load_explicit(&fo->sub[i].first_after_ns,
						     memory_order_acquire);

			if (!t)
				break;
			if (t > last_ns)
				last_ns = t;
		}
		if (i == nsub) {
			res->failover_ns = last_ns - t0;
			break;
		}
		if (now_ns() > deadline) {
			res->timed_out = true;
			res->failover_ns = (int64_t)FAILOVER_MS * 1000000;
			break;
		}
		(void)usleep(FO_POLL_US);
	}

	/* Drain: FO_DRAIN_EVENTS more, flushed; then everything the
	 * subscribers will ever get has arrived once each has the last one,
	 * or when they stop making progress. */
	if (ask(&cs[1], "stop", "done", line, DRAIN_MS + READY_MS) < 0)
		goto out;
	published = field_u64(line, "published");
	first_after = field_u64(line, "first_after");
	res->published = published;
	res->failed = field_u64(line, "failed");
	deadline = now_ns() + (int64_t)DRAIN_MS * 1000000;
	stall = now_ns() + (int64_t)STALL_MS * 1000000;
	seen = fo_received(nsub);
	while (published && !fo_all_got(nsub, published - 1)) {
		int64_t t = now_ns();
		uint64_t got = fo_received(nsub);

		if (got != seen) {
			seen = got;
			stall = t + (int64_t)STALL_MS * 1000000;
		}
		if (t > deadline || t > stall)
			break;
		(void)usleep(FO_POLL_US);
	}

	for (unsigned i = 1; i < nc; i++) {
		if (ask(&cs[i], "status", "status", line, READY_MS) < 0)
			goto out;
		if (field_u64(line, "broker")) {
			res->brokers++;
			new_broker = (int)i;
		}
	}
	for (uint64_t seq = 0; seq < published; seq++) {
		bool all = true;

		for (unsigned i = 0; i < nsub; i++) {
			if (!fo_has(i, seq)) {
				missed[i]++;
				all = false;
			}
		}
		if (all)
			continue;
		res->lost++;
		if (seq < first_after)
			res->lost_before++;
		if (seq < lo)
			lo = seq;
		hi = seq;
	}
	for (unsigned i = 0; i < nsub; i++) {
		res->dups += atomic_load(&fo->sub[i].dups);
		res->bad += atomic_load(&fo->sub[i].bad);
	}
	r = 0;

	printf("  trial %u: %s%.2f ms (broker's exit seen after %.2f ms), ", k,
	       res->timed_out ? "timed out, > " : "",
	       (double)res->failover_ns / 1e6, (double)res->gone_ns / 1e6);
	if (res->brokers == 1 && new_broker == 1)
		printf("new broker: the publisher, ");
	else if (res->brokers == 1)
		printf("new broker: subscriber %d, ", new_broker - 1);
	else
		printf("%u brokers (NOT ONE), ", res->brokers);
	printf("published %" PRIu64 ", lost %" PRIu64, published, res->lost);
	if (res->lost) {
		printf(" (seq %" PRIu64 "..%" PRIu64 ", %" PRIu64
		       " before the kill at seq %" PRIu64 "; missed by "
		       "subscriber",
		       lo, hi, res->lost_before, first_after);
		for (unsigned i = 0; i < nsub; i++)
			printf("%s %u: %" PRIu64, i ? "," : "", i + 1,
			       missed[i]);
		printf(")");
	}
	if (res->dups || res->bad)
		printf(", duplicates %" PRIu64 ", unparsable %" PRIu64,
		       res->dups, res->bad);
	printf("\n");
out:
	if (finish(cs, nc) < 0)
		r = -1;
	remove_dir();
	return r;
}

static int run_failover(const struct fo_opts *o)
{
	uint64_t lost = 0, lost_before = 0, published = 0, failed = 0;
	uint64_t dups = 0, bad = 0;
	unsigned brokers_bad = 0, timeouts = 0, done = 0;
	int64_t *ft;
	int r = 0;

	ft = calloc(o->trials ? o->trials : 1, sizeof(*ft));
	if (!ft)
		die("out of memory");
	fo = mmap(NULL, sizeof(*fo), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (fo == MAP_FAILED) {
		free(ft);
		die("mmap: %s", strerror(errno));
	}
	printf("failover: %u trials, broker + %u clients (1 publisher every "
	       "%u us, %u subscribers), SIGKILL of the broker\n",
	       o->trials, o->clients, o->interval_us, o->clients - 1);
	for (unsigned k = 0; k < o->trials; k++) {
		struct fo_trial t;

		if (fo_run_trial(o, k, &t) < 0) {
			r = -1;
			break;
		}
		ft[done++] = t.failover_ns;
		lost += t.lost;
		lost_before += t.lost_before;
		published += t.published;
		failed += t.failed;
		dups += t.dups;
		bad += t.bad;
		brokers_bad += t.brokers != 1;
		timeouts += t.timed_out;
		(void)fflush(stdout);
	}
	if (r == 0 && done) {
		qsort(ft, done, sizeof(*ft), cmp_i64);
		printf("  failover (kill to delivery resumed in every "
		       "subscriber): median %.2f ms, p99 %.2f ms, max %.2f ms,"
		       " min %.2f ms\n",
		       (double)pct(ft, done, 50) / 1e6,
		       (double)pct(ft, done, 99) / 1e6,
		       (double)ft[done - 1] / 1e6, (double)ft[0] / 1e6);
		printf("  lost %" PRIu64 " of %" PRIu64 " published (%" PRIu64
		       " of them published before the kill), "
		       "publish failures %" PRIu64 ", duplicates %" PRIu64
		       ", unparsable %" PRIu64 "\n",
		       lost, published, lost_before, failed, dups, bad);
		printf("  trials without exactly one broker afterwards: %u, "
		       "timed out: %u\n",
		       brokers_bad, timeouts);
		printf("RESULT failover trials=%u median_ms=%.2f p99_ms=%.2f "
		       "max_ms=%.2f lost=%" PRIu64 " published=%" PRIu64
		       " brokers_bad=%u timeouts=%u duplicates=%" PRIu64
		       " clients=%u interval_us=%u\n",
		       done, (double)pct(ft, done, 50) / 1e6,
		       (double)pct(ft, done, 99) / 1e6,
		       (double)ft[done - 1] / 1e6, lost, published, brokers_bad,
		       timeouts, dups, o->clients, o->interval_us);
	}
	(void)munmap(fo, sizeof(*fo));
	free(ft);
	return r;
}

/* ---- command line ---- */

static void usage(void)
{
	(void)fputs(
		"usage: bench_pubsub throughput [--size BYTES] [--seconds S] "
		"[--inflight N]\n"
		"       bench_pubsub rtt [--count N] [--warmup N]\n"
		"       bench_pubsub failover [--trials N] [--clients N] "
		"[--interval-us US]\n",
		stderr);
	exit(2);
}

static uint64_t num_arg(const char *opt, const char *v, uint64_t min,
			uint64_t max)
{
	char *end;
	unsigned long long x;

	if (!v)
		usage();
	errno = 0;
	x = strtoull(v, &end, 10);
	if (errno || end == v || *end || x < min || x > max)
		die("%s: expected an integer in %" PRIu64 "..%" PRIu64
		    ", got %s",
		    opt, min, max, v);
	return x;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	/* A child that died must not take the parent with it. */
	(void)signal(SIGPIPE, SIG_IGN);
	catch_signals();
	if (!strcmp(argv[1], "throughput")) {
		struct tput_opts o = { .size = 100, .seconds = 3 };

		for (int i = 2; i < argc; i += 2) {
			const char *v = i + 1 < argc ? argv[i + 1] : NULL;

			if (!strcmp(argv[i], "--size")) {
				o.size = num_arg(argv[i], v, MIN_SIZE,
						 64u << 20);
			} else if (!strcmp(argv[i], "--seconds")) {
				char *end;

				if (!v)
					usage();
				o.seconds = strtod(v, &end);
				if (end == v || *end || !(o.seconds > 0) ||
				    o.seconds > 3600)
					die("--seconds: expected 0 < S <= "
					    "3600, got %s",
					    v);
			} else if (!strcmp(argv[i], "--inflight")) {
				o.inflight =
					num_arg(argv[i], v, 0, UINT64_MAX / 2);
			} else {
				usage();
			}
		}
		return run_throughput(&o) == 0 ? 0 : 1;
	}
	if (!strcmp(argv[1], "rtt")) {
		struct rtt_opts o = { .count = 20000, .warmup = 1000 };

		for (int i = 2; i < argc; i += 2) {
			const char *v = i + 1 < argc ? argv[i + 1] : NULL;

			if (!strcmp(argv[i], "--count"))
				o.count = num_arg(argv[i], v, 1, 100000000);
			else if (!strcmp(argv[i], "--warmup"))
				o.warmup = num_arg(argv[i], v, 0, 100000000);
			else
				usage();
		}
		return run_rtt(&o) == 0 ? 0 : 1;
	}
	if (!strcmp(argv[1], "failover")) {
		struct fo_opts o = { .trials = 50,
				     .clients = 4,
				     .interval_us = 100 };

		for (int i = 2; i < argc; i += 2) {
			const char *v = i + 1 < argc ? argv[i + 1] : NULL;

			if (!strcmp(argv[i], "--trials"))
				o.trials = (unsigned)num_arg(argv[i], v, 1,
							     100000);
			else if (!strcmp(argv[i], "--clients"))
				o.clients = (unsigned)num_arg(argv[i], v, 2,
							      FO_MAX_CLIENTS);
			else if (!strcmp(argv[i], "--interval-us"))
				o.interval_us = (unsigned)num_arg(argv[i], v,
								  20, 1000000);
			else
				usage();
		}
		return run_failover(&o) == 0 ? 0 : 1;
	}
	usage();
	return 2;
}
