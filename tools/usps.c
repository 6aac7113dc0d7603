/* SPDX-License-Identifier: MIT */
/*
 * usps - the command-line tool: subscribe to a topic and print its events as
 * JSON lines (usps sub), publish events (usps pub), and look at the broker
 * behind a socket path (usps status). It uses only the public API of
 * include/usps.h; the JSON it prints is built here, and the JSON it sends is
 * checked by usps_publish() itself.
 *
 * Exit codes: 0 success, 1 runtime failure, 2 usage or invalid input,
 * 3 "sub" timed out before --count events arrived, 128+N stopped by
 * signal N. docs/usps.1 describes everything in full.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>

#include "usps.h"

enum {
	EXIT_OK = 0,
	EXIT_FAIL = 1,
	EXIT_USAGE = 2,
	EXIT_TIMEOUT = 3,
};

/* How long pub waits for its events to be written out before exiting. */
#define PUB_FLUSH_TIMEOUT_MS 10000
/* How long status waits for a busy broker to accept its probe. */
#define STATUS_CONNECT_TIMEOUT_MS 2000
/* How long a broker may take to answer usps.status (Node brokers never
 * do). */
#define STATUS_QUERY_TIMEOUT_MS 300

/* ---- messages --------------------------------------------------------- */

/* "usps: WHAT: MESSAGE" on stderr. */
static void __attribute__((format(printf, 2, 3)))
complain(const char *what, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	(void)vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	(void)fprintf(stderr, "usps: %s: %s\n", what, msg);
}

static int __attribute__((format(printf, 2, 3)))
usage_error(const char *cmd, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	(void)vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	(void)fprintf(stderr, "usps: %s: %s\nTry 'usps %s --help'.\n", cmd, msg,
		      cmd);
	return EXIT_USAGE;
}

static const char main_help[] =
	"usage: usps COMMAND PATH ARGS... [OPTIONS]\n"
	"\n"
	"Publish and subscribe between processes on one host over the Unix\n"
	"domain socket PATH (wire-compatible with Mastra's UnixSocketPubSub).\n"
	"The first process on PATH becomes its broker; when the broker dies,\n"
	"the others elect a new one.\n"
	"\n"
	"Commands:\n"
	"  sub PATH TOPIC         print each event on TOPIC as one JSON line\n"
	"  pub PATH TOPIC TYPE [DATA]\n"
	"                         publish an event (DATA: JSON, - for stdin)\n"
	"  status PATH            show the broker alive at PATH, if any\n"
	"  help [COMMAND]         show this help, or a command's\n"
	"\n"
	"Options:\n"
	"  -h, --help             show help (also 'usps COMMAND --help')\n"
	"  -V, --version          show the version of usps and libusps\n"
	"\n"
	"Exit status: 0 success; 1 runtime failure (e.g. the bus cannot be\n"
	"joined, no broker for status); 2 usage error or invalid input;\n"
	"3 sub timed out before --count events arrived; 128+N stopped by\n"
	"signal N (130 SIGINT, 143 SIGTERM).\n"
	"\n"
	"See usps(1) for details.\n";

static const char sub_help[] =
	"usage: usps sub PATH TOPIC [--group G] [--count N] [--timeout-ms T]\n"
	"                [-q]\n"
	"\n"
	"Join the bus at PATH (becoming its broker if none is alive) and print\n"
	"each event published on TOPIC to standard output as one JSON line:\n"
	"\n"
	"  {\"topic\":T,\"group\":G|null,\"event\":{\"type\":..,\"runId\":..,\n"
	"   \"data\":..,\"id\":..,\"createdAt\":ISO-8601|null,"
	"\"deliveryAttempt\":N}}\n"
	"\n"
	"runId is left out when the event has none; data is the publisher's\n"
	"JSON, verbatim. Each line is written and flushed as it arrives. Once\n"
	"subscribed, a line saying so goes to standard error.\n"
	"\n"
	"Options:\n"
	"  -g, --group G        join consumer group G: each event goes to one\n"
	"                       member of G on the whole bus (default: every\n"
	"                       subscriber gets every event)\n"
	"  -n, --count N        exit 0 after N events (later ones are dropped)\n"
	"  -t, --timeout-ms T   exit after T ms from subscribing: 0 if --count\n"
	"                       was not given, else 3 (fewer than N arrived)\n"
	"  -q, --quiet          report neither the subscription nor a timeout\n"
	"                       on stderr\n"
	"  -h, --help           show this help\n"
	"\n"
	"Without --count and --timeout-ms it runs until SIGINT or SIGTERM, then\n"
	"leaves the bus cleanly and exits 130 or 143. If standard output is\n"
	"closed (e.g. '| head'), it leaves the bus and exits 0.\n"
	"Exit status: 0, 1 (cannot join the bus or subscribe), 2 (usage),\n"
	"3 (timeout before N events), 130/143 (signal).\n";

static const char pub_help[] =
	"usage: usps pub PATH TOPIC TYPE [DATA] [--run-id R] [--count N]\n"
	"                [--rate N/s] [--local-only]\n"
	"\n"
	"Join the bus at PATH and publish an event of TYPE on TOPIC whose data\n"
	"is the JSON value DATA (default {}). With DATA '-', read one JSON\n"
	"value per line from standard input and publish each (blank lines are\n"
	"skipped). Waits until every event is written out, then exits.\n"
	"\n"
	"Options:\n"
	"  -r, --run-id R       set the event's runId to R\n"
	"  -n, --count N        publish DATA N times (default 1); with '-',\n"
	"                       stop after N lines\n"
	"      --rate N[/s]     publish at most N events per second, evenly\n"
	"                       paced (N may be fractional, e.g. 0.5/s)\n"
	"      --local-only     deliver to this process's own subscribers only\n"
	"                       (it has none: nothing leaves the process; for\n"
	"                       testing)\n"
	"  -h, --help           show this help\n"
	"\n"
	"Invalid JSON is reported and exits 2: for DATA, nothing is published;\n"
	"with '-', the lines before the invalid one have been published, it\n"
	"and the lines after it are not. SIGINT/SIGTERM stop publishing; what\n"
	"was published is still written out, then it exits 130/143.\n"
	"Exit status: 0, 1 (cannot join the bus, or write out), 2 (usage or\n"
	"invalid JSON), 130/143 (signal).\n";

