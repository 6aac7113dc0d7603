/* SPDX-License-Identifier: MIT */
/*
 * Mastra UnixSocketPubSub frames: one JSON object per line. This is the only
 * part of usps that knows JSON. Frames are parsed once, in one pass, into
 * spans (pointers into the caller's line) without building a DOM, and built
 * straight into growable byte buffers.
 */
#ifndef USPS_WIRE_H
#define USPS_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Deepest nesting of arrays/objects accepted in any JSON text. */
#define USPS__JSON_MAX_DEPTH 512

/* Raw JSON text of one value inside a line; n == 0 means absent. */
struct usps__span {
	const char *p;
	size_t n;
};

/* A growable byte buffer. Zero-initialised is empty and valid. */
struct usps__buf {
	char *p;
	size_t len;
	size_t cap;
};

/* Ensure room for @extra more bytes. 0 or -ENOMEM. */
int usps__buf_reserve(struct usps__buf *b, size_t extra);
/* Append @n bytes. 0 or -ENOMEM (b unchanged then). */
int usps__buf_put(struct usps__buf *b, const void *p, size_t n);
/* Free the storage, leave an empty buffer. */
void usps__buf_free(struct usps__buf *b);

/*
 * usps__json_validate() - is [p, p+n) exactly one JSON value (RFC 8259),
 * optionally surrounded by whitespace, in valid UTF-8 (no overlongs, no
 * surrogates encoded in UTF-8, nothing above U+10FFFF), nested at most
 * USPS__JSON_MAX_DEPTH deep? Iterative: no recursion, no allocation.
 * Returns 0 or -EINVAL.
 */
int usps__json_validate(const char *p, size_t n);

/*
 * usps__json_is_object() - like usps__json_validate() and the value is an
 * object. 0 or -EINVAL.
 */
int usps__json_is_object(const char *p, size_t n);

/* Kind of the value @s (first byte): */
enum usps__json_kind {
	USPS__J_ABSENT,
	USPS__J_NULL,
	USPS__J_BOOL,
	USPS__J_NUMBER,
	USPS__J_STRING,
	USPS__J_ARRAY,
	USPS__J_OBJECT,
};
enum usps__json_kind usps__json_kind(struct usps__span s);

/*
 * usps__json_string_decode() - decode the JSON string literal @s (with its
 * quotes, already validated) into UTF-8 at @out, which must hold s.n bytes.
 * Escapes are resolved; \u0000 yields a NUL byte; a lone surrogate escape
 * becomes U+FFFD. Stores the decoded length (no NUL appended) in *ret_len.
 * Returns 0, or -EINVAL if @s is not a string literal.
 */
int usps__json_string_decode(struct usps__span s, char *out, size_t *ret_len);

/*
 * usps__json_string_view() - the decoded text of the JSON string literal @s
 * (with its quotes, already validated) without copying it, if it has no
 * escape: returns 1 and sets *ret_p and *ret_len to the bytes between the
 * quotes. Returns 0 if it has one (decode it then), -EINVAL if @s is not a
 * string literal.
 */
int usps__json_string_view(struct usps__span s, const char **ret_p,
			   size_t *ret_len);

/*
 * usps__json_string_eq() - does the string literal @s decode to exactly
 * the @n bytes at @lit? Fast path for literals without escapes.
 */
bool usps__json_string_eq(struct usps__span s, const char *lit, size_t n);

/*
 * usps__json_put_string() - append @s (@n bytes of valid UTF-8) to @b as a
 * JSON string literal, escaping as JSON.stringify does (", \, control
 * characters; \b \f \n \r \t short forms, others \u00XX lowercase hex).
 * 0 or -ENOMEM.
 */
int usps__json_put_string(struct usps__buf *b, const char *s, size_t n);

/* Is [p, p+n) valid UTF-8 (same rules as usps__json_validate())? */
bool usps__utf8_valid(const char *p, size_t n);

