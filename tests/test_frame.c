/* SPDX-License-Identifier: MIT */
/*
 * Tests of src/frame.c. The line reader is held to Mastra's framing and limit
 * rules (spec §2.1, §2.7, §5.1 items 16-19): every split of the input, bytes
 * that are not text, the exact limit on both sides, memory and time for a
 * 4 MiB line fed one byte at a time, and reads from real sockets. The write
 * queue is driven against a socket that fills, drains and closes, with chunk
 * reference counts checked throughout.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <sys/socket.h>

#include "frame.h"

/* frame.c's read block: a reader may hold max_frame plus this much. */
#define BLOCK ((size_t)64 * 1024)
/* frame.c's read of small lines. */
#define READ_SMALL ((size_t)16 * 1024)
#define MIB ((size_t)1024 * 1024)

/* ---- helpers ---- */

/*
 * Like REQUIRE(), but @cond is evaluated once: harness.h's REQUIRE() tests
 * its argument twice, so it must not be given a call with side effects.
 */
#define MUST(cond)                                                            \
	do {                                                                  \
		if (!(cond)) {                                                \
			(void)fprintf(stderr, "%s:%d: %s: MUST(%s) failed\n", \
				      __FILE__, __LINE__, harness_cur_name,   \
				      #cond);                                 \
			harness_cur_failed++;                                 \
			return;                                               \
		}                                                             \
	} while (0)

static uint64_t rng_state;

static void rng_seed(uint64_t seed)
{
	rng_state = seed ? seed : 1;
}

/* xorshift64*: deterministic, so that a failure reproduces. */
static uint64_t rng_next(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ULL;
}

static size_t rng_below(size_t n)
{
	return (size_t)(rng_next() % n);
}

/* A growable byte string. Test code: running out of memory aborts. */
struct bytes {
	char *p;
	size_t len;
	size_t cap;
};

static void bytes_put(struct bytes *b, const void *p, size_t n)
{
	if (b->cap - b->len < n) {
		size_t ncap = b->cap ? b->cap : 256;
		char *np;

		while (ncap - b->len < n)
			ncap *= 2;
		np = realloc(b->p, ncap);
		if (!np) {
			(void)fprintf(stderr, "test_frame: out of memory\n");
			abort();
		}
		b->p = np;
		b->cap = ncap;
	}
	if (n && p)
		memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void bytes_free(struct bytes *b)
{
	free(b->p);
	*b = (struct bytes){ 0 };
}

static bool bytes_same(const struct bytes *a, const struct bytes *b)
{
	return a->len == b->len &&
	       (a->len == 0 || memcmp(a->p, b->p, a->len) == 0);
}

/* A list of lines, encoded as (size_t length, bytes) records. */
static void lines_add(struct bytes *list, const char *p, size_t n)
{
	bytes_put(list, &n, sizeof(n));
	bytes_put(list, p, n);
}

/* The lines a reader should give for @p[0..n) when no limit trips. */
static void lines_expected(struct bytes *list, const char *p, size_t n)
{
	size_t s = 0;

	for (size_t i = 0; i < n; i++) {
		if (p[i] == '\n') {
			lines_add(list, p + s, i - s);
			s = i + 1;
		}
	}
}

/* Take every complete line from @r onto @list; next()'s last result. */
static int drain(struct usps__reader *r, struct bytes *list)
{
	const char *line;
	size_t n;
	int ret;

	while ((ret = usps__reader_next(r, &line, &n)) == 1)
		lines_add(list, line, n);
	return ret;
}

static bool make_pair(int sv[2])
{
	return socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
			  0, sv) == 0;
}

static void close_pair(int sv[2])
{
	if (sv[0] >= 0)
		close(sv[0]);
	if (sv[1] >= 0)
		close(sv[1]);
	sv[0] = sv[1] = -1;
}

/* Read all that non-blocking @fd has ready onto @b. Bytes read or -errno. */
static ssize_t read_ready(int fd, struct bytes *b)
{
	static char tmp[64 * 1024];
	ssize_t total = 0;

	for (;;) {
		ssize_t n = read(fd, tmp, sizeof(tmp));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return total;
		if (n < 0)
			return -errno;
		if (n == 0)
			return total;
		bytes_put(b, tmp, (size_t)n);
		total += n;
	}
}

/* Write as much of @p[0..n) as non-blocking @fd takes. Bytes written. */
static size_t write_some(int fd, const void *p, size_t n)
{
	size_t off = 0;

	while (off < n) {
		ssize_t w = write(fd, (const char *)p + off, n - off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	return off;
}

/*
 * Blank lines, CRLF, a two-byte UTF-8 character, whitespace-only lines, a
 * NUL, invalid UTF-8, and an unterminated tail.
 */
static const char sample[] =
	"{\"type\":\"subscribe\",\"topic\":\"topic-\xc3\xa9\"}\n"
	"\n"
	"crlf\r\n"
	"\r\n"
	"  \t \n"
	"nul\0inside\n"
	"\xff\xfe\xc3 bad utf-8\n"
	"\n\n"
	"unterminated tail";
#define SAMPLE_LEN (sizeof(sample) - 1)
#define SAMPLE_TAIL (sizeof("unterminated tail") - 1)

/* ---- reader: framing ---- */

/* Cut the sample at every pair of positions: every 2- and 3-way split. */
TEST(reader_every_split)
{
	struct bytes want = { 0 }, got = { 0 };

	lines_expected(&want, sample, SAMPLE_LEN);
	for (size_t i = 0; i <= SAMPLE_LEN; i++) {
		for (size_t j = i; j <= SAMPLE_LEN; j++) {
			struct usps__reader r;
			bool ok = true;

			usps__reader_init(&r, 1024);
			got.len = 0;
			ok &= usps__reader_feed(&r, sample, i) == 0;
			ok &= drain(&r, &got) == 0;
			ok &= usps__reader_feed(&r, sample + i, j - i) == 0;
			ok &= drain(&r, &got) == 0;
			ok &= usps__reader_feed(&r, sample + j,
						SAMPLE_LEN - j) == 0;
			ok &= drain(&r, &got) == 0;
			ok &= bytes_same(&got, &want);
			ok &= usps__reader_pending(&r) == SAMPLE_TAIL;
			usps__reader_free(&r);
			if (!ok) {
				(void)fprintf(stderr, "split at %zu, %zu\n", i,
					      j);
				CHECK(ok);
				goto out;
			}
		}
	}
out:
	bytes_free(&want);
	bytes_free(&got);
}

TEST(reader_one_byte_and_random_chunks)
{
	struct bytes in = { 0 }, want = { 0 }, got = { 0 };
	struct usps__reader r;

	for (int i = 0; i < 50; i++)
		bytes_put(&in, sample, SAMPLE_LEN);
	lines_expected(&want, in.p, in.len);

	usps__reader_init(&r, 1024);
	for (size_t i = 0; i < in.len; i++) {
		CHECK_EQ_INT(usps__reader_feed(&r, in.p + i, 1), 0);
		CHECK_EQ_INT(drain(&r, &got), 0);
	}
	CHECK(bytes_same(&got, &want));
	CHECK_EQ_INT(usps__reader_pending(&r), SAMPLE_TAIL);
	usps__reader_free(&r);

	for (uint64_t seed = 1; seed <= 300; seed++) {
		size_t most = seed % 3 == 0 ? 3 : seed % 3 == 1 ? 40 : 2000;

		rng_seed(seed);
		usps__reader_init(&r, 1024);
		got.len = 0;
		for (size_t off = 0; off < in.len;) {
			size_t n = 1 + rng_below(most);

			if (n > in.len - off)
				n = in.len - off;
			CHECK_EQ_INT(usps__reader_feed(&r, in.p + off, n), 0);
			CHECK_EQ_INT(drain(&r, &got), 0);
			off += n;
		}
		CHECK(bytes_same(&got, &want));
		usps__reader_free(&r);
		if (harness_cur_failed)
			break;
	}
	bytes_free(&in);
	bytes_free(&want);
	bytes_free(&got);
}

/*
 * Steady traffic of short lines lives in one resting block: the unread tail
 * is slid to the front, the buffer never grows.
 */
TEST(reader_short_lines_stay_in_one_block)
{
	static const char line[] = "{\"type\":\"publish\",\"topic\":\"t\"}\n";
	struct bytes in = { 0 }, want = { 0 }, got = { 0 };
	struct usps__reader r;
	size_t most_cap = 0;

	while (in.len < 4 * BLOCK)
		bytes_put(&in, line, sizeof(line) - 1);
	lines_expected(&want, in.p, in.len);
	rng_seed(99);
	usps__reader_init(&r, 1024);
	/* Cut inside a line each time, so that some tail is always held. */
	for (size_t off = 0; off < in.len;) {
		size_t end = off - off % (sizeof(line) - 1) +
			     (1 + rng_below(30)) * (sizeof(line) - 1) + 1 +
			     rng_below(sizeof(line) - 2);
		size_t n = (end < in.len ? end : in.len) - off;

		CHECK_EQ_INT(usps__reader_feed(&r, in.p + off, n), 0);
		CHECK_EQ_INT(drain(&r, &got), 0);
		if (r.cap > most_cap)
			most_cap = r.cap;
		off += n;
	}
	CHECK(bytes_same(&got, &want));
	CHECK_EQ_INT(most_cap, BLOCK);
	usps__reader_free(&r);
	bytes_free(&in);
	bytes_free(&want);
	bytes_free(&got);
}

/* Spec §5.1 item 18: the reply's bytes are intact, é and all. */
TEST(reader_utf8_split)
{
	static const char frame[] =
		"{\"type\":\"subscribe\",\"topic\":\"topic-\xc3\xa9\"}\n";
	struct usps__reader r;
	const char *line;
	size_t n;

	usps__reader_init(&r, 1024);
	for (size_t i = 0; i + 1 < sizeof(frame) - 1; i++) {
		CHECK_EQ_INT(usps__reader_feed(&r, frame + i, 1), 0);
		CHECK_EQ_INT(usps__reader_next(&r, &line, &n), 0);
	}
	CHECK_EQ_INT(usps__reader_feed(&r, "\n", 1), 0);
	MUST(usps__reader_next(&r, &line, &n) == 1);
	CHECK_EQ_INT(n, sizeof(frame) - 2);
	CHECK(memcmp(line, frame, n) == 0);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), 0);

	/* The split falls between the two bytes of é. */
	CHECK_EQ_INT(usps__reader_feed(&r, "topic-\xc3", 7), 0);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), 0);
	CHECK_EQ_INT(usps__reader_feed(&r, "\xa9\n", 2), 0);
	MUST(usps__reader_next(&r, &line, &n) == 1);
	CHECK_EQ_INT(n, 8);
	CHECK(memcmp(line, "topic-\xc3\xa9", 8) == 0);
	CHECK_EQ_INT(usps__reader_pending(&r), 0);
	usps__reader_free(&r);
}

