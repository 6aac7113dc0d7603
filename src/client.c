/* SPDX-License-Identifier: MIT */
/*
 * The client side: the connection to the broker, membership frames and
 * their acknowledgements, resubscription after every (re)connect, and
 * incoming events handed to the registry.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "internal.h"

static void conn_events(usps *ps)
{
	uint32_t ev = ps->conn_paused ? 0 : EPOLLIN;

	if (ps->ring.hdr)
		(void)usps__engine_watch_fd(ps, ps->ring.wake_fd, &ps->ring_ioh,
					    ev, true);
	if (ps->conn_want_out)
		ev |= EPOLLOUT;
	(void)usps__engine_watch_fd(ps, ps->connfd, &ps->conn_ioh, ev, true);
}

/*
 * A ring that may hold bytes unread has asked for no wake-up: make its
 * wake_fd readable, so that epoll reports it again, unless it is already
 * (ring_signalled) or @done says the ring was read empty (take_input(),
 * which then asked for a wake-up).
 */
static void rewake(usps *ps, bool done)
{
	if (done || !ps->ring.hdr || ps->ring_signalled)
		return;
	usps__ring_kick(ps->ring.wake_fd);
	ps->ring_signalled = true;
}

/* Drop the descriptors of a ring not set up yet. */
static void drop_ring_fds(usps *ps)
{
	for (int i = 0; i < USPS__RING_FDS; i++) {
		if (ps->conn_ring_fds[i] >= 0)
			(void)close(ps->conn_ring_fds[i]);
		ps->conn_ring_fds[i] = -1;
	}
}

void usps__client_close(usps *ps)
{
	if (ps->ring.hdr)
		usps__engine_unwatch_fd(ps, ps->ring.wake_fd);
	usps__ring_free(&ps->ring);
	drop_ring_fds(ps);
	ps->conn_ring_asked = false;
	if (ps->connfd >= 0)
		close(ps->connfd); /* also leaves the epoll set */
	ps->connfd = -1;
	usps__reader_free(&ps->conn_rd);
}

void usps__client_out_reset(usps *ps)
{
	ps->conn_out.len = ps->conn_off = ps->conn_part = 0;
	ps->conn_rec_at = ps->conn_rec_out ? 0 : SIZE_MAX;
}

/* Everything handed to the connection is out (written, or lost with it):
 * release usps_flush() waiters. */
static void conn_emptied(usps *ps)
{
	usps__client_out_reset(ps);
	pthread_mutex_lock(&ps->out_lock);
	if (ps->out_done < ps->conn_out_end) {
		ps->out_done = ps->conn_out_end;
		pthread_cond_broadcast(&ps->out_cond);
	}
	pthread_mutex_unlock(&ps->out_lock);
}

/* The header's size of a record in conn_out. */
static size_t rec_hlen(const char *rec)
{
	return usps__get_le16(rec + 6);
}

/* Lines at most per sendmsg() while headers are left out. */
#define LINES_IOV 64

/* Write the lines of the records from conn_off up to conn_rec_at, without
 * their headers. What send() returns. */
