/* SPDX-License-Identifier: MIT */
/*
 * Mastra UnixSocketPubSub frames: the only JSON code in usps.
 *
 * Inbound lines are validated (RFC 8259, strict UTF-8, bounded nesting) in a
 * single iterative pass that also records the spans of the top-level members
 * a broker or client routes on. Nothing is decoded or copied: later code
 * works on spans into the line. Outbound frames are written straight into
 * growable buffers, byte for byte as a Node peer writes them
 * (JSON.stringify key order and escaping), so Node and C peers can be mixed
 * freely and compared in tests.
 *
 * Also here: ISO-8601 time stamps in the exact toISOString() format (own
 * calendar arithmetic, no dependence on TZ or time_t) and UUID v4s from a
 * pool of RAND_bytes() bytes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "frame.h"
#include "wire.h"

/* ---- growable buffers ---------------------------------------------- */

int usps__buf_reserve(struct usps__buf *b, size_t extra)
{
	size_t need, cap;
	char *p;

	if (extra <= b->cap - b->len)
		return 0;
	if (extra > SIZE_MAX - b->len)
		return -ENOMEM;
	need = b->len + extra;
	cap = b->cap ? b->cap : 256;
	while (cap < need) {
		if (cap > SIZE_MAX / 2) {
			cap = need;
			break;
		}
		cap *= 2;
	}
	p = realloc(b->p, cap);
	if (!p)
		return -ENOMEM;
	b->p = p;
	b->cap = cap;
	return 0;
}

static inline int put(struct usps__buf *b, const void *p, size_t n)
{
	if (n > b->cap - b->len && usps__buf_reserve(b, n) < 0)
		return -ENOMEM;
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
	return 0;
}

int usps__buf_put(struct usps__buf *b, const void *p, size_t n)
{
	return put(b, p, n);
}

void usps__buf_free(struct usps__buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = 0;
	b->cap = 0;
}

/* Append a string literal. */
#define PUT_LIT(b, s) put((b), (s), sizeof(s) - 1)

static inline int put_span(struct usps__buf *b, struct usps__span s)
{
	return put(b, s.p, s.n);
}

/* ---- character helpers --------------------------------------------- */

