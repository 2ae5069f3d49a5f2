// Protocol log writer: the thread, its producer buffers, file rotation and
// retention. See portico/protocol_log.h for the contract.
#include "portico/protocol_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "portico/logging.h"
#include "protocol_format.h"

namespace portico::logging {
namespace {

using SysTime = std::chrono::system_clock::time_point;

// ---------------------------------------------------------------------------
// Files.

constexpr std::string_view kLogSuffix = ".LOG";

std::string periodKey(SysTime now, ProtocolLog::Options::Rollover rollover) {
  using namespace std::chrono;
  const sys_days day = floor<days>(now);
  const year_month_day ymd{day};
  const auto hour = duration_cast<hours>(now - day).count();
  const int y = static_cast<int>(ymd.year());
  const unsigned m = static_cast<unsigned>(ymd.month());
  const unsigned d = static_cast<unsigned>(ymd.day());
  if (rollover == ProtocolLog::Options::Rollover::kDaily) {
    return fmt::format("{:04}{:02}{:02}", y, m, d);
  }
  return fmt::format("{:04}{:02}{:02}{:02}", y, m, d, hour);
}

struct LogFileName {
  std::string period;  // 8 or 10 digits
  std::uint32_t seq = 0;
};

// Parses "<prefix><8 or 10 digits>-<N>.LOG"; other names are not ours.
bool parseLogFileName(std::string_view name, std::string_view prefix, LogFileName& parsed) {
  if (name.size() <= prefix.size() + kLogSuffix.size() || name.substr(0, prefix.size()) != prefix ||
      name.substr(name.size() - kLogSuffix.size()) != kLogSuffix) {
    return false;
  }
  std::string_view rest = name.substr(prefix.size());
  rest.remove_suffix(kLogSuffix.size());
  const std::size_t dash = rest.find('-');
  if (dash != 8 && dash != 10) {
    return false;
  }
  const auto isDigit = [](char c) { return c >= '0' && c <= '9'; };
  const std::string_view period = rest.substr(0, dash);
  const std::string_view seq = rest.substr(dash + 1);
  if (!std::all_of(period.begin(), period.end(), isDigit) || seq.empty() || seq.size() > 9 ||
      !std::all_of(seq.begin(), seq.end(), isDigit)) {
    return false;
  }
  parsed.period.assign(period);
  std::from_chars(seq.data(), seq.data() + seq.size(), parsed.seq);
  return true;
}

struct LogFileInfo {
  std::string path;
  LogFileName name;
  std::int64_t mtime_ms = 0;
  std::uint64_t size = 0;

  // Creation order: period (a daily one sorts as hour 00), then sequence.
  bool olderThan(const LogFileInfo& other) const {
    const std::string a = name.period.size() == 8 ? name.period + "00" : name.period;
    const std::string b =
        other.name.period.size() == 8 ? other.name.period + "00" : other.name.period;
    return a != b ? a < b : name.seq < other.name.seq;
  }
};

std::vector<LogFileInfo> listLogFiles(const std::string& directory, std::string_view prefix) {
  std::vector<LogFileInfo> files;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(directory, ec), end; !ec && it != end;
       it.increment(ec)) {
    LogFileInfo info;
    if (!parseLogFileName(it->path().filename().native(), prefix, info.name)) {
      continue;
    }
    info.path = it->path().native();
    struct stat st {};
    if (::stat(info.path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
      continue;
    }
    info.size = static_cast<std::uint64_t>(st.st_size);
    info.mtime_ms =
        static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000 + st.st_mtim.tv_nsec / 1000000;
    files.push_back(std::move(info));
  }
  return files;
}

// Writes all of `data`; 0 or the errno of the failing write(2).
int writeAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return errno;
    }
    if (n == 0) {
      return EIO;
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return 0;
}

std::uint64_t countLines(std::string_view data) {
  return static_cast<std::uint64_t>(std::count(data.begin(), data.end(), '\n'));
}

std::string errnoText(int err) {
  return std::error_code(err, std::generic_category()).message();
}

constexpr auto kWriterTick = std::chrono::milliseconds(150);
constexpr auto kQueueFullWarningInterval = std::chrono::seconds(60);

// One producer's buffer. Aligned so producers on different cores do not
// share a cache line.
struct alignas(64) ProducerBuffer {
  std::mutex mu;
  std::string active;  // guarded by mu
  std::uint64_t records = 0;
  std::size_t capacity = 0;
  bool wake_sent = false;  // set at half full, reset when the writer swaps
};

struct Batch {
  std::string data;
  std::uint64_t records = 0;
};

std::int64_t toMillis(SysTime time) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(time.time_since_epoch()).count();
}

}  // namespace

