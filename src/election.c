/* SPDX-License-Identifier: MIT */
/*
 * Election: finding the broker at a path, or becoming it. Only this file
 * touches the socket path, its directory and the lock files.
 *
 *   P        the socket path
 *   P.lock   held with flock(LOCK_EX) by the broker for its whole tenure and
 *            by a process while it elects itself; the kernel drops it when
 *            its holder dies, so no staleness guess is needed among usps
 *            processes
 *   P.elect  Mastra's O_EXCL election file, honoured so that Node
 *            processes and we never elect at the same time
 *
 * Join: connect to P. If that is refused (nobody listens) or P is missing,
 * take P.lock without blocking; if it is busy, a usps broker is alive or
 * another usps process is electing: try connecting again shortly. Having
 * P.lock, take P.elect, try connecting once more (a Node broker may have
 * appeared), then replace what is at P (a dead broker's socket or a stale
 * regular file) and bind. A non-blocking connect that finds the listen
 * backlog full fails with EAGAIN, not ECONNREFUSED: a busy broker is never
 * mistaken for a dead one.
 *
 * As broker, the path is watched (inotify and a slow timer): a deleted path
 * is bound again; a path that now holds someone else's socket means that
 * someone else is broker, and we step down and connect to it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"

/* Mastra's staleness rule for P.elect. */
#define ELECT_STALE_MS 2000
#define BACKOFF_MAX_MS 32
/* Retries 1 ms apart while another process holds P.lock and nobody
 * listens yet (it is between winning the lock and listening). */
#define LOCK_BUSY_FAST_TRIES 50
#define WATCH_INTERVAL_MS 1000

static void sockaddr_of(const usps *ps, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	/* usps_open() checked that the path fits with its NUL. */
	memcpy(sa->sun_path, ps->path, ps->path_len);
}

static int mkdir_p(const char *dir)
{
	char *tmp = strdup(dir);
	int r = 0;

	if (!tmp)
		return -ENOMEM;
	for (char *p = tmp + 1;; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char c = *p;

		*p = '\0';
		if (mkdir(tmp, 0700) < 0 && errno != EEXIST) {
			r = -errno;
			break;
		}
		*p = c;
		if (!c)
			break;
	}
	free(tmp);
	return r;
}

int usps__election_prepare(usps *ps)
{
	struct stat st;
	int r;

	if (stat(ps->dir, &st) < 0) {
		if (errno != ENOENT)
			return -errno;
		r = mkdir_p(ps->dir);
		if (r < 0)
			return r;
		if (stat(ps->dir, &st) < 0)
			return -errno;
	}
	if (!S_ISDIR(st.st_mode))
		return -ENOTDIR;
	/* Someone else's directory, or one anybody may write to without the
	 * sticky bit, would let another user replace our socket. */
	if (st.st_uid != ps->uid && st.st_uid != 0)
		return -EPERM;
	if ((st.st_mode & S_IWOTH) && !(st.st_mode & S_ISVTX))
		return -EPERM;
	return 0;
}

static void backoff(usps *ps)
{
	unsigned b = ps->join_backoff_ms ? ps->join_backoff_ms : 1;
	/* Jitter in [b/2, b] so that survivors do not retry in lockstep. */
	unsigned j = b / 2 + (unsigned)(usps__hash(&ps->next_join_ms,
						   sizeof(ps->next_join_ms),
						   (uint64_t)getpid()) %
					(b / 2 + 1));

	ps->next_join_ms = usps__now_ms() + (j ? j : 1);
	ps->join_backoff_ms = b * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : b * 2;
}