static inline bool is_ws(uint8_t c)
{
	return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

static inline const uint8_t *skip_ws(const uint8_t *s, const uint8_t *e)
{
	/* Frames from Node have no whitespace: test the common case once. */
	while (s < e && *s <= ' ' && is_ws(*s))
		s++;
	return s;
}

static inline bool is_digit(uint8_t c)
{
	return (unsigned)(c - '0') < 10;
}

static inline int hexdig(uint8_t c)
{
	if (is_digit(c))
		return c - '0';
	c |= 0x20;
	if ((unsigned)(c - 'a') < 6)
		return c - 'a' + 10;
	return -1;
}

/* Four hex digits at @s (bounds checked by the caller), or -1. */
static inline int32_t hex4(const uint8_t *s)
{
	int a = hexdig(s[0]), b = hexdig(s[1]), c = hexdig(s[2]);
	int d = hexdig(s[3]);

	if ((a | b | c | d) < 0)
		return -1;
	return (int32_t)(a << 12 | b << 8 | c << 4 | d);
}

static inline bool is_surrogate(uint32_t u)
{
	return u - 0xd800u < 0x800u;
}

static size_t utf8_encode(uint8_t *o, uint32_t cp)
{
	if (cp < 0x80) {
		o[0] = (uint8_t)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (uint8_t)(0xc0 | cp >> 6);
		o[1] = (uint8_t)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (uint8_t)(0xe0 | cp >> 12);
		o[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
		o[2] = (uint8_t)(0x80 | (cp & 0x3f));
		return 3;
	}
	o[0] = (uint8_t)(0xf0 | cp >> 18);
	o[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3f));
	o[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
	o[3] = (uint8_t)(0x80 | (cp & 0x3f));
	return 4;
}

/*
 * One well-formed UTF-8 sequence whose lead byte (>= 0x80) is at @s, per
 * Unicode table 3-7: no overlongs, no surrogates, nothing past U+10FFFF.
 * Returns the byte after it, or NULL.
 */
static inline const uint8_t *utf8_seq(const uint8_t *s, const uint8_t *e)
{
	uint8_t c = s[0];
	size_t left = (size_t)(e - s);
	uint8_t lo = 0x80, hi = 0xbf;

	if (c < 0xc2)
		return NULL;
	if (c < 0xe0) {
		if (left < 2 || (uint8_t)(s[1] - 0x80) > 0x3f)
			return NULL;
		return s + 2;
	}
	if (c < 0xf0) {
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
		if (left < 3 || s[1] < lo || s[1] > hi ||
		    (uint8_t)(s[2] - 0x80) > 0x3f)
			return NULL;
		return s + 3;
	}
	if (c > 0xf4)
		return NULL;
	if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	if (left < 4 || s[1] < lo || s[1] > hi ||
	    (uint8_t)(s[2] - 0x80) > 0x3f || (uint8_t)(s[3] - 0x80) > 0x3f)
		return NULL;
	return s + 4;
}

/*
 * SWAR: 8 bytes at a time in a 64-bit word. has_zero() marks the zero bytes
 * in their high bits; a borrow may also mark bytes above a real zero, never
 * below one, so the lowest mark is exact.
 */
#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

static inline uint64_t load8(const uint8_t *s)
{
	uint64_t v;

	memcpy(&v, s, sizeof(v));
	return v;
}

static inline uint64_t has_zero(uint64_t v)
{
	return (v - ONES) & ~v & HIGHS;
}

/*
 * The bytes a string scan stops at (", \, < 0x20, >= 0x80), as high bits.
 * Carries can only mark bytes above a real hit, so the lowest bit is exact.
 */
static inline uint64_t special8(uint64_t v)
{
	uint64_t m = (v - ONES * 0x20) | v;

	m |= has_zero(v ^ (ONES * '"')) | has_zero(v ^ (ONES * '\\'));
	return m & HIGHS;
}

#if defined(__GNUC__) && defined(__BYTE_ORDER__) && \
	__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define FIRST_HIT(m) ((size_t)__builtin_ctzll(m) >> 3)
#endif

#ifdef __GNUC__
#define HOT_INLINE inline __attribute__((always_inline))
#else
#define HOT_INLINE inline
#endif

#ifdef __SSE2__
/*
 * The bytes of s[0..16) a string scan stops at, one bit each: '"' and
 * '\\', and with @ctl also those < 0x20 or >= 0x80 (one signed compare
 * with 0x20 catches both).
 */
static HOT_INLINE unsigned stops16(const uint8_t *s, bool ctl)
{
	__m128i v = _mm_loadu_si128((const __m128i *)s);
	__m128i m = _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')),
				 _mm_cmpeq_epi8(v, _mm_set1_epi8('\\')));

	if (ctl)
		m = _mm_or_si128(m, _mm_cmplt_epi8(v, _mm_set1_epi8(0x20)));
	return (unsigned)_mm_movemask_epi8(m);
}
#endif

bool usps__utf8_valid(const char *p, size_t n)
{
	const uint8_t *s, *e;

	/* Absent spans are (NULL, 0): no arithmetic on NULL. */
	if (!n)
		return true;
	s = (const uint8_t *)p;
	e = s + n;
	while (s < e) {
		while (e - s >= 8 && !(load8(s) & HIGHS))
			s += 8;
		while (s < e && *s < 0x80)
			s++;
		if (s == e)
			break;
		s = utf8_seq(s, e);
		if (!s)
			return false;
	}
	return true;
}

/* ---- validation ---------------------------------------------------- */

static inline bool str_plain(uint8_t c)
{
	return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
}

/*
 * Scan the string literal whose opening quote is at @s. Sets *esc if it has
 * a backslash. Returns the byte after the closing quote, or NULL.
 */
static HOT_INLINE const uint8_t *scan_string(const uint8_t *s, const uint8_t *e,
					     bool *esc)
{
	uint64_t m;

	s++;
	for (;;) {
#ifdef __SSE2__
		/* Plain ASCII 16 bytes at a time. */
		while (e - s >= 16) {
			unsigned hit = stops16(s, true);

			if (hit) {
				s += __builtin_ctz(hit);
				goto stop;
			}
			s += 16;
		}
#endif
		/* Plain ASCII 8 bytes at a time, straight to the next stop. */
		while (e - s >= 8) {
			m = special8(load8(s));
			if (m) {
#ifdef FIRST_HIT
				s += FIRST_HIT(m);
#else
				while (str_plain(*s))
					s++;
#endif
				goto stop;
			}
			s += 8;
		}
		while (s < e && str_plain(*s))
			s++;
		if (s == e)
			return NULL;
stop:
		if (*s == '"')
			return s + 1;
		if (*s == '\\') {
			*esc = true;
			if (e - s < 2)
				return NULL;
			switch (s[1]) {
			case '"':
			case '\\':
			case '/':
			case 'b':
			case 'f':
			case 'n':
			case 'r':
			case 't':
				s += 2;
				break;
			case 'u':
				if (e - s < 6 || hex4(s + 2) < 0)
					return NULL;
				s += 6;
				break;
			default:
				return NULL;
			}
			continue;
		}
		if (*s < 0x20)
			return NULL;
		s = utf8_seq(s, e);
		if (!s)
			return NULL;
	}
}

/* Scan a number per the RFC 8259 grammar; NULL if malformed. */
static inline const uint8_t *scan_number(const uint8_t *s, const uint8_t *e)
{
	if (*s == '-')
		s++;
	if (s == e)
		return NULL;
	if (*s == '0') {
		s++;
	} else if (is_digit(*s)) {
		while (++s < e && is_digit(*s))
			;
	} else {
		return NULL;
	}
	if (s < e && *s == '.') {
		if (++s == e || !is_digit(*s))
			return NULL;
		while (++s < e && is_digit(*s))
			;
	}
	if (s < e && (*s | 0x20) == 'e') {
		if (++s < e && (*s == '+' || *s == '-'))
			s++;
		if (s == e || !is_digit(*s))
			return NULL;
		while (++s < e && is_digit(*s))
			;
	}
	return s;
}

static inline const uint8_t *scan_lit(const uint8_t *s, const uint8_t *e,
				      const char *lit, size_t n)
{
	if ((size_t)(e - s) < n || memcmp(s, lit, n) != 0)
		return NULL;
	return s + n;
}

/* The top-level members usps__wire_parse() records; slot 0 is a sink. */
enum {
	K_NONE,
	K_TYPE,
	K_TOPIC,
	K_GROUP,
	K_EVENT,
	K_LOCAL,
	K_COUNT,
};

struct name {
	const char *s;
	size_t n;
};

/* clang-format off */
static const struct name frame_keys[] = {
	{ "type", 4 },
	{ "topic", 5 },
	{ "group", 5 },
	{ "event", 5 },
	{ "localOnly", 9 },
};
/* clang-format on */

/*
 * Index + 1 of the name in @t that the string literal [q, q+n) equals, or 0.
 * @esc: the literal may contain escapes.
 */
static int lookup(const uint8_t *q, size_t n, bool esc, const struct name *t,
		  size_t count)
{
	struct usps__span s = { (const char *)q, n };

	if (!esc) {
		for (size_t i = 0; i < count; i++)
			if (t[i].n == n - 2 &&
			    memcmp(q + 1, t[i].s, n - 2) == 0)
				return (int)i + 1;
		return 0;
	}
	for (size_t i = 0; i < count; i++)
		if (usps__json_string_eq(s, t[i].s, t[i].n))
			return (int)i + 1;
	return 0;
}

/* clang-format off */
static const struct name event_keys[] = {
	{ "type", 4 },
	{ "id", 2 },
	{ "runId", 5 },
	{ "data", 4 },
	{ "createdAt", 9 },
	{ "deliveryAttempt", 15 },
};
/* clang-format on */

/* The member of @f that event_keys[i - 1] names. */
static struct usps__span *event_field(struct usps__event_fields *f, int i)
{
	static const size_t off[] = {
		offsetof(struct usps__event_fields, type),
		offsetof(struct usps__event_fields, id),
		offsetof(struct usps__event_fields, run_id),
		offsetof(struct usps__event_fields, data),
		offsetof(struct usps__event_fields, created_at),
		offsetof(struct usps__event_fields, delivery_attempt),
	};

	return (struct usps__span *)((char *)f + off[i - 1]);
}

static inline int frame_key(const uint8_t *q, size_t n, bool esc)
{
	if (esc)
		return lookup(q, n, true, frame_keys, K_COUNT - 1);
	switch (n) {
	case 6:
		return memcmp(q + 1, "type", 4) ? K_NONE : K_TYPE;
	case 7:
		if (!memcmp(q + 1, "topic", 5))
			return K_TOPIC;
		if (!memcmp(q + 1, "event", 5))
			return K_EVENT;
		if (!memcmp(q + 1, "group", 5))
			return K_GROUP;
		return K_NONE;
	case 11:
		return memcmp(q + 1, "localOnly", 9) ? K_NONE : K_LOCAL;
	default:
		return K_NONE;
	}
}

/* event_keys index + 1 of the key literal [q, q+n), or 0; the unescaped
 * case without a call per candidate. */
static inline int event_key(const uint8_t *q, size_t n, bool esc)
{
	if (esc)
		return lookup(q, n, true, event_keys, 6);
	switch (n) {
	case 4:
		return memcmp(q + 1, "id", 2) ? 0 : 2;
	case 6:
		if (!memcmp(q + 1, "type", 4))
			return 1;
		return memcmp(q + 1, "data", 4) ? 0 : 4;
	case 7:
		return memcmp(q + 1, "runId", 5) ? 0 : 3;
	case 11:
		return memcmp(q + 1, "createdAt", 9) ? 0 : 5;
	case 17:
		return memcmp(q + 1, "deliveryAttempt", 15) ? 0 : 6;
	default:
		return 0;
	}
}

/*
 * The validator. One pass, no recursion: the kind of each open container is
 * one bit of @stk. The labels are the states of the grammar (a value is
 * expected, a member key is expected, a value just ended). While inside the
 * top-level object, each member's value span is stored in top[key index]
 * (top[0] catches the members nobody asked for), so a later member with the
 * same key overwrites an earlier one, as JSON.parse does. With @ev, the
 * members of an object-valued top-level "event" are recorded likewise in
 * ev[index in event_keys + 1], so that a client need not walk it again.
 */
static int json_scan(const char *p, size_t n, struct usps__span *top,
		     struct usps__span *ev)
{
	const uint8_t *s, *e, *t, *vstart, *vstart2 = NULL;
	uint8_t stk[(USPS__JSON_MAX_DEPTH + 7) / 8] = { 0 };
	unsigned depth = 0, d;
	int key = K_NONE, key2 = 0;
	bool esc, in_ev = false;

	if (!n)
		return -EINVAL;
	s = (const uint8_t *)p;
	e = s + n;
	vstart = s;
	s = skip_ws(s, e);
value:
	if (s == e)
		return -EINVAL;
	switch (*s) {
	case '{':
		if (depth == USPS__JSON_MAX_DEPTH)
			return -EINVAL;
		if (depth == 1 && key == K_EVENT && ev) {
			/* A later "event" replaces an earlier one whole. */
			in_ev = true;
			memset(ev, 0, sizeof(*ev) * 7);
		}
		stk[depth >> 3] =
			(uint8_t)(stk[depth >> 3] | 1u << (depth & 7));
		depth++;
		s = skip_ws(s + 1, e);
		if (s < e && *s == '}') {
			s++;
			depth--;
			goto after;
		}
		goto member;
	case '[':
		if (depth == USPS__JSON_MAX_DEPTH)
			return -EINVAL;
		stk[depth >> 3] =
			(uint8_t)(stk[depth >> 3] & ~(1u << (depth & 7)));
		depth++;
		s = skip_ws(s + 1, e);
		if (s < e && *s == ']') {
			s++;
			depth--;
			goto after;
		}
		goto value;
	case '"':
		esc = false;
		s = scan_string(s, e, &esc);
		break;
	case 't':
		s = scan_lit(s, e, "true", 4);
		break;
	case 'f':
		s = scan_lit(s, e, "false", 5);
		break;
	case 'n':
		s = scan_lit(s, e, "null", 4);
		break;
	default:
		s = scan_number(s, e);
		break;
	}
	if (!s)
		return -EINVAL;
after:
	if (depth == 1) {
		top[key] = (struct usps__span){ (const char *)vstart,
						(size_t)(s - vstart) };
		in_ev = false;
	} else if (depth == 2 && in_ev) {
		ev[key2] = (struct usps__span){ (const char *)vstart2,
						(size_t)(s - vstart2) };
	} else if (depth == 0)
		return skip_ws(s, e) == e ? 0 : -EINVAL;
	s = skip_ws(s, e);
	if (s == e)
		return -EINVAL;
	d = depth - 1;
	if (stk[d >> 3] >> (d & 7) & 1) {
		if (*s == '}') {
			s++;
			depth--;
			goto after;
		}
		if (*s != ',')
			return -EINVAL;
		s = skip_ws(s + 1, e);
		goto member;
	}
	if (*s == ']') {
		s++;
		depth--;
		goto after;
	}
	if (*s != ',')
		return -EINVAL;
	s = skip_ws(s + 1, e);
	goto value;
member:
	if (s == e || *s != '"')
		return -EINVAL;
	esc = false;
	t = scan_string(s, e, &esc);
	if (!t)
		return -EINVAL;
	if (depth == 1)
		key = frame_key(s, (size_t)(t - s), esc);
	else if (depth == 2 && in_ev)
		key2 = event_key(s, (size_t)(t - s), esc);
	s = skip_ws(t, e);
	if (s == e || *s != ':')
		return -EINVAL;
	s = skip_ws(s + 1, e);
	if (depth == 1)
		vstart = s;
	else if (depth == 2 && in_ev)
		vstart2 = s;
	goto value;
}

int usps__json_validate(const char *p, size_t n)
{
	struct usps__span top[K_COUNT];

	return json_scan(p, n, top, NULL);
}

int usps__json_is_object(const char *p, size_t n)
{
	const uint8_t *s;

	if (!n)
		return -EINVAL;
	s = skip_ws((const uint8_t *)p, (const uint8_t *)p + n);
	if (s == (const uint8_t *)p + n || *s != '{')
		return -EINVAL;
	return usps__json_validate(p, n);
}

enum usps__json_kind usps__json_kind(struct usps__span v)
{
	const uint8_t *s;

	if (!v.n)
		return USPS__J_ABSENT;
	s = skip_ws((const uint8_t *)v.p, (const uint8_t *)v.p + v.n);
	if (s == (const uint8_t *)v.p + v.n)
		return USPS__J_ABSENT;
	switch (*s) {
	case 'n':
		return USPS__J_NULL;
	case 't':
	case 'f':
		return USPS__J_BOOL;
	case '"':
		return USPS__J_STRING;
	case '[':
		return USPS__J_ARRAY;
	case '{':
		return USPS__J_OBJECT;
	default:
		return *s == '-' || is_digit(*s) ? USPS__J_NUMBER
						 : USPS__J_ABSENT;
	}
}

/* ---- walking already validated JSON -------------------------------- */

/* Past the string literal at @s (validated): the byte after its quote. */
static const uint8_t *skip_string(const uint8_t *s, const uint8_t *e)
{
	uint64_t v, m;

	s++;
	for (;;) {
#ifdef __SSE2__
		/* To the 16 bytes with the next stop; the loops below find
		 * it within them. */
		while (e - s >= 16 && !stops16(s, false))
			s += 16;
#endif
		while (e - s >= 8) {
			v = load8(s);
			m = has_zero(v ^ (ONES * '"')) |
			    has_zero(v ^ (ONES * '\\'));
			if (m) {
#ifdef FIRST_HIT
				s += FIRST_HIT(m);
#endif
				break;
			}
			s += 8;
		}
		while (s < e && *s != '"' && *s != '\\')
			s++;
		if (s >= e)
			return e;
		if (*s == '"')
			return s + 1;
		/* \uXXXX: the hex digits are ordinary bytes. */
		s += 2;
		if (s > e)
			return e;
	}
}

/* Past the value at @s (validated JSON). */
static const uint8_t *skip_value(const uint8_t *s, const uint8_t *e)
{
	size_t depth = 0;

	if (*s == '"')
		return skip_string(s, e);
	if (*s != '{' && *s != '[') {
		while (s < e && *s != ',' && *s != '}' && *s != ']' &&
		       !is_ws(*s))
			s++;
		return s;
	}
	while (s < e) {
		uint8_t c = *s;

		if (c == '"') {
			s = skip_string(s, e);
			continue;
		}
		if (c == '{' || c == '[') {
			depth++;
		} else if (c == '}' || c == ']') {
			if (--depth == 0)
				return s + 1;
		}
		s++;
	}
	return e;
}

/* Iterates over the members of an object or the elements of an array. */
struct walk {
	const uint8_t *s, *e;
	bool obj;
	bool started;
};

static int walk_init(struct walk *w, struct usps__span v)
{
	const uint8_t *s;

	if (!v.n)
		return -EINVAL;
	s = skip_ws((const uint8_t *)v.p, (const uint8_t *)v.p + v.n);
	w->e = (const uint8_t *)v.p + v.n;
	if (s == w->e || (*s != '{' && *s != '['))
		return -EINVAL;
	w->obj = *s == '{';
	w->s = s + 1;
	w->started = false;
	return 0;
}

/* Next member (key is NULL-spanned for arrays). false at the end. */
static bool walk_next(struct walk *w, struct usps__span *key,
		      struct usps__span *val)
{
	const uint8_t *s = skip_ws(w->s, w->e), *e = w->e, *t;

	if (s == e || *s == '}' || *s == ']')
		return false;
	if (w->started) {
		if (*s != ',')
			return false;
		s = skip_ws(s + 1, e);
	}
	w->started = true;
	*key = (struct usps__span){ NULL, 0 };
	if (w->obj) {
		if (s == e || *s != '"')
			return false;
		t = skip_string(s, e);
		*key = (struct usps__span){ (const char *)s, (size_t)(t - s) };
		s = skip_ws(t, e);
		if (s == e || *s != ':')
			return false;
		s = skip_ws(s + 1, e);
	}
	if (s == e)
		return false;
	t = skip_value(s, e);
	*val = (struct usps__span){ (const char *)s, (size_t)(t - s) };
	w->s = t;
	return true;
}

static int key_lookup(struct usps__span k, const struct name *t, size_t count)
{
	if (k.n < 2)
		return 0;
	return lookup((const uint8_t *)k.p, k.n,
		      memchr(k.p + 1, '\\', k.n - 2) != NULL, t, count);
}

static bool span_is_true(struct usps__span s)
{
	return s.n == 4 && memcmp(s.p, "true", 4) == 0;
}

/*
 * Is @v a codec envelope {"__m_codec__":"<codec>",...}? The last
 * "__m_codec__" member counts; extra members are allowed (§2.6). Stores the
 * last "v" member in *ret_v if asked.
 */
static bool is_envelope(struct usps__span v, const char *codec, size_t n,
			struct usps__span *ret_v)
{
	static const struct name keys[] = { { "__m_codec__", 11 }, { "v", 1 } };
	struct usps__span k, x, c = { NULL, 0 }, vv = { NULL, 0 };
	struct walk w;

	if (walk_init(&w, v) < 0 || !w.obj)
		return false;
	while (walk_next(&w, &k, &x)) {
		switch (key_lookup(k, keys, 2)) {
		case 1:
			c = x;
			break;
		case 2:
			vv = x;
			break;
		default:
			break;
		}
	}
	if (ret_v)
		*ret_v = vv;
	return usps__json_string_eq(c, codec, n);
}

/* ---- strings ------------------------------------------------------- */

/*
 * Decode the escape at @r (r[0] == '\\') into one UTF-16 code unit (or
 * ASCII byte). Returns the byte after it, or NULL if malformed.
 */
static const uint8_t *unescape(const uint8_t *r, const uint8_t *e,
			       uint32_t *ret_u)
{
	int32_t u;

	if (e - r < 2)
		return NULL;
	switch (r[1]) {
	case '"':
	case '\\':
	case '/':
		*ret_u = r[1];
		return r + 2;
	case 'b':
		*ret_u = '\b';
		return r + 2;
	case 'f':
		*ret_u = '\f';
		return r + 2;
	case 'n':
		*ret_u = '\n';
		return r + 2;
	case 'r':
		*ret_u = '\r';
		return r + 2;
	case 't':
		*ret_u = '\t';
		return r + 2;
	case 'u':
		if (e - r < 6)
			return NULL;
		u = hex4(r + 2);
		if (u < 0)
			return NULL;
		*ret_u = (uint32_t)u;
		return r + 6;
	default:
		return NULL;
	}
}

/*
 * Decode the escape at @r to UTF-8 at @o, pairing surrogate escapes and
 * turning lone ones into U+FFFD. Returns the byte after it (NULL if
 * malformed) and the number of bytes written in *ret_k.
 */
static const uint8_t *unescape_utf8(const uint8_t *r, const uint8_t *e,
				    uint8_t *o, size_t *ret_k)
{
	uint32_t u, lo;
	const uint8_t *t;

	r = unescape(r, e, &u);
	if (!r)
		return NULL;
	if (u - 0xd800u < 0x400u && e - r >= 6 && r[0] == '\\' && r[1] == 'u' &&
	    (t = unescape(r, e, &lo)) && lo - 0xdc00u < 0x400u) {
		u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
		r = t;
	} else if (is_surrogate(u)) {
		u = 0xfffd;
	}
	*ret_k = utf8_encode(o, u);
	return r;
}

/* The first '\\' in [r, e), or NULL. Inline: most strings here are short
 * (topics, types, UUIDs), where a call to memchr() costs more than the
 * search. */
static HOT_INLINE const uint8_t *find_backslash(const uint8_t *r,
						const uint8_t *e)
{
#ifdef __SSE2__
	while (e - r >= 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)r);
		unsigned m = (unsigned)_mm_movemask_epi8(
			_mm_cmpeq_epi8(v, _mm_set1_epi8('\\')));

		if (m)
			return r + __builtin_ctz(m);
		r += 16;
	}