static ssize_t send_lines(usps *ps)
{
	struct iovec iov[LINES_IOV];
	struct msghdr msg = { .msg_iov = iov };
	char *p = ps->conn_out.p;
	size_t off = ps->conn_off, part = ps->conn_part;
	size_t end = ps->conn_rec_at < ps->conn_out.len ? ps->conn_rec_at
							: ps->conn_out.len;

	while (off < end && msg.msg_iovlen < LINES_IOV) {
		size_t size = usps__rec_size(p + off);
		size_t hlen = rec_hlen(p + off);

		iov[msg.msg_iovlen].iov_base = p + off + hlen + part;
		iov[msg.msg_iovlen++].iov_len = size - hlen - part;
		off += size;
		part = 0;
	}
	return sendmsg(ps->connfd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* @n bytes of lines went out from conn_off (send_lines()). */
static void lines_written(usps *ps, size_t n)
{
	const char *p = ps->conn_out.p;

	while (n) {
		size_t size = usps__rec_size(p + ps->conn_off);
		size_t left = size - rec_hlen(p + ps->conn_off) - ps->conn_part;

		if (n < left) {
			ps->conn_part += n;
			return;
		}
		n -= left;
		ps->conn_off += size;
		ps->conn_part = 0;
	}
}

/* Write what is queued for the broker; note when it is all out. */
void usps__client_flush(usps *ps)
{
	bool want_out = false;

	while (ps->conn_off < ps->conn_out.len) {
		bool lines = ps->conn_off < ps->conn_rec_at;
		ssize_t n = lines ? send_lines(ps)
				  : send(ps->connfd,
					 ps->conn_out.p + ps->conn_off,
					 ps->conn_out.len - ps->conn_off,
					 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			want_out = true;
			break;
		}
		if (n < 0) {
			usps__client_lost(ps);
			return;
		}
		if (lines)
			lines_written(ps, (size_t)n);
		else
			ps->conn_off += (size_t)n;
	}
	if (!want_out)
		conn_emptied(ps);
	if (want_out != ps->conn_want_out) {
		ps->conn_want_out = want_out;
		conn_events(ps);
	}
}

/* Append the line @line of @n bytes ('\n' included) as a plain record. */
static int put_plain(usps *ps, const char *line, size_t n)
{
	size_t at;
	int r = usps__rec_begin(&ps->conn_out, &at);

	if (r == 0)
		r = usps__rec_end(&ps->conn_out, at,
				  usps__buf_put(&ps->conn_out, line, n));
	return r;
}

int usps__client_send_membership(usps *ps, struct key *k, bool unsubscribe)
{
	size_t at;
	int r;

	if (ps->role != ROLE_CLIENT)
		return -ENOTCONN;
	r = usps__rec_begin(&ps->conn_out, &at);
	if (r == 0)
		r = usps__rec_end(
			&ps->conn_out, at,
			usps__wire_put_membership(&ps->conn_out, unsubscribe,
						  k->topic, k->topic_len,
						  k->group, k->group_len));
	if (r < 0)
		return r;
	if (unsubscribe)
		k->unsub_sent++;
	else
		k->sub_sent++;
	usps__client_flush(ps);
	return 0;
}

/*
 * The outbox's bytes go out on the connection, behind memberships. The
 * outbox is taken only when the connection buffer is empty, by swapping
 * the two, so its bytes are never copied and both buffers keep their
 * memory. While the connection buffer still holds bytes the socket is full
 * (we wait for EPOLLOUT), and the outbox fills meanwhile, up to
 * max_outbox_bytes, after which usps_publish() waits: back-pressure.
 */
void usps__client_take_outbox(usps *ps)
{
	bool took = false;

	if (ps->conn_off < ps->conn_out.len)
		return;
	pthread_mutex_lock(&ps->out_lock);
	if (ps->outbox.len) {
		struct usps__buf t;

		usps__client_out_reset(ps);
		t = ps->conn_out;
		ps->conn_out = ps->outbox;
		ps->outbox = t;
		atomic_store_explicit(&ps->outbox_queued, false,
				      memory_order_relaxed);
		took = true;
		ps->out_taken = ps->out_appended;
		ps->conn_out_end = ps->out_taken;
		pthread_cond_broadcast(&ps->out_cond);
	}
	pthread_mutex_unlock(&ps->out_lock);
	if (took)
		usps__client_flush(ps);
}

int usps__client_start(usps *ps, int fd, pid_t broker_pid, uid_t broker_uid)
{
	static const char ask[] = "{\"type\":\"usps.index\"}\n";
	static const char ring[] = "{\"type\":\"usps.ring\"}\n";
	int r;

	ps->connfd = fd;
	ps->conn_want_out = false;
	ps->conn_paused = false;
	ps->conn_ix_asked = false;
	ps->conn_records = false;
	ps->conn_rec_out = false;
	ps->conn_ring_asked = false;
	ps->ring_signalled = false;
	usps__ring_init(&ps->ring);
	for (int i = 0; i < USPS__RING_FDS; i++)
		ps->conn_ring_fds[i] = -1;
	usps__reader_init(&ps->conn_rd, ps->opt.max_inbound_frame_bytes);
	usps__client_out_reset(ps);
	r = usps__engine_watch_fd(ps, fd, &ps->conn_ioh, EPOLLIN, false);
	if (r < 0) {
		close(fd);
		ps->connfd = -1;
		usps__reader_free(&ps->conn_rd);
		return r;
	}
	ps->broker_pid = broker_pid;
	ps->conn_since_ms = usps__now_ms();
	usps__engine_set_role(ps, ROLE_CLIENT);
	/* Indexed frames are asked of a broker of our own uid only: their
	 * content is taken on trust (wire.h). First, so that the answer comes
	 * before any event. */
	if (broker_uid == ps->uid && put_plain(ps, ask, sizeof(ask) - 1) == 0)
		ps->conn_ix_asked = true;
	/* And a ring, to be read instead of the socket (wire.h). */
	if (ps->conn_ix_asked && ps->opt.shm_ring_bytes && !ps->conn_ring_off &&
	    put_plain(ps, ring, sizeof(ring) - 1) == 0)
		ps->conn_ring_asked = true;
	/* Announce every membership again; waiters are released by the acks
	 * of these frames. Unsubscribes in flight are moot on a new broker. */
	for (size_t b = 0; b < ps->keys.nb; b++) {
		for (struct hnode *n = ps->keys.b[b]; n; n = n->next) {
			struct key *k = (struct key *)n;

			k->sub_base = k->sub_sent;
			k->sub_conn_acks = 0;
			k->unsub_base = k->unsub_sent;
			k->unsub_conn_acks = 0;
			k->unsub_acked = k->unsub_sent;
			if (k->nsubs && ps->role == ROLE_CLIENT)
				(void)usps__client_send_membership(ps, k,
								   false);
		}
	}
	if (ps->role == ROLE_CLIENT && ps->conn_off < ps->conn_out.len)
		usps__client_flush(ps); /* the request, if nothing else */
	pthread_cond_broadcast(&ps->cond);
	return 0;
}

/*
 * The connection died with bytes not yet written: those publish frames
 * never reached anyone, so they go back to the front of the outbox for the
 * next broker. The frame a partial write cut is dropped (the dead broker
 * may have had part of it), and membership frames too (reconnecting
 * announces every membership again).
 */
static void requeue_unsent(usps *ps)
{
	static const char pub[] = "{\"type\":\"publish\"";
	struct usps__buf keep = { 0 };
	const char *p = ps->conn_out.p;
	size_t off, len = ps->conn_out.len;
	bool cut;

	/* The record conn_off is in, and whether some of it went out. */
	if (ps->conn_off < ps->conn_rec_at) {
		off = ps->conn_off;
		cut = ps->conn_part > 0;
	} else {
		off = ps->conn_rec_at;
		while (off < len &&
		       off + usps__rec_size(p + off) <= ps->conn_off)
			off += usps__rec_size(p + off);
		cut = off < ps->conn_off;
	}
	if (cut && off < len)
		off += usps__rec_size(p + off);
	while (off < len) {
		size_t n = usps__rec_size(p + off);
		size_t hlen = rec_hlen(p + off);

		if (n - hlen > sizeof(pub) - 1 &&
		    !memcmp(p + off + hlen, pub, sizeof(pub) - 1) &&
		    usps__buf_put(&keep, p + off, n) < 0)
			break; /* out of memory: the rest is lost */
		off += n;
	}
	if (!keep.len)
		return;
	pthread_mutex_lock(&ps->out_lock);
	if (usps__buf_put(&keep, ps->outbox.p, ps->outbox.len) == 0) {
		struct usps__buf t = ps->outbox;

		ps->outbox = keep;
		keep = t;
		atomic_store_explicit(&ps->outbox_queued, true,
				      memory_order_relaxed);
		/* Taken back: not done, to be taken again. */
		ps->out_taken -= ps->outbox.len - keep.len;
		ps->conn_out_end = ps->out_taken;
		pthread_cond_broadcast(&ps->out_cond);
	}
	pthread_mutex_unlock(&ps->out_lock);
	usps__buf_free(&keep);
}

void usps__client_lost(usps *ps)
{
	if (ps->role != ROLE_CLIENT)
		return;
	usps__client_close(ps);
	/* What was written to a dead broker is lost (at most once); what
	 * was not is sent to the next one. */
	requeue_unsent(ps);
	conn_emptied(ps);
	ps->broker_pid = 0;
	/* A broker that drops us at once (it refuses us, or is dying) is not
	 * retried in a tight loop. */
	if (ps->refused) {
		usps__engine_rejoin(ps, 1000);
	} else if (usps__now_ms() - ps->conn_since_ms < 100) {
		unsigned b = ps->join_backoff_ms ? ps->join_backoff_ms * 2 : 2;

		ps->join_backoff_ms = b > 1000 ? 1000 : b;
		usps__engine_rejoin(ps, (int)ps->join_backoff_ms);
	} else {
		ps->join_backoff_ms = 0;
		usps__engine_rejoin(ps, 0);
	}
}

static void handle_ack(usps *ps, const struct usps__frame *f, bool unsub)
{
	char tbuf[256], gbuf[256];
	char *topic = tbuf, *group = NULL;
	size_t tlen, glen = 0;
	struct key *k;

	if (usps__json_kind(f->topic) != USPS__J_STRING)
		return;
	if (f->topic.n > sizeof(tbuf) && !(topic = malloc(f->topic.n)))
		return;
	if (usps__json_string_decode(f->topic, topic, &tlen) < 0)
		goto out;
	if (f->group_kind == USPS__OPT_STRING) {
		group = f->group.n > sizeof(gbuf) ? malloc(f->group.n) : gbuf;
		if (!group ||
		    usps__json_string_decode(f->group, group, &glen) < 0)
			goto out;
	} else if (f->group_kind == USPS__OPT_OTHER) {
		goto out;
	}
	k = usps__key_find(ps, topic, tlen, group, glen);
	if (!k)
		goto out;
	if (unsub) {
		if (k->unsub_base + k->unsub_conn_acks < k->unsub_sent)
			k->unsub_acked = k->unsub_base + ++k->unsub_conn_acks;
	} else {
		if (k->sub_base + k->sub_conn_acks < k->sub_sent)
			k->sub_acked = k->sub_base + ++k->sub_conn_acks;
	}
	if (k->waiters)
		pthread_cond_broadcast(&ps->cond);
out:
	if (topic != tbuf)
		free(topic);
	if (group != gbuf)
		free(group);
}

/*
 * The broker takes records from us: say so in a line, after which
 * everything we send is records, headers and all (conn_rec_at).
 */
static void start_records(usps *ps)
{
	static const char mark[] = "{\"type\":\"usps.records\"}\n";

	if (put_plain(ps, mark, sizeof(mark) - 1) < 0)
		return;
	ps->conn_rec_out = true;
	ps->conn_rec_at = ps->conn_out.len;
	usps__client_flush(ps);
}

/*
 * The broker's "usps.ring": its descriptors came with it, and nothing more
 * may come on the socket. Read the ring from here on. 0, or -EPROTO: the
 * stream cannot be followed (and rings are not asked for again).
 */
static int start_ring(usps *ps)
{
	int r;

	if (!ps->conn_ring_asked || ps->ring.hdr)
		return 0; /* not asked for: no descriptors, nothing moves */
	if (ps->conn_ring_fds[0] < 0 ||
	    usps__reader_pending(&ps->conn_rd) > 0) {
		ps->conn_ring_off = true;
		return -EPROTO;
	}
	r = usps__ring_attach(&ps->ring, ps->conn_ring_fds);
	for (int i = 0; i < USPS__RING_FDS; i++)
		ps->conn_ring_fds[i] = -1; /* taken over */
	if (r < 0 || usps__engine_watch_fd(ps, ps->ring.wake_fd, &ps->ring_ioh,
					   EPOLLIN, false) < 0) {
		usps__ring_free(&ps->ring);
		ps->conn_ring_off = true;
		return -EPROTO;
	}
	/* Whatever the ring holds already is read on its first wake-up. */
	rewake(ps, false);
	return 0;
}

static int handle_line(usps *ps, const char *line, size_t n)
{
	struct usps__frame f;

	if (usps__wire_parse(line, n, &f) < 0)
		return 0;
	switch (f.type) {
	case USPS__F_SUBSCRIBED:
		handle_ack(ps, &f, false);
		break;
	case USPS__F_UNSUBSCRIBED:
		handle_ack(ps, &f, true);
		break;
	case USPS__F_EVENT:
		(void)usps__deliver_line(ps, line, n, &f);
		break;
	case USPS__F_REFUSED:
		ps->refused = -EPERM;
		pthread_cond_broadcast(&ps->cond);
		break;
	case USPS__F_INDEX:
		/* Every byte after this line is records. */
		if (ps->conn_ix_asked)
			ps->conn_records = true;
		break;
	case USPS__F_RECORDS:
		/* Offered in a record, by the broker we asked. */
		if (ps->conn_records && !ps->conn_rec_out)
			start_records(ps);
		break;
	case USPS__F_RING:
		return start_ring(ps);
	default:
		break;
	}
	return 0;
}

/* One record from the broker. 0, or -EPROTO: the stream cannot be
 * followed any further. */
static int handle_record(usps *ps, const char *rec, size_t n)
{
	struct usps__frame f;
	const char *line;
	size_t len;
	int r = usps__rec_open(rec, n, &line, &len, &f);

	if (r == 1 && f.type == USPS__F_EVENT)
		(void)usps__deliver_line(ps, line, len, &f);
	else if (r == 0)
		return handle_line(ps, line, len);
	return r < 0 ? r : 0;
}

/* Handle what the broker sent, in lines or records. 0 when more bytes are
 * needed, or negative: the connection is unusable. */
static int take_frames(usps *ps)
{
	const char *p;
	size_t n;
	int r;

	for (;;) {
		if (ps->conn_records) {
			r = usps__reader_next_record(&ps->conn_rd, &p, &n);
			if (r == 1)
				r = handle_record(ps, p, n) < 0 ? -EPROTO : 1;
		} else {
			r = usps__reader_next(&ps->conn_rd, &p, &n);
			if (r == 1 && handle_line(ps, p, n) < 0)
				r = -EPROTO;
		}
		if (r != 1)
			return r;
	}
}

/* Stop reading while this process's handlers are far behind, so that the
 * broker's queue for us, not our memory, takes the backlog. */
static bool backed_up(usps *ps)
{
	uint64_t q;

	pthread_mutex_lock(&ps->dq_lock);
	q = ps->dq_bytes;
	pthread_mutex_unlock(&ps->dq_lock);
	return q >= USPS__DQ_HIGH;
}

void usps__client_resume(usps *ps)
{
	uint64_t q;

	if (ps->role != ROLE_CLIENT || !ps->conn_paused)
		return;
	pthread_mutex_lock(&ps->dq_lock);
	q = ps->dq_bytes;
	pthread_mutex_unlock(&ps->dq_lock);
	if (q < USPS__DQ_LOW) {
		ps->conn_paused = false;
		conn_events(ps);
		/* A ring left unread asked for no wake-up: make one. */
		rewake(ps, false);
	}
}

/*
 * The socket as a source of bytes: with recvmsg() while a ring is asked
 * for and not yet set up, so that its descriptors are taken, not lost.
 * Descriptors that come unasked, or twice, break the stream (-EPROTO).
 */
static ssize_t sock_src(void *arg, void *buf, size_t room)
{
	usps *ps = arg;
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int) * USPS__RING_FDS)];
	} ctl;
	struct iovec iov = { .iov_base = buf, .iov_len = room };
	struct msghdr mh = { .msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = ctl.b,
			     .msg_controllen = sizeof(ctl.b) };
	bool bad = false;
	ssize_t n;

	if (!ps->conn_ring_asked || ps->ring.hdr) {
		mh.msg_control = NULL;
		mh.msg_controllen = 0;
	}
	do
		n = recvmsg(ps->connfd, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK ? -EAGAIN
							       : -errno;
	for (struct cmsghdr *c = mh.msg_controllen ? CMSG_FIRSTHDR(&mh) : NULL;
	     c; c = CMSG_NXTHDR(&mh, c)) {
		size_t nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		int fds[USPS__RING_FDS];

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		if (nfd > USPS__RING_FDS)
			nfd = USPS__RING_FDS; /* more: MSG_CTRUNC */
		memcpy(fds, CMSG_DATA(c), nfd * sizeof(int));
		if (nfd != USPS__RING_FDS || ps->conn_ring_fds[0] >= 0) {
			for (size_t i = 0; i < nfd; i++)
				(void)close(fds[i]);
			bad = true;
			continue;
		}
		memcpy(ps->conn_ring_fds, fds, sizeof(fds));
	}
	if (bad || (mh.msg_flags & MSG_CTRUNC)) {
		ps->conn_ring_off = true;
		return -EPROTO;
	}
	return n;
}

