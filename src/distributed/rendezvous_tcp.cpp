// The TCP rendezvous (see rendezvous.hpp): rank 0 listens on MASTER_PORT,
// the other ranks connect to MASTER_ADDR:MASTER_PORT.
//
// Messages, every integer a little-endian u32:
//   hello (client -> rank 0): magic, protocol version, rank, world size,
//                             token length, token bytes
//   reply (rank 0 -> client): magic, status (0: the blob follows,
//                             1: an error message follows), length, bytes
// Every socket is non-blocking and every wait is a poll() bounded by the
// deadline, so no call can hang; EINTR is retried, partial reads and writes
// are continued, a peer closing early is reported as such.
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <optional>
#include <utility>

#include "core/error.hpp"
#include "distributed/rendezvous_internal.hpp"

namespace emix::rendezvous {
namespace {

constexpr size_t kHelloHeaderBytes = 20;
constexpr size_t kReplyHeaderBytes = 12;
constexpr uint32_t kStatusBlob = 0;
constexpr uint32_t kStatusError = 1;
// A real client sends its hello right after connecting; anything silent for
// this long is not one of ours.
constexpr std::chrono::seconds kHelloWait{5};
// One connection attempt to one address: a host that drops packets must not
// keep the other addresses of MASTER_ADDR (IPv6 and IPv4, say) untried.
constexpr std::chrono::seconds kConnectAttempt{5};

// An owned file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// How a read or write ended.
struct Io {
  enum Status { done, closed, timed_out, failed } status = done;
  int error = 0;  // errno when failed

  std::string text() const {
    switch (status) {
      case done: return "done";
      case closed: return "connection closed by the peer";
      case timed_out: return "timed out";
      case failed: return std::strerror(error);
    }
    return "";
  }
};

// Waits until `fd` has one of `events` (or an error or hang-up, which the
// next call on it reports) or `until` passes; false when it passed.
bool wait_ready(int fd, short events, Clock::time_point until) {
  for (;;) {
    pollfd entry{fd, events, 0};
    const int n = ::poll(&entry, 1, ms_until(until));
    if (n > 0) return true;
    if (n == 0) {
      if (Clock::now() >= until) return false;
      continue;  // poll rounds to milliseconds: woke a little early
    }
    if (errno != EINTR) fail("poll: {}", std::strerror(errno));
  }
}

Io read_exact(int fd, std::span<std::byte> out, Clock::time_point until) {
  size_t got = 0;
  while (got < out.size()) {
    const ssize_t n = ::recv(fd, out.data() + got, out.size() - got, 0);
    if (n > 0) {
      got += static_cast<size_t>(n);
    } else if (n == 0) {
      return {Io::closed};
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!wait_ready(fd, POLLIN, until)) return {Io::timed_out};
    } else if (errno != EINTR) {
      return {Io::failed, errno};
    }
  }
  return {};
}

Io write_all(int fd, std::span<const std::byte> data, Clock::time_point until) {
  size_t sent = 0;
  while (sent < data.size()) {
    // MSG_NOSIGNAL: a peer that went away is an EPIPE here, not a SIGPIPE
    // that kills the process.
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n >= 0) {
      sent += static_cast<size_t>(n);
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!wait_ready(fd, POLLOUT, until)) return {Io::timed_out};
    } else if (errno != EINTR) {
      return {Io::failed, errno};
    }
  }
  return {};
}

void check_port(const ProcessIdentity& identity, const std::string& port) {
  int value = 0;
  const char* end = port.data() + port.size();
  auto [ptr, ec] = std::from_chars(port.data(), end, value);
  if (ec != std::errc() || ptr != end || value < 1 || value > 65535) {
    fail("{}: MASTER_PORT={} is not a TCP port (1-65535)", who(identity), port);
  }
}

// "10.0.0.5:41234", "[fe80::1]:41234"; an IPv4 client of the dual-stack
// listener is shown as IPv4, not as ::ffff:10.0.0.5.
std::string address_text(const sockaddr* address, socklen_t length) {
  if (address->sa_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(address);
    if (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr)) {
      sockaddr_in v4{};
      v4.sin_family = AF_INET;
      v4.sin_port = v6->sin6_port;
      std::memcpy(&v4.sin_addr, &v6->sin6_addr.s6_addr[12], sizeof v4.sin_addr);
      return address_text(reinterpret_cast<const sockaddr*>(&v4), sizeof v4);
    }
  }
  char host[NI_MAXHOST] = "?";
  char service[NI_MAXSERV] = "?";
  ::getnameinfo(address, length, host, sizeof host, service, sizeof service, NI_NUMERICHOST | NI_NUMERICSERV);
  const bool v6 = address->sa_family == AF_INET6;
  return fmt::format("{}{}{}:{}", v6 ? "[" : "", host, v6 ? "]" : "", service);
}

