/* SPDX-License-Identifier: MIT */
/*
 * bench_pubsub - usps throughput and round-trip time between processes.
 *
 *   bench_pubsub throughput [--size 100] [--seconds 3] [--inflight N]
 *   bench_pubsub rtt [--count 20000] [--warmup 1000]
 *
 * Each run forks its processes before anything opens the bus (the parent
 * never does), in a private mkdtemp directory: a broker that only routes,
 * and two clients. The parent drives them over pipes, one text line per
 * command or report, so that each step starts only once the previous one
 * is in effect (the subscriber is subscribed before anyone publishes), and
 * reaps them all with a deadline. The last line printed is
 * "RESULT <bench> key=value ...", for bench/run.sh.
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
 * the time of receipt. Percentiles are over --count round trips after
 * --warmup unmeasured ones.
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
/* Children that do not exit this long after "quit" are killed. */
#define REAP_MS 10000

#define LINE_MAX_LEN 512

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

__attribute__((format(printf, 1, 2))) static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	(void)fputs("bench_pubsub: ", stderr);
	(void)vfprintf(stderr, fmt, ap);
	(void)fputc('\n', stderr);
	va_end(ap);
	exit(1);
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
	c->pid = fork();
	if (c->pid < 0) {
		int e = -errno;

		close(to_child[0]);
		close(to_child[1]);
		close(to_parent[0]);
		close(to_parent[1]);
		return e;
	}
	if (c->pid == 0) {
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
		fprintf(stderr, "bench_pubsub: %s: send %s: %s\n", c->name, cmd,
			strerror(-r));
		return r;
	}
	r = read_line(c->rep, out, LINE_MAX_LEN, timeout_ms);
	if (r < 0) {
		fprintf(stderr, "bench_pubsub: %s: no answer to %s: %s\n",
			c->name, cmd, strerror(-r));
		return r;
	}
	if (strncmp(out, want, strlen(want)) != 0) {
		fprintf(stderr, "bench_pubsub: %s: answered %s with: %s\n",
			c->name, cmd, out);
		return -EPROTO;
	}
	return 0;
}

/* Reap @c by its deadline, killing it by pid then. 0 if it exited 0. */
static int reap(struct child *c, int64_t deadline)
{
	for (;;) {
		bool late = now_ns() > deadline;
		pid_t p;

		if (late) {
			fprintf(stderr,
				"bench_pubsub: %s (pid %d) did not exit: "
				"killed\n",
				c->name, (int)c->pid);
			(void)kill(c->pid, SIGKILL);
		}
		p = waitpid(c->pid, &c->status, late ? 0 : WNOHANG);
		if (p < 0 && errno == EINTR)
			continue;
		if (p == c->pid || p < 0) {
			c->reaped = true;
			if (p == c->pid && !late && WIFEXITED(c->status) &&
			    WEXITSTATUS(c->status) == 0)
				return 0;
			if (!late)
				fprintf(stderr,
					"bench_pubsub: %s exited badly "
					"(status 0x%x)\n",
					c->name, c->status);
			return -1;
		}
		(void)usleep(2000);
	}
}

/*
 * Tell the children to quit, last forked first so that the clients are
 * gone before the broker (no failover while shutting down), and reap each
 * within REAP_MS in all. Closing a command pipe says "quit" too, to a
 * child that is not reading. Returns 0 if every child exited with 0.
 */
static int finish(struct child *cs, size_t n)
{
	int64_t deadline = now_ns() + (int64_t)REAP_MS * 1000000;
	int bad = 0;

	for (size_t i = n; i-- > 0;) {
		struct child *c = &cs[i];

		if (c->cmd >= 0) {
			(void)send_line(c->cmd, "quit");
			close(c->cmd);
			c->cmd = -1;
		}
		if (c->pid > 0 && !c->reaped && reap(c, deadline) < 0)
			bad = -1;
		if (c->rep >= 0)
			close(c->rep);
		c->rep = -1;
	}
	return bad;
}

/* ---- the private directory ---- */

static char dir[PATH_MAX];
static char sock_path[PATH_MAX];

static int rm_cb(const char *path, const struct stat *sb, int flag,
		 struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	(void)remove(path);
	return 0;
}

static void make_dir(void)
{
	const char *base = getenv("TMPDIR");
	int n = snprintf(dir, sizeof(dir), "%s/usps-bench-XXXXXX",
			 base && *base ? base : "/tmp");

	if (n < 0 || (size_t)n >= sizeof(dir) || !mkdtemp(dir))
		die("mkdtemp in %s: %s", base && *base ? base : "/tmp",
		    strerror(errno));
	n = snprintf(sock_path, sizeof(sock_path), "%s/bus.sock", dir);
	if (n < 0 || (size_t)n >= sizeof(sock_path))
		die("socket path too long");
}

static void remove_dir(void)
{
	(void)nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
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
 * Answer "stats" with usage_fields() until "quit" or the end of @cmd.
 * Returns 0 then, or a negative errno.
 */
static int serve_stats(int cmd, int rep)
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
	r = serve_stats(cmd, rep);
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
		fprintf(stderr, "bench_pubsub: fork: %s\n", strerror(errno));
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

/* Client A's state: the seq it waits for and when its pong came. */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint64_t want;
	bool got;
	int64_t recv_ns;
} ping;

