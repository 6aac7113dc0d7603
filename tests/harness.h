/* SPDX-License-Identifier: MIT */
/*
 * A small test harness: one executable per tests/test_*.c. Each test runs in
 * order in the same process with its own private temporary directory, and
 * the program ends with the closing line "N passed, N failed" that CI reads.
 *
 *	TEST(name) { CHECK(x == 1); CHECK_EQ_INT(r, 0); }
 *	int main(void) { RUN(name); return harness_end(); }
 *
 * Helpers for multi-process tests: fork a child running a function, reap it
 * with a deadline (killing it by pid if it overstays), and wait for lines on
 * a pipe with a timeout.
 */
#ifndef USPS_TEST_HARNESS_H
#define USPS_TEST_HARNESS_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int harness_passed, harness_failed, harness_cur_failed;
static const char *harness_cur_name;
static char harness_dir[PATH_MAX];

#define TEST(name) static void name(void)

#define CHECK(cond)                                                           \
	do {                                                                  \
		if (!(cond)) {                                                \
			fprintf(stderr, "%s:%d: %s: CHECK(%s) failed\n",      \
				__FILE__, __LINE__, harness_cur_name, #cond); \
			harness_cur_failed++;                                 \
		}                                                             \
	} while (0)

#define CHECK_EQ_INT(a, b)                                                    \
	do {                                                                  \
		long long a_ = (long long)(a), b_ = (long long)(b);           \
		if (a_ != b_) {                                               \
			fprintf(stderr,                                       \
				"%s:%d: %s: %s == %s failed: %lld != %lld\n", \
				__FILE__, __LINE__, harness_cur_name, #a, #b, \
				a_, b_);                                      \
			harness_cur_failed++;                                 \
		}                                                             \
	} while (0)

#define CHECK_EQ_STR(a, b)                                                    \
	do {                                                                  \
		const char *a_ = (a), *b_ = (b);                              \
		if (!a_ || !b_ || strcmp(a_, b_) != 0) {                      \
			fprintf(stderr,                                       \
				"%s:%d: %s: %s == %s failed:\n  got  %s\n"    \
				"  want %s\n",                                \
				__FILE__, __LINE__, harness_cur_name, #a, #b, \
				a_ ? a_ : "(null)", b_ ? b_ : "(null)");      \
			harness_cur_failed++;                                 \
		}                                                             \
	} while (0)

/* Stop the current test here if a check failed (e.g. before using a NULL). */
#define REQUIRE(cond)                                                         \
	do {                                                                  \
		if (!(cond)) {                                                \
			fprintf(stderr, "%s:%d: %s: REQUIRE(%s) failed\n",    \
				__FILE__, __LINE__, harness_cur_name, #cond); \
			harness_cur_failed++;                                 \
			return;                                               \
		}                                                             \
	} while (0)

static inline int64_t harness_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int harness_rm_cb(const char *path, const struct stat *sb, int flag,
			 struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	(void)remove(path);
	return 0;
}

/* Remove the directory tree at @path (tests' private directories). */
static inline void harness_rmtree(const char *path)
{
	(void)nftw(path, harness_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* The current test's private directory, created fresh for each test. */
static inline const char *harness_tmpdir(void)
{
	return harness_dir;
}

/* Write "<tmpdir>/<name>" into @buf (PATH_MAX). Returns @buf. */
static inline char *harness_path(char *buf, const char *name)
{
	int n = snprintf(buf, PATH_MAX, "%s/%s", harness_dir, name);

	if (n < 0 || n >= PATH_MAX)
		buf[0] = '\0'; /* fails the test's open() loudly */
	return buf;
}

static inline void harness_run(void (*fn)(void), const char *name)
{
	const char *base = getenv("TMPDIR");
	const char *only = getenv("USPS_TEST");

	/* USPS_TEST=substring runs only the tests whose name contains it. */
	if (only && *only && !strstr(name, only))
		return;
	harness_cur_name = name;
	harness_cur_failed = 0;
	snprintf(harness_dir, sizeof(harness_dir), "%s/usps-test-XXXXXX",
		 base && *base ? base : "/tmp");
	if (!mkdtemp(harness_dir)) {
		fprintf(stderr, "%s: mkdtemp: %s\n", name, strerror(errno));
		harness_failed++;
		return;
	}
	fn();
	harness_rmtree(harness_dir);
	if (harness_cur_failed) {
		harness_failed++;
		printf("FAIL %s\n", name);
	} else {
		harness_passed++;
		printf("ok   %s\n", name);
	}
	fflush(stdout);
}

#define RUN(name) harness_run(name, #name)

static inline int harness_end(void)
{
	printf("%d passed, %d failed\n", harness_passed, harness_failed);
	fflush(stdout);
	return harness_failed ? 1 : 0;
}

/*
 * Wait for @pid for at most @timeout_ms; past that, SIGKILL it (by pid) and
 * reap it. Returns the wait status, or -1 if it had to be killed.
 */
static inline int harness_reap(pid_t pid, int timeout_ms)
{
	int64_t deadline = harness_now_ms() + timeout_ms;
	int status;

	for (;;) {
		pid_t r = waitpid(pid, &status, WNOHANG);

		if (r == pid)
			return status;
		if (r < 0 && errno != EINTR)
			return -1;
		if (harness_now_ms() >= deadline) {
			(void)kill(pid, SIGKILL);
			while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
				;
			return -1;
		}
		/* Polling a child's exit has no fd to wait on; 1 ms naps. */
		(void)poll(NULL, 0, 1);
	}
}

/* Did the child exit normally with code 0? */
static inline bool harness_exited_ok(int status)
{
	return status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/*
 * A forked child with a pipe each way: the child writes lines to @out_fd
 * (parent reads @rd) and reads commands from @in_fd (parent writes @wr).
 */
struct harness_child {
	pid_t pid;
	int rd; /* parent reads the child's lines here */
	int wr; /* parent writes commands here */
	char buf[8192];
	size_t len;
};

/*
 * Fork a child that runs fn(arg, in_fd, out_fd) and _exit()s with its
 * return value. Returns 0 or -errno.
 */
static inline int harness_spawn(struct harness_child *c,
				int (*fn)(void *arg, int in_fd, int out_fd),
				void *arg)
{
	int up[2], down[2];

	memset(c, 0, sizeof(*c));
	if (pipe2(up, O_CLOEXEC) < 0)
		return -errno;
	if (pipe2(down, O_CLOEXEC) < 0) {
		close(up[0]);
		close(up[1]);
		return -errno;
	}
	fflush(stdout);
	fflush(stderr);
	c->pid = fork();
	if (c->pid < 0) {
		int e = errno;

		close(up[0]);
		close(up[1]);
		close(down[0]);
		close(down[1]);
		return -e;
	}
	if (c->pid == 0) {
		int r;

		close(up[0]);
		close(down[1]);
		/* Die with the test runner rather than linger. */
		r = fn(arg, down[0], up[1]);
		_exit(r);
	}
	close(up[1]);
	close(down[0]);
	c->rd = up[0];
	c->wr = down[1];
	return 0;
}

/* Child side: write one formatted line to @fd. */
__attribute__((format(printf, 2, 3))) static inline void
harness_say(int fd, const char *fmt, ...)
{
	char line[4096];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	for (int off = 0; off < n;) {
		ssize_t w = write(fd, line + off, (size_t)(n - off));

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		off += (int)w;
	}
}

/*
 * Read one line from @fd within @timeout_ms into @out (@cap bytes, without
 * the newline, NUL-terminated), using @buf/@len as the carry-over buffer.
 * Returns 1 on a line, 0 on end of file, -ETIMEDOUT, or -errno.
 */
static inline int harness_read_line(int fd, char *buf, size_t *len,
				    size_t bufcap, char *out, size_t cap,
				    int timeout_ms)
{
	int64_t deadline = harness_now_ms() + timeout_ms;

	for (;;) {
		char *nl = memchr(buf, '\n', *len);

		if (nl) {
			size_t n = (size_t)(nl - buf);
			size_t k = n < cap - 1 ? n : cap - 1;

			memcpy(out, buf, k);
			out[k] = '\0';
			memmove(buf, nl + 1, *len - n - 1);
			*len -= n + 1;
			return 1;
		}
		if (*len == bufcap)
			*len = 0; /* an overlong line: drop it */
		int64_t left = deadline - harness_now_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int r = poll(&p, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
		ssize_t got = read(fd, buf + *len, bufcap - *len);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return -errno;
		if (got == 0)
			return 0;
		*len += (size_t)got;
	}
}

/* Parent side: next line from child @c within @timeout_ms. */
static inline int harness_child_line(struct harness_child *c, char *out,
				     size_t cap, int timeout_ms)
{
	return harness_read_line(c->rd, c->buf, &c->len, sizeof(c->buf), out,
				 cap, timeout_ms);
}

/*
 * Parent side: read lines from @c until one starts with @prefix (copied to
 * @out if non-NULL). Returns 1, 0 on EOF, -ETIMEDOUT.
 */
static inline int harness_child_expect(struct harness_child *c,
				       const char *prefix, char *out,
				       size_t cap, int timeout_ms)
{
	int64_t deadline = harness_now_ms() + timeout_ms;
	char line[4096];

	for (;;) {
		int64_t left = deadline - harness_now_ms();
		int r;

		if (left <= 0)
			return -ETIMEDOUT;
		r = harness_child_line(c, line, sizeof(line), (int)left);
		if (r <= 0)
			return r;
		if (strncmp(line, prefix, strlen(prefix)) == 0) {
			if (out)
				snprintf(out, cap, "%s", line);
			return 1;
		}
	}
}

/* Parent side: send a command line to child @c. */
#define harness_tell(c, ...) harness_say((c)->wr, __VA_ARGS__)

/*
 * Parent side: close the pipes and reap @c within @timeout_ms (SIGKILL by
 * pid past it). Returns the wait status or -1.
 */
static inline int harness_child_finish(struct harness_child *c, int timeout_ms)
{
	int st;

	if (c->wr >= 0)
		close(c->wr);
	c->wr = -1;
	st = c->pid > 0 ? harness_reap(c->pid, timeout_ms) : -1;
	if (c->rd >= 0)
		close(c->rd);
	c->rd = -1;
	c->pid = 0;
	return st;
}

#endif /* USPS_TEST_HARNESS_H */
