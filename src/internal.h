/* SPDX-License-Identifier: MIT */
/*
 * The state of one usps handle and the internal interfaces between its
 * parts. Three locks guard it, always taken in this order:
 *
 *   ps->lock      engine state (role, peers, broker index) and the registry;
 *                 held by the I/O thread while it processes a loop turn
 *   ps->out_lock  the outbox of publishes not yet taken by the I/O thread
 *   ps->dq_lock   the delivery queue and each subscription's liveness
 *
 * Publishers touch only out_lock; the delivery thread only dq_lock, so that
 * neither waits for the other or for the I/O thread's work.
 */
#ifndef USPS_INTERNAL_H
#define USPS_INTERNAL_H

#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "usps.h"
#include "frame.h"
#include "ring.h"
#include "wire.h"

/* What an epoll registration points at: the first member of its owner. */
enum ioh_kind {
	IOH_WAKE,
	IOH_LISTEN,
	IOH_PEER,
	IOH_CONN,
	IOH_INOTIFY,
	IOH_PEER_ROOM, /* a peer's ring has room (struct peer.room) */
	IOH_RING,      /* bytes in the client's ring (ps->ring_ioh) */
};

struct ioh {
	enum ioh_kind kind;
};

enum role {
	ROLE_JOINING, /* looking for a broker, or electing one */
	ROLE_CLIENT,
	ROLE_BROKER,
};

/* ---- hash map (util.c) ---- */

struct hnode {
	struct hnode *next;
	uint64_t hash;
};

struct hmap {
	struct hnode **b;
	size_t nb; /* buckets, a power of two (or 0) */
	size_t n;
};

uint64_t usps__hash(const void *p, size_t n, uint64_t seed);
/* Link @node (with node->hash set) into @m. 0 or -ENOMEM. */
int usps__hmap_add(struct hmap *m, struct hnode *node);
void usps__hmap_del(struct hmap *m, struct hnode *node);
/* First node with @hash, then usps__hmap_next() for the rest. */
struct hnode *usps__hmap_first(const struct hmap *m, uint64_t hash);
struct hnode *usps__hmap_next(const struct hnode *node);
void usps__hmap_free(struct hmap *m);

int64_t usps__now_ms(void);  /* CLOCK_MONOTONIC */
int64_t usps__wall_ms(void); /* CLOCK_REALTIME */

/* May a peer with these credentials share our bus (our uid, root, or an
 * allowed uid or gid)? */
bool usps__peer_allowed(const usps *ps, uid_t uid, gid_t gid);

/* ---- registry (registry.c): local subscriptions ---- */

struct key;

struct usps_sub {
	usps *ps;
	struct key *key;
	struct usps_sub *next; /* in key->subs */
	usps_handler fn;
	void *userdata;
	atomic_uint refs;
	/* Under ps->lock: deliveries of it, which hold one of refs between
	 * them, so that each costs no atomic operation. */
	unsigned dl_refs;
	/* May still be called. Set under dq_lock; read under it, or
	 * without it by the delivery thread while ps->running is this sub
	 * (usps_unsubscribe() waits for that to change). */
	atomic_bool active;
};

/* One (topic, group) this process subscribes to, with its subscriptions. */
struct key {
	struct hnode node;
	char *topic;
	size_t topic_len;
	char *group; /* NULL: fan-out */
	size_t group_len;
	struct usps_sub *subs; /* in registration order */
	size_t nsubs;
	size_t cursor;	  /* local round-robin among group members */
	unsigned waiters; /* threads waiting on this key's acks */
	/*
	 * Membership frames sent to the broker, numbered from 1 over the
	 * handle's life, and the highest number acknowledged. The broker
	 * answers in order, so the n-th ack on a connection is for frame
	 * base + n, where base is the count sent before that connection.
	 * A waiter for frame t is done once acked >= t.
	 */
	uint64_t sub_sent, sub_base, sub_conn_acks, sub_acked;
	uint64_t unsub_sent, unsub_base, unsub_conn_acks, unsub_acked;
};

struct key *usps__key_find(usps *ps, const char *topic, size_t tlen,
			   const char *group, size_t glen);
/* Find or create. NULL on ENOMEM. */
struct key *usps__key_get(usps *ps, const char *topic, size_t tlen,
			  const char *group, size_t glen);
