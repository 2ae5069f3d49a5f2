#include "admin.h"

#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "portico/logging.h"

namespace portico::proxy {

struct AdminServer::Connection {
  uv_pipe_t pipe;
  AdminServer* server;
  std::string buffer;
  std::deque<std::string> lines;  // requests waiting their turn
  bool busy = false;              // a request is being answered
  bool eof = false;               // the client half-closed: answer, then close
  bool shutting_down = false;     // closeAfterWrites() was called
  bool closing = false;
  std::string peer = "unknown";  // SO_PEERCRED, see AdminRequest::peer
  std::shared_ptr<bool> alive = std::make_shared<bool>(true);
};

namespace {

std::string errorJson(const std::string& message) {
  return nlohmann::json{{"ok", false}, {"error", message}}.dump();
}

// Writes one reply line; with close_after, closes the connection once the
// line is out (closing at once would cancel the write).
void writeLine(uv_stream_t* stream, std::string text, bool close_after = false) {
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
  int rc = uv_write(&w->req, stream, &buf, 1, [](uv_write_t* req, int) {
    auto* done = reinterpret_cast<WriteReq*>(req);
    if (done->close_after) {
      auto* conn = static_cast<AdminServer::Connection*>(req->handle->data);
      conn->server->closeConnection(conn);
    }
    delete done;
  });
  if (rc != 0) {
    delete w;
    if (close_after) {
      auto* conn = static_cast<AdminServer::Connection*>(stream->data);
      conn->server->closeConnection(conn);
    }
  }
}

// Closes the connection once every reply written so far is out (a plain
// close would cancel pending writes).
void closeAfterWrites(AdminServer::Connection* conn) {
  if (conn->shutting_down || conn->closing) {
    return;
  }
  conn->shutting_down = true;
  auto* req = new uv_shutdown_t;
  int rc = uv_shutdown(req, reinterpret_cast<uv_stream_t*>(&conn->pipe), [](uv_shutdown_t* r, int) {
    auto* c = static_cast<AdminServer::Connection*>(r->handle->data);
    delete r;
    c->server->closeConnection(c);
  });
  if (rc != 0) {
    delete req;
    conn->server->closeConnection(conn);
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

bool splitAdminLine(const std::string& line, std::vector<std::string>& words, std::string& error) {
  words.clear();
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
    error = "unterminated quote";
    return false;
  }
  if (in_word) {
    words.push_back(std::move(word));
  }
  return true;
}

AdminServer::AdminServer(uv_loop_t* loop, std::string path, std::string group, Handler handler)
    : loop_(loop),
      path_(std::move(path)),
      group_(std::move(group)),
      handler_(std::move(handler)),
      alive_(std::make_shared<bool>(true)) {}

AdminServer::~AdminServer() {
  *alive_ = false;
  stop();
}

bool AdminServer::start(std::string& error) {
  // A stale socket from a previous run would make bind fail; remove it only
  // if it is a socket (never some other file at that path).
  struct stat st {};
  if (::lstat(path_.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      error = fmt::format("admin socket {}: path exists and is not a socket", path_);
      return false;
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
    return false;
  }
  return true;
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
  uv_close(reinterpret_cast<uv_handle_t*>(&c->pipe),
           [](uv_handle_t* h) { delete static_cast<Connection*>(h->data); });
}

// Serves the queued lines one at a time, so replies keep request order.
void AdminServer::serveNext(Connection* conn) {
  while (!conn->busy && !conn->closing && !conn->lines.empty()) {
    std::string line = std::move(conn->lines.front());
    conn->lines.pop_front();
    AdminRequest request;
    request.peer = conn->peer;
    std::string error;
    auto* stream = reinterpret_cast<uv_stream_t*>(&conn->pipe);
    if (!splitAdminLine(line, request.words, error)) {
      writeLine(stream, errorJson(error));
      continue;
    }
    if (request.words.empty()) {
      continue;
    }
    conn->busy = true;
    std::weak_ptr<bool> alive = conn->alive;
    conn->server->handler_(request, [conn, alive](std::string json) {
      auto token = alive.lock();
      if (!token || !*token) {
        return;  // the client went away before the answer was ready
      }
      writeLine(reinterpret_cast<uv_stream_t*>(&conn->pipe), std::move(json));
      conn->busy = false;
      serveNext(conn);
    });
  }
  if (conn->eof && !conn->busy && conn->lines.empty()) {
    closeAfterWrites(conn);  // the half-closed client has all its answers
  }
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
  if (uv_accept(server_stream, reinterpret_cast<uv_stream_t*>(&c->pipe)) != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&c->pipe),
             [](uv_handle_t* h) { delete static_cast<Connection*>(h->data); });
    return;
  }
  if (server->connections_.size() >= kMaxConnections) {
    server->connections_.push_back(c);
    writeLine(reinterpret_cast<uv_stream_t*>(&c->pipe), errorJson("too many admin connections"),
              true);
    return;
  }
  server->connections_.push_back(c);
  c->peer = peerOf(&c->pipe);

  uv_read_start(
      reinterpret_cast<uv_stream_t*>(&c->pipe),
      [](uv_handle_t*, std::size_t, uv_buf_t* buf) {
        static thread_local char scratch[16 * 1024];
        buf->base = scratch;
        buf->len = sizeof(scratch);
      },
      [](uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
        auto* conn = static_cast<Connection*>(stream->data);
        if (nread == UV_EOF && !conn->closing) {
          // The client sent its requests and half-closed its side (as
          // `socat`/`nc -N` do): answer them all, then close. A last line
          // without '\n' counts as a request too.
          uv_read_stop(stream);
          conn->eof = true;
          if (!conn->buffer.empty()) {
            conn->lines.push_back(std::move(conn->buffer));
            conn->buffer.clear();
          }
          AdminServer::serveNext(conn);
          return;
        }
        if (nread < 0) {
          conn->server->closeConnection(conn);
          return;
        }
        conn->buffer.append(buf->base, static_cast<std::size_t>(nread));
        std::size_t start = 0;
        bool too_long = false;
        for (std::size_t nl; (nl = conn->buffer.find('\n', start)) != std::string::npos;
             start = nl + 1) {
          // A line that ends within this read can be longer than the limit
          // too (the check below only sees the unfinished rest).
          if (nl - start > kMaxLine) {
            too_long = true;
            break;
          }
          conn->lines.push_back(conn->buffer.substr(start, nl - start));
        }
        conn->buffer.erase(0, start);
        if (too_long || conn->buffer.size() > kMaxLine) {
          uv_read_stop(stream);
          conn->lines.clear();
          conn->buffer.clear();
          writeLine(stream, errorJson(fmt::format("request line longer than {} bytes", kMaxLine)),
                    true);
          return;
        }
        AdminServer::serveNext(conn);
      });
}

}  // namespace portico::proxy