/* '\r' is kept (JSON whitespace to the parser); blank lines come out. */
TEST(reader_crlf_and_blank_lines)
{
	static const char in[] = "a\r\n\n\r\n\nb\n";
	static const char *const want[] = { "a\r", "", "\r", "", "b" };
	struct usps__reader r;
	const char *line;
	size_t n;

	usps__reader_init(&r, 16);
	CHECK_EQ_INT(usps__reader_feed(&r, in, sizeof(in) - 1), 0);
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		MUST(usps__reader_next(&r, &line, &n) == 1);
		CHECK_EQ_INT(n, strlen(want[i]));
		CHECK(memcmp(line, want[i], n) == 0);
	}
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), 0);
	CHECK_EQ_INT(usps__reader_pending(&r), 0);
	usps__reader_free(&r);
}

/* ---- reader: limits (spec §2.7) ---- */

TEST(reader_limit_terminated)
{
	char x[1026];
	struct usps__reader r;
	const char *line;
	size_t n;

	memset(x, 'x', sizeof(x));

	/* A line of exactly max_frame bytes passes. */
	usps__reader_init(&r, 1024);
	CHECK_EQ_INT(usps__reader_feed(&r, x, 1024), 0);
	CHECK_EQ_INT(usps__reader_feed(&r, "\n", 1), 0);
	MUST(usps__reader_next(&r, &line, &n) == 1);
	CHECK_EQ_INT(n, 1024);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), 0);

	/* One more byte does not, and the reader stays failed. */
	CHECK_EQ_INT(usps__reader_feed(&r, x, 1025), 0);
	CHECK_EQ_INT(usps__reader_feed(&r, "\n", 1), 0);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), -EMSGSIZE);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), -EMSGSIZE);
	CHECK_EQ_INT(usps__reader_feed(&r, "ok\n", 3), 0);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), -EMSGSIZE);
	usps__reader_free(&r);

	/* Both, in one feed, after a good line. */
	usps__reader_init(&r, 1024);
	CHECK_EQ_INT(usps__reader_feed(&r, "ok\n", 3), 0);
	CHECK_EQ_INT(usps__reader_feed(&r, x, 1024), 0);
	CHECK_EQ_INT(usps__reader_feed(&r, "\nok2\n", 5), 0);
	CHECK_EQ_INT(usps__reader_feed(&r, x, 1025), 0);
	CHECK_EQ_INT(usps__reader_feed(&r, "\n", 1), 0);
	MUST(usps__reader_next(&r, &line, &n) == 1);
	CHECK_EQ_INT(n, 2);
	MUST(usps__reader_next(&r, &line, &n) == 1);
	CHECK_EQ_INT(n, 1024);
	MUST(usps__reader_next(&r, &line, &n) == 1);
	CHECK_EQ_INT(n, 3);
	CHECK(memcmp(line, "ok2", 3) == 0);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), -EMSGSIZE);
	usps__reader_free(&r);
}

