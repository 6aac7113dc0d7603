/* SPDX-License-Identifier: MIT */
/*
 * The delivery thread: calls handlers one at a time, in the order events
 * arrived, and redelivers nacked events to the same handler after
 * 100*k ms at attempt k, as Mastra does. A slow handler therefore delays
 * only this process's own deliveries, never the I/O thread or the broker.
 *
 * Each event is copied once, with its strings decoded, into a shared
 * dl_event; every usps_delivery of it (one per receiving subscription, and
 * one per redelivery) holds a reference.
 *
 * Deliveries are made and freed under ps->lock, never by the delivery
 * thread alone: their references to events and subscriptions are then
 * plain counts, where atomic ones cost several per delivery.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

struct dl_event {
	unsigned refs; /* under ps->lock */
	uint8_t cls;   /* size class for the cache (DL_CLASSES: none) */
	struct dl_event *cnext; /* in the cache */
	size_t bytes;
	usps_event ev; /* delivery_attempt and group set per call */
	uint32_t wire_attempt;
	/* The first delivery lives here: one allocation per event in the
	 * common case of one receiving subscription. */
	struct usps_delivery first;
	char buf[];
};

/*
 * Events are kept for reuse when freed, per size class, up to
 * DL_CACHE_BYTES in all: in steady state an event costs no malloc() and
 * free(), and large ones do not fault their pages in again each time
 * (glibc hands a freed heap top back to the kernel). Like the deliveries,
 * the cache is used under ps->lock only.
 */
#define DL_MIN_SHIFT 9 /* 512 bytes */
#define DL_CLASSES USPS__DL_CLASSES
#define DL_CACHE_BYTES (8u << 20)

static size_t class_size(unsigned cls)
{
	return (size_t)1 << (cls + DL_MIN_SHIFT);
}

/* An event of @size bytes in all, its header zeroed. */
static struct dl_event *ev_alloc(usps *ps, size_t size)
{
	unsigned cls = 0;
	struct dl_event *e;

	while (cls < DL_CLASSES && class_size(cls) < size)
		cls++;
	if (cls == DL_CLASSES) {
		e = malloc(size);
	} else if ((e = ps->ev_cache[cls])) {
		ps->ev_cache[cls] = e->cnext;
		ps->ev_cache_bytes -= class_size(cls);
	} else {
		e = malloc(class_size(cls));
	}
	if (e) {
		memset(e, 0, sizeof(*e));
		e->cls = (uint8_t)cls;
	}
	return e;
}

/* Free @e, into the cache if there is room. */
static void ev_free(usps *ps, struct dl_event *e)
{
	if (e->cls < DL_CLASSES &&
	    ps->ev_cache_bytes + class_size(e->cls) <= DL_CACHE_BYTES) {
		e->cnext = ps->ev_cache[e->cls];
		ps->ev_cache[e->cls] = e;
		ps->ev_cache_bytes += class_size(e->cls);
		return;
	}
	free(e);
}

/* Decode string span @s into @*pos (advancing it); NULL if not a string
 * (the decode checks the quotes: nothing else is a string). */
static const char *put_str(struct usps__span s, char **pos, size_t *ret_len)
{
	char *out = *pos;
	size_t n;

	if (usps__json_string_decode(s, out, &n) < 0) {
		if (ret_len)
			*ret_len = 0;
		return NULL;
	}
	out[n] = '\0';
	*pos = out + n + 1;
	if (ret_len)
		*ret_len = n;
	return out;
}

static uint32_t parse_attempt(struct usps__span s)
{
	uint64_t v = 0;

	/* Only digits count: anything else (absent, another kind, signs,
	 * fractions, exponents) is attempt 1. */
	for (size_t i = 0; i < s.n; i++) {
		if (s.p[i] < '0' || s.p[i] > '9')
			return 1; /* fractions, exponents, signs */
		v = v * 10 + (uint64_t)(s.p[i] - '0');
		if (v > UINT32_MAX / 2)
			return 1;
	}
	return v ? (uint32_t)v : 1;
}

/* createdAt in ms, INT64_MIN if absent or not a date. Consecutive events
 * mostly share the broker's millisecond: remember the last one parsed. */
