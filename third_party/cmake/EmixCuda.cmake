# The CUDA backend library, emix_cuda, built when nvcc is found (CUDA 13,
# sm_90 for H100). Its kernels share the per-element math headers of src/
# with the CPU backend. Nothing here is needed for a CPU-only build.

if(NOT EMIX_WITH_CUDA)
  return()
endif()
if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
  set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
endif()
include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  message(STATUS "nvcc not found: building the CPU backend only")
  return()
endif()
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES 90)
endif()
enable_language(CUDA)
# CMake 3.25 knows nvcc only up to C++17; the shared math headers stay C++17.
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
find_package(CUDAToolkit REQUIRED)

file(GLOB_RECURSE EMIX_CUDA_SOURCES CONFIGURE_DEPENDS
  "${CMAKE_CURRENT_SOURCE_DIR}/src/kernels/cuda/*.cu"
  "${CMAKE_CURRENT_SOURCE_DIR}/src/kernels/cuda/*.cpp"
  "${CMAKE_CURRENT_SOURCE_DIR}/src/model/cuda/*.cu"
  "${CMAKE_CURRENT_SOURCE_DIR}/src/model/cuda/*.cpp"
  "${CMAKE_CURRENT_SOURCE_DIR}/src/optim/cuda/*.cu"
  "${CMAKE_CURRENT_SOURCE_DIR}/src/optim/cuda/*.cpp"
  "${CMAKE_CURRENT_SOURCE_DIR}/src/train/cuda/*.cpp"
  "${CMAKE_CURRENT_SOURCE_DIR}/src/distributed/cuda/*.cpp")
# OBJECT, like emix_core: optimizers register their device updates through
# static initializers, which a static archive would drop.
add_library(emix_cuda OBJECT ${EMIX_CUDA_SOURCES})
target_include_directories(emix_cuda PUBLIC "${CMAKE_CURRENT_SOURCE_DIR}/src")
# cuBLASLt and cuDNN have no static archives in the toolkit: they are linked
# as shared libraries (the GPU image has both; scripts/gpu_check.sh points
# the loader at them).
find_library(EMIX_CUDNN_LIBRARY NAMES cudnn HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/lib/x86_64-linux-gnu)
if(NOT EMIX_CUDNN_LIBRARY)
  message(FATAL_ERROR "cuDNN 9 not found (libcudnn.so): install it beside the CUDA toolkit, or -DEMIX_WITH_CUDA=OFF")
endif()
target_link_libraries(emix_cuda PUBLIC CUDA::cudart_static CUDA::cublasLt ${EMIX_CUDNN_LIBRARY} emix::deps)
target_compile_options(emix_cuda PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -lineinfo>)
target_compile_definitions(emix_cuda PUBLIC EMIX_HAVE_CUDA=1)
message(STATUS "CUDA backend: nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES}")
