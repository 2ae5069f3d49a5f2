// ProtocolLog: the writer thread against real files in a temporary
// directory. Synchronisation is flush()/stop(), never sleeps.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "portico/logging.h"
#include "status_testing.h"

namespace portico::logging {
namespace {

namespace fs = std::filesystem;
using Options = ProtocolLog::Options;

// 2026-11-27T21:05:58.123Z
constexpr std::int64_t kSampleTimeMs = 1795813558123;
constexpr std::size_t kHeaderLines = 5;

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "portico-plog-XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(std::string_view name) const { return path_ + "/" + std::string(name); }

 private:
  std::string path_;
};

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void writeFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
}

// Splits on "\r\n"; every line must end with it.
std::vector<std::string> crlfLines(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t at = 0;
  while (at < text.size()) {
    const std::size_t end = text.find("\r\n", at);
    if (end == std::string::npos) {
      ADD_FAILURE() << "unterminated line: " << text.substr(at);
      break;
    }
    lines.push_back(text.substr(at, end - at));
    at = end + 2;
  }
  return lines;
}

// CSV fields with quotes removed and doubled quotes undone.
std::vector<std::string> csvFields(const std::string& line) {
  std::vector<std::string> fields(1);
  bool quoted = false;
  for (std::size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        fields.back().push_back('"');
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        fields.back().push_back(c);
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      fields.emplace_back();
    } else {
      fields.back().push_back(c);
    }
  }
  return fields;
}

// This log's files, oldest first (by sequence number within a period).
std::vector<std::string> logFiles(const std::string& dir, const std::string& prefix = "IMAP4") {
  std::vector<std::pair<std::pair<std::string, int>, std::string>> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) != 0 || name.size() < prefix.size() + 5 ||
        !std::isdigit(static_cast<unsigned char>(name[prefix.size()])) ||
        name.substr(name.size() - 4) != ".LOG") {
      continue;
    }
    const std::size_t dash = name.rfind('-');
    const std::string period = name.substr(prefix.size(), dash - prefix.size());
    const int seq = std::atoi(name.substr(dash + 1).c_str());
    found.push_back({{period, seq}, entry.path().string()});
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> paths;
  for (auto& f : found) {
    paths.push_back(f.second);
  }
  return paths;
}

void expectHeaders(const std::vector<std::string>& lines, const std::string& what) {
  ASSERT_GE(lines.size(), kHeaderLines) << what;
  EXPECT_EQ(lines[0], "#Software: Portico 0.1.0") << what;
  EXPECT_EQ(lines[1], "#Version: 15.0.0.0") << what;
  EXPECT_EQ(lines[2], "#Log-type: IMAP4 Protocol Log") << what;
  EXPECT_EQ(lines[3].rfind("#Date: ", 0), 0u) << what;
  EXPECT_EQ(lines[3].size(), std::string("#Date: 2026-11-27T21:05:58.123Z").size()) << what;
  EXPECT_EQ(lines[4],
            "#Fields: dateTime,sessionId,seqNumber,sIp,cIp,user,duration,rqsize,rpsize,command,"
            "parameters,context")
      << what;
}

std::string recordLine(std::uint64_t session, std::uint32_t seq, std::string_view parameters) {
  ProtocolRecord r;
  r.time_ms = kSampleTimeMs;
  r.session_id = session;
  r.seq = seq;
  r.server_address = "10.0.0.11:143";
  r.client_address = "192.0.2.7:50123";
  r.user = "joe";
  r.command = "FETCH";
  r.parameters = parameters;
  r.context = "R=ok";
  std::string out;
  formatRecord(r, out);
  return out;
}

Options optionsFor(const std::string& dir) {
  Options options;
  options.directory = dir;
  // A fixed clock keeps file names predictable and away from hour ends.
  options.clock = [] {
    return std::chrono::system_clock::time_point(std::chrono::milliseconds(kSampleTimeMs));
  };
  // Files get real mtimes, which may be far from the fixed clock; only the
  // age test turns age retention on.
  options.max_age = std::chrono::hours(0);
  return options;
}

