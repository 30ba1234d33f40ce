// The launcher identity and the MPI-free rendezvous (src/distributed/
// rendezvous.hpp). Every rank is a forked process of this test: rank 0
// broadcasts 128 random bytes and each child reports what it received (or
// its error message) through a pipe, with its exit status. Children that
// hang are ended by alarm(), so a broken rendezvous fails instead of
// hanging the suite.
//
// The suite is named "rendezvous" in lower case so that
// `ctest -R rendezvous` selects exactly these tests.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "core/error.hpp"
#include "distributed/rendezvous.hpp"
#include "test_support.hpp"

namespace emix {
namespace {
namespace fs = std::filesystem;
using std::chrono::milliseconds;

// Every variable the code under test reads: children start from none of them.
const char* const kRendezvousVariables[] = {
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
    "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_STEP_ID",
    "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "PMIX_NAMESPACE", "EMIX_RUN_ID", "EMIX_RENDEZVOUS_FILE",
    "EMIX_RENDEZVOUS_TIMEOUT", "MASTER_ADDR", "MASTER_PORT"};

using Env = std::vector<std::pair<const char*, std::string>>;

// What a child reported: exit status 0 and its result, or 3 and an
// emix::Error's message (4: another exception, 100 + n: killed by signal n).
struct ChildResult {
  int status = -1;
  std::string output;
};

struct Child {
  pid_t pid;
  int pipe_fd;
};

// Forks a child that runs `body` in environment `env` and reports through a pipe.
Child start_child(const Env& env, const std::function<std::string()>& body) {
  int fds[2];
  if (::pipe(fds) != 0) throw std::runtime_error("pipe failed");
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    ::alarm(30);  // a hung rendezvous ends the child, not the suite
    for (const char* name : kRendezvousVariables) ::unsetenv(name);
    for (const auto& [name, value] : env) ::setenv(name, value.c_str(), 1);
    int status = 0;
    std::string output;
    try {
      output = body();
    } catch (const Error& error) {
      status = 3;
      output = error.what();
    } catch (...) {
      status = 4;
    }
    for (size_t done = 0; done < output.size();) {
      const ssize_t n = ::write(fds[1], output.data() + done, output.size() - done);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    std::_Exit(status);
  }
  ::close(fds[1]);
  return {pid, fds[0]};
}

ChildResult finish_child(const Child& child) {
  ChildResult result;
  char buffer[4096];
  ssize_t n;
  while ((n = ::read(child.pipe_fd, buffer, sizeof buffer)) > 0) result.output.append(buffer, static_cast<size_t>(n));
  ::close(child.pipe_fd);
  int status = 0;
  ::waitpid(child.pid, &status, 0);
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
  return result;
}

// Runs the bodies concurrently, one child each.
std::vector<ChildResult> run_children(const std::vector<std::function<std::string()>>& bodies, const Env& env = {}) {
  std::vector<Child> children;
  for (const auto& body : bodies) children.push_back(start_child(env, body));
  std::vector<ChildResult> results;
  for (const Child& child : children) results.push_back(finish_child(child));
  return results;
}

ChildResult run_child(const Env& env, const std::function<std::string()>& body) { return run_children({body}, env)[0]; }

std::vector<std::byte> random_blob(size_t n = 128) {
  std::mt19937 rng(std::random_device{}());
  std::vector<std::byte> blob(n);
  for (std::byte& b : blob) b = static_cast<std::byte>(rng() & 0xFF);
  return blob;
}

std::string text(const std::vector<std::byte>& bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// A port nobody listens on now: the kernel's choice for port 0. Each test
// takes its own, so suites running in parallel (ctest -j) do not collide.
std::string free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  socklen_t length = sizeof address;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    throw std::runtime_error("cannot find a free port");
  }
  ::close(fd);
  return std::to_string(ntohs(address.sin_port));
}

// Rank `rank` of `world` calling rendezvous_broadcast after `delay`; its
// output is the blob it received.
std::function<std::string()> rank_body(int rank, int world, const RendezvousOptions& options,
                                       const std::vector<std::byte>& blob, milliseconds delay = milliseconds(0)) {
  return [=] {
    std::this_thread::sleep_for(delay);
    const ProcessIdentity identity{rank, world, 0, "test"};
    const std::span<const std::byte> mine = rank == 0 ? std::span<const std::byte>(blob) : std::span<const std::byte>();
    return text(rendezvous_broadcast(identity, mine, options));
  };
}

RendezvousOptions tcp_options(const std::string& host, const std::string& token = "tcp-test",
                              milliseconds timeout = milliseconds(10000)) {
  RendezvousOptions options;
  options.master_addr = host;
  options.master_port = free_port();
  options.run_token = token;
  options.timeout = timeout;
  return options;
}

RendezvousOptions file_options(const fs::path& path, const std::string& token,
                               milliseconds timeout = milliseconds(10000)) {
  RendezvousOptions options;
  options.file = path.string();
  options.run_token = token;
  options.timeout = timeout;
  return options;
}

// Every rank received `blob`.
void expect_every_rank_got(const std::vector<ChildResult>& results, const std::vector<std::byte>& blob) {
  for (size_t r = 0; r < results.size(); ++r) {
    EXPECT_EQ(results[r].status, 0) << "rank " << r << ": " << results[r].output;
    EXPECT_TRUE(results[r].output == text(blob)) << "rank " << r << " received other bytes";
  }
}

// A rendezvous file left by a launch that died before its ranks read it:
// rank 0 of `world` ranks with token `token`, killed once the file exists.
void leave_stale_file(const fs::path& path, int world, const std::string& token) {
  const Child old = start_child({}, rank_body(0, world, file_options(path, token), random_blob()));
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!fs::exists(path) && std::chrono::steady_clock::now() < give_up) std::this_thread::sleep_for(milliseconds(5));
  ::kill(old.pid, SIGKILL);
  finish_child(old);
  ASSERT_TRUE(fs::exists(path)) << "the old launch wrote no file";
}

