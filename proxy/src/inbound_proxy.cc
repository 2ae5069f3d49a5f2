#include "inbound_proxy.h"

#include <netinet/in.h>

#include <cstring>

#include <fmt/format.h>

#include "portico/logging.h"

namespace portico::proxy {

InboundProxyReader::InboundProxyReader(InboundProxyHost& host, Transport* transport,
                                       std::string listener,
                                       const std::function<TimerPtr(std::function<void()>)>& timers,
                                       std::chrono::milliseconds timeout, LogThrottle& throttle)
    : host_(host),
      transport_(transport),
      listener_(std::move(listener)),
      timeout_(timeout),
      throttle_(throttle) {
  timer_ = timers([this] {
    refuse(parser_.bytesSeen() == 0
               ? fmt::format("no PROXY header within {} ms", timeout_.count())
               : fmt::format("PROXY header not complete within {} ms ({} bytes)", timeout_.count(),
                             parser_.bytesSeen()));
  });
  transport_->setHandler(this);
  timer_->arm(timeout);
}

void InboundProxyReader::abort() {
  logged_ = true;
  if (!closing_) {
    closing_ = true;
    timer_->cancel();
    transport_->close();
  }
}

void InboundProxyReader::refuse(const std::string& why) {
  if (closing_) {
    return;
  }
  closing_ = true;
  logged_ = true;
  timer_->cancel();
  logProxyRefusal(throttle_, transport_->peerAddress(), listener_, why);
  // No greeting, no BYE: the peer is a load balancer speaking the wrong
  // protocol, or not a load balancer at all.
  transport_->close();
}

void InboundProxyReader::onData(Transport* transport, Chunk chunk) {
  if (closing_) {
    return;
  }
  auto result = parser_.feed(chunk.view());
  switch (result.status) {
    case parser::ProxyParseStatus::kNeedMore:
      return;
    case parser::ProxyParseStatus::kError:
      refuse(fmt::format("bad PROXY header ({} after {} bytes)",
                         parser::proxyHeaderErrorName(parser_.error()), parser_.bytesSeen()));
      return;
    case parser::ProxyParseStatus::kDone:
      break;
  }
  timer_->cancel();
  sockaddr_storage client;
  sockaddr_storage local;
  addressesOf(parser_.header(), transport->peerAddress(), transport->localAddress(), client, local);
  Chunk rest = chunk.slice(result.consumed, chunk.size() - result.consumed);
  chunk.reset();
  transport->setHandler(nullptr);
  InboundProxyHost& host = host_;
  host.headerRead(this, transport, client, local, std::move(rest));
  delete this;  // the last statement: nothing of the reader is touched after it
}

void InboundProxyReader::onClosed(Transport*, std::string_view reason) {
  if (!logged_) {
    timer_->cancel();
    // A peer that connects and leaves without a byte is a TCP health check;
    // one that leaves halfway through a header is worth a line.
    if (parser_.bytesSeen() > 0) {
      logProxyRefusal(throttle_, transport_->peerAddress(), listener_,
                      fmt::format("closed by the peer within the PROXY header after {} bytes ({})",
                                  parser_.bytesSeen(), reason));
    }
  }
  InboundProxyHost& host = host_;
  host.closed(this);
  delete this;
}

void InboundProxyReader::addressesOf(const parser::ProxyHeader& header,
                                     const sockaddr_storage& own_peer,
                                     const sockaddr_storage& own_local, sockaddr_storage& client,
                                     sockaddr_storage& local) {
  client = own_peer;
  local = own_local;
  if (header.local || header.family == parser::ProxyFamily::kUnspec) {
    return;
  }
  std::memset(&client, 0, sizeof(client));
  std::memset(&local, 0, sizeof(local));
  if (header.family == parser::ProxyFamily::kInet) {
    auto* c = reinterpret_cast<sockaddr_in*>(&client);
    auto* l = reinterpret_cast<sockaddr_in*>(&local);
    c->sin_family = l->sin_family = AF_INET;
    std::memcpy(&c->sin_addr, header.source.data(), 4);
    std::memcpy(&l->sin_addr, header.destination.data(), 4);
    c->sin_port = htons(header.source_port);
    l->sin_port = htons(header.destination_port);
  } else {
    auto* c = reinterpret_cast<sockaddr_in6*>(&client);
    auto* l = reinterpret_cast<sockaddr_in6*>(&local);
    c->sin6_family = l->sin6_family = AF_INET6;
    std::memcpy(&c->sin6_addr, header.source.data(), 16);
    std::memcpy(&l->sin6_addr, header.destination.data(), 16);
    c->sin6_port = htons(header.source_port);
    l->sin6_port = htons(header.destination_port);
  }
}

void logProxyRefusal(LogThrottle& throttle, const sockaddr_storage& peer,
                     const std::string& listener, const std::string& why) {
  std::uint64_t count = throttle.event(std::chrono::steady_clock::now());
  if (count == 0) {
    return;  // reported with the next line that is due
  }
  logging::log(logging::Level::kWarn, "worker",
               "proxy_protocol: connection from {} to {} closed without greeting: {}{}",
               formatAddress(peer), listener, why,
               count > 1 ? fmt::format(" ({} refusals since the last such line)", count) : "");
}

}  // namespace portico::proxy
