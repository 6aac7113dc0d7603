/* SPDX-License-Identifier: MIT */
/*
 * The broker: accepted peers, the routing index (topic -> fan-out members
 * and consumer groups), and per-peer write queues with their byte cap.
 *
 * Each publish is stamped and encoded once, the fan-out frame and each
 * group's frame for its chosen member. A small frame is then copied to the
 * end of each receiver's queue, a large one queued as one chunk shared by
 * every receiver (frame.h, USPS__WQ_COPY_MAX). The broker itself takes
 * part as the peer "self" (id 0, no fd): its own subscriptions are
 * memberships like any other, so that it is first in every group's member
 * list, as Mastra's broker is.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "internal.h"

/* ---- the routing index ---- */

static struct btopic *topic_find(usps *ps, const char *name, size_t len)
{
	uint64_t h = usps__hash(name, len, ps->hash_seed);

	for (struct hnode *n = usps__hmap_first(&ps->topics, h); n;
	     n = usps__hmap_next(n)) {
		struct btopic *t = (struct btopic *)n;

		if (t->len == len && !memcmp(t->name, name, len))
			return t;
	}
	return NULL;
}

static struct btopic *topic_get(usps *ps, const char *name, size_t len)
{
	struct btopic *t = topic_find(ps, name, len);

	if (t)
		return t;
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->name = malloc(len + 1);
	if (!t->name) {
		free(t);
		return NULL;
	}
	memcpy(t->name, name, len);
	t->name[len] = '\0';
	t->len = len;
	t->node.hash = usps__hash(name, len, ps->hash_seed);
	if (usps__hmap_add(&ps->topics, &t->node) < 0) {
		free(t->name);
		free(t);
		return NULL;
	}
	ps->topics_gen++;
	return t;
}

static void group_free(struct bgroup *g)
{
	free(g->name);
	free(g->mem);
	free(g);
}

static void topic_maybe_free(usps *ps, struct btopic *t)
{
	if (t->nfan || t->ngroups)
		return;
	usps__hmap_del(&ps->topics, &t->node);
	ps->topics_gen++;
	free(t->fan);
	free(t->groups);
	free(t->name);
	free(t);
}

/* Insert @p into the id-ordered list @arr unless present. 1 added, 0 was
 * there, -ENOMEM. */
static int list_add(struct peer ***arr, size_t *n, size_t *cap, struct peer *p)
{
	size_t i;

	for (i = 0; i < *n; i++) {
		if ((*arr)[i] == p)
			return 0;
		if ((*arr)[i]->id > p->id)
			break;
	}
	if (*n == *cap) {
		size_t nc = *cap ? *cap * 2 : 4;
		struct peer **a = realloc(*arr, nc * sizeof(*a));

		if (!a)
			return -ENOMEM;
		*arr = a;
		*cap = nc;
	}
	memmove(*arr + i + 1, *arr + i, (*n - i) * sizeof(**arr));
	(*arr)[i] = p;
	(*n)++;
	return 1;
}

/* Remove @p from @arr keeping the order. 1 removed, 0 absent. */
static int list_del(struct peer **arr, size_t *n, struct peer *p)
{
	for (size_t i = 0; i < *n; i++) {
		if (arr[i] == p) {
			memmove(arr + i, arr + i + 1,
				(*n - i - 1) * sizeof(*arr));
			(*n)--;
			return 1;
		}
	}
	return 0;
}

static struct bgroup *group_find(struct btopic *t, const char *name, size_t len,
				 size_t *ret_idx)
{
	for (size_t i = 0; i < t->ngroups; i++) {
		struct bgroup *g = t->groups[i];

		if (g->len == len && !memcmp(g->name, name, len)) {
			if (ret_idx)
				*ret_idx = i;
			return g;
		}
	}
	return NULL;
}

static struct bgroup *group_get(struct btopic *t, const char *name, size_t len)
{
	struct bgroup *g = group_find(t, name, len, NULL);

	if (g)
		return g;
	if (t->ngroups == t->capgroups) {
		size_t nc = t->capgroups ? t->capgroups * 2 : 2;
		struct bgroup **a = realloc(t->groups, nc * sizeof(*a));

		if (!a)
			return NULL;
		t->groups = a;
		t->capgroups = nc;
	}
	g = calloc(1, sizeof(*g));
	if (!g)
		return NULL;
	g->name = malloc(len + 1);
	if (!g->name) {
		free(g);
		return NULL;
	}
	memcpy(g->name, name, len);
	g->name[len] = '\0';
	g->len = len;
	t->groups[t->ngroups++] = g;
	return g;
}