static const char status_help[] =
	"usage: usps status PATH [--json]\n"
	"\n"
	"Tell whether a broker is alive at PATH, without joining the bus: it\n"
	"connects to PATH, asks the kernel who listens there (SO_PEERCRED),\n"
	"and disconnects. It never becomes broker itself.\n"
	"\n"
	"It also sends the usps-only status query (usps.status); a usps broker\n"
	"answers it with its client count and tenure, a Mastra broker ignores\n"
	"it. What it shows, and where it comes from:\n"
	"  pid, uid       the broker process, from SO_PEERCRED\n"
	"  command        /proc/PID/comm\n"
	"  implementation usps if it answered the query (or holds the flock on\n"
	"                 PATH.lock), else not usps (e.g. a Mastra Node broker)\n"
	"  clients        the broker's answer; for other brokers, connections\n"
	"                 open to its socket from the kernel's sock_diag (not\n"
	"                 counting this probe), unknown if that is unavailable\n"
	"  broker since   the broker's answer; for others, when the socket at\n"
	"                 PATH was bound (its mtime)\n"
	"  process up     when the broker process started (/proc/PID/stat)\n"
	"Not known: subscriptions, topics, groups, traffic.\n"
	"\n"
	"Options:\n"
	"  -j, --json       print one JSON object instead\n"
	"  -h, --help       show this help\n"
	"\n"
	"Exit status: 0 a broker is alive; 1 none is (nothing at PATH, or a\n"
	"socket nobody listens on), or it cannot be reached; 2 usage.\n";

/* ---- argument parsing ------------------------------------------------- */

struct opt {
	const char *name; /* long name, without "--" */
	char short_name;  /* 0: none */
	bool has_arg;
	int id;
};

enum {
	ARG_END = -1,
	ARG_ERROR = -2,
	ARG_POSITIONAL = -3,
	OPT_HELP = 1,
	OPT_GROUP,
	OPT_COUNT,
	OPT_TIMEOUT,
	OPT_QUIET,
	OPT_RUN_ID,
	OPT_RATE,
	OPT_LOCAL_ONLY,
	OPT_JSON,
};

struct args {
	const char *cmd;
	int argc;
	char **argv;
	int i;
	bool only_positional; /* after "--" */
};

/* A lone "-" (stdin) and negative numbers (JSON data) are not options. */
static bool is_positional(const char *a)
{
	return a[0] != '-' || a[1] == '\0' || (a[1] >= '0' && a[1] <= '9');
}

/*
 * The next argument: an option id with *val its argument (or NULL),
 * ARG_POSITIONAL with *val the argument, ARG_END, or ARG_ERROR after
 * printing why.
 */
static int next_arg(struct args *a, const struct opt *opts, const char **val)
{
	const struct opt *o;
	const char *arg, *eq;
	size_t n;

	*val = NULL;
	if (a->i >= a->argc)
		return ARG_END;
	arg = a->argv[a->i++];
	if (a->only_positional || is_positional(arg)) {
		*val = arg;
		return ARG_POSITIONAL;
	}
	if (strcmp(arg, "--") == 0) {
		a->only_positional = true;
		return next_arg(a, opts, val);
	}
	if (arg[1] != '-') {
		/* "-n5" or "-n 5"; flags are not bundled ("-qj"). */
		for (o = opts; o->name; o++)
			if (o->short_name == arg[1])
				break;
		if (!o->name || (!o->has_arg && arg[2]))
			goto unknown;
		if (!o->has_arg)
			return o->id;
		if (arg[2]) {
			*val = arg + 2;
			return o->id;
		}
		goto take_next;
	}
	/* "--count=5" or "--count 5". */
	eq = strchr(arg, '=');
	n = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
	for (o = opts; o->name; o++)
		if (strlen(o->name) == n && strncmp(o->name, arg + 2, n) == 0)
			break;
	if (!o->name)
		goto unknown;
	if (!o->has_arg) {
		if (eq) {
			(void)usage_error(a->cmd,
					  "option '%s' takes no argument", arg);
			return ARG_ERROR;
		}
		return o->id;
	}
	if (eq) {
		*val = eq + 1;
		return o->id;
	}
take_next:
	if (a->i >= a->argc) {
		(void)usage_error(a->cmd, "option '%s' needs an argument", arg);
		return ARG_ERROR;
	}
	*val = a->argv[a->i++];
	return o->id;
unknown:
	(void)usage_error(a->cmd, "unknown option '%s'", arg);
	return ARG_ERROR;
}