/* Frame types, by the top-level "type" member. */
enum usps__frame_type {
	USPS__F_UNKNOWN, /* valid JSON object, type missing or unknown */
	USPS__F_SUBSCRIBE,
	USPS__F_UNSUBSCRIBE,
	USPS__F_PUBLISH,
	USPS__F_SUBSCRIBED,
	USPS__F_UNSUBSCRIBED,
	USPS__F_EVENT,
	USPS__F_ACK,
	USPS__F_NACK,
	/*
	 * "usps.status": a usps extension. A usps broker answers with one
	 * line {"type":"usps.status","pid":..,"uid":..,"clients":..,
	 * "brokerSinceMs":..,"brokerSince":"<iso>","version":".."}; a
	 * Mastra broker ignores it, as it ignores every unknown type.
	 */
	USPS__F_STATUS,
	/*
	 * "usps.refused": a usps extension, sent by a usps broker to a peer
	 * it will not admit (another uid) just before it closes the
	 * connection. Mastra clients ignore it and see the close.
	 */
	USPS__F_REFUSED,
	/*
	 * "usps.index": a usps extension. A usps client sends
	 * {"type":"usps.index"} first on a connection to a broker of its
	 * own uid: it can read indexed frames (below). A usps broker answers
	 * with the same line, after which everything it sends that client is
	 * records. A Mastra broker ignores the request, and a Mastra client
	 * never sends it.
	 */
	USPS__F_INDEX,
	/*
	 * "usps.records": a usps extension. A usps broker sends it, as a
	 * plain record right after its "usps.index" answer, to say that the
	 * client may send records too. The client then sends the line
	 * {"type":"usps.records"}, and everything it sends after that line
	 * is records: its publishes indexed (USPS__IXF_PUBLISH), the rest
	 * plain. A broker takes this only from a client of its own uid that
	 * asked for indexed frames; from any other peer it is ignored.
	 */
	USPS__F_RECORDS,
	/*
	 * "usps.ring": a usps extension (ring.h). A usps client of the
	 * broker's uid that asked for indexed frames may send the line
	 * {"type":"usps.ring"} next: it can read a shared-memory ring. A
	 * broker that makes one answers with the same frame, a plain record
	 * sent alone with the ring's three descriptors (SCM_RIGHTS), and
	 * sends nothing more on the socket: everything after it goes through
	 * the ring. A broker that does not answers nothing, and the socket
	 * carries on. From any other peer it is ignored.
	 */
	USPS__F_RING,
};

/* How a "group" (or "localOnly") member was given. */
enum usps__opt_kind {
	USPS__OPT_ABSENT,    /* no such member */
	USPS__OPT_UNDEFINED, /* {"__m_codec__":"Undefined"} */
	USPS__OPT_NULL,	     /* null */
	USPS__OPT_STRING,    /* a string */
	USPS__OPT_OTHER,     /* anything else */
};

/* The stamped and usual members of an event object, as raw spans. */
struct usps__event_fields {
	struct usps__span type; /* n == 0: absent */
	struct usps__span id;
	struct usps__span run_id;
	struct usps__span data;
	struct usps__span created_at;
	struct usps__span delivery_attempt;
};

/*
 * One parsed frame. Spans point into the line given to usps__wire_parse()
 * and are the raw JSON text of each top-level member (the last one wins if
 * a key repeats, as JSON.parse does).
 */
struct usps__frame {
	enum usps__frame_type type;
	struct usps__span topic; /* n == 0: absent */
	struct usps__span group; /* n == 0: absent */
	enum usps__opt_kind group_kind;
	struct usps__span event; /* n == 0: absent */
	bool local_only;	 /* "localOnly" is exactly true */
	/* If "event" is an object: its members, found in the same pass. */
	bool ev_known;
	struct usps__event_fields ev;
};

/*
 * usps__wire_parse() - parse one line (without its '\n'; surrounding JSON
 * whitespace such as a trailing '\r' is fine) into @f.
 * Returns 0 if the whole line is one valid JSON object (see
 * usps__json_validate()), with f->type USPS__F_UNKNOWN for a missing or
 * unknown "type"; -EPROTO for anything else (blank line, invalid JSON or
 * UTF-8, too deep, not an object), in which case Mastra drops the line.
 */
