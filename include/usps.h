/* SPDX-License-Identifier: MIT */
/*
 * usps - publish/subscribe between processes on one host over one Unix
 * domain socket path, wire-compatible with Mastra's UnixSocketPubSub.
 *
 * The first process to open a path becomes the broker; the others connect
 * to it as clients. When the broker goes away, the survivors elect exactly
 * one new broker among themselves and resubscribe. There is no daemon.
 *
 * Conventions of this header:
 * - Every call that can fail returns a negative errno value (strerror(-r)
 *   describes it) and >= 0 on success. Nothing is reported through errno.
 * - Strings are UTF-8. Arguments are copied unless said otherwise.
 * - Each usps handle runs one I/O thread and one delivery thread. Handlers
 *   are called on the delivery thread, one at a time, in arrival order.
 *   While a client handle has nothing to deliver, its delivery thread reads
 *   the broker connection itself (a thread wake-up less per event); a
 *   handler that runs longer than a few milliseconds hands reading back to
 *   the I/O thread, so a slow or blocked handler never stops its process
 *   reading.
 * - Every function is thread-safe unless its comment says otherwise.
 */
#ifndef USPS_H
#define USPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && defined(USPS_BUILDING)
#define USPS_API __attribute__((visibility("default")))
#else
#define USPS_API
#endif

#define USPS_VERSION_MAJOR 0
#define USPS_VERSION_MINOR 1
#define USPS_VERSION_PATCH 0
#define USPS_VERSION_STRING "0.1.0"

/* Most local redeliveries of one event after usps_nack() (Mastra's value). */
#define USPS_MAX_LOCAL_REDELIVERIES 6

/* A handle on the bus at one socket path. Opaque. */
typedef struct usps usps;
/* One subscription, as returned by usps_subscribe(). Opaque. */
typedef struct usps_sub usps_sub;
/* One delivery of an event to one handler, for usps_nack(). Opaque. */
typedef struct usps_delivery usps_delivery;

/*
 * An event as a handler sees it. Every pointer in it is valid only until the
 * handler returns. Strings are NUL-terminated (they may also contain NUL
 * bytes if a peer escaped one; the _len fields give the full length).
 */
typedef struct usps_event {
	/* The topic it was published on. */
	const char *topic;
	size_t topic_len;
	/* The event's "type"; "" if absent or not a string. */
	const char *type;
	size_t type_len;
	/* The UUID v4 the broker stamped; "" if absent. */
	const char *id;
	/* The event's "runId"; NULL if absent or not a string. */
	const char *run_id;
	/* The event's "data" as JSON text, verbatim; NULL if absent. */
	const char *data;
	size_t data_len;
	/* The whole event object as JSON text, for fields beyond these. Not
	 * NUL-terminated. */
	const char *event_json;
	size_t event_json_len;
	/* Unix milliseconds from "createdAt"; INT64_MIN if absent or not a
	 * date. */
	int64_t created_at_ms;
	/* 1, then 2, 3... for local redeliveries after usps_nack(). */
	uint32_t delivery_attempt;
	/* The consumer group of this delivery; NULL for fan-out. */
	const char *group;
} usps_event;

/*
 * A subscription's handler. Called on the delivery thread. @ev and @d are
 * valid only until it returns. It may call any usps function except
 * usps_close() on its own handle, including usps_unsubscribe() of its own
 * subscription. @userdata is what was passed to usps_subscribe().
 */
typedef void (*usps_handler)(const usps_event *ev, usps_delivery *d,
			     void *userdata);

/*
 * Options for usps_open(). Always fill one with usps_options_init() first,
 * then change the fields you need: a zero field is invalid, not "default".
 */
