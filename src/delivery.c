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

/* Decode string span @s into @*pos (advancing it); NULL if not a string. */
static const char *put_str(struct usps__span s, char **pos, size_t *ret_len)
{
	char *out = *pos;
	size_t n;

	if (usps__json_kind(s) != USPS__J_STRING ||
	    usps__json_string_decode(s, out, &n) < 0) {
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

	if (usps__json_kind(s) != USPS__J_NUMBER)
		return 1;
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

static struct dl_event *ev_new(usps *ps, const char *line, size_t len,
			       const struct usps__frame *f)
{
	struct usps__event_fields ef;
	struct dl_event *e;
	struct usps__span ev, s;
	char *pos;
	size_t room;

	/* The line, then decoded strings and a copy of data: all fit in 2x. */
	if (len > (SIZE_MAX - sizeof(*e) - 16) / 2)
		return NULL;
	room = 2 * len + 16;
	e = ev_alloc(ps, sizeof(*e) + room);
	if (!e)
		return NULL;
	e->bytes = len;
	memcpy(e->buf, line, len);
	e->buf[len] = '\0';
	pos = e->buf + len + 1;
	/* Strings are decoded from @line, not from the copy just written:
	 * reading that back at once would stall on the stores in flight. */
	ev = f->event.n ? (struct usps__span){ e->buf + (f->event.p - line),
					       f->event.n }
			: (struct usps__span){ 0 };
	e->ev.topic = put_str(f->topic, &pos, &e->ev.topic_len);
	if (!e->ev.topic)
		goto fail;
	if (f->group_kind == USPS__OPT_STRING)
		e->ev.group = put_str(f->group, &pos, NULL);
	memset(&ef, 0, sizeof(ef));
	if (f->ev_known) {
		ef = f->ev;
		e->ev.event_json = ev.p;
		e->ev.event_json_len = ev.n;
	} else if (f->event.n && usps__wire_event_fields(f->event, &ef) == 0) {
		e->ev.event_json = ev.p;
		e->ev.event_json_len = ev.n;
	} else {
		e->ev.event_json = "{}";
		e->ev.event_json_len = 2;
	}
	e->ev.type = put_str(ef.type, &pos, &e->ev.type_len);
	if (!e->ev.type)
		e->ev.type = "";
	e->ev.id = put_str(ef.id, &pos, NULL);
	if (!e->ev.id)
		e->ev.id = "";
	e->ev.run_id = put_str(ef.run_id, &pos, NULL);
	s = ef.data;
	if (s.n) {
		memcpy(pos, s.p, s.n);
		pos[s.n] = '\0';
		e->ev.data = pos;
		e->ev.data_len = s.n;
		pos += s.n + 1;
	}
	e->ev.created_at_ms = created_ms(ef.created_at);
	e->wire_attempt = parse_attempt(ef.delivery_attempt);
	return e;
fail:
	ev_free(ps, e);
	return NULL;
}

int usps__dl_push(usps *ps, const char *line, size_t len,
		  const struct usps__frame *f, struct usps_sub **subs, size_t n)
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