static int64_t created_ms(struct usps__span s)
{
	static _Thread_local char last[64];
	static _Thread_local size_t last_n;
	static _Thread_local int64_t last_ms;
	int64_t ms;

	if (!s.n)
		return INT64_MIN;
	if (s.n == last_n && !memcmp(s.p, last, s.n))
		return last_ms;
	/* Validated here: an indexed frame's span is not (wire.h). */
	if (usps__json_validate(s.p, s.n) < 0 ||
	    usps__wire_created_at_ms(s, &ms) < 0)
		return INT64_MIN;
	if (s.n <= sizeof(last)) {
		memcpy(last, s.p, s.n);
		last_n = s.n;
		last_ms = ms;
	}
	return ms;
}

/*
 * Fill @ev (delivery_attempt aside) from the event frame @f parsed from
 * @line: strings decoded at @pos, which has room for len + 16 bytes, and
 * event_json at the same offset in @json_line (@line itself, or a copy of
 * it). -EINVAL if the topic is not a string.
 */
static int ev_fill(usps_event *ev, uint32_t *ret_attempt, const char *line,
		   const char *json_line, const struct usps__frame *f,
		   char *pos)
{
	struct usps__event_fields ef;
	struct usps__span evs, s;

	memset(ev, 0, sizeof(*ev));
	/* Strings are decoded from @line, not from a copy just written:
	 * reading that back at once would stall on the stores in flight. */
	evs = f->event.n ? (struct usps__span){ json_line + (f->event.p - line),
						f->event.n }
			 : (struct usps__span){ 0 };
	ev->topic = put_str(f->topic, &pos, &ev->topic_len);
	if (!ev->topic)
		return -EINVAL;
	if (f->group_kind == USPS__OPT_STRING)
		ev->group = put_str(f->group, &pos, NULL);
	memset(&ef, 0, sizeof(ef));
	if (f->ev_known) {
		ef = f->ev;
		ev->event_json = evs.p;
		ev->event_json_len = evs.n;
	} else if (f->event.n && usps__wire_event_fields(f->event, &ef) == 0) {
		ev->event_json = evs.p;
		ev->event_json_len = evs.n;
	} else {
		ev->event_json = "{}";
		ev->event_json_len = 2;
	}
	ev->type = put_str(ef.type, &pos, &ev->type_len);
	if (!ev->type)
		ev->type = "";
	ev->id = put_str(ef.id, &pos, NULL);
	if (!ev->id)
		ev->id = "";
	ev->run_id = put_str(ef.run_id, &pos, NULL);
	s = ef.data;
	if (s.n) {
		memcpy(pos, s.p, s.n);
		pos[s.n] = '\0';
		ev->data = pos;
		ev->data_len = s.n;
	}
	ev->created_at_ms = created_ms(ef.created_at);
	*ret_attempt = parse_attempt(ef.delivery_attempt);
	return 0;
}

static struct dl_event *ev_new(usps *ps, const char *line, size_t len,
			       const struct usps__frame *f)
{
	struct dl_event *e;

	/* The line, then decoded strings and a copy of data: all fit in 2x. */
	if (len > (SIZE_MAX - sizeof(*e) - 16) / 2)
		return NULL;
	e = ev_alloc(ps, sizeof(*e) + 2 * len + 16);
	if (!e)
		return NULL;
	e->bytes = len;
	memcpy(e->buf, line, len);
	e->buf[len] = '\0';
	if (ev_fill(&e->ev, &e->wire_attempt, line, e->buf, f,
		    e->buf + len + 1) < 0) {
		ev_free(ps, e);
		return NULL;
	}
	return e;
}

/* Stage a delivery of the event to each of @subs (usps__dl_push()). */
static int dl_stage(usps *ps, const char *line, size_t len,
		    const struct usps__frame *f, struct usps_sub **subs,
		    size_t n)
{
	struct usps_delivery *first = NULL, *last = NULL;
	struct dl_event *e;

	if (!n)
		return 0;
	e = ev_new(ps, line, len, f);
	if (!e)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		struct usps_delivery *d = i ? calloc(1, sizeof(*d)) : &e->first;

		if (!d) {
			first = first->next; /* the embedded one */
			while (first) {
				struct usps_delivery *next = first->next;

				free(first);
				first = next;
			}
			ev_free(ps, e);
			return -ENOMEM;
		}
		d->ev = e;
		d->sub = subs[i];
		d->attempt = e->wire_attempt;
		if (last)
			last->next = d;
		else
			first = d;
		last = d;
	}
	e->refs = (unsigned)n;
	if (ps->stage_tail)
		ps->stage_tail->next = first;
	else
		ps->stage_head = first;
	ps->stage_tail = last;
	ps->stage_n += n;
	ps->stage_bytes += e->bytes * n;
	return 0;
}