static void group_drop(struct btopic *t, size_t idx)
{
	group_free(t->groups[idx]);
	memmove(t->groups + idx, t->groups + idx + 1,
		(t->ngroups - idx - 1) * sizeof(*t->groups));
	t->ngroups--;
}

int usps__broker_member(usps *ps, struct peer *p, bool add, const char *topic,
			size_t tlen, const char *group, size_t glen)
{
	struct btopic *t;
	int r;

	if (!add) {
		size_t idx;
		struct bgroup *g;

		t = topic_find(ps, topic, tlen);
		if (!t)
			return 0;
		if (!group) {
			r = list_del(t->fan, &t->nfan, p);
		} else {
			g = group_find(t, group, glen, &idx);
			r = g ? list_del(g->mem, &g->n, p) : 0;
			/* The cursor goes with the last member (Mastra). */
			if (g && !g->n)
				group_drop(t, idx);
		}
		if (r > 0)
			p->nmem--;
		topic_maybe_free(ps, t);
		return 0;
	}
	t = topic_get(ps, topic, tlen);
	if (!t)
		return -ENOMEM;
	if (!group) {
		r = list_add(&t->fan, &t->nfan, &t->capfan, p);
	} else {
		struct bgroup *g = group_get(t, group, glen);

		r = g ? list_add(&g->mem, &g->n, &g->cap, p) : -ENOMEM;
		if (g && !g->n) {
			size_t idx = 0;

			if (group_find(t, group, glen, &idx))
				group_drop(t, idx);
		}
	}
	if (r > 0)
		p->nmem++;
	topic_maybe_free(ps, t);
	return r < 0 ? r : 0;
}

/* Remove every membership of @p (it is gone). */
static void drop_memberships(usps *ps, struct peer *p)
{
	for (size_t b = 0; b < ps->topics.nb && p->nmem; b++) {
		struct hnode *n = ps->topics.b[b];

		while (n && p->nmem) {
			struct btopic *t = (struct btopic *)n;

			n = n->next; /* t may be freed below */
			if (list_del(t->fan, &t->nfan, p))
				p->nmem--;
			for (size_t i = t->ngroups; i-- > 0;) {
				struct bgroup *g = t->groups[i];

				if (list_del(g->mem, &g->n, p))
					p->nmem--;
				if (!g->n)
					group_drop(t, i);
			}
			topic_maybe_free(ps, t);
		}
	}
}