// Captures the operational log into a file for the life of the object.
class OpLogCapture {
 public:
  explicit OpLogCapture(const TempDir& dir) : path_(dir / "oplog.txt") {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    setOutputFd(fd_);
  }
  ~OpLogCapture() {
    setOutputFd(2);
    ::close(fd_);
  }
  int count(std::string_view needle) const {
    const std::string text = readFile(path_);
    int n = 0;
    for (std::size_t at = text.find(needle); at != std::string::npos;
         at = text.find(needle, at + 1)) {
      ++n;
    }
    return n;
  }

 private:
  std::string path_;
  int fd_ = -1;
};

TEST(ProtocolLog, StartValidatesOptions) {
  ProtocolLog log(1);
  Options options;
  Status started = log.start(options);
  EXPECT_FALSE(started.ok());
  EXPECT_NE(started.message().find("directory"), std::string::npos);
  TempDir dir;
  options = optionsFor(dir.path());
  options.prefix = "a/b";
  EXPECT_FALSE(log.start(options).ok());
  options = optionsFor(dir.path());
  EXPECT_TRUE(IsOk(log.start(options)));
  started = log.start(options);
  EXPECT_FALSE(started.ok());
  EXPECT_NE(started.message().find("already running"), std::string::npos);
  log.stop();
  log.stop();  // idempotent
}

TEST(ProtocolLog, EnabledOnlyWhileRunning) {
  TempDir dir;
  ProtocolLog log(2);
  EXPECT_FALSE(log.enabled());
  log.submit(0, recordLine(1, 0, "x"));  // ignored, not counted
  ASSERT_TRUE(IsOk(log.start(optionsFor(dir.path()))));
  EXPECT_TRUE(log.enabled());
  log.stop();
  EXPECT_FALSE(log.enabled());
  log.submit(1, recordLine(1, 1, "x"));
  const ProtocolLog::Stats stats = log.stats();
  EXPECT_EQ(stats.records_written, 0u);
  EXPECT_EQ(stats.records_dropped, 0u);
  EXPECT_TRUE(logFiles(dir.path()).empty());  // no traffic, no file
}

TEST(ProtocolLog, RoundTripFromFourThreads) {
  TempDir dir;
  ProtocolLog log(4);
  ASSERT_TRUE(IsOk(log.start(optionsFor(dir.path()))));
  constexpr std::uint32_t kPerThread = 2000;
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < 4; ++t) {
    threads.emplace_back([&log, t] {
      std::string line;
      for (std::uint32_t i = 0; i < kPerThread; ++i) {
        line.clear();
        // Some parameters need quoting; columns must survive it.
        const std::string parameters = i % 3 == 0 ? "1:* (FLAGS \"x,y\")" : "INBOX";
        ProtocolRecord r;
        r.time_ms = kSampleTimeMs + i;
        r.session_id = t;
        r.seq = i;
        r.client_address = "192.0.2.7:50123";
        r.user = "joe";
        r.command = "FETCH";
        r.parameters = parameters;
        formatRecord(r, line);
        log.submit(t, line);
      }
    });
  }
  for (std::thread& thread : threads) {
    thread.join();
  }
  ASSERT_TRUE(log.flush());

  const std::vector<std::string> files = logFiles(dir.path());
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(fs::path(files[0]).filename(), "IMAP42026112721-1.LOG");
  EXPECT_EQ(log.stats().current_file, files[0]);
  const std::vector<std::string> lines = crlfLines(readFile(files[0]));
  expectHeaders(lines, files[0]);
  EXPECT_EQ(lines[3], "#Date: 2026-11-27T21:05:58.123Z");
  ASSERT_EQ(lines.size(), kHeaderLines + 4 * kPerThread);
  std::map<std::uint64_t, std::uint32_t> next_seq;  // per producer, in order
  for (std::size_t i = kHeaderLines; i < lines.size(); ++i) {
    const std::vector<std::string> fields = csvFields(lines[i]);
    ASSERT_EQ(fields.size(), 12u) << lines[i];
    const std::uint64_t session = std::stoull(fields[1], nullptr, 16);
    const auto seq = static_cast<std::uint32_t>(std::stoul(fields[2]));
    EXPECT_EQ(seq, next_seq[session]++) << lines[i];
    EXPECT_EQ(fields[9], "FETCH");
    EXPECT_EQ(fields[10], seq % 3 == 0 ? "1:* (FLAGS \"x,y\")" : "INBOX");
  }
  ASSERT_EQ(next_seq.size(), 4u);
  for (const auto& [session, count] : next_seq) {
    EXPECT_EQ(count, kPerThread) << session;
  }
  const ProtocolLog::Stats stats = log.stats();
  EXPECT_EQ(stats.records_written, 4 * kPerThread);
  EXPECT_EQ(stats.records_dropped, 0u);
  EXPECT_EQ(stats.bytes_written, fs::file_size(files[0]));
  EXPECT_EQ(stats.files_opened, 1u);
  EXPECT_EQ(stats.directory, dir.path());
  EXPECT_TRUE(stats.last_error.empty());
  log.stop();
  EXPECT_TRUE(log.stats().current_file.empty());
}