#endif
	while (r < e && *r != '\\')
		r++;
	return r < e ? r : NULL;
}

int usps__json_string_decode(struct usps__span s, char *out, size_t *ret_len)
{
	const uint8_t *r, *e, *bs;
	uint8_t *o = (uint8_t *)out;
	size_t k;

	if (s.n < 2 || s.p[0] != '"' || s.p[s.n - 1] != '"')
		return -EINVAL;
	r = (const uint8_t *)s.p + 1;
	e = (const uint8_t *)s.p + s.n - 1;
	while (r < e) {
		bs = find_backslash(r, e);
		if (!bs) {
			memcpy(o, r, (size_t)(e - r));
			o += e - r;
			break;
		}
		memcpy(o, r, (size_t)(bs - r));
		o += bs - r;
		r = unescape_utf8(bs, e, o, &k);
		if (!r)
			return -EINVAL;
		o += k;
	}
	*ret_len = (size_t)(o - (uint8_t *)out);
	return 0;
}

int usps__json_string_view(struct usps__span s, const char **ret_p,
			   size_t *ret_len)
{
	const uint8_t *r, *e;

	if (s.n < 2 || s.p[0] != '"' || s.p[s.n - 1] != '"')
		return -EINVAL;
	r = (const uint8_t *)s.p + 1;
	e = (const uint8_t *)s.p + s.n - 1;
	if (find_backslash(r, e))
		return 0;
	*ret_p = (const char *)r;
	*ret_len = s.n - 2;
	return 1;
}

