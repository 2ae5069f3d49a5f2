// Relay: the two-way relay with per-command accounting (relay.h).
#include "relay.h"

#include <algorithm>

#include <fmt/format.h>

#include "portico/logging.h"
#include "session_host.h"
#include "session_internal.h"
#include "session_observer.h"

namespace portico::proxy {

using namespace session_detail;  // NOLINT: this file's own helpers

std::string clientCapabilityLine(std::string_view line, bool offer_compress) {
  if (offer_compress) {
    return parser::editCapabilities(line, {"COMPRESS="}, {"COMPRESS=DEFLATE"});
  }
  return parser::editCapabilities(line, {"COMPRESS="}, {});
}

Relay::Relay(RelayOwner& owner, SessionHost& host, const RuntimeConfig& config,
             std::size_t backend_index, RelayLinks links, bool bye_requested)
    : owner_(owner),
      host_(host),
      limits_(config.config.limits),
      stats_slot_(config.stats_slot[backend_index]),
      links_(links),
      command_framer_(*links.commands),
      bye_requested_(bye_requested) {
  parser::Limits limits;
  limits.max_line = limits_.max_line;
  command_framer_.reset();
  command_framer_.setLimits(limits);
  response_framer_.reset();
  response_framer_.setLimits(limits);
}

BackendStats* Relay::backendStats() {
  return &host_.stats().backend(stats_slot_);
}

bool Relay::atCommandCap() const {
  // IDLE and AUTHENTICATE wait for more from the client (DONE, a SASL
  // line): pausing then would wedge the session, so the cap waits for the
  // next command.
  return inflight_.size() >= limits_.max_commands_in_flight && !command_framer_.idling() &&
         !command_framer_.authenticating();
}

void Relay::maybeResumeCommands() {
  if (!commands_capped_ || !owner_.relayActive() ||
      inflight_.size() > limits_.max_commands_in_flight / 2) {
    return;
  }
  commands_capped_ = false;
  if (!client_held_.empty()) {
    Chunk held = std::move(client_held_);
    fromClient(std::move(held));  // may reach the cap again
  }
  owner_.relayUpdateClientReading();
}

void Relay::fromClient(Chunk chunk) {
  const auto now = host_.now();
  *links_.last_activity = now;
  BackendStats* stats = backendStats();
  std::string_view view = chunk.view();
  std::size_t pos = 0;
  std::size_t forward_from = 0;
  constexpr std::size_t kUnknown = static_cast<std::size_t>(-1);
  std::size_t command_start = kUnknown;
  while (pos < view.size()) {
    if (command_framer_.atCommandStart()) {
      command_start = pos;
    }
    parser::FeedResult r = command_framer_.feed(view.substr(pos));
    pos += r.consumed;
    if (r.event.type == parser::CommandEventType::kNeedMore) {
      break;
    }
    if (r.event.type == parser::CommandEventType::kError && r.event.error.fatal) {
      // A literal that cannot be skipped: the stream cannot be
      // resynchronised, and a failed framer consumes nothing more.
      owner_.relayClose(fmt::format("* BYE {}\r\n", r.event.error.message),
                        EndReason::kProtocolError, parser::errorCodeName(r.event.error.code));
      return;
    }
    if (r.event.type != parser::CommandEventType::kCommand) {
      continue;  // literals, DONE, malformed lines: the backend answers them
    }
    ++commands_;
    CommandId command = commandId(r.event.name);
    if (command == CommandId::kCOMPRESS) {
      // Portico answers COMPRESS itself and compresses the client's
      // connection; the backend leg stays plain, so the framers, the
      // accounting and the protocol log keep seeing plaintext.
      if (command_start == kUnknown) {
        // Its first bytes went to the backend with an earlier read.
        owner_.relayClose("* BYE [UNAVAILABLE] COMPRESS is not supported.\r\n",
                          EndReason::kCompressRefused);
        return;
      }
      if (command_start > forward_from) {
        stats->bytes_to_backend.add(command_start - forward_from);
        backend()->write(chunk.slice(forward_from, command_start - forward_from));
      }
      forward_from = pos;
      handleCompress(r.event, pos < view.size());
      if (client() == nullptr) {
        return;
      }
      continue;
    }
    InFlight& f = inflight_.emplace_back();
    f.tag.assign(r.event.tag);
    f.command = command;
    f.idle = command == CommandId::kIDLE;
    f.sent = now;
    f.request_bytes = r.event.bytes;
    owner_.relayCommandSent(r.event, command);
    if (atCommandCap()) {
      // Enough unanswered commands: stop here, at a command boundary, and
      // read no more from the client until half of them are answered. The
      // rest of this read waits unparsed (one slice of its block).
      if (pos < view.size()) {
        client_held_ = chunk.slice(pos, view.size() - pos);
        view = view.substr(0, pos);
      }
      commands_capped_ = true;
      owner_.relayUpdateClientReading();
      break;
    }
  }
  const std::size_t read_size = chunk.size();
  if (forward_from < view.size() && backend() != nullptr) {
    std::size_t n = view.size() - forward_from;
    stats->bytes_to_backend.add(n);
    backend()->write(n == chunk.size() ? std::move(chunk) : chunk.slice(forward_from, n));
    if (backend()->queuedBytes() > limits_.write_high_watermark) {
      client_paused_ = true;
      owner_.relayUpdateClientReading();
    }
  }
  if (client() != nullptr && clientSendsMoreUnasked(read_size)) {
    client()->acknowledgeNow();
  }
}

bool Relay::clientSendsMoreUnasked(std::size_t read_size) const {
  // The read ended inside a command the client goes on sending without
  // waiting for an answer: no reply carries the ACK for what it sent, so
  // the kernel would delay it (40 ms on Linux) and a client with Nagle on
  // would hold its next small write until then. Python's imaplib sends an
  // APPEND's literal and the CRLF after it in two writes: every APPEND
  // stalled. Commands read whole (the common path) never get here, and
  // neither do a client that waits for "+" (a synchronizing literal, IDLE,
  // AUTHENTICATE): that answer carries the ACK.
  if (command_framer_.atCommandStart() || command_framer_.awaitingContinuation() ||
      command_framer_.idling() || command_framer_.authenticating()) {
    return false;
  }
  // Inside a literal body only after a small read: a client streaming a big
  // literal sends full segments, which the kernel acknowledges itself
  // (Linux's Nagle, Minshall's variant, only holds a small write behind an
  // unacknowledged small one), so a large upload pays no syscall per read.
  return !command_framer_.inLiteral() || read_size < kSmallClientRead;
}

void Relay::fromBackend(Chunk chunk) {
  if (command_framer_.idling()) {
    *links_.last_activity = host_.now();  // keep-alives during IDLE keep the session
  }
  *links_.bytes_out += chunk.size();
  BackendStats* stats = backendStats();
  stats->bytes_from_backend.add(chunk.size());
  std::string_view view = chunk.view();
  std::size_t pos = 0;
  std::size_t forward_from = 0;
  constexpr std::size_t kUnknown = static_cast<std::size_t>(-1);
  std::size_t response_start = kUnknown;
  const bool started_at_response = response_framer_.atResponseStart();
  while (pos < view.size()) {
    if (response_framer_.atResponseStart()) {
      response_start = pos;
    }
    parser::ResponseFeedResult r = response_framer_.feed(view.substr(pos));
    pos += r.consumed;
    const parser::ResponseEvent& ev = r.event;
    if (ev.type == parser::ResponseEventType::kNeedMore) {
      break;
    }
    if (ev.type == parser::ResponseEventType::kError && ev.error.fatal) {
      // As for the client: nothing after an unskippable literal can be read.
      owner_.relayWarnBackend(
          fmt::format("sent an unreadable response ({})", parser::errorCodeName(ev.error.code)));
      // Nothing of this chunk went out yet: the client stands where the
      // previous chunk left it (or after an edited response, at a boundary).
      if (forward_from == 0 && !started_at_response) {
        owner_.relayNoteCutResponse(endReasonText(EndReason::kBackendProtocolError));
        owner_.relayClose("", EndReason::kBackendProtocolError);
      } else {
        owner_.relayClose("* BYE [UNAVAILABLE] Mailbox server connection lost.\r\n",
                          EndReason::kBackendProtocolError);
      }
      return;
    }
    if (ev.type == parser::ResponseEventType::kTagged) {
      if (command_framer_.awaitingContinuation() && ev.tag == command_framer_.currentTag()) {
        // A synchronizing literal refused instead of invited (APPEND to a
        // missing mailbox: NO [TRYCREATE]): no body follows, so the
        // client's next byte starts a new command.
        command_framer_.returnToCommandMode();
      }
      completeCommand(ev);
    } else if (!inflight_.empty()) {
      inflight_.front().response_bytes += ev.bytes;  // untagged data: the oldest command's
    }
    if (ev.type != parser::ResponseEventType::kUntagged &&
        ev.type != parser::ResponseEventType::kTagged) {
      continue;
    }
    if (ev.type == parser::ResponseEventType::kUntagged && ev.status == parser::Status::kBye) {
      logout_seen_ = true;  // the backend says goodbye itself: no second BYE
    }
    // Capability lists (untagged, or a [CAPABILITY ...] code in any status
    // response) offer Portico's COMPRESS=DEFLATE instead of the backend's
    // COMPRESS entries. Only these rare lines are copied; everything else
    // passes untouched.
    bool capability_list = startsWithIgnoreCase(ev.head, "* CAPABILITY ") ||
                           startsWithIgnoreCase(ev.code, "CAPABILITY ");
    if (capability_list && response_start != kUnknown) {
      std::string_view line = view.substr(response_start, pos - response_start);
      std::string edited = clientCapabilityLine(line, owner_.relayOffersCompression());
      if (edited != line) {
        if (response_start > forward_from) {
          host_.stats().bytes_to_clients.add(response_start - forward_from);
          client()->write(chunk.slice(forward_from, response_start - forward_from));
        }
        *links_.bytes_out -= pos - response_start;  // writeClient counts the edited line instead
        owner_.relayWriteClient(edited);
        forward_from = pos;
      }
    }
  }
  if (forward_from < view.size() && client() != nullptr) {
    std::size_t n = view.size() - forward_from;
    host_.stats().bytes_to_clients.add(n);
    client()->write(forward_from == 0 ? std::move(chunk) : chunk.slice(forward_from, n));
    if (backend() != nullptr && client()->queuedBytes() > limits_.write_high_watermark) {
      backend_paused_ = true;
      backend()->pauseReading();
    }
  }
  maybeResumeCommands();
  maybeByeOnShutdown();
}

void Relay::handleCompress(const parser::CommandEvent& event, bool pipelined) {
  std::string tag(event.tag);
  // The argument: the head after "tag COMPRESS ".
  std::string_view head = event.head;
  for (int words = 2; words > 0 && !head.empty(); --words) {
    auto sp = head.find(' ');
    head = sp == std::string_view::npos ? std::string_view() : head.substr(sp + 1);
  }
  parser::Status status = parser::Status::kNo;
  std::string reply;
  if (client_compressed_) {
    reply = fmt::format("{} NO [COMPRESSIONACTIVE] DEFLATE is already active.\r\n", tag);
  } else if (!equalsIgnoreCase(head, "DEFLATE")) {
    status = parser::Status::kBad;
    reply = fmt::format("{} BAD Unknown compression mechanism.\r\n", tag);
  } else if (pipelined) {
    // RFC 4978: compression starts right after the tagged OK, which the
    // client cannot have seen when it sent these bytes. Bytes sent with
    // the COMPRESS are plaintext commands: refuse the COMPRESS, relay
    // them as they are.
    status = parser::Status::kBad;
    reply = fmt::format("{} BAD Send nothing after COMPRESS before its reply.\r\n", tag);
  } else if (!owner_.relayOffersCompression()) {
    reply = fmt::format("{} NO [CANNOT] COMPRESS is not available.\r\n", tag);
  } else if (!inflight_.empty()) {
    // Portico's OK must not land inside a response still on its way to
    // the client.
    reply = fmt::format("{} NO [CANNOT] COMPRESS only when no command is in progress.\r\n", tag);
  } else if (reply = fmt::format("{} OK DEFLATE active.\r\n", tag);
             !owner_.relayCompressClient(reply)) {  // the OK: the last plain bytes
    reply = fmt::format("{} NO [CANNOT] COMPRESS is not available.\r\n", tag);
  } else {
    status = parser::Status::kOk;
    client_compressed_ = true;
  }
  if (status != parser::Status::kOk) {
    owner_.relayWriteClient(reply);
  }
  std::string_view result(reply);
  result = result.substr(tag.size() + 1, result.size() - tag.size() - 3);  // no tag, no CRLF
  owner_.relayLocalCommand(CommandId::kCOMPRESS, head, result, status, event.bytes, reply.size());
}

void Relay::completeCommand(const parser::ResponseEvent& ev) {
  auto it = std::find_if(inflight_.begin(), inflight_.end(),
                         [&ev](const InFlight& f) { return f.tag == ev.tag; });
  if (it == inflight_.end()) {
    return;  // a tag we did not see sent (e.g. inside a malformed line)
  }
  CompletedCommand done;
  done.tag = ev.tag;
  done.command = it->command;
  done.idle = it->idle;
  done.status = ev.status;
  done.result = ev.head.substr(std::min(ev.head.size(), ev.tag.size() + 1));
  done.time = duration_cast<microseconds>(host_.now() - it->sent);
  done.request_bytes = it->request_bytes;
  done.response_bytes = it->response_bytes + ev.bytes;
  owner_.relayCommandCompleted(done);
  if (it->command == CommandId::kLOGOUT) {
    logout_seen_ = true;
  }
  if (it->command == CommandId::kAUTHENTICATE && command_framer_.authenticating()) {
    command_framer_.endAuthentication();
  }
  if (it->idle && command_framer_.idling()) {
    // IDLE answered before DONE (refused, say): no DONE follows, so the
    // client's next line is a command again.
    command_framer_.endIdle();
  }
  inflight_.erase(it);
}

void Relay::maybeByeOnShutdown() {
  if (!bye_requested_ || !owner_.relayActive() || client() == nullptr) {
    return;
  }
  bool only_idle =
      std::all_of(inflight_.begin(), inflight_.end(), [](const InFlight& f) { return f.idle; });
  bool between_commands = command_framer_.atCommandStart() || command_framer_.idling();
  if (only_idle && between_commands) {
    owner_.relayByeOnShutdown();
  }
}

void Relay::requestBye() {
  bye_requested_ = true;
  maybeByeOnShutdown();
}

void Relay::clientDrained() {
  if (backend_paused_ && backend() != nullptr) {
    backend_paused_ = false;
    backend()->resumeReading();
  }
}

void Relay::backendDrained() {
  if (client_paused_) {
    client_paused_ = false;
    owner_.relayUpdateClientReading();
  }
}

bool Relay::releaseIdleBuffers() {
  if (!inflight_.empty()) {
    return false;
  }
  const bool commands = command_framer_.releaseBuffers();
  const bool responses = response_framer_.releaseBuffers();
  return commands || responses;
}

void Relay::describe(SessionInfo& out, Clock::time_point now) const {
  if (!inflight_.empty()) {
    out.command = commandName(inflight_.front().command);
    out.command_ms = duration_cast<milliseconds>(now - inflight_.front().sent).count();
  }
  out.commands_in_flight = inflight_.size();
}

}  // namespace portico::proxy
