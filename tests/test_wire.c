/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for src/wire.c: the JSON validator (every RFC 8259 and UTF-8
 * corner we know of), frame parsing of every line in the protocol spec,
 * string decoding and escaping, ISO-8601 time stamps, UUID v4s, and the
 * frame builders, byte for byte against what Node peers send.
 */
#include "harness.h"

#include "wire.h"

/* ---- helpers ------------------------------------------------------------ */

static struct usps__span js(const char *s)
{
	return (struct usps__span){ s, strlen(s) };
}

static int valid(const char *s)
{
	return usps__json_validate(s, strlen(s));
}

/* NUL-terminate @b (without counting the NUL) and return its text. */
static const char *cstr(struct usps__buf *b)
{
	if (usps__buf_reserve(b, 1) < 0)
		return NULL;
	b->p[b->len] = '\0';
	return b->p;
}

/* A span's text, NUL-terminated, in one of a few rotating buffers. */
static const char *spanstr(struct usps__span s)
{
	static char bufs[4][4096];
	static int i;
	char *o = bufs[i++ & 3];

	if (!s.p)
		return "(absent)";
	snprintf(o, 4096, "%.*s", (int)s.n, s.p);
	return o;
}

#define CHECK_SPAN(sp, want) CHECK_EQ_STR(spanstr(sp), want)

static int parse(const char *line, struct usps__frame *f)
{
	return usps__wire_parse(line, strlen(line), f);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rnd(void)
{
	uint64_t x = rng_state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	rng_state = x;
	return x;
}

/* ---- validator -------------------------------------------------------- */

TEST(validate_accepts)
{
	/* clang-format off */
	static const char *const ok[] = {
		"{}", "[]", "0", "-0", "1", "-1", "123", "1.5", "-0.5", "0.5",
		"1e5", "1E5", "1e+5", "1E+5", "1e-5", "0e0", "-0.0e-0",
		"1.25E-10", "12345678901234567890123456789",
		"true", "false", "null", "\"\"", "\"abc\"",
		"\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t\"", "\"\\u0000\"",
		"\"\\u00e9\\u00E9\\uD83D\\uDE00\"", "\"\\ud800\"",
		"\"/\"", "[1,2,3]", "[[],[[]],{}]", "{\"a\":1}",
		"{\"a\":{\"b\":[1,{\"c\":null}]},\"d\":\"e\"}",
		" \t\r\n{ \"a\" : [ 1 , 2 ] , \"b\" : { } } \t\r\n",
		"{\"\":\"\"}", "{\"a\":1,\"a\":2}", "\"\x7f\"",
		"\"caf\xc3\xa9\"", "\"\xe2\x82\xac\"", "\"\xf0\x9f\x98\x80\"",
		"\"\xc2\x80\"", "\"\xdf\xbf\"", "\"\xe0\xa0\x80\"",
		"\"\xef\xbf\xbf\"", "\"\xed\x9f\xbf\"", "\"\xee\x80\x80\"",
		"\"\xf0\x90\x80\x80\"", "\"\xf4\x8f\xbf\xbf\"",
		"\"\xe2\x80\xa8\xe2\x80\xa9\"",
		"[\"a long string that spans several words of input...\"]"
	};
	/* clang-format on */

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		if (valid(ok[i]) != 0)
			fprintf(stderr, "  rejected: %s\n", ok[i]);
		CHECK_EQ_INT(valid(ok[i]), 0);
	}
}

TEST(validate_rejects)
{
	/* clang-format off */
	static const char *const bad[] = {
		"", " ", "\r\n", "{", "}", "[", "]", "{]", "[}", "[1,]",
		"[,1]", "[1 2]", "{\"a\"}", "{\"a\":}", "{\"a\" 1}",
		"{\"a\":1,}", "{,}", "{1:2}", "{a:1}", "{'a':1}", "['a']",
		"{\"a\":1 \"b\":2}", "tru", "truex", "True", "nul", "NULL",
		"nulll", "fals", "undefined", "NaN", "Infinity", "-Infinity",
		"\"abc", "\"abc\\\"", "\"\\x\"", "\"\\'\"", "\"\\u\"",
		"\"\\u12\"", "\"\\u12g4\"", "\"\\uZZZZ\"", "\"\\U0041\"",
		"\"a\tb\"", "\"a\nb\"", "\"\x01\"", "\"\x1f\"",
		"{} {}", "{}x", "1 2", "[] ,", "\"a\"\"b\"", "{}}", "[]]",
		"/* c */ 1", "1 // c", "\xef\xbb\xbf{}"
	};
	/* clang-format on */

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (valid(bad[i]) != -EINVAL)
			fprintf(stderr, "  accepted: %s\n", bad[i]);
		CHECK_EQ_INT(valid(bad[i]), -EINVAL);
	}
	/* A NUL byte is never valid, inside a string or out. */
	CHECK_EQ_INT(usps__json_validate("\"a\0b\"", 5), -EINVAL);
	CHECK_EQ_INT(usps__json_validate("{}\0", 3), -EINVAL);
	CHECK_EQ_INT(usps__json_validate("1", 0), -EINVAL);
	/* The length bounds the input: "12" cut to "1" is valid. */
	CHECK_EQ_INT(usps__json_validate("12x", 2), 0);
	CHECK_EQ_INT(usps__json_validate("\"ab\"", 3), -EINVAL);
}

TEST(validate_numbers)
{
	/* clang-format off */
	static const struct {
		const char *s;
		int r;
	} t[] = {
		{ "0", 0 }, { "-0", 0 }, { "1e5", 0 }, { "1E+5", 0 },
		{ "0.5", 0 }, { "10", 0 }, { "-10.01e-01", 0 }, { "9", 0 },
		{ "01", -EINVAL }, { "00", -EINVAL }, { "-01", -EINVAL },
		{ "1.", -EINVAL }, { ".5", -EINVAL }, { "+1", -EINVAL },
		{ "-", -EINVAL }, { "--1", -EINVAL }, { "1e", -EINVAL },
		{ "1e+", -EINVAL }, { "1E-", -EINVAL }, { "1.e5", -EINVAL },
		{ "1.5e", -EINVAL }, { "0x10", -EINVAL }, { "1_000", -EINVAL },
		{ "- 1", -EINVAL }, { "1e5.5", -EINVAL }, { "[01]", -EINVAL },
		{ "{\"a\":-}", -EINVAL }, { "[1.]", -EINVAL },
		{ "[-0,0.0,1e-0]", 0 }, { "{\"n\":-1.5E+10}", 0 }
	};
	/* clang-format on */

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		if (valid(t[i].s) != t[i].r)
			fprintf(stderr, "  number %s\n", t[i].s);
		CHECK_EQ_INT(valid(t[i].s), t[i].r);
	}
}

TEST(validate_utf8_in_strings)
{
	/* clang-format off */
	static const char *const bad[] = {
		"\"\xc0\x80\"",		/* overlong NUL */
		"\"\xc1\xbf\"",		/* overlong */
		"\"\xe0\x80\x80\"",	/* overlong 3-byte */
		"\"\xe0\x9f\xbf\"",	/* overlong 3-byte */
		"\"\xf0\x80\x80\x80\"", /* overlong 4-byte */
		"\"\xf0\x8f\xbf\xbf\"", /* overlong 4-byte */
		"\"\xed\xa0\x80\"",	/* U+D800 */
		"\"\xed\xbf\xbf\"",	/* U+DFFF */
		"\"\xed\xa0\xbd\xed\xb8\x80\"", /* CESU-8 pair */
		"\"\xf4\x90\x80\x80\"", /* U+110000 */
		"\"\xf5\x80\x80\x80\"", "\"\xf8\x88\x80\x80\x80\"",
		"\"\xff\"", "\"\xfe\"",
		"\"\x80\"",		/* lone continuation */
		"\"a\xbf\"",
		"\"\xc3\"",		/* truncated */
		"\"\xe2\x82\"", "\"\xf0\x9f\x98\"", "\"\xf0\x9f\"",
		"\"\xc3\x28\"",		/* bad continuation */
		"\"\xe2\x28\xa1\"", "\"\xf0\x9f\x28\x80\"",
		"\xc3\xa9",		/* non-ASCII outside a string */
		"[\"ok\",\xe2\x82\xac]"
	};
	/* clang-format on */

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CHECK_EQ_INT(valid(bad[i]), -EINVAL);
		if (bad[i][0] == '"') {
			size_t n = strlen(bad[i]);

			CHECK(!usps__utf8_valid(bad[i] + 1, n - 2));
		}
	}
	/* Truncation at the very end of the input, no closing quote. */
	CHECK_EQ_INT(usps__json_validate("\"\xe2\x82\xac\"", 3), -EINVAL);
	CHECK(!usps__utf8_valid("\xe2\x82\xac", 2));
	CHECK(usps__utf8_valid("\xe2\x82\xac", 3));
	CHECK(usps__utf8_valid("", 0));
	CHECK(usps__utf8_valid("a\0b\x01\x7f", 5));
	CHECK(usps__utf8_valid("\xf0\x9f\x98\x80 caf\xc3\xa9 \xe2\x82\xac",
			       14));
	/* A long string with non-ASCII in every word. */
	{
		char s[2000];
		size_t n = 0;

		s[n++] = '"';
		while (n < sizeof(s) - 8) {
			memcpy(s + n, "ab\xc3\xa9\xe2\x82\xac.", 8);
			n += 8;
		}
		s[n++] = '"';
		CHECK_EQ_INT(usps__json_validate(s, n), 0);
		s[n - 200] = (char)0x80;
		CHECK_EQ_INT(usps__json_validate(s, n), -EINVAL);
	}
}

/* Reference decoder: is @s[0..n) one well-formed UTF-8 sequence? */
static bool ref_seq(const uint8_t *s, size_t n)
{
	uint32_t cp;
	size_t need;

	if (s[0] < 0x80)
		need = 1, cp = s[0];
	else if ((s[0] & 0xe0) == 0xc0)
		need = 2, cp = s[0] & 0x1f;
	else if ((s[0] & 0xf0) == 0xe0)
		need = 3, cp = s[0] & 0x0f;
	else if ((s[0] & 0xf8) == 0xf0)
		need = 4, cp = s[0] & 0x07;
	else
		return false;
	if (n != need)
		return false;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return false;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return false;
	if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) ||
	    (n == 4 && cp < 0x10000))
		return false;
	return true;
}

/* Reference: is @s[0..n) a string of well-formed sequences? */
static bool ref_utf8(const uint8_t *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		size_t need = s[i] < 0x80	      ? 1
			      : (s[i] & 0xe0) == 0xc0 ? 2
			      : (s[i] & 0xf0) == 0xe0 ? 3
						      : 4;

		if (need > n - i || !ref_seq(s + i, need))
			return false;
		i += need;
	}
	return true;
}

TEST(utf8_against_reference)
{
	static const uint8_t tails[] = { 0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90,
					 0x9f, 0xa0, 0xbf, 0xc0, 0xf0, 0xff };
	const size_t nt = sizeof(tails);
	uint8_t s[6];
	int bad = 0;

	for (unsigned a = 0x80; a < 0x100; a++) {
		s[0] = (uint8_t)a;
		CHECK_EQ_INT(usps__utf8_valid((char *)s, 1), ref_utf8(s, 1));
		for (unsigned b2 = 0; b2 < 0x100; b2++) {
			s[1] = (uint8_t)b2;
			bad += usps__utf8_valid((char *)s, 2) != ref_utf8(s, 2);
			for (size_t c = 0; c < nt; c++) {
				s[2] = tails[c];
				bad += usps__utf8_valid((char *)s, 3) !=
				       ref_utf8(s, 3);
				for (size_t d = 0; d < nt; d++) {
					bool want;
					char q[6] = { '"',
						      (char)s[0],
						      (char)s[1],
						      (char)s[2],
						      (char)tails[d],
						      '"' };

					s[3] = tails[d];
					want = ref_utf8(s, 4);
					bad += usps__utf8_valid((char *)s, 4) !=
					       want;
					/* Inside a JSON string, controls are
					 * also out. */
					for (int j = 0; j < 4; j++)
						want = want && s[j] >= 0x20;
					bad += (usps__json_validate(q, 6) ==
						0) != want;
				}
			}
		}
	}
	CHECK_EQ_INT(bad, 0);
}