bool usps__json_string_eq(struct usps__span s, const char *lit, size_t n)
{
	const uint8_t *r, *e;
	uint8_t tmp[4];
	size_t in, off = 0, k;

	if (s.n < 2 || s.p[0] != '"' || s.p[s.n - 1] != '"')
		return false;
	in = s.n - 2;
	/*
	 * An escape always decodes shorter than it is written, so only a
	 * longer literal with a backslash can still match.
	 */
	if (in == n && memcmp(s.p + 1, lit, n) == 0)
		return !memchr(lit, '\\', n);
	if (in <= n || !memchr(s.p + 1, '\\', in))
		return false;
	r = (const uint8_t *)s.p + 1;
	e = r + in;
	while (r < e) {
		if (*r != '\\') {
			if (off == n || (uint8_t)lit[off] != *r)
				return false;
			off++;
			r++;
			continue;
		}
		r = unescape_utf8(r, e, tmp, &k);
		if (!r || k > n - off || memcmp(lit + off, tmp, k) != 0)
			return false;
		off += k;
	}
	return off == n;
}

static inline bool needs_escape(uint8_t c)
{
	return c < 0x20 || c == '"' || c == '\\';
}

static const char hexchars[] = "0123456789abcdef";

/* Body of usps__json_put_string(): no quotes, no rollback. */
static int put_escaped(struct usps__buf *b, const uint8_t *s, size_t n)
{
	const uint8_t *e, *t;
	char esc[6];

	if (!n)
		return 0;
	e = s + n;
	if (usps__buf_reserve(b, n) < 0)
		return -ENOMEM;
	while (s < e) {
		t = s;
		while (t < e && !needs_escape(*t))
			t++;
		if (put(b, s, (size_t)(t - s)) < 0)
			return -ENOMEM;
		if (t == e)
			break;
		esc[0] = '\\';
		switch (*t) {
		case '"':
		case '\\':
			esc[1] = (char)*t;
			break;
		case '\b':
			esc[1] = 'b';
			break;
		case '\f':
			esc[1] = 'f';
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
		default:
			memcpy(esc + 1, "u00", 3);
			esc[4] = hexchars[*t >> 4];
			esc[5] = hexchars[*t & 15];
			if (put(b, esc, 6) < 0)
				return -ENOMEM;
			s = t + 1;
			continue;
		}
		if (put(b, esc, 2) < 0)
			return -ENOMEM;
		s = t + 1;
	}
	return 0;
}

int usps__json_put_string(struct usps__buf *b, const char *s, size_t n)
{
	size_t old = b->len;

	if (PUT_LIT(b, "\"") < 0 || put_escaped(b, (const uint8_t *)s, n) < 0 ||
	    PUT_LIT(b, "\"") < 0) {
		b->len = old;
		return -ENOMEM;
	}
	return 0;
}

/*
 * Append raw JSON text without the whitespace between tokens, as
 * JSON.stringify would write it. This also keeps a user's pretty-printed
 * data from putting a '\n' (a frame end) inside a frame.
 */
static int put_compact(struct usps__buf *b, struct usps__span v)
{
	const uint8_t *s, *e, *t;

	if (!v.n)
		return 0;
	s = (const uint8_t *)v.p;
	e = s + v.n;
	while (s < e) {
		if (is_ws(*s)) {
			s++;
			continue;
		}
		if (*s == '"') {
			t = skip_string(s, e);
		} else {
			t = s;
			while (t < e && *t != '"' && !is_ws(*t))
				t++;
		}
		if (put(b, s, (size_t)(t - s)) < 0)
			return -ENOMEM;
		s = t;
	}
	return 0;
}

/* ---- frames in ----------------------------------------------------- */

static const struct {
	struct name name;
	enum usps__frame_type type;
} frame_types[] = {
	{ { "publish", 7 }, USPS__F_PUBLISH },
	{ { "event", 5 }, USPS__F_EVENT },
	{ { "subscribe", 9 }, USPS__F_SUBSCRIBE },
	{ { "unsubscribe", 11 }, USPS__F_UNSUBSCRIBE },
	{ { "subscribed", 10 }, USPS__F_SUBSCRIBED },
	{ { "unsubscribed", 12 }, USPS__F_UNSUBSCRIBED },
	{ { "ack", 3 }, USPS__F_ACK },
	{ { "nack", 4 }, USPS__F_NACK },
	{ { "usps.status", 11 }, USPS__F_STATUS },
	{ { "usps.refused", 12 }, USPS__F_REFUSED },
	{ { "usps.index", 10 }, USPS__F_INDEX },
	{ { "usps.records", 12 }, USPS__F_RECORDS },
	{ { "usps.ring", 9 }, USPS__F_RING },
};

static enum usps__frame_type frame_type(struct usps__span v)
{
	size_t count = sizeof(frame_types) / sizeof(frame_types[0]);

	if (v.n < 2 || v.p[0] != '"')
		return USPS__F_UNKNOWN;
	/* The two that come by the million, without escapes, first. */
	if (v.n == 7 && !memcmp(v.p, "\"event\"", 7))
		return USPS__F_EVENT;
	if (v.n == 9 && !memcmp(v.p, "\"publish\"", 9))
		return USPS__F_PUBLISH;
	for (size_t i = 0; i < count; i++)
		if (usps__json_string_eq(v, frame_types[i].name.s,
					 frame_types[i].name.n))
			return frame_types[i].type;
	return USPS__F_UNKNOWN;
}

static enum usps__opt_kind opt_kind(struct usps__span v)
{
	if (!v.n)
		return USPS__OPT_ABSENT;
	switch (v.p[0]) {
	case 'n':
		return USPS__OPT_NULL;
	case '"':
		return USPS__OPT_STRING;
	case '{':
		return is_envelope(v, "Undefined", 9, NULL)
			       ? USPS__OPT_UNDEFINED
			       : USPS__OPT_OTHER;
	default:
		return USPS__OPT_OTHER;
	}
}

int usps__wire_parse(const char *line, size_t n, struct usps__frame *f)
{
	const uint8_t *s, *e;
	struct usps__span top[K_COUNT] = { { NULL, 0 } };
	struct usps__span ev[7] = { { NULL, 0 } };

	*f = (struct usps__frame){ .type = USPS__F_UNKNOWN };
	if (!n)
		return -EPROTO;
	s = (const uint8_t *)line;
	e = s + n;
	s = skip_ws(s, e);
	if (s == e || *s != '{')
		return -EPROTO;
	if (json_scan((const char *)s, (size_t)(e - s), top, ev) < 0)
		return -EPROTO;
	f->ev_known = usps__json_kind(top[K_EVENT]) == USPS__J_OBJECT;
	if (f->ev_known)
		for (int i = 1; i <= 6; i++)
			*event_field(&f->ev, i) = ev[i];
	f->type = frame_type(top[K_TYPE]);
	f->topic = top[K_TOPIC];
	f->group = top[K_GROUP];
	f->group_kind = opt_kind(top[K_GROUP]);
	f->event = top[K_EVENT];
	f->local_only = span_is_true(top[K_LOCAL]);
	return 0;
}

int usps__wire_event_fields(struct usps__span ev, struct usps__event_fields *f)
{
	struct usps__span k, v;
	struct walk w;

	memset(f, 0, sizeof(*f));
	if (walk_init(&w, ev) < 0 || !w.obj)
		return -EINVAL;
	while (walk_next(&w, &k, &v)) {
		int i = key_lookup(k, event_keys, 6);

		if (i)
			*event_field(f, i) = v;
	}
	return 0;
}

int usps__wire_created_at_ms(struct usps__span s, int64_t *ret_ms)
{
	char buf[128];
	size_t n;

	switch (usps__json_kind(s)) {
	case USPS__J_OBJECT:
		if (!is_envelope(s, "Date", 4, &s))
			return -EINVAL;
		break;
	case USPS__J_STRING:
		break;
	default:
		return -EINVAL;
	}
	if (s.n > sizeof(buf) || usps__json_kind(s) != USPS__J_STRING ||
	    usps__json_string_decode(s, buf, &n) < 0)
		return -EINVAL;
	return usps__iso8601_parse(buf, n, ret_ms);
}

/* ---- time ---------------------------------------------------------- */

#define MS_PER_DAY INT64_C(86400000)
/* The range of a JavaScript Date: +-1e8 days around the epoch. */
#define MS_MAX (INT64_C(100000000) * MS_PER_DAY)

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
	int64_t era, yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *ret_y, unsigned *ret_m,
			    unsigned *ret_d)
{
	int64_t era, doe, yoe, doy, mp;

	z += 719468;
	era = (z >= 0 ? z : z - 146096) / 146097;
	doe = z - era * 146097;
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	*ret_d = (unsigned)(doy - (153 * mp + 2) / 5 + 1);
	*ret_m = (unsigned)(mp < 10 ? mp + 3 : mp - 9);
	*ret_y = yoe + era * 400 + (*ret_m <= 2);
}

