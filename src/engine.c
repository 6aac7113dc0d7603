/* SPDX-License-Identifier: MIT */
/*
 * The engine: one epoll loop, run by the I/O thread, that drives the
 * election, the broker or client role, the outbox and the path watchdog.
 * Everything it does is non-blocking; it holds ps->lock while it works on
 * a batch of events and releases it while it waits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/timerfd.h>
#include <poll.h>
#include <unistd.h>

#include "internal.h"

int usps__engine_watch_fd(usps *ps, int fd, struct ioh *h, uint32_t events,
			  bool modify)
{
	struct epoll_event ev = { .events = events, .data.ptr = h };

	if (epoll_ctl(ps->epfd, modify ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd,
		      &ev) < 0)
		return -errno;
	return 0;
}

void usps__engine_unwatch_fd(usps *ps, int fd)
{
	(void)epoll_ctl(ps->epfd, EPOLL_CTL_DEL, fd, NULL);
}

static void write_one(int fd)
{
	uint64_t one = 1;

	while (write(fd, &one, sizeof(one)) < 0 && errno == EINTR)
		;
}

static bool read_one(int fd)
{
	uint64_t v;
	ssize_t n;

	while ((n = read(fd, &v, sizeof(v))) < 0 && errno == EINTR)
		;
	return n == (ssize_t)sizeof(v);
}

void usps__engine_wake(usps *ps)
{
	if (atomic_exchange(&ps->wake_pending, true))
		return;
	write_one(ps->wakefd);
}

void usps__engine_set_role(usps *ps, enum role role)
{
	ps->role = role;
	ps->role_gen++;
	pthread_cond_broadcast(&ps->cond);
}

void usps__engine_rejoin(usps *ps, int delay_ms)
{
	usps__engine_set_role(ps, ROLE_JOINING);
	ps->next_join_ms = usps__now_ms() + delay_ms;
	/* A user thread can lose the connection (a failed send) while the
	 * I/O thread sleeps with no timeout: make it recompute one. */
	usps__engine_wake(ps);
}

/*
 * As broker: route the broker's own publishes. They are taken from the
 * outbox in one swap, so that publishers keep appending meanwhile, and
 * routed until intake closes (back-pressure); the rest waits.
 */
static void broker_take_outbox(usps *ps)
{
	struct usps__buf *b = &ps->route;

	if (ps->route_off == b->len) {
		struct usps__buf t;

		pthread_mutex_lock(&ps->out_lock);
		t = ps->outbox;
		ps->outbox = *b;
		ps->outbox.len = 0;
		atomic_store_explicit(&ps->outbox_queued, false,
				      memory_order_relaxed);
		ps->out_taken += t.len;
		if (t.len)
			pthread_cond_broadcast(&ps->out_cond);
		pthread_mutex_unlock(&ps->out_lock);
		*b = t;
		ps->route_off = 0;
	}
	while (ps->route_off < b->len && usps__broker_intake_open(ps)) {
		const char *rec = b->p + ps->route_off;
		size_t left = b->len - ps->route_off;
		size_t n = left < 4 ? left : usps__rec_size(rec);

		if (n > left)
			n = left; /* cannot happen: we built them */
		usps__broker_route_own(ps, rec, n);
		ps->route_off += n;
	}
	pthread_mutex_lock(&ps->out_lock);
	/* out_taken counts what was swapped out; the unrouted rest of it is
	 * not done yet. */
	if (ps->out_done != ps->out_taken - (b->len - ps->route_off)) {
		ps->out_done = ps->out_taken - (b->len - ps->route_off);
		pthread_cond_broadcast(&ps->out_cond);
	}
	pthread_mutex_unlock(&ps->out_lock);
}

static void drain_inotify(usps *ps)
{
	char buf[4096]
		__attribute__((aligned(__alignof__(struct inotify_event))));
	bool ours = false;

	for (;;) {
		ssize_t n = read(ps->inofd, buf, sizeof(buf));

		if (n <= 0)
			break;
		for (char *p = buf; p < buf + n;) {
			struct inotify_event *e = (struct inotify_event *)p;

			if (e->len && !strcmp(e->name, ps->base))
				ours = true;
			if (e->mask & IN_Q_OVERFLOW)
				ours = true;
			p += sizeof(*e) + e->len;
		}
	}
	if (ours && ps->role == ROLE_BROKER)
		usps__election_watch(ps);
	/* Joining: the path changed (a new broker bound it, or removed a
	 * stale one first): look again now rather than at the backoff. */
	if (ours && ps->role == ROLE_JOINING && !ps->refused)
		ps->next_join_ms = usps__now_ms();
}