/* Free @k if it has no subscriptions and no waiters. */
void usps__key_release(usps *ps, struct key *k);
void usps__sub_unref(struct usps_sub *s);
/* A delivery's reference to @s, taken and dropped under ps->lock. */
void usps__sub_dl_ref(struct usps_sub *s);
void usps__sub_dl_unref(struct usps_sub *s);
/* Free every key and the subscriptions they hold (closing). */
void usps__registry_free(usps *ps);

/*
 * usps__deliver_line() - hand an event frame (a line we hold in @line, with
 * @f parsed from it) to the local subscriptions it is for: every fan-out
 * subscription of its topic, or one member of its group ("group" null or
 * not a string: nobody, as a Node client does). Copies what it needs.
 * Called with ps->lock held. 0 or -ENOMEM.
 */
int usps__deliver_line(usps *ps, const char *line, size_t len,
		       const struct usps__frame *f);

/* ---- delivery (delivery.c) ---- */

struct dl_event;
#define USPS__DL_CLASSES 12 /* event cache size classes: 512 B to 1 MiB */

struct usps_delivery {
	struct usps_delivery *next;
	struct dl_event *ev;
	struct usps_sub *sub;
	uint32_t attempt;
	bool nacked;
	int64_t due_ms;
};

int usps__dl_start(usps *ps);
/* Stop the thread and free what is queued. Not from the delivery thread. */
void usps__dl_stop(usps *ps);
/*
 * Stage one delivery of the event in @line (an event frame already parsed
 * into @f) to each of @subs[0..n), under ps->lock. Each of @subs comes
 * with a delivery reference (usps__sub_dl_ref()) that its delivery takes
 * over; on failure they stay the caller's. 0 or -ENOMEM.
 */
int usps__dl_push(usps *ps, const char *line, size_t len,
		  const struct usps__frame *f, struct usps_sub **subs,
		  size_t n);
/*
 * Deliveries are staged (under ps->lock) and handed to the delivery
 * thread in one go, with at most one wake-up, by usps__dl_commit(): after
 * each read batch, at the end of each loop turn, and by user threads that
 * deliver (localOnly publishes).
 */
void usps__dl_commit(usps *ps);
bool usps__dl_on_thread(usps *ps);

/*
 * Inline delivery. While the delivery thread polls and nothing is queued,
 * the events it reads are not copied and queued: usps__dl_push() notes
 * them (ps->ib, when ps->ib_ok), usps__dl_hold() then takes the reader's
 * buffer that holds them (the reader goes on in another), and, after the
 * turn and outside ps->lock, usps__dl_run_inline() runs their handlers as
 * the queue would have, in order, and gives the buffer back for reuse.
 * An event costs then no allocation, copy or queueing (bench/: fan-out
 * about 20% more deliveries/s, 1 -> 1 about 5% more). Delivery thread only.
 */
struct usps__ib_ent {
	struct usps__frame f; /* spans in the held buffer */
	const char *line;
	size_t len;
	struct usps_sub *sub; /* with a delivery reference */
	uint32_t attempt;     /* after the run: nacked at this attempt */
	bool nacked;
};
/*
 * After usps__dl_push() noted events from @r's buffer (ps->ib_n): hold the
 * buffer for usps__dl_run_inline() and return true, or, if there are none
 * or it cannot be, queue them as usual and return false. Under ps->lock,
 * before @r is used again.
 */
bool usps__dl_hold(usps *ps, struct usps__reader *r);
/* Run the held events' handlers (no lock held); see above. */
void usps__dl_run_inline(usps *ps);

/* ---- broker routing index (broker.c) ---- */

struct peer;

struct bgroup {
	char *name; /* decoded group name */
	size_t len;
	struct peer **mem; /* in accept order; self (id 0) first */
	size_t n, cap;
	size_t cursor;
};

struct btopic {
	struct hnode node;
	char *name; /* decoded topic */
	size_t len;
	struct peer **fan; /* ungrouped members */
	size_t nfan, capfan;
	struct bgroup **groups;
	size_t ngroups, capgroups;
};