TEST(validate_depth)
{
	size_t n = 100000;
	char *s = malloc(2 * n + 16);
	int64_t t0;
	int d = USPS__JSON_MAX_DEPTH;

	REQUIRE(s);
	/* Exactly the limit: accepted. */
	memset(s, '[', (size_t)d);
	memset(s + d, ']', (size_t)d);
	CHECK_EQ_INT(usps__json_validate(s, 2 * (size_t)d), 0);
	/* One more: rejected. */
	memset(s, '[', (size_t)d + 1);
	memset(s + d + 1, ']', (size_t)d + 1);
	CHECK_EQ_INT(usps__json_validate(s, 2 * (size_t)d + 2), -EINVAL);
	/* Objects count the same, and mixed nesting. */
	{
		struct usps__buf b = { 0 };

		for (int i = 0; i < d; i++)
			CHECK_EQ_INT(usps__buf_put(&b, i & 1 ? "[" : "{\"k\":",
						   i & 1 ? 1 : 5),
				     0);
		CHECK_EQ_INT(usps__buf_put(&b, "1", 1), 0);
		for (int i = d - 1; i >= 0; i--)
			CHECK_EQ_INT(usps__buf_put(&b, i & 1 ? "]" : "}", 1),
				     0);
		CHECK_EQ_INT(usps__json_validate(b.p, b.len), 0);
		CHECK_EQ_INT(usps__json_is_object(b.p, b.len), 0);
		usps__buf_free(&b);
	}
	/* 100k deep: rejected, quickly and without a crash. */
	memset(s, '[', n);
	memset(s + n, ']', n);
	t0 = harness_now_ms();
	CHECK_EQ_INT(usps__json_validate(s, 2 * n), -EINVAL);
	CHECK_EQ_INT(usps__json_validate(s, n), -EINVAL);
	{
		struct usps__frame f;

		s[0] = '{';
		CHECK_EQ_INT(usps__wire_parse(s, 2 * n, &f), -EPROTO);
	}
	CHECK(harness_now_ms() - t0 < 1000);
	free(s);
}

TEST(validate_whitespace_and_kinds)
{
	CHECK_EQ_INT(valid(" {} "), 0);
	CHECK_EQ_INT(valid("\t\r\n[ ]\r\n"), 0);
	CHECK_EQ_INT(valid("\f{}"), -EINVAL);
	CHECK_EQ_INT(valid("{}\v"), -EINVAL);
	CHECK_EQ_INT(usps__json_is_object(" {\"a\":1} ", 9), 0);
	CHECK_EQ_INT(usps__json_is_object("[]", 2), -EINVAL);
	CHECK_EQ_INT(usps__json_is_object("\"{}\"", 4), -EINVAL);
	CHECK_EQ_INT(usps__json_is_object("", 0), -EINVAL);
	CHECK_EQ_INT(usps__json_is_object("{", 1), -EINVAL);
	CHECK_EQ_INT(usps__json_kind(js("")), USPS__J_ABSENT);
	CHECK_EQ_INT(usps__json_kind(js("null")), USPS__J_NULL);
	CHECK_EQ_INT(usps__json_kind(js("true")), USPS__J_BOOL);
	CHECK_EQ_INT(usps__json_kind(js("false")), USPS__J_BOOL);
	CHECK_EQ_INT(usps__json_kind(js("-1")), USPS__J_NUMBER);
	CHECK_EQ_INT(usps__json_kind(js("7")), USPS__J_NUMBER);
	CHECK_EQ_INT(usps__json_kind(js("\"x\"")), USPS__J_STRING);
	CHECK_EQ_INT(usps__json_kind(js("[1]")), USPS__J_ARRAY);
	CHECK_EQ_INT(usps__json_kind(js("{}")), USPS__J_OBJECT);
	CHECK_EQ_INT(usps__json_kind(js(" {}")), USPS__J_OBJECT);
}

/* Random mutations of valid frames: no crash, and answers are stable. */
TEST(validate_mutations)
{
	/* clang-format off */
	static const char *const seeds[] = {
		"{\"type\":\"publish\",\"topic\":\"demo\",\"event\":{\"type\":"
		"\"hello\",\"runId\":\"run-1\",\"data\":{\"msg\":\"hi \\u00e9 "
		"\xe2\x82\xac\",\"n\":[1,-2.5e3,true,null]}}}",
		"{\"type\":\"subscribe\",\"topic\":\"jobs\",\"group\":"
		"{\"__m_codec__\":\"Undefined\"}}"
	};
	/* clang-format on */
	char m[512];

	for (int it = 0; it < 20000; it++) {
		const char *seed = seeds[it & 1];
		size_t n = strlen(seed);
		struct usps__frame f;
		struct usps__event_fields ef;
		struct usps__buf b = { 0 };
		int r1, r2;

		memcpy(m, seed, n);
		for (int k = 0; k < 1 + (int)(rnd() % 3); k++) {
			size_t at = rnd() % n;

			switch (rnd() % 3) {
			case 0:
				m[at] = (char)rnd();
				break;
			case 1:
				m[at] = "{}[]\":,\\ 0-eE.tfn"[rnd() % 18];
				break;
			default:
				n = at ? at : n; /* truncate */
				break;
			}
		}
		r1 = usps__json_validate(m, n);
		r2 = usps__wire_parse(m, n, &f);
		CHECK(r2 == 0 || r2 == -EPROTO);
		if (r2 == 0) {
			CHECK_EQ_INT(r1, 0);
			(void)usps__wire_event_fields(f.event, &ef);
			CHECK_EQ_INT(
				usps__wire_put_event_head(
					&b, f.topic, f.event,
					"aa8f25e6-181c-40b4-934d-1542985e71d6",
					0),
				0);
			CHECK_EQ_INT(usps__wire_put_group_tail(&b, f.group), 0);
			/* The broker's output is valid JSON again. */
			CHECK_EQ_INT(usps__json_validate(b.p, b.len - 1), 0);
			usps__buf_free(&b);
		}
	}
}

/* ---- frame parsing ------------------------------------------------------ */

TEST(parse_client_frames)
{
	struct usps__frame f;

	CHECK_EQ_INT(
		parse("{\"type\":\"subscribe\",\"topic\":\"demo\",\"group\":"
		      "{\"__m_codec__\":\"Undefined\"}}",
		      &f),
		0);
	CHECK_EQ_INT(f.type, USPS__F_SUBSCRIBE);
	CHECK_SPAN(f.topic, "\"demo\"");
	CHECK_SPAN(f.group, "{\"__m_codec__\":\"Undefined\"}");
	CHECK_EQ_INT(f.group_kind, USPS__OPT_UNDEFINED);
	CHECK_EQ_INT(f.event.n, 0);
	CHECK(!f.local_only);

	CHECK_EQ_INT(parse("{\"type\":\"subscribe\",\"topic\":\"jobs\","
			   "\"group\":\"workers\"}",
			   &f),
		     0);
	CHECK_EQ_INT(f.type, USPS__F_SUBSCRIBE);
	CHECK_SPAN(f.topic, "\"jobs\"");
	CHECK_SPAN(f.group, "\"workers\"");
	CHECK_EQ_INT(f.group_kind, USPS__OPT_STRING);

	CHECK_EQ_INT(parse("{\"type\":\"publish\",\"topic\":\"demo\",\"event\":"
			   "{\"type\":\"hello\",\"runId\":\"run-1\",\"data\":"
			   "{\"msg\":\"hi\"}},\"localOnly\":{\"__m_codec__\":"
			   "\"Undefined\"}}",
			   &f),
		     0);
	CHECK_EQ_INT(f.type, USPS__F_PUBLISH);
	CHECK_SPAN(f.topic, "\"demo\"");
	CHECK_SPAN(f.event, "{\"type\":\"hello\",\"runId\":\"run-1\",\"data\":"
			    "{\"msg\":\"hi\"}}");
	CHECK_EQ_INT(f.group.n, 0);
	CHECK_EQ_INT(f.group_kind, USPS__OPT_ABSENT);
	CHECK(!f.local_only);

	CHECK_EQ_INT(parse("{\"type\":\"unsubscribe\",\"topic\":\"demo\","
			   "\"group\":{\"__m_codec__\":\"Undefined\"}}",
			   &f),
		     0);
	CHECK_EQ_INT(f.type, USPS__F_UNSUBSCRIBE);
	CHECK_SPAN(f.topic, "\"demo\"");
	CHECK_EQ_INT(f.group_kind, USPS__OPT_UNDEFINED);

	CHECK_EQ_INT(parse("{\"type\":\"unsubscribe\",\"topic\":\"jobs\","
			   "\"group\":\"workers\"}",
			   &f),
		     0);
	CHECK_EQ_INT(f.type, USPS__F_UNSUBSCRIBE);
	CHECK_SPAN(f.group, "\"workers\"");
	CHECK_EQ_INT(f.group_kind, USPS__OPT_STRING);

	CHECK_EQ_INT(parse("{\"type\":\"ack\",\"id\":\"x\"}", &f), 0);
	CHECK_EQ_INT(f.type, USPS__F_ACK);
	CHECK_EQ_INT(parse("{\"type\":\"nack\"}", &f), 0);
	CHECK_EQ_INT(f.type, USPS__F_NACK);
}

TEST(parse_broker_frames)
{
	static const char ev1[] =
		"{\"type\":\"event\",\"topic\":\"demo\",\"event\":{\"type\":"
		"\"hello\",\"runId\":\"run-1\",\"data\":{\"msg\":\"hi\"},\"id\":"
		"\"aa8f25e6-181c-40b4-934d-1542985e71d6\",\"createdAt\":"
		"{\"__m_codec__\":\"Date\",\"v\":\"2026-11-25T00:16:50.065Z\"},"
		"\"deliveryAttempt\":1}}";
	static const char ev2[] =
		"{\"type\":\"event\",\"topic\":\"jobs\",\"event\":{\"type\":"
		"\"job\",\"runId\":\"run-2\",\"data\":{\"n\":1},\"id\":"
		"\"5c1f0b56-0b21-42b4-83e6-a2530eee1374\",\"createdAt\":"
		"{\"__m_codec__\":\"Date\",\"v\":\"2026-11-25T00:16:50.266Z\"},"
		"\"deliveryAttempt\":1},\"group\":\"workers\"}";
	struct usps__frame f;
	struct usps__event_fields ef;
	int64_t ms;

	CHECK_EQ_INT(parse("{\"type\":\"subscribed\",\"topic\":\"demo\"}", &f),
		     0);
	CHECK_EQ_INT(f.type, USPS__F_SUBSCRIBED);
	CHECK_SPAN(f.topic, "\"demo\"");
	CHECK_EQ_INT(f.group_kind, USPS__OPT_ABSENT);
	CHECK_EQ_INT(parse("{\"type\":\"subscribed\",\"topic\":\"jobs\","
			   "\"group\":\"workers\"}",
			   &f),
		     0);
	CHECK_EQ_INT(f.type, USPS__F_SUBSCRIBED);
	CHECK_SPAN(f.group, "\"workers\"");
	CHECK_EQ_INT(
		parse("{\"type\":\"unsubscribed\",\"topic\":\"demo\"}", &f), 0);
	CHECK_EQ_INT(f.type, USPS__F_UNSUBSCRIBED);
	CHECK_EQ_INT(parse("{\"type\":\"unsubscribed\",\"topic\":\"jobs\","
			   "\"group\":\"workers\"}",
			   &f),
		     0);
	CHECK_EQ_INT(f.type, USPS__F_UNSUBSCRIBED);
	CHECK_EQ_INT(f.group_kind, USPS__OPT_STRING);

	CHECK_EQ_INT(parse(ev1, &f), 0);
	CHECK_EQ_INT(f.type, USPS__F_EVENT);
	CHECK_SPAN(f.topic, "\"demo\"");
	CHECK_EQ_INT(f.group_kind, USPS__OPT_ABSENT);
	CHECK_EQ_INT(usps__wire_event_fields(f.event, &ef), 0);
	CHECK_SPAN(ef.type, "\"hello\"");
	CHECK_SPAN(ef.run_id, "\"run-1\"");
	CHECK_SPAN(ef.data, "{\"msg\":\"hi\"}");
	CHECK_SPAN(ef.id, "\"aa8f25e6-181c-40b4-934d-1542985e71d6\"");
	CHECK_SPAN(ef.created_at, "{\"__m_codec__\":\"Date\",\"v\":"
				  "\"2026-11-25T00:16:50.065Z\"}");
	CHECK_SPAN(ef.delivery_attempt, "1");
	CHECK_EQ_INT(usps__wire_created_at_ms(ef.created_at, &ms), 0);
	CHECK_EQ_INT(ms, INT64_C(1795565810065));

	CHECK_EQ_INT(parse(ev2, &f), 0);
	CHECK_EQ_INT(f.type, USPS__F_EVENT);
	CHECK_SPAN(f.topic, "\"jobs\"");
	CHECK_SPAN(f.group, "\"workers\"");
	CHECK_EQ_INT(f.group_kind, USPS__OPT_STRING);
	CHECK_EQ_INT(usps__wire_event_fields(f.event, &ef), 0);
	CHECK_SPAN(ef.data, "{\"n\":1}");
	CHECK_EQ_INT(usps__wire_created_at_ms(ef.created_at, &ms), 0);
	CHECK_EQ_INT(ms, INT64_C(1795565810266));
}

