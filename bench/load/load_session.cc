#include "load_session.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <string_view>
#include <utility>

#include "reply_scanner.h"

namespace portico::load {

// ---------------------------------------------------------------------------
// RunShared

void RunShared::addReady() {
  std::lock_guard lock(mu);
  ++ready;
  cv.notify_all();
}

void RunShared::addSetupFailure(std::string message) {
  std::lock_guard lock(mu);
  ++setup_failed;
  if (errors.size() < 10) {
    errors.push_back(std::move(message));
  }
  cv.notify_all();
}

void RunShared::addFinished() {
  std::lock_guard lock(mu);
  ++finished;
  cv.notify_all();
}

void LoopStats::merge(const LoopStats& o) {
  if (commands.size() < o.commands.size()) {
    commands.resize(o.commands.size());
  }
  for (std::size_t i = 0; i < o.commands.size(); ++i) {
    commands[i].ok += o.commands[i].ok;
    commands[i].no += o.commands[i].no;
    commands[i].bad += o.commands[i].bad;
    commands[i].latency.merge(o.commands[i].latency);
  }
  disconnects += o.disconnects;
  timeouts += o.timeouts;
  protocol_errors += o.protocol_errors;
  logouts += o.logouts;
  late_replies += o.late_replies;
  literal_bytes += o.literal_bytes;
  bytes_in += o.bytes_in;
  reads += o.reads;
  bytes_out += o.bytes_out;
  appended += o.appended;
  empty_mailboxes += o.empty_mailboxes;
}

// ---------------------------------------------------------------------------
// Session

namespace {

void appendNumber(std::string& out, std::uint64_t n) {
  char digits[24];
  auto res = std::to_chars(digits, digits + sizeof(digits), n);
  out.append(digits, res.ptr);
}

// "a17 OK done" -> tag 17, status "OK". False for anything else.
bool parseTagged(std::string_view line, std::uint64_t& tag, std::string_view& status) {
  if (line.size() < 3 || line[0] != 'a') {
    return false;
  }
  std::size_t i = 1;
  tag = 0;
  while (i < line.size() && line[i] >= '0' && line[i] <= '9' && i < 20) {
    tag = tag * 10 + static_cast<std::uint64_t>(line[i] - '0');
    ++i;
  }
  if (i == 1 || i >= line.size() || line[i] != ' ') {
    return false;
  }
  std::string_view rest = line.substr(i + 1);
  status = rest.substr(0, rest.find(' '));
  return true;
}

// "* 12 EXISTS" -> 12.
bool parseExists(std::string_view line, std::uint32_t& n) {
  if (line.size() < 10 || line[0] != '*' || line[1] != ' ') {
    return false;
  }
  std::string_view rest = line.substr(2);
  auto res = std::from_chars(rest.data(), rest.data() + rest.size(), n);
  if (res.ec != std::errc()) {
    return false;
  }
  std::string_view word(res.ptr, static_cast<std::size_t>(rest.data() + rest.size() - res.ptr));
  return ReplyScanner::equalsNoCase(word, " EXISTS");
}

std::string_view clip(std::string_view line) {
  return line.substr(0, 200);
}

}  // namespace

class Session {
 public:
  enum class State : std::uint8_t {
    kPending,
    kConnecting,
    kGreeting,
    kLogin,
    kSelect,
    kAppendHead,
    kAppendBody,
    kReady,
    kRunning,
    kLogout,
    kClosing,
    kClosed,
  };

  Session(LoadLoop& loop, std::uint32_t index, std::string user)
      : loop_(loop), index_(index), user_(std::move(user)) {
    tcp_.data = this;
    connect_req_.data = this;
    write_req_.data = this;
    const Options& o = loop_.options();
    inflight_.reserve(o.pipeline);
    schedule_pos_ = o.schedule.empty() ? 0 : (index_ * 7919u) % o.schedule.size();
    active_ = sessionIsActive(index_, o.active_percent);
  }

  State state() const { return state_; }

  void start() {
    state_ = State::kConnecting;
    uv_tcp_init(loop_.uv(), &tcp_);
    tcp_.data = this;
    open_ = true;
    arm();
    int rc = uv_tcp_connect(&connect_req_, &tcp_,
                            reinterpret_cast<const sockaddr*>(&loop_.shared().address), onConnect);
    if (rc < 0) {
      fail(Why::kDisconnect, fmt::format("connect: {}", uv_strerror(rc)));
    }
  }

  // A session never started (abort before its turn).
  void dropPending() { state_ = State::kClosed; }