/* A connected client of this broker, or the broker itself (id 0, fd -1). */
struct peer {
	struct ioh ioh;
	uint64_t id;
	int fd;
	pid_t pid;
	uid_t uid;
	struct usps__reader rd;
	struct usps__wq wq;
	uint32_t nmem;	     /* memberships held */
	bool dead;	     /* to be reaped at the end of the loop turn */
	bool dirty;	     /* in the list of peers to flush */
	bool want_out;	     /* EPOLLOUT registered */
	bool congested;	     /* queue over half the cap: intake paused */
	bool has_lines;	     /* complete lines left unread in rd */
	bool indexed;	     /* sent records (wire.h "usps.index") */
	bool rec_in;	     /* sends records (wire.h "usps.records") */
	bool ring_asked;     /* sent "usps.ring" (wire.h) */
	int64_t progress_ms; /* last time its queue moved (or congested) */
	struct peer *dirty_next;
	/* Its queue goes into this ring (ring.hdr set) instead of the
	 * socket; room.ioh watches the ring's space_fd. */
	struct usps__ring ring;
	struct peer_room {
		struct ioh ioh;
		struct peer *peer;
	} room;
};

int usps__broker_accept(usps *ps, int lfd);
/* Take the connected socket @fd as a client (accept, fuzzing). NULL on
 * ENOMEM or a failed epoll registration (@fd is left open then). */
struct peer *usps__broker_add_peer(usps *ps, int fd, pid_t pid, uid_t uid);
void usps__broker_peer_io(usps *ps, struct peer *p, uint32_t events);
/* The reader of @p's ring took bytes after we asked (space_fd). */
void usps__broker_room(usps *ps, struct peer *p);
/*
 * Route the broker's own publish in the record @rec of @n bytes (wire.h),
 * as usps_publish() built it. Called with ps->lock held.
 */
void usps__broker_route_own(usps *ps, const char *rec, size_t n);
/*
 * Route one publish frame (line parsed as @f) from @from (ps->self for the
 * broker's own publishes). Called with ps->lock held.
 */
void usps__broker_publish(usps *ps, struct peer *from,
			  const struct usps__frame *f);
/* Add or remove the membership of @p in (topic, group). */
int usps__broker_member(usps *ps, struct peer *p, bool add, const char *topic,
			size_t tlen, const char *group, size_t glen);
void usps__broker_flush_dirty(usps *ps);
void usps__broker_reap(usps *ps);
/*
 * Back-pressure. While any client's queue is over half its cap, the broker
 * stops taking work (reading peers, routing its own outbox), so that
 * publishers slow down to the pace of the slowest reader instead of that
 * reader being dropped. A congested client whose queue does not move for
 * USPS__STALL_MS has stopped reading: it is dropped, and work resumes.
 */
#define USPS__STALL_MS 1000
static inline bool usps__broker_intake_open(const usps *ps);
/* Drop stalled clients; resume reading buffered lines when uncongested. */
void usps__broker_tick(usps *ps);
/* Drop every peer and the index (stepping down or closing). */
void usps__broker_reset(usps *ps);
/* Register the registry's keys as the broker's own memberships. */
int usps__broker_adopt_keys(usps *ps);

/* ---- client side (client.c) ---- */

void usps__client_io(usps *ps, uint32_t events);
/* Events on the ring's wake_fd (0: a turn that polls it again). */
void usps__client_ring_io(usps *ps, uint32_t events);
/* Close the connection and its ring (the handle stays a client). */
void usps__client_close(usps *ps);
/* Connected to the broker @broker_pid of @broker_uid: ask for indexed
 * frames (same uid only), announce every key, then the outbox may flow. */
int usps__client_start(usps *ps, int fd, pid_t broker_pid, uid_t broker_uid);
void usps__client_lost(usps *ps);
/* Move the outbox onto the connection and write. */
void usps__client_take_outbox(usps *ps);
/* Write what is queued on the connection (ps->lock held; any thread). */
void usps__client_flush(usps *ps);
/* Empty conn_out (nothing in it is to be written any more). */
void usps__client_out_reset(usps *ps);
/* Read again if the delivery backlog has drained. */
void usps__client_resume(usps *ps);
/* Send a membership frame for @k on the live connection. */
int usps__client_send_membership(usps *ps, struct key *k, bool unsubscribe);

/* ---- election (election.c) ---- */