TEST(ProtocolLog, StopWritesWhatWasSubmitted) {
  TempDir dir;
  ProtocolLog log(1);
  ASSERT_TRUE(IsOk(log.start(optionsFor(dir.path()))));
  for (std::uint32_t i = 0; i < 10; ++i) {
    log.submit(0, recordLine(9, i, "x"));
  }
  log.submit(0, "no line end");  // gets "\r\n"
  log.stop();
  const std::vector<std::string> files = logFiles(dir.path());
  ASSERT_EQ(files.size(), 1u);
  const std::vector<std::string> lines = crlfLines(readFile(files[0]));
  ASSERT_EQ(lines.size(), kHeaderLines + 11);
  EXPECT_EQ(lines.back(), "no line end");
}

TEST(ProtocolLog, SizeRolloverStartsEveryFileWithHeaders) {
  TempDir dir;
  ProtocolLog log(1);
  Options options = optionsFor(dir.path());
  options.max_file_size = 2048;
  ASSERT_TRUE(IsOk(log.start(options)));
  constexpr std::uint32_t kRecords = 120;
  for (std::uint32_t i = 0; i < kRecords; ++i) {
    log.submit(0, recordLine(1, i, "INBOX"));
  }
  ASSERT_TRUE(log.flush());
  const std::vector<std::string> files = logFiles(dir.path());
  ASSERT_GE(files.size(), 4u);
  std::uint32_t seq = 0;
  for (std::size_t f = 0; f < files.size(); ++f) {
    EXPECT_EQ(fs::path(files[f]).filename(), "IMAP42026112721-" + std::to_string(f + 1) + ".LOG");
    EXPECT_LE(fs::file_size(files[f]), options.max_file_size) << files[f];
    const std::vector<std::string> lines = crlfLines(readFile(files[f]));
    expectHeaders(lines, files[f]);
    EXPECT_GT(lines.size(), kHeaderLines) << files[f];
    for (std::size_t i = kHeaderLines; i < lines.size(); ++i) {
      const std::vector<std::string> fields = csvFields(lines[i]);
      ASSERT_EQ(fields.size(), 12u) << lines[i];
      EXPECT_EQ(std::stoul(fields[2]), seq++);
    }
  }
  EXPECT_EQ(seq, kRecords);
  EXPECT_EQ(log.stats().files_opened, files.size());
}