/* Take P.lock without blocking. 1 taken, 0 busy, -errno. */
static int lock_take(usps *ps)
{
	for (int tries = 0; tries < 3; tries++) {
		struct stat a, b;

		if (ps->lockfd < 0) {
			ps->lockfd =
				open(ps->lock_path,
				     O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW,
				     0600);
			if (ps->lockfd < 0)
				return -errno;
		}
		if (flock(ps->lockfd, LOCK_EX | LOCK_NB) < 0) {
			if (errno == EWOULDBLOCK)
				return 0;
			if (errno == EINTR)
				continue;
			return -errno;
		}
		/* A broker unlinks P.lock when it closes: make sure we locked
		 * the file that is at the path now, not an orphan. */
		if (fstat(ps->lockfd, &a) == 0 &&
		    stat(ps->lock_path, &b) == 0 && a.st_dev == b.st_dev &&
		    a.st_ino == b.st_ino) {
			ps->lock_held = true;
			return 1;
		}
		close(ps->lockfd);
		ps->lockfd = -1;
	}
	return 0;
}

static void lock_drop(usps *ps)
{
	if (ps->lock_held)
		(void)flock(ps->lockfd, LOCK_UN);
	ps->lock_held = false;
}

/* Is the election file stale: old (Mastra's rule) or its writer dead? */
static bool elect_stale(usps *ps)
{
	struct stat st;
	char buf[32];
	ssize_t n;
	int fd;

	if (stat(ps->elect_path, &st) < 0)
		return errno == ENOENT;
	if (usps__wall_ms() - ((int64_t)st.st_mtim.tv_sec * 1000 +
			       st.st_mtim.tv_nsec / 1000000) >
	    ELECT_STALE_MS)
		return true;
	/* Ours hold the writer's pid; Node's are empty. */
	fd = open(ps->elect_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n > 0) {
		long pid;

		buf[n] = '\0';
		pid = strtol(buf, NULL, 10);
		if (pid > 0 && kill((pid_t)pid, 0) < 0 && errno == ESRCH)
			return true;
	}
	return false;
}

/* Take P.elect. 1 taken, 0 busy, -errno. */
static int elect_take(usps *ps)
{
	for (int tries = 0; tries < 2; tries++) {
		char buf[32];
		int fd = open(ps->elect_path,
			      O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

		if (fd >= 0) {
			int n = snprintf(buf, sizeof(buf), "%ld\n",
					 (long)getpid());

			if (write(fd, buf, (size_t)n) < 0) {
				/* The pid only speeds up staleness checks. */
			}
			close(fd);
			return 1;
		}
		if (errno != EEXIST)
			return -errno;
		if (!elect_stale(ps))
			return 0;
		(void)unlink(ps->elect_path);
	}
	return 0;
}

static atomic_uint refuse_connects;

void usps__fault_refuse_connects(unsigned n)
{
	atomic_store(&refuse_connects, n);
}

/* Connect to P. The fd, or -errno. */
static int try_connect(usps *ps)
{
	struct sockaddr_un sa;
	unsigned left = atomic_load(&refuse_connects);
	int fd;

	while (left &&
	       !atomic_compare_exchange_weak(&refuse_connects, &left, left - 1))
		;
	if (left)
		return -ECONNREFUSED; /* injected by a test */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	sockaddr_of(ps, &sa);
	for (;;) {
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			return fd;
		if (errno != EINTR)
			break;
	}
	int e = errno;

	close(fd);
	return -e;
}

/* Check the broker we reached and become its client. 1, 0, -errno. */
static int join_client(usps *ps, int fd)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
		int e = errno;

		close(fd);
		return -e;
	}
	/* Never hand our events to a broker run by another user. */
	if (!usps__peer_allowed(ps, cred.uid, cred.gid)) {
		close(fd);
		return -EPERM;
	}
	if (usps__client_start(ps, fd, cred.pid, cred.uid) < 0)
		return 0;
	ps->join_backoff_ms = 0;
	ps->lock_busy_tries = 0;
	return 1;
}