/* Check the directory of the path and open the lock file. 0 or -errno. */
int usps__election_prepare(usps *ps);
/*
 * One non-blocking attempt to join: connect, or win the election and bind.
 * Returns 1 when joined (role changed), 0 to retry at ps->next_join_ms,
 * or a negative errno that will not go away by retrying.
 */
int usps__election_step(usps *ps);
/* As broker: check that the path is still ours; rebind or step down. */
void usps__election_watch(usps *ps);
/* As broker: give the role up (close listener, unlink our path, unlock). */
void usps__election_resign(usps *ps, bool unlink_path);
/*
 * Fault injection for tests only: the next @n connects to any bus path in
 * this process fail with ECONNREFUSED, as if nobody listened (Mastra's
 * split-brain tests patch net.createConnection the same way).
 */
void usps__fault_refuse_connects(unsigned n);
void usps__election_cleanup(usps *ps);

/* memcmp() == 0, inline for the short names most topics have: a call
 * would cost more than the compare. */
static inline bool usps__same_bytes(const char *a, const char *b, size_t n)
{
	uint64_t x, y, u, v;

	if (n > 16)
		return memcmp(a, b, n) == 0;
	if (n < 8) {
		unsigned d = 0;

		for (size_t i = 0; i < n; i++)
			d |= (unsigned char)a[i] ^ (unsigned char)b[i];
		return d == 0;
	}
	memcpy(&x, a, 8);
	memcpy(&y, b, 8);
	memcpy(&u, a + n - 8, 8);
	memcpy(&v, b + n - 8, 8);
	return ((x ^ y) | (u ^ v)) == 0;
}

/*
 * What the last lookup by a name's JSON text found, while the table's
 * generation (bumped as entries come and go) is what it was then. Events
 * and publishes come in runs of one topic: a hit spares the decode, hash
 * and compare.
 */
struct usps__last {
	void *found; /* may be NULL: nothing was */
	uint64_t gen;
	size_t n;
	char raw[64];
};

static inline bool usps__last_hit(const struct usps__last *c, uint64_t gen,
				  struct usps__span raw, void **ret)
{
	if (c->gen != gen || raw.n != c->n ||
	    !usps__same_bytes(raw.p, c->raw, raw.n))
		return false;
	*ret = c->found;
	return true;
}

static inline void usps__last_put(struct usps__last *c, uint64_t gen,
				  struct usps__span raw, void *found)
{
	if (raw.n > sizeof(c->raw)) {
		c->gen = gen - 1; /* none */
		return;
	}
	memcpy(c->raw, raw.p, raw.n);
	c->n = raw.n;
	c->found = found;
	c->gen = gen;
}

/* ---- engine (engine.c) ---- */

int usps__engine_start(usps *ps);
void usps__engine_stop(usps *ps);
void usps__engine_wake(usps *ps);

/*
 * The delivery thread polls in the I/O thread's stead while it has nothing
 * to run and the handle is a client: an event then costs one thread
 * wake-up in this process instead of two (I/O thread, then delivery
 * thread). ps->poller says who polls; the other one waits. The I/O
 * thread, parked, takes polling back when a handler runs longer than
 * USPS__DL_GUARD_MS (to twice that), and the delivery thread gives it back
 * when the handle stops being a client or stops reading. Under load it
 * keeps polling: reading and handling on one thread cost less CPU than on
 * two, and on a small machine the other core is busy with the broker and
 * the publishers (bench/). See engine.c.
 */
enum {
	USPS__POLL_IO,
	USPS__POLL_DL
};
#define USPS__DL_GUARD_MS 4
/*
 * From the delivery thread, with nothing queued: poll for up to
 * @timeout_ms (-1: no limit) and run a loop turn if polling is ours, else
 * ask for it. Returns true if it polled (the caller looks at its queue
 * again), false if the caller should wait on dq_cond.
 */
bool usps__engine_dl_poll(usps *ps, int timeout_ms);
/* From the delivery thread, before running handlers while it polls. */
void usps__engine_dl_guard(usps *ps);
void usps__engine_set_role(usps *ps, enum role role);
/* Start looking for a broker again (connection lost, stepped down). */
void usps__engine_rejoin(usps *ps, int delay_ms);
int usps__engine_watch_fd(usps *ps, int fd, struct ioh *h, uint32_t events,
			  bool modify);
