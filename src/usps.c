/* SPDX-License-Identifier: MIT */
/*
 * The public entry points. This is the only file that knows about the
 * caller's threads: it checks arguments, takes the right lock, hands the
 * work to the engine (through the outbox or the registry) and waits where
 * the API promises to wait.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* Room a publish frame needs besides its strings and JSON. */
#define FRAME_OVERHEAD 96
/* The broker's stamping adds at most this to a frame. */
#define STAMP_OVERHEAD 192

bool usps__peer_allowed(const usps *ps, uid_t uid, gid_t gid)
{
	return uid == ps->uid || uid == 0 ||
	       (ps->opt.allow_uid >= 0 && uid == (uid_t)ps->opt.allow_uid) ||
	       (ps->opt.allow_gid >= 0 && gid == (gid_t)ps->opt.allow_gid);
}

const char *usps_version(void)
{
	return USPS_VERSION_STRING;
}

void usps_options_init(usps_options *opt)
{
	if (!opt)
		return;
	*opt = (usps_options){
		.max_inbound_frame_bytes = 64ull << 20,
		.max_client_queued_bytes = 64ull << 20,
		.max_outbox_bytes = 64ull << 20,
		.membership_ack_timeout_ms = 5000,
		.open_timeout_ms = 10000,
		.max_clients = 1024,
		.max_memberships_per_client = 65536,
		.allow_uid = -1,
		.allow_gid = -1,
		.shm_ring_bytes = 256u << 10,
	};
}

static int check_options(const usps_options *o)
{
	if (o->max_inbound_frame_bytes < 64 ||
	    o->max_inbound_frame_bytes > (1ull << 30))
		return -EINVAL;
	if (o->max_client_queued_bytes < 4096 ||
	    o->max_client_queued_bytes > (16ull << 30))
		return -EINVAL;
	if (o->max_outbox_bytes < 4096 || o->max_outbox_bytes > (16ull << 30))
		return -EINVAL;
	if (o->membership_ack_timeout_ms < 1 ||
	    o->membership_ack_timeout_ms > 3600000)
		return -EINVAL;
	if (o->open_timeout_ms < 1 || o->open_timeout_ms > 3600000)
		return -EINVAL;
	if (o->max_clients < 1 || o->max_clients > 1048576)
		return -EINVAL;
	if (o->max_memberships_per_client < 1 ||
	    o->max_memberships_per_client > (16u << 20))
		return -EINVAL;
	if (o->allow_uid < -1 || o->allow_uid > (int64_t)UINT32_MAX - 1)
		return -EINVAL;
	if (o->allow_gid < -1 || o->allow_gid > (int64_t)UINT32_MAX - 1)
		return -EINVAL;
	if (o->shm_ring_bytes &&
	    (o->shm_ring_bytes < USPS__RING_MIN ||
	     o->shm_ring_bytes > USPS__RING_MAX ||
	     (o->shm_ring_bytes & (o->shm_ring_bytes - 1))))
		return -EINVAL;
	return 0;
}

/* An absolute CLOCK_MONOTONIC deadline @ms from now (all our conds use
 * that clock). */
static struct timespec deadline_in(int64_t ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	return ts;
}

static int cond_init(pthread_cond_t *c)
{
	pthread_condattr_t a;
	int r;

	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	r = pthread_cond_init(c, &a);
	pthread_condattr_destroy(&a);
	return -r;
}

static char *concat(const char *a, const char *b)
{
	size_t n = strlen(a) + strlen(b) + 1;
	char *s = malloc(n);

	if (s)
		(void)snprintf(s, n, "%s%s", a, b);
	return s;
}

static void free_handle(usps *ps)
{
	/* Every subscription left is owned by the registry alone now. */
	usps__registry_free(ps);
	usps__hmap_free(&ps->topics);
	usps__buf_free(&ps->outbox);
	usps__buf_free(&ps->route);
	usps__buf_free(&ps->conn_out);
	usps__buf_free(&ps->scratch);
	usps__buf_free(&ps->direct);
	pthread_mutex_destroy(&ps->lock);
	pthread_mutex_destroy(&ps->out_lock);
	pthread_mutex_destroy(&ps->dq_lock);
	pthread_cond_destroy(&ps->cond);
	pthread_cond_destroy(&ps->out_cond);
	pthread_cond_destroy(&ps->dq_cond);
	free(ps->path);
	free(ps->lock_path);
	free(ps->elect_path);
	free(ps->dir);
	free(ps);
}

