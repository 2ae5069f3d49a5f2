#include "control/admin.h"

#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <exception>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "portico/json_text.h"
#include "portico/logging.h"

namespace portico::proxy {

struct AdminServer::Connection {
  uv_pipe_t pipe;
  uv_timer_t idle_timer;
  AdminServer* server;
  std::string buffer;             // bytes after the last complete line
  std::deque<std::string> lines;  // requests waiting their turn
  std::size_t queued_bytes = 0;   // bytes in `lines`
  std::uint64_t request = 0;      // number of the request being answered
  int open_handles = 0;           // pipe and timer; freed when both closed
  bool busy = false;              // a request is being answered
  bool serving = false;           // serveNext's loop is on the stack
  bool reading = false;
  bool write_blocked = false;  // too many reply bytes unread: pause
  bool eof = false;            // the client half-closed: answer, then close
  bool rejected = false;       // over the connection cap: told so, input discarded
  bool shutting_down = false;  // closeAfterWrites() was called
  bool closing = false;
  std::string peer = "unknown";  // SO_PEERCRED, see AdminRequest::peer
  std::shared_ptr<bool> alive = std::make_shared<bool>(true);

  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&pipe); }
};

namespace {

using Connection = AdminServer::Connection;

std::string errorJson(const std::string& message) {
  return jsonText(nlohmann::json{{"ok", false}, {"error", message}});
}

void onIdle(uv_timer_t* timer);

// A refused connection gets this long to read its error reply.
constexpr std::chrono::milliseconds kRejectedLinger{2'000};

// (Re)starts the idle clock: called whenever the client sends or reads.
void touch(Connection* conn) {
  if (!conn->closing) {
    const auto timeout = conn->rejected ? std::min(kRejectedLinger, conn->server->idleTimeout())
                                        : conn->server->idleTimeout();
    uv_timer_start(&conn->idle_timer, &onIdle, static_cast<std::uint64_t>(timeout.count()), 0);
  }
}

void startReading(Connection* conn);

void stopReading(Connection* conn) {
  if (conn->reading) {
    uv_read_stop(conn->stream());
    conn->reading = false;
  }
}

void onWritten(Connection* conn) {
  touch(conn);
  if (conn->write_blocked &&
      uv_stream_get_write_queue_size(conn->stream()) <= AdminServer::kMaxPendingReplyBytes / 2) {
    conn->write_blocked = false;  // the client caught up: read and serve again
    if (!conn->eof) {
      startReading(conn);
    }
    AdminServer::serveQueued(conn);
  }
}

// Writes one reply line; with close_after, closes the connection once the
// line is out (closing at once would cancel the write).
void writeLine(Connection* conn, std::string text, bool close_after = false) {
  if (conn->closing) {
    return;
  }
  struct WriteReq {
    uv_write_t req;
    std::string data;
    bool close_after;
  };
  auto* w = new WriteReq;
  w->data = std::move(text);
  w->data.push_back('\n');
  w->close_after = close_after;
  uv_buf_t buf = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
  int rc = uv_write(&w->req, conn->stream(), &buf, 1, [](uv_write_t* req, int status) {
    auto* done = reinterpret_cast<WriteReq*>(req);
    auto* c = static_cast<Connection*>(req->handle->data);
    if (!c->closing) {
      if (done->close_after || status != 0) {
        c->server->closeConnection(c);
      } else {
        onWritten(c);
      }
    }
    delete done;
  });
  if (rc != 0) {
    delete w;
    conn->server->closeConnection(conn);
    return;
  }
  if (!conn->write_blocked &&
      uv_stream_get_write_queue_size(conn->stream()) > AdminServer::kMaxPendingReplyBytes) {
    // The client sends requests but does not read the replies: stop taking
    // more until it does (its requests wait in the socket buffer).
    conn->write_blocked = true;
    stopReading(conn);
  }
}

// Closes the connection once every reply written so far is out (a plain
// close would cancel pending writes).
void closeAfterWrites(Connection* conn) {
  if (conn->shutting_down || conn->closing) {
    return;
  }
  conn->shutting_down = true;
  auto* req = new uv_shutdown_t;
  int rc = uv_shutdown(req, conn->stream(), [](uv_shutdown_t* r, int) {
    auto* c = static_cast<Connection*>(r->handle->data);
    delete r;
    c->server->closeConnection(c);
  });
  if (rc != 0) {
    delete req;
    conn->server->closeConnection(conn);
  }
}

// Answers with an error and closes: the connection broke a limit. A request
// still being answered is dropped (its reply would follow the error).
void refuse(Connection* conn, const std::string& message) {
  stopReading(conn);
  conn->lines.clear();
  conn->queued_bytes = 0;
  conn->buffer.clear();
  conn->busy = false;
  ++conn->request;
  logging::log(logging::Level::kWarn, "admin", "closing a connection: {}", message);
  writeLine(conn, errorJson(message), true);
}

void onIdle(uv_timer_t* timer) {
  auto* conn = static_cast<Connection*>(timer->data);
  if (conn->closing) {
    return;
  }
  if (conn->rejected) {
    conn->server->closeConnection(conn);  // it had its error reply
    return;
  }
  if (conn->busy) {
    touch(conn);  // Portico is the slow one (a probe runs): not idle
    return;
  }
  const auto seconds = std::chrono::duration<double>(conn->server->idleTimeout()).count();
  if (uv_stream_get_write_queue_size(conn->stream()) > 0) {
    // Replies have waited all this time for the client to read them.
    logging::log(logging::Level::kWarn, "admin",
                 "closing a connection whose replies went unread for {}s", seconds);
    conn->server->closeConnection(conn);
    return;
  }
  logging::log(logging::Level::kInfo, "admin", "closing a connection idle for {}s", seconds);
  stopReading(conn);
  writeLine(conn, errorJson(fmt::format("idle for {}s: closing the connection", seconds)), true);
}

void onAlloc(uv_handle_t*, std::size_t, uv_buf_t* buf) {
  static thread_local char scratch[16 * 1024];
  buf->base = scratch;
  buf->len = sizeof(scratch);
}

void startReading(Connection* conn) {
  if (!conn->reading && !conn->closing) {
    conn->reading = uv_read_start(conn->stream(), &onAlloc, &AdminServer::onRead) == 0;
  }
}

// Who is at the other end of an accepted admin connection.
std::string peerOf(uv_pipe_t* pipe) {
  uv_os_fd_t fd = -1;
  struct ucred cred {};
  socklen_t len = sizeof(cred);
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(pipe), &fd) != 0 ||
      ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof(cred)) {
    return "unknown";
  }
  return describeUid(cred.uid);
}

}  // namespace