static void timer_insert(usps *ps, struct usps_delivery *d);

/* Lines up to this long may be delivered inline; longer ones are queued. */
#define IB_MAX_LINE ((size_t)64 * 1024)
/* A held buffer up to this large is kept for the next hold. */
#define IB_KEEP_CAP ((size_t)256 * 1024)

static bool dq_empty(usps *ps)
{
	bool empty;

	pthread_mutex_lock(&ps->dq_lock);
	empty = !ps->dq_head;
	pthread_mutex_unlock(&ps->dq_lock);
	return empty;
}

/* Note a delivery of the event to each of @subs, to run inline. */
static int ib_note(usps *ps, const char *line, size_t len,
		   const struct usps__frame *f, struct usps_sub **subs,
		   size_t n)
{
	if (n > ps->ib_cap - ps->ib_n) {
		size_t ncap = ps->ib_cap ? ps->ib_cap * 2 : 64;
		struct usps__ib_ent *a;

		if (ncap < ps->ib_n + n)
			ncap = ps->ib_n + n;
		a = realloc(ps->ib, ncap * sizeof(*a));
		if (!a)
			return -ENOMEM;
		ps->ib = a;
		ps->ib_cap = ncap;
	}
	if (ps->ib_scratch_cap < len + 16) {
		size_t ncap = len + 16 < 4096 ? 4096 : len + 16;
		char *b = malloc(ncap);

		if (!b)
			return -ENOMEM;
		free(ps->ib_scratch);
		ps->ib_scratch = b;
		ps->ib_scratch_cap = ncap;
	}
	for (size_t i = 0; i < n; i++)
		ps->ib[ps->ib_n++] = (struct usps__ib_ent){ .f = *f,
							    .line = line,
							    .len = len,
							    .sub = subs[i] };
	return 0;
}

int usps__dl_push(usps *ps, const char *line, size_t len,
		  const struct usps__frame *f, struct usps_sub **subs, size_t n)
{
	/* Inline only with nothing ahead of it: order is kept. */
	if (n && ps->ib_ok && !ps->stage_head && len <= IB_MAX_LINE &&
	    (ps->ib_n || dq_empty(ps)) &&
	    ib_note(ps, line, len, f, subs, n) == 0)
		return 0;
	return dl_stage(ps, line, len, f, subs, n);
}

bool usps__dl_hold(usps *ps, struct usps__reader *r)
{
	char *buf = ps->ib_spare;
	size_t cap = ps->ib_spare_cap;

	if (!ps->ib_n)
		return false;
	if (!ps->ib_buf && usps__reader_swap(r, &buf, &cap) == 0) {
		ps->ib_spare = NULL;
		ps->ib_spare_cap = 0;
		ps->ib_buf = buf;
		ps->ib_buf_cap = cap;
		pthread_mutex_lock(&ps->dq_lock);
		ps->dq_enq += ps->ib_n;
		pthread_mutex_unlock(&ps->dq_lock);
		return true;
	}
	/* Queued instead, copied while the reader still holds them. */
	for (size_t i = 0; i < ps->ib_n; i++) {
		struct usps__ib_ent *e = &ps->ib[i];

		if (dl_stage(ps, e->line, e->len, &e->f, &e->sub, 1) < 0)
			usps__sub_dl_unref(e->sub); /* as deliver_line() */
	}
	ps->ib_n = 0;
	return false;
}

/* Queue @e's redelivery after a nack, as the delivery thread would
 * (ps->lock held). false if it is not to be, or cannot be. */
