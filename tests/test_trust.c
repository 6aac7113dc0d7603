/* SPDX-License-Identifier: MIT */
/*
 * Trust between users: a client refuses a broker of another uid, a broker
 * admits no peer of another uid (unless allowed), and a socket directory
 * that another user controls is refused. The tests run as root (as CI
 * does) and drop privileges in forked children to play the other user.
 */
#include "common.h"

#include <grp.h>
#include <sys/stat.h>

#define OTHER_UID 65534 /* nobody */
#define OTHER_GID 65534

static char path[PATH_MAX];

static const char *sock(void)
{
	return harness_path(path, "d/bus.sock");
}

static int drop_privileges(void)
{
	if (setgroups(0, NULL) < 0 || setgid(OTHER_GID) < 0 ||
	    setuid(OTHER_UID) < 0)
		return -1;
	return 0;
}

/* A shared directory: root's, world-writable with the sticky bit. */
static void make_shared_dir(void)
{
	char d[PATH_MAX];

	harness_path(d, "d");
	(void)mkdir(d, 01777);
	(void)chmod(d, 01777);
	/* The test's own directory must be searchable by the other user. */
	(void)chmod(harness_tmpdir(), 0755);
}

/* Child: become the other user, open the bus as its broker, report, and
 * stay until told to go. */
static int other_broker(void *arg, int in_fd, int out_fd)
{
	usps *ps = NULL;
	char line[64];
	size_t len = 0;
	char buf[256];
	int r;

	(void)arg;
	if (drop_privileges() < 0) {
		harness_say(out_fd, "error drop");
		return 1;
	}
	r = usps_open(&ps, sock(), NULL);
	harness_say(out_fd, "open %d broker %d", r,
		    r == 0 && usps_is_broker(ps));
	(void)harness_read_line(in_fd, buf, &len, sizeof(buf), line,
				sizeof(line), 20000);
	usps_close(ps);
	return 0;
}

/* Child: become the other user; on "go", try to join (and, if that seemed
 * to work, to subscribe); report the results. It is forked before the
 * parent opens its handle, so that no thread is forked. */
static int other_client(void *arg, int in_fd, int out_fd)
{
	usps_options o;
	usps *ps = NULL;
	usps_sub *sub;
	char line[64], buf[256];
	size_t len = 0;
	int r, s = 1;

	(void)arg;
	if (harness_read_line(in_fd, buf, &len, sizeof(buf), line, sizeof(line),
			      20000) != 1)
		return 1;
	if (drop_privileges() < 0) {
		harness_say(out_fd, "error drop");
		return 1;
	}
	usps_options_init(&o);
	o.open_timeout_ms = 3000;
	o.membership_ack_timeout_ms = 3000;
	r = usps_open(&ps, sock(), &o);
	if (r == 0)
		s = usps_subscribe(ps, "t", NULL, col_handler, NULL, &sub);
	harness_say(out_fd, "open %d sub %d broker %d", r, s,
		    r == 0 && usps_is_broker(ps));
	usps_close(ps);
	return 0;
}

/* A client refuses a broker run by another user; allow_uid or allow_gid
 * admits it. */
TEST(client_refuses_other_users_broker)
{
	struct harness_child c;
	usps_options o;
	usps *me = NULL;
	char line[128];
	int64_t t0;

	make_shared_dir();
	REQUIRE(harness_spawn(&c, other_broker, NULL) == 0);
	CHECK_EQ_INT(
		harness_child_expect(&c, "open", line, sizeof(line), 10000), 1);
	CHECK_EQ_STR(line, "open 0 broker 1");
	usps_options_init(&o);
	o.open_timeout_ms = 3000;
	t0 = harness_now_ms();
	CHECK_EQ_INT(usps_open(&me, sock(), &o), -EPERM);
	CHECK(harness_now_ms() - t0 < 2000); /* refused, not timed out */
	CHECK(me == NULL);
	o.allow_uid = OTHER_UID;
	CHECK_EQ_INT(usps_open(&me, sock(), &o), 0);
	CHECK(me && !usps_is_broker(me));
	usps_close(me);
	me = NULL;
	/* ... and so does allow_gid, by the broker's group. */
	o.allow_uid = -1;
	o.allow_gid = OTHER_GID;
	CHECK_EQ_INT(usps_open(&me, sock(), &o), 0);
	CHECK(me && !usps_is_broker(me));
	usps_close(me);
	harness_tell(&c, "exit");
	CHECK(harness_exited_ok(harness_child_finish(&c, 5000)));
}