TEST(parse_escaped_and_duplicate_keys)
{
	struct usps__frame f;

	CHECK_EQ_INT(parse("{\"\\u0074ype\":\"publish\",\"t\\u006fpic\":\"a\","
			   "\"\\u0065vent\":{},\"gr\\u006Fup\":\"g\","
			   "\"local\\u004Fnly\":true}",
			   &f),
		     0);
	CHECK_EQ_INT(f.type, USPS__F_PUBLISH);
	CHECK_SPAN(f.topic, "\"a\"");
	CHECK_SPAN(f.event, "{}");
	CHECK_SPAN(f.group, "\"g\"");
	CHECK(f.local_only);
	/* Escapes in the type value too, and \/ for '/'. */
	CHECK_EQ_INT(parse("{\"type\":\"p\\u0075blish\",\"topic\":\"a\\/b\"}",
			   &f),
		     0);
	CHECK_EQ_INT(f.type, USPS__F_PUBLISH);
	CHECK_SPAN(f.topic, "\"a\\/b\"");
	/* Near misses are other keys. */
	CHECK_EQ_INT(parse("{\"typ\":\"publish\",\"types\":\"publish\","
			   "\"Type\":\"publish\",\"type\\u0000\":\"publish\"}",
			   &f),
		     0);
	CHECK_EQ_INT(f.type, USPS__F_UNKNOWN);
	/* Last one wins, as with JSON.parse. */
	CHECK_EQ_INT(parse("{\"type\":\"subscribe\",\"topic\":\"a\","
			   "\"topic\":\"b\",\"type\":\"unsubscribe\","
			   "\"group\":\"g\",\"group\":null}",
			   &f),
		     0);
	CHECK_EQ_INT(f.type, USPS__F_UNSUBSCRIBE);
	CHECK_SPAN(f.topic, "\"b\"");
	CHECK_SPAN(f.group, "null");
	CHECK_EQ_INT(f.group_kind, USPS__OPT_NULL);
	CHECK_EQ_INT(parse("{\"type\":\"publish\",\"type\":\"bogus\"}", &f), 0);
	CHECK_EQ_INT(f.type, USPS__F_UNKNOWN);
	CHECK_EQ_INT(parse("{\"localOnly\":true,\"localOnly\":false}", &f), 0);
	CHECK(!f.local_only);
	/* Escaped duplicate overrides a plain one. */
	CHECK_EQ_INT(parse("{\"topic\":\"a\",\"\\u0074opic\":\"b\"}", &f), 0);
	CHECK_SPAN(f.topic, "\"b\"");
	/* Nested keys are not top-level members. */
	CHECK_EQ_INT(parse("{\"event\":{\"type\":\"publish\",\"topic\":\"x\","
			   "\"group\":\"g\"},\"data\":[{\"type\":\"ack\"}]}",
			   &f),
		     0);
	CHECK_EQ_INT(f.type, USPS__F_UNKNOWN);
	CHECK_EQ_INT(f.topic.n, 0);
	CHECK_EQ_INT(f.group_kind, USPS__OPT_ABSENT);
	CHECK_SPAN(f.event, "{\"type\":\"publish\",\"topic\":\"x\","
			    "\"group\":\"g\"}");
}

TEST(parse_spans_with_whitespace)
{
	struct usps__frame f;

	CHECK_EQ_INT(parse(" { \"type\" : \"publish\" , \"topic\" :\t\"t\" , "
			   "\"event\" : { \"a\" : [ 1 , 2 ] } , \"localOnly\" "
			   ": true } ",
			   &f),
		     0);
	CHECK_EQ_INT(f.type, USPS__F_PUBLISH);
	CHECK_SPAN(f.topic, "\"t\"");
	CHECK_SPAN(f.event, "{ \"a\" : [ 1 , 2 ] }");
	CHECK(f.local_only);
	/* Values of every kind get exact spans. */
	CHECK_EQ_INT(parse("{\"topic\":-1.5e3,\"group\":[1,{\"a\":\"]}\"}],"
			   "\"event\":\"e\\\"}\"}",
			   &f),
		     0);
	CHECK_SPAN(f.topic, "-1.5e3");
	CHECK_SPAN(f.group, "[1,{\"a\":\"]}\"}]");
	CHECK_EQ_INT(f.group_kind, USPS__OPT_OTHER);
	CHECK_SPAN(f.event, "\"e\\\"}\"");
}

TEST(parse_crlf_and_ignored_lines)
{
	/* clang-format off */
	static const char *const not_objects[] = {
		"", " ", "\r", "\t \r", "null", "42", "[]", "\"str\"", "true",
		"{", "{\"type\":\"publish\"", "{\"type\":\"publish\"}}",
		"{\"type\":\"publish\",}", "not json",
		"{\"type\":\"publish\",\"topic\":\"\xc0\x80\"}"
	};
	/* clang-format on */
	/* clang-format off */
	static const char *const unknown[] = {
		"{\"topic\":\"x\"}", "{}", "{\"type\":\"bogus\",\"topic\":\"x\"}",
		"{\"type\":null}", "{\"type\":1}", "{\"type\":[\"publish\"]}",
		"{\"type\":{\"__m_codec__\":\"Undefined\"}}",
		"{\"type\":\"Publish\"}", "{\"type\":\"publish \"}",
		"{\"type\":\"\"}"
	};
	/* clang-format on */
	struct usps__frame f;

	CHECK_EQ_INT(parse("{\"type\":\"subscribe\",\"topic\":\"t\"}\r", &f),
		     0);
	CHECK_EQ_INT(f.type, USPS__F_SUBSCRIBE);
	CHECK_SPAN(f.topic, "\"t\"");
	for (size_t i = 0; i < sizeof(not_objects) / sizeof(not_objects[0]);
	     i++) {
		f.type = USPS__F_PUBLISH;
		CHECK_EQ_INT(parse(not_objects[i], &f), -EPROTO);
		CHECK_EQ_INT(f.type, USPS__F_UNKNOWN);
	}
	for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
		CHECK_EQ_INT(parse(unknown[i], &f), 0);
		CHECK_EQ_INT(f.type, USPS__F_UNKNOWN);
	}
	CHECK_EQ_INT(usps__wire_parse(NULL, 0, &f), -EPROTO);
}

TEST(parse_group_and_local_only_kinds)
{
	/* clang-format off */
	static const struct {
		const char *group;
		enum usps__opt_kind kind;
	} t[] = {
		{ "null", USPS__OPT_NULL },
		{ "\"\"", USPS__OPT_STRING },
		{ "\"g\"", USPS__OPT_STRING },
		{ "{\"__m_codec__\":\"Undefined\"}", USPS__OPT_UNDEFINED },
		{ "{ \"__m_codec__\" : \"Undefined\" }", USPS__OPT_UNDEFINED },
		{ "{\"x\":1,\"__m_codec__\":\"Undefined\",\"v\":2}",
		  USPS__OPT_UNDEFINED },
		{ "{\"__m_c\\u006fdec__\":\"Undef\\u0069ned\"}",
		  USPS__OPT_UNDEFINED },
		{ "{\"__m_codec__\":\"Date\",\"__m_codec__\":\"Undefined\"}",
		  USPS__OPT_UNDEFINED },
		{ "{\"__m_codec__\":\"Undefined\",\"__m_codec__\":\"Date\"}",
		  USPS__OPT_OTHER },
		{ "{\"__m_codec__\":\"undefined\"}", USPS__OPT_OTHER },
		{ "{\"__m_codec__\":42}", USPS__OPT_OTHER },
		{ "{\"a\":{\"__m_codec__\":\"Undefined\"}}", USPS__OPT_OTHER },
		{ "{}", USPS__OPT_OTHER },
		{ "[]", USPS__OPT_OTHER },
		{ "1", USPS__OPT_OTHER },
		{ "false", USPS__OPT_OTHER }
	};
	/* clang-format on */
	char line[256];
	struct usps__frame f;

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		snprintf(
			line, sizeof(line),
			"{\"type\":\"subscribe\",\"topic\":\"t\",\"group\":%s}",
			t[i].group);
		CHECK_EQ_INT(parse(line, &f), 0);
		CHECK_SPAN(f.group, t[i].group);
		if (f.group_kind != t[i].kind)
			fprintf(stderr, "  group %s\n", t[i].group);
		CHECK_EQ_INT(f.group_kind, t[i].kind);
	}
	CHECK_EQ_INT(parse("{\"type\":\"subscribe\",\"topic\":\"t\"}", &f), 0);
	CHECK_EQ_INT(f.group_kind, USPS__OPT_ABSENT);
	CHECK_EQ_INT(f.group.n, 0);

	CHECK_EQ_INT(parse("{\"type\":\"publish\",\"localOnly\":true}", &f), 0);
	CHECK(f.local_only);
	CHECK_EQ_INT(parse("{\"type\":\"publish\",\"localOnly\":false}", &f),
		     0);
	CHECK(!f.local_only);
	CHECK_EQ_INT(parse("{\"type\":\"publish\",\"localOnly\":\"true\"}", &f),
		     0);
	CHECK(!f.local_only);
	CHECK_EQ_INT(parse("{\"type\":\"publish\",\"localOnly\":1}", &f), 0);
	CHECK(!f.local_only);
	CHECK_EQ_INT(parse("{\"type\":\"publish\",\"localOnly\":[true]}", &f),
		     0);
	CHECK(!f.local_only);
}

TEST(event_fields)
{
	struct usps__event_fields ef;

	CHECK_EQ_INT(usps__wire_event_fields(js("[]"), &ef), -EINVAL);
	CHECK_EQ_INT(usps__wire_event_fields(js("\"x\""), &ef), -EINVAL);
	CHECK_EQ_INT(usps__wire_event_fields(js(""), &ef), -EINVAL);
	CHECK_EQ_INT(usps__wire_event_fields(js("{}"), &ef), 0);
	CHECK_EQ_INT(ef.type.n + ef.id.n + ef.run_id.n + ef.data.n +
			     ef.created_at.n + ef.delivery_attempt.n,
		     0);
	CHECK_EQ_INT(
		usps__wire_event_fields(
			js(" { \"data\" : [1,{\"id\":2}] , \"type\":\"a\","
			   "\"type\":\"b\",\"\\u0069d\":\"x\",\"runId\":"
			   "null,\"deliveryAttempt\":3,\"createdAt\":"
			   "\"2020-01-01T00:00:00.000Z\",\"extra\":{\"data\""
			   ":0} } "),
			&ef),
		0);
	CHECK_SPAN(ef.type, "\"b\"");
	CHECK_SPAN(ef.id, "\"x\"");
	CHECK_SPAN(ef.run_id, "null");
	CHECK_SPAN(ef.data, "[1,{\"id\":2}]");
	CHECK_SPAN(ef.created_at, "\"2020-01-01T00:00:00.000Z\"");
	CHECK_SPAN(ef.delivery_attempt, "3");
}