int usps__wire_parse(const char *line, size_t n, struct usps__frame *f);

/*
 * usps__wire_event_fields() - find the members above in the event object
 * @ev (already validated as part of its frame). Last occurrence wins.
 * Returns 0, or -EINVAL if @ev is not an object.
 */
int usps__wire_event_fields(struct usps__span ev, struct usps__event_fields *f);

/*
 * usps__wire_created_at_ms() - the time in @s as Unix milliseconds: either
 * the Date envelope {"__m_codec__":"Date","v":"<ISO-8601>"} or a bare ISO
 * string. Returns 0 and stores *ret_ms, or -EINVAL.
 */
int usps__wire_created_at_ms(struct usps__span s, int64_t *ret_ms);

/*
 * usps__iso8601_ms() - format @ms as JavaScript's toISOString() does,
 * "2026-11-25T00:16:50.065Z" (24 chars for years 0..9999; 27 with a
 * sign and six-digit year otherwise). Writes a NUL; @out holds 32.
 * Returns the length.
 */
size_t usps__iso8601_ms(char out[32], int64_t ms);

/*
 * usps__iso8601_parse() - parse the formats Date.parse() gives for
 * toISOString() output ("YYYY-MM-DDTHH:MM:SS(.sss)?Z", also with
 * +HH:MM / -HH:MM offsets, and +/-YYYYYY years). 0 or -EINVAL.
 */
int usps__iso8601_parse(const char *p, size_t n, int64_t *ret_ms);

/*
 * Source of UUID v4s: random bytes from OpenSSL's RAND_bytes() (the DRBG
 * behind Node's crypto.randomUUID()), drawn in blocks. Not thread-safe:
 * one per thread, or used under a lock.
 */
struct usps__uuidgen {
	uint8_t pool[16384]; /* one RAND_bytes() call per 1024 UUIDs */
	size_t pos;	     /* bytes used; sizeof(pool) means empty */
};
/*
 * usps__uuidgen_init() - an empty pool, and libcrypto initialised without
 * its exit handler (it would free the DRBG under an I/O thread still
 * running at exit()). Returns 0, or -ENOMEM if libcrypto could not start.
 */
int usps__uuidgen_init(struct usps__uuidgen *g);
/*
 * usps__rand_warm() - draw a few random bytes on the calling thread and
 * drop them. libcrypto sets a thread's DRBG up on its first draw; each
 * thread that may stamp events calls this when it starts, so that the setup
 * does not fall on the first event a new broker stamps, just after a
 * failover. Returns 0, or -EIO if RAND_bytes() failed (harmless: the next
 * draw tries again).
 */
int usps__rand_warm(void);
/*
 * usps__uuid4() - write a lowercase UUID v4, 36 chars plus NUL, to @out.
 * Returns 0, or -EIO if RAND_bytes() failed.
 */
int usps__uuid4(struct usps__uuidgen *g, char out[37]);

/*
 * Builders. Each appends exactly one frame, ending in '\n', to @b, and
 * returns 0 or -ENOMEM (with @b back at its old length). Key order and
 * spelling are those of a Node peer (spec §2.2, §2.3).
 */

/* {"type":"subscribe"|"unsubscribe","topic":T} or ...,"group":G} */
int usps__wire_put_membership(struct usps__buf *b, bool unsubscribe,
			      const char *topic, size_t topic_len,
			      const char *group,
			      size_t group_len /* group NULL: none */);

/*
 * {"type":"subscribed"|"unsubscribed","topic":<raw>[,"group":<raw>]}
 * Echoes a request's raw spans. An absent topic (n == 0) is written as the
 * Undefined envelope; an absent group (n == 0) is omitted.
 */
int usps__wire_put_ack(struct usps__buf *b, bool unsubscribe,
		       struct usps__span topic, struct usps__span group);