TEST(reader_limit_unterminated)
{
	char x[1025];
	struct usps__reader r;
	const char *line;
	size_t n;

	memset(x, 'x', sizeof(x));

	/* max_frame unterminated bytes are held; one more trips. */
	usps__reader_init(&r, 1024);
	CHECK_EQ_INT(usps__reader_feed(&r, x, 1024), 0);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), 0);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), 0);
	CHECK_EQ_INT(usps__reader_pending(&r), 1024);
	CHECK_EQ_INT(usps__reader_feed(&r, "x", 1), 0);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), -EMSGSIZE);
	usps__reader_free(&r);

	/* Byte by byte: fine up to max_frame, an error at the next one. */
	usps__reader_init(&r, 1024);
	for (size_t i = 0; i < 1024; i++) {
		CHECK_EQ_INT(usps__reader_feed(&r, "x", 1), 0);
		CHECK_EQ_INT(usps__reader_next(&r, &line, &n), 0);
	}
	CHECK_EQ_INT(usps__reader_feed(&r, "x", 1), 0);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), -EMSGSIZE);
	usps__reader_free(&r);

	/* The held max_frame bytes still make a line when '\n' comes. */
	usps__reader_init(&r, 1024);
	for (size_t i = 0; i < 1024; i++) {
		CHECK_EQ_INT(usps__reader_feed(&r, "x", 1), 0);
		CHECK_EQ_INT(usps__reader_next(&r, &line, &n), 0);
	}
	CHECK_EQ_INT(usps__reader_feed(&r, "\n", 1), 0);
	MUST(usps__reader_next(&r, &line, &n) == 1);
	CHECK_EQ_INT(n, 1024);
	usps__reader_free(&r);

	/* max_frame 0 allows blank lines only. */
	usps__reader_init(&r, 0);
	CHECK_EQ_INT(usps__reader_feed(&r, "\n\n", 2), 0);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), 1);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), 1);
	CHECK_EQ_INT(n, 0);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), 0);
	CHECK_EQ_INT(usps__reader_feed(&r, "a", 1), 0);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), -EMSGSIZE);
	usps__reader_free(&r);
}

/*
 * Random bytes, random limits, random feeds, against a model of the rule:
 * a line is returned once its '\n' is in; an error is reported in the very
 * feed that brings the (max_frame + 1)th byte of a line with no '\n' yet.
 */
TEST(reader_limits_random)
{
	static char data[600];
	const size_t dlen = sizeof(data);
	static size_t ls[sizeof(data)], ln[sizeof(data)], avail[sizeof(data)];

	for (uint64_t seed = 1; seed <= 3000; seed++) {
		size_t max, nlines = 0, error_at = SIZE_MAX, fed = 0, seen = 0;
		size_t nl_odds, most, s = 0;
		struct usps__reader r;
		bool failed = false;

		rng_seed(seed);
		max = rng_below(41);
		nl_odds = (size_t[]){ 3, 16, 64 }[rng_below(3)];
		most = (size_t[]){ 1, 7, 100, dlen }[rng_below(4)];
		for (size_t i = 0; i < dlen; i++) {
			data[i] = (char)(rng_next() >> 56);
			if (rng_below(nl_odds) == 0)
				data[i] = '\n';
		}
		/* The model. */
		while (s < dlen) {
			char *p = memchr(data + s, '\n', dlen - s);
			size_t e = p ? (size_t)(p - data) : dlen;

			if (e - s > max) {
				error_at = s + max + 1;
				break;
			}
			if (!p)
				break;
			ls[nlines] = s;
			ln[nlines] = e - s;
			avail[nlines++] = e + 1;
			s = e + 1;
		}

		usps__reader_init(&r, max);
		while (fed < dlen && !failed) {
			size_t n = 1 + rng_below(most);
			const char *line;
			size_t len;
			int ret;

			if (n > dlen - fed)
				n = dlen - fed;
			failed |= usps__reader_feed(&r, data + fed, n) != 0;
			fed += n;
			for (;;) {
				ret = usps__reader_next(&r, &line, &len);
				if (ret != 1)
					break;
				if (seen >= nlines || avail[seen] > fed ||
				    len != ln[seen] ||
				    memcmp(line, data + ls[seen], len) != 0) {
					failed = true;
					break;
				}
				seen++;
			}
			if (ret == -EMSGSIZE) {
				/* Now, not earlier, and after every line. */
				failed |= fed < error_at ||
					  fed - n >= error_at || seen != nlines;
				break;
			}
			failed |= ret != 0 || fed >= error_at;
			/* Every line that is in has come out. */
			failed |= seen < nlines && avail[seen] <= fed;
		}
		if (error_at == SIZE_MAX)
			failed |= seen != nlines;
		usps__reader_free(&r);
		if (failed) {
			(void)fprintf(stderr, "seed %" PRIu64 "\n", seed);
			CHECK(!failed);
			return;
		}
	}
}

/*
 * Spec §5.1 item 19: a 4 MiB line arriving one byte at a time. The search
 * resumes where it stopped, so this is linear; memory stays within one
 * block of the line; and the buffer shrinks once the line is taken.
 */
TEST(reader_big_line_one_byte_at_a_time)
{
	const size_t max = 4 * MIB;
	struct usps__reader r;
	int64_t t0 = harness_now_ms();
	size_t most_cap = 0;
	const char *line;
	char *big;
	size_t n;

	big = malloc(max);
	REQUIRE(big);
	for (size_t i = 0; i < max; i++)
		big[i] = (char)('a' + i % 26);

	usps__reader_init(&r, max);
	for (size_t i = 0; i < max; i++) {
		if (usps__reader_feed(&r, big + i, 1) != 0 ||
		    usps__reader_next(&r, &line, &n) != 0) {
			CHECK(!"feed or next failed");
			goto out;
		}
		if (r.cap > most_cap)
			most_cap = r.cap;
		/* Quadratic work would never get here; fail, do not hang. */
		if (i % 65536 == 0 && harness_now_ms() - t0 > 30000) {
			CHECK(!"too slow");
			goto out;
		}
	}
	CHECK_EQ_INT(usps__reader_pending(&r), max);
	CHECK(most_cap <= max + BLOCK);
	CHECK_EQ_INT(usps__reader_feed(&r, "\n", 1), 0);
	CHECK(r.cap <= max + BLOCK);
	MUST(usps__reader_next(&r, &line, &n) == 1);
	CHECK_EQ_INT(n, max);
	CHECK(memcmp(line, big, max) == 0);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), 0);
	CHECK(r.cap <= BLOCK);
	CHECK_EQ_INT(usps__reader_pending(&r), 0);
	/* Generous even under sanitizers; O(n^2) would take hours. */
	CHECK(harness_now_ms() - t0 < 30000);
out:
	usps__reader_free(&r);
	free(big);
}

/* A big line with the start of the next behind it: shrink, keep the tail. */
TEST(reader_shrinks_after_big_line)
{
	struct usps__reader r;
	const char *line;
	char *big;
	size_t n;

	big = malloc(2 * MIB + 5);
	REQUIRE(big);
	memset(big, 'y', 2 * MIB);
	memcpy(big + 2 * MIB, "\npart", 5);

	usps__reader_init(&r, 4 * MIB);
	CHECK_EQ_INT(usps__reader_feed(&r, big, 2 * MIB + 5), 0);
	CHECK(r.cap >= 2 * MIB);
	MUST(usps__reader_next(&r, &line, &n) == 1);
	CHECK_EQ_INT(n, 2 * MIB);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), 0);
	CHECK(r.cap <= BLOCK);
	CHECK_EQ_INT(usps__reader_pending(&r), 4);
	CHECK_EQ_INT(usps__reader_feed(&r, "\n", 1), 0);
	MUST(usps__reader_next(&r, &line, &n) == 1);
	CHECK_EQ_INT(n, 4);
	CHECK(memcmp(line, "part", 4) == 0);
	usps__reader_free(&r);
	free(big);
}