/* Absent spans are (NULL, 0): every entry point takes them. */
TEST(absent_spans)
{
	struct usps__span none = { NULL, 0 };
	struct usps__buf b = { 0 };
	struct usps__event_fields ef;
	struct usps__frame f;
	int64_t ms = 7;
	size_t n = 9;
	char out[4];

	CHECK_EQ_INT(usps__json_validate(NULL, 0), -EINVAL);
	CHECK_EQ_INT(usps__json_is_object(NULL, 0), -EINVAL);
	CHECK(usps__utf8_valid(NULL, 0));
	CHECK_EQ_INT(usps__json_kind(none), USPS__J_ABSENT);
	CHECK_EQ_INT(usps__json_string_decode(none, out, &n), -EINVAL);
	CHECK(!usps__json_string_eq(none, "", 0));
	CHECK_EQ_INT(usps__wire_parse(NULL, 0, &f), -EPROTO);
	CHECK_EQ_INT(usps__wire_event_fields(none, &ef), -EINVAL);
	CHECK_EQ_INT(usps__wire_created_at_ms(none, &ms), -EINVAL);
	CHECK_EQ_INT(usps__iso8601_parse(NULL, 0, &ms), -EINVAL);
	CHECK_EQ_INT(ms, 7);
	CHECK_EQ_INT(usps__json_put_string(&b, NULL, 0), 0);
	CHECK_EQ_INT(usps__wire_put_membership(&b, false, NULL, 0, NULL, 0), 0);
	CHECK_EQ_INT(usps__wire_put_publish(&b, NULL, 0, NULL, 0, NULL, none,
					    none),
		     0);
	CHECK_EQ_INT(usps__wire_put_group_tail(&b, none), 0);
	CHECK_EQ_STR(cstr(&b), "\"\"{\"type\":\"subscribe\",\"topic\":\"\"}\n"
			       "{\"type\":\"publish\",\"topic\":\"\",\"event\":"
			       "{\"type\":\"\",\"data\":null}}\n}\n");
	usps__buf_free(&b);
}

/* ---- strings -------------------------------------------------------------- */

static bool decodes_to(const char *lit, const char *want, size_t want_n)
{
	char out[256];
	size_t n = 0;
	struct usps__span s = js(lit);

	if (usps__json_string_decode(s, out, &n) < 0)
		return false;
	return n == want_n && memcmp(out, want, n) == 0;
}

TEST(string_decode)
{
	char out[64];
	size_t n;

	CHECK(decodes_to("\"\"", "", 0));
	CHECK(decodes_to("\"abc\"", "abc", 3));
	CHECK(decodes_to("\"a\\\"b\\\\c\\/d\"", "a\"b\\c/d", 7));
	CHECK(decodes_to("\"\\b\\f\\n\\r\\t\"", "\b\f\n\r\t", 5));
	CHECK(decodes_to("\"\\u0041\\u00e9\\u20AC\"", "A\xc3\xa9\xe2\x82\xac",
			 6));
	CHECK(decodes_to("\"\\ud83d\\ude00\"", "\xf0\x9f\x98\x80", 4));
	CHECK(decodes_to("\"\\uD83D\\uDE00!\"", "\xf0\x9f\x98\x80!", 5));
	CHECK(decodes_to("\"\\ud83d\"", "\xef\xbf\xbd", 3));
	CHECK(decodes_to("\"\\ude00\"", "\xef\xbf\xbd", 3));
	CHECK(decodes_to("\"\\ud83dx\"", "\xef\xbf\xbdx", 4));
	CHECK(decodes_to("\"\\ud83d\\u0041\"", "\xef\xbf\xbd\x41", 4));
	CHECK(decodes_to("\"\\ud83d\\ud83d\\ude00\"",
			 "\xef\xbf\xbd\xf0\x9f\x98\x80", 7));
	CHECK(decodes_to("\"\\ude00\\ud83d\"", "\xef\xbf\xbd\xef\xbf\xbd", 6));
	CHECK(decodes_to("\"a\\u0000b\"", "a\0b", 3));
	CHECK(decodes_to("\"caf\xc3\xa9\"", "caf\xc3\xa9", 5));
	CHECK_EQ_INT(usps__json_string_decode(js("abc"), out, &n), -EINVAL);
	CHECK_EQ_INT(usps__json_string_decode(js("\""), out, &n), -EINVAL);
	CHECK_EQ_INT(usps__json_string_decode(js(""), out, &n), -EINVAL);
	CHECK_EQ_INT(usps__json_string_decode(js("\"\\\""), out, &n), -EINVAL);
	CHECK_EQ_INT(usps__json_string_decode(js("\"\\u12\""), out, &n),
		     -EINVAL);
	CHECK_EQ_INT(usps__json_string_decode(js("\"\\q\""), out, &n), -EINVAL);
}

TEST(string_eq)
{
	CHECK(usps__json_string_eq(js("\"type\""), "type", 4));
	CHECK(usps__json_string_eq(js("\"\\u0074ype\""), "type", 4));
	CHECK(usps__json_string_eq(js("\"\\u0074\\u0079\\u0070\\u0065\""),
				   "type", 4));
	CHECK(usps__json_string_eq(js("\"\""), "", 0));
	CHECK(usps__json_string_eq(js("\"\\ud83d\\ude00\""), "\xf0\x9f\x98\x80",
				   4));
	CHECK(usps__json_string_eq(js("\"a\\u0000\""), "a\0", 2));
	CHECK(usps__json_string_eq(js("\"a\\\\n\""), "a\\n", 3));
	CHECK(!usps__json_string_eq(js("\"a\\n\""), "a\\n", 3));
	CHECK(!usps__json_string_eq(js("\"type\""), "typ", 3));
	CHECK(!usps__json_string_eq(js("\"type\""), "types", 5));
	CHECK(!usps__json_string_eq(js("\"\\u0074ype\""), "typ", 3));
	CHECK(!usps__json_string_eq(js("\"\\u0074ypex\""), "type", 4));
	CHECK(!usps__json_string_eq(js("\"\\u0074yp\""), "type", 4));
	CHECK(!usps__json_string_eq(js("type"), "type", 4));
	CHECK(!usps__json_string_eq(js("null"), "null", 4));
	CHECK(!usps__json_string_eq(js(""), "", 0));
}

static const char *put_str(struct usps__buf *b, const char *s, size_t n)
{
	b->len = 0;
	if (usps__json_put_string(b, s, n) < 0)
		return NULL;
	return cstr(b);
}

TEST(put_string)
{
	struct usps__buf b = { 0 };
	char all[32];

	CHECK_EQ_STR(put_str(&b, "", 0), "\"\"");
	CHECK_EQ_STR(put_str(&b, "demo", 4), "\"demo\"");
	CHECK_EQ_STR(put_str(&b, "a\"b\\c/d", 7), "\"a\\\"b\\\\c/d\"");
	CHECK_EQ_STR(put_str(&b, "\b\f\n\r\t", 5), "\"\\b\\f\\n\\r\\t\"");
	CHECK_EQ_STR(put_str(&b, "\0\x01\x1f\x7f", 4),
		     "\"\\u0000\\u0001\\u001f\x7f\"");
	CHECK_EQ_STR(put_str(&b, "\x0b\x1a", 2), "\"\\u000b\\u001a\"");
	CHECK_EQ_STR(
		put_str(&b,
			"caf\xc3\xa9 \xe2\x80\xa8\xe2\x80\xa9 "
			"\xf0\x9f\x98\x80",
			17),
		"\"caf\xc3\xa9 \xe2\x80\xa8\xe2\x80\xa9 \xf0\x9f\x98\x80\"");
	for (int i = 0; i < 32; i++)
		all[i] = (char)i;
	CHECK_EQ_STR(put_str(&b, all, 32),
		     "\"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006"
		     "\\u0007\\b\\t\\n\\u000b\\f\\r\\u000e\\u000f\\u0010"
		     "\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017"
		     "\\u0018\\u0019\\u001a\\u001b\\u001c\\u001d\\u001e"
		     "\\u001f\"");
	/* Appends after what is there. */
	b.len = 0;
	CHECK_EQ_INT(usps__buf_put(&b, "x=", 2), 0);
	CHECK_EQ_INT(usps__json_put_string(&b, "y", 1), 0);
	CHECK_EQ_STR(cstr(&b), "x=\"y\"");
	usps__buf_free(&b);
	CHECK(b.p == NULL && b.len == 0 && b.cap == 0);
}

TEST(put_string_round_trip)
{
	/* clang-format off */
	static const char *const pieces[] = {
		"a", "Z", " ", "\"", "\\", "/", "\n", "\t", "\x01", "\x1f",
		"\x7f", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
		"\xe2\x80\xa8", "\xef\xbf\xbf", "\0"
	};
	/* clang-format on */
	const size_t np = sizeof(pieces) / sizeof(pieces[0]);
	struct usps__buf b = { 0 };
	char src[512], out[4096];
	int r;

	for (int it = 0; it < 2000; it++) {
		size_t n = 0, len = rnd() % 60, got = 0;

		for (size_t i = 0; i < len; i++) {
			const char *p = pieces[rnd() % np];
			size_t k = *p ? strlen(p) : 1;

			memcpy(src + n, p, k);
			n += k;
		}
		b.len = 0;
		r = usps__json_put_string(&b, src, n);
		REQUIRE(r == 0);
		CHECK(memchr(b.p, '\n', b.len) == NULL);
		CHECK_EQ_INT(usps__json_validate(b.p, b.len), 0);
		REQUIRE(b.len <= sizeof(out));
		CHECK_EQ_INT(usps__json_string_decode(
				     (struct usps__span){ b.p, b.len }, out,
				     &got),
			     0);
		CHECK_EQ_INT(got, n);
		CHECK(memcmp(out, src, n) == 0);
		CHECK(usps__json_string_eq((struct usps__span){ b.p, b.len },
					   src, n));
	}
	usps__buf_free(&b);
}

/* ---- buffers ------------------------------------------------------------ */

TEST(buf_growth)
{
	struct usps__buf b = { 0 };
	char chunk[1000];
	int failed = 0;

	memset(chunk, 'x', sizeof(chunk));
	CHECK_EQ_INT(usps__buf_reserve(&b, 0), 0);
	for (int i = 0; i < 1000; i++)
		failed += usps__buf_put(&b, chunk, sizeof(chunk)) != 0;
	CHECK_EQ_INT(failed, 0);
	CHECK_EQ_INT(b.len, 1000000);
	CHECK(b.cap >= b.len);
	CHECK(b.cap < 4 * b.len);
	CHECK(b.p[0] == 'x' && b.p[999999] == 'x');
	/* Overflowing sizes fail cleanly. */
	CHECK_EQ_INT(usps__buf_reserve(&b, SIZE_MAX), -ENOMEM);
	CHECK_EQ_INT(usps__buf_reserve(&b, SIZE_MAX - b.len + 1), -ENOMEM);
	CHECK_EQ_INT(usps__buf_put(&b, chunk, SIZE_MAX - 10), -ENOMEM);
	CHECK_EQ_INT(b.len, 1000000);
	CHECK_EQ_INT(usps__buf_put(&b, NULL, 0), 0);
	usps__buf_free(&b);
	usps__buf_free(&b);
}

/* ---- time -------------------------------------------------------------- */

static const char *iso(int64_t ms)
{
	static char out[32];
	size_t n = usps__iso8601_ms(out, ms);

	if (n != strlen(out))
		return "(bad length)";
	return out;
}

