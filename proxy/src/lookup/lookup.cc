#include "lookup/lookup.h"

#include <array>

#include "lookup/http_auth_lookup.h"
#include "lookup/redis_lookup.h"
#include "net_types.h"

namespace portico::proxy {

namespace {

constexpr std::array<const char*, kLookupOutcomeCount> kOutcomeNames = {"route", "refuse",
                                                                        "no_entry", "unavailable"};
#define PORTICO_COUNT(name) +1
static_assert(0 PORTICO_LOOKUP_OUTCOMES(PORTICO_COUNT) == kLookupOutcomeCount,
              "one name per LookupOutcome");
#undef PORTICO_COUNT

constexpr std::array<const char*, 3> kBackendTlsNames = {"default", "implicit", "starttls"};
static_assert(kBackendTlsNames.size() == static_cast<std::size_t>(LookupBackendTls::kStarttls) + 1,
              "one name per LookupBackendTls");

}  // namespace

const char* lookupAuthMethodName(LookupAuthMethod method) {
  return method == LookupAuthMethod::kPlain ? "plain" : "none";
}

const char* lookupOutcomeName(LookupOutcome outcome) {
  auto index = static_cast<std::size_t>(outcome);
  return index < kOutcomeNames.size() ? kOutcomeNames[index] : "unknown";
}

const char* lookupBackendTlsName(LookupBackendTls tls) {
  auto index = static_cast<std::size_t>(tls);
  return index < kBackendTlsNames.size() ? kBackendTlsNames[index] : "unknown";
}

std::string LookupRoute::text() const {
  if (!backend.empty()) {
    return backend;
  }
  std::string port_text = std::to_string(port);
  return ipv6 ? "[" + host + "]:" + port_text : host + ":" + port_text;
}

LookupResult LookupResult::unavailable(std::string error) {
  LookupResult result;
  result.outcome = LookupOutcome::kUnavailable;
  result.error = std::move(error);
  return result;
}

LookupResult LookupResult::noEntry() {
  LookupResult result;
  result.outcome = LookupOutcome::kNoEntry;
  return result;
}

std::string LookupResult::describe() const {
  std::string out = lookupOutcomeName(outcome);
  switch (outcome) {
    case LookupOutcome::kRoute:
      out += " " + route.text();
      if (backend_user) {
        out += " user=" + *backend_user;
      }
      if (backend_password) {
        out += " pass=<set>";
      }
      if (backend_tls != LookupBackendTls::kDefault) {
        out += std::string(" tls=") + lookupBackendTlsName(backend_tls) +
               (backend_tls_verify ? "" : "(any-cert)");
      }
      if (proxy_timeout) {
        out += " proxy_timeout=" + std::to_string(proxy_timeout->count()) + "ms";
      }
      break;
    case LookupOutcome::kRefuse:
      out += " '" + reason + "'";
      if (wait_seconds) {
        out += " wait=" + std::to_string(*wait_seconds);
      }
      if (nologin) {
        out += " nologin";
      }
      break;
    case LookupOutcome::kNoEntry:
      break;
    case LookupOutcome::kUnavailable:
      out += ": " + error;
      break;
  }
  if (from_cache) {
    out += " (cached)";
  }
  return out;
}

void wipeSecret(std::string& secret) {
  volatile char* p = secret.data();
  for (std::size_t i = 0; i < secret.size(); ++i) {
    p[i] = 0;
  }
  secret.clear();
}

std::chrono::steady_clock::time_point UvLookupLoop::now() {
  return std::chrono::steady_clock::now();
}

TimerPtr UvLookupLoop::createTimer(std::function<void()> callback) {
  return std::make_unique<UvTimer>(loop_, std::move(callback));
}

PendingLookup& PendingLookup::operator=(PendingLookup&& other) noexcept {
  if (this != &other) {
    cancel();
    directory_ = other.directory_;
    id_ = other.id_;
    other.directory_ = nullptr;
    other.id_ = 0;
  }
  return *this;
}

void PendingLookup::cancel() {
  if (directory_ != nullptr && id_ != 0) {
    directory_->cancel(id_);
  }
  directory_ = nullptr;
  id_ = 0;
}

void LookupStats::recordAnswer(LookupOutcome outcome) {
  auto index = static_cast<std::size_t>(outcome);
  if (index < answers.size()) {
    answers[index].fetch_add(1, std::memory_order_relaxed);
  }
}

void LookupStats::recordLatency(std::chrono::microseconds latency) {
  const auto us = static_cast<std::uint64_t>(std::max<std::int64_t>(0, latency.count()));
  std::size_t bucket = kLatencyBoundsMs.size();
  for (std::size_t i = 0; i < kLatencyBoundsMs.size(); ++i) {
    if (us <= std::uint64_t{kLatencyBoundsMs[i]} * 1'000) {
      bucket = i;
      break;
    }
  }
  latency_buckets[bucket].fetch_add(1, std::memory_order_relaxed);
  latency_count.fetch_add(1, std::memory_order_relaxed);
  latency_sum_us.fetch_add(us, std::memory_order_relaxed);
}

DirectoryLookupPtr makeDirectoryLookup(const LookupConfig& config, LookupLoop& loop) {
  switch (config.kind) {
    case LookupKind::kHttp:
      return std::make_unique<HttpAuthLookup>(config, loop);
    case LookupKind::kRedis:
      return std::make_unique<RedisLookup>(config, loop);
    case LookupKind::kNone:
      break;
  }
  return nullptr;
}

}  // namespace portico::proxy