static bool data_seq(const usps_event *ev, uint64_t *ret)
{
	const char *p = ev->data ? memchr(ev->data, ':', ev->data_len) : NULL;

	if (!p)
		return false;
	*ret = strtoull(p + 1, NULL, 10);
	return true;
}

static void on_pong(const usps_event *ev, usps_delivery *d, void *ud)
{
	int64_t t = now_ns(); /* receipt: before any locking */
	uint64_t seq;

	(void)d;
	(void)ud;
	if (!data_seq(ev, &seq))
		return;
	pthread_mutex_lock(&ping.lock);
	if (seq == ping.want && !ping.got) {
		ping.got = true;
		ping.recv_ns = t;
		pthread_cond_signal(&ping.cond);
	}
	pthread_mutex_unlock(&ping.lock);
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
	r = serve_stats(cmd, rep);
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
	uint64_t total = o->warmup + o->count, lost = 0, failed = 0;
	int64_t *rtt;
	size_t n = 0;
	usps_sub *s;
	usps *ps;
	int r;

	if (expect_cmd(cmd, "open", READY_MS) < 0)
		return 1;
	rtt = calloc(o->count ? o->count : 1, sizeof(*rtt));
	if (!rtt)
		return 1;
	pthread_mutex_init(&ping.lock, NULL);
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&ping.cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	ping.want = UINT64_MAX;
	if (open_bus(&ps, rep, false) < 0) {
		free(rtt);
		return 1;
	}
	r = usps_subscribe(ps, "q", NULL, on_pong, NULL, &s);
	if (r < 0) {
		(void)send_line(rep, "error usps_subscribe: %s", strerror(-r));
		goto fail;
	}
	(void)send_line(rep, "ready pid=%d", (int)getpid());
	if (expect_cmd(cmd, "go", READY_MS) < 0)
		goto fail;

	for (uint64_t i = 0; i < total; i++) {
		char data[64];
		int len = snprintf(data, sizeof(data), "{\"seq\":%" PRIu64 "}",
				   i);
		struct timespec dl;
		int64_t t0, t1;
		bool got;

		pthread_mutex_lock(&ping.lock);
		ping.want = i;
		ping.got = false;
		pthread_mutex_unlock(&ping.lock);
		t0 = now_ns();
		r = usps_publish(ps, "p", "ping", data, (size_t)len, 0);
		if (r < 0) {
			failed++;
			continue;
		}
		clock_gettime(CLOCK_MONOTONIC, &dl);
		dl.tv_sec += PONG_MS / 1000;
		pthread_mutex_lock(&ping.lock);
		while (!ping.got) {
			if (pthread_cond_timedwait(&ping.cond, &ping.lock,
						   &dl) == ETIMEDOUT)
				break;
		}
		got = ping.got;
		t1 = ping.recv_ns;
		pthread_mutex_unlock(&ping.lock);
		if (!got)
			lost++;
		else if (i >= o->warmup)
			rtt[n++] = t1 - t0;
	}
	(void)usps_unsubscribe(ps, s);

	int64_t sum = 0;
	char u[128];

	usage_fields(u, sizeof(u));

	qsort(rtt, n, sizeof(*rtt), cmp_i64);
	for (size_t i = 0; i < n; i++)
		sum += rtt[i];
	(void)send_line(rep,
			"result n=%zu lost=%" PRIu64 " failed=%" PRIu64
			" p50_ns=%" PRId64 " p90_ns=%" PRId64 " p99_ns=%" PRId64
			" p999_ns=%" PRId64 " min_ns=%" PRId64
			" max_ns=%" PRId64 " mean_ns=%.0f %s",
			n, lost, failed, n ? pct(rtt, n, 50) : 0,
			n ? pct(rtt, n, 90) : 0, n ? pct(rtt, n, 99) : 0,
			n ? pct(rtt, n, 99.9) : 0, n ? rtt[0] : 0,
			n ? rtt[n - 1] : 0, n ? (double)sum / (double)n : 0.0,
			u);
	r = expect_cmd(cmd, "quit", REAP_MS);
	usps_close(ps);
	free(rtt);
	return r == 0 || r == -EPIPE ? 0 : 1;
fail:
	usps_close(ps);
	free(rtt);
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
	double trips;
	int r = -1;

	make_dir();
	for (size_t i = 0; i < NCHILD; i++)
		cs[i].pid = -1;
	if (spawn(&cs[BROKER], "usps-broker", broker_main, NULL) < 0 ||
	    spawn(&cs[PONG], "usps-pong", ponger_main, NULL) < 0 ||
	    spawn(&cs[PING], "usps-ping", pinger_main, (void *)o) < 0) {
		fprintf(stderr, "bench_pubsub: fork: %s\n", strerror(errno));
		goto out;
	}
	if (ask(&cs[BROKER], "open", "ready", line, READY_MS) < 0 ||
	    ask(&cs[PONG], "open", "ready", line, READY_MS) < 0 ||
	    ask(&cs[PING], "open", "ready", line, READY_MS) < 0)
		goto out;
	/* Bounded: every round trip ends within PONG_MS. */
	if (ask(&cs[PING], "go", "result", line,
		(int)((o->count + o->warmup) * PONG_MS + READY_MS)) < 0 ||
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

/* ---- command line ---- */

static void usage(void)
{
	(void)fputs(
		"usage: bench_pubsub throughput [--size BYTES] [--seconds S] "
		"[--inflight N]\n"
		"       bench_pubsub rtt [--count N] [--warmup N]\n",
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
	usage();
	return 2;
}
