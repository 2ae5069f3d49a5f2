// ProtocolTap: the protocol log as an observer of one session (Dovecot's
// rawlog, Envoy's access log). It alone asks whether this session is
// traced; the session only reports what happened.
//
// The question costs one relaxed atomic load per event while the trace
// settings stay unchanged (protocol_trace.h); the answer is re-evaluated
// when they change and once the user is known. Commands sent while traced
// are remembered (tag, name, redacted parameters) until their answer, so
// an untraced session allocates nothing here.
#pragma once

#include <cstdint>
#include <deque>
#include <string>

#include "session_observer.h"

namespace portico::proxy {

class SessionHost;

class ProtocolTap final : public SessionObserver {
 public:
  explicit ProtocolTap(SessionHost& host) : host_(host) {}

  void onConnect(const Session& session, std::string_view greeting, bool tls) override;
  void onPreloginCommand(const Session& session, const parser::PreloginCommand& command,
                         std::string_view bytes, std::string_view result) override;
  void onLoginCommand(const Session& session, const parser::PreloginCommand& command,
                      std::string_view bytes) override;
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
  struct TracedCommand {
    std::string tag;
    std::string name;        // as sent, upper-cased, "UID " included
    std::string parameters;  // redacted
  };

  bool tracing(const Session& session);
  void record(const Session& session, std::string_view command, std::string_view parameters,
              std::string_view context, std::int64_t duration_ms, std::uint64_t request_bytes,
              std::uint64_t response_bytes);

  SessionHost& host_;
  std::uint64_t generation_ = 0;  // 0: evaluate on next use
  bool on_ = false;
  std::uint32_t seq_ = 0;
  // The login being replayed, for its record.
  const char* login_name_ = "LOGIN";
  std::string login_parameters_;
  std::chrono::steady_clock::time_point login_started_{};
  std::uint64_t login_request_bytes_ = 0;
  std::deque<TracedCommand> traced_;
};

}  // namespace portico::proxy