// ------------------------------------------------------------- rank 0 ----

// A listening socket on every interface. An IPv6 socket with IPV6_V6ONLY off
// takes IPv4 clients too, so it is tried first; a host without IPv6 falls
// back to IPv4. SO_REUSEADDR: the connections of a previous run that just
// ended linger in TIME_WAIT on this port and would otherwise block bind().
Fd listen_on(const ProcessIdentity& identity, const std::string& port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* list = nullptr;
  if (const int rc = ::getaddrinfo(nullptr, port.c_str(), &hints, &list); rc != 0) {
    fail("{}: cannot listen on MASTER_PORT={}: {}", who(identity), port, ::gai_strerror(rc));
  }
  std::vector<const addrinfo*> candidates;
  for (const addrinfo* ai = list; ai != nullptr; ai = ai->ai_next) candidates.push_back(ai);
  std::stable_partition(candidates.begin(), candidates.end(),
                        [](const addrinfo* ai) { return ai->ai_family == AF_INET6; });
  std::string error = "no address";
  for (const addrinfo* ai : candidates) {
    Fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
    const int on = 1, off = 0;
    if (fd.valid() && ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) == 0 &&
        (ai->ai_family != AF_INET6 || ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) == 0) &&
        ::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd.get(), SOMAXCONN) == 0) {
      ::freeaddrinfo(list);
      return fd;
    }
    error = std::strerror(errno);
  }
  ::freeaddrinfo(list);
  fail("{}: cannot listen on MASTER_PORT={}: {} (is another run, or another program, using this port?)",
       who(identity), port, error);
}

struct Connection {
  Fd fd;
  std::string address;  // the peer's, for messages
  int rank = -1;        // from its hello, once accepted
};

// The next connection, or nothing once the deadline has passed.
std::optional<Connection> accept_one(const Fd& listener, const Deadline& deadline) {
  for (;;) {
    if (!wait_ready(listener.get(), POLLIN, deadline.end)) return std::nullopt;
    sockaddr_storage address{};
    socklen_t length = sizeof address;
    const int fd =
        ::accept4(listener.get(), reinterpret_cast<sockaddr*>(&address), &length, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) return Connection{Fd(fd), address_text(reinterpret_cast<sockaddr*>(&address), length)};
    // A client that gave up between poll and accept, or a signal: wait again.
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
      fail("accept on the rendezvous port: {}", std::strerror(errno));
    }
  }
}

struct Hello {
  uint32_t version = 0;
  int rank = -1;
  int world_size = 0;
  std::string token;
};

// The client's hello; nothing when the connection is not an emix client
// (wrong magic, closed or silent before a whole hello arrived).
std::optional<Hello> read_hello(Connection& connection, const Deadline& deadline) {
  auto ignore = [&](const std::string& reason) -> std::optional<Hello> {
    spdlog::warn("rendezvous: ignoring a connection from {}, not an emix rank: {}", connection.address, reason);
    return std::nullopt;
  };
  const Clock::time_point until = deadline.within(kHelloWait);
  std::vector<std::byte> header(kHelloHeaderBytes);
  if (const Io io = read_exact(connection.fd.get(), header, until); io.status != Io::done) return ignore(io.text());
  if (read_u32(header, 0) != kMagic) return ignore("wrong magic");
  const uint32_t token_bytes = read_u32(header, 16);
  if (token_bytes > kMaxTokenBytes) return ignore("run token too long");
  std::vector<std::byte> token(token_bytes);
  if (const Io io = read_exact(connection.fd.get(), token, until); io.status != Io::done) return ignore(io.text());
  return Hello{read_u32(header, 4), static_cast<int>(read_u32(header, 8)), static_cast<int>(read_u32(header, 12)),
               as_text(token)};
}