/* Stop watching @fd: needed before closing a descriptor whose file another
 * process holds too (a ring's eventfd), which closing does not remove. */
void usps__engine_unwatch_fd(usps *ps, int fd);

/* The cache line size assumed for keeping hot fields apart. */
#define USPS__CACHE_LINE 64

/* Allocated with that alignment (usps_open()). */
struct usps {
	char *path;
	size_t path_len;
	char *lock_path;  /* path + ".lock": our broker tenure (flock) */
	char *elect_path; /* path + ".elect": Mastra's election file */
	char *dir;	  /* dirname(path) */
	const char *base; /* basename, inside path */
	usps_options opt;
	uid_t uid;

	/* Every API call writes inflight and reads stopping, while the I/O
	 * thread writes ps->lock every turn: each has a cache line of its
	 * own, so that publishing threads do not wait for the line. */
	alignas(USPS__CACHE_LINE) atomic_uint inflight; /* callers in the API */
	atomic_bool stopping; /* usps_close() began; set under all locks */
	/* Written under out_lock, read without it by publish_direct() as a
	 * hint: the outbox holds bytes, so the direct path cannot be taken. */
	atomic_bool outbox_queued;

	alignas(USPS__CACHE_LINE) pthread_mutex_t lock;
	pthread_cond_t cond; /* role changes, acks, flush progress */
	enum role role;
	int open_error;	   /* a permanent join error, for usps_open() */
	uint64_t role_gen; /* bumped on every role change */

	/* engine */
	pthread_t io_thread;
	bool io_started;
	int epfd;
	int wakefd;
	struct ioh wake_ioh;
	atomic_bool wake_pending;
	atomic_int poller;   /* USPS__POLL_*; written under ps->lock */
	bool dl_wants_poll;  /* under ps->lock */
	atomic_bool dl_busy; /* handlers run while the DL thread polls */
	atomic_uint_fast64_t dl_batch;	  /* handler runs begun while polling */
	atomic_bool guard_armed;	  /* the guard timer is set */
	atomic_uint_fast64_t guard_batch; /* the run it was set for */
	int parkfd;  /* eventfd: wakes the parked I/O thread */
	int guardfd; /* timerfd: a handler runs too long */

	/* election and broker tenure */
	int lockfd; /* open always; flock held while broker */
	bool lock_held;
	/*
	 * Listening sockets: [0] is bound at the path now. A rebind (the path
	 * was deleted) keeps the previous one in [1], since its socket may
	 * still be reachable under another name (renamed, hard-linked).
	 */
	struct listener {
		struct ioh ioh;
		int fd;
	} lst[2];
	dev_t sock_dev;
	ino_t sock_ino;
	int inofd;
	struct ioh ino_ioh;
	int64_t next_join_ms;
	int64_t next_watch_ms;
	unsigned join_backoff_ms;
	unsigned lock_busy_tries; /* election steps that found P.lock held */
	int64_t broker_since_ms;
	pid_t broker_pid;
	int64_t conn_since_ms;	 /* when the current connection began */
	int64_t listed_since_ms; /* see election.c, listener_blocks() */
	int refused;		 /* -EPERM once a broker refused our uid */

	/* broker */
	struct peer self;
	struct peer **peers;
	size_t npeers, cappeers;
	uint64_t next_peer_id;
	struct hmap topics;
	uint64_t topics_gen;  /* bumped as topics come and go */
	struct usps__last tc; /* the topic of the last publish */
	struct peer *dirty;
	bool reap_pending;
	unsigned ncongested; /* peers with congested set */
	bool intake_paused;  /* peers' EPOLLIN removed */
	struct usps__uuidgen uuid;
	struct usps__buf scratch; /* event frame under construction */
	int64_t stamp_ms; /* createdAt for the frames of one read; 0: none */
	struct usps__buf direct; /* a publish routed by its caller */

