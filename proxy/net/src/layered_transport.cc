#include "portico/net/layered_transport.h"

namespace portico::net {

void LayeredTransport::close() {
  closing_ = true;
  timer_->cancel();
  inner_->close();
}

void LayeredTransport::fail(const std::string& reason) {
  if (close_reason_.empty()) {
    close_reason_ = reason;
  }
  close();
}

void LayeredTransport::onDrained(Transport*) {
  if (handler_ != nullptr && !closing_) {
    handler_->onDrained(this);
  }
}

void LayeredTransport::onClosed(Transport*, std::string_view reason) {
  TransportHandler* handler = handler_;
  const std::string why = close_reason_.empty() ? std::string(reason) : close_reason_;
  timer_.reset();
  beforeClosed();
  if (handler != nullptr) {
    handler->onClosed(this, why);
  }
  delete this;
}

}  // namespace portico::net