  void onPhase(Phase phase) {
    if (phase == Phase::kAbort) {
      close();
      return;
    }
    if (phase == Phase::kRun && state_ == State::kReady) {
      state_ = State::kRunning;
    }
    if (state_ == State::kRunning || (phase == Phase::kStop && state_ == State::kReady)) {
      state_ = State::kRunning;
      issue();
      flush();
    }
  }

  void sweep(std::uint64_t now) {
    if (think_until_ != 0 && now >= think_until_ && state_ == State::kRunning) {
      think_until_ = 0;
      issue();
      flush();
    }
    if (deadline_ == 0 || now < deadline_ || state_ >= State::kClosing) {
      return;
    }
    if (state_ == State::kLogout) {
      close();
      return;
    }
    fail(Why::kTimeout, fmt::format("no reply within the timeout while {}", stateName()));
  }

  // ReplyScanner sink.
  bool onResponse(ReplyScanner::Kind kind, std::string_view line) {
    using Kind = ReplyScanner::Kind;
    if (state_ >= State::kClosing) {
      return false;
    }
    if (kind == Kind::kUntagged) {
      return onUntagged(line);
    }
    if (kind == Kind::kContinuation) {
      if (state_ != State::kAppendHead) {
        return fail(Why::kProtocol, fmt::format("unexpected continuation '{}'", clip(line)));
      }
      out_ += loop_.shared().seed_message;
      out_ += "\r\n";
      state_ = State::kAppendBody;
      arm();
      return true;
    }
    std::uint64_t tag = 0;
    std::string_view status;
    if (!parseTagged(line, tag, status)) {
      return fail(Why::kProtocol, fmt::format("unparsable line '{}'", clip(line)));
    }
    if (state_ == State::kRunning) {
      return onRunTagged(tag, status, line);
    }
    if (tag != expected_tag_) {
      return fail(Why::kProtocol, fmt::format("reply with unexpected tag '{}'", clip(line)));
    }
    return onSetupTagged(status == "OK", line);
  }

 private:
  enum class Why { kDisconnect, kTimeout, kProtocol, kSetup };

  struct Inflight {
    std::uint64_t tag;
    std::uint64_t sent_ns;  // 0 until flushed
    std::uint16_t command;
  };

  static void onConnect(uv_connect_t* req, int status) {
    auto* s = static_cast<Session*>(req->data);
    if (s->state_ >= State::kClosing) {
      return;
    }
    if (status < 0) {
      s->fail(Why::kDisconnect, fmt::format("connect: {}", uv_strerror(status)));
      return;
    }
    uv_tcp_nodelay(&s->tcp_, 1);
    int rc = uv_read_start(reinterpret_cast<uv_stream_t*>(&s->tcp_), onAlloc, onRead);
    if (rc < 0) {
      s->fail(Why::kDisconnect, fmt::format("read: {}", uv_strerror(rc)));
      return;
    }
    s->state_ = State::kGreeting;
    s->arm();
  }

  static void onAlloc(uv_handle_t* handle, std::size_t, uv_buf_t* buf) {
    auto* s = static_cast<Session*>(handle->data);
    *buf = uv_buf_init(s->loop_.readBuffer(), static_cast<unsigned>(s->loop_.readBufferSize()));
  }

  static void onRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
    auto* s = static_cast<Session*>(stream->data);
    if (nread == 0 || s->state_ >= State::kClosing) {
      return;
    }
    if (nread < 0) {
      if (s->state_ == State::kLogout) {
        s->close();
      } else {
        s->fail(Why::kDisconnect,
                fmt::format("{} while {}",
                            nread == UV_EOF
                                ? std::string("connection closed by the server")
                                : fmt::format("read: {}", uv_strerror(static_cast<int>(nread))),
                            s->stateName()));
      }
      return;
    }
    s->loop_.mutableStats().bytes_in += static_cast<std::uint64_t>(nread);
    ++s->loop_.mutableStats().reads;
    std::uint64_t literal_before = s->scanner_.literalBytes();
    bool ok = s->scanner_.feed(buf->base, static_cast<std::size_t>(nread), *s);
    s->loop_.mutableStats().literal_bytes += s->scanner_.literalBytes() - literal_before;
    if (!ok) {
      s->fail(Why::kProtocol, fmt::format("bad response framing: {}", s->scanner_.error()));
      return;
    }
    if (s->state_ < State::kClosing) {
      s->flush();
    }
  }

  static void onWrite(uv_write_t* req, int status) {
    auto* s = static_cast<Session*>(req->data);
    s->write_pending_ = false;
    s->writing_.clear();
    if (s->state_ >= State::kClosing) {
      return;
    }
    if (status < 0) {
      s->fail(Why::kDisconnect, fmt::format("write: {}", uv_strerror(status)));
      return;
    }
    s->flush();
  }