/* A swap hands over the buffer with the lines taken from it in place; the
 * reader goes on with the rest, in the spare or in a new buffer. */
TEST(reader_swap)
{
	struct usps__reader r;
	const char *a, *b, *c;
	char *buf = NULL;
	size_t na, nb, nc, cap = 0;

	usps__reader_init(&r, MIB);
	CHECK_EQ_INT(usps__reader_feed(&r, "one\ntwo\nthr", 11), 0);
	MUST(usps__reader_next(&r, &a, &na) == 1);
	MUST(usps__reader_next(&r, &b, &nb) == 1);
	CHECK_EQ_INT(usps__reader_next(&r, &c, &nc), 0);
	/* No spare: a new buffer. */
	MUST(usps__reader_swap(&r, &buf, &cap) == 0);
	CHECK(buf != NULL && cap >= 11);
	CHECK(a >= buf && b + nb <= buf + cap);
	CHECK_EQ_INT(usps__reader_pending(&r), 3);
	/* The old buffer is untouched by what the reader does next. */
	CHECK_EQ_INT(usps__reader_feed(&r, "ee\nfour\n", 8), 0);
	MUST(usps__reader_next(&r, &c, &nc) == 1);
	CHECK(nc == 5 && memcmp(c, "three", 5) == 0);
	CHECK(na == 3 && memcmp(a, "one", 3) == 0);
	CHECK(nb == 3 && memcmp(b, "two", 3) == 0);
	/* The old buffer as the spare: the reader takes it. */
	char *old = buf;

	MUST(usps__reader_swap(&r, &buf, &cap) == 0);
	CHECK(r.buf == old);
	CHECK(c >= buf && c + nc <= buf + cap);
	CHECK(nc == 5 && memcmp(c, "three", 5) == 0);
	MUST(usps__reader_next(&r, &c, &nc) == 1);
	CHECK(nc == 4 && memcmp(c, "four", 4) == 0);
	CHECK_EQ_INT(usps__reader_next(&r, &c, &nc), 0);
	free(buf);
	usps__reader_free(&r);
}

/* ---- reader: sockets ---- */

TEST(reader_fill_socket)
{
	struct usps__reader r;
	int sv[2] = { -1, -1 };
	const char *line;
	size_t n;

	MUST(make_pair(sv));
	usps__reader_init(&r, 1024);
	CHECK_EQ_INT(usps__reader_fill(&r, sv[1]), -EAGAIN);

	CHECK_EQ_INT(write_some(sv[0], "a\nb", 3), 3);
	CHECK_EQ_INT(usps__reader_fill(&r, sv[1]), 3);
	MUST(usps__reader_next(&r, &line, &n) == 1);
	CHECK(n == 1 && line[0] == 'a');
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), 0);
	CHECK_EQ_INT(usps__reader_fill(&r, sv[1]), -EAGAIN);

	CHECK_EQ_INT(write_some(sv[0], "c\n", 2), 2);
	CHECK_EQ_INT(usps__reader_fill(&r, sv[1]), 2);
	MUST(usps__reader_next(&r, &line, &n) == 1);
	CHECK(n == 2 && memcmp(line, "bc", 2) == 0);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), 0);

	close(sv[0]);
	sv[0] = -1;
	CHECK_EQ_INT(usps__reader_fill(&r, sv[1]), 0);
	CHECK_EQ_INT(usps__reader_fill(&r, -1), -EBADF);
	usps__reader_free(&r);
	close_pair(sv);
}

/*
 * A fill takes the whole free block while nothing is known and after
 * large lines, but READ_SMALL at most once the last fill was small lines;
 * no byte is lost or reordered on the way.
 */
TEST(reader_small_lines_small_reads)
{
	static char big[4000];
	static const char small[] = "0123456789012345678901234567890123456"
				    "789012345678901234567890123456789\n";
	struct bytes in = { 0 }, want = { 0 }, got = { 0 };
	struct usps__reader r;
	int sv[2] = { -1, -1 };
	int sndbuf = 1024 * 1024;
	ssize_t n, most = 0;

	MUST(make_pair(sv));
	CHECK(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf,
			 sizeof(sndbuf)) == 0);
	memset(big, 'b', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\n';
	usps__reader_init(&r, 8192);
	while (in.len < 2 * BLOCK)
		bytes_put(&in, small, sizeof(small) - 1);
	CHECK_EQ_INT(write_some(sv[0], in.p, in.len), in.len);
	CHECK_EQ_INT(usps__reader_fill(&r, sv[1]), BLOCK);
	CHECK_EQ_INT(drain(&r, &got), 0);
	CHECK_EQ_INT(usps__reader_fill(&r, sv[1]), READ_SMALL);
	CHECK_EQ_INT(drain(&r, &got), 0);
	/* Large lines next: one small read finds them, then blocks again. */
	for (int i = 0; i < 64; i++) {
		CHECK_EQ_INT(write_some(sv[0], big, sizeof(big)), sizeof(big));
		bytes_put(&in, big, sizeof(big));
	}
	CHECK_EQ_INT(usps__reader_fill(&r, sv[1]), READ_SMALL);
	CHECK_EQ_INT(drain(&r, &got), 0);
	while ((n = usps__reader_fill(&r, sv[1])) > 0) {
		if (n > most)
			most = n;
		CHECK_EQ_INT(drain(&r, &got), 0);
	}
	CHECK_EQ_INT(n, -EAGAIN);
	CHECK(most > (ssize_t)READ_SMALL);
	lines_expected(&want, in.p, in.len);
	CHECK(bytes_same(&got, &want));
	usps__reader_free(&r);
	bytes_free(&in);
	bytes_free(&want);
	bytes_free(&got);
	close_pair(sv);
}