TEST(iso_format)
{
	CHECK_EQ_STR(iso(0), "1970-01-01T00:00:00.000Z");
	CHECK_EQ_STR(iso(-1), "1969-12-31T23:59:59.999Z");
	CHECK_EQ_STR(iso(1), "1970-01-01T00:00:00.001Z");
	CHECK_EQ_STR(iso(-86400000), "1969-12-31T00:00:00.000Z");
	CHECK_EQ_STR(iso(INT64_C(1795565810065)), "2026-11-25T00:16:50.065Z");
	CHECK_EQ_STR(iso(INT64_C(1709164800000)), "2024-02-29T00:00:00.000Z");
	CHECK_EQ_STR(iso(INT64_C(1709251199999)), "2024-02-29T23:59:59.999Z");
	CHECK_EQ_STR(iso(INT64_C(951868800000) - 1),
		     "2000-02-29T23:59:59.999Z");
	CHECK_EQ_STR(iso(INT64_C(-62135596800000)), "0001-01-01T00:00:00.000Z");
	CHECK_EQ_STR(iso(INT64_C(-62167219200000)), "0000-01-01T00:00:00.000Z");
	CHECK_EQ_STR(iso(INT64_C(-62167219200001)),
		     "-000001-12-31T23:59:59.999Z");
	CHECK_EQ_STR(iso(INT64_C(253402300799999)), "9999-12-31T23:59:59.999Z");
	CHECK_EQ_STR(iso(INT64_C(253402300800000)),
		     "+010000-01-01T00:00:00.000Z");
	/* The ends of the JavaScript Date range. */
	CHECK_EQ_STR(iso(INT64_C(8640000000000000)),
		     "+275760-09-13T00:00:00.000Z");
	CHECK_EQ_STR(iso(INT64_C(-8640000000000000)),
		     "-271821-04-20T00:00:00.000Z");
	CHECK_EQ_INT(strlen(iso(0)), 24);
	CHECK_EQ_INT(strlen(iso(INT64_C(253402300800000))), 27);
	/* Far outside JS's range: still a well-formed, bounded string. */
	CHECK(strlen(iso(INT64_MAX)) < 32);
	CHECK(strlen(iso(INT64_MIN)) < 32);
}

static int isop(const char *s, int64_t *ms)
{
	return usps__iso8601_parse(s, strlen(s), ms);
}

TEST(iso_parse)
{
	/* clang-format off */
	static const char *const bad[] = {
		"", "Z", "2026", "2026-11-25", "2026-11-25T00:16Z",
		"2026-11-25T00:16:50", "2026-11-25T00:16:50.065",
		"2026-11-25 00:16:50.065Z", "2026-11-25t00:16:50.065Z",
		"2026-11-25T00:16:50.065z", "2026-11-25T00:16:50.Z",
		"2026-11-25T00:16:50.065Zx", "2026-13-01T00:00:00Z",
		"2026-00-01T00:00:00Z", "2026-01-00T00:00:00Z",
		"2026-01-32T00:00:00Z", "2026-04-31T00:00:00Z",
		"2023-02-29T00:00:00Z", "1900-02-29T00:00:00Z",
		"2026-01-01T25:00:00Z", "2026-01-01T24:00:01Z",
		"2026-01-01T24:00:00.001Z", "2026-01-01T00:60:00Z",
		"2026-01-01T00:00:60Z", "2026-01-01T00:00:00+24:00",
		"2026-01-01T00:00:00+01:60", "2026-01-01T00:00:00+0100",
		"2026-01-01T00:00:00+01", "-000000-01-01T00:00:00.000Z",
		"+27576-09-13T00:00:00.000Z", "02026-01-01T00:00:00Z",
		"+275760-09-13T00:00:00.001Z", "-271821-04-19T23:59:59.999Z",
		"2026-1-01T00:00:00Z", " 2026-01-01T00:00:00Z",
		"2026-01-01T00:00:00Z ", "2026-01-01T00:00:0aZ"
	};
	/* clang-format on */
	int64_t ms;

	CHECK_EQ_INT(isop("2026-11-25T00:16:50.065Z", &ms), 0);
	CHECK_EQ_INT(ms, INT64_C(1795565810065));
	CHECK_EQ_INT(isop("2026-11-25T00:16:50Z", &ms), 0);
	CHECK_EQ_INT(ms, INT64_C(1795565810000));
	CHECK_EQ_INT(isop("2026-11-25T00:16:50.5Z", &ms), 0);
	CHECK_EQ_INT(ms, INT64_C(1795565810500));
	CHECK_EQ_INT(isop("2026-11-25T00:16:50.06Z", &ms), 0);
	CHECK_EQ_INT(ms, INT64_C(1795565810060));
	CHECK_EQ_INT(isop("2026-11-25T00:16:50.0659999Z", &ms), 0);
	CHECK_EQ_INT(ms, INT64_C(1795565810065));
	CHECK_EQ_INT(isop("2026-11-25T01:16:50.065+01:00", &ms), 0);
	CHECK_EQ_INT(ms, INT64_C(1795565810065));
	CHECK_EQ_INT(isop("2026-11-24T18:46:50.065-05:30", &ms), 0);
	CHECK_EQ_INT(ms, INT64_C(1795565810065));
	CHECK_EQ_INT(isop("2026-11-25T00:16:50.065+00:00", &ms), 0);
	CHECK_EQ_INT(ms, INT64_C(1795565810065));
	CHECK_EQ_INT(isop("1970-01-01T00:00:00.000Z", &ms), 0);
	CHECK_EQ_INT(ms, 0);
	CHECK_EQ_INT(isop("1969-12-31T23:59:59.999Z", &ms), 0);
	CHECK_EQ_INT(ms, -1);
	CHECK_EQ_INT(isop("2024-02-29T00:00:00.000Z", &ms), 0);
	CHECK_EQ_INT(ms, INT64_C(1709164800000));
	CHECK_EQ_INT(isop("2000-02-29T23:59:59.999Z", &ms), 0);
	CHECK_EQ_INT(ms, INT64_C(951868800000) - 1);
	CHECK_EQ_INT(isop("2024-02-28T24:00:00Z", &ms), 0);
	CHECK_EQ_INT(ms, INT64_C(1709164800000));
	CHECK_EQ_INT(isop("+010000-01-01T00:00:00.000Z", &ms), 0);
	CHECK_EQ_INT(ms, INT64_C(253402300800000));
	CHECK_EQ_INT(isop("+002026-11-25T00:16:50.065Z", &ms), 0);
	CHECK_EQ_INT(ms, INT64_C(1795565810065));
	CHECK_EQ_INT(isop("-000001-12-31T23:59:59.999Z", &ms), 0);
	CHECK_EQ_INT(ms, INT64_C(-62167219200001));
	CHECK_EQ_INT(isop("+275760-09-13T00:00:00.000Z", &ms), 0);
	CHECK_EQ_INT(ms, INT64_C(8640000000000000));
	CHECK_EQ_INT(isop("-271821-04-20T00:00:00.000Z", &ms), 0);
	CHECK_EQ_INT(ms, INT64_C(-8640000000000000));
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ms = 42;
		if (isop(bad[i], &ms) != -EINVAL)
			fprintf(stderr, "  accepted %s\n", bad[i]);
		CHECK_EQ_INT(isop(bad[i], &ms), -EINVAL);
		CHECK_EQ_INT(ms, 42);
	}
}

