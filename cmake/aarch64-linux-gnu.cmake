# aarch64-linux-gnu.cmake - CMake toolchain file: cross-build keel for 64-bit ARM with Debian's
# cross compiler (crossbuild-essential-arm64) against the :arm64 multiarch libraries, and run the
# built tests through qemu-user (scripts/deps-arm.sh installs all of it; `make test-arm` uses it).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(KEEL_CROSS_TRIPLE aarch64-linux-gnu)

set(CMAKE_C_COMPILER ${KEEL_CROSS_TRIPLE}-gcc)
set(CMAKE_AR ${KEEL_CROSS_TRIPLE}-ar CACHE FILEPATH "")
set(CMAKE_RANLIB ${KEEL_CROSS_TRIPLE}-ranlib CACHE FILEPATH "")
set(CMAKE_STRIP ${KEEL_CROSS_TRIPLE}-strip CACHE FILEPATH "")

# Debian multiarch: the cross libc lives in /usr/aarch64-linux-gnu, the :arm64 -dev packages in
# /usr/lib/aarch64-linux-gnu and /usr/include (shared headers) + /usr/include/aarch64-linux-gnu.
set(CMAKE_LIBRARY_ARCHITECTURE ${KEEL_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH /usr/${KEEL_CROSS_TRIPLE} /usr)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER) # build tools (python3, git) are the host's
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# pkg-config must see only the arm64 .pc files (never the host's x86-64 ones in
# /usr/lib/x86_64-linux-gnu/pkgconfig); the paths in them (/usr/include, /usr/lib/aarch64-linux-gnu)
# are right as they are, so no sysroot prefix.
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/${KEEL_CROSS_TRIPLE}/pkgconfig:/usr/share/pkgconfig)
set(ENV{PKG_CONFIG_PATH} "")
set(ENV{PKG_CONFIG_SYSROOT_DIR} "")

# ctest (and add_test COMMANDs naming a target) run aarch64 binaries through qemu-user. -L / (not
# /usr/aarch64-linux-gnu): the dynamic loader, libc and the dlopen()ed libraries must all come from
# the :arm64 multiarch packages in /lib/aarch64-linux-gnu. The cross toolchain's own libc
# (libc6-arm64-cross) is another glibc build; its ld.so with libc6:arm64's libc.so.6 (which the
# ld.so.cache picks) hangs in pthread_create. pauth-impdef: with -mbranch-protection every call
# signs and checks its return address; qemu's default (architected QARMA) pointer authentication
# makes that about 3x slower than the implementation-defined algorithm, still checked the same way.
find_program(KEEL_QEMU_AARCH64 NAMES qemu-aarch64 qemu-aarch64-static REQUIRED)
set(CMAKE_CROSSCOMPILING_EMULATOR ${KEEL_QEMU_AARCH64} -cpu max,pauth-impdef=on -L /)