/* Spec §5.1 item 16 on a socket, and the bound on what one fill takes. */
TEST(reader_fill_limit)
{
	static char junk[256 * 1024];
	struct usps__reader r;
	int sv[2] = { -1, -1 };
	const char *line;
	ssize_t got;
	size_t n;

	MUST(make_pair(sv));
	memset(junk, 'x', sizeof(junk));

	/* max_frame held, the next byte arrives: read it, then fail. */
	usps__reader_init(&r, 100);
	CHECK_EQ_INT(write_some(sv[0], junk, 100), 100);
	CHECK_EQ_INT(usps__reader_fill(&r, sv[1]), 100);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), 0);
	CHECK_EQ_INT(write_some(sv[0], "y", 1), 1);
	CHECK_EQ_INT(usps__reader_fill(&r, sv[1]), 1);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), -EMSGSIZE);
	usps__reader_free(&r);
	close_pair(sv);

	/* A flood with no '\n': one fill, bounded, then the error. */
	MUST(make_pair(sv));
	usps__reader_init(&r, 1000);
	CHECK(write_some(sv[0], junk, sizeof(junk)) > 1000 + BLOCK);
	got = usps__reader_fill(&r, sv[1]);
	CHECK(got > 1000 && (size_t)got <= 1000 + BLOCK);
	CHECK(r.cap <= 1000 + BLOCK);
	CHECK_EQ_INT(usps__reader_next(&r, &line, &n), -EMSGSIZE);
	usps__reader_free(&r);
	close_pair(sv);

	/*
	 * Filling again and again without taking lines stops at the bound
	 * (-ENOBUFS); taking the lines makes room again.
	 */
	MUST(make_pair(sv));
	for (size_t i = 0; i < sizeof(junk); i += 2)
		memcpy(junk + i, "z\n", 2);
	usps__reader_init(&r, 1000);
	CHECK(write_some(sv[0], junk, sizeof(junk)) > 2 * (1000 + BLOCK));
	for (int i = 0; i < 100; i++) {
		got = usps__reader_fill(&r, sv[1]);
		if (got <= 0)
			break;
	}
	CHECK_EQ_INT(got, -ENOBUFS);
	CHECK_EQ_INT(usps__reader_pending(&r), 1000 + BLOCK);
	CHECK(r.cap <= 1000 + BLOCK);
	{
		struct bytes list = { 0 };

		CHECK_EQ_INT(drain(&r, &list), 0);
		CHECK_EQ_INT(list.len,
			     (1000 + BLOCK) / 2 * (sizeof(size_t) + 1));
		bytes_free(&list);
	}
	CHECK(usps__reader_fill(&r, sv[1]) > 0);
	usps__reader_free(&r);
	close_pair(sv);
}

/*
 * Lines of every size up to max_frame go through a socket, written by a
 * write queue and read by fill(): byte-exact, and within memory bounds.
 */
TEST(reader_and_wq_stream)
{
	const size_t max = (size_t)512 * 1024;
	struct bytes in = { 0 }, want = { 0 }, got = { 0 };
	struct usps__reader r;
	struct usps__wq q;
	int sv[2] = { -1, -1 };
	size_t most_cap = 0;
	int rounds = 0;
	bool eof = false;

	MUST(make_pair(sv));
	rng_seed(42);
	usps__wq_init(&q);
	usps__reader_init(&r, max);
	for (int i = 0; i < 1000; i++) {
		struct usps__chunk *c;
		size_t at = in.len;
		size_t len;

		/* Mostly small, some medium, a few at the limit. */
		if (rng_below(8))
			len = rng_below(300);
		else if (rng_below(4))
			len = rng_below(70000);
		else
			len = max - rng_below(3);

		bytes_put(&in, NULL, len + 1);
		for (size_t k = 0; k < len; k++) {
			char ch = (char)(rng_next() >> 56);

			in.p[at + k] = ch == '\n' ? 'N' : ch;
		}
		in.p[at + len] = '\n';
		c = usps__chunk_new(in.p + at, len + 1);
		REQUIRE(c);
		CHECK_EQ_INT(usps__wq_push(&q, c), 0);
		usps__chunk_unref(c);
	}
	lines_expected(&want, in.p, in.len);

	while (!eof && rounds++ < 1000000) {
		int f = usps__wq_flush(&q, sv[0]);
		ssize_t got_n;

		CHECK(f == 0 || f == -EAGAIN);
		if (f == 0 && sv[0] >= 0) {
			close(sv[0]);
			sv[0] = -1;
		}
		while ((got_n = usps__reader_fill(&r, sv[1])) > 0) {
			if (r.cap > most_cap)
				most_cap = r.cap;
			CHECK_EQ_INT(drain(&r, &got), 0);
		}
		if (got_n == 0)
			eof = true;
		else
			CHECK_EQ_INT(got_n, -EAGAIN);
		if (harness_cur_failed)
			break;
	}
	CHECK(eof);
	CHECK(bytes_same(&got, &want));
	CHECK(most_cap <= max + BLOCK);
	CHECK_EQ_INT(q.written_total, in.len);
	usps__reader_free(&r);
	usps__wq_free(&q);
	close_pair(sv);
	bytes_free(&in);
	bytes_free(&want);
	bytes_free(&got);
}

/* ---- chunks ---- */

TEST(chunk_basics)
{
	struct usps__chunk *c = usps__chunk_new("abc", 3);

	REQUIRE(c);
	CHECK_EQ_INT(c->refs, 1);
	CHECK_EQ_INT(c->len, 3);
	CHECK(memcmp(c->data, "abc", 3) == 0);
	CHECK(usps__chunk_ref(c) == c);
	CHECK_EQ_INT(c->refs, 2);
	usps__chunk_unref(c);
	CHECK_EQ_INT(c->refs, 1);
	usps__chunk_unref(c);
	usps__chunk_unref(NULL);

	c = usps__chunk_new(NULL, 0);
	REQUIRE(c);
	CHECK_EQ_INT(c->len, 0);
	usps__chunk_unref(c);

	CHECK(usps__chunk_new("x", SIZE_MAX) == NULL);
	CHECK(usps__chunk_new("x", SIZE_MAX - sizeof(*c) + 1) == NULL);
}

/* ---- write queue ---- */

/* Nothing to write means no system call, even on a bad fd. */
TEST(wq_empty_and_empty_chunks)
{
	struct usps__chunk *e = usps__chunk_new(NULL, 0);
	struct usps__wq q;

	REQUIRE(e);
	usps__wq_init(&q);
	CHECK(usps__wq_empty(&q));
	CHECK_EQ_INT(usps__wq_flush(&q, -1), 0);
	for (int i = 0; i < 3; i++)
		CHECK_EQ_INT(usps__wq_push(&q, e), 0);
	CHECK_EQ_INT(e->refs, 4);
	CHECK(!usps__wq_empty(&q));
	CHECK_EQ_INT(q.queued_bytes, 0);
	CHECK_EQ_INT(usps__wq_flush(&q, -1), 0);
	CHECK(usps__wq_empty(&q));
	CHECK_EQ_INT(e->refs, 1);
	usps__wq_free(&q);
	usps__chunk_unref(e);
}