TEST(iso_round_trip)
{
	const int64_t range = INT64_C(8640000000000000);
	int64_t ms, back;
	char buf[64];
	int bad = 0;

	for (int i = 0; i < 200000; i++) {
		ms = (int64_t)(rnd() % (uint64_t)(2 * range + 1)) - range;
		if (i & 1) /* concentrate half of them on years 0..9999 */
			ms = ms % INT64_C(253402300800000);
		bad += usps__iso8601_parse(iso(ms), strlen(iso(ms)), &back) !=
			       0 ||
		       back != ms;
	}
	CHECK_EQ_INT(bad, 0);
	/* Against the C library's calendar for years 1..9999. */
	for (int i = 0; i < 20000; i++) {
		struct tm tm;
		time_t t;

		ms = INT64_C(-62135596800000) +
		     (int64_t)(rnd() % UINT64_C(315537897600000));
		t = (time_t)(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
		if (!gmtime_r(&t, &tm))
			memset(&tm, 0, sizeof(tm));
		snprintf(buf, sizeof(buf),
			 "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
			 tm.tm_hour, tm.tm_min, tm.tm_sec,
			 (int)(ms - (int64_t)t * 1000));
		bad += strcmp(buf, iso(ms)) != 0;
	}
	CHECK_EQ_INT(bad, 0);
}

TEST(created_at)
{
	int64_t ms = 0;

	CHECK_EQ_INT(
		usps__wire_created_at_ms(js("{\"__m_codec__\":\"Date\",\"v\":"
					    "\"2026-11-25T00:16:50.065Z\"}"),
					 &ms),
		0);
	CHECK_EQ_INT(ms, INT64_C(1795565810065));
	ms = 0;
	CHECK_EQ_INT(usps__wire_created_at_ms(
			     js("{ \"v\" : \"1970-01-01T00:00:01.000Z\" , "
				"\"extra\":[1],\"__m_codec__\":\"Date\"}"),
			     &ms),
		     0);
	CHECK_EQ_INT(ms, 1000);
	CHECK_EQ_INT(usps__wire_created_at_ms(
			     js("\"2026-11-25T00:16:50.065Z\""), &ms),
		     0);
	CHECK_EQ_INT(ms, INT64_C(1795565810065));
	CHECK_EQ_INT(usps__wire_created_at_ms(
			     js("\"2026-11-25T00:16:50.065\\u005a\""), &ms),
		     0);
	CHECK_EQ_INT(ms, INT64_C(1795565810065));
	CHECK_EQ_INT(usps__wire_created_at_ms(
			     js("{\"__m_codec__\":\"Date\",\"v\":\"garbage\"}"),
			     &ms),
		     -EINVAL);
	CHECK_EQ_INT(
		usps__wire_created_at_ms(js("{\"__m_codec__\":\"Dates\",\"v\":"
					    "\"2026-11-25T00:16:50.065Z\"}"),
					 &ms),
		-EINVAL);
	CHECK_EQ_INT(usps__wire_created_at_ms(js("{\"__m_codec__\":\"Date\"}"),
					      &ms),
		     -EINVAL);
	CHECK_EQ_INT(
		usps__wire_created_at_ms(
			js("{\"__m_codec__\":\"Date\",\"v\":1795565810065}"),
			&ms),
		-EINVAL);
	CHECK_EQ_INT(usps__wire_created_at_ms(
			     js("{\"v\":\"2026-11-25T00:16:50.065Z\"}"), &ms),
		     -EINVAL);
	CHECK_EQ_INT(usps__wire_created_at_ms(js("1795565810065"), &ms),
		     -EINVAL);
	CHECK_EQ_INT(usps__wire_created_at_ms(js("null"), &ms), -EINVAL);
	CHECK_EQ_INT(usps__wire_created_at_ms(js(""), &ms), -EINVAL);
	CHECK_EQ_INT(usps__wire_created_at_ms(js("\"\""), &ms), -EINVAL);
	CHECK_EQ_INT(usps__wire_created_at_ms(js("[\"2026-11-25T00:16:50Z\"]"),
					      &ms),
		     -EINVAL);
}

/* ---- UUIDs ---------------------------------------------------------------- */

static int cmp_uuid(const void *a, const void *b)
{
	return memcmp(a, b, 37);
}

TEST(uuid4)
{
	static char ids[1000][37];
	struct usps__uuidgen *g = malloc(sizeof(*g));
	int dups = 0, r;

	REQUIRE(g);
	REQUIRE(usps__uuidgen_init(g) == 0);
	CHECK_EQ_INT(g->pos, sizeof(g->pool));
	for (int i = 0; i < 1000; i++) {
		char *u = ids[i];

		r = usps__uuid4(g, u);
		REQUIRE(r == 0);
		CHECK_EQ_INT(strlen(u), 36);
		for (int k = 0; k < 36; k++) {
			if (k == 8 || k == 13 || k == 18 || k == 23)
				CHECK(u[k] == '-');
			else
				CHECK((u[k] >= '0' && u[k] <= '9') ||
				      (u[k] >= 'a' && u[k] <= 'f'));
		}
		CHECK(u[14] == '4');
		CHECK(u[19] == '8' || u[19] == '9' || u[19] == 'a' ||
		      u[19] == 'b');
	}
	qsort(ids, 1000, sizeof(ids[0]), cmp_uuid);
	for (int i = 1; i < 1000; i++)
		dups += memcmp(ids[i - 1], ids[i], 37) == 0;
	CHECK_EQ_INT(dups, 0);

	/* The digits are the pool's bytes in order, with the version and
	 * variant bits set. */
	static const uint8_t known[16] = { 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
					   0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98,
					   0x76, 0x54, 0x32, 0x10 };
	char u[37];

	g->pos = sizeof(g->pool) - sizeof(known);
	memcpy(g->pool + g->pos, known, sizeof(known));
	REQUIRE(usps__uuid4(g, u) == 0);
	CHECK_EQ_STR(u, "01234567-89ab-4def-bedc-ba9876543210");
	free(g);
}

/* ---- builders --------------------------------------------------------- */

TEST(put_membership)
{
	struct usps__buf b = { 0 };

	CHECK_EQ_INT(usps__wire_put_membership(&b, false, "demo", 4, NULL, 0),
		     0);
	CHECK_EQ_STR(cstr(&b), "{\"type\":\"subscribe\",\"topic\":\"demo\"}\n");
	b.len = 0;
	CHECK_EQ_INT(usps__wire_put_membership(&b, false, "jobs", 4, "workers",
					       7),
		     0);
	CHECK_EQ_STR(cstr(&b), "{\"type\":\"subscribe\",\"topic\":\"jobs\","
			       "\"group\":\"workers\"}\n");
	b.len = 0;
	CHECK_EQ_INT(usps__wire_put_membership(&b, true, "jobs", 4, "workers",
					       7),
		     0);
	CHECK_EQ_STR(cstr(&b), "{\"type\":\"unsubscribe\",\"topic\":\"jobs\","
			       "\"group\":\"workers\"}\n");
	b.len = 0;
	CHECK_EQ_INT(usps__wire_put_membership(&b, true, "demo", 4, NULL, 0),
		     0);
	CHECK_EQ_STR(cstr(&b),
		     "{\"type\":\"unsubscribe\",\"topic\":\"demo\"}\n");
	/* Escaping, an empty group, and two frames in one buffer. */
	b.len = 0;
	CHECK_EQ_INT(usps__wire_put_membership(&b, false, "a\"\n", 3, "", 0),
		     0);
	CHECK_EQ_INT(usps__wire_put_membership(&b, false, "x", 1, NULL, 0), 0);
	CHECK_EQ_STR(cstr(&b), "{\"type\":\"subscribe\",\"topic\":\"a\\\"\\n\","
			       "\"group\":\"\"}\n"
			       "{\"type\":\"subscribe\",\"topic\":\"x\"}\n");
	usps__buf_free(&b);
}

TEST(put_ack)
{
	struct usps__buf b = { 0 };
	struct usps__span none = { NULL, 0 };
	struct usps__frame f;
	int r;

	CHECK_EQ_INT(usps__wire_put_ack(&b, false, js("\"demo\""), none), 0);
	CHECK_EQ_STR(cstr(&b),
		     "{\"type\":\"subscribed\",\"topic\":\"demo\"}\n");
	b.len = 0;
	CHECK_EQ_INT(usps__wire_put_ack(&b, true, js("\"jobs\""),
					js("\"workers\"")),
		     0);
	CHECK_EQ_STR(cstr(&b), "{\"type\":\"unsubscribed\",\"topic\":\"jobs\","
			       "\"group\":\"workers\"}\n");
	b.len = 0;
	CHECK_EQ_INT(usps__wire_put_ack(&b, false, none, none), 0);
	CHECK_EQ_STR(cstr(&b), "{\"type\":\"subscribed\",\"topic\":"
			       "{\"__m_codec__\":\"Undefined\"}}\n");
	b.len = 0;
	CHECK_EQ_INT(usps__wire_put_ack(&b, false, js("\"t\""), js("null")), 0);
	CHECK_EQ_STR(cstr(&b), "{\"type\":\"subscribed\",\"topic\":\"t\","
			       "\"group\":null}\n");
	/* A request parsed and acked: raw spans are echoed. */
	r = parse("{\"type\":\"subscribe\",\"topic\":42,\"group\":null}", &f);
	REQUIRE(r == 0);
	b.len = 0;
	CHECK_EQ_INT(usps__wire_put_ack(&b, false, f.topic, f.group), 0);
	CHECK_EQ_STR(cstr(&b), "{\"type\":\"subscribed\",\"topic\":42,"
			       "\"group\":null}\n");
	usps__buf_free(&b);
}

TEST(put_publish)
{
	struct usps__buf b = { 0 };
	struct usps__span none = { NULL, 0 };
	struct usps__frame f;

	CHECK_EQ_INT(usps__wire_put_publish(&b, "demo", 4, "hello", 5, "run-1",
					    js("{\"msg\":\"hi\"}"), none),
		     0);
	CHECK_EQ_STR(cstr(&b), "{\"type\":\"publish\",\"topic\":\"demo\","
			       "\"event\":{\"type\":\"hello\",\"runId\":"
			       "\"run-1\",\"data\":{\"msg\":\"hi\"}}}\n");
	b.len = 0;
	CHECK_EQ_INT(usps__wire_put_publish(&b, "demo", 4, "hello", 5, "run-1",
					    js("{\"msg\":\"hi\"}"),
					    js("{\"index\":3}")),
		     0);
	CHECK_EQ_STR(cstr(&b), "{\"type\":\"publish\",\"topic\":\"demo\","
			       "\"event\":{\"type\":\"hello\",\"runId\":"
			       "\"run-1\",\"data\":{\"msg\":\"hi\"},"
			       "\"index\":3}}\n");
	b.len = 0;
	CHECK_EQ_INT(usps__wire_put_publish(&b, "t", 1, "x", 1, NULL, none,
					    js("{}")),
		     0);
	CHECK_EQ_STR(cstr(&b), "{\"type\":\"publish\",\"topic\":\"t\","
			       "\"event\":{\"type\":\"x\",\"data\":null}}\n");
	b.len = 0;
	CHECK_EQ_INT(usps__wire_put_publish(&b, "t", 1, "x", 1, NULL, js("7"),
					    js(" {  \n\t } ")),
		     0);
	CHECK_EQ_STR(cstr(&b), "{\"type\":\"publish\",\"topic\":\"t\","
			       "\"event\":{\"type\":\"x\",\"data\":7}}\n");
	/* Pretty-printed data and extra: whitespace between tokens goes,
	 * whitespace in strings stays, and no '\n' gets into the frame. */
	b.len = 0;
	CHECK_EQ_INT(usps__wire_put_publish(
			     &b, "t", 1, "x", 1, "r",
			     js("{\n  \"a b\" : [ 1, \"c \\\" d\" ],\r\n"
				"  \"e\": null\n}\n"),
			     js(" { \"index\" : 3 ,\n \"k\":\"v w\" } ")),
		     0);
	CHECK_EQ_STR(cstr(&b), "{\"type\":\"publish\",\"topic\":\"t\","
			       "\"event\":{\"type\":\"x\",\"runId\":\"r\","
			       "\"data\":{\"a b\":[1,\"c \\\" d\"],\"e\":null},"
			       "\"index\":3,\"k\":\"v w\"}}\n");
	/* Escaped strings, and the result parses as a publish frame. */
	b.len = 0;
	CHECK_EQ_INT(usps__wire_put_publish(&b, "a\"b", 3, "t\\y", 3, "r\tn",
					    js("\"s\""), none),
		     0);
	CHECK_EQ_STR(cstr(&b), "{\"type\":\"publish\",\"topic\":\"a\\\"b\","
			       "\"event\":{\"type\":\"t\\\\y\",\"runId\":"
			       "\"r\\tn\",\"data\":\"s\"}}\n");
	CHECK_EQ_INT(usps__wire_parse(b.p, b.len - 1, &f), 0);
	CHECK_EQ_INT(f.type, USPS__F_PUBLISH);
	CHECK_SPAN(f.topic, "\"a\\\"b\"");
	CHECK(!f.local_only);
	usps__buf_free(&b);
}

#define UUID "aa8f25e6-181c-40b4-934d-1542985e71d6"
#define ISO "2026-11-25T00:16:50.065Z"
#define STAMP_ID "\"id\":\"" UUID "\""
#define STAMP_AT "\"createdAt\":{\"__m_codec__\":\"Date\",\"v\":\"" ISO "\"}"
#define STAMPS STAMP_ID "," STAMP_AT ",\"deliveryAttempt\":1"
#define HEAD(t) "{\"type\":\"event\",\"topic\":" t ",\"event\":{"

static const char *head(struct usps__buf *b, const char *topic,
			const char *event)
{
	struct usps__span t = { NULL, 0 }, e = { NULL, 0 };

	if (topic)
		t = js(topic);
	if (event)
		e = js(event);
	b->len = 0;
	if (usps__wire_put_event_head(b, t, e, UUID, INT64_C(1795565810065)) <
		    0 ||
	    usps__buf_put(b, "}\n", 2) < 0)
		return NULL;
	return cstr(b);
}

TEST(event_head_spec)
{
	struct usps__buf b = { 0 };
	struct usps__frame f;
	int r;

	CHECK_EQ_STR(
		head(&b, "\"demo\"",
		     "{\"type\":\"hello\",\"runId\":"
		     "\"run-1\",\"data\":{\"msg\":\"hi\"}}"),
		"{\"type\":\"event\",\"topic\":\"demo\",\"event\":{\"type\":"
		"\"hello\",\"runId\":\"run-1\",\"data\":{\"msg\":\"hi\"},"
		"\"id\":\"aa8f25e6-181c-40b4-934d-1542985e71d6\","
		"\"createdAt\":{\"__m_codec__\":\"Date\",\"v\":"
		"\"2026-11-25T00:16:50.065Z\"},\"deliveryAttempt\":1}}\n");
	/* A group delivery ends with the group tail instead. */
	b.len = 0;
	CHECK_EQ_INT(usps__wire_put_event_head(
			     &b, js("\"demo\""),
			     js("{\"type\":\"hello\",\"runId\":\"run-1\","
				"\"data\":{\"msg\":\"hi\"}}"),
			     UUID, INT64_C(1795565810065)),
		     0);
	CHECK_EQ_INT(usps__wire_put_group_tail(&b, js("\"workers\"")), 0);
	CHECK_EQ_STR(
		cstr(&b),
		"{\"type\":\"event\",\"topic\":\"demo\",\"event\":{\"type\":"
		"\"hello\",\"runId\":\"run-1\",\"data\":{\"msg\":\"hi\"},"
		"\"id\":\"aa8f25e6-181c-40b4-934d-1542985e71d6\","
		"\"createdAt\":{\"__m_codec__\":\"Date\",\"v\":"
		"\"2026-11-25T00:16:50.065Z\"},\"deliveryAttempt\":1},"
		"\"group\":\"workers\"}\n");
	CHECK_EQ_INT(usps__wire_parse(b.p, b.len - 1, &f), 0);
	CHECK_EQ_INT(f.type, USPS__F_EVENT);
	CHECK_SPAN(f.group, "\"workers\"");
	/* The spec's publish frame, through the parser, into the head. */
	r = parse("{\"type\":\"publish\",\"topic\":\"demo\",\"event\":"
		  "{\"type\":\"hello\",\"runId\":\"run-1\",\"data\":"
		  "{\"msg\":\"hi\"}},\"localOnly\":{\"__m_codec__\":"
		  "\"Undefined\"}}",
		  &f);
	REQUIRE(r == 0);
	b.len = 0;
	CHECK_EQ_INT(usps__wire_put_event_head(&b, f.topic, f.event, UUID,
					       INT64_C(1795565810065)),
		     0);
	CHECK_EQ_INT(usps__buf_put(&b, "}\n", 2), 0);
	CHECK_EQ_STR(
		cstr(&b),
		HEAD("\"demo\"") "\"type\":\"hello\",\"runId\":"
				 "\"run-1\",\"data\":{\"msg\":\"hi\"}," STAMPS
				 "}}\n");
	usps__buf_free(&b);
}

/* The head built from a parsed frame equals the one from its spans, for
 * events with and without stamped keys, in every shape. */
TEST(frame_head_equals_event_head)
{
	static const char *const events[] = {
		"{\"type\":\"hello\",\"data\":{\"msg\":\"hi\"}}",
		"{}",
		"{ }",
		"{ \"a\" : 1 ,\t\"b\":[1,{\"id\":2}] }",
		"{\"id\":\"mine\",\"a\":1}",
		"{\"a\":1,\"createdAt\":\"x\"}",
		"{\"deliveryAttempt\":9}",
		"{\"i\\u0064\":1,\"a\":2}",
		"{\"a\":1,\"a\":2}",
		"[1,2]",
		"\"str\"",
		"null",
		"5",
	};
	struct usps__buf a = { 0 }, b = { 0 };
	struct usps__frame f;
	char line[512];

	for (size_t i = 0; i < sizeof(events) / sizeof(events[0]); i++) {
		snprintf(line, sizeof(line),
			 "{\"type\":\"publish\",\"topic\":\"t\",\"event\":%s}",
			 events[i]);
		REQUIRE(parse(line, &f) == 0);
		a.len = b.len = 0;
		CHECK_EQ_INT(usps__wire_put_event_head(&a, f.topic, f.event,
						       UUID, INT64_C(0)),
			     0);
		CHECK_EQ_INT(
			usps__wire_put_frame_head(&b, &f, UUID, INT64_C(0)), 0);
		CHECK_EQ_STR(cstr(&b), cstr(&a));
	}
	/* A later "event" replaces an earlier one whole. */
	REQUIRE(parse("{\"type\":\"publish\",\"topic\":\"t\",\"event\":"
		      "{\"id\":1},\"event\":{\"a\":1}}",
		      &f) == 0);
	a.len = b.len = 0;
	CHECK_EQ_INT(usps__wire_put_frame_head(&b, &f, UUID, INT64_C(0)), 0);
	CHECK_EQ_STR(cstr(&b),
		     HEAD("\"t\"") "\"a\":1,\"id\":\"" UUID
				   "\",\"createdAt\":{\"__m_codec__\":"
				   "\"Date\",\"v\":\"1970-01-01T00:"
				   "00:00.000Z\"},\"deliveryAttempt\""
				   ":1}");
	usps__buf_free(&a);
	usps__buf_free(&b);
}

TEST(event_head_replace_in_place)
{
	struct usps__buf b = { 0 };

	/* Spec §2.5: client id/createdAt/deliveryAttempt are replaced. */
	CHECK_EQ_STR(head(&b, "\"t\"",
			  "{\"id\":\"client-id\",\"type\":\"x\","
			  "\"createdAt\":\"client-date\","
			  "\"index\":4,\"deliveryAttempt\":9}"),
		     HEAD("\"t\"") STAMP_ID
		     ",\"type\":\"x\"," STAMP_AT
		     ",\"index\":4,\"deliveryAttempt\":1}}\n");
	/* Only some present: the rest are appended in order. */
	CHECK_EQ_STR(head(&b, "\"t\"", "{\"deliveryAttempt\":9,\"a\":1}"),
		     HEAD("\"t\"") "\"deliveryAttempt\":1,\"a\":1," STAMP_ID
				   "," STAMP_AT "}}\n");
	CHECK_EQ_STR(head(&b, "\"t\"",
			  "{\"a\":1,\"createdAt\":{\"__m_codec__\":"
			  "\"Date\",\"v\":\"2000-01-01T00:00:00."
			  "000Z\"}}"),
		     HEAD("\"t\"") "\"a\":1," STAMP_AT "," STAMP_ID
				   ",\"deliveryAttempt\":1}}\n");
	/* The key keeps the publisher's spelling. */
	CHECK_EQ_STR(head(&b, "\"t\"", "{\"\\u0069d\":[1,2],\"b\":{\"id\":3}}"),
		     HEAD("\"t\"") "\"\\u0069d\":\"" UUID
				   "\",\"b\":{\"id\":3}," STAMP_AT
				   ",\"deliveryAttempt\":1}}\n");
	/* Duplicates are both replaced. */
	CHECK_EQ_STR(head(&b, "\"t\"", "{\"id\":1,\"id\":2}"),
		     HEAD("\"t\"") STAMP_ID "," STAMP_ID "," STAMP_AT
					    ",\"deliveryAttempt\":1}}\n");
	/* Whitespace around members is tolerated. */
	CHECK_EQ_STR(head(&b, "\"t\"", " { \"a\" : 1 , \"id\" : 5 } "),
		     HEAD("\"t\"") "\"a\" : 1 , \"id\" : \"" UUID "\"," STAMP_AT
				   ",\"deliveryAttempt\":1}}\n");
	/* Keys that merely look alike are kept. */
	CHECK_EQ_STR(head(&b, "\"t\"", "{\"ID\":1,\"ids\":2,\"created\":3}"),
		     HEAD("\"t\"") "\"ID\":1,\"ids\":2,\"created\":3," STAMPS
				   "}}\n");
	usps__buf_free(&b);
}

TEST(event_head_odd_events)
{
	struct usps__buf b = { 0 };

	/* §2.5: a frame without an event. */
	CHECK_EQ_STR(head(&b, "\"t\"", NULL), HEAD("\"t\"") STAMPS "}}\n");
	CHECK_EQ_STR(head(&b, "\"t\"", "{}"), HEAD("\"t\"") STAMPS "}}\n");
	CHECK_EQ_STR(head(&b, "\"t\"", "{ }"), HEAD("\"t\"") STAMPS "}}\n");
	CHECK_EQ_STR(head(&b, "\"t\"", "null"), HEAD("\"t\"") STAMPS "}}\n");
	CHECK_EQ_STR(head(&b, "\"t\"", "42"), HEAD("\"t\"") STAMPS "}}\n");
	CHECK_EQ_STR(head(&b, "\"t\"", "true"), HEAD("\"t\"") STAMPS "}}\n");
	CHECK_EQ_STR(head(&b, "\"t\"", "[]"), HEAD("\"t\"") STAMPS "}}\n");
	CHECK_EQ_STR(head(&b, "\"t\"", "\"\""), HEAD("\"t\"") STAMPS "}}\n");
	/* Arrays spread by index. */
	CHECK_EQ_STR(head(&b, "\"t\"", "[1,{\"a\":[2]},\"x\",null]"),
		     HEAD("\"t\"") "\"0\":1,\"1\":{\"a\":[2]},\"2\":\"x\","
				   "\"3\":null," STAMPS "}}\n");
	/* §2.5: strings spread by UTF-16 code unit. */
	CHECK_EQ_STR(head(&b, "\"t\"", "\"a s\""),
		     HEAD("\"t\"") "\"0\":\"a\",\"1\":\" \",\"2\":\"s\"," STAMPS
				   "}}\n");
	CHECK_EQ_STR(
		head(&b, "\"t\"", "\"\xc3\xa9\\n\\u0041\\\"\xf0\x9f\x98\x80\""),
		HEAD("\"t\"") "\"0\":\"\xc3\xa9\",\"1\":\"\\n\","
			      "\"2\":\"A\",\"3\":\"\\\"\",\"4\":\"\\ud83d\","
			      "\"5\":\"\\ude00\"," STAMPS "}}\n");
	/* An absent topic is written as undefined, like an ack's. */
	CHECK_EQ_STR(head(&b, NULL, "{\"a\":1}"),
		     HEAD("{\"__m_codec__\":\"Undefined\"}") "\"a\":1," STAMPS
							     "}}\n");
	/* Ten or more elements get two-digit keys. */
	CHECK_EQ_STR(
		head(&b, "1", "[0,1,2,3,4,5,6,7,8,9,10]"),
		HEAD("1") "\"0\":0,\"1\":1,\"2\":2,\"3\":3,\"4\":4,"
			  "\"5\":5,\"6\":6,\"7\":7,\"8\":8,\"9\":9,\"10\":10," STAMPS
			  "}}\n");
	/* Group tail: absent group means a fan-out ending. */
	b.len = 0;
	CHECK_EQ_INT(usps__wire_put_group_tail(&b, (struct usps__span){ 0 }),
		     0);
	CHECK_EQ_STR(cstr(&b), "}\n");
	usps__buf_free(&b);
}

TEST(event_head_output_parses)
{
	/* clang-format off */
	static const char *const events[] = {
		"{\"type\":\"a\",\"data\":{\"x\":[1,2,{\"y\":\"}\"}]}}",
		"{\"id\":{\"nested\":{\"id\":1}},\"data\":\"\\\"}\"}",
		"[{\"id\":1}]", "\"str\\u00e9\"", "{}", "0"
	};
	/* clang-format on */
	struct usps__buf b = { 0 };
	struct usps__frame f;
	struct usps__event_fields ef;
	int64_t ms;

	for (size_t i = 0; i < sizeof(events) / sizeof(events[0]); i++) {
		const char *out = head(&b, "\"t\"", events[i]);

		REQUIRE(out);
		CHECK_EQ_INT(usps__wire_parse(b.p, b.len - 1, &f), 0);
		CHECK_EQ_INT(f.type, USPS__F_EVENT);
		CHECK_EQ_INT(usps__wire_event_fields(f.event, &ef), 0);
		CHECK_SPAN(ef.id, "\"" UUID "\"");
		CHECK_SPAN(ef.delivery_attempt, "1");
		CHECK_EQ_INT(usps__wire_created_at_ms(ef.created_at, &ms), 0);
		CHECK_EQ_INT(ms, INT64_C(1795565810065));
	}
	usps__buf_free(&b);
}

/* Build the event frame for the publish @line as the broker does, with its
 * index; @record gets header + line + '\n'. Returns what the head gave. */
static int build_indexed(const char *line, struct usps__buf *record,
			 struct usps__ix *ix)
{
	struct usps__buf b = { 0 };
	uint8_t head[USPS__REC_WIDE];
	struct usps__frame f;
	size_t hlen;
	int r;

	if (parse(line, &f) < 0)
		return -1;
	r = usps__wire_put_frame_head_ix(&b, &f, UUID, INT64_C(1700000000000),
					 0, ix);
	if (r < 0 || usps__buf_put(&b, "}\n", 2) < 0) {
		usps__buf_free(&b);
		return -1;
	}
	hlen = usps__rec_head(head, b.len - 1, r == 1 ? ix : NULL);
	record->len = 0;
	if (usps__buf_put(record, head, hlen) < 0 ||
	    usps__buf_put(record, b.p, b.len) < 0)
		r = -1;
	usps__buf_free(&b);
	return r;
}

static bool same_span(struct usps__span a, struct usps__span b)
{
	return a.n == b.n && (!a.n || !memcmp(a.p, b.p, a.n));
}

/*
 * The index built with the head is what a parse of the finished frame
 * finds, and a client opening the record gets those spans without a scan.
 * Events whose members the head rewrites (a stamped key), or that are not
 * objects, are not indexed: they go out as plain records, parsed.
 */
TEST(index_matches_parse)
{
	static const char *const indexed[] = {
		"{\"type\":\"hello\",\"data\":{\"msg\":\"hi\"}}",
		"{}",
		"{ \"a\" : 1 ,\t\"b\":[1,{\"id\":2}] }",
		"{\"type\":\"t\",\"runId\":\"r1\",\"data\":[1,\"x\"],\"z\":1}",
		"{\"type\":5,\"data\":null,\"data\":7}",
		"{\"t\\u0079pe\":\"esc\",\"data\":\"\\u00e9\"}",
	};
	static const char *const plain[] = {
		"{\"id\":\"mine\",\"a\":1}",
		"{\"a\":1,\"createdAt\":\"x\"}",
		"{\"deliveryAttempt\":9}",
		"[1,2]",
		"\"str\"",
		"null",
	};
	struct usps__buf rec = { 0 };
	struct usps__frame f, g;
	struct usps__ix ix;
	const char *line;
	size_t len;
	char pub[512];

	for (size_t i = 0; i < sizeof(indexed) / sizeof(indexed[0]); i++) {
		snprintf(pub, sizeof(pub),
			 "{\"type\":\"publish\",\"topic\":\"a\\\"b\","
			 "\"event\":%s}",
			 indexed[i]);
		REQUIRE(build_indexed(pub, &rec, &ix) == 1);
		CHECK_EQ_INT(rec.p[4], 1); /* narrow */
		REQUIRE(usps__rec_open(rec.p, rec.len, &line, &len, &f) == 1);
		CHECK_EQ_INT(line - rec.p, USPS__REC_NARROW);
		REQUIRE(usps__wire_parse(line, len, &g) == 0);
		CHECK(g.type == USPS__F_EVENT && f.type == USPS__F_EVENT);
		CHECK(same_span(f.topic, g.topic));
		CHECK(f.group_kind == USPS__OPT_ABSENT && !f.group.n);
		CHECK(same_span(f.event, g.event));
		CHECK(f.ev_known && g.ev_known);
		for (int k = 0; k < 6; k++)
			CHECK(same_span((&f.ev.type)[k], (&g.ev.type)[k]));
		CHECK_SPAN(f.ev.delivery_attempt, "1");
		CHECK_SPAN(f.ev.id, "\"" UUID "\"");
	}
	CHECK_SPAN(f.ev.data, "\"\\u00e9\"");
	for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
		snprintf(pub, sizeof(pub),
			 "{\"type\":\"publish\",\"topic\":\"t\",\"event\":%s}",
			 plain[i]);
		REQUIRE(build_indexed(pub, &rec, &ix) == 0);
		CHECK_EQ_INT(rec.p[4], 0);
		CHECK_EQ_INT(usps__rec_open(rec.p, rec.len, &line, &len, &f),
			     0);
		CHECK_EQ_INT(line - rec.p, USPS__REC_PLAIN);
		CHECK_EQ_INT(usps__wire_parse(line, len, &g), 0);
	}
	usps__buf_free(&rec);
}