typedef struct usps_options {
	/* Largest inbound frame (one line, without its newline) accepted from
	 * a peer, in bytes. A peer that sends more is disconnected. Default
	 * 64 MiB (Mastra's); range 64 B .. 1 GiB. */
	uint64_t max_inbound_frame_bytes;
	/* As broker: bytes queued to one client and not yet written. A client
	 * over it is disconnected (it stopped reading). Default 64 MiB;
	 * range 4 KiB .. 16 GiB. */
	uint64_t max_client_queued_bytes;
	/* As client: bytes of publishes waiting to be written to the broker.
	 * usps_publish() waits (or fails with -EAGAIN) while it is full.
	 * Default 64 MiB; range 4 KiB .. 16 GiB. */
	uint64_t max_outbox_bytes;
	/* How long usps_subscribe()/usps_unsubscribe() wait for the broker's
	 * acknowledgement. Default 5000 ms (Mastra's); range 1 .. 3600000. */
	uint32_t membership_ack_timeout_ms;
	/* How long usps_open() waits to become broker or client, and how long
	 * a blocking usps_publish() waits for room in the outbox. Default
	 * 10000 ms; range 1 .. 3600000. */
	uint32_t open_timeout_ms;
	/* As broker: most connected clients; more are accepted and closed at
	 * once. Default 1024; range 1 .. 1048576. */
	uint32_t max_clients;
	/* As broker: most memberships (topic, group) one client may hold;
	 * subscribes beyond it are acknowledged but not recorded (Mastra's
	 * clients cannot be told otherwise). Default 65536; range 1 .. 16M. */
	uint32_t max_memberships_per_client;
	/* Peers are processes of our own uid, or root's. Also accept this
	 * uid (-1: none). Default -1. Checked both ways with SO_PEERCRED: a
	 * broker admits, and a client joins, only such a peer. */
	int64_t allow_uid;
	/* Also accept peers whose (primary) gid is this (-1: none). Default
	 * -1. */
	int64_t allow_gid;
	/* Between usps processes of one uid, the broker sends to each client
	 * through a shared-memory ring (a sealed memfd both map) of this many
	 * bytes instead of through the socket, which then carries only
	 * wake-ups. As broker: each client's ring; as client: 0 declines
	 * one. Node peers and other uids always use the socket. A ring's
	 * pages, once written, count in the RSS of both processes (the
	 * broker's grows by up to this much per busy client), where a
	 * socket's buffers are kernel memory. Default 256 KiB; 0, or a
	 * power of two from 4 KiB to 64 MiB. */
	uint32_t shm_ring_bytes;
} usps_options;

/* Flags for usps_publish() and usps_publish_ex(). */
enum {
	/* Deliver to this handle's own subscribers only (not to other
	 * handles, even in the same process); nothing is sent. The event is
	 * stamped locally. */
	USPS_LOCAL_ONLY = 1u << 0,
	/* Fail with -EAGAIN instead of waiting when the outbox is full. */
	USPS_NONBLOCK = 1u << 1,
};

/*
 * usps_version() - the library's version string, e.g. "0.1.0".
 *
 * Never fails. Any thread.
 */
USPS_API const char *usps_version(void);

/*
 * usps_options_init() - fill @opt with the defaults documented above.
 *
 * Does nothing if @opt is NULL. Any thread.
 */
USPS_API void usps_options_init(usps_options *opt);

/*
 * usps_open() - join the bus at @socket_path: become its broker if none is
 * alive, else connect to the broker as a client.
 *
 * @socket_path is copied. Its directory is created (mode 0700) if missing.
 * @opt may be NULL for defaults; it is copied. On success stores a new handle
 * in *ret and returns 0; the handle is either broker or connected client.
 * Returns a negative errno otherwise, and *ret is untouched:
 * -EINVAL (NULL @ret or @socket_path, empty path, an option out of range),
 * -ENAMETOOLONG (path longer than a sockaddr_un holds; never truncated),
 * -ENOMEM, -EMFILE/-ENFILE (out of file descriptors),
 * -EACCES/-EPERM/-ENOTDIR/-EROFS (the directory cannot be used),
 * -ETIMEDOUT (neither broker nor client within open_timeout_ms),
 * -EPERM (the broker refused our uid, or runs as another user; see
 * allow_uid and allow_gid; it may also refuse us just after usps_open()
 * returned, and usps_subscribe() then says so),
 * -EAGAIN (threads could not be started).
 * Any thread.
 */