int usps__broker_adopt_keys(usps *ps)
{
	for (size_t b = 0; b < ps->keys.nb; b++) {
		for (struct hnode *n = ps->keys.b[b]; n; n = n->next) {
			struct key *k = (struct key *)n;
			int r;

			if (!k->nsubs)
				continue;
			r = usps__broker_member(ps, &ps->self, true, k->topic,
						k->topic_len, k->group,
						k->group_len);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

/* ---- peers ---- */

static void intake_update(usps *ps);

static void set_congested(usps *ps, struct peer *p, bool on)
{
	if (p->congested == on)
		return;
	p->congested = on;
	if (on) {
		ps->ncongested++;
		p->progress_ms = usps__now_ms();
	} else {
		ps->ncongested--;
	}
	intake_update(ps);
}

static void peer_kill(usps *ps, struct peer *p)
{
	if (p->dead || p == &ps->self)
		return;
	p->dead = true;
	ps->reap_pending = true;
	set_congested(ps, p, false);
}

static void peer_free(usps *ps, struct peer *p)
{
	if (p->ring.hdr)
		usps__engine_unwatch_fd(ps, p->ring.space_fd);
	usps__ring_free(&p->ring);
	if (p->fd >= 0)
		close(p->fd);
	usps__reader_free(&p->rd);
	usps__wq_free(&p->wq);
	free(p);
}

void usps__broker_reap(usps *ps)
{
	size_t j = 0;

	if (!ps->reap_pending)
		return;
	ps->reap_pending = false;
	/* Dead peers may sit in the dirty list: unlink them first. */
	for (struct peer **pp = &ps->dirty; *pp;) {
		if ((*pp)->dead) {
			(*pp)->dirty = false;
			*pp = (*pp)->dirty_next;
		} else {
			pp = &(*pp)->dirty_next;
		}
	}
	for (size_t i = 0; i < ps->npeers; i++) {
		struct peer *p = ps->peers[i];

		if (!p->dead) {
			ps->peers[j++] = p;
			continue;
		}
		drop_memberships(ps, p);
		peer_free(ps, p);
	}
	ps->npeers = j;
	if (ps->flush_waiters)
		pthread_cond_broadcast(&ps->cond);
}

void usps__broker_reset(usps *ps)
{
	for (size_t i = 0; i < ps->npeers; i++)
		peer_kill(ps, ps->peers[i]);
	ps->reap_pending = true;
	usps__broker_reap(ps);
	free(ps->peers);
	ps->peers = NULL;
	ps->npeers = ps->cappeers = 0;
	/* Whatever is left are the broker's own memberships. */
	drop_memberships(ps, &ps->self);
	ps->self.nmem = 0;
	ps->dirty = NULL;
	ps->intake_paused = false;
}

static void mark_dirty(usps *ps, struct peer *p)
{
	if (p->dirty)
		return;
	p->dirty = true;
	p->dirty_next = ps->dirty;
	ps->dirty = p;
}

static void peer_flush(usps *ps, struct peer *p);

/*
 * One frame on its way to its receivers: its bytes as a record (wire.h),
 * the line after the record's header of @hlen bytes, and the chunk they
 * share once one receiver needs it (large frames only; see
 * USPS__WQ_COPY_MAX). An indexed peer gets the record, any other the line
 * alone. out_done() drops the chunk.
 */
struct out {
	const char *p;
	size_t n;
	size_t hlen;
	struct usps__chunk *c;
};

/* Frames are built this far into a buffer, leaving room for a header. */
#define LINE_AT ((size_t)USPS__REC_WIDE)

/* Empty ps->scratch for a frame built from LINE_AT on. 0 or -ENOMEM. */
static int scratch_start(usps *ps, size_t n)
{
	ps->scratch.len = 0;
	if (usps__buf_reserve(&ps->scratch, LINE_AT + n) < 0)
		return -ENOMEM;
	ps->scratch.len = LINE_AT;
	return 0;
}

/*
 * The frame built in @b from LINE_AT to its end ('\n' included), with the
 * record header for the index @ix (NULL: a plain frame) written in front.
 */
static struct out out_of(struct usps__buf *b, const struct usps__ix *ix)
{
	size_t line = b->len - LINE_AT - 1;
	size_t hlen = usps__rec_hlen(line, ix);

	(void)usps__rec_head((uint8_t *)b->p + LINE_AT - hlen, line, ix);
	return (struct out){ b->p + LINE_AT - hlen, hlen + line + 1, hlen,
			     NULL };
}

/* Bytes of @o that @p is sent. */
static size_t out_len(const struct out *o, const struct peer *p)
{
	return p->indexed ? o->n : o->n - o->hlen;
}

static int out_queue(struct peer *p, struct out *o)
{
	size_t skip = p->indexed ? 0 : o->hlen;

	if (o->n - skip <= USPS__WQ_COPY_MAX)
		return usps__wq_put(&p->wq, o->p + skip, o->n - skip);
	if (!o->c && !(o->c = usps__chunk_new(o->p, o->n)))
		return -ENOMEM;
	return usps__wq_push_at(&p->wq, o->c, skip);
}

static void out_done(struct out *o)
{
	usps__chunk_unref(o->c);
	o->c = NULL;
}

/*
 * Queue @o to @p. The cap is on bytes not yet written, so a queue about to
 * pass it is written out first; a peer still over it has stopped reading:
 * drop it.
 */
static void peer_send(usps *ps, struct peer *p, struct out *o)
{
	uint64_t cap = ps->opt.max_client_queued_bytes;
	size_t n = out_len(o, p);

	if (p->dead)
		return;
	/* Into the ring at once if nothing waits before it: one copy. */
	if (p->ring.hdr && usps__wq_empty(&p->wq)) {
		int r = usps__ring_put(&p->ring, o->p + (o->n - n), n);

		if (r == 0) {
			mark_dirty(ps, p);
			return;
		}
		if (r != -ENOSPC) {
			peer_kill(ps, p);
			return;
		}
	}
	if (p->wq.queued_bytes + n > cap) {
		peer_flush(ps, p);
		if (p->dead)
			return;
	}
	if (p->wq.queued_bytes + n > cap || out_queue(p, o) < 0) {
		peer_kill(ps, p);
		return;
	}
	if (p->wq.queued_bytes > cap / 2)
		set_congested(ps, p, true);
	mark_dirty(ps, p);
}

static void peer_events(usps *ps, struct peer *p)
{
	uint32_t ev = (ps->intake_paused ? 0 : EPOLLIN) |
		      (p->want_out ? EPOLLOUT : 0);

	(void)usps__engine_watch_fd(ps, p->fd, &p->ioh, ev, true);
}

static void set_out(usps *ps, struct peer *p, bool on)
{
	if (p->want_out == on)
		return;
	p->want_out = on;
	peer_events(ps, p);
}

static ssize_t ring_sink(void *arg, const struct iovec *iov, int n)
{
	return usps__ring_write(arg, iov, n);
}

/*
 * Move @p's queue into its ring. A full ring asks the reader for a
 * wake-up on space_fd (usps__broker_room()), unless room appeared while
 * it asked. What usps__wq_drain() returns.
 */
static int ring_flush(struct peer *p)
{
	int r;

	usps__ring_publish(&p->ring);
	do
		r = usps__wq_drain(&p->wq, ring_sink, &p->ring);
	while (r == -EAGAIN && usps__ring_wait_room(&p->ring));
	return r;
}

static void peer_flush(usps *ps, struct peer *p)
{
	uint64_t before = p->wq.written_total;
	int r = p->ring.hdr ? ring_flush(p) : usps__wq_flush(&p->wq, p->fd);

	if (p->wq.written_total != before)
		p->progress_ms = usps__now_ms();
	if (r == 0 || (r == -EAGAIN && p->ring.hdr))
		set_out(ps, p, false);
	else if (r == -EAGAIN)
		set_out(ps, p, true);
	else
		peer_kill(ps, p);
	if (p->congested &&
	    p->wq.queued_bytes <= ps->opt.max_client_queued_bytes / 4)
		set_congested(ps, p, false);
}

/* Start or stop reading every peer, as congestion requires. */
static void intake_update(usps *ps)
{
	bool pause = ps->ncongested > 0;

	if (pause == ps->intake_paused)
		return;
	ps->intake_paused = pause;
	for (size_t i = 0; i < ps->npeers; i++)
		if (!ps->peers[i]->dead)
			peer_events(ps, ps->peers[i]);
}

void usps__broker_flush_dirty(usps *ps)
{
	while (ps->dirty) {
		struct peer *p = ps->dirty;

		ps->dirty = p->dirty_next;
		p->dirty = false;
		if (!p->dead)
			peer_flush(ps, p);
	}
	if (ps->flush_waiters)
		pthread_cond_broadcast(&ps->cond);
}

/* ---- routing ---- */

/* Deliver the frame @o to the broker's own subscriptions: by its index
 * when it has one. */
static void self_deliver(usps *ps, const struct out *o)
{
	struct usps__frame f;
	const char *line;
	size_t n;
	int r = usps__rec_open(o->p, o->n, &line, &n, &f);

	if (r == 1 || (r == 0 && usps__wire_parse(line, n, &f) == 0))
		(void)usps__deliver_line(ps, line, n, &f);
}

static void send_to(usps *ps, struct peer *p, struct out *o)
{
	if (p == &ps->self)
		self_deliver(ps, o);
	else
		peer_send(ps, p, o);
}

/*
 * The frame of the head in ps->scratch[LINE_AT..head), indexed by @ix
 * (NULL: none), plus the tail for @group, built in ps->scratch after the
 * head: valid until the next make_out(). 0 or -ENOMEM.
 */
static int make_out(usps *ps, size_t head, const struct usps__ix *ix,
		    struct usps__span group, struct out *o)
{
	static const char gkey[] = ",\"group\":";
	struct usps__ix gix;
	int r;

	*o = (struct out){ 0 };
	ps->scratch.len = head;
	r = group.n ? usps__wire_put_group_tail(&ps->scratch, group)
		    : usps__buf_put(&ps->scratch, "}\n", 2);
	if (r >= 0) {
		if (ix && group.n) {
			gix = *ix;
			gix.off[USPS__IX_GROUP] =
				(uint32_t)(head - LINE_AT + sizeof(gkey) - 1);
			gix.len[USPS__IX_GROUP] = (uint32_t)group.n;
			gix.flags |= USPS__IXF_GROUP;
			ix = &gix;
		}
		*o = out_of(&ps->scratch, ix);
	}
	ps->scratch.len = head;
	return r;
}

static bool is_member(struct peer **arr, size_t n, const struct peer *p)
{
	for (size_t i = 0; i < n; i++)
		if (arr[i] == p)
			return true;
	return false;
}

void usps__broker_publish(usps *ps, struct peer *from,
			  const struct usps__frame *f)
{
	char small[256], *topic = small;
	const char *name;
	struct usps__buf gname = { 0 };
	struct btopic *t;
	struct usps__ix ix, *ixp;
	struct out o;
	char uuid[37];
	size_t tlen, head;
	void *found;
	int r;

	if (usps__last_hit(&ps->tc, ps->topics_gen, f->topic, &found)) {
		t = found;
	} else {
		r = usps__json_string_view(f->topic, &name, &tlen);
		if (r < 0)
			return;
		if (r == 0) {
			if (f->topic.n > sizeof(small)) {
				topic = malloc(f->topic.n);
				if (!topic)
					return;
			}
			if (usps__json_string_decode(f->topic, topic, &tlen) <
			    0)
				goto out;
			name = topic;
		}
		t = topic_find(ps, name, tlen);
		usps__last_put(&ps->tc, ps->topics_gen, f->topic, t);
	}
	if (!t)
		goto out;
	if (usps__uuid4(&ps->uuid, uuid) < 0)
		goto out;
	/* Room for a record header first; an event the head could not index
	 * goes to indexed peers as a plain record (they parse it). */
	if (scratch_start(ps, 0) < 0)
		goto out;
	r = usps__wire_put_frame_head_ix(
		&ps->scratch, f, uuid,
		ps->stamp_ms ? ps->stamp_ms : usps__wall_ms(), LINE_AT, &ix);
	if (r < 0)
		goto out;
	ixp = r == 1 ? &ix : NULL;
	head = ps->scratch.len;

	if (f->local_only) {
		/* Legacy client localOnly: the broker's own fan-out and an
		 * echo to the sender only (spec §2.2). */
		if (!t->nfan)
			goto out;
		if (make_out(ps, head, ixp, (struct usps__span){ 0 }, &o) < 0)
			goto out;
		if (is_member(t->fan, t->nfan, &ps->self))
			self_deliver(ps, &o);
		if (from != &ps->self && is_member(t->fan, t->nfan, from))
			peer_send(ps, from, &o);
		out_done(&o);
		goto out;
	}
	if (t->nfan) {
		if (make_out(ps, head, ixp, (struct usps__span){ 0 }, &o) < 0)
			goto out;
		/* send_to may drop peers (marked dead, freed later), and the
		 * broker's handlers never run here, so t stays valid. */
		for (size_t i = 0; i < t->nfan; i++)
			send_to(ps, t->fan[i], &o);
		out_done(&o);
	}
	for (size_t i = 0; i < t->ngroups; i++) {
		struct bgroup *g = t->groups[i];
		struct peer *p = NULL;
		size_t live = 0, pick;

		for (size_t j = 0; j < g->n; j++)
			live += !g->mem[j]->dead;
		if (!live)
			continue;
		pick = g->cursor % live;
		g->cursor = (pick + 1) % live;
		for (size_t j = 0; j < g->n; j++) {
			if (g->mem[j]->dead)
				continue;
			if (!pick--) {
				p = g->mem[j];
				break;
			}
		}
		gname.len = 0;
		if (usps__json_put_string(&gname, g->name, g->len) < 0)
			continue;
		if (make_out(ps, head, ixp,
			     (struct usps__span){ gname.p, gname.len }, &o) < 0)
			continue;
		send_to(ps, p, &o);
		out_done(&o);
	}
out:
	usps__buf_free(&gname);
	if (topic != small)
		free(topic);
}

/* ---- frames from peers ---- */

static void send_ack(usps *ps, struct peer *p, const struct usps__frame *f,
		     bool unsub)
{
	struct usps__span group = f->group;
	struct out o;

	/* The ack echoes "group" unless it was absent or undefined. */
	if (f->group_kind == USPS__OPT_UNDEFINED)
		group.n = 0;
	if (scratch_start(ps, 0) < 0 ||
	    usps__wire_put_ack(&ps->scratch, unsub, f->topic, group) < 0)
		return;
	o = out_of(&ps->scratch, NULL);
	peer_send(ps, p, &o);
	out_done(&o);
}

static void membership(usps *ps, struct peer *p, const struct usps__frame *f,
		       bool unsub)
{
	char tsmall[256], gsmall[256], *topic = tsmall, *group = NULL;
	size_t tlen, glen = 0;

	if (usps__json_kind(f->topic) != USPS__J_STRING)
		goto ack; /* keyed by a non-string: nothing can match it */
	if (f->group_kind == USPS__OPT_OTHER)
		goto ack;
	if (f->topic.n > sizeof(tsmall) && !(topic = malloc(f->topic.n)))
		goto ack;
	if (usps__json_string_decode(f->topic, topic, &tlen) < 0)
		goto ack;
	if (f->group_kind == USPS__OPT_STRING) {
		group = f->group.n > sizeof(gsmall) ? malloc(f->group.n)
						    : gsmall;
		if (!group ||
		    usps__json_string_decode(f->group, group, &glen) < 0)
			goto ack;
	}
	if (!unsub && p->nmem >= ps->opt.max_memberships_per_client)
		goto ack; /* over the cap: acknowledged, not recorded */
	(void)usps__broker_member(ps, p, !unsub, topic, tlen, group, glen);
ack:
	send_ack(ps, p, f, unsub);
	if (topic != tsmall)
		free(topic);
	if (group != gsmall)
		free(group);
}

/* Send @p the frame @line of @n bytes ('\n' included). */
static void send_line(usps *ps, struct peer *p, const char *line, size_t n)
{
	struct out o;

	if (scratch_start(ps, n) < 0)
		return;
	(void)usps__buf_put(&ps->scratch, line, n);
	o = out_of(&ps->scratch, NULL);
	peer_send(ps, p, &o);
	out_done(&o);
}

/* Answer a "usps.status" request (clients other than the asker). */
static void send_status(usps *ps, struct peer *p)
{
	char iso[32], line[384];
	int n;

	(void)usps__iso8601_ms(iso, ps->broker_since_ms);
	n = snprintf(line, sizeof(line),
		     "{\"type\":\"usps.status\",\"pid\":%ld,\"uid\":%lu,"
		     "\"clients\":%zu,\"brokerSinceMs\":%lld,"
		     "\"brokerSince\":\"%s\",\"version\":\"%s\"}\n",
		     (long)getpid(), (unsigned long)ps->uid,
		     ps->npeers ? ps->npeers - 1 : 0,
		     (long long)ps->broker_since_ms, iso, USPS_VERSION_STRING);
	if (n < 0 || (size_t)n >= sizeof(line))
		return;
	send_line(ps, p, line, (size_t)n);
}

/*
 * A usps client of our uid asks for indexed frames: say yes (in the old
 * framing), send it records from then on, and offer to take records from
 * it ("usps.records"). Another uid's request is ignored: the client would
 * not have asked (wire.h).
 */
static void start_index(usps *ps, struct peer *p)
{
	static const char yes[] = "{\"type\":\"usps.index\"}\n";
	static const char offer[] = "{\"type\":\"usps.records\"}\n";

	if (p->indexed || p->uid != ps->uid)
		return;
	send_line(ps, p, yes, sizeof(yes) - 1);
	p->indexed = true;
	send_line(ps, p, offer, sizeof(offer) - 1);
}

/*
 * @p asks for a ring ("usps.ring", wire.h). It gets one if its socket
 * takes all that is queued for it and then the answer with the ring's
 * descriptors, in one call; otherwise it is not answered and the socket
 * carries on (a socket error is found by the next flush). Everything after
 * the answer goes into the ring. An answer cut short (the client took its
 * descriptors but not all of the line) is a client not reading a socket
 * just emptied: dropped.
 */
static void start_ring(usps *ps, struct peer *p)
{
	static const char yes[] = "{\"type\":\"usps.ring\"}\n";
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int) * USPS__RING_FDS)];
	} ctl = { 0 };
	struct iovec iov;
	struct msghdr mh = { .msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = ctl.b,
			     .msg_controllen = sizeof(ctl.b) };
	struct cmsghdr *c;
	int fds[USPS__RING_FDS];
	struct out o;
	ssize_t w;

	if (p->ring_asked || !p->indexed || p->uid != ps->uid ||
	    !ps->opt.shm_ring_bytes)
		return;
	p->ring_asked = true;
	/* Errors are left to the next flush: the lines read with this one
	 * are routed first (a publisher may have sent them and gone). */
	if (p->dead || usps__wq_flush(&p->wq, p->fd) != 0 ||
	    usps__ring_create(&p->ring, ps->opt.shm_ring_bytes, fds) < 0)
		return;
	if (scratch_start(ps, sizeof(yes) - 1) < 0)
		goto no_ring;
	(void)usps__buf_put(&ps->scratch, yes, sizeof(yes) - 1);
	o = out_of(&ps->scratch, NULL);
	iov = (struct iovec){ .iov_base = (void *)o.p, .iov_len = o.n };
	c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(c), fds, sizeof(fds));
	do
		w = sendmsg(p->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
	while (w < 0 && errno == EINTR);
	if (w < 0)
		goto no_ring;
	if ((size_t)w < o.n ||
	    usps__engine_watch_fd(ps, p->ring.space_fd, &p->room.ioh, EPOLLIN,
				  false) < 0) {
		peer_kill(ps, p);
		goto no_ring;
	}
	(void)close(fds[0]);
	return;

no_ring:
	(void)close(fds[0]);
	usps__ring_free(&p->ring);
}