// The names in `dir`, space-separated ("" when empty).
std::string directory_listing(const fs::path& dir) {
  std::string names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    names += (names.empty() ? "" : " ") + entry.path().filename().string();
  }
  return names;
}

// ------------------------------------------------------------ identity ----

std::string identity_text() {
  const ProcessIdentity id = read_process_identity();
  return fmt::format("{} {} {} {}", id.rank, id.world_size, id.local_rank, id.source);
}

TEST(rendezvous, IdentityFromEachLauncherFamily) {
  EXPECT_EQ(run_child({}, identity_text).output, "0 1 0 no launcher variables");
  EXPECT_EQ(run_child({{"RANK", "2"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}}, identity_text).output,
            "2 4 1 RANK/WORLD_SIZE");
  EXPECT_EQ(run_child({{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "1"}, {"SLURM_STEP_ID", "0"}},
                      identity_text).output,
            "3 4 1 SLURM_PROCID/SLURM_NTASKS");
  EXPECT_EQ(run_child({{"OMPI_COMM_WORLD_RANK", "5"}, {"OMPI_COMM_WORLD_SIZE", "8"},
                       {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}},
                      identity_text).output,
            "5 8 1 OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE");
  EXPECT_EQ(run_child({{"PMI_RANK", "1"}, {"PMI_SIZE", "2"}, {"MPI_LOCALRANKID", "1"}}, identity_text).output,
            "1 2 1 PMI_RANK/PMI_SIZE");
  // srun with PMI2 sets no MPI_LOCALRANKID: SLURM_LOCALID gives the local rank.
  EXPECT_EQ(run_child({{"PMI_RANK", "3"}, {"PMI_SIZE", "4"}, {"SLURM_LOCALID", "1"}}, identity_text).output,
            "3 4 1 PMI_RANK/PMI_SIZE");
}

TEST(rendezvous, IdentityPrefersTheInnermostLauncher) {
  // A batch script (no SLURM_STEP_ID) is one process whatever SLURM_NTASKS says.
  EXPECT_EQ(run_child({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "8"}}, identity_text).output,
            "0 1 0 no launcher variables");
  // torchrun started by srun (one task per node): torchrun's variables count.
  EXPECT_EQ(run_child({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}, {"SLURM_STEP_ID", "0"}, {"SLURM_LOCALID", "0"},
                       {"RANK", "6"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "2"}},
                      identity_text).output,
            "6 8 2 RANK/WORLD_SIZE");
}

