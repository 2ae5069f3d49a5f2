// A queue of functions run on one libuv loop, fed from any thread: the
// only way threads talk to each other here (control -> worker for drains,
// reloads and queries; worker -> control for their answers).
#pragma once

#include <uv.h>

#include <functional>
#include <mutex>
#include <vector>

namespace portico::net {

class TaskQueue {
 public:
  using Task = std::function<void()>;

  // Call on the loop's thread (or before it runs).
  explicit TaskQueue(uv_loop_t* loop) {
    uv_async_init(loop, &async_, &TaskQueue::onAsync);
    async_.data = this;
  }
  TaskQueue(const TaskQueue&) = delete;
  TaskQueue& operator=(const TaskQueue&) = delete;

  // Thread-safe. Tasks posted after close() are dropped.
  void post(Task task) {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) {
      return;
    }
    queue_.push_back(std::move(task));
    uv_async_send(&async_);
  }

  // On the loop's thread: stop accepting tasks and close the handle (the
  // loop can then end). The TaskQueue must outlive the loop run.
  void close() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) {
        return;
      }
      closed_ = true;
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
  }

 private:
  static void onAsync(uv_async_t* async) {
    auto* self = static_cast<TaskQueue*>(async->data);
    std::vector<Task> work;
    {
      std::lock_guard<std::mutex> lock(self->mu_);
      work.swap(self->queue_);
    }
    for (Task& task : work) {
      task();
    }
  }

  uv_async_t async_;
  std::mutex mu_;
  std::vector<Task> queue_;
  bool closed_ = false;
};

}  // namespace portico::net