TEST(ProtocolLog, LineLongerThanMaxFileSizeGetsItsOwnFile) {
  TempDir dir;
  ProtocolLog log(1);
  Options options = optionsFor(dir.path());
  options.max_file_size = 100;  // smaller than the header lines
  ASSERT_TRUE(IsOk(log.start(options)));
  for (std::uint32_t i = 0; i < 3; ++i) {
    log.submit(0, recordLine(1, i, "INBOX"));
  }
  ASSERT_TRUE(log.flush());
  const std::vector<std::string> files = logFiles(dir.path());
  ASSERT_EQ(files.size(), 3u);
  for (const std::string& file : files) {
    EXPECT_EQ(crlfLines(readFile(file)).size(), kHeaderLines + 1) << file;
  }
}

TEST(ProtocolLog, HourlyAndDailyRolloverByClock) {
  TempDir dir;
  std::atomic<std::int64_t> now_ms{1795816799900};  // 2026-11-27T21:59:59.900Z
  Options options = optionsFor(dir.path());
  options.clock = [&now_ms] {
    return std::chrono::system_clock::time_point(std::chrono::milliseconds(now_ms.load()));
  };
  ProtocolLog log(1);
  ASSERT_TRUE(IsOk(log.start(options)));
  log.submit(0, recordLine(1, 0, "a"));
  ASSERT_TRUE(log.flush());
  now_ms = 1795816800100;  // 22:00:00.100
  log.submit(0, recordLine(1, 1, "b"));
  ASSERT_TRUE(log.flush());
  log.stop();
  std::vector<std::string> files = logFiles(dir.path());
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(fs::path(files[0]).filename(), "IMAP42026112721-1.LOG");
  EXPECT_EQ(fs::path(files[1]).filename(), "IMAP42026112722-1.LOG");
  const std::vector<std::string> second = crlfLines(readFile(files[1]));
  ASSERT_EQ(second.size(), kHeaderLines + 1);
  EXPECT_EQ(second[3], "#Date: 2026-11-27T22:00:00.100Z");

  TempDir daily_dir;
  options.directory = daily_dir.path();
  options.rollover = Options::Rollover::kDaily;
  ASSERT_TRUE(IsOk(log.start(options)));
  log.submit(0, recordLine(1, 2, "c"));
  log.stop();
  files = logFiles(daily_dir.path());
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(fs::path(files[0]).filename(), "IMAP420261127-1.LOG");
}

TEST(ProtocolLog, AppendsToTheLatestFileOfThePeriod) {
  TempDir dir;
  writeFile(dir / "IMAP42026112721-1.LOG", "#old\r\n");
  writeFile(dir / "IMAP42026112721-3.LOG", "#Software: x\r\nhalf a li");  // torn line
  ProtocolLog log(1);
  ASSERT_TRUE(IsOk(log.start(optionsFor(dir.path()))));
  log.submit(0, "next\r\n");
  log.stop();
  EXPECT_EQ(readFile(dir / "IMAP42026112721-3.LOG"), "#Software: x\r\nhalf a li\r\nnext\r\n");
  EXPECT_EQ(logFiles(dir.path()).size(), 2u);
}

void makeOldFile(const std::string& path, std::size_t size, std::int64_t mtime_ms) {
  writeFile(path, std::string(size, 'x'));
  struct timespec times[2];
  times[0].tv_sec = times[1].tv_sec = mtime_ms / 1000;
  times[0].tv_nsec = times[1].tv_nsec = 0;
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
}