TEST(rendezvous, IdentityErrorsNameTheVariable) {
  auto expect_error = [](const Env& env, const std::string& message) {
    const ChildResult result = run_child(env, identity_text);
    EXPECT_EQ(result.status, 3) << result.output;
    EXPECT_TRUE(contains(result.output, message)) << result.output;
  };
  expect_error({{"RANK", "4"}, {"WORLD_SIZE", "4"}}, "RANK=4 is not below WORLD_SIZE=4");
  expect_error({{"RANK", "one"}, {"WORLD_SIZE", "4"}}, "environment variable RANK=one is not a non-negative integer");
  expect_error({{"RANK", "0"}, {"WORLD_SIZE", "4x"}}, "WORLD_SIZE=4x is not a non-negative integer");
  expect_error({{"OMPI_COMM_WORLD_RANK", "-1"}, {"OMPI_COMM_WORLD_SIZE", "2"}}, "OMPI_COMM_WORLD_RANK=-1");
  expect_error({{"RANK", "1"}}, "RANK=1 is set but WORLD_SIZE is not");
  expect_error({{"PMI_SIZE", "2"}}, "PMI_SIZE=2 is set but PMI_RANK is not");
  expect_error({{"RANK", "0"}, {"WORLD_SIZE", "0"}}, "WORLD_SIZE=0 is not a world size");
  expect_error({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "2"}}, "LOCAL_RANK=2 is not below WORLD_SIZE=2");
}

// ------------------------------------------------------------- options ----

TEST(rendezvous, RunTokenFromTheLauncher) {
  auto token = [] { return run_token_from_environment(); };
  EXPECT_EQ(run_child({}, token).output, "");
  EXPECT_EQ(run_child({{"EMIX_RUN_ID", "mine"}, {"SLURM_JOB_ID", "77"}, {"SLURM_STEP_ID", "3"}}, token).output, "mine");
  EXPECT_EQ(run_child({{"SLURM_JOB_ID", "77"}, {"SLURM_STEP_ID", "3"}}, token).output, "slurm-77.3");
  EXPECT_EQ(run_child({{"SLURM_JOB_ID", "77"}}, token).output, "");  // a batch script, not a launch of ranks
  EXPECT_EQ(run_child({{"TORCHELASTIC_RUN_ID", "none"}}, token).output, "");  // torchrun's default: not unique
  EXPECT_EQ(run_child({{"TORCHELASTIC_RUN_ID", "job42"}}, token).output, "torchelastic-job42");
  EXPECT_EQ(run_child({{"PMIX_NAMESPACE", "1574830081"}}, token).output, "pmix-1574830081");
}

TEST(rendezvous, OptionsFromTheEnvironment) {
  auto describe = [] {
    const RendezvousOptions o = rendezvous_options_from_environment();
    return fmt::format("{}|{}|{}|{}|{}", o.file, o.master_addr, o.master_port, o.run_token, o.timeout.count());
  };
  EXPECT_EQ(run_child({}, describe).output, "||||300000");
  EXPECT_EQ(run_child({{"EMIX_RENDEZVOUS_FILE", "/shared/rdv"}, {"MASTER_ADDR", "node1"}, {"MASTER_PORT", "29500"},
                       {"EMIX_RUN_ID", "r1"}, {"EMIX_RENDEZVOUS_TIMEOUT", "7"}},
                      describe).output,
            "/shared/rdv|node1|29500|r1|7000");
  EXPECT_EQ(run_child({{"EMIX_RENDEZVOUS_TIMEOUT", "soon"}}, describe).status, 3);
  EXPECT_EQ(run_child({{"EMIX_RENDEZVOUS_TIMEOUT", "0"}}, describe).status, 3);
}