	/* client */
	int connfd;
	struct ioh conn_ioh;
	struct usps__reader conn_rd;
	/*
	 * Records for the broker (wire.h), written from conn_off: membership
	 * frames and the outbox, which is swapped in whole when this is
	 * empty. Those before conn_rec_at go out as lines, headers left out
	 * (conn_off is then a record's start and conn_part the bytes of its
	 * line already written); from conn_rec_at on, as they are. It is 0
	 * or SIZE_MAX whenever conn_out is emptied, as conn_rec_out says.
	 */
	struct usps__buf conn_out;
	size_t conn_off;
	size_t conn_part;
	size_t conn_rec_at;
	bool conn_rec_out; /* sent "usps.records" on this connection */
	bool conn_want_out;
	bool conn_paused;     /* reading stopped: deliveries backed up */
	bool conn_ix_asked;   /* sent "usps.index" on this connection */
	bool conn_records;    /* the broker said yes: records from here on */
	bool conn_ring_asked; /* sent "usps.ring" on this connection */
	bool conn_ring_off;   /* a ring failed: ask no more (this handle) */
	/* The descriptors that came with the broker's "usps.ring", until its
	 * line is read (-1: none); then the ring, read instead of the socket,
	 * with ring_ioh on its wake_fd. */
	int conn_ring_fds[USPS__RING_FDS];
	struct usps__ring ring;
	struct ioh ring_ioh;
	bool ring_signalled; /* wake_fd is readable: reset it before sleeping */
	uint64_t conn_out_end; /* outbox position when conn_out empties */

	/* registry */
	struct hmap keys;
	uint64_t keys_gen;    /* bumped as keys come and go */
	struct usps__last kc; /* the fan-out key of the last event's topic */
	uint64_t hash_seed;

	/* outbox, under out_lock */
	alignas(USPS__CACHE_LINE) pthread_mutex_t out_lock;
	pthread_cond_t out_cond;
	struct usps__buf outbox; /* records (wire.h) */
	struct usps__buf route;	 /* taken from the outbox, being routed */
	size_t route_off;	 /* bytes of route already routed */
	uint64_t out_appended;	 /* bytes ever appended */
	uint64_t out_taken;	 /* bytes taken by the I/O thread */
	uint64_t out_done;	 /* bytes written to the broker, or routed */
	unsigned flush_waiters;	 /* under ps->lock */

	/* delivery, under dq_lock */
	alignas(USPS__CACHE_LINE) pthread_mutex_t dq_lock;
	pthread_cond_t dq_cond;
	pthread_t dl_thread;
	bool dl_started;
	bool dl_stop;
	struct usps_delivery *dq_head, *dq_tail;
	/* staged, under ps->lock (not dq_lock) */
	struct usps_delivery *stage_head, *stage_tail;
	uint64_t stage_n, stage_bytes;
	struct usps_delivery *timers; /* redeliveries, sorted by due_ms */
	/* Freed events kept for reuse, per size class (delivery.c); under
	 * ps->lock. */
	struct dl_event *ev_cache[USPS__DL_CLASSES];
	size_t ev_cache_bytes;
	/* Done deliveries, freed by the thread that allocated them (at its
	 * next commit): a free on another thread costs an arena lock. */
	struct usps_delivery *dl_done;
	uint64_t dl_done_bytes;
	atomic_bool dl_done_any; /* dl_done non-empty; read unlocked */
	uint64_t dq_enq, dq_done;
	uint64_t dq_bytes;		 /* event bytes queued */
	struct usps_sub *running;	 /* sub whose handler runs now */
	struct usps__uuidgen uuid_local; /* localOnly stamping */

	/* inline delivery (delivery.c), the delivery thread's alone */
	bool dl_turn;	   /* it runs a loop turn (under ps->lock) */
	bool dl_again;	   /* its last turn read a full buffer (ps->lock) */
	unsigned dl_skips; /* its turns since its last epoll_wait() */
	bool ib_ok; /* usps__dl_push() may note events (under ps->lock) */
	struct usps__ib_ent *ib;
	size_t ib_n, ib_cap;
	char *ib_buf, *ib_spare; /* the held reader buffer; one for reuse */
	size_t ib_buf_cap, ib_spare_cap;
	char *ib_scratch; /* an event's decoded strings */
	size_t ib_scratch_cap;
};

/* Bytes of queued deliveries past which a client stops reading. */
#define USPS__DQ_HIGH (64u << 20)
#define USPS__DQ_LOW (32u << 20)

static inline bool usps__broker_intake_open(const usps *ps)
{
	return ps->ncongested == 0;
}

#endif /* USPS_INTERNAL_H */