std::string describeUid(unsigned uid) {
  struct passwd pw {};
  struct passwd* found = nullptr;
  char buf[1024];
  if (::getpwuid_r(static_cast<uid_t>(uid), &pw, buf, sizeof(buf), &found) == 0 &&
      found != nullptr) {
    return fmt::format("{} (uid {})", found->pw_name, uid);
  }
  return fmt::format("uid {}", uid);
}

Result<std::vector<std::string>> splitAdminLine(const std::string& line) {
  std::vector<std::string> words;
  std::string word;
  bool in_word = false;
  bool quoted = false;
  for (std::size_t i = 0; i < line.size(); ++i) {
    char c = line[i];
    if (quoted) {
      if (c == '\\' && i + 1 < line.size()) {
        word.push_back(line[++i]);
      } else if (c == '"') {
        quoted = false;
      } else {
        word.push_back(c);
      }
    } else if (c == '"') {
      quoted = true;
      in_word = true;
    } else if (c == ' ' || c == '\t' || c == '\r') {
      if (in_word) {
        words.push_back(std::move(word));
        word.clear();
        in_word = false;
      }
    } else {
      word.push_back(c);
      in_word = true;
    }
  }
  if (quoted) {
    return Status::error("unterminated quote");
  }
  if (in_word) {
    words.push_back(std::move(word));
  }
  return words;
}