// ---------------------------------------------------------------------------
// The writer.

struct ProtocolLog::Impl {
  explicit Impl(std::size_t n) : count(n), buffers(new ProducerBuffer[n]), batches(n) {}

  void run();
  void drainOnce();
  void writeBlock(std::string_view block, SysTime time, const std::string& period_now);
  bool ensureOpen(SysTime time, const std::string& period_now);
  void startPeriod(const std::string& period_now);
  void closeFile();
  void closeIfMoved();
  void applyRetention(SysTime time);
  void fail(std::string message, std::uint64_t dropped);
  void warnIfQueueFull();
  void wakeWriter();
  SysTime now() const { return options.clock ? options.clock() : std::chrono::system_clock::now(); }

  const std::size_t count;
  const std::unique_ptr<ProducerBuffer[]> buffers;

  std::atomic<bool> enabled{false};
  std::atomic<bool> reopen_requested{false};
  std::atomic<std::uint64_t> records_written{0};
  std::atomic<std::uint64_t> bytes_written{0};
  std::atomic<std::uint64_t> dropped_queue_full{0};
  std::atomic<std::uint64_t> dropped_other{0};
  std::atomic<std::uint64_t> files_opened{0};

  std::mutex control_mu;  // serializes start() and stop()
  std::thread thread;

  // Writer wake-ups and flush handshakes.
  std::mutex mu;
  std::condition_variable writer_cv;
  std::condition_variable flushed_cv;
  bool writer_running = false;
  bool stop_requested = false;
  bool wake_pending = false;
  bool paused = false;
  std::uint64_t flush_requested = 0;
  std::uint64_t flush_done = 0;

  // Owned by the writer thread while it runs (by start() before).
  Options options;
  std::vector<Batch> batches;
  int fd = -1;
  std::string period;
  std::uint32_t seq = 1;
  std::string path;
  std::uint64_t file_size = 0;
  bool file_has_records = false;
  bool retention_due = false;
  bool failing = false;
  std::uint64_t queue_full_reported = 0;
  std::chrono::steady_clock::time_point queue_full_warned{};

  mutable std::mutex stats_mu;
  std::string stats_directory;
  std::string stats_file;
  std::string stats_error;
};

void ProtocolLog::Impl::wakeWriter() {
  {
    std::lock_guard<std::mutex> lock(mu);
    wake_pending = true;
  }
  writer_cv.notify_one();
}

void ProtocolLog::Impl::run() {
  const SysTime start_time = now();
  startPeriod(periodKey(start_time, options.rollover));
  applyRetention(start_time);
  for (;;) {
    std::uint64_t ticket = 0;
    bool stopping = false;
    {
      std::unique_lock<std::mutex> lock(mu);
      writer_cv.wait_for(lock, kWriterTick, [this] {
        return stop_requested || wake_pending || flush_requested > flush_done;
      });
      while (paused && !stop_requested) {
        writer_cv.wait_for(lock, kWriterTick);
      }
      ticket = flush_requested;
      stopping = stop_requested;
      wake_pending = false;
    }
    drainOnce();
    {
      std::lock_guard<std::mutex> lock(mu);
      flush_done = ticket;
    }
    flushed_cv.notify_all();
    if (stopping) {
      break;
    }
  }
  closeFile();
  {
    std::lock_guard<std::mutex> lock(mu);
    writer_running = false;
  }
  flushed_cv.notify_all();
}

void ProtocolLog::Impl::drainOnce() {
  std::uint64_t records = 0;
  for (std::size_t i = 0; i < count; ++i) {
    ProducerBuffer& buffer = buffers[i];
    std::lock_guard<std::mutex> lock(buffer.mu);
    std::swap(buffer.active, batches[i].data);
    batches[i].records = buffer.records;
    records += buffer.records;
    buffer.records = 0;
    buffer.wake_sent = false;
  }
  warnIfQueueFull();
  if (reopen_requested.exchange(false)) {
    closeFile();
  }
  if (records == 0) {
    return;
  }
  const SysTime time = now();
  const std::string period_now = periodKey(time, options.rollover);
  closeIfMoved();
  for (Batch& batch : batches) {
    if (!batch.data.empty()) {
      writeBlock(batch.data, time, period_now);
      batch.data.clear();
    }
  }
}