void usps__broker_room(usps *ps, struct peer *p)
{
	if (p->dead || !p->ring.hdr)
		return;
	usps__ring_clear(p->ring.space_fd);
	peer_flush(ps, p);
}

static void handle_line(usps *ps, struct peer *p, const char *line, size_t n)
{
	struct usps__frame f;

	if (usps__wire_parse(line, n, &f) < 0)
		return; /* malformed lines are dropped; the peer stays */
	switch (f.type) {
	case USPS__F_SUBSCRIBE:
		membership(ps, p, &f, false);
		break;
	case USPS__F_UNSUBSCRIBE:
		membership(ps, p, &f, true);
		break;
	case USPS__F_PUBLISH:
		usps__broker_publish(ps, p, &f);
		break;
	case USPS__F_STATUS:
		send_status(ps, p);
		break;
	case USPS__F_INDEX:
		start_index(ps, p);
		break;
	case USPS__F_RECORDS:
		/* Only from a peer we offered it to: records follow. */
		if (p->indexed && p->uid == ps->uid)
			p->rec_in = true;
		break;
	case USPS__F_RING:
		start_ring(ps, p);
		break;
	default:
		break; /* acks, nacks, events, unknown: ignored */
	}
}

/*
 * One record from @p (after its "usps.records"): a publish indexed by its
 * sender is routed by that index, anything else parsed as a line. 0, or
 * -EPROTO for a broken record.
 */