AdminServer::AdminServer(uv_loop_t* loop, std::string path, std::string group, Handler handler,
                         std::chrono::milliseconds idle_timeout)
    : loop_(loop),
      path_(std::move(path)),
      group_(std::move(group)),
      handler_(std::move(handler)),
      idle_timeout_(idle_timeout),
      alive_(std::make_shared<bool>(true)) {}

AdminServer::~AdminServer() {
  *alive_ = false;
  stop();
}

// The socket's directory (/run/portico by default) does not exist on a
// fresh system; bind() would then fail with ENOENT, which libuv reports as
// EACCES ("permission denied"), pointing the operator the wrong way.
Status AdminServer::makeSocketDirectory() const {
  const std::size_t slash = path_.rfind('/');
  if (slash == std::string::npos) {
    return Status();  // in the working directory
  }
  const std::string dir = slash == 0 ? "/" : path_.substr(0, slash);
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) {
      return Status::error(fmt::format("admin socket {}: {} is not a directory", path_, dir));
    }
    return Status();
  }
  if (errno != ENOENT) {
    return Status::error(fmt::format("admin socket {}: cannot use directory {}: {}", path_, dir,
                                     std::strerror(errno)));
  }
  if (::mkdir(dir.c_str(), 0750) != 0) {
    const int err = errno;
    const std::size_t up = dir.rfind('/');
    const std::string parent = up == std::string::npos ? "." : up == 0 ? "/" : dir.substr(0, up);
    return Status::error(
        err == ENOENT
            ? fmt::format("admin socket {}: directory {} is missing, and so is its parent {} "
                          "(create them, or set [admin] socket)",
                          path_, dir, parent)
            : fmt::format("admin socket {}: directory {} is missing and cannot be created: {}",
                          path_, dir, std::strerror(err)));
  }
  ::chmod(dir.c_str(), 0750);  // whatever the umask
  if (!group_.empty()) {
    // Group members need to reach the socket inside.
    if (struct group* g = ::getgrnam(group_.c_str()); g != nullptr) {
      if (::chown(dir.c_str(), static_cast<uid_t>(-1), g->gr_gid) != 0) {
        logging::log(logging::Level::kWarn, "admin", "cannot give directory {} to group {}: {}",
                     dir, group_, std::strerror(errno));
      }
    }
  }
  logging::log(logging::Level::kInfo, "admin",
               "created the admin socket's directory {} (mode 0750)", dir);
  return Status();
}

Status AdminServer::start() {
  if (Status dir = makeSocketDirectory(); !dir.ok()) {
    return dir;
  }
  // A stale socket from a previous run would make bind fail; remove it only
  // if it is a socket (never some other file at that path).
  struct stat st {};
  if (::lstat(path_.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Status::error(fmt::format("admin socket {}: path exists and is not a socket", path_));
    }
    ::unlink(path_.c_str());
  }
  pipe_ = new uv_pipe_t;
  uv_pipe_init(loop_, pipe_, 0);
  pipe_->data = this;
  // Owner-only from the first moment: the umask covers the window between
  // bind() and chmod().
  mode_t old = ::umask(group_.empty() ? 0177 : 0117);
  int rc = uv_pipe_bind(pipe_, path_.c_str());
  ::umask(old);
  std::string error;
  if (rc == 0) {
    if (!group_.empty()) {
      struct group* g = ::getgrnam(group_.c_str());
      if (g == nullptr || ::chown(path_.c_str(), static_cast<uid_t>(-1), g->gr_gid) != 0) {
        error = fmt::format("admin socket {}: cannot set group {}", path_, group_);
        rc = -1;
      } else {
        ::chmod(path_.c_str(), 0660);
      }
    } else {
      ::chmod(path_.c_str(), 0600);
    }
  } else {
    error = fmt::format("admin socket {}: {}", path_, uv_strerror(rc));
  }
  if (rc == 0) {
    rc = uv_listen(reinterpret_cast<uv_stream_t*>(pipe_), 16, &AdminServer::onConnection);
    if (rc != 0) {
      error = fmt::format("admin socket {}: {}", path_, uv_strerror(rc));
    }
  }
  if (rc != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(pipe_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_pipe_t*>(h); });
    pipe_ = nullptr;
    return Status::error(std::move(error));
  }
  return Status();
}