/* The ring as a source of bytes: when it is empty, ask for a wake-up. */
static ssize_t ring_src(void *arg, void *buf, size_t room)
{
	usps *ps = arg;
	ssize_t n = usps__ring_read(&ps->ring, buf, room);

	if (n != -EAGAIN)
		return n;
	if (ps->ring_signalled) {
		usps__ring_clear(ps->ring.wake_fd);
		ps->ring_signalled = false;
	}
	if (!usps__ring_sleep(&ps->ring))
		return -EAGAIN;
	return usps__ring_read(&ps->ring, buf, room);
}

/*
 * Take what the broker sent, a few reads at most; the connection is lost
 * at its end or on a broken stream. Returns false if it stopped with more
 * maybe left to read.
 */
static bool take_input(usps *ps)
{
	for (int i = 0; i < 4 && ps->role == ROLE_CLIENT; i++) {
		ssize_t got;
		bool held;
		int r;

		if (backed_up(ps)) {
			ps->conn_paused = true;
			conn_events(ps);
			return true; /* resuming looks again */
		}
		/* The socket until the ring's line has been read. */
		got = ps->ring.hdr ? usps__reader_fill_from(&ps->conn_rd,
							    ring_src, ps)
				   : usps__reader_fill_from(&ps->conn_rd,
							    sock_src, ps);
		if (got == -EAGAIN)
			return true;
		if (got <= 0) {
			usps__client_lost(ps);
			return true;
		}
		/* Polling on the delivery thread, events may be delivered
		 * inline from the reader's buffer. */
		ps->ib_ok = ps->dl_turn;
		r = take_frames(ps);
		held = ps->ib_ok && usps__dl_hold(ps, &ps->conn_rd);
		ps->ib_ok = false;
		usps__dl_commit(ps);
		if (r < 0) {
			/* An oversized frame, or a broken record. */
			usps__client_lost(ps);
			return true;
		}
		/* Run them before reading more. */
		if (held) {
			ps->dl_again = ps->conn_rd.full;
			break;
		}
	}
	return ps->role != ROLE_CLIENT;
}