static int next_timeout(usps *ps)
{
	int64_t now = usps__now_ms(), t = -1;

	if (ps->role == ROLE_JOINING)
		t = ps->next_join_ms > now ? ps->next_join_ms - now : 0;
	else if (ps->role == ROLE_BROKER)
		t = ps->next_watch_ms > now ? ps->next_watch_ms - now : 0;
	if (ps->role == ROLE_BROKER && ps->ncongested && t > 50)
		t = 50; /* look for stalled clients */
	return t > 60000 ? 60000 : (int)t;
}

/* Is @h one of the handle's own registrations (never freed in a turn)? */
static bool own_ioh(const usps *ps, const struct ioh *h)
{
	return h == &ps->wake_ioh || h == &ps->conn_ioh || h == &ps->ino_ioh ||
	       h == &ps->ring_ioh || h == &ps->lst[0].ioh ||
	       h == &ps->lst[1].ioh;
}

static void turn(usps *ps, struct epoll_event *evs, int n)
{
	uint64_t gen = ps->role_gen;

	for (int i = 0; i < n; i++) {
		struct ioh *h = evs[i].data.ptr;
		uint32_t e = evs[i].events;

		/* Stepping down (the watchdog, on an inotify event) frees the
		 * peers that later events of this batch may point at: once the
		 * role changed, look only at our own registrations; a peer's
		 * socket that is still open is reported again. */
		if (ps->role_gen != gen && !own_ioh(ps, h))
			continue;
		switch (h->kind) {
		case IOH_WAKE:
			atomic_store(&ps->wake_pending, false);
			(void)read_one(ps->wakefd);
			break;
		case IOH_LISTEN: {
			struct listener *l = (struct listener *)h;

			if (ps->role == ROLE_BROKER && l->fd >= 0)
				(void)usps__broker_accept(ps, l->fd);
			break;
		}
		case IOH_PEER:
			if (ps->role == ROLE_BROKER)
				usps__broker_peer_io(ps, (struct peer *)h, e);
			break;
		case IOH_CONN:
			if (ps->role == ROLE_CLIENT)
				usps__client_io(ps, e);
			break;
		case IOH_INOTIFY:
			drain_inotify(ps);
			break;
		case IOH_PEER_ROOM:
			if (ps->role == ROLE_BROKER)
				usps__broker_room(
					ps, ((struct peer_room *)h)->peer);
			break;
		case IOH_RING:
			if (ps->role == ROLE_CLIENT)
				usps__client_ring_io(ps, e);
			break;
		}
	}
	if (ps->role == ROLE_JOINING && usps__now_ms() >= ps->next_join_ms) {
		int r = usps__election_step(ps);

		if (r < 0 && !ps->open_error) {
			ps->open_error = r;
			pthread_cond_broadcast(&ps->cond);
		}
		if (r < 0)
			ps->next_join_ms = usps__now_ms() + 100;
	}
	if (ps->role == ROLE_CLIENT) {
		usps__client_resume(ps);
		usps__client_take_outbox(ps);
	}
	if (ps->role == ROLE_BROKER) {
		usps__broker_tick(ps);
		broker_take_outbox(ps);
		usps__broker_flush_dirty(ps);
		usps__broker_reap(ps);
		if (usps__now_ms() >= ps->next_watch_ms)
			usps__election_watch(ps);
	}
	usps__dl_commit(ps);
	if (ps->flush_waiters)
		pthread_cond_broadcast(&ps->cond);
}

/* Polling goes back to the I/O thread (ps->lock held). */
static void give_back(usps *ps)
{
	if (atomic_load(&ps->poller) != USPS__POLL_DL)
		return;
	atomic_store(&ps->poller, USPS__POLL_IO);
	write_one(ps->parkfd);
}

/* May the delivery thread poll? Only as a client that reads. */
static bool dl_may_poll(const usps *ps)
{
	return !ps->stopping && ps->role == ROLE_CLIENT && !ps->conn_paused;
}

static void guard_arm(usps *ps)
{
	struct itimerspec its = {
		.it_value.tv_nsec = USPS__DL_GUARD_MS * 1000000L,
	};

	atomic_store(&ps->guard_batch, atomic_load(&ps->dl_batch));
	(void)timerfd_settime(ps->guardfd, 0, &its, NULL);
}

/*
 * The guard timer fired (I/O thread). Setting a timer costs the delivery
 * thread a system call and, in a VM, an exit to the hypervisor, so it is
 * set once for many handler runs: the run it was set for still going
 * means a handler has run USPS__DL_GUARD_MS, so polling is taken back;
 * another run going is watched from now on; none, and the timer rests
 * until the delivery thread sets it again.
 */