USPS_API int usps_open(usps **ret, const char *socket_path,
		       const usps_options *opt);

/*
 * usps_close() - leave the bus and free @ps.
 *
 * A broker releases its role first (unlinking its socket path only if the
 * path is still its own), so that its clients elect a new broker at once.
 * Pending subscribe/unsubscribe/flush/publish waiters return -ESHUTDOWN.
 * Deliveries not yet handed to a handler are discarded; no handler runs
 * after usps_close() returns. All subscriptions are freed. Publishes still
 * queued and not written are discarded: call usps_flush() first to avoid
 * that. NULL is accepted and ignored. Returns 0, or -EDEADLK if called from
 * one of @ps's own handlers (nothing is done then).
 * Any thread except @ps's delivery thread; @ps must not be used afterwards.
 */
USPS_API int usps_close(usps *ps);

/*
 * usps_subscribe() - call @fn for each event published on @topic.
 *
 * With @group NULL every subscription on @topic receives every event
 * (fan-out). With a group name, each event goes to exactly one member of
 * that group on the whole bus, chosen round-robin across processes and
 * within a process. @topic and @group are copied. @userdata is passed to
 * @fn as is.
 *
 * Returns 0 and stores the handle in *ret_sub once the membership is in
 * effect: this process is the broker, or the broker acknowledged it. From
 * then on a publish from any process reaches @fn. If a connected broker
 * does not acknowledge within membership_ack_timeout_ms (an old Mastra
 * broker never acknowledges groups), it returns 0 all the same, as Mastra
 * does. Otherwise a negative errno, and nothing is registered:
 * -EINVAL (NULL @ps, @topic, @fn or @ret_sub; empty @topic or @group; not
 * valid UTF-8), -ENOMEM, -EMSGSIZE (names longer than a frame may be),
 * -ETIMEDOUT (no broker reachable within membership_ack_timeout_ms),
 * -EPERM (the broker refused our uid: it runs as another user, see
 * usps_options.allow_uid and allow_gid), -ESHUTDOWN (@ps is closing).
 * Thread-safe; may be called from a handler.
 */
USPS_API int usps_subscribe(usps *ps, const char *topic, const char *group,
			    usps_handler fn, void *userdata,
			    usps_sub **ret_sub);

/*
 * usps_unsubscribe() - stop and free the subscription @sub of @ps.
 *
 * When it returns, @fn of @sub is not running (unless this is called from
 * that very handler) and will not be called again; @sub is freed. If it was
 * the process's last subscription to its (topic, group), the broker is told
 * and its acknowledgement awaited (up to membership_ack_timeout_ms), so that
 * later group events go to other members. Returns 0, or -EINVAL (NULL
 * argument, or @sub does not belong to @ps). A lost or slow broker is not an
 * error here: the subscription is gone locally either way.
 * Thread-safe; may be called from a handler, including @sub's own.
 */
USPS_API int usps_unsubscribe(usps *ps, usps_sub *sub);

/*
 * usps_publish() - publish an event of @type with @data on @topic.
 *
 * @data_json is JSON text of @data_len bytes (NULL means JSON null); it is
 * checked, copied and sent verbatim, except that whitespace between tokens
 * is dropped (as JSON.stringify would write it; strings are never touched).
 * The broker stamps the event's id,
 * createdAt and deliveryAttempt. Returns 0 once the event is queued for the
 * broker (or, as broker, for routing): use usps_flush() to wait until it is
 * written out. With USPS_LOCAL_ONLY the event goes to this handle's own
 * subscribers only (one member per local group), stamped here.
 * Returns a negative errno otherwise, and nothing is sent:
 * -EINVAL (NULL @ps/@topic/@type, empty @topic, not UTF-8, @data_json not
 * one valid JSON value, unknown flag), -EMSGSIZE (the frame would exceed
 * max_inbound_frame_bytes), -ENOMEM, -EAGAIN (outbox full and
 * USPS_NONBLOCK), -ETIMEDOUT (outbox stayed full for open_timeout_ms),
 * -ESHUTDOWN (@ps is closing), -EIO (USPS_LOCAL_ONLY: no random bytes
 * for the event's id).
 * Thread-safe; may be called from a handler.
 */