static bool ib_redeliver(usps *ps, const struct usps__ib_ent *ie)
{
	struct usps_delivery *d;
	struct dl_event *e;
	bool go;

	pthread_mutex_lock(&ps->dq_lock);
	go = ie->sub->active && !ps->dl_stop;
	pthread_mutex_unlock(&ps->dq_lock);
	if (!go || !(e = ev_new(ps, ie->line, ie->len, &ie->f)))
		return false;
	e->refs = 1;
	d = &e->first;
	d->ev = e;
	d->sub = ie->sub; /* its delivery reference, taken over */
	d->due_ms = usps__now_ms() + 100 * (int64_t)ie->attempt;
	d->attempt = ie->attempt + 1;
	pthread_mutex_lock(&ps->dq_lock);
	timer_insert(ps, d);
	pthread_mutex_unlock(&ps->dq_lock);
	return true;
}

/* Fill @ev for @ie into the scratch buffer; false if it goes nowhere. */
static bool ib_fill(usps *ps, const struct usps__ib_ent *ie, usps_event *ev,
		    uint32_t *attempt)
{
	*attempt = 1;
	return ev_fill(ev, attempt, ie->line, ie->line, &ie->f,
		       ps->ib_scratch) == 0;
}

void usps__dl_run_inline(usps *ps)
{
	usps_event ev;
	uint32_t attempt;
	bool ok;

	if (!ps->ib_n)
		return;
	/*
	 * dq_lock is taken once for a run of deliveries to one subscription:
	 * while ps->running names it, usps_unsubscribe() waits, so that
	 * seeing it still active (unlocked) is enough to call it again.
	 * Each next event is made ready while the lock is not held.
	 */
	ok = ib_fill(ps, &ps->ib[0], &ev, &attempt);
	pthread_mutex_lock(&ps->dq_lock);
	for (size_t i = 0; i < ps->ib_n;) {
		struct usps_sub *s = ps->ib[i].sub;
		bool run = ok && s->active && !ps->dl_stop;
		uint64_t done = 0;

		if (run)
			ps->running = s;
		pthread_mutex_unlock(&ps->dq_lock);
		for (;;) {
			struct usps__ib_ent *ie = &ps->ib[i];
			struct usps_delivery d = { .sub = s,
						   .attempt = attempt };

			if (run) {
				usps__engine_dl_guard(ps);
				ev.delivery_attempt = attempt;
				s->fn(&ev, &d, s->userdata);
			}
			ie->nacked = d.nacked;
			ie->attempt = d.attempt;
			done++;
			if (++i == ps->ib_n)
				break;
			ok = ib_fill(ps, &ps->ib[i], &ev, &attempt);
			if (!run || !ok || ps->ib[i].sub != s ||
			    !atomic_load_explicit(&s->active,
						  memory_order_relaxed) ||
			    atomic_load_explicit(&ps->stopping,
						 memory_order_relaxed))
				break;
		}
		pthread_mutex_lock(&ps->dq_lock);
		ps->running = NULL;
		ps->dq_done += done;
		/* Unsubscribe and flush waiters. */
		pthread_cond_broadcast(&ps->dq_cond);
	}
	pthread_mutex_unlock(&ps->dq_lock);
	pthread_mutex_lock(&ps->lock);
	for (size_t i = 0; i < ps->ib_n; i++) {
		struct usps__ib_ent *ie = &ps->ib[i];

		if (!ie->nacked || !ib_redeliver(ps, ie))
			usps__sub_dl_unref(ie->sub);
	}
	ps->ib_n = 0;
	if (!ps->ib_spare && ps->ib_buf_cap <= IB_KEEP_CAP) {
		ps->ib_spare = ps->ib_buf;
		ps->ib_spare_cap = ps->ib_buf_cap;
	} else {
		free(ps->ib_buf);
	}
	ps->ib_buf = NULL;
	ps->ib_buf_cap = 0;
	pthread_mutex_unlock(&ps->lock);
}

static void free_list(usps *ps, struct usps_delivery *d);