/* The ring fills while wrapped, grows, and keeps its order. */
TEST(wq_ring_wraps_and_grows)
{
	struct usps__chunk *cs[40] = { 0 };
	struct bytes want = { 0 }, got = { 0 };
	int sv[2] = { -1, -1 };
	struct usps__wq q;
	uint64_t tail_bytes = 0;

	MUST(make_pair(sv));
	usps__wq_init(&q);
	for (int i = 0; i < 40; i++) {
		char s[32];
		int n = snprintf(s, sizeof(s), "chunk-%02d|", i);

		/* Some empty chunks in the mix. */
		cs[i] = usps__chunk_new(s, i % 7 == 3 ? 0 : (size_t)n);
		REQUIRE(cs[i]);
		bytes_put(&want, cs[i]->data, cs[i]->len);
	}
	for (int i = 0; i < 10; i++)
		CHECK_EQ_INT(usps__wq_push(&q, cs[i]), 0);
	CHECK_EQ_INT(usps__wq_flush(&q, sv[0]), 0);
	CHECK(usps__wq_empty(&q));
	CHECK(q.head != 0);
	for (int i = 10; i < 26; i++) {
		CHECK_EQ_INT(usps__wq_push(&q, cs[i]), 0);
		tail_bytes += cs[i]->len;
	}
	/* Full and wrapped around the end of the ring. */
	CHECK_EQ_INT(q.count, q.cap);
	CHECK(q.head + q.count > q.cap);
	for (int i = 26; i < 40; i++) {
		CHECK_EQ_INT(usps__wq_push(&q, cs[i]), 0);
		tail_bytes += cs[i]->len;
	}
	CHECK(q.cap > 16);
	CHECK_EQ_INT(q.count, 30);
	CHECK_EQ_INT(q.queued_bytes, tail_bytes);
	CHECK_EQ_INT(usps__wq_flush(&q, sv[0]), 0);
	CHECK_EQ_INT(read_ready(sv[1], &got), want.len);
	CHECK(bytes_same(&got, &want));
	CHECK_EQ_INT(q.pushed_total, want.len);
	CHECK_EQ_INT(q.written_total, want.len);
	CHECK_EQ_INT(q.queued_bytes, 0);
	for (int i = 0; i < 40; i++) {
		CHECK_EQ_INT(cs[i]->refs, 1);
		usps__chunk_unref(cs[i]);
	}
	usps__wq_free(&q);
	close_pair(sv);
	bytes_free(&want);
	bytes_free(&got);
}

/* Sum of what the ring still has to write, entry by entry. */
static uint64_t wq_unwritten(const struct usps__wq *q)
{
	uint64_t sum = 0;

	for (size_t i = 0; i < q->count; i++) {
		const struct usps__wq_ent *e =
			&q->ents[(q->head + i) & (q->cap - 1)];

		sum += e->c->len - e->off;
	}
	return sum;
}

/*
 * Many chunks into a socket nobody reads: it fills (-EAGAIN) with exact
 * accounting; then the peer drains and flushing resumes until done.
 */
TEST(wq_full_socket_then_drain)
{
	static struct usps__chunk *cs[3000];
	const int nchunks = 3000;
	struct bytes want = { 0 }, got = { 0 };
	int sv[2] = { -1, -1 };
	struct usps__wq q;
	int r, rounds = 0;

	MUST(make_pair(sv));
	rng_seed(7);
	usps__wq_init(&q);
	for (int i = 0; i < nchunks; i++) {
		size_t len = 1 + rng_below(2000);
		char buf[2000];

		for (size_t k = 0; k < len; k++)
			buf[k] = (char)(rng_next() >> 56);
		cs[i] = usps__chunk_new(buf, len);
		REQUIRE(cs[i]);
		bytes_put(&want, buf, len);
		CHECK_EQ_INT(usps__wq_push(&q, cs[i]), 0);
		CHECK_EQ_INT(cs[i]->refs, 2);
	}
	CHECK_EQ_INT(q.queued_bytes, want.len);
	CHECK_EQ_INT(q.pushed_total, want.len);

	CHECK_EQ_INT(usps__wq_flush(&q, sv[0]), -EAGAIN);
	CHECK(q.written_total > 0 && q.written_total < want.len);
	CHECK_EQ_INT(q.queued_bytes, want.len - q.written_total);
	CHECK_EQ_INT(wq_unwritten(&q), q.queued_bytes);
	/* Everything written is in the socket, and nothing more. */
	CHECK_EQ_INT(read_ready(sv[1], &got), q.written_total);
	CHECK_EQ_INT(usps__wq_flush(&q, sv[0]), -EAGAIN);

	while ((r = usps__wq_flush(&q, sv[0])) == -EAGAIN) {
		CHECK_EQ_INT(q.queued_bytes, q.pushed_total - q.written_total);
		CHECK_EQ_INT(wq_unwritten(&q), q.queued_bytes);
		CHECK(read_ready(sv[1], &got) > 0);
		if (++rounds > 100000 || harness_cur_failed)
			break;
	}
	CHECK_EQ_INT(r, 0);
	CHECK(read_ready(sv[1], &got) >= 0);
	CHECK(bytes_same(&got, &want));
	CHECK(usps__wq_empty(&q));
	CHECK_EQ_INT(q.queued_bytes, 0);
	CHECK_EQ_INT(q.written_total, want.len);
	for (int i = 0; i < nchunks; i++) {
		CHECK_EQ_INT(cs[i]->refs, 1);
		usps__chunk_unref(cs[i]);
	}
	usps__wq_free(&q);
	close_pair(sv);
	bytes_free(&want);
	bytes_free(&got);
}

/* One chunk bigger than the socket: written in pieces from an offset. */
TEST(wq_partial_chunk)
{
	const size_t len = 4 * MIB;
	struct bytes got = { 0 };
	int sv[2] = { -1, -1 };
	int sndbuf = 64 * 1024;
	struct usps__chunk *c;
	struct usps__wq q;
	size_t off;
	char *p;
	int r, rounds = 0;

	MUST(make_pair(sv));
	CHECK(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf,
			 sizeof(sndbuf)) == 0);
	p = malloc(len);
	REQUIRE(p);
	for (size_t i = 0; i < len; i++)
		p[i] = (char)(i * 7 + i / 251);
	c = usps__chunk_new(p, len);
	REQUIRE(c);
	usps__wq_init(&q);
	CHECK_EQ_INT(usps__wq_push(&q, c), 0);
	CHECK_EQ_INT(usps__wq_push(&q, c), 0);
	CHECK_EQ_INT(c->refs, 3);

	CHECK_EQ_INT(usps__wq_flush(&q, sv[0]), -EAGAIN);
	off = q.ents[q.head].off;
	CHECK(off > 0 && off < len);
	CHECK_EQ_INT(q.queued_bytes, 2 * len - off);
	CHECK_EQ_INT(q.written_total, off);
	while ((r = usps__wq_flush(&q, sv[0])) == -EAGAIN) {
		CHECK(read_ready(sv[1], &got) > 0);
		CHECK_EQ_INT(wq_unwritten(&q), q.queued_bytes);
		if (++rounds > 100000 || harness_cur_failed)
			break;
	}
	CHECK_EQ_INT(r, 0);
	CHECK(read_ready(sv[1], &got) >= 0);
	CHECK_EQ_INT(got.len, 2 * len);
	CHECK(got.len == 2 * len && memcmp(got.p, p, len) == 0 &&
	      memcmp(got.p + len, p, len) == 0);
	CHECK_EQ_INT(c->refs, 1);
	usps__chunk_unref(c);
	usps__wq_free(&q);
	close_pair(sv);
	bytes_free(&got);
	free(p);
}

/*
 * Small frames copied into the queue's own tail: they coalesce into few
 * entries, never into a chunk that is shared (or was made by chunk_new),
 * and the bytes come out in order across partial writes and appends to a
 * half-written tail.
 */
