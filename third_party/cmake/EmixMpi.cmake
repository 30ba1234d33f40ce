# MPI for multi-process training (src/distributed). Nothing here is linked
# into emix: the MPI backend loads Open MPI's libmpi.so.40 at run time with
# dlopen, so the binary starts on machines without MPI (see
# src/distributed/communicator.hpp). What is looked for at configure time:
#   EMIX_MPIEXEC          mpirun/mpiexec (Debian: openmpi-bin), to run the
#                         multi-process tests; without it they are skipped
#   EMIX_MPI_INCLUDE_DIR  Open MPI's mpi.h (libopenmpi-dev), only for the
#                         test that checks src/distributed/mpi_abi.hpp
# Only the dynamic loader is needed to build (libdl; part of libc on glibc
# >= 2.34).

target_link_libraries(emix_deps INTERFACE ${CMAKE_DL_LIBS})

find_program(EMIX_MPIEXEC NAMES mpirun mpiexec
  DOC "MPI launcher for the multi-process tests (openmpi-bin)")
find_path(EMIX_MPI_INCLUDE_DIR mpi.h
  PATHS /usr/include/x86_64-linux-gnu/openmpi /usr/include/aarch64-linux-gnu/openmpi
        /usr/lib/x86_64-linux-gnu/openmpi/include /usr/include/openmpi
  NO_DEFAULT_PATH
  DOC "Open MPI's mpi.h (libopenmpi-dev), for the ABI check test only")
if(EMIX_MPIEXEC)
  message(STATUS "MPI launcher: ${EMIX_MPIEXEC} (multi-process tests enabled; libmpi is loaded at run time)")
else()
  message(STATUS "mpirun not found: multi-process tests skipped (install openmpi-bin libopenmpi-dev)")
endif()