USPS_API int usps_publish(usps *ps, const char *topic, const char *type,
			  const char *data_json, size_t data_len,
			  unsigned flags);

/*
 * usps_publish_ex() - usps_publish() with a runId and extra event fields.
 *
 * @run_id (may be NULL: no runId) becomes the event's "runId".
 * @extra_json (may be NULL) is a JSON object of @extra_len bytes whose
 * members are added to the event after type, runId and data, e.g.
 * {"index":3}. It must not hold "type", "runId" or "data"; "id",
 * "createdAt" and "deliveryAttempt" are allowed but replaced by the broker.
 * Errors as usps_publish(); -EINVAL also for a bad @extra_json.
 * Thread-safe; may be called from a handler.
 */
USPS_API int usps_publish_ex(usps *ps, const char *topic, const char *type,
			     const char *data_json, size_t data_len,
			     const char *run_id, const char *extra_json,
			     size_t extra_len, unsigned flags);

/*
 * usps_flush() - wait until what was published before this call is out.
 *
 * As client: every byte queued before the call has been written to the
 * broker's socket. As broker: those events are routed and written to every
 * client's socket or ring (or that client was dropped). In both roles: local
 * deliveries queued before the call have been handed to their handlers
 * (skipped when called from a handler, which would wait on itself).
 * @timeout_ms < 0 waits without limit. Returns 0, -ETIMEDOUT, -EINVAL (NULL
 * @ps), or -ESHUTDOWN (@ps is closing).
 * Thread-safe; may be called from a handler.
 */
USPS_API int usps_flush(usps *ps, int timeout_ms);

/*
 * usps_nack() - ask for @d's event to be delivered again to the same handler.
 *
 * Must be called before the handler that received @d returns. The event
 * comes back after 100*k ms at attempt k (k = 1..6) with delivery_attempt
 * one higher, unless the subscription is gone or the handle closed by then.
 * A second call for the same delivery does nothing. Returns 0 if a
 * redelivery is scheduled, -ERANGE if @d was already the last attempt
 * (USPS_MAX_LOCAL_REDELIVERIES reached; nothing scheduled), -EINVAL if @d is
 * NULL. Only from the handler that received @d.
 */
USPS_API int usps_nack(usps_delivery *d);

/*
 * usps_is_broker() - whether @ps currently acts as the broker.
 *
 * This can change at any time through failover. false for NULL. Any thread.
 */
USPS_API bool usps_is_broker(usps *ps);

/*
 * usps_remote_client_count() - clients connected to @ps as broker.
 *
 * 0 when @ps is not the broker, or NULL. Any thread.
 */
USPS_API unsigned usps_remote_client_count(usps *ps);

/*
 * usps_socket_path() - the path passed to usps_open(), owned by @ps.
 *
 * Valid until usps_close(). NULL for NULL. Any thread.
 */
USPS_API const char *usps_socket_path(usps *ps);

/*
 * usps_broker_pid() - the process id of the current broker.
 *
 * Our own pid as broker; the peer's pid (SO_PEERCRED) as connected client.
 * Returns the pid (> 0), -ENOTCONN while no broker is known (an election is
 * under way), or -EINVAL for NULL. Any thread.
 */
USPS_API int usps_broker_pid(usps *ps);

#ifdef __cplusplus
}
#endif
#endif /* USPS_H */
