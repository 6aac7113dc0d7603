/* SPDX-License-Identifier: MIT */
/*
 * Small shared helpers: a chained hash map with intrusive nodes (the
 * registry's keys and the broker's topics) and clocks.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

/* FNV-1a over 8-byte words, then a final avalanche (splitmix64). */
uint64_t usps__hash(const void *p, size_t n, uint64_t seed)
{
	const unsigned char *s = p;
	uint64_t h = 0xcbf29ce484222325ull ^ seed;

	while (n >= 8) {
		uint64_t w;

		memcpy(&w, s, 8);
		h = (h ^ w) * 0x100000001b3ull;
		s += 8;
		n -= 8;
	}
	while (n--)
		h = (h ^ *s++) * 0x100000001b3ull;
	h ^= h >> 30;
	h *= 0xbf58476d1ce4e5b9ull;
	h ^= h >> 27;
	h *= 0x94d049bb133111ebull;
	h ^= h >> 31;
	return h;
}

static int grow(struct hmap *m)
{
	size_t nb = m->nb ? m->nb * 2 : 16;
	struct hnode **b = calloc(nb, sizeof(*b));

	if (!b)
		return -ENOMEM;
	for (size_t i = 0; i < m->nb; i++) {
		struct hnode *n = m->b[i];

		while (n) {
			struct hnode *next = n->next;
			size_t j = n->hash & (nb - 1);

			n->next = b[j];
			b[j] = n;
			n = next;
		}
	}
	free(m->b);
	m->b = b;
	m->nb = nb;
	return 0;
}

int usps__hmap_add(struct hmap *m, struct hnode *node)
{
	size_t i;

	if (m->n >= m->nb) {
		int r = grow(m);

		if (r < 0 && m->nb == 0)
			return r;
		/* A failed growth only makes chains longer. */
	}
	i = node->hash & (m->nb - 1);
	node->next = m->b[i];
	m->b[i] = node;
	m->n++;
	return 0;
}

void usps__hmap_del(struct hmap *m, struct hnode *node)
{
	struct hnode **pp;

	if (!m->nb)
		return;
	for (pp = &m->b[node->hash & (m->nb - 1)]; *pp; pp = &(*pp)->next) {
		if (*pp == node) {
			*pp = node->next;
			m->n--;
			return;
		}
	}
}

struct hnode *usps__hmap_first(const struct hmap *m, uint64_t hash)
{
	struct hnode *n;

	if (!m->nb)
		return NULL;
	for (n = m->b[hash & (m->nb - 1)]; n; n = n->next)
		if (n->hash == hash)
			return n;
	return NULL;
}

struct hnode *usps__hmap_next(const struct hnode *node)
{
	struct hnode *n;

	for (n = node->next; n; n = n->next)
		if (n->hash == node->hash)
			return n;
	return NULL;
}

void usps__hmap_free(struct hmap *m)
{
	free(m->b);
	m->b = NULL;
	m->nb = 0;
	m->n = 0;
}

int64_t usps__now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t usps__wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