/* A decimal integer in [min, max]; false if it is not one. */
static bool parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *ret)
{
	unsigned long long v;
	char *end;

	if (!s || *s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return false;
	*ret = v;
	return true;
}

/* Is @s well-formed UTF-8 (no overlong forms, surrogates or code points
 * past U+10FFFF)? The library refuses names that are not. */
static bool utf8_valid(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	while (*p) {
		unsigned c = *p++, need, min, cp;

		if (c < 0x80)
			continue;
		if (c >= 0xc2 && c <= 0xdf) {
			need = 1;
			min = 0x80;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			need = 2;
			min = 0x800;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			need = 3;
			min = 0x10000;
			cp = c & 0x07;
		} else {
			return false;
		}
		while (need--) {
			if ((*p & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (*p++ & 0x3fu);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
	}
	return true;
}

/* ---- time -------------------------------------------------------------- */

static int64_t mono_ms(void)
{
	struct timespec ts;

	(void)clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t real_ms(void)
{
	struct timespec ts;

	(void)clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Unix ms as "2024-05-01T12:34:56.789Z" (JavaScript's toISOString()). */
static bool iso_time(int64_t ms, char *buf, size_t size)
{
	int64_t sec = ms / 1000, frac = ms % 1000;
	struct tm tm;
	time_t t;
	size_t n;

	if (frac < 0) {
		frac += 1000;
		sec--;
	}
	t = (time_t)sec;
	if (!gmtime_r(&t, &tm))
		return false;
	n = strftime(buf, size, "%Y-%m-%dT%H:%M:%S", &tm);
	if (n == 0 || size - n < 6)
		return false;
	(void)snprintf(buf + n, size - n, ".%03dZ", (int)frac);
	return true;
}

/* ---- a growing output buffer and JSON strings --------------------------- */

struct buf {
	char *p;
	size_t len, cap;
	bool oom;
};

static void buf_add(struct buf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->cap - b->len < n) {
		size_t cap = b->cap ? b->cap : 256;
		char *p;

		while (cap - b->len < n) {
			if (cap > SIZE_MAX / 2) {
				b->oom = true;
				return;
			}
			cap *= 2;
		}
		p = realloc(b->p, cap);
		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

static void buf_adds(struct buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

/* @s (@n bytes, may hold NUL) as a JSON string. The library hands us UTF-8;
 * only '"', '\\' and control characters need escaping. */
static void buf_add_json_str(struct buf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	size_t run = 0;

	buf_add(b, "\"", 1);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char esc[6];
		size_t elen = 2;

		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		buf_add(b, s + run, i - run);
		run = i + 1;
		esc[0] = '\\';
		switch (c) {
		case '"':
			esc[1] = '"';
			break;
		case '\\':
			esc[1] = '\\';
			break;
		case '\n':
			esc[1] = 'n';
			break;
		case '\r':
			esc[1] = 'r';
			break;
		case '\t':
			esc[1] = 't';
			break;
		case '\b':
			esc[1] = 'b';
			break;
		case '\f':
			esc[1] = 'f';
			break;
		default:
			esc[1] = 'u';
			esc[2] = '0';
			esc[3] = '0';
			esc[4] = hex[c >> 4];
			esc[5] = hex[c & 15];
			elen = 6;
		}
		buf_add(b, esc, elen);
	}
	buf_add(b, s + run, n - run);
	buf_add(b, "\"", 1);
}

static void buf_add_json_strz(struct buf *b, const char *s)
{
	if (s)
		buf_add_json_str(b, s, strlen(s));
	else
		buf_adds(b, "null");
}

/* Write all of @p to @fd. 0 or -errno. */
static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* ---- signals ------------------------------------------------------------ */

static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
	/* A second signal while we are still winding down: give up. */
	if (got_signal) {
		(void)signal(sig, SIG_DFL);
		(void)raise(sig);
		return;
	}
	got_signal = sig;
}

/* Install on_signal for SIGINT and SIGTERM (without SA_RESTART, so that a
 * blocking read or sleep returns EINTR) and block them; the old mask goes to
 * *ret_old. The library's threads, started while they are blocked, inherit
 * the mask, so these signals are only ever handled on the main thread. */
static void signals_setup(sigset_t *ret_old)
{
	struct sigaction sa = { .sa_handler = on_signal };
	sigset_t set;

	(void)sigemptyset(&sa.sa_mask);
	(void)sigaction(SIGINT, &sa, NULL);
	(void)sigaction(SIGTERM, &sa, NULL);
	/* A closed stdout shows up as EPIPE from write(). */
	(void)signal(SIGPIPE, SIG_IGN);
	(void)sigemptyset(&set);
	(void)sigaddset(&set, SIGINT);
	(void)sigaddset(&set, SIGTERM);
	(void)pthread_sigmask(SIG_BLOCK, &set, ret_old);
}

static int open_bus(const char *path, usps **ret)
{
	int r = usps_open(ret, path, NULL);

	if (r < 0) {
		complain(path, "%s", strerror(-r));
		return r == -EINVAL || r == -ENAMETOOLONG ? EXIT_USAGE
							  : EXIT_FAIL;
	}
	return EXIT_OK;
}

/* ---- usps sub ------------------------------------------------------------ */

struct sub_state {
	uint64_t want;	      /* 0: no --count */
	uint64_t seen;	      /* events printed; delivery thread only */
	struct buf line;      /* delivery thread only */
	int wake_fd;	      /* write end of the main thread's pipe */
	atomic_bool done;     /* stop printing: count reached or output gone */
	atomic_int write_err; /* 0, or the errno of a failed write */
};

static void sub_wake(struct sub_state *st)
{
	char c = 0;

	/* Full pipe: the main thread has a wake-up pending anyway. */
	while (write(st->wake_fd, &c, 1) < 0 && errno == EINTR)
		;
}

static void sub_handler(const usps_event *ev, usps_delivery *d, void *userdata)
{
	struct sub_state *st = userdata;
	struct buf *b = &st->line;
	char iso[64];
	int r;

	(void)d;
	if (atomic_load(&st->done))
		return;
	b->len = 0;
	buf_adds(b, "{\"topic\":");
	buf_add_json_str(b, ev->topic, ev->topic_len);
	buf_adds(b, ",\"group\":");
	buf_add_json_strz(b, ev->group);
	buf_adds(b, ",\"event\":{\"type\":");
	buf_add_json_str(b, ev->type, ev->type_len);
	if (ev->run_id) {
		buf_adds(b, ",\"runId\":");
		buf_add_json_strz(b, ev->run_id);
	}
	buf_adds(b, ",\"data\":");
	if (ev->data)
		buf_add(b, ev->data, ev->data_len);
	else
		buf_adds(b, "null");
	buf_adds(b, ",\"id\":");
	buf_add_json_strz(b, ev->id);
	buf_adds(b, ",\"createdAt\":");
	if (ev->created_at_ms != INT64_MIN &&
	    iso_time(ev->created_at_ms, iso, sizeof(iso)))
		buf_add_json_strz(b, iso);
	else
		buf_adds(b, "null");
	(void)snprintf(iso, sizeof(iso), ",\"deliveryAttempt\":%" PRIu32 "}}\n",
		       ev->delivery_attempt);
	buf_adds(b, iso);
	if (b->oom) {
		atomic_store(&st->write_err, ENOMEM);
		goto stop;
	}
	/* One write per line, so that lines from several subscribers
	 * writing to one pipe never interleave (up to PIPE_BUF). */
	r = write_all(STDOUT_FILENO, b->p, b->len);
	if (r < 0) {
		atomic_store(&st->write_err, -r);
		goto stop;
	}
	st->seen++;
	if (!st->want || st->seen < st->want)
		return;
stop:
	atomic_store(&st->done, true);
	sub_wake(st);
}

static int cmd_sub(int argc, char **argv)
{
	static const struct opt opts[] = {
		{ "help", 'h', false, OPT_HELP },
		{ "group", 'g', true, OPT_GROUP },
		{ "count", 'n', true, OPT_COUNT },
		{ "timeout-ms", 't', true, OPT_TIMEOUT },
		{ "quiet", 'q', false, OPT_QUIET },
		{ NULL, 0, false, 0 },
	};
	struct args a = { .cmd = "sub", .argc = argc, .argv = argv, .i = 1 };
	struct sub_state st = { .wake_fd = -1 };
	usps *ps = NULL;
	const char *path = NULL, *topic = NULL, *group = NULL, *val;
	uint64_t timeout_ms = 0;
	bool has_timeout = false, quiet = false;
	int pipefd[2], id, r, ret;
	sigset_t oldmask, waitmask;
	usps_sub *sub;
	int64_t deadline = 0;

	while ((id = next_arg(&a, opts, &val)) != ARG_END) {
		switch (id) {
		case ARG_ERROR:
			return EXIT_USAGE;
		case OPT_HELP:
			(void)fputs(sub_help, stdout);
			return EXIT_OK;
		case OPT_GROUP:
			if (!*val)
				return usage_error(a.cmd, "empty group");
			group = val;
			break;
		case OPT_COUNT:
			if (!parse_u64(val, 1, UINT64_MAX, &st.want))
				return usage_error(a.cmd,
						   "--count: not a positive "
						   "integer: '%s'",
						   val);
			break;
		case OPT_TIMEOUT:
			if (!parse_u64(val, 0, INT32_MAX, &timeout_ms))
				return usage_error(a.cmd,
						   "--timeout-ms: not an "
						   "integer in 0..2147483647: "
						   "'%s'",
						   val);
			has_timeout = true;
			break;
		case OPT_QUIET:
			quiet = true;
			break;
		case ARG_POSITIONAL:
			if (!path)
				path = val;
			else if (!topic)
				topic = val;
			else
				return usage_error(
					a.cmd, "unexpected argument '%s'", val);
			break;
		}
	}
	if (!path)
		return usage_error(a.cmd, "missing PATH");
	if (!topic || !*topic)
		return usage_error(a.cmd, "missing TOPIC");
	if (!utf8_valid(topic) || (group && !utf8_valid(group)))
		return usage_error(a.cmd, "TOPIC or group is not UTF-8");

	if (pipe2(pipefd, O_CLOEXEC | O_NONBLOCK) < 0) {
		complain("sub", "pipe: %s", strerror(errno));
		return EXIT_FAIL;
	}
	st.wake_fd = pipefd[1];
	signals_setup(&oldmask);
	waitmask = oldmask;
	(void)sigdelset(&waitmask, SIGINT);
	(void)sigdelset(&waitmask, SIGTERM);

	ret = open_bus(path, &ps);
	if (ret != EXIT_OK)
		goto out_pipe;
	r = usps_subscribe(ps, topic, group, sub_handler, &st, &sub);
	if (r < 0) {
		complain(path, "subscribe to '%s': %s", topic, strerror(-r));
		ret = r == -EINVAL ? EXIT_USAGE : EXIT_FAIL;
		goto out_close;
	}
	if (!quiet) {
		int pid = usps_broker_pid(ps);

		char who[32] = "unknown";

		if (pid > 0)
			(void)snprintf(who, sizeof(who), "%d", pid);
		(void)fprintf(stderr,
			      "usps: subscribed to '%s'%s%s at %s as %s "
			      "(broker pid %s)\n",
			      topic, group ? " in group " : "",
			      group ? group : "", path,
			      usps_is_broker(ps) ? "broker" : "client", who);
	}

	deadline = mono_ms() + (int64_t)timeout_ms;
	ret = EXIT_OK;
	for (;;) {
		struct pollfd pfd = { .fd = pipefd[0], .events = POLLIN };
		struct timespec ts, *tsp = NULL;
		char drain[64];

		if (atomic_load(&st.done))
			break;
		if (has_timeout) {
			int64_t left = deadline - mono_ms();

			if (left <= 0) {
				ret = st.want ? EXIT_TIMEOUT : EXIT_OK;
				break;
			}
			ts.tv_sec = left / 1000;
			ts.tv_nsec = (long)(left % 1000) * 1000000;
			tsp = &ts;
		}
		/* Signals are unblocked only while we wait here. */
		r = ppoll(&pfd, 1, tsp, &waitmask);
		if (r < 0 && errno != EINTR) {
			complain("sub", "ppoll: %s", strerror(errno));
			ret = EXIT_FAIL;
			break;
		}
		if (got_signal) {
			ret = 128 + got_signal;
			break;
		}
		if (r > 0)
			while (read(pipefd[0], drain, sizeof(drain)) > 0)
				;
	}
	/* From here a second SIGINT or SIGTERM ends us at once. */
	(void)pthread_sigmask(SIG_SETMASK, &oldmask, NULL);
	/* Once it returns, no handler runs: st is ours alone. */
	(void)usps_close(ps);
	ps = NULL;
	r = atomic_load(&st.write_err);
	if (r == ENOMEM) {
		complain("sub", "%s", strerror(r));
		ret = EXIT_FAIL;
	} else if (r && r != EPIPE) {
		complain("stdout", "%s", strerror(r));
		ret = EXIT_FAIL;
	} else if ((r == EPIPE && ret < 128) ||
		   (ret == EXIT_TIMEOUT && st.seen >= st.want)) {
		/* Output closed, or the last event came as time ran out. */
		ret = EXIT_OK;
	}
	if (ret == EXIT_TIMEOUT && !quiet)
		(void)fprintf(stderr,
			      "usps: %s: timed out after %" PRIu64
			      " ms with %" PRIu64 " of %" PRIu64 " events\n",
			      path, timeout_ms, st.seen, st.want);
out_close:
	(void)usps_close(ps);
out_pipe:
	(void)close(pipefd[0]);
	(void)close(pipefd[1]);
	free(st.line.p);
	return ret;
}

/* ---- usps pub ------------------------------------------------------------ */

struct pub_job {
	usps *ps;
	const char *path, *topic, *type, *run_id;
	unsigned flags;
	double rate;	      /* events per second; 0: as fast as possible */
	struct timespec base; /* CLOCK_MONOTONIC time of event base_k */
	uint64_t base_k;
	uint64_t sent;
};

static int64_t ts_ns(const struct timespec *ts)
{
	return (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec;
}

static struct timespec ns_ts(int64_t ns)
{
	return (struct timespec){ .tv_sec = (time_t)(ns / 1000000000),
				  .tv_nsec = (long)(ns % 1000000000) };
}

/*
 * Wait for the next event's slot. Slot k is base + k/rate, an absolute
 * deadline computed afresh each time, so that neither the time publishing
 * takes nor rounding makes the pace drift. After a pause longer than one
 * interval (stdin was slow) the schedule starts over from now rather than
 * catching up with a burst. false if a signal came.
 */
static bool pub_pace(struct pub_job *j)
{
	struct timespec now;
	int64_t at, interval;

	if (j->rate <= 0)
		return !got_signal;
	(void)clock_gettime(CLOCK_MONOTONIC, &now);
	/* Rounded to the nanosecond; no libm needed. */
	interval = (int64_t)(1e9 / j->rate + 0.5);
	at = ts_ns(&j->base) +
	     (int64_t)((double)(j->sent - j->base_k) * 1e9 / j->rate + 0.5);
	if (j->sent == 0 || ts_ns(&now) - at > interval) {
		j->base = now;
		j->base_k = j->sent;
		return !got_signal;
	}
	struct timespec dl = ns_ts(at);

	while (!got_signal && clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME,
					      &dl, NULL) == EINTR)
		;
	return !got_signal;
}

/* Publish one event. EXIT_OK, or the exit code after saying why. */
static int pub_one(struct pub_job *j, const char *data, size_t len,
		   const char *what)
{
	int r;

	r = usps_publish_ex(j->ps, j->topic, j->type, data, len, j->run_id,
			    NULL, 0, j->flags);
	if (r == -EINVAL) {
		complain(what, "not one valid JSON value; not published");
		return EXIT_USAGE;
	}
	if (r == -EMSGSIZE) {
		complain(what, "%s; not published", strerror(-r));
		return EXIT_USAGE;
	}
	if (r < 0) {
		complain(j->path, "publish: %s", strerror(-r));
		return EXIT_FAIL;
	}
	j->sent++;
	return EXIT_OK;
}

/* One JSON value per line of stdin. */
static int pub_stdin(struct pub_job *j, uint64_t count)
{
	char *line = NULL, what[64];
	size_t cap = 0;
	uint64_t lineno = 0;
	int ret = EXIT_OK;

	while (count == 0 || j->sent < count) {
		ssize_t n;

		errno = 0;
		n = getline(&line, &cap, stdin);
		if (n < 0) {
			if (got_signal)
				break;
			if (errno == EINTR) {
				clearerr(stdin);
				continue;
			}
			if (ferror(stdin)) {
				complain("stdin", "%s", strerror(errno));
				ret = EXIT_FAIL;
			}
			break;
		}
		lineno++;
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			n--;
		if (strspn(line, " \t") >= (size_t)n)
			continue;
		if (!pub_pace(j))
			break;
		(void)snprintf(what, sizeof(what), "stdin:%" PRIu64, lineno);
		ret = pub_one(j, line, (size_t)n, what);
		if (ret != EXIT_OK)
			break;
	}
	free(line);
	return ret;
}

static int cmd_pub(int argc, char **argv)
{
	static const struct opt opts[] = {
		{ "help", 'h', false, OPT_HELP },
		{ "run-id", 'r', true, OPT_RUN_ID },
		{ "count", 'n', true, OPT_COUNT },
		{ "rate", 0, true, OPT_RATE },
		{ "local-only", 0, false, OPT_LOCAL_ONLY },
		{ NULL, 0, false, 0 },
	};
	struct args a = { .cmd = "pub", .argc = argc, .argv = argv, .i = 1 };
	struct pub_job j = { 0 };
	const char *data = NULL, *val;
	uint64_t count = 0;
	bool has_count = false;
	sigset_t oldmask;
	int id, r, ret;

	while ((id = next_arg(&a, opts, &val)) != ARG_END) {
		switch (id) {
		case ARG_ERROR:
			return EXIT_USAGE;
		case OPT_HELP:
			(void)fputs(pub_help, stdout);
			return EXIT_OK;
		case OPT_RUN_ID:
			j.run_id = val;
			break;
		case OPT_COUNT:
			if (!parse_u64(val, 1, UINT64_MAX, &count))
				return usage_error(a.cmd,
						   "--count: not a positive "
						   "integer: '%s'",
						   val);
			has_count = true;
			break;
		case OPT_RATE: {
			char *end;

			errno = 0;
			j.rate = strtod(val, &end);
			if (errno || end == val || !(j.rate > 0) ||
			    j.rate > 1e9 || (*end && strcmp(end, "/s") != 0))
				return usage_error(a.cmd,
						   "--rate: not a positive "
						   "number of events per "
						   "second: '%s'",
						   val);
			break;
		}
		case OPT_LOCAL_ONLY:
			j.flags |= USPS_LOCAL_ONLY;
			break;
		case ARG_POSITIONAL:
			if (!j.path)
				j.path = val;
			else if (!j.topic)
				j.topic = val;
			else if (!j.type)
				j.type = val;
			else if (!data)
				data = val;
			else
				return usage_error(
					a.cmd, "unexpected argument '%s'", val);
			break;
		}
	}
	if (!j.path)
		return usage_error(a.cmd, "missing PATH");
	if (!j.topic || !*j.topic)
		return usage_error(a.cmd, "missing TOPIC");
	if (!j.type)
		return usage_error(a.cmd, "missing TYPE");
	if (!utf8_valid(j.topic) || !utf8_valid(j.type) ||
	    (j.run_id && !utf8_valid(j.run_id)))
		return usage_error(a.cmd,
				   "TOPIC, TYPE or --run-id is not UTF-8");
	if (!data)
		data = "{}";
	if (!has_count)
		count = strcmp(data, "-") == 0 ? 0 : 1;

	signals_setup(&oldmask);
	ret = open_bus(j.path, &j.ps);
	/* The library's threads keep them blocked; here a signal interrupts
	 * a read or a pacing sleep. */
	(void)pthread_sigmask(SIG_SETMASK, &oldmask, NULL);
	if (ret != EXIT_OK)
		return ret;

	if (strcmp(data, "-") == 0) {
		ret = pub_stdin(&j, count);
	} else {
		for (uint64_t i = 0; i < count && ret == EXIT_OK; i++) {
			if (!pub_pace(&j))
				break;
			ret = pub_one(&j, data, strlen(data), "DATA");
		}
	}
	/* What was published is written out even after an error or a
	 * signal. */
	r = usps_flush(j.ps, PUB_FLUSH_TIMEOUT_MS);
	if (r < 0) {
		complain(j.path, "flush: %s", strerror(-r));
		if (ret == EXIT_OK)
			ret = EXIT_FAIL;
	}
	(void)usps_close(j.ps);
	if (got_signal && ret == EXIT_OK)
		ret = 128 + got_signal;
	return ret;
}

/* ---- usps status --------------------------------------------------------- */

struct broker_info {
	pid_t pid;
	uid_t uid;
	char comm[64];	    /* "" if unknown */
	int is_usps;	    /* 1 yes, 0 no, -1 unknown */
	long clients;	    /* -1 if unknown */
	int64_t bound_ms;   /* socket mtime; INT64_MIN if unknown */
	int64_t started_ms; /* process start; INT64_MIN if unknown */
	bool answered;	    /* a usps broker answered usps.status */
};

static bool read_small_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t len = 0;

	if (fd < 0)
		return false;
	while (len < size - 1) {
		ssize_t n = read(fd, buf + len, size - 1 - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	(void)close(fd);
	buf[len] = '\0';
	return len > 0;
}

/* When process @pid started, in Unix ms: its start in clock ticks since
 * boot (/proc/PID/stat, field 22) against CLOCK_BOOTTIME now. */
static int64_t process_start_ms(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long start_ticks;
	long hz = sysconf(_SC_CLK_TCK);
	struct timespec boot;
	int64_t age_ms;

	(void)snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if (!read_small_file(path, buf, sizeof(buf)) || hz <= 0 ||
	    clock_gettime(CLOCK_BOOTTIME, &boot) < 0)
		return INT64_MIN;
	/* The command (field 2) may hold spaces and parentheses: start
	 * after its closing one, at the space before field 3. */
	p = strrchr(buf, ')');
	if (!p)
		return INT64_MIN;
	p++;
	for (int field = 3; field < 22; field++) {
		p = strchr(p + 1, ' ');
		if (!p)
			return INT64_MIN;
	}
	if (sscanf(p, " %llu", &start_ticks) != 1)
		return INT64_MIN;
	age_ms = (int64_t)boot.tv_sec * 1000 + boot.tv_nsec / 1000000 -
		 (int64_t)(start_ticks * 1000 / (unsigned long long)hz);
	return real_ms() - age_ms;
}

/* Does @pid hold a flock on the file @st? 1, 0, or -1 if unknown. */
static int holds_flock(pid_t pid, const struct stat *st)
{
	char line[256];
	int found = 0;
	FILE *f = fopen("/proc/locks", "re");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned maj, mnr;
		unsigned long long ino;
		int lpid;

		/* "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF";
		 * waiters ("1: -> FLOCK ...") do not hold it. */
		if (sscanf(line, "%*d: FLOCK %*s %*s %d %x:%x:%llu", &lpid,
			   &maj, &mnr, &ino) != 4)
			continue;
		if (lpid == pid && ino == (unsigned long long)st->st_ino &&
		    maj == major(st->st_dev) && mnr == minor(st->st_dev)) {
			found = 1;
			break;
		}
	}
	(void)fclose(f);
	return found;
}

/*
 * Connections open to the listening socket bound at @st (the file at PATH),
 * from the kernel's sock_diag: the broker's end of each accepted connection
 * carries the bound file's inode. Leaves out our own probe (whose inode is
 * @probe_ino) and connections whose client end is already closed. -1 if the
 * kernel cannot tell us.
 */
static long count_clients(const struct stat *st, ino_t probe_ino)
{
	struct {
		struct nlmsghdr nlh;
		struct unix_diag_req req;
	} msg = {
		.nlh = {
			.nlmsg_len = sizeof(msg),
			.nlmsg_type = SOCK_DIAG_BY_FAMILY,
			.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP,
		},
		.req = {
			.sdiag_family = AF_UNIX,
			.udiag_states = 1u << 1, /* TCP_ESTABLISHED */
			.udiag_show = UDIAG_SHOW_VFS | UDIAG_SHOW_PEER,
		},
	};
	struct sockaddr_nl nl = { .nl_family = AF_NETLINK };
	long count = 0;
	bool done = false;
	char *buf;
	int fd;

	fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
	if (fd < 0)
		return -1;
	buf = malloc(32768);
	if (!buf || sendto(fd, &msg, sizeof(msg), 0, (struct sockaddr *)&nl,
			   sizeof(nl)) < 0)
		goto fail;
	while (!done) {
		ssize_t got = recv(fd, buf, 32768, 0);
		struct nlmsghdr *h = (struct nlmsghdr *)buf;
		unsigned int n = (unsigned int)got;

		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			goto fail;
		for (; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
			struct unix_diag_msg *m = NLMSG_DATA(h);
			struct rtattr *at = (struct rtattr *)(m + 1);
			int alen =
				(int)(h->nlmsg_len - NLMSG_LENGTH(sizeof(*m)));
			struct unix_diag_vfs vfs;
			bool has_vfs = false;
			uint32_t peer = 0;

			if (h->nlmsg_type == NLMSG_DONE) {
				done = true;
				break;
			}
			if (h->nlmsg_type == NLMSG_ERROR ||
			    h->nlmsg_type != SOCK_DIAG_BY_FAMILY)
				goto fail;
			for (; RTA_OK(at, alen); at = RTA_NEXT(at, alen)) {
				if (at->rta_type == UNIX_DIAG_VFS &&
				    RTA_PAYLOAD(at) >= sizeof(vfs)) {
					memcpy(&vfs, RTA_DATA(at), sizeof(vfs));
					has_vfs = true;
				} else if (at->rta_type == UNIX_DIAG_PEER &&
					   RTA_PAYLOAD(at) >= sizeof(peer)) {
					memcpy(&peer, RTA_DATA(at),
					       sizeof(peer));
				}
			}
			/* The kernel's dev_t is major << 20 | minor. */
			if (!has_vfs || vfs.udiag_vfs_ino != st->st_ino ||
			    vfs.udiag_vfs_dev >> 20 != major(st->st_dev) ||
			    (vfs.udiag_vfs_dev & 0xfffff) != minor(st->st_dev))
				continue;
			/* Not yet accepted (no inode), the client gone (no
			 * peer inode), or our own probe. */
			if (m->udiag_ino == 0 || peer == 0 ||
			    peer == (uint32_t)probe_ino)
				continue;
			count++;
		}
	}
	free(buf);
	(void)close(fd);
	return count;
fail:
	free(buf);
	(void)close(fd);
	return -1;
}

/*
 * Connect to @path and ask who listens. 1 and *info filled if a broker is
 * alive, 0 if none is (*why says why), or -errno if we cannot tell.
 */
/*
 * Ask a usps broker for its own account ({"type":"usps.status"}, a usps
 * extension that Mastra brokers ignore). Returns true and fills @info's
 * client count and tenure from the answer, false if none came in time.
 */
static bool query_status(int fd, struct broker_info *info)
{
	static const char req[] = "{\"type\":\"usps.status\"}\n";
	char buf[1024];
	size_t len = 0;
	int64_t deadline = mono_ms() + STATUS_QUERY_TIMEOUT_MS;
	const char *p;

	if (send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL) < 0)
		return false;
	while (!memchr(buf, '\n', len) && len < sizeof(buf) - 1) {
		int64_t left = deadline - mono_ms();
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		ssize_t n;

		if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
			return false;
		n = recv(fd, buf + len, sizeof(buf) - 1 - len, MSG_DONTWAIT);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0)
			return false;
		len += (size_t)n;
	}
	buf[len] = '\0';
	static const char head[] = "{\"type\":\"usps.status\"";

	if (strncmp(buf, head, sizeof(head) - 1) != 0)
		return false;
	p = strstr(buf, "\"clients\":");
	if (p)
		info->clients = strtol(p + 10, NULL, 10);
	p = strstr(buf, "\"brokerSinceMs\":");
	if (p)
		info->bound_ms = strtoll(p + 16, NULL, 10);
	info->is_usps = 1;
	return true;
}

static int probe_broker(const char *path, struct broker_info *info,
			const char **why)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct timeval tv = {
		.tv_sec = STATUS_CONNECT_TIMEOUT_MS / 1000,
		.tv_usec =
			(suseconds_t)(STATUS_CONNECT_TIMEOUT_MS % 1000) * 1000,
	};
	struct ucred cred;
	socklen_t len = sizeof(cred);
	struct stat sock_st, probe_st, lock_st;
	char proc[64], *lock_path;
	int fd, r;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, strlen(path));
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* A broker whose listen queue is full makes connect() wait. */
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	while ((r = connect(fd, (struct sockaddr *)&sa, sizeof(sa))) < 0 &&
	       errno == EINTR)
		;
	if (r < 0) {
		r = -errno;
		(void)close(fd);
		if (r == -ENOENT) {
			*why = "no such file";
			return 0;
		}
		if (r == -ECONNREFUSED) {
			*why = "nobody listens on it: a dead broker's "
			       "socket, or not a socket";
			return 0;
		}
		if (r == -EAGAIN)
			r = -ETIMEDOUT;
		return r;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
		r = -errno;
		(void)close(fd);
		return r;
	}
	info->pid = cred.pid;
	info->uid = cred.uid;
	info->comm[0] = '\0';
	info->is_usps = -1;
	info->clients = -1;
	info->bound_ms = INT64_MIN;
	info->started_ms = INT64_MIN;

	if (stat(path, &sock_st) == 0 && fstat(fd, &probe_st) == 0) {
		info->bound_ms = (int64_t)sock_st.st_mtim.tv_sec * 1000 +
				 sock_st.st_mtim.tv_nsec / 1000000;
		info->clients = count_clients(&sock_st, probe_st.st_ino);
	}
	/* A usps broker's own account is exact; keep the above otherwise. */
	info->answered = query_status(fd, info);
	(void)close(fd);

	/* pid 0: the broker lives in another pid namespace. */
	if (info->pid > 0) {
		(void)snprintf(proc, sizeof(proc), "/proc/%d/comm",
			       (int)info->pid);
		if (read_small_file(proc, info->comm, sizeof(info->comm)))
			info->comm[strcspn(info->comm, "\n")] = '\0';
		info->started_ms = process_start_ms(info->pid);
		if (!info->answered &&
		    asprintf(&lock_path, "%s.lock", path) >= 0) {
			if (stat(lock_path, &lock_st) == 0)
				info->is_usps =
					holds_flock(info->pid, &lock_st);
			else if (errno == ENOENT)
				info->is_usps = 0;
			free(lock_path);
		}
	}
	return 1;
}

/* "12.3 s", "4 min 5 s", "3 h 2 min", "2 d 4 h". */
static void human_duration(int64_t ms, char *buf, size_t size)
{
	int64_t s = ms / 1000;

	if (ms < 0)
		ms = s = 0;
	if (s < 60)
		(void)snprintf(buf, size, "%" PRId64 ".%" PRId64 " s", s,
			       ms % 1000 / 100);
	else if (s < 3600)
		(void)snprintf(buf, size, "%" PRId64 " min %" PRId64 " s",
			       s / 60, s % 60);
	else if (s < 86400)
		(void)snprintf(buf, size, "%" PRId64 " h %" PRId64 " min",
			       s / 3600, s % 3600 / 60);
	else
		(void)snprintf(buf, size, "%" PRId64 " d %" PRId64 " h",
			       s / 86400, s % 86400 / 3600);
}

static void status_print_text(const char *path, const struct broker_info *in)
{
	struct passwd pw, *pwp = NULL;
	char pwbuf[1024], iso[64], dur[64];
	int64_t now = real_ms();

	(void)printf("broker:         alive at %s\n", path);
	if (in->pid > 0)
		(void)printf("pid:            %d\n", (int)in->pid);
	else
		(void)printf(
			"pid:            unknown (another pid namespace)\n");
	(void)getpwuid_r(in->uid, &pw, pwbuf, sizeof(pwbuf), &pwp);
	(void)printf("uid:            %u%s%s%s\n", (unsigned)in->uid,
		     pwp ? " (" : "", pwp ? pwp->pw_name : "", pwp ? ")" : "");
	(void)printf("command:        %s\n",
		     in->comm[0] ? in->comm : "unknown");
	(void)printf("implementation: %s\n",
		     in->answered	? "usps (answered usps.status)"
		     : in->is_usps > 0	? "usps (holds PATH.lock)"
		     : in->is_usps == 0 ? "not usps (does not hold PATH.lock;"
					  " e.g. Mastra's UnixSocketPubSub)"
					: "unknown");
	if (in->clients >= 0)
		(void)printf("clients:        %ld\n", in->clients);
	else
		(void)printf("clients:        unknown (no sock_diag)\n");
	if (in->bound_ms != INT64_MIN && iso_time(in->bound_ms, iso, 64)) {
		human_duration(now - in->bound_ms, dur, sizeof(dur));
		(void)printf("broker since:   %s (%s)\n", iso, dur);
	} else {
		(void)printf("broker since:   unknown\n");
	}
	if (in->started_ms != INT64_MIN && iso_time(in->started_ms, iso, 64)) {
		human_duration(now - in->started_ms, dur, sizeof(dur));
		(void)printf("process up:     %s (%s)\n", iso, dur);
	} else {
		(void)printf("process up:     unknown\n");
	}
}

static void status_print_json(const char *path, const struct broker_info *in,
			      const char *why)
{
	struct buf b = { 0 };
	char num[96], iso[64];

	buf_adds(&b, "{\"path\":");
	buf_add_json_strz(&b, path);
	if (!in) {
		buf_adds(&b, ",\"alive\":false,\"reason\":");
		buf_add_json_strz(&b, why);
		goto end;
	}
	(void)snprintf(num, sizeof(num),
		       ",\"alive\":true,\"pid\":%d,\"uid\":%u", (int)in->pid,
		       (unsigned)in->uid);
	buf_adds(&b, num);
	buf_adds(&b, ",\"command\":");
	buf_add_json_strz(&b, in->comm[0] ? in->comm : NULL);
	buf_adds(&b, in->is_usps > 0	? ",\"usps\":true"
		     : in->is_usps == 0 ? ",\"usps\":false"
					: ",\"usps\":null");
	if (in->clients >= 0)
		(void)snprintf(num, sizeof(num), ",\"clients\":%ld",
			       in->clients);
	else
		(void)snprintf(num, sizeof(num), ",\"clients\":null");
	buf_adds(&b, num);
	buf_adds(&b, ",\"brokerSince\":");
	buf_add_json_strz(&b, in->bound_ms != INT64_MIN &&
					      iso_time(in->bound_ms, iso, 64)
				      ? iso
				      : NULL);
	buf_adds(&b, ",\"processStartedAt\":");
	buf_add_json_strz(&b, in->started_ms != INT64_MIN &&
					      iso_time(in->started_ms, iso, 64)
				      ? iso
				      : NULL);
end:
	buf_adds(&b, "}\n");
	if (!b.oom)
		(void)fwrite(b.p, 1, b.len, stdout);
	free(b.p);
}

static int cmd_status(int argc, char **argv)
{
	static const struct opt opts[] = {
		{ "help", 'h', false, OPT_HELP },
		{ "json", 'j', false, OPT_JSON },
		{ NULL, 0, false, 0 },
	};
	struct args a = { .cmd = "status", .argc = argc, .argv = argv, .i = 1 };
	struct broker_info info = { 0 };
	const char *path = NULL, *val, *why = NULL;
	bool json = false;
	int id, r;

	while ((id = next_arg(&a, opts, &val)) != ARG_END) {
		switch (id) {
		case ARG_ERROR:
			return EXIT_USAGE;
		case OPT_HELP:
			(void)fputs(status_help, stdout);
			return EXIT_OK;
		case OPT_JSON:
			json = true;
			break;
		case ARG_POSITIONAL:
			if (path)
				return usage_error(
					a.cmd, "unexpected argument '%s'", val);
			path = val;
			break;
		}
	}
	if (!path || !*path)
		return usage_error(a.cmd, "missing PATH");

	r = probe_broker(path, &info, &why);
	if (r < 0) {
		complain(path, "%s", strerror(-r));
		return r == -ENAMETOOLONG ? EXIT_USAGE : EXIT_FAIL;
	}
	if (json)
		status_print_json(path, r ? &info : NULL, why);
	else if (r)
		status_print_text(path, &info);
	else
		(void)printf("broker:         none at %s (%s)\n", path, why);
	return r ? EXIT_OK : EXIT_FAIL;
}

/* ---- main ---------------------------------------------------------------- */

static int print_version(void)
{
	(void)printf("usps %s (libusps %s)\n", USPS_VERSION_STRING,
		     usps_version());
	return EXIT_OK;
}

static int help_for(const char *cmd)
{
	if (!cmd) {
		(void)fputs(main_help, stdout);
		return EXIT_OK;
	}
	if (strcmp(cmd, "sub") == 0)
		(void)fputs(sub_help, stdout);
	else if (strcmp(cmd, "pub") == 0)
		(void)fputs(pub_help, stdout);
	else if (strcmp(cmd, "status") == 0)
		(void)fputs(status_help, stdout);
	else
		return usage_error("help", "unknown command '%s'", cmd);
	return EXIT_OK;
}

int main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : NULL;
	int ret;

	if (!cmd) {
		(void)fputs(main_help, stderr);
		return EXIT_USAGE;
	}
	if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0)
		ret = help_for(NULL);
	else if (strcmp(cmd, "help") == 0)
		ret = argc > 3 ? usage_error("help", "unexpected argument '%s'",
					     argv[3])
			       : help_for(argc > 2 ? argv[2] : NULL);
	else if (strcmp(cmd, "-V") == 0 || strcmp(cmd, "--version") == 0)
		ret = print_version();
	else if (strcmp(cmd, "sub") == 0)
		ret = cmd_sub(argc - 1, argv + 1);
	else if (strcmp(cmd, "pub") == 0)
		ret = cmd_pub(argc - 1, argv + 1);
	else if (strcmp(cmd, "status") == 0)
		ret = cmd_status(argc - 1, argv + 1);
	else {
		(void)fprintf(stderr,
			      "usps: unknown command '%s'\n"
			      "Try 'usps --help'.\n",
			      cmd);
		return EXIT_USAGE;
	}
	/* Help and status write to a stdio stdout: a full disk or closed
	 * pipe is a failure. */
	if (fflush(stdout) != 0 && ret == EXIT_OK) {
		complain("stdout", "%s", strerror(errno));
		ret = EXIT_FAIL;
	}
	return ret;
}
