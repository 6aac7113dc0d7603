/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the wire parser and the broker's frame builders: any
 * line is parsed; whatever parses is taken apart as the broker and a client
 * would, and every frame built from it must itself be valid JSON. Also
 * replayed over fuzz/corpus/wire/ as an ordinary test in every build.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_json(const struct usps__buf *b)
{
	/* Frames end in '\n'; the rest must be one valid JSON object. */
	if (b->len < 2 || b->p[b->len - 1] != '\n' ||
	    usps__json_is_object(b->p, b->len - 1) < 0)
		abort();
}

/*
 * The index the broker builds with the head must be what a parse of the
 * frame finds, and survive a record's header both ways.
 */
static void check_index(const struct usps__frame *f, const char uuid[37])
{
	struct usps__buf b = { 0 };
	struct usps__frame g, h;
	struct usps__ix ix, px;
	uint8_t head[USPS__REC_WIDE];
	const char *line;
	size_t len, hlen;
	int r;

	if (usps__json_kind(f->topic) != USPS__J_STRING)
		return;
	r = usps__wire_put_frame_head_ix(&b, f, uuid, 1700000000000, 0, &ix);
	if (r == 1 && usps__buf_put(&b, "}\n", 2) == 0) {
		if (usps__wire_parse(b.p, b.len - 1, &g) < 0)
			abort();
		usps__ix_from_frame(&px, &g, b.p);
		if (memcmp(&px, &ix, sizeof(ix)) != 0)
			abort();
		hlen = usps__rec_head(head, b.len - 1, &ix);
		if (usps__buf_reserve(&b, hlen) < 0)
			goto out;
		memmove(b.p + hlen, b.p, b.len);
		memcpy(b.p, head, hlen);
		b.len += hlen;
		if (usps__rec_open(b.p, b.len, &line, &len, &h) != 1 ||
		    line != b.p + hlen || len != b.len - hlen - 1)
			abort();
		usps__ix_from_frame(&px, &h, line);
		if (memcmp(&px, &ix, sizeof(ix)) != 0)
			abort();
	}
out:
	usps__buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char uuid[37] = "aa8f25e6-181c-40b4-934d-1542985e71d6";
	const char *line = (const char *)data;
	struct usps__buf b = { 0 };
	struct usps__frame f;
	struct usps__event_fields ef;
	int64_t ms;

	(void)usps__json_validate(line, size);
	if (usps__wire_parse(line, size, &f) < 0)
		return 0;
	if (usps__json_validate(line, size) < 0)
		abort(); /* parse and validate must agree */
	if (f.topic.n && usps__json_kind(f.topic) == USPS__J_STRING) {
		char *t = malloc(f.topic.n);
		size_t n;

		if (t && usps__json_string_decode(f.topic, t, &n) == 0) {
			if (n > f.topic.n ||
			    !usps__json_string_eq(f.topic, t, n))
				abort();
			if (usps__json_put_string(&b, t, n) == 0 &&
			    usps__json_validate(b.p, b.len) < 0)
				abort();
			b.len = 0;
		}
		free(t);
	}
	/* The head from the parse equals the one from the spans alone. */
	if (usps__wire_put_event_head(&b, f.topic, f.event, uuid,
				      1700000000000) == 0) {
		struct usps__buf b2 = { 0 };

		if (usps__wire_put_frame_head(&b2, &f, uuid, 1700000000000) ==
			    0 &&
		    (b2.len != b.len || memcmp(b2.p, b.p, b.len) != 0))
			abort();
		usps__buf_free(&b2);
	}
	b.len = 0;
	/* As the broker stamps a publish, and acks a membership. */
	if (usps__wire_put_event_head(
		    &b, f.topic.n ? f.topic : (struct usps__span){ "\"t\"", 3 },
		    f.event, uuid, 1700000000000) == 0) {
		size_t head = b.len;

		if (usps__buf_put(&b, "}\n", 2) == 0)
			check_json(&b);
		b.len = head;
		if (f.group_kind == USPS__OPT_STRING &&
		    usps__wire_put_group_tail(&b, f.group) == 0)
			check_json(&b);
	}
	b.len = 0;
	check_index(&f, uuid);
	if (usps__wire_put_ack(&b, f.type == USPS__F_UNSUBSCRIBE, f.topic,
			       f.group_kind == USPS__OPT_UNDEFINED
				       ? (struct usps__span){ 0 }
				       : f.group) == 0)
		check_json(&b);
	/* As a client takes an event apart: the fields found while parsing
	 * must be the ones a separate walk finds. */
	if (f.event.n && usps__wire_event_fields(f.event, &ef) == 0) {
		const struct usps__span *a = &f.ev.type, *w = &ef.type;

		if (!f.ev_known)
			abort();
		for (int i = 0; i < 6; i++)
			if (a[i].n != w[i].n || (a[i].n && a[i].p != w[i].p))
				abort();
		if (ef.created_at.n)
			(void)usps__wire_created_at_ms(ef.created_at, &ms);
	}
	usps__buf_free(&b);
	return 0;
}