// Writes one producer's block, rolling over by size at line boundaries.
void ProtocolLog::Impl::writeBlock(std::string_view block, SysTime time,
                                   const std::string& period_now) {
  while (!block.empty()) {
    if (!ensureOpen(time, period_now)) {
      dropped_other.fetch_add(countLines(block), std::memory_order_relaxed);
      return;
    }
    std::string_view chunk = block;
    const std::uint64_t limit = options.max_file_size;
    if (limit != 0 && file_size + block.size() > limit) {
      const std::uint64_t room = file_size < limit ? limit - file_size : 0;
      const std::size_t cut = room == 0 ? std::string_view::npos : block.rfind('\n', room - 1);
      if (cut != std::string_view::npos) {
        chunk = block.substr(0, cut + 1);
      } else if (file_has_records) {
        closeFile();
        ++seq;
        retention_due = true;
        continue;
      } else {
        // A line longer than the limit still gets a file of its own.
        const std::size_t newline = block.find('\n');
        chunk = block.substr(0, newline == std::string_view::npos ? block.size() : newline + 1);
      }
    }
    const int err = writeAll(fd, chunk);
    if (err != 0) {
      // Part of the chunk may be on disk; all of it is counted as dropped,
      // so take that part back: the file keeps whole records only (a full
      // disk or file-size limit still lets a file shrink).
      if (::ftruncate(fd, static_cast<off_t>(file_size)) != 0) {
        // The next open ends the half line instead (see ensureOpen).
      }
      const std::string failed_path = path;
      closeFile();
      fail(fmt::format("protocol log: cannot write {}: {}", failed_path, errnoText(err)),
           countLines(block));
      return;
    }
    const std::uint64_t lines = countLines(chunk);
    records_written.fetch_add(lines, std::memory_order_relaxed);
    bytes_written.fetch_add(chunk.size(), std::memory_order_relaxed);
    file_size += chunk.size();
    file_has_records = true;
    block.remove_prefix(chunk.size());
    if (failing) {
      failing = false;
      log(Level::kInfo, "protocol_log", "protocol log: writing again to {}", path);
    }
  }
}

void ProtocolLog::Impl::startPeriod(const std::string& period_now) {
  period = period_now;
  seq = 1;
  for (const LogFileInfo& file : listLogFiles(options.directory, options.prefix)) {
    if (file.name.period == period) {
      seq = std::max(seq, file.name.seq);
    }
  }
  path = fmt::format("{}/{}{}-{}{}", options.directory, options.prefix, period, seq, kLogSuffix);
}

namespace {

// Creates `dir` and its missing parents, each mode 0750 (less under a
// stricter umask): the files name users and their addresses, which are no
// business of other local accounts. Failures show when the file is opened.
void makeLogDirectories(const std::string& dir) {
  std::error_code ec;
  if (std::filesystem::is_directory(dir, ec)) {
    return;
  }
  std::filesystem::path partial;
  for (const std::filesystem::path& part : std::filesystem::path(dir)) {
    partial /= part;
    ::mkdir(partial.c_str(), 0750);  // EEXIST for the parts already there
  }
}

}  // namespace

bool ProtocolLog::Impl::ensureOpen(SysTime time, const std::string& period_now) {
  if (period_now != period) {
    closeFile();
    startPeriod(period_now);
    retention_due = true;
  }
  if (fd >= 0) {
    return true;
  }
  path = fmt::format("{}/{}{}-{}{}", options.directory, options.prefix, period, seq, kLogSuffix);
  makeLogDirectories(options.directory);
  // 0640: readable by the log's group, never by others. O_NOFOLLOW: a
  // symlink planted at the file's name must not send the log (user names,
  // addresses) elsewhere, or make Portico append to a file it points at.
  fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0640);
  if (fd < 0) {
    fail(fmt::format("protocol log: cannot open {}: {}", path, errnoText(errno)), 0);
    return false;
  }
  struct stat st {};
  ::fstat(fd, &st);
  file_size = static_cast<std::uint64_t>(st.st_size);
  file_has_records = file_size > 0;
  std::string prologue;
  if (file_size == 0) {
    prologue = fmt::format(
        "#Software: Portico {}\r\n#Version: 15.0.0.0\r\n#Log-type: IMAP4 Protocol Log\r\n"
        "#Date: ",
        options.software_version);
    internal::appendIsoTime(prologue, toMillis(time));
    prologue.append("\r\n#Fields: ").append(kProtocolLogFields).append("\r\n");
  } else {
    // A failed write may have left half a line; end it so ours start clean.
    char last = '\n';
    if (::pread(fd, &last, 1, st.st_size - 1) == 1 && last != '\n') {
      prologue = "\r\n";
    }
  }
  if (const int err = writeAll(fd, prologue); err != 0) {
    const std::string failed_path = path;
    closeFile();
    fail(fmt::format("protocol log: cannot write {}: {}", failed_path, errnoText(err)), 0);
    return false;
  }
  file_size += prologue.size();
  bytes_written.fetch_add(prologue.size(), std::memory_order_relaxed);
  files_opened.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(stats_mu);
    stats_file = path;
  }
  if (retention_due) {
    retention_due = false;
    applyRetention(time);
  }
  return true;
}