TEST(wq_put_coalesces)
{
	struct bytes got = { 0 }, want = { 0 };
	int sv[2] = { -1, -1 };
	int sndbuf = 16 * 1024;
	struct usps__chunk *c;
	struct usps__wq q;
	char frame[200];
	int r, rounds = 0;

	MUST(make_pair(sv));
	CHECK(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf,
			 sizeof(sndbuf)) == 0);
	usps__wq_init(&q);
	CHECK_EQ_INT(usps__wq_put(&q, "x", 0), 0);
	CHECK_EQ_INT(q.count, 0);
	c = usps__chunk_new("shared\n", 7);
	REQUIRE(c);
	for (int i = 0; i < 3000; i++) {
		int n = snprintf(frame, sizeof(frame), "frame %d %.*s\n", i,
				 i % 150,
				 "abcdefghijklmnopqrstuvwxyzabcdefghij"
				 "abcdefghijklmnopqrstuvwxyzabcdefghij"
				 "abcdefghijklmnopqrstuvwxyzabcdefghij"
				 "abcdefghijklmnopqrstuvwxyzabcdefghij"
				 "abcdefghijklmnopqrstuvwxyz");

		CHECK_EQ_INT(usps__wq_put(&q, frame, (size_t)n), 0);
		bytes_put(&want, frame, (size_t)n);
		if (i % 1000 == 500) {
			/* Shared with the test: appends must not touch it. */
			CHECK_EQ_INT(usps__wq_push(&q, c), 0);
			bytes_put(&want, "shared\n", 7);
		}
		if (i % 97 == 0 && usps__wq_flush(&q, sv[0]) == -EAGAIN)
			CHECK(read_ready(sv[1], &got) > 0);
		CHECK_EQ_INT(wq_unwritten(&q), q.queued_bytes);
	}
	/* ~250 kB in 16 kB tails, plus the shared chunks between them. */
	CHECK(q.count < 32);
	CHECK_EQ_INT(c->len, 7);
	while ((r = usps__wq_flush(&q, sv[0])) == -EAGAIN) {
		CHECK(read_ready(sv[1], &got) > 0);
		if (++rounds > 100000 || harness_cur_failed)
			break;
	}
	CHECK_EQ_INT(r, 0);
	CHECK(read_ready(sv[1], &got) >= 0);
	CHECK_EQ_INT(got.len, want.len);
	CHECK(got.len == want.len && memcmp(got.p, want.p, want.len) == 0);
	CHECK_EQ_INT(q.pushed_total, want.len);
	CHECK_EQ_INT(c->refs, 1);
	usps__chunk_unref(c);
	usps__wq_free(&q);
	close_pair(sv);
	bytes_free(&got);
	bytes_free(&want);
}

/*
 * A closed peer: -EPIPE, and no SIGPIPE. SIGPIPE is blocked meanwhile so a
 * regression shows as a failed check (a pending signal), not a dead test.
 */
TEST(wq_closed_peer)
{
	struct usps__chunk *c = usps__chunk_new("lost\n", 5);
	struct timespec zero = { 0 };
	int sv[2] = { -1, -1 };
	sigset_t pipe_set, old, pending;
	struct usps__wq q;

	REQUIRE(c);
	MUST(make_pair(sv));
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	MUST(sigprocmask(SIG_BLOCK, &pipe_set, &old) == 0);

	close(sv[1]);
	sv[1] = -1;
	usps__wq_init(&q);
	CHECK_EQ_INT(usps__wq_push(&q, c), 0);
	CHECK_EQ_INT(usps__wq_flush(&q, sv[0]), -EPIPE);
	CHECK_EQ_INT(usps__wq_flush(&q, sv[0]), -EPIPE);
	CHECK_EQ_INT(q.count, 1);
	CHECK_EQ_INT(q.queued_bytes, 5);
	CHECK_EQ_INT(q.written_total, 0);
	CHECK_EQ_INT(c->refs, 2);
	usps__wq_free(&q);
	CHECK_EQ_INT(c->refs, 1);
	CHECK_EQ_INT(q.count, 0);
	CHECK_EQ_INT(q.queued_bytes, 0);

	sigemptyset(&pending);
	CHECK(sigpending(&pending) == 0);
	CHECK(!sigismember(&pending, SIGPIPE));
	if (sigismember(&pending, SIGPIPE))
		(void)sigtimedwait(&pipe_set, NULL, &zero);
	(void)sigprocmask(SIG_SETMASK, &old, NULL);
	usps__chunk_unref(c);
	close_pair(sv);
}

/* One event frame, two receivers: one copy, two references. */
TEST(wq_shared_chunk)
{
	static const char ev[] = "{\"type\":\"event\",\"topic\":\"t\"}\n";
	struct usps__chunk *c = usps__chunk_new(ev, sizeof(ev) - 1);
	struct bytes a = { 0 }, b = { 0 };
	int s1[2] = { -1, -1 }, s2[2] = { -1, -1 };
	struct usps__wq q1, q2;

	REQUIRE(c);
	MUST(make_pair(s1));
	MUST(make_pair(s2));
	usps__wq_init(&q1);
	usps__wq_init(&q2);
	CHECK_EQ_INT(usps__wq_push(&q1, c), 0);
	CHECK_EQ_INT(usps__wq_push(&q2, c), 0);
	CHECK_EQ_INT(usps__wq_push(&q2, c), 0);
	CHECK_EQ_INT(c->refs, 4);
	CHECK_EQ_INT(usps__wq_flush(&q1, s1[0]), 0);
	CHECK_EQ_INT(c->refs, 3);
	CHECK_EQ_INT(usps__wq_flush(&q2, s2[0]), 0);
	CHECK_EQ_INT(c->refs, 1);
	CHECK_EQ_INT(read_ready(s1[1], &a), sizeof(ev) - 1);
	CHECK_EQ_INT(read_ready(s2[1], &b), 2 * (sizeof(ev) - 1));
	CHECK(a.len == sizeof(ev) - 1 && memcmp(a.p, ev, a.len) == 0);
	CHECK(b.len == 2 * (sizeof(ev) - 1) &&
	      memcmp(b.p, ev, sizeof(ev) - 1) == 0 &&
	      memcmp(b.p + sizeof(ev) - 1, ev, sizeof(ev) - 1) == 0);
	usps__wq_free(&q1);
	usps__wq_free(&q2);
	usps__chunk_unref(c);
	close_pair(s1);
	close_pair(s2);
	bytes_free(&a);
	bytes_free(&b);
}