/* Write @v in decimal, zero-padded to @width digits. */
static char *put_dec(char *o, uint64_t v, int width)
{
	char tmp[20];
	int n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n < width)
		tmp[n++] = '0';
	while (n)
		*o++ = tmp[--n];
	return o;
}

size_t usps__iso8601_ms(char out[32], int64_t ms)
{
	int64_t days = ms / MS_PER_DAY, rem = ms % MS_PER_DAY, y;
	unsigned m, d;
	char *o = out;

	if (rem < 0) {
		rem += MS_PER_DAY;
		days--;
	}
	civil_from_days(days, &y, &m, &d);
	if (y < 0) {
		*o++ = '-';
		o = put_dec(o, (uint64_t)-y, 6);
	} else if (y > 9999) {
		*o++ = '+';
		o = put_dec(o, (uint64_t)y, 6);
	} else {
		o = put_dec(o, (uint64_t)y, 4);
	}
	*o++ = '-';
	o = put_dec(o, m, 2);
	*o++ = '-';
	o = put_dec(o, d, 2);
	*o++ = 'T';
	o = put_dec(o, (uint64_t)(rem / 3600000), 2);
	*o++ = ':';
	o = put_dec(o, (uint64_t)(rem / 60000 % 60), 2);
	*o++ = ':';
	o = put_dec(o, (uint64_t)(rem / 1000 % 60), 2);
	*o++ = '.';
	o = put_dec(o, (uint64_t)(rem % 1000), 3);
	*o++ = 'Z';
	*o = '\0';
	return (size_t)(o - out);
}

/* Exactly @k digits at *@s (advanced), or -1. */
static int64_t digits(const uint8_t **s, const uint8_t *e, int k)
{
	int64_t v = 0;

	if (e - *s < k)
		return -1;
	for (int i = 0; i < k; i++) {
		if (!is_digit((*s)[i]))
			return -1;
		v = v * 10 + ((*s)[i] - '0');
	}
	*s += k;
	return v;
}

static bool expect(const uint8_t **s, const uint8_t *e, uint8_t c)
{
	if (*s == e || **s != c)
		return false;
	(*s)++;
	return true;
}

int usps__iso8601_parse(const char *p, size_t n, int64_t *ret_ms)
{
	static const uint8_t mdays[] = { 31, 29, 31, 30, 31, 30,
					 31, 31, 30, 31, 30, 31 };
	const uint8_t *s, *e;
	int64_t y, mo, d, h, mi, sec, frac = 0, off = 0, ms;
	bool neg = false;

	if (!n)
		return -EINVAL;
	s = (const uint8_t *)p;
	e = s + n;
	if (*s == '+' || *s == '-') {
		neg = *s++ == '-';
		y = digits(&s, e, 6);
		/* ECMA-262: "-000000" is not a valid year. */
		if (y < 0 || (neg && y == 0))
			return -EINVAL;
		if (neg)
			y = -y;
	} else {
		y = digits(&s, e, 4);
		if (y < 0)
			return -EINVAL;
	}
	if (!expect(&s, e, '-') || (mo = digits(&s, e, 2)) < 1 || mo > 12 ||
	    !expect(&s, e, '-') || (d = digits(&s, e, 2)) < 1 ||
	    d > mdays[mo - 1] || !expect(&s, e, 'T') ||
	    (h = digits(&s, e, 2)) < 0 || h > 24 || !expect(&s, e, ':') ||
	    (mi = digits(&s, e, 2)) < 0 || mi > 59 || !expect(&s, e, ':') ||
	    (sec = digits(&s, e, 2)) < 0 || sec > 59)
		return -EINVAL;
	if (mo == 2 && d == 29 &&
	    !(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)))
		return -EINVAL;
	if (s < e && *s == '.') {
		int k = 0;

		s++;
		while (s < e && is_digit(*s)) {
			if (k < 3)
				frac = frac * 10 + (*s - '0');
			k++;
			s++;
		}
		if (!k)
			return -EINVAL;
		for (; k < 3; k++)
			frac *= 10;
	}
	/* 24:00 is allowed as the end of a day, nothing past it. */
	if (h == 24 && (mi || sec || frac))
		return -EINVAL;
	if (s < e && (*s == '+' || *s == '-')) {
		int64_t oh, om;
		bool east = *s++ == '+';

		if ((oh = digits(&s, e, 2)) < 0 || oh > 23 ||
		    !expect(&s, e, ':') || (om = digits(&s, e, 2)) < 0 ||
		    om > 59)
			return -EINVAL;
		off = (oh * 60 + om) * 60000;
		if (east)
			off = -off;
	} else if (!expect(&s, e, 'Z')) {
		return -EINVAL;
	}
	if (s != e)
		return -EINVAL;
	ms = days_from_civil(y, (unsigned)mo, (unsigned)d) * MS_PER_DAY +
	     h * 3600000 + mi * 60000 + sec * 1000 + frac + off;
	if (ms > MS_MAX || ms < -MS_MAX)
		return -EINVAL;
	*ret_ms = ms;
	return 0;
}

/* ---- UUIDs --------------------------------------------------------- */

int usps__uuidgen_init(struct usps__uuidgen *g)
{
	g->pos = sizeof(g->pool);
	return OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, NULL) == 1 ? 0
								      : -ENOMEM;
}

int usps__rand_warm(void)
{
	uint8_t b[16];

	return RAND_bytes(b, sizeof(b)) == 1 ? 0 : -EIO;
}

static int refill(struct usps__uuidgen *g)
{
	if (RAND_bytes(g->pool, sizeof(g->pool)) != 1)
		return -EIO;
	g->pos = 0;
	return 0;
}

#ifdef __SSE2__
/* Sixteen nibbles (0..15, one per byte) as lowercase hex digits. */
static inline __m128i hex_digits(__m128i d)
{
	__m128i over9 = _mm_cmpgt_epi8(d, _mm_set1_epi8(9));

	return _mm_add_epi8(_mm_add_epi8(d, _mm_set1_epi8('0')),
			    _mm_and_si128(over9, _mm_set1_epi8('a' - '9' - 1)));
}
#endif

/* Store the 8 bytes of @v at @p. */
static inline void put_u64(char *p, uint64_t v)
{
	memcpy(p, &v, sizeof(v));
}

int usps__uuid4(struct usps__uuidgen *g, char out[37])
{
	int r;

	if (g->pos > sizeof(g->pool) - 16) {
		r = refill(g);
		if (r < 0)
			return r;
	}
#if defined(__SSE2__) && defined(__x86_64__)
	{
		/*
		 * All 32 digits at once, then placed around the dashes from
		 * registers. The version and variant bits are set in the
		 * register, and nothing goes through the stack: bytes stored
		 * there and loaded back wider would wait for the stores (a
		 * stall that took most of this function's time, perf).
		 */
		const __m128i nib = _mm_set1_epi8(0x0f);
		const __m128i keep = _mm_setr_epi8(-1, -1, -1, -1, -1, -1, 0x0f,
						   -1, 0x3f, -1, -1, -1, -1, -1,
						   -1, -1);
		const __m128i set = _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0x40, 0,
						  (char)0x80, 0, 0, 0, 0, 0, 0,
						  0);
		const uint64_t dash = '-';
		__m128i v = _mm_or_si128(
			_mm_and_si128(
				_mm_loadu_si128(
					(const __m128i *)(g->pool + g->pos)),
				keep),
			set);
		__m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), nib);
		__m128i lo = _mm_and_si128(v, nib);
		__m128i a = hex_digits(_mm_unpacklo_epi8(hi, lo));
		__m128i b = hex_digits(_mm_unpackhi_epi8(hi, lo));
		/* Digits 8..15, 16..23 and 24..31, little-endian. */
		uint64_t a1 = (uint64_t)_mm_cvtsi128_si64(_mm_srli_si128(a, 8));
		uint64_t b0 = (uint64_t)_mm_cvtsi128_si64(b);
		uint64_t b1 = (uint64_t)_mm_cvtsi128_si64(_mm_srli_si128(b, 8));
		uint32_t tail = (uint32_t)(b1 >> 32);

		/* xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx */
		_mm_storel_epi64((__m128i *)out, a);
		put_u64(out + 8, dash | (a1 & 0xffffffffu) << 8 | dash << 40 |
					 (a1 >> 32 & 0xffffu) << 48);
		put_u64(out + 16, a1 >> 48 | dash << 16 |
					  (b0 & 0xffffffffu) << 24 |
					  dash << 56);
		put_u64(out + 24, b0 >> 32 | b1 << 32);
		memcpy(out + 32, &tail, sizeof(tail));
	}
#else
	uint8_t u[16];
	char *o = out;

	memcpy(u, g->pool + g->pos, sizeof(u));
	u[6] = (uint8_t)((u[6] & 0x0f) | 0x40);
	u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
	for (size_t i = 0; i < sizeof(u); i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			*o++ = '-';
		*o++ = hexchars[u[i] >> 4];
		*o++ = hexchars[u[i] & 15];
	}