/* Another user cannot join our broker, even through a socket whose mode
 * someone loosened: the broker checks SO_PEERCRED, admits nobody, and says
 * so; the other user's subscribe fails with -EPERM. */
TEST(broker_refuses_other_users)
{
	struct harness_child c;
	usps *b = NULL;
	char line[128];

	make_shared_dir();
	REQUIRE(harness_spawn(&c, other_client, NULL) == 0);
	if (open_default(&b, sock()) < 0) {
		(void)harness_child_finish(&c, 5000);
		REQUIRE(false);
	}
	CHECK(usps_is_broker(b));
	CHECK_EQ_INT(chmod(sock(), 0666), 0);
	harness_tell(&c, "go");
	CHECK_EQ_INT(
		harness_child_expect(&c, "open", line, sizeof(line), 10000), 1);
	/* The connect itself succeeds (the check follows accept), so the
	 * refusal comes either to usps_open() or, if it returned first, to
	 * usps_subscribe(): -EPERM (-1) either way. */
	CHECK(!strcmp(line, "open 0 sub -1 broker 0") ||
	      !strcmp(line, "open -1 sub 1 broker 0"));
	CHECK_EQ_INT(usps_remote_client_count(b), 0);
	CHECK(usps_is_broker(b));
	CHECK(harness_exited_ok(harness_child_finish(&c, 5000)));
	usps_close(b);
}

/* The socket itself is created 0600: another user cannot connect. */
TEST(socket_mode_keeps_others_out)
{
	struct harness_child c;
	struct stat st;
	usps *b = NULL;
	char line[128];
	int r = 0;

	make_shared_dir();
	REQUIRE(harness_spawn(&c, other_client, NULL) == 0);
	if (open_default(&b, sock()) < 0) {
		(void)harness_child_finish(&c, 5000);
		REQUIRE(false);
	}
	CHECK_EQ_INT(stat(sock(), &st), 0);
	CHECK_EQ_INT(st.st_mode & 0777, 0600);
	harness_tell(&c, "go");
	CHECK_EQ_INT(
		harness_child_expect(&c, "open", line, sizeof(line), 10000), 1);
	CHECK(sscanf(line, "open %d", &r) == 1);
	CHECK_EQ_INT(r, -EACCES);
	CHECK_EQ_INT(usps_remote_client_count(b), 0);
	CHECK(harness_exited_ok(harness_child_finish(&c, 5000)));
	usps_close(b);
}

/* A directory that another user owns is refused. */
TEST(foreign_directory_refused)
{
	char d[PATH_MAX];
	usps *b = NULL;

	harness_path(d, "d");
	REQUIRE(mkdir(d, 0700) == 0);
	REQUIRE(chown(d, OTHER_UID, OTHER_GID) == 0);
	CHECK_EQ_INT(usps_open(&b, sock(), NULL), -EPERM);
	CHECK(b == NULL);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	if (geteuid() != 0) {
		/* Playing another user needs root; CI runs as root. */
		printf("test_trust: not root, nothing run\n");
		return harness_end();
	}
	RUN(client_refuses_other_users_broker);
	RUN(broker_refuses_other_users);
	RUN(socket_mode_keeps_others_out);
	RUN(foreign_directory_refused);
	return harness_end();
}