TEST(ProtocolLog, RetentionAtStartByTotalSizeDeletesOldestFirst) {
  TempDir dir;
  for (int seq = 1; seq <= 5; ++seq) {
    makeOldFile(dir / ("IMAP42026112710-" + std::to_string(seq) + ".LOG"), 1000,
                kSampleTimeMs - 3600000);
  }
  writeFile(dir / "IMAP4BE2026112710-1.LOG", std::string(5000, 'y'));  // another log
  writeFile(dir / "notes.txt", std::string(5000, 'z'));
  Options options = optionsFor(dir.path());
  options.max_total_size = 2500;
  ProtocolLog log(1);
  ASSERT_TRUE(IsOk(log.start(options)));
  ASSERT_TRUE(log.flush());  // the writer has run its start-up retention
  const std::vector<std::string> files = logFiles(dir.path());
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(fs::path(files[0]).filename(), "IMAP42026112710-4.LOG");
  EXPECT_EQ(fs::path(files[1]).filename(), "IMAP42026112710-5.LOG");
  EXPECT_TRUE(fs::exists(dir / "IMAP4BE2026112710-1.LOG"));
  EXPECT_TRUE(fs::exists(dir / "notes.txt"));
}

TEST(ProtocolLog, RetentionByAge) {
  TempDir dir;
  makeOldFile(dir / "IMAP42026111900-1.LOG", 10, kSampleTimeMs - 200 * 3600000LL);
  makeOldFile(dir / "IMAP420261120-1.LOG", 10, kSampleTimeMs - 170 * 3600000LL);
  makeOldFile(dir / "IMAP42026112701-1.LOG", 10, kSampleTimeMs - 20 * 3600000LL);
  Options options = optionsFor(dir.path());
  options.max_age = std::chrono::hours(168);
  ProtocolLog log(1);
  ASSERT_TRUE(IsOk(log.start(options)));
  ASSERT_TRUE(log.flush());
  const std::vector<std::string> files = logFiles(dir.path());
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(fs::path(files[0]).filename(), "IMAP42026112701-1.LOG");
}

TEST(ProtocolLog, RetentionOnRolloverKeepsNewestAndNeverTheCurrentFile) {
  TempDir dir;
  Options options = optionsFor(dir.path());
  options.max_file_size = 1024;
  options.max_total_size = 3000;
  ProtocolLog log(1);
  ASSERT_TRUE(IsOk(log.start(options)));
  for (std::uint32_t i = 0; i < 200; ++i) {
    log.submit(0, recordLine(1, i, "INBOX"));
  }
  ASSERT_TRUE(log.flush());
  const std::vector<std::string> files = logFiles(dir.path());
  ASSERT_FALSE(files.empty());
  ASSERT_LE(files.size(), 3u);
  EXPECT_EQ(files.back(), log.stats().current_file);
  // The survivors are the newest: the last one holds the last record.
  const std::vector<std::string> last = crlfLines(readFile(files.back()));
  EXPECT_EQ(csvFields(last.back())[2], "199");
  EXPECT_NE(fs::path(files.front()).filename(), "IMAP42026112721-1.LOG");
  EXPECT_EQ(log.stats().records_written, 200u);
}

TEST(ProtocolLog, UnusableDirectoryDropsCountsWarnsOnceThenRecovers) {
  TempDir dir;
  OpLogCapture oplog(dir);
  const std::string blocker = dir / "blocker";
  writeFile(blocker, "a regular file where a directory should be");
  ProtocolLog log(2);
  ASSERT_TRUE(IsOk(log.start(optionsFor(blocker + "/logs"))));
  for (int batch = 0; batch < 3; ++batch) {
    for (std::uint32_t i = 0; i < 5; ++i) {
      log.submit(i % 2, recordLine(1, i, "x"));
    }
    ASSERT_TRUE(log.flush());
  }
  ProtocolLog::Stats stats = log.stats();
  EXPECT_EQ(stats.records_dropped, 15u);
  EXPECT_EQ(stats.records_dropped_queue_full, 0u);
  EXPECT_EQ(stats.records_written, 0u);
  EXPECT_NE(stats.last_error.find("cannot open"), std::string::npos) << stats.last_error;
  EXPECT_EQ(oplog.count("WARN [protocol_log]"), 1);

  ASSERT_TRUE(fs::remove(blocker));
  log.submit(0, recordLine(1, 100, "back"));
  ASSERT_TRUE(log.flush());
  stats = log.stats();
  EXPECT_EQ(stats.records_written, 1u);
  EXPECT_EQ(stats.records_dropped, 15u);
  const std::vector<std::string> files = logFiles(blocker + "/logs");
  ASSERT_EQ(files.size(), 1u);
  const std::vector<std::string> lines = crlfLines(readFile(files[0]));
  expectHeaders(lines, files[0]);
  EXPECT_EQ(lines.size(), kHeaderLines + 1);
  EXPECT_EQ(oplog.count("WARN [protocol_log]"), 1);
  EXPECT_EQ(oplog.count("writing again"), 1);
  log.stop();
}