#endif
	g->pos += 16;
	out[36] = '\0';
	return 0;
}

/* ---- frames out ---------------------------------------------------- */

#define UNDEFINED_ENV "{\"__m_codec__\":\"Undefined\"}"

int usps__wire_put_membership(struct usps__buf *b, bool unsubscribe,
			      const char *topic, size_t topic_len,
			      const char *group, size_t group_len)
{
	size_t old = b->len;
	int r;

	r = unsubscribe ? PUT_LIT(b, "{\"type\":\"unsubscribe\",\"topic\":")
			: PUT_LIT(b, "{\"type\":\"subscribe\",\"topic\":");
	if (r < 0 || usps__json_put_string(b, topic, topic_len) < 0)
		goto rollback;
	if (group && (PUT_LIT(b, ",\"group\":") < 0 ||
		      usps__json_put_string(b, group, group_len) < 0))
		goto rollback;
	if (PUT_LIT(b, "}\n") < 0)
		goto rollback;
	return 0;
rollback:
	b->len = old;
	return -ENOMEM;
}

int usps__wire_put_ack(struct usps__buf *b, bool unsubscribe,
		       struct usps__span topic, struct usps__span group)
{
	size_t old = b->len;
	int r;

	r = unsubscribe ? PUT_LIT(b, "{\"type\":\"unsubscribed\",\"topic\":")
			: PUT_LIT(b, "{\"type\":\"subscribed\",\"topic\":");
	if (r < 0)
		goto rollback;
	r = topic.n ? put_span(b, topic) : PUT_LIT(b, UNDEFINED_ENV);
	if (r < 0)
		goto rollback;
	if (group.n &&
	    (PUT_LIT(b, ",\"group\":") < 0 || put_span(b, group) < 0))
		goto rollback;
	if (PUT_LIT(b, "}\n") < 0)
		goto rollback;
	return 0;
rollback:
	b->len = old;
	return -ENOMEM;
}

/* The members inside a raw object's braces, trimmed; n == 0 if none. */
static struct usps__span object_inner(struct usps__span v)
{
	const uint8_t *s, *e;

	if (!v.n)
		return v;
	s = (const uint8_t *)v.p;
	e = s + v.n;
	s = skip_ws(s, e);
	while (e > s && is_ws(e[-1]))
		e--;
	if (e - s < 2 || *s != '{' || e[-1] != '}')
		return (struct usps__span){ NULL, 0 };
	s = skip_ws(s + 1, e - 1);
	e--;
	while (e > s && is_ws(e[-1]))
		e--;
	return (struct usps__span){ (const char *)s, (size_t)(e - s) };
}

/*
 * The publish line; with @ix, its spans too, as offsets from @line_start
 * (the event's members type, runId and data: the publisher wrote them all
 * and spliced no other in).
 */
static int put_publish(struct usps__buf *b, const char *topic, size_t topic_len,
		       const char *type, size_t type_len, const char *run_id,
		       struct usps__span data, struct usps__span extra,
		       size_t line_start, struct usps__ix *ix)
{
	struct usps__span inner = object_inner(extra);
	size_t old = b->len, guess = 64 + topic_len + type_len + data.n;
	size_t at[USPS__IX_N] = { 0 }, end[USPS__IX_N] = { 0 };

	if (usps__buf_reserve(b, guess + extra.n) < 0 ||
	    PUT_LIT(b, "{\"type\":\"publish\",\"topic\":") < 0)
		goto rollback;
	at[USPS__IX_TOPIC] = b->len;
	if (usps__json_put_string(b, topic, topic_len) < 0)
		goto rollback;
	end[USPS__IX_TOPIC] = b->len;
	if (PUT_LIT(b, ",\"event\":") < 0)
		goto rollback;
	at[USPS__IX_EVENT] = b->len;
	if (PUT_LIT(b, "{\"type\":") < 0)
		goto rollback;
	at[USPS__IX_TYPE] = b->len;
	if (usps__json_put_string(b, type, type_len) < 0)
		goto rollback;
	end[USPS__IX_TYPE] = b->len;
	if (run_id) {
		if (PUT_LIT(b, ",\"runId\":") < 0)
			goto rollback;
		at[USPS__IX_RUN_ID] = b->len;
		if (usps__json_put_string(b, run_id, strlen(run_id)) < 0)
			goto rollback;
		end[USPS__IX_RUN_ID] = b->len;
	}
	if (PUT_LIT(b, ",\"data\":") < 0)
		goto rollback;
	at[USPS__IX_DATA] = b->len;
	if ((data.n ? put_compact(b, data) : PUT_LIT(b, "null")) < 0)
		goto rollback;
	end[USPS__IX_DATA] = b->len;
	if (inner.n && (PUT_LIT(b, ",") < 0 || put_compact(b, inner) < 0))
		goto rollback;
	if (PUT_LIT(b, "}") < 0)
		goto rollback;
	end[USPS__IX_EVENT] = b->len;
	if (PUT_LIT(b, "}\n") < 0)
		goto rollback;
	if (ix) {
		memset(ix, 0, sizeof(*ix));
		ix->flags = USPS__IXF_EV_KNOWN | USPS__IXF_PUBLISH;
		for (int i = 0; i < USPS__IX_N; i++) {
			if (!end[i])
				continue;
			ix->off[i] = (uint32_t)(at[i] - line_start);
			ix->len[i] = (uint32_t)(end[i] - at[i]);
		}
	}
	return 0;
rollback:
	b->len = old;
	return -ENOMEM;
}

int usps__wire_put_publish(struct usps__buf *b, const char *topic,
			   size_t topic_len, const char *type, size_t type_len,
			   const char *run_id, struct usps__span data,
			   struct usps__span extra)
{
	return put_publish(b, topic, topic_len, type, type_len, run_id, data,
			   extra, 0, NULL);
}

int usps__rec_put_publish(struct usps__buf *b, const char *topic,
			  size_t topic_len, const char *type, size_t type_len,
			  const char *run_id, struct usps__span data,
			  struct usps__span extra)
{
	struct usps__ix ix;
	size_t old = b->len, line, hlen;
	/* Spliced members are not indexed: the broker parses that line. */
	bool indexed = !object_inner(extra).n;

	/* Room for the header a line of up to 64 KiB takes; a longer one
	 * is moved up for the wide header. */
	if (usps__buf_reserve(b, USPS__REC_NARROW) < 0)
		return -ENOMEM;
	b->len += USPS__REC_NARROW;
	if (put_publish(b, topic, topic_len, type, type_len, run_id, data,
			extra, b->len, indexed ? &ix : NULL) < 0)
		goto rollback;
	line = b->len - old - USPS__REC_NARROW - 1;
	hlen = usps__rec_hlen(line, indexed ? &ix : NULL);
	if (hlen != USPS__REC_NARROW) {
		if (hlen > USPS__REC_NARROW &&
		    usps__buf_reserve(b, hlen - USPS__REC_NARROW) < 0)
			goto rollback;
		memmove(b->p + old + hlen, b->p + old + USPS__REC_NARROW,
			line + 1);
	}
	(void)usps__rec_head((uint8_t *)b->p + old, line, indexed ? &ix : NULL);
	b->len = old + hlen + line + 1;
	return 0;
rollback:
	b->len = old;
	return -ENOMEM;
}

int usps__rec_begin(struct usps__buf *b, size_t *ret_at)
{
	*ret_at = b->len;
	if (usps__buf_reserve(b, USPS__REC_PLAIN) < 0)
		return -ENOMEM;
	b->len += USPS__REC_PLAIN;
	return 0;
}

int usps__rec_end(struct usps__buf *b, size_t at, int r)
{
	if (r < 0 || b->len < at + USPS__REC_PLAIN + 1) {
		b->len = at;
		return r < 0 ? r : -EINVAL;
	}
	(void)usps__rec_head((uint8_t *)b->p + at,
			     b->len - at - USPS__REC_PLAIN - 1, NULL);
	return 0;
}

/* The stamped members, and S_ANY: some member was written, a comma is due. */
enum {
	S_ID = 1,
	S_CREATED = 2,
	S_ATTEMPT = 4,
	S_ANY = 8,
};

struct stamp {
	const char *uuid;
	char iso[32];
	size_t iso_len;
};

/* The stamped value @which (S_*). */
static int put_stamp_value(struct usps__buf *b, const struct stamp *st,
			   int which)
{
	switch (which) {
	case S_ID:
		if (PUT_LIT(b, "\"") < 0 || put(b, st->uuid, 36) < 0)
			return -ENOMEM;
		return PUT_LIT(b, "\"");
	case S_CREATED:
		if (PUT_LIT(b, "{\"__m_codec__\":\"Date\",\"v\":\"") < 0 ||
		    put(b, st->iso, st->iso_len) < 0)
			return -ENOMEM;
		return PUT_LIT(b, "\"}");
	default:
		return PUT_LIT(b, "1");
	}
}

