/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the line reader: the input is split into chunks (the
 * first byte picks the chunk size and limit) and fed through the reader;
 * the lines that come out must be exactly the input's lines, in order,
 * until the first over-long one. The same input is then read as records:
 * each must be the next size field and its bytes, and whatever a record
 * holds, opening it must give spans inside its line. Also replayed over
 * fuzz/corpus/frame/ in every build.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool inside(struct usps__span s, const char *line, size_t len)
{
	return !s.n ||
	       (s.p >= line && s.n <= len && (size_t)(s.p - line) <= len - s.n);
}

/* Open @rec as the client does; nothing it points at may lie outside. */
static void open_record(const char *rec, size_t n)
{
	struct usps__frame f;
	const char *line;
	size_t len;
	int k = usps__rec_open(rec, n, &line, &len, &f);

	if (k < 0)
		return;
	if (line < rec || len > n || (size_t)(line - rec) > n - len)
		abort();
	if (k == 1) {
		const struct usps__span *ev = &f.ev.type;

		if (!inside(f.topic, line, len) ||
		    !inside(f.group, line, len) || !inside(f.event, line, len))
			abort();
		for (int i = 0; i < 6; i++)
			if (!inside(ev[i], line, len))
				abort();
	}
}

/* Feed @r the next @chunk bytes of the input; false at its end. */
static bool feed(struct usps__reader *r, const char *in, size_t size,
		 size_t *pos, size_t chunk)
{
	size_t n = size - *pos < chunk ? size - *pos : chunk;

	if (*pos >= size || usps__reader_feed(r, in + *pos, n) < 0)
		return false;
	*pos += n;
	return true;
}

static void read_records(const char *in, size_t size, size_t chunk, size_t max)
{
	struct usps__reader r;
	size_t pos = 0, expect = 0;

	usps__reader_init(&r, max);
	while (feed(&r, in, size, &pos, chunk)) {
		const char *rec;
		size_t len;
		int k;

		while ((k = usps__reader_next_record(&r, &rec, &len)) == 1) {
			if (len < 4 || len > pos - expect ||
			    memcmp(rec, in + expect, len) != 0)
				abort();
			open_record(rec, len);
			expect += len;
		}
		if (k < 0)
			break;
	}
	usps__reader_free(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct usps__reader r;
	size_t chunk, max, pos = 0, expect = 1;
	const char *in;

	if (size < 1)
		return 0;
	chunk = (size_t)(data[0] & 0x0f) + 1;
	max = (size_t)(data[0] >> 4) * 8 + 1;
	in = (const char *)data + 1;
	size--;
	usps__reader_init(&r, max);
	expect = 0; /* offset in the input of the next expected line */
	while (feed(&r, in, size, &pos, chunk)) {
		const char *line;
		size_t len;
		int k;

		while ((k = usps__reader_next(&r, &line, &len)) == 1) {
			const char *nl =
				memchr(in + expect, '\n', size - expect);

			if (!nl || (size_t)(nl - (in + expect)) != len ||
			    memcmp(line, in + expect, len) != 0 || len > max)
				abort();
			expect += len + 1;
		}
		if (k < 0) {
			/* Only an over-long line may end it. */
			const char *nl =
				memchr(in + expect, '\n', pos - expect);
			size_t have = nl ? (size_t)(nl - (in + expect))
					 : pos - expect;

			if (have <= max)
				abort();
			break;
		}
	}
	usps__reader_free(&r);
	open_record(in, size);
	read_records(in, size, chunk, max);
	return 0;
}
