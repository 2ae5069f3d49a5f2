// The admin socket: a Unix stream socket served by the control loop (never
// a worker). Protocol: one command per line, words separated by spaces
// (double quotes group words); one JSON object per reply, on one line.
// Every reply has "ok": true|false; errors carry "error": "<text>".
//
//   protocol-log on [--user U] [--ip CIDR] [--ttl 15m] | off | status
//   health [SET-GLOB]
//   probe SET\PROBE [TARGET]
//   backend list | backend drain NAME [--move-sessions] | backend enable NAME
//   sessions [--user U] [--ip IP] [--backend B]
//   kick SESSION-ID | kick --user U
//   monitor disable|repairing|enable MONITOR [TARGET]
//   monitor override MONITOR [--target B] --duration D [--state S]
//   monitor override remove MONITOR [--target B]
//   actions
//   component [ImapProxy active|inactive]
//   stats
//   reload
//
// The socket is created mode 0600 (0660 with a configured group); a missing
// socket directory is created mode 0750 (its parent must exist).
//
// Limits, each answered with an error reply rather than silence:
// - a request line of at most kMaxLine bytes (longer: error, then close);
// - at most kMaxQueuedLines lines / kMaxQueuedBytes bytes waiting their turn
//   on one connection (more: error, then close). Requests are served one
//   after another in a loop, never by recursion, so a long pipeline costs
//   no stack;
// - replies not yet read by the client: above kMaxPendingReplyBytes the
//   server stops reading and serving that connection until they drain;
// - at most kMaxConnections connections (one more: error, then close);
// - a connection with no request for `idle_timeout` (and none being
//   answered) gets an error reply and is closed, so idle clients cannot
//   hold every slot.
// Errors: a request whose handling throws gets {"ok":false,...}; nothing
// from a request reaches the event loop as an exception.
#pragma once

#include <uv.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "portico/status.h"

namespace portico::proxy {

// What one admin command line is split into.
struct AdminRequest {
  std::vector<std::string> words;
  // Who sent it, from the socket's SO_PEERCRED: "root (uid 0)", or "uid N"
  // when the uid has no passwd entry; "unknown" if the kernel would not say.
  std::string peer;
};

// "name (uid N)" for a uid, "uid N" without a passwd entry.
std::string describeUid(unsigned uid);

// Splits a line into words ("double quotes" group, backslash escapes inside
// them); an error on an unterminated quote.
Result<std::vector<std::string>> splitAdminLine(const std::string& line);

class AdminServer {
 public:
  using Reply = std::function<void(std::string json)>;
  using Handler = std::function<void(const AdminRequest& request, Reply reply)>;

  static constexpr std::size_t kMaxLine = 64 * 1024;
  static constexpr std::size_t kMaxConnections = 16;
  static constexpr std::size_t kMaxQueuedLines = 1024;
  static constexpr std::size_t kMaxQueuedBytes = 1024 * 1024;
  static constexpr std::size_t kMaxPendingReplyBytes = 4 * 1024 * 1024;
  static constexpr std::chrono::milliseconds kDefaultIdleTimeout{60'000};

  AdminServer(uv_loop_t* loop, std::string path, std::string group, Handler handler,
              std::chrono::milliseconds idle_timeout = kDefaultIdleTimeout);
  ~AdminServer();

  // Binds and listens; an error ("admin socket PATH: ...") when it cannot.
  Status start();
  void stop();
  const std::string& path() const { return path_; }
  // Applies to connections from now on (a reload may change it).
  void setIdleTimeout(std::chrono::milliseconds timeout) { idle_timeout_ = timeout; }

  std::chrono::milliseconds idleTimeout() const { return idle_timeout_; }

  // Internal: one client connection and the callbacks that serve it.
  struct Connection;
  void closeConnection(Connection* c);
  static void onRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
  static void serveQueued(Connection* conn);

 private:
  static void onConnection(uv_stream_t* server, int status);
  static void serveOne(Connection* conn, std::string line);
  Status makeSocketDirectory() const;

  uv_loop_t* loop_;
  std::string path_;
  std::string group_;
  Handler handler_;
  std::chrono::milliseconds idle_timeout_;
  uv_pipe_t* pipe_ = nullptr;
  std::vector<Connection*> connections_;
  std::shared_ptr<bool> alive_;
};

}  // namespace portico::proxy
