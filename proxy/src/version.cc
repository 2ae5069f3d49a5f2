#include "portico/proxy.h"

namespace portico::proxy {
const char* version() {
  return "0.1.0";
}
}  // namespace portico::proxy