TEST(ProtocolLog, VanishedDirectoryIsRecreated) {
  TempDir dir;
  const std::string logs = dir / "logs";
  ProtocolLog log(1);
  ASSERT_TRUE(IsOk(log.start(optionsFor(logs))));
  log.submit(0, recordLine(1, 0, "a"));
  ASSERT_TRUE(log.flush());
  fs::remove_all(logs);
  log.submit(0, recordLine(1, 1, "b"));
  ASSERT_TRUE(log.flush());
  const std::vector<std::string> files = logFiles(logs);
  ASSERT_EQ(files.size(), 1u);
  const std::vector<std::string> lines = crlfLines(readFile(files[0]));
  expectHeaders(lines, files[0]);
  ASSERT_EQ(lines.size(), kHeaderLines + 1);
  EXPECT_EQ(csvFields(lines.back())[2], "1");
  EXPECT_EQ(log.stats().records_dropped, 0u);
}

// The files name users and their addresses: the directories Portico makes
// are 0750 and the files 0640, whatever the umask allows beyond that.
TEST(ProtocolLog, CreatesDirectories0750AndFiles0640) {
  TempDir dir;
  const std::string logs = dir / "var/log/portico";
  const mode_t old_umask = ::umask(0);
  ProtocolLog log(1);
  ASSERT_TRUE(IsOk(log.start(optionsFor(logs))));
  log.submit(0, recordLine(1, 0, "a"));
  ASSERT_TRUE(log.flush());
  log.stop();
  ::umask(old_umask);
  auto mode = [](const std::string& path) {
    struct stat st {};
    EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
    return st.st_mode & 07777;
  };
  EXPECT_EQ(mode(dir / "var"), 0750u);
  EXPECT_EQ(mode(dir / "var/log"), 0750u);
  EXPECT_EQ(mode(logs), 0750u);
  const std::vector<std::string> files = logFiles(logs);
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(mode(files[0]), 0640u);
}

// A symlink planted at the next file's name must not be followed: the log
// would land wherever it points (or append to a file it points at).
TEST(ProtocolLog, SymlinkAtTheFilePathIsNotFollowed) {
  TempDir dir;
  OpLogCapture oplog(dir);
  const std::string logs = dir / "logs";
  fs::create_directory(logs);
  const std::string target = dir / "target.txt";
  writeFile(target, "precious\n");
  fs::create_symlink(target, logs + "/IMAP42026112721-1.LOG");
  ProtocolLog log(1);
  ASSERT_TRUE(IsOk(log.start(optionsFor(logs))));
  log.submit(0, recordLine(1, 0, "secret-ish"));
  ASSERT_TRUE(log.flush());
  log.stop();
  EXPECT_EQ(readFile(target), "precious\n");
  const ProtocolLog::Stats stats = log.stats();
  EXPECT_EQ(stats.records_written, 0u);
  EXPECT_EQ(stats.records_dropped, 1u);
  EXPECT_NE(stats.last_error.find("cannot open"), std::string::npos) << stats.last_error;
  EXPECT_EQ(oplog.count("WARN [protocol_log]"), 1);
}

