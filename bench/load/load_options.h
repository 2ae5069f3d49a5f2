// Options of portico_load and the small parsers behind them: durations
// ("10s", "500ms", "2m"), user-name patterns ("user%02d"), the command mix
// ("NOOP:5,SELECT:1,FETCH:3") and the interleaved command schedule.
//
// Parsing functions never throw: they return an error message fit for the
// command line (empty on success) and fill an out-parameter.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace portico::load {

// One command of the mix. The command text (after the tag) is
// `before` [message number] `after`: the message number is present when the
// text held `%n`, and cycles 1..EXISTS per session (1 in an empty mailbox).
struct MixEntry {
  std::string name;  // as given in --mix and printed in reports, e.g. "FETCH"
  std::string text;  // the whole template, for reports
  std::string before;
  std::string after;
  bool has_seq = false;
  std::uint32_t weight = 0;
};

struct Options {
  std::string host = "127.0.0.1";
  std::uint16_t port = 143;
  std::uint32_t sessions = 10;
  std::uint32_t threads = 1;
  std::uint64_t duration_ns = 10'000'000'000;
  std::uint64_t max_commands = 0;  // 0: no limit, the duration ends the run
  std::string users = "user%02d";
  std::uint32_t user_count = 20;
  std::uint32_t user_first = 0;
  std::string password;
  std::string mailbox = "INBOX";
  std::string mix_spec = "NOOP:5,SELECT:1,FETCH:3,STATUS:1";
  std::vector<std::string> defines;  // NAME=TEXT
  std::uint32_t pipeline = 1;
  // Percent of the sessions that send commands in the window; the others
  // stay logged in and silent (a mostly idle population of mail clients).
  std::uint32_t active_percent = 100;
  // Pause of an active session between a reply and its next command
  // (0: none, keep the pipeline full). Checked on a 100 ms sweep.
  std::uint64_t think_ns = 0;
  std::uint32_t seed_messages = 0;
  std::uint32_t message_size = 2048;
  std::uint64_t timeout_ns = 10'000'000'000;  // every wait on the server
  std::uint32_t setup_concurrency = 64;       // sessions in setup at once, per loop
  std::vector<int> pids;
  std::vector<int> pgids;
  std::string label;
  bool json = false;
  bool seed_only = false;   // seed the mailboxes, then exit
  bool login_only = false;  // login_only.h: connect, LOGIN, LOGOUT, close, repeated

  // Derived by finishOptions().
  std::vector<MixEntry> mix;
  std::vector<std::uint16_t> schedule;  // indices into mix
};

// "250ms", "10s", "2m", "1h" or a bare number of seconds; "1.5s" too.
std::string parseDuration(std::string_view text, std::uint64_t& ns);

// Checks a user pattern: plain text with at most one `%d`, `%Nd` or `%0Nd`.
std::string checkUserPattern(std::string_view pattern);
// The pattern with its conversion replaced by index (or the pattern itself).
std::string formatUser(std::string_view pattern, std::uint32_t index);

// The built-in command names and their text, "NAME=TEXT" per line.
std::string builtinCommandHelp();

// Parses --mix against the built-ins and --define NAME=TEXT entries.
std::string parseMix(std::string_view spec, const std::vector<std::string>& defines,
                     std::string_view mailbox, std::vector<MixEntry>& mix);

// Smooth weighted round-robin (as nginx balances upstreams): a sequence of
// length sum(weights) in which each entry appears `weight` times, spread
// evenly, so any window of the sequence has close to the requested mix.
std::vector<std::uint16_t> buildSchedule(const std::vector<MixEntry>& mix);

// Validates option combinations and fills mix and schedule.
std::string finishOptions(Options& options);

// Whether session `index` is one of the active ones: spreads
// `active_percent` evenly over the indices (10 percent: every tenth).
bool sessionIsActive(std::uint32_t index, std::uint32_t active_percent);

// IMAP quoted string with backslash escapes.
std::string quoteImap(std::string_view text);

}  // namespace portico::load