static int stamp_key(struct usps__span k)
{
	static const struct name keys[] = {
		{ "id", 2 },
		{ "createdAt", 9 },
		{ "deliveryAttempt", 15 },
	};

	/* Quick reject: only three lengths can match without escapes. */
	if (k.n != 4 && k.n != 11 && k.n != 17 && !memchr(k.p, '\\', k.n))
		return 0;
	switch (key_lookup(k, keys, 3)) {
	case 1:
		return S_ID;
	case 2:
		return S_CREATED;
	case 3:
		return S_ATTEMPT;
	default:
		return 0;
	}
}

/*
 * Object event: copy the member text verbatim in runs, swapping in the
 * stamped value wherever the publisher already had that key (a JS spread
 * overwrites in place). Returns the S_* bits written, or -ENOMEM.
 */
static int put_object_members(struct usps__buf *b, struct walk *w,
			      const struct stamp *st)
{
	struct usps__span k, v;
	const char *run = NULL, *end = NULL;
	int have = 0, which;

	while (walk_next(w, &k, &v)) {
		if (!run)
			run = k.p;
		end = v.p + v.n;
		which = stamp_key(k);
		if (!which)
			continue;
		if (put(b, run, (size_t)(v.p - run)) < 0 ||
		    put_stamp_value(b, st, which) < 0)
			return -ENOMEM;
		have |= which;
		run = end;
	}
	if (run && put(b, run, (size_t)(end - run)) < 0)
		return -ENOMEM;
	return have | (end ? S_ANY : 0);
}

static int put_index_key(struct usps__buf *b, bool comma, size_t i)
{
	char tmp[24], *o = tmp;

	if (comma)
		*o++ = ',';
	*o++ = '"';
	o = put_dec(o, i, 1);
	*o++ = '"';
	*o++ = ':';
	return put(b, tmp, (size_t)(o - tmp));
}

/* Array event: {"0":e0,"1":e1,...}. Returns S_ANY if not empty. */
static int put_array_members(struct usps__buf *b, struct walk *w)
{
	struct usps__span k, v;
	size_t i = 0;

	while (walk_next(w, &k, &v)) {
		if (put_index_key(b, i > 0, i) < 0 || put_span(b, v) < 0)
			return -ENOMEM;
		i++;
	}
	return i ? S_ANY : 0;
}

/* One UTF-16 code unit as JSON.stringify writes a one-unit string. */
static int put_unit(struct usps__buf *b, uint32_t u)
{
	uint8_t tmp[8];

	if (is_surrogate(u)) {
		tmp[0] = '"';
		tmp[1] = '\\';
		tmp[2] = 'u';
		tmp[3] = (uint8_t)hexchars[u >> 12];
		tmp[4] = (uint8_t)hexchars[u >> 8 & 15];
		tmp[5] = (uint8_t)hexchars[u >> 4 & 15];
		tmp[6] = (uint8_t)hexchars[u & 15];
		tmp[7] = '"';
		return put(b, tmp, 8);
	}
	return usps__json_put_string(b, (const char *)tmp, utf8_encode(tmp, u));
}

/* The code point of the well-formed @n-byte UTF-8 sequence at @r. */
static uint32_t utf8_decode(const uint8_t *r, size_t n)
{
	uint32_t cp = r[0] & (0x7f >> n);

	for (size_t i = 1; i < n; i++)
		cp = cp << 6 | (r[i] & 0x3f);
	return cp;
}

/*
 * String event: a JS spread of a string gives one member per UTF-16 code
 * unit, {"0":"a","1":"b"} (spec §2.5); astral characters become two lone
 * surrogates, which JSON.stringify escapes. Returns S_ANY if not empty.
 */
static int put_string_members(struct usps__buf *b, struct usps__span v)
{
	const uint8_t *r = (const uint8_t *)v.p + 1, *t;
	const uint8_t *e = (const uint8_t *)v.p + v.n - 1;
	uint32_t u[2];
	size_t i = 0;
	int k;

	while (r < e) {
		if (*r == '\\') {
			t = unescape(r, e, &u[0]);
			if (!t)
				break;
			r = t;
			k = 1;
		} else if (*r < 0x80) {
			u[0] = *r++;
			k = 1;
		} else {
			uint32_t cp;

			t = utf8_seq(r, e);
			if (!t)
				break;
			cp = utf8_decode(r, (size_t)(t - r));
			r = t;
			if (cp >= 0x10000) {
				cp -= 0x10000;
				u[0] = 0xd800 + (cp >> 10);
				u[1] = 0xdc00 + (cp & 0x3ff);
				k = 2;
			} else {
				u[0] = cp;
				k = 1;
			}
		}
		for (int j = 0; j < k; j++, i++)
			if (put_index_key(b, i > 0, i) < 0 ||
			    put_unit(b, u[j]) < 0)
				return -ENOMEM;
	}
	return i ? S_ANY : 0;
}

/*
 * Object event known to have none of the stamped keys: its members are
 * copied in one run, without the walk (the head is the same). *@from is
 * where the copy began in @event.
 */
static int put_plain_members(struct usps__buf *b, struct usps__span event,
			     const char **from)
{
	const uint8_t *s = (const uint8_t *)event.p + 1;
	const uint8_t *e = (const uint8_t *)event.p + event.n - 1; /* '}' */

	s = skip_ws(s, e);
	while (e > s && is_ws(e[-1]))
		e--;
	*from = (const char *)s;
	if (s == e)
		return 0;
	return put(b, s, (size_t)(e - s)) < 0 ? -ENOMEM : S_ANY;
}

/* Where the head is being built, and the index to fill (ix NULL: none). */
struct head_ix {
	struct usps__ix *ix;
	size_t line_start;
	const struct usps__event_fields *ev; /* the publisher's members */
};

static void ix_set(struct head_ix *h, int which, size_t at, size_t n)
{
	h->ix->off[which] = (uint32_t)(at - h->line_start);
	h->ix->len[which] = (uint32_t)n;
}

/* A member of the publisher's event, now copied to @to from @from. */
static void ix_moved(struct head_ix *h, int which, struct usps__span sp,
		     const char *from, size_t to)
{
	if (sp.n)
		ix_set(h, which, to + (size_t)(sp.p - from), sp.n);
}

/* Whether @sp is absent or lies in the @n bytes at @from. */
static bool within(struct usps__span sp, const char *from, size_t n)
{
	return !sp.n ||
	       (sp.p >= from && sp.n <= n && (size_t)(sp.p - from) <= n - sp.n);
}

/*
 * The head, and (h->ix set, and only for a plain object event) its index.
 * Returns 1 if the index was filled, 0 if not, -ENOMEM.
 */
static int put_event_head(struct usps__buf *b, struct usps__span topic,
			  struct usps__span event, bool plain,
			  const char uuid[37], int64_t created_ms,
			  struct head_ix *h)
{
	static const int order[] = { S_ID, S_CREATED, S_ATTEMPT };
	static const int slot[] = { USPS__IX_ID, USPS__IX_CREATED,
				    USPS__IX_ATTEMPT };
	static const struct name keys[] = {
		{ "\"id\":", 5 },
		{ "\"createdAt\":", 12 },
		{ "\"deliveryAttempt\":", 18 },
	};
	enum usps__json_kind kind = usps__json_kind(event);
	struct stamp st = { .uuid = uuid };
	size_t old = b->len, at;
	const char *from = NULL;
	struct walk w;
	int have = 0;

	{
		/* A broker stamps many events per millisecond: format each
		 * millisecond once (per thread). */
		static _Thread_local int64_t c_ms = INT64_MIN;
		static _Thread_local char c_iso[32];
		static _Thread_local size_t c_len;

		if (created_ms != c_ms) {
			c_len = usps__iso8601_ms(c_iso, created_ms);
			c_ms = created_ms;
		}
		memcpy(st.iso, c_iso, sizeof(c_iso));
		st.iso_len = c_len;
	}
	/* Only a plain object event under a string topic is indexed here. */
	if (h && (!plain || !topic.n || kind != USPS__J_OBJECT))
		h = NULL;
	/* One allocation in the common case (an object event). */
	if (usps__buf_reserve(b, 192 + topic.n + event.n) < 0 ||
	    PUT_LIT(b, "{\"type\":\"event\",\"topic\":") < 0)
		goto rollback;
	if (h) {
		memset(h->ix, 0, sizeof(*h->ix));
		h->ix->flags = USPS__IXF_EV_KNOWN;
		ix_set(h, USPS__IX_TOPIC, b->len, topic.n);
	}
	if ((topic.n ? put_span(b, topic) : PUT_LIT(b, UNDEFINED_ENV)) < 0 ||
	    PUT_LIT(b, ",\"event\":{") < 0)
		goto rollback;
	at = b->len - 1; /* the event's '{' */
	switch (kind) {
	case USPS__J_OBJECT:
		if (plain) {
			size_t to = b->len;

			have = put_plain_members(b, event, &from);
			/* Spans a client's record gave must lie in what was
			 * copied; else no index (wire.h: never trusted more). */
			if (h && have >= 0 &&
			    !(within(h->ev->type, from, b->len - to) &&
			      within(h->ev->run_id, from, b->len - to) &&
			      within(h->ev->data, from, b->len - to)))
				h = NULL;
			if (h && have >= 0) {
				ix_moved(h, USPS__IX_TYPE, h->ev->type, from,
					 to);
				ix_moved(h, USPS__IX_RUN_ID, h->ev->run_id,
					 from, to);
				ix_moved(h, USPS__IX_DATA, h->ev->data, from,
					 to);
			}
		} else if (walk_init(&w, event) == 0) {
			have = put_object_members(b, &w, &st);
		}
		break;
	case USPS__J_ARRAY:
		if (walk_init(&w, event) == 0)
			have = put_array_members(b, &w);
		break;
	case USPS__J_STRING:
		have = put_string_members(b, event);
		break;
	default:
		/* null, numbers, booleans spread to nothing. */
		break;
	}
	if (have < 0)
		goto rollback;
	for (size_t i = 0; i < 3; i++) {
		size_t v;

		if (have & order[i])
			continue;
		if (((have & S_ANY) && PUT_LIT(b, ",") < 0) ||
		    put(b, keys[i].s, keys[i].n) < 0)
			goto rollback;
		v = b->len;
		if (put_stamp_value(b, &st, order[i]) < 0)
			goto rollback;
		if (h)
			ix_set(h, slot[i], v, b->len - v);
		have |= S_ANY;
	}
	if (PUT_LIT(b, "}") < 0)
		goto rollback;
	if (h)
		ix_set(h, USPS__IX_EVENT, at, b->len - at);
	return h != NULL;
rollback:
	b->len = old;
	return -ENOMEM;
}