/* A line over 64 KiB takes u32 spans; a group is indexed too. */
TEST(index_wide_and_group)
{
	struct usps__buf big = { 0 }, rec = { 0 };
	struct usps__frame f, g;
	struct usps__ix ix;
	const char *line;
	size_t len;

	REQUIRE(usps__buf_put(&big,
			      "{\"type\":\"publish\",\"topic\":\"t\","
			      "\"event\":{\"data\":\"",
			      47) == 0);
	for (int i = 0; i < 70000; i++)
		REQUIRE(usps__buf_put(&big, "x", 1) == 0);
	REQUIRE(usps__buf_put(&big, "\",\"type\":\"w\"}}", 15) == 0);
	REQUIRE(build_indexed(cstr(&big), &rec, &ix) == 1);
	CHECK_EQ_INT(rec.p[4], 2);
	REQUIRE(usps__rec_open(rec.p, rec.len, &line, &len, &f) == 1);
	CHECK_EQ_INT(line - rec.p, USPS__REC_WIDE);
	CHECK_EQ_INT(f.ev.data.n, 70002);
	CHECK_SPAN(f.ev.type, "\"w\"");

	/* The group member the broker appends, by hand here. */
	REQUIRE(build_indexed("{\"type\":\"publish\",\"topic\":\"t\","
			      "\"event\":{\"type\":\"g\"}}",
			      &rec, &ix) == 1);
	{
		struct usps__buf l = { 0 };
		uint8_t head[USPS__REC_WIDE];
		size_t hlen;

		REQUIRE(usps__buf_put(&l, rec.p + USPS__REC_NARROW,
				      rec.len - USPS__REC_NARROW - 2) == 0);
		ix.off[USPS__IX_GROUP] = (uint32_t)(l.len + 9);
		ix.len[USPS__IX_GROUP] = 4;
		ix.flags |= USPS__IXF_GROUP;
		REQUIRE(usps__wire_put_group_tail(
				&l, (struct usps__span){ "\"g1\"", 4 }) == 0);
		hlen = usps__rec_head(head, l.len - 1, &ix);
		rec.len = 0;
		REQUIRE(usps__buf_put(&rec, head, hlen) == 0 &&
			usps__buf_put(&rec, l.p, l.len) == 0);
		usps__buf_free(&l);
	}
	REQUIRE(usps__rec_open(rec.p, rec.len, &line, &len, &f) == 1);
	REQUIRE(usps__wire_parse(line, len, &g) == 0);
	CHECK(f.group_kind == USPS__OPT_STRING && same_span(f.group, g.group));
	CHECK_SPAN(f.group, "\"g1\"");
	usps__buf_free(&big);
	usps__buf_free(&rec);
}

