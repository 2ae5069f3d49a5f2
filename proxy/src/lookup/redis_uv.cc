#include "lookup/redis_uv.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

namespace portico::proxy {

namespace {

struct UvRedisEvents {
  redisAsyncContext* context = nullptr;
  uv_poll_t handle{};
  int events = 0;
};

void uvRedisPoll(uv_poll_t* handle, int status, int events) {
  auto* p = static_cast<UvRedisEvents*>(handle->data);
  if (p->context == nullptr) {
    return;
  }
  if (status != 0) {
    if ((p->context->c.flags & REDIS_CONNECTED) != 0) {
      redisAsyncHandleRead(p->context);
    } else {
      redisAsyncHandleWrite(p->context);
    }
    return;
  }
  if ((events & UV_READABLE) != 0) {
    redisAsyncHandleRead(p->context);
  }
  // The read may have freed the context (hiredis then calls cleanup, which
  // clears p->context).
  if (p->context != nullptr && (events & UV_WRITABLE) != 0) {
    redisAsyncHandleWrite(p->context);
  }
}

void uvRedisUpdate(UvRedisEvents* p) {
  if (p->events != 0) {
    uv_poll_start(&p->handle, p->events, &uvRedisPoll);
  } else {
    uv_poll_stop(&p->handle);
  }
}

void uvRedisAddRead(void* data) {
  auto* p = static_cast<UvRedisEvents*>(data);
  p->events |= UV_READABLE;
  uvRedisUpdate(p);
}

void uvRedisDelRead(void* data) {
  auto* p = static_cast<UvRedisEvents*>(data);
  p->events &= ~UV_READABLE;
  uvRedisUpdate(p);
}

}  // namespace

void uvRedisAddWrite(void* data) {
  auto* p = static_cast<UvRedisEvents*>(data);
  p->events |= UV_WRITABLE;
  uvRedisUpdate(p);
}

namespace {

void uvRedisDelWrite(void* data) {
  auto* p = static_cast<UvRedisEvents*>(data);
  p->events &= ~UV_WRITABLE;
  uvRedisUpdate(p);
}

void uvRedisCleanup(void* data) {
  auto* p = static_cast<UvRedisEvents*>(data);
  p->context = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(&p->handle),
           [](uv_handle_t* h) { delete static_cast<UvRedisEvents*>(h->data); });
}

}  // namespace

bool uvRedisAttach(redisAsyncContext* context, uv_loop_t* loop) {
  if (context->ev.data != nullptr) {
    return false;
  }
  auto* p = new UvRedisEvents;
  if (uv_poll_init(loop, &p->handle, context->c.fd) != 0) {
    delete p;
    return false;
  }
  p->handle.data = p;
  p->context = context;
  context->ev.addRead = &uvRedisAddRead;
  context->ev.delRead = &uvRedisDelRead;
  context->ev.addWrite = &uvRedisAddWrite;
  context->ev.delWrite = &uvRedisDelWrite;
  context->ev.cleanup = &uvRedisCleanup;
  context->ev.data = p;
  return true;
}

}  // namespace portico::proxy