// What is wrong with a hello, "" when nothing is.
std::string check_hello(const Hello& hello, const Connection& connection, const ProcessIdentity& identity,
                        const std::string& token, const std::vector<Connection>& accepted) {
  const std::string peer =
      fmt::format("{}: rendezvous client {} (rank {})", who(identity), connection.address, hello.rank);
  if (hello.version != kProtocolVersion) {
    return fmt::format("{} speaks rendezvous protocol {}, this is version {} (another emix build?)", peer,
                       hello.version, kProtocolVersion);
  }
  if (hello.token != token) {
    return fmt::format("{} has run token '{}', this launch has '{}' (a process of another launch, or EMIX_RUN_ID "
                       "differs between ranks)", peer, hello.token, token);
  }
  if (hello.world_size != identity.world_size) {
    return fmt::format("{} has world size {}, rank 0 has {}", peer, hello.world_size, identity.world_size);
  }
  if (hello.rank < 1 || hello.rank >= identity.world_size) {
    return fmt::format("{} claims a rank outside 1..{}", peer, identity.world_size - 1);
  }
  for (const Connection& other : accepted) {
    if (other.rank == hello.rank) return fmt::format("{} claims the rank that {} has already", peer, other.address);
  }
  return "";
}

std::vector<std::byte> reply_message(uint32_t status, std::span<const std::byte> payload) {
  std::vector<std::byte> message;
  append_u32(message, kMagic);
  append_u32(message, status);
  append_u32(message, static_cast<uint32_t>(payload.size()));
  append_bytes(message, payload);
  return message;
}

// Tells a client why the rendezvous failed, so that it stops waiting (best
// effort: rank 0 is failing anyway).
void send_error(const Connection& connection, const std::string& message) {
  write_all(connection.fd.get(), reply_message(kStatusError, as_bytes(message)),
            Clock::now() + std::chrono::seconds(1));
}

std::string missing_ranks(const ProcessIdentity& identity, const std::vector<Connection>& accepted) {
  std::vector<int> missing;
  for (int r = 1; r < identity.world_size; ++r) {
    if (std::none_of(accepted.begin(), accepted.end(), [r](const Connection& c) { return c.rank == r; })) {
      missing.push_back(r);
    }
  }
  return rank_list(missing);
}

// Every other rank's checked connection; an Error (which every connected
// client is sent too) when a hello is wrong or the deadline passes.
std::vector<Connection> gather_clients(const Fd& listener, const ProcessIdentity& identity,
                                       const RendezvousOptions& options, const Deadline& deadline) {
  std::vector<Connection> accepted;
  try {
    while (accepted.size() < static_cast<size_t>(identity.world_size - 1)) {
      std::optional<Connection> connection = accept_one(listener, deadline);
      if (!connection) {
        fail("{}: no rendezvous from rank(s) {} on MASTER_PORT={} after {}", who(identity),
             missing_ranks(identity, accepted), options.master_port, deadline.text());
      }
      const std::optional<Hello> hello = read_hello(*connection, deadline);
      if (!hello) continue;
      if (const std::string problem = check_hello(*hello, *connection, identity, options.run_token, accepted);
          !problem.empty()) {
        send_error(*connection, problem);
        fail("{}", problem);
      }
      connection->rank = hello->rank;
      accepted.push_back(std::move(*connection));
    }
  } catch (const Error& error) {
    for (const Connection& c : accepted) send_error(c, error.what());
    throw;
  }
  return accepted;
}

std::vector<std::byte> serve(const ProcessIdentity& identity, std::span<const std::byte> blob,
                             const RendezvousOptions& options) {
  const Deadline deadline(options.timeout);
  const Fd listener = listen_on(identity, options.master_port);
  const std::vector<Connection> clients = gather_clients(listener, identity, options, deadline);
  const std::vector<std::byte> message = reply_message(kStatusBlob, blob);
  for (const Connection& client : clients) {
    const Io io = write_all(client.fd.get(), message, deadline.end);
    if (io.status != Io::done) {
      fail("{}: sending the rendezvous blob to rank {} at {} failed: {}", who(identity), client.rank, client.address,
           io.text());
    }
  }
  return {blob.begin(), blob.end()};
}

// ------------------------------------------------------- other ranks ----