static int handle_record(usps *ps, struct peer *p, const char *rec, size_t n)
{
	struct usps__frame f;
	const char *line;
	size_t len;
	int r = usps__rec_open(rec, n, &line, &len, &f);

	if (r == 1 && f.type == USPS__F_PUBLISH) {
		/* Its line goes to line peers as is: it must be one line. */
		if (memchr(line, '\n', len))
			return -EPROTO;
		usps__broker_publish(ps, p, &f);
	} else if (r == 0) {
		handle_line(ps, p, line, len);
	}
	return r < 0 ? r : 0;
}

void usps__broker_route_own(usps *ps, const char *rec, size_t n)
{
	struct usps__frame f;
	const char *line;
	size_t len;
	int r = usps__rec_open(rec, n, &line, &len, &f);

	if (r == 0 && usps__wire_parse(line, len, &f) < 0)
		return;
	if (r >= 0 && f.type == USPS__F_PUBLISH)
		usps__broker_publish(ps, &ps->self, &f);
}

/* Handle the complete frames @p has sent, until intake closes. */
static void peer_lines(usps *ps, struct peer *p)
{
	const char *line;
	size_t n;
	int r;

	p->has_lines = false;
	while (!p->dead) {
		if (!usps__broker_intake_open(ps)) {
			p->has_lines = true;
			return;
		}
		if (p->rec_in) {
			r = usps__reader_next_record(&p->rd, &line, &n);
			if (r == 1 && handle_record(ps, p, line, n) < 0)
				r = -EPROTO;
		} else {
			r = usps__reader_next(&p->rd, &line, &n);
			if (r == 1)
				handle_line(ps, p, line, n);
		}
		if (r == 0)
			return;
		if (r < 0) {
			peer_kill(ps, p); /* oversized frame, broken record */
			return;
		}
	}
}

