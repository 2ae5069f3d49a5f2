// Why a session ended, declared once. The list generates the EndReason
// enum, the text the session-end log line and the protocol log's
// Disconnect record print, and the portico_sessions_ended_total{reason}
// counters (counters.h), so a new reason is one line here.
//
// Columns: R(X, id, label, text)
//   id     the enumerator
//   label  the metric label and stats key suffix (a C identifier)
//   text   what the logs print; for kClientClosed and kProtocolError the
//          logs print the detail instead (the transport's "closed by peer",
//          the parser's error code), which says more
//
// This header has no dependencies, so counters.h (and porticoctl) can
// include it.
#pragma once

#include <cstdint>
#include <string_view>

namespace portico::proxy {

// clang-format off
#define PORTICO_END_REASONS(R, X)                                                             \
  R(X, kClosed, closed, "closed")                                                             \
  R(X, kClientClosed, client_closed, "client closed")                                         \
  R(X, kClientLogout, client_logout, "client logout")                                         \
  R(X, kLogout, logout, "logout")                                                             \
  R(X, kBackendClosed, backend_closed, "backend closed")                                      \
  R(X, kBackendProtocolError, backend_protocol_error, "backend protocol error")               \
  R(X, kProtocolError, protocol_error, "protocol error")                                      \
  R(X, kCommandTooLong, command_too_long, "command too long")                                 \
  R(X, kSaslTooLong, sasl_too_long, "sasl response too long")                                 \
  R(X, kTooManyInvalidCommands, too_many_invalid_commands, "too many invalid commands")       \
  R(X, kTooManyFailedLogins, too_many_failed_logins, "too many failed logins")                \
  R(X, kTlsUnavailable, tls_unavailable, "tls unavailable")                                   \
  R(X, kDirectoryRefused, directory_refused, "directory refused")                             \
  R(X, kCompressRefused, compress_refused, "compress refused")                                \
  R(X, kPreloginTimeout, prelogin_timeout, "prelogin timeout")                                \
  R(X, kIdleTimeout, idle_timeout, "idle timeout")                                            \
  R(X, kKicked, kicked, "kicked")                                                             \
  R(X, kMovedOffDrained, moved_off_drained, "moved off drained backend")                      \
  R(X, kUserHeld, user_held, "user held")                                                     \
  R(X, kShutdown, shutdown, "shutdown")                                                       \
  R(X, kShutdownTimeout, shutdown_timeout, "shutdown timeout")
// clang-format on

#define PORTICO_END_REASON_ENUM(X, id, label, text) id,
enum class EndReason : std::uint8_t { PORTICO_END_REASONS(PORTICO_END_REASON_ENUM, _) };
#undef PORTICO_END_REASON_ENUM

#define PORTICO_END_REASON_TEXT(X, id, label, text) text,
inline constexpr std::string_view kEndReasonTexts[] = {
    PORTICO_END_REASONS(PORTICO_END_REASON_TEXT, _)};
#undef PORTICO_END_REASON_TEXT

constexpr std::string_view endReasonText(EndReason reason) {
  return kEndReasonTexts[static_cast<std::size_t>(reason)];
}

}  // namespace portico::proxy
