// SessionAccounting: the worker's counters as an observer of one session.
// Per command it costs what the counters cost (relaxed single-writer
// stores, accounting.h); it allocates nothing.
#pragma once

#include <cstdint>

#include "session_observer.h"

namespace portico::proxy {

class SessionHost;

class SessionAccounting final : public SessionObserver {
 public:
  explicit SessionAccounting(SessionHost& host) : host_(host) {}

  void onLoginDone(const Session& session, const LoginOutcome& outcome) override;
  void onCommandSent(const Session& session, const parser::CommandEvent& event,
                     CommandId command) override;
  void onCommandCompleted(const Session& session, const CompletedCommand& command) override;
  void onLocalCommand(const Session& session, CommandId command, std::string_view parameters,
                      std::string_view result, parser::Status status, std::uint64_t request_bytes,
                      std::uint64_t response_bytes) override;
  void onSessionEnd(const Session& session, EndReason reason, std::string_view text,
                    std::chrono::milliseconds duration) override;

 private:
  SessionHost& host_;
  BackendStats* backend_ = nullptr;  // after the login: counted in its sessions_current
  std::uint64_t in_flight_ = 0;      // counted in backend_->commands_in_flight
};

}  // namespace portico::proxy
