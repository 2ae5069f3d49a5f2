// ProtocolTap: session events to protocol log records.
#include "protocol_tap.h"

#include <algorithm>

#include <fmt/format.h>

#include "portico/logging.h"
#include "session.h"

namespace portico::proxy {

namespace {

// `line` without its first `words` space-separated words.
std::string_view skipWords(std::string_view line, int words) {
  for (; words > 0 && !line.empty(); --words) {
    auto sp = line.find(' ');
    line = sp == std::string_view::npos ? std::string_view() : line.substr(sp + 1);
  }
  return line;
}

// A pre-login command's parameters: its first line after "tag NAME".
std::string_view preloginParameters(std::string_view bytes) {
  return skipWords(bytes.substr(0, bytes.find_first_of("\r\n")), 2);
}

std::string backendText(const Session& session) {
  return session.backendName().empty() ? std::string("-") : session.backendName();
}

}  // namespace

bool ProtocolTap::tracing(const Session& session) {
  ProcessState& shared = host_.shared();
  std::uint64_t generation = shared.trace.generation();  // the one load when off
  if (generation != generation_) {
    generation_ = generation;
    on_ = shared.trace.matches(normaliseUser(session.user()), session.clientSockaddr());
  }
  return on_ && shared.protocol_log.load(std::memory_order_relaxed) != nullptr;
}

void ProtocolTap::record(const Session& session, std::string_view command,
                         std::string_view parameters, std::string_view context,
                         std::int64_t duration_ms, std::uint64_t request_bytes,
                         std::uint64_t response_bytes) {
  logging::ProtocolLog* log = host_.shared().protocol_log.load(std::memory_order_relaxed);
  if (log == nullptr) {
    return;
  }
  logging::ProtocolRecord r;
  r.time_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::system_clock::now().time_since_epoch())
                  .count();
  r.session_id = session.id();
  r.seq = seq_++;
  std::string server = session.backendAddress();
  r.server_address = server;
  r.client_address = session.clientAddress();
  r.user = session.user();
  r.duration_ms = duration_ms;
  r.request_bytes = request_bytes;
  r.response_bytes = response_bytes;
  r.command = command;
  r.parameters = parameters;
  r.context = context;
  std::string line;
  logging::formatRecord(r, line);
  log->submit(host_.index(), line);
}

void ProtocolTap::onConnect(const Session& session, std::string_view greeting, bool tls) {
  if (tracing(session)) {
    record(session, "Connect", "", fmt::format("R=OK {};tls={}", greeting, tls ? "yes" : "no"), 0,
           0, 0);
  }
}

void ProtocolTap::onPreloginCommand(const Session& session, const parser::PreloginCommand& command,
                                    std::string_view bytes, std::string_view result) {
  if (tracing(session)) {
    record(session, command.name,
           logging::redactCommandParameters(command.name, preloginParameters(bytes)),
           fmt::format("R={}", result), 0, bytes.size(), 0);
  }
}

void ProtocolTap::onLoginCommand(const Session& session, const parser::PreloginCommand& command,
                                 std::string_view bytes) {
  (void)session;
  // Kept whether or not the session is traced now: the user, known from
  // here on, may be the one traced.
  login_name_ = command.verb == parser::Verb::kLogin ? "LOGIN" : "AUTHENTICATE";
  login_parameters_ = logging::redactCommandParameters(command.name, preloginParameters(bytes));
  login_request_bytes_ = bytes.size();
  login_started_ = host_.now();
}

void ProtocolTap::onLoginDone(const Session& session, const LoginOutcome& outcome) {
  generation_ = 0;  // the user is known now: ask again
  if (!tracing(session)) {
    return;
  }
  auto duration =
      std::chrono::duration_cast<std::chrono::milliseconds>(host_.now() - login_started_);
  record(session, login_name_, login_parameters_,
         fmt::format("R={};B={}", outcome.result, backendText(session)), duration.count(),
         login_request_bytes_, outcome.response_bytes);
}

void ProtocolTap::onCommandSent(const Session& session, const parser::CommandEvent& event,
                                CommandId command) {
  (void)command;
  if (!tracing(session)) {
    return;
  }
  TracedCommand& t = traced_.emplace_back();
  t.tag.assign(event.tag);
  t.name = event.uid ? "UID " + std::string(event.name) : std::string(event.name);
  // Parameters: the head after "tag [UID ]NAME ".
  t.parameters =
      logging::redactCommandParameters(event.name, skipWords(event.head, event.uid ? 3 : 2));
}

void ProtocolTap::onCommandCompleted(const Session& session, const CompletedCommand& command) {
  if (traced_.empty()) {
    return;
  }
  auto it = std::find_if(traced_.begin(), traced_.end(),
                         [&command](const TracedCommand& t) { return t.tag == command.tag; });
  if (it == traced_.end()) {
    return;  // sent while the session was not traced
  }
  record(session, it->name, it->parameters,
         fmt::format("R={};B={}", command.result, session.backendName()),
         std::chrono::duration_cast<std::chrono::milliseconds>(command.time).count(),
         command.request_bytes, command.response_bytes);
  traced_.erase(it);
}

void ProtocolTap::onLocalCommand(const Session& session, CommandId command,
                                 std::string_view parameters, std::string_view result,
                                 parser::Status status, std::uint64_t request_bytes,
                                 std::uint64_t response_bytes) {
  (void)status;
  if (tracing(session)) {
    record(session, commandName(command), parameters,
           fmt::format("R={};B={}", result, session.backendName()), 0, request_bytes,
           response_bytes);
  }
}

void ProtocolTap::onSessionEnd(const Session& session, EndReason reason, std::string_view text,
                               std::chrono::milliseconds duration) {
  (void)reason;
  if (tracing(session)) {
    record(session, "Disconnect", "", fmt::format("reason={}", text), duration.count(),
           session.bytesIn(), session.bytesOut());
  }
}

}  // namespace portico::proxy