/*
 * With a ring, the socket only ends (bytes on it break the stream). What
 * the broker put in the ring before it went is read first, as a socket's
 * bytes would be; the connection is lost once the ring is empty. Returns
 * true if it is lost.
 */
static bool ring_ended(usps *ps)
{
	char c;
	ssize_t n = recv(ps->connfd, &c, 1, MSG_DONTWAIT);
	bool done;

	if (n < 0 &&
	    (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return false;
	if (n > 0) {
		usps__client_lost(ps);
		return true;
	}
	done = take_input(ps);
	if (ps->role != ROLE_CLIENT)
		return true;
	/* Paused: resuming reads on, and the end is reported again. */
	if (done && !ps->conn_paused) {
		usps__client_lost(ps);
		return true;
	}
	rewake(ps, done);
	return false;
}

void usps__client_io(usps *ps, uint32_t events)
{
	if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
		if (!ps->ring.hdr) {
			/* The ring may be set up on the way. */
			rewake(ps, take_input(ps));
		} else if (ring_ended(ps)) {
			return;
		}
	}
	if ((events & EPOLLOUT) && ps->role == ROLE_CLIENT)
		usps__client_flush(ps);
}

void usps__client_ring_io(usps *ps, uint32_t events)
{
	if (!ps->ring.hdr)
		return;
	if (events & EPOLLIN)
		ps->ring_signalled = true;
	rewake(ps, take_input(ps));
}