static void shutdown_handle(usps *ps)
{
	/* Set under every lock, so that each waiter sees it under its own. */
	pthread_mutex_lock(&ps->lock);
	pthread_mutex_lock(&ps->out_lock);
	pthread_mutex_lock(&ps->dq_lock);
	atomic_store(&ps->stopping, true);
	pthread_cond_broadcast(&ps->cond);
	pthread_cond_broadcast(&ps->out_cond);
	pthread_cond_broadcast(&ps->dq_cond);
	pthread_mutex_unlock(&ps->dq_lock);
	pthread_mutex_unlock(&ps->out_lock);
	/* Callers still inside the API see stopping and leave. */
	while (atomic_load(&ps->inflight) > 0) {
		struct timespec ts = deadline_in(10);

		pthread_cond_timedwait(&ps->cond, &ps->lock, &ts);
	}
	pthread_mutex_unlock(&ps->lock);
	/* The delivery thread first: it may poll the engine's epoll set. */
	usps__dl_stop(ps);
	usps__engine_stop(ps);
	free_handle(ps);
}

static void enter(usps *ps)
{
	atomic_fetch_add(&ps->inflight, 1);
}

static int leave(usps *ps, int r)
{
	if (atomic_fetch_sub(&ps->inflight, 1) == 1 && ps->stopping) {
		pthread_mutex_lock(&ps->lock);
		pthread_cond_broadcast(&ps->cond);
		pthread_mutex_unlock(&ps->lock);
	}
	return r;
}

