/* SPDX-License-Identifier: MIT */
/*
 * The public header must compile as C++ (extern "C", no C-only constructs)
 * and its functions must link from C++.
 */
#include <usps.h>

#include <cstdio>
#include <cstring>

static int failed_checks;

static void check(bool ok, const char *what)
{
	if (!ok) {
		failed_checks++;
		std::fprintf(stderr, "test_cxx_header: %s failed\n", what);
	}
}

int main()
{
	usps_options opt;
	const char *v = usps_version();

	check(v != nullptr && std::strcmp(v, USPS_VERSION_STRING) == 0,
	      "usps_version() == USPS_VERSION_STRING");

	std::memset(&opt, 0, sizeof(opt));
	usps_options_init(&opt);
	check(opt.max_inbound_frame_bytes != 0 && opt.open_timeout_ms != 0,
	      "usps_options_init() fills the defaults");
	usps_options_init(nullptr);

	unsigned flags = USPS_LOCAL_ONLY | USPS_NONBLOCK;
	check(flags == 3u, "flag values");

	/* One test: the header works from C++. */
	std::printf("%d passed, %d failed\n", failed_checks ? 0 : 1,
		    failed_checks ? 1 : 0);
	return failed_checks ? 1 : 0;
}