TEST(rendezvous, MissingMethodIsAnErrorNamingBothOptions) {
  const std::vector<std::byte> blob = random_blob();
  auto attempt = [&](const RendezvousOptions& options) {
    try {
      rendezvous_broadcast(ProcessIdentity{0, 2, 0, "test"}, blob, options);
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  const std::string none = attempt(RendezvousOptions{});
  EXPECT_TRUE(contains(none, "EMIX_RENDEZVOUS_FILE") && contains(none, "MASTER_ADDR and MASTER_PORT")) << none;
  RendezvousOptions half;
  half.master_addr = "node1";
  EXPECT_TRUE(contains(attempt(half), "MASTER_ADDR is set but MASTER_PORT is not")) << attempt(half);
  half.master_port = "http";
  EXPECT_TRUE(contains(attempt(half), "MASTER_PORT=http is not a TCP port")) << attempt(half);
  // One rank needs no rendezvous at all.
  EXPECT_TRUE(rendezvous_broadcast(ProcessIdentity{}, blob, RendezvousOptions{}) == blob);
}

// ----------------------------------------------------------------- TCP ----

// Clients start first and retry until rank 0 listens.
void expect_tcp_broadcast(int world, const std::string& host) {
  const std::vector<std::byte> blob = random_blob();
  const RendezvousOptions options = tcp_options(host);
  std::vector<std::function<std::string()>> ranks;
  for (int r = 0; r < world; ++r) ranks.push_back(rank_body(r, world, options, blob, milliseconds(r == 0 ? 300 : 0)));
  expect_every_rank_got(run_children(ranks), blob);
}

TEST(rendezvous, TcpTwoRanksClientsFirst) { expect_tcp_broadcast(2, "127.0.0.1"); }

TEST(rendezvous, TcpFourRanksClientsFirst) { expect_tcp_broadcast(4, "localhost"); }

TEST(rendezvous, TcpOverIpv6) {
  const int fd = ::socket(AF_INET6, SOCK_STREAM, 0);
  sockaddr_in6 loopback{};
  loopback.sin6_family = AF_INET6;
  loopback.sin6_addr = in6addr_loopback;
  const bool have_ipv6 = fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&loopback), sizeof loopback) == 0;
  if (fd >= 0) ::close(fd);
  if (!have_ipv6) GTEST_SKIP() << "no IPv6 loopback here";
  expect_tcp_broadcast(2, "::1");
}

TEST(rendezvous, TcpIgnoresAForeignConnection) {
  const std::vector<std::byte> blob = random_blob();
  const RendezvousOptions options = tcp_options("127.0.0.1");
  const Child server = start_child({}, rank_body(0, 2, options, blob));
  // Something that is not an emix rank connects first (a port scanner, say).
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(std::stoi(options.master_port)));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int fd = -1;
  for (int attempt = 0; attempt < 500 && fd < 0; ++attempt) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);  // a failed connect leaves its socket unusable: a new one each time
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
      ::close(fd);
      fd = -1;
      std::this_thread::sleep_for(milliseconds(10));
    }
  }
  ASSERT_GE(fd, 0) << "rank 0 never listened";
  const std::string junk = "GET / HTTP/1.0\r\nHost: rendezvous\r\n\r\n";
  ASSERT_EQ(::write(fd, junk.data(), junk.size()), static_cast<ssize_t>(junk.size()));
  const ChildResult client = run_child({}, rank_body(1, 2, options, blob));
  const ChildResult root = finish_child(server);
  ::close(fd);
  expect_every_rank_got({root, client}, blob);
}

TEST(rendezvous, TcpRejectsAWrongWorldSize) {
  const std::vector<std::byte> blob = random_blob();
  const RendezvousOptions options = tcp_options("127.0.0.1");
  // Rank 2 believes in 4 ranks; it comes last, when rank 1 is already connected.
  const auto results = run_children({rank_body(0, 3, options, blob), rank_body(1, 3, options, blob),
                                     rank_body(2, 4, options, blob, milliseconds(3000))});
  const std::string problem = "(rank 2) has world size 4, rank 0 has 3";
  for (const ChildResult& result : results) {
    EXPECT_EQ(result.status, 3) << result.output;
    EXPECT_TRUE(contains(result.output, problem)) << result.output;
  }
  EXPECT_TRUE(results[0].output.starts_with("rank 0 of 3: rendezvous client 127.0.0.1:")) << results[0].output;
  EXPECT_TRUE(results[1].output.starts_with("rank 1 of 3: rank 0 at MASTER_ADDR=127.0.0.1:" + options.master_port +
                                            " stopped the rendezvous"))
      << results[1].output;
  EXPECT_TRUE(results[2].output.starts_with("rank 2 of 4: rank 0 at")) << results[2].output;
}