  static void onClose(uv_handle_t* handle) {
    auto* s = static_cast<Session*>(handle->data);
    s->state_ = State::kClosed;
    s->loop_.sessionClosed();
  }

  const char* stateName() const {
    static constexpr const char* kNames[] = {
        "pending",     "connecting", "waiting for the greeting",
        "logging in",  "selecting",  "waiting for the APPEND continuation",
        "appending",   "ready",      "running",
        "logging out", "closing",    "closed"};
    static_assert(sizeof(kNames) / sizeof(kNames[0]) == static_cast<int>(State::kClosed) + 1);
    return kNames[static_cast<int>(state_)];
  }

  void arm() { deadline_ = uv_hrtime() + loop_.options().timeout_ns; }

  void sendSetup(std::string_view text, State next) {
    expected_tag_ = tag_++;
    out_ += 'a';
    appendNumber(out_, expected_tag_);
    out_ += ' ';
    out_ += text;
    out_ += "\r\n";
    state_ = next;
    arm();
  }

  bool onUntagged(std::string_view line) {
    std::uint32_t n = 0;
    if (parseExists(line, n)) {
      exists_ = n;
      return true;
    }
    if (state_ == State::kGreeting) {
      if (line.size() >= 4 && ReplyScanner::equalsNoCase(line.substr(0, 4), "* OK")) {
        const Options& o = loop_.options();
        sendSetup(fmt::format("LOGIN {} {}", quoteImap(user_), quoteImap(o.password)),
                  State::kLogin);
        return true;
      }
      return fail(Why::kSetup, fmt::format("greeting '{}'", clip(line)));
    }
    if (line.size() >= 5 && ReplyScanner::equalsNoCase(line.substr(0, 5), "* BYE") &&
        state_ != State::kLogout) {
      return fail(Why::kDisconnect, fmt::format("server said '{}'", clip(line)));
    }
    return true;
  }

  bool onSetupTagged(bool ok, std::string_view line) {
    const Options& o = loop_.options();
    switch (state_) {
      case State::kLogin:
        if (!ok) {
          return fail(Why::kSetup, fmt::format("LOGIN failed: '{}'", clip(line)));
        }
        sendSetup(fmt::format("SELECT {}", quoteImap(o.mailbox)), State::kSelect);
        return true;
      case State::kSelect:
        if (!ok) {
          return fail(Why::kSetup, fmt::format("SELECT failed: '{}'", clip(line)));
        }
        exists_at_select_ = exists_;
        if (loop_.mode() == LoadLoop::Mode::kSeed) {
          return seedNext();
        }
        if (exists_ == 0) {
          ++loop_.mutableStats().empty_mailboxes;
        }
        state_ = State::kReady;
        deadline_ = 0;
        setup_reported_ = true;
        loop_.setupDone(true, {});
        onPhase(loop_.phase());  // a late session joins a running phase
        return true;
      case State::kAppendHead:
      case State::kAppendBody:
        if (!ok) {
          return fail(Why::kSetup, fmt::format("APPEND failed: '{}'", clip(line)));
        }
        ++appended_;
        ++loop_.mutableStats().appended;
        return seedNext();
      case State::kLogout:
        ++loop_.mutableStats().logouts;
        close();
        return false;
      default:
        return fail(Why::kProtocol, fmt::format("unexpected tagged reply '{}'", clip(line)));
    }
  }

  bool seedNext() {
    const Options& o = loop_.options();
    if (exists_at_select_ + appended_ >= o.seed_messages) {
      setup_reported_ = true;
      loop_.setupDone(true, {});
      sendSetup("LOGOUT", State::kLogout);
      return true;
    }
    sendSetup(
        fmt::format("APPEND {} {{{}}}", quoteImap(o.mailbox), loop_.shared().seed_message.size()),
        State::kAppendHead);
    return true;
  }