static void guard_fired(usps *ps)
{
	if (atomic_load(&ps->dl_busy)) {
		if (atomic_load(&ps->dl_batch) == atomic_load(&ps->guard_batch))
			atomic_store(&ps->poller, USPS__POLL_IO);
		guard_arm(ps);
		return;
	}
	atomic_store(&ps->guard_armed, false);
	/* It may have begun a run since we looked, seeing the timer set. */
	if (atomic_load(&ps->dl_busy) &&
	    !atomic_exchange(&ps->guard_armed, true))
		guard_arm(ps);
}

/*
 * The I/O thread while the delivery thread polls: wait for polling to come
 * back, or for the guard timer, which the delivery thread arms before it
 * runs handlers; if it fires while they still run, take polling back, so
 * that a slow handler does not leave the socket unread.
 */
static void park(usps *ps)
{
	struct pollfd pf[2] = {
		{ .fd = ps->parkfd, .events = POLLIN },
		{ .fd = ps->guardfd, .events = POLLIN },
	};

	pthread_mutex_unlock(&ps->lock);
	(void)poll(pf, 2, -1);
	pthread_mutex_lock(&ps->lock);
	if (pf[0].revents)
		(void)read_one(ps->parkfd);
	if (pf[1].revents && read_one(ps->guardfd))
		guard_fired(ps);
}

/*
 * The delivery thread asked to poll: let it if it still may and is still
 * idle. A handler already running when polling is granted would run
 * without the guard timer (set as handler runs begin), so a blocked one
 * would leave the socket unread; the thread asks again when it idles.
 */
static void grant(usps *ps)
{
	ps->dl_wants_poll = false;
	if (!dl_may_poll(ps) || atomic_load(&ps->poller) == USPS__POLL_DL)
		return;
	pthread_mutex_lock(&ps->dq_lock);
	if (!ps->dq_head && !ps->running) {
		atomic_store(&ps->poller, USPS__POLL_DL);
		pthread_cond_broadcast(&ps->dq_cond);
	}
	pthread_mutex_unlock(&ps->dq_lock);
}

static void *io_main(void *arg)
{
	usps *ps = arg;
	struct epoll_event evs[64];

	(void)usps__rand_warm();
	pthread_mutex_lock(&ps->lock);
	while (!ps->stopping) {
		int timeout;
		int n;

		if (ps->dl_wants_poll)
			grant(ps);
		if (atomic_load(&ps->poller) == USPS__POLL_DL) {
			park(ps);
			continue;
		}
		timeout = next_timeout(ps);
		pthread_mutex_unlock(&ps->lock);
		n = epoll_wait(ps->epfd, evs, 64, timeout);
		pthread_mutex_lock(&ps->lock);
		if (n < 0)
			n = 0; /* EINTR */
		if (!ps->stopping)
			turn(ps, evs, n);
	}
	/* Hand the role over: path and lock go first, so that the clients
	 * that see their connection close can elect a successor at once. */
	if (ps->role == ROLE_BROKER) {
		usps__election_resign(ps, true);
		usps__broker_reset(ps);
	} else if (ps->role == ROLE_CLIENT) {
		usps__client_close(ps);
		usps__client_out_reset(ps);
	}
	usps__engine_set_role(ps, ROLE_JOINING);
	pthread_mutex_unlock(&ps->lock);
	return NULL;
}

/* Turns the delivery thread may take in a row without epoll_wait(). */
#define DL_SKIPS 16