void usps__dl_commit(usps *ps)
{
	struct usps_delivery *done;

	if (!ps->stage_head && !atomic_load(&ps->dl_done_any))
		return;
	pthread_mutex_lock(&ps->dq_lock);
	done = ps->dl_done;
	ps->dl_done = NULL;
	ps->dl_done_bytes = 0;
	atomic_store(&ps->dl_done_any, false);
	if (!ps->stage_head) {
		pthread_mutex_unlock(&ps->dq_lock);
		free_list(ps, done);
		return;
	}
	/* The delivery thread sleeps only on an empty queue (dq_cond also
	 * serves unsubscribe and flush waiters: broadcast). */
	if (!ps->dq_head)
		pthread_cond_broadcast(&ps->dq_cond);
	if (ps->dq_tail)
		ps->dq_tail->next = ps->stage_head;
	else
		ps->dq_head = ps->stage_head;
	ps->dq_tail = ps->stage_tail;
	ps->dq_enq += ps->stage_n;
	ps->dq_bytes += ps->stage_bytes;
	pthread_mutex_unlock(&ps->dq_lock);
	/* A delivery thread that polls sleeps in epoll, not on dq_cond. */
	if (atomic_load(&ps->poller) == USPS__POLL_DL &&
	    !usps__dl_on_thread(ps))
		usps__engine_wake(ps);
	ps->stage_head = ps->stage_tail = NULL;
	ps->stage_n = ps->stage_bytes = 0;
	free_list(ps, done);
}

static void free_delivery(usps *ps, struct usps_delivery *d)
{
	struct dl_event *e = d->ev;

	usps__sub_dl_unref(d->sub);
	if (d != &e->first)
		free(d);
	if (--e->refs == 0)
		ev_free(ps, e);
}

static void timer_insert(usps *ps, struct usps_delivery *d)
{
	struct usps_delivery **pp = &ps->timers;

	while (*pp && (*pp)->due_ms <= d->due_ms)
		pp = &(*pp)->next;
	d->next = *pp;
	*pp = d;
}