/* Whatever a record claims, nothing outside it is pointed at. */
TEST(record_open_rejects)
{
	struct usps__buf rec = { 0 };
	struct usps__frame f;
	struct usps__ix ix;
	const char *line;
	size_t len;
	char *bad;

	REQUIRE(build_indexed("{\"type\":\"publish\",\"topic\":\"t\","
			      "\"event\":{\"type\":\"x\",\"data\":1}}",
			      &rec, &ix) == 1);
	REQUIRE(usps__rec_open(rec.p, rec.len, &line, &len, &f) == 1);
	bad = malloc(rec.len);
	REQUIRE(bad);
#define TRY(what, want)                                                     \
	do {                                                                \
		memcpy(bad, rec.p, rec.len);                                \
		what;                                                       \
		CHECK_EQ_INT(usps__rec_open(bad, rec.len, &line, &len, &f), \
			     want);                                         \
	} while (0)
	TRY((void)0, 1);
	TRY(bad[0]++, -EPROTO);		      /* size field */
	TRY(bad[4] = 3, -EPROTO);	      /* kind */
	TRY(bad[4] = 2, -EPROTO);	      /* kind without its hlen */
	TRY(bad[6] = 8, -EPROTO);	      /* hlen */
	TRY(bad[rec.len - 1] = ' ', -EPROTO); /* no '\n' */
	TRY(bad[8] = (char)0xff, -EPROTO);    /* topic offset out */
	TRY(bad[11] = 1, -EPROTO);	      /* topic length out */
	TRY(bad[5] = 0, 0);		      /* not indexed: parse it */
	TRY(bad[5] |= USPS__IXF_GROUP, 0);    /* flag without a span */
	TRY((bad[16] = 0, bad[17] = 0, bad[18] = 0, bad[19] = 0), 0);
#undef TRY
	CHECK_EQ_INT(usps__rec_open(rec.p, 8, &line, &len, &f), -EPROTO);
	CHECK_EQ_INT(usps__rec_open(rec.p, rec.len - 1, &line, &len, &f),
		     -EPROTO);
	free(bad);
	usps__buf_free(&rec);
}

/*
 * A publish as a record (usps_publish()'s outbox): its line is the one
 * usps__wire_put_publish() writes, and its index what a parse of that line
 * finds; narrow, wide past 64 KiB, plain when members are spliced in; and
 * the broker's head built from it is indexed as from the parse.
 */
TEST(publish_record_matches_parse)
{
	static const struct {
		const char *topic, *type, *run_id, *data, *extra;
	} cases[] = {
		{ "t", "x", NULL, NULL, NULL },
		{ "a\"b\n", "t\\y", "r\t1", "[1,{\"k\":\"\\n\"}]", NULL },
		{ "\xc3\xa9t\xc3\xa9", "", "", "\"s\"", "{}" },
		{ "t", "x", NULL, "1", "{\"id\":\"mine\",\"n\":2}" },
	};
	struct usps__buf line = { 0 }, rec = { 0 }, big = { 0 };
	struct usps__frame f, g;
	const char *l;
	size_t n;

	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		struct usps__span data = { 0 }, extra = { 0 };
		bool plain = cases[c].extra && strlen(cases[c].extra) > 2;

		if (cases[c].data)
			data = js(cases[c].data);
		if (cases[c].extra)
			extra = js(cases[c].extra);
		line.len = rec.len = 0;
		REQUIRE(usps__wire_put_publish(
				&line, cases[c].topic, strlen(cases[c].topic),
				cases[c].type, strlen(cases[c].type),
				cases[c].run_id, data, extra) == 0);
		REQUIRE(usps__rec_put_publish(
				&rec, cases[c].topic, strlen(cases[c].topic),
				cases[c].type, strlen(cases[c].type),
				cases[c].run_id, data, extra) == 0);
		CHECK_EQ_INT(usps__rec_open(rec.p, rec.len, &l, &n, &f),
			     plain ? 0 : 1);
		CHECK(n == line.len - 1 && !memcmp(l, line.p, n));
		REQUIRE(usps__wire_parse(l, n, &g) == 0);
		CHECK(g.type == USPS__F_PUBLISH);
		if (plain)
			continue;
		CHECK(f.type == USPS__F_PUBLISH && f.ev_known &&
		      !f.local_only && f.group_kind == USPS__OPT_ABSENT);
		CHECK(same_span(f.topic, g.topic));
		CHECK(same_span(f.event, g.event));
		for (int i = 0; i < 6; i++)
			CHECK(same_span((&f.ev.type)[i], (&g.ev.type)[i]));
	}

	/* Past 64 KiB: the wide header, and the same spans. */
	REQUIRE(usps__buf_put(&big, "\"", 1) == 0);
	for (int i = 0; i < 70000; i++)
		REQUIRE(usps__buf_put(&big, "y", 1) == 0);
	REQUIRE(usps__buf_put(&big, "\"", 1) == 0);
	rec.len = 0;
	REQUIRE(usps__rec_put_publish(&rec, "t", 1, "x", 1, "r",
				      (struct usps__span){ big.p, big.len },
				      (struct usps__span){ 0 }) == 0);
	CHECK_EQ_INT((unsigned char)rec.p[4], 2);
	REQUIRE(usps__rec_open(rec.p, rec.len, &l, &n, &f) == 1);
	REQUIRE(usps__wire_parse(l, n, &g) == 0);
	CHECK(same_span(f.event, g.event) && same_span(f.ev.data, g.ev.data));
	CHECK(f.ev.data.n == big.len);

	/* Records in a row, each as long as its size field says. */
	rec.len = 0;
	REQUIRE(usps__rec_put_publish(&rec, "t", 1, "a", 1, NULL,
				      (struct usps__span){ 0 },
				      (struct usps__span){ 0 }) == 0);
	size_t first = rec.len, at;

	CHECK_EQ_INT(usps__rec_begin(&rec, &at), 0);
	CHECK_EQ_INT(usps__rec_end(&rec, at,
				   usps__wire_put_membership(&rec, false, "t",
							     1, NULL, 0)),
		     0);
	CHECK_EQ_INT(usps__rec_open(rec.p, first, &l, &n, &f), 1);
	CHECK_EQ_INT(usps__rec_open(rec.p + first, rec.len - first, &l, &n, &f),
		     0);
	CHECK(n == 32 &&
	      !memcmp(l, "{\"type\":\"subscribe\",\"topic\":\"t\"}", n));
	/* A failed build leaves nothing behind. */
	CHECK_EQ_INT(usps__rec_begin(&rec, &at), 0);
	CHECK_EQ_INT(usps__rec_end(&rec, at, -ENOMEM), -ENOMEM);
	CHECK_EQ_INT(usps__rec_end(&rec, rec.len, 0), -EINVAL);
	CHECK(rec.len == at);
	usps__buf_free(&line);
	usps__buf_free(&rec);
	usps__buf_free(&big);
}

int main(void)
{
	RUN(validate_accepts);
	RUN(validate_rejects);
	RUN(validate_numbers);
	RUN(validate_utf8_in_strings);
	RUN(utf8_against_reference);
	RUN(validate_depth);
	RUN(validate_whitespace_and_kinds);
	RUN(validate_mutations);
	RUN(parse_client_frames);
	RUN(parse_broker_frames);
	RUN(parse_escaped_and_duplicate_keys);
	RUN(parse_spans_with_whitespace);
	RUN(parse_crlf_and_ignored_lines);
	RUN(parse_group_and_local_only_kinds);
	RUN(event_fields);
	RUN(absent_spans);
	RUN(string_decode);
	RUN(string_eq);
	RUN(put_string);
	RUN(put_string_round_trip);
	RUN(buf_growth);
	RUN(iso_format);
	RUN(iso_parse);
	RUN(iso_round_trip);
	RUN(created_at);
	RUN(uuid4);
	RUN(put_membership);
	RUN(put_ack);
	RUN(put_publish);
	RUN(event_head_spec);
	RUN(frame_head_equals_event_head);
	RUN(event_head_replace_in_place);
	RUN(event_head_odd_events);
	RUN(event_head_output_parses);
	RUN(index_matches_parse);
	RUN(index_wide_and_group);
	RUN(record_open_rejects);
	RUN(publish_record_matches_parse);
	return harness_end();
}