TEST(rendezvous, TcpRejectsAnotherLaunchsToken) {
  const std::vector<std::byte> blob = random_blob();
  const RendezvousOptions options = tcp_options("127.0.0.1", "launch-B");
  RendezvousOptions stale = options;
  stale.run_token = "launch-A";
  const auto results = run_children({rank_body(0, 2, options, blob), rank_body(1, 2, stale, blob)});
  for (const ChildResult& result : results) {
    EXPECT_EQ(result.status, 3) << result.output;
    EXPECT_TRUE(contains(result.output, "has run token 'launch-A', this launch has 'launch-B'")) << result.output;
  }
}

TEST(rendezvous, TcpRejectsADuplicateRank) {
  const std::vector<std::byte> blob = random_blob();
  const RendezvousOptions options = tcp_options("127.0.0.1");
  const auto results = run_children({rank_body(0, 3, options, blob), rank_body(1, 3, options, blob),
                                     rank_body(1, 3, options, blob, milliseconds(3000))});
  for (const ChildResult& result : results) {
    EXPECT_EQ(result.status, 3) << result.output;
    EXPECT_TRUE(contains(result.output, "(rank 1) claims the rank that 127.0.0.1:")) << result.output;
  }
}

TEST(rendezvous, TcpTimesOutWhenARankNeverComes) {
  const std::vector<std::byte> blob = random_blob();
  RendezvousOptions options = tcp_options("127.0.0.1", "tcp-test", milliseconds(1000));
  RendezvousOptions patient = options;  // rank 1 waits longer: it hears rank 0 give up
  patient.timeout = milliseconds(10000);
  const auto start = std::chrono::steady_clock::now();
  const auto results = run_children({rank_body(0, 3, options, blob), rank_body(1, 3, patient, blob)});
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(15));
  const std::string problem =
      "rank 0 of 3: no rendezvous from rank(s) 2 on MASTER_PORT=" + options.master_port + " after 1 s";
  EXPECT_EQ(results[0].status, 3);
  EXPECT_EQ(results[0].output, problem);
  EXPECT_EQ(results[1].status, 3);
  EXPECT_TRUE(contains(results[1].output, "stopped the rendezvous: " + problem)) << results[1].output;
}

TEST(rendezvous, TcpTimesOutWithoutRankZero) {
  const RendezvousOptions options = tcp_options("127.0.0.1", "tcp-test", milliseconds(1000));
  const auto start = std::chrono::steady_clock::now();
  try {
    rendezvous_broadcast(ProcessIdentity{2, 4, 0, "test"}, {}, options);
    FAIL() << "no error";
  } catch (const Error& error) {
    EXPECT_TRUE(std::string(error.what()).starts_with("rank 2 of 4: no rendezvous from MASTER_ADDR=127.0.0.1:" +
                                                      options.master_port + " after 1 s"))
        << error.what();
  }
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_GE(elapsed, milliseconds(1000));
  EXPECT_LT(elapsed, milliseconds(10000));  // generous: CI runs suites side by side
}

// ---------------------------------------------------------------- file ----

// A stale file and acknowledgement of an earlier launch are present; the
// other ranks start before rank 0, see only the stale file, and must wait
// for this launch's. With 4 ranks, rank 1 comes long after the others: rank
// 0 must wait for it, not count its stale acknowledgement. Nothing is left
// behind.
void expect_file_broadcast(int world) {
  test::TempDir dir;
  const fs::path path = dir / "rendezvous";
  leave_stale_file(path, world, "old-launch");
  std::ofstream(dir / "rendezvous.ack.1") << "old-launch";
  const std::vector<std::byte> blob = random_blob();
  const RendezvousOptions options = file_options(path, "new-launch");
  std::vector<std::function<std::string()>> ranks;
  for (int r = 0; r < world; ++r) {
    const int delay_ms = r == 0 ? 300 : (r == 1 && world > 2 ? 1500 : 0);
    ranks.push_back(rank_body(r, world, options, blob, milliseconds(delay_ms)));
  }
  expect_every_rank_got(run_children(ranks), blob);
  EXPECT_EQ(directory_listing(dir.path()), "");
}