  bool onRunTagged(std::uint64_t tag, std::string_view status, std::string_view line) {
    auto it = std::find_if(inflight_.begin(), inflight_.end(),
                           [tag](const Inflight& f) { return f.tag == tag; });
    if (it == inflight_.end()) {
      return fail(Why::kProtocol, fmt::format("reply for a tag not in flight: '{}'", clip(line)));
    }
    std::uint64_t now = uv_hrtime();
    LoopStats& stats = loop_.mutableStats();
    if (loop_.phase() == Phase::kRun) {
      CommandStats& c = stats.commands[it->command];
      if (status == "OK") {
        ++c.ok;
      } else if (status == "NO") {
        ++c.no;
      } else {
        ++c.bad;
      }
      c.latency.record(now - it->sent_ns);
    } else {
      ++stats.late_replies;
    }
    *it = inflight_.back();
    inflight_.pop_back();
    arm();
    const std::uint64_t think = loop_.options().think_ns;
    if (think != 0 && loop_.phase() == Phase::kRun) {
      think_until_ = now + think;
      if (inflight_.empty()) {
        deadline_ = 0;  // thinking, not waiting for the server
      }
      return true;
    }
    issue();
    return state_ < State::kClosing;
  }

  // Keeps the pipeline full while the phase allows (an inactive session
  // stays silent, a thinking one waits for the sweep); LOGOUT when drained.
  void issue() {
    const Options& o = loop_.options();
    RunShared& shared = loop_.shared();
    const bool running = loop_.phase() == Phase::kRun;
    while (active_ && think_until_ == 0 && !exhausted_ && running &&
           inflight_.size() < o.pipeline) {
      if (o.max_commands != 0 &&
          shared.issued.fetch_add(1, std::memory_order_relaxed) >= o.max_commands) {
        exhausted_ = true;
        break;
      }
      std::uint16_t command = o.schedule[schedule_pos_];
      schedule_pos_ = (schedule_pos_ + 1) % o.schedule.size();
      const MixEntry& e = o.mix[command];
      std::uint64_t tag = tag_++;
      out_ += 'a';
      appendNumber(out_, tag);
      out_ += ' ';
      out_ += e.before;
      if (e.has_seq) {
        seq_ = exists_ == 0 ? 1 : seq_ % exists_ + 1;
        appendNumber(out_, seq_);
        out_ += e.after;
      }
      out_ += "\r\n";
      inflight_.push_back(Inflight{tag, 0, command});
      arm();
    }
    if (inflight_.empty() && (!running || exhausted_)) {
      if (!finished_) {
        finished_ = true;
        loop_.runFinished();
      }
      sendSetup("LOGOUT", State::kLogout);
    }
  }

  // Returns false so a sink caller stops scanning.
  bool fail(Why why, std::string message) {
    if (state_ >= State::kClosing) {
      return false;
    }
    if (!setup_reported_) {
      setup_reported_ = true;
      loop_.setupDone(false, fmt::format("session {} ({}) to {}: {}", index_, user_,
                                         loop_.shared().target, message));
    } else {
      LoopStats& stats = loop_.mutableStats();
      if (why == Why::kTimeout) {
        ++stats.timeouts;
      } else if (why == Why::kProtocol) {
        ++stats.protocol_errors;
      } else {
        ++stats.disconnects;
      }
      if (!finished_ && loop_.mode() == LoadLoop::Mode::kLoad) {
        finished_ = true;
        loop_.runFinished();
      }
    }
    close();
    return false;
  }

  void close() {
    if (state_ >= State::kClosing) {
      return;
    }
    state_ = State::kClosing;
    deadline_ = 0;
    if (!open_) {
      state_ = State::kClosed;
      loop_.sessionClosed();
      return;
    }
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp_));
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), onClose);
  }

  void flush() {
    if (out_.empty() || write_pending_) {
      return;
    }
    std::uint64_t now = uv_hrtime();
    for (Inflight& f : inflight_) {
      if (f.sent_ns == 0) {
        f.sent_ns = now;
      }
    }
    auto* stream = reinterpret_cast<uv_stream_t*>(&tcp_);
    uv_buf_t b = uv_buf_init(out_.data(), static_cast<unsigned>(out_.size()));
    int n = uv_try_write(stream, &b, 1);
    if (n == static_cast<int>(out_.size())) {
      loop_.mutableStats().bytes_out += out_.size();
      out_.clear();
      return;
    }
    if (n < 0 && n != UV_EAGAIN) {
      fail(Why::kDisconnect, fmt::format("write: {}", uv_strerror(n)));
      return;
    }
    if (n > 0) {
      out_.erase(0, static_cast<std::size_t>(n));
    }
    loop_.mutableStats().bytes_out += out_.size() + static_cast<std::size_t>(std::max(n, 0));
    writing_.swap(out_);
    out_.clear();
    b = uv_buf_init(writing_.data(), static_cast<unsigned>(writing_.size()));
    write_pending_ = true;
    int rc = uv_write(&write_req_, stream, &b, 1, onWrite);
    if (rc < 0) {
      write_pending_ = false;
      fail(Why::kDisconnect, fmt::format("write: {}", uv_strerror(rc)));
    }
  }

  LoadLoop& loop_;
  std::uint32_t index_;
  std::string user_;
  uv_tcp_t tcp_{};
  uv_connect_t connect_req_{};
  uv_write_t write_req_{};
  State state_ = State::kPending;
  bool open_ = false;
  bool write_pending_ = false;
  bool setup_reported_ = false;
  bool finished_ = false;
  bool exhausted_ = false;
  bool active_ = true;             // sends commands in the window (--active-percent)
  std::uint64_t think_until_ = 0;  // uv_hrtime; 0: not thinking (--think-time)
  std::uint64_t deadline_ = 0;     // uv_hrtime; 0: not waiting
  std::uint64_t tag_ = 1;
  std::uint64_t expected_tag_ = 0;
  std::uint32_t exists_ = 0;
  std::uint32_t exists_at_select_ = 0;
  std::uint32_t appended_ = 0;
  std::uint32_t seq_ = 0;
  std::size_t schedule_pos_ = 0;
  std::vector<Inflight> inflight_;
  std::string out_;
  std::string writing_;
  ReplyScanner scanner_;

  friend class LoadLoop;
};