void ProtocolLog::Impl::closeFile() {
  if (fd < 0) {
    return;
  }
  ::close(fd);
  fd = -1;
  std::lock_guard<std::mutex> lock(stats_mu);
  stats_file.clear();
}

// A file renamed or deleted under us (logrotate, an operator, a vanished
// directory) still accepts writes; reopen its name instead.
void ProtocolLog::Impl::closeIfMoved() {
  if (fd < 0) {
    return;
  }
  struct stat open_st {};
  struct stat path_st {};
  if (::fstat(fd, &open_st) != 0 || ::stat(path.c_str(), &path_st) != 0 ||
      open_st.st_ino != path_st.st_ino || open_st.st_dev != path_st.st_dev) {
    closeFile();
  }
}

// Deletes files not written for max_age, then the oldest while the total is
// over max_total_size. The current file is never deleted.
void ProtocolLog::Impl::applyRetention(SysTime time) {
  std::vector<LogFileInfo> files = listLogFiles(options.directory, options.prefix);
  std::sort(files.begin(), files.end(),
            [](const LogFileInfo& a, const LogFileInfo& b) { return a.olderThan(b); });
  const std::int64_t max_age_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(options.max_age).count();
  const std::int64_t cutoff = toMillis(time) - max_age_ms;
  std::uint64_t total = 0;
  std::vector<LogFileInfo> kept;
  for (LogFileInfo& file : files) {
    if (file.path != path && max_age_ms > 0 && file.mtime_ms < cutoff &&
        ::unlink(file.path.c_str()) == 0) {
      continue;
    }
    total += file.size;
    kept.push_back(std::move(file));
  }
  for (const LogFileInfo& file : kept) {
    if (options.max_total_size == 0 || total <= options.max_total_size) {
      break;
    }
    if (file.path != path && ::unlink(file.path.c_str()) == 0) {
      total -= file.size;
    }
  }
}

// Counts `dropped` records and warns once per failure episode; the episode
// ends at the next successful write.
void ProtocolLog::Impl::fail(std::string message, std::uint64_t dropped) {
  dropped_other.fetch_add(dropped, std::memory_order_relaxed);
  if (!failing) {
    failing = true;
    log(Level::kWarn, "protocol_log", "{}; dropping protocol log records until it works again",
        message);
  }
  std::lock_guard<std::mutex> lock(stats_mu);
  stats_error = std::move(message);
}

void ProtocolLog::Impl::warnIfQueueFull() {
  const std::uint64_t dropped = dropped_queue_full.load(std::memory_order_relaxed);
  const auto steady_now = std::chrono::steady_clock::now();
  if (dropped == queue_full_reported ||
      (queue_full_warned != std::chrono::steady_clock::time_point{} &&
       steady_now - queue_full_warned < kQueueFullWarningInterval)) {
    return;
  }
  log(Level::kWarn, "protocol_log",
      "protocol log: {} records dropped because producer buffers were full "
      "(queue_bytes_per_producer={})",
      dropped - queue_full_reported, options.queue_bytes_per_producer);
  queue_full_reported = dropped;
  queue_full_warned = steady_now;
}

// ---------------------------------------------------------------------------
// ProtocolLog.

ProtocolLog::ProtocolLog(std::size_t producers)
    : impl_(std::make_unique<Impl>(std::max<std::size_t>(producers, 1))) {}

ProtocolLog::~ProtocolLog() {
  stop();
}

