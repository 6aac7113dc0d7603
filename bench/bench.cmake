# SPDX-License-Identifier: MIT
#
# The side-by-side benchmarks (bench/peers/): one driver, driver.c, and one
# transport per file, t_<name>.c, linked together into bench_<name>. usps
# and the raw relay need nothing more; a peer is built only when
# pkg-config finds its client library (scripts/deps.sh bench installs
# them), so a build without them still succeeds and bench/run.sh reports
# those peers as skipped.

set(_bench_peers "${CMAKE_CURRENT_SOURCE_DIR}/bench/peers")
file(GLOB _bench_driver CONFIGURE_DEPENDS "${_bench_peers}/driver.c")
if(NOT _bench_driver)
	return()
endif()

add_library(bench_driver STATIC "${_bench_driver}")
usps_target_defaults(bench_driver)
target_link_libraries(bench_driver PUBLIC Threads::Threads)
target_include_directories(bench_driver PUBLIC "${_bench_peers}")

find_package(PkgConfig QUIET)

# bench_peer(<name> [pkg-config module]): bench_<name> from t_<name>.c.
function(bench_peer name)
	set(src "${_bench_peers}/t_${name}.c")
	if(NOT EXISTS "${src}")
		return()
	endif()
	set(libs bench_driver)
	if(ARGC GREATER 1)
		if(NOT PKG_CONFIG_FOUND)
			return()
		endif()
		string(TOUPPER "BENCH_${name}" var)
		pkg_check_modules(${var} QUIET IMPORTED_TARGET ${ARGV1})
		if(NOT ${var}_FOUND)
			message(STATUS "bench_${name}: ${ARGV1} not found, not built")
			return()
		endif()
		list(APPEND libs PkgConfig::${var})
	endif()
	add_executable(bench_${name} "${src}")
	usps_target_defaults(bench_${name})
	target_link_libraries(bench_${name} PRIVATE ${libs})
endfunction()

bench_peer(relay)
bench_peer(zmq libzmq)
bench_peer(redis hiredis)
bench_peer(nats libnats)
if(EXISTS "${_bench_peers}/t_usps.c")
	bench_peer(usps)
	target_include_directories(bench_usps PRIVATE
		"${CMAKE_CURRENT_SOURCE_DIR}/include")
	target_link_libraries(bench_usps PRIVATE usps_static)
endif()