// ---------------------------------------------------------------------------
// LoadLoop

LoadLoop::LoadLoop(RunShared& shared, Mode mode, std::vector<SessionSpec> sessions)
    : shared_(shared), mode_(mode), read_buffer_(64 * 1024) {
  uv_loop_init(&loop_);
  uv_async_init(&loop_, &async_, onAsync);
  uv_timer_init(&loop_, &sweep_);
  async_.data = this;
  sweep_.data = this;
  stats_.commands.resize(shared_.options.mix.size());
  sessions_.reserve(sessions.size());
  for (SessionSpec& spec : sessions) {
    sessions_.push_back(std::make_unique<Session>(*this, spec.index, std::move(spec.user)));
  }
}

LoadLoop::~LoadLoop() {
  if (!shut_down_) {
    // run() was never called: close our own handles so the loop can close.
    {
      std::lock_guard lock(alive_mu_);
      alive_ = false;
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&sweep_), nullptr);
    uv_run(&loop_, UV_RUN_DEFAULT);
  }
  uv_loop_close(&loop_);
}

void LoadLoop::run() {
  uv_timer_start(&sweep_, onSweep, 100, 100);
  applyPhase();
  startMore();
  shutdownIfDone();
  uv_run(&loop_, UV_RUN_DEFAULT);
}

void LoadLoop::wake() {
  std::lock_guard lock(alive_mu_);
  if (alive_) {
    uv_async_send(&async_);
  }
}

void LoadLoop::onAsync(uv_async_t* handle) {
  static_cast<LoadLoop*>(handle->data)->applyPhase();
}

void LoadLoop::onSweep(uv_timer_t* handle) {
  auto* self = static_cast<LoadLoop*>(handle->data);
  std::uint64_t now = uv_hrtime();
  for (auto& s : self->sessions_) {
    s->sweep(now);
  }
}

void LoadLoop::applyPhase() {
  auto phase = static_cast<Phase>(shared_.phase.load());
  if (phase == phase_) {
    return;
  }
  phase_ = phase;
  if (phase == Phase::kAbort) {
    for (; next_ < sessions_.size(); ++next_) {
      sessions_[next_]->dropPending();
      ++closed_;
    }
  }
  for (auto& s : sessions_) {
    if (s->state() != Session::State::kPending) {
      s->onPhase(phase);
    }
  }
  shutdownIfDone();
}

void LoadLoop::startMore() {
  while (phase_ != Phase::kAbort && next_ < sessions_.size() &&
         in_setup_ < options().setup_concurrency) {
    ++in_setup_;
    sessions_[next_++]->start();
  }
}

void LoadLoop::setupDone(bool ok, const std::string& message) {
  --in_setup_;
  if (ok) {
    shared_.addReady();
  } else {
    shared_.addSetupFailure(message);
  }
  startMore();
}

void LoadLoop::runFinished() {
  shared_.addFinished();
}

void LoadLoop::sessionClosed() {
  ++closed_;
  shutdownIfDone();
}

void LoadLoop::shutdownIfDone() {
  if (shut_down_ || closed_ < sessions_.size()) {
    return;
  }
  shut_down_ = true;
  {
    std::lock_guard lock(alive_mu_);
    alive_ = false;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
  uv_timer_stop(&sweep_);
  uv_close(reinterpret_cast<uv_handle_t*>(&sweep_), nullptr);
}

}  // namespace portico::load
