# Sanitizer builds: -DEMIX_SANITIZE=address,undefined (any list -fsanitize=
# accepts). Every C++ target (emix_core, emix, the tests) gets the flags
# because they are set directory-wide before any target is created. Configure
# such a build with -DEMIX_WITH_CUDA=OFF: nvcc does not take these flags.
# OpenBLAS is linked from its static archive and is not instrumented; ASan
# still sees its heap use through the intercepted malloc/free.
set(EMIX_SANITIZE "" CACHE STRING "Sanitizers to build with, e.g. address,undefined (empty: none)")

if(EMIX_SANITIZE)
  if(EMIX_WITH_CUDA)
    message(WARNING "EMIX_SANITIZE is set: turning EMIX_WITH_CUDA off for this build")
    set(EMIX_WITH_CUDA OFF CACHE BOOL "Build the CUDA backend when nvcc is found" FORCE)
  endif()
  set(_emix_sanitize_flags -fsanitize=${EMIX_SANITIZE} -fno-omit-frame-pointer)
  if(EMIX_SANITIZE MATCHES "undefined")
    # Make UBSan findings fatal so that a test reporting one fails.
    list(APPEND _emix_sanitize_flags -fno-sanitize-recover=undefined)
  endif()
  message(STATUS "Sanitizers: ${_emix_sanitize_flags}")
  add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:${_emix_sanitize_flags}>")
  add_link_options(${_emix_sanitize_flags})
endif()

# Fuzzing (tests/fuzz): clang only. The fuzz targets link -fsanitize=fuzzer;
# everything else is instrumented for coverage with fuzzer-no-link.
option(EMIX_FUZZ "Build the libFuzzer targets in tests/fuzz (needs clang)" OFF)
if(EMIX_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "EMIX_FUZZ=ON needs clang++ as the C++ compiler (CMAKE_CXX_COMPILER=clang++)")
  endif()
  add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:-fsanitize=fuzzer-no-link>")
endif()