void AdminServer::stop() {
  if (pipe_ != nullptr) {
    uv_close(reinterpret_cast<uv_handle_t*>(pipe_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_pipe_t*>(h); });
    pipe_ = nullptr;
    ::unlink(path_.c_str());
  }
  std::vector<Connection*> open = connections_;
  for (Connection* c : open) {
    closeConnection(c);
  }
}

void AdminServer::closeConnection(Connection* c) {
  if (c->closing) {
    return;
  }
  c->closing = true;
  *c->alive = false;
  for (std::size_t i = 0; i < connections_.size(); ++i) {
    if (connections_[i] == c) {
      connections_.erase(connections_.begin() + static_cast<std::ptrdiff_t>(i));
      break;
    }
  }
  auto closed = [](uv_handle_t* h) {
    auto* conn = static_cast<Connection*>(h->data);
    if (--conn->open_handles == 0) {
      delete conn;
    }
  };
  uv_timer_stop(&c->idle_timer);
  uv_close(reinterpret_cast<uv_handle_t*>(&c->idle_timer), closed);
  uv_close(reinterpret_cast<uv_handle_t*>(&c->pipe), closed);
}

// Serves the queued lines one at a time, so replies keep request order. A
// reply given synchronously (most commands) returns here and the loop takes
// the next line: 1,000 pipelined requests cost 1,000 iterations, not 1,000
// nested calls. An asynchronous reply calls this again from its callback.
void AdminServer::serveQueued(Connection* conn) {
  if (conn->serving) {
    return;  // called from a reply inside the loop below: it continues
  }
  conn->serving = true;
  while (!conn->busy && !conn->closing && !conn->write_blocked && !conn->lines.empty()) {
    std::string line = std::move(conn->lines.front());
    conn->lines.pop_front();
    conn->queued_bytes -= line.size();
    serveOne(conn, std::move(line));
  }
  conn->serving = false;
  if (conn->eof && !conn->busy && conn->lines.empty()) {
    closeAfterWrites(conn);  // the half-closed client has all its answers
  }
}

void AdminServer::serveOne(Connection* conn, std::string line) {
  AdminRequest request;
  request.peer = conn->peer;
  Result<std::vector<std::string>> words = splitAdminLine(line);
  if (!words.ok()) {
    writeLine(conn, errorJson(words.message()));
    return;
  }
  request.words = std::move(*words);
  if (request.words.empty()) {
    return;
  }
  conn->busy = true;
  const std::uint64_t seq = ++conn->request;
  std::weak_ptr<bool> alive = conn->alive;
  Reply reply = [conn, alive, seq](std::string json) {
    auto token = alive.lock();
    if (!token || !*token || !conn->busy || conn->request != seq) {
      return;  // the client went away, or this request was answered already
    }
    conn->busy = false;
    writeLine(conn, std::move(json));
    serveQueued(conn);
  };
  // The request boundary: whatever a command throws costs this request an
  // error reply, never the process (an exception must not unwind through
  // libuv).
  const char* what = nullptr;
  try {
    conn->server->handler_(request, std::move(reply));
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
    what = "unknown exception";
  }
  if (what != nullptr) {
    logging::log(logging::Level::kError, "admin", "command '{}' failed: {}", request.words.front(),
                 what);
    if (conn->busy && conn->request == seq) {
      conn->busy = false;
      writeLine(conn,
                errorJson(fmt::format("internal error in '{}': {}", request.words.front(), what)));
    }
  }
}