int usps__wire_put_event_head(struct usps__buf *b, struct usps__span topic,
			      struct usps__span event, const char uuid[37],
			      int64_t created_ms)
{
	int r = put_event_head(b, topic, event, false, uuid, created_ms, NULL);

	return r < 0 ? r : 0;
}

/* The parse saw every member of an object event (ev_known): with none of
 * the stamped keys among them, nothing is replaced. */
static bool frame_plain(const struct usps__frame *f)
{
	return f->ev_known && !f->ev.id.n && !f->ev.created_at.n &&
	       !f->ev.delivery_attempt.n;
}

int usps__wire_put_frame_head(struct usps__buf *b, const struct usps__frame *f,
			      const char uuid[37], int64_t created_ms)
{
	int r = put_event_head(b, f->topic, f->event, frame_plain(f), uuid,
			       created_ms, NULL);

	return r < 0 ? r : 0;
}

int usps__wire_put_frame_head_ix(struct usps__buf *b,
				 const struct usps__frame *f,
				 const char uuid[37], int64_t created_ms,
				 size_t line_start, struct usps__ix *ix)
{
	struct head_ix h = { ix, line_start, &f->ev };

	return put_event_head(b, f->topic, f->event, frame_plain(f), uuid,
			      created_ms, ix ? &h : NULL);
}

int usps__wire_put_group_tail(struct usps__buf *b, struct usps__span group)
{
	size_t old = b->len;

	if (group.n) {
		if (PUT_LIT(b, ",\"group\":") < 0 || put_span(b, group) < 0)
			goto rollback;
	}
	if (PUT_LIT(b, "}\n") < 0)
		goto rollback;
	return 0;
rollback:
	b->len = old;
	return -ENOMEM;
}

/* ---- indexed frames ---- */

static void ix_span(struct usps__ix *ix, int which, struct usps__span sp,
		    const char *line)
{
	ix->off[which] = sp.n ? (uint32_t)(sp.p - line) : 0;
	ix->len[which] = (uint32_t)sp.n;
}

void usps__ix_from_frame(struct usps__ix *ix, const struct usps__frame *f,
			 const char *line)
{
	memset(ix, 0, sizeof(*ix));
	ix_span(ix, USPS__IX_TOPIC, f->topic, line);
	if (f->group_kind == USPS__OPT_STRING) {
		ix_span(ix, USPS__IX_GROUP, f->group, line);
		ix->flags |= USPS__IXF_GROUP;
	}
	ix_span(ix, USPS__IX_EVENT, f->event, line);
	if (!f->ev_known)
		return;
	ix->flags |= USPS__IXF_EV_KNOWN;
	ix_span(ix, USPS__IX_TYPE, f->ev.type, line);
	ix_span(ix, USPS__IX_ID, f->ev.id, line);
	ix_span(ix, USPS__IX_RUN_ID, f->ev.run_id, line);
	ix_span(ix, USPS__IX_DATA, f->ev.data, line);
	ix_span(ix, USPS__IX_CREATED, f->ev.created_at, line);
	ix_span(ix, USPS__IX_ATTEMPT, f->ev.delivery_attempt, line);
}

static uint8_t *le16(uint8_t *o, uint32_t v)
{
	o[0] = (uint8_t)v;
	o[1] = (uint8_t)(v >> 8);
	return o + 2;
}

static uint8_t *le32(uint8_t *o, uint32_t v)
{
	o[0] = (uint8_t)v;
	o[1] = (uint8_t)(v >> 8);
	o[2] = (uint8_t)(v >> 16);
	o[3] = (uint8_t)(v >> 24);
	return o + 4;
}

size_t usps__rec_head(uint8_t *out, size_t line_len, const struct usps__ix *ix)
{
	/* With u16 spans every offset and length is below the line's end. */
	bool narrow = line_len <= UINT16_MAX;
	size_t hlen = usps__rec_hlen(line_len, ix);
	uint8_t *o = out;

	o = le32(o, (uint32_t)(hlen - 4 + line_len + 1));
	*o++ = !ix ? 0 : narrow ? 1 : 2;
	*o++ = ix ? ix->flags : 0;
	o = le16(o, (uint32_t)hlen);
	for (int i = 0; ix && i < USPS__IX_N; i++) {
		if (narrow) {
			o = le16(o, ix->off[i]);
			o = le16(o, ix->len[i]);
		} else {
			o = le32(o, ix->off[i]);
			o = le32(o, ix->len[i]);
		}
	}
	return hlen;
}

/* Where rec_open() puts each span of an index in a frame. */
static struct usps__span *frame_slot(struct usps__frame *f, int i)
{
	static const size_t off[USPS__IX_N] = {
		[USPS__IX_TOPIC] = offsetof(struct usps__frame, topic),
		[USPS__IX_GROUP] = offsetof(struct usps__frame, group),
		[USPS__IX_EVENT] = offsetof(struct usps__frame, event),
		[USPS__IX_TYPE] = offsetof(struct usps__frame, ev.type),
		[USPS__IX_ID] = offsetof(struct usps__frame, ev.id),
		[USPS__IX_RUN_ID] = offsetof(struct usps__frame, ev.run_id),
		[USPS__IX_DATA] = offsetof(struct usps__frame, ev.data),
		[USPS__IX_CREATED] =
			offsetof(struct usps__frame, ev.created_at),
		[USPS__IX_ATTEMPT] =
			offsetof(struct usps__frame, ev.delivery_attempt),
	};

	return (struct usps__span *)((char *)f + off[i]);
}

int usps__rec_open(const char *rec, size_t n, const char **ret_line,
		   size_t *ret_len, struct usps__frame *f)
{
	const uint8_t *h = (const uint8_t *)rec;
	size_t hlen, len;
	uint8_t kind, flags;

	if (n < USPS__REC_PLAIN + 1 || usps__get_le32(h) != n - 4)
		return -EPROTO;
	kind = h[4];
	flags = h[5];
	hlen = usps__get_le16(h + 6);
	if (kind > 2 ||
	    hlen != (kind == 0	 ? (size_t)USPS__REC_PLAIN
		     : kind == 1 ? (size_t)USPS__REC_NARROW
				 : (size_t)USPS__REC_WIDE) ||
	    n < hlen + 1 || rec[n - 1] != '\n')
		return -EPROTO;
	*ret_line = rec + hlen;
	*ret_len = len = n - hlen - 1;
	if (kind == 0)
		return 0;
	/* Each span goes straight to its place in @f: spans gathered in an
	 * array and copied over would be read back before their stores
	 * retire, a stall per span. */
	for (int i = 0; i < USPS__IX_N; i++) {
		const uint8_t *e = h + 8 + (size_t)i * (kind == 1 ? 4 : 8);
		size_t off = kind == 1 ? usps__get_le16(e) : usps__get_le32(e);
		size_t sn = kind == 1 ? usps__get_le16(e + 2)
				      : usps__get_le32(e + 4);

		if (off > len || sn > len - off)
			return -EPROTO;
		*frame_slot(f, i) =
			(struct usps__span){ sn ? rec + hlen + off : NULL, sn };
	}
	/* An event the broker did not index is parsed: nothing here walks
	 * unvalidated JSON. A publish has no group. */
	if (!(flags & USPS__IXF_EV_KNOWN) || !f->topic.n || f->event.n < 2 ||
	    ((flags & USPS__IXF_GROUP) != 0) != (f->group.n != 0) ||
	    ((flags & USPS__IXF_PUBLISH) && f->group.n))
		return 0;
	f->type = flags & USPS__IXF_PUBLISH ? USPS__F_PUBLISH : USPS__F_EVENT;
	f->group_kind = f->group.n ? USPS__OPT_STRING : USPS__OPT_ABSENT;
	f->local_only = false;
	f->ev_known = true;
	return 1;
}