/*
 * {"type":"publish","topic":T,"event":{"type":Y[,"runId":R],"data":D
 * [,<extra members>]}}. @data is raw JSON (n == 0: null). @extra is a raw
 * JSON object whose members are spliced in (n == 0 or "{}": none).
 */
int usps__wire_put_publish(struct usps__buf *b, const char *topic,
			   size_t topic_len, const char *type, size_t type_len,
			   const char *run_id /* NULL: none */,
			   struct usps__span data, struct usps__span extra);

/*
 * The broker's stamped event frame, without its end:
 * {"type":"event","topic":<raw topic>,"event":{<publisher's members, in
 * order, with "id", "createdAt" and "deliveryAttempt" replaced in place where
 * present>,"id":"<uuid>","createdAt":{"__m_codec__":"Date","v":"<iso>"},
 * "deliveryAttempt":1}
 * (the stamped members not already present are appended in that order).
 * @event n == 0, null, a number or a boolean: stamped members only
 * ({"id":...}). An array spreads as {"0":e0,"1":e1,...} and a string as one
 * member per UTF-16 unit, as a JavaScript object spread does. The caller then
 * appends "}\n" for fan-out, or usps__wire_put_group_tail() for a group.
 */
int usps__wire_put_event_head(struct usps__buf *b, struct usps__span topic,
			      struct usps__span event, const char uuid[37],
			      int64_t created_ms);
/*
 * The same head for the publish frame @f as usps__wire_parse() gave it:
 * @f->topic and @f->event, faster when the parse found no stamped key in an
 * object event (the members are then copied in one run). Same returns.
 */
int usps__wire_put_frame_head(struct usps__buf *b, const struct usps__frame *f,
			      const char uuid[37], int64_t created_ms);

/* ,"group":<raw group>}\n */
int usps__wire_put_group_tail(struct usps__buf *b, struct usps__span group);

/*
 * Indexed frames. Between a usps broker and a usps client of the same uid
 * (after "usps.index"), each frame the broker sends is a record: the frame's
 * line, unchanged, behind a header that gives the spans a parse of it would
 * find, so that the client never scans the event. All integers are
 * little-endian:
 *
 *   u32 size   bytes after this field: the rest of the header, the line
 *              and its '\n'
 *   u8  kind   0: a plain frame (the reader parses the line);
 *              1: an event or publish frame, spans as u16 pairs;
 *              2: an event or publish frame, spans as u32 pairs
 *   u8  flags  USPS__IXF_EV_KNOWN, USPS__IXF_GROUP, USPS__IXF_PUBLISH
 *   u16 hlen   header bytes from the size field on: 8, 44 or 80
 *   spans      kinds 1, 2: USPS__IX_N (offset, length) pairs, relative
 *              to the line, in enum order; length 0: absent
 *   line, '\n'
 *
 * The client checks that every span lies in the line, and trusts the rest
 * (the broker validated the frame): indexed frames are only ever asked of a
 * broker of one's own uid. Nothing that reads the spans may assume more than
 * that: string spans are decoded with their quotes checked, createdAt is
 * validated before it is walked.
 *
 * The other way ("usps.records"), a client's publishes are records too,
 * indexed as it built them (usps_publish() validated the data). The broker
 * checks the spans the same way and trusts the rest, from a peer of its own
 * uid only: such a peer could ptrace it anyway. It then forwards the line
 * without scanning it.
 */
enum {
	USPS__IX_TOPIC,
	USPS__IX_GROUP,
	USPS__IX_EVENT,
	USPS__IX_TYPE,
	USPS__IX_ID,
	USPS__IX_RUN_ID,
	USPS__IX_DATA,
	USPS__IX_CREATED,
	USPS__IX_ATTEMPT,
	USPS__IX_N,
};
enum {
	USPS__IXF_EV_KNOWN = 1, /* the event's members are in the index */
	USPS__IXF_GROUP = 2,	/* the frame has a string "group" */
	USPS__IXF_PUBLISH = 4,	/* a publish frame (client to broker) */
};
#define USPS__REC_PLAIN 8
#define USPS__REC_NARROW (8 + USPS__IX_N * 4)
#define USPS__REC_WIDE (8 + USPS__IX_N * 8)