/* Bind and listen at P. The listening fd, or -errno. */
static int bind_path(usps *ps)
{
	struct sockaddr_un sa;
	struct stat st;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	int r;

	if (fd < 0)
		return -errno;
	sockaddr_of(ps, &sa);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		goto fail;
	/* Nobody can connect before listen(), so the mode is set in time. */
	if (chmod(ps->path, 0600) < 0 || stat(ps->path, &st) < 0)
		goto fail;
	if (listen(fd, SOMAXCONN) < 0)
		goto fail;
	ps->sock_dev = st.st_dev;
	ps->sock_ino = st.st_ino;
	return fd;
fail:
	r = -errno;
	close(fd);
	return r;
}

static int become_broker(usps *ps, int fd)
{
	int r;

	ps->lst[0].fd = fd;
	r = usps__engine_watch_fd(ps, fd, &ps->lst[0].ioh, EPOLLIN, false);
	if (r < 0)
		return r;
	ps->broker_pid = getpid();
	ps->broker_since_ms = usps__wall_ms();
	ps->next_watch_ms = usps__now_ms() + WATCH_INTERVAL_MS;
	ps->join_backoff_ms = 0;
	ps->lock_busy_tries = 0;
	r = usps__broker_adopt_keys(ps);
	usps__engine_set_role(ps, ROLE_BROKER);
	return r;
}

/*
 * Does the kernel know a live socket bound at exactly our path? A second
 * opinion, independent of connect(), before a socket file that refused us
 * is replaced: a dead broker's socket is not listed; a live one is, even
 * between its bind() and listen() (libuv binds, then listens) and even if
 * it holds no lock we could see (a Node broker). Unknown (no procfs,
 * unreadable) counts as no.
 */
static bool path_is_bound(const usps *ps)
{
	char line[512];
	bool found = false;
	FILE *f = fopen("/proc/net/unix", "re");

	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f)) {
		int path_at = 0;
		size_t n;

		/* Num RefCount Protocol Flags Type St Inode Path: path_at
		 * stays 0 unless all seven fields before the path are there. */
		(void)sscanf(line, "%*s %*s %*s %*s %*s %*s %*s %n", &path_at);
		if (!path_at)
			continue;
		n = strcspn(line + path_at, "\n");
		found = n == ps->path_len &&
			!memcmp(line + path_at, ps->path, n);
	}
	(void)fclose(f);
	return found;
}

/*
 * Defer to a listener the kernel lists at our path, for at most
 * LISTED_MAX_MS in a row: a listener can also be an orphan whose file was
 * replaced by one that since died, and must not stall elections forever.
 */
#define LISTED_MAX_MS 1000

static bool listener_blocks(usps *ps)
{
	int64_t now = usps__now_ms();

	if (!path_is_bound(ps)) {
		ps->listed_since_ms = 0;
		return false;
	}
	if (!ps->listed_since_ms)
		ps->listed_since_ms = now;
	return now - ps->listed_since_ms < LISTED_MAX_MS;
}

/* Holding P.lock: take P.elect, make sure nobody listens, replace P. */
static int elect(usps *ps)
{
	struct stat st;
	int fd, r;

	r = elect_take(ps);
	if (r <= 0) {
		lock_drop(ps);
		if (r == 0)
			backoff(ps);
		return r;
	}
	fd = try_connect(ps);
	if (fd >= 0) {
		(void)unlink(ps->elect_path);
		lock_drop(ps);
		return join_client(ps, fd);
	}
	if (lstat(ps->path, &st) == 0) {
		/* Only a dead socket or a stale regular file is ours to
		 * replace; a directory or device at P is the user's error. */
		if (!S_ISSOCK(st.st_mode) && !S_ISREG(st.st_mode) &&
		    !S_ISLNK(st.st_mode)) {
			r = -EEXIST;
			goto out;
		}
		if (S_ISSOCK(st.st_mode) && listener_blocks(ps)) {
			r = 0;
			goto out;
		}
		if (unlink(ps->path) < 0 && errno != ENOENT) {
			r = -errno;
			goto out;
		}
	}
	fd = bind_path(ps);
	if (fd < 0) {
		/* EADDRINUSE: a Node process bound P in the gap. It is the
		 * broker now; connect to it. */
		r = fd == -EADDRINUSE ? 0 : fd;
		if (r == 0)
			ps->next_join_ms = usps__now_ms();
		goto out;
	}
	(void)unlink(ps->elect_path);
	return become_broker(ps, fd) < 0 ? 0 : 1;
out:
	(void)unlink(ps->elect_path);
	lock_drop(ps);
	if (r == 0 && ps->next_join_ms <= usps__now_ms())
		backoff(ps);
	return r;
}

