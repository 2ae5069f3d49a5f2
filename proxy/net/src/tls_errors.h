// Private to net: OpenSSL's error queue as text.
#pragma once

#include <string>

namespace portico::net {

// The OpenSSL error queue as one line, reasons only ("wrong version
// number; ..."), and cleared; "unknown TLS error" when it is empty.
std::string sslErrors();

}  // namespace portico::net