TEST(ProtocolLog, ReopenAfterRenameStartsAFreshFile) {
  TempDir dir;
  ProtocolLog log(1);
  ASSERT_TRUE(IsOk(log.start(optionsFor(dir.path()))));
  for (std::uint32_t i = 0; i < 3; ++i) {
    log.submit(0, recordLine(1, i, "before"));
  }
  ASSERT_TRUE(log.flush());
  const std::string current = log.stats().current_file;
  ASSERT_FALSE(current.empty());
  fs::rename(current, current + ".1");
  log.reopen();
  for (std::uint32_t i = 3; i < 5; ++i) {
    log.submit(0, recordLine(1, i, "after"));
  }
  ASSERT_TRUE(log.flush());
  const std::vector<std::string> rotated = crlfLines(readFile(current + ".1"));
  EXPECT_EQ(rotated.size(), kHeaderLines + 3);
  const std::vector<std::string> fresh = crlfLines(readFile(current));
  expectHeaders(fresh, current);
  ASSERT_EQ(fresh.size(), kHeaderLines + 2);
  EXPECT_EQ(csvFields(fresh[kHeaderLines])[10], "after");
  EXPECT_EQ(log.stats().files_opened, 2u);
}

TEST(ProtocolLog, ReopenWithoutRenameAppends) {
  TempDir dir;
  ProtocolLog log(1);
  ASSERT_TRUE(IsOk(log.start(optionsFor(dir.path()))));
  log.submit(0, recordLine(1, 0, "a"));
  ASSERT_TRUE(log.flush());
  log.reopen();
  log.submit(0, recordLine(1, 1, "b"));
  ASSERT_TRUE(log.flush());
  const std::vector<std::string> files = logFiles(dir.path());
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(crlfLines(readFile(files[0])).size(), kHeaderLines + 2);
}

TEST(ProtocolLog, FullProducerBufferDropsInsteadOfBlocking) {
  TempDir dir;
  OpLogCapture oplog(dir);
  Options options = optionsFor(dir.path());
  const std::string line = recordLine(1, 0, "INBOX");
  options.queue_bytes_per_producer = line.size() * 10;
  ProtocolLog log(2);
  ASSERT_TRUE(IsOk(log.start(options)));
  log.pauseWriterForTest(true);
  for (int i = 0; i < 100; ++i) {
    log.submit(0, line);
  }
  log.submit(1, line);  // another producer's buffer is not affected
  ProtocolLog::Stats stats = log.stats();
  EXPECT_EQ(stats.records_dropped_queue_full, 90u);
  EXPECT_EQ(stats.records_dropped, 90u);
  EXPECT_FALSE(log.flush(std::chrono::milliseconds(20)));  // the writer is held
  log.pauseWriterForTest(false);
  ASSERT_TRUE(log.flush());
  stats = log.stats();
  EXPECT_EQ(stats.records_written, 11u);
  // After the drain the buffer accepts records again.
  log.submit(0, line);
  ASSERT_TRUE(log.flush());
  EXPECT_EQ(log.stats().records_written, 12u);
  EXPECT_EQ(oplog.count("producer buffers were full"), 1);
  log.stop();
}

TEST(ProtocolLog, RestartsInAnotherDirectory) {
  TempDir first;
  TempDir second;
  ProtocolLog log(1);
  ASSERT_TRUE(IsOk(log.start(optionsFor(first.path()))));
  log.submit(0, recordLine(1, 0, "a"));
  log.stop();
  ASSERT_TRUE(IsOk(log.start(optionsFor(second.path()))));
  log.submit(0, recordLine(1, 1, "b"));
  log.stop();
  EXPECT_EQ(logFiles(first.path()).size(), 1u);
  EXPECT_EQ(logFiles(second.path()).size(), 1u);
  EXPECT_EQ(log.stats().directory, second.path());
  EXPECT_EQ(log.stats().records_written, 2u);
}

}  // namespace
}  // namespace portico::logging
