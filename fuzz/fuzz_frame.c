/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the line reader: the input is split into chunks (the
 * first byte picks the chunk size and limit) and fed through the reader;
 * the lines that come out must be exactly the input's lines, in order,
 * until the first over-long one. Also replayed over fuzz/corpus/frame/ in
 * every build.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
	while (pos < size) {
		size_t n = size - pos < chunk ? size - pos : chunk;
		const char *line;
		size_t len;
		int k;

		if (usps__reader_feed(&r, in + pos, n) < 0)
			break;
		pos += n;
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
	return 0;
}