void usps__broker_peer_io(usps *ps, struct peer *p, uint32_t events)
{
	if (p->dead)
		return;
	if ((events & EPOLLOUT) && !p->dead)
		peer_flush(ps, p);
	/* A hang-up is read even while intake is paused, to reap the peer. */
	if ((events & (EPOLLHUP | EPOLLERR)) ||
	    ((events & EPOLLIN) && !p->has_lines &&
	     usps__broker_intake_open(ps))) {
		/* A few reads per turn, so that one busy peer cannot starve
		 * the others. */
		for (int i = 0; i < 4 && !p->dead && !p->has_lines; i++) {
			ssize_t got = usps__reader_fill(&p->rd, p->fd);

			if (got == -EAGAIN)
				break;
			if (got <= 0) {
				peer_kill(ps, p);
				return;
			}
			/* The frames of one read arrived together: one clock
			 * reading stamps them all. */
			ps->stamp_ms = usps__wall_ms();
			peer_lines(ps, p);
			ps->stamp_ms = 0;
		}
	}
}

void usps__broker_tick(usps *ps)
{
	int64_t now = usps__now_ms();

	if (ps->ncongested) {
		for (size_t i = 0; i < ps->npeers; i++) {
			struct peer *p = ps->peers[i];

			if (p->congested && !p->dead &&
			    now - p->progress_ms >= USPS__STALL_MS)
				peer_kill(ps, p); /* it stopped reading */
		}
	}
	/* Lines read before intake closed wait for it to open again; no
	 * new data may come to wake us for them. */
	for (size_t i = 0; i < ps->npeers && usps__broker_intake_open(ps); i++)
		if (ps->peers[i]->has_lines && !ps->peers[i]->dead)
			peer_lines(ps, ps->peers[i]);
}

