// The network layer (proxy/net, namespace portico::net) under the short
// names the proxy's code uses: the proxy is its main user, and every one
// of these names says what it is without the prefix.
#pragma once

#include "portico/net/chunk.h"
#include "portico/net/compress.h"
#include "portico/net/network.h"
#include "portico/net/task_queue.h"
#include "portico/net/tls.h"
#include "portico/net/tls_context.h"
#include "portico/net/transport.h"
#include "portico/net/uv_transport.h"

namespace portico::proxy {

using net::Block;
using net::BufferPool;
using net::Chunk;
using net::ClientTlsContext;
using net::ClientTlsSettings;
using net::DeflateTransport;
using net::formatAddress;
using net::Network;
using net::networksContain;
using net::parseNetwork;
using net::ServerTlsContext;
using net::ServerTlsSettings;
using net::TaskQueue;
using net::Timer;
using net::TimerFactory;
using net::TimerPtr;
using net::TlsTransport;
using net::Transport;
using net::TransportHandler;
using net::UvTcpTransport;
using net::UvTimer;

}  // namespace portico::proxy
