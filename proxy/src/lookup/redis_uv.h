// hiredis <-> libuv, shared by the directory lookup (lookup/redis_lookup.cc,
// on worker loops) and fleet mode (fleet/fleet_client.cc, on the control
// loop). A copy of hiredis 0.14's adapters/libuv.h with one fix: when libuv
// reports a poll error (a refused connect shows up as one), the stock
// adapter returns without telling hiredis, so neither the connect callback
// nor the command callbacks ever run. Here the error is handed to hiredis as
// a write (while connecting) or read event, whose failing syscall then
// reports the error through the usual callbacks.
#pragma once

#include <uv.h>

struct redisAsyncContext;

namespace portico::proxy {

// Watches `context`'s socket on `loop`; false when it cannot (the caller
// then frees the context). The watcher goes with the context.
bool uvRedisAttach(redisAsyncContext* context, uv_loop_t* loop);

// hiredis learns that a non-blocking connect finished from the first write
// event: ask for one even before any command is queued (`data` is
// context->ev.data).
void uvRedisAddWrite(void* data);

}  // namespace portico::proxy