/* Freeing a queue with unwritten chunks gives their references back. */
TEST(wq_free_drops_refs)
{
	struct usps__chunk *big, *small;
	int sv[2] = { -1, -1 };
	struct usps__wq q;
	char *p;

	MUST(make_pair(sv));
	p = calloc(1, 4 * MIB);
	REQUIRE(p);
	big = usps__chunk_new(p, 4 * MIB);
	small = usps__chunk_new("s", 1);
	REQUIRE(big && small);
	usps__wq_init(&q);
	CHECK_EQ_INT(usps__wq_push(&q, big), 0);
	for (int i = 0; i < 100; i++)
		CHECK_EQ_INT(usps__wq_push(&q, small), 0);
	CHECK_EQ_INT(usps__wq_flush(&q, sv[0]), -EAGAIN);
	CHECK_EQ_INT(small->refs, 101);
	usps__wq_free(&q);
	CHECK_EQ_INT(big->refs, 1);
	CHECK_EQ_INT(small->refs, 1);
	CHECK(usps__wq_empty(&q));
	CHECK(q.ents == NULL && q.cap == 0 && q.queued_bytes == 0);
	usps__chunk_unref(big);
	usps__chunk_unref(small);
	close_pair(sv);
	free(p);
}

/* A record: the size field, then @n bytes of @body. */
static size_t put_record(char *out, const char *body, size_t n)
{
	out[0] = (char)(n & 0xff);
	out[1] = (char)(n >> 8 & 0xff);
	out[2] = (char)(n >> 16 & 0xff);
	out[3] = (char)(n >> 24 & 0xff);
	memcpy(out + 4, body, n);
	return n + 4;
}

/*
 * After "usps.index" a stream turns from lines to records at a line's end:
 * lines, then records, fed a byte at a time, come out whole and in order;
 * a record's size above max_frame + USPS__REC_OVERHEAD is an error at once.
 */
TEST(reader_lines_then_records)
{
	struct usps__reader r;
	char in[256];
	const char *p;
	size_t n, len = 0;

	memcpy(in, "a\n{\"type\":\"usps.index\"}\n", 24);
	len = 24;
	len += put_record(in + len, "first\n", 6);
	len += put_record(in + len, "", 0);
	len += put_record(in + len, "sec\nond\n", 8);
	usps__reader_init(&r, 32);
	for (size_t i = 0; i < len; i++)
		CHECK_EQ_INT(usps__reader_feed(&r, in + i, 1), 0);
	MUST(usps__reader_next(&r, &p, &n) == 1);
	CHECK(n == 1 && p[0] == 'a');
	MUST(usps__reader_next(&r, &p, &n) == 1);
	CHECK_EQ_INT(n, 21);
	MUST(usps__reader_next_record(&r, &p, &n) == 1);
	CHECK(n == 10 && !memcmp(p + 4, "first\n", 6));
	MUST(usps__reader_next_record(&r, &p, &n) == 1);
	CHECK_EQ_INT(n, 4);
	MUST(usps__reader_next_record(&r, &p, &n) == 1);
	CHECK(n == 12 && !memcmp(p + 4, "sec\nond\n", 8));
	CHECK_EQ_INT(usps__reader_next_record(&r, &p, &n), 0);
	CHECK_EQ_INT(usps__reader_pending(&r), 0);

	/* Partial: the size field, then part of the body. */
	CHECK_EQ_INT(usps__reader_feed(&r, "\x05\x00", 2), 0);
	CHECK_EQ_INT(usps__reader_next_record(&r, &p, &n), 0);
	CHECK_EQ_INT(usps__reader_feed(&r, "\x00\x00hel", 5), 0);
	CHECK_EQ_INT(usps__reader_next_record(&r, &p, &n), 0);
	CHECK_EQ_INT(usps__reader_feed(&r, "lo", 2), 0);
	MUST(usps__reader_next_record(&r, &p, &n) == 1);
	CHECK(n == 9 && !memcmp(p + 4, "hello", 5));

	/* 32 + 128 is the most; one more is refused before it arrives. */
	CHECK_EQ_INT(usps__reader_feed(&r, "\xa0\x00\x00\x00", 4), 0);
	CHECK_EQ_INT(usps__reader_next_record(&r, &p, &n), 0);
	usps__reader_free(&r);
	usps__reader_init(&r, 32);
	CHECK_EQ_INT(usps__reader_feed(&r, "\xa1\x00\x00\x00", 4), 0);
	CHECK_EQ_INT(usps__reader_next_record(&r, &p, &n), -EMSGSIZE);
	usps__reader_free(&r);
	usps__reader_init(&r, 32);
	CHECK_EQ_INT(usps__reader_feed(&r, "\xff\xff\xff\xff", 4), 0);
	CHECK_EQ_INT(usps__reader_next_record(&r, &p, &n), -EMSGSIZE);
	usps__reader_free(&r);
}

/*
 * A chunk queued from an offset (a record's line without its header, for
 * a peer that reads lines): only the bytes from there are counted and
 * written, while another queue sends the chunk whole.
 */
TEST(wq_push_at_skips_header)
{
	struct bytes a = { 0 }, b = { 0 };
	int sa[2] = { -1, -1 }, sb[2] = { -1, -1 };
	struct usps__chunk *c = usps__chunk_new("HDRline\n", 8);
	struct usps__wq qa, qb;

	MUST(c && make_pair(sa) && make_pair(sb));
	usps__wq_init(&qa);
	usps__wq_init(&qb);
	CHECK_EQ_INT(usps__wq_push_at(&qa, c, 3), 0);
	CHECK_EQ_INT(usps__wq_push(&qb, c), 0);
	CHECK_EQ_INT(qa.queued_bytes, 5);
	CHECK_EQ_INT(qa.pushed_total, 5);
	CHECK_EQ_INT(qb.queued_bytes, 8);
	CHECK_EQ_INT(c->refs, 3);
	usps__chunk_unref(c);
	CHECK_EQ_INT(usps__wq_flush(&qa, sa[0]), 0);
	CHECK_EQ_INT(usps__wq_flush(&qb, sb[0]), 0);
	CHECK_EQ_INT(qa.written_total, 5);
	CHECK(read_ready(sa[1], &a) == 5 && !memcmp(a.p, "line\n", 5));
	CHECK(read_ready(sb[1], &b) == 8 && !memcmp(b.p, "HDRline\n", 8));
	usps__wq_free(&qa);
	usps__wq_free(&qb);
	close_pair(sa);
	close_pair(sb);
	free(a.p);
	free(b.p);
}

int main(void)
{
	RUN(reader_every_split);
	RUN(reader_one_byte_and_random_chunks);
	RUN(reader_short_lines_stay_in_one_block);
	RUN(reader_utf8_split);
	RUN(reader_crlf_and_blank_lines);
	RUN(reader_limit_terminated);
	RUN(reader_limit_unterminated);
	RUN(reader_limits_random);
	RUN(reader_big_line_one_byte_at_a_time);
	RUN(reader_shrinks_after_big_line);
	RUN(reader_swap);
	RUN(reader_fill_socket);
	RUN(reader_small_lines_small_reads);
	RUN(reader_fill_limit);
	RUN(reader_and_wq_stream);
	RUN(chunk_basics);
	RUN(wq_empty_and_empty_chunks);
	RUN(wq_ring_wraps_and_grows);
	RUN(wq_full_socket_then_drain);
	RUN(wq_partial_chunk);
	RUN(wq_put_coalesces);
	RUN(wq_closed_peer);
	RUN(wq_shared_chunk);
	RUN(wq_free_drops_refs);
	RUN(reader_lines_then_records);
	RUN(wq_push_at_skips_header);
	return harness_end();
}
