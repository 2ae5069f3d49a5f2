// Session: the login the pre-login dialogue hands over (prelogin.h), from
// the gates it must pass to routing, and a failed login's way back to the
// dialogue.
#include <algorithm>

#include <fmt/format.h>

#include "login_phase.h"
#include "portico/proxy.h"
#include "session.h"
#include "session_internal.h"

namespace portico::proxy {

using namespace session_detail;  // NOLINT: this file's own helpers

void Session::startLogin(LoginRequest&& request) {
  // The login phase starts: what only this login needs lives in login_
  // until it succeeds or fails (none is running: the dialogue is closed
  // while one does).
  login_ = std::make_unique<LoginPhase>(std::move(request));
  user_ = std::move(login_->request.user);
  login_->request.user.clear();
  routeLogin();
}

void Session::refuseLogin(std::string_view tag, std::string_view client_line) {
  // Failed like any login (failLogin ends the phase it starts here).
  LoginRequest request;
  request.tag.assign(tag);
  login_ = std::make_unique<LoginPhase>(std::move(request));
  failLogin(client_line, true);
}

void Session::routeLogin() {
  const RuntimeConfig& rc = *config_;
  ++login_attempts_;
  std::string user = normaliseUser(user_);
  if (auto probe = rc.probe_users.find(user); probe != rc.probe_users.end()) {
    // A probe account's backend pin wins over the directory: it is never asked.
    login_->candidates = {probe->second};
    login_->candidate_pos = 0;
    connectNext();
    return;
  }
  // Fleet mode: a user held for a mailbox move, or Redis away with
  // on_redis_down = "refuse" (one relaxed load when neither).
  if (std::optional<std::string> refusal = host_.shared().fleet_gate.refusal(user, host_.now())) {
    failLogin(fmt::format("{} NO {}\r\n", login_->request.tag, *refusal), false);
    return;
  }
  if (std::optional<std::string> refusal =
          host_.shared().login_penalties.refusal(fleet::clientIp(client_address_), user)) {
    failLogin(fmt::format("{} NO {}\r\n", login_->request.tag, *refusal), false);
    return;
  }
  if (const std::uint32_t limit = rc.config.limits.max_sessions_per_user;
      !host_.shared().user_sessions.acquire(user, limit, user_slot_)) {
    failLogin(fmt::format("{} NO [LIMIT] Too many sessions for this user (at most {}).\r\n",
                          login_->request.tag, limit),
              false);
    return;
  }
  if (std::shared_ptr<LookupStage> stage = host_.lookupStage()) {
    startLookup(std::move(stage));  // session_lookup.cc
    return;
  }
  routeByHash();
}

void Session::routeByHash() {
  const RuntimeConfig& rc = *config_;
  std::vector<bool> enabled(rc.config.backends.size(), true);
  for (std::size_t i = 0; i < enabled.size(); ++i) {
    enabled[i] = !host_.shared().drained(rc.stats_slot[i]);
  }
  login_->candidates = rc.selector.candidates(normaliseUser(user_), enabled);
  login_->candidate_pos = 0;
  if (login_->candidates.empty()) {
    failLogin(
        fmt::format("{} NO [UNAVAILABLE] No mailbox server is available.\r\n", login_->request.tag),
        false);
    return;
  }
  connectNext();
}

void Session::failLogin(std::string_view client_line, bool count_failure) {
  user_slot_.reset();
  if (count_failure && config_->config.fleet.enabled() && config_->config.limits.loginPenalties()) {
    host_.shared().login_penalties.record(fleet::clientIp(client_address_), normaliseUser(user_));
  }
  (count_failure ? host_.stats().logins_rejected : host_.stats().logins_unavailable).add();
  if (backend_ != nullptr) {
    orphans_.push_back(backend_);
    backend_->close();
    backend_ = nullptr;
  }
  wipeSecrets();
  LoginOutcome outcome;
  outcome.result = client_line.substr(std::min(client_line.size(), login_->request.tag.size() + 1));
  while (!outcome.result.empty() &&
         (outcome.result.back() == '\n' || outcome.result.back() == '\r')) {
    outcome.result.remove_suffix(1);
  }
  outcome.response_bytes = client_line.size();
  notify([&](SessionObserver& o) { o.onLoginDone(*this, outcome); });
  // The login phase is over: the session no longer holds it. It is freed
  // when this call returns, as `client_line` may be the backend's answer
  // in its login client; a login the dialogue starts below has its own.
  const std::unique_ptr<LoginPhase> ended = std::move(login_);
  setState(SessionState::kPrelogin);
  if (client_ == nullptr) {
    finishIfClosed();
    return;
  }
  if (shutdown_pending_) {
    // requestBye() came while the login was in progress: its answer was
    // the command to wait for, so the BYE follows it now.
    writeClient(client_line);
    closeWithBye(fmt::format("* BYE {}\r\n", shutdown_text_), shutdown_end_reason_);
    return;
  }
  const Config& cfg = config_->config;
  if (count_failure) {
    ++login_failures_;
    if (ended->bye_after_failure) {
      // The directory refused without Auth-Wait: nginx ends the connection.
      writeClient(client_line);
      closeWithBye("* BYE Login refused.\r\n", EndReason::kDirectoryRefused);
      return;
    }
    if (login_failures_ >= cfg.limits.max_login_failures) {
      writeClient(client_line);
      closeWithBye("* BYE Too many failed login attempts.\r\n", EndReason::kTooManyFailedLogins);
      return;
    }
    // Growing delay before the answer: slows password guessing without
    // holding anything but a timer.
    auto delay = milliseconds(cfg.limits.login_failure_delay.count()
                              << std::min<std::uint32_t>(login_failures_ - 1, 6));
    dialogue_->holdReply(client_line);
    setState(SessionState::kLoginDelay);
    updateClientReading();
    deadline_ = host_.now() + delay;
    armTimer();
    return;
  }
  writeClient(client_line);
  deadline_ = started_ + cfg.timeouts.prelogin;
  armTimer();
  updateClientReading();
  processDialogue();
}

}  // namespace portico::proxy