static void abs_deadline(struct timespec *ts, int64_t due_mono_ms)
{
	int64_t left = due_mono_ms - usps__now_ms();

	/* dq_cond waits on CLOCK_MONOTONIC (see usps.c). */
	clock_gettime(CLOCK_MONOTONIC, ts);
	if (left < 0)
		left = 0;
	ts->tv_sec += left / 1000;
	ts->tv_nsec += (long)(left % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

static void *dl_main(void *arg)
{
	usps *ps = arg;

	(void)usps__rand_warm(); /* it may route as broker (poller) */
	pthread_mutex_lock(&ps->dq_lock);
	while (!ps->dl_stop) {
		struct usps_delivery *d;
		int64_t now = ps->timers ? usps__now_ms() : 0;

		/* Due redeliveries join the queue behind what is there. */
		while (ps->timers && ps->timers->due_ms <= now) {
			d = ps->timers;
			ps->timers = d->next;
			d->next = NULL;
			if (ps->dq_tail)
				ps->dq_tail->next = d;
			else
				ps->dq_head = d;
			ps->dq_tail = d;
		}
		d = ps->dq_head;
		if (!d) {
			int64_t left = ps->timers ? ps->timers->due_ms - now
						  : -1;
			bool polled;

			atomic_store(&ps->dl_busy, false);
			pthread_mutex_unlock(&ps->dq_lock);
			polled = usps__engine_dl_poll(
				ps, left > INT_MAX ? INT_MAX : (int)left);
			pthread_mutex_lock(&ps->dq_lock);
			/* Polling may have been granted since we asked: the
			 * grant's broadcast comes under dq_lock, after it. */
			if (polled || ps->dq_head || ps->dl_stop ||
			    atomic_load(&ps->poller) == USPS__POLL_DL)
				continue;
			if (ps->timers) {
				struct timespec ts;

				abs_deadline(&ts, ps->timers->due_ms);
				pthread_cond_timedwait(&ps->dq_cond,
						       &ps->dq_lock, &ts);
			} else {
				pthread_cond_wait(&ps->dq_cond, &ps->dq_lock);
			}
			continue;
		}
		ps->dq_head = d->next;
		if (!ps->dq_head)
			ps->dq_tail = NULL;
		d->next = NULL;

		struct usps_sub *s = d->sub;
		bool redelivery = d->due_ms != 0;

		if (s->active) {
			usps_event ev = d->ev->ev;

			usps__engine_dl_guard(ps);

			ev.delivery_attempt = d->attempt;
			ps->running = s;
			pthread_mutex_unlock(&ps->dq_lock);
			s->fn(&ev, d, s->userdata);
			pthread_mutex_lock(&ps->dq_lock);
			ps->running = NULL;
			pthread_cond_broadcast(&ps->dq_cond);
		}
		if (!redelivery) {
			uint64_t before = ps->dq_bytes;

			ps->dq_done++;
			ps->dq_bytes -= d->ev->bytes;
			if (before >= USPS__DQ_LOW &&
			    ps->dq_bytes < USPS__DQ_LOW)
				usps__engine_wake(ps);
			pthread_cond_broadcast(&ps->dq_cond);
		}
		if (d->nacked && s->active && !ps->dl_stop) {
			d->due_ms = usps__now_ms() + 100 * (int64_t)d->attempt;
			d->attempt++;
			d->nacked = false;
			timer_insert(ps, d);
			continue;
		}
		/* Leave it to the allocating thread, unless that one is idle
		 * and much has piled up. */
		d->next = ps->dl_done;
		ps->dl_done = d;
		ps->dl_done_bytes += d->ev->bytes;
		/* A hint for usps__dl_commit(), which looks again under
		 * dq_lock: no ordering needed. */
		if (!atomic_load_explicit(&ps->dl_done_any,
					  memory_order_relaxed))
			atomic_store_explicit(&ps->dl_done_any, true,
					      memory_order_relaxed);
		if (ps->dl_done_bytes > (16u << 20)) {
			struct usps_delivery *list = ps->dl_done;

			ps->dl_done = NULL;
			ps->dl_done_bytes = 0;
			pthread_mutex_unlock(&ps->dq_lock);
			pthread_mutex_lock(&ps->lock);
			free_list(ps, list);
			pthread_mutex_unlock(&ps->lock);
			pthread_mutex_lock(&ps->dq_lock);
		}
	}
	pthread_mutex_unlock(&ps->dq_lock);
	return NULL;
}

int usps__dl_start(usps *ps)
{
	int r = pthread_create(&ps->dl_thread, NULL, dl_main, ps);

	if (r)
		return -r;
	ps->dl_started = true;
	return 0;
}

/* Free a list of deliveries (ps->lock held). */
static void free_list(usps *ps, struct usps_delivery *d)
{
	while (d) {
		struct usps_delivery *next = d->next;

		free_delivery(ps, d);
		d = next;
	}
}

void usps__dl_stop(usps *ps)
{
	pthread_mutex_lock(&ps->dq_lock);
	ps->dl_stop = true;
	pthread_cond_broadcast(&ps->dq_cond);
	pthread_mutex_unlock(&ps->dq_lock);
	/* It may be polling, in epoll_wait. */
	usps__engine_wake(ps);
	if (ps->dl_started)
		pthread_join(ps->dl_thread, NULL);
	ps->dl_started = false;
	/* Nothing allocates events now: the engine stops once stopping. */
	pthread_mutex_lock(&ps->lock);
	free_list(ps, ps->stage_head);
	ps->stage_head = ps->stage_tail = NULL;
	free_list(ps, ps->dq_head);
	free_list(ps, ps->timers);
	free_list(ps, ps->dl_done);
	ps->dq_head = ps->dq_tail = ps->timers = ps->dl_done = NULL;
	free(ps->ib);
	free(ps->ib_buf);
	free(ps->ib_spare);
	free(ps->ib_scratch);
	ps->ib = NULL;
	ps->ib_buf = ps->ib_spare = ps->ib_scratch = NULL;
	ps->ib_n = ps->ib_cap = ps->ib_buf_cap = ps->ib_spare_cap = 0;
	ps->ib_scratch_cap = 0;
	pthread_mutex_unlock(&ps->lock);
	for (unsigned i = 0; i < DL_CLASSES; i++) {
		while (ps->ev_cache[i]) {
			struct dl_event *e = ps->ev_cache[i];

			ps->ev_cache[i] = e->cnext;
			free(e);
		}
	}
	ps->ev_cache_bytes = 0;
}

bool usps__dl_on_thread(usps *ps)
{
	return ps->dl_started && pthread_equal(ps->dl_thread, pthread_self());
}

int usps_nack(usps_delivery *d)
{
	if (!d)
		return -EINVAL;
	if (d->nacked)
		return 0;
	if (d->attempt > USPS_MAX_LOCAL_REDELIVERIES)
		return -ERANGE;
	d->nacked = true;
	return 0;
}
