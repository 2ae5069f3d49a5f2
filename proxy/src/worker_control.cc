// Worker, what other threads ask of it: drain moves, user holds, session
// lists and kicks (run on the worker's loop through post()), and shutdown.
#include <algorithm>

#include "portico/logging.h"
#include "worker.h"

namespace portico::proxy {

void Worker::beginShutdown(std::string reason) {
  if (stopping_) {
    return;
  }
  stopping_ = true;
  backend_pool_.shutdown();
  for (Listener* listener : listeners_) {
    closeListener(listener);
  }
  listeners_.clear();
  uv_timer_stop(&accept_resume_timer_);
  // Connections still reading a PROXY header have no session to say BYE.
  std::vector<InboundProxyReader*> readers(readers_.begin(), readers_.end());
  for (InboundProxyReader* reader : readers) {
    reader->abort();
  }
  // Copy: requestBye() never ends a session synchronously, but be safe.
  std::vector<Session*> sessions;
  for (auto& [session, ip] : sessions_) {
    sessions.push_back(session);
  }
  for (Session* session : sessions) {
    session->requestBye(reason, EndReason::kShutdown);
  }
  shutdown_timer_ = new uv_timer_t;
  uv_timer_init(&loop_, shutdown_timer_);
  shutdown_timer_->data = this;
  uv_timer_start(
      shutdown_timer_,
      [](uv_timer_t* t) {
        auto* w = static_cast<Worker*>(t->data);
        std::vector<Session*> left;
        for (auto& [session, ip] : w->sessions_) {
          left.push_back(session);
        }
        if (!left.empty()) {
          logging::log(logging::Level::kWarn, "worker",
                       "worker {}: {} sessions still busy at the shutdown bound; closing them",
                       w->index_, left.size());
        }
        for (Session* session : left) {
          session->abort(EndReason::kShutdownTimeout);
        }
      },
      static_cast<std::uint64_t>(config_->config.timeouts.shutdown.count()), 0);
  maybeStop();
}

void Worker::moveSessions(const std::string& backend) {
  std::vector<Session*> moving;
  for (auto& [session, ip] : sessions_) {
    if (session->state() == SessionState::kRelay && session->backendName() == backend) {
      moving.push_back(session);
    }
  }
  for (Session* session : moving) {
    session->requestBye("[UNAVAILABLE] Mailbox server is being drained, please reconnect.",
                        EndReason::kMovedOffDrained);
  }
}

std::size_t Worker::byeUsers(const std::vector<std::string>& users) {
  std::vector<Session*> held;
  for (auto& [session, ip] : sessions_) {
    if (std::find(users.begin(), users.end(), normaliseUser(session->user())) != users.end()) {
      held.push_back(session);
    }
  }
  for (Session* session : held) {
    session->requestBye("[UNAVAILABLE] Your mailbox is being moved, please reconnect later.",
                        EndReason::kUserHeld);
  }
  return held.size();
}

std::vector<SessionInfo> Worker::listSessions(const SessionFilter& filter) {
  std::vector<SessionInfo> out;
  auto t = now();
  for (auto& [session, ip] : sessions_) {
    SessionInfo info = session->info(t);
    if (filter.matches(info)) {
      out.push_back(std::move(info));
    }
  }
  return out;
}

std::size_t Worker::kick(const SessionFilter& filter) {
  std::vector<Session*> kicked;
  auto t = now();
  for (auto& [session, ip] : sessions_) {
    if (filter.matches(session->info(t))) {
      kicked.push_back(session);
    }
  }
  for (Session* session : kicked) {
    session->kick();
  }
  return kicked.size();
}

void Worker::maybeStop() {
  if (!stopping_ || !sessions_.empty() || !readers_.empty()) {
    return;
  }
  if (proxy_refused_flush_) {
    proxy_refused_flush_.reset();
    std::uint64_t count = shared_.proxy_refused.drain();
    if (count > 0) {
      logging::log(logging::Level::kWarn, "worker",
                   "proxy_protocol: {} more connection{} closed without greeting", count,
                   count == 1 ? "" : "s");
    }
  }
  if (shutdown_timer_ != nullptr) {
    uv_timer_stop(shutdown_timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(shutdown_timer_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    shutdown_timer_ = nullptr;
  }
  if (!timers_closed_) {
    timers_closed_ = true;
    // No session is left to wait for an answer; the stage's connections
    // (a Redis connection stays open) must close for the loop to end.
    lookup_.reset();
    retired_lookups_.clear();
    // A held-back count is reported now rather than lost.
    std::uint64_t count = shared_.accept_refused.drain();
    if (count > 0) {
      noteRefused(count, "accept", last_accept_error_, true);
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&accept_resume_timer_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&throttle_timer_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&idle_sweep_), nullptr);
    // Close callbacks run after this turn's callbacks: the last sessions
    // are deleted there, outside their own.
    uv_close(reinterpret_cast<uv_handle_t*>(&reaper_),
             [](uv_handle_t* h) { static_cast<Worker*>(h->data)->reapEnded(); });
  }
  tasks_.close();
}

}  // namespace portico::proxy