struct peer *usps__broker_add_peer(usps *ps, int fd, pid_t pid, uid_t uid)
{
	struct peer *p;

	if (ps->npeers == ps->cappeers) {
		size_t nc = ps->cappeers ? ps->cappeers * 2 : 8;
		struct peer **a = realloc(ps->peers, nc * sizeof(*a));

		if (!a)
			return NULL;
		ps->peers = a;
		ps->cappeers = nc;
	}
	p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->ioh.kind = IOH_PEER;
	p->room.ioh.kind = IOH_PEER_ROOM;
	p->room.peer = p;
	usps__ring_init(&p->ring);
	p->id = ++ps->next_peer_id;
	p->fd = fd;
	p->pid = pid;
	p->uid = uid;
	usps__reader_init(&p->rd, ps->opt.max_inbound_frame_bytes);
	usps__wq_init(&p->wq);
	if (usps__engine_watch_fd(ps, fd, &p->ioh,
				  ps->intake_paused ? 0 : EPOLLIN, false) < 0) {
		p->fd = -1; /* the caller still owns it */
		peer_free(ps, p);
		return NULL;
	}
	ps->peers[ps->npeers++] = p;
	return p;
}

int usps__broker_accept(usps *ps, int lfd)
{
	for (;;) {
		struct ucred cred;
		socklen_t len = sizeof(cred);
		int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return errno == EAGAIN ? 0 : -errno;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
		    ps->npeers >= ps->opt.max_clients) {
			close(fd);
			continue;
		}
		if (!usps__peer_allowed(ps, cred.uid, cred.gid)) {
			/* Say why before closing, so that a usps client stops
			 * retrying; best effort, never blocking. */
			static const char refused[] =
				"{\"type\":\"usps.refused\",\"reason\":\"uid\"}\n";

			(void)send(fd, refused, sizeof(refused) - 1,
				   MSG_NOSIGNAL | MSG_DONTWAIT);
			close(fd);
			continue;
		}
		if (!usps__broker_add_peer(ps, fd, cred.pid, cred.uid))
			close(fd);
	}
}
