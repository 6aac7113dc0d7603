/* SPDX-License-Identifier: MIT */
/*
 * Replays a fuzz corpus without libFuzzer: linked with one fuzz/fuzz_*.c, it
 * feeds every file found in the directories (or the files) named on the
 * command line to LLVMFuzzerTestOneInput(), in name order, so that a corpus
 * is an ordinary regression test in every build, sanitized or not. A crash,
 * a sanitizer report or a hang fails the test; otherwise it ends with the
 * usual "N passed, 0 failed" line, N being the number of inputs.
 */
#include <dirent.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Optional in a fuzz target, as with libFuzzer. */
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

/* Read all of @path into a fresh buffer. 0, or -errno. */
static int slurp(const char *path, uint8_t **ret, size_t *ret_len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	size_t len = 0, cap = 0;
	int r = 0;

	if (!f)
		return -errno;
	for (;;) {
		size_t got;

		if (cap - len < 4096) {
			size_t ncap = cap ? cap * 2 : 65536;
			uint8_t *n = realloc(buf, ncap);

			if (!n) {
				r = -ENOMEM;
				goto close_file;
			}
			buf = n;
			cap = ncap;
		}
		got = fread(buf + len, 1, cap - len, f);
		len += got;
		if (got == 0) {
			if (ferror(f))
				r = -EIO;
			break;
		}
	}
close_file:
	(void)fclose(f);
	if (r < 0) {
		free(buf);
		return r;
	}
	*ret = buf;
	*ret_len = len;
	return 0;
}

/* Run one input. 0, or -errno if it could not be read. */
static int replay_file(const char *path)
{
	uint8_t *data = NULL;
	size_t len = 0;
	int r = slurp(path, &data, &len);

	if (r < 0) {
		(void)fprintf(stderr, "%s: %s\n", path, strerror(-r));
		return r;
	}
	/* Exactly @len bytes, as libFuzzer would pass them (no NUL added). */
	(void)LLVMFuzzerTestOneInput(len ? data : (const uint8_t *)"", len);
	free(data);
	return 0;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Replay every regular file in @dir, in name order. Adds to *count. */
static int replay_dir(const char *dir, unsigned long *count)
{
	DIR *d = opendir(dir);
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	int r = 0;

	if (!d) {
		r = -errno;
		(void)fprintf(stderr, "%s: %s\n", dir, strerror(-r));
		return r;
	}
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 64;
			char **nn = realloc(names, ncap * sizeof(*nn));

			if (!nn) {
				r = -ENOMEM;
				goto free_names;
			}
			names = nn;
			cap = ncap;
		}
		names[n] = strdup(de->d_name);
		if (!names[n]) {
			r = -ENOMEM;
			goto free_names;
		}
		n++;
	}
	if (n)
		qsort(names, n, sizeof(*names), cmp_names);
	for (size_t i = 0; i < n; i++) {
		size_t plen = strlen(dir) + strlen(names[i]) + 2;
		char *path = malloc(plen);
		struct stat st;

		if (!path) {
			r = -ENOMEM;
			goto free_names;
		}
		(void)snprintf(path, plen, "%s/%s", dir, names[i]);
		if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
			r = replay_file(path);
			if (r == 0)
				(*count)++;
		}
		free(path);
		if (r < 0)
			goto free_names;
	}
free_names:
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	(void)closedir(d);
	return r;
}

int main(int argc, char **argv)
{
	unsigned long count = 0;

	if (argc < 2) {
		(void)fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n",
			      argv[0]);
		return 2;
	}
	if (LLVMFuzzerInitialize)
		(void)LLVMFuzzerInitialize(&argc, &argv);
	for (int i = 1; i < argc; i++) {
		struct stat st;
		int r;

		if (stat(argv[i], &st) < 0) {
			(void)fprintf(stderr, "%s: %s\n", argv[i],
				      strerror(errno));
			return 1;
		}
		if (S_ISDIR(st.st_mode)) {
			r = replay_dir(argv[i], &count);
		} else {
			r = replay_file(argv[i]);
			if (r == 0)
				count++;
		}
		if (r < 0)
			return 1;
	}
	printf("%lu passed, 0 failed\n", count);
	return 0;
}
