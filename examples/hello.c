/* SPDX-License-Identifier: MIT */
/* The README's example: subscribe, publish, flush, close. */
#include <stdio.h>
#include <string.h>
#include <usps.h>

static void on_event(const usps_event *ev, usps_delivery *d, void *ctx)
{
	(void)d;
	printf("%s %s: %s\n", (const char *)ctx, ev->type, ev->data);
}

int main(int argc, char **argv)
{
	const char *path = argc > 1 ? argv[1] : "/tmp/demo/events.sock";
	usps *ps;
	usps_sub *sub;
	int r = usps_open(&ps, path, NULL);

	if (r < 0)
		return fprintf(stderr, "usps_open: %s\n", strerror(-r)), 1;
	usps_subscribe(ps, "workflows", NULL, on_event, (void *)"got", &sub);
	usps_publish(ps, "workflows", "workflow.start", "{\"runId\":1}", 11, 0);
	usps_flush(ps, 1000); /* written out, and local handlers have run */
	printf("broker: %s\n", usps_is_broker(ps) ? "me" : "someone else");
	return usps_close(ps);
}