void AdminServer::onRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  auto* conn = static_cast<Connection*>(stream->data);
  if (conn->closing) {
    return;
  }
  if (conn->rejected) {
    // Over the cap: the request is not served (the reply already says
    // why); close once the client is done.
    if (nread < 0) {
      conn->server->closeConnection(conn);
    }
    return;
  }
  if (nread == UV_EOF) {
    // The client sent its requests and half-closed its side (as
    // `socat`/`nc -N` do): answer them all, then close. A last line
    // without '\n' counts as a request too.
    stopReading(conn);
    conn->eof = true;
    if (!conn->buffer.empty()) {
      conn->queued_bytes += conn->buffer.size();
      conn->lines.push_back(std::move(conn->buffer));
      conn->buffer.clear();
    }
    serveQueued(conn);
    return;
  }
  if (nread < 0) {
    conn->server->closeConnection(conn);
    return;
  }
  if (nread == 0) {
    return;
  }
  touch(conn);
  conn->buffer.append(buf->base, static_cast<std::size_t>(nread));
  std::size_t start = 0;
  bool too_long = false;
  for (std::size_t nl; (nl = conn->buffer.find('\n', start)) != std::string::npos; start = nl + 1) {
    // A line that ends within this read can be longer than the limit too
    // (the check below only sees the unfinished rest).
    if (nl - start > kMaxLine) {
      too_long = true;
      break;
    }
    conn->queued_bytes += nl - start;
    conn->lines.push_back(conn->buffer.substr(start, nl - start));
  }
  conn->buffer.erase(0, start);
  if (too_long || conn->buffer.size() > kMaxLine) {
    refuse(conn, fmt::format("request line longer than {} bytes", kMaxLine));
    return;
  }
  if (conn->lines.size() > kMaxQueuedLines || conn->queued_bytes > kMaxQueuedBytes) {
    refuse(conn, fmt::format("more than {} requests or {} KiB waiting on one connection; "
                             "wait for replies before sending more",
                             kMaxQueuedLines, kMaxQueuedBytes / 1024));
    return;
  }
  serveQueued(conn);
}

void AdminServer::onConnection(uv_stream_t* server_stream, int status) {
  auto* server = static_cast<AdminServer*>(server_stream->data);
  if (status != 0) {
    return;
  }
  auto* c = new Connection;
  c->server = server;
  uv_pipe_init(server->loop_, &c->pipe, 0);
  c->pipe.data = c;
  uv_timer_init(server->loop_, &c->idle_timer);
  c->idle_timer.data = c;
  c->open_handles = 2;
  if (uv_accept(server_stream, c->stream()) != 0) {
    server->closeConnection(c);
    return;
  }
  const auto served = std::count_if(server->connections_.begin(), server->connections_.end(),
                                    [](const Connection* other) { return !other->rejected; });
  server->connections_.push_back(c);
  if (static_cast<std::size_t>(served) >= kMaxConnections) {
    // Answer, and shut down only our side: closing at once would make the
    // client's request write fail (EPIPE) before it reads why.
    c->rejected = true;
    writeLine(c,
              errorJson(fmt::format(
                  "too many admin connections (at most {}; idle ones are closed after {}s)",
                  kMaxConnections, std::chrono::duration<double>(server->idle_timeout_).count())));
    auto* req = new uv_shutdown_t;
    if (uv_shutdown(req, c->stream(), [](uv_shutdown_t* r, int) { delete r; }) != 0) {
      delete req;
    }
  }
  c->peer = peerOf(&c->pipe);
  touch(c);
  startReading(c);
}

}  // namespace portico::proxy