TEST(rendezvous, FileTwoRanksIgnoreAStaleFile) { expect_file_broadcast(2); }

TEST(rendezvous, FileFourRanksIgnoreAStaleFile) { expect_file_broadcast(4); }

TEST(rendezvous, FileWaitsOnlyForItsOwnLaunch) {
  test::TempDir dir;
  const fs::path path = dir / "rendezvous";
  leave_stale_file(path, 2, "old-launch");
  try {
    rendezvous_broadcast(ProcessIdentity{1, 2, 0, "test"}, {}, file_options(path, "new-launch", milliseconds(1000)));
    FAIL() << "no error";
  } catch (const Error& error) {
    const std::string message = error.what();
    EXPECT_TRUE(message.starts_with("rank 1 of 2: no rendezvous file " + path.string() +
                                    " with run token 'new-launch' after 1 s: found only a file of another launch "
                                    "(run token 'old-launch')"))
        << message;
  }
}

TEST(rendezvous, FileTimesOutWhenARankNeverComes) {
  test::TempDir dir;
  const std::vector<std::byte> blob = random_blob();
  const RendezvousOptions options = file_options(dir / "rendezvous", "launch", milliseconds(1000));
  const auto results = run_children({rank_body(0, 3, options, blob), rank_body(1, 3, options, blob)});
  EXPECT_EQ(results[0].status, 3);
  EXPECT_TRUE(results[0].output.starts_with("rank 0 of 3: rendezvous file " + options.file +
                                            ": no acknowledgement from rank(s) 2 after 1 s"))
      << results[0].output;
  EXPECT_EQ(results[1].status, 0) << results[1].output;  // rank 1 did receive the blob
  EXPECT_EQ(directory_listing(dir.path()), "");   // and rank 0 cleaned up when it gave up
}

TEST(rendezvous, FileNeedsARunToken) {
  test::TempDir dir;
  try {
    rendezvous_broadcast(ProcessIdentity{0, 2, 0, "test"}, random_blob(), file_options(dir / "rendezvous", ""));
    FAIL() << "no error";
  } catch (const Error& error) {
    EXPECT_TRUE(contains(error.what(), "set EMIX_RUN_ID to a value unique to this launch")) << error.what();
  }
  EXPECT_EQ(directory_listing(dir.path()), "");
}

// ------------------------------------------------- from the environment ----

// As a launcher would start them: identity and method from the environment
// only, the file method first, then TCP.
TEST(rendezvous, EnvironmentDrivenLaunch) {
  test::TempDir dir;
  const std::vector<std::byte> blob = random_blob();
  for (const Env& method : {Env{{"EMIX_RENDEZVOUS_FILE", (dir / "rendezvous").string()}, {"EMIX_RUN_ID", "env-run"}},
                            Env{{"MASTER_ADDR", "localhost"}, {"MASTER_PORT", free_port()}}}) {
    std::vector<Child> children;
    for (int r = 0; r < 3; ++r) {
      Env env = method;
      env.insert(env.end(), {{"RANK", std::to_string(r)}, {"WORLD_SIZE", "3"}, {"LOCAL_RANK", std::to_string(r)},
                             {"EMIX_RENDEZVOUS_TIMEOUT", "10"}});
      children.push_back(start_child(env, [&blob] {
        const ProcessIdentity identity = read_process_identity();
        const std::span<const std::byte> mine =
            identity.rank == 0 ? std::span<const std::byte>(blob) : std::span<const std::byte>();
        return text(rendezvous_broadcast(identity, mine, rendezvous_options_from_environment()));
      }));
    }
    std::vector<ChildResult> results;
    for (const Child& child : children) results.push_back(finish_child(child));
    expect_every_rank_got(results, blob);
  }
  EXPECT_EQ(directory_listing(dir.path()), "");
}

}  // namespace
}  // namespace emix
