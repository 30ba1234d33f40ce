#pragma once
// One exception type for every user-facing failure (bad config, bad shard,
// corrupt checkpoint, ...). Its message is complete and printed as is by the
// command-line front end, which then exits non-zero.
#include <filesystem>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace emix {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

// An Error that every rank of a job throws at the same point, having agreed
// to (Communicator::check_all, a run stopping with a checkpoint): the ranks
// can then end the job normally, each exiting non-zero, instead of aborting
// it (src/cli/train_command.cpp).
class CollectiveError : public Error {
 public:
  using Error::Error;
};

template <typename... Args>
[[noreturn]] void fail_collective(fmt::format_string<Args...> format, Args&&... args) {
  throw CollectiveError(fmt::format(format, std::forward<Args>(args)...));
}

// An error about a file: the message starts with the file's path.
template <typename... Args>
[[noreturn]] void fail_file(const std::filesystem::path& path, fmt::format_string<Args...> format,
                            Args&&... args) {
  throw Error(fmt::format("{}: {}", path.string(), fmt::format(format, std::forward<Args>(args)...)));
}

}  // namespace emix