Status ProtocolLog::start(Options options) {
  Impl& s = *impl_;
  std::lock_guard<std::mutex> control(s.control_mu);
  if (s.thread.joinable()) {
    return Status::error("protocol log: already running");
  }
  if (options.directory.empty()) {
    return Status::error("protocol log: directory is empty");
  }
  if (options.prefix.empty() || options.prefix.find('/') != std::string::npos) {
    return Status::error("protocol log: prefix must be a non-empty file name part");
  }
  if (options.queue_bytes_per_producer == 0) {
    return Status::error("protocol log: queue_bytes_per_producer must be positive");
  }
  while (options.directory.size() > 1 && options.directory.back() == '/') {
    options.directory.pop_back();
  }
  const std::size_t capacity = options.queue_bytes_per_producer;
  for (std::size_t i = 0; i < s.count; ++i) {
    ProducerBuffer& buffer = s.buffers[i];
    std::lock_guard<std::mutex> lock(buffer.mu);
    s.dropped_other.fetch_add(buffer.records, std::memory_order_relaxed);
    buffer.active.clear();
    // Reserved once so submit() never allocates; pages are only touched
    // as the buffer fills.
    buffer.active.reserve(capacity);
    buffer.capacity = capacity;
    buffer.records = 0;
    buffer.wake_sent = false;
    s.batches[i].data.clear();
    s.batches[i].data.reserve(capacity);
  }
  s.options = std::move(options);
  s.fd = -1;
  s.period.clear();
  s.failing = false;
  s.retention_due = false;
  s.reopen_requested.store(false);
  {
    std::lock_guard<std::mutex> lock(s.stats_mu);
    s.stats_directory = s.options.directory;
  }
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.writer_running = true;
    s.stop_requested = false;
    s.wake_pending = false;
  }
  s.thread = std::thread([&s] { s.run(); });
  s.enabled.store(true, std::memory_order_release);
  return Status();
}

void ProtocolLog::stop() {
  Impl& s = *impl_;
  std::lock_guard<std::mutex> control(s.control_mu);
  if (!s.thread.joinable()) {
    return;
  }
  s.enabled.store(false, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.stop_requested = true;
  }
  s.writer_cv.notify_all();
  s.thread.join();
  // Lines that raced with the final drain are counted, not written.
  for (std::size_t i = 0; i < s.count; ++i) {
    ProducerBuffer& buffer = s.buffers[i];
    std::lock_guard<std::mutex> lock(buffer.mu);
    s.dropped_other.fetch_add(buffer.records, std::memory_order_relaxed);
    buffer.active.clear();
    buffer.records = 0;
  }
}

bool ProtocolLog::enabled() const {
  return impl_->enabled.load(std::memory_order_relaxed);
}

std::size_t ProtocolLog::producers() const {
  return impl_->count;
}

void ProtocolLog::submit(std::size_t producer, std::string_view line) {
  Impl& s = *impl_;
  if (!s.enabled.load(std::memory_order_relaxed) || line.empty()) {
    return;
  }
  assert(producer < s.count);
  if (producer >= s.count) {
    s.dropped_queue_full.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const bool add_crlf = line.back() != '\n';
  const std::size_t size = line.size() + (add_crlf ? 2 : 0);
  ProducerBuffer& buffer = s.buffers[producer];
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(buffer.mu);
    if (buffer.active.size() + size > buffer.capacity) {
      s.dropped_queue_full.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    buffer.active.append(line);
    if (add_crlf) {
      buffer.active.append("\r\n");
    }
    ++buffer.records;
    if (!buffer.wake_sent && buffer.active.size() >= buffer.capacity / 2) {
      buffer.wake_sent = true;
      wake = true;
    }
  }
  if (wake) {
    s.wakeWriter();
  }
}

bool ProtocolLog::flush(std::chrono::milliseconds timeout) {
  Impl& s = *impl_;
  std::unique_lock<std::mutex> lock(s.mu);
  if (!s.writer_running) {
    return true;
  }
  const std::uint64_t ticket = ++s.flush_requested;
  s.writer_cv.notify_one();
  return s.flushed_cv.wait_for(
      lock, timeout, [&s, ticket] { return s.flush_done >= ticket || !s.writer_running; });
}

void ProtocolLog::reopen() {
  impl_->reopen_requested.store(true);
  impl_->wakeWriter();
}

ProtocolLog::Stats ProtocolLog::stats() const {
  const Impl& s = *impl_;
  Stats stats;
  stats.records_written = s.records_written.load(std::memory_order_relaxed);
  stats.bytes_written = s.bytes_written.load(std::memory_order_relaxed);
  stats.records_dropped_queue_full = s.dropped_queue_full.load(std::memory_order_relaxed);
  stats.records_dropped =
      stats.records_dropped_queue_full + s.dropped_other.load(std::memory_order_relaxed);
  stats.files_opened = s.files_opened.load(std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(s.stats_mu);
  stats.directory = s.stats_directory;
  stats.current_file = s.stats_file;
  stats.last_error = s.stats_error;
  return stats;
}

void ProtocolLog::pauseWriterForTest(bool paused) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->paused = paused;
  }
  impl_->writer_cv.notify_all();
}

}  // namespace portico::logging
