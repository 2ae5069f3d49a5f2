// SessionAccounting: session events to the worker's counters.
#include "session_accounting.h"

#include "session.h"

namespace portico::proxy {

void SessionAccounting::onLoginDone(const Session& session, const LoginOutcome& outcome) {
  (void)session;
  if (!outcome.ok || outcome.backend == nullptr) {
    return;
  }
  backend_ = outcome.backend;
  backend_->sessions_current.add();
  backend_->sessions_total.add();
}

void SessionAccounting::onCommandSent(const Session& session, const parser::CommandEvent& event,
                                      CommandId command) {
  (void)session, (void)event, (void)command;
  backend_->commands_in_flight.add();
  ++in_flight_;
}

void SessionAccounting::onCommandCompleted(const Session& session,
                                           const CompletedCommand& command) {
  (void)session;
  if (command.idle) {
    backend_->recordIdle(command.time);
  } else {
    backend_->recordCommand(command.command, command.status, command.time);
  }
  backend_->commands_in_flight.sub();
  --in_flight_;
}

void SessionAccounting::onLocalCommand(const Session& session, CommandId command,
                                       std::string_view parameters, std::string_view result,
                                       parser::Status status, std::uint64_t request_bytes,
                                       std::uint64_t response_bytes) {
  (void)session, (void)parameters, (void)result, (void)request_bytes, (void)response_bytes;
  backend_->recordCommand(command, status, std::chrono::microseconds(0));
}

void SessionAccounting::onSessionEnd(const Session& session, EndReason reason,
                                     std::string_view text, std::chrono::milliseconds duration) {
  (void)session, (void)text, (void)duration;
  if (backend_ != nullptr) {
    backend_->sessions_current.sub();
    backend_->commands_in_flight.sub(in_flight_);
    backend_ = nullptr;
  }
  endedCounter(host_.stats(), reason).add();
}

}  // namespace portico::proxy