int usps__election_step(usps *ps)
{
	int fd = try_connect(ps);
	int r;

	if (fd >= 0) {
		r = join_client(ps, fd);
		if (r == 0)
			backoff(ps);
		return r;
	}
	switch (fd) {
	case -EAGAIN:
		/* The backlog is full: a broker is alive and busy. */
		backoff(ps);
		return 0;
	case -ECONNREFUSED:
	case -ENOENT:
		break;
	case -EACCES:
	case -EPERM:
	case -ENOTDIR:
	case -ELOOP:
		return fd;
	default:
		backoff(ps);
		return 0;
	}
	r = lock_take(ps);
	if (r < 0)
		return r;
	if (r == 0) {
		/* Another usps process elects (a live usps broker would have
		 * taken our connect): it binds within a moment, and inotify
		 * tells us when the path changes. Look again every
		 * millisecond for a while, then back off. */
		if (++ps->lock_busy_tries <= LOCK_BUSY_FAST_TRIES)
			ps->next_join_ms = usps__now_ms() + 1;
		else
			backoff(ps);
		return 0;
	}
	return elect(ps);
}

void usps__election_resign(usps *ps, bool unlink_path)
{
	struct stat st;

	if (ps->lst[0].fd >= 0) {
		/* Remove the path only if it is still our socket: never a
		 * successor's. */
		if (unlink_path && lstat(ps->path, &st) == 0 &&
		    st.st_dev == ps->sock_dev && st.st_ino == ps->sock_ino)
			(void)unlink(ps->path);
	}
	for (int i = 0; i < 2; i++) {
		if (ps->lst[i].fd >= 0)
			close(ps->lst[i].fd);
		ps->lst[i].fd = -1;
	}
	if (unlink_path && ps->lock_held)
		(void)unlink(ps->lock_path);
	lock_drop(ps);
}

static void step_down(usps *ps)
{
	usps__election_resign(ps, false);
	usps__broker_reset(ps);
	usps__engine_rejoin(ps, 0);
}

void usps__election_watch(usps *ps)
{
	struct stat st;
	int fd;

	if (ps->role != ROLE_BROKER)
		return;
	ps->next_watch_ms = usps__now_ms() + WATCH_INTERVAL_MS;
	if (lstat(ps->path, &st) == 0) {
		if (st.st_dev == ps->sock_dev && st.st_ino == ps->sock_ino)
			return;
		/* Someone else's socket at our path: they are the broker
		 * new processes find, so we follow them. */
		step_down(ps);
		return;
	}
	if (errno != ENOENT)
		return;
	/* The path was deleted under us: bind it again. */
	fd = bind_path(ps);
	if (fd < 0) {
		if (fd == -EADDRINUSE)
			step_down(ps);
		return;
	}
	if (ps->lst[1].fd >= 0)
		close(ps->lst[1].fd);
	ps->lst[1].fd = ps->lst[0].fd;
	ps->lst[0].fd = fd;
	/* Same fds, new roles: re-point both registrations. */
	if (ps->lst[1].fd >= 0)
		(void)usps__engine_watch_fd(ps, ps->lst[1].fd, &ps->lst[1].ioh,
					    EPOLLIN, true);
	if (usps__engine_watch_fd(ps, fd, &ps->lst[0].ioh, EPOLLIN, false) < 0)
		step_down(ps);
}

void usps__election_cleanup(usps *ps)
{
	usps__election_resign(ps, true);
	if (ps->lockfd >= 0)
		close(ps->lockfd);
	ps->lockfd = -1;
}
