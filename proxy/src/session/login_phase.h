// What a session holds only while a login is in progress: from the moment
// the pre-login dialogue hands its LoginRequest over (Session::startLogin)
// until the login has succeeded (Session::enterRelay) or failed
// (Session::failLogin, back to the dialogue), or the session ends. A
// session in its dialogue or in the relay holds none of it: the Session
// keeps a null std::unique_ptr<LoginPhase> then, so idle sessions do not
// pay for a login's routing, lookup and replay state.
//
// What outlives one login stays in the Session: the user, the chosen
// backend (the relay, logs and the admin view name it), the login attempt
// and failure counts, the Auth-Wait pause, the per-user session slot, and
// whether a pooled connection failed this session.
//
// The password and SASL payload are secrets: wipeSecrets() wipes them once
// the backend has answered, and the destructor wipes them again (spare
// capacity included) should the phase end before that.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "lookup/lookup.h"
#include "portico/backend_login.h"
#include "portico/imap_output.h"
#include "prelogin.h"

namespace portico::proxy {

class LookupStage;

struct LoginPhase {
  explicit LoginPhase(LoginRequest&& login) : request(std::move(login)) {}
  ~LoginPhase() {
    parser::wipeAll(request.password);
    parser::wipeAll(request.sasl);
    if (backend_user) {
      parser::wipeAll(*backend_user);
    }
  }
  LoginPhase(const LoginPhase&) = delete;
  LoginPhase& operator=(const LoginPhase&) = delete;

  // The backend has answered (or the login failed before): the secrets
  // are not needed any more.
  void wipeSecrets() {
    parser::wipe(request.password);
    parser::wipe(request.sasl);
    if (backend_user) {
      parser::wipe(*backend_user);
      backend_user.reset();
    }
  }

  // The login being replayed, as the dialogue handed it over; its user
  // has moved to the session's user_.
  LoginRequest request;
  std::string untagged;  // untagged backend lines during the login, sent on success
  // The backends to try, in order, and the next one's place.
  std::vector<std::size_t> candidates;
  std::size_t candidate_pos = 0;
  // From the directory (lookup/lookup.h): who to replay instead of the
  // client's user (a secret, like the password), and the backend-connect
  // timeout.
  std::optional<std::string> backend_user;
  std::optional<std::chrono::milliseconds> connect_timeout;
  bool replay_as_login = false;    // AUTHENTICATE PLAIN replayed as LOGIN (overrides)
  bool bye_after_failure = false;  // a directory refusal without Auth-Wait ends the session
  bool backend_pooled = false;     // the backend came from the pool and has not answered yet
  // The stage outlives the lookup it holds: declared before `lookup`, so
  // the lookup is cancelled before the stage pointer goes.
  std::shared_ptr<LookupStage> lookup_stage;
  PendingLookup lookup;
  // The backend's login dialogue, from connect to the tagged answer. Last:
  // it holds views of the user and secrets above, and goes first.
  std::unique_ptr<parser::BackendLoginClient> backend_login;
};

}  // namespace portico::proxy