int usps_open(usps **ret, const char *socket_path, const usps_options *opt)
{
	struct sockaddr_un sa;
	usps_options o;
	const char *slash;
	usps *ps;
	int r;

	if (!ret || !socket_path || !*socket_path)
		return -EINVAL;
	if (strlen(socket_path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	if (opt)
		o = *opt;
	else
		usps_options_init(&o);
	r = check_options(&o);
	if (r < 0)
		return r;

	/* sizeof is a multiple of the struct's alignment, as C11's
	 * aligned_alloc() wants. */
	ps = aligned_alloc(alignof(usps), sizeof(*ps));
	if (!ps)
		return -ENOMEM;
	memset(ps, 0, sizeof(*ps));
	ps->opt = o;
	ps->uid = geteuid();
	ps->epfd = ps->wakefd = ps->inofd = -1;
	ps->parkfd = ps->guardfd = -1;
	ps->lockfd = ps->connfd = -1;
	ps->lst[0].fd = ps->lst[1].fd = -1;
	ps->self.fd = -1;
	ps->wake_ioh.kind = IOH_WAKE;
	ps->lst[0].ioh.kind = ps->lst[1].ioh.kind = IOH_LISTEN;
	ps->conn_ioh.kind = IOH_CONN;
	ps->ring_ioh.kind = IOH_RING;
	usps__ring_init(&ps->ring);
	usps__ring_init(&ps->self.ring);
	for (int i = 0; i < USPS__RING_FDS; i++)
		ps->conn_ring_fds[i] = -1;
	ps->ino_ioh.kind = IOH_INOTIFY;
	ps->path_len = strlen(socket_path);
	ps->path = strdup(socket_path);
	ps->lock_path = concat(socket_path, ".lock");
	ps->elect_path = concat(socket_path, ".elect");
	slash = strrchr(socket_path, '/');
	if (!slash)
		ps->dir = strdup(".");
	else if (slash == socket_path)
		ps->dir = strdup("/");
	else
		ps->dir = strndup(socket_path, (size_t)(slash - socket_path));
	if (!ps->path || !ps->lock_path || !ps->elect_path || !ps->dir ||
	    usps__uuidgen_init(&ps->uuid) < 0 ||
	    usps__uuidgen_init(&ps->uuid_local) < 0) {
		free(ps->path);
		free(ps->lock_path);
		free(ps->elect_path);
		free(ps->dir);
		free(ps);
		return -ENOMEM;
	}
	ps->base = ps->path + (slash ? (size_t)(slash - socket_path) + 1 : 0);
	if (getrandom(&ps->hash_seed, sizeof(ps->hash_seed), 0) < 0)
		ps->hash_seed = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull;
	pthread_mutex_init(&ps->lock, NULL);
	pthread_mutex_init(&ps->out_lock, NULL);
	pthread_mutex_init(&ps->dq_lock, NULL);
	if (cond_init(&ps->cond) || cond_init(&ps->out_cond) ||
	    cond_init(&ps->dq_cond)) {
		free_handle(ps);
		return -ENOMEM;
	}

	r = usps__election_prepare(ps);
	if (r < 0)
		goto fail;
	r = usps__dl_start(ps);
	if (r < 0)
		goto fail;
	r = usps__engine_start(ps);
	if (r < 0)
		goto fail;

	struct timespec dl = deadline_in(o.open_timeout_ms);

	pthread_mutex_lock(&ps->lock);
	while (ps->role == ROLE_JOINING && !ps->open_error && !ps->refused) {
		if (pthread_cond_timedwait(&ps->cond, &ps->lock, &dl) ==
		    ETIMEDOUT)
			break;
	}
	/* A broker that refused us may have dropped us before we looked. */
	r = ps->role != ROLE_JOINING ? 0
	    : ps->refused	     ? ps->refused
	    : ps->open_error	     ? ps->open_error
				     : -ETIMEDOUT;
	pthread_mutex_unlock(&ps->lock);
	if (r < 0)
		goto fail;
	*ret = ps;
	return 0;
fail:
	shutdown_handle(ps);
	return r;
}

int usps_close(usps *ps)
{
	if (!ps)
		return 0;
	if (usps__dl_on_thread(ps))
		return -EDEADLK;
	shutdown_handle(ps);
	return 0;
}

/* Unlink @s from its key (ps->lock held); tell the broker if it was the
 * key's last subscription. Returns the key. */
static struct key *detach(usps *ps, struct usps_sub *s, bool *ret_last)
{
	struct key *k = s->key;
	struct usps_sub **pp;

	for (pp = &k->subs; *pp; pp = &(*pp)->next) {
		if (*pp == s) {
			*pp = s->next;
			k->nsubs--;
			break;
		}
	}
	s->next = NULL;
	*ret_last = k->nsubs == 0;
	if (*ret_last) {
		if (ps->role == ROLE_BROKER)
			(void)usps__broker_member(ps, &ps->self, false,
						  k->topic, k->topic_len,
						  k->group, k->group_len);
		else if (ps->role == ROLE_CLIENT)
			(void)usps__client_send_membership(ps, k, true);
		/* The local round-robin starts over with the next member. */
		k->cursor = 0;
	}
	return k;
}

static bool name_ok(const char *s, size_t n)
{
	return n > 0 && usps__utf8_valid(s, n);
}

int usps_subscribe(usps *ps, const char *topic, const char *group,
		   usps_handler fn, void *userdata, usps_sub **ret_sub)
{
	size_t tlen, glen = 0;
	struct usps_sub *s;
	struct key *k;
	struct timespec dl;
	int r = 0;

	if (!ps || !topic || !fn || !ret_sub)
		return -EINVAL;
	tlen = strlen(topic);
	if (!name_ok(topic, tlen))
		return -EINVAL;
	if (group) {
		glen = strlen(group);
		if (!name_ok(group, glen))
			return -EINVAL;
	}
	/* Escaping can grow a name sixfold. */
	if ((tlen + glen) >
	    (ps->opt.max_inbound_frame_bytes - FRAME_OVERHEAD) / 6)
		return -EMSGSIZE;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->ps = ps;
	s->fn = fn;
	s->userdata = userdata;
	s->active = true;
	atomic_init(&s->refs, 1);

	enter(ps);
	pthread_mutex_lock(&ps->lock);
	if (ps->stopping) {
		r = -ESHUTDOWN;
		goto fail_unlock;
	}
	k = usps__key_get(ps, topic, tlen, group, glen);
	if (!k) {
		r = -ENOMEM;
		goto fail_unlock;
	}
	struct usps_sub **pp = &k->subs;

	while (*pp)
		pp = &(*pp)->next;
	*pp = s;
	s->key = k;
	if (++k->nsubs == 1) {
		if (ps->role == ROLE_BROKER) {
			r = usps__broker_member(ps, &ps->self, true, topic,
						tlen, group, glen);
			if (r < 0) {
				bool last;

				(void)detach(ps, s, &last);
				usps__key_release(ps, k);
				goto fail_unlock;
			}
		} else if (ps->role == ROLE_CLIENT) {
			/* A send error means the connection is lost; the
			 * next one announces this key. */
			(void)usps__client_send_membership(ps, k, false);
		}
	}
	/* In effect once we are broker, or the broker acked every
	 * subscribe frame sent for this key. */
	dl = deadline_in(ps->opt.membership_ack_timeout_ms);
	k->waiters++;
	while (!ps->stopping && !ps->refused && ps->role != ROLE_BROKER &&
	       !(ps->role == ROLE_CLIENT && k->sub_acked >= k->sub_sent)) {
		if (pthread_cond_timedwait(&ps->cond, &ps->lock, &dl) ==
		    ETIMEDOUT)
			break;
	}
	k->waiters--;
	if (ps->stopping)
		r = -ESHUTDOWN;
	else if (ps->refused && ps->role != ROLE_BROKER)
		r = ps->refused;
	else if (ps->role == ROLE_JOINING)
		r = -ETIMEDOUT; /* no broker to acknowledge it */
	if (r < 0) {
		bool last;

		(void)detach(ps, s, &last);
		usps__key_release(ps, k);
		goto fail_unlock;
	}
	pthread_mutex_unlock(&ps->lock);
	*ret_sub = s;
	return leave(ps, 0);
fail_unlock:
	pthread_mutex_unlock(&ps->lock);
	free(s);
	return leave(ps, r);
}

int usps_unsubscribe(usps *ps, usps_sub *sub)
{
	struct key *k;
	bool last;
	uint64_t target;

	if (!ps || !sub || sub->ps != ps)
		return -EINVAL;
	enter(ps);
	pthread_mutex_lock(&ps->lock);
	k = detach(ps, sub, &last);
	target = k->unsub_sent;
	k->waiters++;
	pthread_mutex_unlock(&ps->lock);

	/* No new deliveries are queued for it now; stop queued ones and wait
	 * out a running one (unless that is us). */
	pthread_mutex_lock(&ps->dq_lock);
	sub->active = false;
	while (ps->running == sub && !usps__dl_on_thread(ps) && !ps->dl_stop)
		pthread_cond_wait(&ps->dq_cond, &ps->dq_lock);
	pthread_mutex_unlock(&ps->dq_lock);

	pthread_mutex_lock(&ps->lock);
	if (last && ps->role == ROLE_CLIENT) {
		struct timespec dl =
			deadline_in(ps->opt.membership_ack_timeout_ms);

		while (!ps->stopping && ps->role == ROLE_CLIENT &&
		       k->unsub_acked < target) {
			if (pthread_cond_timedwait(&ps->cond, &ps->lock, &dl) ==
			    ETIMEDOUT)
				break;
		}
	}
	k->waiters--;
	usps__key_release(ps, k);
	pthread_mutex_unlock(&ps->lock);
	usps__sub_unref(sub);
	return leave(ps, 0);
}

/* Deliver a publish frame in @b to this process only (USPS_LOCAL_ONLY):
 * stamp it here, then every fan-out subscription of the topic and one
 * member of each local group. */
static int publish_local(usps *ps, const struct usps__buf *b)
{
	struct usps__buf ev = { 0 };
	struct usps__frame f, ef;
	char uuid[37];
	size_t head;
	int r;

	r = usps__wire_parse(b->p, b->len - 1, &f);
	if (r < 0)
		return -EINVAL;
	pthread_mutex_lock(&ps->lock);
	if (ps->stopping) {
		r = -ESHUTDOWN;
		goto out;
	}
	r = usps__uuid4(&ps->uuid_local, uuid);
	if (r < 0)
		goto out;
	r = usps__wire_put_frame_head(&ev, &f, uuid, usps__wall_ms());
	if (r < 0)
		goto out;
	head = ev.len;
	r = usps__buf_put(&ev, "}\n", 2);
	if (r < 0)
		goto out;
	if (usps__wire_parse(ev.p, ev.len - 1, &ef) == 0) {
		r = usps__deliver_line(ps, ev.p, ev.len - 1, &ef);
		if (r < 0)
			goto out;
	}
	for (size_t i = 0; i < ps->keys.nb; i++) {
		for (struct hnode *n = ps->keys.b[i]; n; n = n->next) {
			struct key *k = (struct key *)n;
			struct usps__buf g = { 0 };

			if (!k->group || !k->nsubs)
				continue;
			if (!usps__json_string_eq(f.topic, k->topic,
						  k->topic_len))
				continue;
			ev.len = head;
			r = usps__json_put_string(&g, k->group, k->group_len);
			if (r == 0)
				r = usps__wire_put_group_tail(
					&ev, (struct usps__span){ g.p, g.len });
			if (r == 0 &&
			    usps__wire_parse(ev.p, ev.len - 1, &ef) == 0)
				r = usps__deliver_line(ps, ev.p, ev.len - 1,
						       &ef);
			usps__buf_free(&g);
			if (r < 0)
				goto out;
		}
	}
out:
	usps__dl_commit(ps);
	pthread_mutex_unlock(&ps->lock);
	usps__buf_free(&ev);
	return r;
}

/*
 * Ask for the cache lines the next few records will be written to. The
 * outbox was last read on the I/O thread's core: stores that miss there
 * wait at out_lock's release, which orders them (perf put the most time of
 * a publish there). Prefetching past @b's end is harmless.
 */
static void claim_next(const struct usps__buf *b)
{
	for (size_t at = b->len + 64; at < b->len + 320 && at < b->cap;
	     at += 64)
		__builtin_prefetch(b->p + at, 1);
}

/*
 * When nothing is queued and the I/O thread is idle (its lock is free), the
 * caller does the I/O thread's work for this one publish: writes the frame
 * to the broker, or as broker routes it. That saves a thread wake-up per
 * hop, which dominates latency. Under load the lock is busy and publishes
 * are batched through the outbox instead. Returns true if it handled the
 * publish (its result in *ret).
 */
static bool publish_direct(usps *ps, const char *topic, size_t tlen,
			   const char *type, size_t ylen, const char *run_id,
			   struct usps__span data, struct usps__span extra,
			   int *ret)
{
	struct usps__buf *b;
	bool done = false;
	size_t n;

	/* Only into an empty outbox; a stale hint costs a missed chance. */
	if (atomic_load_explicit(&ps->outbox_queued, memory_order_relaxed) ||
	    pthread_mutex_trylock(&ps->lock) != 0)
		return false;
	if (ps->stopping)
		goto out;
	if (ps->role == ROLE_CLIENT && ps->conn_off == ps->conn_out.len)
		b = &ps->conn_out;
	else if (ps->role == ROLE_BROKER && usps__broker_intake_open(ps) &&
		 ps->route_off == ps->route.len)
		b = &ps->direct;
	else
		goto out;
	pthread_mutex_lock(&ps->out_lock);
	if (!ps->outbox.len) {
		b->len = 0;
		if (ps->role == ROLE_CLIENT)
			usps__client_out_reset(ps);
		*ret = usps__rec_put_publish(b, topic, tlen, type, ylen, run_id,
					     data, extra);
		n = *ret == 0 ? b->len : 0;
		ps->out_appended += n;
		ps->out_taken += n;
		if (ps->role == ROLE_CLIENT)
			ps->conn_out_end = ps->out_taken;
		else
			ps->out_done = ps->out_taken;
		done = true;
	}
	pthread_mutex_unlock(&ps->out_lock);
	if (!done || *ret < 0)
		goto out;
	if (ps->role == ROLE_CLIENT) {
		usps__client_flush(ps);
	} else {
		usps__broker_route_own(ps, b->p, b->len);
		usps__broker_flush_dirty(ps);
		usps__dl_commit(ps);
		/* Peers dropped here are freed by the I/O thread, at the end
		 * of a turn: it may hold epoll events that point at them. */
		if (ps->reap_pending)
			usps__engine_wake(ps);
	}
out:
	pthread_mutex_unlock(&ps->lock);
	return done;
}

int usps_publish_ex(usps *ps, const char *topic, const char *type,
		    const char *data_json, size_t data_len, const char *run_id,
		    const char *extra_json, size_t extra_len, unsigned flags)
{
	struct usps__span data = { 0 }, extra = { 0 };
	size_t tlen, ylen, need;
	int r;

	if (!ps || !topic || !type ||
	    (flags & ~(unsigned)(USPS_LOCAL_ONLY | USPS_NONBLOCK)))
		return -EINVAL;
	tlen = strlen(topic);
	ylen = strlen(type);
	if (!name_ok(topic, tlen) || !usps__utf8_valid(type, ylen))
		return -EINVAL;
	if (run_id && !usps__utf8_valid(run_id, strlen(run_id)))
		return -EINVAL;
	if (data_json) {
		if (usps__json_validate(data_json, data_len) < 0)
			return -EINVAL;
		data = (struct usps__span){ data_json, data_len };
	}
	if (extra_json) {
		struct usps__event_fields ef;

		if (usps__json_is_object(extra_json, extra_len) < 0)
			return -EINVAL;
		extra = (struct usps__span){ extra_json, extra_len };
		if (usps__wire_event_fields(extra, &ef) < 0 || ef.type.n ||
		    ef.run_id.n || ef.data.n)
			return -EINVAL;
	}
	need = 6 * (tlen + ylen + (run_id ? strlen(run_id) : 0)) + data.n +
	       extra.n + FRAME_OVERHEAD;
	if (need + STAMP_OVERHEAD > ps->opt.max_inbound_frame_bytes)
		return -EMSGSIZE;
	need += USPS__REC_WIDE; /* its record's header, in the outbox */

	enter(ps);
	if (flags & USPS_LOCAL_ONLY) {
		struct usps__buf b = { 0 };

		r = usps__wire_put_publish(&b, topic, tlen, type, ylen, run_id,
					   data, extra);
		if (r == 0)
			r = publish_local(ps, &b);
		usps__buf_free(&b);
		return leave(ps, r);
	}

	struct timespec dl;
	bool was_empty, waited = false;

	if (publish_direct(ps, topic, tlen, type, ylen, run_id, data, extra,
			   &r))
		return leave(ps, r);
	pthread_mutex_lock(&ps->out_lock);
	/* Wait for room; a frame larger than the whole outbox still goes
	 * alone into an empty one. */
	while (!ps->stopping && ps->outbox.len &&
	       ps->outbox.len + need > ps->opt.max_outbox_bytes) {
		if (flags & USPS_NONBLOCK) {
			r = -EAGAIN;
			goto out_unlock;
		}
		if (!waited) {
			dl = deadline_in(ps->opt.open_timeout_ms);
			waited = true;
		}
		if (pthread_cond_timedwait(&ps->out_cond, &ps->out_lock, &dl) ==
		    ETIMEDOUT) {
			r = -ETIMEDOUT;
			goto out_unlock;
		}
	}
	if (ps->stopping) {
		r = -ESHUTDOWN;
		goto out_unlock;
	}
	was_empty = ps->outbox.len == 0;
	size_t before = ps->outbox.len;

	r = usps__rec_put_publish(&ps->outbox, topic, tlen, type, ylen, run_id,
				  data, extra);
	if (r == 0) {
		ps->out_appended += ps->outbox.len - before;
		atomic_store_explicit(&ps->outbox_queued, true,
				      memory_order_relaxed);
		claim_next(&ps->outbox);
	}
out_unlock:
	pthread_mutex_unlock(&ps->out_lock);
	if (r == 0 && was_empty)
		usps__engine_wake(ps);
	return leave(ps, r);
}

int usps_publish(usps *ps, const char *topic, const char *type,
		 const char *data_json, size_t data_len, unsigned flags)
{
	return usps_publish_ex(ps, topic, type, data_json, data_len, NULL, NULL,
			       0, flags);
}

struct flush_mark {
	uint64_t id;
	uint64_t pushed;
};

static bool peers_caught_up(usps *ps, const struct flush_mark *m, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		for (size_t j = 0; j < ps->npeers; j++) {
			struct peer *p = ps->peers[j];

			if (p->id == m[i].id && !p->dead &&
			    p->wq.written_total < m[i].pushed)
				return false;
		}
	}
	return true;
}

int usps_flush(usps *ps, int timeout_ms)
{
	struct flush_mark *marks = NULL;
	struct timespec dl;
	uint64_t target;
	size_t n = 0;
	int r = 0;

	if (!ps)
		return -EINVAL;
	dl = deadline_in(timeout_ms < 0 ? 3600000ll * 24 * 365 : timeout_ms);
	enter(ps);

	pthread_mutex_lock(&ps->out_lock);
	target = ps->out_appended;
	while (!ps->stopping && ps->out_done < target) {
		if (pthread_cond_timedwait(&ps->out_cond, &ps->out_lock, &dl) ==
		    ETIMEDOUT) {
			r = -ETIMEDOUT;
			break;
		}
	}
	pthread_mutex_unlock(&ps->out_lock);
	if (r < 0)
		goto out;

	pthread_mutex_lock(&ps->lock);
	if (ps->role == ROLE_BROKER && ps->npeers) {
		marks = malloc(ps->npeers * sizeof(*marks));
		if (!marks) {
			r = -ENOMEM;
			goto out_unlock;
		}
		for (size_t i = 0; i < ps->npeers; i++) {
			marks[n].id = ps->peers[i]->id;
			marks[n++].pushed = ps->peers[i]->wq.pushed_total;
		}
		ps->flush_waiters++;
		while (!ps->stopping && ps->role == ROLE_BROKER &&
		       !peers_caught_up(ps, marks, n)) {
			if (pthread_cond_timedwait(&ps->cond, &ps->lock, &dl) ==
			    ETIMEDOUT) {
				r = -ETIMEDOUT;
				break;
			}
		}
		ps->flush_waiters--;
	}
out_unlock:
	if (ps->stopping && r == 0)
		r = -ESHUTDOWN;
	pthread_mutex_unlock(&ps->lock);
	free(marks);
	if (r < 0 || usps__dl_on_thread(ps))
		goto out;

	pthread_mutex_lock(&ps->dq_lock);
	target = ps->dq_enq;
	while (!ps->dl_stop && !ps->stopping && ps->dq_done < target) {
		if (pthread_cond_timedwait(&ps->dq_cond, &ps->dq_lock, &dl) ==
		    ETIMEDOUT) {
			r = -ETIMEDOUT;
			break;
		}
	}
	pthread_mutex_unlock(&ps->dq_lock);
out:
	if (ps->stopping && r == 0)
		r = -ESHUTDOWN;
	return leave(ps, r);
}

bool usps_is_broker(usps *ps)
{
	bool b;

	if (!ps)
		return false;
	pthread_mutex_lock(&ps->lock);
	b = ps->role == ROLE_BROKER;
	pthread_mutex_unlock(&ps->lock);
	return b;
}

unsigned usps_remote_client_count(usps *ps)
{
	unsigned n;

	if (!ps)
		return 0;
	pthread_mutex_lock(&ps->lock);
	n = ps->role == ROLE_BROKER ? (unsigned)ps->npeers : 0;
	pthread_mutex_unlock(&ps->lock);
	return n;
}

const char *usps_socket_path(usps *ps)
{
	return ps ? ps->path : NULL;
}

int usps_broker_pid(usps *ps)
{
	int r;

	if (!ps)
		return -EINVAL;
	pthread_mutex_lock(&ps->lock);
	r = ps->role == ROLE_JOINING ? -ENOTCONN : (int)ps->broker_pid;
	if (r == 0)
		r = -ENOTCONN;
	pthread_mutex_unlock(&ps->lock);
	return r;
}