// A connected socket to `ai`, or an invalid Fd with `error` set.
Fd connect_to(const addrinfo* ai, const Deadline& deadline, std::string& error) {
  Fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
  if (!fd.valid()) {
    error = std::strerror(errno);
    return {};
  }
  // A non-blocking connect continues in the background (EINPROGRESS, or
  // EINTR when a signal came first); its outcome is SO_ERROR once writable.
  if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) == 0) return fd;
  if (errno != EINPROGRESS && errno != EINTR) {
    error = std::strerror(errno);
    return {};
  }
  if (!wait_ready(fd.get(), POLLOUT, deadline.within(kConnectAttempt))) {
    error = "connection attempt timed out";
    return {};
  }
  int status = 0;
  socklen_t length = sizeof status;
  if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &status, &length) != 0) status = errno;
  if (status != 0) {
    error = std::strerror(status);
    return {};
  }
  return fd;
}

// Tries every address of MASTER_ADDR, again and again until the deadline:
// rank 0 may not be listening yet, or the name may not resolve yet.
Fd connect_with_retries(const ProcessIdentity& identity, const RendezvousOptions& options, const Deadline& deadline,
                        const std::string& target) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  std::string error = "no attempt";
  Backoff backoff;
  while (!deadline.passed()) {
    addrinfo* list = nullptr;
    const int rc = ::getaddrinfo(options.master_addr.c_str(), options.master_port.c_str(), &hints, &list);
    if (rc != 0) {
      error = ::gai_strerror(rc);
    } else {
      for (const addrinfo* ai = list; ai != nullptr && !deadline.passed(); ai = ai->ai_next) {
        Fd fd = connect_to(ai, deadline, error);
        if (fd.valid()) {
          ::freeaddrinfo(list);
          return fd;
        }
      }
      ::freeaddrinfo(list);
    }
    backoff.sleep(deadline);
  }
  fail("{}: no rendezvous from {} after {} (last attempt: {}); is rank 0 running?", who(identity), target,
       deadline.text(), error);
}

std::vector<std::byte> hello_message(const ProcessIdentity& identity, const std::string& token) {
  std::vector<std::byte> message;
  append_u32(message, kMagic);
  append_u32(message, kProtocolVersion);
  append_u32(message, static_cast<uint32_t>(identity.rank));
  append_u32(message, static_cast<uint32_t>(identity.world_size));
  append_u32(message, static_cast<uint32_t>(token.size()));
  append_bytes(message, as_bytes(token));
  return message;
}

// Rank 0's reply: the blob, or the error it sends.
std::vector<std::byte> read_reply(const Fd& fd, const ProcessIdentity& identity, const Deadline& deadline,
                                  const std::string& target) {
  std::vector<std::byte> header(kReplyHeaderBytes);
  Io io = read_exact(fd.get(), header, deadline.end);
  if (io.status == Io::timed_out) {
    fail("{}: connected to {}, but rank 0 sent no blob within {} (is another rank missing?)", who(identity), target,
         deadline.text());
  }
  if (io.status != Io::done) fail("{}: waiting for rank 0's answer from {}: {}", who(identity), target, io.text());
  const uint32_t length = read_u32(header, 8);
  if (read_u32(header, 0) != kMagic || length > kMaxBlobBytes) {
    fail("{}: {} is not an emix rendezvous (unexpected answer)", who(identity), target);
  }
  std::vector<std::byte> payload(length);
  io = read_exact(fd.get(), payload, deadline.end);
  if (io.status != Io::done) fail("{}: receiving the blob from {}: {}", who(identity), target, io.text());
  if (read_u32(header, 4) != kStatusBlob) {
    fail("{}: rank 0 at {} stopped the rendezvous: {}", who(identity), target, as_text(payload));
  }
  return payload;
}

std::vector<std::byte> join(const ProcessIdentity& identity, const RendezvousOptions& options) {
  const Deadline deadline(options.timeout);
  const std::string target = fmt::format("MASTER_ADDR={}:{}", options.master_addr, options.master_port);
  const Fd fd = connect_with_retries(identity, options, deadline, target);
  const Io io = write_all(fd.get(), hello_message(identity, options.run_token), deadline.end);
  if (io.status != Io::done) fail("{}: sending the hello to {}: {}", who(identity), target, io.text());
  return read_reply(fd, identity, deadline, target);
}

}  // namespace

std::vector<std::byte> tcp_broadcast(const ProcessIdentity& identity, std::span<const std::byte> root_blob,
                                     const RendezvousOptions& options) {
  check_port(identity, options.master_port);
  return identity.rank == 0 ? serve(identity, root_blob, options) : join(identity, options);
}

}  // namespace emix::rendezvous
