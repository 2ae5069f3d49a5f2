// SessionObserver: what a session tells those who watch it. The protocol
// log's tap (protocol_tap.h) and the per-command accounting
// (session_accounting.h) are observers; so is a test's recorder. The
// session never asks "is logging on?": each observer decides for itself.
//
// Calls happen on the session's worker thread, in the order things happen
// on the wire. Views are valid for the call only. An observer must not call
// back into the session's transports or end it; it may read the session's
// const accessors. Observers never see a password or a SASL payload:
// parameters arrive redacted or not at all.
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>

#include "accounting.h"
#include "end_reason.h"
#include "portico/parser.h"

namespace portico::proxy {

class Session;

// A relayed command whose tagged answer arrived.
struct CompletedCommand {
  std::string_view tag;
  CommandId command = CommandId::kOTHER;
  bool idle = false;
  parser::Status status = parser::Status::kNone;
  std::string_view result;  // the tagged line after the tag, no CRLF
  std::chrono::microseconds time{};
  std::uint64_t request_bytes = 0;
  std::uint64_t response_bytes = 0;  // untagged data included
};

// The login the session replayed (or refused before any backend answered).
struct LoginOutcome {
  bool ok = false;
  std::string_view result;  // "OK" or the client's answer after its tag, no CRLF
  std::uint64_t response_bytes = 0;
  BackendStats* backend = nullptr;  // ok: the backend's counters
};

class SessionObserver {
 public:
  virtual ~SessionObserver() = default;

  // Every event has an empty default: an observer overrides what it needs.
  // Parameter names are in comments for that reason.

  // The greeting went out.
  virtual void onConnect(const Session& /*session*/, std::string_view /*greeting*/, bool /*tls*/) {}
  // A pre-login command Portico answered itself (`bytes`: the command as
  // read, empty when it did not parse; `result`: "OK", "BAD ...").
  virtual void onPreloginCommand(const Session& /*session*/,
                                 const parser::PreloginCommand& /*command*/,
                                 std::string_view /*bytes*/, std::string_view /*result*/) {}
  // LOGIN or AUTHENTICATE was accepted for replay; the user is taken from
  // it right after this call.
  virtual void onLoginCommand(const Session& /*session*/,
                              const parser::PreloginCommand& /*command*/,
                              std::string_view /*bytes*/) {}
  virtual void onLoginDone(const Session& /*session*/, const LoginOutcome& /*outcome*/) {}
  // Relay: a command was handed to the backend; its answer follows in
  // onCommandCompleted (or never, if the session ends first).
  virtual void onCommandSent(const Session& /*session*/, const parser::CommandEvent& /*event*/,
                             CommandId /*command*/) {}
  virtual void onCommandCompleted(const Session& /*session*/, const CompletedCommand& /*command*/) {
  }
  // Relay: a command Portico answered itself (COMPRESS).
  virtual void onLocalCommand(const Session& /*session*/, CommandId /*command*/,
                              std::string_view /*parameters*/, std::string_view /*result*/,
                              parser::Status /*status*/, std::uint64_t /*request_bytes*/,
                              std::uint64_t /*response_bytes*/) {}
  // The last call: both connections are closed.
  virtual void onSessionEnd(const Session& /*session*/, EndReason /*reason*/,
                            std::string_view /*text*/, std::chrono::milliseconds /*duration*/) {}
};

}  // namespace portico::proxy