/* The spans of an event frame, as offsets into its line. */
struct usps__ix {
	uint32_t off[USPS__IX_N];
	uint32_t len[USPS__IX_N];
	uint8_t flags;
};

/*
 * usps__ix_from_frame() - the index of the event frame @f, parsed from
 * @line, whose "topic" is a string and "group" absent or a string.
 */
void usps__ix_from_frame(struct usps__ix *ix, const struct usps__frame *f,
			 const char *line);

/* The length of the header usps__rec_head() writes for these. */
static inline size_t usps__rec_hlen(size_t line_len, const struct usps__ix *ix)
{
	return !ix			? USPS__REC_PLAIN
	       : line_len <= UINT16_MAX ? USPS__REC_NARROW
					: USPS__REC_WIDE;
}

/*
 * usps__rec_head() - write the header of a record holding a line of
 * @line_len bytes (plus its '\n') to @out: an event's with @ix, a plain
 * frame's with @ix NULL. Returns the header's length (hlen, as
 * usps__rec_hlen() tells beforehand), at most USPS__REC_WIDE. The line
 * must be at most 4 GiB - 256 bytes. Best written where it stays: copied
 * soon after, a header built in small stores stalls the copy's wide loads.
 */
size_t usps__rec_head(uint8_t *out, size_t line_len, const struct usps__ix *ix);

/*
 * usps__rec_put_publish() - usps__wire_put_publish() as a record, with its
 * index (USPS__IXF_EV_KNOWN | USPS__IXF_PUBLISH: the topic, the event, its
 * type, runId and data) unless @extra has members, which leaves it plain.
 * Returns 0 or -ENOMEM (with @b back at its old length).
 */
int usps__rec_put_publish(struct usps__buf *b, const char *topic,
			  size_t topic_len, const char *type, size_t type_len,
			  const char *run_id, struct usps__span data,
			  struct usps__span extra);

/*
 * A plain record around a line built by one of the builders above:
 *	r = usps__rec_begin(b, &at);
 *	if (r == 0)
 *		r = usps__rec_end(b, at, usps__wire_put_membership(b, ...));
 * usps__rec_begin() appends room for the header and sets *ret_at to where
 * it starts: 0 or -ENOMEM. usps__rec_end() writes the header if @r is 0,
 * else puts @b back at @at and returns @r (-EINVAL if no line follows).
 */
int usps__rec_begin(struct usps__buf *b, size_t *ret_at);
int usps__rec_end(struct usps__buf *b, size_t at, int r);

/*
 * usps__rec_open() - read the record @rec of @n bytes, size field included
 * (as usps__reader_next_record() gives it). Sets *ret_line and *ret_len to
 * its line (without the '\n'). Returns 0 for a plain frame, or an event
 * without a usable index (parse the line then; @f may have been written),
 * 1 for an event frame, or a publish frame (USPS__IXF_PUBLISH), with @f
 * filled as usps__wire_parse() would fill it, or -EPROTO for a malformed
 * record (a bad header, a span out of the line).
 */
int usps__rec_open(const char *rec, size_t n, const char **ret_line,
		   size_t *ret_len, struct usps__frame *f);

/*
 * usps__wire_put_frame_head_ix() - usps__wire_put_frame_head(), and, when
 * @ix is not NULL, its index: the spans of the topic, the event and its
 * members, as offsets from @b->p + @line_start. Returns 1 if @ix was
 * filled, 0 if not (the members were rewritten, or the event is not an
 * object: the line goes out as a plain record, which the client parses),
 * or -ENOMEM.
 */
int usps__wire_put_frame_head_ix(struct usps__buf *b,
				 const struct usps__frame *f,
				 const char uuid[37], int64_t created_ms,
				 size_t line_start, struct usps__ix *ix);

#endif /* USPS_WIRE_H */
