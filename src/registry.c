/* SPDX-License-Identifier: MIT */
/*
 * The local registry: this process's subscriptions, grouped by the
 * (topic, group) key the broker knows them by. It decides which local
 * handlers an incoming event frame goes to: every fan-out subscription of
 * its topic, or one member of its group in round-robin order.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static uint64_t key_hash(const usps *ps, const char *topic, size_t tlen,
			 const char *group, size_t glen)
{
	uint64_t h = usps__hash(topic, tlen, ps->hash_seed);

	if (group)
		h ^= usps__hash(group, glen, ps->hash_seed + 1) * 31 + 1;
	return h;
}

struct key *usps__key_find(usps *ps, const char *topic, size_t tlen,
			   const char *group, size_t glen)
{
	uint64_t h = key_hash(ps, topic, tlen, group, glen);

	for (struct hnode *n = usps__hmap_first(&ps->keys, h); n;
	     n = usps__hmap_next(n)) {
		struct key *k = (struct key *)n;

		if (k->topic_len != tlen || memcmp(k->topic, topic, tlen))
			continue;
		if (!group != !k->group)
			continue;
		if (group &&
		    (k->group_len != glen || memcmp(k->group, group, glen)))
			continue;
		return k;
	}
	return NULL;
}

static char *dup_bytes(const char *p, size_t n)
{
	char *s = malloc(n + 1);

	if (s) {
		memcpy(s, p, n);
		s[n] = '\0';
	}
	return s;
}

struct key *usps__key_get(usps *ps, const char *topic, size_t tlen,
			  const char *group, size_t glen)
{
	struct key *k = usps__key_find(ps, topic, tlen, group, glen);

	if (k)
		return k;
	k = calloc(1, sizeof(*k));
	if (!k)
		return NULL;
	k->topic = dup_bytes(topic, tlen);
	k->topic_len = tlen;
	if (group) {
		k->group = dup_bytes(group, glen);
		k->group_len = glen;
	}
	if (!k->topic || (group && !k->group))
		goto fail;
	k->node.hash = key_hash(ps, topic, tlen, group, glen);
	if (usps__hmap_add(&ps->keys, &k->node) < 0)
		goto fail;
	ps->keys_gen++;
	return k;
fail:
	free(k->topic);
	free(k->group);
	free(k);
	return NULL;
}

void usps__key_release(usps *ps, struct key *k)
{
	if (k->nsubs || k->waiters)
		return;
	usps__hmap_del(&ps->keys, &k->node);
	ps->keys_gen++;
	free(k->topic);
	free(k->group);
	free(k);
}

void usps__registry_free(usps *ps)
{
	for (size_t b = 0; b < ps->keys.nb; b++) {
		struct hnode *n = ps->keys.b[b];

		while (n) {
			struct key *k = (struct key *)n;

			n = n->next;
			while (k->subs) {
				struct usps_sub *s = k->subs;

				k->subs = s->next;
				usps__sub_unref(s);
			}
			free(k->topic);
			free(k->group);
			free(k);
		}
	}
	usps__hmap_free(&ps->keys);
	ps->keys_gen++;
}

void usps__sub_unref(struct usps_sub *s)
{
	if (s && atomic_fetch_sub(&s->refs, 1) == 1)
		free(s);
}

void usps__sub_dl_ref(struct usps_sub *s)
{
	if (s->dl_refs++ == 0)
		atomic_fetch_add(&s->refs, 1);
}

void usps__sub_dl_unref(struct usps_sub *s)
{
	if (--s->dl_refs == 0)
		usps__sub_unref(s);
}

/* A decoded name: the literal's own bytes when it has no escape, else
 * decoded into a stack buffer or, if large, the heap. */
struct dec {
	char small[256];
	const char *p;
	char *own; /* small, allocated, or NULL */
	size_t n;
};

static int dec_string(struct dec *d, struct usps__span s)
{
	int r = usps__json_string_view(s, &d->p, &d->n);

	if (r)
		return r < 0 ? -EINVAL : 0;
	d->own = s.n <= sizeof(d->small) ? d->small : malloc(s.n);
	if (!d->own)
		return -ENOMEM;
	if (usps__json_string_decode(s, d->own, &d->n) < 0) {
		if (d->own != d->small)
			free(d->own);
		d->own = NULL;
		return -EINVAL;
	}
	d->p = d->own;
	return 0;
}

static void dec_free(struct dec *d)
{
	if (d->own && d->own != d->small)
		free(d->own);
	d->own = NULL;
	d->p = NULL;
}

int usps__deliver_line(usps *ps, const char *line, size_t len,
		       const struct usps__frame *f)
{
	struct usps_sub *stack[16], **subs = stack;
	/* No initialiser: it would clear both small buffers per event. */
	struct dec topic, group;
	struct key *k;
	size_t n = 0;
	int r = 0;

	/* A name that is not a string (its decode would fail too). */
	if (f->topic.n < 2 || f->topic.p[0] != '"')
		return 0;
	topic.own = group.own = NULL;
	if (f->group_kind == USPS__OPT_STRING) {
		r = dec_string(&topic, f->topic);
		if (r == 0)
			r = dec_string(&group, f->group);
		if (r < 0)
			goto out;
		k = usps__key_find(ps, topic.p, topic.n, group.p, group.n);
		if (!k || !k->nsubs)
			goto out;
		struct usps_sub *s = k->subs;

		for (size_t i = k->cursor % k->nsubs; i; i--)
			s = s->next;
		k->cursor = (k->cursor % k->nsubs) + 1;
		usps__sub_dl_ref(s);
		subs[n++] = s;
	} else if (f->group_kind == USPS__OPT_ABSENT) {
		void *found;

		if (usps__last_hit(&ps->kc, ps->keys_gen, f->topic, &found)) {
			k = found;
		} else {
			r = dec_string(&topic, f->topic);
			if (r < 0)
				goto out;
			k = usps__key_find(ps, topic.p, topic.n, NULL, 0);
			usps__last_put(&ps->kc, ps->keys_gen, f->topic, k);
		}
		if (!k || !k->nsubs)
			goto out;
		if (k->nsubs > sizeof(stack) / sizeof(stack[0])) {
			subs = malloc(k->nsubs * sizeof(*subs));
			if (!subs) {
				r = -ENOMEM;
				goto out;
			}
		}
		for (struct usps_sub *s = k->subs; s; s = s->next) {
			usps__sub_dl_ref(s);
			subs[n++] = s;
		}
	} else {
		return 0; /* "group":null reaches nobody, as in Node */
	}
	r = usps__dl_push(ps, line, len, f, subs, n);
	if (r < 0)
		for (size_t i = 0; i < n; i++)
			usps__sub_dl_unref(subs[i]);
out:
	if (subs != stack)
		free(subs);
	dec_free(&topic);
	dec_free(&group);
	/* A name that is not a valid string reaches nobody. */
	return r == -ENOMEM ? r : 0;
}