bool usps__engine_dl_poll(usps *ps, int timeout_ms)
{
	struct epoll_event evs[64];
	bool queued, again;
	int n;

	pthread_mutex_lock(&ps->lock);
	if (!dl_may_poll(ps)) {
		give_back(ps);
		pthread_mutex_unlock(&ps->lock);
		return false;
	}
	if (atomic_load(&ps->poller) != USPS__POLL_DL) {
		if (!ps->dl_wants_poll) {
			ps->dl_wants_poll = true;
			usps__engine_wake(ps);
		}
		pthread_mutex_unlock(&ps->lock);
		return false;
	}
	/*
	 * The I/O thread may have queued deliveries since the caller saw
	 * none, and then granted polling: run those first. Deliveries are
	 * committed under ps->lock, and from now on a commit by another
	 * thread wakes our epoll_wait (usps__dl_commit()).
	 */
	pthread_mutex_lock(&ps->dq_lock);
	queued = ps->dq_head != NULL;
	pthread_mutex_unlock(&ps->dq_lock);
	again = ps->dl_again && ps->role == ROLE_CLIENT;
	pthread_mutex_unlock(&ps->lock);
	if (queued)
		return true;

	/*
	 * A turn that read a full buffer most likely left more to read:
	 * read again without asking epoll first, a system call per read
	 * saved under load. Every DL_SKIPS turns epoll is asked anyway, for
	 * the other descriptors (level-triggered: nothing is missed).
	 */
	if (again && ps->dl_skips < DL_SKIPS) {
		ps->dl_skips++;
		/* A ring's wake_fd is reset only when epoll reports it:
		 * no EPOLLIN for it. */
		if (ps->ring.hdr)
			evs[0] = (struct epoll_event){ .data.ptr =
							       &ps->ring_ioh };
		else
			evs[0] = (struct epoll_event){ .events = EPOLLIN,
						       .data.ptr =
							       &ps->conn_ioh };
		n = 1;
	} else {
		ps->dl_skips = 0;
		n = epoll_wait(ps->epfd, evs, 64, timeout_ms);
	}

	pthread_mutex_lock(&ps->lock);
	ps->dl_again = false;
	/* Polling may have been taken back meanwhile: these events are
	 * then the I/O thread's to see again (they are level-triggered). */
	if (atomic_load(&ps->poller) == USPS__POLL_DL && !ps->stopping) {
		ps->dl_turn = true;
		turn(ps, evs, n < 0 ? 0 : n);
		ps->dl_turn = false;
		if (!dl_may_poll(ps))
			give_back(ps);
	}
	pthread_mutex_unlock(&ps->lock);
	/* What the turn read for us to deliver inline (client.c). The
	 * I/O thread never touches ib: it reads only while not dl_turn. */
	usps__dl_run_inline(ps);
	return true;
}

void usps__engine_dl_guard(usps *ps)
{
	if (atomic_load(&ps->dl_busy) ||
	    atomic_load(&ps->poller) != USPS__POLL_DL)
		return;
	atomic_fetch_add(&ps->dl_batch, 1);
	atomic_store(&ps->dl_busy, true);
	if (!atomic_exchange(&ps->guard_armed, true))
		guard_arm(ps);
}

int usps__engine_start(usps *ps)
{
	int r;

	ps->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (ps->epfd < 0)
		return -errno;
	ps->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (ps->wakefd < 0)
		return -errno;
	ps->wake_ioh.kind = IOH_WAKE;
	r = usps__engine_watch_fd(ps, ps->wakefd, &ps->wake_ioh, EPOLLIN,
				  false);
	if (r < 0)
		return r;
	ps->parkfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (ps->parkfd < 0)
		return -errno;
	ps->guardfd =
		timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (ps->guardfd < 0)
		return -errno;
	/* The watchdog works without inotify too, on its timer. */
	ps->inofd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (ps->inofd >= 0) {
		ps->ino_ioh.kind = IOH_INOTIFY;
		if (inotify_add_watch(ps->inofd, ps->dir,
				      IN_DELETE | IN_MOVED_FROM | IN_CREATE |
					      IN_MOVED_TO) < 0 ||
		    usps__engine_watch_fd(ps, ps->inofd, &ps->ino_ioh, EPOLLIN,
					  false) < 0) {
			close(ps->inofd);
			ps->inofd = -1;
		}
	}
	/* The delivery thread runs already, and looks at the role. */
	pthread_mutex_lock(&ps->lock);
	ps->role = ROLE_JOINING;
	ps->next_join_ms = usps__now_ms();
	pthread_mutex_unlock(&ps->lock);
	r = pthread_create(&ps->io_thread, NULL, io_main, ps);
	if (r)
		return -r;
	ps->io_started = true;
	return 0;
}

void usps__engine_stop(usps *ps)
{
	if (ps->io_started) {
		usps__engine_wake(ps);
		/* It may be parked (the delivery thread polled). */
		write_one(ps->parkfd);
		pthread_join(ps->io_thread, NULL);
		ps->io_started = false;
	}
	usps__election_cleanup(ps);
	if (ps->inofd >= 0)
		close(ps->inofd);
	if (ps->wakefd >= 0)
		close(ps->wakefd);
	if (ps->epfd >= 0)
		close(ps->epfd);
	if (ps->parkfd >= 0)
		close(ps->parkfd);
	if (ps->guardfd >= 0)
		close(ps->guardfd);
	ps->inofd = ps->wakefd = ps->epfd = ps->parkfd = ps->guardfd = -1;
}
